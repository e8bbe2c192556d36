"""sensor_msgs/Image <-> numpy, written here so the node needs no cv_bridge.

Input (:func:`image_to_rgb`): every field is checked by :func:`validate_image` before any byte is
indexed, so a message whose sizes do not add up raises :class:`ImageFormatError` (never an
IndexError, a reshape error or a huge allocation):

* encodings ``rgb8``, ``bgr8``, ``rgba8``, ``bgra8``, ``mono8`` and ``mono16``;
* ``height`` and ``width`` > 0, ``step`` >= width * bytes per pixel (extra bytes at the end of
  each row are padding and are skipped), ``len(data) == step * height``;
* ``is_bigendian`` is honoured for ``mono16`` (0 = little-endian, 1 = big-endian);
* an optional pixel limit refuses oversize frames (:class:`ImageTooLarge`) before any copy.

The model takes (H, W, 3) uint8 RGB. Alpha is dropped; ``mono8`` is repeated into three
channels; ``mono16`` is scaled to 8 bit with a **fixed** linear map ``v8 = v16 >> 8`` (i.e.
floor(v16 / 256), 0 -> 0, 65535 -> 255), the same scale as cv_bridge's 16->8 bit conversion. A
fixed scale keeps scores comparable from frame to frame (per-frame min/max stretching would make
the heatmap flicker with the scene's brightness); the cost is that data using only the low bits
(e.g. 12-bit sensors in 16-bit containers) appears dark.

Output: :func:`heatmap_to_msg` (``32FC1``, non-finite values replaced so the message is always
finite), :func:`mask_to_msg` (``mono8``) and :func:`bgr_to_msg` (``bgr8``), each carrying the
header it is given unchanged. :func:`numpy_to_msg` encodes any supported layout (tests, bench).
"""
from __future__ import annotations

import array
import sys
from dataclasses import dataclass

import numpy as np
from sensor_msgs.msg import Image

# encoding -> (channels, bytes per channel)
ENCODINGS: dict[str, tuple[int, int]] = {
    "rgb8": (3, 1),
    "bgr8": (3, 1),
    "rgba8": (4, 1),
    "bgra8": (4, 1),
    "mono8": (1, 1),
    "mono16": (1, 2),
}
SUPPORTED_ENCODINGS = tuple(ENCODINGS)
# output-only encodings written by numpy_to_msg
_OUTPUT_ENCODINGS: dict[str, tuple[int, int, str]] = {
    "32FC1": (1, 4, "float32"),
}
_HOST_BIG_ENDIAN = int(sys.byteorder == "big")


class ImageFormatError(ValueError):
    """The message cannot be read as an image: unknown encoding or sizes that do not add up."""


class ImageTooLarge(ImageFormatError):
    """The frame has more pixels than the configured limit (refused before any copy)."""


@dataclass(frozen=True)
class ImageLayout:
    """What :func:`validate_image` found: the geometry of a well-formed message."""

    height: int
    width: int
    channels: int
    bytes_per_channel: int
    step: int
    encoding: str
    big_endian: bool

    @property
    def row_bytes(self) -> int:
        """Bytes of pixel data per row (``step`` minus padding)."""
        return self.width * self.channels * self.bytes_per_channel


def validate_image(msg: Image, max_pixels: int | None = None) -> ImageLayout:
    """Check every size field of ``msg``; return its layout or raise :class:`ImageFormatError`.

    O(1): reads only the header fields and ``len(data)``. ``max_pixels`` (None or <= 0: no
    limit) raises :class:`ImageTooLarge` for frames with more than that many pixels.
    """
    encoding = str(msg.encoding)
    if encoding not in ENCODINGS:
        raise ImageFormatError(
            f"unsupported encoding {encoding!r}; supported: {', '.join(SUPPORTED_ENCODINGS)}")
    channels, bpc = ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageFormatError(f"empty image: height={height}, width={width}")
    if max_pixels is not None and max_pixels > 0 and height * width > max_pixels:
        raise ImageTooLarge(
            f"{width}x{height} = {height * width} pixels exceeds max_image_pixels={max_pixels}")
    row_bytes = width * channels * bpc
    if step < row_bytes:
        raise ImageFormatError(
            f"step {step} is smaller than width * bytes per pixel = {width} * {channels * bpc} "
            f"= {row_bytes} for {encoding}")
    if int(msg.is_bigendian) not in (0, 1):
        raise ImageFormatError(f"is_bigendian must be 0 or 1, got {msg.is_bigendian}")
    n = len(msg.data)
    if n != step * height:
        raise ImageFormatError(
            f"data has {n} bytes but step * height = {step} * {height} = {step * height}")
    return ImageLayout(height, width, channels, bpc, step, encoding, bool(msg.is_bigendian))


def image_to_rgb(msg: Image, max_pixels: int | None = None,
                 layout: ImageLayout | None = None) -> np.ndarray:
    """sensor_msgs/Image -> (H, W, 3) uint8 RGB, C-contiguous (a copy, never a view of ``msg``).

    ``layout``: the result of an earlier :func:`validate_image` on the same message (skips the
    checks); otherwise the message is validated here. Raises :class:`ImageFormatError`.
    """
    lay = layout or validate_image(msg, max_pixels)
    buf = np.frombuffer(msg.data, dtype=np.uint8)
    # (H, step) rows, padding cut off: a view, no copy yet
    rows = buf.reshape(lay.height, lay.step)[:, : lay.row_bytes]
    enc = lay.encoding
    if enc == "mono16":
        dtype = np.dtype(">u2" if lay.big_endian else "<u2")
        grey = np.ascontiguousarray(rows).view(dtype).reshape(lay.height, lay.width)
        grey8 = (grey >> 8).astype(np.uint8)
        return np.repeat(grey8[:, :, None], 3, axis=2)
    pix = rows.reshape(lay.height, lay.width, lay.channels)
    if enc == "mono8":
        return np.repeat(pix, 3, axis=2)
    if enc in ("rgb8", "rgba8"):
        return np.array(pix[:, :, :3], order="C", copy=True)  # never a view of the message
    return np.array(pix[:, :, 2::-1], order="C", copy=True)  # bgr8 / bgra8 -> RGB


def _to_msg(data: np.ndarray, encoding: str, header, big_endian: int) -> Image:
    """(H, W[, C]) contiguous array -> Image with step = W * C * itemsize (no padding)."""
    h, w = data.shape[:2]
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(h), int(w)
    msg.encoding = encoding
    msg.is_bigendian = big_endian
    msg.step = int(data.strides[0])
    # One memcpy from the array's buffer into an array.array, which the message setter takes
    # as is (bytes or a list would be checked element by element).
    buf = array.array("B")
    buf.frombytes(np.ascontiguousarray(data).reshape(-1).view(np.uint8))
    msg.data = buf
    return msg


def heatmap_to_msg(heatmap: np.ndarray, header=None) -> Image:
    """(H, W) float scores -> ``32FC1`` Image in host byte order.

    Always finite: NaN -> 0, +-inf -> the largest/smallest float32 (only a check when the
    input is already finite, which the backends guarantee).
    """
    hm = np.asarray(heatmap, dtype=np.float32)
    if hm.ndim != 2:
        raise ValueError(f"heatmap must be (H, W), got shape {hm.shape}")
    if not np.isfinite(hm).all():
        hm = np.nan_to_num(hm, nan=0.0, posinf=np.finfo(np.float32).max,
                           neginf=np.finfo(np.float32).min)
    return _to_msg(np.ascontiguousarray(hm), "32FC1", header, _HOST_BIG_ENDIAN)


def mask_to_msg(mask: np.ndarray, header=None) -> Image:
    """(H, W) uint8 0/255 (or bool) -> ``mono8`` Image."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {m.shape}")
    if m.dtype == bool:
        m = m.astype(np.uint8) * 255
    return _to_msg(np.ascontiguousarray(m, dtype=np.uint8), "mono8", header, 0)


def bgr_to_msg(bgr: np.ndarray, header=None) -> Image:
    """(H, W, 3) uint8 BGR -> ``bgr8`` Image."""
    b = np.asarray(bgr)
    if b.ndim != 3 or b.shape[2] != 3 or b.dtype != np.uint8:
        raise ValueError(f"overlay must be (H, W, 3) uint8, got {b.shape} {b.dtype}")
    return _to_msg(np.ascontiguousarray(b), "bgr8", header, 0)


def numpy_to_msg(array_: np.ndarray, encoding: str, header=None, *, step: int | None = None,
                 big_endian: bool = False) -> Image:
    """Encode an array already in ``encoding``'s channel order into an Image.

    (H, W) for mono8/mono16/32FC1, (H, W, 3|4) otherwise. ``step`` > the row size adds zero
    padding at the end of each row (to test padded inputs); ``big_endian`` applies to mono16.
    """
    if encoding in ENCODINGS:
        channels, bpc = ENCODINGS[encoding]
        dtype = np.dtype(">u2" if big_endian else "<u2") if bpc == 2 else np.dtype(np.uint8)
    elif encoding in _OUTPUT_ENCODINGS:
        channels, bpc, name = _OUTPUT_ENCODINGS[encoding]
        dtype = np.dtype(name)
        big_endian = bool(_HOST_BIG_ENDIAN)
    else:
        raise ImageFormatError(f"unsupported encoding {encoding!r}")
    a = np.asarray(array_)
    expected = a.shape[:2] + ((channels,) if channels > 1 else ())
    if a.shape != expected or a.ndim not in (2, 3):
        want = "(H, W)" if channels == 1 else f"(H, W, {channels})"
        raise ValueError(f"{encoding} needs shape {want}, got {a.shape}")
    raw = np.ascontiguousarray(a.astype(dtype, copy=False)).view(np.uint8)
    h = a.shape[0]
    raw = raw.reshape(h, -1)
    row = raw.shape[1]
    if step is not None and step != row:
        if step < row:
            raise ValueError(f"step {step} < row size {row}")
        padded = np.zeros((h, step), np.uint8)
        padded[:, :row] = raw
        raw = padded
    msg = _to_msg(raw, encoding, header, int(big_endian))
    msg.width = int(a.shape[1])
    return msg
