"""The KITTI demo sequence: obstacles that stay put on the road, sized by the camera, labelled.

Built on tiny generated inputs (a fake ``hires-road`` drive seen by a quarter-size KITTI camera
and a fake ``coco128-seg``); the shipped ``models/demo_sequence_kitti`` is checked against the
real frames where ``../shared/data`` exists.
"""
import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from flowclas_ros.data.demo_sequence import (
    KITTI_CAMERA,
    Camera,
    SequenceConfig,
    build_obstacle_sequence,
    draw_look,
    estimate_motion,
    paste_object,
)
from flowclas_ros.data.frame_sources import iter_frames
from flowclas_ros.data.outlier_sources import OutlierObject
from flowclas_ros.paths import SOURCE_ROOT

H, W = 94, 310  # KITTI's 375x1242 at a quarter
CAMERA = Camera(focal=180.0, cx=152.0, cy=43.0, height=1.65)


def _road(h: int = H, w: int = W) -> np.ndarray:
    """Return the fake drive's road: from the horizon down, 4 m either side of the camera."""
    rows = np.arange(h, dtype=np.float64)[:, None]
    cols = np.arange(w, dtype=np.float64)[None, :]
    z = np.where(rows > CAMERA.cy + 1, CAMERA.focal * CAMERA.height
                 / np.maximum(rows - CAMERA.cy, 1e-6), 1e6)
    return (rows > CAMERA.cy + 1) & (np.abs((cols - CAMERA.cx) * z / CAMERA.focal) < 4.0)


def _fake_data(root):
    rng = np.random.default_rng(0)
    kitti = root / "hires-road" / "kitti-raw"
    kitti.mkdir(parents=True)
    road = _road()
    for i in range(10):  # every second raw frame, as in the real drive
        img = np.zeros((H, W, 3), np.uint8)
        img[:] = (70, 120, 60)  # grass
        img[: int(CAMERA.cy)] = (150, 190, 230)  # sky
        img[road] = (100, 100, 104)
        img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(kitti / f"cgebbe_input_{2 * i:010d}.jpg", quality=95)
    Image.fromarray(img).save(kitti / "fmvg_data_0000000000.jpg")  # a training drive: unused
    coco = root / "coco128-seg"
    (coco / "images" / "train2017").mkdir(parents=True)
    (coco / "labels" / "train2017").mkdir(parents=True)
    # YOLO class indices: suitcase, backpack, handbag, teddy bear, bottle, suitcase, handbag
    for i, c in enumerate((28, 24, 26, 77, 39, 28, 26)):
        pic = np.zeros((60, 60, 3), np.uint8)
        pic[:] = rng.integers(0, 255, 3)
        Image.fromarray(pic).save(coco / "images" / "train2017" / f"{i:012d}.jpg")
        (coco / "labels" / "train2017" / f"{i:012d}.txt").write_text(
            f"{c} 0.2 0.1 0.8 0.1 0.8 0.9 0.2 0.9\n")
    return root / "hires-road", coco


def _config(**kw) -> SequenceConfig:
    base = {"start": 0, "frames": 10, "camera": CAMERA, "metres_per_frame": 2.0,
            "min_height_px": 3.0, "first_near_frame": 3,
            "lateral_m": (-6.0, 6.0)}  # wider than the road: off-road offsets must be refused
    return SequenceConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    hires, coco = _fake_data(tmp_path_factory.mktemp("data"))
    out = tmp_path_factory.mktemp("seq") / "demo_sequence_kitti"
    summary = build_obstacle_sequence(hires, coco, out, seed=0, config=_config(),
                                      road_fn=lambda im: _road(*im.shape[:2]))
    return hires, coco, out, summary, json.loads((out / "sequence.json").read_text())


def _appearances(seq: dict) -> dict[int, list[tuple[int, dict]]]:
    out: dict[int, list] = {}
    for k, frame in enumerate(seq["frames"]):
        for o in frame["objects"]:
            out.setdefault(o["obstacle"], []).append((k, o))
    return out


def test_obstacles_grow_as_they_come_closer(built):
    _, _, _, summary, seq = built
    assert summary["frames"] == 10 and summary["obstacles"] >= 2
    assert all(1 <= n <= 3 for n in summary["per_frame"][:5])
    for track in _appearances(seq).values():
        dist = [o["distance_m"] for _, o in track]
        height = [o["height_px"] for _, o in track]
        assert [k for k, _ in track] == list(range(track[0][0], track[-1][0] + 1))  # no gaps
        assert all(a > b for a, b in zip(dist, dist[1:]))  # 2 m nearer every frame
        assert all(a <= b for a, b in zip(height, height[1:]))
        if len(track) > 2:
            assert height[-1] > height[0]
        for d, h, (_, o) in zip(dist, height, track):  # the pinhole camera, not a random scale
            obstacle = seq["obstacles"][o["obstacle"]]
            assert abs(h - CAMERA.focal * obstacle["height_m"] / d) <= 1.0
            foot_row = o["box"][0] + o["box"][2] - 1
            assert abs(foot_row - CAMERA.foot(d, o["lateral_m"])[0]) <= 1.0


def test_obstacles_stand_on_the_road_and_are_the_same_object(built):
    _, _, _, _, seq = built
    road = _road()
    for track in _appearances(seq).values():
        for _, o in track:
            y0, x0, h, w = o["box"]
            assert road[y0 + h - 1, x0 + w // 2], o
    for ob in seq["obstacles"]:
        assert 0.2 <= ob["height_m"] <= 0.6 and ob["object"]


def test_labels_are_the_pasted_pixels(built):
    hires, _, out, _, seq = built
    sources = sorted((hires / "kitti-raw").glob("cgebbe_input_*.jpg"))
    for k, frame in enumerate(seq["frames"]):
        label = np.asarray(Image.open(out / "labels" / f"frame_{k:04d}.png"))
        assert label.shape == (H, W) and set(np.unique(label)) <= {0, 1}
        boxes = np.zeros_like(label, bool)
        for o in frame["objects"]:
            y0, x0, h, w = o["box"]
            boxes[y0:y0 + h, x0:x0 + w] = True
        assert not (label.astype(bool) & ~boxes).any()
        assert int(label.sum()) <= sum(o["pixels"] for o in frame["objects"])
        assert (label.sum() > 0) == bool(frame["objects"])
        img = np.asarray(Image.open(out / frame["file"]), np.float32)
        src = np.asarray(Image.open(sources[k]).convert("RGB"), np.float32)
        assert img.shape == (H, W, 3)
        far = ~ndimage.binary_dilation(boxes, np.ones((9, 41), bool))  # clear of shadows too
        assert np.abs(img - src)[far].mean() < 4  # only JPEG noise where nothing was pasted


def test_paste_object_labels_exactly_the_matte():
    out = np.full((60, 80, 3), 100.0, np.float32)
    label = np.zeros((60, 80), np.uint8)
    mask = np.zeros((40, 40), bool)
    mask[5:35, 10:30] = True
    obj = OutlierObject(np.full((40, 40, 3), (250, 10, 10), np.uint8), mask, "test")
    look = {"light": 0.0, "contrast": 0.0, "blur": 0.0, "noise": 0.0, "feather": 0.0,
            "shadow": 0.0}
    info = paste_object(out, label, obj, (50, 40), 20.0, look, np.random.default_rng(0))
    y0, x0, h, w = info["box"]
    assert (y0 + h - 1, h) == (50, 20) and label.sum() == info["pixels"] > 0
    assert (out[label == 1][:, 0] > 200).all() and (out[label == 0] == 100).all()
    assert paste_object(out, label, obj, (59, 2), 20.0, look, np.random.default_rng(0)) is None
    looks = [draw_look(SequenceConfig().look, np.random.default_rng(3)) for _ in range(2)]
    assert looks[0] == looks[1]


def test_the_sequence_is_deterministic_for_a_seed(built, tmp_path):
    hires, coco, out, _, seq = built
    again = tmp_path / "again"
    build_obstacle_sequence(hires, coco, again, seed=0, config=_config(),
                            road_fn=lambda im: _road(*im.shape[:2]))
    for name in ["sequence.json", "ATTRIBUTION.md", "frame_0003.jpg", "labels/frame_0003.png"]:
        assert (again / name).read_bytes() == (out / name).read_bytes(), name
    other = tmp_path / "other"
    build_obstacle_sequence(hires, coco, other, seed=1, config=_config(),
                            road_fn=lambda im: _road(*im.shape[:2]))
    assert json.loads((other / "sequence.json").read_text())["obstacles"] != seq["obstacles"]


def test_a_folder_player_reads_only_the_frames(built):
    _, _, out, _, _ = built
    frames = list(iter_frames(out))  # labels/, sequence.json and ATTRIBUTION.md are skipped
    assert len(frames) == 10 and frames[0].shape == (H, W, 3)
    text = (out / "ATTRIBUTION.md").read_text()
    assert "CC BY-NC-SA 3.0" in text and "Geiger" in text and "cgebbe_input_0000000018" in text


def test_estimate_motion_follows_the_road():
    """A textured flat road seen by the KITTI camera, 1.7 m nearer and 0.1 m left each frame."""
    tex = np.random.default_rng(0).normal(0, 1, (2000, 400))
    tex = ndimage.gaussian_filter(tex, 1.5) * 60 + 120  # 5 cm cells: X -10..10, Z 0..100 m
    rows, cols = np.mgrid[0:375, 0:1242].astype(np.float64)
    below = rows > KITTI_CAMERA.cy + 2
    z = np.where(below, KITTI_CAMERA.focal * KITTI_CAMERA.height
                 / np.maximum(rows - KITTI_CAMERA.cy, 1e-6), 99.0)
    x = (cols - KITTI_CAMERA.cx) * z / KITTI_CAMERA.focal

    def frame(k: int) -> np.ndarray:
        zz, xx = z + 1.7 * k, x + 0.1 * k  # points come 1.7 m nearer, 0.1 m to the left
        g = ndimage.map_coordinates(tex, [zz / 0.05, (xx + 10) / 0.05], order=1, mode="wrap")
        g = np.where(below, g, 200.0)
        return np.repeat(np.clip(g, 0, 255).astype(np.uint8)[..., None], 3, axis=2)

    fwd, lat = estimate_motion([frame(0), frame(1), frame(2)])
    assert np.allclose(fwd, 1.7, atol=0.1) and np.allclose(lat, -0.1, atol=0.1)


@pytest.mark.real_data
def test_shipped_kitti_sequence_is_small_attributed_and_labelled(shared_data):
    seq = SOURCE_ROOT / "models" / "demo_sequence_kitti"
    if not seq.is_dir():
        pytest.skip("models/demo_sequence_kitti not built")
    files = sorted(seq.glob("frame_*.jpg"))
    size = sum(p.stat().st_size for p in seq.rglob("*") if p.is_file())
    assert 10 <= len(files) <= 30 and size < 2.6e6
    text = (seq / "ATTRIBUTION.md").read_text()
    assert "CC BY-NC-SA 3.0" in text and "Geiger" in text and "COCO" in text
    meta = json.loads((seq / "sequence.json").read_text())
    heights = []
    for f, frame in zip(files, meta["frames"]):
        label = np.asarray(Image.open(seq / "labels" / f.with_suffix(".png").name))
        img = Image.open(f)
        assert img.size == (1242, 375) and label.shape == (375, 1242)
        assert 1 <= len(frame["objects"]) <= 3 and label.sum() > 0
        heights += [o["height_px"] for o in frame["objects"]]
        src = shared_data / "hires-road" / "kitti-raw" / f"{frame['kitti_frame']}.jpg"
        if src.is_file():  # the real drive's frame, changed only near the obstacles
            diff = np.abs(np.asarray(img, np.float32) - np.asarray(Image.open(src), np.float32))
            assert diff[:150].mean() < 3
    assert min(heights) <= 10 and max(heights) >= 55
