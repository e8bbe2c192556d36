"""Outlier sources: the objects outlier exposure pastes, read lazily from disk.

``load_outlier_source`` detects the layout:

* the official COCO instances JSON (``annotations/instances_<split>.json`` beside the image
  folder ``<split>/``), polygons and RLE decoded by :mod:`.coco`;
* YOLO-seg polygon files (``images/<split>/<id>.jpg`` + ``labels/<split>/<id>.txt``, lines
  ``class x1 y1 x2 y2 ...`` normalised to [0, 1], ``class`` an index into the 80 COCO classes),
  the layout of ``coco128-seg``;
* mask PNGs (``images/`` + ``masks/``, or Meta-OoD's ``<split>/`` + ``ood_seg_<split>/``):
  nonzero mask pixels are object pixels.

A source is a lazy ``Sequence[OutlierObject]``. With ``granularity="image"`` (the authors'
recipe) there is one entry per kept COCO image, whose mask is the union of all its annotated
instances, and the class filter drops every image containing a class that also occurs in the
inlier domain (``filter="road"``: :data:`~.coco.ROAD_SCENE_COCO_IDS`; ``"allo"``:
:data:`~.coco.ALLO_COCO_IDS`, the authors' list for the space domain; ``"none"``). With
``granularity="instance"`` (COCO JSON and YOLO-seg) every instance of a kept class is an entry
of its own, so photographs that also show a person or a car still give their other objects; the
auxiliary mask of such an entry is the union of the image's kept-class instances, and the
excluded-class objects (road-scene classes) stay background, i.e. inliers. Entries remember
their image (``group``), so a split never puts two objects of one photograph on both sides.
:func:`default_outlier_split` is the train / held-out split that training and validation share.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .coco import COCO_NAMES, FILTERS, YOLO_TO_COCO_ID
from .layout import IMAGE_EXTS
from .outlier_entries import (
    OutlierObject,
    _CocoEntry,
    _CocoInstance,
    _MaskEntry,
    _YoloEntry,
    _YoloInstance,
)

DEFAULT_SPLIT_SEED = 0
DEFAULT_VAL_FRACTION = 0.25
GRANULARITIES = ("image", "instance")  # one entry per photo (the authors') or per object


class OutlierSource(Sequence[OutlierObject]):
    """Lazily decoded outlier images (class filter already applied), sorted by ``keys``."""

    def __init__(self, entries: Sequence, *, kind: str, root: Path,
                 filter: str,  # noqa: A002 - public keyword, stored as .filter
                 info: dict | None = None):
        self.entries = list(entries)
        self.kind = kind
        self.root = Path(root)
        self.filter = filter
        self.info = dict(info or {})

    @property
    def keys(self) -> list[str]:
        """Stable ids (COCO image id / file stem, ``#k`` for the k-th instance) of the entries."""
        return [e.key for e in self.entries]

    @property
    def categories(self) -> list[str]:
        """The COCO class name of each entry ("" where the source does not know it)."""
        return [getattr(e, "category", "") for e in self.entries]

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
        groups = [getattr(e, "group", e.key) for e in self.entries]
        if groups == keys:
            digest = [hashlib.sha1(f"{seed}:{k}".encode()).hexdigest() for k in keys]
            rank = sorted(range(n), key=lambda i: (digest[i], keys[i]))
            held = sorted(rank[:n_val])
        else:  # whole images go to one side; held-out images are taken until n_val objects
            names = sorted(set(groups), key=lambda g: (hashlib.sha1(f"{seed}:{g}".encode())
                                                       .hexdigest(), g))
            chosen: set[str] = set()
            count = 0
            for g in names:
                if count >= n_val:
                    break
                chosen.add(g)
                count += groups.count(g)
            held = [i for i in range(n) if groups[i] in chosen]
        held_set = set(held)
        train = [i for i in range(n) if i not in held_set]
        return self._subset(train, "train"), self._subset(held, "held_out")

    def split_by_category(self, categories) -> tuple["OutlierSource", "OutlierSource"]:
        """(entries of other classes, entries of ``categories``): a held-out-classes split."""
        wanted = set(categories)
        cats = self.categories
        held = [i for i in range(len(self)) if cats[i] in wanted]
        held_set = set(held)
        return (self._subset([i for i in range(len(self)) if i not in held_set], "other_classes"),
                self._subset(held, "held_out_classes"))

    def __repr__(self) -> str:
        return (f"OutlierSource(kind={self.kind!r}, root={str(self.root)!r}, "
                f"filter={self.filter!r}, objects={len(self)})")


def default_outlier_split(source: OutlierSource, seed: int = DEFAULT_SPLIT_SEED,
                          val_fraction: float = DEFAULT_VAL_FRACTION
                          ) -> tuple[OutlierSource, OutlierSource]:
    """Return the (train, held-out) split shared by training and the validation set builder.

    Training pastes only ``train``; the pasted-CamVid validation set only ``held_out``: calling
    this with the same source, seed and fraction on both sides keeps the two disjoint.
    """
    return source.split(val_fraction, seed)


def _excluded(name: str) -> frozenset:
    if name not in FILTERS:
        raise ValueError(f"unknown class filter {name!r}; expected one of {sorted(FILTERS)}")
    return FILTERS[name]


def _find_images_dir(json_path: Path, split: str) -> Path | None:
    root = json_path.parent.parent
    return next((c for c in (root / split, root / "images" / split, json_path.parent / split)
                 if c.is_dir()), None)


def _check_granularity(granularity: str) -> None:
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")


def load_coco_json(json_path: str | Path, images: str | Path | None = None, *,
                   filter: str = "road",  # noqa: A002 - public keyword (the class filter)
                   include_crowd: bool = True, granularity: str = "image",
                   min_area: float = 0.002) -> OutlierSource:
    """Official COCO instances JSON: one entry per image with at least one kept instance.

    Images with any instance of an excluded class are dropped entirely (the object would
    otherwise be pasted into an inlier frame as an outlier while also being an inlier class).
    ``granularity="instance"``: one entry per kept-class instance covering at least ``min_area``
    of its image, excluded-class objects staying background (see the module docstring).
    """
    _check_granularity(granularity)
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
    names = {c["id"]: c["name"] for c in data["categories"]}
    entries, n_dropped = [], 0
    for im in sorted(data["images"], key=lambda r: r["id"]):
        a = anns.get(im["id"], [])
        if granularity == "instance":
            stem = Path(im["file_name"]).stem
            kept = [x for x in a if x.get("segmentation") and x["category_id"] not in bad_cats
                    and (include_crowd or not x.get("iscrowd", 0))]
            aux = tuple(x["segmentation"] for x in kept)
            area = float(im["height"]) * float(im["width"])
            for k, x in enumerate(kept):
                if float(x.get("area", area)) >= min_area * area:
                    entries.append(_CocoInstance(f"{stem}#{k}", stem, images_dir / im["file_name"],
                                                 x["segmentation"], aux,
                                                 names.get(x["category_id"], "")))
            n_dropped += int(len(kept) < len(a))
            continue
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
                         info={"images": len(data["images"]), "granularity": granularity,
                               "dropped_by_filter": n_dropped})


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


def _polygon_area(poly) -> float:
    """Shoelace area of a normalised polygon [x1, y1, ...], in units of the image area."""
    xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def load_yolo_seg(root: str | Path, split: str | None = None, *,
                  filter: str = "road",  # noqa: A002 - public keyword (the class filter)
                  granularity: str = "image", min_area: float = 0.002) -> OutlierSource:
    """YOLO-seg ``root/images/<split>/*`` + ``root/labels/<split>/*.txt`` (the 80 COCO classes).

    ``granularity="instance"``: one entry per kept-class instance covering at least ``min_area``
    of its image (smaller ones vanish when pasted at a fraction of their size).
    """
    root = Path(root)
    excluded = _excluded(filter)
    _check_granularity(granularity)
    if split is None:
        labels = root / "labels"
        subs = sorted(p.name for p in labels.iterdir() if p.is_dir()) if labels.is_dir() else []
        split = subs[0] if subs else ""
    images_dir, labels_dir = root / "images" / split, root / "labels" / split
    if not images_dir.is_dir() or not labels_dir.is_dir():
        raise FileNotFoundError(f"no images/{split} and labels/{split} under {root}: expected "
                                "the YOLO-seg layout images/<split>/<id>.jpg + "
                                "labels/<split>/<id>.txt")
    images = {p.stem: p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS}
    entries, n_dropped, n_images = [], 0, 0
    for txt in sorted(labels_dir.glob("*.txt")):
        if txt.stem not in images:
            continue
        n_images += 1
        inst = parse_yolo_labels(txt)
        if any(not 0 <= c < len(YOLO_TO_COCO_ID) for c, _ in inst):
            raise ValueError(f"{txt}: class index outside the 80 COCO classes")
        if granularity == "instance":
            kept = [(c, tuple(p)) for c, p in inst
                    if YOLO_TO_COCO_ID[c] not in excluded and len(p) >= 6]
            aux = tuple(p for _, p in kept)
            for k, (c, p) in enumerate(kept):
                if _polygon_area(p) >= min_area:
                    entries.append(_YoloInstance(f"{txt.stem}#{k}", txt.stem, images[txt.stem],
                                                 (p,), aux, COCO_NAMES[YOLO_TO_COCO_ID[c]]))
            n_dropped += int(len(kept) < len(inst))
            continue
        if any(YOLO_TO_COCO_ID[c] in excluded for c, _ in inst):
            n_dropped += 1
            continue
        polys = tuple(tuple(p) for _, p in inst if len(p) >= 6)
        if polys:
            entries.append(_YoloEntry(txt.stem, images[txt.stem], polys))
    return OutlierSource(entries, kind="yolo_seg", root=root, filter=filter,
                         info={"split": split, "images": n_images, "granularity": granularity,
                               "dropped_by_filter": n_dropped})


def load_mask_pngs(images: str | Path, masks: str | Path, *, annotations: str | Path | None = None,
                   filter: str = "road") -> OutlierSource:  # noqa: A002 - public keyword
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


__all__ = ["DEFAULT_SPLIT_SEED", "DEFAULT_VAL_FRACTION", "GRANULARITIES", "OutlierObject",
           "OutlierSource", "default_outlier_split", "load_coco_json", "load_mask_pngs",
           "load_outlier_source", "load_yolo_seg"]
