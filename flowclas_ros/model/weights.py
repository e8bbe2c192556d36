"""Reading weight files safely: ``torch.load(weights_only=True)`` and nothing else.

flowclas_ros never unpickles a user's file (unpickling can run arbitrary code). Every weights
file the package reads, checkpoints and backbone weights alike, goes through
:func:`load_weights_only`.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch


def load_weights_only(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Load ``path`` with ``torch.load(path, weights_only=True)``.

    Raise one clear error for a file that holds pickled Python objects (which flowclas_ros never
    unpickles: unpickling can run code).
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(
            f"{path} is not a weights-only checkpoint: it holds pickled Python objects, which "
            f"flowclas_ros does not load because unpickling a file can run arbitrary code. Use a "
            f"checkpoint written by flowclas_ros's train (checkpoints/last.pt or best.pt), or "
            f"save a plain state dict of tensors (torch.save(model.state_dict(), path))") from None


__all__ = ["load_weights_only"]
