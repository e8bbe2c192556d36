"""Pixel-level anomaly metrics (METHOD.md section 8): AUPRC, AUROC, FPR95.

Anomaly (label 1) is the positive class, inlier (0) the negative one, void (255) is left out.
Thresholds run from high to low over the distinct score values (tied scores form one threshold);
a pixel is predicted anomalous when ``score >= threshold``. With TP_n, FP_n the counts at the n-th
threshold, P, N the positive and negative totals, R_n = TP_n / P and P_n = TP_n / (TP_n + FP_n):

* AUPRC = sum_n (R_n - R_{n-1}) P_n (the step sum; equals sklearn's average_precision_score);
* AUROC = trapezoid rule over the ROC points (0, 0) ... (1, 1) (equals sklearn's roc_auc_score);
* FPR95 = FP_n / N at the first n (high to low) where TP_n / P >= 0.95, no interpolation.

Exact mode (:class:`ExactPixelMetrics`, :func:`pixel_metrics`) keeps every valid score as float32,
split by label, so labels cost nothing and no argsort index (8 bytes/pixel) is needed: 4 bytes per
valid pixel, sorted in place. TP changes only at positive scores, so every metric is a sum over the
positive pixels of counts found by binary search in the two sorted arrays, done in chunks of 2^18
positives (no per-threshold arrays: extra memory is the chunk's, not the set's).

Streaming mode (:class:`.streaming_metrics.StreamingPixelMetrics`) counts scores in ``bins``
equal-width bins per class (default 2^20, 16 MiB whatever the number of frames). The bin range is
taken from the first frame (or given up front) and doubled, merging neighbouring bins, whenever a
later score falls outside, so no first pass is needed. The curve is then exact at the bin edges;
the only error is that scores sharing a bin count as tied (AUROC error <= half the fraction of
positive-negative pairs sharing a bin; measured in test/test_metrics.py).

Scores are compared as float32 (float64 inputs are rounded, which can only create ties).
Non-finite scores: NaN in a valid (non-void) pixel raises ValueError (a NaN score is a bug in the
method, and no ordering of it would be neutral); NaN in void pixels is ignored. +inf and -inf are
ordinary extreme scores (an inf threshold ties all infs together); in streaming mode they are
counted in two extra exact bins.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from ..labels import ANOMALY, INLIER, VOID

TPR_LEVEL = 0.95
CURVE_POINTS = 2000  # points kept per curve for plotting


# ---------------------------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------------------------
def _check_labels(labels: np.ndarray) -> None:
    """Refuse label values other than 0/1/255 (a dataset reader bug, e.g. raw class ids)."""
    if labels.dtype == np.uint8:
        counts = np.bincount(labels.ravel(), minlength=256)
        counts[[INLIER, ANOMALY, VOID]] = 0
        bad = np.flatnonzero(counts)
    else:
        bad = np.setdiff1d(np.unique(labels), [INLIER, ANOMALY, VOID])
    if bad.size:
        raise ValueError(f"labels must be 0 (inlier), 1 (anomaly) or 255 (void); found "
                         f"{bad[:10].tolist()}")


def split_valid(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """Scores of the anomaly and of the inlier pixels, void left out.

    scores: (...) float, labels: (...) same shape, 0/1/255 -> (pos (P,) float32, neg (N,) float32)
    """
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    if scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} differ in shape")
    _check_labels(labels)
    s = scores.astype(np.float32, copy=False).ravel()
    lab = labels.ravel()
    pos = s[lab == ANOMALY]
    neg = s[lab == INLIER]
    for name, part in (("anomaly", pos), ("inlier", neg)):
        n_nan = int(np.count_nonzero(np.isnan(part)))
        if n_nan:
            raise ValueError(f"{n_nan} {name} pixels have a NaN score; scores must not be NaN "
                             f"outside void (255) pixels")
    return pos, neg


# ---------------------------------------------------------------------------------------------
# the curve from tie groups
# ---------------------------------------------------------------------------------------------
@dataclass
class PixelResult:
    """Metrics and (thinned) curves of one evaluation. Metric values are fractions."""

    auprc: float
    auroc: float
    fpr95: float
    fpr95_threshold: float  # threshold where TPR first reaches 0.95
    best_f1: float  # best pixel F1 over thresholds (SMIYC binarisation, components.py)
    best_f1_threshold: float
    n_pos: int
    n_neg: int
    recall: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    precision: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    fpr: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    tpr: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))

    def metrics(self) -> dict:
        return {"auprc": self.auprc, "fpr95": self.fpr95, "auroc": self.auroc}


def _thin(n: int, max_points: int) -> np.ndarray:
    """Return the indices of at most ~max_points evenly spaced points of n.

    The first and last points are included.
    """
    if n <= max_points:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_points).round().astype(np.int64))


def curve_from_groups(pos_counts, neg_counts, values) -> PixelResult:
    """Metrics from tie groups ordered from the highest score to the lowest.

    pos_counts, neg_counts: (G,) int, pixels of each class in each group (a group's pixels are
    tied); values: (G,) float, the group's score (threshold), NaN where a group of only negatives
    spans several scores (such a group is never a reported threshold).
    """
    p = np.asarray(pos_counts, dtype=np.int64)
    n = np.asarray(neg_counts, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    tp = np.cumsum(p)
    fp = np.cumsum(n)
    n_pos = int(tp[-1]) if tp.size else 0
    n_neg = int(fp[-1]) if fp.size else 0
    nan = float("nan")
    if n_pos == 0:
        warnings.warn("no anomaly pixels: AUPRC, AUROC and FPR95 are undefined (NaN)",
                      stacklevel=3)
        return PixelResult(nan, nan, nan, nan, nan, nan, n_pos, n_neg)
    tp_f = tp.astype(np.float64)
    fp_f = fp.astype(np.float64)
    # AUPRC: recall only moves at groups with positives, where TP + FP > 0
    has_pos = p > 0
    auprc = float(np.sum(p[has_pos] / n_pos * (tp_f[has_pos] / (tp_f[has_pos] + fp_f[has_pos]))))
    # best F1 = max 2TP / (TP + FP + P); argmax picks the highest threshold among equals
    f1 = 2.0 * tp_f / (tp_f + fp_f + n_pos)
    i_f1 = int(np.argmax(f1))
    tpr = tp_f / n_pos
    i95 = int(np.argmax(tpr >= TPR_LEVEL))  # TPR reaches 1 at the last group, so it exists
    if n_neg == 0:
        warnings.warn("no inlier pixels: AUROC and FPR95 are undefined (NaN)", stacklevel=3)
        auroc = fpr95 = nan
        fpr = np.zeros_like(tpr)
    else:
        fpr = fp_f / n_neg
        tp_prev = np.concatenate([[0.0], tp_f[:-1]])
        auroc = float(np.sum(n * (tp_f + tp_prev)) / (2.0 * n_pos * n_neg))
        fpr95 = float(fpr[i95])
    # curves: PR at the groups with positives, ROC at every group, from (0, 0)
    keep = np.flatnonzero(has_pos)
    k = keep[_thin(keep.size, CURVE_POINTS)]
    r = _thin(tp.size, CURVE_POINTS)
    return PixelResult(
        auprc=auprc, auroc=auroc, fpr95=fpr95, fpr95_threshold=float(values[i95]),
        best_f1=float(f1[i_f1]), best_f1_threshold=float(values[i_f1]), n_pos=n_pos, n_neg=n_neg,
        recall=tpr[k], precision=tp_f[k] / (tp_f[k] + fp_f[k]),
        fpr=np.concatenate([[0.0], fpr[r]]), tpr=np.concatenate([[0.0], tpr[r]]))


def _smallest_count_at_rate(total: int, rate: float) -> int:
    """Smallest k in 1..total with k / total >= rate, in the float arithmetic of the definition."""
    k = max(1, min(total, math.ceil(rate * total)))
    while k > 1 and (k - 1) / total >= rate:
        k -= 1
    while k < total and k / total < rate:
        k += 1
    return k


def _exact_result(pos: np.ndarray, neg: np.ndarray, chunk: int = 1 << 18) -> PixelResult:
    """Exact metrics from ascending-sorted positive and negative scores, in fixed-size chunks.

    Every positive pixel x is the threshold of its tie group, where TP(x) = #pos >= x and
    FP(x) = #neg >= x. Hence, without forming the groups (memory: the chunk, not the set):
    AUPRC = mean over positive pixels of TP(x) / (TP(x) + FP(x)) (a group of c tied positives adds
    c/P times its precision); AUROC = mean over positive pixels of (#neg < x + #neg == x / 2) / N,
    the trapezoid area with ties as one threshold; FPR95 at the k-th highest positive, k the
    smallest count with k / P >= 0.95; best F1 = max of 2 TP / (TP + FP + P) over positives.
    """
    n_pos, n_neg = pos.size, neg.size
    nan = float("nan")
    if n_pos == 0:
        warnings.warn("no anomaly pixels: AUPRC, AUROC and FPR95 are undefined (NaN)",
                      stacklevel=3)
        return PixelResult(nan, nan, nan, nan, nan, nan, n_pos, n_neg)
    prec_sum = 0.0
    rank_sum = 0  # sum over positives of 2 #neg<x + #neg==x (exact integers)
    best_f1, best_t = -1.0, nan
    for a in range(0, n_pos, chunk):
        x = pos[a:a + chunk]
        tp = n_pos - np.searchsorted(pos, x, side="left")
        below = np.searchsorted(neg, x, side="left")
        fp = n_neg - below
        prec_sum += float(np.sum(tp / (tp + fp)))
        rank_sum += int(below.sum()) + int(np.searchsorted(neg, x, side="right").sum())
        f1 = 2.0 * tp / (tp + fp + n_pos)
        i = f1.size - 1 - int(np.argmax(f1[::-1]))  # the highest threshold among equal F1
        if f1[i] >= best_f1:  # later chunks hold higher scores
            best_f1, best_t = float(f1[i]), float(x[i])
    t95 = pos[n_pos - _smallest_count_at_rate(n_pos, TPR_LEVEL)]
    if n_neg == 0:
        warnings.warn("no inlier pixels: AUROC and FPR95 are undefined (NaN)", stacklevel=3)
        auroc = fpr95 = nan
    else:
        auroc = rank_sum / (2.0 * n_pos * n_neg)
        fpr95 = (n_neg - int(np.searchsorted(neg, t95, side="left"))) / n_neg
    # thinned curves: thresholds at evenly spaced ranks of both classes, exact TP/FP there
    t = np.concatenate([pos[_thin(n_pos, CURVE_POINTS)], neg[_thin(n_neg, CURVE_POINTS)]])
    t = np.unique(t)[::-1]
    tp = (n_pos - np.searchsorted(pos, t, side="left")).astype(np.float64)
    fp = (n_neg - np.searchsorted(neg, t, side="left")).astype(np.float64)
    has = tp > 0
    return PixelResult(
        auprc=prec_sum / n_pos, auroc=auroc, fpr95=fpr95, fpr95_threshold=float(t95),
        best_f1=best_f1, best_f1_threshold=best_t, n_pos=n_pos, n_neg=n_neg,
        recall=tp[has] / n_pos, precision=tp[has] / (tp[has] + fp[has]),
        fpr=np.concatenate([[0.0], fp / max(n_neg, 1)]), tpr=np.concatenate([[0.0], tp / n_pos]))


def _threshold_at_fpr_sorted(pos: np.ndarray, neg: np.ndarray, fpr: float) -> float:
    """See :func:`threshold_at_fpr`; ``neg`` sorted ascending."""
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"fpr must be in [0, 1], got {fpr}")
    n_neg = neg.size
    if n_neg == 0:
        raise ValueError("no inlier pixels: the false-positive rate is undefined")
    allowed = int(math.floor(fpr * n_neg + 1e-9))  # negatives allowed at or above the threshold
    if allowed >= n_neg:  # every threshold qualifies: flag every pixel
        lo = float(neg[0]) if pos.size == 0 else float(min(neg[0], pos.min()))
        return lo
    v = neg[n_neg - 1 - allowed]  # the (allowed + 1)-th largest negative must stay below
    return float(np.nextafter(np.float32(v), np.float32(np.inf)))


# ---------------------------------------------------------------------------------------------
# exact accumulation
# ---------------------------------------------------------------------------------------------
class _ScoreBuffer:
    """A growable float32 array that never holds its contents twice.

    Grows in place with ``ndarray.resize`` (realloc, which Linux serves with mremap for large
    blocks: no copy, no second buffer) by at most 1/8 of its size (at least 4 Mi scores), so the
    over-allocation numpy zero-fills stays small. Views of it are only used transiently.
    """

    STEP = 1 << 22

    def __init__(self):
        self._buf = np.empty(0, np.float32)
        self.n = 0
        self._sorted_n = 0

    def extend(self, x: np.ndarray) -> None:
        need = self.n + x.size
        if need > self._buf.size:
            cap = max(need, self._buf.size + max(self._buf.size // 8, self.STEP))
            if self._buf.size == 0:
                self._buf = np.empty(cap, np.float32)
            else:
                self._buf.resize(cap, refcheck=False)
        self._buf[self.n:need] = x
        self.n = need

    def sorted(self) -> np.ndarray:
        """Return the scores so far, sorted ascending in place (a view)."""
        view = self._buf[:self.n]
        if self._sorted_n != self.n:
            view.sort()
            self._sorted_n = self.n
        return view


class ExactPixelMetrics:
    """Exact metrics over frames: keeps every valid score (float32, 4 bytes/pixel, labels free).

    update(scores (H, W) float, labels (H, W) uint8 0/1/255) per frame; compute() -> dict.
    """

    def __init__(self):
        self._pos = _ScoreBuffer()
        self._neg = _ScoreBuffer()
        self.n_frames = 0

    @property
    def n_pos(self) -> int:
        return self._pos.n

    @property
    def n_neg(self) -> int:
        return self._neg.n

    def update(self, scores, labels) -> None:
        pos, neg = split_valid(scores, labels)
        self._pos.extend(pos)
        self._neg.extend(neg)
        self.n_frames += 1

    def result(self) -> PixelResult:
        return _exact_result(self._pos.sorted(), self._neg.sorted())

    def compute(self) -> dict:
        """{"auprc", "fpr95", "auroc"} as fractions."""
        return self.result().metrics()

    def threshold_at_fpr(self, fpr: float) -> float:
        """Smallest threshold (score >= t flags) whose FPR over the frames so far is <= fpr."""
        return _threshold_at_fpr_sorted(self._pos.sorted(), self._neg.sorted(), fpr)


def pixel_metrics(scores, labels) -> dict:
    """Exact {"auprc", "fpr95", "auroc"} of one score array (or a list of frames) vs labels.

    scores: (...) float; labels: (...) uint8 0 inlier / 1 anomaly / 255 void, same shape.
    """
    m = ExactPixelMetrics()
    if isinstance(scores, (list, tuple)):
        for s, lab in zip(scores, labels, strict=True):
            m.update(s, lab)
    else:
        m.update(scores, labels)
    return m.compute()


def threshold_at_fpr(scores, labels, fpr: float) -> float:
    """Smallest threshold t whose false-positive rate (inliers with score >= t) is <= fpr.

    Exact over float32: t is the float32 just above the score of the (floor(fpr N) + 1)-th highest
    inlier, so at most floor(fpr N) inliers are flagged. With fpr = 1 it is the lowest score.
    """
    pos, neg = split_valid(scores, labels)
    neg = np.sort(neg)
    return _threshold_at_fpr_sorted(pos, neg, fpr)


__all__ = ["CURVE_POINTS", "ExactPixelMetrics", "PixelResult", "TPR_LEVEL", "curve_from_groups",
           "pixel_metrics", "split_valid", "threshold_at_fpr"]
