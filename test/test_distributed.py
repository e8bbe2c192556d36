"""Data-parallel training under torchrun on CPU: two processes, gloo backend, tiny model.

Each rank trains on its own shard; DDP averages the gradients, so both ranks must end with
bit-identical parameters (the trainer all-gathers a hash of each rank's trainable state into
summary.json). With the cache on, both ranks build their share of the cache rows.
"""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from flowclas_ros.model.checkpoint import load_checkpoint, load_model

ROOT = Path(__file__).resolve().parents[1]


def make_fixture(root: Path, n_images: int = 8, n_outliers: int = 4, size=(64, 64)) -> Path:
    rng = np.random.default_rng(0)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    for sub in ("inliers/images", "outliers/images", "outliers/masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n_images):
        base = np.stack([(yy * 2 + i * 7) % 256, (xx * 3) % 256, np.full_like(yy, 90 + 10 * i)],
                        -1)
        img = np.clip(base + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / f"inliers/images/img{i:02d}.png")
    oy, ox = np.mgrid[0:48, 0:40]
    disc = (oy - 24) ** 2 + (ox - 20) ** 2 < 16 ** 2
    for k in range(n_outliers):
        img = np.zeros((48, 40, 3), np.uint8)
        img[..., k % 3] = 230
        Image.fromarray(img).save(root / f"outliers/images/o{k}.png")
        Image.fromarray((disc * 255).astype(np.uint8)).save(root / f"outliers/masks/o{k}.png")
    return root


def write_config(tmp_path: Path, objective: str, cache: bool) -> Path:
    data = make_fixture(tmp_path / "data")
    cfg = {
        "model": {"backbone": {"name": "tiny", "channels": 16},
                  "flow": {"steps": 2, "hidden": 8, "subnet": "simple"}, "proj_dim": 8},
        "data": {"dataset": "folder", "root": str(data / "inliers"),
                 "outliers": str(data / "outliers"), "outlier_filter": "none",
                 "paste": {"scales": [0.5, 0.75]}},
        "cache": {"enabled": cache, "dir": str(tmp_path / "cache"), "variants": 2},
        "train": {"objective": objective, "epochs": 6, "batch_size": 2, "lr": 1.0e-2,
                  "checkpoint_every": 4, "log_every": 2, "max_views": 32, "progress": False,
                  "device": "cpu"},
    }
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("objective, cache", [("flowclas", True), ("nll", False)])
def test_two_process_gloo_run_trains_in_sync(tmp_path, objective, cache):
    path = write_config(tmp_path, objective, cache)
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["CUDA_VISIBLE_DEVICES"] = ""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "flowclas_ros.tools.train", "--config", str(path), "--out", str(out),
           "--quiet"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_batch"] == 4
    assert summary["steps_per_epoch"] == 2  # 8 images / 2 ranks / batch 2
    assert summary["steps"] == 12
    assert len(summary["param_sha256"]) == 2 and summary["ranks_in_sync"]
    assert (summary["cache"] is not None) == cache
    if cache:
        assert summary["cache"]["built"]

    with (out / "log.csv").open() as f:
        rows = [row for row in csv.DictReader(f) if row["kind"] == "train"]
    losses = [float(row["loss"]) for row in rows]
    assert len(rows) == 6 and all(np.isfinite(losses))
    assert np.mean(losses[-2:]) < np.mean(losses[:2])

    ck = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ck["step"] == 12 and ck["world_size"] == 2
    model = load_model(out / "checkpoints" / "last.pt")
    assert torch.isfinite(model(torch.rand(1, 3, 64, 64))).all()
