"""A backbone built from other backbones: feature extractors side by side.

:class:`FusedBackbone` (``backbone: {name: fused, fuse: [...]}``): every part sees the image
normalised its own way (EfficientNet-Lite [-1, 1], ESPNetv2 ImageNet statistics) and
zero-padded after that normalisation, exactly as FlowCLAS would feed it alone; the features of
the coarser parts are resized (bilinear) to the finest part's grid and everything is
concatenated. The model's own input normalisation is then the identity (mean 0, std 1): its
:meth:`~flowclas_ros.model.flowclas.FlowCLAS.normalize_and_pad` hands the [0, 1] image to
:meth:`FusedBackbone.prepare`, which stacks one normalised, padded copy per part along the
channels (B, 3 x parts, H, W); :meth:`FusedBackbone.forward` takes that stack. The bundle's
manifest therefore says mean 0 / std 1, and the graph still normalises inside. The road prior,
a backbone around a backbone too, is in :mod:`.road_prior`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbone_base import Backbone


def _stats(values, parts: int) -> Tensor:
    return torch.tensor(values, dtype=torch.float32).view(1, 3 * parts, 1, 1)


class FusedBackbone(Backbone):
    """Several frozen backbones as one.

    (B, 3 x parts, H, W) -> (B, sum of channels, H / s, W / s), ``s`` the finest part's stride
    (see the module docstring).

    ``pad_multiple`` is the least common multiple of the parts' (every part's grid is then
    exactly H / its stride); ``mean`` / ``std`` are the identity, the parts' own statistics are
    the buffers ``part_mean`` / ``part_std`` used by :meth:`prepare`.
    """

    fused = True  # FlowCLAS.normalize_and_pad: the input is prepare()'s stack

    def __init__(self, parts: list[Backbone]):
        super().__init__()
        if not parts:
            raise ValueError("a fused backbone needs at least one part (backbone.fuse)")
        self.parts = nn.ModuleList(parts)
        self.channels = sum(p.channels for p in parts)
        self.stride = min(p.stride for p in parts)
        self.pad_multiple = math.lcm(*(p.pad_multiple for p in parts))
        self.mean, self.std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        self.register_buffer("part_mean", _stats([v for p in parts for v in p.mean], len(parts)))
        self.register_buffer("part_std", _stats([v for p in parts for v in p.std], len(parts)))
        self.freeze()

    def prepare(self, images: Tensor) -> Tensor:
        """Prepare (B, 3, H, W) in [0, 1] -> (B, 3 x parts, H', W').

        Each part's normalisation, then zero padding (bottom, right) to ``pad_multiple``.
        """
        x = (images.repeat(1, len(self.parts), 1, 1) - self.part_mean) / self.part_std
        m = self.pad_multiple
        h, w = x.shape[-2:]
        return F.pad(x, (0, (-w) % m, 0, (-h) % m))

    def forward(self, x: Tensor) -> Tensor:
        feats = [p(x[:, 3 * i:3 * i + 3]) for i, p in enumerate(self.parts)]
        size = (x.shape[-2] // self.stride, x.shape[-1] // self.stride)
        return torch.cat([f if tuple(f.shape[-2:]) == size else
                          F.interpolate(f, size=size, mode="bilinear", align_corners=False)
                          for f in feats], 1)


__all__ = ["FusedBackbone"]
