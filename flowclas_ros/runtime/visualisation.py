"""What the node publishes besides the raw score: the binary mask and the colour overlay.

* mask: (H, W) uint8, 255 where score >= threshold, else 0;
* overlay: (H, W, 3) uint8 BGR, the colour-mapped normalised score
  clip((score - lo) / (hi - lo), 0, 1) blended on the frame with weight alpha. The blend is
  integer arithmetic, (frame * (256 - A) + colour * A + 128) >> 8 with A = round(256 alpha);
  the numpy and torch versions below differ only where the normalised score rounds to a
  different colour-table entry (at most 1 step, from float arithmetic order).

Each has a numpy version (host, ONNX Runtime on the CPU) and a torch version (on the backend's
device); the pipelines call the one that matches where the score is. The torch versions use
tensor methods only, so this module imports no torch: the CPU node never loads it.
"""
from __future__ import annotations

import logging
from functools import lru_cache

import numpy as np

from ..options import COLORMAPS

log = logging.getLogger("flowclas_ros.runtime")


def check_colormap(name: str) -> str:
    if name not in COLORMAPS:
        raise ValueError(f"unknown colormap {name!r}; choose one of {COLORMAPS}")
    return name


def check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay_alpha must be in [0, 1], got {alpha}")
    return alpha


def _jet(x: np.ndarray) -> np.ndarray:
    """The classic piecewise-linear jet, (N,) in [0, 1] -> (N, 3) RGB in [0, 1]."""
    return np.clip(np.stack([1.5 - np.abs(4 * x - c) for c in (3, 2, 1)], 1), 0, 1)


@lru_cache(maxsize=None)
def colormap_lut(name: str) -> np.ndarray:
    """(256, 3) uint8 **BGR** colours of ``name`` for normalised scores 0/255 .. 255/255."""
    check_colormap(name)
    x = np.linspace(0.0, 1.0, 256)
    if name == "gray":
        rgb = np.repeat(x[:, None], 3, 1)
    else:
        try:
            import matplotlib

            rgb = matplotlib.colormaps[name](x)[:, :3]
        except ImportError:  # matplotlib is optional at run time: jet needs no table
            if name != "jet":
                log.warning("colormap %r needs matplotlib, which is not installed: using jet", name)
            rgb = _jet(x)
    return np.ascontiguousarray(np.rint(rgb[:, ::-1] * 255).astype(np.uint8))


def blend_weight(alpha: float) -> int:
    """The integer blend weight A (0..256) of the colour map."""
    return int(round(check_alpha(alpha) * 256))


# --- numpy (host) ----------------------------------------------------------------------------

def mask_np(score: np.ndarray, threshold: float) -> np.ndarray:
    """(H, W) float32 -> (H, W) uint8 0/255."""
    return (score >= threshold).view(np.uint8) * np.uint8(255)


def overlay_np(score: np.ndarray, frame: np.ndarray, score_range: tuple[float, float],
               alpha: float, colormap: str) -> np.ndarray:
    """score (H, W) float32, frame (H, W, 3) uint8 RGB -> (H, W, 3) uint8 BGR overlay."""
    lo, hi = score_range
    with np.errstate(over="ignore"):  # +-FLOAT32_MAX scores overflow to +-inf, then clip
        idx = np.clip((score - np.float32(lo)) * np.float32(255.0 / (hi - lo)), 0, 255)
    col = colormap_lut(colormap)[np.rint(idx).astype(np.uint8)]
    a = blend_weight(alpha)
    mix = frame[:, :, ::-1].astype(np.uint16) * np.uint16(256 - a)
    mix += col.astype(np.uint16) * np.uint16(a)
    mix += np.uint16(128)
    return (mix >> 8).astype(np.uint8)


# --- torch (on the backend's device) ---------------------------------------------------------

def mask_torch(score, threshold: float):
    """(H, W) float32 tensor on any device -> (H, W) uint8 0/255 on the same device."""
    return (score >= threshold).byte() * 255


def overlay_torch(score, frame, score_range: tuple[float, float], alpha: float, lut):
    """score (H, W) float32, frame (H, W, 3) uint8 RGB, lut (256, 3) uint8 BGR, one device ->
    (H, W, 3) uint8 BGR overlay on that device."""
    lo, hi = score_range
    idx = ((score - lo) * (255.0 / (hi - lo))).clamp_(0, 255).round_().long()
    a = blend_weight(alpha)
    mix = frame.flip(-1).int() * (256 - a) + lut[idx].int() * a + 128
    return (mix >> 8).byte()


__all__ = ["COLORMAPS", "blend_weight", "check_alpha", "check_colormap", "colormap_lut",
           "mask_np", "mask_torch", "overlay_np", "overlay_torch"]
