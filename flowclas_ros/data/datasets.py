"""Dataset readers: the inlier training sets and the anomaly benchmarks, in their download layouts.

Every reader returns an :class:`ImageDataset`, a lazy ``Sequence[Sample]``: the file lists are
built (sorted, so names and order are stable) when the dataset is created, the images and labels
are decoded with PIL in ``__getitem__``. Labels follow one convention everywhere (METHOD.md
section 9 maps each benchmark onto it)::

    image (H, W, 3) uint8 RGB;  label (H, W) uint8: 0 inlier, 1 anomaly, 255 ignore

``build_dataset(name, root, split)`` picks the reader. A root that does not match the expected
layout raises ``FileNotFoundError`` (a folder or file is missing) or ``ValueError`` (a file has
unexpected content), with a message that names what is missing and the layout expected.

Layouts (``ROOT`` is the ``root`` argument):

* ``cityscapes``: ``ROOT/leftImg8bit/<split>/<city>/<frame>_leftImg8bit.{png,jpg}`` and
  ``ROOT/gtFine/<split>/<city>/<frame>_gtFine_labelTrainIds.png`` (255 ignore, the 19 classes
  inlier); ``_gtFine_labelIds.png`` is used when trainIds were never generated. The archives'
  own roots (``ROOT/leftImg8bit_trainvaltest/leftImg8bit``, ``ROOT/gtFine_trainvaltest/gtFine``)
  are accepted too.
* ``camvid`` (SegNet version): ``ROOT/<split>/<name>.{png,jpg}`` and
  ``ROOT/<split>annot/<name>.png`` with classes 0..10 inlier and 11 (void) ignore.
  ``ROOT/CamVid/...`` is accepted.
* ``allo`` (ALLO v3, the layout of the authors' ALLO loader):
  ``ROOT/train_v3/**/normal/**/images/*.png`` (training: normal frames only) and
  ``ROOT/test_v3/**/images/*.png`` (normal and ``anomalous`` frames), each with its mask at
  ``.../masks/<same name>`` holding classes 0..8 (+255): class 8 is the anomaly, 0..7 inlier.
  ``train``/``test`` folder names without ``_v3`` work too. Training frames without a mask are
  all inlier.
* ``folder``: ``ROOT/images/<name>.<ext>`` (recursively) with optional ``ROOT/labels/<name>.png``
  (or ``masks/``) holding 0/1/255 (the anomaly is 1: a 0/255 mask reads as ignore), or a flat
  folder of images (no labels: all inlier); ``ROOT/<split>/images`` is used when it exists.
* ``road_anomaly``: ``ROOT/frames/<name>.jpg`` and ``ROOT/frames/<name>.labels/labels_semantic.png``
  (2 anomaly, 0 inlier; any other value is ignored). ``ROOT/RoadAnomaly_jpg`` and
  ``ROOT/RoadAnomaly`` are searched too.
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
  2..200 (obstacles) anomaly, 0 and anything else ignore. Default split ``test``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
from PIL import Image

# Same values as flowclas_ros.model.losses (not imported: the data layer stays torch-free).
INLIER, ANOMALY, IGNORE = 0, 1, 255

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")

TRAIN_DATASETS = ("cityscapes", "camvid", "allo", "folder")
EVAL_DATASETS = ("road_anomaly", "fishyscapes_laf", "fishyscapes_static", "smiyc_anomaly",
                 "smiyc_obstacle", "lost_and_found", "allo", "folder")


@dataclass
class Sample:
    """One frame: ``image`` (H, W, 3) uint8 RGB, ``label`` (H, W) uint8 0/1/255, stable ``name``."""

    image: np.ndarray
    label: np.ndarray
    name: str


@dataclass(frozen=True)
class Record:
    """Where one frame lives: ``label`` None means "no annotation": every pixel is inlier."""

    name: str
    image: Path
    label: Path | None = None


# --------------------------------------------------------------------------------------------
# Decoding helpers


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file to (H, W, 3) uint8 RGB (grey and palette images are expanded)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def read_label(path: str | Path) -> np.ndarray:
    """Decode a label PNG to its raw class ids, (H, W) integer array.

    Palette PNGs give their indices, 16-bit PNGs their values; an RGB(A) file is accepted only
    when its colour channels are equal (a grey label saved as RGB).
    """
    with Image.open(path) as im:
        arr = np.asarray(im)
    if arr.ndim == 3:
        rgb = arr[..., :3]
        if not ((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all()):
            raise ValueError(f"label {path} is a colour image; expected single-channel class ids")
        arr = rgb[..., 0]
    return arr


def make_lut(mapping: dict[int, int] | None = None, default: int = IGNORE,
             ranges: Sequence[tuple[int, int, int]] = ()) -> np.ndarray:
    """A 256-entry uint8 lookup table raw id -> 0/1/255.

    ``ranges`` holds inclusive (lo, hi, value) spans applied before ``mapping``.
    """
    lut = np.full(256, default, dtype=np.uint8)
    for lo, hi, value in ranges:
        lut[lo:hi + 1] = value
    for k, v in (mapping or {}).items():
        lut[k] = v
    return lut


def apply_lut(raw: np.ndarray, lut: np.ndarray, overflow: int = IGNORE) -> np.ndarray:
    """Map raw ids through ``lut``; ids outside 0..255 (16-bit labels) become ``overflow``."""
    if raw.dtype == np.uint8:
        return lut[raw]
    raw = raw.astype(np.int64)
    out = lut[np.clip(raw, 0, 255)]
    out[(raw < 0) | (raw > 255)] = overflow
    return out


class LutLabel:
    """Picklable label converter ``(raw ids, path) -> 0/1/255`` through a lookup table.

    (Plain classes, not lambdas: DataLoader workers started with spawn/forkserver pickle the
    dataset.)
    """

    def __init__(self, lut: np.ndarray):
        self.lut = lut

    def __call__(self, raw: np.ndarray, path: Path) -> np.ndarray:
        return apply_lut(raw, self.lut)


_BINARY_VALID = np.zeros(256, dtype=bool)
_BINARY_VALID[[0, 1, 255]] = True


def binary_label(raw: np.ndarray, path: Path) -> np.ndarray:
    """Labels already in the 0/1/255 convention; any other value (a 0/128 colour mask...) raises.

    A 0/255 mask passes and reads as inlier/ignore: anomalies must be stored as 1.
    """
    bad = np.unique(raw[~_BINARY_VALID[np.clip(raw, 0, 255)] | (raw > 255)]) if raw.size else []
    if len(bad):
        raise ValueError(f"label {path} holds values {list(map(int, bad[:8]))}; expected only "
                         "0 (inlier), 1 (anomaly) and 255 (ignore)")
    return raw.astype(np.uint8)


# --------------------------------------------------------------------------------------------
# The dataset


class ImageDataset(Sequence[Sample]):
    """A lazily decoded, sorted list of frames: ``Sequence[Sample]``.

    ``label_fn(raw_ids, label_path) -> (H, W) uint8`` converts a decoded label file to 0/1/255;
    frames without a label file are all inlier.
    """

    def __init__(self, records: Sequence[Record],
                 label_fn: Callable[[np.ndarray, Path], np.ndarray], *, dataset: str,
                 root: Path, split: str | None = None):
        self.records = list(records)
        self.label_fn = label_fn
        self.dataset = dataset
        self.root = Path(root)
        self.split = split
        names = [r.name for r in self.records]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})[:3]
            raise ValueError(f"{dataset} under {root}: duplicate frame names {dup}")

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self[i]

    def __getitem__(self, i: int) -> Sample:  # type: ignore[override]
        if isinstance(i, slice):
            raise TypeError("ImageDataset indices must be integers")
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} frames")
        rec = self.records[i]
        image = self.load_image(rec)
        label = self.load_label(rec, image.shape[:2])
        return Sample(image=image, label=label, name=rec.name)

    def load_image(self, rec: Record) -> np.ndarray:
        return read_image(rec.image)

    def load_label(self, rec: Record, shape: tuple[int, int]) -> np.ndarray:
        if rec.label is None:
            return np.full(shape, INLIER, dtype=np.uint8)
        label = self.label_fn(read_label(rec.label), rec.label)
        if label.shape != tuple(shape):
            raise ValueError(f"label {rec.label} is {label.shape[1]}x{label.shape[0]} but image "
                             f"{rec.image} is {shape[1]}x{shape[0]}")
        return np.ascontiguousarray(label, dtype=np.uint8)

    def __repr__(self) -> str:
        return (f"ImageDataset({self.dataset!r}, root={str(self.root)!r}, split={self.split!r}, "
                f"frames={len(self)})")


class _OverlayDataset(ImageDataset):
    """Fishyscapes Static (official): a Cityscapes frame plus a stored overlay, clipped to uint8."""

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


# --------------------------------------------------------------------------------------------
# Layout helpers


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTS


def _images_in(folder: Path, recursive: bool = False) -> list[Path]:
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if _is_image(p))


def _check_root(root: str | Path, dataset: str) -> Path:
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"{dataset}: root {root} does not exist")
    if not root.is_dir():
        raise FileNotFoundError(f"{dataset}: root {root} is not a folder")
    return root


def _first_dir(candidates: Sequence[Path]) -> Path | None:
    return next((c for c in candidates if c.is_dir()), None)


def _no_frames(dataset: str, where: Path, layout: str) -> FileNotFoundError:
    return FileNotFoundError(f"{dataset}: no frames found under {where}: expected {layout}")


def _stem_key(path: Path, rel_to: Path) -> str:
    """Relative path without suffix, '/'-separated: a stable frame name."""
    return path.relative_to(rel_to).with_suffix("").as_posix()


def _pair_labels(images: list[Path], images_dir: Path, labels_dir: Path,
                 suffixes: Sequence[str] = ("",), require: bool = True,
                 dataset: str = "") -> list[Record]:
    """Pair each image with ``labels_dir/<rel stem><suffix>.png`` (first suffix that exists)."""
    records, missing = [], []
    for img in images:
        name = _stem_key(img, images_dir)
        label = next((labels_dir / f"{name}{s}.png" for s in suffixes
                      if (labels_dir / f"{name}{s}.png").is_file()), None)
        if label is None:
            missing.append(labels_dir / f"{name}{suffixes[0]}.png")
            if not require:
                continue
        records.append(Record(name, img, label))
    if missing and require:
        raise FileNotFoundError(f"{dataset}: {len(missing)} of {len(images)} images under "
                                f"{images_dir} have no label, e.g. {missing[0]}")
    return records


def _split_name(split: str | None, allowed: Sequence[str], default: str, dataset: str) -> str:
    split = default if split is None else split
    if split not in allowed:
        raise ValueError(f"{dataset}: unknown split {split!r}; expected one of {list(allowed)}")
    return split


# --------------------------------------------------------------------------------------------
# Inlier training sets

# Cityscapes labelIds that have a trainId (the 19 evaluated classes); every other id is ignored.
CITYSCAPES_EVAL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
CITYSCAPES_TRAINID_LUT = make_lut({255: IGNORE}, default=INLIER)
CITYSCAPES_LABELID_LUT = make_lut({i: INLIER for i in CITYSCAPES_EVAL_IDS}, default=IGNORE)


def _cityscapes_label(raw: np.ndarray, path: Path) -> np.ndarray:
    train_ids = path.name.endswith("_labelTrainIds.png")
    return apply_lut(raw, CITYSCAPES_TRAINID_LUT if train_ids else CITYSCAPES_LABELID_LUT)


def cityscapes(root: str | Path, split: str | None = None) -> ImageDataset:
    """Cityscapes fine annotations: every labelled class is inlier, 255 ignore."""
    name = "cityscapes"
    root = _check_root(root, name)
    split = _split_name(split, ("train", "val", "test"), "train", name)
    layout = ("the Cityscapes layout ROOT/leftImg8bit/<split>/<city>/<frame>_leftImg8bit.png and "
              "ROOT/gtFine/<split>/<city>/<frame>_gtFine_labelTrainIds.png")
    img_root = _first_dir([root / "leftImg8bit", root / "leftImg8bit_trainvaltest" / "leftImg8bit"])
    gt_root = _first_dir([root / "gtFine", root / "gtFine_trainvaltest" / "gtFine"])
    if img_root is None or not (img_root / split).is_dir():
        raise FileNotFoundError(f"{name}: no leftImg8bit/{split} under {root}: expected {layout}")
    if gt_root is None or not (gt_root / split).is_dir():
        raise FileNotFoundError(f"{name}: no gtFine/{split} under {root}: expected {layout}")
    images = sorted(p for p in (img_root / split).glob("*/*_leftImg8bit.*") if _is_image(p))
    if not images:
        raise _no_frames(name, img_root / split, layout)
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


CAMVID_LUT = make_lut(ranges=[(0, 10, INLIER)], default=IGNORE)  # 11 = void; other ids: ignore


def camvid(root: str | Path, split: str | None = None) -> ImageDataset:
    """CamVid, SegNet version (11 classes + void): every class inlier, void ignored."""
    name = "camvid"
    root = _check_root(root, name)
    split = _split_name(split, ("train", "val", "test"), "train", name)
    layout = ("the CamVid SegNet layout ROOT/{train,val,test}/<name>.png|jpg and "
              "ROOT/<split>annot/<name>.png")
    base = root if (root / split).is_dir() else root / "CamVid"
    if not (base / split).is_dir():
        raise FileNotFoundError(f"{name}: no {split}/ under {root}: expected {layout}")
    if not (base / f"{split}annot").is_dir():
        raise FileNotFoundError(f"{name}: no {split}annot/ under {base}: expected {layout}")
    images = _images_in(base / split)
    if not images:
        raise _no_frames(name, base / split, layout)
    records = _pair_labels(images, base / split, base / f"{split}annot", dataset=name)
    return ImageDataset(records, LutLabel(CAMVID_LUT), dataset=name,
                        root=root, split=split)


ALLO_ANOMALY_CLASS = 8
ALLO_LUT = make_lut({ALLO_ANOMALY_CLASS: ANOMALY, 255: IGNORE}, ranges=[(0, 7, INLIER)],
                    default=IGNORE)


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
    root = _check_root(root, name)
    split = _split_name(split, ("train", "test"), "train", name)
    layout = ("the ALLO v3 layout ROOT/train_v3/**/normal/**/images/*.png and "
              "ROOT/test_v3/**/images/*.png, masks beside each images/ folder in masks/")
    split_dir = _first_dir([root / f"{split}_v3", root / split])
    if split_dir is None:
        raise FileNotFoundError(f"{name}: no {split}_v3/ (or {split}/) under {root}: "
                                f"expected {layout}")
    images = sorted(p for p in split_dir.rglob("*.png") if p.parent.name == "images")
    if split == "train":
        # Training uses normal frames only: anomalous ones would leak anomalies into the inliers.
        images = [p for p in images if "normal" in p.relative_to(split_dir).parts[:-1]]
    if not images:
        raise _no_frames(name, split_dir, layout)
    records, missing = [], []
    for img in images:
        mask = _allo_mask(img)
        if not mask.is_file():
            if split == "test":
                missing.append(mask)
                continue
            mask = None
        records.append(Record(_stem_key(img, split_dir), img, mask))
    if missing:
        raise FileNotFoundError(f"{name}: {len(missing)} test frames have no mask, "
                                f"e.g. {missing[0]}")
    return ImageDataset(records, _AlloLabel(training=split == "train"), dataset=name, root=root,
                        split=split)


def folder(root: str | Path, split: str | None = None) -> ImageDataset:
    """A plain folder: ``images/`` (+ optional ``labels/`` 0/1/255 PNGs), or images directly."""
    name = "folder"
    root = _check_root(root, name)
    base = root
    if split and (root / split / "images").is_dir():
        base = root / split
    layout = ("ROOT/images/<name>.<ext> with optional ROOT/labels/<name>.png (0/1/255), "
              "or images in ROOT")
    images_dir = base / "images"
    if images_dir.is_dir():
        images = _images_in(images_dir, recursive=True)
        labels_dir = _first_dir([base / "labels", base / "masks"])
    else:
        images_dir, labels_dir = base, None
        images = _images_in(base)
    if not images:
        raise _no_frames(name, images_dir, layout)
    if labels_dir is None:
        records = [Record(_stem_key(p, images_dir), p, None) for p in images]
    else:
        records = _pair_labels(images, images_dir, labels_dir, dataset=name)
    return ImageDataset(records, binary_label, dataset=name, root=root, split=split)


# --------------------------------------------------------------------------------------------
# Evaluation sets

ROAD_ANOMALY_LUT = make_lut({0: INLIER, 2: ANOMALY}, default=IGNORE)


def road_anomaly(root: str | Path, split: str | None = None) -> ImageDataset:
    """Road Anomaly (60 frames): label 2 anomaly, 0 inlier."""
    name = "road_anomaly"
    root = _check_root(root, name)
    layout = "ROOT/frames/<name>.jpg with ROOT/frames/<name>.labels/labels_semantic.png"
    frames = _first_dir([root / "frames", root / "RoadAnomaly_jpg" / "frames",
                         root / "RoadAnomaly" / "frames"])
    if frames is None:
        raise FileNotFoundError(f"{name}: no frames/ under {root}: expected {layout}")
    images = _images_in(frames)
    if not images:
        raise _no_frames(name, frames, layout)
    records, missing = [], []
    for img in images:
        label = frames / f"{img.stem}.labels" / "labels_semantic.png"
        (records if label.is_file() else missing).append(Record(img.stem, img, label))
    if missing:
        raise FileNotFoundError(f"{name}: {len(missing)} frames have no label, "
                                f"e.g. {missing[0].label}")
    return ImageDataset(records, LutLabel(ROAD_ANOMALY_LUT), dataset=name,
                        root=root, split=split)


def _paired_binary(name: str, root: Path, pairs: Sequence[tuple[str, str]], suffixes: Sequence[str],
                   split: str | None) -> ImageDataset | None:
    """The preprocessed layouts: an images folder beside a 0/1/255 labels folder."""
    for images_name, labels_name in pairs:
        images_dir, labels_dir = root / images_name, root / labels_name
        if images_dir.is_dir() and labels_dir.is_dir():
            images = _images_in(images_dir)
            if not images:
                raise _no_frames(name, images_dir, f"images in {images_dir}")
            records = _pair_labels(images, images_dir, labels_dir, suffixes, dataset=name)
            return ImageDataset(records, binary_label, dataset=name, root=root, split=split)
    return None


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
    root = _check_root(root, name)
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
    img_root = _first_dir(candidates)
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
    root = _check_root(root, name)
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
    cs_val = _first_dir(candidates)
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


def _smiyc(name: str, track_dir: str, root: str | Path, split: str | None) -> ImageDataset:
    root = _check_root(root, name)
    base = root / track_dir if (root / track_dir).is_dir() else root
    layout = (f"ROOT/{track_dir}/images/<name>.jpg|webp and "
              f"ROOT/{track_dir}/labels_masks/<name>_labels_semantic.png")
    if not (base / "images").is_dir() or not (base / "labels_masks").is_dir():
        raise FileNotFoundError(f"{name}: no images/ and labels_masks/ under {base}: "
                                f"expected {layout}")
    images = _images_in(base / "images")
    # Test frames ship without labels: only the labelled (validation) frames are a benchmark here.
    records = _pair_labels(images, base / "images", base / "labels_masks",
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


LOST_AND_FOUND_LUT = make_lut({0: IGNORE, 1: INLIER}, ranges=[(2, 200, ANOMALY)], default=IGNORE)


def lost_and_found(root: str | Path, split: str | None = None) -> ImageDataset:
    """Lost and Found (raw gtCoarse labelIds): 1 road inlier, 2..200 obstacles anomaly, 0 ignore."""
    name = "lost_and_found"
    root = _check_root(root, name)
    split = _split_name(split, ("train", "test"), "test", name)
    layout = ("ROOT/leftImg8bit/<split>/<seq>/<frame>_leftImg8bit.png and "
              "ROOT/gtCoarse/<split>/<seq>/<frame>_gtCoarse_labelIds.png")
    if not (root / "leftImg8bit" / split).is_dir():
        raise FileNotFoundError(f"{name}: no leftImg8bit/{split} under {root}: expected {layout}")
    if not (root / "gtCoarse" / split).is_dir():
        raise FileNotFoundError(f"{name}: no gtCoarse/{split} under {root}: expected {layout}")
    images = sorted(p for p in (root / "leftImg8bit" / split).glob("*/*_leftImg8bit.*")
                    if _is_image(p))
    if not images:
        raise _no_frames(name, root / "leftImg8bit" / split, layout)
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


READERS: dict[str, Callable[..., ImageDataset]] = {
    "cityscapes": cityscapes,
    "camvid": camvid,
    "allo": allo,
    "folder": folder,
    "road_anomaly": road_anomaly,
    "fishyscapes_laf": fishyscapes_laf,
    "fishyscapes_static": fishyscapes_static,
    "smiyc_anomaly": smiyc_anomaly,
    "smiyc_obstacle": smiyc_obstacle,
    "lost_and_found": lost_and_found,
}


def build_dataset(name: str, root: str | Path, split: str | None = None, **kw) -> ImageDataset:
    """The reader for ``name`` (see module docstring) applied to ``root``.

    ``split=None`` picks the dataset's usual split: ``train`` for the training sets, ``test``
    for Lost and Found; single-split benchmarks (Road Anomaly, Fishyscapes, SMIYC) ignore it.
    Extra keywords go to the reader (``images_root=`` for the official Fishyscapes Lost & Found,
    ``cityscapes_root=`` for the official Fishyscapes Static).
    """
    key = name.lower().replace("-", "_")
    if key not in READERS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(READERS)}")
    return READERS[key](root, split, **kw)
