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

A killed build resumes: ``<key>.partial/progress.json`` says what the build is for (key, spec,
shapes, batch size, world size) and ``done.<rank>`` lists the rows already on disk, one line per
backbone batch. The next build for the same header keeps those rows and computes the other
batches, exactly as an uninterrupted build would have; a partial folder made for anything else
is started afresh. The features and grid labels themselves come from :mod:`.features`.
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

from ..paths import cache_dir

# grid_labels and to_image_batch: importable from here, as before they moved to .features
from .features import GRID_LABELS, encode, grid_labels, to_image_batch  # noqa: F401

if TYPE_CHECKING:
    from .samples import Pair

CACHE_FORMAT = 1
ARRAYS = ("mixed", "mixed_labels", "aux", "aux_labels")
PROGRESS_FILE = "progress.json"  # a partial build's header: what its rows are being built for

# make_pair(image_index, variant) -> a training.samples.Pair (image, label, aux_image, aux_label)
PairFn = Callable[[int, int], "Pair"]


def default_cache_dir() -> Path:
    """$FLOWCLAS_CACHE/features, else ~/.cache/flowclas_ros/features."""
    return cache_dir("features")


def cache_key(spec: dict[str, Any]) -> str:
    """Hash a JSON-serialisable description of what the features depend on (short, stable)."""
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
        return ((path / "meta.json").is_file()
                and all((path / f"{a}.npy").is_file() for a in ARRAYS))

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        if self._arrays is None or self._pid != os.getpid():
            self._arrays = {a: np.load(self.path / f"{a}.npy", mmap_mode="r") for a in ARRAYS}
            self._pid = os.getpid()
        return self._arrays

    def __len__(self) -> int:
        return self.n_images * self.variants

    def item(self, image_index: int, variant: int, aux: bool = True) -> dict[str, np.ndarray]:
        """Return copies of one row's arrays.

        mixed (C,h,w) f16, mixed_labels (h,w) u8 [, aux, aux_labels].
        """
        row = image_index * self.variants + variant
        names = ARRAYS if aux else ARRAYS[:2]
        return {a: np.array(self.arrays[a][row]) for a in names}

    def nbytes(self) -> int:
        return sum((self.path / f"{a}.npy").stat().st_size for a in ARRAYS)


def _noop() -> None:
    pass


def _layout(rows: int, feat_shape: tuple, lab_shape: tuple) -> list[tuple[str, tuple, type]]:
    return [("mixed", (rows, *feat_shape), np.float16),
            ("mixed_labels", (rows, *lab_shape), np.uint8),
            ("aux", (rows, *feat_shape), np.float16),
            ("aux_labels", (rows, *lab_shape), np.uint8)]


def _jsonable(d: dict[str, Any]) -> Any:
    return json.loads(json.dumps(d, sort_keys=True, default=str))


def done_rows(partial: str | Path, rank: int | None = None) -> set[int]:
    """Return the rows a partial build has on disk: every rank's (``rank`` None) or one rank's.

    ``done.<rank>`` holds one line per backbone batch, appended once the batch's rows are
    flushed; a line a kill cut short has no newline and does not count.
    """
    partial = Path(partial)
    files = sorted(partial.glob("done.*")) if rank is None else [partial / f"done.{rank}"]
    rows: set[int] = set()
    for f in files:
        if f.is_file():
            for line in f.read_text().splitlines(keepends=True):
                if line.endswith("\n"):
                    rows.update(int(r) for r in line.split())
    return rows


def _resumable_rows(partial: Path, header: dict[str, Any], layout) -> set[int] | None:
    """Return the done rows of a partial build made for ``header`` with ``layout``'s arrays.

    None when there is none or it was made for anything else (then it is rebuilt).
    """
    try:
        if json.loads((partial / PROGRESS_FILE).read_text()) != _jsonable(header):
            return None
        for name, shape, dtype in layout:
            a = np.load(partial / f"{name}.npy", mmap_mode="r")
            if a.shape != shape or a.dtype != dtype:
                return None
        return done_rows(partial)
    except (OSError, ValueError):  # missing or unreadable files, a garbled line
        return None


def _start_partial(partial: Path, header: dict[str, Any], layout) -> None:
    shutil.rmtree(partial, ignore_errors=True)  # leftovers of a build for anything else
    partial.mkdir(parents=True)
    for name, shape, dtype in layout:
        np.lib.format.open_memmap(partial / f"{name}.npy", mode="w+", dtype=dtype,
                                  shape=shape).flush()
    # Last: a folder without its header (killed while being laid out) is started afresh.
    (partial / PROGRESS_FILE).write_text(json.dumps(_jsonable(header), indent=1))


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
    anomaly_fraction: float = 0.5,
) -> tuple[FeatureCache, bool]:
    """Open the cache for ``spec`` under ``root``, building it first if needed.

    Returns (cache, built): ``built`` is False when an existing complete cache was reused. All
    ranks must call this together; each computes rows ``r`` with ``r % world == rank``, in
    batches of ``batch_size``. A partial build for the same key, batch size and world size (a
    killed one) is resumed: its done rows are kept and only the other batches are computed.
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
    f0, l0 = encode(model, probe.image[None], probe.label[None], autocast, label_mode,
                    anomaly_fraction)
    feat_shape, lab_shape = tuple(f0.shape[1:]), tuple(l0.shape[1:])
    image_shape = probe.image.shape
    layout = _layout(rows, feat_shape, lab_shape)
    # Batches are part of the header: a row's features may differ in the last bits with the
    # batch it was computed in, and a resumed build must equal an uninterrupted one.
    header = {"format": CACHE_FORMAT, "key": key, "spec": spec, "n_images": n_images,
              "variants": variants, "feature_shape": list(feat_shape),
              "label_shape": list(lab_shape), "image_shape": list(image_shape),
              "batch_size": batch_size, "world_size": world}
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        kept = _resumable_rows(partial, header, layout)
        row_bytes = 2 * int(np.prod(feat_shape)) * 2 + 2 * int(np.prod(lab_shape))
        need = (rows - len(kept or ())) * row_bytes
        free = shutil.disk_usage(root).free
        if need * 1.05 > free:
            raise OSError(f"feature cache needs {need / 2**30:.1f} GiB in {root} but only "
                          f"{free / 2**30:.1f} GiB are free: lower cache.variants, set "
                          f"cache.dir elsewhere or cache.enabled=false")
        what = (f"({n_images} images x {variants} variants, features {feat_shape}, "
                f"{need / 2**20:.0f} MiB)")
        if kept is None:
            log(f"feature cache: building {final} {what}")
            _start_partial(partial, header, layout)
        else:
            log(f"feature cache: resuming the build of {final}: {len(kept)} of {rows} rows "
                f"were done {what}")
    barrier()

    done = done_rows(partial, rank)
    mine = list(range(rank, rows, world))
    batches = [mine[s:s + batch_size] for s in range(0, len(mine), batch_size)]
    todo = [b for b in batches if not done.issuperset(b)]
    out = {a: np.load(partial / f"{a}.npy", mmap_mode="r+") for a in ARRAYS}
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=len(mine), initial=len(mine) - sum(map(len, todo)),
                   desc="feature cache", unit="img", dynamic_ncols=True)
    with (partial / f"done.{rank}").open("a") as done_file:
        for chunk in todo:
            pairs = [make_pair(r // variants, r % variants) for r in chunk]
            for p in pairs:
                if p.image.shape != image_shape or p.aux_image.shape != image_shape:
                    raise ValueError(
                        f"feature cache needs every training image at one size; got "
                        f"{p.image.shape} and {image_shape}: set data.image_size (and/or "
                        f"data.crop)")
            mixed = np.stack([p.image for p in pairs])
            aux = np.stack([p.aux_image for p in pairs])
            labels = np.stack([p.label for p in pairs] + [p.aux_label for p in pairs])
            feats, lab = encode(model, np.concatenate([mixed, aux]), labels, autocast, label_mode,
                                anomaly_fraction)
            feats = feats.float().cpu().numpy().astype(np.float16)
            lab = lab.cpu().numpy()
            n = len(chunk)
            idx = np.asarray(chunk)
            out["mixed"][idx] = feats[:n]
            out["aux"][idx] = feats[n:]
            out["mixed_labels"][idx] = lab[:n]
            out["aux_labels"][idx] = lab[n:]
            # The rows are on disk before they are recorded as done, so a kill at any point
            # leaves no row recorded that was not written.
            for a in out.values():
                a.flush()
            done_file.write(" ".join(map(str, chunk)) + "\n")
            done_file.flush()
            if bar is not None:
                bar.update(n)
    if bar is not None:
        bar.close()
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
            for f in [final / PROGRESS_FILE, *final.glob("done.*")]:  # the build's bookkeeping
                f.unlink(missing_ok=True)
        log(f"feature cache: built in {time.perf_counter() - t0:.1f} s")
    barrier()
    return FeatureCache(final), True


__all__ = ["ARRAYS", "CACHE_FORMAT", "FeatureCache", "PROGRESS_FILE", "build_feature_cache",
           "cache_key", "default_cache_dir", "done_rows", "encode", "file_fingerprint",
           "grid_labels"]
