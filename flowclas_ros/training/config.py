"""Training configuration: the schema (one dataclass per section), its checks, loading.

A YAML file gives any subset of the fields below (missing ones keep their defaults); overrides on
the command line use dotted paths (``train.lr=1e-4``, ``model.flow.steps=4``,
``data.image_size=[360,480]``) and are parsed as YAML, then checked against the field's type
(:mod:`.typed_yaml`). Unknown keys and wrongly typed values raise :class:`ConfigError` naming the
key, the expected type and, for a misspelt key, the closest known one; :func:`validate` checks
each choice against the tuple of the module whose behaviour it names.

Path fields (``data.root``, ``data.outliers``, ``cache.dir``, ``eval.val_dir``, ``out``,
``model.backbone.weights``) expand ``~``, ``${VAR}`` and ``${VAR:-default}``; relative paths are
relative to the working directory.

Layout::

    model:  ModelConfig (backbone, flow, proj_dim, score, mean, std)
    data:   DataConfig: inlier set(s) (InlierSetConfig, BagConfig), outlier source, resizing,
            cropping, PhotometricConfig, flips, pasting (flowclas_ros.data.pasting.PasteConfig)
    cache:  CacheConfig, the frozen-feature cache
    train:  TrainLoopConfig: objective, optimiser, schedule, precision, checkpoints, logging
    eval:   EvalConfig, the validation set or protocol that selects best.pt
    out:    output folder (default runs/<config name>-<objective>)
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.coco import FILTERS
from ..data.compositing import CompositeConfig
from ..data.outlier_sources import GRANULARITIES
from ..data.pasting import PasteConfig
from ..data.protocol_sets import FULL_PARTS
from ..model.config import SCORES, BackboneConfig, FlowConfig, ModelConfig
from ..model.losses import OBJECTIVES
from ..options import DEVICE_PATTERN
from .features import GRID_LABELS
from .precision import TRAINING_PRECISIONS
from .schedule import SCHEDULES
from .typed_yaml import (
    ConfigError,
    expand_path,
    expand_path_fields,
    merge,
    parse_override,
    read_mapping,
    set_key,
    to_plain,
)


@dataclass
class InlierSetConfig:
    """One more inlier training set beside ``data.dataset`` (same reader names).

    ``long_side`` replaces ``data.long_side`` for it (None: that one).
    """

    dataset: str = "idd_lite"
    root: str = ""
    split: str = "train"
    limit: int | None = None
    long_side: int | None = None


@dataclass
class BagConfig:
    """Which frames, for ``data.dataset: bag``.

    ``data.root`` is a rosbag2 folder or an .mcap file. The frames are split by time into
    train / calibration / test (flowclas_ros.data.bags); training reads ``data.split`` (train).
    """

    topic: str = ""
    start_s: float | None = None  # seconds from the start of the bag
    end_s: float | None = None
    stride: int = 1  # every stride-th frame


@dataclass
class PhotometricConfig:
    """Camera-like changes of the frame (after pasting, so the object shares them).

    A new camera should not look anomalous. Each is drawn per sample; ``enabled: false`` draws
    nothing.
    """

    enabled: bool = False
    brightness: float = 0.3  # factor in [1 - b, 1 + b]
    contrast: float = 0.3
    saturation: float = 0.3
    hue: float = 0.03  # shift, in turns of the colour wheel
    gamma: list[float] = field(default_factory=lambda: [0.7, 1.4])
    blur_prob: float = 0.3
    blur_sigma: list[float] = field(default_factory=lambda: [0.3, 1.5])  # pixels
    jpeg_prob: float = 0.3
    jpeg_quality: list[int] = field(default_factory=lambda: [30, 90])


@dataclass
class DataConfig:
    """The inlier training set(s) and the outlier source.

    Each training image is scaled so that its long side is ``long_side`` (if given; never
    enlarged: as a bundle exported with that resolution scales a camera frame; per set with
    ``extra[i].long_side``), resized to ``image_size`` (if given), rescaled by a factor drawn
    from ``scale_range`` (if given) and randomly cropped to ``crop`` (if given; ``image_size``
    when a scale range is set without it), gets outliers pasted, the photometric changes and
    the flips. Batches need one size: set ``image_size`` or ``crop`` when the images differ.

    ``composite`` (``paste.mode: composite``; the fields of
    :class:`~flowclas_ros.data.compositing.CompositeConfig`, e.g. ``height_px: [6, 160]``,
    heights drawn log-uniformly: small far obstacles): the road is estimated on the whole scaled
    frame before the crop (on the rows above a VOID band: the nuScenes hood) and cropped with
    it; a frame is composited with chance ``composite_prob``, else (and where its crop has no
    usable road) its object is hard-copied. Without it, composite mode is what it always was.

    ``label_anomaly_fraction`` (``label_mode: area``): a feature cell is ANOMALY when at least
    this fraction of its pixels is (0.5, the default, is the area rule as it always was; a
    small obstacle covers a fraction of one stride-16 cell, so 0.125 lets it be trained as an
    outlier), VOID when less but some is.
    """

    dataset: str = "camvid"  # a flowclas_ros.data TRAIN_DATASETS name
    root: str = ""
    split: str = "train"
    limit: int | None = None  # use only the first N training images (tests, quick runs)
    extra: list[InlierSetConfig] = field(default_factory=list)  # more inlier sets
    bag: BagConfig = field(default_factory=BagConfig)  # dataset "bag" only
    long_side: int | None = None  # frames scaled to this long side (aspect kept, never enlarged)
    image_size: list[int] | None = None  # [H, W] resize before cropping
    scale_range: list[float] | None = None  # [lo, hi] random rescale factor
    crop: list[int] | None = None  # [H, W] random crop
    photometric: PhotometricConfig = field(default_factory=PhotometricConfig)
    label_mode: str = "nearest"  # feature-grid labels: .features.GRID_LABELS (nearest, area)
    label_anomaly_fraction: float = 0.5  # area: the anomalous fraction that makes a cell ANOMALY
    hflip: bool = True
    vflip: bool = False  # ALLO
    outliers: str = ""  # COCO json / YOLO-seg folder / mask PNG folder
    outlier_filter: str = "road"  # COCO class filter: data.coco.FILTERS (road, allo, none)
    outlier_split: str | None = None  # sub-folder / split of the outlier source (e.g. train2017)
    outlier_granularity: str = "image"  # data.outlier_sources.GRANULARITIES (image, instance)
    held_out_classes: list[str] = field(default_factory=list)  # never pasted (the protocol's)
    # Exclude the held-out part (flowclas_ros.data.default_outlier_split with this seed and
    # fraction), which the validation set pastes: same values on both sides keep them disjoint.
    outlier_holdout: bool = True
    outlier_val_fraction: float = 0.25
    outlier_split_seed: int = 0
    paste: PasteConfig = field(default_factory=PasteConfig)  # data.pasting's own
    # paste.mode composite: data.compositing's own (fields not given keep its defaults)
    composite: CompositeConfig | None = None
    composite_prob: float = 1.0  # with ``composite``: the chance a frame is composited
    num_workers: int = 0  # DataLoader worker processes


@dataclass
class CacheConfig:
    """Frozen-feature cache: ``variants`` seeded pasted versions of every training image.

    Each variant is an independent draw of crop, paste and flips whose backbone features are
    stored (fp16); an epoch uses one variant of each image. ``dir`` defaults to
    $FLOWCLAS_CACHE/features or ~/.cache/flowclas_ros/features (flowclas_ros.paths.cache_dir).
    """

    enabled: bool = True
    dir: str | None = None
    variants: int = 4
    batch_size: int = 8  # backbone batch while building


@dataclass
class TrainLoopConfig:
    """The ``train:`` section.

    Objective, optimiser, schedule, device and precision, and the checkpoints and logs of the
    loop.
    """

    objective: str = "flowclas"  # model.losses.OBJECTIVES: nll, or flowclas (alpha * nll + con)
    epochs: int = 10
    max_steps: int | None = None  # stop (and end the schedule) after this many steps
    batch_size: int = 8  # per process; global batch = batch_size * world size
    lr: float = 1e-4
    weight_decay: float = 1e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_fraction: float = 0.05  # of all steps; linear from lr * warmup_start_factor
    warmup_start_factor: float = 0.01
    final_lr_factor: float = 0.01  # cosine decay ends at lr * this
    grad_clip: float = 1.0  # max global gradient norm; 0 disables
    schedule: str = "one_cycle"  # .schedule.SCHEDULES: one_cycle (the authors') or constant
    alpha: float = 1.0  # weight of the NLL term (per pixel and channel; METHOD.md section 3)
    temperature: float = 0.13  # contrastive temperature (0.10 for ALLO)
    max_views: int = 512
    aux_contrast: bool = True  # the auxiliary image's cells join the contrast set (authors')
    seed: int = 0
    device: str = "auto"  # auto (cuda if available), cpu, cuda or cuda:N
    precision: str = "auto"  # .precision.TRAINING_PRECISIONS; auto: bf16 on CUDA, fp32 on CPU
    cpu_threads: int = 0  # torch intra-op threads; 0 = torch's default (1 helps on a busy CPU)
    checkpoint_every: int = 500  # steps; a checkpoint is also written at the end
    log_every: int = 10  # steps between CSV / TensorBoard rows
    progress: bool = True  # tqdm bar (rank 0)


@dataclass
class EvalConfig:
    """Checkpoint selection.

    On the validation protocol (``protocol``, by its selection score;
    flowclas_ros.evaluation.protocol) or on a validation folder (``val_dir``, by AUPRC).

    The protocol is scored as the bundle will run: frames resized to ``input_size``, or with
    ``long_side`` set, scaled to that long side keeping their aspect (never enlarged: a bundle
    exported with ``--long-side``). ``parts``: the parts scored (None: the legacy selection
    parts and kitti_clean, as always; ``evaluation.protocol.SCORE_PARTS`` for the score that
    weighs the small-obstacle parts too; parts the protocol lacks are skipped).
    """

    protocol: str | None = None  # a folder built by flowclas_ros.data.protocol_sets
    protocol_data: str = "${FLOWCLAS_DATA:-../shared/data}"  # to build it when missing
    input_size: list[int] = field(default_factory=lambda: [360, 480])  # as the bundle will run
    long_side: int | None = None  # instead of input_size: frames keep their aspect (format 3)
    parts: list[str] | None = None  # protocol parts scored for selection; None: the legacy ones
    fpr: float = 0.05  # inlier FPR of the threshold calibrated on the protocol's clean frames
    val_dir: str | None = None
    every: int = 0  # steps between evaluations; 0 = only at the end
    build_if_missing: bool = False  # build val_dir from CamVid val/test + held-out outliers
    build_splits: list[str] = field(default_factory=lambda: ["val", "test"])
    build_limit: int | None = None  # frames per split
    build_seed: int = 0  # paste seed of the validation frames
    limit: int | None = None  # score only the first N validation images


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    out: str | None = None
    name: str = "train"  # set from the config file name; names the default output folder

    def to_dict(self) -> dict[str, Any]:
        """Return every field, less the optional ones at their defaults.

        The optional ones are :data:`OPTIONAL_DEFAULTS`: a config that does not use them is
        written exactly as before they existed.
        """
        d = to_plain(self)
        d["model"] = to_plain(self.model.to_dict())
        for key, default in OPTIONAL_DEFAULTS.items():
            section, leaf = key.split(".")
            if d[section].get(leaf, default) == default:
                d[section].pop(leaf, None)
        for extra in d["data"]["extra"]:
            if extra.get("long_side") is None:
                extra.pop("long_side", None)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        cfg = cls()
        merge(cfg, d, "")
        expand_paths(cfg)
        validate(cfg)
        return cfg

    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path("runs") / f"{self.name}-{self.train.objective}"


# Fields added after configs were first written, left out of to_dict() at these values.
OPTIONAL_DEFAULTS = {"data.long_side": None, "data.label_anomaly_fraction": 0.5,
                     "data.composite": None, "data.composite_prob": 1.0, "eval.long_side": None,
                     "eval.parts": None}

PATH_FIELDS = ("data.root", "data.outliers", "cache.dir", "eval.val_dir", "eval.protocol",
               "eval.protocol_data", "out", "model.backbone.weights", "model.road_prior.weights")


def expand_paths(cfg: TrainConfig) -> None:
    expand_path_fields(cfg, PATH_FIELDS)
    for extra in cfg.data.extra:
        if extra.root:
            extra.root = expand_path(extra.root)
    for part in cfg.model.backbone.fuse:
        if part.weights:
            part.weights = expand_path(part.weights)


def apply_overrides(cfg: TrainConfig, overrides: list[str]) -> TrainConfig:
    for text in overrides:
        key, value = parse_override(text)
        set_key(cfg, key, value)
    expand_paths(cfg)
    validate(cfg)
    return cfg


def _one_of(key: str, value: Any, choices) -> tuple[bool, str]:
    choices = tuple(choices)
    return value in choices, f"{key} must be one of {choices}, got {value!r}"


def _composite_checks(d: DataConfig) -> list[tuple[bool, str]]:
    c = d.composite
    checks = [(0 <= d.composite_prob <= 1, "data.composite_prob must be in [0, 1]")]
    if c is None:
        return checks
    pairs = {"height_px": c.height_px, "height_ratio": c.height_ratio, "objects": c.objects}
    return checks + [
        (v is None or (len(v) == 2 and 0 < v[0] <= v[1]),
         f"data.composite.{k} must be [lo, hi] with 0 < lo <= hi") for k, v in pairs.items()]


def validate(cfg: TrainConfig) -> None:
    """Cross-field checks that types alone do not catch."""
    t, d = cfg.train, cfg.data
    checks = [
        _one_of("train.objective", t.objective, OBJECTIVES),
        _one_of("train.precision", t.precision, TRAINING_PRECISIONS),
        (bool(DEVICE_PATTERN.match(t.device)),
         f"train.device must be auto, cpu, cuda or cuda:N, got {t.device!r}"),
        (t.epochs >= 1, "train.epochs must be >= 1"),
        (t.max_steps is None or t.max_steps >= 1, "train.max_steps must be >= 1 or null"),
        (t.batch_size >= 1, "train.batch_size must be >= 1"),
        (t.lr > 0, "train.lr must be > 0"),
        (len(t.betas) == 2, "train.betas must have two values"),
        (0 <= t.warmup_fraction < 1, "train.warmup_fraction must be in [0, 1)"),
        (t.max_views >= 1, "train.max_views must be >= 1"),
        (t.temperature > 0, "train.temperature must be > 0"),
        (t.checkpoint_every >= 1, "train.checkpoint_every must be >= 1"),
        (t.log_every >= 1, "train.log_every must be >= 1"),
        (t.cpu_threads >= 0, "train.cpu_threads must be >= 0"),
        (cfg.cache.variants >= 1, "cache.variants must be >= 1"),
        (cfg.cache.batch_size >= 1, "cache.batch_size must be >= 1"),
        (d.image_size is None or len(d.image_size) == 2, "data.image_size must be [H, W]"),
        (d.crop is None or len(d.crop) == 2, "data.crop must be [H, W]"),
        (0 <= d.outlier_val_fraction < 1, "data.outlier_val_fraction must be in [0, 1)"),
        _one_of("data.outlier_filter", d.outlier_filter, FILTERS),
        (cfg.eval.every >= 0, "eval.every must be >= 0"),
        _one_of("train.schedule", t.schedule, SCHEDULES),
        (d.dataset != "bag" or bool(d.bag.topic),
         "data.dataset bag needs data.bag.topic (train --topic NAME): the camera topic to read"),
        (d.bag.stride >= 1, "data.bag.stride must be >= 1"),
        _one_of("data.label_mode", d.label_mode, GRID_LABELS),
        _one_of("data.outlier_granularity", d.outlier_granularity, GRANULARITIES),
        (d.scale_range is None
         or (len(d.scale_range) == 2 and 0 < d.scale_range[0] <= d.scale_range[1]),
         "data.scale_range must be [lo, hi] with 0 < lo <= hi"),
        (len(cfg.eval.input_size) == 2, "eval.input_size must be [H, W]"),
        (0 <= cfg.eval.fpr < 1, "eval.fpr must be in [0, 1)"),
        _one_of("model.score", cfg.model.score, SCORES),
        (0 < d.label_anomaly_fraction <= 1, "data.label_anomaly_fraction must be in (0, 1]"),
        (all(v is None or v >= 1 for v in [d.long_side, cfg.eval.long_side]
             + [e.long_side for e in d.extra]), "long_side values must be >= 1 or null"),
        (cfg.model.backbone.name == "fused" or not cfg.model.backbone.fuse,
         "model.backbone.fuse lists the parts of model.backbone.name: fused"),
        (cfg.model.backbone.name != "fused" or bool(cfg.model.backbone.fuse),
         "model.backbone.name fused needs its parts in model.backbone.fuse"),
        (not cfg.model.road_prior.enabled or cfg.model.score == "nll",
         "model.road_prior needs model.score nll"),
        (cfg.model.road_prior.dilate >= 1 and cfg.model.road_prior.dilate % 2 == 1,
         "model.road_prior.dilate must be an odd number >= 1"),
        (len(cfg.model.road_prior.input_size) == 2
         and all(v >= 16 and v % 16 == 0 for v in cfg.model.road_prior.input_size),
         "model.road_prior.input_size must be [H, W], multiples of 16"),
        (d.composite is None or d.paste.mode == "composite",
         "data.composite is for data.paste.mode composite"),
        *_composite_checks(d),
        *([_one_of("eval.parts[]", p, FULL_PARTS) for p in cfg.eval.parts or []]),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    try:
        d.paste.check()  # its own ranges and choices (aux backgrounds, modes)
    except ValueError as exc:
        raise ConfigError(f"data.paste.{exc}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Defaults <- YAML file <- overrides; ``name`` defaults to the file's stem."""
    cfg = TrainConfig()
    if path is not None:
        path = Path(path)
        d = read_mapping(path)
        d.setdefault("name", path.stem)
        try:
            merge(cfg, d, "")
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    return apply_overrides(cfg, list(overrides or []))


# Old names of the section types, importable for a while.
_RENAMED = {"TrainSettings": "TrainLoopConfig", "PasteSettings": "PasteConfig",
            "BagSettings": "BagConfig", "InlierSet": "InlierSetConfig",
            "PRECISIONS": "TRAINING_PRECISIONS"}


def __getattr__(name: str) -> Any:
    if name in _RENAMED:
        new = _RENAMED[name]
        warnings.warn(f"flowclas_ros.training.config.{name} is now {new}; the old name will go",
                      FutureWarning, stacklevel=2)
        return globals()[new]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["BackboneConfig", "BagConfig", "CacheConfig", "CompositeConfig", "ConfigError",
           "DataConfig", "EvalConfig", "FlowConfig", "InlierSetConfig", "ModelConfig",
           "PasteConfig", "PhotometricConfig", "TrainConfig", "TrainLoopConfig", "apply_overrides",
           "expand_path", "expand_paths", "load_config", "parse_override", "set_key", "validate"]
