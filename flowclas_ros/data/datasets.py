"""Dataset readers by name: ``build_dataset(name, root, split)`` -> :class:`ImageDataset`.

Every reader returns a lazy ``Sequence[Sample]`` (:mod:`.frames`) with labels INLIER 0,
ANOMALY 1, VOID 255. A root that does not match the expected layout raises
``FileNotFoundError`` (a folder or file is missing) or ``ValueError`` (a file has unexpected
content), with a message that names what is missing and the layout expected.

* inlier sets (:mod:`.inlier_sets`): ``cityscapes``, ``camvid``, ``idd_lite``, ``kitti_road``,
  ``allo``, ``folder``; ``hires_road`` (:mod:`.hires_road`: KITTI raw and nuScenes at camera
  resolution, splits ``train`` / ``protocol`` by drive);
* robot recordings (:mod:`.bags`): ``bag`` (a rosbag2 folder or an .mcap file, ``topic=``;
  splits ``train``, ``calibration``, ``test`` by time);
* anomaly benchmarks (:mod:`.benchmarks`): ``road_anomaly``, ``fishyscapes_laf``,
  ``fishyscapes_static``, ``smiyc_anomaly``, ``smiyc_obstacle``, ``lost_and_found`` (and
  ``allo``'s test split, ``folder``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from .benchmarks import (
    fishyscapes_laf,
    fishyscapes_static,
    lost_and_found,
    road_anomaly,
    smiyc_anomaly,
    smiyc_obstacle,
)
from .frames import ImageDataset, Record, Sample, read_image, read_label
from .hires_road import hires_road
from .inlier_sets import allo, camvid, cityscapes, folder, idd_lite, kitti_road
from .layout import IMAGE_EXTS

TRAIN_DATASETS = ("cityscapes", "camvid", "idd_lite", "kitti_road", "allo", "folder", "bag",
                  "hires_road")
EVAL_DATASETS = ("road_anomaly", "fishyscapes_laf", "fishyscapes_static", "smiyc_anomaly",
                 "smiyc_obstacle", "lost_and_found", "allo", "folder")

def _bag(root, split=None, **kw) -> ImageDataset:
    # Imported on use: rosbags is needed only by recordings.
    from .bags import bag_dataset
    return bag_dataset(root, split, **kw)


READERS: dict[str, Callable[..., ImageDataset]] = {
    "cityscapes": cityscapes,
    "camvid": camvid,
    "idd_lite": idd_lite,
    "kitti_road": kitti_road,
    "hires_road": hires_road,
    "bag": _bag,
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
    """Apply the reader for ``name`` (see the module docstring) to ``root``.

    ``split=None`` picks the dataset's usual split: ``train`` for the training sets, ``test``
    for Lost and Found; single-split benchmarks (Road Anomaly, Fishyscapes, SMIYC) ignore it.
    Extra keywords go to the reader (``images_root=`` for the official Fishyscapes Lost & Found,
    ``cityscapes_root=`` for the official Fishyscapes Static).
    """
    key = name.lower().replace("-", "_")
    if key not in READERS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(READERS)}")
    return READERS[key](root, split, **kw)


__all__ = ["EVAL_DATASETS", "IMAGE_EXTS", "READERS", "TRAIN_DATASETS", "ImageDataset", "Record",
           "Sample", "build_dataset", "read_image", "read_label"]
