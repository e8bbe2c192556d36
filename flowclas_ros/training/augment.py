"""Photometric augmentation: the frame as another camera would have taken it.

Brightness, contrast, saturation, hue, gamma, Gaussian blur and JPEG re-encoding, each drawn per
sample from a ``numpy.random.Generator`` (all draws are made whichever changes happen, so the
random stream does not depend on the outcome). Applied to the mixed frame after pasting, so the
pasted object goes through the same "camera" as the scene around it.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from .config import PhotometricConfig


def photometric(image: np.ndarray, cfg: PhotometricConfig, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> the same frame under a randomly drawn camera (uint8).

    Disabled: the frame itself, and no draw is made (the random stream stays the authors').
    """
    if not cfg.enabled:
        return image
    draws = {
        "brightness": rng.uniform(1 - cfg.brightness, 1 + cfg.brightness),
        "contrast": rng.uniform(1 - cfg.contrast, 1 + cfg.contrast),
        "saturation": rng.uniform(1 - cfg.saturation, 1 + cfg.saturation),
        "hue": rng.uniform(-cfg.hue, cfg.hue),
        "gamma": np.exp(rng.uniform(np.log(cfg.gamma[0]), np.log(cfg.gamma[1]))),
        "blur": rng.random() < cfg.blur_prob,
        "sigma": rng.uniform(*cfg.blur_sigma),
        "jpeg": rng.random() < cfg.jpeg_prob,
        "quality": int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1)),
        "order": rng.permutation(3),  # brightness, contrast, saturation in a random order
    }
    im = Image.fromarray(image)
    enhancers = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
    factors = (draws["brightness"], draws["contrast"], draws["saturation"])
    for k in draws["order"]:
        im = enhancers[k](im).enhance(float(factors[k]))
    if abs(draws["hue"]) > 1e-4:
        h, s, v = im.convert("HSV").split()
        shift = int(round(draws["hue"] * 255))
        h = h.point(lambda x: (x + shift) % 256)
        im = Image.merge("HSV", (h, s, v)).convert("RGB")
    lut = np.clip(255.0 * (np.arange(256) / 255.0) ** draws["gamma"], 0, 255).astype(np.uint8)
    im = im.point(list(lut) * 3)
    if draws["blur"]:
        im = im.filter(ImageFilter.GaussianBlur(float(draws["sigma"])))
    if draws["jpeg"]:
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=draws["quality"])
        buf.seek(0)
        im = Image.open(buf).convert("RGB")
    return np.asarray(im, dtype=np.uint8).copy()


__all__ = ["photometric"]
