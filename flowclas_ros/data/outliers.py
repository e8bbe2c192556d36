"""Outlier exposure (METHOD.md section 4): COCO objects pasted into inlier frames.

Sources (``load_outlier_source`` detects the layout):

* the official COCO instances JSON (``annotations/instances_<split>.json`` beside the image
  folder ``<split>/``), polygons and RLE (compressed and uncompressed) decoded here, without
  pycocotools;
* YOLO-seg polygon files (``images/<split>/<id>.jpg`` + ``labels/<split>/<id>.txt``, lines
  ``class x1 y1 x2 y2 ...`` normalised to [0, 1], ``class`` an index into the 80 COCO classes),
  the layout of ``coco128-seg``;
* mask PNGs (``images/`` + ``masks/``, or Meta-OoD's ``<split>/`` + ``ood_seg_<split>/``):
  nonzero mask pixels are object pixels.

A source is a lazy ``Sequence[OutlierObject]``: one entry per kept COCO image, whose mask is the
union of all its annotated instances. The class filter drops every image containing a class that
also occurs in the inlier domain (``filter="road"``: :data:`ROAD_SCENE_COCO_IDS`; ``"allo"``:
:data:`ALLO_COCO_IDS`, the authors' list for the space domain; ``"none"``).

:class:`OutlierPaster` mixes one object into an inlier frame and returns the auxiliary outlier
image too; all randomness comes from the ``numpy.random.Generator`` passed in.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw

from .datasets import ANOMALY, IGNORE, INLIER, IMAGE_EXTS, read_image

# The 80 COCO detection classes: (official category id, name); a YOLO class index is the position.
COCO_CLASSES: tuple[tuple[int, str], ...] = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"),
    (7, "train"), (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"),
    (13, "stop sign"), (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"),
    (19, "horse"), (20, "sheep"), (21, "cow"), (22, "elephant"), (23, "bear"), (24, "zebra"),
    (25, "giraffe"), (27, "backpack"), (28, "umbrella"), (31, "handbag"), (32, "tie"),
    (33, "suitcase"), (34, "frisbee"), (35, "skis"), (36, "snowboard"), (37, "sports ball"),
    (38, "kite"), (39, "baseball bat"), (40, "baseball glove"), (41, "skateboard"),
    (42, "surfboard"), (43, "tennis racket"), (44, "bottle"), (46, "wine glass"), (47, "cup"),
    (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"),
    (54, "sandwich"), (55, "orange"), (56, "broccoli"), (57, "carrot"), (58, "hot dog"),
    (59, "pizza"), (60, "donut"), (61, "cake"), (62, "chair"), (63, "couch"), (64, "potted plant"),
    (65, "bed"), (67, "dining table"), (70, "toilet"), (72, "tv"), (73, "laptop"), (74, "mouse"),
    (75, "remote"), (76, "keyboard"), (77, "cell phone"), (78, "microwave"), (79, "oven"),
    (80, "toaster"), (81, "sink"), (82, "refrigerator"), (84, "book"), (85, "clock"), (86, "vase"),
    (87, "scissors"), (88, "teddy bear"), (89, "hair drier"), (90, "toothbrush"),
)
COCO_NAMES = {cid: name for cid, name in COCO_CLASSES}
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

DEFAULT_SPLIT_SEED = 0
DEFAULT_VAL_FRACTION = 0.25


# --------------------------------------------------------------------------------------------
# Mask decoding


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


def rle_encode(mask: np.ndarray) -> dict:
    """(h, w) bool mask -> uncompressed COCO RLE ``{"size": [h, w], "counts": [...]}``."""
    h, w = mask.shape
    flat = np.asarray(mask, dtype=bool).T.reshape(-1)
    change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": [h, w], "counts": counts}


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


def rle_counts_to_string(counts: Sequence[int]) -> str:
    """Inverse of :func:`rle_counts_from_string`."""
    out = []
    for i, x in enumerate(counts):
        x = int(x) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


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
    """A COCO annotation's ``segmentation`` (polygon list or RLE dict) -> (h, w) bool mask."""
    if isinstance(seg, dict):
        mask = rle_decode(seg)
        if mask.shape != (height, width):
            raise ValueError(f"RLE size {mask.shape} differs from the image size {(height, width)}")
        return mask
    return polygons_to_mask(seg, height, width)


# --------------------------------------------------------------------------------------------
# Sources


@dataclass
class OutlierObject:
    """One outlier image: ``image`` (h, w, 3) uint8 RGB, ``mask`` (h, w) bool object pixels."""

    image: np.ndarray
    mask: np.ndarray
    source: str


@dataclass(frozen=True)
class _CocoEntry:
    key: str
    image: Path
    height: int
    width: int
    segmentations: tuple

    def load(self) -> OutlierObject:
        image = read_image(self.image)
        h, w = image.shape[:2]
        mask = np.zeros((h, w), dtype=bool)
        for seg in self.segmentations:
            mask |= segmentation_to_mask(seg, h, w)
        return OutlierObject(image, mask, str(self.image))


@dataclass(frozen=True)
class _YoloEntry:
    key: str
    image: Path
    polygons: tuple  # normalised [x1, y1, ...] per instance

    def load(self) -> OutlierObject:
        image = read_image(self.image)
        h, w = image.shape[:2]
        scale = np.array([w, h], dtype=np.float64)
        polys = [(np.asarray(p).reshape(-1, 2) * scale).reshape(-1) for p in self.polygons]
        return OutlierObject(image, polygons_to_mask(polys, h, w), str(self.image))


@dataclass(frozen=True)
class _MaskEntry:
    key: str
    image: Path
    mask: Path

    def load(self) -> OutlierObject:
        image = read_image(self.image)
        with Image.open(self.mask) as m:
            raw = np.asarray(m)
        if raw.ndim == 3:
            raw = raw[..., :3].max(axis=2)
        if raw.shape != image.shape[:2]:
            raise ValueError(f"mask {self.mask} is {raw.shape}, "
                             f"image {self.image} is {image.shape[:2]}")
        return OutlierObject(image, raw > 0, str(self.image))


class OutlierSource(Sequence[OutlierObject]):
    """Lazily decoded outlier images (class filter already applied), sorted by ``keys``."""

    def __init__(self, entries: Sequence, *, kind: str, root: Path, filter: str,
                 info: dict | None = None):
        self.entries = list(entries)
        self.kind = kind
        self.root = Path(root)
        self.filter = filter
        self.info = dict(info or {})

    @property
    def keys(self) -> list[str]:
        """Stable ids (COCO image id / file stem) of the entries."""
        return [e.key for e in self.entries]

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> OutlierObject:  # type: ignore[override]
        return self.entries[i].load()

    def __iter__(self) -> Iterator[OutlierObject]:
        for e in self.entries:
            yield e.load()

    def _subset(self, idx: Sequence[int], part: str) -> "OutlierSource":
        return OutlierSource([self.entries[i] for i in idx], kind=self.kind, root=self.root,
                             filter=self.filter, info={**self.info, "part": part})

    def split(self, val_fraction: float, seed: int) -> tuple["OutlierSource", "OutlierSource"]:
        """Deterministic disjoint (train, held-out) parts; held-out has round(f * n) entries.

        Entries are ranked by a hash of (seed, key), so an entry's side depends only on its key,
        the seed and the size of the source, never on file system order.
        """
        if not 0.0 <= val_fraction <= 1.0:
            raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")
        n = len(self)
        n_val = int(round(val_fraction * n))
        if 0 < val_fraction < 1 and n >= 2:
            n_val = min(max(n_val, 1), n - 1)  # both parts non-empty
        keys = [e.key for e in self.entries]
        digest = [hashlib.sha1(f"{seed}:{k}".encode()).hexdigest() for k in keys]
        rank = sorted(range(n), key=lambda i: (digest[i], keys[i]))
        held = sorted(rank[:n_val])
        held_set = set(held)
        train = [i for i in range(n) if i not in held_set]
        return self._subset(train, "train"), self._subset(held, "held_out")

    def __repr__(self) -> str:
        return (f"OutlierSource(kind={self.kind!r}, root={str(self.root)!r}, "
                f"filter={self.filter!r}, objects={len(self)})")


def default_outlier_split(source: OutlierSource, seed: int = DEFAULT_SPLIT_SEED,
                          val_fraction: float = DEFAULT_VAL_FRACTION
                          ) -> tuple[OutlierSource, OutlierSource]:
    """The (train, held-out) split shared by training and the validation set builder.

    Training pastes only ``train``; the pasted-CamVid validation set only ``held_out``: calling
    this with the same source, seed and fraction on both sides keeps the two disjoint.
    """
    return source.split(val_fraction, seed)


def _excluded(filter: str) -> frozenset:
    if filter not in FILTERS:
        raise ValueError(f"unknown class filter {filter!r}; expected one of {sorted(FILTERS)}")
    return FILTERS[filter]


def _find_images_dir(json_path: Path, split: str) -> Path | None:
    root = json_path.parent.parent
    return next((c for c in (root / split, root / "images" / split, json_path.parent / split)
                 if c.is_dir()), None)


def load_coco_json(json_path: str | Path, images: str | Path | None = None, *, filter: str = "road",
                   include_crowd: bool = True) -> OutlierSource:
    """Official COCO instances JSON: one entry per image with at least one kept instance.

    Images with any instance of an excluded class are dropped entirely (the object would
    otherwise be pasted into an inlier frame as an outlier while also being an inlier class).
    """
    json_path = Path(json_path)
    excluded_names = {COCO_NAMES[i] for i in _excluded(filter)}
    with open(json_path, encoding="utf-8") as f:
        data = json.load(f)
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise ValueError(f"{json_path} has no {key!r}: not a COCO instances file")
    split = json_path.stem.split("_", 1)[-1]  # instances_train2017 -> train2017
    images_dir = Path(images) if images else _find_images_dir(json_path, split)
    if images_dir is None or not images_dir.is_dir():
        raise FileNotFoundError(f"no image folder for {json_path}: looked for {split}/ and "
                                f"images/{split}/ beside annotations/; pass images=")
    bad_cats = {c["id"] for c in data["categories"] if c["name"] in excluded_names}
    anns: dict[int, list] = {}
    for a in data["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    entries, n_dropped = [], 0
    for im in sorted(data["images"], key=lambda r: r["id"]):
        a = anns.get(im["id"], [])
        if any(x["category_id"] in bad_cats for x in a):
            n_dropped += 1
            continue
        segs = tuple(x["segmentation"] for x in a
                     if x.get("segmentation") and (include_crowd or not x.get("iscrowd", 0)))
        if not segs:
            continue
        entries.append(_CocoEntry(Path(im["file_name"]).stem, images_dir / im["file_name"],
                                  int(im["height"]), int(im["width"]), segs))
    return OutlierSource(entries, kind="coco_json", root=json_path, filter=filter,
                         info={"images": len(data["images"]), "dropped_by_filter": n_dropped})


def parse_yolo_labels(path: Path) -> list[tuple[int, list[float]]]:
    """YOLO-seg label file -> [(class index, [x1, y1, ...] normalised)] (malformed lines raise)."""
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            cls, coords = int(parts[0]), [float(v) for v in parts[1:]]
        except ValueError as e:
            raise ValueError(f"{path}:{n}: not a YOLO-seg line ({e})") from None
        if len(coords) % 2:
            raise ValueError(f"{path}:{n}: odd number of polygon coordinates")
        out.append((cls, coords))
    return out


def load_yolo_seg(root: str | Path, split: str | None = None, *,
                  filter: str = "road") -> OutlierSource:
    """YOLO-seg ``root/images/<split>/*`` + ``root/labels/<split>/*.txt`` (the 80 COCO classes)."""
    root = Path(root)
    excluded = _excluded(filter)
    if split is None:
        labels = root / "labels"
        subs = sorted(p.name for p in labels.iterdir() if p.is_dir()) if labels.is_dir() else []
        split = subs[0] if subs else ""
    images_dir, labels_dir = root / "images" / split, root / "labels" / split
    if not images_dir.is_dir() or not labels_dir.is_dir():
        raise FileNotFoundError(f"no images/{split} and labels/{split} under {root}: expected the "
                                "YOLO-seg layout images/<split>/<id>.jpg + labels/<split>/<id>.txt")
    images = {p.stem: p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS}
    entries, n_dropped, n_images = [], 0, 0
    for txt in sorted(labels_dir.glob("*.txt")):
        if txt.stem not in images:
            continue
        n_images += 1
        inst = parse_yolo_labels(txt)
        if any(not 0 <= c < len(YOLO_TO_COCO_ID) for c, _ in inst):
            raise ValueError(f"{txt}: class index outside the 80 COCO classes")
        if any(YOLO_TO_COCO_ID[c] in excluded for c, _ in inst):
            n_dropped += 1
            continue
        polys = tuple(tuple(p) for _, p in inst if len(p) >= 6)
        if polys:
            entries.append(_YoloEntry(txt.stem, images[txt.stem], polys))
    return OutlierSource(entries, kind="yolo_seg", root=root, filter=filter,
                         info={"split": split, "images": n_images, "dropped_by_filter": n_dropped})


def load_mask_pngs(images: str | Path, masks: str | Path, *, annotations: str | Path | None = None,
                   filter: str = "road") -> OutlierSource:
    """Images + mask PNGs paired by stem (nonzero = object).

    The class filter needs the COCO instances JSON (``annotations``, file stems being COCO image
    ids); without it the masks are taken as already filtered (as Meta-OoD's ``ood_seg`` masks are).
    """
    images, masks = Path(images), Path(masks)
    for d in (images, masks):
        if not d.is_dir():
            raise FileNotFoundError(f"mask-PNG outlier source: folder {d} does not exist")
    bad_ids: set[str] = set()
    if annotations is not None and filter != "none":
        excluded_names = {COCO_NAMES[i] for i in _excluded(filter)}
        with open(annotations, encoding="utf-8") as f:
            data = json.load(f)
        bad_cats = {c["id"] for c in data["categories"] if c["name"] in excluded_names}
        id2stem = {im["id"]: Path(im["file_name"]).stem for im in data["images"]}
        bad_ids = {id2stem[a["image_id"]] for a in data["annotations"]
                   if a["category_id"] in bad_cats}
    image_files = {p.stem: p for p in images.iterdir() if p.suffix.lower() in IMAGE_EXTS}
    entries, n_dropped = [], 0
    for m in sorted(masks.glob("*.png")):
        if m.stem not in image_files:
            continue
        if m.stem in bad_ids:
            n_dropped += 1
            continue
        entries.append(_MaskEntry(m.stem, image_files[m.stem], m))
    if not entries and not n_dropped:
        raise FileNotFoundError(f"no mask {masks}/<name>.png matches an image in {images}")
    return OutlierSource(entries, kind="mask_png", root=masks,
                         filter=filter if annotations is not None else "none (pre-filtered)",
                         info={"dropped_by_filter": n_dropped})


def load_outlier_source(path: str | Path, **kw) -> OutlierSource:
    """Detect the layout of ``path`` and load it (keywords go to the loader).

    * ``*.json``: a COCO instances file (``images=``, ``filter=``, ``include_crowd=``);
    * a COCO root with ``annotations/instances_<split>.json`` (``split=``, default ``train2017``);
    * a YOLO-seg root with ``images/<split>/`` and ``labels/<split>/`` (``split=``);
    * mask PNGs: ``images/`` + ``masks/``, or ``<split>/`` + ``ood_seg_<split>/`` (``split=``,
      ``annotations=`` for the class filter).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"outlier source {path} does not exist")
    split = kw.pop("split", None)  # a .json names its own split
    if path.is_file():
        if path.suffix == ".json":
            return load_coco_json(path, **kw)
        raise ValueError(f"outlier source {path} is a file but not a COCO .json")
    ann_dir = path / "annotations"
    if (path / "labels").is_dir() and (path / "images").is_dir():
        return load_yolo_seg(path, split, **kw)
    if (path / "images").is_dir() and (path / "masks").is_dir():
        return load_mask_pngs(path / "images", path / "masks", **kw)
    split = split or "train2017"
    if (path / f"ood_seg_{split}").is_dir() and (path / split).is_dir():
        ann = ann_dir / f"instances_{split}.json"
        kw.setdefault("annotations", ann if ann.is_file() else None)
        return load_mask_pngs(path / split, path / f"ood_seg_{split}", **kw)
    if (ann_dir / f"instances_{split}.json").is_file():
        return load_coco_json(ann_dir / f"instances_{split}.json", **kw)
    raise FileNotFoundError(
        f"outlier source {path}: no known layout. Expected a COCO instances .json, a COCO root "
        f"with annotations/instances_{split}.json, a YOLO-seg root with images/<split>/ + "
        "labels/<split>/, or images/ + masks/ (or <split>/ + ood_seg_<split>/)")


# --------------------------------------------------------------------------------------------
# Pasting


@dataclass
class PasteConfig:
    """How objects are mixed in (METHOD.md section 4; defaults are the authors' road setting).

    ``scales``: rescale factors drawn uniformly (repeats weight them); ``paste_prob``: chance a
    frame gets an object; ``grey_prob``: chance the object is converted to grey (0.5 for ALLO);
    ``aux_background``: the auxiliary image's background is ``"inlier"`` (road) or ``"ignore"``
    (ALLO).
    """

    scales: tuple = (0.1, 0.125, 0.25, 0.5, 0.5, 0.75)
    paste_prob: float = 1.0
    grey_prob: float = 0.0
    aux_background: str = "inlier"

    def __post_init__(self):
        self.scales = tuple(float(s) for s in self.scales)
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ValueError(f"scales must be positive, got {self.scales}")
        if self.aux_background not in ("inlier", "ignore"):
            raise ValueError("aux_background must be 'inlier' or 'ignore', "
                             f"got {self.aux_background!r}")
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
                obj = OutlierObject(to_grey(obj.image), obj.mask, obj.source)
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
        a_mask, _ = fit_to_size(obj.mask, (H, W), False)
        background = INLIER if cfg.aux_background == "inlier" else IGNORE
        aux_lab = np.full((H, W), background, dtype=np.uint8)
        aux_lab[~valid] = IGNORE
        aux_lab[a_mask] = ANOMALY
        info = {"object": self.source.entries[idx].key, "index": idx, "scale": scale,
                "grey": bool(grey), "box": box}
        return PastedSample(out_img, out_lab, aux_img, aux_lab, info)


__all__ = [
    "COCO_CLASSES", "ROAD_SCENE_COCO_IDS", "ALLO_COCO_IDS", "FILTERS", "OutlierObject",
    "OutlierSource", "load_outlier_source", "load_coco_json", "load_yolo_seg", "load_mask_pngs",
    "default_outlier_split", "PasteConfig", "PastedSample", "OutlierPaster", "rle_decode",
    "rle_encode", "rle_counts_from_string", "rle_counts_to_string", "polygons_to_mask",
    "segmentation_to_mask", "fit_to_size", "rescale_object", "mask_bbox", "to_grey",
]
