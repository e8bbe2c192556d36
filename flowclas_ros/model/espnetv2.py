"""ESPNetv2 semantic segmentation (Mehta et al., CVPR 2019), width scale 2.0, for Cityscapes.

Written for this package from the paper's description and the layout of the published weights
(``espnetv2_s_2.0_city_1024x512.pth``, sacmehta/EdgeNets); the blocks are in
:mod:`.espnetv2_blocks`. Input: RGB in [0, 1] normalised with the ImageNet mean and std.

Encoder (EESPNet, ``base_net``; every level after the first starts with a :class:`StridedEESP`,
which also adds a projection of the input image average-pooled to its size):

=========  ======  ========  ==========================================================
level      stride  channels  layers (EESP branches K = 4, dilations of the branches)
=========  ======  ========  ==========================================================
level1     2       32        3x3 conv (stride 2)-BN-PReLU
level2_0   4       128       strided EESP (32 pooled + 96 learned), dilations 1-4
level3     8       256       strided EESP (128 + 128), then 3 EESP, dilations 1-4
level4     16      512       strided EESP (256 + 256), dilations 1-4; 7 EESP, 1, 1, 2, 3
=========  ======  ========  ==========================================================

Decoder (bottom-up): ``bu_dec_l1`` pyramid-pools level4 to 64 channels; three times the map is
doubled bilinearly (corners aligned), the next finer encoder level is brought to its width by a
gated grouped conv (``merge_enc_dec_l2..l4``: level3 -> 64, level2 -> 48, level1 -> 32) and
added, BN-PReLU (``bu_br_l2..l4``), and pyramid-pooled again (``bu_dec_l2..l4``: 48, 32, then
the 20 class logits at stride 2), which are finally resized to the input (corners aligned).
Classes: the 19 Cityscapes training classes (0 = road), then 19 = background.

:class:`ESPNetv2Seg` pads inputs (zeros, bottom and right) to a multiple of 16, which the
decoder's doubling needs, and crops the logits back. :class:`ESPNetv2Backbone` is the frozen
encoder as a FlowCLAS backbone; :func:`softmax_entropy` and :func:`entropy_scorer` are the
softmax-uncertainty anomaly baseline.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbone_base import IMAGENET_MEAN, IMAGENET_STD, Backbone
from .espnetv2_blocks import EESP, ConvBN, GatedMerge, PyramidPool, StridedEESP
from .weights import load_weights_only

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle", "background")
ROAD = 0
ENCODER_CHANNELS = (32, 128, 256, 512)  # level1..level4, at strides 2, 4, 8, 16
DECODER_PAD = 16  # the decoder doubles level4's map back to level3's: sizes must halve exactly


class EESPNetEncoder(nn.Module):
    """EESPNet at width scale 2.0 without its classifier levels: (B, 3, H, W) -> level maps.

    Level L (1..4) has ``ENCODER_CHANNELS[L - 1]`` channels at ceil(H / 2^L) x ceil(W / 2^L).
    """

    def __init__(self, branches: int = 4):
        super().__init__()
        c = ENCODER_CHANNELS
        self.level1 = ConvBN(3, c[0], 3, stride=2)
        self.level2_0 = StridedEESP(c[0], c[1], branches, max_receptive=13)
        self.level3_0 = StridedEESP(c[1], c[2], branches, max_receptive=11)
        self.level3 = nn.ModuleList(EESP(c[2], c[2], 1, branches, max_receptive=9)
                                    for _ in range(3))
        self.level4_0 = StridedEESP(c[2], c[3], branches, max_receptive=9)
        self.level4 = nn.ModuleList(EESP(c[3], c[3], 1, branches, max_receptive=7)
                                    for _ in range(7))

    def forward(self, x: Tensor, levels: int = 4) -> list[Tensor]:
        """Return the outputs of levels 1..``levels`` (later levels are not computed)."""
        out = self.level1(x)
        feats = [out]
        image = F.avg_pool2d(x, 3, stride=2, padding=1)  # the image at level1's size
        for level in range(2, levels + 1):
            image = F.avg_pool2d(image, 3, stride=2, padding=1)
            out = getattr(self, f"level{level}_0")(out, image)
            for block in getattr(self, f"level{level}", ()):  # level2 has no further blocks
                out = block(out)
            feats.append(out)
        return feats


def _init_weights(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _double_to(x: Tensor, like: Tensor) -> Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=True)


class ESPNetv2Seg(nn.Module):
    """ESPNetv2 segmentation: (B, 3, H, W) normalised RGB -> (B, classes, H, W) logits.

    Any H, W: the input is zero-padded (bottom, right) to a multiple of 16 and the logits cropped
    back; at multiples of 16 this is exactly the published network. Random initialisation until
    :meth:`load_cityscapes`.
    """

    mean, std = IMAGENET_MEAN, IMAGENET_STD

    def __init__(self, classes: int = len(CITYSCAPES_CLASSES), decoder_base: int = 16):
        super().__init__()
        c, b = ENCODER_CHANNELS, decoder_base
        dec = (4 * b, 3 * b, 2 * b)
        proj = min(classes // 2, b)
        self.classes = classes
        self.base_net = EESPNetEncoder()
        self.bu_dec_l1 = PyramidPool(c[3], proj, dec[0])
        self.bu_dec_l2 = PyramidPool(dec[0], proj, dec[1])
        self.bu_dec_l3 = PyramidPool(dec[1], proj, dec[2])
        self.bu_dec_l4 = PyramidPool(dec[2], proj, classes, norm_out=False)
        self.merge_enc_dec_l2 = GatedMerge(c[2], dec[0])
        self.merge_enc_dec_l3 = GatedMerge(c[1], dec[1])
        self.merge_enc_dec_l4 = GatedMerge(c[0], dec[2])
        for i, ch in zip((2, 3, 4), dec):
            setattr(self, f"bu_br_l{i}", nn.Sequential(nn.BatchNorm2d(ch), nn.PReLU(ch)))
        _init_weights(self)

    def decode(self, feats: list[Tensor]) -> Tensor:
        """Decode encoder levels 1..4 -> logits at level1's size (stride 2)."""
        out = self.bu_dec_l1(feats[3])
        for i, skip in zip((2, 3, 4), (feats[2], feats[1], feats[0])):
            out = _double_to(out, skip) + getattr(self, f"merge_enc_dec_l{i}")(skip)
            out = getattr(self, f"bu_dec_l{i}")(getattr(self, f"bu_br_l{i}")(out))
        return out

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        x = F.pad(x, (0, (-w) % DECODER_PAD, 0, (-h) % DECODER_PAD))
        out = self.decode(self.base_net(x))
        out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=True)
        return out[..., :h, :w]

    def load_cityscapes(self, path: str | Path) -> "ESPNetv2Seg":
        """Load the published weights strictly (every tensor, every shape), weights-only."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ESPNetv2 weights file {path} does not exist")
        sd = load_weights_only(path)
        if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
            raise ValueError(f"{path} is not a plain state dict of tensors")
        own = self.state_dict()
        problems = [f"missing tensor {k} {tuple(v.shape)}" for k, v in own.items() if k not in sd]
        problems += [f"unexpected tensor {k} {tuple(v.shape)}" for k, v in sd.items()
                     if k not in own]
        problems += [f"{k}: shape {tuple(v.shape)} in the file, {tuple(own[k].shape)} in the model"
                     for k, v in sd.items() if k in own and v.shape != own[k].shape]
        if problems:
            raise ValueError(f"{path} does not fit ESPNetv2 (s=2.0, {self.classes} classes): "
                             f"{len(problems)} problems:\n  " + "\n  ".join(problems[:30]))
        self.load_state_dict(sd, strict=True)
        return self


def _resize_to(x: Tensor, size: tuple[int, int], area: bool = False) -> Tensor:
    """Resize (N, C, h, w) -> (N, C, *size).

    Bilinear, anti-aliased when shrinking (the runtime's filter); ``area`` averages whole cells
    when shrinking instead.
    """
    size = tuple(int(v) for v in size)
    if tuple(x.shape[-2:]) == size:
        return x
    shrink = x.shape[-2] > size[0] or x.shape[-1] > size[1]
    if area and shrink:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)


class ESPNetv2Backbone(Backbone):
    """The Cityscapes ESPNetv2 encoder as a frozen FlowCLAS backbone.

    stages: encoder levels among 1..4 (strides 2, 4, 8, 16; 32, 128, 256, 512 channels); with
    several, the coarser maps are resized bilinearly to the finest and concatenated. Levels past
    the last one are not computed. ``pad_multiple`` = the coarsest level's stride, so that every
    level is exactly H / stride. weights: the Cityscapes weights file (strict load); None =
    random initialisation (tests). :meth:`road_probability` runs the whole segmentation network.
    """

    def __init__(self, stages: list[int] | None = None, weights: str | Path | None = None):
        super().__init__()
        stages = sorted(set(stages or [3]))
        if not all(1 <= s <= 4 for s in stages):
            raise ValueError(f"ESPNetv2 stages must be encoder levels 1..4, got {stages}")
        self.stages = stages
        self.net = ESPNetv2Seg()
        if weights is not None:
            self.net.load_cityscapes(weights)
        self.channels = sum(ENCODER_CHANNELS[s - 1] for s in stages)
        self.stride, self.pad_multiple = 2 ** stages[0], 2 ** stages[-1]
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self.freeze()

    def forward(self, x: Tensor) -> Tensor:
        feats = self.net.base_net(x, levels=self.stages[-1])
        maps = [feats[s - 1] for s in self.stages]
        if len(maps) == 1:
            return maps[0]
        size = maps[0].shape[-2:]
        return torch.cat([maps[0]] + [F.interpolate(m, size=size, mode="bilinear",
                                                    align_corners=False) for m in maps[1:]], 1)

    def road_probability(self, x: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """Map (B, 3, H, W) normalised -> (B, 1, h, w) road probability.

        The softmax probability of class 0 (road), per input pixel, averaged over each cell of
        the grid ``size`` (default: the feature grid, ceil(H / stride) x ceil(W / stride)).
        """
        if size is None:
            size = (-(-x.shape[-2] // self.stride), -(-x.shape[-1] // self.stride))
        road = self.net(x).softmax(1)[:, ROAD:ROAD + 1]
        return _resize_to(road, size, area=True)


def softmax_entropy(logits: Tensor) -> Tensor:
    """Map (B, C, H, W) logits -> (B, H, W) entropy of the softmax over C, divided by log C.

    In [0, 1], 0 for a one-hot prediction, 1 for a uniform one.
    """
    logp = logits.float().log_softmax(1)
    ent = -(logp.exp() * logp).sum(1) / math.log(logits.shape[1])
    return ent.clamp_(0.0, 1.0)


def entropy_scorer(model: nn.Module, device: str | torch.device | None = None,
                   input_size: tuple[int, int] | None = None) -> Callable[[object], np.ndarray]:
    """Build the softmax-entropy anomaly baseline as a scorer: Sample -> (H, W) float32 map.

    model: an :class:`ESPNetv2Seg` (or an :class:`ESPNetv2Backbone`, whose network is used).
    Each frame (``sample.image``, (H, W, 3) uint8 RGB) is scaled to [0, 1], resized to
    ``input_size`` (h, w) if given (None: its own size), normalised with the ImageNet mean and
    std; the normalised entropy of the logits is resized back to (H, W): the convention of
    ``evaluation.evaluate.model_scorer``. The network was trained on Cityscapes frames resized
    to 1024 x 512, so inputs of about that scale suit it best.
    """
    net = model.net if isinstance(model, ESPNetv2Backbone) else model
    dev = torch.device(device) if device is not None else next(net.parameters()).device
    net = net.to(dev).eval()
    mean = torch.tensor(IMAGENET_MEAN, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=dev).view(1, 3, 1, 1)

    def score(sample) -> np.ndarray:
        img = torch.from_numpy(np.array(sample.image, dtype=np.uint8)).to(dev)  # a writable copy
        x = img.permute(2, 0, 1)[None].float().div_(255.0)
        frame_size = tuple(x.shape[-2:])
        x = _resize_to(x, input_size or frame_size)
        with torch.no_grad():
            ent = softmax_entropy(net((x - mean) / std))
        return _resize_to(ent[:, None], frame_size)[0, 0].cpu().numpy().astype(np.float32)

    return score


__all__ = ["CITYSCAPES_CLASSES", "ROAD", "ENCODER_CHANNELS", "EESPNetEncoder", "ESPNetv2Seg",
           "ESPNetv2Backbone", "softmax_entropy", "entropy_scorer"]
