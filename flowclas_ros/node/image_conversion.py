"""sensor_msgs/Image <-> numpy, written here so the node needs no cv_bridge.

Input images are decoded by the ROS-free :mod:`flowclas_ros.image_codec`, which checks every
field before any byte is indexed.

Output: :func:`heatmap_to_msg` (``32FC1``, non-finite values replaced so the message is always
finite), :func:`mask_to_msg` (``mono8``) and :func:`bgr_to_msg` (``bgr8``), each carrying the
header it is given unchanged. :func:`numpy_to_msg` encodes any supported layout (tests, bench).
An array whose memory is a whole ``array.array("B")`` (the host pipeline writes its outputs into
such, :func:`flowclas_ros.runtime.numpy_pipeline.message_array`) becomes the message's data
as it is: the message and the array then share that memory; any other array is copied once.
"""
from __future__ import annotations

import array
import sys

import numpy as np
from sensor_msgs.msg import Image

from ..image_codec import ENCODINGS, ImageFormatError, rgb_to_compressed

# output-only encodings written by numpy_to_msg
_OUTPUT_ENCODINGS: dict[str, tuple[int, int, str]] = {
    "32FC1": (1, 4, "float32"),
}
_HOST_BIG_ENDIAN = int(sys.byteorder == "big")


def _to_msg(data: np.ndarray, encoding: str, header, big_endian: int) -> Image:
    """(H, W[, C]) contiguous array -> Image with step = W * C * itemsize (no padding)."""
    h, w = data.shape[:2]
    msg = Image(check_fields=True)  # checked fields: the data setter keeps an array.array as is
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(h), int(w)
    msg.encoding = encoding
    msg.is_bigendian = big_endian
    msg.step = int(data.strides[0])
    # The message setter takes an array.array as is (bytes or a list would be checked element
    # by element): the array's own when it has one, else one memcpy into a new one.
    buf = _whole_array_array(data)
    if buf is None:
        buf = array.array("B")
        buf.frombytes(np.ascontiguousarray(data).reshape(-1).view(np.uint8))
    msg.data = buf
    return msg


def _whole_array_array(data: np.ndarray) -> array.array | None:
    """Return the ``array.array("B")`` that is exactly ``data``'s memory, else None."""
    base = data.base
    while isinstance(base, (np.ndarray, memoryview)):
        base = base.obj if isinstance(base, memoryview) else base.base
    if (isinstance(base, array.array) and base.typecode == "B" and data.flags.c_contiguous
            and len(base) == data.nbytes and base.buffer_info()[0] == data.ctypes.data):
        return base
    return None


def heatmap_to_msg(heatmap: np.ndarray, header=None, *, finite: bool = False) -> Image:
    """(H, W) float scores -> ``32FC1`` Image in host byte order.

    Always finite: NaN -> 0, +-inf -> the largest/smallest float32 (only a check when the
    input is already finite). ``finite=True``: the caller vouches for it (a backend's
    heatmap, which the pipelines make finite), and the check over every pixel is skipped.
    """
    hm = np.asarray(heatmap, dtype=np.float32)
    if hm.ndim != 2:
        raise ValueError(f"heatmap must be (H, W), got shape {hm.shape}")
    if not finite and not np.isfinite(hm).all():
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


def compressed_to_msg(rgb: np.ndarray, codec: str = "jpeg", header=None, quality: int = 90):
    """(H, W, 3) uint8 RGB -> sensor_msgs/CompressedImage (image_transport's format field)."""
    from sensor_msgs.msg import CompressedImage

    msg = CompressedImage()
    if header is not None:
        msg.header = header
    msg.format = (f"rgb8; {codec} compressed bgr8" if codec == "jpeg"
                  else f"rgb8; {codec} compressed")
    buf = array.array("B")
    buf.frombytes(rgb_to_compressed(rgb, codec, quality))
    msg.data = buf
    return msg


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


__all__ = ["bgr_to_msg", "compressed_to_msg", "heatmap_to_msg", "mask_to_msg", "numpy_to_msg"]
