"""One outlier object on disk and how it is decoded.

:class:`OutlierObject` and the lazy entries of each source layout (COCO JSON images and
instances, YOLO-seg images and instances, mask PNGs). :mod:`.outlier_sources` finds the entries
of a source and splits them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .coco import polygons_to_mask, segmentation_to_mask
from .frames import read_image


@dataclass
class OutlierObject:
    """One outlier: ``image`` (h, w, 3) uint8 RGB, ``mask`` (h, w) bool pixels to paste.

    ``aux_mask``: the anomaly pixels of ``image`` seen as the auxiliary outlier image (None: the
    same as ``mask``); ``category``: the COCO class name when the source knows it.
    """

    image: np.ndarray
    mask: np.ndarray
    source: str
    aux_mask: np.ndarray | None = None
    category: str = ""


@dataclass(frozen=True)
class _CocoEntry:
    key: str
    image: Path
    height: int
    width: int
    segmentations: tuple

    def load(self) -> OutlierObject:
        image = read_image(self.image)
        h, w = image.shape[:2]
        mask = np.zeros((h, w), dtype=bool)
        for seg in self.segmentations:
            mask |= segmentation_to_mask(seg, h, w)
        return OutlierObject(image, mask, str(self.image))


@dataclass(frozen=True)
class _YoloEntry:
    key: str
    image: Path
    polygons: tuple  # normalised [x1, y1, ...] per instance

    def load(self) -> OutlierObject:
        image = read_image(self.image)
        h, w = image.shape[:2]
        scale = np.array([w, h], dtype=np.float64)
        polys = [(np.asarray(p).reshape(-1, 2) * scale).reshape(-1) for p in self.polygons]
        return OutlierObject(image, polygons_to_mask(polys, h, w), str(self.image))


def _yolo_mask(polygons, h: int, w: int) -> np.ndarray:
    scale = np.array([w, h], dtype=np.float64)
    return polygons_to_mask([(np.asarray(p).reshape(-1, 2) * scale).reshape(-1)
                             for p in polygons], h, w)


@dataclass(frozen=True)
class _YoloInstance:
    key: str
    group: str  # the image it comes from
    image: Path
    polygons: tuple  # this instance's normalised polygon(s)
    aux_polygons: tuple  # every kept-class instance of the image
    category: str

    def load(self) -> OutlierObject:
        image = read_image(self.image)
        h, w = image.shape[:2]
        return OutlierObject(image, _yolo_mask(self.polygons, h, w), str(self.image),
                             aux_mask=_yolo_mask(self.aux_polygons, h, w),
                             category=self.category)


@dataclass(frozen=True)
class _CocoInstance:
    key: str
    group: str
    image: Path
    segmentation: object  # this instance's polygons or RLE
    aux_segmentations: tuple
    category: str

    def load(self) -> OutlierObject:
        image = read_image(self.image)
        h, w = image.shape[:2]
        aux = np.zeros((h, w), dtype=bool)
        for seg in self.aux_segmentations:
            aux |= segmentation_to_mask(seg, h, w)
        return OutlierObject(image, segmentation_to_mask(self.segmentation, h, w),
                             str(self.image), aux_mask=aux, category=self.category)


@dataclass(frozen=True)
class _MaskEntry:
    key: str
    image: Path
    mask: Path

    def load(self) -> OutlierObject:
        image = read_image(self.image)
        with Image.open(self.mask) as m:
            raw = np.asarray(m)
        if raw.ndim == 3:
            raw = raw[..., :3].max(axis=2)
        if raw.shape != image.shape[:2]:
            raise ValueError(f"mask {self.mask} is {raw.shape}, "
                             f"image {self.image} is {image.shape[:2]}")
        return OutlierObject(image, raw > 0, str(self.image))


__all__ = ["OutlierObject"]
