"""Checkpoints and bundles of layout 1 still load and give the same scores.

Layout 1: written before the flow was grouped into steps. The fixtures in test/fixtures were
written by flowclas_ros at commit 4c2989e (layout 1); see flowclas_ros/model/upgrade.py.
"""
from pathlib import Path

import numpy as np
import torch

from flowclas_ros.bundle.reader import load_bundle
from flowclas_ros.bundle.torch_model import build_torch_model
from flowclas_ros.model import BackboneConfig, FlowCLAS, ModelConfig
from flowclas_ros.model.checkpoint import load_checkpoint, load_model
from flowclas_ros.model.upgrade import LAYOUT, upgrade_state_dict
from flowclas_ros.runtime import create_backend

FIXTURES = Path(__file__).parent / "fixtures"


def test_layout1_checkpoint_gives_the_same_scores():
    data = load_checkpoint(FIXTURES / "layout1_checkpoint.pt")
    assert data["version"] == 1 and LAYOUT == 2
    model = load_model(FIXTURES / "layout1_checkpoint.pt")
    assert any(k.startswith("flow.steps.1.coupling.subnet.out.") for k in model.state_dict())
    with torch.no_grad():
        scores = model(data["input"])
    assert torch.equal(scores, data["scores"])  # bit-identical


def test_layout1_bundle_loads_and_gives_the_same_scores():
    bundle = load_bundle(FIXTURES / "layout1_bundle")
    assert bundle.manifest["format_version"] == 1
    data = load_checkpoint(FIXTURES / "layout1_checkpoint.pt")
    with torch.no_grad():
        scores = build_torch_model(bundle)(data["input"])
    assert torch.equal(scores, data["scores"])
    # the runtime runs it on both backends, and they agree
    frame = np.random.default_rng(0).integers(0, 256, (30, 40, 3), np.uint8)
    heat = {}
    for name in ("torch", "onnxruntime"):
        with create_backend(bundle, backend=name, device="cpu") as be:
            heat[name] = be.infer(frame, mask=False, overlay=False).heatmap
    np.testing.assert_allclose(heat["torch"], heat["onnxruntime"], atol=1e-4, rtol=0)


def test_layout1_efficientnet_names_map_onto_todays_backbone():
    """Check that layout 1's EfficientNet-Lite names cover today's backbone exactly.

    Layout 1 kept EfficientNet-Lite's stem as stem.0 (conv_stem) / stem.1 (bn1) and the blocks
    up to the tapped stage as blocks.*: rebuilt here from timm's classifier, those names must
    cover today's backbone exactly.
    """
    import timm

    full = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    old = {}
    for k, v in full.items():
        head, _, rest = k.partition(".")
        if head == "conv_stem":
            old[f"backbone.stem.0.{rest}"] = v
        elif head == "bn1":
            old[f"backbone.stem.1.{rest}"] = v
        elif head == "blocks" and int(rest.split(".")[0]) <= 4:  # stage 3 ends at block 4
            old[f"backbone.blocks.{rest}"] = v
    model = FlowCLAS(ModelConfig(backbone=BackboneConfig(name="efficientnet_lite0", stages=[3],
                                                         pretrained=False)))
    new = {k: v for k, v in model.state_dict().items() if k.startswith("backbone.")}
    upgraded = upgrade_state_dict(old, 1)
    assert set(upgraded) == set(new)
    assert all(upgraded[k].shape == new[k].shape for k in new)
