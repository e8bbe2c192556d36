r"""Benchmark the backends: warm latency p50/p99 and throughput, as JSON.

    python -m flowclas_ros.tools.bench.backends --config lite0 \
        --backends torch onnxruntime --sizes 640x480 1036x518 --iters 40
    python -m flowclas_ros.tools.bench.backends --bundle models/flowclas_lite2_camvid ...
    python -m flowclas_ros.tools.bench.backends --bundle OLD_BUNDLE NEW_BUNDLE ...  # a ratio
    python -m flowclas_ros.tools.bench.backends --config dinov2_vitl14 --backends torch \
        --device cuda --precision fp16 --compile --sizes 1036x518

Sizes are WIDTH x HEIGHT of the camera frames. With ``--config`` (a model built here: ``tiny``,
``lite0`` = EfficientNet-Lite0 stage 3 + 8-step flow, ``dinov2_vits14`` / ``dinov2_vitl14`` =
random-init ViT + 16-step flow; flows initialised on real photographs and perturbed so they are
not the identity) each size gets its own bundle exported at that size, so the frame is not
resized; with ``--bundle`` frames of every size are resized to the bundle's input size.
A run with only torch backends skips the ONNX export.

Each backend configuration ("variant") is created and warmed up (``--warmup`` frames, excluded),
then all variants of a size are timed in ``--rounds`` interleaved rounds of iters/rounds frames,
so that load from other processes on a shared machine hits every variant alike. A frame's time
is :meth:`Backend.infer` with the outputs of ``--outputs`` (default all three, as the node
publishes them), host frame in, host outputs out. Throughput = 1000 / mean latency (one frame at
a time). ``speedup_vs_first`` = the first variant's p50 / this variant's p50 (> 1 = faster).
``--torch-threads 2 1`` and ``--ort-threads 0 1`` time each thread count as its own variant
(torch.set_num_threads is process-wide: it is set before each variant's block).

The models of ``--config`` (:func:`demo_model`, and :func:`memory_bundle` for torch-only runs)
are the benchmarks' own; ``tools/gpu_check.py`` uses them too.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from flowclas_ros.bundle.reader import Bundle
from flowclas_ros.model import BackboneConfig, FlowCLAS, FlowConfig, ModelConfig
from flowclas_ros.runtime import BackendUnavailable, create_backend, resolve_device

from .common import latency_row, machine, time_ms

log = logging.getLogger("flowclas_ros.runtime")

CONFIGS = {
    "tiny": lambda: ModelConfig(backbone=BackboneConfig(name="tiny"), flow=FlowConfig(steps=2)),
    "lite0": lambda: ModelConfig(backbone=BackboneConfig(name="efficientnet_lite0", stages=[3]),
                                 flow=FlowConfig(steps=8)),
    "dinov2_vits14": lambda: ModelConfig(backbone=BackboneConfig(name="dinov2_vits14"),
                                         flow=FlowConfig(steps=16)),
    "dinov2_vitl14": lambda: ModelConfig(backbone=BackboneConfig(name="dinov2_vitl14"),
                                         flow=FlowConfig(steps=16)),
}


def perturb_flow(model: FlowCLAS, scale: float = 0.05, seed: int = 0) -> None:
    """Give the zero-initialised coupling outputs, mu and log sigma small random values.

    So the flow is not the identity (a stand-in for training in tests and benchmarks).
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for step in model.flow.steps:
            for p in step.coupling.subnet.out.parameters():  # the zero-initialised last conv
                fan_in = p[0].numel() if p.dim() > 1 else 1
                p.copy_(torch.randn(p.shape, generator=g) * scale / fan_in ** 0.5)
        model.mu.copy_(torch.randn(model.mu.shape, generator=g) * 0.1)
        model.log_sigma.copy_(torch.randn(model.log_sigma.shape, generator=g) * 0.1)


def demo_model(config: str | ModelConfig, seed: int = 0, init_size: tuple[int, int] = (128, 160),
               perturb: float = 0.05) -> FlowCLAS:
    """Build a FlowCLAS model with ActNorms initialised on two real photographs.

    Its flow is perturbed (:func:`perturb_flow`). ``config``: a name of :data:`CONFIGS` or a
    ModelConfig.
    """
    from flowclas_ros.bundle.onnx_export import image_to_input, sample_images

    cfg = CONFIGS[config]() if isinstance(config, str) else config
    torch.manual_seed(seed)
    model = FlowCLAS(cfg).eval()
    x = torch.cat([image_to_input(img, init_size) for _, img in sample_images()])
    with torch.no_grad():
        model.initialize(model.features(x))
    perturb_flow(model, perturb, seed)
    return model


def demo_score_range(model: FlowCLAS, input_size: tuple[int, int]) -> tuple[float, float]:
    from flowclas_ros.export.calibration import photo_statistics

    return photo_statistics(model, input_size)["score_range"]


def memory_bundle(model: FlowCLAS, input_size: tuple[int, int], threshold: float,
                  score_range: tuple[float, float]) -> Bundle:
    """Return a Bundle without files, for the torch backend given ``model=`` (no export needed)."""
    manifest = {"model": {"config": model.config.to_dict()}, "onnx": {"dynamic": False,
                "fp16": False}, "threshold": {"value": threshold, "fpr": None}, "files": {}}
    return Bundle(path=Path("<in-memory>"), manifest=manifest, onnx_path=None, weights_path=None,
                  input_size=tuple(input_size), threshold=threshold, score_range=score_range)


def parse_size(text: str) -> tuple[int, int]:
    """"640x480" (width x height) -> (480, 640) as (H, W)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, got {text!r}") from None
    return h, w


def variants(args) -> list[tuple[str, str, str, dict, int]]:
    """(label, backend, precision, options, torch threads (0 = leave)) for every configuration."""
    out = []
    for backend in args.backends:
        for prec in args.precision:
            if backend == "torch":
                kinds = [("eager", {})]
                if args.compile:
                    kinds.append(("compiled", {"compile": True}))
                if args.cuda_graphs:
                    kinds.append(("cuda-graphs", {"cuda_graphs": True}))
                    if args.compile:
                        kinds.append(("compiled+cuda-graphs",
                                      {"compile": True, "cuda_graphs": True}))
                for kind, opts in kinds:
                    for t in args.torch_threads:
                        suffix = f"/t{t}" if t else ""
                        out.append((f"torch/{prec}/{kind}{suffix}", "torch", prec, opts, t))
            elif backend == "onnxruntime":
                for prov in args.ort_providers:
                    for t in args.ort_threads:
                        suffix = f"/t{t}" if t else ""
                        suffix += "/nospin" if args.ort_no_spin else ""
                        opts = {"intra_op_num_threads": t,
                                "graph_optimization_level": args.ort_opt,
                                "allow_spinning": not args.ort_no_spin, "provider": prov}
                        out.append((f"onnxruntime/{prov}/{prec}{suffix}", "onnxruntime", prec,
                                    opts, 0))
            else:
                out.append((f"{backend}/{prec}", backend, prec, {}, 0))
    return out


def time_variants(backends: dict, frame: np.ndarray, iters: int, rounds: int,
                  outputs: dict) -> dict:
    """Interleaved timing: {label: [ms, ...]}; backends = {label: (backend, torch threads)}."""
    times = {k: [] for k in backends}
    per_round = max(1, iters // rounds)
    default_threads = torch.get_num_threads()
    for _ in range(rounds):
        for label, (be, threads) in backends.items():
            torch.set_num_threads(threads or default_threads)
            times[label] += time_ms(partial(be.infer, frame, **outputs), per_round)
    torch.set_num_threads(default_threads)
    return times


def run(args) -> dict:
    device = resolve_device(args.device)
    outputs = {k: k in args.outputs for k in ("heatmap", "mask", "overlay")}
    from flowclas_ros.bundle.onnx_export import sample_images

    photo = sample_images()[1][1]  # coffee: a real frame, resized to each size below
    report = {"machine": machine(), "device": device, "config": args.config or None,
              "bundle": args.bundle, "outputs": args.outputs, "iters": args.iters,
              "warmup": args.warmup, "rounds": args.rounds, "results": [], "unavailable": {}}
    model = demo_model(args.config) if args.config else None
    only_torch = set(args.backends) == {"torch"}
    tmp = tempfile.TemporaryDirectory(prefix="flowclas_bench_")
    try:
        for h, w in args.sizes:
            from flowclas_ros.bundle.preprocess_torch import frame_to_input

            frame = frame_to_input(torch.from_numpy(photo), (h, w))[0]
            frame = (frame.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            bundles = {}
            if args.bundle:
                for b in args.bundle:  # several: all timed in the same interleaved rounds
                    name = "/".join(Path(b).resolve().parts[-2:]) if len(args.bundle) > 1 else ""
                    bundles[name] = b
            elif only_torch:
                lo_hi = demo_score_range(model, (h, w)) if args.score_range_from_photos \
                    else (0.0, 1.0)
                bundles[""] = memory_bundle(model, (h, w), float(np.mean(lo_hi)), lo_hi)
            else:
                from flowclas_ros.export.bundle import write_bundle

                lo_hi = demo_score_range(model, (h, w))
                t0 = time.perf_counter()
                bundles[""] = write_bundle(model, Path(tmp.name) / f"{args.config}_{w}x{h}",
                                           input_size=(h, w), threshold=float(np.mean(lo_hi)),
                                           score_range=lo_hi, verify=False,
                                           fp16=args.export_fp16)
                log.info("exported %s at %dx%d in %.1f s", args.config, w, h,
                         time.perf_counter() - t0)
            backends = {}
            default_threads = torch.get_num_threads()
            for (prefix, bundle), (label, name, prec, opts, threads) in (
                    (b, v) for b in bundles.items() for v in variants(args)):
                label = f"{prefix}:{label}" if prefix else label
                if name == "torch" and model is not None:
                    opts = {**opts, "model": copy.deepcopy(model)}  # backends cast/move it
                try:
                    dev = "cpu" if opts.get("provider") == "cpu" else device
                    be = create_backend(bundle, backend=name, device=dev, precision=prec, **opts)
                    torch.set_num_threads(threads or default_threads)
                    for _ in range(args.warmup):
                        be.infer(frame, **outputs)
                    torch.set_num_threads(default_threads)
                    backends[label] = (be, threads)
                except (BackendUnavailable, ValueError, RuntimeError) as exc:
                    report["unavailable"][label] = str(exc)
                    log.warning("%s unavailable: %s", label, exc)
            try:
                times = time_variants(backends, frame, args.iters, args.rounds, outputs)
            finally:
                for be, _ in backends.values():
                    be.close()
            first = None
            for label, ms in times.items():
                row = {"size": f"{w}x{h}", "variant": label, **latency_row(ms)}
                first = first or row
                row["speedup_vs_first"] = round(first["p50_ms"] / row["p50_ms"], 3)
                report["results"].append(row)
    finally:
        tmp.cleanup()
    report["machine"]["loadavg_1min_after"] = round(os.getloadavg()[0], 2)
    return report


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="bench_backends", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--bundle", nargs="+", help="exported bundle directories (several are "
                                                 "timed in the same interleaved rounds)")
    src.add_argument("--config", choices=sorted(CONFIGS), help="build and export a demo model")
    p.add_argument("--backends", nargs="+", default=["torch", "onnxruntime"],
                   choices=["torch", "onnxruntime", "tensorrt", "torch_tensorrt"])
    p.add_argument("--sizes", nargs="+", type=parse_size, default=[(480, 640), (518, 1036)],
                   help="frame sizes WIDTHxHEIGHT (default 640x480 1036x518)")
    p.add_argument("--iters", type=int, default=40, help="timed frames per variant and size")
    p.add_argument("--warmup", type=int, default=5, help="untimed frames first")
    p.add_argument("--rounds", type=int, default=4, help="interleaved timing rounds")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "fp16", "bf16"])
    p.add_argument("--compile", action="store_true", help="also time torch.compile variants")
    p.add_argument("--cuda-graphs", action="store_true", help="also time CUDA-graph variants")
    p.add_argument("--ort-providers", nargs="+", default=None,
                   choices=["cpu", "cuda", "tensorrt"], help="default: cpu, or cuda on a GPU")
    p.add_argument("--ort-threads", nargs="+", type=int, default=[0],
                   help="ORT intra-op thread counts to time (0 = ORT's default)")
    p.add_argument("--ort-no-spin", action="store_true", help="ORT pool threads sleep when idle")
    p.add_argument("--ort-opt", default="all", choices=["all", "extended", "basic", "disable"])
    p.add_argument("--torch-threads", nargs="+", type=int, default=[0],
                   help="torch thread counts to time (0 = torch's default)")
    p.add_argument("--export-fp16", action="store_true", help="export the graph with --fp16")
    p.add_argument("--outputs", nargs="*", default=["heatmap", "mask", "overlay"],
                   choices=["heatmap", "mask", "overlay"])
    p.add_argument("--score-range-from-photos", action="store_true",
                   help="torch-only runs: compute the display range (slow for big models)")
    p.add_argument("--out", help="also write the JSON report here")
    args = p.parse_args(argv)
    if args.ort_providers is None:
        args.ort_providers = ["cpu"] if resolve_device(args.device) == "cpu" else ["cuda"]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    report = run(args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
