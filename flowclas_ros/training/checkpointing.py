"""A run's folder and its checkpoints.

What ``--resume`` and ``--overwrite`` find there, the training state a checkpoint holds, and
putting it back.

A run folder holds ``config.yaml`` from its start (before the feature cache is built, so that a
run killed in the build is recognisable), ``checkpoints/last.pt`` from its first checkpoint,
``checkpoints/best.pt`` once validated, and ``summary.json`` when done. ``--resume`` continues
from last.pt or, when the run stopped before its first checkpoint, from step 0 (reusing what
the feature cache build completed); a folder with neither is no run to resume.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
import yaml

from ..model.checkpoint import load_checkpoint, model_payload, save_checkpoint
from .config import TrainConfig
from .rng import rng_state, set_rng_state


class RunFolder:
    """The files of the run in ``out``."""

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.ckpt_dir = self.out / "checkpoints"
        self.last = self.ckpt_dir / "last.pt"
        self.config_file = self.out / "config.yaml"
        self.summary_file = self.out / "summary.json"

    def open(self, resume: bool, overwrite: bool, is_main: bool = True) -> Path | None:
        """Return the checkpoint to resume from (None: start at step 0).

        Raises an error saying why the folder cannot be used as asked. ``overwrite`` (without
        ``resume``) removes the previous run's checkpoints and summary, on the main process.
        """
        if resume:
            if self.last.is_file():
                return self.last
            if self.config_file.is_file():  # stopped before its first checkpoint
                return None
            raise FileNotFoundError(
                f"--resume: there is no checkpoint to resume from at {self.last}, nor a saved "
                f"config at {self.config_file}: no run was started in {self.out} (or it lives "
                f"elsewhere: pass its folder with --out); to start this run afresh, leave out "
                f"--resume")
        if self.last.exists() and not overwrite:
            raise FileExistsError(f"{self.out} already holds a run ({self.last}); pass --resume "
                                  f"to continue it, --overwrite to start over, or choose another "
                                  f"--out")
        if overwrite and is_main:
            # Start over: no best.pt or summary of the previous run may survive.
            shutil.rmtree(self.ckpt_dir, ignore_errors=True)
            self.summary_file.unlink(missing_ok=True)
        return None

    def save_config(self, cfg: TrainConfig) -> None:
        """Write config.yaml, saying where the run lives.

        So ``train --config OUT/config.yaml --resume`` continues this run whatever --out it was
        started with.
        """
        self.out.mkdir(parents=True, exist_ok=True)
        saved = {**cfg.to_dict(), "out": str(self.out)}
        self.config_file.write_text(yaml.safe_dump(saved, sort_keys=False))

    def saved_config(self) -> dict[str, Any]:
        return yaml.safe_load(self.config_file.read_text()) or {}

    def save_checkpoint(self, name: str, payload: dict[str, Any]) -> None:
        """checkpoints/<name>, written atomically."""
        save_checkpoint(self.ckpt_dir / name, payload)


def training_payload(model, optimizer: torch.optim.Optimizer, scheduler, step: int,
                     steps_per_epoch: int, best: dict[str, Any], world_size: int,
                     cfg: TrainConfig) -> dict[str, Any]:
    """Return what a checkpoint holds.

    The model, and all a resumed run needs to go on bit-identically.
    """
    return {**model_payload(model),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": step,
            "epoch": step // steps_per_epoch,
            "rng": rng_state(),
            "best": dict(best),
            "world_size": world_size,
            "train_config": cfg.to_dict()}


def restore(path: Path, model, optimizer: torch.optim.Optimizer, scheduler,
            device: torch.device) -> dict[str, Any]:
    """Put the training state of checkpoint ``path`` back.

    That is the model (on ``device``), optimiser, schedule and global RNG states; returns the
    checkpoint for the rest (step, best, ...).
    """
    ck = load_checkpoint(path, map_location="cpu")
    model.load_trainable_state_dict(ck["model"])
    model.to(device)
    optimizer.load_state_dict(ck["optimizer"])
    scheduler.load_state_dict(ck["scheduler"])
    set_rng_state(ck["rng"])
    return ck


def sections_differing(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Return the top-level config sections that differ between a saved config and this run's."""
    return sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))


__all__ = ["RunFolder", "restore", "sections_differing", "training_payload"]
