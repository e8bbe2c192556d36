"""Readers of the inlier sets: the road (and space) scenes a model learns "normal" from.

Layouts (``ROOT`` is the ``root`` argument):

* ``cityscapes``: ``ROOT/leftImg8bit/<split>/<city>/<frame>_leftImg8bit.{png,jpg}`` and
  ``ROOT/gtFine/<split>/<city>/<frame>_gtFine_labelTrainIds.png`` (255 void, the 19 classes
  inlier); ``_gtFine_labelIds.png`` is used when trainIds were never generated. The archives'
  own roots (``ROOT/leftImg8bit_trainvaltest/leftImg8bit``, ``ROOT/gtFine_trainvaltest/gtFine``)
  are accepted too.
* ``camvid`` (SegNet version): ``ROOT/<split>/<name>.{png,jpg}`` and
  ``ROOT/<split>annot/<name>.png`` with classes 0..10 inlier and 11 (void) VOID.
  ``ROOT/CamVid/...`` is accepted.
* ``allo`` (ALLO v3, the layout of the authors' ALLO loader):
  ``ROOT/train_v3/**/normal/**/images/*.png`` (training: normal frames only) and
  ``ROOT/test_v3/**/images/*.png`` (normal and ``anomalous`` frames), each with its mask at
  ``.../masks/<same name>`` holding classes 0..8 (+255): class 8 is the anomaly, 0..7 inlier.
  ``train``/``test`` folder names without ``_v3`` work too. Training frames without a mask are
  all inlier.
* ``idd_lite`` (IDD Lite, India Driving Dataset): ``ROOT/leftImg8bit/<split>/<seq>/<id>_image.jpg``
  and ``ROOT/gtFine/<split>/<seq>/<id>_label.png`` with level-1 ids 0 drivable, 1 non-drivable,
  2 living things, 3 vehicles, 4 roadside objects, 5 far objects, 6 sky, 255 void. Class 2 merges
  people, riders and animals (cows and dogs are common on Indian roads), so it is VOID: never
  learnt as normal, never counted as a false positive. The test split has no labels (all inlier
  but for nothing known: use train/val).
* ``kitti_road``: ``ROOT/images/*.jpg|png`` (the KITTI Road frames, no labels): all inlier.
* ``folder``: ``ROOT/images/<name>.<ext>`` (recursively) with optional ``ROOT/labels/<name>.png``
  (or ``masks/``) holding 0/1/255 (the anomaly is 1: a 0/255 mask reads as void), or a flat
  folder of images (no labels: all inlier); ``ROOT/<split>/images`` is used when it exists.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..labels import ANOMALY, INLIER, VOID
from .frames import ImageDataset, LutLabel, Record, apply_lut, binary_label, make_lut
from .layout import (
    check_root,
    first_dir,
    images_in,
    is_image,
    no_frames,
    pair_labels,
    split_name,
    stem_key,
)

# Cityscapes labelIds that have a trainId (the 19 evaluated classes); every other id is ignored.
CITYSCAPES_EVAL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
CITYSCAPES_TRAINID_LUT = make_lut({255: VOID}, default=INLIER)
CITYSCAPES_LABELID_LUT = make_lut(dict.fromkeys(CITYSCAPES_EVAL_IDS, INLIER), default=VOID)


def _cityscapes_label(raw: np.ndarray, path: Path) -> np.ndarray:
    train_ids = path.name.endswith("_labelTrainIds.png")
    return apply_lut(raw, CITYSCAPES_TRAINID_LUT if train_ids else CITYSCAPES_LABELID_LUT)


def cityscapes(root: str | Path, split: str | None = None) -> ImageDataset:
    """Cityscapes fine annotations: every labelled class is inlier, 255 ignore."""
    name = "cityscapes"
    root = check_root(root, name)
    split = split_name(split, ("train", "val", "test"), "train", name)
    layout = ("the Cityscapes layout ROOT/leftImg8bit/<split>/<city>/<frame>_leftImg8bit.png and "
              "ROOT/gtFine/<split>/<city>/<frame>_gtFine_labelTrainIds.png")
    img_root = first_dir([root / "leftImg8bit", root / "leftImg8bit_trainvaltest" / "leftImg8bit"])
    gt_root = first_dir([root / "gtFine", root / "gtFine_trainvaltest" / "gtFine"])
    if img_root is None or not (img_root / split).is_dir():
        raise FileNotFoundError(f"{name}: no leftImg8bit/{split} under {root}: expected {layout}")
    if gt_root is None or not (gt_root / split).is_dir():
        raise FileNotFoundError(f"{name}: no gtFine/{split} under {root}: expected {layout}")
    images = sorted(p for p in (img_root / split).glob("*/*_leftImg8bit.*") if is_image(p))
    if not images:
        raise no_frames(name, img_root / split, layout)
    records, missing = [], []
    for img in images:
        city = img.parent.name
        frame = img.name[: img.name.rindex("_leftImg8bit")]
        train_ids = gt_root / split / city / f"{frame}_gtFine_labelTrainIds.png"
        label_ids = gt_root / split / city / f"{frame}_gtFine_labelIds.png"
        label = train_ids if train_ids.is_file() else label_ids if label_ids.is_file() else None
        if label is None:
            missing.append(train_ids)
            continue
        records.append(Record(f"{city}/{frame}", img, label))
    if missing:
        raise FileNotFoundError(f"{name}: {len(missing)} of {len(images)} frames have no gtFine "
                                f"label, e.g. {missing[0]}")
    return ImageDataset(records, _cityscapes_label, dataset=name, root=root, split=split)


CAMVID_LUT = make_lut(ranges=[(0, 10, INLIER)], default=VOID)  # 11 = void; other ids: ignore


def camvid(root: str | Path, split: str | None = None) -> ImageDataset:
    """CamVid, SegNet version (11 classes + void): every class inlier, void ignored."""
    name = "camvid"
    root = check_root(root, name)
    split = split_name(split, ("train", "val", "test"), "train", name)
    layout = ("the CamVid SegNet layout ROOT/{train,val,test}/<name>.png|jpg and "
              "ROOT/<split>annot/<name>.png")
    base = root if (root / split).is_dir() else root / "CamVid"
    if not (base / split).is_dir():
        raise FileNotFoundError(f"{name}: no {split}/ under {root}: expected {layout}")
    if not (base / f"{split}annot").is_dir():
        raise FileNotFoundError(f"{name}: no {split}annot/ under {base}: expected {layout}")
    images = images_in(base / split)
    if not images:
        raise no_frames(name, base / split, layout)
    records = pair_labels(images, base / split, base / f"{split}annot", dataset=name)
    return ImageDataset(records, LutLabel(CAMVID_LUT), dataset=name,
                        root=root, split=split)


ALLO_ANOMALY_CLASS = 8
ALLO_LUT = make_lut({ALLO_ANOMALY_CLASS: ANOMALY, 255: VOID}, ranges=[(0, 7, INLIER)],
                    default=VOID)


class _AlloLabel:
    def __init__(self, training: bool):
        self.training = training

    def __call__(self, raw: np.ndarray, path: Path) -> np.ndarray:
        label = apply_lut(raw, ALLO_LUT)
        if self.training and (label == ANOMALY).any():
            raise ValueError(f"allo: training mask {path} contains the anomaly class 8")
        return label


def _allo_mask(img: Path) -> Path:
    return img.parent.parent / "masks" / img.name


def allo(root: str | Path, split: str | None = None) -> ImageDataset:
    """ALLO v3: ``train`` = normal frames (all inlier), ``test`` = normal + anomalous frames."""
    name = "allo"
    root = check_root(root, name)
    split = split_name(split, ("train", "test"), "train", name)
    layout = ("the ALLO v3 layout ROOT/train_v3/**/normal/**/images/*.png and "
              "ROOT/test_v3/**/images/*.png, masks beside each images/ folder in masks/")
    split_dir = first_dir([root / f"{split}_v3", root / split])
    if split_dir is None:
        raise FileNotFoundError(f"{name}: no {split}_v3/ (or {split}/) under {root}: "
                                f"expected {layout}")
    images = sorted(p for p in split_dir.rglob("*.png") if p.parent.name == "images")
    if split == "train":
        # Training uses normal frames only: anomalous ones would leak anomalies into the inliers.
        images = [p for p in images if "normal" in p.relative_to(split_dir).parts[:-1]]
    if not images:
        raise no_frames(name, split_dir, layout)
    records, missing = [], []
    for img in images:
        mask = _allo_mask(img)
        if not mask.is_file():
            if split == "test":
                missing.append(mask)
                continue
            mask = None
        records.append(Record(stem_key(img, split_dir), img, mask))
    if missing:
        raise FileNotFoundError(f"{name}: {len(missing)} test frames have no mask, "
                                f"e.g. {missing[0]}")
    return ImageDataset(records, _AlloLabel(training=split == "train"), dataset=name, root=root,
                        split=split)


IDD_LIVING_THINGS = 2
IDD_LUT = make_lut({IDD_LIVING_THINGS: VOID, 255: VOID}, ranges=[(0, 6, INLIER)], default=VOID)


def idd_lite(root: str | Path, split: str | None = None) -> ImageDataset:
    """IDD Lite: every level-1 class inlier except living things (2, void), 255 void."""
    name = "idd_lite"
    root = check_root(root, name)
    split = split_name(split, ("train", "val", "test"), "train", name)
    layout = ("the IDD Lite layout ROOT/leftImg8bit/<split>/<seq>/<id>_image.jpg and "
              "ROOT/gtFine/<split>/<seq>/<id>_label.png")
    img_dir = root / "leftImg8bit" / split
    if not img_dir.is_dir():
        raise FileNotFoundError(f"{name}: no leftImg8bit/{split} under {root}: expected {layout}")
    images = sorted(p for p in img_dir.glob("*/*_image.*") if is_image(p))
    if not images:
        raise no_frames(name, img_dir, layout)
    gt_dir = root / "gtFine" / split
    records, missing = [], []
    for img in images:
        frame = img.name[: img.name.rindex("_image")]
        label = gt_dir / img.parent.name / f"{frame}_label.png"
        if not label.is_file():
            if gt_dir.is_dir():
                missing.append(label)
                continue
            label = None  # the unlabelled test split
        records.append(Record(f"{img.parent.name}/{frame}", img, label))
    if missing:
        raise FileNotFoundError(f"{name}: {len(missing)} of {len(images)} frames have no label, "
                                f"e.g. {missing[0]}")
    return ImageDataset(records, LutLabel(IDD_LUT), dataset=name, root=root, split=split)


def kitti_road(root: str | Path, split: str | None = None) -> ImageDataset:
    """KITTI Road frames without labels (``ROOT/images/``): every pixel inlier."""
    name = "kitti_road"
    root = check_root(root, name)
    img_dir = root / "images" if (root / "images").is_dir() else root
    images = images_in(img_dir)
    if not images:
        raise no_frames(name, img_dir, "ROOT/images/<name>.jpg|png")
    return ImageDataset([Record(p.stem, p, None) for p in images], binary_label, dataset=name,
                        root=root, split=split)


def folder(root: str | Path, split: str | None = None) -> ImageDataset:
    """Read a plain folder.

    The folder holds ``images/`` (+ optional ``labels/`` 0/1/255 PNGs), or images directly.
    """
    name = "folder"
    root = check_root(root, name)
    base = root
    if split and (root / split / "images").is_dir():
        base = root / split
    layout = ("ROOT/images/<name>.<ext> with optional ROOT/labels/<name>.png (0/1/255), "
              "or images in ROOT")
    images_dir = base / "images"
    if images_dir.is_dir():
        images = images_in(images_dir, recursive=True)
        labels_dir = first_dir([base / "labels", base / "masks"])
    else:
        images_dir, labels_dir = base, None
        images = images_in(base)
    if not images:
        raise no_frames(name, images_dir, layout)
    if labels_dir is None:
        records = [Record(stem_key(p, images_dir), p, None) for p in images]
    else:
        records = pair_labels(images, images_dir, labels_dir, dataset=name)
    return ImageDataset(records, binary_label, dataset=name, root=root, split=split)
