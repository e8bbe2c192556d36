"""Frames and their labels: the lazy ``ImageDataset`` every reader returns, and how files decode.

One convention everywhere (:mod:`flowclas_ros.labels`; METHOD.md section 9 maps each benchmark
onto it)::

    image (H, W, 3) uint8 RGB;  label (H, W) uint8: INLIER 0, ANOMALY 1, VOID 255

An :class:`ImageDataset` is a ``Sequence[Sample]`` over :class:`Record` s (where a frame and its
label live): the file lists are built, sorted, when the dataset is created; images and labels
are decoded with PIL in ``__getitem__`` and raw label ids are mapped through a lookup table.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
from PIL import Image

from ..labels import INLIER, VOID


@dataclass
class Sample:
    """One frame with a stable ``name``.

    ``image`` is (H, W, 3) uint8 RGB, ``label`` (H, W) uint8 0/1/255.
    """

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


def make_lut(mapping: dict[int, int] | None = None, default: int = VOID,
             ranges: Sequence[tuple[int, int, int]] = ()) -> np.ndarray:
    """Build a 256-entry uint8 lookup table raw id -> 0/1/255.

    ``ranges`` holds inclusive (lo, hi, value) spans applied before ``mapping``.
    """
    lut = np.full(256, default, dtype=np.uint8)
    for lo, hi, value in ranges:
        lut[lo:hi + 1] = value
    for k, v in (mapping or {}).items():
        lut[k] = v
    return lut


def apply_lut(raw: np.ndarray, lut: np.ndarray, overflow: int = VOID) -> np.ndarray:
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
