"""Model bundles: round trip, ONNX graph contract, and refusal of broken or mismatched bundles."""
import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from model_fixtures import demo_model

from flowclas_ros.bundle.hashing import config_sha256
from flowclas_ros.bundle.onnx_export import image_to_input, sample_images
from flowclas_ros.bundle.reader import FORMAT, FORMAT_VERSION, Bundle, BundleError, load_bundle
from flowclas_ros.bundle.torch_model import build_torch_model
from flowclas_ros.export.bundle import write_bundle

SIZE = (48, 64)
TRAIN_CONFIG = {"train": {"lr": 2e-3, "epochs": 4}, "data": {"name": "camvid"}}


@pytest.fixture(scope="module")
def tiny_model():
    return demo_model("tiny")


@pytest.fixture(scope="module")
def tiny_bundle(tiny_model, tmp_path_factory) -> Bundle:
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    return write_bundle(tiny_model, out, input_size=SIZE, threshold=1.5, score_range=(0.5, 2.5),
                        threshold_fpr=0.05, train_config=TRAIN_CONFIG,
                        metrics={"auprc": 0.5, "fpr95": float("nan"), "far": float("inf")},
                        exporter="torchscript")


def _copy(bundle: Bundle, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(bundle.path, dst)
    return dst


def _edit_manifest(path, fn):
    m = json.loads((path / "manifest.json").read_text())
    fn(m)
    (path / "manifest.json").write_text(json.dumps(m))


def test_round_trip(tiny_model, tiny_bundle):
    b = load_bundle(tiny_bundle.path)
    assert b.input_size == SIZE and b.threshold == 1.5 and b.score_range == (0.5, 2.5)
    assert b.threshold_fpr == 0.05 and not b.dynamic and not b.fp16
    m = b.manifest
    assert m["format"] == FORMAT and m["format_version"] == FORMAT_VERSION
    assert m["input"]["channel_order"] == "RGB" and m["input"]["value_range"] == [0.0, 1.0]
    assert m["input"]["pad_multiple"] == 8
    np.testing.assert_allclose(m["input"]["mean"], tiny_model.mean.flatten().tolist())
    assert m["model"]["config"] == tiny_model.config.to_dict()
    assert m["train_config"] == TRAIN_CONFIG
    assert m["train_config_sha256"] == config_sha256(TRAIN_CONFIG)
    assert m["metrics"] == {"auprc": 0.5, "fpr95": None, "far": None}
    assert {"torch", "onnx", "onnxruntime", "flowclas_ros"} <= set(m["versions"])
    assert set(m["files"]) == {"model.onnx", "weights.safetensors"}
    assert all(len(f["sha256"]) == 64 for f in m["files"].values())
    assert (b.path / "MODEL_CARD.md").is_file()
    # the weights rebuild exactly the same model, without the backbone's original source
    rebuilt = build_torch_model(b)
    ref, got = tiny_model.state_dict(), rebuilt.state_dict()
    assert set(ref) == set(got)
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    x = image_to_input(sample_images()[0][1], SIZE)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), tiny_model(x), rtol=0, atol=0)


def test_manifest_is_strict_json(tiny_bundle):
    """NaN and infinity (an undefined metric) are written as null, never as bare tokens."""
    def refuse(token):
        raise ValueError(f"{token} is not JSON")

    manifest = json.loads((tiny_bundle.path / "manifest.json").read_text(), parse_constant=refuse)
    assert manifest["metrics"] == {"auprc": 0.5, "fpr95": None, "far": None}


def test_load_accepts_manifest_path(tiny_bundle):
    assert load_bundle(tiny_bundle.path / "manifest.json").path == tiny_bundle.path


def test_onnx_graph_contract(tiny_bundle):
    proto = onnx.load(str(tiny_bundle.onnx_path))
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    assert opset >= 17
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert inp.name == "image" and out.name == "score"
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = lambda v: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]  # noqa: E731
    assert dims(inp) == ["batch", 3, *SIZE]  # a dynamic batch: one run for several cameras
    assert dims(out) == ["batch", *SIZE]
    ver = tiny_bundle.manifest["onnx"]["verification"]
    assert ver["relative_to_score_range"] < 1e-4 and ver["finite"]


def test_missing_path():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_bundle("/nonexistent/bundle")


@pytest.mark.parametrize("name", ["model.onnx", "weights.safetensors"])
def test_missing_file(tiny_bundle, tmp_path, name):
    p = _copy(tiny_bundle, tmp_path)
    (p / name).unlink()
    with pytest.raises(BundleError, match=f"{name} is missing"):
        load_bundle(p)


def test_missing_manifest(tiny_bundle, tmp_path):
    p = _copy(tiny_bundle, tmp_path)
    (p / "manifest.json").unlink()
    with pytest.raises(BundleError, match="manifest.json is missing"):
        load_bundle(p)


@pytest.mark.parametrize("name", ["model.onnx", "weights.safetensors"])
def test_corrupted_bytes(tiny_bundle, tmp_path, name):
    p = _copy(tiny_bundle, tmp_path)
    data = bytearray((p / name).read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte changed
    (p / name).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=f"{name} does not match its sha256.*corrupted"):
        load_bundle(p)
    load_bundle(p, check_hashes=False)  # the hash is what catches it


def test_truncated_file(tiny_bundle, tmp_path):
    p = _copy(tiny_bundle, tmp_path)
    data = (p / "model.onnx").read_bytes()
    (p / "model.onnx").write_bytes(data[:-10])
    with pytest.raises(BundleError, match="truncated or corrupted"):
        load_bundle(p)


def test_version_too_new(tiny_bundle, tmp_path):
    p = _copy(tiny_bundle, tmp_path)
    _edit_manifest(p, lambda m: m.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(BundleError, match="too new.*upgrade flowclas_ros"):
        load_bundle(p)


def test_wrong_input_size(tiny_bundle, tmp_path):
    p = _copy(tiny_bundle, tmp_path)
    _edit_manifest(p, lambda m: m["input"].update(size=[96, 128]))
    with pytest.raises(BundleError, match=r"\(96, 128\).*manifest and graph disagree"):
        load_bundle(p)


def test_wrong_channels(tiny_bundle, tmp_path):
    p = _copy(tiny_bundle, tmp_path)
    _edit_manifest(p, lambda m: m["model"].update(channels=32))
    with pytest.raises(BundleError, match="manifest and weights disagree"):
        load_bundle(p)


def test_wrong_format_and_bad_json(tiny_bundle, tmp_path):
    p = _copy(tiny_bundle, tmp_path)
    _edit_manifest(p, lambda m: m.update(format="something.else"))
    with pytest.raises(BundleError, match="format 'something.else'"):
        load_bundle(p)
    (p / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(p)


def test_missing_manifest_keys_and_bad_values(tiny_bundle, tmp_path):
    p = _copy(tiny_bundle, tmp_path)
    _edit_manifest(p, lambda m: (m.pop("score_range"), m["input"].pop("mean")))
    with pytest.raises(BundleError, match="lacks score_range, input.mean"):
        load_bundle(p)
    p2 = _copy(tiny_bundle, tmp_path / "b")
    _edit_manifest(p2, lambda m: m.update(score_range=[2.0, 1.0]))
    with pytest.raises(BundleError, match="lo < hi"):
        load_bundle(p2)


def test_write_refuses_foreign_directory(tiny_model, tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a bundle"):
        write_bundle(tiny_model, tmp_path, input_size=SIZE, threshold=1.0, score_range=(0, 1))
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_dynamic_bundle(tiny_model, tmp_path):
    import onnxruntime as ort

    b = write_bundle(tiny_model, tmp_path / "dyn", input_size=SIZE, threshold=1.0,
                     score_range=(0.5, 2.5), dynamic=True, verify=False)
    assert b.dynamic and b.manifest["onnx"]["exporter"] in ("torchscript", "dynamo")
    sess = ort.InferenceSession(str(b.onnx_path), providers=["CPUExecutionProvider"])
    for size in [(40, 56), (61, 83)]:
        x = image_to_input(sample_images()[1][1], size)
        out = sess.run(["score"], {"image": x.numpy()})[0]
        with torch.no_grad():
            ref = tiny_model(x).numpy()
        assert out.shape == (1, *size)
        np.testing.assert_allclose(out, ref, atol=1e-4)


def test_fp16_bundle(tiny_model, tmp_path):
    b = write_bundle(tiny_model, tmp_path / "fp16", input_size=SIZE, threshold=1.0,
                     score_range=(0.5, 2.5), fp16=True, exporter="torchscript")
    assert b.fp16
    ver = b.manifest["onnx"]["verification"]
    if "skipped" not in ver:  # the CPU provider may lack float16 kernels
        assert ver["finite"] and ver["relative_to_score_range"] < 0.05
    # the caller's model is untouched
    assert next(tiny_model.backbone.parameters()).dtype == torch.float32


def test_moved_names_still_import_with_a_warning():
    """Check that the old paths of the reader, moved to flowclas_ros.bundle, still resolve.

    They resolve to the same objects.
    """
    import importlib

    from flowclas_ros.bundle import graph, reader

    old_bundle = importlib.import_module("flowclas_ros.export.bundle")
    old_onnx = importlib.import_module("flowclas_ros.export.onnx_export")
    with pytest.warns(FutureWarning, match="flowclas_ros.bundle.reader.load_bundle"):
        assert old_bundle.load_bundle is reader.load_bundle
    with pytest.warns(FutureWarning, match="flowclas_ros.bundle.graph.ScoreGraph"):
        assert old_onnx.ScoreGraph is graph.ScoreGraph
    with pytest.warns(FutureWarning):
        from flowclas_ros.runtime.pipeline import NumpyPipeline  # noqa: F401
