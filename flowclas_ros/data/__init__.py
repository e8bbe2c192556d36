"""Data: dataset readers, COCO outlier exposure, the pasted-CamVid validation set.

No torch, no ROS: numpy and PIL only.
"""
from .datasets import (EVAL_DATASETS, TRAIN_DATASETS, ImageDataset, Sample, build_dataset,
                       read_image, read_label)
from .outliers import (OutlierObject, OutlierPaster, OutlierSource, PasteConfig, PastedSample,
                       default_outlier_split, load_outlier_source)


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
