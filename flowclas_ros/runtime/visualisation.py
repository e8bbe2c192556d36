"""What the node publishes besides the raw score: the binary mask and the colour overlay.

* mask: (H, W) uint8, 255 where score >= threshold, else 0;
* overlay: (H, W, 3) uint8 BGR, the colour-mapped normalised score
  clip((score - lo) / (hi - lo), 0, 1) blended on the frame with weight alpha:
  frame * (1 - A / 256) + colour * A / 256 with A = round(256 alpha), rounded (the torch
  version in integers, (frame * (256 - A) + colour * A + 128) >> 8; the numpy version in PIL's
  floating point): the two differ by at most one grey level, or one colour-table step where the
  normalised score rounds differently.

Each has a numpy version (host, ONNX Runtime on the CPU) and a torch version (on the backend's
device); the pipelines call the one that matches where the score is. The torch versions use
tensor methods only, so this module imports no torch: the CPU node never loads it.
"""
from __future__ import annotations

import logging
from functools import lru_cache

import numpy as np
from PIL import Image

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
    """Apply the classic piecewise-linear jet: (N,) in [0, 1] -> (N, 3) RGB in [0, 1]."""
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
                log.warning("colormap %r needs matplotlib, which is not installed: using jet",
                            name)
            rgb = _jet(x)
    return np.ascontiguousarray(np.rint(rgb[:, ::-1] * 255).astype(np.uint8))


def blend_weight(alpha: float) -> int:
    """Return the integer blend weight A (0..256) of the colour map."""
    return int(round(check_alpha(alpha) * 256))


# --- numpy (host) ----------------------------------------------------------------------------

def mask_np(score: np.ndarray, threshold: float, out: np.ndarray | None = None) -> np.ndarray:
    """(H, W) float32 -> (H, W) uint8 0/255 (into ``out`` when given)."""
    return np.multiply((score >= threshold).view(np.uint8), np.uint8(255), out=out)


def colour_index_np(score: np.ndarray, score_range: tuple[float, float]) -> np.ndarray:
    """(H, W) float32 score -> (H, W) uint8 index into the colour table (in place on a copy)."""
    lo, hi = score_range
    with np.errstate(over="ignore", invalid="ignore"):  # +-FLOAT32_MAX overflow, then clip
        idx = np.subtract(score, np.float32(lo), dtype=np.float32)
        idx *= np.float32(255.0 / (hi - lo))
    np.clip(idx, 0, 255, out=idx)
    return np.rint(idx, out=idx).astype(np.uint8)


def overlay_np(score: np.ndarray, frame: np.ndarray, score_range: tuple[float, float],
               alpha: float, colormap: str) -> np.ndarray:
    """Score (H, W) float32, frame (H, W, 3) uint8 RGB -> (H, W, 3) uint8 BGR overlay.

    The colour table and the blend run in PIL (C): at 1080p about 5x faster than numpy; the
    blend rounds in floating point, so a pixel may differ by one grey level from the integer
    formula of the module docstring (the torch version's). It blends in BGR from the start
    (the frame's bytes unpacked as BGR, a BGR palette): the result is C-contiguous, with no
    channel flip and copy after.
    """
    h, w = score.shape
    idx = Image.fromarray(colour_index_np(score, score_range), "L")
    idx.putpalette(_bgr_palette(colormap))  # BGR colours in the palette's RGB slots
    bgr = Image.frombuffer("RGB", (w, h), np.ascontiguousarray(frame), "raw", "BGR", 0, 1)
    return np.asarray(Image.blend(bgr, idx.convert("RGB"), blend_weight(alpha) / 256.0))


@lru_cache(maxsize=None)
def _bgr_palette(name: str) -> bytes:
    return colormap_lut(name).tobytes()


# --- torch (on the backend's device) ---------------------------------------------------------

def mask_torch(score, threshold: float):
    """(H, W) float32 tensor on any device -> (H, W) uint8 0/255 on the same device."""
    return (score >= threshold).byte() * 255


def overlay_torch(score, frame, score_range: tuple[float, float], alpha: float, lut):
    """Blend the colour map of ``score`` over ``frame``, on their device.

    Score (H, W) float32, frame (H, W, 3) uint8 RGB, lut (256, 3) uint8 BGR, one device ->
    (H, W, 3) uint8 BGR overlay on that device.
    """
    lo, hi = score_range
    idx = ((score - lo) * (255.0 / (hi - lo))).clamp_(0, 255).round_().long()
    a = blend_weight(alpha)
    mix = frame.flip(-1).int() * (256 - a) + lut[idx].int() * a + 128
    return (mix >> 8).byte()


__all__ = ["COLORMAPS", "blend_weight", "check_alpha", "check_colormap", "colormap_lut",
           "mask_np", "mask_torch", "overlay_np", "overlay_torch"]
