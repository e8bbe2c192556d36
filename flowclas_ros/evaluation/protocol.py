"""The validation protocol: a model's figures on every part of it, and the selection score.

The parts are built by :mod:`flowclas_ros.data.protocol_sets` from the shared data only. Every
frame is scored as the deployed node scores it (resized to the model's input size, the score
resized back), with the benchmarks' own metric definitions (:mod:`.metrics`).

Per part:

* pasted parts: AUPRC, FPR95, AUROC (and, with ``components=True``, SMIYC's sIoU, PPV, mean F1);
* at the *calibrated threshold* — the one that flags ``fpr`` of the inlier pixels of
  ``kitti_clean``, as ``export --calibration`` sets it — every part reports the false-positive
  rate of its inlier pixels (``fpr_at_threshold``: does the promise hold on other domains?)
  and pasted parts the recall of their anomaly pixels (``tpr_at_threshold``).

The selection score (higher is better), documented in README "Validation protocol"::

    score = mean over SELECTION_PARTS of (AUPRC - FPR95) / 2 + 0.5

SELECTION_PARTS are the composited parts from domains the demo model never trains on
(``kitti_pasted``, ``idd_pasted``) and its own domain (``camvid_pasted``). AUPRC rewards ranking
the anomaly above everything; FPR95 punishes a foreign scene that lights up when the anomaly is
found, which is what the old pasted-CamVid yardstick did not see. The score lies in [0, 1].

CLI (any checkpoint or bundle)::

    python -m flowclas_ros.evaluation.protocol --protocol runs/protocol --model BUNDLE_OR_CKPT \\
        [--out report.json] [--components]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..labels import ANOMALY, INLIER
from .evaluate import Scorer, load_scorer, model_scorer, run_evaluation
from .metrics import threshold_at_fpr

SELECTION_PARTS = ("kitti_pasted", "idd_pasted", "camvid_pasted")
CALIBRATION_PART = "kitti_clean"
PASTED_PARTS = ("kitti_pasted", "idd_pasted", "camvid_pasted", "kitti_classes", "camvid_hardcopy")
CLEAN_PARTS = ("kitti_clean", "cityscapes_clean")
DEFAULT_FPR = 0.05


def selection_score(results: dict[str, dict], parts: Sequence[str] = SELECTION_PARTS) -> float:
    """mean over ``parts`` of (AUPRC - FPR95) / 2 + 0.5 (see the module docstring)."""
    vals = [(results[p]["auprc"] - results[p]["fpr95"]) / 2 + 0.5 for p in parts]
    return float(np.mean(vals))


def _part_scores(scorer: Scorer, part_dir: Path, limit: int | None):
    """(scores of valid pixels, labels of valid pixels) of a whole part, in memory (float32)."""
    from flowclas_ros.data.datasets import build_dataset

    ds = build_dataset("folder", part_dir)
    n = len(ds) if limit is None else min(limit, len(ds))
    s_all, l_all = [], []
    for i in range(n):
        sample = ds[i]
        s = np.asarray(scorer(sample), dtype=np.float32)
        valid = sample.label != 255
        s_all.append(s[valid])
        l_all.append(sample.label[valid])
    return np.concatenate(s_all), np.concatenate(l_all), ds, n


def evaluate_protocol(scorer: Scorer, protocol: str | Path, *, fpr: float = DEFAULT_FPR,
                      parts: Sequence[str] | None = None, limit: int | None = None,
                      components: bool = False, threshold: float | None = None,
                      log: Callable[[str], None] | None = None) -> dict:
    """Every part's figures for ``scorer`` (Sample -> (H, W) score map) and the selection score.

    ``threshold``: use this mask threshold instead of calibrating one on kitti_clean at ``fpr``
    (a bundle's own). ``parts``: a subset (the selection parts are always included when the
    score is wanted). Returns {"parts": {part: figures}, "threshold", "fpr", "score"}.
    """
    from flowclas_ros.data.protocol_sets import load_protocol

    root = Path(protocol)
    desc = load_protocol(root)
    built = list(desc["parts"])
    wanted = [p for p in (parts or built) if p in built]
    t0 = time.perf_counter()
    cache: dict[str, tuple] = {}
    if threshold is None:
        if CALIBRATION_PART not in built:
            raise ValueError(f"{root} lacks {CALIBRATION_PART}: cannot calibrate a threshold")
        s, lab, _, _ = cache.setdefault(CALIBRATION_PART,
                                        _part_scores(scorer, root / CALIBRATION_PART, limit))
        threshold = float(threshold_at_fpr(s, lab, fpr))
    results: dict[str, dict] = {}
    for part in wanted:
        if part in cache:
            s, lab, ds, n = cache.pop(part)
        else:
            s, lab, ds, n = _part_scores(scorer, root / part, limit)
        r: dict = {"frames": n, "pixels": int(s.size)}
        inl = s[lab == INLIER]
        r["fpr_at_threshold"] = float((inl >= threshold).mean()) if inl.size else float("nan")
        if (lab == ANOMALY).any():
            pos = s[lab == ANOMALY]
            r["tpr_at_threshold"] = float((pos >= threshold).mean())
            if components:
                r.update(run_evaluation(scorer, ds, components="anomaly", limit=n).metrics)
            else:
                from .metrics import pixel_metrics

                r.update(pixel_metrics(s, lab))
            r["anomaly_fraction"] = float(pos.size / s.size)
        results[part] = {k: (float(v) if isinstance(v, (float, np.floating)) else v)
                         for k, v in r.items() if not isinstance(v, (list, dict))}
        if log:
            log(f"protocol {part}: " + ", ".join(f"{k} {v:.4f}" for k, v in results[part].items()
                                                 if isinstance(v, float)))
        del s, lab
    out = {"parts": results, "threshold": threshold, "fpr": fpr,
           "seconds": round(time.perf_counter() - t0, 1)}
    if all(p in results and "auprc" in results[p] for p in SELECTION_PARTS):
        out["score"] = selection_score(results)
    return out


def evaluate_model_on_protocol(model, protocol: str | Path, input_size: tuple[int, int],
                               *, device: str | None = None, autocast: bool = False,
                               **kwargs) -> dict:
    """:func:`evaluate_protocol` for a torch FlowCLAS model run as a bundle of ``input_size``
    would be; the model's train/eval mode and device are restored afterwards."""
    from .evaluate import module_device

    was_training, was_on = model.training, module_device(model)
    try:
        return evaluate_protocol(model_scorer(model, device, autocast, input_size), protocol,
                                 **kwargs)
    finally:
        model.to(was_on).train(was_training)


def _jsonable(v):
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m flowclas_ros.evaluation.protocol",
        description="Score a checkpoint or bundle on every part of the validation protocol and "
                    "print its selection score (higher is better).")
    p.add_argument("--protocol", required=True, help="a folder built by "
                   "python -m flowclas_ros.data.protocol_sets")
    p.add_argument("--model", required=True, help="training checkpoint (.pt) or bundle folder")
    p.add_argument("--input-size", nargs=2, type=int, metavar=("H", "W"),
                   help="input size for a checkpoint (a bundle brings its own); default 360 480")
    p.add_argument("--fpr", type=float, default=DEFAULT_FPR,
                   help="inlier FPR of the threshold calibrated on kitti_clean (default 0.05)")
    p.add_argument("--bundle-threshold", action="store_true",
                   help="use the bundle's own threshold instead of calibrating one")
    p.add_argument("--parts", nargs="+", default=None)
    p.add_argument("--limit", type=int, default=None, help="frames per part (quick looks)")
    p.add_argument("--components", action="store_true", help="also sIoU, PPV, mean F1")
    p.add_argument("--backend", default="onnxruntime", help="runtime backend for a bundle")
    p.add_argument("--out", help="write the report as JSON here")
    args = p.parse_args(argv)
    path = Path(args.model)
    threshold = None
    try:
        if path.is_dir():
            scorer, close = load_scorer(path, device="cpu", backend=args.backend)
            if args.bundle_threshold:
                from flowclas_ros.export.bundle import load_bundle

                threshold = load_bundle(path).threshold
        else:
            from flowclas_ros.model.checkpoint import load_model

            size = tuple(args.input_size) if args.input_size else (360, 480)
            scorer, close = model_scorer(load_model(path), "cpu", input_size=size), (lambda: None)
        try:
            report = evaluate_protocol(scorer, args.protocol, fpr=args.fpr, parts=args.parts,
                                       limit=args.limit, components=args.components,
                                       threshold=threshold, log=print)
        finally:
            close()
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report["model"] = str(path)
    text = json.dumps(_jsonable(report), indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(f"selection score {report.get('score', float('nan')):.4f} "
          f"(threshold {report['threshold']:.4g} at FPR {args.fpr} on kitti_clean)")
    return 0


__all__ = ["CALIBRATION_PART", "SELECTION_PARTS", "evaluate_model_on_protocol",
           "evaluate_protocol", "selection_score"]

if __name__ == "__main__":
    sys.exit(main())
