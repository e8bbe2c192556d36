"""The contract every frozen feature extractor keeps (see :mod:`.backbones` for the extractors).

A backbone takes a *normalised* image batch (B, 3, H, W), with H and W multiples of
``pad_multiple``, and returns features (B, channels, H / stride, W / stride). It carries the
input normalisation it expects (``mean``, ``std``) and is frozen: no gradients, always in eval
mode, whatever ``.train()`` is called with. It lives apart from :mod:`.backbones` so that a
backbone defined in its own module (:mod:`.espnetv2`) can subclass it while ``build_backbone``
imports that module.
"""
from __future__ import annotations

from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Backbone(nn.Module):
    """Base class: frozen, eval-only feature extractor. Subclasses set the attributes below."""

    channels: int
    stride: int  # input pixels per feature position
    pad_multiple: int  # inputs are zero-padded to a multiple of this
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def freeze(self) -> "Backbone":
        for p in self.parameters():
            p.requires_grad_(False)
        return self.train(False)

    def train(self, mode: bool = True) -> "Backbone":
        # Frozen: batch-norm statistics and dropout must never change.
        return super().train(False)


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Backbone"]
