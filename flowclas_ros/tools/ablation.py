r"""Train a list of candidate recipes and rank them on the validation protocol.

    python -m flowclas_ros.tools.ablation --candidates config/ablation_small_obstacles.yaml \
        --protocol runs/protocol_v2 --out runs/ablation_small [--only NAME ...]

The candidates file (YAML)::

    base: train_small_obstacles          # a config file or the name of a shipped one
    overrides: [train.progress=false]    # applied to every candidate
    checkpoint: last                     # last (default) or best (keeps the configs' eval:
                                         # best.pt selected during training is exported)
    candidates:
      - {name: prototype, overrides: [model.flow.subnet=conv, ...]}
      - {name: shipped, bundle: models/flowclas_lite2_camvid}   # an existing bundle, not trained
      - {name: latent, from: prototype, score: latent}      # a candidate's checkpoint, rescored
      - {name: prior, from: prototype, overrides: [model.road_prior.weight=1.0]}  # model.* only
      - {name: big, from: prototype, long_side: 1536}           # deployed at another resolution

**Deployed resolution** of a candidate: its ``long_side`` (``from`` candidates), else its
config's ``eval.long_side`` (frames keep their aspect ratio, scaled so that their long side is
that, never enlarged: a format-3 bundle, ``export --long-side``), else ``--input-size`` (every
frame squeezed to it, as before). Each candidate is trained into OUT/<name> (a finished run is
reused; an unfinished one resumes), exported to OUT/<name>/bundle (the threshold and display
range calibrated on the protocol's clean part at ``--fpr`` as ``export --calibration`` does:
``hires_clean`` for an aspect-keeping bundle where the protocol has it, else ``kitti_clean``),
scored in ONNX Runtime on every part of the protocol (as the node runs it; the protocol
calibrates its own thresholds on its clean parts), timed (ONNX Runtime on this CPU, a 1920x1080
frame in, heatmap, mask and overlay out, ``--latency-frames`` frames after three of warm-up)
and measured (the bundle's files in MB). OUT/<name>/protocol.json holds its row (a finished
candidate is reused); OUT/table.md and OUT/results.json list all candidates by selection score.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import yaml

PARTS_SHOWN = ("kitti_pasted", "idd_pasted", "camvid_pasted", "kitti_classes", "camvid_hardcopy")
OBSTACLE_SHOWN = ("obstacles_kitti", "obstacles_nuscenes", "obstacles_cityscapes")
BUCKETS = ("small", "medium", "large")
LATENCY_FRAME = (1080, 1920)  # H, W of the frame the latency is measured on


# --- the candidate's model and resolution ---------------------------------------------------

def deployed(spec: dict, cfg_long_side: int | None, input_size) -> dict:
    """Return the candidate's deployed resolution.

    {"resolution": {"long_side": L} or None, "input_size": (h, w) the graph is verified at,
    "label": what the table says}.
    """
    long_side = spec.get("long_side") or cfg_long_side
    if long_side:
        from flowclas_ros.bundle.preprocess import Resolution

        size = Resolution(long_side=int(long_side)).model_size(*LATENCY_FRAME)
        return {"resolution": {"long_side": int(long_side)}, "input_size": size,
                "label": f"long side {int(long_side)}"}
    h, w = (int(v) for v in input_size)
    return {"resolution": None, "input_size": (h, w), "label": f"{h}x{w} (squeezed)"}


def _train(spec: dict, base: str, common: list[str], run: Path, keep_eval: bool):
    """Return the candidate's config, trained into ``run`` unless it finished there already."""
    from flowclas_ros.training.config import load_config
    from flowclas_ros.training.trainer import Trainer

    from .common import resolve_config

    cfg = load_config(resolve_config(spec.get("base", base)),
                      common + list(spec.get("overrides", [])))
    if not (run / "summary.json").is_file():
        if not keep_eval:
            cfg.eval.val_dir = cfg.eval.protocol = None  # scored below, on the last checkpoint
        Trainer(cfg, run, resume=(run / "checkpoints" / "last.pt").is_file()).fit()
    return cfg


def _checkpoint(run: Path, keep_eval: bool) -> Path:
    best = run / "checkpoints" / "best.pt"
    return best if keep_eval and best.is_file() else run / "checkpoints" / "last.pt"


def _from_model(spec: dict, out: Path, keep_eval: bool):
    """Return (model, train config dict, source run) of a ``from`` candidate.

    The model is the source's checkpoint under its own model config with the candidate's
    ``score`` and ``model.*`` overrides.
    """
    from flowclas_ros.model.checkpoint import load_checkpoint
    from flowclas_ros.model.config import ModelConfig
    from flowclas_ros.model.flowclas import FlowCLAS
    from flowclas_ros.training.config import TrainConfig, apply_overrides

    src = out / spec["from"]
    ck = load_checkpoint(_checkpoint(src, keep_eval))
    overrides = list(spec.get("overrides", []))
    if any(not o.startswith("model.") for o in overrides):
        raise ValueError(f"{spec['name']}: a 'from' candidate takes model.* overrides only")
    if spec.get("score"):
        overrides.append(f"model.score={spec['score']}")
    cfg = TrainConfig.from_dict({**yaml.safe_load((src / "config.yaml").read_text()),
                                 "model": ModelConfig.from_dict(ck["model_config"]).to_dict()})
    cfg = apply_overrides(cfg, overrides)
    model = FlowCLAS(cfg.model)
    model.load_trainable_state_dict(ck["model"])
    return model.eval(), cfg, src


# --- export, protocol, latency -------------------------------------------------------------

def export_candidate(model, bundle: Path, dep: dict, protocol: Path, fpr: float,
                     train_config=None) -> None:
    """Calibrate ``model`` as export does and write the bundle at the deployed resolution ``dep``.

    Calibration as in export: torch, scored as the runtime runs it; threshold, display range,
    exceedance table; on the protocol's clean part.
    """
    from flowclas_ros.bundle.preprocess import Resolution
    from flowclas_ros.bundle.writer import exceedance_section
    from flowclas_ros.export.bundle import write_bundle
    from flowclas_ros.export.calibration import calibrate
    from flowclas_ros.model.config import licence_notes

    part = "hires_clean" if dep["resolution"] and (protocol / "hires_clean").is_dir() \
        else "kitti_clean"
    scoring = Resolution.of(dep["resolution"]) if dep["resolution"] else dep["input_size"]
    cal = calibrate(model, protocol / part, scoring, fpr)
    exc = cal.get("exceedance")
    exceedance = exceedance_section(exc["table"], exc["pixels"], exc["source"]) if exc else None
    write_bundle(model.cpu(), bundle, input_size=dep["input_size"], threshold=cal["threshold"],
                 score_range=cal["score_range"], threshold_fpr=fpr,
                 threshold_method=cal["threshold_method"],
                 score_range_method=cal["score_range_method"], train_config=train_config,
                 metrics={"calibration": cal["metrics"]}, resolution=dep["resolution"],
                 card_notes=licence_notes(model.config), exceedance=exceedance)


def score_bundle(path: Path, protocol: Path, fpr: float) -> dict:
    """Every part of the protocol, the bundle run in ONNX Runtime as the node runs it."""
    from flowclas_ros.evaluation.protocol import evaluate_protocol
    from flowclas_ros.evaluation.scoring import load_scorer

    scorer, close = load_scorer(path, device="cpu", backend="onnxruntime")
    try:
        return evaluate_protocol(scorer, protocol, fpr=fpr,
                                 log=logging.getLogger("flowclas_ros.ablation").info)
    finally:
        close()


def bundle_latency(path: Path, frames: int = 30, warmup: int = 3,
                   size: tuple[int, int] = LATENCY_FRAME) -> dict:
    """Time a bundle with ONNX Runtime on this CPU, one (H, W) = ``size`` frame in.

    Heatmap + mask + overlay out (Backend.infer, as the node with every output subscribed),
    with the node's defaults.
    """
    from flowclas_ros.runtime import create_backend

    from .bench.common import latency_row, machine_line, time_ms

    frame = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    backend = create_backend(path, backend="onnxruntime", device="cpu", cpu_spinning=False)
    try:
        ms = time_ms(lambda: backend.infer(frame, heatmap=True, mask=True, overlay=True),
                     frames, warmup)
    finally:
        backend.close()
    return {**latency_row(ms), "frame": f"{size[1]}x{size[0]}", "machine": machine_line()}


def bundle_mb(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.iterdir() if f.is_file()) / 2**20, 2)


# --- one candidate ---------------------------------------------------------------------------

def _timing(run: Path) -> dict:
    s = json.loads((run / "summary.json").read_text())
    t = s.get("timing", {})
    return {"train_s": t.get("total_s"), "cache_s": t.get("cache_s"), "loop_s": t.get("train_s"),
            "eval_s": t.get("eval_s"), "steps": s.get("steps"),
            "cache_gib": round(s["cache"]["bytes"] / 2**30, 3) if s.get("cache") else None}


def run_candidate(spec: dict, base: str, common: list[str], out: Path, protocol: Path,
                  fpr: float, input_size, keep_eval: bool = False,
                  latency_frames: int = 30) -> dict:
    """Train (or reuse) one candidate, export, score and time it; returns its row."""
    name = spec["name"]
    result_file = out / name / "protocol.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    row: dict = {"name": name, "overrides": spec.get("overrides", [])}
    bundle = out / name / "bundle"
    if "bundle" in spec:
        bundle = Path(spec["bundle"])
        row.update(train_s=None, deployed=_bundle_label(bundle))
    else:
        if "from" in spec:  # another candidate's checkpoint, scored differently
            model, cfg, run = _from_model(spec, out, keep_eval)
            row["overrides"] = [f"(checkpoint of {spec['from']})", *row["overrides"]] + (
                [f"model.score={spec['score']}"] if spec.get("score") else [])
        else:
            run = out / name
            cfg = _train(spec, base, common, run, keep_eval)
            from flowclas_ros.model.checkpoint import load_model

            model = load_model(_checkpoint(run, keep_eval))
        row.update(_timing(run))
        dep = deployed(spec, cfg.eval.long_side, input_size)
        row["deployed"] = dep["label"]
        if not (bundle / "manifest.json").is_file():
            export_candidate(model, bundle, dep, protocol, fpr, cfg.to_dict())
    t0 = time.perf_counter()
    report = score_bundle(bundle, protocol, fpr)
    row["protocol_s"] = round(time.perf_counter() - t0, 1)
    row.update({k: report.get(k) for k in ("score", "score_legacy", "score_obstacles",
                                           "threshold", "hires_threshold")})
    row["parts"] = report["parts"]
    row["latency"] = bundle_latency(bundle, latency_frames)
    row["bundle_mb"] = bundle_mb(bundle)
    result_file.parent.mkdir(parents=True, exist_ok=True)
    result_file.write_text(json.dumps(row, indent=1))
    return row


def _bundle_label(path: Path) -> str:
    from flowclas_ros.bundle.reader import load_bundle

    b = load_bundle(path, check_hashes=False)
    r = b.manifest["input"].get("resolution")
    return f"long side {r['long_side']}" if r and r.get("long_side") else \
        f"{b.input_size[0]}x{b.input_size[1]} (squeezed)"


# --- the table -------------------------------------------------------------------------------

def _f(v, fmt=".3f") -> str:
    return "" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, fmt)


def pooled_recall(parts: dict, bucket: str) -> float | None:
    """Found / all obstacles of one size bucket over the obstacle parts."""
    n = found = 0
    for p in OBSTACLE_SHOWN:
        r = parts.get(p, {})
        k = r.get(f"objects_{bucket}") or 0
        if k and r.get(f"recall_{bucket}") is not None:
            n += k
            found += r[f"recall_{bucket}"] * k
    return found / n if n else None


def table(rows: list[dict]) -> str:
    """Markdown: one line per candidate, best selection score first; then its parts."""
    head = ["rank", "candidate", "deployed", "score", "legacy", "obstacles"]
    head += [f"{p.removeprefix('obstacles_')} AUPRC / FPR95 (road)" for p in OBSTACLE_SHOWN]
    head += [f"recall {b}" for b in BUCKETS]
    head += ["FPR@thr hires / cityscapes hires", "train min (cache)", "p50 / p99 ms 1080p", "MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ranked = sorted(rows, key=lambda r: -(r.get("score") or -1))
    for i, r in enumerate(ranked, 1):
        p = r["parts"]
        obst = [f"{_f(p[k]['auprc'])} / {_f(p[k]['fpr95'])} ({_f(p[k].get('road_auprc'))} / "
                f"{_f(p[k].get('road_fpr95'))})" if "auprc" in p.get(k, {}) else ""
                for k in OBSTACLE_SHOWN]
        fpr = " / ".join(_f(p.get(k, {}).get("fpr_at_threshold"))
                         for k in ("hires_clean", "cityscapes_hires_clean"))
        t, c = r.get("train_s"), r.get("cache_s")
        lat = r.get("latency") or {}
        cells = [str(i), r["name"], r.get("deployed", ""), _f(r.get("score"), ".4f"),
                 _f(r.get("score_legacy"), ".4f"), _f(r.get("score_obstacles"), ".4f"), *obst,
                 *[_f(pooled_recall(p, b)) for b in BUCKETS], fpr,
                 "" if t is None else f"{t / 60:.1f} ({_f(c and c / 60, '.1f')})",
                 f"{_f(lat.get('p50_ms'), '.0f')} / {_f(lat.get('p99_ms'), '.0f')}",
                 _f(r.get("bundle_mb"), ".1f")]
        lines.append("| " + " | ".join(cells) + " |")
    legacy = ["", "| candidate | " + " | ".join(f"{k} AUPRC / FPR95" for k in PARTS_SHOWN)
              + " | FPR@thr cityscapes |", "|" + "---|" * (len(PARTS_SHOWN) + 2)]
    for r in ranked:
        p = r["parts"]
        cells = [f"{_f(p[k]['auprc'])} / {_f(p[k]['fpr95'])}" if "auprc" in p.get(k, {}) else ""
                 for k in PARTS_SHOWN]
        legacy.append(f"| {r['name']} | " + " | ".join(cells) + " | "
                      + _f(p.get("cityscapes_clean", {}).get("fpr_at_threshold")) + " |")
    return "\n".join(lines + legacy) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flowclas_ros.tools.ablation",
                                description="Train candidate recipes and rank them on the "
                                            "validation protocol.")
    p.add_argument("--candidates", required=True, help="YAML file (see the module docstring)")
    p.add_argument("--protocol", required=True, help="a built validation protocol folder")
    p.add_argument("--out", required=True, help="folder for the runs and the table")
    p.add_argument("--only", nargs="+",
                   help="run only these candidates (the table lists all done)")
    p.add_argument("--fpr", type=float, default=0.05)
    p.add_argument("--input-size", nargs=2, type=int, default=[360, 480], metavar=("H", "W"),
                   help="the deployed size of candidates without a long side (squeezed)")
    p.add_argument("--latency-frames", type=int, default=30)
    args = p.parse_args(argv)
    from .common import setup_logging

    setup_logging()
    spec = yaml.safe_load(Path(args.candidates).read_text())
    if spec.get("checkpoint", "last") not in ("last", "best"):
        p.error("the candidates file's checkpoint must be last or best")
    keep_eval = spec.get("checkpoint", "last") == "best"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for cand in spec["candidates"]:
        if args.only and cand["name"] not in args.only:
            done = out / cand["name"] / "protocol.json"
            if done.is_file():
                rows.append(json.loads(done.read_text()))
            continue
        t0 = time.perf_counter()
        rows.append(run_candidate(cand, spec["base"], list(spec.get("overrides", [])), out,
                                  Path(args.protocol), args.fpr, tuple(args.input_size),
                                  keep_eval, args.latency_frames))
        print(f"{cand['name']}: score {rows[-1].get('score') or float('nan'):.4f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
        (out / "results.json").write_text(json.dumps(rows, indent=1))
        (out / "table.md").write_text(table(rows))
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    (out / "table.md").write_text(table(rows))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
