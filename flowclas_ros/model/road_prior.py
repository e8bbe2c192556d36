"""The road prior (``model.road_prior``): the Cityscapes ESPNetv2's road class on the score.

:class:`RoadPriorBackbone` wraps any backbone and appends one channel to its features: the
softmax probability of "road" on the feature grid, binarised at ``threshold`` (a soft map would
reorder the pixels within the road by the network's confidence), max-pooled over ``dilate`` x
``dilate`` cells (an obstacle on the road is no road itself, but road surrounds it); FlowCLAS
folds it into the score, ``score + weight * (road - 0.5)`` (:mod:`.flowclas`). The network is
its own (the backbone may be anything), so its weights travel in the bundle.

The segmentation runs at a fixed size inside the graph (``road_prior.input_size``, default
256 x 512: the frame resized to it, bilinear, whatever its aspect ratio): ESPNetv2's decoder
sizes its pyramid pooling by the input (ceil(1.5 h), adaptive pooling back by non-integer
factors), which no ONNX exporter turns into a graph with dynamic H and W, and at a fixed size
:func:`decode` computes exactly :meth:`~.espnetv2.ESPNetv2Seg.decode` with the adaptive pooling
written as two constant averaging matrices, which ONNX has. The road map (stride 2 of that
size) is then resized to the feature grid of the frame.
"""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .backbone_base import IMAGENET_MEAN, IMAGENET_STD, Backbone
from .config import RoadPriorConfig
from .espnetv2 import DECODER_PAD, ROAD, ESPNetv2Seg


@lru_cache(maxsize=64)
def _pool_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Return the (n_out, n_in) averaging matrix of adaptive average pooling.

    Row i averages input cells floor(i n_in / n_out) .. ceil((i + 1) n_in / n_out) - 1, the bins
    of adaptive average pooling (numpy: one constant in a traced graph).
    """
    m = np.zeros((n_out, n_in), np.float32)
    for i in range(n_out):
        a, b = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        m[i, a:b] = 1.0 / (b - a)
    return m


def adaptive_avg_pool(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Compute ``F.adaptive_avg_pool2d(x, size)`` for a map of constant size.

    Average pooling where the sizes divide, else two products with constant averaging matrices.
    """
    h, w = (int(v) for v in x.shape[-2:])
    oh, ow = (int(v) for v in size)
    if h % oh == 0 and w % ow == 0:
        return F.avg_pool2d(x, (h // oh, w // ow))
    mh = torch.from_numpy(_pool_matrix(h, oh)).to(x)
    mw = torch.from_numpy(_pool_matrix(w, ow)).to(x)
    return torch.matmul(torch.matmul(mh, x), mw.t())


def _resize(x: Tensor, size) -> Tensor:
    return F.interpolate(x, size=tuple(int(v) for v in size), mode="bilinear",
                         align_corners=True)


def pyramid_pool(pp, x: Tensor) -> Tensor:
    """Apply :class:`~.espnetv2_blocks.PyramidPool` ``pp`` to ``x``.

    Same weights, same arithmetic, its adaptive pooling by :func:`adaptive_avg_pool`.
    """
    x = pp.projection_layer(x)
    h, w = (int(v) for v in x.shape[-2:])
    outs = []
    for scale, conv in zip(pp.SCALES, pp.stages):
        size = (max(5, math.ceil(h * scale)), max(5, math.ceil(w * scale)))
        if scale < 1.0:
            outs.append(_resize(conv(adaptive_avg_pool(x, size)), (h, w)))
        elif scale > 1.0:
            outs.append(adaptive_avg_pool(conv(_resize(x, size)), (h, w)))
        else:
            outs.append(conv(x))
    out = pp.merge_layer(torch.cat(outs, 1))
    return pp.br(out) if hasattr(pp, "br") else out


def decode(net: ESPNetv2Seg, feats: list[Tensor]) -> Tensor:
    """Run :meth:`~.espnetv2.ESPNetv2Seg.decode` with :func:`pyramid_pool`.

    Encoder levels 1..4 -> logits at stride 2, exportable at a fixed input size.
    """
    out = pyramid_pool(net.bu_dec_l1, feats[3])
    for i, skip in zip((2, 3, 4), (feats[2], feats[1], feats[0])):
        out = _resize(out, skip.shape[-2:]) + getattr(net, f"merge_enc_dec_l{i}")(skip)
        out = pyramid_pool(getattr(net, f"bu_dec_l{i}"), getattr(net, f"bu_br_l{i}")(out))
    return out


class RoadPriorBackbone(Backbone):
    """``inner``'s features plus one channel: the road probability on their grid.

    (B, 3 [x parts], H, W) -> (B, inner.channels + 1, h, w). ``channels``, ``stride``,
    ``pad_multiple``, ``mean`` and ``std`` are ``inner``'s: the extra channel is not a feature
    (:meth:`~flowclas_ros.model.flowclas.FlowCLAS.features` leaves it out). ``in_mean`` /
    ``in_std``: how the first three input channels were normalised (to recover the image for
    the road network, which wants ImageNet statistics). ``load``: read ``cfg.weights``.
    """

    def __init__(self, inner: Backbone, cfg: RoadPriorConfig, in_mean, in_std,
                 load: bool = True):
        super().__init__()
        if cfg.dilate < 1 or cfg.dilate % 2 == 0:
            raise ValueError(f"road_prior.dilate must be an odd number >= 1, got {cfg.dilate}")
        if len(cfg.input_size) != 2 or any(v < DECODER_PAD or v % DECODER_PAD
                                           for v in cfg.input_size):
            raise ValueError(f"road_prior.input_size must be [H, W], multiples of {DECODER_PAD}, "
                             f"got {cfg.input_size}")
        self.inner = inner
        self.road = ESPNetv2Seg()
        if load and cfg.weights:
            self.road.load_cityscapes(Path(cfg.weights))
        self.dilate, self.input_size = int(cfg.dilate), tuple(int(v) for v in cfg.input_size)
        self.threshold = None if cfg.threshold is None else float(cfg.threshold)
        self.channels, self.stride = inner.channels, inner.stride
        self.pad_multiple, self.mean, self.std = inner.pad_multiple, inner.mean, inner.std
        for name, v in (("in_mean", in_mean), ("in_std", in_std), ("road_mean", IMAGENET_MEAN),
                        ("road_std", IMAGENET_STD)):
            self.register_buffer(name, torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1))
        self.freeze()

    @property
    def fused(self) -> bool:
        return bool(getattr(self.inner, "fused", False))

    def prepare(self, images: Tensor) -> Tensor:
        return self.inner.prepare(images)

    def road_map(self, x: Tensor) -> Tensor:
        """Return (B, 1, h', w'): the road probability at stride 2 of ``input_size``.

        The image of the first three channels of ``x`` is resized to ``input_size``.
        """
        image = x[:, :3] * self.in_std + self.in_mean
        y = (image - self.road_mean) / self.road_std
        y = F.interpolate(y, size=self.input_size, mode="bilinear", align_corners=False)
        logits = decode(self.road, self.road.base_net(y))
        return logits.float().softmax(1)[:, ROAD:ROAD + 1]

    def road_grid(self, x: Tensor, size) -> Tensor:
        """Return (B, 1, *size): :meth:`road_map` resized to the feature grid.

        The map is binarised at ``threshold`` (if set), then max-pooled over ``dilate`` x
        ``dilate`` cells.
        """
        road = F.interpolate(self.road_map(x), size=size, mode="bilinear", align_corners=False)
        if self.threshold is not None:
            road = (road >= self.threshold).to(road.dtype)
        if self.dilate > 1:
            road = F.max_pool2d(road, self.dilate, stride=1, padding=self.dilate // 2)
        return road

    def forward(self, x: Tensor) -> Tensor:
        f = self.inner(x)
        return torch.cat([f, self.road_grid(x, f.shape[-2:]).to(f.dtype)], 1)


__all__ = ["RoadPriorBackbone", "adaptive_avg_pool", "decode", "pyramid_pool"]
