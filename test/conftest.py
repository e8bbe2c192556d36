"""Shared test fixtures: seeded torch, the real-data folder (skips cleanly where absent)."""
import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    """../shared/data beside the project, or $FLOWCLAS_DATA."""
    return Path(os.environ.get("FLOWCLAS_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def shared_data() -> Path:
    root = data_root()
    if not root.is_dir():
        pytest.skip(f"real data not found at {root} (set FLOWCLAS_DATA to its folder)")
    return root
