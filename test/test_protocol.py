"""The validation protocol.

New inlier readers, instance-level outliers, compositing, grid labels, photometric
augmentation, the protocol's build and scoring (the last on ../shared/data).
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_outliers import write_rgb

from flowclas_ros.data.compositing import (
    CompositeConfig,
    Compositor,
    Ground,
    estimate_ground,
    ground_from_mask,
    match_light,
)
from flowclas_ros.data.datasets import build_dataset
from flowclas_ros.data.outlier_sources import default_outlier_split, load_outlier_source
from flowclas_ros.labels import ANOMALY, INLIER, VOID
from flowclas_ros.training.augment import photometric
from flowclas_ros.training.config import PhotometricConfig
from flowclas_ros.training.feature_cache import grid_labels

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


# --- the small-obstacle parts at camera resolution (issue 18) --------------------------------

HIRES_NAMES = {  # a tiny hires-road folder: drive -> frame indices
    "fmvg_data": (2, 4), "cgebbe_input": (2, 4), "sceneflow_image_02": (2, 3, 7, 8),
    "boston_image_2": (1, 2), "boston_testing": (10, 60, 85)}


def _write_road_jpg(path: Path, h: int, w: int, hood: bool = False, seed: int = 0):
    img, _ = _road_frame(h, w)
    img = np.clip(img.astype(int) + np.random.default_rng(seed).integers(-6, 7, img.shape), 0, 255)
    if hood:
        from flowclas_ros.data.hires_road import hood_mask

        img[hood_mask((h, w))] = (225, 225, 222)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img.astype(np.uint8)).save(path, quality=95)


def _tiny_data(root: Path) -> Path:
    """hires-road, kitti-road, one Cityscapes frame and eight COCO photographs, all tiny."""
    for drive, frames in HIRES_NAMES.items():
        for f in frames:
            if drive.startswith("boston"):
                _write_road_jpg(root / "hires-road" / "nuscenes-boston" / f"{drive}_{f:06d}.jpg",
                                180, 320, hood=True, seed=f)
            else:
                digits = 10 if drive != "sceneflow_image_02" else 6
                _write_road_jpg(root / "hires-road" / "kitti-raw" / f"{drive}_{f:0{digits}d}.jpg",
                                150, 480, seed=f)
    _write_road_jpg(root / "kitti-road" / "images" / "um_000001.jpg", 150, 480, seed=99)
    img, road = _road_frame(256, 512)
    cs = root / "cityscapes-sample"
    (cs / "leftImg8bit" / "train" / "aachen").mkdir(parents=True)
    Image.fromarray(img).save(cs / "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.jpg")
    ids = np.where(road, 0, 8).astype(np.uint8)
    ids[:80] = 10
    ids[-12:] = 255  # the ego car
    (cs / "gtFine" / "train" / "aachen").mkdir(parents=True)
    Image.fromarray(ids).save(
        cs / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelTrainIds.png")
    classes = (28, 24, 26, 77, 39, 16, 45, 77)  # suitcase backpack handbag teddy bottle dog bowl
    for i, c in enumerate(classes):
        stem = f"{i:012d}"
        write_rgb(root / "coco128-seg" / "images" / "train2017" / f"{stem}.jpg", 60, 60, i)
        (root / "coco128-seg" / "labels" / "train2017").mkdir(parents=True, exist_ok=True)
        (root / "coco128-seg" / "labels" / "train2017" / f"{stem}.txt").write_text(
            f"{c} 0.2 0.1 0.8 0.1 0.8 0.9 0.2 0.9\n")
    return root


@pytest.fixture(scope="module")
def tiny_protocol(tmp_path_factory):
    """Build the small-obstacle parts from the tiny data."""
    from flowclas_ros.data.obstacle_sets import HIRES_PARTS, ObstacleConfig
    from flowclas_ros.data.protocol_sets import ProtocolConfig, build_protocol

    root = _tiny_data(tmp_path_factory.mktemp("data"))
    out = tmp_path_factory.mktemp("protocol")
    cfg = ProtocolConfig(parts=HIRES_PARTS, obstacles=ObstacleConfig(cityscapes_variants=3))
    desc = build_protocol(root, out, cfg, log=lambda m: None,
                          road_fn=lambda im: _road_frame(*im.shape[:2])[1])  # the true road
    return root, out, desc


def test_hires_road_split_is_by_drive_and_disjoint(tmp_path):
    from flowclas_ros.data.hires_road import drive_and_frame, roles

    root = _tiny_data(tmp_path)
    sets = {s: set(build_dataset("hires_road", root / "hires-road", s).names)
            for s in ("train", "protocol", "protocol_pasted", "protocol_clean")}
    assert not sets["train"] & sets["protocol"]
    assert sets["protocol"] == sets["protocol_pasted"] | sets["protocol_clean"]
    assert not sets["protocol_pasted"] & sets["protocol_clean"]
    drives = {k: {drive_and_frame(n)[0] for n in v} for k, v in sets.items()}
    assert drives["train"] == {"fmvg_data", "sceneflow_image_02", "boston_image_2",
                               "boston_testing"}
    assert drives["protocol_clean"] == {"cgebbe_input", "boston_testing"}
    assert drives["protocol_pasted"] == {"sceneflow_image_02", "boston_testing"}
    # scene flow halves by index; boston_testing 52-80 share the drive of boston_image_2
    assert {"sceneflow_image_02_000002", "sceneflow_image_02_000003"} <= sets["train"]
    assert {"sceneflow_image_02_000007", "sceneflow_image_02_000008"} <= sets["protocol_pasted"]
    assert "boston_testing_000060" in sets["train"]
    assert "boston_testing_000010" in sets["protocol_pasted"]
    assert "boston_testing_000085" in sets["protocol_clean"]
    assert roles(["cgebbe_input_0000000002"]) == {"cgebbe_input_0000000002": "protocol_clean"}
    with pytest.raises(ValueError, match="known drive"):
        drive_and_frame("elsewhere_000001")
    ds = build_dataset("hires_road", root / "hires-road", "protocol_clean")
    lab = {s.name: s.label for s in ds}
    hood = lab["boston_testing_000085"] == VOID
    assert 0.05 < hood.mean() < 0.2 and hood[-1].all() and not hood[: 180 // 2].any()
    assert (lab["cgebbe_input_0000000002"] == INLIER).all()


@pytest.mark.real_data
def test_real_hires_road_split(shared_data):
    from flowclas_ros.data.hires_road import drive_and_frame

    root = shared_data / "hires-road"
    train = build_dataset("hires_road", root, "train").names
    protocol = build_dataset("hires_road", root, "protocol").names
    assert len(train) + len(protocol) == 509 and not set(train) & set(protocol)
    assert len(protocol) == 181
    pasted = {drive_and_frame(n)[0]
              for n in build_dataset("hires_road", root, "protocol_pasted").names}
    clean = {drive_and_frame(n)[0]
             for n in build_dataset("hires_road", root, "protocol_clean").names}
    assert pasted == {"sceneflow_image_02", "boston_testing"}
    assert clean == {"cgebbe_input", "boston_testing"}


def test_height_range_places_obstacles_on_the_road_at_perspective_scale():
    img, road = _road_frame(300, 600)
    ground = Ground(road, horizon=150.0)
    cfg = CompositeConfig(height_ratio=(0.1, 0.5), height_px=(8.0, 80.0), objects=(1, 1),
                          tries=40)
    comp = Compositor(_Objects(), cfg)
    heights = []
    for seed in range(40):
        c = comp(img, np.zeros(road.shape, np.uint8), ground, np.random.default_rng(seed))
        for o in c.objects:
            y0, x0, oh, ow = o["box"]
            foot = y0 + oh - 1
            assert road[foot, x0 + ow // 2] and 8 <= oh <= 81
            assert 0.09 <= oh / (foot - ground.horizon) <= 0.51  # k of a flat-ground camera
            heights.append(oh)
    assert len(heights) >= 30 and min(heights) < 16 and max(heights) > 40


def test_synthetic_obstacles_are_seeded_and_masked():
    from flowclas_ros.data.synthetic_obstacles import (
        DEFAULT_KINDS,
        KINDS,
        render,
        synthetic_source,
    )

    for kind in KINDS:
        a, b = render(kind, 5), render(kind, 5)
        assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
        assert a.mask.mean() > 0.2 and a.category == kind and a.image.dtype == np.uint8
        assert not np.array_equal(render(kind, 6).mask, a.mask) or \
            not np.array_equal(render(kind, 6).image, a.image)
    src = synthetic_source(7, seed=100)
    assert len(src) == 7 and src.categories[:len(DEFAULT_KINDS)] == list(DEFAULT_KINDS)
    assert src.keys[0] == "synthetic/box/100" and src[0].mask.any()


def test_obstacle_parts_labels_roads_and_objects(tiny_protocol):
    from flowclas_ros.data.obstacle_sets import HIRES_PARTS, OBSTACLE_PARTS, size_bucket

    root, out, desc = tiny_protocol
    assert desc["version"] == 2 and list(desc["parts"]) == list(HIRES_PARTS)
    assert desc["outliers"]["obstacles"]["coco"] >= 3  # the three held-out cargo classes at least
    assert desc["parts"]["obstacles_cityscapes"]["frames"] == 3
    assert desc["parts"]["hires_clean"]["frames"] == 3  # cgebbe 2, boston_testing 85
    n_objects = 0
    for part in HIRES_PARTS:
        d = out / part
        manifest = json.loads((d / "manifest.json").read_text())
        rows = {r["name"]: r for r in manifest["rows"]}
        for sample in build_dataset("folder", d):
            row = rows.pop(sample.name)
            roi = np.asarray(Image.open(d / "roads" / f"{sample.name}.png")) > 0
            assert set(np.unique(sample.label)) <= {INLIER, ANOMALY, VOID}
            assert not (roi & (sample.label == VOID)).any()
            assert roi[sample.label == ANOMALY].all()
            if sample.name.startswith("boston"):  # the hood is VOID
                from flowclas_ros.data.hires_road import hood_mask

                assert (sample.label[hood_mask(sample.label.shape)] == VOID).all()
            if part.startswith("cityscapes") or part.endswith("cityscapes"):
                assert (sample.label[-12:] == VOID).all() and sample.label.shape == (256, 512)
            for o in row["objects"]:
                y0, x0, oh, ow = o["box"]
                assert 8 <= o["height_px"] <= 80 and roi[y0 + oh - 1, x0 + ow // 2]
                px = int((sample.label[y0:y0 + oh, x0:x0 + ow] == ANOMALY).sum())
                assert px == o["pixels"] and o["bucket"] == size_bucket(px)
                n_objects += 1
            assert bool(row["objects"]) == bool((sample.label == ANOMALY).any())
            if part not in OBSTACLE_PARTS:
                assert not row["objects"]
    assert n_objects >= 6


def _oracle(sample):
    return (sample.label == ANOMALY).astype(np.float32) + \
        np.random.default_rng(0).random(sample.label.shape, dtype=np.float32) * 0.1


def test_obstacle_way_scoring_excludes_off_road_pixels(tiny_protocol):
    from flowclas_ros.evaluation.obstacle_scoring import evaluate_hires_parts

    _, out, _ = tiny_protocol

    def off_road_alarm(sample):  # the obstacles and everything off the road score high
        roi = np.asarray(Image.open(out / _part_of(out, sample.name) / "roads" /
                                    f"{sample.name}.png")) > 0
        return _oracle(sample) + (~roi).astype(np.float32) * 2.0

    r = evaluate_hires_parts(off_road_alarm, out, ("hires_clean", "obstacles_kitti"), fpr=0.05)
    k = r["parts"]["obstacles_kitti"]
    assert k["road_auprc"] == pytest.approx(1.0) and k["road_fpr95"] == 0.0
    assert k["auprc"] < 0.5 and k["fpr95"] > 0.3
    assert r["parts"]["hires_clean"]["fpr_at_threshold"] <= 0.05
    exact = lambda s: (s.label == ANOMALY).astype(np.float32)  # noqa: E731
    perfect = evaluate_hires_parts(exact, out, ("obstacles_kitti",), fpr=0.05)["parts"]
    assert perfect["obstacles_kitti"]["recall"] == 1.0
    assert perfect["obstacles_kitti"]["precision"] == 1.0


def test_an_ignore_mask_voids_its_pixels_in_every_frame(tiny_protocol):
    """Check that the robot's ignore mask keeps a hood that scores high out of the figures."""
    from flowclas_ros.evaluation.obstacle_scoring import evaluate_hires_parts, part_dataset
    from flowclas_ros.outputs.ignore_mask import IgnoreMask

    _, out, _ = tiny_protocol
    shape = next(iter(part_dataset(out / "obstacles_kitti"))).label.shape
    hood = np.zeros(shape, bool)
    hood[-shape[0] // 5:] = True
    ignore = IgnoreMask(hood)

    def hood_alarm(sample):
        return _oracle(sample) + np.where(hood, 2.0, 0.0).astype(np.float32)

    kw = {"fpr": 0.05, "threshold": 0.5}
    plain = evaluate_hires_parts(hood_alarm, out, ("obstacles_kitti",), **kw)["parts"]
    masked = evaluate_hires_parts(hood_alarm, out, ("obstacles_kitti",), ignore=ignore,
                                  **kw)["parts"]
    assert plain["obstacles_kitti"]["fpr_at_threshold"] > 0.05
    assert masked["obstacles_kitti"]["fpr_at_threshold"] == 0.0
    assert masked["obstacles_kitti"]["pixels"] < plain["obstacles_kitti"]["pixels"]
    for sample in part_dataset(out / "obstacles_kitti", ignore):
        assert (sample.label[hood] == VOID).all()


def _part_of(out: Path, name: str) -> str:
    return next(p.parent.parent.name for p in out.glob(f"*/images/{name}.jpg"))


def test_component_recall_precision_and_f1_by_size():
    from flowclas_ros.evaluation.obstacle_scoring import ComponentCounts

    label = np.zeros((200, 300), np.uint8)
    roi = np.zeros_like(label, bool)
    roi[50:] = True
    boxes = [(60, 10, 10, 10), (60, 40, 30, 30), (100, 100, 80, 80)]  # 100, 900, 6400 px
    for y0, x0, h, w in boxes:
        label[y0:y0 + h, x0:x0 + w] = ANOMALY
    flagged = np.zeros_like(roi)
    flagged[60:70, 10:20] = True  # small: all flagged -> found
    flagged[60:72, 40:70] = True  # medium: 360 of 900 -> missed (but touches it)
    flagged[100:150, 100:180] = True  # large: 4000 of 6400 -> found
    flagged[190:195, 250:255] = True  # a false alarm on the road
    flagged[10:20, 250:260] = True  # a false alarm off the road: not counted
    c = ComponentCounts()
    c.update(flagged, roi, label, boxes)
    r = c.result(frames=1)
    assert (r["recall_small"], r["recall_medium"], r["recall_large"]) == (1.0, 0.0, 1.0)
    assert r["pred_components"] == 4 and r["precision"] == pytest.approx(3 / 4)
    assert r["recall"] == pytest.approx(2 / 3)
    assert r["f1_small"] == pytest.approx(2 * 0.75 / 1.75) and r["f1_medium"] == 0.0
    assert r["f1"] == pytest.approx(2 * 0.75 * (2 / 3) / (0.75 + 2 / 3))
    assert r["fp_components_per_frame"] == 1.0


def _legacy_protocol(root: Path, version: int = 1) -> Path:
    """Write a hand-made protocol folder of the old format: three selection parts, kitti_clean."""
    rng = np.random.default_rng(3)
    parts = ("kitti_pasted", "idd_pasted", "camvid_pasted", "kitti_clean")
    for part in parts:
        for i in range(2):
            img = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
            lab = np.zeros((24, 32), np.uint8)
            if part != "kitti_clean":
                lab[5:12, 8:20] = ANOMALY
                lab[0, :4] = VOID
            (root / part / "images").mkdir(parents=True, exist_ok=True)
            (root / part / "labels").mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(root / part / "images" / f"f{i}.png")
            Image.fromarray(lab).save(root / part / "labels" / f"f{i}.png")
    (root / "protocol.json").write_text(json.dumps(
        {"format": "flowclas_ros.validation_protocol", "version": version,
         "parts": {p: {"frames": 2} for p in parts}}))
    return root


def _noisy(sample):  # a deterministic imperfect scorer
    x = sample.image.astype(np.float32).mean(2) / 255.0
    return x + (sample.label == ANOMALY) * 0.4


def test_old_protocol_folder_scores_as_before(tmp_path):
    from flowclas_ros.evaluation.metrics import pixel_metrics, threshold_at_fpr
    from flowclas_ros.evaluation.protocol import SELECTION_PARTS, evaluate_protocol

    root = _legacy_protocol(tmp_path / "p")
    r = evaluate_protocol(_noisy, root, fpr=0.05)
    assert set(r) == {"parts", "threshold", "fpr", "seconds", "score"}
    frames = {p: list(build_dataset("folder", root / p))
              for p in SELECTION_PARTS + ("kitti_clean",)}
    clean = frames["kitti_clean"]
    t = threshold_at_fpr(np.stack([_noisy(s) for s in clean]), np.stack([s.label for s in clean]),
                         0.05)
    assert r["threshold"] == t
    want = []
    for p in SELECTION_PARTS:
        m = pixel_metrics([_noisy(s) for s in frames[p]], [s.label for s in frames[p]])
        assert all(r["parts"][p][k] == m[k] for k in m)
        want.append((m["auprc"] - m["fpr95"]) / 2 + 0.5)
    assert r["score"] == pytest.approx(float(np.mean(want)), abs=0)


def test_selection_score_weighs_small_obstacles_as_much_as_the_rest(tiny_protocol, tmp_path):
    import shutil

    from flowclas_ros.data.obstacle_sets import HIRES_PARTS
    from flowclas_ros.evaluation.protocol import SCORE_PARTS, evaluate_protocol

    _, out, _ = tiny_protocol
    root = _legacy_protocol(tmp_path / "p", version=2)
    desc = json.loads((root / "protocol.json").read_text())
    for part in HIRES_PARTS:
        shutil.copytree(out / part, root / part)
        desc["parts"][part] = {}
    (root / "protocol.json").write_text(json.dumps(desc))
    legacy = evaluate_protocol(_noisy, root, parts=("kitti_pasted", "idd_pasted",
                                                    "camvid_pasted", "kitti_clean"))
    full = evaluate_protocol(_noisy, root, parts=SCORE_PARTS)
    assert full["score_legacy"] == legacy["score"]
    assert full["score"] == pytest.approx(0.5 * legacy["score"] + 0.5 * full["score_obstacles"])
    assert 0.0 <= full["score_obstacles"] <= 1.0 and "hires_threshold" in full
    assert evaluate_protocol(_oracle, root)["score"] == pytest.approx(1.0)


@pytest.mark.real_data
def test_real_obstacle_parts_build(shared_data, tmp_path):
    from flowclas_ros.data.obstacle_sets import HIRES_PARTS
    from flowclas_ros.data.protocol_sets import ProtocolConfig, build_protocol

    desc = build_protocol(shared_data, tmp_path, ProtocolConfig(parts=HIRES_PARTS, limit=1),
                          log=lambda m: None, road_fn=lambda im: estimate_ground(im).mask)
    sizes = {p: json.loads((tmp_path / p / "manifest.json").read_text())["rows"][0]["size"]
             for p in HIRES_PARTS}
    assert sizes["obstacles_cityscapes"] == [1024, 2048] and sizes["obstacles_kitti"][1] > 1200
    assert sizes["obstacles_nuscenes"] == [900, 1600]
    assert desc["outliers"]["obstacles"]["coco"] >= 16
