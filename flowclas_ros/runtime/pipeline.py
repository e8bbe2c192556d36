"""The device pipeline around the score graph: frame in -> model input, score -> outputs.

Pre-processing: an (H, W, 3) uint8 RGB frame -> (1, 3, h, w) float32 in [0, 1] at the bundle's
input size (h, w), resized bilinearly with half-pixel centres, antialiased along an axis that
shrinks (the same arithmetic as ``F.interpolate(mode="bilinear", align_corners=False,
antialias=True)``, PIL's triangle filter: a 4K camera squeezed 8x to the model's input would
otherwise alias into textures the model never saw). Normalisation and padding are inside the
graph.

Post-processing: the (h, w) score -> bilinear back to (H, W) -> ``nan_to_num`` (NaN and +inf
become the largest float32, i.e. "most anomalous", -inf the lowest) -> only the outputs asked for:
the heatmap (the raw score), and the mask and overlay of :mod:`.visualisation`.

Two implementations with one interface (``prepare``, ``finish``): :class:`TorchPipeline` (torch
ops on the backend's device: torch, ONNX Runtime CUDA via I/O binding, TensorRT) and
:class:`NumpyPipeline` (ONNX Runtime on the CPU). Only what must be published is copied to the
host.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from PIL import Image
import torch.nn.functional as F
from torch import Tensor

from .visualisation import colormap_lut, mask_np, mask_torch, overlay_np, overlay_torch

FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_image(image) -> tuple[int, int]:
    """Validate an (H, W, 3) uint8 RGB frame (numpy array or torch tensor); return (H, W)."""
    shape = tuple(image.shape)
    dtype = image.dtype
    if len(shape) != 3 or shape[2] != 3 or dtype not in (np.uint8, torch.uint8):
        raise ValueError(f"image must be (H, W, 3) uint8 RGB, got shape {shape} dtype {dtype}")
    if shape[0] < 1 or shape[1] < 1:
        raise ValueError(f"image is empty: shape {shape}")
    return shape[0], shape[1]


# --- numpy (host) ----------------------------------------------------------------------------

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


def resize_bilinear_np(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, C) any dtype -> (h, w, C) float32: torch's bilinear (align_corners=False),
    antialiased along an axis that shrinks.

    uint8 frames go through PIL's float resampler (the same triangle filter, in C: ~4x faster
    than the taps below at 640x480); float maps, which may hold +-inf, through the taps."""
    h, w = size
    if img.shape[:2] == (h, w):
        return img.astype(np.float32, copy=False)
    if img.dtype == np.uint8:
        return np.stack([np.asarray(Image.fromarray(img[..., c].astype(np.float32), mode="F")
                                    .resize((w, h), Image.BILINEAR))
                         for c in range(img.shape[2])], axis=-1)
    rows = _resize_axis0(img, h) if img.shape[0] != h else img.astype(np.float32)
    if img.shape[1] == w:
        return rows
    return _resize_axis0(rows.transpose(1, 0, 2), w).transpose(1, 0, 2)


def resize_torch(x: Tensor, size: tuple[int, int]) -> Tensor:
    """(N, C, H, W) float -> (N, C, h, w): the same filter as :func:`resize_bilinear_np`."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrink = x.shape[-2] > size[0] or x.shape[-1] > size[1]
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False,
                         antialias=shrink)


class NumpyPipeline:
    """Host pre/post-processing for a graph run by ONNX Runtime on the CPU."""

    def __init__(self, input_size: tuple[int, int], score_range: tuple[float, float]):
        self.input_size = tuple(int(v) for v in input_size)
        self.score_range = score_range

    def prepare(self, image) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 -> (model input (1, 3, h, w) float32 [0, 1], the frame as numpy)."""
        check_image(image)
        if isinstance(image, Tensor):
            image = image.cpu().numpy()
        x = resize_bilinear_np(image, self.input_size)  # 0..255
        x = np.ascontiguousarray(x.transpose(2, 0, 1)[None]) * np.float32(1.0 / 255.0)
        return x, image

    def finish(self, score: np.ndarray, frame: np.ndarray, *, heatmap: bool, mask: bool,
               overlay: bool, threshold: float, alpha: float, colormap: str):
        """score (h, w) float32 -> (heatmap, mask, overlay) at the frame's size, None if not asked."""
        if not (heatmap or mask or overlay):
            return None, None, None
        s = resize_bilinear_np(score[:, :, None], frame.shape[:2])[:, :, 0]
        s = np.nan_to_num(s, copy=False, nan=FLOAT32_MAX, posinf=FLOAT32_MAX, neginf=-FLOAT32_MAX)
        m = mask_np(s, threshold) if mask else None
        ov = overlay_np(s, frame, self.score_range, alpha, colormap) if overlay else None
        return (s if heatmap else None), m, ov


# --- torch (on the backend's device) ---------------------------------------------------------

class TorchPipeline:
    """Pre/post-processing with torch ops on ``device``; copies to the host only the outputs.

    On a CUDA device the frame goes up, and the outputs come down, through page-locked host
    buffers kept between frames (asynchronous copies, one synchronisation per frame instead of a
    staged synchronous copy per output).
    """

    def __init__(self, device: torch.device | str, input_size: tuple[int, int],
                 score_range: tuple[float, float]):
        self.device = torch.device(device)
        self.input_size = tuple(int(v) for v in input_size)
        self.score_range = score_range
        self._luts: dict[str, Tensor] = {}
        self._pinned: dict[str, Tensor] = {}  # CUDA only: reused page-locked host buffers

    @staticmethod
    def prepare_input(frame: Tensor, size: tuple[int, int]) -> Tensor:
        """(H, W, 3) uint8 tensor -> (1, 3, h, w) float32 in [0, 1] on the frame's device."""
        x = frame.permute(2, 0, 1)[None].float().div_(255.0)
        return resize_torch(x, size).contiguous()

    def _host_buffer(self, name: str, like: Tensor | np.ndarray) -> Tensor:
        shape, dtype = tuple(like.shape), like.dtype
        if isinstance(like, np.ndarray):
            dtype = torch.from_numpy(like[:0]).dtype
        buf = self._pinned.get(name)
        if buf is None or tuple(buf.shape) != shape or buf.dtype != dtype:
            buf = self._pinned[name] = torch.empty(shape, dtype=dtype, pin_memory=True)
        return buf

    def prepare(self, image) -> tuple[Tensor, Tensor]:
        """(H, W, 3) uint8 numpy/tensor -> (model input on device, the frame on device)."""
        check_image(image)
        if isinstance(image, np.ndarray):
            if self.device.type == "cuda":
                staging = self._host_buffer("frame", image)  # the previous frame's copy is done
                staging.numpy()[...] = image
                image = staging
            else:
                if not image.flags.writeable:  # e.g. a view of a ROS message buffer: torch
                    image = image.copy()  # wants writable memory (~0.1 ms at 640x480)
                image = torch.from_numpy(np.ascontiguousarray(image))
        frame = image.to(self.device, non_blocking=True)
        return self.prepare_input(frame, self.input_size), frame

    def lut(self, colormap: str) -> Tensor:
        if colormap not in self._luts:
            self._luts[colormap] = torch.from_numpy(colormap_lut(colormap)).to(self.device)
        return self._luts[colormap]

    def _to_host(self, outputs: dict[str, Tensor]) -> dict[str, np.ndarray]:
        if self.device.type != "cuda":
            return {k: v.cpu().numpy() for k, v in outputs.items()}
        staged = {}
        for k, v in outputs.items():
            staged[k] = self._host_buffer(k, v)
            staged[k].copy_(v, non_blocking=True)
        torch.cuda.current_stream(self.device).synchronize()  # once, for all outputs
        # copies out of the reused buffers: a caller may keep a result past the next frame
        return {k: np.array(b.numpy()) for k, b in staged.items()}

    def finish(self, score: Tensor, frame: Tensor, *, heatmap: bool, mask: bool, overlay: bool,
               threshold: float, alpha: float, colormap: str):
        """score (h, w) on device -> (heatmap, mask, overlay) numpy at the frame's size."""
        if not (heatmap or mask or overlay):
            return None, None, None
        size = tuple(frame.shape[:2])
        s = resize_torch(score.float()[None, None], size)[0, 0]
        s = torch.nan_to_num(s, nan=FLOAT32_MAX, posinf=FLOAT32_MAX, neginf=-FLOAT32_MAX)
        out: dict[str, Tensor] = {}
        if heatmap:
            out["heatmap"] = s
        if mask:
            out["mask"] = mask_torch(s, threshold)
        if overlay:
            out["overlay"] = overlay_torch(s, frame, self.score_range, alpha, self.lut(colormap))
        host = self._to_host(out)
        return host.get("heatmap"), host.get("mask"), host.get("overlay")


__all__ = ["FLOAT32_MAX", "NumpyPipeline", "TorchPipeline", "check_image", "resize_bilinear_np",
           "resize_torch"]
