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
from PIL import Image

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


def _resize_plane(plane: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """One 8-bit or float PIL plane -> (h, w) float32, PIL's float triangle filter."""
    h, w = size
    return np.asarray(plane.convert("F").resize((w, h), Image.BILINEAR))


def _channel_plane(img: np.ndarray, c: int) -> Image.Image:
    """Channel ``c`` of an (H, W, C) uint8 frame as an 8-bit PIL plane.

    One strided copy into a contiguous plane that PIL then shares: cheaper than
    ``Image.fromarray(rgb).split()`` (an RGB -> RGBX unpack of the whole frame, then 3 copies).
    """
    plane = np.ascontiguousarray(img[..., c])
    return Image.frombuffer("L", (img.shape[1], img.shape[0]), plane, "raw", "L", 0, 1)


def resize_bilinear_np(img: np.ndarray, size: tuple[int, int], map_fn=map) -> np.ndarray:
    """Resize (H, W, C) any dtype -> (h, w, C) float32 like torch's antialiased bilinear.

    The arithmetic is torch's bilinear (align_corners=False), antialiased along an axis that
    shrinks.

    uint8 frames go through PIL's float resampler (the same triangle filter, in C: ~4x faster
    than the taps below at 640x480), one plane per channel: ``map_fn`` may run them on a thread
    pool (PIL releases the GIL while it resamples). Float maps, which may hold +-inf, go through
    the taps.
    """
    h, w = size
    if img.shape[:2] == (h, w):
        return img.astype(np.float32, copy=False)
    if img.dtype == np.uint8:
        return np.stack(list(map_fn(lambda c: _resize_plane(_channel_plane(img, c), size),
                                    range(img.shape[2]))), axis=-1)
    rows = _resize_axis0(img, h) if img.shape[0] != h else img.astype(np.float32)
    if img.shape[1] == w:
        return rows
    return _resize_axis0(rows.transpose(1, 0, 2), w).transpose(1, 0, 2)


def upsample_score_np(score: np.ndarray, size: tuple[int, int], map_fn=map,
                      chunks: int = 1) -> np.ndarray:
    """Upsample a (h, w) float32 score map -> (H, W) float32.

    The result is the taps of :func:`resize_bilinear_np`, bit for bit, computed in ``chunks``
    bands of output rows (``map_fn`` may run them on a thread pool: numpy releases the GIL). A
    map that holds NaN or +-inf goes through the guarded taps, which keep an infinite score from
    spreading into its neighbours' weights.
    """
    if score.shape == tuple(size):
        return score.astype(np.float32, copy=False)
    if not np.isfinite(score).all():
        return resize_bilinear_np(score[:, :, None], size)[:, :, 0]
    (h, w), (H, W) = score.shape, size
    iy, wy = _axis(h, H)
    ix, wx = _axis(w, W)
    out = np.empty((H, W), np.float32)

    def band(rows: tuple[int, int]) -> None:
        y0, y1 = rows
        r = score[iy[y0:y1, 0]] * wy[y0:y1, 0, None]  # the same sums, in the same order,
        for k in range(1, iy.shape[1]):  # as resize_bilinear_np's row then column passes
            r += score[iy[y0:y1, k]] * wy[y0:y1, k, None]
        o = np.multiply(r[:, ix[:, 0]], wx[:, 0], out=out[y0:y1])
        for k in range(1, ix.shape[1]):
            o += r[:, ix[:, k]] * wx[:, k]

    edges = np.linspace(0, H, max(1, chunks) + 1).astype(int)
    list(map_fn(band, zip(edges[:-1], edges[1:])))
    return out


def frame_to_input(frame: np.ndarray, size: tuple[int, int], map_fn=map) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (1, 3, h, w) float32 in [0, 1], resized to ``size`` = (h, w).

    Bit for bit ``resize_bilinear_np(frame, size) * (1 / 255)`` laid out (1, 3, h, w): each
    channel is resized (``map_fn`` may run the three on a thread pool) and scaled straight into
    its plane of the result, with no (h, w, 3) stack and transpose between.
    """
    if frame.dtype != np.uint8 or frame.shape[:2] == tuple(size):
        x = resize_bilinear_np(frame, size, map_fn)  # 0..255
        return np.ascontiguousarray(x.transpose(2, 0, 1)[None]) * np.float32(1.0 / 255.0)
    out = np.empty((1, frame.shape[2], *size), np.float32)

    def plane(c: int) -> None:
        np.multiply(_resize_plane(_channel_plane(frame, c), size), np.float32(1.0 / 255.0),
                    out=out[0, c])

    list(map_fn(plane, range(frame.shape[2])))
    return out


__all__ = ["RESIZE_METHOD", "Resolution", "check_image", "frame_to_input", "resize_bilinear_np",
           "upsample_score_np"]
