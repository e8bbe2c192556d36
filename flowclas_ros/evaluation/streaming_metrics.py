"""Pixel metrics in fixed memory: per-class score histograms (the ``--streaming`` mode).

:class:`StreamingPixelMetrics` counts scores in ``bins`` equal-width bins per class (default
2^20, 16 MiB whatever the number of frames), with the definitions of :mod:`.metrics`. The bin
range is taken from the first frame (or given up front) and doubled, merging neighbouring bins,
whenever a later score falls outside, so no first pass is needed. The curve is then exact at the
bin edges; the only error is that scores sharing a bin count as tied (AUROC error <= half the
fraction of positive-negative pairs sharing a bin; measured in test/test_metrics.py).
+inf and -inf are counted in two extra exact bins.
"""
from __future__ import annotations

import math

import numpy as np

from .metrics import PixelResult, curve_from_groups, split_valid


class StreamingPixelMetrics:
    """Metrics from per-class score histograms; memory fixed (2 x bins int64), not per frame.

    bins: number of equal-width bins (even; default 2^20 = 16 MiB of counts).
    range: (lo, hi) initial score range; None takes the first frame's finite min/max. Either way
        the range doubles (neighbouring bins merged, edges stay aligned) whenever a score falls
        outside, so it always covers the data; the bin width is then range / bins.
    Thresholds are the bin lower edges, at which TP/FP are exact; scores sharing a bin are tied.
    """

    def __init__(self, bins: int = 2 ** 20,
                 range: tuple[float, float] | None = None):  # noqa: A002 - public kwarg
        if bins < 2 or bins % 2:
            raise ValueError(f"bins must be an even number >= 2, got {bins}")
        self.bins = int(bins)
        self._hist = np.zeros((self.bins, 2), np.int64)  # [bin, label]
        self._inf = np.zeros((2, 2), np.int64)  # [(-inf, +inf), label]
        self._lo: float | None = None
        self._width: float | None = None
        if range is not None:
            lo, hi = float(range[0]), float(range[1])
            if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
                raise ValueError(f"range must be finite with hi > lo, got {range}")
            self._lo, self._width = lo, hi - lo
        self.n_frames = 0

    @property
    def nbytes(self) -> int:
        return self._hist.nbytes + self._inf.nbytes

    @property
    def range(self) -> tuple[float, float] | None:
        return None if self._lo is None else (self._lo, self._lo + self._width)

    def _double(self, up: bool) -> None:
        merged = self._hist[0::2] + self._hist[1::2]
        self._hist[:] = 0
        half = self.bins // 2
        if up:
            self._hist[:half] = merged
        else:
            self._hist[half:] = merged
            self._lo -= self._width
        self._width *= 2.0

    def _cover(self, fmin: float, fmax: float) -> None:
        if self._lo is None:
            span = fmax - fmin
            if span <= 0.0:
                span = max(abs(fmin), 1.0) * 2.0 ** -10
            # a small margin keeps the maximum strictly inside the last bin
            self._lo, self._width = fmin, span * (1.0 + 4.0 / self.bins)
        for _ in range(4096):  # each step doubles the range; finite floats need far fewer
            if fmin < self._lo:
                self._double(up=False)
            elif fmax >= self._lo + self._width:
                self._double(up=True)
            else:
                return

    def update(self, scores, labels) -> None:
        pos, neg = split_valid(scores, labels)
        for lab, s in ((1, pos), (0, neg)):
            ninf = int(np.count_nonzero(s == -np.inf))
            pinf = int(np.count_nonzero(s == np.inf))
            self._inf[0, lab] += ninf
            self._inf[1, lab] += pinf
        fin_pos = pos[np.isfinite(pos)]
        fin_neg = neg[np.isfinite(neg)]
        n_fin = fin_pos.size + fin_neg.size
        self.n_frames += 1
        if n_fin == 0:
            return
        fmin = float(min(fin_pos.min(initial=np.inf), fin_neg.min(initial=np.inf)))
        fmax = float(max(fin_pos.max(initial=-np.inf), fin_neg.max(initial=-np.inf)))
        self._cover(fmin, fmax)
        scale = self.bins / self._width
        for lab, s in ((1, fin_pos), (0, fin_neg)):
            if s.size:
                idx = np.floor((s.astype(np.float64) - self._lo) * scale).astype(np.int64)
                np.clip(idx, 0, self.bins - 1, out=idx)
                self._hist[:, lab] += np.bincount(idx, minlength=self.bins)

    def _groups(self):
        """Tie groups from +inf down to -inf: counts and the group's lower-edge threshold."""
        nz = np.flatnonzero(self._hist.any(axis=1))[::-1]
        edges = (self._lo + nz * (self._width / self.bins)) if self._lo is not None else nz * 0.0
        p = np.concatenate([[self._inf[1, 1]], self._hist[nz, 1], [self._inf[0, 1]]])
        n = np.concatenate([[self._inf[1, 0]], self._hist[nz, 0], [self._inf[0, 0]]])
        v = np.concatenate([[np.inf], edges, [-np.inf]])
        keep = (p > 0) | (n > 0)
        return p[keep], n[keep], v[keep]

    def result(self) -> PixelResult:
        return curve_from_groups(*self._groups())

    def compute(self) -> dict:
        """{"auprc", "fpr95", "auroc"} as fractions (approximate, see the class docstring)."""
        return self.result().metrics()

    def threshold_at_fpr(self, fpr: float) -> float:
        """Smallest bin edge whose FPR (inliers at or above it) is <= fpr.

        The upper edge of the bin holding the (floor(fpr N) + 1)-th highest inlier: at most one
        bin width above the exact :func:`threshold_at_fpr`, never flagging more inliers.
        """
        if not 0.0 <= fpr <= 1.0:
            raise ValueError(f"fpr must be in [0, 1], got {fpr}")
        p, n, v = self._groups()
        n_neg = int(n.sum())
        if n_neg == 0:
            raise ValueError("no inlier pixels: the false-positive rate is undefined")
        bad = np.cumsum(n) > math.floor(fpr * n_neg + 1e-9)  # a suffix: counts only grow
        if not bad.any():  # every threshold qualifies: flag every pixel
            return float(v[-1])
        f = float(v[int(np.argmax(bad))])  # the first group that flags too many inliers
        if f == np.inf:
            return f
        if f == -np.inf:
            return float(self._lo) if self._lo is not None else f
        return f + self._width / self.bins


__all__ = ["StreamingPixelMetrics"]
