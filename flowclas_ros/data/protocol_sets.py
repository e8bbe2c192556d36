"""The frames of the validation protocol, built from ../shared/data only (no anomaly benchmark).

Every part is a folder dataset (``images/<name>.jpg``, ``labels/<name>.png`` with INLIER 0,
ANOMALY 1, VOID 255, read back with ``build_dataset("folder", part)``) plus ``manifest.json``;
``protocol.json`` at the top lists the parts. :mod:`flowclas_ros.evaluation.protocol` scores a
model on them and turns the figures into the selection score.

========================  =========================================================================
part                      what it measures
========================  =========================================================================
``kitti_pasted``          KITTI Road (a camera, country and road style no model here trains on),
                          16:9 crops, held-out COCO instances composited on the road
                          (:mod:`.compositing`): detection in an unseen domain
``idd_pasted``            IDD Lite val (India: rural roads, dirt, other traffic), composited;
                          unseen unless IDD is among the training sets
``camvid_pasted``         CamVid val + test, composited: the training domain of the demo model
``kitti_classes``         KITTI, composited with the held-out *classes* (:data:`HELD_OUT_CLASSES`,
                          never pasted in training): generalisation beyond the pasted classes
``kitti_clean``           other 16:9 crops of the KITTI frames, nothing pasted: the clean
                          frames of an unseen domain that ``export`` calibrates the threshold on
``cityscapes_clean``      the 8 Cityscapes sample frames at half resolution: a second unseen
                          domain on which the calibrated false-positive rate is checked
``camvid_hardcopy``       the previous yardstick (:mod:`.validation_set`: hard-copied objects on
                          CamVid val + test), kept to show how much it overstates
========================  =========================================================================

These seven (:data:`LEGACY_PARTS`, the default of :class:`ProtocolConfig`) are built exactly as
they always were. The second protocol (:data:`FULL_PARTS`, ``protocol.json`` version 2) adds the
small-obstacle parts at camera resolution (:mod:`.obstacle_sets`: :data:`~.obstacle_sets.
HIRES_PARTS`), which need a road segmentation for their unlabelled frames: ``road_fn`` here, or
:func:`flowclas_ros.evaluation.protocol_build.build_protocol`, which passes the Cityscapes
ESPNetv2's.

The outlier source is split twice, both deterministically: by image (``default_outlier_split``,
the held-out quarter of the photographs) and by class (:data:`HELD_OUT_CLASSES`). Composited
parts use held-out images of the other classes; ``kitti_classes`` the held-out classes from any
image. Training pastes only training images of the other classes (``data.outlier_holdout`` and
``data.held_out_classes``), so no pasted object of the protocol was ever seen in training.

CLI::

    python -m flowclas_ros.tools.build_protocol --data ../shared/data --out runs/protocol
"""
from __future__ import annotations

import json
import shutil
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from .. import jsonio
from ..labels import ANOMALY, INLIER, VOID
from .compositing import CompositeConfig, Compositor, Ground, estimate_ground, ground_from_mask
from .frames import read_label
from .inlier_sets import camvid, cityscapes, idd_lite, kitti_road
from .obstacle_sets import (
    HIRES_PARTS,
    OBSTACLE_PARTS,
    ObstacleConfig,
    RoadFn,
    build_hires_part,
    cargo_source,
)
from .outlier_sources import (
    DEFAULT_SPLIT_SEED,
    DEFAULT_VAL_FRACTION,
    OutlierSource,
    default_outlier_split,
    load_outlier_source,
)

FORMAT = "flowclas_ros.validation_protocol"
VERSION = 2  # 1: the seven legacy parts; 2: with the small-obstacle parts
PROTOCOL_FILE = "protocol.json"
# COCO classes that training never pastes, so ``kitti_classes`` measures generalisation beyond
# the pasted classes: roadside and lost-cargo-like objects; animals stay in training (they are
# the commonest real road anomaly).
HELD_OUT_CLASSES = ("umbrella", "potted plant", "clock", "suitcase", "backpack", "handbag")
ROAD_IDS = {"camvid": (3,), "idd_lite": (0,), "cityscapes": (0,)}  # raw ids of the road surface
KITTI_ASPECT = 16 / 9  # web photographs and most robot cameras, not KITTI's 3.3:1 stereo crop
LEGACY_PARTS = ("kitti_pasted", "idd_pasted", "camvid_pasted", "kitti_classes", "kitti_clean",
                "cityscapes_clean", "camvid_hardcopy")
FULL_PARTS = LEGACY_PARTS + HIRES_PARTS


@dataclass
class ProtocolConfig:
    """What the protocol is built from; the defaults are the documented protocol.

    ``parts``: the legacy seven; :data:`FULL_PARTS` with the small-obstacle parts.
    """

    seed: int = 0
    outliers: str = "coco128-seg"  # relative to the data root
    outlier_filter: str = "road"
    split_seed: int = DEFAULT_SPLIT_SEED
    val_fraction: float = DEFAULT_VAL_FRACTION
    held_out_classes: tuple[str, ...] = HELD_OUT_CLASSES
    composite: CompositeConfig = field(default_factory=CompositeConfig)
    parts: tuple[str, ...] = LEGACY_PARTS
    limit: int | None = None  # frames per part (tests)
    obstacles: ObstacleConfig = field(default_factory=ObstacleConfig)  # the small-obstacle parts


def frame_rng(seed: int, part: str, name: str) -> np.random.Generator:
    """One frame's generator: independent of the order and number of frames built."""
    return np.random.default_rng([int(seed), zlib.crc32(part.encode()), zlib.crc32(name.encode())])


def crop_aspect(image: np.ndarray, aspect: float, rng: np.random.Generator) -> np.ndarray:
    """Crop to width ``aspect * H``, full height, at a random offset (the frame if narrower)."""
    h, w = image.shape[:2]
    cw = min(w, int(round(aspect * h)))
    x = int(rng.integers(0, w - cw + 1))
    return np.ascontiguousarray(image[:, x:x + cw])


def outlier_parts(cfg: ProtocolConfig, data_root: Path) -> dict[str, OutlierSource]:
    """Return the instances the protocol composites.

    {"held_out": other classes, held-out images; "held_out_classes": the held-out classes}.
    """
    src = load_outlier_source(data_root / cfg.outliers, filter=cfg.outlier_filter,
                              granularity="instance")
    others, classes = src.split_by_category(cfg.held_out_classes)
    _, held = default_outlier_split(others, seed=cfg.split_seed, val_fraction=cfg.val_fraction)
    if len(held) == 0 or len(classes) == 0:
        raise ValueError(f"{data_root / cfg.outliers}: too few outlier instances for the "
                         f"protocol ({len(held)} held-out, {len(classes)} of the held-out "
                         f"classes)")
    return {"held_out": held, "held_out_classes": classes}


Frame = tuple[str, np.ndarray, np.ndarray, Ground | None]  # name, image, label, ground


def _kitti_frames(root: Path, cfg: ProtocolConfig, part: str,
                  with_ground: bool) -> Iterator[Frame]:
    ds = kitti_road(root / "kitti-road")
    for i in range(len(ds)):
        s = ds[i]
        img = crop_aspect(s.image, KITTI_ASPECT, frame_rng(cfg.seed, part + "/crop", s.name))
        label = np.full(img.shape[:2], INLIER, np.uint8)
        yield s.name, img, label, estimate_ground(img) if with_ground else None


def _labelled_frames(ds, dataset: str) -> Iterator[Frame]:
    road = ROAD_IDS[dataset]
    for i in range(len(ds)):
        s, rec = ds[i], ds.records[i]
        raw = read_label(rec.label)
        yield (f"{ds.split}_{s.name.replace('/', '_')}", s.image, s.label,
               ground_from_mask(np.isin(raw, road) & (s.label != VOID)))


def _frames(part: str, root: Path, cfg: ProtocolConfig) -> Iterator[Frame]:
    if part in ("kitti_pasted", "kitti_classes"):
        return _kitti_frames(root, cfg, part, True)
    if part == "kitti_clean":
        return _kitti_frames(root, cfg, part, False)
    if part == "idd_pasted":
        return _labelled_frames(idd_lite(root / "idd-lite", "val"), "idd_lite")
    if part == "camvid_pasted":
        def both():
            for split in ("val", "test"):
                yield from _labelled_frames(camvid(root / "camvid", split), "camvid")
        return both()
    if part == "cityscapes_clean":
        def half():
            ds = cityscapes(root / "cityscapes-sample", "train")
            for i in range(len(ds)):
                s = ds[i]
                h, w = s.label.shape
                img = np.asarray(Image.fromarray(s.image).resize((w // 2, h // 2), Image.BILINEAR))
                lab = np.asarray(Image.fromarray(s.label).resize((w // 2, h // 2), Image.NEAREST))
                yield s.name.replace("/", "_"), img, lab, None
        return half()
    raise ValueError(f"unknown protocol part {part!r}")


def _composer(compositor: Compositor, seed: int, part: str):
    """(name, image, label, ground) -> (image, label, objects), each frame with its own draw."""
    def compose(name, image, label, ground):
        c = compositor(image, label, ground, frame_rng(seed, part, name))
        return c.image, c.label, c.objects
    return compose


def _write_part(out: Path, part: str, frames: Iterator[Frame],
                compose: Callable[[str, np.ndarray, np.ndarray, Ground], tuple] | None,
                limit: int | None) -> dict:
    d = out / part
    shutil.rmtree(d, ignore_errors=True)
    (d / "images").mkdir(parents=True)
    (d / "labels").mkdir()
    rows, px = [], {"inlier": 0, "anomaly": 0, "void": 0}
    for k, (name, image, label, ground) in enumerate(frames):
        if limit is not None and k >= limit:
            break
        objects = []
        if compose is not None:
            image, label, objects = compose(name, image, label, ground)
        Image.fromarray(image).save(d / "images" / f"{name}.jpg", quality=95)
        Image.fromarray(label).save(d / "labels" / f"{name}.png")
        for key, v in (("inlier", INLIER), ("anomaly", ANOMALY), ("void", VOID)):
            px[key] += int(np.count_nonzero(label == v))
        rows.append({"name": name, "size": list(label.shape), "objects": objects})
    manifest = {"part": part, "frames": len(rows), "pixels": px,
                "frames_with_anomaly": sum(bool(r["objects"]) for r in rows), "rows": rows}
    jsonio.write(d / "manifest.json", manifest)
    return {k: v for k, v in manifest.items() if k != "rows"}


def build_protocol(data_root: str | Path, out: str | Path, cfg: ProtocolConfig | None = None,
                   log: Callable[[str], None] = print, road_fn: RoadFn | None = None) -> dict:
    """Write every part of ``cfg.parts`` under ``out`` and return the protocol description.

    ``road_fn(image) -> (H, W) bool``: the drivable surface of an unlabelled frame, needed by
    the small-obstacle parts of KITTI and nuScenes frames (:mod:`.obstacle_sets`).
    """
    cfg = cfg or ProtocolConfig()
    root, out = Path(data_root), Path(out)
    unknown = [p for p in cfg.parts if p not in FULL_PARTS]
    if unknown:
        raise ValueError(f"unknown protocol parts {unknown}; known: {FULL_PARTS}")
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    (out / PROTOCOL_FILE).unlink(missing_ok=True)  # written last: marks a complete build
    sources = outlier_parts(cfg, root)
    obstacles = None
    if any(p in OBSTACLE_PARTS for p in cfg.parts):
        obstacles = cargo_source(sources["held_out"], sources["held_out_classes"], cfg.obstacles)
    summary = {}
    for part in cfg.parts:
        t = time.perf_counter()
        if part in HIRES_PARTS:
            summary[part] = build_hires_part(part, root, out, cfg.obstacles, cfg.seed, obstacles,
                                             road_fn, cfg.limit)
        elif part == "camvid_hardcopy":
            from .validation_set import build_validation_set

            # exactly the previous validation set: image-level objects, its own seeds
            full = load_outlier_source(root / cfg.outliers, filter=cfg.outlier_filter)
            held = default_outlier_split(full, cfg.split_seed, cfg.val_fraction)[1]
            m = build_validation_set(root / "camvid", held, out / part, seed=cfg.seed,
                                     limit=cfg.limit)
            summary[part] = {"frames": m["counts"]["frames"], "pixels": m["counts"]["pixels"]}
        else:
            compose = None
            if part.endswith("_pasted") or part == "kitti_classes":
                src = sources["held_out_classes" if part == "kitti_classes" else "held_out"]
                compose = _composer(Compositor(src, cfg.composite), cfg.seed, part)
            summary[part] = _write_part(out, part, _frames(part, root, cfg), compose, cfg.limit)
        log(f"protocol part {part}: {summary[part]['frames']} frames in "
            f"{time.perf_counter() - t:.1f} s")
    version = VERSION if any(p in HIRES_PARTS for p in cfg.parts) else 1
    outliers = {k: len(v) for k, v in sources.items()}
    if obstacles is not None:
        outliers["obstacles"] = dict(obstacles.info)
    desc = {"format": FORMAT, "version": version, "config": jsonio.to_json(asdict(cfg)),
            "data_root": str(root), "outliers": outliers,
            "parts": summary, "seconds": round(time.perf_counter() - t0, 1)}
    jsonio.write(out / PROTOCOL_FILE, desc)
    return desc


def load_protocol(path: str | Path) -> dict:
    """Load the description of a complete protocol build.

    A missing build raises FileNotFoundError naming how to build it.
    """
    f = Path(path) / PROTOCOL_FILE
    if not f.is_file():
        raise FileNotFoundError(f"{path} is not a built validation protocol (no {PROTOCOL_FILE}): "
                                f"build it with python -m flowclas_ros.tools.build_protocol "
                                f"--data ../shared/data --out {path}")
    desc = json.loads(f.read_text())
    if desc.get("format") != FORMAT or desc.get("version", 0) > VERSION:
        raise ValueError(f"{f}: not a validation protocol this flowclas_ros reads")
    return desc


__all__ = ["FULL_PARTS", "HELD_OUT_CLASSES", "LEGACY_PARTS", "ProtocolConfig", "build_protocol",
           "crop_aspect", "frame_rng", "load_protocol", "outlier_parts"]
