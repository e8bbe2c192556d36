"""The protocol's small-obstacle parts: lost cargo on the road of full-resolution frames.

A robot must see a tyre, a box or a rock on the road while it is still far away, when it spans a
few dozen pixels of the camera's frame and nothing of a 480x360 one. These parts ask exactly
that, at the camera's own resolution (never resized here: the scorer decides the model's input):

==========================  ======================================================================
part                        frames
==========================  ======================================================================
``obstacles_kitti``         KITTI Road (128 test frames, 1242x375; protocol only, never trained
                            on) and the held-out KITTI raw scene-flow scenes (``hires_road``
                            split ``protocol_pasted``), 1-3 obstacles each
``obstacles_nuscenes``      the held-out Boston frames (1600x900; the hood VOID), 1-3 each
``obstacles_cityscapes``    the 8 Cityscapes sample frames (2048x1024), :attr:`ObstacleConfig.
                            cityscapes_variants` draws of 2-4 obstacles each
``hires_clean``             held-out KITTI raw and Boston frames of *other* drives (split
                            ``protocol_clean``), nothing pasted: the threshold of the
                            small-obstacle figures is calibrated here
``cityscapes_hires_clean``  the 8 Cityscapes frames at full resolution, nothing pasted: the
                            calibrated false-positive rate checked in a third domain
==========================  ======================================================================

Obstacles are composited by :class:`~.compositing.Compositor` (ground contact, the scene's light,
blur, noise, a contact shadow) on the *drivable surface*: Cityscapes' labelled road (trainId 0),
or for the unlabelled frames an injected road segmentation ``road_fn(image) -> (H, W) bool``
(the builder above this package passes the Cityscapes ESPNetv2's road class; data/ may not import
a model) without green or yellow pixels (:func:`vegetation_like`) and cleaned by
:func:`clean_road`. That model is not perfect on KITTI: shaded grass verges beside the road are
sometimes taken for road, and then obstacles can stand there and the obstacle-way scoring counts
them as road. Heights are drawn log-uniformly in
``composite.height_px`` (8 to 80 px) and the foot point is placed where a flat-ground camera sees
an object of ``height_ratio`` times its own height at that size. The objects
(:func:`cargo_source`): COCO instances of lost-cargo-like classes (:data:`CARGO_CLASSES`) that
training never pastes (the held-out classes from any photograph, the other classes from the
held-out photographs only), and as many procedural boxes, tyres, rocks and bin bags
(:mod:`.synthetic_obstacles`, seeds from ``PROTOCOL_SEED_BASE`` up).

Each part is a folder dataset (``images/``, ``labels/`` with INLIER 0, ANOMALY 1, VOID 255) plus
``roads/<name>.png``: 255 on the drivable surface *with* its obstacles (the region of interest of
the obstacle-way scoring), 0 elsewhere and on VOID; ``manifest.json`` lists every object (box,
height, pixels, size bucket, class).
"""
from __future__ import annotations

import shutil
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image
from scipy import ndimage

from .. import jsonio
from ..labels import ANOMALY, INLIER, VOID
from .compositing import CompositeConfig, Compositor, ground_from_mask
from .frames import read_label
from .hires_road import hires_road
from .inlier_sets import cityscapes, kitti_road
from .outlier_sources import OutlierSource
from .synthetic_obstacles import PROTOCOL_SEED_BASE, synthetic_source

OBSTACLE_PARTS = ("obstacles_kitti", "obstacles_nuscenes", "obstacles_cityscapes")
HIRES_CLEAN_PARTS = ("hires_clean", "cityscapes_hires_clean")
HIRES_PARTS = OBSTACLE_PARTS + HIRES_CLEAN_PARTS
HIRES_CALIBRATION_PART = "hires_clean"
ROADS = "roads"
# COCO classes that look like lost cargo: bags, cases, toys, bottles, furniture, plants
CARGO_CLASSES = ("suitcase", "backpack", "handbag", "sports ball", "teddy bear", "bottle",
                 "frisbee", "skateboard", "kite", "chair", "potted plant", "vase")
SIZE_BUCKETS = ("small", "medium", "large")  # see size_bucket
RoadFn = Callable[[np.ndarray], np.ndarray]


def size_bucket(pixels: int) -> str:
    """"small" (under 500 px), "medium" (500 to 5,000) or "large" (over 5,000)."""
    return "small" if pixels < 500 else "medium" if pixels <= 5000 else "large"


def _hires_composite() -> CompositeConfig:
    return CompositeConfig(height_ratio=(0.08, 0.45), height_px=(8.0, 80.0), objects=(1, 3),
                           tries=40)


@dataclass
class ObstacleConfig:
    """How the small-obstacle parts are drawn; the defaults are the documented protocol."""

    composite: CompositeConfig = field(default_factory=_hires_composite)
    cityscapes_objects: tuple[int, int] = (2, 4)
    cityscapes_variants: int = 4  # draws per Cityscapes frame
    cargo_classes: tuple[str, ...] = CARGO_CLASSES
    synthetic: int | None = None  # procedural objects; None: as many as the COCO ones
    synthetic_seed: int = PROTOCOL_SEED_BASE
    min_road_fraction: float = 0.002  # road components smaller than this (of the frame) dropped


def obstacle_rng(seed: int, part: str, name: str) -> np.random.Generator:
    """One frame's generator: independent of the order and number of frames built."""
    return np.random.default_rng([int(seed), zlib.crc32(f"obstacles/{part}".encode()),
                                  zlib.crc32(name.encode())])


def cargo_source(held_out: OutlierSource, held_out_classes: OutlierSource,
                 cfg: ObstacleConfig) -> OutlierSource:
    """Collect the lost-cargo COCO instances no training run pastes, then procedural objects."""
    wanted = set(cfg.cargo_classes)
    coco = [e for src in (held_out_classes, held_out) for e in src.entries
            if getattr(e, "category", "") in wanted]
    n = len(coco) if cfg.synthetic is None else int(cfg.synthetic)
    synth = synthetic_source(max(n, 1 if not coco else 0), seed=cfg.synthetic_seed).entries
    if not coco and not synth:
        raise ValueError("no obstacle objects: no COCO cargo instance and no synthetic ones")
    return OutlierSource(coco + synth, kind="obstacles", root=held_out.root,
                         filter=held_out.filter, info={"coco": len(coco), "synthetic": len(synth)})


def vegetation_like(image: np.ndarray, ratio: float = 0.2) -> np.ndarray:
    """Return (H, W) bool: the green or yellow pixels.

    A pixel is green or yellow when its 9x9 mean colour has G - B above ``ratio`` of its
    brightness: sunlit grass and verges that the Cityscapes model takes for road on KITTI
    (asphalt is grey, or bluish in shadow).
    """
    sm = ndimage.uniform_filter(np.asarray(image, np.float32), (9, 9, 1))
    return (sm[..., 1] - sm[..., 2]) > ratio * np.maximum(sm.mean(2), 25.0)


def clean_road(mask: np.ndarray, valid: np.ndarray, min_fraction: float = 0.002) -> np.ndarray:
    """Return the drivable surface a robot drives on, from a road segmentation.

    Valid pixels only, connected regions of at least ``min_fraction`` of the frame that reach
    the bottom quarter of the valid rows (a road seen across a median or through a gap is
    dropped).
    """
    road = np.asarray(mask, bool) & valid
    regions, n = ndimage.label(road, structure=np.ones((3, 3), bool))
    if n == 0:
        return road
    sizes = np.bincount(regions.ravel(), minlength=n + 1)
    rows = np.flatnonzero(valid.any(1))
    low = int(rows[int(0.75 * (rows.size - 1))]) if rows.size else 0
    near = np.unique(regions[low:])
    keep = np.zeros(n + 1, bool)
    keep[near] = True
    keep &= sizes >= min_fraction * road.size
    keep[0] = False
    return keep[regions]


Frame = tuple[str, np.ndarray, np.ndarray, np.ndarray]  # name, image, label, road (bool)


def _road_of(image, label, road_fn: RoadFn | None, part: str, cfg: ObstacleConfig) -> np.ndarray:
    if road_fn is None:
        raise ValueError(f"protocol part {part} needs a road segmentation (road_fn): build it "
                         f"with flowclas_ros.evaluation.protocol_build.build_protocol (the "
                         f"Cityscapes ESPNetv2), or pass road_fn")
    road = np.asarray(road_fn(image), bool)
    if road.shape != label.shape:
        raise ValueError(f"road_fn gave {road.shape} for a {label.shape} frame")
    return clean_road(road & ~vegetation_like(image), label != VOID, cfg.min_road_fraction)


def _hires(root: Path, split: str, drives: tuple[str, ...], part: str, cfg: ObstacleConfig,
           road_fn: RoadFn | None) -> Iterator[Frame]:
    ds = hires_road(root / "hires-road", split)
    for i, name in enumerate(ds.names):
        if name.startswith(drives):
            s = ds[i]
            yield s.name, s.image, s.label, _road_of(s.image, s.label, road_fn, part, cfg)


def _kitti_road(root: Path, part: str, cfg: ObstacleConfig, road_fn) -> Iterator[Frame]:
    ds = kitti_road(root / "kitti-road")
    for i in range(len(ds)):
        s = ds[i]
        yield s.name, s.image, s.label, _road_of(s.image, s.label, road_fn, part, cfg)


def _cityscapes(root: Path, variants: int) -> Iterator[Frame]:
    ds = cityscapes(root / "cityscapes-sample", "train")
    for i in range(len(ds)):
        s, rec = ds[i], ds.records[i]
        road_id = 0 if rec.label.name.endswith("_labelTrainIds.png") else 7  # labelIds: road 7
        road = (read_label(rec.label) == road_id) & (s.label != VOID)
        for k in range(variants):
            name = s.name.replace("/", "_") + (f"_v{k}" if variants > 1 else "")
            yield name, s.image, s.label, road


def hires_frames(part: str, root: Path, cfg: ObstacleConfig,
                 road_fn: RoadFn | None) -> Iterator[Frame]:
    """Return an iterator over the frames of a small-obstacle part, before anything is pasted."""
    kitti_drives = ("fmvg_", "cgebbe_", "sceneflow_")
    if part == "obstacles_kitti":
        def both():
            yield from _kitti_road(root, part, cfg, road_fn)
            yield from _hires(root, "protocol_pasted", kitti_drives, part, cfg, road_fn)
        return both()
    if part == "obstacles_nuscenes":
        return _hires(root, "protocol_pasted", ("boston_",), part, cfg, road_fn)
    if part == "obstacles_cityscapes":
        return _cityscapes(root, cfg.cityscapes_variants)
    if part == "hires_clean":
        return _hires(root, "protocol_clean", kitti_drives + ("boston_",), part, cfg, road_fn)
    if part == "cityscapes_hires_clean":
        return _cityscapes(root, 1)
    raise ValueError(f"unknown small-obstacle part {part!r}; expected one of {HIRES_PARTS}")


def build_hires_part(part: str, root: str | Path, out: str | Path, cfg: ObstacleConfig,
                     seed: int, objects: OutlierSource | None, road_fn: RoadFn | None,
                     limit: int | None = None) -> dict:
    """Write one part (see the module docstring) under ``out/part``; returns its summary.

    ``objects``: the obstacle source (:func:`cargo_source`), unused by the clean parts.
    """
    root, d = Path(root), Path(out) / part
    compositor = None
    if part in OBSTACLE_PARTS:
        if objects is None:
            raise ValueError(f"protocol part {part} needs an obstacle source")
        comp_cfg = cfg.composite
        if part == "obstacles_cityscapes":
            comp_cfg = replace(comp_cfg, objects=cfg.cityscapes_objects)
        compositor = Compositor(objects, comp_cfg)
    shutil.rmtree(d, ignore_errors=True)
    for sub in ("images", "labels", ROADS):
        (d / sub).mkdir(parents=True)
    rows, px = [], {"inlier": 0, "anomaly": 0, "void": 0, "road": 0}
    for k, (name, image, label, road) in enumerate(hires_frames(part, root, cfg, road_fn)):
        if limit is not None and k >= limit:
            break
        objs: list[dict] = []
        if compositor is not None:
            c = compositor(image, label, ground_from_mask(road), obstacle_rng(seed, part, name))
            image, label, objs = c.image, c.label, c.objects
            for o in objs:
                o["bucket"] = size_bucket(o["pixels"])
        roi = (road | (label == ANOMALY)) & (label != VOID)
        Image.fromarray(image).save(d / "images" / f"{name}.jpg", quality=95)
        Image.fromarray(label).save(d / "labels" / f"{name}.png")
        Image.fromarray(roi.astype(np.uint8) * 255).save(d / ROADS / f"{name}.png")
        for key, v in (("inlier", INLIER), ("anomaly", ANOMALY), ("void", VOID)):
            px[key] += int(np.count_nonzero(label == v))
        px["road"] += int(np.count_nonzero(roi))
        rows.append({"name": name, "size": list(label.shape), "road_pixels": int(roi.sum()),
                     "objects": objs})
    if not rows:
        raise ValueError(f"protocol part {part}: no frames under {root}")
    objs = [o for r in rows for o in r["objects"]]
    heights = np.array([o["height_px"] for o in objs] or [0])
    manifest = {"part": part, "frames": len(rows), "pixels": px, "objects": len(objs),
                "frames_with_anomaly": sum(bool(r["objects"]) for r in rows),
                "buckets": {b: sum(o["bucket"] == b for o in objs) for b in SIZE_BUCKETS},
                "height_px": {q: float(np.quantile(heights, v)) for q, v in
                              (("min", 0.0), ("median", 0.5), ("max", 1.0))},
                "rows": rows}
    jsonio.write(d / "manifest.json", manifest)
    return {k: v for k, v in manifest.items() if k != "rows"}


__all__ = ["CARGO_CLASSES", "HIRES_CALIBRATION_PART", "HIRES_CLEAN_PARTS", "HIRES_PARTS",
           "OBSTACLE_PARTS", "ObstacleConfig", "ROADS", "RoadFn", "SIZE_BUCKETS",
           "build_hires_part", "cargo_source", "clean_road", "hires_frames", "obstacle_rng",
           "size_bucket", "vegetation_like"]
