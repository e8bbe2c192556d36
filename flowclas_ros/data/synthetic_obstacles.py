"""Procedural road obstacles for what COCO has no pictures of: boxes, tyres, rocks, bin bags.

Lost cargo on a road is mostly cardboard boxes, tyres, rocks and debris, sacks and bin bags;
COCO (and coco128-seg) has none of them. :func:`render` draws one such object, deterministically
from ``(kind, seed)``, as an :class:`~.outlier_sources.OutlierObject` (``image`` (h, w, 3) uint8,
``mask`` (h, w) bool, ``category`` the kind), about :data:`SIZE` px tall: the compositor
(:mod:`.compositing`) scales it down to its place on the road and adds the light, blur, noise and
shadow of the scene, as it does for COCO objects. Kinds (:data:`KINDS`):

* ``box``: a cardboard (or white, or grey plastic) box seen from slightly above: front, top and
  one side face, each shaded for one light direction, paper texture, dark edges, often a tape
  band over the top and down the front, sometimes a printed label;
* ``tyre_side``: a tyre standing on its tread, seen at an angle (an elliptical sidewall, the tread
  band with grooves), with a metal rim or without (then the road shows through the hole);
* ``tyre_flat``: a tyre lying flat, seen from a camera at vehicle height: the upper sidewall as a
  flat ellipse, the tread as a band below it, the hole (through which the road shows where the
  two openings overlap) and its dark inner wall;
* ``rock``: a rock or lump of debris: an irregular blob flattened where it rests, grey, brown,
  sandy or dark, shaded as a dome with a rough texture and specks;
* ``binbag``: a plastic sack (black mostly, dark green or blue, sometimes white) with a tied neck,
  wrinkles and glossy highlights;
* ``plank``: a wooden board or beam lying across the road (grain, end face, darker underside).
  Not among :data:`DEFAULT_KINDS`: the compositor sizes an object by its height in pixels, and a
  long thin board sized so becomes a beam metres long.

Pixels outside the mask take the colour of the nearest object pixel, so the compositor's soft
matte never blends in a foreign colour. :func:`synthetic_source` makes a lazily rendered
:class:`~.outlier_sources.OutlierSource` of ``n`` of them. Seeds identify objects: the validation
protocol draws from :data:`PROTOCOL_SEED_BASE` up; a training recipe that uses this module must
draw seeds below it, so that no protocol object is ever trained on.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from .outlier_sources import OutlierObject, OutlierSource

KINDS = ("box", "tyre_side", "tyre_flat", "rock", "binbag", "plank")
DEFAULT_KINDS = ("box", "tyre_side", "tyre_flat", "rock", "binbag")  # what the protocol draws
SIZE = 128  # px: the objects' rough height before the compositor scales them
PROTOCOL_SEED_BASE = 1 << 20  # the protocol's seeds are >= this; training's must stay below


def _rng(kind: str, seed: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(kind.encode())])


def _noise(shape, rng, scales=((1.0, 0.5), (3.0, 0.3), (8.0, 0.2))) -> np.ndarray:
    """Multi-scale smooth noise with standard deviation about 1."""
    out = np.zeros(shape, np.float64)
    for sigma, amp in scales:
        n = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
        out += amp * n / max(float(n.std()), 1e-6)
    return out / max(float(out.std()), 1e-6)


def _poly(shape, points) -> np.ndarray:
    im = Image.new("L", (shape[1], shape[0]), 0)
    ImageDraw.Draw(im).polygon([(float(x), float(y)) for x, y in points], fill=255)
    return np.asarray(im) > 0


def _ellipse(shape, cx, cy, a, b) -> np.ndarray:
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    return ((xx + 0.5 - cx) / max(a, 1e-6)) ** 2 + ((yy + 0.5 - cy) / max(b, 1e-6)) ** 2 <= 1.0


def _dome_shading(mask: np.ndarray, light: np.ndarray, bumps: np.ndarray | None = None,
                  spec: float = 0.0, power: float = 30.0) -> tuple[np.ndarray, np.ndarray]:
    """Return the Lambert term and specular term of a dome over ``mask``.

    The dome's height goes as the sqrt of the distance to the outline, optionally roughened by
    ``bumps``.
    """
    d = ndimage.distance_transform_edt(mask)
    height = np.sqrt(d / max(float(d.max()), 1.0)) * max(float(d.max()), 1.0) * 0.8
    if bumps is not None:
        height = height + bumps
    gy, gx = np.gradient(ndimage.gaussian_filter(height, 1.0))
    n = np.stack([-gx, -gy, np.ones_like(gx)], -1)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    lam = np.clip(n @ light, 0.0, 1.0)
    view = np.array([0.0, 0.0, 1.0])
    half = (light + view) / np.linalg.norm(light + view)
    specular = spec * np.clip(n @ half, 0.0, 1.0) ** power
    return lam, specular


def _light(rng) -> np.ndarray:
    v = np.array([rng.uniform(-0.7, 0.7), -rng.uniform(0.3, 0.9), rng.uniform(0.6, 1.0)])
    return v / np.linalg.norm(v)


def _finish(img: np.ndarray, mask: np.ndarray, kind: str, seed: int) -> OutlierObject:
    """Crop to the mask (2 px margin), fill outside pixels from the nearest object pixel."""
    ys, xs = np.nonzero(mask)
    y0, y1 = max(ys.min() - 2, 0), min(ys.max() + 3, mask.shape[0])
    x0, x1 = max(xs.min() - 2, 0), min(xs.max() + 3, mask.shape[1])
    img, mask = img[y0:y1, x0:x1], mask[y0:y1, x0:x1]
    _, (iy, ix) = ndimage.distance_transform_edt(~mask, return_indices=True)
    img = img[iy, ix]
    out = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return OutlierObject(out, mask.copy(), f"synthetic:{kind}:{seed}", category=kind)


def _box(rng) -> tuple[np.ndarray, np.ndarray]:
    s = SIZE
    wf, hf = s * rng.uniform(0.55, 1.0), s * rng.uniform(0.4, 0.8)
    ws, t = s * rng.uniform(0.08, 0.4), s * rng.uniform(0.04, 0.16)
    right = rng.random() < 0.5
    H, W = int(t + hf + 6), int(wf + ws + 6)
    x0 = 3 + (0 if right else ws)
    xf1 = x0 + wf
    if right:
        top = [(x0, t + 3), (xf1, t + 3), (xf1 + ws, 3), (x0 + ws, 3)]
        side = [(xf1, t + 3), (xf1 + ws, 3), (xf1 + ws, hf + 3), (xf1, t + hf + 3)]
    else:
        top = [(x0, t + 3), (xf1, t + 3), (xf1 - ws, 3), (x0 - ws, 3)]
        side = [(x0, t + 3), (x0 - ws, 3), (x0 - ws, hf + 3), (x0, t + hf + 3)]
    shape = (H, W)
    front = _poly(shape, [(x0, t + 3), (xf1, t + 3), (xf1, t + hf + 3), (x0, t + hf + 3)])
    top_m, side_m = _poly(shape, top) & ~front, _poly(shape, side) & ~front
    r = rng.random()
    if r < 0.7:  # kraft cardboard
        base = np.array([172, 128, 82]) * rng.uniform(0.75, 1.15) * rng.uniform(0.92, 1.08, 3)
    elif r < 0.85:  # white box
        base = np.array([214, 212, 205]) * rng.uniform(0.85, 1.05)
    else:  # grey or coloured plastic crate
        base = rng.uniform(60, 190, 3)
    light_side = rng.uniform(0.55, 0.85)
    img = np.zeros(shape + (3,))
    for m, k in ((front, 1.0), (top_m, rng.uniform(1.08, 1.25)), (side_m, light_side)):
        img[m] = base * k
    tex = _noise(shape, rng, ((0.7, 0.6), (4.0, 0.3), (12.0, 0.4)))
    img += (rng.uniform(4, 12) * tex)[..., None]
    if rng.random() < 0.6:  # corrugation seen on the faces: faint vertical stripes
        img += ((2.0 * np.sin(np.arange(W) * rng.uniform(0.8, 1.6)))[None, :, None]
                * front[..., None])
    if rng.random() < 0.7:  # tape over the top and down the front
        cx, tw = x0 + wf / 2 + rng.uniform(-0.1, 0.1) * wf, wf * rng.uniform(0.06, 0.16)
        xx = np.arange(W)[None, :]
        band = (np.abs(xx - cx) < tw / 2) & front
        band |= (np.abs(xx - cx - (ws if right else -ws) * 0.5) < tw / 2) & top_m
        tape = base * rng.uniform(0.8, 1.25) if rng.random() < 0.6 else rng.uniform(150, 230, 3)
        img[band] = 0.35 * img[band] + 0.65 * tape
    if rng.random() < 0.35:  # a printed label
        ly, lx = t + 3 + hf * rng.uniform(0.2, 0.5), x0 + wf * rng.uniform(0.05, 0.55)
        lab = _poly(shape, [(lx, ly), (lx + wf * 0.3, ly), (lx + wf * 0.3, ly + hf * 0.25),
                            (lx, ly + hf * 0.25)]) & front
        img[lab] = rng.uniform(20, 240, 3)
    mask = front | top_m | side_m
    edges = mask & ~ndimage.binary_erosion(front, iterations=1)
    edges |= (ndimage.binary_dilation(front, iterations=1) & (top_m | side_m))
    img[edges] *= rng.uniform(0.55, 0.8)
    return img, mask


def _tyre_side(rng) -> tuple[np.ndarray, np.ndarray]:
    b = SIZE / 2
    a = b * rng.uniform(0.3, 1.0)  # sidewall ellipse, narrower the more it is turned
    t = b * rng.uniform(0.15, 0.45) * (1.0 - 0.5 * a / b)  # visible tread width
    sign = 1 if rng.random() < 0.5 else -1
    H, W = int(2 * b + 6), int(2 * a + t + 8)
    cx, cy = 4 + a + (t if sign < 0 else 0), 3 + b
    shape = (H, W)
    wall = _ellipse(shape, cx, cy, a, b)
    back = _ellipse(shape, cx + sign * t, cy, a, b)
    xx = np.arange(W)[None, :]
    tread = (back | _poly(shape, [(cx, cy - b), (cx + sign * t, cy - b), (cx + sign * t, cy + b),
                                  (cx, cy + b)])) & ~wall
    rho = rng.uniform(0.5, 0.66)
    inner = _ellipse(shape, cx, cy, a * rho, b * rho)
    rubber = rng.uniform(22, 48) * np.array([1.0, 1.0, rng.uniform(1.0, 1.12)])
    img = np.zeros(shape + (3,)) + rubber
    yy = np.arange(H)[:, None]
    img += (18 * (1 - yy / H) * rng.uniform(0.4, 1.0))[..., None]  # lit from above
    img += (5 * _noise(shape, rng, ((0.6, 0.7), (3.0, 0.3))))[..., None]
    ring = wall & ~_ellipse(shape, cx, cy, a * (rho + 0.12), b * (rho + 0.12))
    img[ring] *= rng.uniform(1.05, 1.3)  # the moulded bead ring
    grooves = np.sin((yy + 0 * xx) * rng.uniform(0.5, 0.9)) > 0.3
    img[tread & grooves] *= 0.55
    img[tread] *= 0.85
    mask = wall | tread
    if rng.random() < 0.55:  # a rim
        metal = rng.uniform(110, 200) * np.array([1.0, 1.0, rng.uniform(0.97, 1.06)])
        lam, spec = _dome_shading(inner, _light(rng), spec=60.0)
        img[inner] = (metal * (0.6 + 0.4 * lam[..., None]) + spec[..., None])[inner]
        ang = np.arctan2(yy - cy, (xx - cx) * b / max(a, 1e-6))
        holes = inner & (np.cos(ang * int(rng.integers(4, 7))) > 0.55) & \
            ~_ellipse(shape, cx, cy, a * rho * 0.35, b * rho * 0.35)
        img[holes] *= 0.35
    else:  # no rim: the road shows where the hole lines up with the far side's
        through = inner & _ellipse(shape, cx + sign * t, cy, a * rho, b * rho)
        img[inner & ~through] *= 0.45
        mask &= ~through
    return img, mask


def _tyre_flat(rng) -> tuple[np.ndarray, np.ndarray]:
    a = SIZE / 2
    b = a * rng.uniform(0.12, 0.35)  # the top sidewall, foreshortened
    th = a * rng.uniform(0.2, 0.4)  # the tread's height
    H, W = int(2 * b + th + 6), int(2 * a + 6)
    cx, cy = 3 + a, 3 + b
    shape = (H, W)
    top = _ellipse(shape, cx, cy, a, b)
    band = _poly(shape, [(cx - a, cy), (cx + a, cy), (cx + a, cy + th), (cx - a, cy + th)])
    bottom = _ellipse(shape, cx, cy + th, a, b)
    rho = rng.uniform(0.52, 0.66)
    hole_top = _ellipse(shape, cx, cy, a * rho, b * rho)
    hole_bottom = _ellipse(shape, cx, cy + th, a * rho, b * rho)
    mask = (top | band | bottom) & ~(hole_top & hole_bottom)
    rubber = rng.uniform(22, 46) * np.array([1.0, 1.0, rng.uniform(1.0, 1.1)])
    img = np.zeros(shape + (3,)) + rubber
    img += (5 * _noise(shape, rng, ((0.6, 0.7), (3.0, 0.3))))[..., None]
    side = (band | bottom) & ~top
    xx = np.arange(W)[None, :]
    img[top] *= rng.uniform(1.25, 1.6)  # the upper sidewall faces the sky
    img[side & (np.sin(xx * rng.uniform(0.5, 0.9)) > 0.3)] *= 0.6
    img[hole_top & ~hole_bottom] *= 0.4  # the inner wall
    return img, mask


def _blob(rng, roughness: float, squash: tuple[float, float]) -> tuple[np.ndarray, float]:
    """Draw an irregular outline resting on the ground: return its mask, and its radius."""
    r = SIZE / 2
    H, W = int(2 * r + 8), int(2.4 * r + 8)
    th = np.linspace(0, 2 * np.pi, 180, endpoint=False)
    rad = np.ones_like(th)
    for k in range(2, 8):
        rad += rng.uniform(0, roughness) / np.sqrt(k) * np.cos(k * th + rng.uniform(0, 2 * np.pi))
    sx, sy = rng.uniform(0.9, 1.2), rng.uniform(*squash)
    cx, cy = W / 2, 4 + r * sy * 1.2
    pts = [(cx + r * sx * q * np.cos(a), cy + r * sy * q * np.sin(a)) for a, q in zip(th, rad)]
    mask = _poly((H, W), pts)
    flat = cy + r * sy * rng.uniform(0.6, 0.9)  # where it rests: cut flat
    mask[int(flat):] = False
    return mask, r


def _rock(rng) -> tuple[np.ndarray, np.ndarray]:
    mask, r = _blob(rng, 0.22, (0.45, 0.85))
    shape = mask.shape
    colours = ([120, 118, 114], [132, 112, 92], [176, 158, 128], [78, 76, 74], [150, 140, 125])
    base = np.array(colours[int(rng.integers(len(colours)))]) * rng.uniform(0.8, 1.15)
    base = base * rng.uniform(0.96, 1.04, 3)
    bumps = rng.uniform(1.0, 2.5) * _noise(shape, rng, ((2.5, 0.4), (6.0, 0.6)))
    lam, spec = _dome_shading(mask, _light(rng), bumps, spec=10.0, power=8.0)
    img = base * (0.45 + 0.7 * lam[..., None]) + spec[..., None]
    img += (rng.uniform(6, 16) * _noise(shape, rng, ((0.6, 0.6), (2.0, 0.4))))[..., None]
    specks = rng.random(shape) < 0.02
    img[specks] *= rng.uniform(0.5, 1.4)
    yy = np.arange(shape[0])[:, None]
    low = (yy > np.flatnonzero(mask.any(1)).max() - 0.12 * r)[:, 0]
    img[low] *= 0.7  # occlusion where it meets the ground
    return img, mask


def _binbag(rng) -> tuple[np.ndarray, np.ndarray]:
    mask, r = _blob(rng, 0.1, (0.7, 1.0))
    shape = mask.shape
    ys, xs = np.nonzero(mask)
    top, cx = ys.min(), xs.mean() + rng.uniform(-0.2, 0.2) * r
    neck_w, neck_h = r * rng.uniform(0.1, 0.18), r * rng.uniform(0.15, 0.3)
    knot = _poly(shape, [(cx - neck_w, top + 4), (cx + neck_w, top + 4),
                         (cx + 0.5 * neck_w, top - neck_h + 4),
                         (cx - 0.5 * neck_w, top - neck_h + 4)])
    tip = top - neck_h + 5
    ears = _poly(shape, [(cx, tip), (cx - 2.2 * neck_w, tip - 1.2 * neck_h),
                         (cx - 0.6 * neck_w, tip - 0.2 * neck_h),
                         (cx + 0.6 * neck_w, tip - 0.2 * neck_h),
                         (cx + 2.0 * neck_w, tip - 1.0 * neck_h)])
    mask = mask | knot | (ears if rng.random() < 0.7 else np.zeros_like(mask))
    mask[:1] = False
    r_ = rng.random()
    base = (np.array([24, 24, 26]) if r_ < 0.6 else np.array([28, 52, 34]) if r_ < 0.75 else
            np.array([30, 40, 70]) if r_ < 0.85 else np.array([185, 185, 180]))
    base = base * rng.uniform(0.85, 1.15)
    wr = rng.standard_normal(shape)
    wrinkles = ndimage.gaussian_filter(wr, (rng.uniform(0.8, 2), rng.uniform(3, 7)))
    wrinkles = 4.0 * wrinkles / max(float(wrinkles.std()), 1e-6)
    lam, spec = _dome_shading(mask, _light(rng), wrinkles, spec=rng.uniform(60, 140), power=40)
    img = base * (0.55 + 0.6 * lam[..., None]) + spec[..., None]
    return img, mask


def _plank(rng) -> tuple[np.ndarray, np.ndarray]:
    length, depth = SIZE * rng.uniform(1.2, 2.2), SIZE * rng.uniform(0.05, 0.2)
    thick = SIZE * rng.uniform(0.06, 0.2)
    tilt = rng.uniform(-0.25, 0.25) * depth
    H, W = int(depth + thick + abs(tilt) + 8), int(length + depth + 8)
    y0 = 4 + max(tilt, 0)
    x0 = 4.0
    shape = (H, W)
    top = _poly(shape, [(x0 + depth, y0 - tilt), (x0 + depth + length, y0),
                        (x0 + length, y0 + depth), (x0, y0 + depth - tilt)])
    front = _poly(shape, [(x0, y0 + depth - tilt), (x0 + length, y0 + depth),
                          (x0 + length, y0 + depth + thick), (x0, y0 + depth + thick - tilt)])
    end = _poly(shape, [(x0 + length, y0 + depth), (x0 + depth + length, y0),
                        (x0 + depth + length, y0 + thick), (x0 + length, y0 + depth + thick)])
    wood = np.array([150, 112, 70]) * rng.uniform(0.6, 1.3) * rng.uniform(0.93, 1.07, 3)
    if rng.random() < 0.25:
        wood = np.array([95, 90, 84]) * rng.uniform(0.7, 1.3)  # weathered grey
    grain = ndimage.gaussian_filter(rng.standard_normal(shape), (0.6, 12.0))
    grain = grain / max(float(grain.std()), 1e-6)
    img = np.zeros(shape + (3,)) + wood
    img += (rng.uniform(6, 14) * grain)[..., None]
    img[top] *= rng.uniform(1.05, 1.25)
    img[front & ~top] *= rng.uniform(0.6, 0.85)
    img[end & ~top & ~front] *= rng.uniform(0.75, 1.0)
    return img, top | front | end


_RENDER = {"box": _box, "tyre_side": _tyre_side, "tyre_flat": _tyre_flat, "rock": _rock,
           "binbag": _binbag, "plank": _plank}


def render(kind: str, seed: int) -> OutlierObject:
    """One object of ``kind`` (:data:`KINDS`), the same for the same seed."""
    if kind not in _RENDER:
        raise ValueError(f"unknown synthetic obstacle {kind!r}; expected one of {KINDS}")
    img, mask = _RENDER[kind](_rng(kind, seed))
    if not mask.any():
        raise RuntimeError(f"synthetic {kind} {seed}: empty mask")  # a bug, not a draw
    return _finish(img, mask, kind, seed)


@dataclass(frozen=True)
class SyntheticEntry:
    """A lazily rendered object of an :class:`OutlierSource` (``key`` ``synthetic/kind/seed``)."""

    kind: str
    seed: int

    @property
    def key(self) -> str:
        return f"synthetic/{self.kind}/{self.seed}"

    @property
    def category(self) -> str:
        return self.kind

    def load(self) -> OutlierObject:
        return render(self.kind, self.seed)


def synthetic_source(n: int, seed: int = PROTOCOL_SEED_BASE,
                     kinds: tuple[str, ...] = DEFAULT_KINDS) -> OutlierSource:
    """``n`` objects, the kinds in turn, seeds ``seed, seed + 1, ...``."""
    bad = [k for k in kinds if k not in _RENDER]
    if bad or not kinds:
        raise ValueError(f"unknown synthetic obstacle kinds {bad}; expected some of {KINDS}")
    entries = [SyntheticEntry(kinds[i % len(kinds)], int(seed) + i) for i in range(n)]
    return OutlierSource(entries, kind="synthetic", root=Path("synthetic"), filter="none",
                         info={"seed": int(seed), "kinds": list(kinds)})


__all__ = ["DEFAULT_KINDS", "KINDS", "PROTOCOL_SEED_BASE", "SIZE", "SyntheticEntry", "render",
           "synthetic_source"]
