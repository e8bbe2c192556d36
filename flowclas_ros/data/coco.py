"""COCO: its 80 classes, the class filters of outlier exposure, and its mask encodings.

Masks are decoded here, without pycocotools: polygons (rasterised with PIL) and run-length
encodings, uncompressed (a list of counts) and compressed (COCO's string form).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

# The 80 COCO detection classes: (official category id, name); a YOLO class index is the position.
COCO_CLASSES: tuple[tuple[int, str], ...] = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"),
    (7, "train"), (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"),
    (13, "stop sign"), (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"),
    (18, "dog"), (19, "horse"), (20, "sheep"), (21, "cow"), (22, "elephant"), (23, "bear"),
    (24, "zebra"), (25, "giraffe"), (27, "backpack"), (28, "umbrella"), (31, "handbag"),
    (32, "tie"), (33, "suitcase"), (34, "frisbee"), (35, "skis"), (36, "snowboard"),
    (37, "sports ball"), (38, "kite"), (39, "baseball bat"), (40, "baseball glove"),
    (41, "skateboard"), (42, "surfboard"), (43, "tennis racket"), (44, "bottle"),
    (46, "wine glass"), (47, "cup"), (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"),
    (52, "banana"), (53, "apple"), (54, "sandwich"), (55, "orange"), (56, "broccoli"),
    (57, "carrot"), (58, "hot dog"), (59, "pizza"), (60, "donut"), (61, "cake"), (62, "chair"),
    (63, "couch"), (64, "potted plant"), (65, "bed"), (67, "dining table"), (70, "toilet"),
    (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"), (76, "keyboard"),
    (77, "cell phone"), (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"),
    (82, "refrigerator"), (84, "book"), (85, "clock"), (86, "vase"), (87, "scissors"),
    (88, "teddy bear"), (89, "hair drier"), (90, "toothbrush"),
)
COCO_NAMES = dict(COCO_CLASSES)
YOLO_TO_COCO_ID = tuple(cid for cid, _ in COCO_CLASSES)

# COCO classes that also occur in road scenes (Cityscapes / CamVid classes and street furniture):
# 1 person, 2 bicycle, 3 car, 4 motorcycle, 6 bus, 7 train, 8 truck, 10 traffic light,
# 11 fire hydrant, 13 stop sign, 14 parking meter, 15 bench. Animals stay: they are anomalies
# on a road (Road Anomaly is full of them).
ROAD_SCENE_COCO_IDS = frozenset({1, 2, 3, 4, 6, 7, 8, 10, 11, 13, 14, 15})
# The authors' ALLO list (appliances that exist on a space station): 78 microwave, 79 oven,
# 80 toaster, 82 refrigerator, 87 scissors, 89 hair drier.
ALLO_COCO_IDS = frozenset({78, 79, 80, 82, 87, 89})
FILTERS = {"road": ROAD_SCENE_COCO_IDS, "allo": ALLO_COCO_IDS, "none": frozenset()}


def rle_decode(rle: dict) -> np.ndarray:
    """COCO run-length encoding -> (h, w) bool mask.

    ``rle = {"size": [h, w], "counts": list[int] | str}``: alternating runs of 0s and 1s (first
    run 0s) over the mask in column-major order; a string holds the compressed form.
    """
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        counts = rle_counts_from_string(counts)
    counts = np.asarray(counts, dtype=np.int64)
    if counts.sum() != h * w:
        raise ValueError(f"RLE counts sum to {int(counts.sum())}, expected h*w = {h * w}")
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape((w, h)).T.copy()


def rle_counts_from_string(s: str | bytes) -> list[int]:
    """Decode COCO's compressed RLE string (LEB128-like, 5 bits per char, delta from count i-2)."""
    if isinstance(s, bytes):
        s = s.decode("ascii")
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)  # sign-extend the last chunk
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts



def polygons_to_mask(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """Rasterise polygons ``[x1, y1, x2, y2, ...]`` (pixel coordinates) to an (h, w) bool mask.

    Filled with PIL (outline included); polygons with fewer than 3 points are skipped.
    """
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for poly in polygons:
        pts = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        if len(pts) >= 3:
            draw.polygon([tuple(p) for p in pts], fill=1, outline=1)
    return np.asarray(canvas, dtype=bool).copy()


def segmentation_to_mask(seg, height: int, width: int) -> np.ndarray:
    """Decode a COCO annotation's ``segmentation`` (polygon list or RLE dict) to a bool mask.

    The mask is (h, w).
    """
    if isinstance(seg, dict):
        mask = rle_decode(seg)
        if mask.shape != (height, width):
            raise ValueError(
                f"RLE size {mask.shape} differs from the image size {(height, width)}")
        return mask
    return polygons_to_mask(seg, height, width)


__all__ = ["ALLO_COCO_IDS", "COCO_CLASSES", "COCO_NAMES", "FILTERS", "ROAD_SCENE_COCO_IDS",
           "YOLO_TO_COCO_ID", "polygons_to_mask", "rle_counts_from_string", "rle_decode",
           "segmentation_to_mask"]
