"""The FlowCLAS training engine (METHOD.md sections 3-5): :class:`Trainer` and :func:`train`.

One step, per process:

1. a batch of (mixed, aux) :class:`~.samples.Pair` s: the training image with one outlier
   image's objects pasted (mixed) and that outlier image on its own (aux), labelled
   INLIER / ANOMALY / VOID;
2. their frozen backbone features, from the feature cache or from the backbone, and the labels
   nearest-downsampled to the feature grid (a position is an inlier only if its label is 0);
3. :class:`~flowclas_ros.model.losses.FlowCLASLoss`: L = alpha * L_nll [+ L_con];
4. AdamW (no weight decay on flow, bias and norm parameters), gradient clipping, one-cycle lr.

Where the rest lives: what is trained on in :mod:`.inputs`, the samples and epoch order in
:mod:`.samples` and :mod:`.items`, the feature cache in :mod:`.feature_cache`, checkpoint
selection in :mod:`.selection`, the run folder and checkpoints in :mod:`.checkpointing`, seeds
and RNG state in :mod:`.rng`, torchrun in :mod:`.distributed`, the CSV/TensorBoard logs in
:mod:`.run_log`. Determinism: see :mod:`.samples`; the contrastive sampling of step s on rank r
uses :func:`~.rng.step_generator` (seed, s, r), so a run killed after a checkpoint and resumed
replays exactly the same steps.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..model.flowclas import FlowCLAS
from ..model.losses import FlowCLASLoss
from .checkpointing import RunFolder, restore, sections_differing, training_payload
from .config import ConfigError, TrainConfig
from .distributed import DistInfo, all_equal, wrap_ddp
from .feature_cache import FeatureCache, build_feature_cache, default_cache_dir
from .features import encode
from .inputs import build_inputs, cache_spec
from .items import CachedItems, OnlineItems
from .precision import precision_name, uses_autocast
from .rng import seed_everything, step_generator
from .run_log import RunLog
from .samples import EpochOrder, Pair, variant_rng
from .schedule import build_schedule
from .selection import CheckpointSelection

logger = logging.getLogger("flowclas_ros.training")


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
    """Hash the trainable state: equal hashes = bit-identical parameters and buffers."""
    h = hashlib.sha256()
    for k, v in sorted(model.trainable_state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class Trainer:
    """Builds model, data, optimiser and cache from a :class:`TrainConfig` and trains.

    Writes to ``out``: config.yaml (first), checkpoints/last.pt (every
    ``train.checkpoint_every`` steps and at the end), checkpoints/best.pt (best validation
    score), log.csv, tb/ (TensorBoard) and summary.json.
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
        self.autocast = uses_autocast(t.precision, self.device.type)
        self.run = RunFolder(self.out)
        self.ckpt_dir = self.run.ckpt_dir
        self.resume_from = self.run.open(resume, overwrite, self.dist.is_main)
        if resume and self.resume_from is None:  # from step 0: compare with its config.yaml
            self._note_config_changes(self.run.saved_config(),
                                      {**cfg.to_dict(), "out": str(self.out)})

        if t.cpu_threads > 0:
            torch.set_num_threads(t.cpu_threads)
        seed_everything(t.seed)
        self.model = FlowCLAS(cfg.model).to(self.device)
        if t.objective == "nll":
            self.model.proj.requires_grad_(False)  # unused: DDP must not wait for its gradients
        self.loss_module = FlowCLASLoss(self.model, t.objective, t.alpha, t.temperature,
                                        t.max_views, aux_contrast=t.aux_contrast)
        self.selection = CheckpointSelection(cfg, self.dist, self.log)

        inputs = build_inputs(cfg, self.log)
        self.dataset, self.pairs = inputs.dataset, inputs.pairs
        self.train_outliers = inputs.train_outliers
        self.held_out_outliers = inputs.held_out_outliers
        self.order = EpochOrder(len(self.pairs), t.batch_size, t.seed, self.dist.rank,
                                self.dist.world)
        if self.order.steps_per_epoch < 1:
            raise ConfigError(f"{len(self.pairs)} training images are fewer than "
                              f"train.batch_size ({t.batch_size}) x {self.dist.world} processes: "
                              f"lower the batch size")
        self.steps_per_epoch = self.order.steps_per_epoch
        self.total_steps = t.max_steps or t.epochs * self.steps_per_epoch

        self.optimizer = torch.optim.AdamW(param_groups(self.model, t.weight_decay), lr=t.lr,
                                           betas=tuple(t.betas), eps=t.eps)
        self.scheduler = build_schedule(self.optimizer, t.schedule, self.total_steps,
                                        t.warmup_fraction, t.warmup_start_factor,
                                        t.final_lr_factor)
        self.step = 0
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

    @property
    def best(self) -> dict[str, Any]:
        """The best selection figures so far and their step (see :mod:`.selection`)."""
        return self.selection.best

    @best.setter
    def best(self, value: dict[str, Any]) -> None:
        self.selection.best = value

    @property
    def selection_key(self) -> str:
        return self.selection.key

    def cache_spec(self) -> dict[str, Any]:
        """Everything the cached features depend on (hashed into the cache key)."""
        return cache_spec(self.cfg, self.model, len(self.pairs), self.autocast)

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
            label_mode=c.data.label_mode, anomaly_fraction=c.data.label_anomaly_fraction)
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
    def batch_features(self, batch: dict[str, Tensor]
                       ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """Turn a loader batch into (feats, labels, aux_feats, aux_labels) on the device."""
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
        d = self.cfg.data
        feats, lab = encode(self.model, images, labels, self.autocast, d.label_mode,
                            d.label_anomaly_fraction)
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
        return training_payload(self.model, self.optimizer, self.scheduler, self.step,
                                self.steps_per_epoch, self.best, self.dist.world, self.cfg)

    def save(self, name: str = "last.pt", extra: dict[str, Any] | None = None) -> None:
        if self.dist.is_main:
            self.run.save_checkpoint(name, {**self.checkpoint_payload(), **(extra or {})})

    def load(self, path: Path) -> None:
        ck = restore(path, self.model, self.optimizer, self.scheduler, self.device)
        self.step = int(ck["step"])
        self.best = dict(ck.get("best", self.best))
        if ck.get("world_size", 1) != self.dist.world:
            self.log(f"warning: checkpoint was written with {ck.get('world_size')} processes, "
                     f"resuming with {self.dist.world}: the data order differs from then on")
        self._note_config_changes(ck.get("train_config", {}), self.cfg.to_dict(), "checkpoint's")
        self.log(f"resumed from {path} at step {self.step}")

    def _note_config_changes(self, saved: dict[str, Any], now: dict[str, Any],
                             whose: str = "saved config's") -> None:
        diff = sections_differing(saved, now)
        if diff:
            self.log(f"warning: config sections differ from the {whose}: {diff}")

    # validation -------------------------------------------------------------------------------
    def validate(self, val_set) -> dict[str, float] | None:
        """Score the validation set on rank 0; keep best.pt by the selection key.

        Other ranks wait.
        """
        metrics = None
        if self.dist.is_main and val_set is not None:
            t0 = time.perf_counter()
            metrics = self.selection.score(self.model, val_set, self.autocast)
            self.timing["eval_s"] = self.timing.get("eval_s", 0.0) + time.perf_counter() - t0
            improved = self.selection.offer(self.step, metrics)
            if improved:
                self.save("best.pt", {"metrics": metrics})
            self.log(self.selection.report(self.step, metrics, improved))
        self.dist.barrier()
        return metrics

    # the loop -----------------------------------------------------------------------------------
    def _start_or_resume(self) -> None:
        """Load the checkpoint when resuming from one, else initialise ActNorm from data.

        Otherwise (a fresh run, or one resumed from step 0) run the data-dependent ActNorm
        initialisation.
        """
        if self.resume_from is not None:
            self.load(self.resume_from)
            return
        if self.resume:
            self.log(f"resuming {self.out} from step 0: it stopped before its first checkpoint")
        # From the first batch, before DDP wraps the module, so that rank 0's initialisation is
        # what DDP broadcasts.
        first = next(iter(self.loader(0)))
        self.model.initialize(self.batch_features(first)[0])

    def _save_config(self) -> None:
        if self.dist.is_main:
            self.run.save_config(self.cfg)

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
        # First: from here on the folder is a run that --resume continues, from step 0 if it
        # is killed before its first checkpoint (the feature cache build can take minutes).
        self._save_config()
        self.prepare_cache()
        self._start_or_resume()
        val_set = self.selection.validation_set() if stop_after is None else None
        module = wrap_ddp(self.loss_module, self.dist, self.device)
        self.model.train()
        end = (self.total_steps if stop_after is None
               else min(self.total_steps, self.step + stop_after))
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
            self.timing["train_s"] = ((time.perf_counter() - t_loop)
                                      - self.timing.get("eval_s", 0.0))
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
        """Run steps until ``end``: train, log, checkpoint, validate.

        Returns the last validated step.
        """
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
            "precision": precision_name(self.autocast),
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
