"""FlowCLAS training: configs, samples, the feature cache, the trainer and the ``train`` CLI.

    from flowclas_ros.training import load_config, train
    cfg = load_config("config/train_demo_lite2_camvid.yaml", ["train.objective=nll"])
    summary = train(cfg, out="runs/demo-nll")

One concept per module: config (YAML + overrides), samples (pairs, epoch order), feature_cache,
schedule, rng (seeds, RNG state), distributed (torchrun, DDP), run_log (CSV, TensorBoard),
trainer (the engine), train (the CLI). No ROS imports.
"""
from .config import ConfigError, TrainConfig, apply_overrides, load_config
from .schedule import OneCycleSchedule, one_cycle_factor


def __getattr__(name):
    # The trainer pulls in the data layer and tensorboard: import it on first use only.
    if name in ("Trainer", "train"):
        from . import trainer

        return getattr(trainer, name)
    if name in ("DistInfo", "setup_distributed"):
        from . import distributed

        return getattr(distributed, name)
    if name in ("FeatureCache", "build_feature_cache", "cache_key"):
        from . import feature_cache

        return getattr(feature_cache, name)
    raise AttributeError(name)


__all__ = ["ConfigError", "TrainConfig", "apply_overrides", "load_config", "OneCycleSchedule",
           "one_cycle_factor", "Trainer", "train", "DistInfo", "setup_distributed",
           "FeatureCache", "build_feature_cache", "cache_key"]
