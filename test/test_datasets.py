"""Dataset readers against tiny fixtures in each real layout, and against ../shared/data."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flowclas_ros.data.datasets import (
    EVAL_DATASETS,
    READERS,
    TRAIN_DATASETS,
    ImageDataset,
    build_dataset,
    read_label,
)

H, W = 6, 8


def write_image(path: Path, seed: int = 0, size=(H, W)) -> np.ndarray:
    """Write a random RGB image; PNG is lossless (returned pixels are exact), JPG is not."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, size + (3,), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return arr


def write_label(path: Path, arr) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(arr, dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return arr


def ids(values, size=(H, W)) -> np.ndarray:
    """Return a label with ``values`` cycled over the pixels (every value present)."""
    return np.resize(np.asarray(values, dtype=np.uint8), size[0] * size[1]).reshape(size)


def map_values(raw: np.ndarray, table: dict, default: int) -> np.ndarray:
    out = np.full(raw.shape, default, dtype=np.uint8)
    for k, v in table.items():
        out[raw == k] = v
    return out


# ------------------------------------------------------------------------------------------
# Registry


def test_registry_covers_contract():
    assert set(TRAIN_DATASETS) | set(EVAL_DATASETS) == set(READERS)
    with pytest.raises(ValueError, match="unknown dataset"):
        build_dataset("kitti", ".")


@pytest.mark.parametrize("name", sorted(READERS))
def test_missing_root_is_clear(tmp_path, name):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_dataset(name, tmp_path / "nope")


@pytest.mark.parametrize("name", sorted(set(READERS) - {"folder"}))
def test_empty_root_names_layout(tmp_path, name):
    with pytest.raises(FileNotFoundError, match="expected"):
        build_dataset(name, tmp_path)


# ------------------------------------------------------------------------------------------
# Training sets


def make_cityscapes(root: Path, split="train"):
    raws = {}
    for k, (city, frame) in enumerate([("bochum", "bochum_000000_000313"),
                                        ("aachen", "aachen_000001_000019"),
                                        ("aachen", "aachen_000000_000019")]):
        write_image(root / "leftImg8bit" / split / city / f"{frame}_leftImg8bit.png", k)
        gt = root / "gtFine" / split / city
        if frame.startswith("bochum"):  # no trainIds generated: the labelIds fallback
            raws[f"{city}/{frame}"] = write_label(gt / f"{frame}_gtFine_labelIds.png",
                                                  ids([0, 7, 26, 4, 33]))
        else:
            raws[f"{city}/{frame}"] = write_label(gt / f"{frame}_gtFine_labelTrainIds.png",
                                                  ids([0, 5, 18, 255]))
    return raws


def test_cityscapes(tmp_path):
    raws = make_cityscapes(tmp_path)
    ds = build_dataset("cityscapes", tmp_path)
    assert isinstance(ds, ImageDataset) and len(ds) == 3
    assert ds.names == ["aachen/aachen_000000_000019", "aachen/aachen_000001_000019",
                        "bochum/bochum_000000_000313"]
    for s in ds:
        assert s.image.shape == (H, W, 3) and s.image.dtype == np.uint8
        assert s.label.shape == (H, W) and s.label.dtype == np.uint8
        raw = raws[s.name]
        if s.name.startswith("bochum"):  # labelIds 7, 26, 33 evaluated; 0, 4 not
            assert np.array_equal(s.label, np.where(np.isin(raw, [7, 26, 33]), 0, 255))
        else:
            assert np.array_equal(s.label, np.where(raw == 255, 255, 0))
    assert np.array_equal(ds[-1].image, ds[2].image)


def test_cityscapes_errors(tmp_path):
    make_cityscapes(tmp_path)
    with pytest.raises(FileNotFoundError, match="no leftImg8bit/val"):
        build_dataset("cityscapes", tmp_path, "val")
    (tmp_path / "gtFine" / "train" / "aachen"
     / "aachen_000000_000019_gtFine_labelTrainIds.png").unlink()
    with pytest.raises(FileNotFoundError, match="no gtFine label"):
        build_dataset("cityscapes", tmp_path)
    with pytest.raises(ValueError, match="unknown split"):
        build_dataset("cityscapes", tmp_path, "extra")


def test_cityscapes_archive_roots(tmp_path):
    make_cityscapes(tmp_path / "x")
    (tmp_path / "leftImg8bit_trainvaltest").mkdir()
    (tmp_path / "gtFine_trainvaltest").mkdir()
    (tmp_path / "x" / "leftImg8bit").rename(tmp_path / "leftImg8bit_trainvaltest" / "leftImg8bit")
    (tmp_path / "x" / "gtFine").rename(tmp_path / "gtFine_trainvaltest" / "gtFine")
    assert len(build_dataset("cityscapes", tmp_path)) == 3


def make_camvid(root: Path, splits=("train", "val", "test"), n=2, size=(H, W), ext=".png"):
    raws = {}
    for split in splits:
        for i in range(n):
            name = f"0001TP_{split}_{i:03d}"
            write_image(root / split / f"{name}{ext}", i, size)
            raws[(split, name)] = write_label(root / f"{split}annot" / f"{name}.png",
                                              ids([0, 3, 8, 11, 10, 12], size))
    return raws


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_camvid(tmp_path, ext):
    raws = make_camvid(tmp_path, ext=ext)
    for split in ("train", "val", "test"):
        ds = build_dataset("camvid", tmp_path, split)
        assert ds.names == [f"0001TP_{split}_000", f"0001TP_{split}_001"]
        s = ds[1]
        raw = raws[(split, s.name)]
        # 11 void (and junk 12) ignored
        assert np.array_equal(s.label, np.where(raw <= 10, 0, 255))
        assert s.image.shape == (H, W, 3)
    assert build_dataset("camvid", tmp_path).split == "train"


def test_camvid_nested_and_errors(tmp_path):
    make_camvid(tmp_path / "CamVid", splits=("val",))
    assert len(build_dataset("camvid", tmp_path, "val")) == 2
    with pytest.raises(FileNotFoundError, match="no train/"):
        build_dataset("camvid", tmp_path, "train")
    (tmp_path / "CamVid" / "valannot" / "0001TP_val_000.png").unlink()
    with pytest.raises(FileNotFoundError, match="have no label"):
        build_dataset("camvid", tmp_path, "val")


def test_label_size_mismatch(tmp_path):
    write_image(tmp_path / "val" / "a.png", 0, (4, 4))
    write_label(tmp_path / "valannot" / "a.png", np.zeros((4, 5)))
    with pytest.raises(ValueError, match="is 5x4 but image"):
        build_dataset("camvid", tmp_path, "val")[0]


def make_allo(root: Path):
    """ALLO v3 tree: train_v3 (normal + a stray anomalous branch), test_v3 (both)."""
    tr = root / "train_v3" / "scene1"
    write_image(tr / "normal" / "seq0" / "images" / "0001.png", 1)
    write_label(tr / "normal" / "seq0" / "masks" / "0001.png", ids([0, 3, 7]))
    write_image(tr / "normal" / "seq0" / "images" / "0002.png", 2)  # no mask: all inlier
    write_image(tr / "anomalous" / "seq9" / "images" / "0003_drill.png", 3)
    write_label(tr / "anomalous" / "seq9" / "masks" / "0003_drill.png", ids([0, 8]))
    te = root / "test_v3" / "scene2"
    write_image(te / "normal" / "images" / "0100.png", 4)
    write_label(te / "normal" / "masks" / "0100.png", ids([1, 2]))
    write_image(te / "anomalous" / "images" / "0101_wrench.png", 5)
    raw = write_label(te / "anomalous" / "masks" / "0101_wrench.png", ids([0, 8, 5, 255, 9]))
    return raw


def test_allo(tmp_path):
    raw = make_allo(tmp_path)
    train = build_dataset("allo", tmp_path)
    assert train.names == ["scene1/normal/seq0/images/0001", "scene1/normal/seq0/images/0002"]
    assert all((s.label == 0).all() for s in train)
    test = build_dataset("allo", tmp_path, "test")
    assert test.names == ["scene2/anomalous/images/0101_wrench", "scene2/normal/images/0100"]
    lab = test[0].label
    assert np.array_equal(lab, map_values(raw, {0: 0, 5: 0, 8: 1, 255: 255}, 255))
    assert (test[1].label == 0).all()


def test_allo_errors(tmp_path):
    make_allo(tmp_path)
    (tmp_path / "test_v3" / "scene2" / "normal" / "masks" / "0100.png").unlink()
    with pytest.raises(FileNotFoundError, match="no mask"):
        build_dataset("allo", tmp_path, "test")
    write_label(tmp_path / "train_v3" / "scene1" / "normal" / "seq0" / "masks" / "0002.png",
                ids([0, 8]))
    with pytest.raises(ValueError, match="anomaly class 8"):
        build_dataset("allo", tmp_path)[1]
    with pytest.raises(FileNotFoundError, match="train_v3"):
        build_dataset("allo", tmp_path / "train_v3" / "scene1")


def test_folder_with_labels(tmp_path):
    img = write_image(tmp_path / "images" / "b.png", 1)
    write_image(tmp_path / "images" / "sub" / "a.jpg", 2)
    lab = write_label(tmp_path / "labels" / "b.png", ids([0, 1, 255]))
    write_label(tmp_path / "labels" / "sub" / "a.png", ids([0]))
    ds = build_dataset("folder", tmp_path)
    assert ds.names == ["b", "sub/a"]
    assert np.array_equal(ds[0].image, img) and np.array_equal(ds[0].label, lab)


def test_folder_without_labels_and_flat(tmp_path):
    write_image(tmp_path / "images" / "x.png")
    assert (build_dataset("folder", tmp_path)[0].label == 0).all()
    flat = tmp_path / "flat"
    write_image(flat / "z.jpg")
    write_image(flat / "y.webp")
    (flat / "notes.txt").write_text("not an image")
    ds = build_dataset("folder", flat)
    assert ds.names == ["y", "z"] and (ds[1].label == 0).all()
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no frames"):
        build_dataset("folder", tmp_path / "empty")


def test_folder_split_subfolder(tmp_path):
    write_image(tmp_path / "val" / "images" / "v.png")
    write_image(tmp_path / "train" / "images" / "t.png")
    assert build_dataset("folder", tmp_path, "val").names == ["v"]


def test_folder_rejects_bad_labels(tmp_path):
    write_image(tmp_path / "images" / "a.png")
    write_label(tmp_path / "labels" / "a.png", ids([0, 128]))
    with pytest.raises(ValueError, match="expected only 0"):
        build_dataset("folder", tmp_path)[0]
    write_image(tmp_path / "images" / "b.png")
    with pytest.raises(FileNotFoundError, match="1 of 2 images"):
        build_dataset("folder", tmp_path)


# ------------------------------------------------------------------------------------------
# Evaluation sets


def test_road_anomaly(tmp_path):
    frames = tmp_path / "RoadAnomaly_jpg" / "frames"
    raws = {}
    for name in ("animals01_x", "cones02"):
        write_image(frames / f"{name}.jpg")
        raws[name] = write_label(frames / f"{name}.labels" / "labels_semantic.png",
                                 ids([0, 2, 0, 7]))
    ds = build_dataset("road_anomaly", tmp_path)
    assert ds.names == ["animals01_x", "cones02"]
    assert np.array_equal(ds[0].label, map_values(raws["animals01_x"], {0: 0, 2: 1}, 255))
    (frames / "cones02.labels" / "labels_semantic.png").unlink()
    with pytest.raises(FileNotFoundError, match="1 frames have no label"):
        build_dataset("road_anomaly", tmp_path / "RoadAnomaly_jpg")


@pytest.mark.parametrize("name", ["fishyscapes_laf", "fishyscapes_static"])
@pytest.mark.parametrize("images,labels,suffix", [("images", "labels", ""),
                                                  ("images", "labels_masks", ""),
                                                  ("original", "labels", "_labels")])
def test_fishyscapes_preprocessed(tmp_path, name, images, labels, suffix):
    img = write_image(tmp_path / images / "0003_x.png", 3)
    lab = write_label(tmp_path / labels / f"0003_x{suffix}.png", ids([0, 1, 255]))
    ds = build_dataset(name, tmp_path)
    s = ds[0]
    assert s.name == "0003_x" and np.array_equal(s.image, img) and np.array_equal(s.label, lab)


def test_fishyscapes_laf_official(tmp_path):
    labels = tmp_path / "fishyscapes_lostandfound"
    lab = write_label(labels / "0000_04_Maurener_Weg_8_000000_000030_labels.png", ids([0, 1, 255]))
    write_label(labels / "0001_13_Elberfelder_Strasse_000002_000100_labels.png", ids([0]))
    laf = tmp_path / "elsewhere" / "leftImg8bit"
    img = write_image(laf / "test" / "04_Maurener_Weg_8"
                      / "04_Maurener_Weg_8_000000_000030_leftImg8bit.png", 7)
    write_image(laf / "train" / "13_Elberfelder_Strasse" /
                "13_Elberfelder_Strasse_000002_000100_leftImg8bit.png", 8)
    with pytest.raises(FileNotFoundError, match="no Lost & Found leftImg8bit"):
        build_dataset("fishyscapes_laf", tmp_path)
    ds = build_dataset("fishyscapes_laf", tmp_path, images_root=laf)
    assert ds.names == ["0000_04_Maurener_Weg_8_000000_000030",
                        "0001_13_Elberfelder_Strasse_000002_000100"]
    assert np.array_equal(ds[0].image, img) and np.array_equal(ds[0].label, lab)
    (tmp_path / "lostandfound").mkdir()
    laf.rename(tmp_path / "lostandfound" / "leftImg8bit")  # the layout of the official archives
    assert len(build_dataset("fishyscapes_laf", tmp_path)) == 2
    (tmp_path / "lostandfound" / "leftImg8bit" / "train" / "13_Elberfelder_Strasse" /
     "13_Elberfelder_Strasse_000002_000100_leftImg8bit.png").unlink()
    with pytest.raises(FileNotFoundError, match="1 labels have no Lost & Found image"):
        build_dataset("fishyscapes_laf", tmp_path)


def test_fishyscapes_static_official(tmp_path):
    rel = tmp_path / "fs_val_v3"
    lab = write_label(rel / "0000_frankfurt_000001_046504_labels.png", ids([0, 1, 255]))
    overlay = np.random.default_rng(1).integers(-100, 100, (H, W, 3)).astype(np.int16)
    np.savez(rel / "0000_frankfurt_000001_046504_rgb.npz", rgb=overlay)
    cs = tmp_path / "cs_download"
    base = write_image(cs / "leftImg8bit" / "val" / "frankfurt"
                       / "frankfurt_000001_046504_leftImg8bit.png", 2)
    with pytest.raises(FileNotFoundError, match="cityscapes_root"):
        build_dataset("fishyscapes_static", rel)
    ds = build_dataset("fishyscapes_static", tmp_path, cityscapes_root=cs)
    s = ds[0]
    assert s.name == "0000_frankfurt_000001_046504"
    assert np.array_equal(s.image, np.clip(base.astype(int) + overlay, 0, 255).astype(np.uint8))
    assert np.array_equal(s.label, lab)
    cs.rename(tmp_path / "cityscapes")
    assert len(build_dataset("fishyscapes_static", tmp_path)) == 1  # ROOT/cityscapes found alone


@pytest.mark.parametrize("name,track,ext", [("smiyc_anomaly", "dataset_AnomalyTrack", ".jpg"),
                                            ("smiyc_obstacle", "dataset_ObstacleTrack", ".webp")])
def test_smiyc(tmp_path, name, track, ext):
    base = tmp_path / track
    write_image(base / "images" / f"validation0001{ext}")
    write_image(base / "images" / f"validation0000{ext}")
    write_image(base / "images" / f"test0000{ext}")  # test frames have no labels: skipped
    lab = write_label(base / "labels_masks" / "validation0000_labels_semantic.png",
                      ids([0, 1, 255]))
    write_label(base / "labels_masks" / "validation0001_labels_semantic.png", ids([0]))
    for root in (tmp_path, base):
        ds = build_dataset(name, root)
        assert ds.names == ["validation0000", "validation0001"]
        assert np.array_equal(ds[0].label, lab)
    (base / "labels_masks" / "validation0000_labels_semantic.png").unlink()
    (base / "labels_masks" / "validation0001_labels_semantic.png").unlink()
    with pytest.raises(FileNotFoundError, match="has a label"):
        build_dataset(name, tmp_path)


def test_lost_and_found(tmp_path):
    raws = {}
    for split, seq in (("test", "02_Hanns_Klemm_Str_44"), ("train", "01_Hanns_Klemm_Str_45")):
        frame = f"{seq}_000000_000100"
        write_image(tmp_path / "leftImg8bit" / split / seq / f"{frame}_leftImg8bit.png")
        raws[split] = write_label(
            tmp_path / "gtCoarse" / split / seq / f"{frame}_gtCoarse_labelIds.png",
            ids([0, 1, 2, 42, 200, 201, 255]))
    ds = build_dataset("lost_and_found", tmp_path)  # default: the test split
    assert ds.split == "test"
    assert ds.names == ["02_Hanns_Klemm_Str_44/02_Hanns_Klemm_Str_44_000000_000100"]
    expect = map_values(raws["test"], {1: 0, 2: 1, 42: 1, 200: 1}, 255)
    assert np.array_equal(ds[0].label, expect)
    assert len(build_dataset("lost_and_found", tmp_path, "train")) == 1
    with pytest.raises(FileNotFoundError, match="gtCoarse/test"):
        import shutil
        shutil.rmtree(tmp_path / "gtCoarse" / "test")
        build_dataset("lost_and_found", tmp_path)


def test_read_label_variants(tmp_path):
    p = tmp_path / "pal.png"
    im = Image.fromarray(ids([0, 1, 2])).convert("P")
    im.save(p)
    assert np.array_equal(read_label(p), ids([0, 1, 2]))
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.repeat(ids([0, 1])[..., None], 3, axis=2)).save(rgb)
    assert np.array_equal(read_label(rgb), ids([0, 1]))
    colour = tmp_path / "colour.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (H, W, 3),
                                                      dtype=np.uint8)).save(colour)
    with pytest.raises(ValueError, match="colour image"):
        read_label(colour)


# ------------------------------------------------------------------------------------------
# Real data


@pytest.mark.real_data
def test_real_camvid(shared_data):
    root = shared_data / "camvid"
    if not root.is_dir():
        pytest.skip(f"{root} absent")
    sizes = {s: len(build_dataset("camvid", root, s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 367, "val": 101, "test": 233}
    ds = build_dataset("camvid", root, "val")
    s = ds[0]
    assert s.image.shape == (360, 480, 3) and s.label.shape == (360, 480)
    raw = read_label(ds.records[0].label)
    assert np.array_equal(s.label, np.where(raw == 11, 255, 0))
    assert set(np.unique(s.label)) <= {0, 255}
    assert ds.names == sorted(ds.names)


@pytest.mark.real_data
def test_real_cityscapes_sample(shared_data):
    root = shared_data / "cityscapes-sample"
    if not root.is_dir():
        pytest.skip(f"{root} absent")
    ds = build_dataset("cityscapes", root)
    assert len(ds) == 8 and ds.names[0] == "aachen/aachen_000000_000019"
    s = ds[0]
    assert s.image.shape == (1024, 2048, 3)
    raw = read_label(ds.records[0].label)
    assert np.array_equal(s.label, np.where(raw == 255, 255, 0))
    # labelIds give (nearly: the files differ on 0.2 % of pixels, at polygon borders) the same
    # ignore mask as trainIds: the fallback used when trainIds were never generated.
    ids_path = Path(str(ds.records[0].label).replace("labelTrainIds", "labelIds"))
    from flowclas_ros.data.frames import apply_lut
    from flowclas_ros.data.inlier_sets import CITYSCAPES_LABELID_LUT
    assert (apply_lut(read_label(ids_path), CITYSCAPES_LABELID_LUT) == s.label).mean() > 0.99


def test_datasets_pickle(tmp_path):
    """DataLoader workers started with spawn/forkserver pickle the dataset."""
    import pickle
    make_cityscapes(tmp_path / "cs")
    make_camvid(tmp_path / "cv")
    make_allo(tmp_path / "allo")
    for name, root in (("cityscapes", "cs"), ("camvid", "cv"), ("allo", "allo")):
        ds = build_dataset(name, tmp_path / root)
        again = pickle.loads(pickle.dumps(ds))
        assert again.names == ds.names
        assert np.array_equal(again[0].label, ds[0].label)
