"""Frames keep their aspect ratio from camera to model (bundle format 3), and come back whole.

A bundle that declares a ``long_side`` (or a pixel budget) gets a dynamic graph; the runtime
scales every frame to it keeping its aspect ratio (2:1, 16:9, 4:3, portrait), and the score
comes back at the frame's own resolution. The torch and ONNX Runtime backends agree. Bundles
without a resolution keep resizing every frame to their fixed input size.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from flowclas_ros.bundle.preprocess import Resolution
from flowclas_ros.bundle.reader import BundleError, load_bundle
from flowclas_ros.export.bundle import write_bundle
from flowclas_ros.model import BackboneConfig, FlowCLAS, FlowConfig, ModelConfig
from flowclas_ros.runtime import create_backend

LONG_SIDE = 96
FRAMES = {"2:1": (100, 200), "16:9": (108, 192), "4:3": (72, 96), "portrait": (160, 90),
          "small": (30, 40)}


def test_model_size_keeps_the_aspect_ratio():
    res = Resolution(long_side=1024)
    assert res.model_size(1024, 2048) == (512, 1024)
    assert res.model_size(1080, 1920) == (576, 1024)
    assert res.model_size(375, 1242) == (309, 1024)
    assert res.model_size(1920, 1080) == (1024, 576)  # portrait
    assert res.model_size(480, 640) == (480, 640)  # never enlarged (max_scale 1)
    assert Resolution(long_side=1024, max_scale=2.0).model_size(480, 640) == (768, 1024)
    assert Resolution(pixels=512 * 1024).model_size(1080, 1920) == (543, 965)
    assert Resolution(fixed=(360, 480)).model_size(1080, 1920) == (360, 480)  # format 1/2
    with pytest.raises(ValueError):
        Resolution()


@pytest.fixture(scope="module")
def aspect_bundle(tmp_path_factory):
    torch.manual_seed(0)
    model = FlowCLAS(ModelConfig(backbone=BackboneConfig(name="tiny"),
                                 flow=FlowConfig(steps=2))).eval()
    out = tmp_path_factory.mktemp("aspect") / "bundle"
    return write_bundle(model, out, input_size=(48, 96), threshold=0.0, score_range=(-1.0, 1.0),
                        resolution={"long_side": LONG_SIDE}, verify=False)


def test_manifest_declares_the_resolution(aspect_bundle):
    m = aspect_bundle.manifest
    assert m["format_version"] == 3 and m["onnx"]["dynamic"]
    assert m["input"]["resolution"] == {"long_side": LONG_SIDE, "max_scale": 1.0}
    assert m["weights"]["layout"] == 2
    assert aspect_bundle.resolution == Resolution(long_side=LONG_SIDE)


def test_a_resolution_needs_a_dynamic_graph(aspect_bundle, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(aspect_bundle.path, copy)
    m = json.loads((copy / "manifest.json").read_text())
    m["onnx"]["dynamic"] = False
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="dynamic"):
        load_bundle(copy, check_hashes=False)


def _recording(backend):
    """Record the model input shape of every frame the backend runs."""
    seen = []
    forward = backend._forward

    def record(x):
        seen.append(tuple(x.shape))
        return forward(x)

    backend._forward = record
    return seen


@pytest.mark.parametrize("name", list(FRAMES))
def test_frames_reach_the_model_unsqueezed_and_come_back_whole(aspect_bundle, name):
    h, w = FRAMES[name]
    frame = np.random.default_rng(h * w).integers(0, 256, (h, w, 3), np.uint8)
    want = Resolution(long_side=LONG_SIDE).model_size(h, w)
    results = {}
    for backend in ("torch", "onnxruntime"):
        with create_backend(aspect_bundle, backend=backend, device="cpu") as be:
            seen = _recording(be)
            r = be.infer(frame)
        assert seen == [(1, 3, *want)], f"{backend}: the model saw {seen}, expected {want}"
        mh, mw = want
        assert abs(mw / mh - w / h) <= (w / h) * (1.0 / min(mh, mw) + 1e-9)  # aspect kept
        assert r.heatmap.shape == (h, w) and r.mask.shape == (h, w)
        assert r.overlay.shape == (h, w, 3)
        results[backend] = r
    span = 2.0  # the score range
    diff = np.abs(results["torch"].heatmap - results["onnxruntime"].heatmap).max()
    assert diff < 1e-4 * span, f"torch and ONNX Runtime differ by {diff}"


def test_fixed_size_bundles_still_squeeze(tiny_bundle):
    """Format 1/2 behaviour: every frame is resized to the bundle's input size."""
    bundle = load_bundle(tiny_bundle)
    assert not bundle.resolution.keeps_aspect
    with create_backend(bundle, backend="onnxruntime", device="cpu") as be:
        seen = _recording(be)
        r = be.infer(np.zeros((90, 160, 3), np.uint8))
    assert seen == [(1, 3, *bundle.input_size)] and r.heatmap.shape == (90, 160)
