"""The building blocks of ESPNetv2 (Mehta et al., CVPR 2019), written for this package.

The attribute names follow the published Cityscapes weights, so that they load strictly. Two
naming styles meet there: the encoder's layers name their parts ``conv`` / ``bn`` / ``act``, the
decoder's wrap them in a ``cbr`` (conv, norm, act) or ``br`` (norm, act) sequence. Every
normalisation is a BatchNorm and every activation a per-channel PReLU.

* :class:`EESP` - reduce (grouped 1x1) -> split into K depth-wise dilated 3x3 branches ->
  hierarchical fusion (each branch adds the previous branch's output) -> concatenate, BN-PReLU
  -> grouped 1x1 expansion -> residual add -> PReLU.
* :class:`StridedEESP` - halves the resolution: average pooling of the input beside a stride-2
  EESP, concatenated, plus a projection of the (equally pooled) input image, then PReLU.
* :class:`PyramidPool` - the decoder's efficient pyramid pooling: a 1x1 projection, one depth-wise
  3x3 per scale (2, 1.5, 1, 0.5, 0.1 of the map), channel shuffle, grouped 3x3 merge, 1x1 out.
* :class:`GatedMerge` - an encoder map brought to the decoder's width: a grouped 3x3 conv
  scaled per channel by a sigmoid gate computed from the map's global average.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _conv(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, dilation: int = 1,
          bias: bool = False) -> nn.Conv2d:
    """Build a k x k convolution padded to keep the size (up to the stride)."""
    return nn.Conv2d(cin, cout, k, stride=stride, padding=dilation * (k - 1) // 2,
                     dilation=dilation, groups=groups, bias=bias)


class ConvBN(nn.Module):
    """Encoder style: ``conv`` then, optionally, ``bn`` and ``act`` (PReLU)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1,
                 dilation: int = 1, norm: bool = True, act: bool = True):
        super().__init__()
        self.conv = _conv(cin, cout, k, stride, groups, dilation)
        if norm:
            self.bn = nn.BatchNorm2d(cout)
        if act:
            self.act = nn.PReLU(cout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if hasattr(self, "bn"):
            x = self.bn(x)
        return self.act(x) if hasattr(self, "act") else x


class NormAct(nn.Module):
    """Encoder style: ``bn`` then ``act`` (PReLU)."""

    def __init__(self, channels: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.act = nn.PReLU(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(x))


class SeqCBR(nn.Module):
    """Decoder style: ``cbr`` = (conv, BatchNorm, PReLU)."""

    def __init__(self, cin: int, cout: int, k: int, groups: int = 1):
        super().__init__()
        self.cbr = nn.Sequential(_conv(cin, cout, k, groups=groups), nn.BatchNorm2d(cout),
                                 nn.PReLU(cout))

    def forward(self, x: Tensor) -> Tensor:
        return self.cbr(x)


class SeqBR(nn.Module):
    """Decoder style: ``br`` = (BatchNorm, PReLU)."""

    def __init__(self, channels: int):
        super().__init__()
        self.br = nn.Sequential(nn.BatchNorm2d(channels), nn.PReLU(channels))

    def forward(self, x: Tensor) -> Tensor:
        return self.br(x)


class ChannelShuffle(nn.Module):
    """Interleaves ``groups`` equal channel groups: channel j of group g goes to j * groups + g."""

    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        return (x.reshape(b, self.groups, c // self.groups, h, w).transpose(1, 2)
                .reshape(b, c, h, w))


def branch_dilations(branches: int, max_receptive: int) -> list[int]:
    """Dilation of each EESP branch, smallest receptive field first.

    Branch i would have the receptive field of a (3 + 2 i)-wide kernel (dilation i + 1); fields
    wider than ``max_receptive`` fall back to a plain 3x3 (dilation 1).
    """
    fields = sorted(3 + 2 * i if 3 + 2 * i <= max_receptive else 3 for i in range(branches))
    return [(f - 1) // 2 for f in fields]


class EESP(nn.Module):
    """Extremely Efficient Spatial Pyramid block: (B, cin, H, W) -> (B, cout, H/stride, W/stride).

    With ``stride=2`` it is the learned half of :class:`StridedEESP` and returns its expansion
    before the residual and the activation (the downsampler adds and activates); ``module_act``
    is then unused but kept, as the published weights hold it.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1, branches: int = 4,
                 max_receptive: int = 7):
        super().__init__()
        width = cout // branches
        if width * branches != cout:
            raise ValueError(f"EESP: {cout} output channels do not split into {branches} branches")
        self.stride = stride
        self.proj_1x1 = ConvBN(cin, width, 1, groups=branches)
        self.spp_dw = nn.ModuleList(
            ConvBN(width, width, 3, stride=stride, groups=width, dilation=d, norm=False, act=False)
            for d in branch_dilations(branches, max_receptive))
        self.conv_1x1_exp = ConvBN(cout, cout, 1, groups=branches, act=False)
        self.br_after_cat = NormAct(cout)
        self.module_act = nn.PReLU(cout)

    def forward(self, x: Tensor) -> Tensor:
        reduced = self.proj_1x1(x)
        fused, total = [], None
        for branch in self.spp_dw:  # hierarchical feature fusion: running sum of the branches
            y = branch(reduced)
            total = y if total is None else total + y
            fused.append(total)
        out = self.conv_1x1_exp(self.br_after_cat(torch.cat(fused, 1)))
        if self.stride == 2:
            return out
        if out.shape == x.shape:
            out = out + x
        return self.module_act(out)


class StridedEESP(nn.Module):
    """Downsampling unit: (B, cin, H, W), image at (H/2, W/2) -> (B, cout, H/2, W/2).

    ``cin`` channels come from a 3x3 average pool (stride 2) of the input and ``cout - cin`` from
    a stride-2 :class:`EESP`; the input image, average-pooled to the output size, is projected
    (3x3 conv-BN-PReLU, then 1x1 conv-BN to ``cout``) and added before the final PReLU.
    """

    def __init__(self, cin: int, cout: int, branches: int = 4, max_receptive: int = 9,
                 image_channels: int = 3):
        super().__init__()
        self.eesp = EESP(cin, cout - cin, stride=2, branches=branches, max_receptive=max_receptive)
        self.inp_reinf = nn.Sequential(ConvBN(image_channels, image_channels, 3),
                                       ConvBN(image_channels, cout, 1, act=False))
        self.act = nn.PReLU(cout)

    def forward(self, x: Tensor, image: Tensor) -> Tensor:
        out = torch.cat([F.avg_pool2d(x, 3, stride=2, padding=1), self.eesp(x)], 1)
        return self.act(out + self.inp_reinf(image))


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class PyramidPool(nn.Module):
    """Efficient pyramid pooling: (B, cin, H, W) -> (B, cout, H, W).

    The input is projected to ``proj`` channels; each scale s gets one depth-wise 3x3 applied at
    (ceil(s H), ceil(s W)) (at least 5 x 5): maps are first shrunk by adaptive average pooling or
    enlarged bilinearly (corners aligned), convolved, and brought back the opposite way. The
    5 results are batch-normalised together, shuffled so that each channel's scales sit side by
    side, merged by a grouped 3x3 (one group per channel) and expanded by a 1x1 conv; with
    ``norm_out`` a final BN-PReLU follows, without it the 1x1 has a bias (the classifier).
    """

    SCALES = (2.0, 1.5, 1.0, 0.5, 0.1)

    def __init__(self, cin: int, proj: int, cout: int, norm_out: bool = True):
        super().__init__()
        n = len(self.SCALES)
        self.projection_layer = SeqCBR(cin, proj, 1)
        self.stages = nn.ModuleList(_conv(proj, proj, 3, groups=proj) for _ in self.SCALES)
        self.merge_layer = nn.Sequential(SeqBR(proj * n), ChannelShuffle(n),
                                         SeqCBR(proj * n, proj, 3, groups=proj),
                                         _conv(proj, cout, 1, bias=not norm_out))
        if norm_out:
            self.br = SeqBR(cout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.projection_layer(x)
        h, w = x.shape[-2:]
        outs = []
        for scale, conv in zip(self.SCALES, self.stages):
            size = (max(5, math.ceil(h * scale)), max(5, math.ceil(w * scale)))
            if scale < 1.0:
                outs.append(_resize(conv(F.adaptive_avg_pool2d(x, size)), (h, w)))
            elif scale > 1.0:
                outs.append(F.adaptive_avg_pool2d(conv(_resize(x, size)), (h, w)))
            else:
                outs.append(conv(x))
        out = self.merge_layer(torch.cat(outs, 1))
        return self.br(out) if hasattr(self, "br") else out


class GatedMerge(nn.Module):
    """Gated merge (B, cin, H, W) -> (B, cout, H, W).

    A grouped 3x3 conv-BN-PReLU (gcd(cin, cout) groups) times a per-channel sigmoid gate from a
    1x1 conv of the global average of the input.
    """

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.wt_layer = nn.Sequential(nn.AdaptiveAvgPool2d(1), _conv(cin, cout, 1), nn.Sigmoid())
        self.expansion_layer = SeqCBR(cin, cout, 3, groups=math.gcd(cin, cout))

    def forward(self, x: Tensor) -> Tensor:
        return self.expansion_layer(x) * self.wt_layer(x)


__all__ = ["ConvBN", "NormAct", "SeqCBR", "SeqBR", "ChannelShuffle", "branch_dilations", "EESP",
           "StridedEESP", "PyramidPool", "GatedMerge"]
