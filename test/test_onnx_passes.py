"""The ONNX graph rewrites (flowclas_ros.bundle.onnx_passes) keep the graph's output.

``fold_same_padding`` moves a TF-"same" Pad into its Conv only where the amounts are the same
for every frame size (the graph pads to the stride multiple first); a Pad that depends on the
size stays.
"""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flowclas_ros.bundle.onnx_passes import fold_same_padding


class SameConvs(nn.Module):
    """Two stride-2 TF-'same' convolutions, optionally after padding the input to 4 x k."""

    def __init__(self, pad_to_multiple: bool):
        super().__init__()
        from timm.layers import Conv2dSame

        torch.manual_seed(0)
        self.pad_to_multiple = pad_to_multiple
        self.a = Conv2dSame(3, 8, 3, stride=2)
        self.b = Conv2dSame(8, 4, 5, stride=2)

    def forward(self, x):
        if self.pad_to_multiple:
            h, w = x.shape[-2:]
            x = F.pad(x, (0, (4 - w % 4) % 4, 0, (4 - h % 4) % 4))
        return self.b(torch.relu(self.a(x)))


def _export(module: nn.Module, path) -> onnx.ModelProto:
    x = torch.rand(1, 3, 32, 48)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (x,), str(path), dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["score"],
                          dynamic_axes={"image": {2: "h", 3: "w"}, "score": {2: "h", 3: "w"}})
    return onnx.load(str(path))


def _run(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"image": x})[0]


def _count(proto: onnx.ModelProto, op: str) -> int:
    return sum(n.op_type == op for n in proto.graph.node)


@pytest.mark.parametrize("pad_to_multiple, folded", [(True, 2), (False, 0)])
def test_fold_same_padding_keeps_the_output(tmp_path, pad_to_multiple, folded):
    module = SameConvs(pad_to_multiple)
    original = _export(module, tmp_path / "m.onnx")
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(original)
    assert fold_same_padding(rewritten) == folded
    onnx.checker.check_model(rewritten)
    assert _count(rewritten, "Pad") == _count(original, "Pad") - folded
    assert len(rewritten.graph.node) <= len(original.graph.node)
    rng = np.random.default_rng(0)
    for h, w in [(32, 48), (37, 53), (90, 61), (8, 8)]:  # sizes the probes never saw too
        x = rng.random((1, 3, h, w), dtype=np.float32)
        with torch.no_grad():
            ref = module(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(_run(rewritten, x), ref, atol=1e-5)
        np.testing.assert_allclose(_run(rewritten, x), _run(original, x), atol=1e-6)


def test_exported_efficientnet_graph_keeps_only_its_stride_padding(tmp_path):
    """The exporter applies the pass: a dynamic Lite0 graph keeps only its stride padding."""
    from model_fixtures import demo_model

    from flowclas_ros.bundle.onnx_export import export_onnx

    model = demo_model("lite0")
    info = export_onnx(model, tmp_path / "model.onnx", (64, 96), dynamic=True)
    assert info["passes"]["fold_same_padding"] == 4  # the stem and the three stride-2 blocks
    proto = onnx.load(str(tmp_path / "model.onnx"))
    assert _count(proto, "Pad") == 1  # the graph's own padding to the stride multiple
    x = np.random.default_rng(1).random((1, 3, 75, 130), dtype=np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_run(proto, x), ref, atol=1e-3)
