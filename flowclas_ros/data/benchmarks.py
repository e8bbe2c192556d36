"""Readers of the anomaly benchmarks, grouped by family, in their download layouts.

Labels become INLIER / ANOMALY / VOID (:mod:`flowclas_ros.labels`; METHOD.md section 9).

* ``road_anomaly``: ``ROOT/frames/<name>.jpg`` and
  ``ROOT/frames/<name>.labels/labels_semantic.png`` (2 anomaly, 0 inlier; any other value is
  void). ``ROOT/RoadAnomaly_jpg`` and ``ROOT/RoadAnomaly`` are searched too.
* ``fishyscapes_laf`` / ``fishyscapes_static`` (labels 0 inlier, 1 anomaly, 255 void), any of:
  (a) ``ROOT/images/*`` + ``ROOT/labels/*.png`` or ``ROOT/labels_masks/*.png`` (preprocessed
  copies, as read by the authors' code); (b) ``ROOT/original/*`` + ``ROOT/labels/*.png``
  (the ``data_processed`` release used by SynBoost and followers); (c) the official
  distribution: Lost & Found labels ``fishyscapes_lostandfound/NNNN_<laf id>_labels.png`` with
  the Lost & Found images ``leftImg8bit/{train,test}/<seq>/<laf id>_leftImg8bit.png``; Static as
  ``fs_val_v3/NNNN_<cityscapes id>_{labels.png,rgb.npz}`` overlays added to the Cityscapes
  ``leftImg8bit/val`` images (under ROOT or ``cityscapes_root=``).
* ``smiyc_anomaly`` / ``smiyc_obstacle``: ``ROOT[/dataset_AnomalyTrack|/dataset_ObstacleTrack]``
  with ``images/<name>.{jpg,webp}`` and ``labels_masks/<name>_labels_semantic.png`` (0/1/255).
  Only the labelled (validation) frames are read.
* ``lost_and_found``: ``ROOT/leftImg8bit/<split>/<seq>/<frame>_leftImg8bit.png`` and
  ``ROOT/gtCoarse/<split>/<seq>/<frame>_gtCoarse_labelIds.png``: 1 (free road) inlier,
  2..200 (obstacles) anomaly, 0 and anything else void. Default split ``test``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np

from ..labels import ANOMALY, INLIER, VOID
from .frames import ImageDataset, LutLabel, Record, binary_label, make_lut, read_image
from .layout import check_root, first_dir, images_in, is_image, no_frames, pair_labels, split_name

# --- Road Anomaly ------------------------------------------------------------------------------

ROAD_ANOMALY_LUT = make_lut({0: INLIER, 2: ANOMALY}, default=VOID)


def road_anomaly(root: str | Path, split: str | None = None) -> ImageDataset:
    """Road Anomaly (60 frames): label 2 anomaly, 0 inlier."""
    name = "road_anomaly"
    root = check_root(root, name)
    layout = "ROOT/frames/<name>.jpg with ROOT/frames/<name>.labels/labels_semantic.png"
    frames = first_dir([root / "frames", root / "RoadAnomaly_jpg" / "frames",
                         root / "RoadAnomaly" / "frames"])
    if frames is None:
        raise FileNotFoundError(f"{name}: no frames/ under {root}: expected {layout}")
    images = images_in(frames)
    if not images:
        raise no_frames(name, frames, layout)
    records, missing = [], []
    for img in images:
        label = frames / f"{img.stem}.labels" / "labels_semantic.png"
        (records if label.is_file() else missing).append(Record(img.stem, img, label))
    if missing:
        raise FileNotFoundError(f"{name}: {len(missing)} frames have no label, "
                                f"e.g. {missing[0].label}")
    return ImageDataset(records, LutLabel(ROAD_ANOMALY_LUT), dataset=name,
                        root=root, split=split)


# --- Fishyscapes -------------------------------------------------------------------------------

def _paired_binary(name: str, root: Path, pairs: Sequence[tuple[str, str]],
                   suffixes: Sequence[str], split: str | None) -> ImageDataset | None:
    """Read the preprocessed layouts: an images folder beside a 0/1/255 labels folder."""
    for images_name, labels_name in pairs:
        images_dir, labels_dir = root / images_name, root / labels_name
        if images_dir.is_dir() and labels_dir.is_dir():
            images = images_in(images_dir)
            if not images:
                raise no_frames(name, images_dir, f"images in {images_dir}")
            records = pair_labels(images, images_dir, labels_dir, suffixes, dataset=name)
            return ImageDataset(records, binary_label, dataset=name, root=root, split=split)
    return None


class _OverlayDataset(ImageDataset):
    """Fishyscapes Static (official).

    A Cityscapes frame plus a stored overlay, clipped to uint8.
    """

    def __init__(self, records, label_fn, overlays: dict[str, Path], **kw):
        super().__init__(records, label_fn, **kw)
        self.overlays = overlays

    def load_image(self, rec: Record) -> np.ndarray:
        base = read_image(rec.image).astype(np.int16)
        with np.load(self.overlays[rec.name]) as z:
            overlay = z["rgb"].astype(np.int16)
        if overlay.shape != base.shape:
            raise ValueError(f"overlay {self.overlays[rec.name]} is {overlay.shape}, image "
                             f"{rec.image} is {base.shape}")
        return np.clip(base + overlay, 0, 255).astype(np.uint8)


_FS_LABEL = re.compile(r"^(\d+)_(.+)_labels\.png$")


def _fs_label_files(root: Path, subdirs: Sequence[str]) -> tuple[Path, list[Path]] | None:
    for d in [root / s for s in subdirs] + [root]:
        if d.is_dir():
            files = sorted(p for p in d.iterdir() if _FS_LABEL.match(p.name))
            if files:
                return d, files
    return None


_FS_PAIRS = (("images", "labels"), ("images", "labels_masks"), ("original", "labels"))
_FS_SUFFIXES = ("", "_labels", "_labels_semantic")


def fishyscapes_laf(root: str | Path, split: str | None = None, *,
                    images_root: str | Path | None = None) -> ImageDataset:
    """Fishyscapes Lost & Found validation (100 frames): 0 inlier, 1 anomaly, 255 void."""
    name = "fishyscapes_laf"
    root = check_root(root, name)
    ds = _paired_binary(name, root, _FS_PAIRS, _FS_SUFFIXES, split)
    if ds is not None:
        return ds
    layout = ("ROOT/images + ROOT/labels (or labels_masks), ROOT/original + ROOT/labels, or the "
              "official ROOT/fishyscapes_lostandfound/NNNN_<id>_labels.png with the Lost & Found "
              "images ROOT/leftImg8bit/{train,test}/<seq>/<id>_leftImg8bit.png")
    found = _fs_label_files(root, ("fishyscapes_lostandfound",))
    if found is None:
        raise FileNotFoundError(f"{name}: no image/label folders or *_labels.png under {root}: "
                                f"expected {layout}")
    _, labels = found
    candidates = [Path(images_root)] if images_root else [
        root / "leftImg8bit", root / "lostandfound" / "leftImg8bit",
        root / "leftImg8bit" / "leftImg8bit", root.parent / "lost_and_found" / "leftImg8bit",
        root.parent / "leftImg8bit"]
    img_root = first_dir(candidates)
    if img_root is None:
        raise FileNotFoundError(f"{name}: found {len(labels)} official label files but no "
                                "Lost & Found leftImg8bit/ folder (looked in "
                                f"{list(map(str, candidates))}); pass images_root= or place "
                                "leftImg8bit/ under ROOT")
    records, missing = [], []
    for lab in labels:
        laf_id = _FS_LABEL.match(lab.name).group(2)
        seq = laf_id.rsplit("_", 2)[0]
        img = next((img_root / s / seq / f"{laf_id}_leftImg8bit{ext}" for s in ("train", "test")
                    for ext in (".png", ".jpg")
                    if (img_root / s / seq / f"{laf_id}_leftImg8bit{ext}").is_file()), None)
        if img is None:
            missing.append(img_root / "{train,test}" / seq / f"{laf_id}_leftImg8bit.png")
            continue
        records.append(Record(lab.name[: -len("_labels.png")], img, lab))
    if missing:
        raise FileNotFoundError(f"{name}: {len(missing)} labels have no Lost & Found image, "
                                f"e.g. {missing[0]}")
    return ImageDataset(records, binary_label, dataset=name, root=root, split=split)


def fishyscapes_static(root: str | Path, split: str | None = None, *,
                       cityscapes_root: str | Path | None = None) -> ImageDataset:
    """Fishyscapes Static validation (30 frames): 0 inlier, 1 anomaly, 255 void."""
    name = "fishyscapes_static"
    root = check_root(root, name)
    ds = _paired_binary(name, root, _FS_PAIRS, _FS_SUFFIXES, split)
    if ds is not None:
        return ds
    layout = ("ROOT/images + ROOT/labels (or labels_masks), ROOT/original + ROOT/labels, or the "
              "official fs_val_v3 release (NNNN_<cityscapes id>_labels.png + _rgb.npz) with the "
              "Cityscapes images leftImg8bit/val/<city>/<id>_leftImg8bit.png")
    found = _fs_label_files(root, ("fs_val_v3", "fishyscapes-3.0.0", "fs_static"))
    if found is None:
        raise FileNotFoundError(f"{name}: no image/label folders or *_labels.png under {root}: "
                                f"expected {layout}")
    label_dir, labels = found
    cs = Path(cityscapes_root) if cityscapes_root else None
    candidates = ([cs / "leftImg8bit" / "val", cs / "val", cs] if cs else
                  [root / "leftImg8bit" / "val", root / "cityscapes" / "leftImg8bit" / "val",
                   root.parent / "cityscapes" / "leftImg8bit" / "val"])
    cs_val = first_dir(candidates)
    if cs_val is None:
        raise FileNotFoundError(f"{name}: found {len(labels)} official overlay labels but no "
                                "Cityscapes leftImg8bit/val (looked in "
                                f"{list(map(str, candidates))}); pass cityscapes_root= or place "
                                "leftImg8bit/val under ROOT")
    records, overlays, missing = [], {}, []
    for lab in labels:
        fs_id, cs_id = _FS_LABEL.match(lab.name).groups()
        npz = label_dir / f"{fs_id}_{cs_id}_rgb.npz"
        city = cs_id.split("_")[0]
        img = next((cs_val / city / f"{cs_id}_leftImg8bit{ext}" for ext in (".png", ".jpg")
                    if (cs_val / city / f"{cs_id}_leftImg8bit{ext}").is_file()), None)
        if img is None or not npz.is_file():
            missing.append(npz if img is not None else cs_val / city / f"{cs_id}_leftImg8bit.png")
            continue
        key = lab.name[: -len("_labels.png")]
        overlays[key] = npz
        records.append(Record(key, img, lab))
    if missing:
        raise FileNotFoundError(f"{name}: {len(missing)} frames are incomplete, "
                                f"e.g. {missing[0]} is missing")
    return _OverlayDataset(records, binary_label, overlays, dataset=name, root=root, split=split)


# --- SegmentMeIfYouCan --------------------------------------------------------------------------

def _smiyc(name: str, track_dir: str, root: str | Path, split: str | None) -> ImageDataset:
    root = check_root(root, name)
    base = root / track_dir if (root / track_dir).is_dir() else root
    layout = (f"ROOT/{track_dir}/images/<name>.jpg|webp and "
              f"ROOT/{track_dir}/labels_masks/<name>_labels_semantic.png")
    if not (base / "images").is_dir() or not (base / "labels_masks").is_dir():
        raise FileNotFoundError(f"{name}: no images/ and labels_masks/ under {base}: "
                                f"expected {layout}")
    images = images_in(base / "images")
    # Test frames ship without labels: only the labelled (validation) frames are a benchmark here.
    records = pair_labels(images, base / "images", base / "labels_masks",
                           ("_labels_semantic", ""), require=False, dataset=name)
    if not records:
        raise FileNotFoundError(f"{name}: no image under {base / 'images'} has a label in "
                                f"{base / 'labels_masks'}: expected {layout}")
    return ImageDataset(records, binary_label, dataset=name, root=root, split=split)


def smiyc_anomaly(root: str | Path, split: str | None = None) -> ImageDataset:
    """SegmentMeIfYouCan AnomalyTrack validation: 0 inlier, 1 anomaly, 255 void."""
    return _smiyc("smiyc_anomaly", "dataset_AnomalyTrack", root, split)


def smiyc_obstacle(root: str | Path, split: str | None = None) -> ImageDataset:
    """SegmentMeIfYouCan ObstacleTrack validation: 0 road, 1 obstacle, 255 void (off-road)."""
    return _smiyc("smiyc_obstacle", "dataset_ObstacleTrack", root, split)


# --- Lost and Found ----------------------------------------------------------------------------

LOST_AND_FOUND_LUT = make_lut({0: VOID, 1: INLIER}, ranges=[(2, 200, ANOMALY)], default=VOID)


def lost_and_found(root: str | Path, split: str | None = None) -> ImageDataset:
    """Lost and Found (raw gtCoarse labelIds).

    Labels: 1 road inlier, 2..200 obstacles anomaly, 0 ignore.
    """
    name = "lost_and_found"
    root = check_root(root, name)
    split = split_name(split, ("train", "test"), "test", name)
    layout = ("ROOT/leftImg8bit/<split>/<seq>/<frame>_leftImg8bit.png and "
              "ROOT/gtCoarse/<split>/<seq>/<frame>_gtCoarse_labelIds.png")
    if not (root / "leftImg8bit" / split).is_dir():
        raise FileNotFoundError(f"{name}: no leftImg8bit/{split} under {root}: expected {layout}")
    if not (root / "gtCoarse" / split).is_dir():
        raise FileNotFoundError(f"{name}: no gtCoarse/{split} under {root}: expected {layout}")
    images = sorted(p for p in (root / "leftImg8bit" / split).glob("*/*_leftImg8bit.*")
                    if is_image(p))
    if not images:
        raise no_frames(name, root / "leftImg8bit" / split, layout)
    records, missing = [], []
    for img in images:
        frame = img.name[: img.name.rindex("_leftImg8bit")]
        label = root / "gtCoarse" / split / img.parent.name / f"{frame}_gtCoarse_labelIds.png"
        rec = Record(f"{img.parent.name}/{frame}", img, label)
        (records if label.is_file() else missing).append(rec)
    if missing:
        raise FileNotFoundError(f"{name}: {len(missing)} frames have no label, "
                                f"e.g. {missing[0].label}")
    return ImageDataset(records, LutLabel(LOST_AND_FOUND_LUT), dataset=name,
                        root=root, split=split)
