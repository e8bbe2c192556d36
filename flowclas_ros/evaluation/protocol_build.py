"""Building the validation protocol with its small-obstacle parts: the road segmentation wired in.

:func:`flowclas_ros.data.protocol_sets.build_protocol` builds the parts; the small-obstacle parts
(:mod:`flowclas_ros.data.obstacle_sets`) composite on the drivable surface of frames that have
no labels, which a model must find. data/ may not import a model, so the road comes in as a
callable; :func:`build_protocol` here passes the Cityscapes-trained ESPNetv2's road class
(:func:`espnet_road_fn`, weights ``../shared/weights/espnetv2-cityscapes/...`` beside the data
root) and refuses, naming the file, when the weights are missing. Both the ``build_protocol``
command and training's on-demand build call it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from flowclas_ros.data.obstacle_sets import HIRES_PARTS, RoadFn
from flowclas_ros.data.protocol_sets import FULL_PARTS, ProtocolConfig
from flowclas_ros.data.protocol_sets import build_protocol as build_parts

WEIGHTS_ENV = "FLOWCLAS_ESPNETV2"
WEIGHTS_FILE = Path("weights/espnetv2-cityscapes/espnetv2_s_2.0_city_1024x512.pth")
# the frames are scaled to this height: Cityscapes' 1024x512 training scale
ROAD_INPUT_HEIGHT = 512
# parts whose drivable surface comes from labels, not a model
LABELLED_ROAD_PARTS = ("obstacles_cityscapes", "cityscapes_hires_clean")


def default_weights(data_root: str | Path) -> Path:
    """$FLOWCLAS_ESPNETV2, else ``<data_root>/../weights/espnetv2-cityscapes/...pth``."""
    env = os.environ.get(WEIGHTS_ENV)
    return Path(env) if env else Path(data_root).resolve().parent / WEIGHTS_FILE


def espnet_road_fn(weights: str | Path, device: str = "cpu",
                   height: int = ROAD_INPUT_HEIGHT) -> RoadFn:
    """Build a road function: image (H, W, 3) uint8 -> (H, W) bool.

    True where the Cityscapes ESPNetv2 says "road" (class 0 has the largest logit), the frame
    scaled to ``height`` rows for the network (antialiased) and the logits scaled back
    (bilinear).
    """
    import torch
    import torch.nn.functional as F

    from flowclas_ros.model.backbone_base import IMAGENET_MEAN, IMAGENET_STD
    from flowclas_ros.model.espnetv2 import ROAD, ESPNetv2Seg

    weights = Path(weights)
    if not weights.is_file():
        raise FileNotFoundError(
            f"the small-obstacle parts of the protocol need the Cityscapes ESPNetv2 weights for "
            f"the drivable surface of their unlabelled frames, and {weights} does not exist: put "
            f"espnetv2_s_2.0_city_1024x512.pth there, point ${WEIGHTS_ENV} at it, or build only "
            f"the other parts (--parts)")
    net = ESPNetv2Seg().load_cityscapes(weights).to(device).eval()
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    def road(image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        x = torch.from_numpy(np.ascontiguousarray(image)).to(device)
        x = x.permute(2, 0, 1)[None].float().div_(255.0)
        size = (int(height), max(int(round(w * height / h)), 1))
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False,
                              antialias=size[0] < h)
        with torch.no_grad():
            logits = net((x - mean) / std)
            logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        return (logits.argmax(1)[0] == ROAD).cpu().numpy()

    return road


def needs_road_fn(parts) -> bool:
    return any(p in HIRES_PARTS and p not in LABELLED_ROAD_PARTS for p in parts)


def build_protocol(data_root: str | Path, out: str | Path, cfg: ProtocolConfig | None = None,
                   log: Callable[[str], None] = print, *, road_fn: RoadFn | None = None,
                   weights: str | Path | None = None, device: str = "cpu") -> dict:
    """Build ``cfg.parts`` (default: every part, :data:`FULL_PARTS`) under ``out``.

    road_fn: the drivable surface of an unlabelled frame; None takes ESPNetv2 from ``weights``
    (default :func:`default_weights`) when a part needs it.
    """
    cfg = cfg or ProtocolConfig(parts=FULL_PARTS)
    if road_fn is None and needs_road_fn(cfg.parts):
        road_fn = espnet_road_fn(weights or default_weights(data_root), device)
    return build_parts(data_root, out, cfg, log, road_fn=road_fn)


__all__ = ["ROAD_INPUT_HEIGHT", "WEIGHTS_ENV", "build_protocol", "default_weights",
           "espnet_road_fn", "needs_road_fn"]
