"""FlowCLAS training: the config, the inputs and samples, the feature cache, the trainer.

    from flowclas_ros.training import load_config, train
    cfg = load_config("config/train_demo_lite2_camvid.yaml", ["train.objective=nll"])
    summary = train(cfg, out="runs/demo-nll")

One concept per module: typed_yaml (typed YAML and overrides), config (the schema), inputs
(datasets, outliers, pasting -> pairs), samples (pairs, crops, flips, epoch order), augment,
items (what the loader reads), features (frozen features, grid labels), feature_cache, schedule,
precision, rng (seeds, RNG state), distributed (torchrun, DDP), run_log (CSV, TensorBoard),
checkpointing (run folder, checkpoints, resume), selection (validation, best.pt), trainer (the
loop). The ``train`` command line is :mod:`flowclas_ros.tools.train`. No ROS imports.
"""
from .config import ConfigError, TrainConfig, apply_overrides, load_config
from .schedule import OneCycleSchedule, one_cycle_factor

# The trainer pulls in the data layer and tensorboard: its modules are imported on first use.
_LAZY = {"Trainer": "trainer", "train": "trainer",
         "DistInfo": "distributed", "setup_distributed": "distributed",
         "FeatureCache": "feature_cache", "build_feature_cache": "feature_cache",
         "cache_key": "feature_cache"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ConfigError", "TrainConfig", "apply_overrides", "load_config", "OneCycleSchedule",
           "one_cycle_factor", *_LAZY]
