"""Seeds and random-number state, so that a killed run resumes bit-identically.

Every random choice of training is derived from the seed and *where* it is made (see
:mod:`.samples` and :func:`step_generator`), never from a running generator; the global
torch / numpy / python states are saved too, as tensors and ints that
``torch.load(weights_only=True)`` reads back.
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Global RNG states as tensors / ints (loadable with torch.load(weights_only=True))."""
    keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)[1:]
    version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": int(version), "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """Return the generator of the contrastive sampling of one step on one rank."""
    s = int(np.random.SeedSequence([seed, step, rank]).generate_state(1, np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(s)


__all__ = ["rng_state", "seed_everything", "set_rng_state", "step_generator"]
