"""The deployed preprocessing, once: how a camera frame becomes the graph's input (numpy).

The model's input size for a frame is the bundle's :class:`Resolution`: a fixed (h, w) for
bundles of format 1 and 2 (every frame squeezed to it, whatever its aspect ratio), or, for
bundles that declare a ``long_side`` or a pixel budget, the frame scaled to it with its aspect
ratio kept (the graph pads to its stride inside and crops back). A frame (H, W, 3) uint8 RGB
is resized to that (h, w) bilinearly with half-pixel centres, antialiased along an axis that
shrinks (the arithmetic of
``F.interpolate(mode="bilinear", align_corners=False, antialias=True)`` and PIL's triangle
filter: a 4K camera squeezed 8x to the model's input would otherwise alias into textures the
model never saw), scaled to [0, 1] and laid out (1, 3, h, w) float32. Normalisation and padding
are inside the graph (:mod:`.graph`). The same resize brings the (h, w) score back to the
frame's size.

Export (verification, calibration), evaluation and the runtime all call these functions, or
their torch twins in :mod:`.preprocess_torch`; this module imports no torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

RESIZE_METHOD = ("bilinear, half-pixel centres (align_corners=False), antialiased where the "
                 "frame shrinks (as torch antialias=True)")


@dataclass(frozen=True)
class Resolution:
    """The model's input size for a frame of any size.

    ``fixed`` (h, w): every frame is resized to it (format 1/2 bundles). Otherwise the frame is
    scaled by ``s = min(long_side / max(H, W), sqrt(pixels / (H W)), max_scale)`` (whichever
    limits are set), keeping its aspect ratio: (h, w) = (round(s H), round(s W)).
    ``max_scale`` 1.0 never enlarges a small camera's frames beyond their own resolution.
    """

    fixed: tuple[int, int] | None = None
    long_side: int | None = None
    pixels: int | None = None
    max_scale: float = 1.0

    def __post_init__(self):
        if self.fixed is None and self.long_side is None and self.pixels is None:
            raise ValueError("a Resolution needs a fixed size, a long_side or a pixel budget")
        for name in ("long_side", "pixels"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not self.max_scale > 0:
            raise ValueError(f"max_scale must be > 0, got {self.max_scale}")

    @classmethod
    def of(cls, value) -> "Resolution":
        """Build a Resolution from ``value``.

        ``value`` is a Resolution (returned as is), a fixed (h, w), or a manifest's
        ``input.resolution`` dict.
        """
        if isinstance(value, Resolution):
            return value
        if isinstance(value, dict):
            return cls(long_side=value.get("long_side"), pixels=value.get("pixels"),
                       max_scale=float(value.get("max_scale", 1.0)))
        h, w = (int(v) for v in value)
        return cls(fixed=(h, w))

    @property
    def keeps_aspect(self) -> bool:
        return self.fixed is None

    def model_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) the model sees for an (height, width) frame."""
        if self.fixed is not None:
            return self.fixed
        scale = self.max_scale
        if self.long_side is not None:
            scale = min(scale, self.long_side / max(height, width))
        if self.pixels is not None:
            scale = min(scale, math.sqrt(self.pixels / (height * width)))
        return max(1, round(height * scale)), max(1, round(width * scale))

    def to_dict(self) -> dict:
        """Return the manifest's ``input.resolution`` (None for a fixed size)."""
        if self.fixed is not None:
            return None
        d = {"long_side": self.long_side, "pixels": self.pixels, "max_scale": self.max_scale}
        return {k: v for k, v in d.items() if v is not None}


def check_image(image) -> tuple[int, int]:
    """Validate an (H, W, 3) uint8 RGB frame (numpy array or torch tensor); return (H, W)."""
    shape = tuple(image.shape)
    dtype = image.dtype
    if len(shape) != 3 or shape[2] != 3 or str(dtype) not in ("uint8", "torch.uint8"):
        raise ValueError(f"image must be (H, W, 3) uint8 RGB, got shape {shape} dtype {dtype}")
    if shape[0] < 1 or shape[1] < 1:
        raise ValueError(f"image is empty: shape {shape}")
    return shape[0], shape[1]


@lru_cache(maxsize=64)
def _axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Taps of one axis: indices (n_out, K) and weights (n_out, K) float32 (rows sum to 1).

    Bilinear with half-pixel centres; when shrinking (n_in > n_out) the triangle is widened by
    the scale (antialiasing), as torch's ``antialias=True`` and PIL do.
    """
    scale = n_in / n_out
    support = max(scale, 1.0)  # the triangle's half-width in input pixels
    centre = (np.arange(n_out, dtype=np.float64) + 0.5) * scale
    lo = np.maximum((centre - support + 0.5).astype(np.int64), 0)
    hi = np.minimum((centre + support + 0.5).astype(np.int64), n_in)
    k = int((hi - lo).max())
    idx = lo[:, None] + np.arange(k)[None, :]
    w = np.maximum(0.0, 1.0 - np.abs((idx - centre[:, None] + 0.5) / support))
    w[idx >= hi[:, None]] = 0.0
    w /= w.sum(axis=1, keepdims=True)
    return np.minimum(idx, n_in - 1), w.astype(np.float32)


def _resize_axis0(img: np.ndarray, n_out: int) -> np.ndarray:
    idx, w = _axis(img.shape[0], n_out)
    # A float map may hold +-inf (a score): a tap of weight 0 must add nothing, not 0 * inf.
    guard = np.issubdtype(img.dtype, np.floating)
    out = np.zeros((n_out,) + img.shape[1:], np.float32)
    for j in range(idx.shape[1]):
        with np.errstate(invalid="ignore"):  # inf * 0 at a zero tap: set to 0 just below
            term = img[idx[:, j]].astype(np.float32) * w[:, j, None, None]
        if guard:
            term[w[:, j] == 0] = 0.0
        out += term
    return out


# one matmul at most this many multiply-adds: OpenBLAS then stays on the calling thread (its
# own threads spin, which on a busy small CPU costs far more than they save)
_GEMM_MACS = 1 << 18


@lru_cache(maxsize=64)
def _bands(n_in: int, n_out: int,
           per: int = 0) -> tuple[tuple[int, int, int, int, np.ndarray], ...]:
    """Return the taps of one axis as dense blocks: (o0, o1, i0, i1, weights (o1-o0, i1-i0)).

    Output rows o0..o1 read only input rows i0..i1 (the filter is narrow): resizing is then a
    few small float32 matmuls instead of a gather per tap. The weights are :func:`_axis`'s
    (float32). ``per``: output rows a block (0: ~12 input rows' worth, 2 to 8 rows).
    """
    idx, w = _axis(n_in, n_out)
    per = per or max(2, min(8, int(12 * n_out / n_in)))
    blocks = []
    for o0 in range(0, n_out, per):
        o1 = min(o0 + per, n_out)
        r, k = np.nonzero(w[o0:o1])
        i = idx[o0:o1][r, k]
        i0, i1 = int(i.min()), int(i.max()) + 1
        m = np.zeros((o1 - o0, i1 - i0), np.float32)
        m[r, i - i0] = w[o0:o1][r, k]
        m.flags.writeable = False
        blocks.append((o0, o1, i0, i1, m))
    return tuple(blocks)


def _resize_rows(src: np.ndarray, n_out: int, map_fn=map) -> np.ndarray:
    """Resize a 2-D array (any real dtype) along axis 0 -> (n_out, cols) float32, banded.

    The blocks run in two halves (``map_fn`` may run them on two threads).
    """
    cols = src.shape[1]
    out = np.empty((n_out, cols), np.float32)

    def blocks(part) -> None:
        for o0, o1, i0, i1, m in part:
            step = max(64, _GEMM_MACS // m.size)
            for c0 in range(0, cols, step):
                x = src[i0:i1, c0:c0 + step].astype(np.float32, copy=False)
                np.matmul(m, x, out=out[o0:o1, c0:c0 + step])

    bands = _bands(src.shape[0], n_out)
    half = (len(bands) + 1) // 2
    list(map_fn(blocks, (bands[:half], bands[half:])))
    return out


@lru_cache(maxsize=64)
def _interleaved_bands(n_in: int, n_out: int,
                       channels: int) -> tuple[tuple[int, int, int, int, np.ndarray], ...]:
    """:func:`_bands` for columns of interleaved pixels (``channels`` values each).

    Each block's weights act on every channel alike: ``kron(weights.T, I_channels)``, so that a
    block of columns of a (rows, W * channels) array resizes as one matmul from the right.
    """
    eye = np.eye(channels, dtype=np.float32)
    out = []
    for o0, o1, i0, i1, m in _bands(n_in, n_out):
        k = np.kron(m.T, eye)
        k.flags.writeable = False
        out.append((o0 * channels, o1 * channels, i0 * channels, i1 * channels, k))
    return tuple(out)


def _resize_cols(src: np.ndarray, n_out: int, channels: int, map_fn=map) -> np.ndarray:
    """Resize (rows, W * channels) float32 interleaved pixels -> (rows, n_out * channels).

    In place of a transpose of the whole frame: the columns resize where they are, in blocks
    of columns (:func:`_interleaved_bands`), in two halves (``map_fn`` may run them on two
    threads).
    """
    rows = src.shape[0]
    out = np.empty((rows, n_out * channels), np.float32)

    def blocks(part) -> None:
        for o0, o1, i0, i1, k in part:
            step = max(16, _GEMM_MACS // k.size)
            for r0 in range(0, rows, step):
                np.matmul(src[r0:r0 + step, i0:i1], k, out=out[r0:r0 + step, o0:o1])

    bands = _interleaved_bands(src.shape[1] // channels, n_out, channels)
    half = (len(bands) + 1) // 2
    list(map_fn(blocks, (bands[:half], bands[half:])))
    return out


def _resize_frame(img: np.ndarray, size: tuple[int, int], map_fn=map) -> np.ndarray:
    """(H, W, C) real -> (C, h, w) float32 (0..255 for uint8), rows then columns, banded.

    Rows first on the interleaved frame (a shrinking frame loses most of its data there), then
    the columns of the interleaved result; the (C, h, w) returned is a view of (h, w, C).
    """
    (H, W, C), (h, w) = img.shape, size
    flat = np.ascontiguousarray(img).reshape(H, W * C)
    rows = _resize_rows(flat, h, map_fn) if H != h else flat.astype(np.float32)
    cols = _resize_cols(rows, w, C, map_fn) if W != w else rows
    return cols.reshape(h, w, C).transpose(2, 0, 1)


def resize_bilinear_np(img: np.ndarray, size: tuple[int, int], map_fn=map) -> np.ndarray:
    """Resize (H, W, C) any dtype -> (h, w, C) float32 like torch's antialiased bilinear.

    The arithmetic is torch's bilinear (align_corners=False), antialiased along an axis that
    shrinks.

    uint8 frames go through the banded float32 matmuls of :func:`_resize_frame` (``map_fn``
    may run their blocks on a thread pool: numpy releases the GIL); they equal PIL's
    double-precision triangle filter (the deployed resize before) within 5e-5 on 0..255 (a
    float32 rounding or two).
    Float maps, which may hold +-inf, go through the guarded taps.
    """
    h, w = size
    if img.shape[:2] == (h, w):
        return img.astype(np.float32, copy=False)
    if img.dtype == np.uint8:
        return np.ascontiguousarray(_resize_frame(img, size, map_fn).transpose(1, 2, 0))
    rows = _resize_axis0(img, h) if img.shape[0] != h else img.astype(np.float32)
    if img.shape[1] == w:
        return rows
    return _resize_axis0(rows.transpose(1, 0, 2), w).transpose(1, 0, 2)


def upsample_score_np(score: np.ndarray, size: tuple[int, int], map_fn=map,
                      chunks: int = 1, out: np.ndarray | None = None) -> np.ndarray:
    """Upsample a (h, w) float32 score map -> (H, W) float32 (into ``out`` when given).

    The taps of :func:`resize_bilinear_np`: gathered, bit for bit its sums, for frames under
    :data:`_MATMUL_UPSAMPLE_PIXELS`; as banded matmuls above it (:func:`_upsample_matmul`, 4x
    faster at 1080p), within a float32 rounding of them (1e-6 relative). Either way the same
    bits whatever ``chunks``: bands of rows (``map_fn`` may run them on a thread pool: numpy
    releases the GIL). A map that holds NaN or +-inf goes through the guarded taps, which keep
    an infinite score from spreading into its neighbours' weights. ``out``: a C-contiguous
    (H, W) float32 array to write (e.g. a message's buffer).
    """
    H, W = size
    if out is None:
        out = np.empty((H, W), np.float32)
    if score.shape == (H, W):
        out[...] = score
    elif not np.isfinite(score).all():
        out[...] = resize_bilinear_np(score[:, :, None], size)[:, :, 0]
    elif H * W >= _MATMUL_UPSAMPLE_PIXELS:
        _upsample_matmul(score.astype(np.float32, copy=False), out, map_fn, chunks)
    else:
        _upsample_gathers(score, out, map_fn, chunks)
    return out


# From this many output pixels the score is upsampled with matmuls. Below it the gathers are
# within 0.3 ms (640x480: 0.8 against 0.5 ms), and with them one node serving four 640x480
# cameras kept its p99 at 30-31 ms where with the matmuls it measured 34-91 ms
# (bench.multi_camera, quiet, five runs; not explained).
_MATMUL_UPSAMPLE_PIXELS = 1 << 19
# output rows (columns) a block when upsampling with matmuls: larger blocks, fewer calls
_UPSAMPLE_BLOCK = 32


def _upsample_gathers(score: np.ndarray, out: np.ndarray, map_fn, chunks: int) -> None:
    """Upsample rows, then columns gathered with ``np.take`` into scratch, 64 rows at a time.

    The same products, summed in the same order, as :func:`resize_bilinear_np`.
    """
    (h, w), (H, W) = score.shape, out.shape
    iy, wy = _axis(h, H)
    ix, wx = _axis(w, W)

    def bands(rows: tuple[int, int]) -> None:
        tmp = np.empty((min(64, rows[1] - rows[0]), W), np.float32)
        for y0 in range(rows[0], rows[1], 64):
            y1 = min(y0 + 64, rows[1])
            r = score[iy[y0:y1, 0]] * wy[y0:y1, 0, None]
            for k in range(1, iy.shape[1]):
                r += score[iy[y0:y1, k]] * wy[y0:y1, k, None]
            o, t = out[y0:y1], tmp[:y1 - y0]
            np.take(r, ix[:, 0], axis=1, out=o)
            o *= wx[:, 0]
            for k in range(1, ix.shape[1]):
                np.take(r, ix[:, k], axis=1, out=t)
                t *= wx[:, k]
                o += t

    edges = np.linspace(0, H, max(1, chunks) + 1).astype(int)
    list(map_fn(bands, zip(edges[:-1], edges[1:])))


def _upsample_matmul(score: np.ndarray, out: np.ndarray, map_fn, chunks: int) -> None:
    """Upsample the small map's columns first, then each block of output rows: a matmul each.

    The blocks (:func:`_bands`) do not depend on ``chunks``, so neither do the bits.
    """
    (h, w), (H, W) = score.shape, out.shape
    cols = np.empty((h, W), np.float32) if w != W else score

    def col_blocks(part) -> None:
        for o0, o1, i0, i1, m in part:
            step = max(8, _GEMM_MACS // m.size)
            for r0 in range(0, h, step):
                np.matmul(score[r0:r0 + step, i0:i1], m.T, out=cols[r0:r0 + step, o0:o1])

    def row_blocks(part) -> None:
        for o0, o1, i0, i1, m in part:
            step = max(64, _GEMM_MACS // m.size)
            for c0 in range(0, W, step):
                np.matmul(m, cols[i0:i1, c0:c0 + step], out=out[o0:o1, c0:c0 + step])

    def run(blocks, bands) -> None:
        k = max(1, min(chunks, len(bands)))
        edges = np.linspace(0, len(bands), k + 1).astype(int)
        list(map_fn(blocks, [bands[a:b] for a, b in zip(edges[:-1], edges[1:])]))

    if w != W:
        run(col_blocks, _bands(w, W, _UPSAMPLE_BLOCK))
    if h != H:
        run(row_blocks, _bands(h, H, _UPSAMPLE_BLOCK))
    else:
        out[...] = cols


def frame_to_input(frame: np.ndarray, size: tuple[int, int], map_fn=map) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (1, 3, h, w) float32 in [0, 1], resized to ``size`` = (h, w).

    Bit for bit ``resize_bilinear_np(frame, size) * (1 / 255)`` laid out (1, 3, h, w), scaled
    straight from the resize's planar result, with no (h, w, 3) layout between.
    """
    if frame.dtype != np.uint8 or frame.shape[:2] == tuple(size):
        x = resize_bilinear_np(frame, size, map_fn)  # 0..255
        return np.ascontiguousarray(x.transpose(2, 0, 1)[None]) * np.float32(1.0 / 255.0)
    out = np.empty((1, frame.shape[2], *size), np.float32)
    np.multiply(_resize_frame(frame, size, map_fn), np.float32(1.0 / 255.0), out=out[0])
    return out


__all__ = ["RESIZE_METHOD", "Resolution", "check_image", "frame_to_input", "resize_bilinear_np",
           "upsample_score_np"]
