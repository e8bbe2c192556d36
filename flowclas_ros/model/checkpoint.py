"""Checkpoint files: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict of tensors and primitive values (no pickled objects):

    {"format": "flowclas_ros.checkpoint", "version": 2,
     "model_config": ModelConfig.to_dict(),   # rebuilds the model, backbone included
     "model": FlowCLAS.trainable_state_dict(), # the frozen backbone is not stored
     ... anything else training wants to resume (optimizer, scheduler, step, rng) ...}

Version 1 files (the flat flow layout, :mod:`.upgrade`) load with their names upgraded.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .flowclas import FlowCLAS, ModelConfig
from .upgrade import upgrade_state_dict
from .weights import load_weights_only

FORMAT = "flowclas_ros.checkpoint"
VERSION = 2  # the state-dict layout of :mod:`.upgrade` (1: flat flow)


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically: a temporary file in the same folder, then rename.

    A run killed mid-write leaves the previous checkpoint intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"format": FORMAT, "version": VERSION, **payload}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, refusing anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    data = load_weights_only(path, map_location)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path} is not a flowclas_ros checkpoint")
    if data.get("version", 0) > VERSION:
        raise ValueError(f"{path} has checkpoint version {data['version']}; this flowclas_ros "
                         f"reads up to {VERSION}: upgrade flowclas_ros")
    if "model" in data:
        data["model"] = upgrade_state_dict(data["model"], int(data.get("version", 1)))
    return data


def model_payload(model: FlowCLAS) -> dict[str, Any]:
    """Return the part of a checkpoint that rebuilds the model."""
    return {"model_config": model.config.to_dict(), "model": model.trainable_state_dict()}


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> FlowCLAS:
    """Rebuild a FlowCLAS model (eval mode) from a checkpoint."""
    data = load_checkpoint(path, map_location)
    model = FlowCLAS(ModelConfig.from_dict(data["model_config"]))
    model.load_trainable_state_dict(data["model"])
    return model.eval()
