"""Anomaly snapshots: the seconds around each anomaly event, one MCAP file per event.

The caller (the node's worker thread) hands every processed frame to :meth:`SnapshotRecorder.add`
(stamp, the camera frame as received, the heatmap, the detections as plain dicts) and calls
:meth:`SnapshotRecorder.trigger` when a persistent detection appears. ``add`` is O(1): it keeps
**references** in a ring buffer of the last ``pre_s`` seconds (by header stamp) and, during an
event, puts a reference on the writer's queue; nothing is copied, so the caller must hand over
data it will not modify (a received message, a fresh heatmap array). A background thread
serialises and writes, so a slow disk never delays a frame; when more than ``max_queue`` items
wait, new items are dropped (counted) instead of growing memory, and the ring never holds more
than ``max_ring`` items (stamps that do not advance cannot grow it).

Events (stamps are header stamps in integer ns; :func:`.pairing.stamp_ns`):

* ``trigger(t)`` with no open event starts one: the buffered items with stamp >= ``t - pre_s``
  are written, then every item with stamp <= ``t + post_s``;
* a trigger while the event is open extends it to ``t + post_s`` (the items between are written
  once, in order): events overlapping in time make one file, never two;
* the event stays open (its items past the end are held back in the ring) until an item
  arrives with stamp > end + ``pre_s``, so a trigger whose pre-window overlaps the event still
  extends it; then the file is finished. :meth:`finish` (deactivate) and :meth:`close` finish
  it at once. A stamp earlier than the previous one (a replayed bag, a clock reset) finishes the
  event and empties the ring.

Files: ``<folder>/<prefix>_<UTC time of the first trigger>.mcap`` (``anomaly_20240501T120000.123Z
.mcap``; ``_1``, ``_2`` ... if taken), a **single MCAP file** per event (rosbag2 MCAP storage,
written with rosbags into ``<folder>/.partial_<name>/`` and moved into place when complete: an
interrupted event never looks finished). ``ros2 bag play``, Foxglove and
:mod:`flowclas_ros.data.bags` (``train --bag``, ``bag_outputs``) read them. Topics:

* ``<image_topic>/compressed`` (sensor_msgs/CompressedImage): compressed frames as received,
  and raw frames JPEG-encoded (``raw_as_jpeg``, default: ~10x smaller, so the size bound holds
  ~10x more events); or ``<image_topic>`` (sensor_msgs/Image) with raw frames as received when
  ``raw_as_jpeg`` is False;
* ``heatmap_topic`` (``/anomaly/heatmap``, 32FC1 Image) and ``detections_topic``
  (``/anomaly/detections``, vision_msgs/msg/Detection2DArray), every message with the frame's
  stamp and frame_id; the bag's receive times are the header stamps.

Size bound: the ``<prefix>_*.mcap`` files in the folder (those of earlier runs included; other
files are never touched) stay under ``max_mb``: before each message is written the oldest
events (by modification time) are deleted to make room; when the current event alone reaches
the bound, its further messages are dropped (counted). Memory: the ring holds ``pre_s`` seconds
of frames and heatmaps (2 s of 640x480 at 30 Hz: about 130 MB for raw frames).
"""
from __future__ import annotations

import shutil
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .pairing import stamp_ns
from .snapshot_messages import COMPRESSED, DETECTIONS, IMAGE, SnapshotSerializer


@dataclass(frozen=True)
class SnapshotItem:
    """One processed frame as handed to :meth:`SnapshotRecorder.add`."""

    stamp: int
    frame: Any = None
    heatmap: Any = None
    detections: tuple = ()
    frame_id: str = ""


@dataclass
class _Event:
    name: str
    end: int
    sent_until: int


@dataclass
class _Writing:
    name: str
    partial: Path
    writer: Any
    connections: dict = field(default_factory=dict)
    payload: int = 0


class SnapshotRecorder:
    """Ring buffer + event logic on the caller's side, an MCAP writer thread behind it.

    See the module docstring. ``stats()`` gives the counters for diagnostics.
    """

    def __init__(self, folder: str | Path, *, pre_s: float = 2.0, post_s: float = 3.0,
                 max_mb: float = 1000.0, image_topic: str = "/camera/image_raw",
                 heatmap_topic: str = "/anomaly/heatmap",
                 detections_topic: str = "/anomaly/detections", raw_as_jpeg: bool = True,
                 jpeg_quality: int = 90, max_queue: int = 600, max_ring: int = 600,
                 prefix: str = "anomaly"):
        if pre_s < 0 or post_s < 0 or max_mb <= 0:
            raise ValueError(f"need pre_s >= 0, post_s >= 0, max_mb > 0; got {pre_s}, {post_s}, "
                             f"{max_mb}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.pre_ns, self.post_ns = int(pre_s * 1e9), int(post_s * 1e9)
        self.max_bytes = int(max_mb * 1024 * 1024)
        self.prefix = prefix
        self.topics = {"image": image_topic.rstrip("/"), "heatmap": heatmap_topic,
                       "detections": detections_topic}
        self.max_queue = int(max_queue)
        self._serializer = SnapshotSerializer(raw_as_jpeg, jpeg_quality)
        self._ring: deque[SnapshotItem] = deque(maxlen=max(int(max_ring), 1))
        self._event: _Event | None = None
        self._lock = threading.Lock()  # the caller's state (add / trigger / finish)
        self._queue: deque = deque()
        self._cond = threading.Condition()
        self._pending = 0  # commands queued or being written
        self._counts = {"events_started": 0, "events_written": 0, "events_deleted": 0,
                        "bytes_written": 0, "items_written": 0, "dropped_queue": 0,
                        "dropped_size": 0, "dropped_error": 0, "errors": 0}
        self.last_error = ""
        self.last_file = ""
        for stale in self.folder.glob(".partial_*"):  # an earlier run's interrupted event
            shutil.rmtree(stale, ignore_errors=True)
        self._files: list[tuple[Path, int]] = []  # the writer thread's view of the folder
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="snapshot-writer", daemon=True)
        self._thread.start()

    # caller side -------------------------------------------------------------------------------
    def add(self, stamp, frame=None, heatmap=None, detections=(), frame_id: str = "") -> None:
        """Add one processed frame (O(1), references only).

        ``stamp``: int ns or a Time/Header; ``frame``: the CompressedImage or Image as received
        (None: none); ``heatmap``: (H, W) float array; ``detections``: dicts as
        :meth:`.persistence.Detection.as_dict`.
        """
        item = SnapshotItem(stamp_ns(stamp), frame, heatmap, tuple(detections), str(frame_id))
        with self._lock:
            ring = self._ring
            if ring and item.stamp < ring[-1].stamp:  # time went backwards: a new stream
                self._finish_locked()
                ring.clear()
            ring.append(item)
            while ring[0].stamp < item.stamp - self.pre_ns:
                ring.popleft()
            ev = self._event
            if ev is not None:
                if item.stamp <= ev.end:
                    self._send(item)
                    ev.sent_until = item.stamp
                elif item.stamp > ev.end + self.pre_ns:
                    self._finish_locked()

    def trigger(self, stamp, reason: str = "") -> None:
        """Signal an event at ``stamp``: start one, or extend the open one (module docstring)."""
        t = stamp_ns(stamp)
        with self._lock:
            ev = self._event
            if ev is None:
                start = t - self.pre_ns
                self._event = ev = _Event(self._name(t), t + self.post_ns, start - 1)
                self._counts["events_started"] += 1
                self._command(("open", ev.name, reason))
            else:
                ev.end = max(ev.end, t + self.post_ns)
            lo = ev.sent_until  # contiguous: nothing is written twice or skipped
            for item in self._ring:
                if lo < item.stamp <= ev.end:
                    self._send(item)
                    ev.sent_until = item.stamp

    def finish(self) -> None:
        """Finish the open event now and empty the ring.

        For deactivate, the end of a stream: a later event starts afresh and never repeats what
        this one wrote.
        """
        with self._lock:
            self._finish_locked()
            self._ring.clear()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is written; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending == 0, timeout)

    def close(self, timeout: float | None = 30.0) -> None:
        """Finish the open event, write what is queued and stop the writer thread.

        Later calls of :meth:`add` and :meth:`trigger` write nothing.
        """
        self.finish()
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def stats(self) -> dict:
        """Return the counters.

        events_started, events_written, events_deleted, bytes_written (files), items_written,
        dropped_queue (the writer was behind), dropped_size (the bound was reached),
        dropped_error (the event's file could not be opened), errors; pending, open, last_file,
        last_error.
        """
        with self._cond:
            out = dict(self._counts)
            out["pending"] = self._pending
        out.update(open=self._event is not None, last_file=self.last_file,
                   last_error=self.last_error)
        return out

    def _finish_locked(self) -> None:
        if self._event is not None:
            self._event = None
            self._command(("close",))

    def _name(self, t: int) -> str:
        ms = (t // 1_000_000) % 1000
        return f"{self.prefix}_{time.strftime('%Y%m%dT%H%M%S', time.gmtime(t // 10**9))}.{ms:03d}Z"

    def _send(self, item: SnapshotItem) -> None:
        with self._cond:
            if self._pending >= self.max_queue:
                self._counts["dropped_queue"] += 1
                return
        self._command(("item", item))

    def _command(self, cmd: tuple) -> None:
        with self._cond:
            if self._stopping:  # closed: nothing more is written
                return
            self._queue.append(cmd)
            self._pending += 1
            self._cond.notify_all()

    # writer thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        current: _Writing | None = None
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._stopping)
                if not self._queue:
                    break  # stopping and nothing left
                cmd = self._queue.popleft()
            try:
                if cmd[0] == "open":
                    current = self._close(current)
                    current = self._open(cmd[1])
                elif cmd[0] == "item":
                    if current is None:  # its event could not be opened
                        with self._cond:
                            self._counts["dropped_error"] += 1
                    else:
                        self._write_item(current, cmd[1])
                elif cmd[0] == "close":
                    current = self._close(current)
            except Exception as exc:  # a full disk, a bad frame: count it, keep going
                with self._cond:
                    self._counts["errors"] += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                if cmd[0] != "item":
                    current = self._abort(current)
            finally:
                with self._cond:
                    self._pending -= 1
                    self._cond.notify_all()
        self._close(current)

    def _scan(self) -> None:
        """Scan for this recorder's finished event files with their sizes, oldest first.

        Ordered by modification time, then name; read at each event's start, kept up to date
        while it is written.
        """
        files = []
        for p in self.folder.glob(f"{self.prefix}_*.mcap"):
            try:
                st = p.stat()
            except OSError:
                continue
            if p.is_file():
                files.append((st.st_mtime_ns, p.name, p, st.st_size))
        self._files = [(p, size) for _, _, p, size in sorted(files)]

    def _make_room(self, need: int, current: _Writing | None) -> bool:
        """Delete the oldest events until ``need`` more bytes fit; False if they cannot."""
        used = sum(size for _, size in self._files) + (current.payload if current else 0)
        while used + need > self.max_bytes and self._files:
            old, size = self._files.pop(0)
            used -= size
            old.unlink(missing_ok=True)
            with self._cond:
                self._counts["events_deleted"] += 1
        return used + need <= self.max_bytes

    def _open(self, name: str) -> _Writing:
        from rosbags.rosbag2 import StoragePlugin, Writer

        final, k = name, 0
        while ((self.folder / f"{final}.mcap").exists()
               or (self.folder / f".partial_{final}").exists()):
            k += 1
            final = f"{name}_{k}"
        partial = self.folder / f".partial_{final}"
        self._scan()
        writer = Writer(partial, version=9, storage_plugin=StoragePlugin.MCAP)
        writer.open()
        return _Writing(final, partial, writer)

    def _connection(self, w: _Writing, topic: str, msgtype: str):
        conn = w.connections.get((topic, msgtype))
        if conn is None:
            conn = w.writer.add_connection(topic, msgtype, typestore=self._serializer.ts)
            w.connections[(topic, msgtype)] = conn
        return conn

    def _write_item(self, w: _Writing, item: SnapshotItem) -> None:
        ser, msgs = self._serializer, []
        if item.frame is not None:
            msgtype, data = ser.frame(item.frame, item.stamp, item.frame_id)
            topic = self.topics["image"] + ("/compressed" if msgtype == COMPRESSED else "")
            msgs.append((topic, msgtype, data))
        if item.heatmap is not None:
            msgs.append((self.topics["heatmap"], IMAGE,
                         ser.heatmap(item.heatmap, item.stamp, item.frame_id)))
        msgs.append((self.topics["detections"], DETECTIONS,
                     ser.detections(item.detections, item.stamp, item.frame_id)))
        need = sum(len(m[2]) + 64 for m in msgs)  # + MCAP record and index overhead
        if not self._make_room(need + 65536, w):  # + the file's summary section
            with self._cond:
                self._counts["dropped_size"] += 1
            return
        for topic, msgtype, data in msgs:
            w.writer.write(self._connection(w, topic, msgtype), item.stamp, data)
        w.payload += need
        with self._cond:
            self._counts["items_written"] += 1

    def _close(self, w: _Writing | None) -> None:
        if w is None:
            return None
        w.writer.close()
        src = w.partial / f"{w.partial.name}.mcap"
        dst = self.folder / f"{w.name}.mcap"
        src.replace(dst)
        shutil.rmtree(w.partial, ignore_errors=True)
        size = dst.stat().st_size
        self._files.append((dst, size))
        with self._cond:
            self._counts["events_written"] += 1
            self._counts["bytes_written"] += size
        self.last_file = str(dst)
        self._make_room(0, None)
        return None

    def _abort(self, w: _Writing | None) -> None:
        if w is not None:
            try:
                w.writer.close()
            except Exception:
                pass
            shutil.rmtree(w.partial, ignore_errors=True)
        return None


__all__ = ["SnapshotItem", "SnapshotRecorder"]
