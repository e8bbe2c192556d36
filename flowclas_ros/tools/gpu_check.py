"""The one-command GPU check: ``make gpu-check`` (or ``python -m flowclas_ros.tools.gpu_check``).

On one GPU, in well under 8 minutes, with whatever of tensorrt, torch-tensorrt and
onnxruntime-gpu is installed (torch with CUDA alone is enough):

1. **parity** of every backend, precision and option that can run here against the CPU fp32
   reference (torch eager), on real photographs at 640x480 and 1920x1080: the maximum absolute
   score difference relative to the bundle's score range, and the fraction of pixels on which
   the mask at the bundle's threshold agrees;
2. **latency** p50/p99 of the demo bundle per variant at 640x480 and 1920x1080 (all three
   outputs, host frame in, host outputs out, as the node runs it);
3. **the authors' configuration**: DINOv2 ViT-L/14 + 16-step flow at 1036x518 (random weights)
   in fp16 and bf16, eager and compiled, its latency and its parity against GPU fp32;
4. **the node end to end over DDS** on the GPU (tools/bench/node.py), where rclpy is installed.

A variant that cannot run is listed under ``unavailable`` with the reason. Prints and writes
JSON (``--out``); the aims are in ``aims``. ``--allow-cpu`` runs the CPU-side checks on a machine
without a GPU (the test suite does, so the script itself never rots).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .bench.common import latency_row, machine, time_ms

log = logging.getLogger("flowclas_ros.runtime")

SIZES = ((480, 640), (1080, 1920))  # (H, W) camera frames
AIMS = {"demo_bundle_640x480_fps": 500, "vitl14_16step_1036x518_fp16_fps": 100}


def _frames(size: tuple[int, int]) -> list[np.ndarray]:
    from flowclas_ros.bundle.onnx_export import sample_images
    from flowclas_ros.bundle.preprocess_torch import frame_to_input

    out = []
    for _, img in sample_images():
        x = frame_to_input(torch.from_numpy(img), size)[0]
        out.append((x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    return out


def parity(ref: np.ndarray, got: np.ndarray, score_range, threshold: float) -> dict:
    span = float(score_range[1] - score_range[0]) or 1.0
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    return {"max_abs_diff": float(diff.max()), "relative_to_score_range": float(diff.max() / span),
            "mask_agreement": float(((ref >= threshold) == (got >= threshold)).mean())}


def variants(device: str, bundle_fp16: bool) -> list[tuple[str, str, str, dict]]:
    """(label, backend, precision, options) to try on ``device``."""
    if device == "cpu":
        return [("torch/fp32", "torch", "fp32", {}),
                ("onnxruntime/cpu/fp32", "onnxruntime", "fp32", {"provider": "cpu"})]
    out = []
    for prec in ("fp32", "fp16", "bf16"):
        out += [(f"torch/{prec}/eager", "torch", prec, {}),
                (f"torch/{prec}/compiled", "torch", prec, {"compile": True}),
                (f"torch/{prec}/cuda-graphs", "torch", prec, {"cuda_graphs": True})]
    out += [("onnxruntime/cuda/" + ("fp16" if bundle_fp16 else "fp32"), "onnxruntime",
             "fp16" if bundle_fp16 else "fp32", {"provider": "cuda"}),
            ("onnxruntime/tensorrt/fp32", "onnxruntime", "fp32", {"provider": "tensorrt"}),
            ("onnxruntime/tensorrt/fp16", "onnxruntime", "fp16", {"provider": "tensorrt"})]
    for prec in ("fp32", "fp16"):
        out += [(f"tensorrt/{prec}", "tensorrt", prec, {}),
                (f"torch_tensorrt/{prec}", "torch_tensorrt", prec, {})]
    return out


def _latency(be, frame: np.ndarray, iters: int, warmup: int) -> dict:
    return latency_row(time_ms(partial(be.infer, frame), iters, warmup))


def check_bundle(bundle_path: Path, device: str, iters: int, budget_s: float,
                 report: dict) -> None:
    from flowclas_ros.bundle.reader import load_bundle
    from flowclas_ros.runtime import create_backend

    bundle = load_bundle(bundle_path)
    frames = {s: _frames(s) for s in SIZES}
    with create_backend(bundle, backend="torch", device="cpu") as ref_be:
        ref = {s: [ref_be.infer(f, mask=False, overlay=False).heatmap for f in fr]
               for s, fr in frames.items()}
    t_start = time.perf_counter()
    for label, name, prec, opts in variants(device, bundle.fp16):
        if time.perf_counter() - t_start > budget_s:
            report["unavailable"][label] = "skipped: the check's time budget was spent"
            continue
        try:
            t0 = time.perf_counter()
            be = create_backend(bundle, backend=name, device=device, precision=prec, **opts)
            ready_s = time.perf_counter() - t0
        except Exception as exc:  # not installed, no GPU support, build failure
            report["unavailable"][label] = f"{type(exc).__name__}: {str(exc)[:400]}"
            continue
        try:
            row = {"variant": label, "backend": be.name, "device": be.device,
                   "precision": be.precision, "ready_s": round(ready_s, 2), "sizes": {}}
            for s, fr in frames.items():
                worst = None
                for f, r in zip(fr, ref[s]):
                    p = parity(r, be.infer(f, mask=False, overlay=False).heatmap,
                               bundle.score_range, bundle.threshold)
                    if (worst is None or p["relative_to_score_range"]
                            > worst["relative_to_score_range"]):
                        worst = p
                row["sizes"][f"{s[1]}x{s[0]}"] = {"parity": worst,
                                                   "latency": _latency(be, fr[0], iters, 10)}
            report["bundle_checks"].append(row)
            log.info("%s: %s", label, json.dumps(row["sizes"]))
        except Exception as exc:
            report["unavailable"][label] = f"failed while running: {type(exc).__name__}: {exc}"
        finally:
            be.close()


def check_vit(iters: int, report: dict) -> None:
    """DINOv2 ViT-L/14 + 16 steps at 1036x518, random weights, in fp16 and bf16 on the GPU."""
    import copy

    from flowclas_ros.runtime.torch_backend import TorchBackend

    from .bench.backends import demo_model, memory_bundle

    size = (518, 1036)
    model = demo_model("dinov2_vitl14")
    bundle = memory_bundle(model, size, 0.0, (0.0, 1.0))
    frame = _frames(size)[0]
    with TorchBackend(bundle, "cuda", "fp32", model=copy.deepcopy(model)) as be:
        ref = be.infer(frame, mask=False, overlay=False).heatmap
    rows = []
    for prec in ("fp16", "bf16"):
        for compiled in (False, True):
            label = f"vitl14+16/{prec}/{'compiled' if compiled else 'eager'}"
            try:
                be = TorchBackend(bundle, "cuda", prec, model=copy.deepcopy(model),
                                  compile=compiled)
            except Exception as exc:
                report["unavailable"][label] = f"{type(exc).__name__}: {exc}"
                continue
            try:
                lat = _latency(be, frame, iters, 10)
                got = be.infer(frame, mask=False, overlay=False).heatmap
                span = float(np.percentile(ref, 99.9) - np.percentile(ref, 0.1)) or 1.0
                rows.append({"variant": label, "latency": lat,
                             "max_abs_diff_vs_gpu_fp32": float(np.abs(got - ref).max()),
                             "relative_to_score_spread": float(np.abs(got - ref).max() / span)})
            except Exception as exc:
                report["unavailable"][label] = f"failed while running: {type(exc).__name__}: {exc}"
            finally:
                be.close()
    report["vit"] = rows


def check_node(bundle: Path, report: dict) -> None:
    import importlib.util

    if importlib.util.find_spec("rclpy") is None:
        report["unavailable"]["node_over_dds"] = "rclpy is not installed"
        return
    from .bench.node import run

    try:
        report["node"] = run(bundle, frames=100, warmup=10, height=480, width=640,
                             backend="auto", device="cuda", precision="fp32", domain_id=177)
    except Exception as exc:
        report["unavailable"]["node_over_dds"] = f"{type(exc).__name__}: {exc}"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gpu_check", description=__doc__.split("\n\n")[0]
                                .replace("``", ""))
    p.add_argument("--bundle", type=Path, default=None, help="default: the demo bundle")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    p.add_argument("--iters", type=int, default=100, help="timed frames per variant and size")
    p.add_argument("--budget-s", type=float, default=300.0,
                   help="time for the bundle's variants; the rest are listed as skipped")
    p.add_argument("--allow-cpu", action="store_true",
                   help="without a GPU, run the CPU-side checks instead of stopping")
    p.add_argument("--skip", nargs="*", default=[], choices=("vit", "node"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    t0 = time.perf_counter()
    cuda = torch.cuda.is_available()
    report: dict = {"machine": machine(), "cuda": cuda, "aims": AIMS, "bundle_checks": [],
                    "unavailable": {}}
    for mod in ("tensorrt", "torch_tensorrt", "onnxruntime"):
        try:
            report["machine"][mod] = __import__(mod).__version__
        except ImportError:
            report["machine"][mod] = None
    if not cuda and not args.allow_cpu:
        report["unavailable"]["all"] = (f"no CUDA GPU (torch {torch.__version__}, built for CUDA "
                                        f"{torch.version.cuda}): nothing to check")
    else:
        from flowclas_ros.paths import package_file

        bundle = args.bundle or package_file("models", "flowclas_lite2_camvid")
        device = "cuda" if cuda else "cpu"
        check_bundle(bundle, device, args.iters, args.budget_s, report)
        if "vit" not in args.skip:
            if cuda:
                check_vit(max(args.iters // 2, 10), report)
            else:
                report["unavailable"]["vit"] = "ViT-L/14 at 1036x518 is a GPU configuration"
        if "node" not in args.skip:
            if cuda:
                check_node(bundle, report)
            else:
                report["unavailable"]["node_over_dds"] = ("on the GPU only (tools.bench.node "
                                                          "runs it on the CPU)")
    fps = [r["sizes"]["640x480"]["latency"]["fps"] for r in report["bundle_checks"]
           if "640x480" in r["sizes"]]
    report["best_640x480_fps"] = max(fps) if fps else None
    vit = [r["latency"]["fps"] for r in report.get("vit", []) if "/fp16/" in r["variant"]]
    report["best_vitl14_fp16_fps"] = max(vit) if vit else None
    report["seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(report, indent=1, default=str)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
