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

    name: ``tiny``, ``efficientnet_lite{0,1,2}``, ``espnetv2``, ``dinov2_vit{s,b,l,g}14``
    (``_reg`` suffix for the register variants) or ``fused``. stages: feature stages to use
    (EfficientNet: 0..4 at strides 2, 4, 8, 16, 32; ESPNetv2: encoder levels 1..4 at strides 2,
    4, 8, 16 with 32, 128, 256, 512 channels, e.g. [3] = level3, [4] = level4, [3, 4] both;
    several are resized to the finest and concatenated). weights: a local file (DINOv2;
    ESPNetv2: the Cityscapes ``espnetv2_s_2.0_city_1024x512.pth``; EfficientNet-Lite reads its
    package unless a file is given); ``None`` = random.

    ``fused``: the backbones listed in ``fuse``, each normalising the image its own way, their
    features resized to the finest grid and concatenated (:mod:`.fused_backbone`); the parts'
    ``weights`` / ``pretrained`` are used only while the fused config's ``pretrained`` is true
    (a bundle's model is rebuilt with it false: every tensor then comes from the bundle).
    """

    name: str = "efficientnet_lite0"
    stages: list[int] = field(default_factory=lambda: [3])
    weights: str | None = None
    pretrained: bool = True  # EfficientNet-Lite: load the packaged ImageNet weights
    channels: int = 16  # tiny only
    fuse: list[BackboneConfig] = field(default_factory=list)  # fused only: its parts

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BackboneConfig":
        d = dict(d)
        d["fuse"] = [cls.from_dict(p) for p in d.get("fuse") or []]
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """Return its fields; ``fuse`` only where it has parts.

        Without parts the dict is what configs without ``fuse`` always held, so that their
        hashes, e.g. the feature cache's key, stay as they were.
        """
        d = dataclasses.asdict(self)
        if not self.fuse:
            del d["fuse"]
        return d


@dataclass
class RoadPriorConfig:
    """The Cityscapes ESPNetv2's road segmentation as a prior on the score.

    Off while ``weight`` is 0: ``score + weight * (road - 0.5)``, ``road`` on the feature grid 1
    where the road probability is at least ``threshold``, else 0 (with ``threshold`` null the
    probability itself: it then also reorders pixels within the road), max-pooled over
    ``dilate`` x ``dilate`` cells (an obstacle on the road is not road itself, but the road
    surrounds it), the network run on the frame resized to ``input_size`` (fixed:
    :mod:`.road_prior` says why). Inside the exported graph; the network's weights
    (``weights``, loaded while ``backbone.pretrained`` is true, as the backbone's own) travel in
    the bundle. Needs ``score: nll``.
    """

    weight: float = 0.0
    weights: str | None = None  # espnetv2_s_2.0_city_1024x512.pth; None = random (tests)
    dilate: int = 3  # cells, odd
    input_size: list[int] = field(default_factory=lambda: [256, 512])  # the network's, fixed
    threshold: float | None = 0.5  # road = probability >= this (0 or 1); None: the probability

    @property
    def enabled(self) -> bool:
        return self.weight != 0.0


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
    road_prior: RoadPriorConfig = field(default_factory=RoadPriorConfig)

    def to_dict(self) -> dict[str, Any]:
        """Its fields; the optional parts (``backbone.fuse``, ``road_prior``) only where used."""
        d = dataclasses.asdict(self)
        d["backbone"] = self.backbone.to_dict()
        if not self.road_prior.enabled:
            del d["road_prior"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(
                f"unknown model config keys {sorted(unknown)}; known: {sorted(known)}")
        backbone = BackboneConfig.from_dict(d.pop("backbone", {}))
        flow = FlowConfig(**d.pop("flow", {}))
        road = RoadPriorConfig(**d.pop("road_prior", {}))
        return cls(backbone=backbone, flow=flow, road_prior=road, **d)


def uses_cityscapes_weights(cfg: ModelConfig) -> bool:
    """Return whether a model of ``cfg`` carries the Cityscapes-trained ESPNetv2's weights.

    They are carried as its backbone, a part of a fused one, or its road prior.
    """
    parts = [cfg.backbone, *cfg.backbone.fuse]
    return cfg.road_prior.enabled or any(p.name == "espnetv2" for p in parts)


CITYSCAPES_NOTE = (
    "## Licence of the ESPNetv2 weights\n\nThis bundle carries the weights of ESPNetv2 (width "
    "scale 2.0) trained for Cityscapes semantic segmentation (`espnetv2_s_2.0_city_1024x512.pth`"
    ", sacmehta/EdgeNets; code MIT): trained on Cityscapes, they inherit the Cityscapes terms of "
    "use (non-commercial research and teaching only, no redistribution of the data).")


def licence_notes(cfg: ModelConfig) -> str | None:
    """Return model-card text naming the licences a bundle of ``cfg`` inherits.

    The licences come from weights it carries beyond its own (None where there is nothing to
    add).
    """
    return CITYSCAPES_NOTE if uses_cityscapes_weights(cfg) else None


__all__ = ["CITYSCAPES_NOTE", "SCORES", "SUBNETS", "BackboneConfig", "FlowConfig", "ModelConfig",
           "RoadPriorConfig", "licence_notes", "uses_cityscapes_weights"]
