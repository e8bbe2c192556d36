"""The model's configuration: which backbone, which flow, which score (no torch).

Plain dataclasses, so that a bundle's manifest can be read and checked, and a node configured,
without importing torch: :class:`ModelConfig` is what a checkpoint's ``model_config`` and a
bundle's ``model.config`` hold. The modules that build the model (:mod:`.backbones`,
:mod:`.flow`, :mod:`.flowclas`) read them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

SCORES = ("nll", "latent")  # flowclas.FlowCLAS.score_map
SUBNETS = ("residual", "simple", "conv")  # flow.FlowStep couplings


@dataclass
class BackboneConfig:
    """Which backbone and how to build it.

    name: ``tiny``, ``efficientnet_lite{0,1,2}``, ``espnetv2`` or ``dinov2_vit{s,b,l,g}14``
    (``_reg`` suffix for the register variants). stages: feature stages to use (EfficientNet:
    0..4 at strides 2, 4, 8, 16, 32; ESPNetv2: encoder levels 1..4 at strides 2, 4, 8, 16 with
    32, 128, 256, 512 channels, e.g. [3] = level3, [4] = level4, [3, 4] both; several are
    resized to the finest and concatenated). weights: a local file (DINOv2; ESPNetv2: the
    Cityscapes ``espnetv2_s_2.0_city_1024x512.pth``; EfficientNet-Lite reads its package unless
    a file is given); ``None`` = random.
    """

    name: str = "efficientnet_lite0"
    stages: list[int] = field(default_factory=lambda: [3])
    weights: str | None = None
    pretrained: bool = True  # EfficientNet-Lite: load the packaged ImageNet weights
    channels: int = 16  # tiny only


@dataclass
class FlowConfig:
    """Flow hyper-parameters. ``hidden=0`` means C/2, the authors' choice.

    subnet: ``residual`` (the authors'), ``simple`` (conv3x3-ReLU-conv1x1) or ``conv``
    (convK-ReLU-convK, FastFlow's, with K from ``kernels`` cycled over the steps: [3, 1]
    alternates a spatial and a per-position coupling).
    """

    steps: int = 16
    hidden: int = 0
    subnet: str = "residual"
    clamp: float = 2.0  # s = clamp * tanh(s_raw)
    seed: int = 0  # seeds the fixed permutations
    kernels: list[int] = field(default_factory=lambda: [3, 1])  # conv subnet only


@dataclass
class ModelConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    proj_dim: int = 128  # contrastive projection head width
    score: str = "nll"  # one of SCORES
    mean: list[float] | None = None  # input normalisation; None = the backbone's own
    std: list[float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys {sorted(unknown)}; known: {sorted(known)}")
        backbone = BackboneConfig(**d.pop("backbone", {}))
        flow = FlowConfig(**d.pop("flow", {}))
        return cls(backbone=backbone, flow=flow, **d)


__all__ = ["SCORES", "SUBNETS", "BackboneConfig", "FlowConfig", "ModelConfig"]
