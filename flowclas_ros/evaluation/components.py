"""SegmentMeIfYouCan component-level metrics: sIoU, PPV and mean F1 (METHOD.md section 8).

Per frame, following the benchmark's definitions (Chan et al. 2021, road-anomaly-benchmark):

1. Binarise: predicted anomalous where ``score >= threshold`` (the threshold with the best pixel F1
   over the dataset, :attr:`metrics.PixelResult.best_f1_threshold`; the benchmark's own code uses
   ``>`` on a histogram bin edge, which is the same cut for a threshold between score values),
   and never on void pixels.
2. 8-connected components of the prediction and of the ground truth (label 1).
3. Size filters (per track): predicted components under ``min_pred_size`` pixels are dropped;
   ground-truth components under ``min_gt_size`` pixels become void. Everything after this is
   restricted to the remaining non-void pixels (so predicted pixels on a voided small object
   count nowhere).
4. sIoU of a ground-truth component k: with K^ the predicted components touching k,
   |k ∩ K^| / |(k ∪ K^) minus predicted pixels lying on other ground-truth components|, which
   reduces to |k ∩ K^| / (|k| + |K^ ∩ background|).
   PPV of a predicted component k^: the fraction of its pixels on ground truth (any component).
5. For each tau in linspace(0.25, 0.75, 11): TP = #GT components with sIoU >= tau, FN = the
   others, FP = #predicted components with PPV < tau. Counts are summed over the dataset;
   F1(tau) = 2 TP / (2 TP + FN + FP); mean F1 averages the 11 values.
   Reported sIoU and PPV are means over all ground-truth / predicted components of the dataset.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ..labels import ANOMALY, VOID
from .metrics import _check_labels

TAUS = tuple(float(t) for t in np.linspace(0.25, 0.75, 11))
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class ComponentConfig:
    min_pred_size: int = 500  # predicted components smaller than this (pixels) are dropped
    min_gt_size: int = 100  # ground-truth components smaller than this become void
    taus: tuple[float, ...] = TAUS


TRACKS = {
    "anomaly": ComponentConfig(min_pred_size=500, min_gt_size=100),
    "obstacle": ComponentConfig(min_pred_size=50, min_gt_size=10),
}


def track_config(track: str | ComponentConfig) -> ComponentConfig:
    if isinstance(track, ComponentConfig):
        return track
    if track not in TRACKS:
        raise ValueError(f"unknown component track {track!r}; known: {sorted(TRACKS)}")
    return TRACKS[track]


@dataclass
class FrameComponents:
    """Per-component values of one frame."""

    siou: np.ndarray  # (n_gt,) sIoU of each ground-truth component kept
    ppv: np.ndarray  # (n_pred,) PPV of each predicted component kept


def frame_components(pred, labels, config: ComponentConfig | str = "anomaly") -> FrameComponents:
    """SIoU of the ground-truth and PPV of the predicted components of one frame.

    pred: (H, W) bool, the binarised prediction; labels: (H, W) 0 inlier / 1 anomaly / 255 void.
    """
    cfg = track_config(config)
    pred = np.asarray(pred, dtype=bool)
    labels = np.asarray(labels)
    if pred.shape != labels.shape or pred.ndim != 2:
        raise ValueError(f"prediction {pred.shape} and labels {labels.shape} must be the same "
                         f"2-D shape")
    _check_labels(labels)
    void = labels == VOID
    pred = pred & ~void

    pred_cc, n_pred = ndimage.label(pred, structure=EIGHT_CONNECTED)
    if n_pred:
        # drop small predictions (sizes before the ROI restriction, as the benchmark does)
        small = np.bincount(pred_cc.ravel(), minlength=n_pred + 1) < cfg.min_pred_size
        small[0] = True
        pred_cc[small[pred_cc]] = 0
    gt_cc, n_gt = ndimage.label(labels == ANOMALY, structure=EIGHT_CONNECTED)
    if n_gt:
        small = np.bincount(gt_cc.ravel(), minlength=n_gt + 1) < cfg.min_gt_size
        small[0] = False
        void |= small[gt_cc]  # small objects become void, and so does any prediction on them
    roi = ~void
    g = gt_cc[roi]
    p = pred_cc[roi]
    return _component_values(g, p, n_gt, n_pred)


def _component_values(g: np.ndarray, p: np.ndarray, n_gt: int, n_pred: int) -> FrameComponents:
    """SIoU and PPV from the ROI pixels' GT ids g and prediction ids p (0 = none), (M,) each."""
    fg = (g > 0) | (p > 0)
    key = g[fg].astype(np.int64) * (n_pred + 1) + p[fg]
    uniq, count = np.unique(key, return_counts=True)  # the sparse contingency table C[i, j]
    gi, pj = np.divmod(uniq, n_pred + 1)
    size_g = np.bincount(gi, count, minlength=n_gt + 1)  # pixels of each GT component
    size_p = np.bincount(pj, count, minlength=n_pred + 1)  # ROI pixels of each prediction
    on_bg = gi == 0
    bg_p = np.bincount(pj[on_bg], count[on_bg], minlength=n_pred + 1)  # C[0, j]
    missed = np.bincount(gi[pj == 0], count[pj == 0], minlength=n_gt + 1)  # C[i, 0]
    touch = (gi > 0) & (pj > 0)  # pairs (k, k^) that overlap
    extra = np.bincount(gi[touch], bg_p[pj[touch]], minlength=n_gt + 1)  # |K^ on background|
    gt_ids = np.flatnonzero(size_g[1:] > 0) + 1
    pred_ids = np.flatnonzero(size_p[1:] > 0) + 1
    inter = size_g[gt_ids] - missed[gt_ids]
    siou = inter / (size_g[gt_ids] + extra[gt_ids])
    ppv = 1.0 - bg_p[pred_ids] / size_p[pred_ids]
    return FrameComponents(siou=siou.astype(np.float64), ppv=ppv.astype(np.float64))


@dataclass
class ComponentMetrics:
    """Accumulates component values over frames at a fixed threshold.

    update(scores (H, W) float, labels (H, W) uint8) binarises at ``score >= threshold``;
    update_mask(pred (H, W) bool, labels) takes a ready binary prediction. compute() -> dict.
    """

    threshold: float
    config: ComponentConfig | str = "anomaly"
    _siou: list = field(default_factory=list, repr=False)
    _ppv: list = field(default_factory=list, repr=False)

    def __post_init__(self):
        self.config = track_config(self.config)

    def update(self, scores, labels) -> FrameComponents:
        scores = np.asarray(scores)
        with np.errstate(invalid="ignore"):
            pred = scores >= self.threshold  # NaN (allowed only on void) is never predicted
        return self.update_mask(pred, labels)

    def update_mask(self, pred, labels) -> FrameComponents:
        fc = frame_components(pred, labels, self.config)
        self._siou.append(fc.siou)
        self._ppv.append(fc.ppv)
        return fc

    def compute(self) -> dict:
        """siou, ppv, mean_f1 (fractions), F1 at tau 0.25/0.5/0.75 and the component counts.

        A mean over no components is NaN; so is F1 when there is neither a GT nor a predicted
        component.
        """
        siou = np.concatenate(self._siou) if self._siou else np.zeros(0)
        ppv = np.concatenate(self._ppv) if self._ppv else np.zeros(0)
        f1s = []
        for tau in self.config.taus:
            tp = int(np.count_nonzero(siou >= tau))
            fn = siou.size - tp
            fp = int(np.count_nonzero(ppv < tau))
            den = 2 * tp + fn + fp
            f1s.append(2 * tp / den if den else float("nan"))
        out = {
            "siou": float(siou.mean()) if siou.size else float("nan"),
            "ppv": float(ppv.mean()) if ppv.size else float("nan"),
            "mean_f1": float(np.mean(f1s)),
            "n_gt_components": int(siou.size),
            "n_pred_components": int(ppv.size),
        }
        for tau, f1 in zip(self.config.taus, f1s):
            if round(tau * 100) in (25, 50, 75):
                out[f"f1_{round(tau * 100)}"] = f1
        return out
