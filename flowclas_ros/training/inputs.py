"""What a run trains on, assembled from ``cfg.data``.

The inlier frames, the outlier source and its split, the paster (or compositor), and the
:class:`~.samples.PairMaker` over them; and :func:`cache_spec`, everything the cached features of
those inputs depend on.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..data.compositing import CompositeConfig, Compositor
from ..data.datasets import build_dataset
from ..data.outlier_sources import OutlierSource, default_outlier_split, load_outlier_source
from ..data.pasting import OutlierPaster
from .config import ConfigError, DataConfig, TrainConfig
from .feature_cache import file_fingerprint
from .precision import precision_name
from .samples import Frames, LongSide, PairMaker


@dataclass
class TrainingInputs:
    """The frames, outlier objects and pair maker of a run.

    The frames (one dataset, or :class:`~.samples.Frames` over several), the outlier objects
    pasted in training and those held out for validation (None without an outlier source), and
    the pair maker over the first ``len(pairs)`` frames.
    """

    dataset: Any
    pairs: PairMaker
    train_outliers: OutlierSource | None
    held_out_outliers: OutlierSource | None


def outlier_source_kw(d: DataConfig) -> dict[str, Any]:
    """Return the outlier source options of ``d`` that the validation set builder shares.

    These are the :func:`~flowclas_ros.data.outlier_sources.load_outlier_source` options
    (filter and split).
    """
    kw: dict[str, Any] = {"filter": d.outlier_filter}
    if d.outlier_split:
        kw["split"] = d.outlier_split
    return kw


def _frames(d: DataConfig, log: Callable[[str], None]) -> tuple[Any, int]:
    parts = []
    for ds_name, root, split, limit, long_side in [
            (d.dataset, d.root, d.split, d.limit, d.long_side)] + [
            (e.dataset, e.root, e.split, e.limit, e.long_side or d.long_side) for e in d.extra]:
        kw = ({"topic": d.bag.topic, "start_s": d.bag.start_s, "end_s": d.bag.end_s,
               "stride": d.bag.stride, "log": log} if ds_name == "bag" else {})
        ds = build_dataset(ds_name, root, split, **kw)
        n = len(ds) if limit is None else min(limit, len(ds))
        parts.append((LongSide(ds, long_side) if long_side else ds, n))
    dataset = parts[0][0] if len(parts) == 1 else Frames(parts)
    return dataset, sum(k for _, k in parts)


def _outliers(d: DataConfig) -> tuple[OutlierSource, OutlierSource | None]:
    kw = outlier_source_kw(d)
    if d.outlier_granularity != "image":
        kw["granularity"] = d.outlier_granularity
    source = load_outlier_source(d.outliers, **kw)
    if d.held_out_classes:
        source, _ = source.split_by_category(d.held_out_classes)
    if d.outlier_holdout and d.outlier_val_fraction > 0:
        return default_outlier_split(source, seed=d.outlier_split_seed,
                                     val_fraction=d.outlier_val_fraction)
    return source, None


def build_inputs(cfg: TrainConfig, log: Callable[[str], None] = print) -> TrainingInputs:
    """Build the inputs of ``cfg``; ConfigError when there is nothing to train on."""
    d = cfg.data
    dataset, n = _frames(d, log)
    if n == 0:
        raise ConfigError(f"no training images in {d.root} ({d.dataset}, split {d.split})")
    train_outliers = held_out = paster = compositor = None
    if d.outliers:
        train_outliers, held_out = _outliers(d)
        if len(train_outliers) == 0:
            raise ConfigError(f"no usable outlier objects in {d.outliers}")
        paster = OutlierPaster(train_outliers, d.paste)
        if d.paste.mode == "composite":
            compositor = Compositor(train_outliers, d.composite or CompositeConfig())
    elif cfg.train.objective == "flowclas":
        raise ConfigError("objective flowclas needs outliers: set data.outliers")
    pairs = PairMaker(dataset, list(range(n)), paster, d, compositor)
    return TrainingInputs(dataset, pairs, train_outliers, held_out)


def cache_spec(cfg: TrainConfig, model, n_images: int, autocast: bool) -> dict[str, Any]:
    """Everything the cached features depend on (hashed into the cache key)."""
    d = cfg.data
    mean = model.mean.flatten().tolist()
    std = model.std.flatten().tolist()
    b = cfg.model.backbone
    # Keys of options a config does not use are left out: its key stays what it always was.
    new = {"long_side": d.long_side,
           "extra_long_side": [e.long_side for e in d.extra] if any(
               e.long_side for e in d.extra) else None,
           "composite": ([dataclasses.asdict(d.composite), d.composite_prob]
                         if d.composite is not None else None),
           "label_anomaly_fraction": (d.label_anomaly_fraction
                                      if d.label_anomaly_fraction != 0.5 else None),
           "parts_weights_files": [file_fingerprint(p.weights) for p in b.fuse] or None}
    return {
        "backbone": {**b.to_dict(), "weights_file": file_fingerprint(b.weights)},
        "normalisation": [mean, std],
        "dataset": d.dataset, "root": str(Path(d.root).resolve()), "split": d.split,
        "n_images": n_images, "image_size": d.image_size, "crop": d.crop,
        "hflip": d.hflip, "vflip": d.vflip,
        **({"extra": [[e.dataset, str(Path(e.root).resolve()), e.split, e.limit]
                      for e in d.extra]} if d.extra else {}),
        **({"scale_range": d.scale_range} if d.scale_range else {}),
        **({"bag": d.bag.__dict__} if d.dataset == "bag" else {}),
        **({"photometric": d.photometric.__dict__} if d.photometric.enabled else {}),
        **({"label_mode": d.label_mode} if d.label_mode != "nearest" else {}),
        **({"outliers_by": [d.outlier_granularity, d.held_out_classes]}
           if d.outlier_granularity != "image" or d.held_out_classes else {}),
        "outliers": str(Path(d.outliers).resolve()) if d.outliers else None,
        "outlier_split": [d.outlier_filter, d.outlier_split, d.outlier_holdout,
                          d.outlier_val_fraction, d.outlier_split_seed],
        "paste": d.paste.__dict__, "seed": cfg.train.seed, "variants": cfg.cache.variants,
        "precision": precision_name(autocast),
        **{k: v for k, v in new.items() if v is not None},
    }


__all__ = ["TrainingInputs", "build_inputs", "cache_spec", "outlier_source_kw"]
