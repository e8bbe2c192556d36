"""Robot recordings as data: the camera frames of a rosbag2 (sqlite3 or MCAP) or an MCAP file.

No ROS install needed: bags are read with the pure-Python ``rosbags`` package, messages are
decoded by :mod:`flowclas_ros.image_codec` (sensor_msgs/Image in every encoding the node takes,
sensor_msgs/CompressedImage jpeg or png).

* :func:`bag_topics` lists the image topics of a bag;
* :func:`iter_bag_frames` streams the frames of one topic (a time range, every ``stride``-th
  frame): a 20 GB bag is never loaded into memory; a message that does not decode is skipped
  and counted;
* :func:`extract_bag` writes the selected frames once to a frame folder (JPEG, quality 95,
  named by their receive time) with a manifest, and splits them **by time** into ``train``,
  ``calibration`` and ``test`` parts with a gap between the parts, so that no validation or
  calibration frame is a neighbour of a training frame;
* :func:`bag_dataset` (``build_dataset("bag", path, split, topic=...)``) is one part of that
  folder as an :class:`~.frames.ImageDataset` (every pixel an inlier: a recording of normal
  operation), extracted on first use into a cache folder keyed by the bag and the selection.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from .. import paths
from ..image_codec import ImageFormatError, compressed_to_rgb, image_to_rgb
from .frames import ImageDataset, Record, binary_label

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
SPLITS = ("train", "calibration", "test")
EXTRACT_FORMAT = 1


@dataclass(frozen=True)
class BagSelection:
    """Which frames of a bag, and how the selection is split by time.

    A topic, a time range (seconds from the bag's start), a stride, and the time split
    (fractions of train / calibration / test, gap seconds).
    """

    topic: str
    start_s: float | None = None
    end_s: float | None = None
    stride: int = 1
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    gap_s: float = 1.0


@dataclass
class BagFrame:
    """One decoded frame: receive time (ns), the header's stamp (sec, nanosec), RGB pixels."""

    timestamp: int
    stamp: tuple[int, int]
    frame_id: str
    rgb: np.ndarray


def _reader(path: Path):
    try:
        from rosbags.highlevel import AnyReader
        from rosbags.typesys import Stores, get_typestore
    except ImportError as exc:  # pragma: no cover - rosbags is in requirements.txt
        raise ImportError("reading bags needs the rosbags package (pip install rosbags)") from exc
    if not path.exists():
        raise FileNotFoundError(f"bag {path} does not exist: expected a rosbag2 folder (with "
                                f"metadata.yaml) or an .mcap file")
    if (path.is_dir() and not (path / "metadata.yaml").is_file()) or (
            path.is_file() and path.suffix.lower() not in (".mcap", ".db3")):
        raise FileNotFoundError(f"bag {path} is not a recording: expected a rosbag2 folder (with "
                                f"metadata.yaml) or an .mcap file")
    return AnyReader([path], default_typestore=get_typestore(Stores.ROS2_JAZZY))


def bag_topics(path: str | Path) -> dict[str, tuple[str, int]]:
    """{topic: (message type, message count)} of the image topics of a bag."""
    with _reader(Path(path)) as reader:
        return {c.topic: (c.msgtype, c.msgcount) for c in reader.connections
                if c.msgtype in IMAGE_TYPES}


def _decode(msg, msgtype: str) -> np.ndarray:
    if msgtype.endswith("CompressedImage"):
        return compressed_to_rgb(msg)
    return image_to_rgb(msg)


def iter_bag_frames(path: str | Path, selection: BagSelection,
                    counts: dict | None = None) -> Iterator[BagFrame]:
    """Yield the selected frames in recording order, decoded to RGB, one at a time.

    ``counts`` (a dict) receives ``messages``, ``frames`` and ``skipped`` (messages that do not
    decode: an unsupported encoding, truncated data) as the iteration goes.
    """
    path = Path(path)
    counts = counts if counts is not None else {}
    counts.update(messages=0, frames=0, skipped=0, errors=[])
    with _reader(path) as reader:
        conns = [c for c in reader.connections if c.topic == selection.topic]
        if not conns:
            found = {c.topic: c.msgtype for c in reader.connections}
            raise ValueError(f"bag {path} has no topic {selection.topic!r}; its topics: {found}")
        if conns[0].msgtype not in IMAGE_TYPES:
            raise ValueError(f"{selection.topic} in {path} is {conns[0].msgtype}, not an image "
                             f"topic ({', '.join(IMAGE_TYPES)})")
        t0 = reader.start_time
        start = None if selection.start_s is None else t0 + int(selection.start_s * 1e9)
        stop = None if selection.end_s is None else t0 + int(selection.end_s * 1e9)
        for k, (conn, timestamp, raw) in enumerate(reader.messages(connections=conns,
                                                                   start=start, stop=stop)):
            counts["messages"] += 1
            if k % max(selection.stride, 1):
                continue
            try:
                msg = reader.deserialize(raw, conn.msgtype)
                rgb = _decode(msg, conn.msgtype)
            except (ImageFormatError, ValueError, AssertionError, IndexError) as exc:
                counts["skipped"] += 1
                if len(counts["errors"]) < 5:
                    counts["errors"].append(f"message at {timestamp} ns: {exc}")
                continue
            counts["frames"] += 1
            yield BagFrame(int(timestamp), (int(msg.header.stamp.sec),
                                            int(msg.header.stamp.nanosec)),
                           str(msg.header.frame_id), rgb)


def time_split(timestamps: list[int], fractions=(0.7, 0.15, 0.15),
               gap_s: float = 1.0) -> dict[str, list[int]]:
    """Return the indices of ``timestamps`` (ns, ascending) per part.

    The parts are contiguous spans of the recording in the given fractions of its duration,
    frames within ``gap_s`` of a boundary left out.
    """
    if not timestamps:
        return {s: [] for s in SPLITS}
    t = np.asarray(timestamps, dtype=np.float64) / 1e9
    lo, hi = t[0], t[-1]
    bounds = lo + (hi - lo) * np.cumsum([0.0, *fractions])
    bounds[-1] = hi + 1.0  # the last frame belongs to the last part
    parts: dict[str, list[int]] = {}
    for k, name in enumerate(SPLITS):
        a, b = bounds[k], bounds[k + 1]
        keep = (t >= a + (gap_s if k > 0 else 0.0)) & (t < b - (gap_s if k < 2 else 0.0))
        parts[name] = [int(i) for i in np.flatnonzero(keep)]
    return parts


def extract_bag(path: str | Path, selection: BagSelection, out: str | Path,
                log=print) -> dict:
    """Write the selected frames to ``out``/images/<timestamp>.jpg and a manifest.

    ``out``/manifest.json holds the selection, counts and the time split. Everything is written
    to a temporary sibling, then moved into place: an interrupted extraction leaves nothing that
    looks complete.
    """
    path, out = Path(path), Path(out)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    t0 = time.perf_counter()
    counts: dict = {}
    rows = []
    for f in iter_bag_frames(path, selection, counts):
        name = f"{f.timestamp:020d}"
        Image.fromarray(f.rgb).save(tmp / "images" / f"{name}.jpg", quality=95)
        rows.append({"name": name, "timestamp": f.timestamp, "stamp": list(f.stamp),
                     "size": list(f.rgb.shape[:2])})
    if not rows:
        raise ValueError(f"no frame of {selection.topic} in {path} could be read "
                         f"({counts.get('skipped', 0)} skipped: {counts.get('errors')})")
    parts = time_split([r["timestamp"] for r in rows], selection.fractions, selection.gap_s)
    manifest = {"format": "flowclas_ros.bag_frames", "version": EXTRACT_FORMAT,
                "bag": str(path.resolve()), "selection": asdict(selection),
                "counts": dict(counts), "frames": rows,
                "splits": {k: [rows[i]["name"] for i in v] for k, v in parts.items()},
                "seconds": round(time.perf_counter() - t0, 1)}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    log(f"extracted {len(rows)} frames of {selection.topic} from {path} "
        f"({counts['skipped']} skipped) in {manifest['seconds']} s: "
        + ", ".join(f"{k} {len(v)}" for k, v in parts.items()))
    return manifest


def _fingerprint(path: Path) -> list:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def default_extract_dir() -> Path:
    return paths.cache_dir("bag_frames")


def extracted(path: str | Path, selection: BagSelection, cache_dir: str | Path | None = None,
              log=print) -> Path:
    """Return the frame folder of this bag and selection, extracted on first use.

    It is cached by a key of the bag's files and the selection.
    """
    path = Path(path).resolve()
    if not path.exists():
        raise FileNotFoundError(f"bag {path} does not exist")
    key = hashlib.sha256(json.dumps({"bag": str(path), "files": _fingerprint(path),
                                     "selection": asdict(selection), "v": EXTRACT_FORMAT},
                                    sort_keys=True).encode()).hexdigest()[:20]
    out = Path(cache_dir or default_extract_dir()) / key
    if not (out / "manifest.json").is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        extract_bag(path, selection, out, log=log)
    return out


def bag_dataset(root: str | Path, split: str | None = None, *, topic: str = "",
                start_s: float | None = None, end_s: float | None = None, stride: int = 1,
                cache_dir: str | Path | None = None, log=print) -> ImageDataset:
    """Return one time-split part of a bag's frames as an ImageDataset of all-inlier frames.

    The parts are ``train``, ``calibration`` and ``test``; None = all frames.
    """
    if not topic:
        found = bag_topics(root)  # FileNotFoundError first when root is no recording
        raise ValueError(f"bag {root}: say which camera topic to read (--topic / data.bag.topic);"
                         f" its image topics: {found}")
    if split not in (None, "all", *SPLITS):
        raise ValueError(f"bag: unknown split {split!r}; expected one of {SPLITS} or all")
    sel = BagSelection(topic=topic, start_s=start_s, end_s=end_s, stride=max(int(stride), 1))
    folder = extracted(root, sel, cache_dir, log=log)
    manifest = json.loads((folder / "manifest.json").read_text())
    names = ([r["name"] for r in manifest["frames"]] if split in (None, "all")
             else manifest["splits"][split])
    records = [Record(n, folder / "images" / f"{n}.jpg", None) for n in names]
    return ImageDataset(records, binary_label, dataset="bag", root=Path(root), split=split)


def write_bag(frames, out: str | Path, topic: str = "/camera/image_raw", *, rate: float = 10.0,
              compressed: bool = False, storage: str = "mcap", frame_id: str = "camera",
              start_ns: int = 1_700_000_000_000_000_000) -> int:
    """Record (H, W, 3) uint8 RGB ``frames`` as a rosbag2; return the count.

    The bag holds sensor_msgs/Image rgb8 (or CompressedImage jpeg) at ``rate`` Hz, header
    stamps = receive times.

    Turns a folder or video into a recording, for trying the bag tools without a robot.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    from ..image_codec import rgb_to_compressed

    ts = get_typestore(Stores.ROS2_JAZZY)
    Header, Time = ts.types["std_msgs/msg/Header"], ts.types["builtin_interfaces/msg/Time"]
    msgtype = "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"
    cls = ts.types[msgtype]
    plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[storage]
    n = 0
    with Writer(Path(out), version=9, storage_plugin=plugin) as writer:
        conn = writer.add_connection(topic, msgtype, typestore=ts)
        for i, rgb in enumerate(frames):
            t = start_ns + int(round(i * 1e9 / rate))
            header = Header(stamp=Time(sec=t // 10**9, nanosec=t % 10**9), frame_id=frame_id)
            rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
            if compressed:
                msg = cls(header=header, format="rgb8; jpeg compressed bgr8",
                          data=np.frombuffer(rgb_to_compressed(rgb, "jpeg", 90), np.uint8))
            else:
                h, w = rgb.shape[:2]
                msg = cls(header=header, height=h, width=w, encoding="rgb8", is_bigendian=0,
                          step=w * 3, data=rgb.reshape(-1))
            writer.write(conn, t, ts.serialize_cdr(msg, msgtype))
            n += 1
    return n


__all__ = ["BagFrame", "BagSelection", "IMAGE_TYPES", "SPLITS", "bag_dataset", "bag_topics",
           "extract_bag", "extracted", "iter_bag_frames", "time_split", "write_bag"]
