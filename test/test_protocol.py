"""The validation protocol: new inlier readers, instance-level outliers, compositing, grid labels,
photometric augmentation, the protocol's build and scoring (the last on ../shared/data)."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flowclas_ros.data.compositing import (CompositeConfig, Compositor, Ground, estimate_ground,
                                           ground_from_mask, match_light)
from flowclas_ros.data.datasets import build_dataset
from flowclas_ros.data.outlier_sources import default_outlier_split, load_outlier_source
from flowclas_ros.labels import ANOMALY, INLIER, VOID
from flowclas_ros.training.augment import photometric
from flowclas_ros.training.config import PhotometricConfig
from flowclas_ros.training.feature_cache import grid_labels
from test_outliers import write_rgb


# --- readers -------------------------------------------------------------------------------

def test_idd_lite_treats_living_things_as_void(tmp_path):
    for split in ("train", "val"):
        write_rgb(tmp_path / "leftImg8bit" / split / "7" / "0001_image.jpg", 4, 6)
        lab = np.array([[0, 1, 2, 3, 4, 5], [6, 255, 2, 0, 0, 0]] * 2, np.uint8)
        (tmp_path / "gtFine" / split / "7").mkdir(parents=True)
        Image.fromarray(lab).save(tmp_path / "gtFine" / split / "7" / "0001_label.png")
    write_rgb(tmp_path / "leftImg8bit" / "test" / "9" / "0002_image.jpg", 4, 6)
    ds = build_dataset("idd_lite", tmp_path, "val")
    s = ds[0]
    assert s.name == "7/0001" and s.label.shape == (4, 6)
    assert s.label[0].tolist() == [INLIER, INLIER, VOID, INLIER, INLIER, INLIER]
    assert s.label[1].tolist() == [INLIER, VOID, VOID, INLIER, INLIER, INLIER]
    assert (build_dataset("idd_lite", tmp_path, "test")[0].label == INLIER).all()
    with pytest.raises(FileNotFoundError, match="leftImg8bit/train"):
        build_dataset("idd_lite", tmp_path / "gtFine", "train")


def test_kitti_road_frames_are_all_inlier(tmp_path):
    write_rgb(tmp_path / "images" / "um_000001.png", 5, 12)
    ds = build_dataset("kitti_road", tmp_path)
    assert ds.names == ["um_000001"] and (ds[0].label == INLIER).all()


# --- instance-level outliers -----------------------------------------------------------------

def _yolo(root: Path):
    """4 images; image 1 also shows a car (class 2), image 3 a second kept object."""
    for i in range(4):
        stem = f"{i:012d}"
        write_rgb(root / "images" / "train2017" / f"{stem}.jpg", 40, 40, i)
        lines = [f"{16 + i} 0.1 0.1 0.5 0.1 0.5 0.5 0.1 0.5"]  # dog, horse, sheep, cow
        if i == 1:
            lines.append("2 0.6 0.6 0.9 0.6 0.9 0.9 0.6 0.9")
        if i == 3:
            lines.append("25 0.6 0.1 0.9 0.1 0.9 0.4 0.6 0.4")  # umbrella
        (root / "labels" / "train2017").mkdir(parents=True, exist_ok=True)
        (root / "labels" / "train2017" / f"{stem}.txt").write_text("\n".join(lines) + "\n")


def test_instance_granularity_keeps_photos_with_road_classes(tmp_path):
    _yolo(tmp_path)
    by_image = load_outlier_source(tmp_path)
    assert len(by_image) == 3  # the photo with a car is dropped whole
    src = load_outlier_source(tmp_path, granularity="instance")
    assert src.keys == ["000000000000#0", "000000000001#0", "000000000002#0",
                        "000000000003#0", "000000000003#1"]
    assert src.categories == ["dog", "horse", "sheep", "cow", "umbrella"]
    horse = src[1]  # the horse beside the car: the car stays background (an inlier)
    assert horse.mask.any() and np.array_equal(horse.aux_mask, horse.mask)
    assert not horse.aux_mask[30:, 30:].any()
    cow = src[3]  # its photo's other kept object is an anomaly of the auxiliary image too
    assert cow.aux_mask.sum() > cow.mask.sum() and (cow.aux_mask | cow.mask).sum() == \
        cow.aux_mask.sum()
    train, held = default_outlier_split(src, seed=0, val_fraction=0.4)
    groups = lambda s: {e.group for e in s.entries}  # noqa: E731
    assert groups(train).isdisjoint(groups(held)) and len(train) + len(held) == len(src)
    others, classes = src.split_by_category(["umbrella"])
    assert classes.categories == ["umbrella"] and "umbrella" not in others.categories


# --- compositing ---------------------------------------------------------------------------

class _Objects:
    """A minimal outlier source: one red disc on black."""

    def __init__(self):
        from flowclas_ros.data.outlier_sources import OutlierObject

        yy, xx = np.mgrid[0:50, 0:40]
        mask = (yy - 25) ** 2 + (xx - 20) ** 2 < 18 ** 2
        img = np.zeros((50, 40, 3), np.uint8)
        img[mask] = (220, 30, 30)
        self.obj = OutlierObject(img, mask, "disc", category="disc")
        self.entries = [type("E", (), {"key": "disc"})()]

    def __len__(self):
        return 1

    def __getitem__(self, i):
        return self.obj


def _road_frame(h=120, w=200):
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = (60, 140, 60)  # grass
    img[: h // 3] = (150, 190, 240)  # sky
    ground = np.zeros((h, w), bool)
    for y in range(h // 2, h):  # a road widening towards the camera
        half = int((y - h // 2) / (h / 2) * w * 0.45) + 2
        ground[y, w // 2 - half: w // 2 + half] = True
    img[ground] = (110, 110, 115)
    return img, ground


def test_composited_objects_stand_on_the_road_at_perspective_scale():
    img, road = _road_frame()
    ground = Ground(road, horizon=60.0)
    comp = Compositor(_Objects(), CompositeConfig(objects=(1, 1), min_height_px=4))
    heights, feet = [], []
    for seed in range(30):
        c = comp(img, np.zeros(road.shape, np.uint8), ground, np.random.default_rng(seed))
        if not c.objects:
            continue
        y0, x0, oh, ow = c.objects[0]["box"]
        foot_y = y0 + oh - 1
        assert road[foot_y, x0 + ow // 2]  # the foot point is on the road, below the horizon
        assert foot_y > ground.horizon
        assert set(np.unique(c.label)) <= {INLIER, ANOMALY} and (c.label == ANOMALY).any()
        changed = np.abs(c.image.astype(int) - img.astype(int)).sum(2) > 0
        rows = np.flatnonzero(changed.any(1))
        assert rows.min() >= y0 and rows.max() <= foot_y + 0.3 * ow + 2  # object and shadow only
        ratio = oh / (foot_y - ground.horizon)
        assert 0.15 <= ratio <= 1.45
        heights.append(oh)
        feet.append(foot_y)
    assert len(heights) >= 20
    assert np.corrcoef(feet, heights)[0, 1] > 0.3  # nearer (lower) objects are larger
    # the same draw gives the same frame
    a = comp(img, np.zeros(road.shape, np.uint8), ground, np.random.default_rng(7))
    b = comp(img, np.zeros(road.shape, np.uint8), ground, np.random.default_rng(7))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)


def test_light_matching_moves_the_object_towards_the_scene():
    obj = np.full((10, 10, 3), 200.0)
    weight = np.ones((10, 10))
    scene = np.full((100, 3), 50.0)
    assert match_light(obj, weight, scene, 0.0, 0.0).mean() == pytest.approx(200.0)
    half = match_light(obj, weight, scene, 0.5, 0.0).mean()
    full = match_light(obj, weight, scene, 1.0, 0.0).mean()
    assert 50.0 < half < 200.0 and full == pytest.approx(50.0)


def test_ground_estimate_finds_the_road_of_an_unlabelled_frame():
    img, road = _road_frame(240, 400)
    g = estimate_ground(img, horizon_fraction=0.45)
    inter = (g.mask & road).sum()
    assert inter / road.sum() > 0.8 and inter / max(g.mask.sum(), 1) > 0.9
    assert 0.25 * 240 <= g.horizon <= 0.7 * 240
    assert ground_from_mask(road).horizon == pytest.approx(0.5 * 240, abs=8)


# --- feature-grid labels and photometric augmentation -----------------------------------------

def test_area_grid_labels():
    lab = torch.zeros(1, 8, 8, dtype=torch.uint8)
    lab[0, :4, :4] = ANOMALY  # cell (0, 0): all anomaly
    lab[0, :2, 4:8] = ANOMALY  # cell (0, 1): half anomaly
    lab[0, 4, 4] = ANOMALY  # cell (1, 1): one pixel: mixed
    lab[0, 4:8, :2] = VOID  # cell (1, 0): half void
    area = grid_labels(lab, (2, 2), pad_multiple=4, mode="area")
    assert area[0].tolist() == [[ANOMALY, ANOMALY], [VOID, VOID]]
    nearest = grid_labels(lab, (2, 2), pad_multiple=4, mode="nearest")
    assert nearest.shape == area.shape


def test_photometric_is_seeded_and_off_by_default():
    img = np.random.default_rng(0).integers(0, 256, (32, 48, 3), np.uint8)
    rng = np.random.default_rng(1)
    assert photometric(img, PhotometricConfig(), rng) is img
    assert rng.random() == np.random.default_rng(1).random()  # disabled: no draw was made
    cfg = PhotometricConfig(enabled=True, blur_prob=1.0, jpeg_prob=1.0)
    a = photometric(img, cfg, np.random.default_rng(3))
    b = photometric(img, cfg, np.random.default_rng(3))
    assert a.shape == img.shape and a.dtype == np.uint8 and np.array_equal(a, b)
    assert not np.array_equal(a, img)


# --- the protocol on the real data -------------------------------------------------------------

@pytest.mark.real_data
@pytest.mark.slow
def test_protocol_builds_and_scores(shared_data, tmp_path):
    from flowclas_ros.data.protocol_sets import ProtocolConfig, build_protocol, load_protocol
    from flowclas_ros.evaluation.protocol import SELECTION_PARTS, evaluate_protocol

    cfg = ProtocolConfig(limit=3)
    desc = build_protocol(shared_data, tmp_path / "p", cfg, log=lambda m: None)
    assert load_protocol(tmp_path / "p")["parts"].keys() == desc["parts"].keys()
    for part in cfg.parts:
        ds = build_dataset("folder", tmp_path / "p" / part)
        assert 3 <= len(ds) <= 6  # camvid_hardcopy: 3 per split (val, test)
        labels = np.concatenate([s.label.ravel() for s in ds])
        assert set(np.unique(labels)) <= {INLIER, ANOMALY, VOID}
        assert (ANOMALY in labels) == (part not in ("kitti_clean", "cityscapes_clean")), part
    first = build_dataset("folder", tmp_path / "p" / "kitti_pasted")[0]
    assert first.image.shape[1] / first.image.shape[0] == pytest.approx(16 / 9, abs=0.01)

    def oracle(sample):  # knows the answer: perfect ranking
        return (sample.label == ANOMALY).astype(np.float32) + \
            np.random.default_rng(0).random(sample.label.shape, dtype=np.float32) * 0.1

    r = evaluate_protocol(oracle, tmp_path / "p", fpr=0.05)
    assert r["score"] == pytest.approx(1.0)
    assert all(r["parts"][p]["auprc"] == pytest.approx(1.0) for p in SELECTION_PARTS)
    assert r["parts"]["kitti_clean"]["fpr_at_threshold"] <= 0.05
    rand = evaluate_protocol(lambda s: np.random.default_rng(1).random(s.label.shape),
                             tmp_path / "p", fpr=0.05, parts=SELECTION_PARTS + ("kitti_clean",))
    assert rand["score"] < 0.6
