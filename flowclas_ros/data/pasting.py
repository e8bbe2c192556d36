"""Pasting outliers into inlier frames (METHOD.md section 4), and the auxiliary outlier image.

:class:`OutlierPaster` mixes one object of an :class:`~.outlier_sources.OutlierSource` into an
inlier frame and returns the auxiliary outlier image too; all randomness comes from the
``numpy.random.Generator`` passed in, so a draw is reproducible from its seed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from ..labels import ANOMALY, INLIER, VOID
from .outlier_sources import OutlierObject, OutlierSource

AUX_BACKGROUNDS = ("inlier", "ignore")  # the auxiliary image's background label: INLIER or VOID
# hardcopy: the authors' random place and scale (OutlierPaster); composite: on the estimated road,
# at its perspective scale and light (flowclas_ros.data.compositing.Compositor)
PASTE_MODES = ("hardcopy", "composite")


@dataclass
class PasteConfig:
    """How objects are mixed in (METHOD.md section 4; defaults are the authors' road setting).

    ``scales``: rescale factors drawn uniformly (repeats weight them); ``paste_prob``: chance a
    frame gets an object; ``grey_prob``: chance the object is converted to grey (0.5 for ALLO);
    ``aux_background``: the auxiliary image's background is ``"inlier"`` (road) or ``"ignore"``
    (ALLO); ``mode``: one of :data:`PASTE_MODES`, for the caller that makes the mixed image
    (:class:`OutlierPaster` itself always hard-copies; training composites instead with
    ``"composite"``). Training's ``data.paste`` section is this class.
    """

    scales: list[float] = field(default_factory=lambda: [0.1, 0.125, 0.25, 0.5, 0.5, 0.75])
    paste_prob: float = 1.0
    grey_prob: float = 0.0
    aux_background: str = "inlier"
    mode: str = "hardcopy"

    def __post_init__(self):
        self.scales = [float(s) for s in self.scales]
        self.check()

    def check(self) -> None:
        """Raise a ValueError naming the field when a value is out of range.

        Fields set after construction, as a config loader does, are checked here too.
        """
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ValueError(f"scales must be positive, got {self.scales}")
        if self.aux_background not in AUX_BACKGROUNDS:
            raise ValueError(f"aux_background must be one of {AUX_BACKGROUNDS}, "
                             f"got {self.aux_background!r}")
        if self.mode not in PASTE_MODES:
            raise ValueError(f"mode must be one of {PASTE_MODES}, got {self.mode!r}")
        for k in ("paste_prob", "grey_prob"):
            if not 0.0 <= getattr(self, k) <= 1.0:
                raise ValueError(f"{k} must be in [0, 1]")


@dataclass
class PastedSample:
    """All (H, W) of the inlier frame: mixed ``image``/``label`` and the auxiliary outlier pair.

    ``info``: what was drawn (object key, scale, grey, paste box ``(y, x, h, w)`` or None).
    """

    image: np.ndarray
    label: np.ndarray
    aux_image: np.ndarray
    aux_label: np.ndarray
    info: dict = field(default_factory=dict)


def fit_to_size(arr: np.ndarray, size: tuple[int, int], fill) -> tuple[np.ndarray, np.ndarray]:
    """Pad (centred, with ``fill``) and centre-crop ``arr`` (h, w[, c]) to ``size`` (H, W).

    Returns the fitted array and a (H, W) bool map of the pixels that came from ``arr``.
    """
    H, W = size
    h, w = arr.shape[:2]
    out = np.full((H, W) + arr.shape[2:], fill, dtype=arr.dtype)
    valid = np.zeros((H, W), dtype=bool)
    # Source window (centre crop when larger) and destination offset (centred pad when smaller).
    sy, sx = max((h - H) // 2, 0), max((w - W) // 2, 0)
    dy, dx = max((H - h) // 2, 0), max((W - w) // 2, 0)
    ch, cw = min(h, H), min(w, W)
    out[dy:dy + ch, dx:dx + cw] = arr[sy:sy + ch, sx:sx + cw]
    valid[dy:dy + ch, dx:dx + cw] = True
    return out, valid


def to_grey(image: np.ndarray) -> np.ndarray:
    """RGB -> grey (ITU-R 601 luma, as PIL's "L"), replicated to 3 channels."""
    grey = np.asarray(Image.fromarray(image).convert("L"))
    return np.repeat(grey[..., None], 3, axis=2)


def rescale_object(obj: OutlierObject, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Image bicubic, mask nearest, both to round(size * scale) (at least 1 pixel)."""
    h, w = obj.mask.shape
    nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    if (nh, nw) == (h, w):
        return obj.image, obj.mask
    image = np.asarray(Image.fromarray(obj.image).resize((nw, nh), Image.BICUBIC))
    mask = Image.fromarray(obj.mask.astype(np.uint8) * 255).resize((nw, nh), Image.NEAREST)
    mask = np.asarray(mask) > 127
    return image, mask


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight box ``(y0, x0, y1, x1)`` (end exclusive) of True pixels, None when empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


class OutlierPaster:
    """Paste one outlier object into an inlier frame and build the auxiliary outlier image.

    For a frame (H, W): draw an object and a scale; rescale it, pad/centre-crop it to (H, W),
    and hard-copy the bounding box of its object pixels (object pixels only, no blending) to a
    uniformly random position; those pixels become label 1. The auxiliary image is the same
    object unscaled, padded/centre-cropped to (H, W): object pixels 1, background 0 (or 255 with
    ``aux_background="ignore"``), padding 255 (image padding is 0). Inputs are not modified.
    """

    MAX_TRIES = 5  # redraw when an object vanishes after rescaling/cropping (thin or tiny masks)

    def __init__(self, source: OutlierSource, config: PasteConfig | None = None):
        if len(source) == 0:
            raise ValueError("OutlierPaster needs a non-empty outlier source")
        self.source = source
        self.config = config or PasteConfig()

    def __call__(self, image: np.ndarray, label: np.ndarray,
                 rng: np.random.Generator) -> PastedSample:
        cfg = self.config
        H, W = image.shape[:2]
        if label.shape != (H, W):
            raise ValueError(f"label {label.shape} does not match image {image.shape[:2]}")
        out_img, out_lab = image.copy(), label.copy()
        do_paste = rng.random() < cfg.paste_prob
        box = None
        for _ in range(self.MAX_TRIES):
            idx = int(rng.integers(len(self.source)))
            obj = self.source[idx]
            grey = rng.random() < cfg.grey_prob
            if grey:
                obj = OutlierObject(to_grey(obj.image), obj.mask, obj.source, obj.aux_mask,
                                    obj.category)
            scale = float(cfg.scales[int(rng.integers(len(cfg.scales)))])
            if not do_paste:
                break
            s_img, s_mask = rescale_object(obj, scale)
            f_img, _ = fit_to_size(s_img, (H, W), 0)
            f_mask, _ = fit_to_size(s_mask, (H, W), False)
            bb = mask_bbox(f_mask)
            if bb is None:
                continue
            y0, x0, y1, x1 = bb
            bh, bw = y1 - y0, x1 - x0
            ty, tx = int(rng.integers(H - bh + 1)), int(rng.integers(W - bw + 1))
            m = f_mask[y0:y1, x0:x1]
            out_img[ty:ty + bh, tx:tx + bw][m] = f_img[y0:y1, x0:x1][m]
            out_lab[ty:ty + bh, tx:tx + bw][m] = ANOMALY
            box = (ty, tx, bh, bw)
            break
        aux_img, valid = fit_to_size(obj.image, (H, W), 0)
        a_mask, _ = fit_to_size(obj.mask if obj.aux_mask is None else obj.aux_mask, (H, W), False)
        background = INLIER if cfg.aux_background == "inlier" else VOID
        aux_lab = np.full((H, W), background, dtype=np.uint8)
        aux_lab[~valid] = VOID
        aux_lab[a_mask] = ANOMALY
        info = {"object": self.source.entries[idx].key, "index": idx, "scale": scale,
                "grey": bool(grey), "box": box}
        return PastedSample(out_img, out_lab, aux_img, aux_lab, info)


__all__ = ["AUX_BACKGROUNDS", "PASTE_MODES", "OutlierPaster", "PasteConfig", "PastedSample",
           "fit_to_size", "mask_bbox", "rescale_object", "to_grey"]
