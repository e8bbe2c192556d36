"""Road frames at the camera's own resolution (``../shared/data/hires-road``), split by drive.

Layout (``ROOT`` is the ``root`` argument, the ``hires-road`` folder):

* ``ROOT/kitti-raw/<drive>_<frame>.jpg``: KITTI raw, 1242x375, drives ``fmvg_data`` (a
  residential drive), ``cgebbe_input`` (one wide urban road), ``sceneflow_image_02`` (130
  distinct KITTI scene-flow scenes);
* ``ROOT/nuscenes-boston/boston_<folder>_<frame>.jpg``: nuScenes CAM_FRONT, 1600x900, Boston
  Seaport, folders ``image_2`` and ``testing``.

No labels and no anomalies: every pixel is INLIER except the ego car's hood in the nuScenes
frames, which is VOID (:func:`hood_mask`). The hood's top edge is the same curve in every frame
that shows it (a fixed camera on one car), measured on these frames: the per-column median of
the strongest downward brightness step in rows 740-890, over every frame, is fitted by a
degree-4 polynomial within 1.1 px (the hood covers rows 759 .. 900 at the centre, 804 at the
left edge, 844 at the right: 6 to 16 % of the height); :data:`HOOD_MARGIN` px above it are VOID
too (its soft, reflecting rim). ``boston_testing`` 0-8 (a parking lot) show no hood; the same
band is VOID there as well (it costs a little road, never a label error).

The split, shared by training (``train``) and the validation protocol (``protocol``), is by drive,
never at random (consecutive frames of a drive are near duplicates):

==========  ==============================================================================
split       frames
==========  ==============================================================================
train       ``fmvg_data`` (134), the first half of ``sceneflow_image_02`` by frame index (65),
            ``boston_image_2`` (100) and ``boston_testing`` 52-80 (29; see below)
protocol    ``cgebbe_input`` (46), the second half of ``sceneflow_image_02`` (65),
            ``boston_testing`` 0-51 and 81-98 (70)
==========  ==============================================================================

``boston_image_2`` and ``boston_testing`` are *not* separate drives: checked on contact sheets
and by thumbnail correlation, ``boston_testing`` 59-78 are the streets, parked cars and moments
of ``boston_image_2`` 0-99 (every fifth frame or so; correlation 0.8-0.98), and 52-58 and 79-80
are the same drive just before and after. So ``boston_testing`` 52-80 go to the training side
with ``boston_image_2``; the other testing frames (best correlation with any ``image_2`` frame
0.71, different streets when looked at) are held out.

The protocol further divides its frames (:data:`PROTOCOL_ROLES`, splits ``protocol_pasted`` and
``protocol_clean``), again by drive: the clean frames the threshold is calibrated on
(``cgebbe_input``, ``boston_testing`` 81-98) never share a drive with the frames that get
obstacles (``sceneflow_image_02`` second half, ``boston_testing`` 0-51).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..labels import INLIER, VOID
from .frames import ImageDataset, Record, binary_label
from .layout import check_root, images_in, no_frames

SPLITS = ("train", "protocol", "protocol_pasted", "protocol_clean")
KITTI_DIR, NUSCENES_DIR = "kitti-raw", "nuscenes-boston"
DRIVES = ("fmvg_data", "cgebbe_input", "sceneflow_image_02", "boston_image_2", "boston_testing")
BOSTON_TESTING_SHARED = range(52, 81)  # the drive of boston_image_2 (train side)
BOSTON_TESTING_CLEAN = range(81, 99)  # protocol_clean; 0-51 are protocol_pasted
# y / H of the hood's top edge as a polynomial of x / (W - 1) (highest power first)
HOOD_POLY = (-0.1066, 0.1937, 0.1706, -0.2137, 0.8938)
HOOD_MARGIN = 6  # px (at 900 rows) above the fitted edge that are VOID too
_NAME = re.compile(r"^(?P<drive>.+)_(?P<frame>\d+)$")


def drive_and_frame(name: str) -> tuple[str, int]:
    """``sceneflow_image_02_000120`` -> (``sceneflow_image_02``, 120); unknown drives raise."""
    m = _NAME.match(name)
    if m is None or m["drive"] not in DRIVES:
        raise ValueError(f"hires_road: {name!r} is not <drive>_<frame> of a known drive "
                         f"{DRIVES}")
    return m["drive"], int(m["frame"])


def hood_mask(shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: the ego car's hood (and its rim) in a nuScenes CAM_FRONT frame of that size."""
    h, w = shape
    x = np.arange(w, dtype=np.float64) / max(w - 1, 1)
    top = np.polyval(HOOD_POLY, x) * h - HOOD_MARGIN * h / 900.0
    return np.arange(h, dtype=np.float64)[:, None] >= top[None, :]


def has_hood(name: str) -> bool:
    return name.startswith("boston_")


def roles(names: list[str]) -> dict[str, str]:
    """Frame name -> "train", "protocol_pasted" or "protocol_clean" (see the module docstring).

    The sceneflow frames are halved by position in the sorted list of the frames present (the
    first half by frame index is train), so the split is by index even with gaps.
    """
    flow = sorted((drive_and_frame(n)[1], n) for n in names
                  if drive_and_frame(n)[0] == "sceneflow_image_02")
    flow_train = {n for _, n in flow[: len(flow) // 2]}
    out = {}
    for n in names:
        drive, frame = drive_and_frame(n)
        if drive in ("fmvg_data", "boston_image_2"):
            role = "train"
        elif drive == "cgebbe_input":
            role = "protocol_clean"
        elif drive == "sceneflow_image_02":
            role = "train" if n in flow_train else "protocol_pasted"
        elif frame in BOSTON_TESTING_SHARED:
            role = "train"
        else:
            role = "protocol_clean" if frame in BOSTON_TESTING_CLEAN else "protocol_pasted"
        out[n] = role
    return out


PROTOCOL_ROLES = ("protocol_pasted", "protocol_clean")


class HiresRoadDataset(ImageDataset):
    """The hires-road frames of one split: all INLIER, the nuScenes hood VOID."""

    def load_label(self, rec: Record, shape: tuple[int, int]) -> np.ndarray:
        label = np.full(shape, INLIER, dtype=np.uint8)
        if has_hood(rec.name):
            label[hood_mask(shape)] = VOID
        return label


def hires_road(root: str | Path, split: str | None = None) -> HiresRoadDataset:
    """Read hires-road frames of ``split`` (train, protocol, protocol_pasted, protocol_clean)."""
    name = "hires_road"
    root = check_root(root, name)
    split = split or "train"
    if split not in SPLITS:
        raise ValueError(f"{name}: unknown split {split!r}; expected one of {SPLITS}")
    layout = (f"ROOT/{KITTI_DIR}/<drive>_<frame>.jpg and ROOT/{NUSCENES_DIR}/boston_<folder>_"
              f"<frame>.jpg, drives {DRIVES}")
    images = [p for d in (KITTI_DIR, NUSCENES_DIR) if (root / d).is_dir()
              for p in images_in(root / d)]
    if not images:
        raise no_frames(name, root, layout)
    role = roles([p.stem for p in images])
    keep = {split} if split != "protocol" else set(PROTOCOL_ROLES)
    records = [Record(p.stem, p, None) for p in sorted(images, key=lambda p: p.stem)
               if role[p.stem] in keep]
    if not records:
        raise no_frames(name, root, f"{layout} (none in split {split!r})")
    return HiresRoadDataset(records, binary_label, dataset=name, root=root, split=split)


__all__ = ["BOSTON_TESTING_CLEAN", "BOSTON_TESTING_SHARED", "DRIVES", "HOOD_POLY",
           "HiresRoadDataset", "PROTOCOL_ROLES", "SPLITS", "drive_and_frame", "has_hood",
           "hires_road", "hood_mask", "roles"]
