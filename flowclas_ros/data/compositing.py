"""Outliers composited the way real ones look: on the road, at the road's scale and light.

The authors' pasting (:mod:`.pasting`) hard-copies an object at a random place and scale. That
trains the flow well, but as a *yardstick* it is too easy: a sharp, differently lit, floating
object is found by its seams. Real anomalies stand on the drivable surface, shrink towards the
horizon, share the scene's light and colour cast, have soft edges, the camera's blur and noise,
and touch the ground with a shadow. :class:`Compositor` does each of these:

1. **Where**: a foot point is drawn on the drivable surface of the frame (:class:`Ground`: the
   road classes of a labelled frame, or, for unlabelled frames, the region grown from the
   bottom-centre patch, see :func:`estimate_ground`), below the horizon estimate.
2. **How big**: the object's height in pixels is ``k * (y_foot - y_horizon)`` with
   ``k = object height / camera height`` drawn from ``height_ratio`` (a flat-ground pinhole
   camera: everything standing on the road at depth d spans (y_foot - y_horizon) for the camera's
   own height). With ``height_px`` set (small obstacles at camera resolution) the height is drawn
   first, log-uniformly from that range, then ``k``, and the foot point is drawn on the road rows
   where the perspective gives that height (so the distance follows from the two).
3. **How it looks**: brightness, colour cast and contrast moved towards the scene around the
   foot point by a random fraction; a slight blur and sensor noise; an anti-aliased, feathered
   alpha matte; a soft contact shadow under the object.

Labels: ANOMALY where the matte is >= 0.5; everything else keeps the frame's label. All random
draws come from the ``numpy.random.Generator`` passed in.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy import ndimage

from ..labels import ANOMALY, VOID
from .outlier_sources import OutlierObject


@dataclass
class CompositeConfig:
    """Ranges of the random draws (uniform unless said otherwise)."""

    height_ratio: tuple[float, float] = (0.2, 1.4)  # object height / camera height
    min_height_px: int = 12  # smaller objects are redrawn closer to the camera
    # (lo, hi) px: heights drawn log-uniformly in this range, the foot point on the road row
    # that gives them (min_height_px is then unused); None: the foot point first (above)
    height_px: tuple[float, float] | None = None
    max_height_fraction: float = 0.6  # of the frame height
    max_width_fraction: float = 0.5  # of the frame width
    light_match: tuple[float, float] = (0.3, 0.8)  # fraction of the scene's brightness/cast taken
    contrast_match: tuple[float, float] = (0.0, 0.5)
    blur_sigma: tuple[float, float] = (0.0, 0.8)  # px, the scene camera is softer than COCO's
    noise_sigma: tuple[float, float] = (0.0, 3.0)  # grey levels
    feather_sigma: tuple[float, float] = (0.3, 1.2)  # px, edge softness of the matte
    shadow_prob: float = 0.7
    shadow_strength: tuple[float, float] = (0.15, 0.45)
    objects: tuple[int, int] = (1, 2)  # objects per frame (inclusive)
    tries: int = 8  # foot points tried per object before giving up


@dataclass
class Ground:
    """The drivable surface of a frame: ``mask`` (H, W) bool and the horizon row estimate."""

    mask: np.ndarray
    horizon: float


@dataclass
class Composite:
    """The frame with objects composited: ``image`` (H, W, 3) uint8, ``label`` (H, W) uint8."""

    image: np.ndarray
    label: np.ndarray
    objects: list[dict] = field(default_factory=list)  # per object: key, category, box, height


def ground_from_mask(mask: np.ndarray, min_width: float = 0.02) -> Ground:
    """Build a Ground from a road mask.

    The horizon is the top row where the road is still ``min_width`` of the frame wide, kept
    within [0.25, 0.7] of the height.
    """
    h, w = mask.shape
    rows = np.flatnonzero(mask.sum(axis=1) >= min_width * w)
    top = float(rows[0]) if rows.size else 0.5 * h
    return Ground(mask.astype(bool), float(np.clip(top, 0.25 * h, 0.7 * h)))


def estimate_ground(image: np.ndarray, horizon_fraction: float = 0.45,
                    tolerance: float = 28.0) -> Ground:
    """Estimate the drivable surface of an unlabelled road frame (forward-looking vehicle camera).

    The colour of the bottom-centre patch (rows 85-97 %, columns 40-60 %) is the road's; the
    road is the connected region below ``horizon_fraction`` of the height whose smoothed colour
    lies within ``tolerance`` (RGB distance) of it, grown from that patch.
    """
    h, w = image.shape[:2]
    f = 4  # work at a quarter resolution: smoother colours, faster labelling
    small = np.asarray(Image.fromarray(image).resize((max(w // f, 1), max(h // f, 1)),
                                                     Image.BILINEAR), dtype=np.float32)
    small = ndimage.uniform_filter(small, size=(3, 3, 1))
    sh, sw = small.shape[:2]
    patch = small[int(0.85 * sh):max(int(0.97 * sh), int(0.85 * sh) + 1),
                  int(0.4 * sw):max(int(0.6 * sw), int(0.4 * sw) + 1)]
    ref = np.median(patch.reshape(-1, 3), axis=0)
    close = np.linalg.norm(small - ref, axis=2) < tolerance
    close[: int(horizon_fraction * sh)] = False
    regions, _ = ndimage.label(close)
    seeds = np.unique(regions[int(0.85 * sh):, int(0.4 * sw):int(0.6 * sw)])
    seeds = seeds[seeds > 0]
    road = np.isin(regions, seeds)
    road = ndimage.binary_opening(road, iterations=1)
    full = np.asarray(Image.fromarray(road.astype(np.uint8) * 255)
                      .resize((w, h), Image.NEAREST)) > 0
    ground = ground_from_mask(full)
    ground.horizon = max(ground.horizon, horizon_fraction * h * 0.9)
    return ground


def _crop_to_mask(obj: OutlierObject) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.nonzero(obj.mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    return obj.image[y0:y1, x0:x1], obj.mask[y0:y1, x0:x1]


def _resize_object(image: np.ndarray, mask: np.ndarray, size: tuple[int, int],
                   feather: float) -> tuple[np.ndarray, np.ndarray]:
    """Object image (bicubic) and an anti-aliased, feathered matte in [0, 1] at size (h, w)."""
    h, w = size
    img = np.asarray(Image.fromarray(image).resize((w, h), Image.BICUBIC), dtype=np.float32)
    alpha = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.BOX),
                       dtype=np.float32) / 255.0
    if feather > 0:
        alpha = ndimage.gaussian_filter(alpha, feather)
    return img, np.clip(alpha, 0.0, 1.0)


def match_light(obj: np.ndarray, weight: np.ndarray, scene: np.ndarray, light: float,
                contrast: float) -> np.ndarray:
    """Move the object's brightness, colour cast and contrast towards the scene pixels.

    Brightness and colour cast move by the fraction ``light``, contrast by the fraction
    ``contrast``, towards the scene pixels ``scene`` (N, 3). obj (h, w, 3) float.
    """
    wsum = max(float(weight.sum()), 1e-6)
    mean_o = (obj * weight[..., None]).reshape(-1, 3).sum(0) / wsum
    mean_s = scene.mean(0)
    lum_o, lum_s = max(float(mean_o.mean()), 1.0), max(float(mean_s.mean()), 1.0)
    # brightness and cast as per-channel gains, taken partially (geometric interpolation)
    gain = ((mean_s / lum_s) / np.maximum(mean_o / lum_o, 1e-3)) * (lum_s / lum_o)
    out = obj * np.power(np.maximum(gain, 1e-3), light)
    if contrast > 0:
        std_o = float(np.sqrt(((obj - mean_o) ** 2 * weight[..., None]).sum() / (3 * wsum)))
        std_s = float(scene.std())
        k = (max(std_s, 1.0) / max(std_o, 1.0)) ** contrast
        m = (out * weight[..., None]).reshape(-1, 3).sum(0) / wsum
        out = m + (out - m) * k
    return out


def _foot_for_height(feet: np.ndarray, width: int, horizon: float, cfg: CompositeConfig,
                     cap: float, rng: np.random.Generator) -> tuple[int, int, float] | None:
    """Return (foot row, foot column, height) for a height drawn log-uniformly from the config.

    The height is drawn from ``cfg.height_px``; the row is where ``k * (row - horizon)`` gives
    it (``k`` from ``height_ratio``), within 2 % of the distance below the horizon; None when the
    road has no pixel there.
    """
    lo, hi = cfg.height_px
    target = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    k = float(rng.uniform(*cfg.height_ratio))
    if target > cap:
        return None
    dy = target / k
    rows = feet // width
    near = np.flatnonzero(np.abs(rows - (horizon + dy)) <= max(1.0, 0.02 * dy))
    if near.size == 0:
        return None
    fy, fx = divmod(int(feet[near[int(rng.integers(near.size))]]), width)
    h = k * (fy - horizon)
    return (fy, fx, h) if lo <= h <= min(hi, cap) else None


class Compositor:
    """Composite outlier objects onto road frames (see the module docstring)."""

    def __init__(self, source, config: CompositeConfig | None = None):
        if len(source) == 0:
            raise ValueError("Compositor needs a non-empty outlier source")
        self.source = source
        self.config = config or CompositeConfig()

    def __call__(self, image: np.ndarray, label: np.ndarray, ground: Ground,
                 rng: np.random.Generator) -> Composite:
        cfg = self.config
        out = image.astype(np.float32)
        lab = label.copy()
        n = int(rng.integers(cfg.objects[0], cfg.objects[1] + 1))
        placed: list[dict] = []
        occupied = np.zeros(label.shape, dtype=bool)
        for _ in range(n):
            idx = int(rng.integers(len(self.source)))
            obj = self.source[idx]
            if not obj.mask.any():
                continue
            info = self._place(out, lab, occupied, obj, ground, rng)
            if info is not None:
                info.update(key=self.source.entries[idx].key, category=obj.category)
                placed.append(info)
        return Composite(np.clip(np.rint(out), 0, 255).astype(np.uint8), lab, placed)

    def _place(self, out: np.ndarray, lab: np.ndarray, occupied: np.ndarray, obj: OutlierObject,
               ground: Ground, rng: np.random.Generator) -> dict | None:
        cfg = self.config
        H, W = lab.shape
        src_img, src_mask = _crop_to_mask(obj)
        aspect = src_mask.shape[1] / src_mask.shape[0]
        feet = np.flatnonzero(ground.mask & (np.arange(H)[:, None] > ground.horizon + 4)
                              & ~occupied & (lab != VOID))
        if feet.size == 0:
            return None
        # A foot point's chance grows with its distance below the horizon: objects near the
        # camera are the ones a robot must see (and the road there is wider in the frame anyway).
        weight = feet // W - ground.horizon
        weight = weight / weight.sum()
        cap = min(cfg.max_height_fraction * H, cfg.max_width_fraction * W / aspect)
        for _ in range(cfg.tries):
            if cfg.height_px is None:
                foot = int(feet[int(rng.choice(feet.size, p=weight))])
                fy, fx = divmod(foot, W)
                h = float(rng.uniform(*cfg.height_ratio)) * (fy - ground.horizon)
                h = min(h, cap)
                if h < cfg.min_height_px:
                    continue
            else:
                drawn = _foot_for_height(feet, W, ground.horizon, cfg, cap, rng)
                if drawn is None:
                    continue
                fy, fx, h = drawn
            oh, ow = max(int(round(h)), 2), max(int(round(h * aspect)), 2)
            y0, x0 = fy - oh + 1, fx - ow // 2
            if y0 < 0 or x0 < 0 or x0 + ow > W:
                continue
            box = (slice(y0, fy + 1), slice(x0, x0 + ow))
            if occupied[box].any():
                continue
            img, alpha = _resize_object(src_img, src_mask, (oh, ow),
                                        float(rng.uniform(*cfg.feather_sigma)))
            break
        else:
            return None
        # light of the scene around the foot point (a window three objects wide)
        wy0, wy1 = max(fy - 2 * oh, 0), min(fy + oh // 2 + 1, H)
        wx0, wx1 = max(fx - 2 * ow, 0), min(fx + 2 * ow, W)
        scene = out[wy0:wy1, wx0:wx1].reshape(-1, 3)
        img = match_light(img, alpha, scene, float(rng.uniform(*cfg.light_match)),
                          float(rng.uniform(*cfg.contrast_match)))
        blur = float(rng.uniform(*cfg.blur_sigma))
        if blur > 0.05:
            img = ndimage.gaussian_filter(img, (blur, blur, 0))
        img = img + rng.normal(0.0, float(rng.uniform(*cfg.noise_sigma)), img.shape)
        region = out[box]
        if rng.random() < cfg.shadow_prob:
            self._shadow(out, fy, fx, ow, float(rng.uniform(*cfg.shadow_strength)))
            region = out[box]
        a = alpha[..., None]
        out[box] = a * np.clip(img, 0, 255) + (1.0 - a) * region
        hit = alpha >= 0.5
        lab[box][hit] = ANOMALY
        occupied[max(y0 - 2, 0):fy + 3, max(x0 - 2, 0):x0 + ow + 2] = True
        return {"box": [int(y0), int(x0), int(oh), int(ow)], "height_px": int(oh),
                "pixels": int(hit.sum())}

    @staticmethod
    def _shadow(out: np.ndarray, fy: int, fx: int, width: int, strength: float) -> None:
        """Darken an elliptical patch under the foot point (soft Gaussian falloff)."""
        H, W = out.shape[:2]
        ax, ay = max(0.6 * width, 2.0), max(0.12 * width, 1.5)
        y0, y1 = max(int(fy - 2 * ay), 0), min(int(fy + 2 * ay) + 1, H)
        x0, x1 = max(int(fx - 2 * ax), 0), min(int(fx + 2 * ax) + 1, W)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        d2 = ((xx - fx) / ax) ** 2 + ((yy - fy) / ay) ** 2
        out[y0:y1, x0:x1] *= (1.0 - strength * np.exp(-d2))[..., None]


__all__ = ["Composite", "CompositeConfig", "Compositor", "Ground", "estimate_ground",
           "ground_from_mask", "match_light"]
