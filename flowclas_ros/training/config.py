"""Training configuration: dataclasses, YAML loading and ``key=value`` overrides.

A YAML file gives any subset of the fields below (missing ones keep their defaults); overrides on
the command line use dotted paths (``train.lr=1e-4``, ``model.flow.steps=4``,
``data.image_size=[360,480]``) and are parsed as YAML, then checked against the field's type.
Unknown keys and wrongly typed values raise :class:`ConfigError` naming the key, the expected type
and, for a misspelt key, the closest known one.

Path fields (``data.root``, ``data.outliers``, ``cache.dir``, ``eval.val_dir``, ``out``,
``model.backbone.weights``) expand ``~``, ``${VAR}`` and ``${VAR:-default}``; relative paths are
relative to the working directory.

Layout::

    model:  ModelConfig (backbone, flow, proj_dim, score, mean, std)
    data:   inlier set, outlier source, resizing, cropping, flips, pasting
    cache:  the frozen-feature cache
    train:  objective, optimiser, schedule, precision, checkpoints, logging
    eval:   the validation folder used to select best.pt
    out:    output folder (default runs/<config name>-<objective>)
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..model.backbones import BackboneConfig
from ..model.flow import FlowConfig
from ..model.flowclas import ModelConfig

OBJECTIVES = ("nll", "flowclas")
SCHEDULES = ("one_cycle", "constant")
PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")


class ConfigError(ValueError):
    """A configuration file or override that does not fit :class:`TrainConfig`."""


@dataclass
class PasteSettings:
    """Outlier pasting (METHOD.md section 4); mirrors flowclas_ros.data.PasteConfig."""

    scales: list[float] = field(default_factory=lambda: [0.1, 0.125, 0.25, 0.5, 0.5, 0.75])
    paste_prob: float = 1.0
    grey_prob: float = 0.0  # ALLO: COCO converted to grey with probability 0.5
    aux_background: str = "inlier"  # "inlier" (road scenes) or "ignore" (ALLO)
    # hardcopy (the authors': random place and scale) or composite (on the estimated road, at
    # its perspective scale and light: flowclas_ros.data.compositing)
    mode: str = "hardcopy"


@dataclass
class InlierSet:
    """One more inlier training set beside ``data.dataset`` (same reader names)."""

    dataset: str = "idd_lite"
    root: str = ""
    split: str = "train"
    limit: int | None = None


@dataclass
class BagSettings:
    """For ``data.dataset: bag`` (``data.root`` = a rosbag2 folder or an .mcap file): which
    frames. They are split by time into train / calibration / test (flowclas_ros.data.bags);
    training reads ``data.split`` (train)."""

    topic: str = ""
    start_s: float | None = None  # seconds from the start of the bag
    end_s: float | None = None
    stride: int = 1  # every stride-th frame


@dataclass
class PhotometricConfig:
    """Camera-like changes of the frame (after pasting, so the object shares them): a new camera
    should not look anomalous. Each is drawn per sample; ``enabled: false`` draws nothing."""

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

    Each training image is resized to ``image_size`` (if given), rescaled by a factor drawn from
    ``scale_range`` (if given) and randomly cropped to ``crop`` (if given; ``image_size`` when a
    scale range is set without it), gets outliers pasted, the photometric changes and the
    flips. Batches need one size: set ``image_size`` when the images of a set differ in size.
    """

    dataset: str = "camvid"  # a flowclas_ros.data TRAIN_DATASETS name
    root: str = ""
    split: str = "train"
    limit: int | None = None  # use only the first N training images (tests, quick runs)
    extra: list[InlierSet] = field(default_factory=list)  # more inlier sets
    bag: BagSettings = field(default_factory=BagSettings)  # dataset "bag" only
    image_size: list[int] | None = None  # [H, W] resize before cropping
    scale_range: list[float] | None = None  # [lo, hi] random rescale factor
    crop: list[int] | None = None  # [H, W] random crop
    photometric: PhotometricConfig = field(default_factory=PhotometricConfig)
    label_mode: str = "nearest"  # feature-grid labels: nearest (authors') or area
    hflip: bool = True
    vflip: bool = False  # ALLO
    outliers: str = ""  # COCO json / YOLO-seg folder / mask PNG folder
    outlier_filter: str = "road"  # COCO class filter: road, allo or none
    outlier_split: str | None = None  # sub-folder / split of the outlier source (e.g. train2017)
    outlier_granularity: str = "image"  # image (authors': one union mask per photo) or instance
    held_out_classes: list[str] = field(default_factory=list)  # never pasted (the protocol's)
    # Exclude the held-out part (flowclas_ros.data.default_outlier_split with this seed and
    # fraction), which the validation set pastes: same values on both sides keep them disjoint.
    outlier_holdout: bool = True
    outlier_val_fraction: float = 0.25
    outlier_split_seed: int = 0
    paste: PasteSettings = field(default_factory=PasteSettings)
    num_workers: int = 0  # DataLoader worker processes


@dataclass
class CacheConfig:
    """Frozen-feature cache: ``variants`` seeded pasted versions of every training image.

    Each variant is an independent draw of crop, paste and flips whose backbone features are
    stored (fp16); an epoch uses one variant of each image. ``dir`` defaults to
    $FLOWCLAS_CACHE or ~/.cache/flowclas_ros/features.
    """

    enabled: bool = True
    dir: str | None = None
    variants: int = 4
    batch_size: int = 8  # backbone batch while building


@dataclass
class TrainSettings:
    objective: str = "flowclas"  # "nll" (likelihood only) or "flowclas" (alpha * nll + con)
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
    schedule: str = "one_cycle"  # one_cycle (warm-up + cosine, the authors') or constant
    alpha: float = 1.0  # weight of the NLL term (per pixel and channel; METHOD.md section 3)
    temperature: float = 0.13  # contrastive temperature (0.10 for ALLO)
    max_views: int = 512
    aux_contrast: bool = True  # the auxiliary image's cells join the contrast set (authors')
    seed: int = 0
    device: str = "auto"  # auto: cuda if available
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    cpu_threads: int = 0  # torch intra-op threads; 0 = torch's default (1 helps on a busy CPU)
    checkpoint_every: int = 500  # steps; a checkpoint is also written at the end
    log_every: int = 10  # steps between CSV / TensorBoard rows
    progress: bool = True  # tqdm bar (rank 0)


@dataclass
class EvalConfig:
    """Checkpoint selection: on the validation protocol (``protocol``, by its selection score;
    flowclas_ros.evaluation.protocol) or on a validation folder (``val_dir``, by AUPRC)."""

    protocol: str | None = None  # a folder built by flowclas_ros.data.protocol_sets
    protocol_data: str = "${FLOWCLAS_DATA:-../shared/data}"  # to build it when missing
    input_size: list[int] = field(default_factory=lambda: [360, 480])  # as the bundle will run
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
    train: TrainSettings = field(default_factory=TrainSettings)
    eval: EvalConfig = field(default_factory=EvalConfig)
    out: str | None = None
    name: str = "train"  # set from the config file name; names the default output folder

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        cfg = cls()
        _merge(cfg, d, "")
        expand_paths(cfg)
        validate(cfg)
        return cfg

    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path("runs") / f"{self.name}-{self.train.objective}"


PATH_FIELDS = ("data.root", "data.outliers", "cache.dir", "eval.val_dir", "eval.protocol",
               "eval.protocol_data", "out", "model.backbone.weights")


# --- type checking ---------------------------------------------------------------------------

def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` checked against (and converted to) the annotation ``tp``; ConfigError if not."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{key}: must not be null (expected {_type_name(tp)})")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else
                          f"{key}: expected {_type_name(tp)}, got {value!r}")
    if value is None and tp is not Any:
        raise ConfigError(f"{key}: must not be null (expected {_type_name(tp)})")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        obj = tp()
        _merge(obj, value, key + ".")
        return obj
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported field type {_type_name(tp)}")


def _unknown(key: str, name: str, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean '{key}{close[0]}'?)" if close else ""
    return ConfigError(f"unknown config key '{key}{name}'{hint}; known keys here: {', '.join(known)}")


def _merge(obj: Any, d: Any, prefix: str) -> None:
    """Set the fields of dataclass ``obj`` from mapping ``d``, recursively, checking types."""
    if not isinstance(d, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {d!r}")
    hints = _hints(type(obj))
    known = [f.name for f in dataclasses.fields(obj)]
    for name, value in d.items():
        if name not in known:
            raise _unknown(prefix, str(name), known)
        tp = hints[name]
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            _merge(current, value, f"{prefix}{name}.")
        else:
            setattr(obj, name, _coerce(value, tp, f"{prefix}{name}"))


def set_key(cfg: TrainConfig, key: str, value: Any) -> None:
    """Set the dotted ``key`` of ``cfg`` to ``value`` (already parsed), checking its type."""
    parts = key.split(".")
    obj, prefix = cfg, ""
    for part in parts[:-1]:
        known = [f.name for f in dataclasses.fields(obj)]
        if part not in known or not dataclasses.is_dataclass(getattr(obj, part)):
            raise _unknown(prefix, part, [k for k in known
                                          if dataclasses.is_dataclass(getattr(obj, k))] or known)
        obj, prefix = getattr(obj, part), f"{prefix}{part}."
    _merge(obj, {parts[-1]: value}, prefix)


_OVERRIDE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)=(.*)$", re.S)


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.lr=1e-4"`` -> ``("train.lr", "1e-4")`` with the value parsed as YAML."""
    m = _OVERRIDE.match(text)
    if not m:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. train.lr=1e-4)")
    key, raw = m.groups()
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return key, value


def apply_overrides(cfg: TrainConfig, overrides: list[str]) -> TrainConfig:
    for text in overrides:
        key, value = parse_override(text)
        set_key(cfg, key, value)
    expand_paths(cfg)
    validate(cfg)
    return cfg


# --- paths and validation --------------------------------------------------------------------

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_path(text: str) -> str:
    """``~``, ``${VAR}`` and ``${VAR:-default}`` expanded (an unset VAR without default raises)."""

    def repl(m: re.Match) -> str:
        name, default = m.group(1), m.group(2)
        if name in os.environ and os.environ[name] != "":
            return os.environ[name]
        if default is not None:
            return default
        raise ConfigError(f"path {text!r} uses ${{{name}}}, which is not set")

    return os.path.expanduser(_VAR.sub(repl, text))


def _get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def expand_paths(cfg: TrainConfig) -> None:
    for key in PATH_FIELDS:
        value = _get(cfg, key)
        if isinstance(value, str) and value:
            parent, _, leaf = key.rpartition(".")
            setattr(_get(cfg, parent) if parent else cfg, leaf, expand_path(value))
    for extra in cfg.data.extra:
        if extra.root:
            extra.root = expand_path(extra.root)


def validate(cfg: TrainConfig) -> None:
    """Cross-field checks that types alone do not catch."""
    t, d = cfg.train, cfg.data
    checks = [
        (t.objective in OBJECTIVES, f"train.objective must be one of {OBJECTIVES}, got {t.objective!r}"),
        (t.precision in PRECISIONS, f"train.precision must be one of {PRECISIONS}, got {t.precision!r}"),
        (t.device in DEVICES or t.device.startswith("cuda:"),
         f"train.device must be one of {DEVICES} or cuda:N, got {t.device!r}"),
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
        (d.outlier_filter in ("road", "allo", "none"),
         "data.outlier_filter must be 'road', 'allo' or 'none'"),
        (d.paste.aux_background in ("inlier", "ignore"),
         "data.paste.aux_background must be 'inlier' or 'ignore'"),
        (d.paste.mode in ("hardcopy", "composite"),
         "data.paste.mode must be 'hardcopy' or 'composite'"),
        (cfg.eval.every >= 0, "eval.every must be >= 0"),
        (t.schedule in SCHEDULES, f"train.schedule must be one of {SCHEDULES}, got {t.schedule!r}"),
        (d.dataset != "bag" or bool(d.bag.topic),
         "data.dataset bag needs data.bag.topic (train --topic NAME): the camera topic to read"),
        (d.bag.stride >= 1, "data.bag.stride must be >= 1"),
        (d.label_mode in ("nearest", "area"), "data.label_mode must be 'nearest' or 'area'"),
        (d.outlier_granularity in ("image", "instance"),
         "data.outlier_granularity must be 'image' or 'instance'"),
        (d.scale_range is None or (len(d.scale_range) == 2 and 0 < d.scale_range[0] <= d.scale_range[1]),
         "data.scale_range must be [lo, hi] with 0 < lo <= hi"),
        (len(cfg.eval.input_size) == 2, "eval.input_size must be [H, W]"),
        (0 <= cfg.eval.fpr < 1, "eval.fpr must be in [0, 1)"),
        (cfg.model.score in ("nll", "latent"), "model.score must be 'nll' or 'latent'"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Defaults <- YAML file <- overrides; ``name`` defaults to the file's stem."""
    cfg = TrainConfig()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        try:
            d = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of config sections")
        d.setdefault("name", path.stem)
        try:
            _merge(cfg, d, "")
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    return apply_overrides(cfg, list(overrides or []))


__all__ = ["BackboneConfig", "CacheConfig", "ConfigError", "DataConfig", "EvalConfig",
           "BagSettings", "FlowConfig", "InlierSet", "ModelConfig", "PasteSettings", "PhotometricConfig",
           "TrainConfig", "TrainSettings",
           "apply_overrides", "expand_path", "load_config", "parse_override", "set_key",
           "validate"]
