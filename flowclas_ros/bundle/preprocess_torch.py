"""The deployed preprocessing of :mod:`.preprocess` in torch, on the frame's device.

Same arithmetic (``F.interpolate`` bilinear, half-pixel centres, antialiased where an axis
shrinks); used where the frame already is a tensor: the GPU backends, training-time checkpoint
selection, calibration and the ONNX verification.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def resize_torch(x: Tensor, size: tuple[int, int]) -> Tensor:
    """(N, C, H, W) float -> (N, C, h, w): the filter of :func:`.preprocess.resize_bilinear_np`."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrink = x.shape[-2] > size[0] or x.shape[-1] > size[1]
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False,
                         antialias=shrink)


def frame_to_input(frame: Tensor, size: tuple[int, int]) -> Tensor:
    """(H, W, 3) uint8 tensor -> (1, 3, h, w) float32 in [0, 1] on the frame's device."""
    x = frame.permute(2, 0, 1)[None].float().div_(255.0)
    return resize_torch(x, size).contiguous()


__all__ = ["frame_to_input", "resize_torch"]
