"""The device pipeline around the score graph: torch ops on the backend's device.

For the torch and TensorRT backends and ONNX Runtime on CUDA (I/O binding): the same steps as
:class:`.numpy_pipeline.NumpyPipeline` (the deployed resize of
:mod:`flowclas_ros.bundle.preprocess_torch`, the score back to the frame's size, ``nan_to_num``,
mask and overlay), with only what must be published copied to the host.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from flowclas_ros.bundle.preprocess import Resolution, check_image
from flowclas_ros.bundle.preprocess_torch import frame_to_input, resize_torch

from .numpy_pipeline import FLOAT32_MAX
from .visualisation import colormap_lut, mask_torch, overlay_torch


class TorchPipeline:
    """Pre/post-processing with torch ops on ``device``; copies to the host only the outputs.

    On a CUDA device the frame goes up, and the outputs come down, through page-locked host
    buffers kept between frames (asynchronous copies, one synchronisation per frame instead of a
    staged synchronous copy per output).
    """

    def __init__(self, device: torch.device | str, resolution: Resolution | tuple[int, int],
                 score_range: tuple[float, float]):
        """resolution: the bundle's (:attr:`Bundle.resolution`), or a fixed (h, w)."""
        self.device = torch.device(device)
        self.resolution = Resolution.of(resolution)
        self.score_range = score_range
        self._luts: dict[str, Tensor] = {}
        self._pinned: dict[str, Tensor] = {}  # CUDA only: reused page-locked host buffers

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
        h, w = check_image(image)
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
        return frame_to_input(frame, self.resolution.model_size(h, w)), frame

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
        """Score (h, w) on device -> (heatmap, mask, overlay) numpy at the frame's size."""
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


__all__ = ["TorchPipeline"]
