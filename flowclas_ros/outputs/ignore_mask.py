"""The ignore mask: pixels where anomalies are never reported (the car's hood, the robot's body).

Using one (:class:`IgnoreMask`): a PNG of any size, **non-zero = ignore** (any colour channel of
an RGB/RGBA/palette image; the alpha channel is not looked at), read with a clear
:class:`IgnoreMaskError` for a missing, unreadable or empty file. :meth:`IgnoreMask.for_size`
resizes it nearest-neighbour (pixel-centre rule, :mod:`.resize`) to each frame's size, once per
size (cached); a mask whose aspect ratio differs from the frame's by more than a pixel is refused
(it would ignore the wrong place). The node removes these pixels from the mask before finding
regions and from the back-projected pixels.

Making one (:class:`StaticMaskBuilder`, behind ``python -m flowclas_ros.tools.ignore_mask``):
the parts of a recording that stay the same while the scene moves past. From frames sampled over
the whole recording (the caller samples; each frame is stride-subsampled to at most
``work_side`` pixels on its longer side, no smoothing, so texture keeps its variation):

1. the per-pixel temporal median image, and the **robust temporal deviation**: per pixel, the
   median over frames of ``|frame - median|`` (largest of the three channels, 0..255). A median,
   not a standard deviation: a car's hood changes brightness with the light and reflects the
   scene, and in a few frames it is shaded or absent, which would dominate a standard deviation
   (measured on the nuScenes Boston frames: the hood's standard deviation is higher than the
   road's, its median deviation half the scene's);
2. per pixel, intensity alone cannot tell a white hood from grey asphalt that also looks alike
   from frame to frame; the hood's **outline** is what stays put. Persistent edges: pixels where
   the image gradient points the same way in most frames (coherence ``|sum g| / sum |g|`` >=
   ``edge_coherence``, with a mean gradient at least twice the image's median), widened by a
   pixel;
3. the image is cut along the persistent edges into segments (4-connected; edge pixels go to the
   nearest segment); a segment is **static** when it touches the image border, covers at least
   ``min_area`` and at most ``max_area`` of the image (the scene itself is never static, even
   in a recording with little texture) and its median deviation is at most ``threshold``;
4. the static segments with the edge band along their outline (the outline is static too),
   opened (spikes removed) and holes filled, are scaled back to the input size (bilinear, > 0.5)
   and written as a PNG (:func:`save_ignore_mask`, 255 = ignore) for the user to check and edit.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from .resize import resize_nearest, same_aspect


class IgnoreMaskError(ValueError):
    """The ignore mask cannot be used (the message says why and which file)."""


def load_ignore_mask(path: str | Path) -> np.ndarray:
    """(H, W) bool, True = ignore, from an image file (module docstring)."""
    p = Path(path)
    if not p.is_file():
        raise IgnoreMaskError(f"ignore mask {p} does not exist (a PNG, non-zero = ignore)")
    try:
        with Image.open(p) as im:
            im.load()
            if im.mode in ("I", "I;16", "I;16B", "I;16L", "F", "L", "1"):
                arr = np.asarray(im) != 0
            else:
                arr = np.asarray(im.convert("RGB")).max(axis=2) != 0
    except Exception as exc:  # PIL's UnidentifiedImageError, OSError, truncated files
        raise IgnoreMaskError(f"ignore mask {p} is not a readable image: "
                              f"{type(exc).__name__}: {exc}") from None
    if arr.ndim != 2 or arr.size == 0:
        raise IgnoreMaskError(f"ignore mask {p} is empty or not 2-D (shape {arr.shape})")
    return arr


def save_ignore_mask(mask: np.ndarray, path: str | Path) -> None:
    """Write (H, W) bool ``mask`` as an 8-bit greyscale PNG, 255 = ignore, 0 = keep."""
    m = np.asarray(mask, dtype=bool)
    Image.fromarray(m.astype(np.uint8) * np.uint8(255), mode="L").save(Path(path), format="PNG")


class IgnoreMask:
    """An ignore mask and its resized copies per frame size (thread-safe cache)."""

    def __init__(self, mask: np.ndarray, source: str = ""):
        m = np.asarray(mask, dtype=bool)
        if m.ndim != 2 or m.size == 0:
            raise IgnoreMaskError(f"ignore mask must be a non-empty (H, W) array, got {m.shape}")
        self.mask = m
        self.source = source
        self._cache: dict[tuple[int, int], np.ndarray] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: str | Path) -> "IgnoreMask":
        return cls(load_ignore_mask(path), str(path))

    @property
    def fraction(self) -> float:
        """The ignored fraction of the image."""
        return float(self.mask.mean())

    def for_size(self, height: int, width: int) -> np.ndarray:
        """Return the mask for a frame of that size: (height, width) bool, read-only.

        Cached: the first call per size resizes, the next ones are a dictionary look-up.
        """
        key = (int(height), int(width))
        out = self._cache.get(key)
        if out is not None:
            return out
        if not same_aspect(self.mask.shape, key):
            h, w = self.mask.shape
            raise IgnoreMaskError(f"ignore mask {self.source or ''} is {w}x{h}, the frames "
                                  f"{key[1]}x{key[0]}: another aspect ratio; make the mask from "
                                  f"this camera's frames")
        out = np.ascontiguousarray(resize_nearest(self.mask, *key))
        out.flags.writeable = False
        with self._lock:
            if len(self._cache) >= 8:
                self._cache.clear()
            self._cache[key] = out
        return out


@dataclass
class StaticMask:
    """The result of :meth:`StaticMaskBuilder.build`.

    ``mask`` (H, W) bool at the input size; ``deviation`` the robust temporal deviation at the
    working size; ``edges`` the persistent edges; ``segments``: (area fraction, median
    deviation, touches the border, static) each.
    """

    mask: np.ndarray
    deviation: np.ndarray
    edges: np.ndarray
    segments: list[tuple[float, float, bool, bool]]
    frames: int

    @property
    def fraction(self) -> float:
        return float(self.mask.mean())


class StaticMaskBuilder:
    """Collects frames (:meth:`add`) and finds what stays constant (:meth:`build`).

    See the module docstring. Memory: the subsampled frames (200 frames at 480x270: 78 MB).
    """

    def __init__(self, work_side: int = 480):
        if work_side < 16:
            raise ValueError(f"work_side must be >= 16, got {work_side}")
        self.work_side = int(work_side)
        self.size: tuple[int, int] | None = None  # input (H, W)
        self._stride = 1
        self._frames: list[np.ndarray] = []
        self._gx = self._gy = self._mag = None

    def add(self, rgb: np.ndarray) -> None:
        """One (H, W, 3) uint8 RGB frame (every frame the same size; ValueError otherwise)."""
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"frames must be (H, W, 3) RGB, got {rgb.shape}")
        if self.size is None:
            self.size = rgb.shape[:2]
            self._stride = max(1, -(-max(self.size) // self.work_side))
        elif rgb.shape[:2] != self.size:
            raise ValueError(f"frame of size {rgb.shape[1]}x{rgb.shape[0]} in a recording of "
                             f"{self.size[1]}x{self.size[0]}")
        s = self._stride
        small = np.ascontiguousarray(rgb[s // 2::s, s // 2::s], dtype=np.uint8)
        self._frames.append(small)
        grey = small.astype(np.float32).mean(axis=2)
        gx, gy = ndimage.sobel(grey, 1), ndimage.sobel(grey, 0)
        if self._gx is None:
            self._gx, self._gy, self._mag = gx, gy, np.hypot(gx, gy)
        else:
            self._gx += gx
            self._gy += gy
            self._mag += np.hypot(gx, gy)

    @property
    def frames(self) -> int:
        return len(self._frames)

    def deviation(self) -> np.ndarray:
        """(h, w) float32: the median over frames of the largest channel's |frame - median|."""
        stack = np.stack(self._frames)
        med = np.median(stack, axis=0).astype(np.float32)
        dev = np.empty(stack.shape[:3], dtype=np.uint8)
        for k in range(0, stack.shape[0], 16):  # bounded temporaries
            d = np.abs(stack[k:k + 16].astype(np.float32) - med).max(axis=3)
            dev[k:k + 16] = np.minimum(np.rint(d), 255).astype(np.uint8)
        return np.median(dev, axis=0).astype(np.float32)

    def persistent_edges(self, edge_coherence: float = 0.7) -> np.ndarray:
        """(h, w) bool: where the gradient direction persists over the frames."""
        coherence = np.hypot(self._gx, self._gy) / (self._mag + 1e-3)
        mean_mag = self._mag / len(self._frames)
        edges = (coherence >= edge_coherence) & (mean_mag >= 2.0 * np.median(mean_mag))
        return ndimage.binary_dilation(edges, iterations=1)

    def build(self, threshold: float = 10.0, min_area: float = 0.005,
              edge_coherence: float = 0.7, max_area: float = 0.5) -> StaticMask:
        """Return the static mask of the frames added so far (needs at least 3)."""
        if len(self._frames) < 3:
            raise ValueError(f"a static mask needs at least 3 frames, got {len(self._frames)}")
        dev = self.deviation()
        edges = self.persistent_edges(edge_coherence)
        seg, n = ndimage.label(~edges)  # 4-connected
        if n == 0:
            part = np.zeros_like(seg)
        else:  # edge pixels join the nearest segment: a partition of the image
            idx = ndimage.distance_transform_edt(seg == 0, return_distances=False,
                                                 return_indices=True)
            part = seg[idx[0], idx[1]]
        border = np.unique(np.concatenate([part[0], part[-1], part[:, 0], part[:, -1]]))
        area = np.bincount(part.ravel(), minlength=n + 1) / part.size
        static = np.zeros(n + 1, dtype=bool)
        segments = []
        order = np.argsort(part.ravel(), kind="stable")
        bounds = np.searchsorted(part.ravel()[order], np.arange(n + 2))
        flat_dev = dev.ravel()[order]
        for i in range(1, n + 1):
            if area[i] < min_area:
                continue
            med = float(np.median(flat_dev[bounds[i]:bounds[i + 1]]))
            touches = bool(np.isin(i, border))
            static[i] = touches and med <= threshold and area[i] <= max_area
            segments.append((float(area[i]), med, touches, bool(static[i])))
        small = static[part]
        if small.any():  # the outline itself is static: take the whole edge band along it,
            near = ndimage.binary_dilation(static[seg], iterations=3)  # then smooth spikes
            padded = np.pad(small | (edges & near), 3, mode="edge")  # the border is no edge
            small = ndimage.binary_opening(padded, iterations=2)[3:-3, 3:-3]
            small = ndimage.binary_fill_holes(small)
        h, w = self.size  # type: ignore[misc]
        up = Image.fromarray(small.astype(np.uint8) * np.uint8(255), mode="L").resize(
            (w, h), Image.BILINEAR)
        mask = np.asarray(up) > 127
        return StaticMask(mask, dev, edges, segments, len(self._frames))


def static_mask(frames, threshold: float = 10.0, min_area: float = 0.005,
                edge_coherence: float = 0.7, work_side: int = 480,
                max_area: float = 0.5) -> StaticMask:
    """:class:`StaticMaskBuilder` over an iterable of (H, W, 3) uint8 RGB frames."""
    b = StaticMaskBuilder(work_side)
    for f in frames:
        b.add(f)
    return b.build(threshold, min_area, edge_coherence, max_area)


__all__ = ["IgnoreMask", "IgnoreMaskError", "StaticMask", "StaticMaskBuilder",
           "load_ignore_mask", "save_ignore_mask", "static_mask"]
