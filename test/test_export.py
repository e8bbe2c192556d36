"""The export CLI (checkpoint -> bundle).

Also calibration of the threshold and display range, the exporter fallback and the ONNX Runtime
vs torch check.
"""
import json

import numpy as np
import pytest
from model_fixtures import demo_model
from PIL import Image

from flowclas_ros.bundle import onnx_export
from flowclas_ros.bundle.hashing import config_sha256
from flowclas_ros.bundle.onnx_export import export_onnx, sample_images, verify_onnx
from flowclas_ros.bundle.reader import load_bundle
from flowclas_ros.model.checkpoint import model_payload, save_checkpoint
from flowclas_ros.runtime import create_backend
from flowclas_ros.tools import export as export_cli

TRAIN_CONFIG = {"model": {"backbone": "tiny"}, "train": {"steps": 10}}


@pytest.fixture(scope="module")
def tiny_model():
    return demo_model("tiny")


@pytest.fixture(scope="module")
def checkpoint(tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    save_checkpoint(path, {**model_payload(tiny_model), "train_config": TRAIN_CONFIG,
                           "metrics": {"auprc": 0.42}})
    return path


@pytest.fixture(scope="module")
def calibration_dir(tmp_path_factory):
    """Build a folder dataset: 3 real photo crops, a pasted 'anomaly' square (1), a void border."""
    root = tmp_path_factory.mktemp("calib")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    photos = [img for _, img in sample_images()]
    rng = np.random.default_rng(0)
    for i in range(3):
        img = photos[i % 2][40 * i: 40 * i + 60, 50 * i: 50 * i + 80].copy()
        label = np.zeros(img.shape[:2], np.uint8)
        other = photos[(i + 1) % 2]
        y, x = rng.integers(5, 30), rng.integers(5, 50)
        img[y:y + 20, x:x + 20] = other[100:120, 100:120]
        label[y:y + 20, x:x + 20] = 1
        label[:2] = 255
        Image.fromarray(img).save(root / "images" / f"f{i}.png")
        Image.fromarray(label).save(root / "labels" / f"f{i}.png")
    return root


def test_cli_with_calibration(checkpoint, calibration_dir, tmp_path, capsys):
    out = tmp_path / "bundle"
    assert export_cli.main(["--checkpoint", str(checkpoint), "--out", str(out), "--input-size",
                            "32", "48", "--calibration", str(calibration_dir),
                            "--fpr", "0.1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    b = load_bundle(out)
    assert summary["bundle"] == str(out) and b.input_size == (32, 48)
    assert b.threshold_fpr == 0.1 and summary["threshold"] == b.threshold
    m = b.manifest
    assert m["train_config"] == TRAIN_CONFIG
    assert m["train_config_sha256"] == config_sha256(TRAIN_CONFIG)
    assert m["metrics"]["checkpoint"] == {"auprc": 0.42}
    cal = m["metrics"]["calibration"]
    assert cal["frames"] == 3 and cal["fpr_at_threshold"] <= 0.1 and "auprc" in cal
    assert m["onnx"]["verification"]["relative_to_score_range"] < 1e-4
    # the runtime reproduces the calibration: inlier FPR at the threshold is <= 0.1
    ds = [(np.asarray(Image.open(calibration_dir / "images" / f"f{i}.png")),
           np.asarray(Image.open(calibration_dir / "labels" / f"f{i}.png"))) for i in range(3)]
    with create_backend(out, backend="torch", device="cpu") as be:
        heat = [be.infer(img, mask=False, overlay=False).heatmap for img, _ in ds]
    inl = np.concatenate([h[lab == 0] for h, (_, lab) in zip(heat, ds)])
    allv = np.concatenate([h[lab != 255] for h, (_, lab) in zip(heat, ds)])
    assert (inl >= b.threshold).mean() <= 0.1
    assert ((inl >= np.nextafter(np.float32(b.threshold), np.float32(-np.inf))).mean()
            > 0.1 - 1e-3 or b.threshold <= inl.min())
    lo, hi = b.score_range
    assert lo == pytest.approx(np.percentile(inl, 1.0), rel=1e-4, abs=1e-5)
    assert hi == pytest.approx(np.percentile(allv, 99.9), rel=1e-4, abs=1e-5)


def test_cli_without_calibration_and_threshold_override(checkpoint, tmp_path, capsys):
    out = tmp_path / "b"
    export_cli.main(["--checkpoint", str(checkpoint), "--out", str(out), "--input-size", "32",
                     "48", "--threshold", "1.25", "--no-verify"])
    b = load_bundle(out)
    assert b.threshold == 1.25 and b.threshold_fpr is None
    assert "--threshold" in b.manifest["threshold"]["method"]
    assert "uncalibrated" in b.manifest["score_range_method"]
    assert b.manifest["onnx"]["verification"] is None
    # without --threshold: the placeholder from the photos, marked uncalibrated
    export_cli.main(["--checkpoint", str(checkpoint), "--out", str(out), "--input-size", "32",
                     "48", "--no-verify"])
    b = load_bundle(out)
    assert "uncalibrated" in b.manifest["threshold"]["method"] and b.threshold_fpr is None
    lo, hi = b.score_range
    assert lo < b.threshold < hi


def test_cli_rejects_bad_arguments(checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit):
        export_cli.main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "x"),
                         "--fpr", "1.5"])
    capsys.readouterr()
    missing = tmp_path / "missing.pt"
    assert export_cli.main(["--checkpoint", str(missing), "--out", str(tmp_path)]) == 2
    assert f"checkpoint {missing} does not exist" in capsys.readouterr().err


def test_pickled_checkpoint_is_refused_in_one_clear_sentence(tmp_path, capsys):
    """Check that a checkpoint holding pickled objects is refused in one clear sentence.

    Export and evaluate say it is not a weights-only checkpoint and never suggest loading it
    unsafely.
    """
    import argparse

    import torch

    from flowclas_ros.tools import evaluate as evaluate_cli

    bad = tmp_path / "pickled.pt"
    torch.save({"format": "flowclas_ros.checkpoint", "opts": argparse.Namespace(a=1)}, bad)
    assert export_cli.main(["--checkpoint", str(bad), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    (tmp_path / "ds" / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "ds" / "images" / "a.png")
    with pytest.raises(SystemExit):
        evaluate_cli.main(["--dataset", "folder", "--root", str(tmp_path / "ds"),
                           "--model", str(bad), "--out", str(tmp_path / "e")])
    err += capsys.readouterr().err
    assert err.count("is not a weights-only checkpoint") == 2
    assert "weights_only=False" not in err and "Traceback" not in err


def test_exporter_fallback_is_recorded(tiny_model, tmp_path, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("dynamo says no")

    monkeypatch.setattr(onnx_export, "_export_dynamo", broken)
    info = export_onnx(tiny_model, tmp_path / "m.onnx", (32, 48), exporter="auto")
    assert info["exporter"] == "torchscript" and "dynamo exporter failed" in info["note"]
    assert info["opset"] == 17
    with pytest.raises(RuntimeError, match="failed with every exporter"):
        export_onnx(tiny_model, tmp_path / "n.onnx", (32, 48), exporter="dynamo")


def test_dynamo_export_and_verify(tiny_model, tmp_path):
    info = export_onnx(tiny_model, tmp_path / "m.onnx", (40, 56), exporter="dynamo")
    assert info["exporter"] == "dynamo" and info["opset"] >= 18 and not info["external_data"]
    v = verify_onnx(tiny_model, tmp_path / "m.onnx", (40, 56), score_range=(0.0, 2.0))
    assert v["provider"] == "CPUExecutionProvider" and v["finite"]
    assert v["relative_to_score_range"] < 1e-5 and v["image"].startswith("skimage.data")


def test_regraph_keeps_weights_threshold_and_card_notes(checkpoint, tmp_path, capsys):
    """``export --regraph``: today's graph for an existing bundle, nothing else changed."""
    src = tmp_path / "old"
    notes = tmp_path / "notes.md"
    notes.write_text("## Provenance\n\nTrained on the test photographs.\n")
    assert export_cli.main(["--checkpoint", str(checkpoint), "--out", str(src), "--input-size",
                            "32", "48", "--threshold", "1.5", "--card-notes", str(notes)]) == 0
    old = load_bundle(src)
    capsys.readouterr()
    out = tmp_path / "new"
    assert export_cli.main(["--regraph", str(src), "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["passes"] == {"fold_same_padding": 0}
    new = load_bundle(out)
    assert new.threshold == old.threshold and new.score_range == old.score_range
    for key in ("threshold", "metrics", "train_config", "model", "input"):
        assert new.manifest[key] == old.manifest[key]
    assert (new.manifest["files"]["weights.safetensors"]
            == old.manifest["files"]["weights.safetensors"])
    assert new.manifest["onnx"]["verification"]["relative_to_score_range"] < 1e-3
    assert (out / "MODEL_CARD.md").read_text().endswith(notes.read_text())
    frame = sample_images()[0][1]
    a = create_backend(src, backend="onnxruntime").infer(frame).heatmap
    b = create_backend(out, backend="onnxruntime").infer(frame).heatmap
    np.testing.assert_allclose(a, b, atol=1e-5)
    # in place without --out; neither or both sources is a usage error
    assert export_cli.main(["--regraph", str(src)]) == 0
    with pytest.raises(SystemExit):
        export_cli.main(["--out", str(out)])
    with pytest.raises(SystemExit):
        export_cli.main(["--regraph", str(src), "--checkpoint", str(checkpoint)])


def test_one_threshold_per_camera_topic_of_a_calibration_bag(checkpoint, tmp_path, monkeypatch):
    """``--calibration-bag BAG --topic T1 T2``: each camera on its own frames, the first leads."""
    from test_bags import write_bag

    monkeypatch.setenv("FLOWCLAS_CACHE", str(tmp_path / "cache"))
    bag = write_bag(tmp_path / "drive", n=40, more_cameras={"/cam2/image": 1})
    out = tmp_path / "bundle"
    assert export_cli.main(["--checkpoint", str(checkpoint), "--out", str(out), "--input-size",
                            "24", "32", "--calibration-bag", str(bag), "--topic", "/cam/image",
                            "/cam2/image", "--fpr", "0.1", "--no-verify"]) == 0
    b = load_bundle(out)
    per = b.manifest["threshold"]["per_topic"]
    assert set(per) == {"/cam/image", "/cam2/image"}
    assert per["/cam/image"]["value"] == b.threshold  # the first topic leads
    assert per["/cam2/image"]["value"] != b.threshold  # the noisy camera scores otherwise
    assert all(v["fpr"] == 0.1 and v["frames"] > 0 for v in per.values())
    assert b.topic_threshold("/cam2/image/compressed") == per["/cam2/image"]["value"]
    assert b.topic_threshold("/elsewhere/image") is None
    # each topic's exceedance table (a detection's score on that camera); the first leads
    import numpy as np

    np.testing.assert_array_equal(b.topic_exceedance_table("/cam/image"), b.exceedance_table)
    cam2 = b.topic_exceedance_table("/cam2/image/compressed")
    assert cam2.shape == b.exceedance_table.shape and not np.array_equal(cam2,
                                                                        b.exceedance_table)
    assert b.topic_exceedance_table("/elsewhere/image") is None
    # an explicit --threshold is one threshold for every camera
    assert export_cli.main(["--checkpoint", str(checkpoint), "--out", str(out), "--input-size",
                            "24", "32", "--calibration-bag", str(bag), "--topic", "/cam/image",
                            "/cam2/image", "--threshold", "1.5", "--no-verify"]) == 0
    assert "per_topic" not in load_bundle(out).manifest["threshold"]
    for bad in (["/cam/image", "/cam/image"], ["cam/image"]):
        assert export_cli.main(["--checkpoint", str(checkpoint), "--out", str(out),
                                "--calibration-bag", str(bag), "--topic", *bad]) == 2


def test_a_bad_per_topic_threshold_is_refused(tiny_bundle, tmp_path):
    import shutil

    from flowclas_ros.bundle.reader import BundleError

    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    falling = {"levels": [0, 1], "scores": [2, 1]}
    for per in ({"cam/image": {"value": 1.0}}, {"/cam/image": {"value": None}}, ["/cam"],
                {"/cam/image": {"value": 1.0, "exceedance": falling}}):
        manifest["threshold"]["per_topic"] = per
        (bundle / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(BundleError, match="per_topic"):
            load_bundle(bundle)
