r"""A development validation set: CamVid val/test frames with held-out COCO objects pasted.

No real road anomaly ships with the project's data, so checkpoint selection and the mask
threshold calibration use CamVid frames (every pixel inlier, void ignored) into which objects
from the *held-out* part of the outlier source are pasted with the training recipe
(:class:`~flowclas_ros.data.outliers.OutlierPaster`, fixed seed). Training must paste only the
other part: both sides call :func:`default_outlier_split` with the same source, split seed and
fraction (defaults 0 and 0.25).

Output, read back with ``build_dataset("folder", out_dir)``::

    out_dir/images/<split>_<frame>.png   RGB
    out_dir/labels/<split>_<frame>.png   0 inlier, 1 pasted outlier, 255 CamVid void
    out_dir/manifest.json                seed, sources, counts, one line per frame

Each frame's draw uses its own generator seeded by (seed, frame name), so a frame is the same
whatever ``limit`` or ``splits`` are. CLI::

    python -m flowclas_ros.tools.build_validation_set --camvid ROOT --coco ROOT --out DIR \
        [--seed 0] [--split-seed 0] [--val-fraction 0.25] [--splits val test] [--limit N]
"""
from __future__ import annotations

import json
import shutil
import time
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..labels import ANOMALY, INLIER, VOID
from .inlier_sets import camvid
from .outlier_sources import (
    DEFAULT_SPLIT_SEED,
    DEFAULT_VAL_FRACTION,
    OutlierSource,
    default_outlier_split,
    load_outlier_source,
)
from .pasting import OutlierPaster, PasteConfig

MANIFEST = "manifest.json"


def frame_rng(seed: int, name: str) -> np.random.Generator:
    """Return the generator of one frame: independent of the order and number of frames built."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode("utf-8"))])


def _prepare_out(out_dir: Path) -> None:
    """Clear a previous build (recognised by its manifest); refuse to mix with foreign files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    sub = [out_dir / "images", out_dir / "labels"]
    if (out_dir / MANIFEST).is_file():
        (out_dir / MANIFEST).unlink()
        for d in sub:
            shutil.rmtree(d, ignore_errors=True)
    elif any(d.exists() and any(d.iterdir()) for d in sub):
        raise FileExistsError(f"{out_dir} already holds images/ or labels/ without a {MANIFEST}: "
                              "choose an empty folder")
    for d in sub:
        d.mkdir(parents=True, exist_ok=True)


def build_validation_set(camvid_root: str | Path, outlier_source: OutlierSource | str | Path,
                         out_dir: str | Path, splits: Sequence[str] = ("val", "test"),
                         seed: int = 0, limit: int | None = None, *,
                         config: PasteConfig | None = None,
                         split_seed: int = DEFAULT_SPLIT_SEED,
                         val_fraction: float = DEFAULT_VAL_FRACTION,
                         outlier_kw: dict | None = None) -> dict:
    """Write the pasted-CamVid set to ``out_dir`` and return its manifest.

    ``outlier_source``: a path (loaded with :func:`load_outlier_source` and ``outlier_kw``, then
    its held-out part taken with ``default_outlier_split(source, split_seed, val_fraction)``), or
    an :class:`OutlierSource` used as given (pass the held-out part yourself).
    ``limit``: at most this many frames per split (the first ones in name order).
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    if isinstance(outlier_source, OutlierSource):
        held_out = outlier_source
        outlier_meta = {"root": str(held_out.root), "kind": held_out.kind,
                        "filter": held_out.filter, "part": held_out.info.get("part", "as given"),
                        "objects": len(held_out)}
    else:
        full = load_outlier_source(outlier_source, **(outlier_kw or {}))
        _, held_out = default_outlier_split(full, seed=split_seed, val_fraction=val_fraction)
        outlier_meta = {"root": str(full.root), "kind": full.kind, "filter": full.filter,
                        "part": "held_out", "split_seed": split_seed, "val_fraction": val_fraction,
                        "objects_total": len(full), "objects": len(held_out), **full.info}
    if len(held_out) == 0:
        raise ValueError("the held-out outlier part is empty: use a larger source or val_fraction")
    config = config or PasteConfig()
    paster = OutlierPaster(held_out, config)
    datasets = [camvid(camvid_root, s) for s in splits]  # fail early on a bad root
    _prepare_out(out_dir)

    frames, counts = [], {"frames": 0, "pasted": 0, "per_split": {},
                          "pixels": {"inlier": 0, "outlier": 0, "ignore": 0}}
    for split, ds in zip(splits, datasets):
        n = len(ds) if limit is None else min(len(ds), int(limit))
        counts["per_split"][split] = n
        for i in range(n):
            sample = ds[i]
            name = f"{split}_{sample.name.replace('/', '_')}"
            mixed = paster(sample.image, sample.label, frame_rng(seed, name))
            Image.fromarray(mixed.image).save(out_dir / "images" / f"{name}.png")
            Image.fromarray(mixed.label).save(out_dir / "labels" / f"{name}.png")
            n_out = int(np.count_nonzero(mixed.label == ANOMALY))
            counts["frames"] += 1
            counts["pasted"] += int(mixed.info["box"] is not None)
            counts["pixels"]["outlier"] += n_out
            counts["pixels"]["ignore"] += int(np.count_nonzero(mixed.label == VOID))
            counts["pixels"]["inlier"] += int(np.count_nonzero(mixed.label == INLIER))
            frames.append({"name": name, "frame": str(ds.records[i].image),
                           "object": mixed.info["object"], "scale": mixed.info["scale"],
                           "box": mixed.info["box"],
                           "outlier_pixels": n_out})
    manifest = {
        "format": "flowclas_ros.pasted_validation_set", "version": 1,
        "seed": seed, "splits": list(splits), "limit": limit,
        "camvid_root": str(Path(camvid_root)), "outliers": outlier_meta,
        "paste": {"scales": list(config.scales), "paste_prob": config.paste_prob,
                  "grey_prob": config.grey_prob},
        "labels": {"inlier": INLIER, "outlier": ANOMALY, "ignore": VOID},
        "counts": counts, "seconds": round(time.perf_counter() - t0, 2), "frames": frames,
    }
    tmp = out_dir / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(out_dir / MANIFEST)  # written last: its presence marks a complete build
    return manifest


__all__ = ["build_validation_set", "default_outlier_split", "frame_rng"]
