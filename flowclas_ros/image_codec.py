"""Camera images to RGB arrays: sensor_msgs/Image fields and CompressedImage bytes, no ROS.

Duck-typed on the message fields, so the node (rclpy messages), the bag reader (rosbags
messages) and the tests share one validated decoder; nothing here imports ROS or torch.

Raw images (:func:`validate_image`, :func:`image_to_rgb`): every field is checked before any byte
is indexed, so a message whose sizes do not add up raises :class:`ImageFormatError` (never an
IndexError, a reshape error or a huge allocation):

* encodings ``rgb8``, ``bgr8``, ``rgba8``, ``bgra8``, ``mono8`` and ``mono16``;
* ``height`` and ``width`` > 0, ``step`` >= width * bytes per pixel (extra bytes at the end of
  each row are padding and are skipped), ``len(data) == step * height``;
* ``is_bigendian`` is honoured for ``mono16`` (0 = little-endian, 1 = big-endian);
* an optional pixel limit refuses oversize frames (:class:`ImageTooLarge`).

The model takes (H, W, 3) uint8 RGB. Alpha is dropped; ``mono8`` is repeated into three
channels; ``mono16`` is scaled to 8 bit with a **fixed** linear map ``v8 = v16 >> 8`` (i.e.
floor(v16 / 256), 0 -> 0, 65535 -> 255), the same scale as cv_bridge's 16->8 bit conversion. A
fixed scale keeps scores comparable from frame to frame (per-frame min/max stretching would make
the heatmap flicker with the scene's brightness); the cost is that data using only the low bits
(e.g. 12-bit sensors in 16-bit containers) appears dark.

Compressed images (:func:`compressed_to_rgb`): image_transport's ``compressed`` format,
``format`` "jpeg" / "png" (optionally prefixed by the source encoding, "rgb8; jpeg compressed
bgr8"), decoded with Pillow; the header's pixel count is checked against the limit before the
pixels are decoded, and a truncated or corrupt stream raises :class:`ImageFormatError`.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image

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


def validate_image(msg, max_pixels: int | None = None) -> ImageLayout:
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


def image_to_rgb(msg, max_pixels: int | None = None,
                 layout: ImageLayout | None = None, *, copy: bool = True) -> np.ndarray:
    """Decode an Image message to (H, W, 3) uint8 RGB, C-contiguous.

    The result is a copy, never a view of ``msg``; with ``copy=False`` an rgb8 message without
    row padding comes back as a read-only view of its data instead (an HD frame's copy saved,
    for a caller that keeps the message alive while it reads the pixels).

    ``layout``: the result of an earlier :func:`validate_image` on the same message (skips the
    checks); otherwise the message is validated here. Raises :class:`ImageFormatError`.
    """
    lay = layout or validate_image(msg, max_pixels)
    buf = np.frombuffer(memoryview(msg.data).cast("B") if not isinstance(msg.data, np.ndarray)
                        else msg.data.view(np.uint8).reshape(-1), dtype=np.uint8)
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
    if enc == "rgb8" and not copy and rows.flags.c_contiguous:
        view = pix.view()
        view.flags.writeable = False
        return view
    if enc in ("rgb8", "rgba8"):
        return np.array(pix[:, :, :3], order="C", copy=True)  # never a view of the message
    return np.array(pix[:, :, 2::-1], order="C", copy=True)  # bgr8 / bgra8 -> RGB


COMPRESSED_FORMATS = ("jpeg", "png")


def compressed_format(fmt: str) -> str:
    """Return the codec of a CompressedImage ``format`` field ("jpeg", "png").

    Raises ImageFormatError for any other format.
    """
    text = str(fmt).lower()
    for codec in COMPRESSED_FORMATS:
        if codec in text or (codec == "jpeg" and "jpg" in text):
            return codec
    raise ImageFormatError(f"unsupported compressed format {fmt!r}; supported: jpeg, png")


def compressed_to_rgb(msg, max_pixels: int | None = None) -> np.ndarray:
    """Decode a CompressedImage message (``format``, ``data``) to (H, W, 3) uint8 RGB.

    Raises :class:`ImageFormatError` for an unknown format, an empty, truncated or corrupt
    stream, and :class:`ImageTooLarge` (from the stream's header, before decoding) above
    ``max_pixels``.
    """
    codec = compressed_format(msg.format)
    data = bytes(msg.data) if not isinstance(msg.data, (bytes, bytearray)) else msg.data
    if not data:
        raise ImageFormatError("compressed image has no data")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            fmt = (im.format or "").lower()
            if (codec == "png") != (fmt == "png"):
                raise ImageFormatError(
                    f"format says {msg.format!r} but the data is {fmt or 'unknown'}")
            width, height = im.size
            if max_pixels is not None and max_pixels > 0 and width * height > max_pixels:
                raise ImageTooLarge(f"{width}x{height} = {width * height} pixels exceeds "
                                    f"max_image_pixels={max_pixels}")
            im.load()  # decodes; raises on a truncated stream
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except ImageFormatError:
        raise
    except Exception as exc:  # PIL's errors (UnidentifiedImageError, OSError, SyntaxError...)
        raise ImageFormatError(f"cannot decode the {codec} data ({len(data)} bytes): "
                               f"{type(exc).__name__}: {exc}") from None


def rgb_to_compressed(rgb: np.ndarray, codec: str = "jpeg", quality: int = 90) -> bytes:
    """(H, W, 3) uint8 RGB -> jpeg or png bytes (bags and tests write compressed frames)."""
    buf = io.BytesIO()
    im = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8))
    if codec == "jpeg":
        im.save(buf, format="JPEG", quality=quality)
    elif codec == "png":
        im.save(buf, format="PNG")
    else:
        raise ValueError(f"codec must be jpeg or png, got {codec!r}")
    return buf.getvalue()


__all__ = ["COMPRESSED_FORMATS", "ENCODINGS", "ImageFormatError", "ImageLayout", "ImageTooLarge",
           "SUPPORTED_ENCODINGS", "compressed_format", "compressed_to_rgb", "image_to_rgb",
           "rgb_to_compressed", "validate_image"]
