"""``persistence_n`` of ``persistence_m``: report a region once seen in n of the last m frames.

Report a region only once it has been seen in at least n of the last m frames, under an id that
stays the same while it persists.

Rule (:class:`Persistence`, one :meth:`~Persistence.update` per processed frame):

* **Matching.** Each frame's regions are matched one-to-one to the live tracks by **box IoU**
  (intersection over union of the pixel-edge boxes, :func:`box_iou`) against each track's box in
  the last frame it was seen. Pairs are taken greedily, highest IoU first (ties: the older
  track, then the region that comes first), and only when IoU >= ``iou_threshold``. An
  unmatched region starts a new track. Box IoU rather than mask IoU: it costs O(regions x
  tracks) numbers whatever the resolution, a track keeps four integers instead of a pixel mask,
  and for the compact blobs a robot acts on it follows mask overlap closely; it over-matches
  only for interleaved concave shapes (two regions whose boxes overlap but pixels do not),
  where the older track wins.
* **History.** A track remembers which of the last m frames it was seen in. It is
  **confirmed** on the first frame where that count reaches n, and from then on it is reported
  in **every** frame in which it is seen (no flicker when it misses a frame), until it is
  dropped: a track not seen in m consecutive frames is forgotten. A frame where a confirmed
  track is not seen reports nothing for it (no region is invented).
* **Ids.** A track gets its public id when it is confirmed: increasing integers rendered as
  strings ("1", "2", ...), never reused during the object's life (:meth:`reset` forgets the
  tracks but keeps counting). Unconfirmed tracks have no id, so reported ids are consecutive.
* ``n = m = 1`` (persistence off) reports every region immediately (each still gets a stable id
  while its boxes overlap from frame to frame).

Deterministic: the output depends only on the sequence of region lists. Not thread-safe: one
caller (the node's worker thread) updates it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .regions import Region


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Return the IoU of (N, 4) and (M, 4) boxes ``(x, y, width, height)`` as (N, M) float64.

    Boxes are pixel-edge, width/height > 0.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    ax0, ay0, ax1, ay1 = a[:, 0:1], a[:, 1:2], a[:, 0:1] + a[:, 2:3], a[:, 1:2] + a[:, 3:4]
    bx0, by0, bx1, by1 = b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.clip(np.minimum(ax1, bx1) - np.maximum(ax0, bx0), 0, None)
    ih = np.clip(np.minimum(ay1, by1) - np.maximum(ay0, by0), 0, None)
    inter = iw * ih
    union = a[:, 2:3] * a[:, 3:4] + b[:, 2] * b[:, 3] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


SMALL = 64  # regions x tracks up to which plain Python beats numpy's per-call cost


def _pairs_small(boxes, tracks, threshold: float) -> list[tuple[int, int]]:
    """Return the (region, track) pairs with IoU >= ``threshold``, best first, in plain Python.

    The same IoU as :func:`box_iou` (the same float64 operations in the same order) and the
    same order as the numpy path of :meth:`Persistence._match`: IoU descending, then the older
    track, then the earlier region.
    """
    found = []
    for r, (ax, ay, aw, ah) in enumerate(boxes):
        for t, track in enumerate(tracks):
            bx, by, bw, bh = track.box
            iw = max(float(min(ax + aw, bx + bw) - max(ax, bx)), 0.0)
            ih = max(float(min(ay + ah, by + bh) - max(ay, by)), 0.0)
            inter = iw * ih
            union = float(aw * ah) + float(bw * bh) - inter
            iou = inter / max(union, 1e-12) if union > 0 else 0.0
            if iou >= threshold:
                found.append((-iou, track.key, r, t))
    found.sort()
    return [(r, t) for _, _, r, t in found]


@dataclass(frozen=True)
class Detection:
    """A region that passed persistence in this frame.

    ``id``: the track's id (a string, unique over the :class:`Persistence` object's life);
    ``region``: this frame's region; ``new``: True on the frame the track was confirmed (the
    node starts an anomaly snapshot then); ``seen``: in how many of the last m frames it was
    seen; ``age``: frames since the track's first sighting (0 on that frame).
    """

    id: str
    region: Region
    new: bool
    seen: int
    age: int

    def as_dict(self, class_id: str = "anomaly") -> dict:
        """Return the detection as plain data (JSON, the snapshot writer).

        id, class_id, score, the box in input pixels (x, y, width, height, pixel-edge) and as
        BoundingBox2D (center_x, center_y, size_x, size_y, pixel-centre), pixels, peak, new,
        seen, age.
        """
        r = self.region
        cx, cy, sx, sy = r.bbox2d()
        return {"id": self.id, "class_id": class_id, "score": r.score, "x": r.x, "y": r.y,
                "width": r.width, "height": r.height, "center_x": cx, "center_y": cy,
                "size_x": sx, "size_y": sy, "pixels": r.pixels, "peak": r.peak,
                "new": self.new, "seen": self.seen, "age": self.age}


class _Track:
    __slots__ = ("key", "box", "history", "id", "born")

    def __init__(self, key: int, box: tuple[int, int, int, int], born: int):
        self.key = key  # creation order: the tie-break "older track first"
        self.box = box
        self.history = 0  # bit k set = seen k frames ago (bit 0: the current frame)
        self.id: str | None = None
        self.born = born


class Persistence:
    """n-of-m persistence with stable ids (see the module docstring for the exact rule)."""

    def __init__(self, n: int = 1, m: int = 1, iou_threshold: float = 0.3):
        n, m = int(n), int(m)
        if not 1 <= n <= m:
            raise ValueError(f"persistence needs 1 <= n <= m, got n={n}, m={m}")
        if m > 60:
            raise ValueError(f"persistence_m={m} frames is more than 60")
        if not 0.0 < float(iou_threshold) <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        self.n, self.m, self.iou_threshold = n, m, float(iou_threshold)
        self._window = (1 << m) - 1
        self._tracks: list[_Track] = []
        self._next_key = 0
        self._next_id = 1
        self._frame = 0

    @property
    def tracks(self) -> int:
        """Live tracks (confirmed or not)."""
        return len(self._tracks)

    def reset(self) -> None:
        """Forget every track (a new stream); ids keep increasing."""
        self._tracks = []

    def update(self, regions: Sequence[Region]) -> list[Detection]:
        """Feed one frame's regions; return the detections to report in this frame.

        The detections come in the order of ``regions``.
        """
        frame = self._frame
        self._frame += 1
        for t in self._tracks:
            t.history = (t.history << 1) & self._window
        match = self._match(regions)
        out: list[Detection] = []
        for k, r in enumerate(regions):
            t = match.get(k)
            if t is None:
                t = _Track(self._next_key, r.box, frame)
                self._next_key += 1
                self._tracks.append(t)
            t.history |= 1
            t.box = r.box
            seen = t.history.bit_count()
            new = False
            if t.id is None and seen >= self.n:
                t.id, new = str(self._next_id), True
                self._next_id += 1
            if t.id is not None:
                out.append(Detection(t.id, r, new, seen, frame - t.born))
        self._tracks = [t for t in self._tracks if t.history]
        return out

    def _match(self, regions: Sequence[Region]) -> dict[int, _Track]:
        tracks = self._tracks
        if not regions or not tracks:
            return {}
        if len(regions) * len(tracks) <= SMALL:
            pairs = _pairs_small([r.box for r in regions], tracks, self.iou_threshold)
        else:
            iou = box_iou(np.array([r.box for r in regions]), np.array([t.box for t in tracks]))
            ri, ti = np.nonzero(iou >= self.iou_threshold)
            # highest IoU first; ties: older track (lower key), then earlier region
            keys = np.array([tracks[j].key for j in ti])
            order = np.lexsort((ri, keys, -iou[ri, ti]))
            pairs = [(int(ri[o]), int(ti[o])) for o in order]
        used_r: set[int] = set()
        used_t: set[int] = set()
        out: dict[int, _Track] = {}
        for r, t in pairs:
            if r in used_r or t in used_t:
                continue
            used_r.add(r)
            used_t.add(t)
            out[r] = tracks[t]
        return out


__all__ = ["Detection", "Persistence", "box_iou"]
