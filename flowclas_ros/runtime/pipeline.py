"""The device pipeline around the score graph: frame in -> model input, score -> outputs.

Pre-processing: an (H, W, 3) uint8 RGB frame -> (1, 3, h, w) float32 in [0, 1] at the bundle's
input size (h, w), resized bilinearly with half-pixel centres and no antialiasing (the same
arithmetic as ``F.interpolate(mode="bilinear", align_corners=False)``). Normalisation and padding
are inside the graph.

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
def _axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear taps along one axis: i0, i1 (n_out,) and weights w0, w1 (n_out,) float32."""
    src = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * np.float32(n_in / n_out) \
        - np.float32(0.5)
    src = np.maximum(src, 0)
    i0 = np.minimum(src.astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = (src - i0).astype(np.float32)
    return i0, i1, (1 - w1).astype(np.float32), w1


def resize_bilinear_np(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, C) any dtype -> (h, w, C) float32, torch's bilinear, align_corners=False."""
    h, w = size
    if img.shape[:2] == (h, w):
        return img.astype(np.float32, copy=False)
    y0, y1, wy0, wy1 = _axis(img.shape[0], h)
    x0, x1, wx0, wx1 = _axis(img.shape[1], w)
    rows = img[y0].astype(np.float32) * wy0[:, None, None]
    rows += img[y1].astype(np.float32) * wy1[:, None, None]
    out = rows[:, x0] * wx0[None, :, None]
    out += rows[:, x1] * wx1[None, :, None]
    return out


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
    """Pre/post-processing with torch ops on ``device``; copies to the host only the outputs."""

    def __init__(self, device: torch.device | str, input_size: tuple[int, int],
                 score_range: tuple[float, float]):
        self.device = torch.device(device)
        self.input_size = tuple(int(v) for v in input_size)
        self.score_range = score_range
        self._luts: dict[str, Tensor] = {}

    @staticmethod
    def prepare_input(frame: Tensor, size: tuple[int, int]) -> Tensor:
        """(H, W, 3) uint8 tensor -> (1, 3, h, w) float32 in [0, 1] on the frame's device."""
        x = frame.permute(2, 0, 1)[None].float().div_(255.0)
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
        return x.contiguous()

    def prepare(self, image) -> tuple[Tensor, Tensor]:
        """(H, W, 3) uint8 numpy/tensor -> (model input on device, the frame on device)."""
        check_image(image)
        if isinstance(image, np.ndarray):
            if not image.flags.writeable:  # e.g. a view of a ROS message buffer: torch wants
                image = image.copy()  # writable memory (one frame copy, ~0.1 ms at 640x480)
            image = torch.from_numpy(np.ascontiguousarray(image))
        frame = image.to(self.device, non_blocking=True)
        return self.prepare_input(frame, self.input_size), frame

    def lut(self, colormap: str) -> Tensor:
        if colormap not in self._luts:
            self._luts[colormap] = torch.from_numpy(colormap_lut(colormap)).to(self.device)
        return self._luts[colormap]

    def finish(self, score: Tensor, frame: Tensor, *, heatmap: bool, mask: bool, overlay: bool,
               threshold: float, alpha: float, colormap: str):
        """score (h, w) on device -> (heatmap, mask, overlay) numpy at the frame's size."""
        if not (heatmap or mask or overlay):
            return None, None, None
        size = tuple(frame.shape[:2])
        s = score.float()
        if tuple(s.shape) != size:
            s = F.interpolate(s[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
        s = torch.nan_to_num(s, nan=FLOAT32_MAX, posinf=FLOAT32_MAX, neginf=-FLOAT32_MAX)
        m = mask_torch(s, threshold).cpu().numpy() if mask else None
        ov = None
        if overlay:
            ov = overlay_torch(s, frame, self.score_range, alpha, self.lut(colormap)).cpu().numpy()
        return (s.cpu().numpy() if heatmap else None), m, ov


__all__ = ["FLOAT32_MAX", "NumpyPipeline", "TorchPipeline", "check_image", "resize_bilinear_np"]
