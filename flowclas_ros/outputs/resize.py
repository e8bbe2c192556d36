"""Nearest-neighbour resizing by the pixel-centre rule, shared by the depth and ignore masks.

Destination pixel ``i`` (of ``dst`` along an axis) takes source pixel
``floor((i + 0.5) * src / dst)`` (clipped to ``src - 1``): the source pixel under the
destination pixel's centre when both images cover the same field of view. Downscaling by an
integer factor k picks the pixel just after each block's centre; upscaling repeats pixels in
blocks. :func:`nearest_indices` is cached per size pair, so a resize per frame is one gather.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=64)
def nearest_indices(src: int, dst: int) -> np.ndarray:
    """(dst,) intp: the source index of each destination index (read-only, cached)."""
    if src <= 0 or dst <= 0:
        raise ValueError(f"sizes must be positive, got src={src}, dst={dst}")
    idx = np.minimum(((np.arange(dst) + 0.5) * src / dst).astype(np.intp), src - 1)
    idx.flags.writeable = False
    return idx


def resize_nearest(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Return ``image`` (H, W, ...) resized to (height, width, ...) nearest-neighbour.

    A new array; the same array when the size already matches.
    """
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    return image[nearest_indices(h, height)[:, None], nearest_indices(w, width)[None, :]]


def same_aspect(a_hw: tuple[int, int], b_hw: tuple[int, int]) -> bool:
    """Return True when the aspect ratios agree within a pixel.

    That is, the smaller image's height, predicted from the larger one's by the ratio of the
    widths, is within one pixel of its actual height (the rule for resizing depth images and
    ignore masks).
    """
    (ha, wa), (hb, wb) = a_hw, b_hw
    if wa > wb:
        (ha, wa), (hb, wb) = (hb, wb), (ha, wa)
    return abs(ha - hb * wa / wb) <= 1.0


__all__ = ["nearest_indices", "resize_nearest", "same_aspect"]
