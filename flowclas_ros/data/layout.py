"""Finding the frames of a dataset in its download layout (shared by the readers).

Each helper raises ``FileNotFoundError`` with a message that names what is missing and the
layout that was expected, so a wrong root is a one-line fix for the user.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .frames import Record

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")

def is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTS


def images_in(folder: Path, recursive: bool = False) -> list[Path]:
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if is_image(p))


def check_root(root: str | Path, dataset: str) -> Path:
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"{dataset}: root {root} does not exist")
    if not root.is_dir():
        raise FileNotFoundError(f"{dataset}: root {root} is not a folder")
    return root


def first_dir(candidates: Sequence[Path]) -> Path | None:
    return next((c for c in candidates if c.is_dir()), None)


def no_frames(dataset: str, where: Path, layout: str) -> FileNotFoundError:
    return FileNotFoundError(f"{dataset}: no frames found under {where}: expected {layout}")


def stem_key(path: Path, rel_to: Path) -> str:
    """Relative path without suffix, '/'-separated: a stable frame name."""
    return path.relative_to(rel_to).with_suffix("").as_posix()


def pair_labels(images: list[Path], images_dir: Path, labels_dir: Path,
                 suffixes: Sequence[str] = ("",), require: bool = True,
                 dataset: str = "") -> list[Record]:
    """Pair each image with ``labels_dir/<rel stem><suffix>.png`` (first suffix that exists)."""
    records, missing = [], []
    for img in images:
        name = stem_key(img, images_dir)
        label = next((labels_dir / f"{name}{s}.png" for s in suffixes
                      if (labels_dir / f"{name}{s}.png").is_file()), None)
        if label is None:
            missing.append(labels_dir / f"{name}{suffixes[0]}.png")
            if not require:
                continue
        records.append(Record(name, img, label))
    if missing and require:
        raise FileNotFoundError(f"{dataset}: {len(missing)} of {len(images)} images under "
                                f"{images_dir} have no label, e.g. {missing[0]}")
    return records


def split_name(split: str | None, allowed: Sequence[str], default: str, dataset: str) -> str:
    split = default if split is None else split
    if split not in allowed:
        raise ValueError(f"{dataset}: unknown split {split!r}; expected one of {list(allowed)}")
    return split
