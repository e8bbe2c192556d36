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

    legacy = mean over SELECTION_PARTS of (AUPRC - FPR95) / 2 + 0.5

and, on a protocol built with the small-obstacle parts (``protocol.json`` version 2, scored by
:mod:`.obstacle_scoring` with their own threshold, calibrated on ``hires_clean``)::

    score = 0.5 * legacy + 0.5 * obstacles
    obstacles = mean over OBSTACLE_SELECTION_PARTS of the mean of the anomaly way's and the
                obstacle way's (AUPRC - FPR95) / 2 + 0.5

so small obstacles on the road at camera resolution weigh as much as today's parts together.
Where the small-obstacle parts are not all scored (an old protocol folder, or ``parts`` without
them: :data:`SCORE_PARTS` lists every part the full score needs), ``score`` is ``legacy``,
exactly as before; ``score_legacy`` and ``score_obstacles`` are reported beside it otherwise.

SELECTION_PARTS are the composited parts from domains the demo model never trains on
(``kitti_pasted``, ``idd_pasted``) and its own domain (``camvid_pasted``). AUPRC rewards ranking
the anomaly above everything; FPR95 punishes a foreign scene that lights up when the anomaly is
found, which is what the old pasted-CamVid yardstick did not see. The score lies in [0, 1].

The command for any checkpoint or bundle: ``python -m flowclas_ros.tools.protocol``.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from flowclas_ros.data.obstacle_sets import HIRES_CALIBRATION_PART, HIRES_PARTS

from ..labels import ANOMALY, INLIER
from .evaluate import run_evaluation
from .metrics import threshold_at_fpr
from .obstacle_scoring import (
    OBSTACLE_SELECTION_PARTS,
    evaluate_hires_parts,
    obstacle_score,
    part_dataset,
)
from .scoring import Scorer, model_scorer, module_device

SELECTION_PARTS = ("kitti_pasted", "idd_pasted", "camvid_pasted")
CALIBRATION_PART = "kitti_clean"
PASTED_PARTS = ("kitti_pasted", "idd_pasted", "camvid_pasted", "kitti_classes", "camvid_hardcopy")
CLEAN_PARTS = ("kitti_clean", "cityscapes_clean")
DEFAULT_FPR = 0.05
SCORE_PARTS = SELECTION_PARTS + (CALIBRATION_PART,) + OBSTACLE_SELECTION_PARTS + \
    (HIRES_CALIBRATION_PART,)


def selection_score(results: dict[str, dict], parts: Sequence[str] = SELECTION_PARTS) -> float:
    """Return the mean over ``parts`` of (AUPRC - FPR95) / 2 + 0.5.

    This is the legacy half of the score (see the module docstring).
    """
    vals = [(results[p]["auprc"] - results[p]["fpr95"]) / 2 + 0.5 for p in parts]
    return float(np.mean(vals))


def _has(results: dict, parts, key: str = "auprc") -> bool:
    return all(p in results and key in results[p] for p in parts)


def combined_score(results: dict[str, dict]) -> dict:
    """Return the combined score of ``results`` (see the module docstring).

    {"score"} from the legacy parts, or with every small-obstacle part scored, {"score",
    "score_legacy", "score_obstacles"}; {} or only the obstacle half where the selection parts
    are missing.
    """
    out: dict = {}
    legacy = selection_score(results) if _has(results, SELECTION_PARTS) else None
    if _has(results, OBSTACLE_SELECTION_PARTS) and _has(results, OBSTACLE_SELECTION_PARTS,
                                                        "road_auprc"):
        obstacles = obstacle_score(results)
        out["score_obstacles"] = obstacles
        if legacy is not None:
            out.update(score=0.5 * legacy + 0.5 * obstacles, score_legacy=legacy)
    elif legacy is not None:
        out["score"] = legacy
    return out


def _part_scores(scorer: Scorer, part_dir: Path, limit: int | None, ignore=None):
    """(scores of valid pixels, labels of valid pixels) of a whole part, in memory (float32)."""
    ds = part_dataset(part_dir, ignore)
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
                      log: Callable[[str], None] | None = None, ignore=None) -> dict:
    """Every part's figures for ``scorer`` (Sample -> (H, W) score map) and the selection score.

    ``threshold``: use this mask threshold instead of calibrating one on kitti_clean (and
    hires_clean) at ``fpr`` (a bundle's own). ``parts``: a subset (:data:`SCORE_PARTS` for the
    full score). Returns {"parts": {part: figures}, "threshold", "fpr", "score"}, with
    "hires_threshold" (and "score_legacy", "score_obstacles") when small-obstacle parts are
    scored. ``ignore``: a robot's ignore mask
    (:class:`~flowclas_ros.outputs.ignore_mask.IgnoreMask`), its pixels VOID in every frame of
    every part, the calibration parts included (a part of another aspect ratio raises).
    """
    from flowclas_ros.data.protocol_sets import load_protocol

    root = Path(protocol)
    desc = load_protocol(root)
    built = list(desc["parts"])
    wanted = [p for p in (parts or built) if p in built]
    hires = [p for p in wanted if p in HIRES_PARTS]
    wanted = [p for p in wanted if p not in HIRES_PARTS]
    given = threshold
    t0 = time.perf_counter()
    cache: dict[str, tuple] = {}
    if threshold is None and wanted:
        if CALIBRATION_PART not in built:
            raise ValueError(f"{root} lacks {CALIBRATION_PART}: cannot calibrate a threshold")
        s, lab, _, _ = cache.setdefault(CALIBRATION_PART,
                                        _part_scores(scorer, root / CALIBRATION_PART, limit,
                                                     ignore))
        threshold = float(threshold_at_fpr(s, lab, fpr))
    results: dict[str, dict] = {}
    for part in wanted:
        if part in cache:
            s, lab, ds, n = cache.pop(part)
        else:
            s, lab, ds, n = _part_scores(scorer, root / part, limit, ignore)
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
    out = {"parts": results, "threshold": threshold, "fpr": fpr}
    if hires:
        h = evaluate_hires_parts(scorer, root, hires, fpr=fpr, threshold=given, limit=limit,
                                 log=log, ignore=ignore)
        results.update(h["parts"])
        out["hires_threshold"] = h["threshold"]
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out.update(combined_score(results))
    return out


def evaluate_model_on_protocol(model, protocol: str | Path, input_size: tuple[int, int],
                               *, device: str | None = None, autocast: bool = False,
                               **kwargs) -> dict:
    """Run :func:`evaluate_protocol` for a torch FlowCLAS model.

    The model runs as a bundle of ``input_size`` would be; the model's train/eval mode and
    device are restored afterwards.
    """
    was_training, was_on = model.training, module_device(model)
    try:
        return evaluate_protocol(model_scorer(model, device, autocast, input_size), protocol,
                                 **kwargs)
    finally:
        model.to(was_on).train(was_training)


__all__ = ["CALIBRATION_PART", "OBSTACLE_SELECTION_PARTS", "SCORE_PARTS", "SELECTION_PARTS",
           "combined_score", "evaluate_model_on_protocol", "evaluate_protocol", "selection_score"]
