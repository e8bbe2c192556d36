"""Data: dataset readers, outlier sources, pasting, the pasted-CamVid validation set.

No torch, no ROS: numpy and PIL only. One concept per module:

* :mod:`.frames` - Sample, ImageDataset, decoding images and labels;
* :mod:`.layout` - finding frames in a download layout;
* :mod:`.inlier_sets`, :mod:`.benchmarks` - the readers; :mod:`.datasets` - by name;
* :mod:`.coco` - COCO classes, filters and mask decoding;
* :mod:`.outlier_sources` - the objects to paste; :mod:`.pasting` - pasting them;
* :mod:`.validation_set` - the pasted-CamVid development set.
"""
from .datasets import (
    EVAL_DATASETS,
    TRAIN_DATASETS,
    ImageDataset,
    Sample,
    build_dataset,
    read_image,
    read_label,
)
from .outlier_sources import (
    OutlierObject,
    OutlierSource,
    default_outlier_split,
    load_outlier_source,
)
from .pasting import OutlierPaster, PasteConfig, PastedSample


def __getattr__(name):
    # Lazy: importing validation_set here would make `python -m ...validation_set` warn.
    if name == "build_validation_set":
        from .validation_set import build_validation_set
        return build_validation_set
    raise AttributeError(name)


__all__ = ["EVAL_DATASETS", "TRAIN_DATASETS", "ImageDataset", "Sample", "build_dataset",
           "read_image", "read_label", "OutlierObject", "OutlierPaster", "OutlierSource",
           "PasteConfig", "PastedSample", "default_outlier_split", "load_outlier_source",
           "build_validation_set"]
