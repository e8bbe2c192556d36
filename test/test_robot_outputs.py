"""Issue 19 outside DDS.

The calibration exceedance table in the bundle (export, manifest, reader), ``export
--ignore-mask`` and the ignore helpers of evaluation.scoring, the overlay's boxes and ids, the
robot parameters' checks.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from model_fixtures import demo_model
from PIL import Image

from flowclas_ros.bundle.reader import BundleError, load_bundle
from flowclas_ros.bundle.writer import exceedance_section
from flowclas_ros.evaluation.scoring import IgnoringDataset, void_ignored
from flowclas_ros.labels import VOID
from flowclas_ros.outputs.ignore_mask import IgnoreMask
from flowclas_ros.outputs.regions import exceedance, exceedance_table


# the bundle's exceedance table --------------------------------------------------------------
def _with_exceedance(src, dst, spec):
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    if spec is None:
        m["threshold"].pop("exceedance", None)
    else:
        m["threshold"]["exceedance"] = spec
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


def test_reader_exposes_the_exceedance_table_and_refuses_bad_ones(tiny_bundle, tmp_path):
    assert load_bundle(tiny_bundle).exceedance_table is None  # older bundles: none
    scores = np.random.default_rng(0).normal(size=5000)
    table = exceedance_table(scores)
    spec = exceedance_section(table, 5000, "test")
    assert spec["pixels"] == 5000 and len(spec["levels"]) == len(table)
    b = load_bundle(_with_exceedance(tiny_bundle, tmp_path / "ok", spec))
    np.testing.assert_array_equal(b.exceedance_table, table)
    assert float(exceedance(b.exceedance_table, np.median(scores))) == pytest.approx(0.5,
                                                                                      abs=1e-3)
    bad = [dict(spec, scores=spec["scores"][::-1]), dict(spec, levels=spec["levels"][:-1]),
           dict(spec, scores=[None] * len(spec["levels"])), "table"]
    for k, b_spec in enumerate(bad):
        with pytest.raises(BundleError, match="threshold.exceedance"):
            load_bundle(_with_exceedance(tiny_bundle, tmp_path / f"bad{k}", b_spec))


# export --ignore-mask -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from flowclas_ros.model.checkpoint import model_payload, save_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    save_checkpoint(path, model_payload(demo_model("tiny")))
    return path


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory):
    """Write a folder of 3 normal frames (no labels/: every pixel an inlier), 40x60."""
    root = tmp_path_factory.mktemp("normal")
    (root / "images").mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        img = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / "images" / f"f{i}.png")
    return root


def test_export_records_the_table_and_leaves_ignored_pixels_out(checkpoint, frames_dir,
                                                               tmp_path, capsys):
    from flowclas_ros.tools import export as export_cli

    hood = np.zeros((20, 30), np.uint8)  # half the frames' size: the bottom quarter ignored
    hood[15:] = 255
    Image.fromarray(hood).save(tmp_path / "hood.png")
    out = tmp_path / "bundle"
    assert export_cli.main(["--checkpoint", str(checkpoint), "--out", str(out), "--input-size",
                            "32", "48", "--calibration", str(frames_dir), "--fpr", "0.1",
                            "--ignore-mask", str(tmp_path / "hood.png"), "--no-verify"]) == 0
    assert json.loads(capsys.readouterr().out)["exceedance_table"] is True
    b = load_bundle(out)
    cal = b.manifest["metrics"]["calibration"]
    assert cal["pixels"] == 3 * 30 * 60  # 3 frames of 40x60, the bottom 10 rows left out
    assert cal["ignore_mask"]["fraction"] == pytest.approx(0.25)
    exc = b.manifest["threshold"]["exceedance"]
    assert exc["pixels"] == cal["pixels"] and "ignore mask" in exc["source"]
    # the threshold flags about --fpr of the normal pixels: its exceedance is about 1 - fpr
    assert float(exceedance(b.exceedance_table, b.threshold)) == pytest.approx(0.9, abs=0.01)
    # a mask of another aspect ratio, or one without calibration data, is refused
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "square.png")
    for extra in (["--calibration", str(frames_dir), "--ignore-mask",
                   str(tmp_path / "square.png")],
                  ["--ignore-mask", str(tmp_path / "hood.png")]):
        assert export_cli.main(["--checkpoint", str(checkpoint), "--out",
                                str(tmp_path / "b2"), "--no-verify", *extra]) == 2
        assert "ignore" in capsys.readouterr().err


def test_void_ignored_and_the_ignoring_dataset():
    from flowclas_ros.data.frames import Sample

    mask = IgnoreMask(np.array([[0, 1], [0, 0]], bool))  # top-right quarter
    label = np.zeros((4, 6), np.uint8)
    label[3, 0] = 1
    out = void_ignored(label, mask)
    assert (out[:2, 3:] == VOID).all() and out[3, 0] == 1 and (label[:2, 3:] == 0).all()
    assert void_ignored(label, None) is label
    ds = IgnoringDataset([Sample(np.zeros((4, 6, 3), np.uint8), label, "a")], mask)
    assert len(ds) == 1 and (ds[0].label[:2, 3:] == VOID).all()
    assert [s.name for s in ds] == ["a"]


# the overlay ------------------------------------------------------------------------------------
def test_overlay_boxes_and_ids_are_drawn_outside_the_region():
    from flowclas_ros.node.overlay_boxes import GLYPH_H, draw_regions

    img = np.zeros((60, 80, 3), np.uint8)
    img.flags.writeable = False  # the overlay of the numpy pipeline is a read-only view
    out = draw_regions(img, [(20, 30, 10, 8), (0, 0, 5, 5)], ["7", "12"])
    assert out is not img and not img.any()
    white = (out == 255).all(axis=2)
    assert white[28:30, 18:32].all() and white[38:40, 18:32].all()  # top and bottom lines
    assert white[28:40, 18:20].all() and white[28:40, 30:32].all()  # left and right
    assert not white[30:38, 20:30].any()  # the region itself stays visible
    assert white[30 - 2 - GLYPH_H - 2:28].any()  # the id above the box
    assert white[2:2 + GLYPH_H + 2, 0:20].any()  # at the top edge: inside, below the line
    assert draw_regions(img, [], []) is img


# parameters -----------------------------------------------------------------------------------
def test_robot_parameters_are_in_the_table_with_ranges_and_pairs():
    pytest.importorskip("rclpy", reason="rclpy (ROS 2 Jazzy) is not installed")
    from types import SimpleNamespace as NS

    from flowclas_ros.node import parameters as P

    spec = {p.name: p for p in P.table()}
    for name in ("depth_topic", "depth_info_topic", "ignore_mask", "snapshot_dir",
                 "snapshot_pre_s", "snapshot_post_s", "snapshot_max_mb"):
        assert spec[name].change == P.STRUCTURAL, name
    for name in ("publish_detections", "publish_points", "min_region_pixels", "persistence_n",
                 "persistence_m", "persistence_iou", "depth_max_skew_s", "max_points",
                 "depth_min_m", "depth_max_m"):
        assert spec[name].change == P.LIVE, name
    assert spec["persistence_n"].int_range == (1, 60)
    now = {"persistence_n": 2, "persistence_m": 3, "depth_min_m": 0.1, "depth_max_m": 20.0}

    def check(**changes):
        return P.check_changes(P.table(), [NS(name=k, value=v, type_=2 if isinstance(v, int)
                                              else 3) for k, v in changes.items()],
                               configured=True, current=now)

    assert not check(persistence_m=1).successful
    assert check(persistence_m=1, persistence_n=1).successful  # both at once
    assert not check(depth_max_m=0.05).successful
    assert not check(depth_topic="/d").successful  # structural while configured


def test_depth_info_topic_is_the_sibling_camera_info():
    pytest.importorskip("rclpy", reason="rclpy (ROS 2 Jazzy) is not installed")
    from flowclas_ros.node.depth_input import info_topic_for

    assert info_topic_for("/cam/aligned_depth_to_color/image_raw") == \
        "/cam/aligned_depth_to_color/camera_info"
    assert info_topic_for("depth/image") == "depth/camera_info"
    assert info_topic_for("depth") == "camera_info"
    assert info_topic_for("/d/image", "/other/info") == "/other/info"
