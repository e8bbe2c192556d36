"""The FlowCLAS training engine (METHOD.md sections 3-5): :class:`Trainer` and :func:`train`.

One step, per process:

1. a batch of (mixed, aux) :class:`~.samples.Pair` s: the training image with one outlier
   image's objects pasted (mixed) and that outlier image on its own (aux), labelled
   INLIER / ANOMALY / VOID;
2. their frozen backbone features, from the feature cache or from the backbone, and the labels
   nearest-downsampled to the feature grid (a position is an inlier only if its label is 0);
3. :class:`~flowclas_ros.model.losses.FlowCLASLoss`: L = alpha * L_nll [+ L_con];
4. AdamW (no weight decay on flow, bias and norm parameters), gradient clipping, one-cycle lr.

Where the rest lives: the samples and epoch order in :mod:`.samples`, seeds and RNG state in
:mod:`.rng`, torchrun in :mod:`.distributed`, the CSV/TensorBoard logs in :mod:`.run_log`, the
feature cache in :mod:`.feature_cache`; checkpoint selection scores the validation set with
:func:`flowclas_ros.evaluation.evaluate_model`. Determinism: see :mod:`.samples`; the
contrastive sampling of step s on rank r uses :func:`~.rng.step_generator` (seed, s, r), so a
run killed after a checkpoint and resumed replays exactly the same steps.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..model.checkpoint import load_checkpoint, model_payload, save_checkpoint
from ..model.flowclas import FlowCLAS
from ..model.losses import FlowCLASLoss
from .config import ConfigError, TrainConfig
from .distributed import DistInfo, all_equal, wrap_ddp
from .feature_cache import FeatureCache, build_feature_cache, default_cache_dir, encode, file_fingerprint
from .rng import rng_state, seed_everything, set_rng_state, step_generator
from .run_log import RunLog
from .samples import CachedItems, EpochOrder, Frames, OnlineItems, Pair, PairMaker, variant_rng
from .schedule import OneCycleSchedule, warmup_steps_for

logger = logging.getLogger("flowclas_ros.training")

SELECTION_METRICS = ("auprc", "fpr95", "auroc")


def param_groups(model: FlowCLAS, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay only on the conv/linear weights outside the flow.

    No decay on the flow (ActNorm, couplings), the base distribution (mu, log_sigma), the
    LayerNorm, and any bias or other 1-D parameter. In practice the decayed group is the
    projection head's weight.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith(("flow.", "norm.")) or name in ("mu", "log_sigma") or p.ndim <= 1:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
            {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]


def params_sha256(model: FlowCLAS) -> str:
    """A hash of the trainable state: equal hashes = bit-identical parameters and buffers."""
    h = hashlib.sha256()
    for k, v in sorted(model.trainable_state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class Trainer:
    """Builds model, data, optimiser and cache from a :class:`TrainConfig` and trains.

    Writes to ``out``: checkpoints/last.pt (every ``train.checkpoint_every`` steps and at the
    end), checkpoints/best.pt (best validation AUPRC), log.csv, tb/ (TensorBoard),
    config.yaml and summary.json.
    """

    def __init__(self, cfg: TrainConfig, out: str | Path | None = None, resume: bool = False,
                 overwrite: bool = False, dist: DistInfo | None = None):
        self.cfg = cfg
        self.out = Path(out) if out is not None else cfg.out_dir()
        self.resume = resume
        self.dist = dist or DistInfo()
        self.timing: dict[str, float] = {}
        t0 = time.perf_counter()
        t = cfg.train
        self.device = self._device()
        self.autocast = (t.precision == "bf16" or
                         (t.precision == "auto" and self.device.type == "cuda"))
        self.ckpt_dir = self.out / "checkpoints"
        last = self.ckpt_dir / "last.pt"
        if resume and not last.is_file():
            raise FileNotFoundError(
                f"--resume: there is no checkpoint to resume from at {last} (the run was stopped "
                f"before its first checkpoint, or it lives elsewhere: pass its folder with --out); "
                f"to start this run afresh, leave out --resume")
        if last.exists() and not resume and not overwrite:
            raise FileExistsError(f"{self.out} already holds a run ({last}); pass --resume to "
                                  f"continue it, --overwrite to start over, or choose another --out")
        if overwrite and not resume and self.dist.is_main:
            # Start over: no best.pt or summary of the previous run may survive.
            shutil.rmtree(self.ckpt_dir, ignore_errors=True)
            (self.out / "summary.json").unlink(missing_ok=True)

        if t.cpu_threads > 0:
            torch.set_num_threads(t.cpu_threads)
        seed_everything(t.seed)
        self.model = FlowCLAS(cfg.model).to(self.device)
        if t.objective == "nll":
            self.model.proj.requires_grad_(False)  # unused: DDP must not wait for its gradients
        self.loss_module = FlowCLASLoss(self.model, t.objective, t.alpha, t.temperature,
                                        t.max_views, aux_contrast=t.aux_contrast)

        self._build_data()
        self.order = EpochOrder(len(self.pairs), t.batch_size, t.seed, self.dist.rank, self.dist.world)
        if self.order.steps_per_epoch < 1:
            raise ConfigError(f"{len(self.pairs)} training images are fewer than train.batch_size "
                              f"({t.batch_size}) x {self.dist.world} processes: lower the batch size")
        self.steps_per_epoch = self.order.steps_per_epoch
        self.total_steps = t.max_steps or t.epochs * self.steps_per_epoch

        self.optimizer = torch.optim.AdamW(param_groups(self.model, t.weight_decay), lr=t.lr,
                                           betas=tuple(t.betas), eps=t.eps)
        if t.schedule == "constant":  # the factor stays 1: no warm-up, no decay
            self.scheduler = OneCycleSchedule(self.optimizer, self.total_steps, 0, 1.0, 1.0)
        else:
            self.scheduler = OneCycleSchedule(self.optimizer, self.total_steps,
                                              warmup_steps_for(self.total_steps, t.warmup_fraction),
                                              t.warmup_start_factor, t.final_lr_factor)
        self.step = 0
        self.best: dict[str, Any] = {"auprc": -1.0, "step": -1}
        self.cache: FeatureCache | None = None
        self.cache_built = False
        self.timing["setup_s"] = time.perf_counter() - t0

    # setup ----------------------------------------------------------------------------------
    def _device(self) -> torch.device:
        d = self.cfg.train.device
        if d == "auto":
            d = "cuda" if torch.cuda.is_available() else "cpu"
        if d == "cuda":
            d = f"cuda:{self.dist.local_rank}"
        return torch.device(d)

    def log(self, msg: str) -> None:
        if self.dist.is_main:
            logger.info(msg)

    def _build_data(self) -> None:
        from ..data.datasets import build_dataset

        d = self.cfg.data
        parts = []
        for ds_name, root, split, limit in [(d.dataset, d.root, d.split, d.limit)] + [
                (e.dataset, e.root, e.split, e.limit) for e in d.extra]:
            kw = ({"topic": d.bag.topic, "start_s": d.bag.start_s, "end_s": d.bag.end_s,
                   "stride": d.bag.stride, "log": self.log} if ds_name == "bag" else {})
            ds = build_dataset(ds_name, root, split, **kw)
            parts.append((ds, len(ds) if limit is None else min(limit, len(ds))))
        self.dataset = parts[0][0] if len(parts) == 1 else Frames(parts)
        n = sum(k for _, k in parts)
        if n == 0:
            raise ConfigError(f"no training images in {d.root} ({d.dataset}, split {d.split})")
        self.train_outliers = self.held_out_outliers = None
        paster = compositor = None
        if d.outliers:
            from ..data.compositing import Compositor
            from ..data.outlier_sources import default_outlier_split, load_outlier_source
            from ..data.pasting import OutlierPaster, PasteConfig

            kw = {"filter": d.outlier_filter}
            if d.outlier_split:
                kw["split"] = d.outlier_split
            if d.outlier_granularity != "image":
                kw["granularity"] = d.outlier_granularity
            source = load_outlier_source(d.outliers, **kw)
            if d.held_out_classes:
                source, _ = source.split_by_category(d.held_out_classes)
            if d.outlier_holdout and d.outlier_val_fraction > 0:
                self.train_outliers, self.held_out_outliers = default_outlier_split(
                    source, seed=d.outlier_split_seed, val_fraction=d.outlier_val_fraction)
            else:
                self.train_outliers = source
            if len(self.train_outliers) == 0:
                raise ConfigError(f"no usable outlier objects in {d.outliers}")
            p = d.paste
            paster = OutlierPaster(self.train_outliers, PasteConfig(
                scales=tuple(p.scales), paste_prob=p.paste_prob, grey_prob=p.grey_prob,
                aux_background=p.aux_background))
            if p.mode == "composite":
                compositor = Compositor(self.train_outliers)
        elif self.cfg.train.objective == "flowclas":
            raise ConfigError("objective flowclas needs outliers: set data.outliers")
        self.pairs = PairMaker(self.dataset, list(range(n)), paster, d, compositor)

    def cache_spec(self) -> dict[str, Any]:
        """Everything the cached features depend on (hashed into the cache key)."""
        c = self.cfg
        d = c.data
        mean = self.model.mean.flatten().tolist()
        std = self.model.std.flatten().tolist()
        return {
            "backbone": {**c.model.backbone.__dict__,
                         "weights_file": file_fingerprint(c.model.backbone.weights)},
            "normalisation": [mean, std],
            "dataset": d.dataset, "root": str(Path(d.root).resolve()), "split": d.split,
            "n_images": len(self.pairs), "image_size": d.image_size, "crop": d.crop,
            "hflip": d.hflip, "vflip": d.vflip,
            **({"extra": [[e.dataset, str(Path(e.root).resolve()), e.split, e.limit]
                          for e in d.extra]} if d.extra else {}),
            **({"scale_range": d.scale_range} if d.scale_range else {}),
            **({"bag": d.bag.__dict__} if d.dataset == "bag" else {}),
            **({"photometric": d.photometric.__dict__} if d.photometric.enabled else {}),
            **({"label_mode": d.label_mode} if d.label_mode != "nearest" else {}),
            **({"outliers_by": [d.outlier_granularity, d.held_out_classes]}
               if d.outlier_granularity != "image" or d.held_out_classes else {}),
            "outliers": str(Path(d.outliers).resolve()) if d.outliers else None,
            "outlier_split": [d.outlier_filter, d.outlier_split, d.outlier_holdout,
                              d.outlier_val_fraction, d.outlier_split_seed],
            "paste": d.paste.__dict__, "seed": c.train.seed, "variants": c.cache.variants,
            "precision": "bf16" if self.autocast else "fp32",
        }

    def prepare_cache(self) -> None:
        c = self.cfg
        if not c.cache.enabled or self.cache is not None:
            return
        t0 = time.perf_counter()
        root = Path(c.cache.dir) if c.cache.dir else default_cache_dir()
        seed, pairs = c.train.seed, self.pairs

        def make_pair(i: int, v: int) -> Pair:
            return pairs(i, variant_rng(seed, i, v))

        self.cache, self.cache_built = build_feature_cache(
            root, self.cache_spec(), len(pairs), c.cache.variants, make_pair, self.model,
            batch_size=c.cache.batch_size, autocast=self.autocast, rank=self.dist.rank,
            world=self.dist.world, barrier=self.dist.barrier,
            progress=c.train.progress and self.dist.is_main, log=self.log,
            label_mode=c.data.label_mode)
        self.timing["cache_s"] = time.perf_counter() - t0

    def _items(self) -> Dataset:
        aux = self.cfg.train.objective == "flowclas"
        if self.cache is not None:
            return CachedItems(self.cache, self.cfg.train.seed, aux)
        return OnlineItems(self.pairs, self.cfg.train.seed)

    def loader(self, epoch: int, start: int = 0) -> DataLoader:
        nw = self.cfg.data.num_workers
        return DataLoader(self._items(), batch_sampler=self.order.batches(epoch, start),
                          num_workers=nw, pin_memory=self.device.type == "cuda",
                          persistent_workers=False)

    # one step ---------------------------------------------------------------------------------
    def batch_features(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """A loader batch -> (feats, labels, aux_feats, aux_labels) on the device."""
        dev = self.device
        aux = self.cfg.train.objective == "flowclas"
        if "mixed" in batch:  # from the cache
            f = batch["mixed"].to(dev, non_blocking=True)
            lab = batch["mixed_labels"].to(dev, non_blocking=True)
            if not aux:
                return f, lab, None, None
            return (f, lab, batch["aux"].to(dev, non_blocking=True),
                    batch["aux_labels"].to(dev, non_blocking=True))
        images, labels = batch["image"], batch["label"]
        if aux:
            images = torch.cat([images, batch["aux_image"]])
            labels = torch.cat([labels, batch["aux_label"]])
        feats, lab = encode(self.model, images, labels, self.autocast, self.cfg.data.label_mode)
        if not aux:
            return feats, lab, None, None
        b = batch["image"].shape[0]
        return feats[:b], lab[:b], feats[b:], lab[b:]

    def train_step(self, module: nn.Module, batch: dict[str, Tensor]) -> dict[str, float]:
        t = self.cfg.train
        feats, labels, aux_feats, aux_labels = self.batch_features(batch)
        gen = step_generator(t.seed, self.step, self.dist.rank)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            loss, nll, con = module(feats, labels, aux_feats, aux_labels, gen)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if t.grad_clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, t.grad_clip))
        else:
            grad_norm = float(torch.norm(torch.stack([p.grad.norm() for p in params
                                                      if p.grad is not None])))
        lr = self.optimizer.param_groups[-1]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        out = {"loss": float(loss.detach()), "nll": float(nll), "con": float(con),
               "grad_norm": grad_norm, "lr": lr}
        if not all(math.isfinite(out[k]) for k in ("loss", "nll", "con")):
            raise FloatingPointError(f"step {self.step + 1}: non-finite loss {out}; lower "
                                     f"train.lr or check the data")
        return out

    # checkpoints ------------------------------------------------------------------------------
    def checkpoint_payload(self) -> dict[str, Any]:
        return {**model_payload(self.model),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "step": self.step,
                "epoch": self.step // self.steps_per_epoch,
                "rng": rng_state(),
                "best": dict(self.best),
                "world_size": self.dist.world,
                "train_config": self.cfg.to_dict()}

    def save(self, name: str = "last.pt", extra: dict[str, Any] | None = None) -> None:
        if self.dist.is_main:
            save_checkpoint(self.ckpt_dir / name, {**self.checkpoint_payload(), **(extra or {})})

    def load(self, path: Path) -> None:
        ck = load_checkpoint(path, map_location="cpu")
        self.model.load_trainable_state_dict(ck["model"])
        self.model.to(self.device)
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        self.step = int(ck["step"])
        self.best = dict(ck.get("best", self.best))
        set_rng_state(ck["rng"])
        if ck.get("world_size", 1) != self.dist.world:
            self.log(f"warning: checkpoint was written with {ck.get('world_size')} processes, "
                     f"resuming with {self.dist.world}: the data order differs from then on")
        saved = ck.get("train_config", {})
        now = self.cfg.to_dict()
        diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        if diff:
            self.log(f"warning: config sections differ from the checkpoint's: {diff}")
        self.log(f"resumed from {path} at step {self.step}")

    # validation -------------------------------------------------------------------------------
    @property
    def selection_key(self) -> str:
        """What best.pt maximises: the protocol's selection score, else the folder's AUPRC."""
        return "score" if self.cfg.eval.protocol else "auprc"

    def _validation_set(self):
        """The protocol folder, or the validation folder dataset, or None (built if asked)."""
        e = self.cfg.eval
        if e.protocol:
            from ..data.protocol_sets import PROTOCOL_FILE, build_protocol

            path = Path(e.protocol)
            if not (path / PROTOCOL_FILE).is_file() and e.build_if_missing:
                if self.dist.is_main:
                    self.log(f"building the validation protocol {path}")
                    build_protocol(e.protocol_data, path, log=self.log)
                self.dist.barrier()
            if not (path / PROTOCOL_FILE).is_file():
                raise FileNotFoundError(
                    f"eval.protocol {path} is not built: run python -m "
                    f"flowclas_ros.data.protocol_sets --data ../shared/data --out {path}, set "
                    f"eval.build_if_missing=true, or eval.protocol=null")
            return path
        if not e.val_dir:
            return None
        from ..data.datasets import build_dataset

        val_dir = Path(e.val_dir)
        if not val_dir.is_dir() and e.build_if_missing:
            if self.dist.is_main:
                self._build_validation_set(val_dir)
            self.dist.barrier()
        if not val_dir.is_dir():
            raise FileNotFoundError(
                f"eval.val_dir {val_dir} does not exist: build it with python -m "
                f"flowclas_ros.data.validation_set, set eval.build_if_missing=true, or "
                f"eval.val_dir=null")
        return build_dataset("folder", val_dir)

    def _build_validation_set(self, val_dir: Path) -> None:
        from ..data.validation_set import build_validation_set

        d, e = self.cfg.data, self.cfg.eval
        if d.dataset != "camvid":
            raise ConfigError("eval.build_if_missing builds from CamVid: data.dataset must be camvid")
        if not d.outliers:
            raise ConfigError("eval.build_if_missing needs data.outliers")
        self.log(f"building the validation set {val_dir}")
        kw = {"filter": d.outlier_filter}
        if d.outlier_split:
            kw["split"] = d.outlier_split
        build_validation_set(d.root, d.outliers, val_dir, splits=tuple(e.build_splits),
                             seed=e.build_seed, limit=e.build_limit,
                             split_seed=d.outlier_split_seed,
                             val_fraction=d.outlier_val_fraction, outlier_kw=kw)

    def _score(self, val_set) -> dict[str, Any]:
        """The selection figures of the current model on ``val_set`` (see _validation_set)."""
        e = self.cfg.eval
        if e.protocol:
            from ..evaluation.protocol import (CALIBRATION_PART, SELECTION_PARTS,
                                               evaluate_model_on_protocol)

            r = evaluate_model_on_protocol(
                self.model, val_set, tuple(e.input_size), autocast=self.autocast, fpr=e.fpr,
                parts=SELECTION_PARTS + (CALIBRATION_PART,), limit=e.limit)
            parts = [r["parts"][p] for p in SELECTION_PARTS]
            return {"score": r["score"],
                    **{k: float(np.mean([q[k] for q in parts])) for k in SELECTION_METRICS},
                    "parts": {p: {k: r["parts"][p][k] for k in SELECTION_METRICS}
                              for p in SELECTION_PARTS}}
        from ..evaluation.evaluate import evaluate_model

        result = evaluate_model(self.model, val_set, limit=e.limit, autocast=self.autocast,
                                progress=self.cfg.train.progress)
        return {k: float(result[k]) for k in SELECTION_METRICS}

    def validate(self, val_set) -> dict[str, float] | None:
        """Score the validation set on rank 0; keep best.pt by the selection key. Other ranks
        wait."""
        metrics = None
        if self.dist.is_main and val_set is not None:
            t0 = time.perf_counter()
            metrics = self._score(val_set)
            self.timing["eval_s"] = self.timing.get("eval_s", 0.0) + time.perf_counter() - t0
            key = self.selection_key
            improved = metrics[key] > self.best.get(key, -1.0)
            if improved:
                self.best = {"step": self.step, **metrics}
                self.save("best.pt", {"metrics": metrics})
            shown = f"score {metrics['score']:.4f} " if "score" in metrics else ""
            self.log(f"step {self.step}: validation {shown}AUPRC {100 * metrics['auprc']:.2f} "
                     f"FPR95 {100 * metrics['fpr95']:.2f} AUROC {100 * metrics['auroc']:.2f}"
                     + ("  (new best, saved best.pt)" if improved else
                        f"  (best {self.best[key]:.4f} at step {self.best['step']})"))
        self.dist.barrier()
        return metrics

    # the loop -----------------------------------------------------------------------------------
    def _start_or_resume(self) -> None:
        """Load last.pt when resuming; otherwise the data-dependent ActNorm initialisation."""
        if self.resume:
            self.load(self.ckpt_dir / "last.pt")
            return
        # From the first batch, before DDP wraps the module, so that rank 0's initialisation is
        # what DDP broadcasts.
        first = next(iter(self.loader(0)))
        self.model.initialize(self.batch_features(first)[0])

    def _save_config(self) -> None:
        import yaml

        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            # The saved config says where the run lives, so `train --config OUT/config.yaml
            # --resume` continues this run whatever --out it was started with.
            saved = {**self.cfg.to_dict(), "out": str(self.out)}
            (self.out / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))

    def _progress_bar(self, end: int):
        if not (self.cfg.train.progress and self.dist.is_main):
            return None
        from tqdm import tqdm

        return tqdm(total=end, initial=self.step, desc=f"train {self.cfg.train.objective}",
                    unit="step", dynamic_ncols=True)

    def fit(self, stop_after: int | None = None,
            on_step: Callable[["Trainer"], None] | None = None) -> dict[str, Any]:
        """Train to ``total_steps`` and return the summary.

        ``stop_after``: run only that many more steps, for benchmarks (no logs, checkpoints,
        validation or summary). ``on_step(trainer)`` is called after every step, once its
        checkpoint and validation are done.
        """
        t_start = time.perf_counter()
        self.prepare_cache()
        self._start_or_resume()
        val_set = self._validation_set() if stop_after is None else None
        self._save_config()
        module = wrap_ddp(self.loss_module, self.dist, self.device)
        self.model.train()
        end = self.total_steps if stop_after is None else min(self.total_steps, self.step + stop_after)
        run_log = None
        if stop_after is None and self.dist.is_main:
            run_log = RunLog(self.out, self.step if self.resume else None,
                             self.cfg.train.batch_size * self.dist.world)
        bar = self._progress_bar(end)
        try:
            t_loop, steps_before = time.perf_counter(), self.step
            last_eval = self._loop(module, end, run_log, bar, val_set, stop_after is None,
                                   on_step, t_start)
            # training time proper: the loop less the validation passes inside it
            self.timing["train_s"] = (time.perf_counter() - t_loop) - self.timing.get("eval_s", 0.0)
            self.timing["steps"] = self.step - steps_before
            if stop_after is not None:
                return {"timing": dict(self.timing), "step": self.step}
            if val_set is not None and last_eval != self.step:
                self._validate_and_log(val_set, run_log)
            return self._finish(t_start)
        finally:
            if bar is not None:
                bar.close()
            if run_log is not None:
                run_log.close()

    def _loop(self, module: nn.Module, end: int, run_log: RunLog | None, bar, val_set,
              full_run: bool, on_step, t_start: float) -> int:
        """Steps until ``end``: train, log, checkpoint, validate. Returns the last validated step."""
        t, last_eval = self.cfg.train, -1
        while self.step < end:
            epoch = self.step // self.steps_per_epoch
            for batch in self.loader(epoch, self.step % self.steps_per_epoch):
                out = self.train_step(module, batch)
                self.step += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{out['loss']:.4f}", nll=f"{out['nll']:.4f}",
                                    con=f"{out['con']:.4f}", lr=f"{out['lr']:.2e}", refresh=False)
                if run_log is not None:
                    run_log.add_step(out)
                    if self.step % t.log_every == 0 or self.step == end:
                        run_log.train_row(self.step, epoch, out["lr"],
                                          time.perf_counter() - t_start)
                if full_run and (self.step % t.checkpoint_every == 0 or self.step == end):
                    self.save("last.pt")
                if (full_run and self.cfg.eval.every and val_set is not None
                        and self.step % self.cfg.eval.every == 0):
                    self._validate_and_log(val_set, run_log)
                    last_eval = self.step
                if on_step is not None:
                    on_step(self)
                if self.step >= end:
                    break
        return last_eval

    def _validate_and_log(self, val_set, run_log: RunLog | None) -> None:
        m = self.validate(val_set)
        if m is not None and run_log is not None:
            run_log.val_row(self.step, self.step // self.steps_per_epoch,
                            {k: v for k, v in m.items() if k != "parts"})

    def _finish(self, t_start: float) -> dict[str, Any]:
        digests = all_equal(self.dist, params_sha256(self.model))
        self.timing["total_s"] = time.perf_counter() - t_start
        summary = {
            "steps": self.step, "epochs": self.step / self.steps_per_epoch,
            "steps_per_epoch": self.steps_per_epoch, "world_size": self.dist.world,
            "global_batch": self.cfg.train.batch_size * self.dist.world,
            "objective": self.cfg.train.objective, "device": str(self.device),
            "precision": "bf16" if self.autocast else "fp32",
            "cache": ({"path": str(self.cache.path), "built": self.cache_built,
                       "bytes": self.cache.nbytes()} if self.cache is not None else None),
            "timing": dict(self.timing), "best": self.best,
            "param_sha256": digests, "ranks_in_sync": len(set(digests)) == 1,
        }
        if self.dist.is_main:
            (self.out / "summary.json").write_text(json.dumps(summary, indent=1))
            self.log(f"done: {self.step} steps in {self.timing['total_s']:.1f} s; "
                     f"checkpoints in {self.ckpt_dir}")
        if not summary["ranks_in_sync"]:
            raise RuntimeError(f"parameters differ between ranks: {digests}")
        return summary


def train(cfg: TrainConfig, out: str | Path | None = None, resume: bool = False,
          overwrite: bool = False, dist: DistInfo | None = None) -> dict[str, Any]:
    """Train from a config; returns the summary (see :meth:`Trainer.fit`)."""
    return Trainer(cfg, out, resume=resume, overwrite=overwrite, dist=dist).fit()
