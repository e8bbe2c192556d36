"""Depth images to 3-D points.

Validated decoding, CameraInfo intrinsics, size matching and back-projection of the anomalous
pixels (no ROS: the message fields are duck-typed).

* :func:`decode_depth`: a sensor_msgs/Image (``height``, ``width``, ``encoding``,
  ``is_bigendian``, ``step``, ``data``) in the encodings of REP 118, ``16UC1`` (millimetres, 0 =
  no reading) or ``32FC1`` (metres, NaN = no reading, +-inf = out of range). Every field is
  checked before a byte is indexed (``step`` >= width x bytes per pixel, padding skipped;
  ``len(data) == step x height``; ``is_bigendian`` 0 or 1 and honoured): a message that does not
  add up raises :class:`DepthFormatError`. O(1): the result is a view of the message's bytes.
* :func:`intrinsics_from_camera_info`: fx, fy, cx, cy from a sensor_msgs/CameraInfo's ``k``
  (row-major 3x3), with ``width``/``height``; a zero, negative or non-finite focal length, an
  all-zero K (an uncalibrated camera), a ``k`` that is not 9 numbers or an ROI refuse with
  :class:`CameraInfoError`. ``binning_x``/``binning_y`` > 1 scale the intrinsics to the binned
  image. The distortion ``d`` is ignored: use a rectified depth image (``image_rect_raw``).
* :func:`depth_geometry`: where each camera pixel reads the depth image. **The intrinsics that
  apply are the depth image's own CameraInfo's, and the points are in the depth image's
  optical frame** (its header ``frame_id``). Pixel (u, v) of the camera image is looked up in
  the depth image at the same place of the field of view, so the depth image must be
  **registered** to the camera image (same optical centre and field of view: e.g.
  ``aligned_depth_to_color`` of a RealSense, depth_image_proc's ``register``). A depth image of
  another size is read nearest-neighbour (:mod:`.resize`, pixel-centre rule) when the aspect
  ratios match within a pixel, refused with a reason (:class:`DepthFormatError`) otherwise;
  the depth intrinsics are scaled to the camera grid accordingly
  (``fx' = fx * s``, ``cx' = (cx + 0.5) * s - 0.5``).
* :func:`back_project`: the given camera pixels (the anomalous pixels that passed persistence,
  minus ignored pixels) through the intrinsics to ``x = (u - cx) z / fx``,
  ``y = (v - cy) z / fy``, ``z`` (optical frame: x right, y down, z forward; metres) with each
  pixel's score, skipping depths that are 0, NaN, infinite or outside ``[min_depth,
  max_depth]``, then subsampled **deterministically** to at most ``max_points``: evenly spaced in
  the order of the given pixels. Vectorised; the cost is O(pixels given), never O(image): a
  16UC1 depth is judged in its raw units (the usable interval of raw values is tabulated once),
  only the kept pixels are converted to metres, ``u - cx`` and ``v - cy`` are gathered from
  per-geometry tables, and the points are written once in the PointCloud2 layout
  (:attr:`Points.packed`). The result is bit for bit that of the straightforward float32
  formulas (``test/test_outputs.py`` keeps them as the reference).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np

from .resize import nearest_indices, same_aspect

# encoding -> (numpy kind without byte order, bytes per pixel, metres per unit)
DEPTH_ENCODINGS: dict[str, tuple[str, int, float]] = {
    "16UC1": ("u2", 2, 0.001),
    "32FC1": ("f4", 4, 1.0),
}


class DepthFormatError(ValueError):
    """The depth image cannot be used.

    Unknown encoding, sizes that do not add up, or a size that does not match the camera image.
    """


class CameraInfoError(ValueError):
    """The CameraInfo cannot give intrinsics (the message says why)."""


@dataclass(frozen=True)
class DepthImage:
    """A decoded depth image.

    ``raw`` (H, W) is a view of the message's bytes in its own dtype and byte order (rows may be
    padded: not contiguous); ``scale`` = metres per unit.

    The view keeps the message's buffer alive; do not modify the message while this is used.
    """

    raw: np.ndarray
    scale: float
    encoding: str

    @property
    def shape(self) -> tuple[int, int]:
        return self.raw.shape  # type: ignore[return-value]

    def at(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Depth in metres (float32) at the given depth-image pixels (0 / NaN kept)."""
        vals = self.raw[rows, cols].astype(np.float32)
        if self.scale != 1.0:
            vals *= np.float32(self.scale)
        return vals

    def take(self, flat: np.ndarray) -> np.ndarray:
        """Depth in metres (float32) at flat indices ``row * W + col`` (contiguous rows only)."""
        vals = self.raw.reshape(-1).take(flat).astype(np.float32)
        if self.scale != 1.0:
            vals *= np.float32(self.scale)
        return vals

    def metres(self) -> np.ndarray:
        """Return the whole image in metres, (H, W) float32 (a new array)."""
        out = self.raw.astype(np.float32)
        if self.scale != 1.0:
            out *= np.float32(self.scale)
        return out


def _field(msg, name: str):
    try:
        return getattr(msg, name)
    except AttributeError:
        raise DepthFormatError(f"depth message has no field {name!r}") from None


def decode_depth(msg, max_pixels: int | None = None) -> DepthImage:
    """Validate a depth Image message and view its pixels (module docstring).

    Raises :class:`DepthFormatError`. ``max_pixels`` (None or <= 0: no limit) refuses larger
    images.
    """
    encoding = str(_field(msg, "encoding"))
    if encoding not in DEPTH_ENCODINGS:
        raise DepthFormatError(f"depth encoding {encoding!r} is not supported; REP 118 depth "
                               f"images are 16UC1 (millimetres) or 32FC1 (metres)")
    kind, bpp, scale = DEPTH_ENCODINGS[encoding]
    try:
        height, width = int(_field(msg, "height")), int(_field(msg, "width"))
        step, big = int(_field(msg, "step")), int(_field(msg, "is_bigendian"))
    except (TypeError, ValueError) as exc:
        raise DepthFormatError(f"depth message has a non-integer size field: {exc}") from None
    if height <= 0 or width <= 0:
        raise DepthFormatError(f"empty depth image: height={height}, width={width}")
    if max_pixels is not None and max_pixels > 0 and height * width > max_pixels:
        raise DepthFormatError(f"depth image {width}x{height} has more than {max_pixels} pixels")
    if big not in (0, 1):
        raise DepthFormatError(f"is_bigendian must be 0 or 1, got {big}")
    row_bytes = width * bpp
    if step < row_bytes:
        raise DepthFormatError(f"step {step} is smaller than width * bytes per pixel = "
                               f"{width} * {bpp} = {row_bytes} for {encoding}")
    data = _field(msg, "data")
    if isinstance(data, np.ndarray):
        buf = data.view(np.uint8).reshape(-1) if data.flags.c_contiguous else \
            np.ascontiguousarray(data).view(np.uint8).reshape(-1)
    elif isinstance(data, (bytes, bytearray, memoryview)) or hasattr(data, "buffer_info"):
        buf = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    else:
        buf = np.asarray(data, dtype=np.uint8).reshape(-1)
    if buf.size != step * height:
        raise DepthFormatError(f"data has {buf.size} bytes but step * height = {step} * {height}"
                               f" = {step * height}")
    rows = buf.reshape(height, step)[:, :row_bytes]
    raw = rows.view(np.dtype((">" if big else "<") + kind))
    return DepthImage(raw, scale, encoding)


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics of an image of ``width`` x ``height`` pixels.

    Pixel-centre convention: pixel (u, v) has its centre at (u, v), as in CameraInfo's K.
    """

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def scaled(self, width: int, height: int) -> "Intrinsics":
        """Return the same camera seen at another resolution (the same field of view)."""
        if (width, height) == (self.width, self.height):
            return self
        sx, sy = width / self.width, height / self.height
        return Intrinsics(self.fx * sx, self.fy * sy, (self.cx + 0.5) * sx - 0.5,
                          (self.cy + 0.5) * sy - 0.5, int(width), int(height))


def intrinsics_from_camera_info(msg) -> Intrinsics:
    """Return the validated intrinsics of a sensor_msgs/CameraInfo (module docstring).

    Raises :class:`CameraInfoError` with the reason otherwise.
    """
    try:
        k = np.asarray(list(msg.k), dtype=np.float64)
        width, height = int(msg.width), int(msg.height)
    except AttributeError as exc:
        raise CameraInfoError(f"CameraInfo lacks a field: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise CameraInfoError(f"CameraInfo k, width or height are not numbers: {exc}") from None
    if k.size != 9:
        raise CameraInfoError(f"CameraInfo k must have 9 entries (a row-major 3x3), got {k.size}")
    if not np.all(np.isfinite(k)):
        raise CameraInfoError("CameraInfo k has non-finite entries")
    if not np.any(k):
        raise CameraInfoError("CameraInfo k is all zeros: the camera is not calibrated")
    fx, fy, cx, cy = k[0], k[4], k[2], k[5]
    if fx <= 0 or fy <= 0:
        raise CameraInfoError(f"CameraInfo focal lengths must be > 0, got fx={fx}, fy={fy}")
    if width <= 0 or height <= 0:
        raise CameraInfoError(f"CameraInfo width and height must be > 0, got {width}x{height}")
    roi = getattr(msg, "roi", None)
    if roi is not None:
        full = tuple(int(getattr(roi, f, 0)) for f in ("x_offset", "y_offset", "width", "height"))
        if full not in ((0, 0, 0, 0), (0, 0, width, height)):
            raise CameraInfoError(f"CameraInfo has a region of interest {full}: not supported; "
                                  f"publish the full image")
    intr = Intrinsics(float(fx), float(fy), float(cx), float(cy), width, height)
    bx, by = int(getattr(msg, "binning_x", 0) or 1), int(getattr(msg, "binning_y", 0) or 1)
    if bx < 1 or by < 1:
        raise CameraInfoError(f"CameraInfo binning must be >= 0, got {bx}, {by}")
    if bx > 1 or by > 1:
        intr = intr.scaled(width // bx, height // by)
    return intr


@dataclass(frozen=True)
class DepthGeometry:
    """How the camera image reads a depth image.

    ``rows[v]``, ``cols[u]`` = the depth pixel of camera pixel (u, v); ``intrinsics`` = the depth
    camera's intrinsics on the camera grid.
    """

    rows: np.ndarray
    cols: np.ndarray
    intrinsics: Intrinsics

    @cached_property
    def offsets(self) -> tuple[np.ndarray, np.ndarray]:
        """Return ``u - cx`` of every camera column and ``v - cy`` of every row (float32).

        Built once per geometry (geometries are cached), so a point's numerator is one gather
        from a table small enough to stay in cache.
        """
        intr = self.intrinsics
        return (np.arange(self.cols.size, dtype=np.float32) - np.float32(intr.cx),
                np.arange(self.rows.size, dtype=np.float32) - np.float32(intr.cy))


def depth_geometry(camera_hw, depth_hw, depth_intrinsics: Intrinsics) -> DepthGeometry:
    """Return the :class:`DepthGeometry` of a camera image and a depth image.

    The camera image is of ``camera_hw``, the depth image of ``depth_hw``, whose CameraInfo gave
    ``depth_intrinsics`` (cached per combination).

    Raises :class:`DepthFormatError` when the aspect ratios differ by more than a pixel (the
    CameraInfo's own size against the depth image's, then the depth image's against the
    camera's). ``camera_hw``, ``depth_hw``: (height, width).
    """
    return _geometry((int(camera_hw[0]), int(camera_hw[1])), (int(depth_hw[0]), int(depth_hw[1])),
                     depth_intrinsics)


@lru_cache(maxsize=16)
def _geometry(camera_hw: tuple[int, int], depth_hw: tuple[int, int],
              di: Intrinsics) -> DepthGeometry:
    (hc, wc), (hd, wd) = camera_hw, depth_hw
    if (di.height, di.width) != (hd, wd):
        if not same_aspect((di.height, di.width), (hd, wd)):
            raise DepthFormatError(f"the depth CameraInfo is for {di.width}x{di.height} but the "
                                   f"depth image is {wd}x{hd}: another aspect ratio")
        di = di.scaled(wd, hd)
    if not same_aspect((hc, wc), (hd, wd)):
        raise DepthFormatError(f"depth image {wd}x{hd} and camera image {wc}x{hc} have different "
                               f"aspect ratios: the depth must be registered to the camera image")
    return DepthGeometry(nearest_indices(hd, hc), nearest_indices(wd, wc), di.scaled(wc, hc))


@dataclass(frozen=True)
class Points:
    """Back-projected points.

    ``xyz`` (N, 3) float32 metres in the depth optical frame, ``score`` (N,) float32;
    ``candidates`` = pixels given, ``valid`` = those with a usable depth (before subsampling to
    ``max_points``); ``packed`` (N, 4) little-endian float32 ``x y z score`` (the PointCloud2
    layout of :mod:`.pointcloud`), of which ``xyz`` and ``score`` are views.
    """

    xyz: np.ndarray
    score: np.ndarray
    candidates: int
    valid: int
    packed: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.xyz.shape[0])


@lru_cache(maxsize=16)
def _valid_units(kind: str, scale: float, min_depth: float, max_depth: float):
    """Return the raw ``[lo, hi]`` of an integer encoding whose depths are usable, or None.

    Usable: ``z = float32(raw) * float32(scale)`` is > 0 and within ``[min_depth, max_depth]``,
    the float32 comparisons :func:`back_project` makes; z rises with raw, so the usable raw
    values are one interval (checked: None, and the comparisons per pixel, otherwise).
    """
    if kind != "u2":
        return None
    z = np.arange(65536, dtype=np.float32) * np.float32(scale)
    with np.errstate(invalid="ignore"):
        ok = np.flatnonzero((z > 0) & (z >= min_depth) & (z <= max_depth))
    if ok.size == 0:
        return (1, 0)
    lo, hi = int(ok[0]), int(ok[-1])
    return (lo, hi) if ok.size == hi - lo + 1 else None


def back_project(pixels: np.ndarray, camera_hw: tuple[int, int], depth: DepthImage,
                 geometry: DepthGeometry, score: np.ndarray | None = None, *,
                 max_points: int = 20000, min_depth: float = 0.1,
                 max_depth: float = 20.0) -> Points:
    """Camera pixels -> 3-D points with their score (module docstring).

    ``pixels``: flat indices ``row * W + col`` into the camera image (e.g.
    :meth:`.regions.Regions.pixel_indices`) or an (H, W) bool mask; ``score``: (H, W) per-pixel
    scores of the camera image (the heatmap; None: 0). Depths are kept when finite and
    ``min_depth <= z <= max_depth`` and ``z > 0``; ``max_points`` < 0: no limit.

    The points are written once, into :attr:`Points.packed`; only the kept pixels are converted
    to metres and projected (the others are judged on their raw depth units when the encoding
    is an integer one: the same float32 comparisons, tabulated once).
    """
    hc, wc = int(camera_hw[0]), int(camera_hw[1])
    px = np.asarray(pixels)
    if px.dtype == bool:
        if px.shape != (hc, wc):
            raise ValueError(f"pixel mask has shape {px.shape}, the camera image {(hc, wc)}")
        px = np.flatnonzero(px)
    px = px.astype(np.intp, copy=False).ravel()
    if px.size and (px.min() < 0 or px.max() >= hc * wc):
        raise ValueError("pixel index outside the camera image")
    if score is not None and np.shape(score) != (hc, wc):
        raise ValueError(f"score has shape {np.shape(score)}, the camera image {(hc, wc)}")
    same_grid = depth.shape == (hc, wc) and depth.raw.flags.c_contiguous
    if same_grid:  # rows and cols are the identity: a flat gather
        raw = depth.raw.reshape(-1).take(px)
    else:
        v, u = np.divmod(px, wc)
        raw = depth.raw[geometry.rows[v], geometry.cols[u]]
    units = None  # Python numbers only: a numpy float64 bound would compare in float64
    if type(min_depth) in (float, int) and type(max_depth) in (float, int):
        units = _valid_units(depth.raw.dtype.kind + str(depth.raw.dtype.itemsize), depth.scale,
                             float(min_depth), float(max_depth))
    if units is not None:
        ok = (raw >= units[0]) & (raw <= units[1])
    else:
        z = raw.astype(np.float32)
        if depth.scale != 1.0:
            z *= np.float32(depth.scale)
        with np.errstate(invalid="ignore"):
            ok = (z > 0) & (z >= min_depth) & (z <= max_depth)  # NaN compares False
    n_valid = int(np.count_nonzero(ok))
    keep = np.flatnonzero(ok) if n_valid < px.size else None  # None: every pixel
    n = n_valid if max_points < 0 else min(n_valid, max_points)
    if n < n_valid:  # evenly spaced in the order of the valid pixels
        pick = (np.arange(n, dtype=np.int64) * n_valid) // max(n, 1)
        keep = pick if keep is None else keep[pick]
    sel = px if keep is None else px[keep]
    z = (raw if keep is None else raw[keep]).astype(np.float32)
    if depth.scale != 1.0:
        z *= np.float32(depth.scale)
    intr = geometry.intrinsics
    du, dv = geometry.offsets
    v, u = np.divmod(sel, wc)
    x = du.take(u)  # (u - cx) * z / fx, in this order, as float32
    x *= z
    x /= np.float32(intr.fx)
    y = dv.take(v)
    y *= z
    y /= np.float32(intr.fy)
    out = np.empty((n, 4), dtype="<f4")
    out[:, 0], out[:, 1], out[:, 2] = x, y, z
    out[:, 3] = (0.0 if score is None else
                 np.asarray(score, dtype=np.float32).reshape(-1).take(sel))
    return Points(out[:, :3], out[:, 3], int(px.size), n_valid, out)


__all__ = ["CameraInfoError", "DEPTH_ENCODINGS", "DepthFormatError", "DepthGeometry",
           "DepthImage", "Intrinsics", "Points", "back_project", "decode_depth",
           "depth_geometry", "intrinsics_from_camera_info"]
