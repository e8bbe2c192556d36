"""Outlier sources (COCO JSON, YOLO-seg, mask PNGs), the class filter, splits and pasting."""
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from coco_encode import rle_counts_to_string, rle_encode
from PIL import Image

from flowclas_ros.data.coco import (
    ALLO_COCO_IDS,
    COCO_CLASSES,
    ROAD_SCENE_COCO_IDS,
    YOLO_TO_COCO_ID,
    polygons_to_mask,
    rle_counts_from_string,
    rle_decode,
    segmentation_to_mask,
)
from flowclas_ros.data.outlier_sources import (
    OutlierObject,
    OutlierSource,
    default_outlier_split,
    load_outlier_source,
)
from flowclas_ros.data.pasting import (
    OutlierPaster,
    PasteConfig,
    fit_to_size,
    mask_bbox,
    rescale_object,
)


def write_rgb(path: Path, h: int, w: int, seed: int = 0) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return arr


# ------------------------------------------------------------------------------------------
# Decoding


def test_class_tables():
    assert len(COCO_CLASSES) == 80 and len(set(YOLO_TO_COCO_ID)) == 80
    names = dict(COCO_CLASSES)
    assert {names[i] for i in ROAD_SCENE_COCO_IDS} >= {"person", "bicycle", "car", "motorcycle",
                                                       "bus", "truck", "train", "traffic light",
                                                       "stop sign"}
    assert YOLO_TO_COCO_ID[2] == 3 and YOLO_TO_COCO_ID[11] == 13 and YOLO_TO_COCO_ID[79] == 90
    assert names[78] == "microwave" and ALLO_COCO_IDS <= set(names)


def test_rle_uncompressed_hand_made():
    # Column-major runs: column 0 = 0,1,0 ; column 1 = 1,1,0.
    mask = rle_decode({"size": [3, 2], "counts": [1, 1, 1, 2, 1]})
    assert np.array_equal(mask, np.array([[0, 1], [1, 1], [0, 0]], dtype=bool))
    assert rle_encode(mask)["counts"] == [1, 1, 1, 2, 1]
    # A mask starting with a 1 begins with an empty run of 0s.
    assert rle_encode(np.ones((2, 2), bool))["counts"] == [0, 4]
    with pytest.raises(ValueError, match="sum"):
        rle_decode({"size": [3, 3], "counts": [1, 2]})


def test_rle_compressed_hand_made():
    assert rle_counts_from_string("032") == [0, 3, 2]
    # The 4th count is stored as a delta from the 2nd: 2 - 10 = -8 -> one sign-extended char 'H'.
    assert rle_counts_from_string("5:1H") == [5, 10, 1, 2]
    assert rle_counts_to_string([5, 10, 1, 2]) == "5:1H"
    assert rle_counts_from_string(b"032") == [0, 3, 2]
    m = rle_decode({"size": [3, 6], "counts": "5:1H"})
    assert m.sum() == 10 + 2
    assert np.array_equal(m, rle_decode({"size": [3, 6], "counts": [5, 10, 1, 2]}))


def test_rle_roundtrip_random():
    rng = np.random.default_rng(0)
    for _ in range(20):
        h, w = rng.integers(1, 40, 2)
        mask = rng.random((h, w)) < rng.random()
        rle = rle_encode(mask)
        assert np.array_equal(rle_decode(rle), mask)
        s = rle_counts_to_string(rle["counts"])
        assert rle_counts_from_string(s) == rle["counts"]
        assert np.array_equal(rle_decode({"size": rle["size"], "counts": s}), mask)
    big = [0, 100000, 3, 70000, 5]  # multi-chunk values and large negative deltas
    assert rle_counts_from_string(rle_counts_to_string(big)) == big


def test_polygons():
    m = polygons_to_mask([[1, 1, 4, 1, 4, 3, 1, 3]], 5, 6)
    expect = np.zeros((5, 6), bool)
    expect[1:4, 1:5] = True
    assert np.array_equal(m, expect)
    # Two polygons union; degenerate polygons (< 3 points) are skipped.
    m2 = polygons_to_mask([[0, 0, 1, 0, 1, 1, 0, 1], [4, 3, 5, 3, 5, 4], [2, 2, 3, 3]], 5, 6)
    assert m2[0:2, 0:2].all() and m2[3, 4] and not m2[2, 2]
    tri = polygons_to_mask([[0, 0, 99, 0, 0, 99]], 100, 100)
    assert abs(tri.sum() - 100 * 100 / 2) < 250  # area of the triangle, give or take its border
    assert np.array_equal(segmentation_to_mask(rle_encode(expect), 5, 6), expect)
    with pytest.raises(ValueError, match="differs"):
        segmentation_to_mask(rle_encode(expect), 6, 5)


# ------------------------------------------------------------------------------------------
# Sources


def make_coco(root: Path) -> dict:
    """COCO root: 4 images; 1 has a car (dropped), 1 has no annotation (dropped)."""
    imgs = {1: (20, 30), 2: (24, 16), 3: (10, 12), 4: (8, 8)}
    for i, (h, w) in imgs.items():
        write_rgb(root / "train2017" / f"{i:012d}.jpg", h, w, i)
    crowd = np.zeros((24, 16), bool)
    crowd[2:10, 3:7] = True
    compressed = rle_encode(np.pad(np.ones((4, 4), bool), ((3, 3), (4, 4))))
    compressed["counts"] = rle_counts_to_string(compressed["counts"])
    anns = [
        {"id": 1, "image_id": 1, "category_id": 18, "iscrowd": 0,
         "segmentation": [[2, 2, 10, 2, 10, 8, 2, 8]]},
        {"id": 2, "image_id": 1, "category_id": 3, "iscrowd": 0,
         "segmentation": [[12, 12, 20, 12, 20, 18]]},
        {"id": 3, "image_id": 2, "category_id": 18, "iscrowd": 0,
         "segmentation": [[1, 12, 8, 12, 8, 20, 1, 20]]},
        {"id": 4, "image_id": 2, "category_id": 28, "iscrowd": 1,
         "segmentation": rle_encode(crowd)},
        {"id": 5, "image_id": 3, "category_id": 44, "iscrowd": 0, "segmentation": compressed},
    ]
    data = {"images": [{"id": i, "file_name": f"{i:012d}.jpg", "height": h, "width": w}
                       for i, (h, w) in imgs.items()],
            "annotations": anns,
            "categories": [{"id": cid, "name": n} for cid, n in COCO_CLASSES]}
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(data))
    return {"crowd": crowd, "compressed": rle_decode(compressed)}


def test_coco_json(tmp_path):
    masks = make_coco(tmp_path)
    src = load_outlier_source(tmp_path)
    assert src.kind == "coco_json" and src.keys == ["000000000002", "000000000003"]
    assert src.info["dropped_by_filter"] == 1
    obj = src[0]
    assert obj.image.shape == (24, 16, 3) and obj.mask.shape == (24, 16) and obj.mask.dtype == bool
    dog = polygons_to_mask([[1, 12, 8, 12, 8, 20, 1, 20]], 24, 16)
    assert np.array_equal(obj.mask, dog | masks["crowd"])  # all instances, crowd RLE included
    assert np.array_equal(src[1].mask, masks["compressed"])
    no_crowd = load_outlier_source(tmp_path / "annotations" / "instances_train2017.json",
                                   include_crowd=False, split="ignored for a .json")
    assert np.array_equal(no_crowd[0].mask, dog)
    unfiltered = load_outlier_source(tmp_path, filter="none")
    assert unfiltered.keys == ["000000000001", "000000000002", "000000000003"]
    assert len(load_outlier_source(tmp_path, filter="allo")) == 3


def test_coco_json_errors(tmp_path):
    make_coco(tmp_path)
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="not a COCO instances file"):
        load_outlier_source(bad)
    (tmp_path / "train2017").rename(tmp_path / "moved")
    with pytest.raises(FileNotFoundError, match="no image folder"):
        load_outlier_source(tmp_path)
    assert len(load_outlier_source(tmp_path / "annotations" / "instances_train2017.json",
                                   images=tmp_path / "moved")) == 2
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_outlier_source(tmp_path / "nope")
    with pytest.raises(ValueError, match="unknown class filter"):
        load_outlier_source(tmp_path / "annotations" / "instances_train2017.json",
                            images=tmp_path / "moved", filter="city")


def make_yolo(root: Path, n: int = 8, road: tuple = (2,), h: int = 20, w: int = 30) -> list[str]:
    """YOLO-seg tree with n images: an animal each, plus a car in those listed in ``road``."""
    kept = []
    for i in range(n):
        stem = f"{i:012d}"
        write_rgb(root / "images" / "train2017" / f"{stem}.jpg", h, w, i)
        lines = [f"{16 + i % 5} 0.1 0.1 0.5 0.1 0.5 0.6 0.1 0.6"]
        if i in road:
            lines.append("2 0.6 0.6 0.9 0.6 0.9 0.9")
        else:
            kept.append(stem)
        (root / "labels" / "train2017").mkdir(parents=True, exist_ok=True)
        (root / "labels" / "train2017" / f"{stem}.txt").write_text("\n".join(lines) + "\n")
    write_rgb(root / "images" / "train2017" / "unlabelled.jpg", h, w)
    (root / "labels" / "train2017" / "empty.txt").write_text("")
    write_rgb(root / "images" / "train2017" / "empty.jpg", h, w)
    return kept


def test_yolo_seg(tmp_path):
    kept = make_yolo(tmp_path)
    src = load_outlier_source(tmp_path)
    assert src.kind == "yolo_seg" and src.keys == kept and src.info["dropped_by_filter"] == 1
    obj = src[0]
    expect = polygons_to_mask([[3, 2, 15, 2, 15, 12, 3, 12]], 20, 30)
    assert np.array_equal(obj.mask, expect)
    assert len(load_outlier_source(tmp_path, filter="none")) == 8
    (tmp_path / "labels" / "train2017" / "bad.txt").write_text("5 0.1 0.2 0.3\n")
    write_rgb(tmp_path / "images" / "train2017" / "bad.jpg", 4, 4)
    with pytest.raises(ValueError, match="odd number"):
        load_outlier_source(tmp_path)


def test_mask_pngs(tmp_path):
    img = write_rgb(tmp_path / "images" / "a.jpg", 6, 6)
    m = np.zeros((6, 6), np.uint8)
    m[1:3, 2:5] = 255
    (tmp_path / "masks").mkdir()
    Image.fromarray(m).save(tmp_path / "masks" / "a.png")
    write_rgb(tmp_path / "images" / "b.jpg", 6, 6)  # no mask: skipped
    src = load_outlier_source(tmp_path)
    assert src.kind == "mask_png" and src.keys == ["a"]
    assert np.array_equal(src[0].mask, m > 0) and src[0].image.shape == img.shape


def test_mask_pngs_meta_ood_layout_with_filter(tmp_path):
    make_coco(tmp_path)
    (tmp_path / "ood_seg_train2017").mkdir()
    for i in (1, 2, 3):
        h, w = {1: (20, 30), 2: (24, 16), 3: (10, 12)}[i]
        Image.fromarray(np.full((h, w), 254, np.uint8)).save(
            tmp_path / "ood_seg_train2017" / f"{i:012d}.png")
    src = load_outlier_source(tmp_path)
    # car image dropped
    assert src.kind == "mask_png" and src.keys == ["000000000002", "000000000003"]
    assert src[0].mask.all()


def test_unknown_layout(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(FileNotFoundError, match="no known layout"):
        load_outlier_source(tmp_path)
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(ValueError, match="not a COCO"):
        load_outlier_source(tmp_path / "x.txt")


@pytest.mark.real_data
def test_real_coco128_road_filter(shared_data):
    root = shared_data / "coco128-seg"
    if not root.is_dir():
        pytest.skip(f"{root} absent")
    src = load_outlier_source(root)
    labels = root / "labels" / "train2017"
    assert 0 < len(src) < src.info["images"]
    assert len(src) + src.info["dropped_by_filter"] <= src.info["images"]
    for key in src.keys:  # no kept image holds a road-scene class
        classes = {int(line.split()[0])
                   for line in (labels / f"{key}.txt").read_text().splitlines() if line}
        assert not {YOLO_TO_COCO_ID[c] for c in classes} & ROAD_SCENE_COCO_IDS
    dropped = {p.stem for p in labels.glob("*.txt")} - set(src.keys)
    assert "000000000009" not in dropped  # bowls, broccoli, orange: no road class
    for obj in (src[0], src[len(src) - 1]):
        assert obj.mask.shape == obj.image.shape[:2] and 0 < obj.mask.sum() < obj.mask.size


# ------------------------------------------------------------------------------------------
# Splits


def test_split_disjoint_deterministic(tmp_path):
    make_yolo(tmp_path, n=20, road=())
    src = load_outlier_source(tmp_path)
    train, held = src.split(0.25, seed=0)
    assert len(held) == 5 and len(train) == 15
    assert not set(train.keys) & set(held.keys)
    assert set(train.keys) | set(held.keys) == set(src.keys)
    assert train.keys == sorted(train.keys) and held.info["part"] == "held_out"
    again = load_outlier_source(tmp_path).split(0.25, seed=0)
    assert again[1].keys == held.keys
    assert default_outlier_split(src)[1].keys == held.keys
    assert src.split(0.25, seed=1)[1].keys != held.keys
    assert len(src.split(0.0, 0)[1]) == 0 and len(src.split(1.0, 0)[0]) == 0
    assert len(src.split(0.001, 0)[1]) == 1  # both parts non-empty for 0 < f < 1
    with pytest.raises(ValueError):
        src.split(1.5, 0)


# ------------------------------------------------------------------------------------------
# Pasting


@dataclass(frozen=True)
class MemEntry:
    """An in-memory source entry (anything with ``key`` and ``load()`` is one)."""

    key: str
    image: np.ndarray
    mask: np.ndarray

    def load(self) -> OutlierObject:
        return OutlierObject(self.image, self.mask, self.key)


def mem_source(n=3, h=40, w=50, seed=0) -> OutlierSource:
    rng = np.random.default_rng(seed)
    entries = []
    for i in range(n):
        img = rng.integers(1, 256, (h, w, 3), dtype=np.uint8)  # never 0: padding is told apart
        yy, xx = np.mgrid[:h, :w]
        mask = ((yy - h / 2) ** 2 / (h / 3) ** 2 + (xx - w / 2 - i) ** 2 / (w / 4) ** 2) < 1
        mask[h // 2, :3] = True  # a detached sliver: the box is wider than the blob
        entries.append(MemEntry(f"obj{i}", img, mask))
    return OutlierSource(entries, kind="memory", root=Path("."), filter="none")


def inlier_frame(h, w, seed=1):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    label = np.where(rng.random((h, w)) < 0.2, 255, 0).astype(np.uint8)
    return image, label


def expected_patch(src, info, size, grey=False):
    obj = src[info["index"]]
    img = obj.image
    if grey:
        from flowclas_ros.data.pasting import to_grey
        img = to_grey(img)
    s_img, s_mask = rescale_object(OutlierObject(img, obj.mask, ""), info["scale"])
    f_img, _ = fit_to_size(s_img, size, 0)
    f_mask, _ = fit_to_size(s_mask, size, False)
    y0, x0, y1, x1 = mask_bbox(f_mask)
    return f_img[y0:y1, x0:x1], f_mask[y0:y1, x0:x1]


@pytest.mark.parametrize("size", [(30, 36), (60, 80), (41, 25)])
@pytest.mark.parametrize("scales", [(1.0,), (0.5,), (0.1, 0.75, 1.5)])
def test_paste_keeps_labels_aligned(size, scales):
    src = mem_source()
    paster = OutlierPaster(src, PasteConfig(scales=scales))
    image, label = inlier_frame(*size)
    for seed in range(6):
        out = paster(image, label, np.random.default_rng(seed))
        H, W = size
        assert out.image.shape == (H, W, 3) and out.label.shape == (H, W)
        assert out.image.dtype == np.uint8 and out.label.dtype == np.uint8
        ty, tx, bh, bw = out.info["box"]
        patch, m = expected_patch(src, out.info, size)
        assert patch.shape[:2] == (bh, bw)
        pasted = np.zeros((H, W), bool)
        pasted[ty:ty + bh, tx:tx + bw] = m
        # Label 1 exactly on the pasted object pixels, which equal the source object pixels.
        assert np.array_equal(out.label == 1, pasted)
        assert np.array_equal(out.image[ty:ty + bh, tx:tx + bw][m], patch[m])
        # Everything else untouched.
        assert np.array_equal(out.image[~pasted], image[~pasted])
        assert np.array_equal(out.label[~pasted], label[~pasted])
    assert (label != 1).all()  # the input was not modified


def test_aux_image():
    src = mem_source(n=1, h=40, w=50)
    obj = src[0]
    image, label = inlier_frame(30, 70)  # narrower than the object in height, wider in width
    for background, bg_value in (("inlier", 0), ("ignore", 255)):
        out = OutlierPaster(src, PasteConfig(aux_background=background))(
            image, label, np.random.default_rng(0))
        assert out.aux_image.shape == (30, 70, 3) and out.aux_label.shape == (30, 70)
        # Centre crop rows 5..35, centred pad of 10 columns each side.
        assert np.array_equal(out.aux_image[:, 10:60], obj.image[5:35])
        assert (out.aux_image[:, :10] == 0).all() and (out.aux_image[:, 60:] == 0).all()
        assert (out.aux_label[:, :10] == 255).all() and (out.aux_label[:, 60:] == 255).all()
        inner = out.aux_label[:, 10:60]
        assert np.array_equal(inner == 1, obj.mask[5:35])
        assert (inner[~obj.mask[5:35]] == bg_value).all()


def test_fit_to_size():
    a = np.arange(12).reshape(3, 4)
    out, valid = fit_to_size(a, (5, 2), -1)
    assert np.array_equal(out, [[-1, -1], [1, 2], [5, 6], [9, 10], [-1, -1]])
    assert np.array_equal(valid, out != -1)
    assert np.array_equal(fit_to_size(a, (3, 4), 0)[0], a)


def test_paste_deterministic_and_varied():
    src = mem_source(n=4)
    paster = OutlierPaster(src, PasteConfig())
    image, label = inlier_frame(48, 64)
    a = paster(image, label, np.random.default_rng(7))
    b = paster(image, label, np.random.default_rng(7))
    for f in ("image", "label", "aux_image", "aux_label"):
        assert np.array_equal(getattr(a, f), getattr(b, f))
    assert a.info == b.info
    boxes = {paster(image, label, np.random.default_rng(s)).info["box"] for s in range(10)}
    assert len(boxes) > 5


def test_paste_over_ignore_becomes_outlier():
    src = mem_source(n=1, h=10, w=10)
    image = np.zeros((10, 10, 3), np.uint8)
    label = np.full((10, 10), 255, np.uint8)
    out = OutlierPaster(src, PasteConfig(scales=(1.0,)))(image, label, np.random.default_rng(0))
    assert (out.label == 1).sum() == src[0].mask.sum() and set(np.unique(out.label)) == {1, 255}


def test_grey_and_paste_prob():
    src = mem_source(n=2)
    image, label = inlier_frame(40, 50)
    out = OutlierPaster(src, PasteConfig(scales=(1.0,), grey_prob=1.0))(
        image, label, np.random.default_rng(0))
    assert out.info["grey"]
    px = out.image[out.label == 1]
    assert (px[:, 0] == px[:, 1]).all() and (px[:, 1] == px[:, 2]).all()
    a = out.aux_image
    assert (a[..., 0] == a[..., 1]).all()
    patch, m = expected_patch(src, out.info, (40, 50), grey=True)
    ty, tx, bh, bw = out.info["box"]
    assert np.array_equal(out.image[ty:ty + bh, tx:tx + bw][m], patch[m])
    none = OutlierPaster(src, PasteConfig(paste_prob=0.0))(image, label, np.random.default_rng(0))
    assert none.info["box"] is None
    assert np.array_equal(none.image, image) and np.array_equal(none.label, label)
    assert (none.aux_label == 1).any()  # the auxiliary stream is still there


def test_paste_config_validation():
    with pytest.raises(ValueError):
        PasteConfig(aux_background="void")
    with pytest.raises(ValueError):
        PasteConfig(scales=(0.0,))
    with pytest.raises(ValueError):
        PasteConfig(grey_prob=2)
    with pytest.raises(ValueError, match="non-empty"):
        OutlierPaster(OutlierSource([], kind="memory", root=Path("."), filter="none"))
    with pytest.raises(ValueError, match="does not match"):
        OutlierPaster(mem_source())(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5), np.uint8),
                                    np.random.default_rng(0))


@pytest.mark.real_data
def test_real_paste_camvid_coco128(shared_data):
    from flowclas_ros.data import build_dataset
    if not (shared_data / "camvid").is_dir() or not (shared_data / "coco128-seg").is_dir():
        pytest.skip("camvid or coco128-seg absent")
    src = load_outlier_source(shared_data / "coco128-seg")
    train, _ = default_outlier_split(src)
    frame = build_dataset("camvid", shared_data / "camvid", "train")[0]
    out = OutlierPaster(train)(frame.image, frame.label, np.random.default_rng(0))
    assert out.info["object"] in train.keys and (out.label == 1).any()
    patch, m = expected_patch(train, out.info, frame.label.shape)
    ty, tx, bh, bw = out.info["box"]
    assert np.array_equal(out.image[ty:ty + bh, tx:tx + bw][m], patch[m])


def test_source_and_paster_pickle(tmp_path):
    import pickle
    make_coco(tmp_path)
    src = load_outlier_source(tmp_path)
    paster = pickle.loads(pickle.dumps(OutlierPaster(src)))
    assert paster.source.keys == src.keys and np.array_equal(paster.source[0].mask, src[0].mask)
