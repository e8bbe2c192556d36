"""Frozen-feature cache: backbone features of pasted training images, computed once, kept in fp16.

The backbone is frozen, so the features of a given (image, crop, paste, flip) never change. The
cache holds ``variants`` seeded draws of each training image (row ``i * variants + v``); an
epoch reads one variant per image, so training never runs the backbone.

Flips are part of a variant: every variant is an independent draw of crop, paste *and* flips,
and its features are those of the flipped image. Flipping a cached feature map instead would not
equal the features of the flipped image (convolution padding and strides are not
mirror-symmetric), so no feature is ever flipped after the fact.

On disk, one folder per cache key (``<dir>/<key>/``), four ``.npy`` arrays read as memmaps::

    mixed.npy         (N*V, C, h, w) float16  features of the outlier-pasted image
    mixed_labels.npy  (N*V, h, w)    uint8    its labels on the feature grid (0/1/255)
    aux.npy           (N*V, C, h, w) float16  features of the auxiliary outlier image
    aux_labels.npy    (N*V, h, w)    uint8
    meta.json                                 key, spec, shapes, build time (written last)

The key is a hash of everything the features depend on (backbone config and weights file,
input normalisation, data roots, dataset, resize/crop/flips, paste config, outlier split, seed,
variants): change any and a new cache is built beside the old one. A build goes to
``<key>.partial`` and is renamed when complete, so a killed build is never mistaken for a cache.
Under torch.distributed every rank computes its share of the rows into the same files.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..labels import ANOMALY, INLIER, VOID

if TYPE_CHECKING:
    from .samples import Pair
from ..model.losses import downsample_labels

CACHE_FORMAT = 1
ARRAYS = ("mixed", "mixed_labels", "aux", "aux_labels")

# make_pair(image_index, variant) -> a training.samples.Pair (image, label, aux_image, aux_label)
PairFn = Callable[[int, int], "Pair"]


def default_cache_dir() -> Path:
    return Path(os.environ.get("FLOWCLAS_CACHE") or Path.home() / ".cache" / "flowclas_ros" / "features")


def cache_key(spec: dict[str, Any]) -> str:
    """A short stable hash of a JSON-serialisable description of what the features depend on."""
    text = json.dumps({"format": CACHE_FORMAT, **spec}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def file_fingerprint(path: str | None) -> dict[str, Any] | None:
    """Size and mtime of a weights file, so that replacing it invalidates the cache."""
    if not path:
        return None
    p = Path(path)
    if not p.is_file():
        return {"path": str(p)}
    st = p.stat()
    return {"path": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


# --- features and labels on the feature grid ------------------------------------------------

GRID_LABELS = ("nearest", "area")


def grid_labels(labels: Tensor, grid: tuple[int, int], pad_multiple: int,
                mode: str = "nearest") -> Tensor:
    """Pixel labels (B, H, W) -> labels on the feature grid (B, h, w), uint8.

    The backbone sees the image zero-padded at the bottom and right to ``pad_multiple``; the
    labels are padded the same way with VOID. ``nearest``: feature position (y, x) takes the
    label of the pixel it is aligned with (the authors'). ``area``: a cell is ANOMALY when at
    least half of its pixels are, VOID when at least half are void or when it is partly
    anomalous (a mixed cell is neither a clean inlier nor a clean outlier), else INLIER.
    """
    h, w = labels.shape[-2:]
    padded = F.pad(labels.to(torch.int16), (0, (-w) % pad_multiple, 0, (-h) % pad_multiple),
                   value=VOID)
    if mode == "nearest":
        return downsample_labels(padded, grid).to(torch.uint8)
    if mode != "area":
        raise ValueError(f"grid label mode must be one of {GRID_LABELS}, got {mode!r}")
    ph, pw = padded.shape[-2:]
    ky, kx = ph // grid[0], pw // grid[1]
    frac = lambda v: F.avg_pool2d((padded == v).float()[:, None], (ky, kx))[:, 0]  # noqa: E731
    anomaly, void = frac(ANOMALY), frac(VOID)
    out = torch.full_like(anomaly, INLIER, dtype=torch.uint8)
    out[(anomaly > 0) | (void >= 0.5)] = VOID
    out[anomaly >= 0.5] = ANOMALY
    return out


def to_image_batch(images: np.ndarray | Tensor, device: torch.device | str) -> Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [0, 1] on ``device``."""
    t = torch.as_tensor(images).to(device, non_blocking=True)
    return t.permute(0, 3, 1, 2).float().div_(255.0)


@torch.no_grad()
def encode(model, images: Tensor, labels: Tensor, autocast: bool = False,
           label_mode: str = "nearest") -> tuple[Tensor, Tensor]:
    """Frozen features and grid labels (:func:`grid_labels` ``label_mode``) of a batch.

    images (B, H, W, 3) uint8, labels (B, H, W) uint8 -> features (B, C, h, w) float (fp32, or
    bf16 under ``autocast`` on CUDA), labels (B, h, w) uint8 on the model's device.
    """
    device = model.mean.device
    x = to_image_batch(images, device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        feats = model.features(x)
    lab = grid_labels(torch.as_tensor(labels).to(device), feats.shape[-2:],
                      model.backbone.pad_multiple, label_mode)
    return feats, lab


# --- the cache ----------------------------------------------------------------------------

class FeatureCache:
    """A complete cache folder, read through memmaps (opened lazily, so forks re-open them)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta_file = self.path / "meta.json"
        if not meta_file.is_file():
            raise FileNotFoundError(f"{self.path} is not a complete feature cache (no meta.json)")
        self.meta = json.loads(meta_file.read_text())
        self.n_images = int(self.meta["n_images"])
        self.variants = int(self.meta["variants"])
        self._arrays: dict[str, np.ndarray] | None = None
        self._pid = -1

    @staticmethod
    def is_complete(path: str | Path) -> bool:
        path = Path(path)
        return (path / "meta.json").is_file() and all((path / f"{a}.npy").is_file() for a in ARRAYS)

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        if self._arrays is None or self._pid != os.getpid():
            self._arrays = {a: np.load(self.path / f"{a}.npy", mmap_mode="r") for a in ARRAYS}
            self._pid = os.getpid()
        return self._arrays

    def __len__(self) -> int:
        return self.n_images * self.variants

    def item(self, image_index: int, variant: int, aux: bool = True) -> dict[str, np.ndarray]:
        """Copies of one row: mixed (C,h,w) f16, mixed_labels (h,w) u8 [, aux, aux_labels]."""
        row = image_index * self.variants + variant
        names = ARRAYS if aux else ARRAYS[:2]
        return {a: np.array(self.arrays[a][row]) for a in names}

    def nbytes(self) -> int:
        return sum((self.path / f"{a}.npy").stat().st_size for a in ARRAYS)


def _noop() -> None:
    pass


def build_feature_cache(
    root: str | Path,
    spec: dict[str, Any],
    n_images: int,
    variants: int,
    make_pair: PairFn,
    model,
    batch_size: int = 8,
    autocast: bool = False,
    rank: int = 0,
    world: int = 1,
    barrier: Callable[[], None] = _noop,
    progress: bool = True,
    log: Callable[[str], None] = print,
    label_mode: str = "nearest",
) -> tuple[FeatureCache, bool]:
    """Open the cache for ``spec`` under ``root``, building it first if needed.

    Returns (cache, built): ``built`` is False when an existing complete cache was reused. All
    ranks must call this together; each computes rows ``r`` with ``r % world == rank``.
    """
    root = Path(root)
    key = cache_key(spec)
    final = root / key
    if FeatureCache.is_complete(final):
        cache = FeatureCache(final)
        if rank == 0:
            log(f"feature cache: reusing {final} ({cache.nbytes() / 2**20:.0f} MiB)")
        return cache, False

    rows = n_images * variants
    partial = root / f"{key}.partial"
    t0 = time.perf_counter()

    # Shapes from one row, computed by every rank (cheap, and no broadcast is needed).
    probe = make_pair(0, 0)
    f0, l0 = encode(model, probe.image[None], probe.label[None], autocast, label_mode)
    feat_shape, lab_shape = tuple(f0.shape[1:]), tuple(l0.shape[1:])
    image_shape = probe.image.shape
    if rank == 0:
        need = rows * (2 * int(np.prod(feat_shape)) * 2 + 2 * int(np.prod(lab_shape)))
        root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(root).free
        if need * 1.05 > free:
            raise OSError(f"feature cache needs {need / 2**30:.1f} GiB in {root} but only "
                          f"{free / 2**30:.1f} GiB are free: lower cache.variants, set "
                          f"cache.dir elsewhere or cache.enabled=false")
        log(f"feature cache: building {final} ({n_images} images x {variants} variants, "
            f"features {feat_shape}, {need / 2**20:.0f} MiB)")
        shutil.rmtree(partial, ignore_errors=True)  # leftovers of a killed build
        partial.mkdir(parents=True)
        for name, shape, dtype in (("mixed", feat_shape, np.float16),
                                   ("mixed_labels", lab_shape, np.uint8),
                                   ("aux", feat_shape, np.float16),
                                   ("aux_labels", lab_shape, np.uint8)):
            np.lib.format.open_memmap(partial / f"{name}.npy", mode="w+", dtype=dtype,
                                      shape=(rows, *shape)).flush()
    barrier()

    out = {a: np.load(partial / f"{a}.npy", mmap_mode="r+") for a in ARRAYS}
    mine = list(range(rank, rows, world))
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=len(mine), desc="feature cache", unit="img", dynamic_ncols=True)
    for start in range(0, len(mine), batch_size):
        chunk = mine[start:start + batch_size]
        pairs = [make_pair(r // variants, r % variants) for r in chunk]
        for p in pairs:
            if p.image.shape != image_shape or p.aux_image.shape != image_shape:
                raise ValueError(
                    f"feature cache needs every training image at one size; got {p.image.shape} "
                    f"and {image_shape}: set data.image_size (and/or data.crop)")
        mixed = np.stack([p.image for p in pairs])
        aux = np.stack([p.aux_image for p in pairs])
        labels = np.stack([p.label for p in pairs] + [p.aux_label for p in pairs])
        feats, lab = encode(model, np.concatenate([mixed, aux]), labels, autocast, label_mode)
        feats = feats.float().cpu().numpy().astype(np.float16)
        lab = lab.cpu().numpy()
        n = len(chunk)
        idx = np.asarray(chunk)
        out["mixed"][idx] = feats[:n]
        out["aux"][idx] = feats[n:]
        out["mixed_labels"][idx] = lab[:n]
        out["aux_labels"][idx] = lab[n:]
        if bar is not None:
            bar.update(n)
    if bar is not None:
        bar.close()
    for a in out.values():
        a.flush()
    del out
    barrier()

    if rank == 0:
        meta = {"format": CACHE_FORMAT, "key": key, "spec": spec, "n_images": n_images,
                "variants": variants, "feature_shape": list(feat_shape),
                "label_shape": list(lab_shape), "image_shape": list(image_shape),
                "build_seconds": time.perf_counter() - t0, "world_size": world,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        (partial / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
        if FeatureCache.is_complete(final):  # another run finished the same cache first
            shutil.rmtree(partial, ignore_errors=True)
        else:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(partial, final)
        log(f"feature cache: built in {time.perf_counter() - t0:.1f} s")
    barrier()
    return FeatureCache(final), True
