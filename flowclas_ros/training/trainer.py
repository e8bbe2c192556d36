"""The FlowCLAS training loop (METHOD.md sections 3-5).

One step, per process:

1. a batch of (mixed, aux) pairs: the training image with one outlier image's objects pasted
   (mixed) and that outlier image on its own (aux), with labels 0 inlier / 1 outlier / 255 ignore;
2. their frozen backbone features, from the feature cache or from the backbone, and the labels
   nearest-downsampled to the feature grid (a position is an inlier only if its label is 0);
3. ``model.latent`` on mixed (and aux) features -> z, per-pixel log-determinant;
4. L_nll = mean NLL over inlier positions of the mixed image; for ``objective: flowclas`` also
   L_con = supervised contrastive loss on ``model.embed(z)`` of mixed and aux (max_views
   sampling), and L = alpha * L_nll + L_con;
5. AdamW (no weight decay on flow, bias and norm parameters), gradient clipping, one-cycle lr.

Determinism: every random choice is derived from the seed and *where* it is made, never from
a running generator: image i of epoch e is pasted with ``default_rng([seed, 0, e, i])``, cache
variant v of image i with ``default_rng([seed, 1, i, v])``, the epoch order is
``default_rng([seed, 3, e]).permutation``, and the contrastive sampling of step s on rank r uses
a torch generator seeded from (seed, s, r). A run killed after a checkpoint and resumed therefore
replays exactly the same steps as one that never stopped. The global torch / numpy / python RNG
states are saved as well (tensors and ints only) and restored on resume.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import random
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..model.checkpoint import load_checkpoint, model_payload, save_checkpoint
from ..model.flowclas import FlowCLAS
from ..model.losses import IGNORE, INLIER, masked_nll, sample_views, supervised_contrastive
from .config import ConfigError, TrainConfig
from .feature_cache import (FeatureCache, build_feature_cache, default_cache_dir, encode,
                            file_fingerprint, to_image_batch)
from .schedule import OneCycleSchedule, warmup_steps_for

logger = logging.getLogger("flowclas_ros.training")

KILL_ENV = "FLOWCLAS_KILL_AT_STEP"  # test hook: SIGKILL this process right after that step
CSV_FIELDS = ("kind", "step", "epoch", "lr", "loss", "nll", "con", "grad_norm", "img_per_s",
              "elapsed_s", "auprc", "fpr95", "auroc")


# --- distributed -------------------------------------------------------------------------------

@dataclass
class DistInfo:
    """Where this process stands in a torchrun job (rank 0 of 1 without one)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialized: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.initialized:
            torch_dist.barrier()


def setup_distributed(device: str = "auto") -> DistInfo:
    """Join the torchrun job described by the environment (WORLD_SIZE, RANK, LOCAL_RANK).

    NCCL when CUDA is used, gloo otherwise (CPU). Without torchrun: a single process.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local)
    if not torch_dist.is_initialized():
        torch_dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistInfo(rank, world, local, True)


def cleanup_distributed(info: DistInfo) -> None:
    if info.initialized and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


# --- seeds and RNG state -------------------------------------------------------------------------

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
    """The generator of the contrastive sampling of one step on one rank."""
    s = int(np.random.SeedSequence([seed, step, rank]).generate_state(1, np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(s)


# --- data ----------------------------------------------------------------------------------------

Pair = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _resize(image: np.ndarray, label: np.ndarray, size: list[int]) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    h, w = size
    if image.shape[:2] == (h, w):
        return image, label
    image = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
    label = np.asarray(Image.fromarray(label).resize((w, h), Image.NEAREST))
    return image, label


def _crop(image: np.ndarray, label: np.ndarray, size: list[int], rng: np.random.Generator):
    """Random crop to size (H, W); smaller images are padded (image 0, label IGNORE) first."""
    ch, cw = size
    h, w = label.shape
    if h < ch or w < cw:
        ph, pw = max(ch - h, 0), max(cw - w, 0)
        image = np.pad(image, ((0, ph), (0, pw), (0, 0)))
        label = np.pad(label, ((0, ph), (0, pw)), constant_values=IGNORE)
        h, w = label.shape
    y = int(rng.integers(0, h - ch + 1))
    x = int(rng.integers(0, w - cw + 1))
    return image[y:y + ch, x:x + cw], label[y:y + ch, x:x + cw]


def _flip(image: np.ndarray, label: np.ndarray, hflip: bool, vflip: bool, rng: np.random.Generator):
    # Both draws are always made so the random stream does not depend on the outcome.
    do_h, do_v = rng.random() < 0.5, rng.random() < 0.5
    if hflip and do_h:
        image, label = image[:, ::-1], label[:, ::-1]
    if vflip and do_v:
        image, label = image[::-1], label[::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(label)


class PairMaker:
    """Training image ``i`` and a numpy Generator -> (mixed image, mixed label, aux image, aux label).

    resize -> random crop -> paste one outlier image's objects (the paster also returns the
    auxiliary outlier image at the same size) -> flips, drawn independently for the mixed and the
    aux pair and applied to image and label together. Without a paster (no outlier source) the
    aux pair is the mixed pair itself (only the ``nll`` objective allows that).
    """

    def __init__(self, dataset, indices: list[int], paster, cfg: TrainConfig):
        self.dataset, self.indices, self.paster = dataset, indices, paster
        self.data = cfg.data

    def __len__(self) -> int:
        return len(self.indices)

    def __call__(self, i: int, rng: np.random.Generator) -> Pair:
        d = self.data
        sample = self.dataset[self.indices[i]]
        image, label = sample.image, sample.label
        if d.image_size:
            image, label = _resize(image, label, d.image_size)
        if d.crop:
            image, label = _crop(image, label, d.crop, rng)
        if self.paster is not None:
            p = self.paster(image, label, rng)
            image, label, aux_image, aux_label = p.image, p.label, p.aux_image, p.aux_label
        else:
            aux_image, aux_label = image, label
        image, label = _flip(image, label, d.hflip, d.vflip, rng)
        aux_image, aux_label = _flip(aux_image, aux_label, d.hflip, d.vflip, rng)
        return image, label, aux_image, aux_label


def online_rng(seed: int, epoch: int, i: int) -> np.random.Generator:
    return np.random.default_rng([seed, 0, epoch, i])


def variant_rng(seed: int, i: int, v: int) -> np.random.Generator:
    return np.random.default_rng([seed, 1, i, v])


def cache_variant(seed: int, epoch: int, i: int, variants: int) -> int:
    """Image i cycles through its cached variants from a seeded offset: all V in V epochs."""
    offset = int(np.random.default_rng([seed, 2, i]).integers(variants))
    return (epoch + offset) % variants


class OnlineItems(Dataset):
    """(epoch, i) -> raw pasted pair (uint8 arrays); the backbone runs in the training step."""

    def __init__(self, pairs: PairMaker, seed: int):
        self.pairs, self.seed = pairs, seed

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, np.ndarray]:
        epoch, i = key
        image, label, aux_image, aux_label = self.pairs(i, online_rng(self.seed, epoch, i))
        return {"image": image, "label": label, "aux_image": aux_image, "aux_label": aux_label}


class CachedItems(Dataset):
    """(epoch, i) -> cached features and grid labels of one variant of image i."""

    def __init__(self, cache: FeatureCache, seed: int, aux: bool):
        self.cache, self.seed, self.aux = cache, seed, aux

    def __len__(self) -> int:
        return self.cache.n_images

    def __getitem__(self, key: tuple[int, int]) -> dict[str, np.ndarray]:
        epoch, i = key
        v = cache_variant(self.seed, epoch, i, self.cache.variants)
        return self.cache.item(i, v, aux=self.aux)


class EpochOrder:
    """The batches of one rank in one epoch; depends only on (seed, epoch, rank, world).

    A seeded permutation of the N images, padded by wrapping to a multiple of the world size
    (as DistributedSampler does), sharded ``rank::world`` and cut into full batches.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.per_rank = math.ceil(n / world)
        self.steps_per_epoch = self.per_rank // batch_size

    def batches(self, epoch: int, start: int = 0) -> list[list[tuple[int, int]]]:
        perm = np.random.default_rng([self.seed, 3, epoch]).permutation(self.n)
        total = self.per_rank * self.world
        perm = np.resize(perm, total)  # wraps around
        mine = perm[self.rank::self.world]
        b = self.batch_size
        return [[(epoch, int(i)) for i in mine[k * b:(k + 1) * b]]
                for k in range(start, self.steps_per_epoch)]


# --- the loss ----------------------------------------------------------------------------------

class LossModule(nn.Module):
    """Wraps the model so that one ``forward`` computes the losses (what DDP needs).

    forward(feats (B,C,h,w), labels (B,h,w) u8 [, aux_feats, aux_labels, generator])
    -> (loss, nll, con) scalars; nll and con detached.
    """

    def __init__(self, model: FlowCLAS, objective: str, alpha: float = 1.0,
                 temperature: float = 0.13, max_views: int = 512):
        super().__init__()
        self.model = model
        self.objective, self.alpha = objective, alpha
        self.temperature, self.max_views = temperature, max_views

    def forward(self, feats: Tensor, labels: Tensor, aux_feats: Tensor | None = None,
                aux_labels: Tensor | None = None, generator: torch.Generator | None = None):
        model = self.model
        b = feats.shape[0]
        contrastive = self.objective == "flowclas"
        x = torch.cat([feats, aux_feats]) if contrastive else feats
        z_all, logdet_all = model.latent(x)  # mixed and aux in one pass: norms are per sample
        z, logdet = z_all[:b].float(), logdet_all[:b].float()
        nll = masked_nll(model.nll_map(z, logdet), labels == INLIER)
        if not contrastive:
            zero = nll.detach() * 0.0
            return nll, nll.detach(), zero
        emb = model.embed(z_all).float()
        views = sample_views(emb[:b], labels.long(), emb[b:], aux_labels.long(),
                             self.max_views, generator)
        con = supervised_contrastive(*views, temperature=self.temperature)
        return self.alpha * nll + con, nll.detach(), con.detach()


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


# --- validation ------------------------------------------------------------------------------

@torch.no_grad()
def score_dataset(model: FlowCLAS, dataset, limit: int | None = None, autocast: bool = False,
                  progress: bool = False) -> dict[str, float]:
    """Anomaly scores of the model on a labelled set -> {"auprc", "fpr95", "auroc"} (exact).

    Every image is scored at its own resolution (batch of one).
    """
    from ..evaluation.metrics import ExactPixelMetrics

    device = model.mean.device
    was_training = model.training
    model.eval()
    metrics = ExactPixelMetrics()
    n = len(dataset) if limit is None else min(limit, len(dataset))
    it = range(n)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="validation", unit="img", leave=False, dynamic_ncols=True)
    try:
        for i in it:
            s = dataset[i]
            x = to_image_batch(s.image[None], device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                scores = model(x)[0]
            metrics.update(scores.float().cpu().numpy(), s.label)
        return {k: float(v) for k, v in metrics.compute().items()}
    finally:
        model.train(was_training)


# --- the trainer -------------------------------------------------------------------------------

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
        self.loss_module = LossModule(self.model, t.objective, t.alpha, t.temperature, t.max_views)

        self._build_data()
        self.order = EpochOrder(len(self.pairs), t.batch_size, t.seed, self.dist.rank, self.dist.world)
        if self.order.steps_per_epoch < 1:
            raise ConfigError(f"{len(self.pairs)} training images are fewer than train.batch_size "
                              f"({t.batch_size}) x {self.dist.world} processes: lower the batch size")
        self.steps_per_epoch = self.order.steps_per_epoch
        self.total_steps = t.max_steps or t.epochs * self.steps_per_epoch

        self.optimizer = torch.optim.AdamW(param_groups(self.model, t.weight_decay), lr=t.lr,
                                           betas=tuple(t.betas), eps=t.eps)
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
        self.dataset = build_dataset(d.dataset, d.root, d.split)
        n = len(self.dataset) if d.limit is None else min(d.limit, len(self.dataset))
        if n == 0:
            raise ConfigError(f"no training images in {d.root} ({d.dataset}, split {d.split})")
        self.train_outliers = self.held_out_outliers = None
        paster = None
        if d.outliers:
            from ..data.outliers import (OutlierPaster, PasteConfig, default_outlier_split,
                                         load_outlier_source)

            kw = {"filter": d.outlier_filter}
            if d.outlier_split:
                kw["split"] = d.outlier_split
            source = load_outlier_source(d.outliers, **kw)
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
        elif self.cfg.train.objective == "flowclas":
            raise ConfigError("objective flowclas needs outliers: set data.outliers")
        self.pairs = PairMaker(self.dataset, list(range(n)), paster, self.cfg)

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
            progress=c.train.progress and self.dist.is_main, log=self.log)
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
        feats, lab = encode(self.model, images, labels, self.autocast)
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
        return {"loss": float(loss.detach()), "nll": float(nll), "con": float(con),
                "grad_norm": grad_norm, "lr": lr}

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
    def _validation_set(self):
        e = self.cfg.eval
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

    def validate(self, val_set) -> dict[str, float] | None:
        """Score the validation set on rank 0; keep best.pt by AUPRC. Other ranks wait."""
        metrics = None
        if self.dist.is_main and val_set is not None:
            t0 = time.perf_counter()
            metrics = score_dataset(self.model, val_set, self.cfg.eval.limit, self.autocast,
                                    progress=self.cfg.train.progress)
            self.timing["eval_s"] = self.timing.get("eval_s", 0.0) + time.perf_counter() - t0
            improved = metrics["auprc"] > self.best["auprc"]
            if improved:
                self.best = {"auprc": metrics["auprc"], "step": self.step, **metrics}
                self.save("best.pt", {"metrics": metrics})
            self.log(f"step {self.step}: validation AUPRC {100 * metrics['auprc']:.2f} "
                     f"FPR95 {100 * metrics['fpr95']:.2f} AUROC {100 * metrics['auroc']:.2f}"
                     + ("  (new best, saved best.pt)" if improved else
                        f"  (best {100 * self.best['auprc']:.2f} at step {self.best['step']})"))
        self.dist.barrier()
        return metrics

    # logs ---------------------------------------------------------------------------------------
    def _open_logs(self):
        """CSV (rows after the resumed step are dropped) and TensorBoard writers on rank 0."""
        if not self.dist.is_main:
            return None, None
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / "log.csv"
        rows = []
        if self.resume and path.is_file():
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= self.step]
        f = path.open("w", newline="")
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
        f.flush()
        tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            tb = SummaryWriter(str(self.out / "tb"), purge_step=self.step if self.resume else None)
        except ImportError:  # tensorboard is optional at run time
            self.log("tensorboard is not installed: no TensorBoard logs")
        return (f, writer), tb

    def _write_row(self, logs, tb, row: dict[str, Any]) -> None:
        if logs is None:
            return
        f, writer = logs
        writer.writerow({k: row.get(k, "") for k in CSV_FIELDS})
        f.flush()
        if tb is not None:
            prefix = "val" if row["kind"] == "val" else "train"
            for k in ("lr", "loss", "nll", "con", "grad_norm", "img_per_s", "auprc", "fpr95", "auroc"):
                if row.get(k, "") != "":
                    tb.add_scalar(f"{prefix}/{k}", row[k], row["step"])
            tb.flush()

    # the loop -----------------------------------------------------------------------------------
    def fit(self, stop_after: int | None = None) -> dict[str, Any]:
        """Train to ``total_steps`` (or ``stop_after`` more steps, for benchmarks: then no final
        checkpoint, validation or summary). Returns the summary."""
        t, dist = self.cfg.train, self.dist
        t_start = time.perf_counter()
        self.prepare_cache()
        last = self.ckpt_dir / "last.pt"
        if self.resume and last.is_file():
            self.load(last)
        else:
            if self.resume:
                self.log(f"no checkpoint in {self.ckpt_dir}: starting a new run")
            # ActNorm data-dependent init from the first batch, before DDP wraps the module so
            # that rank 0's initialisation is what DDP broadcasts.
            first = next(iter(self.loader(0)))
            feats = self.batch_features(first)[0]
            self.model.initialize(feats)
        val_set = self._validation_set() if stop_after is None else None
        if dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.yaml").write_text(_yaml_dump(self.cfg.to_dict()))

        module: nn.Module = self.loss_module
        if dist.initialized:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # Parameters and buffers are broadcast from rank 0 at construction; buffers
            # (permutations, ActNorm flags) never change after that, so no per-step sync.
            import inspect

            ddp = nn.parallel.DistributedDataParallel
            kw = ({"forward_sync_buffers": False}
                  if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters
                  else {"broadcast_buffers": False})
            module = ddp(module, device_ids=ids, **kw)
        self.model.train()
        logs, tb = self._open_logs() if stop_after is None else (None, None)
        kill_at = int(os.environ.get(KILL_ENV, "0") or 0)
        end = self.total_steps if stop_after is None else min(self.total_steps, self.step + stop_after)
        global_batch = t.batch_size * dist.world
        bar = None
        if t.progress and dist.is_main:
            from tqdm import tqdm

            bar = tqdm(total=end, initial=self.step, desc=f"train {t.objective}", unit="step",
                       dynamic_ncols=True)
        acc: dict[str, float] = {}
        n_acc, t_acc, last_eval = 0, time.perf_counter(), -1
        t_loop = time.perf_counter()
        steps_run = 0
        try:
            while self.step < end:
                epoch = self.step // self.steps_per_epoch
                for batch in self.loader(epoch, self.step % self.steps_per_epoch):
                    out = self.train_step(module, batch)
                    self.step += 1
                    steps_run += 1
                    if not all(math.isfinite(out[k]) for k in ("loss", "nll", "con")):
                        raise FloatingPointError(f"step {self.step}: non-finite loss {out}; lower "
                                                 f"train.lr or check the data")
                    for k in ("loss", "nll", "con", "grad_norm"):
                        acc[k] = acc.get(k, 0.0) + out[k]
                    n_acc += 1
                    if bar is not None:
                        rate = global_batch * n_acc / max(time.perf_counter() - t_acc, 1e-9)
                        bar.update(1)
                        bar.set_postfix(loss=f"{out['loss']:.4f}", nll=f"{out['nll']:.4f}",
                                        con=f"{out['con']:.4f}", lr=f"{out['lr']:.2e}",
                                        img_s=f"{rate:.1f}", refresh=False)
                    if self.step % t.log_every == 0 or self.step == end:
                        dt = time.perf_counter() - t_acc
                        self._write_row(logs, tb, {
                            "kind": "train", "step": self.step, "epoch": epoch, "lr": out["lr"],
                            **{k: v / n_acc for k, v in acc.items()},
                            "img_per_s": global_batch * n_acc / max(dt, 1e-9),
                            "elapsed_s": time.perf_counter() - t_start})
                        acc, n_acc, t_acc = {}, 0, time.perf_counter()
                    if stop_after is None and (self.step % t.checkpoint_every == 0 or self.step == end):
                        self.save("last.pt")
                    if (stop_after is None and self.cfg.eval.every and val_set is not None
                            and self.step % self.cfg.eval.every == 0):
                        m = self.validate(val_set)
                        last_eval = self.step
                        if m is not None:
                            self._write_row(logs, tb, {"kind": "val", "step": self.step,
                                                       "epoch": epoch, **m})
                    if kill_at and self.step == kill_at:
                        os.kill(os.getpid(), signal.SIGKILL)  # test hook: die like a killed run
                    if self.step >= end:
                        break
            # training time proper: the loop less the validation passes inside it
            self.timing["train_s"] = (time.perf_counter() - t_loop) - self.timing.get("eval_s", 0.0)
            self.timing["steps"] = steps_run
            if stop_after is not None:
                return {"timing": dict(self.timing), "step": self.step}
            if val_set is not None and last_eval != self.step:
                m = self.validate(val_set)
                if m is not None:
                    self._write_row(logs, tb, {"kind": "val", "step": self.step,
                                               "epoch": self.step // self.steps_per_epoch, **m})
            return self._finish(t_start)
        finally:
            if bar is not None:
                bar.close()
            if logs is not None:
                logs[0].close()
            if tb is not None:
                tb.close()

    def _finish(self, t_start: float) -> dict[str, Any]:
        digest = params_sha256(self.model)
        digests = [digest]
        if self.dist.initialized:
            digests = [None] * self.dist.world
            torch_dist.all_gather_object(digests, digest)
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


def _yaml_dump(d: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(d, sort_keys=False)


def train(cfg: TrainConfig, out: str | Path | None = None, resume: bool = False,
          overwrite: bool = False, dist: DistInfo | None = None) -> dict[str, Any]:
    """Train from a config; returns the summary (see :meth:`Trainer.fit`)."""
    return Trainer(cfg, out, resume=resume, overwrite=overwrite, dist=dist).fit()
