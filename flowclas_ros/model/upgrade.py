"""State dicts written by older flowclas_ros, renamed to today's module layout.

Layout 1 (checkpoint version 1, bundle format version 1) kept the flow as one flat list
(``flow.layers.<3i + k>``, k = 0 ActNorm, 1 permutation, 2 coupling), the simple subnet as one
``Sequential`` (``subnet.net.0`` / ``subnet.net.2``) and EfficientNet-Lite's stem and blocks as
hand-built taps (``backbone.stem.0`` / ``.stem.1`` / ``backbone.blocks``). Layout 2 groups the
flow into steps (``flow.steps.<i>.actnorm|permute|coupling``), names the zero-initialised last
conv of every subnet ``out`` and wraps timm's features-only model (``backbone.net.conv_stem``,
``.bn1``, ``.blocks``). Tensors are unchanged; only their names move.
"""
from __future__ import annotations

import re

from torch import Tensor

LAYOUT = 2  # the layout FlowCLAS.state_dict() has today

_FLAT_FLOW = re.compile(r"^flow\.layers\.(\d+)\.(.*)$")
_STEP_PARTS = ("actnorm", "permute", "coupling")
_RENAMES = (("subnet.net.0.", "subnet.body.0."), ("subnet.net.2.", "subnet.out."))
_BACKBONE = (("backbone.stem.0.", "backbone.net.conv_stem."),
             ("backbone.stem.1.", "backbone.net.bn1."),
             ("backbone.blocks.", "backbone.net.blocks."))


def _layout1_key(key: str) -> str:
    m = _FLAT_FLOW.match(key)
    if m:
        i, rest = int(m.group(1)), m.group(2)
        part = _STEP_PARTS[i % 3]
        if part == "coupling":
            for old, new in _RENAMES:
                if rest.startswith(old):
                    rest = new + rest[len(old):]
        return f"flow.steps.{i // 3}.{part}.{rest}"
    for old, new in _BACKBONE:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def upgrade_state_dict(state: dict[str, Tensor], layout: int) -> dict[str, Tensor]:
    """``state`` (written with key ``layout``) renamed to :data:`LAYOUT`; ValueError if newer."""
    if layout > LAYOUT:
        raise ValueError(f"state dict layout {layout} is newer than this flowclas_ros "
                         f"understands ({LAYOUT}): upgrade flowclas_ros")
    if layout <= 1:
        state = {_layout1_key(k): v for k, v in state.items()}
    return state


__all__ = ["LAYOUT", "upgrade_state_dict"]
