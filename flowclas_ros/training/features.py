"""What the flow trains on: frozen backbone features of a batch and its labels on their grid.

The labels are brought to the feature grid here (:func:`grid_labels`, one of
:data:`GRID_LABELS`), the same way for features computed in the step and for cached ones.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..labels import ANOMALY, INLIER, VOID
from ..model.losses import downsample_labels

# nearest: the label of the pixel a cell is aligned with (the authors'); area: by the cell's
# pixel fractions, mixed cells void
GRID_LABELS = ("nearest", "area")


def grid_labels(labels: Tensor, grid: tuple[int, int], pad_multiple: int,
                mode: str = "nearest", anomaly_fraction: float = 0.5) -> Tensor:
    """Pixel labels (B, H, W) -> labels on the feature grid (B, h, w), uint8.

    The backbone sees the image zero-padded at the bottom and right to ``pad_multiple``; the
    labels are padded the same way with VOID. ``nearest``: feature position (y, x) takes the
    label of the pixel it is aligned with (the authors'). ``area``: a cell is ANOMALY when at
    least ``anomaly_fraction`` of its pixels are (half, by default), VOID when at least half are
    void or when it is partly anomalous (a mixed cell is neither a clean inlier nor a clean
    outlier), else INLIER.

    Small objects: an object smaller than a cell never makes half of one, so with the default
    area rule it is never an outlier (and ``nearest`` makes it one only where the one aligned
    pixel falls on it, while calling the cells it mostly covers inliers). ``anomaly_fraction``
    0.125 makes every cell an outlier that the object covers by an eighth: a 6 x 6 px object
    inside one stride-16 cell, or a 12 x 12 px one across four.
    """
    h, w = labels.shape[-2:]
    padded = F.pad(labels.to(torch.int16), (0, (-w) % pad_multiple, 0, (-h) % pad_multiple),
                   value=VOID)
    if mode == "nearest":
        return downsample_labels(padded, grid).to(torch.uint8)
    if mode != "area":
        raise ValueError(f"grid label mode must be one of {GRID_LABELS}, got {mode!r}")
    ph, pw = padded.shape[-2:]
    ky, kx = ph // grid[0], pw // grid[1]
    frac = lambda v: F.avg_pool2d((padded == v).float()[:, None], (ky, kx))[:, 0]  # noqa: E731
    anomaly, void = frac(ANOMALY), frac(VOID)
    out = torch.full_like(anomaly, INLIER, dtype=torch.uint8)
    out[(anomaly > 0) | (void >= 0.5)] = VOID
    out[anomaly >= anomaly_fraction] = ANOMALY
    return out


def to_image_batch(images: np.ndarray | Tensor, device: torch.device | str) -> Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [0, 1] on ``device``."""
    t = torch.as_tensor(images).to(device, non_blocking=True)
    return t.permute(0, 3, 1, 2).float().div_(255.0)


@torch.no_grad()
def encode(model, images: Tensor, labels: Tensor, autocast: bool = False,
           label_mode: str = "nearest", anomaly_fraction: float = 0.5) -> tuple[Tensor, Tensor]:
    """Encode a batch into frozen features and grid labels.

    The grid labels follow :func:`grid_labels` ``label_mode`` and ``anomaly_fraction``.
    images (B, H, W, 3) uint8, labels (B, H, W) uint8 -> features (B, C, h, w) float (fp32, or
    bf16 under ``autocast`` on CUDA), labels (B, h, w) uint8 on the model's device.
    """
    device = model.mean.device
    x = to_image_batch(images, device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        feats = model.features(x)
    lab = grid_labels(torch.as_tensor(labels).to(device), feats.shape[-2:],
                      model.backbone.pad_multiple, label_mode, anomaly_fraction)
    return feats, lab


__all__ = ["GRID_LABELS", "encode", "grid_labels", "to_image_batch"]
