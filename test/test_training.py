"""Training.

Configs and overrides, schedule, parameter groups, the feature cache, a short run that lowers
the loss, exact kill-and-resume (also of a run killed in its feature-cache build), checkpoint
selection, the CLI. Tiny backbone, a tiny generated 'folder' dataset and generated outlier
objects, all in tmp_path.
"""
import csv
import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from flowclas_ros.labels import VOID
from flowclas_ros.model.checkpoint import load_checkpoint, load_model
from flowclas_ros.tools.common import resolve_config
from flowclas_ros.tools.train import main
from flowclas_ros.training import config as config_mod
from flowclas_ros.training.config import ConfigError, load_config
from flowclas_ros.training.feature_cache import (
    ARRAYS,
    PROGRESS_FILE,
    FeatureCache,
    build_feature_cache,
    cache_key,
    done_rows,
)
from flowclas_ros.training.features import encode, grid_labels
from flowclas_ros.training.samples import EpochOrder, variant_rng
from flowclas_ros.training.schedule import OneCycleSchedule, one_cycle_factor
from flowclas_ros.training.trainer import Trainer, param_groups, train

ROOT = Path(__file__).resolve().parents[1]


# --- fixtures ------------------------------------------------------------------------------------

def make_fixture(root: Path, n_images: int = 8, n_outliers: int = 4, size=(64, 64), seed: int = 0):
    """Write a 'folder' inlier set and mask-PNG outliers.

    The inlier set is images/ + labels/ with an ignored top band.
    """
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    for sub in ("inliers/images", "inliers/labels", "outliers/images", "outliers/masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n_images):
        base = np.stack([(yy * 2 + i * 7) % 256, (xx * 3) % 256, np.full_like(yy, 90 + 10 * i)],
                        -1)
        img = np.clip(base + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / f"inliers/images/img{i:02d}.png")
        lab = np.zeros((h, w), np.uint8)
        lab[:2] = VOID
        Image.fromarray(lab).save(root / f"inliers/labels/img{i:02d}.png")
    oh, ow = 48, 40
    oy, ox = np.mgrid[0:oh, 0:ow]
    disc = (oy - oh / 2) ** 2 + (ox - ow / 2) ** 2 < (min(oh, ow) / 2.5) ** 2
    for k in range(n_outliers):
        img = np.zeros((oh, ow, 3), np.uint8)
        img[..., k % 3] = 230
        img[..., (k + 1) % 3] = 40 * k
        Image.fromarray(img).save(root / f"outliers/images/o{k}.png")
        Image.fromarray((disc * 255).astype(np.uint8)).save(root / f"outliers/masks/o{k}.png")
    return root


def tiny_config(tmp_path: Path, name: str = "tiny", **sections) -> Path:
    """Write a YAML config for the tiny backbone on the generated data; ``sections`` update it."""
    data = (make_fixture(tmp_path / "data") if not (tmp_path / "data").exists()
            else tmp_path / "data")
    cfg = {
        "model": {"backbone": {"name": "tiny", "channels": 16},
                  "flow": {"steps": 2, "hidden": 8, "subnet": "simple"}, "proj_dim": 8},
        "data": {"dataset": "folder", "root": str(data / "inliers"),
                 "outliers": str(data / "outliers"), "outlier_filter": "none",
                 "outlier_val_fraction": 0.25, "paste": {"scales": [0.5, 0.75]}},
        "cache": {"dir": str(tmp_path / "cache"), "variants": 2},
        "train": {"epochs": 5, "batch_size": 4, "lr": 1.0e-2, "checkpoint_every": 4,
                  "log_every": 2, "max_views": 32, "progress": False},
    }
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def read_log(out: Path) -> list[dict]:
    with (out / "log.csv").open() as f:
        return list(csv.DictReader(f))


# --- config --------------------------------------------------------------------------------------

def test_config_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: {lr: 1.0e-3, objective: nll}\nmodel: {flow: {steps: 4}}\n")
    cfg = load_config(path, ["train.lr=1e-4", "model.backbone.stages=[2,3]",
                             "data.image_size=[180, 240]", "train.max_steps=7",
                             "train.grad_clip=0", "eval.val_dir=null", "data.paste.scales=[0.5]"])
    assert cfg.name == "c" and cfg.train.objective == "nll"
    assert cfg.train.lr == pytest.approx(1e-4) and isinstance(cfg.train.lr, float)
    assert isinstance(cfg.train.grad_clip, float) and cfg.train.grad_clip == 0.0
    assert cfg.model.flow.steps == 4 and cfg.model.backbone.stages == [2, 3]
    assert cfg.data.image_size == [180, 240] and cfg.train.max_steps == 7
    assert cfg.data.paste.scales == [0.5]
    assert cfg.out_dir() == Path("runs") / "c-nll"
    # round trip through to_dict / from_dict
    again = config_mod.TrainConfig.from_dict(cfg.to_dict())
    assert again.to_dict() == cfg.to_dict()


def test_config_path_expansion(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWCLAS_TEST_DATA", str(tmp_path))
    monkeypatch.delenv("FLOWCLAS_UNSET_VAR", raising=False)
    cfg = load_config(None, ["data.root=${FLOWCLAS_TEST_DATA}/camvid",
                             "data.outliers=${FLOWCLAS_UNSET_VAR:-/x}/coco"])
    assert cfg.data.root == f"{tmp_path}/camvid" and cfg.data.outliers == "/x/coco"
    with pytest.raises(ConfigError, match="FLOWCLAS_UNSET_VAR"):
        load_config(None, ["data.root=${FLOWCLAS_UNSET_VAR}/camvid"])


@pytest.mark.parametrize("override, message", [
    ("train.lrr=1e-3", "did you mean 'train.lr'"),
    ("trian.lr=1e-3", "did you mean 'train'"),
    ("train.epochs=abc", "train.epochs: expected an integer"),
    ("train.epochs=2.5", "train.epochs: expected an integer"),
    ("train.hflip=1", "unknown config key 'train.hflip'"),
    ("data.hflip=yes please", "data.hflip: expected true or false"),
    ("train.objective=contrastive", "train.objective must be one of"),
    ("model.flow.steps=[1]", "model.flow.steps: expected an integer"),
    ("data.image_size=[1, x]", "data.image_size[1]: expected an integer"),
    ("train.lr", "not of the form key=value"),
    ("model.backbone.name=null", "model.backbone.name: must not be null"),
])
def test_config_bad_overrides(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(None, [override])


def test_config_bad_yaml_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  batch_sise: 4\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'train.batch_sise' "
                                          r"\(did you mean 'train.batch_size'\?\)"):
        load_config(path)
    path.write_text("model:\n  flow: {steps: four}\n")
    with pytest.raises(ConfigError, match="model.flow.steps: expected an integer, got 'four'"):
        load_config(path)


def test_config_sections_are_the_owners_types_and_old_names_still_import():
    from flowclas_ros.data.pasting import PasteConfig

    cfg = load_config(None, ["data.paste.mode=composite", "data.paste.scales=[1, 0.5]"])
    assert type(cfg.data.paste) is PasteConfig  # no mirror: the paster's own config
    assert cfg.data.paste.mode == "composite" and cfg.data.paste.scales == [1.0, 0.5]
    assert yaml.safe_load(yaml.safe_dump(cfg.to_dict())) == cfg.to_dict()
    with pytest.raises(ConfigError, match=r"data.paste.paste_prob must be in \[0, 1\]"):
        load_config(None, ["data.paste.paste_prob=2"])
    renamed = {"TrainSettings": "TrainLoopConfig", "PasteSettings": "PasteConfig",
               "BagSettings": "BagConfig", "InlierSet": "InlierSetConfig",
               "PRECISIONS": "TRAINING_PRECISIONS"}
    for old, new in renamed.items():
        with pytest.warns(FutureWarning, match=new):
            assert getattr(config_mod, old) is getattr(config_mod, new)
    assert type(cfg.train) is config_mod.TrainLoopConfig
    assert all(name.endswith("Config") for name in config_mod.__all__ if name[0].isupper()
               and name != "ConfigError")


def _choices():
    from flowclas_ros.data.coco import FILTERS
    from flowclas_ros.data.outlier_sources import GRANULARITIES
    from flowclas_ros.data.pasting import AUX_BACKGROUNDS, PASTE_MODES
    from flowclas_ros.model.config import SCORES
    from flowclas_ros.model.losses import OBJECTIVES
    from flowclas_ros.training.features import GRID_LABELS
    from flowclas_ros.training.precision import TRAINING_PRECISIONS
    from flowclas_ros.training.schedule import SCHEDULES

    return {"train.objective": OBJECTIVES, "train.schedule": SCHEDULES,
            "train.precision": TRAINING_PRECISIONS, "data.outlier_filter": tuple(FILTERS),
            "data.paste.aux_background": AUX_BACKGROUNDS, "data.paste.mode": PASTE_MODES,
            "data.outlier_granularity": GRANULARITIES, "data.label_mode": GRID_LABELS,
            "model.score": SCORES}


def test_config_choices_are_the_owning_modules():
    """Each choice is checked against the tuple of the module whose behaviour it names."""
    for key, choices in _choices().items():
        for choice in choices:
            load_config(None, [f"{key}={choice}"])
        with pytest.raises(ConfigError, match=f"{key} must be one of") as err:
            load_config(None, [f"{key}=nothing_like_it"])
        assert str(tuple(choices)) in str(err.value)
    for device in ("auto", "cpu", "cuda", "cuda:1"):
        assert load_config(None, [f"train.device={device}"]).train.device == device
    with pytest.raises(ConfigError, match="train.device must be auto, cpu, cuda or cuda:N"):
        load_config(None, ["train.device=cuda:x"])


def test_shipped_configs_load_and_follow_the_recipe():
    names = ["train_cityscapes_dinov2_vitl14", "train_allo", "train_demo_lite2_camvid"]
    cfgs = {n: load_config(resolve_config(n)) for n in names}
    city, allo, demo = (cfgs[n] for n in names)
    # METHOD.md section 5
    assert city.model.backbone.name == "dinov2_vitl14" and city.model.flow.steps == 16
    assert city.train.lr == pytest.approx(1e-6) and city.train.weight_decay == pytest.approx(1e-5)
    assert city.train.epochs == 600 and city.data.crop == [512, 1024] and city.data.hflip
    assert not city.data.vflip and city.train.temperature == pytest.approx(0.13)
    assert city.train.objective == "flowclas" and city.train.max_views == 512
    assert allo.train.lr == pytest.approx(1e-5) and allo.train.epochs == 50
    assert allo.data.crop == [540, 960] and allo.data.hflip and allo.data.vflip
    assert allo.data.paste.grey_prob == 0.5 and allo.data.paste.aux_background == "ignore"
    assert allo.train.temperature == pytest.approx(0.10)
    assert allo.model.mean == pytest.approx([0.2083, 0.2124, 0.2146])
    assert demo.model.backbone.name == "efficientnet_lite2" and demo.model.backbone.stages == [3]
    assert demo.data.dataset == "camvid" and demo.data.outlier_holdout


# --- schedule, parameter groups, labels ---------------------------------------------------------

def test_one_cycle_schedule(tmp_path):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=2.0)
    sched = OneCycleSchedule(opt, total_steps=10, warmup_steps=4, start_factor=0.0,
                             final_factor=0.1)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:5] == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0])  # linear warm-up
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))  # then decreasing
    assert lrs[7] == pytest.approx(2.0 * (0.1 + 0.9 * 0.5))  # cosine midpoint
    assert lrs[10:] == pytest.approx([0.2, 0.2])
    torch.save(sched.state_dict(), tmp_path / "s.pt")
    sched2 = OneCycleSchedule(torch.optim.AdamW([p], lr=2.0), 10, 4, 0.0, 0.1)
    sched2.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert sched2.last_epoch == sched.last_epoch
    assert one_cycle_factor(0, 10, 0, 0.0, 0.0) == pytest.approx(1.0)


def test_param_groups():
    from flowclas_ros.model.backbones import BackboneConfig
    from flowclas_ros.model.flow import FlowConfig
    from flowclas_ros.model.flowclas import FlowCLAS, ModelConfig

    model = FlowCLAS(ModelConfig(BackboneConfig("tiny"),
                                 FlowConfig(steps=2, hidden=8, subnet="simple"),
                                 proj_dim=8))
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert [names[id(p)] for p in decay["params"]] == ["proj.weight"]
    nd = {names[id(p)] for p in no_decay["params"]}
    assert {"mu", "log_sigma", "norm.weight", "norm.bias", "proj.bias"} <= nd
    assert any(n.startswith("flow.") and n.endswith("weight") for n in nd)  # flow convs: no decay
    assert not any(n.startswith("backbone.") for n in nd)  # frozen


def test_grid_labels_pad_with_ignore_then_nearest():
    labels = torch.zeros(1, 20, 16, dtype=torch.uint8)
    labels[0, 8:16, 0:8] = 1
    grid = grid_labels(labels, (3, 2), pad_multiple=8)  # 20 -> padded 24 -> 3 rows of 8 pixels
    assert grid.dtype == torch.uint8
    assert grid[0].tolist() == [[0, 0], [1, 0], [0, 0]]
    labels[0, 16:] = 1  # rows 16..19 of 24: row 2 starts at pixel 16
    assert grid_labels(labels, (3, 2), 8)[0, 2].tolist() == [1, 1]
    odd = torch.zeros(1, 17, 16, dtype=torch.uint8)  # 17 -> 24: last row samples pixel 16
    assert grid_labels(odd, (3, 2), 8)[0, 2].tolist() == [0, 0]
    short = torch.zeros(1, 15, 16, dtype=torch.uint8)  # 15 -> 16: 2 rows
    assert grid_labels(short, (2, 2), 8).shape == (1, 2, 2)


def test_epoch_order_depends_only_on_seed_and_epoch():
    a = EpochOrder(10, 2, seed=3).batches(1)
    assert a == EpochOrder(10, 2, seed=3).batches(1)
    assert a != EpochOrder(10, 2, seed=3).batches(2)
    assert EpochOrder(10, 2, seed=3).batches(1, start=2) == a[2:]
    ranks = [EpochOrder(9, 2, seed=0, rank=r, world=2) for r in range(2)]
    assert ranks[0].steps_per_epoch == ranks[1].steps_per_epoch == 2  # ceil(9/2)=5 -> 2 batches
    seen = [i for r in ranks for b in r.batches(0) for _, i in b]
    assert len(seen) == 8 and len(set(seen)) == 8  # disjoint shards (the wrapped pad is unused)


# --- training ------------------------------------------------------------------------------------

def test_short_training_lowers_the_loss(tmp_path):
    path = tiny_config(tmp_path, train={"epochs": 12, "log_every": 2, "lr": 1.0e-2})
    for objective in ("nll", "flowclas"):
        cfg = load_config(path, [f"train.objective={objective}"])
        out = tmp_path / f"run-{objective}"
        summary = train(cfg, out=out)
        rows = [r for r in read_log(out) if r["kind"] == "train"]
        first = np.mean([float(r["loss"]) for r in rows[:2]])
        last = np.mean([float(r["loss"]) for r in rows[-2:]])
        assert summary["steps"] == 24 and len(rows) == 12
        assert last < first, (objective, first, last)
        if objective == "nll":
            assert all(float(r["con"]) == 0.0 for r in rows)
        else:
            assert all(float(r["con"]) > 0.0 for r in rows)
        assert (out / "tb").is_dir() and any((out / "tb").iterdir())
        assert (out / "config.yaml").is_file()


def test_checkpoint_loads_weights_only(tmp_path):
    path = tiny_config(tmp_path, train={"epochs": 2})
    out = tmp_path / "run"
    train(load_config(path), out=out)
    raw = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    for key in ("model_config", "model", "optimizer", "scheduler", "step", "epoch", "rng",
                "train_config", "best"):
        assert key in raw, key
    assert raw["step"] == 4 and raw["epoch"] == 2
    assert raw["train_config"]["train"]["objective"] == "flowclas"
    assert isinstance(raw["rng"]["torch"], torch.Tensor)
    model = load_model(out / "checkpoints" / "last.pt")
    assert model(torch.rand(1, 3, 40, 48)).shape == (1, 40, 48)
    # an existing run is not overwritten by accident
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(load_config(path), out=out)


def test_resume_from_the_saved_config_continues_in_the_run_folder(tmp_path, capsys):
    """Check that resuming from OUT/config.yaml continues the run trained with --out OUT.

    `train --config OUT/config.yaml --resume` continues that run; --resume with nothing to
    resume is an error naming where it looked, not a fresh start.
    """
    path = tiny_config(tmp_path, train={"epochs": 2, "checkpoint_every": 2})
    out = tmp_path / "elsewhere" / "run"
    assert main(["--config", str(path), "--out", str(out), "--quiet"]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["out"] == str(out)
    more = ["train.epochs=3"]  # one more epoch, resumed in place
    assert main(["--config", str(out / "config.yaml"), "--resume", "--quiet", *more]) == 0
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 6
    assert not Path("runs", f"{saved['name']}-flowclas").exists()
    capsys.readouterr()
    empty = tmp_path / "never_trained"
    assert main(["--config", str(path), "--out", str(empty), "--quiet", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint to resume from" in err and str(empty / "checkpoints" / "last.pt") in err
    assert not (empty / "checkpoints").exists()


@pytest.mark.parametrize("cache", [True, False])
def test_kill_and_resume_gives_the_same_parameters(tmp_path, cache):
    """Check that a run SIGKILLed at step 7 (last checkpoint at step 4) resumes bit-identical."""
    path = tiny_config(tmp_path, train={"epochs": 5, "checkpoint_every": 4},
                       cache={"enabled": cache})
    full, broken = tmp_path / "full", tmp_path / "broken"
    assert main(["--config", str(path), "--out", str(full), "--quiet"]) == 0

    # a separate process that dies like a killed run: SIGKILL right after step 7
    killed_at_7 = (
        "import os, signal, sys\n"
        "from flowclas_ros.training.config import load_config\n"
        "from flowclas_ros.training.trainer import Trainer\n"
        "def die(trainer):\n"
        "    if trainer.step == 7:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "Trainer(load_config(sys.argv[1], ['train.progress=false']), "
        "out=sys.argv[2]).fit(on_step=die)\n")
    proc = subprocess.run([sys.executable, "-c", killed_at_7, str(path), str(broken)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr  # killed, not finished
    assert load_checkpoint(broken / "checkpoints" / "last.pt")["step"] == 4
    assert not (broken / "summary.json").exists()

    assert main(["--config", str(path), "--out", str(broken), "--quiet", "--resume"]) == 0
    a = load_checkpoint(full / "checkpoints" / "last.pt")
    b = load_checkpoint(broken / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 10
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k, st in a["optimizer"]["state"].items():
        for name, v in st.items():
            assert torch.equal(torch.as_tensor(v),
                               torch.as_tensor(b["optimizer"]["state"][k][name]))
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"]
    sa = json.loads((full / "summary.json").read_text())
    sb = json.loads((broken / "summary.json").read_text())
    assert sa["param_sha256"] == sb["param_sha256"]
    # the log of the resumed run has each step once, with the same losses
    la, lb = read_log(full), read_log(broken)
    assert [r["step"] for r in la] == [r["step"] for r in lb]
    assert [r["loss"] for r in la] == [r["loss"] for r in lb]


def test_resume_of_a_run_killed_while_building_the_feature_cache(tmp_path, caplog):
    """Check the resume of a `train` SIGKILLed in its feature-cache build.

    With no checkpoint yet it is a run at step 0: --resume keeps the cache rows the build had
    finished, computes the rest, and ends with the cache, checkpoint (model, optimizer, RNG
    states) and step of an uninterrupted run.
    """
    # One row per backbone batch, so that the build is caught long before it can finish.
    path = tiny_config(tmp_path, train={"epochs": 2, "checkpoint_every": 100},
                       cache={"batch_size": 1, "variants": 4})
    rows = 8 * 4
    killed, full = tmp_path / "killed", tmp_path / "full"
    with (tmp_path / "killed.log").open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "flowclas_ros.tools.train", "--config",
                                 str(path), "--out", str(killed), "--quiet"],
                                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while not any(done_rows(p) for p in (tmp_path / "cache").glob("*.partial")):
                assert proc.poll() is None, (tmp_path / "killed.log").read_text()
                assert time.monotonic() < deadline, "the feature cache build did not start"
                time.sleep(0.01)
        finally:
            proc.kill()  # SIGKILL
            proc.wait()
    assert proc.returncode == -9
    partials = list((tmp_path / "cache").glob("*.partial"))
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [p.name for p in partials]
    assert len(partials) == 1
    kept = done_rows(partials[0])
    assert 0 < len(kept) < rows
    assert (killed / "config.yaml").is_file() and not (killed / "checkpoints").exists()

    with caplog.at_level(logging.INFO, logger="flowclas_ros.training"):
        assert main(["--config", str(path), "--out", str(killed), "--quiet", "--resume"]) == 0
    assert f"{len(kept)} of {rows} rows were done" in caplog.text
    assert "from step 0" in caplog.text
    assert main(["--config", str(path), "--out", str(full), "--quiet",
                 f"cache.dir={tmp_path / 'cache_full'}"]) == 0

    a = load_checkpoint(full / "checkpoints" / "last.pt")
    b = load_checkpoint(killed / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 4
    assert_same_tensors({k: v for k, v in a.items() if k != "train_config"},
                        {k: v for k, v in b.items() if k != "train_config"})
    ca = FeatureCache(next((tmp_path / "cache_full").iterdir()))
    cb = FeatureCache(tmp_path / "cache" / partials[0].name.removesuffix(".partial"))
    for name in ARRAYS:
        assert np.array_equal(ca.arrays[name], cb.arrays[name]), name
    assert sorted(p.name for p in cb.path.iterdir()) == sorted(p.name for p in ca.path.iterdir())


def assert_same_tensors(a, b, where="checkpoint"):
    """Nested dicts/lists equal, tensors bit for bit."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_tensors(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


def test_feature_cache_reused_and_rebuilt(tmp_path):
    path = tiny_config(tmp_path, train={"epochs": 1})
    s1 = train(load_config(path), out=tmp_path / "a")
    s2 = train(load_config(path), out=tmp_path / "b")
    assert s1["cache"]["built"] and not s2["cache"]["built"]
    assert s1["cache"]["path"] == s2["cache"]["path"]
    # the objective is not part of the key: nll reuses it
    s3 = train(load_config(path, ["train.objective=nll"]), out=tmp_path / "c")
    assert not s3["cache"]["built"] and s3["cache"]["path"] == s1["cache"]["path"]
    # anything the features depend on is: paste config, variants, seed, backbone
    for i, change in enumerate(["data.paste.scales=[0.25]", "cache.variants=3", "train.seed=1",
                                "model.backbone.channels=8", "data.hflip=false"]):
        s = train(load_config(path, [change]), out=tmp_path / f"d{i}")
        assert s["cache"]["built"] and s["cache"]["path"] != s1["cache"]["path"], change
    assert len([p for p in (tmp_path / "cache").iterdir() if p.is_dir()]) == 6
    assert not any(p.name.endswith(".partial") for p in (tmp_path / "cache").iterdir())


def test_feature_cache_holds_the_features_of_each_variant(tmp_path):
    """Row (i, v) = backbone features of the pair drawn with variant_rng(seed, i, v)."""
    path = tiny_config(tmp_path)
    trainer = Trainer(load_config(path), out=tmp_path / "run")
    trainer.prepare_cache()
    cache = FeatureCache(trainer.cache.path)
    assert cache.meta["n_images"] == 8 and cache.variants == 2
    for i, v in [(0, 0), (3, 1), (7, 1)]:
        image, label, aux_image, aux_label = trainer.pairs(i, variant_rng(0, i, v))
        feats, lab = encode(trainer.model, image[None], label[None])
        row = cache.item(i, v)
        assert row["mixed"].dtype == np.float16
        np.testing.assert_allclose(row["mixed"].astype(np.float32), feats[0].numpy(),
                                   rtol=2e-3, atol=2e-3)
        assert np.array_equal(row["mixed_labels"], lab[0].numpy())
        feats, lab = encode(trainer.model, aux_image[None], aux_label[None])
        np.testing.assert_allclose(row["aux"].astype(np.float32), feats[0].numpy(),
                                   rtol=2e-3, atol=2e-3)
        assert np.array_equal(row["aux_labels"], lab[0].numpy())
    # pasted outliers are in the labels, the ignored band too
    assert (cache.arrays["mixed_labels"] == 1).any()
    assert (cache.arrays["mixed_labels"][:, 0] == VOID).all()


class _Killed(Exception):
    pass


def test_a_stopped_feature_cache_build_resumes_where_it_stopped(tmp_path):
    """Check that a stopped feature-cache build resumes where it stopped.

    A build stopped after some batches keeps their rows and computes only the others, in the
    same batches, ending equal to an uninterrupted build; a partial build made for anything
    else (another batch size, a garbled header) is started afresh.
    """
    trainer = Trainer(load_config(tiny_config(tmp_path)), out=tmp_path / "run")
    spec, pairs, rows = trainer.cache_spec(), trainer.pairs, 16
    calls = []

    def make_pair(i, v, stop_at=None):
        if stop_at is not None and len(calls) >= stop_at:
            raise _Killed
        calls.append((i, v))
        return pairs(i, variant_rng(0, i, v))

    def build(root, stop_at=None, batch_size=2):
        calls.clear()
        return build_feature_cache(root, spec, 8, 2, lambda i, v: make_pair(i, v, stop_at),
                                   trainer.model, batch_size=batch_size, progress=False,
                                   log=lambda msg: None)

    ref, built = build(tmp_path / "ref")
    assert built and len(calls) == 1 + rows  # the shape probe, then every row
    partial = tmp_path / "c" / f"{cache_key(spec)}.partial"
    with pytest.raises(_Killed):
        build(tmp_path / "c", stop_at=1 + 6)  # the probe and three batches of two
    assert done_rows(partial) == set(range(6)) and (partial / PROGRESS_FILE).is_file()
    cache, built = build(tmp_path / "c")
    assert built and calls[1:] == [(r // 2, r % 2) for r in range(6, rows)]
    for name in ARRAYS:
        assert np.array_equal(cache.arrays[name], ref.arrays[name]), name
    assert not partial.exists() and sorted(p.name for p in cache.path.iterdir()) == sorted(
        [f"{a}.npy" for a in ARRAYS] + ["meta.json"])

    for spoil in ("batch_size", "header"):
        root = tmp_path / spoil
        with pytest.raises(_Killed):
            build(root, stop_at=1 + 6)
        if spoil == "header":
            (root / partial.name / PROGRESS_FILE).write_text("{")
        cache, built = build(root, batch_size=4 if spoil == "batch_size" else 2)
        assert built and len(calls) == 1 + rows, spoil
        for name in ARRAYS[1::2]:  # labels are exact whatever the batch
            assert np.array_equal(cache.arrays[name], ref.arrays[name]), (spoil, name)


def test_flips_keep_labels_aligned(tmp_path):
    """Flipped pairs equal the unflipped pair (same draws) under one flip of image and label."""
    path = tiny_config(tmp_path)
    plain = Trainer(load_config(path, ["data.hflip=false"]), out=tmp_path / "a")
    flipping = Trainer(load_config(path, ["data.vflip=true"]), out=tmp_path / "b")
    ops = {"none": lambda a: a, "h": lambda a: a[:, ::-1], "v": lambda a: a[::-1],
           "hv": lambda a: a[::-1, ::-1]}
    used = set()
    for v in range(12):
        u = plain.pairs(0, variant_rng(5, 0, v))
        f = flipping.pairs(0, variant_rng(5, 0, v))
        for img_u, lab_u, img_f, lab_f in ((u[0], u[1], f[0], f[1]), (u[2], u[3], f[2], f[3])):
            match = [k for k, op in ops.items() if np.array_equal(op(img_u), img_f)]
            assert match, "flipped image is no flip of the unflipped one"
            # the same flip maps the labels (symmetric images may match several flips)
            assert any(np.array_equal(ops[k](lab_u), lab_f) for k in match), "labels not flipped"
            if len(match) == 1:
                used.add(match[0])
        assert (u[1] == 1).any()  # an object was pasted
    assert used == set(ops)


def test_validation_keeps_best_checkpoint(tmp_path):
    from flowclas_ros.data.outlier_sources import load_outlier_source
    from flowclas_ros.data.pasting import OutlierPaster, PasteConfig

    data = make_fixture(tmp_path / "data")
    val = tmp_path / "val"
    (val / "images").mkdir(parents=True)
    (val / "labels").mkdir()
    paster = OutlierPaster(load_outlier_source(data / "outliers", filter="none"),
                           PasteConfig(scales=(0.5,)))
    for i in range(3):
        img = np.asarray(Image.open(data / f"inliers/images/img{i:02d}.png"))
        p = paster(img, np.zeros(img.shape[:2], np.uint8), np.random.default_rng(i))
        Image.fromarray(p.image).save(val / "images" / f"v{i}.png")
        Image.fromarray(p.label).save(val / "labels" / f"v{i}.png")
    path = tiny_config(tmp_path, eval={"val_dir": str(val), "every": 4})
    summary = train(load_config(path), out=tmp_path / "run")
    vals = [r for r in read_log(tmp_path / "run") if r["kind"] == "val"]
    assert [int(r["step"]) for r in vals] == [4, 8, 10]
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    aucs = [float(r["auprc"]) for r in vals]
    assert best["metrics"]["auprc"] == pytest.approx(max(aucs))
    assert best["step"] == int(vals[int(np.argmax(aucs))]["step"])
    assert summary["best"]["auprc"] == pytest.approx(max(aucs))
    assert 0.0 <= max(aucs) <= 1.0


def test_cli_reports_bad_config_clearly(tmp_path, capsys):
    path = tiny_config(tmp_path)
    assert main(["--config", str(path), "train.epochs=many"]) == 2
    err = capsys.readouterr().err
    assert "train.epochs: expected an integer, got 'many'" in err
    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "not found" in capsys.readouterr().err
    # ros2 run may append --ros-args: ignored
    assert main(["--config", str(path), "train.max_steps=1", "--out", str(tmp_path / "r"),
                 "train.objective=nll", "--quiet", "--ros-args", "-r", "__node:=x"]) == 0
    ck = load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")
    assert ck["step"] == 1 and ck["train_config"]["train"]["objective"] == "nll"


def test_console_script_runs(tmp_path):
    exe = shutil.which("train", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("the 'train' console script is not installed in this environment")
    path = tiny_config(tmp_path)
    r = subprocess.run([exe, "--config", str(path), "--out", str(tmp_path / "r"), "--quiet",
                        "train.max_steps=2"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "r" / "checkpoints" / "last.pt").is_file()


def test_bench_cache_reports_speedup(tmp_path):
    from flowclas_ros.tools.bench.cache import main as bench_main

    path = tiny_config(tmp_path)
    out = tmp_path / "bench.json"
    assert bench_main(["--config", str(path), "--steps", "3", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    for key in ("cache_build_s", "step_s_cached", "step_s_online", "epoch_speedup",
                "total_s_cached", "total_s_online"):
        assert key in r and r[key] > 0, key


@pytest.mark.real_data
@pytest.mark.slow
def test_demo_config_trains_on_the_real_data(tmp_path, shared_data, monkeypatch):
    """Train the shipped demo config on a few CamVid frames with coco128-seg objects, both ways."""
    monkeypatch.setenv("FLOWCLAS_DATA", str(shared_data))
    common = ["data.limit=4", "train.batch_size=2", "train.max_steps=2", "eval.protocol=null",
              "cache.variants=1", f"cache.dir={tmp_path / 'cache'}", "train.progress=false"]
    for cached in ("true", "false"):
        cfg = load_config(resolve_config("train_demo_lite2_camvid"),
                          common + [f"cache.enabled={cached}"])
        summary = train(cfg, out=tmp_path / f"run-{cached}")
        assert summary["steps"] == 2
        rows = read_log(tmp_path / f"run-{cached}")
        assert all(np.isfinite(float(r["loss"])) and float(r["con"]) > 0 for r in rows)
    ck = load_checkpoint(tmp_path / "run-true" / "checkpoints" / "last.pt")
    assert ck["model_config"]["backbone"]["name"] == "efficientnet_lite2"
