"""Frames from disk for players and tools: a folder of images, one image, or a video file.

(H, W, 3) uint8 RGB, decoded lazily one at a time (videos with PyAV, which bundles FFmpeg).
No ROS: the image player (node/image_player.py) and the bag writer (data/bags.py) use it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v"}


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def iter_frames(source: str | Path) -> Iterator[np.ndarray]:
    """(H, W, 3) uint8 RGB frames of a folder, an image file or a video file, in order."""
    from PIL import Image as PILImage

    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"image source {path} does not exist: give a folder of images "
                                "or a video file")
    if path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES:
        files = list_images(path) if path.is_dir() else [path]
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {path}")
        for f in files:
            with PILImage.open(f) as im:
                yield np.asarray(im.convert("RGB"))
        return
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise ValueError(f"{path}: not a folder, an image or a video "
                         f"({', '.join(sorted(VIDEO_SUFFIXES))})")
    import av  # PyAV bundles FFmpeg: no system codec needed

    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")


__all__ = ["IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "iter_frames", "list_images"]
