"""The pasted-CamVid validation set.

Held-out objects only, deterministic, read back as a folder.
"""
import json

import numpy as np
import pytest
from PIL import Image
from test_datasets import make_camvid
from test_outliers import make_yolo

from flowclas_ros.data import build_dataset, load_outlier_source
from flowclas_ros.data.validation_set import build_validation_set, default_outlier_split
from flowclas_ros.tools.build_validation_set import main


@pytest.fixture
def roots(tmp_path):
    camvid = tmp_path / "camvid"
    raws = make_camvid(camvid, splits=("val", "test"), n=3, size=(36, 48))
    coco = tmp_path / "coco"
    make_yolo(coco, n=9, road=(4,), h=30, w=40)
    return camvid, coco, raws


def read_dir(d):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*.png"))}


def test_build_and_read_back(roots, tmp_path):
    camvid, coco, raws = roots
    out = tmp_path / "val"
    m = build_validation_set(camvid, coco, out, seed=3)
    ds = build_dataset("folder", out)
    assert len(ds) == 6 and ds.names == sorted(ds.names)
    assert ds.names[:3] == ["test_0001TP_test_000", "test_0001TP_test_001", "test_0001TP_test_002"]
    _, held = default_outlier_split(load_outlier_source(coco))
    assert len(held) == 2  # round(0.25 * 8 kept images)
    assert m["outliers"]["objects"] == 2 and m["outliers"]["part"] == "held_out"
    assert m["counts"]["frames"] == 6 and m["counts"]["per_split"] == {"val": 3, "test": 3}
    assert m["seed"] == 3
    assert json.loads((out / "manifest.json").read_text())["counts"] == m["counts"]
    assert {f["object"] for f in m["frames"]} <= set(held.keys)
    for s in ds:
        assert set(np.unique(s.label)) <= {0, 1, 255} and (s.label == 1).any()
        split, stem = s.name.split("_", 1)
        raw = raws[(split, stem)]
        keep = s.label != 1  # outside the pasted object, CamVid void stays ignored, rest inlier
        assert np.array_equal(s.label[keep], np.where(raw <= 10, 0, 255)[keep])
    assert sum(int((s.label == 1).sum()) for s in ds) == m["counts"]["pixels"]["outlier"]


def test_deterministic_and_limit_independent(roots, tmp_path):
    camvid, coco, _ = roots
    build_validation_set(camvid, coco, tmp_path / "a", seed=0)
    build_validation_set(camvid, coco, tmp_path / "b", seed=0)
    a, b = read_dir(tmp_path / "a"), read_dir(tmp_path / "b")
    assert a == b and len(a) == 12
    build_validation_set(camvid, coco, tmp_path / "c", seed=1)
    assert read_dir(tmp_path / "c") != a
    m = build_validation_set(camvid, coco, tmp_path / "d", seed=0, splits=("test",), limit=2)
    d = read_dir(tmp_path / "d")
    assert m["counts"]["frames"] == 2 and len(d) == 4
    assert all(d[k] == a[k] for k in d)  # a frame is the same whatever else is built


def test_given_source_and_rebuild(roots, tmp_path):
    camvid, coco, _ = roots
    src = load_outlier_source(coco)
    train, held = default_outlier_split(src)
    out = tmp_path / "v"
    m = build_validation_set(camvid, held, out, splits=("val",), limit=1)
    assert m["outliers"]["part"] == "held_out" and m["counts"]["frames"] == 1
    m = build_validation_set(camvid, held, out, splits=("test",))  # replaces the previous build
    assert sorted(p.stem for p in (out / "images").iterdir()) == [f["name"] for f in m["frames"]]
    foreign = tmp_path / "foreign"
    (foreign / "images").mkdir(parents=True)
    (foreign / "images" / "x.png").write_bytes(b"")
    with pytest.raises(FileExistsError):
        build_validation_set(camvid, held, foreign)
    with pytest.raises(FileNotFoundError, match="camvid"):
        build_validation_set(tmp_path / "nope", held, tmp_path / "w")


def test_cli(roots, tmp_path, capsys):
    camvid, coco, _ = roots
    out = tmp_path / "cli"
    assert main(["--camvid", str(camvid), "--coco", str(coco), "--out", str(out), "--seed", "0",
                 "--val-fraction", "0.25", "--splits", "val", "--limit", "2"]) == 0
    assert "wrote 2 frames" in capsys.readouterr().out
    assert len(build_dataset("folder", out)) == 2
    assert main(["--camvid", str(tmp_path / "nope"), "--coco", str(coco), "--out", str(out)]) == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.real_data
def test_real_camvid_coco128(shared_data, tmp_path):
    if not (shared_data / "camvid").is_dir() or not (shared_data / "coco128-seg").is_dir():
        pytest.skip("camvid or coco128-seg absent")
    m = build_validation_set(shared_data / "camvid", shared_data / "coco128-seg", tmp_path,
                             limit=2)
    assert m["counts"]["frames"] == 4 and m["outliers"]["objects"] == 14
    train, held = default_outlier_split(load_outlier_source(shared_data / "coco128-seg"))
    assert {f["object"] for f in m["frames"]} <= set(held.keys)
    assert not set(held.keys) & set(train.keys)
    ds = build_dataset("folder", tmp_path)
    s = ds[0]
    assert s.image.shape == (360, 480, 3) and (s.label == 1).any()
    assert np.array_equal(np.asarray(Image.open(tmp_path / "labels" / f"{s.name}.png")), s.label)
