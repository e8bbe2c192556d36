"""The demo sequence: lost cargo lying on the road of a held-out KITTI raw drive, approached.

What the model is for: a tyre, a box, a bag or a rock on the road ahead, a few pixels tall far
away, growing as the car drives towards it. :func:`build_obstacle_sequence` composites 1-3
obstacles per frame that stay put *in the world* on consecutive frames of the KITTI raw drive
``cgebbe_input`` (1242x375, 5 frames a second; held out of training, see :mod:`.hires_road`):

* **Where**: a fixed world position on the road per obstacle. The car's motion is measured on
  the road (:func:`estimate_motion`), so an obstacle moves as the road markings beside it do
  (on this drive 2.25 m a frame, 40 km/h, and the road drifts 0.1 m a frame to the left: a
  camera yawed by 2 degrees or a slow drift in the lane). Lateral offsets keep the foot on the
  drivable surface (``road_fn``, default :func:`default_road`) in every frame.
* **How big**: a flat-ground pinhole camera (:data:`KITTI_CAMERA`, 1.65 m high): at ``z`` m an
  object ``H`` m tall (:data:`WORLD_HEIGHTS`, 0.2-0.6 m) spans ``f * H / z`` px on foot row
  ``cy + f * h_cam / z``; drawn from 8 px tall until its foot leaves the frame (5.9 m ahead).
* **How it looks**: the project's compositing (:mod:`.compositing`: feathered matte, the scene's
  light around the foot point, blur, sensor noise, a contact shadow), drawn once per obstacle:
  the same object in every frame (only the noise is new each frame).
* **What**: the protocol's lost cargo (:func:`cargo_objects`), COCO instances that training
  never pastes and procedural boxes, tyres, rocks and bags, alternately.

Output (``out``): ``frame_NNNN.jpg`` (full resolution, JPEG quality 90), ``labels/frame_NNNN.png``
(INLIER 0, ANOMALY 1 where the matte is >= 0.5), ``sequence.json`` (the motion; per obstacle its
object and world position, per frame its distance, box and pixels), ``ATTRIBUTION.md``. A folder
player reads only the top-level images.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from scipy import ndimage

from .. import jsonio
from ..labels import ANOMALY, INLIER
from .compositing import CompositeConfig, Compositor, _resize_object, estimate_ground, match_light
from .hires_road import drive_and_frame, hires_road
from .obstacle_sets import ObstacleConfig, cargo_source, vegetation_like
from .outlier_sources import OutlierObject, OutlierSource
from .protocol_sets import ProtocolConfig, outlier_parts

RoadFn = Callable[[np.ndarray], np.ndarray]
# world heights in metres (uniform range) by kind or COCO class: lost cargo lying on a road
WORLD_HEIGHTS = {
    "box": (0.3, 0.5), "tyre_side": (0.55, 0.6), "tyre_flat": (0.2, 0.25), "rock": (0.2, 0.35),
    "binbag": (0.4, 0.6), "plank": (0.2, 0.25), "suitcase": (0.45, 0.6), "backpack": (0.35, 0.5),
    "handbag": (0.25, 0.35), "sports ball": (0.2, 0.25), "teddy bear": (0.3, 0.5),
    "bottle": (0.2, 0.3), "frisbee": (0.2, 0.25), "skateboard": (0.2, 0.25), "kite": (0.4, 0.6),
    "chair": (0.5, 0.6), "potted plant": (0.4, 0.6), "vase": (0.3, 0.45)}
DEFAULT_HEIGHT = (0.2, 0.6)


@dataclass(frozen=True)
class Camera:
    """A forward-looking pinhole camera ``height`` metres above a flat road, no pitch or roll."""

    focal: float
    cx: float
    cy: float
    height: float

    def foot(self, z: float, x: float) -> tuple[float, float]:
        """Return the image (row, column) of the road point ``z`` m ahead, ``x`` m to the right."""
        return self.cy + self.focal * self.height / z, self.cx + self.focal * x / z

    def pixels(self, size_m: float, z: float) -> float:
        return self.focal * size_m / z


# KITTI raw 2011_09_26 calibration, camera 2 rectified (P_rect_02), mounted 1.65 m high
KITTI_CAMERA = Camera(focal=721.5, cx=609.6, cy=172.9, height=1.65)


@dataclass
class SequenceConfig:
    """The sequence's choices; the defaults build the shipped ``models/demo_sequence_kitti``."""

    drive: str = "cgebbe_input"
    start: int = 22  # position in the drive's frames: KITTI raw frame 44, the straight stretch
    frames: int = 16  # consecutive: what fits the 2.5 MB budget at JPEG quality 90
    camera: Camera = KITTI_CAMERA
    metres_per_frame: float | None = None  # None: measured on the road (estimate_motion)
    max_visible: int = 3  # obstacles in one frame at most
    gap_m: tuple[float, float] = (9.0, 16.0)  # between consecutive obstacles along the road
    min_height_px: float = 8.0  # an obstacle is drawn from this height on
    # the first obstacle is this near (m) at frame first_near_frame, its last before its foot
    # leaves the frame (5.9 m): what a robot must see, 55-75 px tall
    first_nearest_m: tuple[float, float] = (5.95, 6.5)
    first_near_frame: int = 4
    lateral_m: tuple[float, float] = (-0.9, 2.8)  # world offsets tried (the ego and right lane)
    min_distance_m: float = 3.0  # nearer obstacles are dropped (the foot leaves the frame first)
    look: CompositeConfig = field(default_factory=CompositeConfig)  # blur, light, shadow ranges
    quality: int = 90


@dataclass
class Obstacle:
    """One obstacle: its object, size and look, and its world position at the first frame."""

    key: str
    category: str
    obj: OutlierObject
    height_m: float
    z0: float  # m ahead of the camera at the sequence's first frame
    x0: float  # m to the right of the camera's axis then
    look: dict


def estimate_motion(images: list[np.ndarray], camera: Camera = KITTI_CAMERA,
                    max_forward: float = 4.5, max_lateral: float = 0.5,
                    min_corr: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Measure how far a road point moves between consecutive frames (the car's motion).

    Returns (forward, lateral), each (n - 1,) metres: a road point ``z`` m ahead, ``x`` to the
    right in frame k is ``z - forward[k]`` ahead and ``x + lateral[k]`` to the right in frame
    k + 1. The road 7-22 m ahead, 3.5 m either side, is seen from above (5 cm cells) through the
    flat-ground camera and the shift that best correlates two frames is taken; pairs whose best
    correlation is under ``min_corr`` (no texture to follow) take the median of the others.
    """
    step = 0.05
    zz, xx = np.meshgrid(np.arange(7.0, 22.0, step), np.arange(-3.5, 3.5, step), indexing="ij")
    rows, cols = camera.foot(zz, xx)
    views = []
    for im in images:
        grey = ndimage.gaussian_filter(np.asarray(im, np.float32).mean(2), 1.0)
        bev = ndimage.map_coordinates(grey, [rows, cols], order=1, mode="nearest")
        views.append(bev - ndimage.gaussian_filter(bev, 10))  # texture and markings, not light
    m = int(round(max_lateral / step))
    found = []
    for a, b in zip(views, views[1:]):
        best = (0, 0, -1.0)
        for s in range(int(round(max_forward / step)) + 1):
            x = a[s:, m:-m].ravel()
            for t in range(-m, m + 1, 2):
                y = b[: a.shape[0] - s, m + t: b.shape[1] - m + t].ravel()
                c = float(np.corrcoef(x, y)[0, 1]) if x.std() > 0 and y.std() > 0 else -1.0
                if c > best[2]:
                    best = (s, t, c)
        found.append(best)
    fwd, lat = (np.array([b[j] * step for b in found], float) for j in (0, 1))
    ok = np.array([b[2] >= min_corr for b in found], bool)
    if ok.any() and not ok.all():
        fwd[~ok], lat[~ok] = np.median(fwd[ok]), np.median(lat[ok])
    return fwd, lat


def _crop(obj: OutlierObject) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.nonzero(obj.mask)
    box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    return obj.image[box], obj.mask[box]


def _aspect(obj: OutlierObject) -> float:
    mask = _crop(obj)[1]  # the object's own width / height, not its photograph's
    return mask.shape[1] / mask.shape[0]


def paste_object(out: np.ndarray, label: np.ndarray, obj: OutlierObject, foot: tuple[int, int],
                 height_px: float, look: dict, rng: np.random.Generator) -> dict | None:
    """Composite ``obj`` standing on ``foot`` (row, column), ``height_px`` tall, in place.

    The Compositor's pieces with the draws fixed by ``look`` (light, contrast, blur, noise,
    feather, shadow: :func:`draw_look`); only the noise comes from ``rng``. ``out`` (H, W, 3)
    float32, ``label`` (H, W) uint8: ANOMALY where the matte is >= 0.5. None (nothing drawn)
    when the object would not lie wholly inside the frame.
    """
    H, W = label.shape
    src_img, src_mask = _crop(obj)
    fy, fx = foot
    oh = max(int(round(height_px)), 2)
    ow = max(int(round(height_px * src_mask.shape[1] / src_mask.shape[0])), 2)
    y0, x0 = fy - oh + 1, fx - ow // 2
    if y0 < 0 or fy >= H or x0 < 0 or x0 + ow > W:
        return None
    img, alpha = _resize_object(src_img, src_mask, (oh, ow), look["feather"])
    wy0, wy1 = max(fy - 2 * oh, 0), min(fy + oh // 2 + 1, H)
    wx0, wx1 = max(fx - 2 * ow, 0), min(fx + 2 * ow, W)
    img = match_light(img, alpha, out[wy0:wy1, wx0:wx1].reshape(-1, 3), look["light"],
                      look["contrast"])
    if look["blur"] > 0.05:
        img = ndimage.gaussian_filter(img, (look["blur"], look["blur"], 0))
    img = img + rng.normal(0.0, look["noise"], img.shape)
    if look["shadow"] > 0:
        Compositor._shadow(out, fy, fx, ow, look["shadow"])
    box = (slice(y0, fy + 1), slice(x0, x0 + ow))
    a = alpha[..., None]
    out[box] = a * np.clip(img, 0, 255) + (1.0 - a) * out[box]
    hit = alpha >= 0.5
    label[box][hit] = ANOMALY
    return {"box": [int(y0), int(x0), oh, ow], "height_px": oh, "pixels": int(hit.sum())}


def draw_look(cfg: CompositeConfig, rng: np.random.Generator) -> dict:
    """Draw one obstacle's look from the compositor's ranges, kept for all its frames."""
    shadow = float(rng.uniform(*cfg.shadow_strength)) if rng.random() < cfg.shadow_prob else 0.0
    return {"light": float(rng.uniform(*cfg.light_match)),
            "contrast": float(rng.uniform(*cfg.contrast_match)),
            "blur": float(rng.uniform(*cfg.blur_sigma)),
            "noise": float(rng.uniform(*cfg.noise_sigma)),
            "feather": float(rng.uniform(*cfg.feather_sigma)), "shadow": shadow}


def default_road(image: np.ndarray) -> np.ndarray:
    """Return the drivable surface of an unlabelled road frame: grown from the bottom centre."""
    return estimate_ground(image).mask & ~vegetation_like(image)


def drive_frames(hires_root: str | Path, drive: str) -> list[tuple[str, Path]]:
    """Return the (name, path) of every frame of ``drive`` in ``hires_root``, in frame order."""
    ds = hires_road(hires_root, "protocol")
    frames = sorted((drive_and_frame(r.name)[1], r.name, r.image) for r in ds.records
                    if drive_and_frame(r.name)[0] == drive)
    if not frames:
        raise FileNotFoundError(f"no frames of drive {drive!r} under {hires_root} (held-out "
                                f"drives only: see flowclas_ros/data/hires_road.py)")
    return [(n, p) for _, n, p in frames]


def cargo_objects(coco_root: str | Path) -> tuple[list[int], list[int], OutlierSource]:
    """Return the protocol's lost cargo: (whole COCO instances, synthetic objects, the source).

    COCO instances whose crop is at least 40 px tall, half filled by the object and clear of
    the photograph's border (a cut-off bag would be cut off on the road too); all of them when
    none qualifies.
    """
    root = Path(coco_root)
    parts = outlier_parts(replace(ProtocolConfig(), outliers=root.name), root.parent)
    src = cargo_source(parts["held_out"], parts["held_out_classes"], ObstacleConfig())
    synth = [i for i, e in enumerate(src.entries) if e.key.startswith("synthetic/")]
    coco = [i for i in range(len(src)) if i not in set(synth)]
    good = []
    for i in coco:
        mask = src[i].mask
        ys, xs = np.nonzero(mask)
        h, w = np.ptp(ys) + 1 if ys.size else 0, np.ptp(xs) + 1 if xs.size else 0
        if h >= 40 and ys.size >= 0.45 * h * w and ys.min() > 0 and xs.min() > 0 \
                and ys.max() < mask.shape[0] - 1 and xs.max() < mask.shape[1] - 1:
            good.append(i)
    return good or coco, synth, src


def _track(ob: Obstacle, fwd_cum: np.ndarray, lat_cum: np.ndarray, cfg: SequenceConfig,
           shape: tuple[int, int], x0: float | None = None) -> list[tuple]:
    """Return per frame (z, x, foot row, foot column, height px) or None where not drawn."""
    cam, (H, W) = cfg.camera, shape
    x0 = ob.x0 if x0 is None else x0
    out = []
    for k in range(fwd_cum.size):
        z, x = ob.z0 - fwd_cum[k], x0 + lat_cum[k]
        if z < cfg.min_distance_m:
            out.append(None)
            continue
        row, col = (int(round(v)) for v in cam.foot(z, x))
        h = cam.pixels(ob.height_m, z)
        half = h * _aspect(ob.obj) / 2 + 1
        inside = row <= H - 1 and half <= col <= W - half and h >= cfg.min_height_px
        out.append((z, x, row, col, h) if inside else None)
    return out


def _on_road(track: list, roads: list[np.ndarray], width: float) -> float:
    """Return the fraction of the drawn frames whose foot row, the object's width, is road."""
    good = []
    for k, t in enumerate(track):
        if t is not None:
            (row, col), half = t[2:4], max(int(t[4] * width / 2), 1)
            band = roads[k][max(row - 1, 0):row + 2, max(col - half, 0):col + half + 1]
            good.append(band.size > 0 and band.mean() >= 0.6)
    return float(np.mean(good)) if good else 0.0


def plan_obstacles(src: OutlierSource, coco: list[int], synth: list[int], roads: list[np.ndarray],
                   fwd_cum: np.ndarray, lat_cum: np.ndarray, cfg: SequenceConfig,
                   rng: np.random.Generator) -> tuple[list[Obstacle], list[list]]:
    """Lay obstacles along the road ahead, ``gap_m`` apart, their feet on the road.

    The first (of a tall kind) is ``first_nearest_m`` ahead at frame ``first_near_frame``; each
    next lies a gap further (widened while a frame would show more than ``max_visible``), as
    far as an object can be seen in the last frame. Synthetic and COCO objects alternate.
    Returns the obstacles and their tracks (:func:`_track`).
    """
    shape = roads[0].shape
    obstacles, tracks = [], []
    count = np.zeros(fwd_cum.size, int)
    pools = [synth, coco] if coco else [synth]
    # beyond this even the tallest object is under min_height_px in the last frame
    far = fwd_cum[-1] + cfg.camera.focal * max(h for _, h in WORLD_HEIGHTS.values()) \
        / cfg.min_height_px
    z0 = 0.0
    while z0 < far:
        i, first = len(obstacles), z0 == 0.0
        pool = pools[i % len(pools)] or synth or coco
        if first:  # the one seen near: of a kind at least 0.4 m tall where there is one
            pool = [j for j in pool if WORLD_HEIGHTS.get(src.entries[j].category,
                                                         DEFAULT_HEIGHT)[0] >= 0.4] or pool
        idx = int(pool[int(rng.integers(len(pool)))])
        obj = src[idx]
        cat = obj.category or getattr(src.entries[idx], "category", "")
        lo, hi = WORLD_HEIGHTS.get(cat, DEFAULT_HEIGHT)
        height = float(rng.uniform((lo + hi) / 2 if first else lo, hi))
        look = draw_look(cfg.look, rng)
        if first:
            near = min(cfg.first_near_frame, fwd_cum.size - 1)
            z0 = float(fwd_cum[near] + rng.uniform(*cfg.first_nearest_m))
        else:
            z0 += float(rng.uniform(*cfg.gap_m))
        ob = Obstacle(src.entries[idx].key, cat, obj, height, z0, 0.0, look)
        placed = None
        for _ in range(12):  # widen the gap until no frame shows too many
            best = None
            for _ in range(30):  # lateral offsets: the first wholly on the road, else the best
                x0 = float(rng.uniform(*cfg.lateral_m))
                tr = _track(ob, fwd_cum, lat_cum, cfg, shape, x0)
                score = _on_road(tr, roads, _aspect(obj))
                if best is None or score > best[0]:
                    best = (score, x0, tr)
                if score >= 1.0:
                    break
            visible = np.array([t is not None for t in best[2]])
            if not visible.any():
                break  # too small to be seen from any frame: a farther one would not be either
            if np.all(count + visible <= cfg.max_visible) and best[0] > 0.5:
                placed = (best[1], best[2], visible)
                break
            ob.z0 += 3.0
        z0 = ob.z0
        if placed is not None:  # else the next object, a gap further
            ob.x0, tr, visible = placed
            count += visible
            obstacles.append(ob)
            tracks.append(tr)
    return obstacles, tracks


ATTRIBUTION = """# Demo sequence (KITTI): attribution and licences

{frames} consecutive frames of the KITTI raw drive `cgebbe_input` (frames {first}-{last}, 1242x375,
held out of training) with lost cargo composited on the road: {n} obstacles that stay put in the
world while the car drives towards them (ego motion measured on the road, {speed}), sized by a
flat-ground pinhole camera (focal 721.5 px, 1.65 m high), with the project's compositing (light
match, blur, noise, contact shadow); seed {seed}. Saved as JPEG (quality 90); `labels/` holds the
per-pixel labels (0 inlier, 1 anomaly), `sequence.json` every obstacle's position per frame.
Rebuild: `python -m flowclas_ros.tools.demo --build-obstacle-sequence --hires ROOT/hires-road
--coco ROOT/coco128-seg`.

* KITTI raw: A. Geiger, P. Lenz, C. Stiller, R. Urtasun, "Vision meets Robotics: The KITTI
  Dataset", International Journal of Robotics Research (IJRR) 2013. Licence CC BY-NC-SA 3.0:
  non-commercial use, share alike.
* COCO train2017 images (from the coco128-seg subset): T.-Y. Lin et al., "Microsoft COCO:
  Common Objects in Context", ECCV 2014. Annotations CC BY 4.0; each image keeps its Flickr
  licence (see the COCO annotation file for the image ids below).
* Procedural objects (`synthetic/<kind>/<seed>`): drawn by
  flowclas_ros/data/synthetic_obstacles.py.

| obstacle | object | height | lateral offset |
|---|---|---|---|
{objects}

| file | KITTI raw frame | obstacles (obstacle: distance, height in px) |
|---|---|---|
{rows}
"""


def build_obstacle_sequence(hires_root: str | Path, coco_root: str | Path, out: str | Path,
                            frames: int | None = None, seed: int = 0, *,
                            config: SequenceConfig | None = None,
                            road_fn: RoadFn | None = None) -> dict:
    """Write the demo sequence (see the module docstring) to ``out``; returns its summary.

    ``hires_root``: the ``hires-road`` folder; ``coco_root``: ``coco128-seg``; ``frames``
    overrides ``config.frames``.
    """
    cfg = config or SequenceConfig()
    if frames is not None:
        cfg = replace(cfg, frames=int(frames))
    drive = drive_frames(hires_root, cfg.drive)[cfg.start:cfg.start + cfg.frames]
    if len(drive) < 2:
        raise ValueError(f"drive {cfg.drive}: fewer than 2 frames from position {cfg.start}")
    images = [np.asarray(Image.open(p).convert("RGB")) for _, p in drive]
    n = len(images) - 1
    fwd, lat = (estimate_motion(images, cfg.camera) if cfg.metres_per_frame is None
                else (np.full(n, float(cfg.metres_per_frame)), np.zeros(n)))
    fwd_cum = np.concatenate([[0.0], np.cumsum(np.maximum(fwd, 0.0))])
    lat_cum = np.concatenate([[0.0], np.cumsum(lat)])
    roads = [np.asarray((road_fn or default_road)(im), bool) for im in images]
    good, synth, src = cargo_objects(coco_root)
    rng = np.random.default_rng([int(seed), 0x0B57AC1E])
    obstacles, tracks = plan_obstacles(src, good, synth, roads, fwd_cum, lat_cum, cfg, rng)

    out = Path(out)
    for old in [*out.glob("frame_*.jpg"), *out.glob("labels/frame_*.png")]:
        old.unlink()  # a shorter rebuild leaves no stale frames behind
    (out / "labels").mkdir(parents=True, exist_ok=True)
    rows, frames_out, drawn = [], [], []
    for k, ((name, _), image) in enumerate(zip(drive, images)):
        canvas = image.astype(np.float32)
        label = np.full(image.shape[:2], INLIER, np.uint8)
        objs = []
        # far first: a nearer obstacle covers a farther one, in the image and in the labels
        order = sorted((t[0], i) for i, tr in enumerate(tracks) if (t := tr[k]) is not None)
        for _, i in reversed(order):
            z, x, row, col, h = tracks[i][k]
            info = paste_object(canvas, label, obstacles[i].obj, (row, col), h,
                                obstacles[i].look, np.random.default_rng([int(seed), k, i]))
            if info is not None:
                objs.append({"obstacle": i, "distance_m": round(z, 2), "lateral_m": round(x, 2),
                             **info})
        file = f"frame_{k:04d}.jpg"
        Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8)).save(
            out / file, quality=cfg.quality)
        Image.fromarray(label).save(out / "labels" / f"frame_{k:04d}.png")
        frames_out.append({"file": file, "kitti_frame": name, "objects": objs})
        drawn += objs
        rows.append(f"| {file} | {name} | " + ("; ".join(
            f"{o['obstacle']}: {o['distance_m']:.1f} m, {o['height_px']} px" for o in objs)
            or "none") + " |")
    meta = [{"obstacle": j, "object": o.key, "category": o.category,
             "height_m": round(o.height_m, 2), "distance_at_first_frame_m": round(o.z0, 2),
             "lateral_m": round(o.x0, 2), "look": o.look} for j, o in enumerate(obstacles)]
    motion = {"forward_m": [round(float(v), 2) for v in fwd],
              "lateral_m": [round(float(v), 2) for v in lat],
              "measured": cfg.metres_per_frame is None}
    jsonio.write(out / "sequence.json", {"drive": cfg.drive, "seed": int(seed), "motion": motion,
                                         "obstacles": meta, "frames": frames_out})
    speed = (f"median {np.median(fwd):.2f} m a frame" if cfg.metres_per_frame is None
             else f"a constant {cfg.metres_per_frame} m a frame")
    objects = "\n".join(
        f"| {m['obstacle']} | {'' if m['object'].startswith('synthetic/') else 'COCO train2017 '}"
        f"{m['object']} ({m['category']}) | {m['height_m']} m | {m['lateral_m']} m |"
        for m in meta)
    (out / "ATTRIBUTION.md").write_text(ATTRIBUTION.format(
        frames=len(drive), first=drive[0][0], last=drive[-1][0], n=len(obstacles), speed=speed,
        seed=seed, objects=objects, rows="\n".join(rows)))
    heights = [o["height_px"] for o in drawn] or [0]
    per_frame = [len(f["objects"]) for f in frames_out]
    return {"frames": len(frames_out), "obstacles": len(obstacles), "per_frame": per_frame,
            "height_px": [min(heights), float(np.median(heights)), max(heights)],
            "bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file()),
            "motion_m_per_frame": float(np.median(fwd))}


__all__ = ["Camera", "DEFAULT_HEIGHT", "KITTI_CAMERA", "Obstacle", "SequenceConfig",
           "WORLD_HEIGHTS", "build_obstacle_sequence", "cargo_objects", "default_road",
           "draw_look", "drive_frames", "estimate_motion", "paste_object", "plan_obstacles"]
