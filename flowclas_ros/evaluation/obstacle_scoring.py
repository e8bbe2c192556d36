"""Scoring the protocol's small-obstacle parts (:mod:`flowclas_ros.data.obstacle_sets`).

Frames are scored at their own resolution by a :data:`~.scoring.Scorer` (it decides the model's
input size). Every part is scored two ways, with the metric definitions of :mod:`.metrics`
(exact, float32 scores of valid pixels only, freed after each part):

* the **anomaly way**: every valid pixel (VOID, e.g. the nuScenes hood, left out) -> ``auprc``,
  ``fpr95``, ``auroc``;
* the **obstacle way**: only the drivable surface with its obstacles (``roads/<name>.png``),
  everything else VOID -> ``road_auprc``, ``road_fpr95``, ``road_auroc``.

**Threshold.** ``t`` flags ``fpr`` of the inlier pixels of ``hires_clean`` (all valid pixels,
frames of drives that carry no obstacles; :data:`HIRES_CALIBRATION_PART`), unless the caller
gives one. At ``t`` every part reports ``fpr_at_threshold`` (its inlier pixels flagged),
``road_fpr_at_threshold`` (its road inlier pixels flagged), ``tpr_at_threshold`` (obstacle
pixels flagged) and the component figures:

* flagged = ``score >= t`` on the drivable surface (the obstacle way's region of interest);
  **predicted components** = 8-connected components of the flagged pixels, no size filter;
* a ground-truth obstacle (one composited object: the ANOMALY pixels inside its box, listed in
  the part's manifest) is **found** when at least half of its pixels are flagged;
* **recall** (per size bucket and overall) = found obstacles / obstacles; buckets by the
  object's pixels at full resolution: ``small`` under 500, ``medium`` 500 to 5,000, ``large``
  over 5,000;
* **precision** = predicted components touching (sharing a pixel with) any obstacle / predicted
  components (NaN when there is none); pooled over the part's frames, one for all buckets;
* **F1** per bucket = 2 P R_b / (P + R_b) from that bucket's recall and the overall precision
  (0 when P is NaN or P + R_b = 0); ``f1`` from the overall recall;
* clean parts report ``pred_components`` and ``fp_components_per_frame`` (each one a false
  alarm on the road).

**Obstacle score** (half of the selection score, :func:`obstacle_score`)::

    obstacle_score = mean over OBSTACLE_SELECTION_PARTS of
                     ((AUPRC - FPR95) / 2 + 0.5 + (road_AUPRC - road_FPR95) / 2 + 0.5) / 2
"""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from flowclas_ros.data.obstacle_sets import (
    HIRES_CALIBRATION_PART,
    OBSTACLE_PARTS,
    ROADS,
    SIZE_BUCKETS,
    size_bucket,
)

from ..labels import ANOMALY, INLIER, VOID
from .metrics import ExactPixelMetrics
from .scoring import EvaluationError, IgnoringDataset, Scorer

OBSTACLE_SELECTION_PARTS = OBSTACLE_PARTS
EIGHT = np.ones((3, 3), bool)


def _term(r: dict, prefix: str = "") -> float:
    return (r[prefix + "auprc"] - r[prefix + "fpr95"]) / 2 + 0.5


def obstacle_score(results: dict[str, dict],
                   parts: Sequence[str] = OBSTACLE_SELECTION_PARTS) -> float:
    """Mean over ``parts`` of the two ways' (AUPRC - FPR95) / 2 + 0.5, averaged."""
    return float(np.mean([(_term(results[p]) + _term(results[p], "road_")) / 2 for p in parts]))


class ComponentCounts:
    """Found obstacles per size bucket and predicted components, pooled over frames."""

    def __init__(self):
        self.n = dict.fromkeys(SIZE_BUCKETS, 0)
        self.found = dict.fromkeys(SIZE_BUCKETS, 0)
        self.pred = 0
        self.pred_on_obstacle = 0

    def update(self, flagged: np.ndarray, roi: np.ndarray, label: np.ndarray,
               boxes: Sequence[Sequence[int]]) -> None:
        """Add one frame's counts.

        flagged, roi (H, W) bool; label 0/1/255; boxes [y0, x0, h, w] of the obstacles.
        """
        obstacle = label == ANOMALY
        for y0, x0, h, w in boxes:
            sl = (slice(y0, y0 + h), slice(x0, x0 + w))
            px = int(obstacle[sl].sum())
            if px == 0:
                continue
            b = size_bucket(px)
            self.n[b] += 1
            self.found[b] += int(2 * int((flagged[sl] & obstacle[sl]).sum()) >= px)
        cc, n = ndimage.label(flagged & roi, structure=EIGHT)
        self.pred += n
        if n:
            self.pred_on_obstacle += int(np.unique(cc[obstacle & (cc > 0)]).size)

    def result(self, frames: int) -> dict:
        nan = float("nan")
        prec = self.pred_on_obstacle / self.pred if self.pred else nan

        def f1(r: float) -> float:
            if math.isnan(prec) or math.isnan(r) or prec + r == 0:
                return 0.0
            return 2 * prec * r / (prec + r)

        total = sum(self.n.values())
        out = {"objects": total, "pred_components": self.pred,
               "fp_components_per_frame": (self.pred - self.pred_on_obstacle) / max(frames, 1)}
        if total:
            rec = sum(self.found.values()) / total
            out.update(recall=rec, precision=prec, f1=f1(rec))
            for b in SIZE_BUCKETS:
                rb = self.found[b] / self.n[b] if self.n[b] else nan
                out.update({f"objects_{b}": self.n[b], f"recall_{b}": rb, f"f1_{b}": f1(rb)})
        return out


def _read_roi(part_dir: Path, name: str, shape) -> np.ndarray:
    f = part_dir / ROADS / f"{name}.png"
    if not f.is_file():
        raise EvaluationError(f"{f} is missing: a small-obstacle part needs roads/<name>.png")
    with Image.open(f) as im:
        roi = np.asarray(im) > 0
    if roi.shape != tuple(shape):
        raise EvaluationError(f"{f} is {roi.shape}, its frame {tuple(shape)}")
    return roi


def _boxes(part_dir: Path) -> dict[str, list]:
    rows = json.loads((part_dir / "manifest.json").read_text())["rows"]
    return {r["name"]: [o["box"] for o in r["objects"]] for r in rows}


def part_dataset(part_dir: Path, ignore=None):
    """Return a protocol part's frames, VOID where ``ignore`` (a robot's ignore mask) is set."""
    from flowclas_ros.data.datasets import build_dataset

    ds = build_dataset("folder", part_dir)
    return ds if ignore is None else IgnoringDataset(ds, ignore)


def _frames(scorer: Scorer, part_dir: Path, limit: int | None, ignore=None):
    """(name, score float32, label, roi) of each frame of a part."""
    ds = part_dataset(part_dir, ignore)
    n = len(ds) if limit is None else min(limit, len(ds))
    for i in range(n):
        sample = ds[i]
        s = np.asarray(scorer(sample), dtype=np.float32)
        if s.shape != sample.label.shape:
            raise EvaluationError(f"score map of {sample.name} is {s.shape}, its frame "
                                  f"{sample.label.shape}: maps must be at the frame's resolution")
        yield sample.name, s, sample.label, _read_roi(part_dir, sample.name, s.shape)


class _PartScorer:
    """Both ways' pixel metrics of one part, and its figures at a threshold."""

    def __init__(self, part_dir: Path):
        self.dir = part_dir
        self.boxes = _boxes(part_dir)
        self.all = ExactPixelMetrics()
        self.road = ExactPixelMetrics()
        self.frames = 0
        self.flag = {"in": 0, "in_road": 0, "pos": 0}
        self.count = {"in": 0, "in_road": 0, "pos": 0}
        self.comp = ComponentCounts()

    def pixels(self, s, label, roi) -> None:
        self.all.update(s, label)
        self.road.update(s, np.where(roi, label, VOID))
        self.frames += 1

    def at_threshold(self, name, s, label, roi, t: float) -> None:
        flagged = s >= t
        for key, m in (("in", label == INLIER), ("in_road", (label == INLIER) & roi),
                       ("pos", label == ANOMALY)):
            self.flag[key] += int(np.count_nonzero(flagged & m))
            self.count[key] += int(np.count_nonzero(m))
        self.comp.update(flagged, roi, label, self.boxes.get(name, []))

    def result(self) -> dict:
        rate = {k: self.flag[k] / self.count[k] if self.count[k] else float("nan")
                for k in self.flag}
        r = {"frames": self.frames, "pixels": self.all.n_pos + self.all.n_neg,
             "road_pixels": self.road.n_pos + self.road.n_neg,
             "fpr_at_threshold": rate["in"], "road_fpr_at_threshold": rate["in_road"]}
        if self.all.n_pos:
            r["tpr_at_threshold"] = rate["pos"]
            r.update(self.all.compute())
            r.update({f"road_{k}": v for k, v in self.road.compute().items()})
            r["anomaly_fraction"] = self.all.n_pos / r["pixels"]
        r.update(self.comp.result(self.frames))
        return {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in r.items()}


def evaluate_hires_parts(scorer: Scorer, root: str | Path, parts: Sequence[str], *,
                         fpr: float, threshold: float | None = None, limit: int | None = None,
                         log: Callable[[str], None] | None = None, ignore=None) -> dict:
    """Compute the figures of the small-obstacle ``parts`` of a built protocol (module docstring).

    ``ignore``: a robot's ignore mask (:class:`~flowclas_ros.outputs.ignore_mask.IgnoreMask`),
    its pixels VOID in every frame (calibration included).

    Returns {"parts": {part: figures}, "threshold": t, "calibrated_on": part or None}.
    """
    root = Path(root)
    results: dict[str, dict] = {}
    calibrated_on = None
    if threshold is None:
        if not (root / HIRES_CALIBRATION_PART).is_dir():
            raise ValueError(f"{root} lacks {HIRES_CALIBRATION_PART}: cannot calibrate the "
                             f"threshold of the small-obstacle parts")
        calibrated_on = HIRES_CALIBRATION_PART
        ps = _PartScorer(root / HIRES_CALIBRATION_PART)
        with tempfile.TemporaryDirectory(prefix="flowclas_hires_") as tmp:
            names = []
            for name, s, label, roi in _frames(scorer, ps.dir, limit, ignore):
                ps.pixels(s, label, roi)
                np.save(Path(tmp) / f"{len(names):06d}.npy", s)
                names.append(name)
            threshold = float(ps.all.threshold_at_fpr(fpr))
            ds = part_dataset(ps.dir, ignore)
            for i, name in enumerate(names):
                label = ds[i].label
                ps.at_threshold(name, np.load(Path(tmp) / f"{i:06d}.npy"), label,
                                _read_roi(ps.dir, name, label.shape), threshold)
        if HIRES_CALIBRATION_PART in parts:
            results[HIRES_CALIBRATION_PART] = ps.result()
        del ps
    for part in parts:
        if part in results:
            continue
        ps = _PartScorer(root / part)
        for name, s, label, roi in _frames(scorer, ps.dir, limit, ignore):
            ps.pixels(s, label, roi)
            ps.at_threshold(name, s, label, roi, threshold)
        results[part] = ps.result()
        del ps
    if log:
        for part, r in results.items():
            log(f"protocol {part}: " + ", ".join(f"{k} {v:.4f}" for k, v in r.items()
                                                 if isinstance(v, float)))
    return {"parts": {p: results[p] for p in parts}, "threshold": threshold,
            "calibrated_on": calibrated_on}


__all__ = ["ComponentCounts", "OBSTACLE_SELECTION_PARTS", "evaluate_hires_parts",
           "obstacle_score"]
