"""Connected anomalous regions of a mask, with a box, a size, a peak score and a calibrated score.

:func:`find_regions` finds the 8-connected components of the anomaly mask from its horizontal
runs (:func:`_components_runs`: one pass over the mask for the runs, then only numbers per run,
never per pixel): exactly the result of labelling the input-resolution mask with
``scipy.ndimage.label`` (boxes, pixel counts, peaks), at about a third of the cost of the
pooled labelling below (0.6 ms instead of 1.7 ms of thread CPU at 640x480 on the demo
sequence's masks, 2-3 regions of 20k-75k pixels, on a loaded 2-core EPYC). A mask of more than
H * W / 16 runs (noise, where the graph of runs costs more than labelling pixels) falls back to
``scipy.ndimage.label`` on the 4x4-pooled mask refined per window, then on the whole image;
all three give the same regions (``test/test_outputs.py``). The regions' pixel indices are
built once, with the peaks, and shared by :meth:`Regions.pixel_indices`.

Box convention (:class:`Region`): ``x, y`` are the column and row of the region's top-left pixel,
``width, height`` the number of pixel columns and rows it spans; the region's pixels lie in
columns ``x .. x + width - 1`` and rows ``y .. y + height - 1`` (inclusive). In pixel-edge
coordinates (pixel ``(c, r)`` covers ``[c, c + 1) x [r, r + 1)``) the box is
``[x, x + width) x [y, y + height)``. :meth:`Region.bbox2d` gives vision_msgs' BoundingBox2D
(a centre and a size in pixels) in the pixel-centre convention of ROS camera models
(``image_geometry``, CameraInfo K: pixel ``(c, r)`` has its centre at ``(c, r)``):
``center = (x + (width - 1) / 2, y + (height - 1) / 2)``, ``size = (width, height)``; a
one-pixel region at (5, 7) is centred at (5.0, 7.0) with size 1 x 1.

Region score (:func:`exceedance`): the fraction of the normal (inlier) calibration pixels whose
raw anomaly score is **below** the region's peak raw score, read from a compact table of
calibration quantiles (:func:`exceedance_table`, stored in the bundle manifest by export). 0.99
means "the region's strongest pixel scores higher than 99 % of normal pixels". It is a
calibrated scale, comparable between models and frames, not a probability that the region is an
anomaly: a region's peak is a maximum over many pixels, so it is high by construction (every
region passed the mask threshold, which export sets at about the ``1 - fpr`` quantile).

Table format: a float64 array of shape (K, 2), rows ``(level, score)``: ``levels`` ascending from
0 to 1, ``score`` the calibration scores' quantile at that level (non-decreasing). The default
levels are 0.000, 0.001, ..., 0.990 and then a logarithmic tail up to 1 - 1e-6 and 1 (1032 rows),
because the regions that matter live in the top percent. JSON-friendly (``table.tolist()``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse.csgraph import connected_components

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def default_levels() -> np.ndarray:
    """Return the quantile levels of :func:`exceedance_table` (1032 levels).

    0..0.99 in 0.001 steps, then 1 - 10^-2.1 .. 1 - 10^-6 in 0.1 decades, then 1.
    """
    body = np.arange(991) / 1000.0
    tail = 1.0 - 10.0 ** -np.arange(2.1, 6.05, 0.1)
    return np.concatenate([body, tail, [1.0]])


def exceedance_table(scores, levels: np.ndarray | None = None) -> np.ndarray:
    """Return the (K, 2) table ``[level, quantile(scores, level)]`` of finite ``scores``.

    The table covers the finite values of ``scores``.

    ``scores``: any array (or a list of arrays) of the raw scores of **normal** calibration pixels
    (an all-inlier recording: every pixel). Non-finite values are ignored; no finite value raises
    ValueError. One sort of the scores (3e7 pixels: a few seconds, once, at export).
    """
    if isinstance(scores, (list, tuple)):
        scores = np.concatenate([np.asarray(s, dtype=np.float64).ravel() for s in scores])
    vals = np.asarray(scores, dtype=np.float64).ravel()
    vals = np.sort(vals[np.isfinite(vals)])
    if vals.size == 0:
        raise ValueError("exceedance_table: no finite calibration score")
    lv = default_levels() if levels is None else np.asarray(levels, dtype=np.float64)
    if lv.ndim != 1 or lv.size < 2 or np.any(np.diff(lv) <= 0) or lv[0] != 0 or lv[-1] != 1:
        raise ValueError("levels must be strictly increasing from 0 to 1")
    pos = lv * (vals.size - 1)  # linear interpolation between order statistics (numpy's default)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, vals.size - 1)
    q = vals[lo] + (vals[hi] - vals[lo]) * (pos - lo)
    return np.stack([lv, np.maximum.accumulate(q)], axis=1)


def check_exceedance_table(table) -> np.ndarray:
    """Return ``table`` (e.g. read back from a manifest) as a validated (K, 2) float64 array.

    Raises a ValueError saying what is wrong otherwise.
    """
    t = np.asarray(table, dtype=np.float64)
    if t.ndim != 2 or t.shape[1] != 2 or t.shape[0] < 2:
        raise ValueError(f"exceedance table must have shape (K >= 2, 2), got {t.shape}")
    if not np.all(np.isfinite(t)):
        raise ValueError("exceedance table has non-finite entries")
    lv, q = t[:, 0], t[:, 1]
    if lv[0] != 0.0 or lv[-1] != 1.0 or np.any(np.diff(lv) <= 0):
        raise ValueError("exceedance table levels must rise strictly from 0 to 1")
    if np.any(np.diff(q) < 0):
        raise ValueError("exceedance table scores must be non-decreasing")
    return t


def exceedance(table: np.ndarray, values) -> np.ndarray:
    """Return the fraction of calibration pixels scoring below each of ``values``.

    Same shape as ``values``, float64.

    Between two table rows ``(l0, q0), (l1, q1)`` with ``q0 < v <= q1`` the level is interpolated
    linearly; ``v <= q_min`` gives 0, ``v > q_max`` gives 1, NaN gives NaN. Where several rows
    share a score (ties in the calibration data) the **lowest** level is taken, so ties never
    inflate the score. Vectorised: O(len(values) * log K).
    """
    v = np.asarray(values, dtype=np.float64)
    lv, q = table[:, 0], table[:, 1]
    k = np.searchsorted(q, v, side="left")  # first row with q >= v
    kk = np.clip(k, 1, len(q) - 1)
    q0, q1, l0, l1 = q[kk - 1], q[kk], lv[kk - 1], lv[kk]
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(q1 > q0, (v - q0) / (q1 - q0), 1.0)
    out = l0 + (l1 - l0) * np.clip(frac, 0.0, 1.0)
    out = np.where(k <= 0, 0.0, np.where(k >= len(q), 1.0, out))
    return np.where(np.isnan(v), np.nan, out)


@dataclass(frozen=True)
class Region:
    """One connected anomalous region (see the module docstring for the box convention).

    ``label``: its value in :attr:`Regions.labels`; ``pixels``: its pixel count; ``peak``: the
    highest raw score in it; ``score``: the exceedance of ``peak`` in [0, 1] (NaN when no table
    was given).
    """

    label: int
    x: int
    y: int
    width: int
    height: int
    pixels: int
    peak: float
    score: float

    @property
    def box(self) -> tuple[int, int, int, int]:
        """``(x, y, width, height)`` in input pixels."""
        return (self.x, self.y, self.width, self.height)

    def bbox2d(self) -> tuple[float, float, float, float]:
        """Return the vision_msgs BoundingBox2D ``(center_x, center_y, size_x, size_y)``.

        Pixel-centre convention, centre ``x + (width - 1) / 2``, size ``width`` (module
        docstring).
        """
        return (self.x + (self.width - 1) / 2.0, self.y + (self.height - 1) / 2.0,
                float(self.width), float(self.height))


@dataclass
class Regions:
    """The result of :func:`find_regions`: the regions, and their pixels on demand.

    ``shape``: the mask's (H, W). :attr:`labels` (built on first use, then kept): (H, W) int32,
    ``r.label`` (1, 2, ... in the order of ``regions``) on the pixels of region ``r``, 0
    elsewhere (background and components too small to be regions).
    """

    shape: tuple[int, int]
    regions: list[Region]
    _pixels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.intp), repr=False)
    _offsets: np.ndarray = field(default_factory=lambda: np.zeros(1, np.intp), repr=False)
    _labels: np.ndarray | None = field(default=None, repr=False)

    @property
    def labels(self) -> np.ndarray:
        if self._labels is None:
            labels = np.zeros(self.shape[0] * self.shape[1], dtype=np.int32)
            labels[self._pixels] = np.repeat(np.arange(1, len(self._offsets), dtype=np.int32),
                                             np.diff(self._offsets))
            self._labels = labels.reshape(self.shape)
        return self._labels

    def pixel_indices(self, labels=None) -> np.ndarray:
        """Return the flat (row * W + col) indices of the pixels of the regions with these labels.

        Default: all of :attr:`regions`; region by region, each in raster order; (N,) intp,
        read-only (all regions, in order: the array kept since :func:`find_regions`, no copy).
        """
        n = len(self._offsets) - 1
        want = list(range(1, n + 1)) if labels is None else [int(i) for i in labels]
        if want == list(range(1, n + 1)):
            return self._pixels
        for lab in want:
            if not 1 <= lab <= n:
                raise KeyError(f"no region with label {lab}")
        if not want:
            return np.zeros(0, dtype=np.intp)
        return np.concatenate([self._pixels[self._offsets[k - 1]:self._offsets[k]]
                               for k in want])

    def pixel_mask(self, labels=None) -> np.ndarray:
        """(H, W) bool: the pixels of these regions (default all of :attr:`regions`)."""
        out = np.zeros(self.shape[0] * self.shape[1], dtype=bool)
        out[self.pixel_indices(labels)] = True
        return out.reshape(self.shape)


def _expand_runs(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Return the flat indices of the pixels of runs ``[starts, ends)``, run by run, in order."""
    lengths = ends - starts
    out = np.arange(int(lengths.sum()), dtype=np.intp)
    out += np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    return out


def _row_runs(m: np.ndarray, ignore: np.ndarray | None = None):
    """Return the horizontal runs of the non-zero pixels of ``m`` (H, W), in raster order.

    Pixels where ``ignore`` (bool, (H, W)) is true are left out.

    ``(rows, first_cols, end_cols, edges)``: ``edges`` (2 per run: start, end) are flat indices
    into the mask laid out with a blank column before each row (row stride W + 1), so that a
    run never continues into the next row and end columns are exclusive.
    """
    h, w = m.shape
    buf = np.zeros(h * (w + 1) + 1, dtype=bool)
    grid = buf[:-1].reshape(h, w + 1)[:, 1:]
    if m.dtype == bool:
        grid[...] = m
    else:
        np.not_equal(m, 0, out=grid)
    if ignore is not None:
        np.greater(grid, ignore, out=grid)  # m and not ignore, in one pass
    edges = np.flatnonzero(buf[1:] != buf[:-1]) + 1  # alternately a run's start and its end
    rows = edges[0::2] // (w + 1)
    base = rows * (w + 1) + 1
    return rows, edges[0::2] - base, edges[1::2] - base, edges


def _components_runs(m: np.ndarray, min_px: int, max_runs: int, ignore=None):
    """Return the 8-connected components of ``m`` with more than ``min_px`` pixels, from its runs.

    Returns them in raster order of their first pixel, each as ``(row0, col0, row1, col1,
    pixels, starts, ends)`` (box edges exclusive, ``starts``/``ends`` the flat image indices of
    its runs in raster order); None when ``m`` has more than ``max_runs`` runs (noise: labelling
    the pixels is then cheaper). ``ignore``: pixels left out of ``m``.

    Exact: two runs in adjacent rows touch (8-connected) when their column ranges overlap or
    meet at a corner; the components of that graph of runs are the mask's components.
    """
    w = m.shape[1]
    rows, c0, c1, edges = _row_runs(m, ignore)
    n = rows.size
    if n > max_runs:
        return None
    if n == 0:
        return []
    starts, ends = edges[0::2], edges[1::2]
    # the runs a run touches in the row above, then in the row below: two ranges of indices
    nb_lo, nb_hi = np.empty(2 * n, dtype=np.intp), np.empty(2 * n, dtype=np.intp)
    nb_lo[0::2] = np.searchsorted(ends + (w + 1), starts, "left")
    nb_hi[0::2] = np.searchsorted(starts + (w + 1), ends, "right")
    nb_lo[1::2] = np.searchsorted(ends, starts + (w + 1), "left")
    nb_hi[1::2] = np.searchsorted(starts, ends + (w + 1), "right")
    cnt = np.maximum(nb_hi - nb_lo, 0)
    ptr = np.zeros(2 * n + 1, dtype=np.intp)
    np.cumsum(cnt, out=ptr[1:])
    nbr = np.arange(int(ptr[-1]), dtype=np.intp) + np.repeat(nb_lo - ptr[:-1], cnt)
    # symmetric, so its strong components are the components (no transpose is built), and
    # float64 data, so connected_components does not convert it again
    graph = sparse.csr_array((np.ones(nbr.size), nbr, np.ascontiguousarray(ptr[0::2])),
                             shape=(n, n))
    nc, lab = connected_components(graph, directed=True, connection="strong")
    order = np.argsort(lab, kind="stable")  # the runs of each component, in raster order
    per = np.bincount(lab, minlength=nc)
    first = np.zeros(nc, dtype=np.intp)
    np.cumsum(per[:-1], out=first[1:])
    pixels = np.add.reduceat((c1 - c0)[order], first)
    keep = np.flatnonzero(pixels > min_px)
    keep = keep[np.argsort(order[first[keep]])]  # raster order of each one's first run
    left = np.minimum.reduceat(c0[order], first)
    right = np.maximum.reduceat(c1[order], first)
    img = rows * w + c0  # the runs' first pixels, flat in the image
    out = []
    for k in keep:
        runs = order[first[k]:first[k] + per[k]]
        out.append((int(rows[runs[0]]), int(left[k]), int(rows[runs[-1]]) + 1, int(right[k]),
                    int(pixels[k]), img[runs], img[runs] + (c1 - c0)[runs]))
    return out


def _as_runs(comps, width: int) -> list:
    """Return labelled components ``(slices, inside, pixels)`` as :func:`_components_runs` does.

    In raster order of their first pixel.
    """
    out = []
    for sl, inside, count in comps:
        rows, c0, c1, _ = _row_runs(inside)
        img = (rows + sl[0].start) * width + c0 + sl[1].start
        out.append((sl[0].start, sl[1].start, sl[0].stop, sl[1].stop, count, img,
                    img + (c1 - c0)))
    out.sort(key=lambda c: c[5][0])
    return out


def _components_full(m: np.ndarray, min_px: int):
    """Yield (slice pair, inside mask, count) of each component of ``m`` with > ``min_px`` pixels.

    Labels the whole image at its resolution.
    """
    labels, n = ndimage.label(m, structure=EIGHT_CONNECTED)
    for i, sl in enumerate(ndimage.find_objects(labels, max_label=n), start=1):
        if sl is None or (sl[0].stop - sl[0].start) * (sl[1].stop - sl[1].start) <= min_px:
            continue  # a box this small cannot hold more than min_px pixels
        inside = labels[sl] == i
        count = int(np.count_nonzero(inside))
        if count > min_px:
            yield sl, inside, count


def _components_pooled(m: np.ndarray, min_px: int, max_windows: int, block: int = 4):
    """Return the same components, found on the ``block`` x ``block``-pooled mask.

    They are refined at full resolution in each pooled component's window; None (label the full
    image instead) when more than ``max_windows`` windows would be needed or they would cover
    half the image.

    Exact: two 8-connected pixels lie in the same or 8-adjacent blocks, so every component lies
    inside one pooled component; labelling that pooled component's own pixels at full
    resolution (in its window) finds exactly the components it contains. The windows are laid
    side by side, a blank column apart, and labelled in one call.
    """
    h, w = m.shape
    ph, pw = -h % block, -w % block
    if ph or pw:
        m = np.pad(m, ((0, ph), (0, pw)))
    counts = m.view(np.uint8)
    size = 1
    while size < block:  # 2x2 sums, repeated: block pixels per pooled pixel (<= 255)
        c = counts[0::2, 0::2] + counts[0::2, 1::2]
        c += counts[1::2, 0::2]
        c += counts[1::2, 1::2]
        counts, size = c, size * 2
    plab, pn = ndimage.label(counts, structure=EIGHT_CONNECTED)
    windows = []
    for p, psl in enumerate(ndimage.find_objects(plab, max_label=pn), start=1):
        area = (psl[0].stop - psl[0].start) * (psl[1].stop - psl[1].start) if psl else 0
        if area * block * block <= min_px:
            continue
        own = plab[psl] == p
        r0, c0 = block * psl[0].start, block * psl[1].start
        windows.append((r0, c0, min(block * psl[0].stop, h) - r0,
                        min(block * psl[1].stop, w) - c0, own))
        if len(windows) > max_windows:
            return None
    if not windows:
        return []
    height = max(wd[2] for wd in windows)
    offsets = np.cumsum([0] + [wd[3] + 1 for wd in windows])
    if height * offsets[-1] > m.size // 2:
        return None
    strip = np.zeros((height, int(offsets[-1])), dtype=bool)
    for (r0, c0, wh, ww, own), x in zip(windows, offsets):
        own_full = np.repeat(np.repeat(own, block, axis=0), block, axis=1)[:wh, :ww]
        np.logical_and(m[r0:r0 + wh, c0:c0 + ww], own_full, out=strip[:wh, x:x + ww])
    slab, sn = ndimage.label(strip, structure=EIGHT_CONNECTED)
    out = []
    for j, ssl in enumerate(ndimage.find_objects(slab, max_label=sn), start=1):
        if ssl is None or (ssl[0].stop - ssl[0].start) * (ssl[1].stop - ssl[1].start) <= min_px:
            continue
        inside = slab[ssl] == j
        count = int(np.count_nonzero(inside))
        if count <= min_px:
            continue
        k = int(np.searchsorted(offsets, ssl[1].start, side="right")) - 1
        r0, c0, x = windows[k][0], windows[k][1], int(offsets[k])
        out.append(((slice(r0 + ssl[0].start, r0 + ssl[0].stop),
                     slice(c0 + ssl[1].start - x, c0 + ssl[1].stop - x)), inside, count))
    return out


def find_regions(mask: np.ndarray, score: np.ndarray | None = None, *,
                 min_region_pixels: int = 0, ignore: np.ndarray | None = None,
                 table: np.ndarray | None = None, max_regions: int = 0,
                 pooled: bool = True, method: str = "runs") -> Regions:
    """Find the 8-connected regions of ``mask`` with more than ``min_region_pixels`` pixels.

    ``mask``: (H, W) bool or uint8 (non-zero = anomalous; the node's mono8 mask or
    ``score >= threshold``); ``score``: (H, W) float raw scores (the heatmap) for ``peak``
    (NaN without it); ``ignore``: (H, W) bool pixels removed from the mask before labelling (the
    ignore mask, :mod:`.ignore_mask`); ``table``: the exceedance table (``score`` NaN without
    it); ``max_regions`` > 0 keeps only that many, the highest peaks first.

    Regions come in raster order of their first pixel (the top row, then the leftmost pixel in
    it: deterministic and unique); with ``max_regions``, by decreasing peak (ties: that order).
    ``method``: ``"runs"`` (default; :func:`_components_runs`, falling back to ``"pooled"`` for
    a mask of more than H * W / 16 runs), ``"pooled"`` (the 4x4-pooled mask refined per window,
    :func:`_components_pooled`, falling back to ``"full"`` when the mask breaks into more than
    64 candidate pieces) or ``"full"`` (``scipy.ndimage.label`` on the whole image);
    ``pooled=False`` means ``"full"``. All give the same regions. Raises ValueError for
    mismatched shapes or an unknown method.
    """
    if method not in ("runs", "pooled", "full"):
        raise ValueError(f"unknown method {method!r}: runs, pooled or full")
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {m.shape}")
    for name, arr in (("score", score), ("ignore", ignore)):
        if arr is not None and np.shape(arr) != m.shape:
            raise ValueError(f"{name} has shape {np.shape(arr)}, the mask {m.shape}")
    ignore = None if ignore is None else np.asarray(ignore, dtype=bool)
    if score is not None:
        score = np.asarray(score)
    min_px = max(int(min_region_pixels), 0)
    h, w = m.shape
    comps = None
    if pooled and method == "runs":
        comps = _components_runs(m, min_px, max(h * w // 16, 1024), ignore)
    if comps is None:
        m = m if m.dtype == bool else m != 0
        m = m if ignore is None else m & ~ignore
        parts = _components_pooled(m, min_px, 64) if pooled and method != "full" else None
        comps = _as_runs(list(_components_full(m, min_px)) if parts is None else parts, w)
    sizes = np.array([c[4] for c in comps], dtype=np.intp)
    pixels = _expand_runs(np.concatenate([c[5] for c in comps]) if comps else sizes,
                          np.concatenate([c[6] for c in comps]) if comps else sizes)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    peaks = np.full(len(comps), np.nan)
    if score is not None and comps:  # one gather of the regions' scores, max per region
        peaks[:] = np.maximum.reduceat(score.reshape(-1).take(pixels), offsets[:-1])
    if max_regions and len(comps) > max_regions:
        key = np.where(np.isnan(peaks), np.inf, -peaks)  # NaN peaks last
        keep = sorted(range(len(comps)), key=lambda k: (key[k], k))[:max_regions]
        pixels = np.concatenate([pixels[offsets[k]:offsets[k + 1]] for k in keep])
        comps, peaks, sizes = [comps[k] for k in keep], peaks[keep], sizes[keep]
        offsets = np.concatenate([[0], np.cumsum(sizes)])
    scores = (exceedance(table, peaks) if table is not None and comps
              else np.full(len(comps), np.nan))
    regions = [Region(k, c[1], c[0], c[3] - c[1], c[2] - c[0], c[4], float(pk), float(sc))
               for k, (c, pk, sc) in enumerate(zip(comps, peaks, scores), start=1)]
    pixels.flags.writeable = False  # shared by every pixel_indices() answer
    return Regions((int(h), int(w)), regions, pixels, offsets)


__all__ = ["EIGHT_CONNECTED", "Region", "Regions", "check_exceedance_table", "default_levels",
           "exceedance", "exceedance_table", "find_regions"]
