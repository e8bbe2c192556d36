"""``image_player``: publishes a folder of images, a video file or a recording as a camera would.

A stand-in camera for demos and tests: ``ros2 run flowclas_ros image_player --ros-args
-p source:=/path/to/frames -p rate:=10.0``. Frames are decoded lazily, one at a time, and
published on ``image`` (relative: follows the namespace, remappable) as rgb8 with the current
time as stamp; with ``transport: compressed`` as sensor_msgs/CompressedImage (jpeg) on
``image/compressed``, image_transport's name.

A rosbag2 folder or an .mcap file (``source``) is replayed from ``topic``, with each message's
**original header stamp and frame_id**, at its recorded rate (``rate: 0``) or at ``rate`` Hz.

Parameters: source (folder, image file, video file, rosbag2 folder or .mcap; default: the
shipped demo sequence), topic (bags), rate (Hz; 0 = a bag's recorded rate), loop (restart at
the end), frame_id, max_frames (0 = all), transport (raw or compressed).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image

from ..data.frame_sources import iter_frames
from ..paths import package_file
from .image_conversion import compressed_to_msg, numpy_to_msg


def default_sequence() -> Path:
    """Return the demo sequence shipped with the package: small obstacles on a KITTI road.

    The installed share/ first, then the source tree (``models/demo_sequence_kitti``;
    ``models/demo_sequence``, CamVid with pasted COCO photos, is the previous one).
    """
    return package_file("models", "demo_sequence_kitti")


def is_bag(path: str | Path) -> bool:
    """Tell whether ``path`` is a rosbag2 folder (metadata.yaml) or an .mcap / .db3 file."""
    p = Path(path)
    return (p.is_dir() and (p / "metadata.yaml").is_file()) or p.suffix.lower() in (".mcap",
                                                                                     ".db3")


@dataclass
class Frame:
    """A frame to publish: pixels, and for a recording its receive time and header."""

    rgb: np.ndarray
    timestamp: int | None = None  # ns, a recording's receive time
    stamp: tuple[int, int] | None = None  # the recorded header stamp (sec, nanosec)
    frame_id: str | None = None


def iter_source(source: str | Path, topic: str = "") -> Iterator[Frame]:
    """Yield the frames of a folder, image, video (no stamps) or bag (recorded stamps) in order."""
    if is_bag(source):
        from flowclas_ros.data.bags import BagSelection, bag_topics, iter_bag_frames

        if not topic:
            raise ValueError(f"{source} is a recording: set the topic to replay (one of "
                             f"{sorted(bag_topics(source))})")
        for f in iter_bag_frames(source, BagSelection(topic=topic)):
            yield Frame(f.rgb, f.timestamp, f.stamp, f.frame_id)
        return
    for rgb in iter_frames(source):
        yield Frame(rgb)


class ImagePlayer(Node):
    """Publishes frames from ``source`` on ``image`` (or ``image/compressed``).

    Counts what it sent and keeps each published stamp's publish time (``sent_at``, ns of this
    node's clock).
    """

    def __init__(self, node_name: str = "image_player", **kwargs):
        super().__init__(node_name, **kwargs)
        self.declare_parameter("source", str(default_sequence()))
        self.declare_parameter("topic", "")
        self.declare_parameter("rate", 10.0)
        self.declare_parameter("loop", False)
        self.declare_parameter("frame_id", "camera")
        self.declare_parameter("max_frames", 0)
        self.declare_parameter("transport", "raw")
        qos = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
        self.compressed = self.get_parameter("transport").value == "compressed"
        if self.get_parameter("transport").value not in ("raw", "compressed"):
            raise ValueError("transport must be raw or compressed")
        self.publisher = (self.create_publisher(CompressedImage, "image/compressed", qos)
                          if self.compressed else self.create_publisher(Image, "image", qos))
        self.sent = 0
        self.sent_at: dict[tuple[int, int], int] = {}
        self.finished = False
        self._frames: Iterator[Frame] | None = None
        self._t0: tuple[float, int] | None = None  # (monotonic start, first recorded timestamp)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start publishing (separate from construction so a caller can wait for subscribers).

        Frames are paced by a thread of their own on the monotonic clock, so the replay's timing
        does not depend on how (or whether) an executor spins this node; a recording's frames go
        out at their recorded offsets, a late one at once, never ahead of time.
        """
        rate = float(self.get_parameter("rate").value)
        source = self.get_parameter("source").value
        if rate <= 0 and not is_bag(source):
            raise ValueError(f"rate must be > 0 Hz for {source} "
                             "(0 = the recorded rate, bags only)")
        self._frames = self._open()
        self._thread = threading.Thread(target=self._play, args=(rate,), name="image_player",
                                        daemon=True)
        self._thread.start()

    def _open(self) -> Iterator[Frame]:
        return iter_source(self.get_parameter("source").value, self.get_parameter("topic").value)

    def _next_frame(self) -> Frame | None:
        try:
            return next(self._frames)
        except StopIteration:
            if not self.get_parameter("loop").value:
                return None
            self._frames, self._t0 = self._open(), None
            return next(self._frames, None)

    def _due(self, frame: Frame, start: float, rate: float) -> float:
        """Return the monotonic time at which ``frame`` goes out.

        Every 1/rate s, or at a recording's own offsets (rate 0).
        """
        if rate > 0 or frame.timestamp is None:
            return start + (self.sent + 1) / rate  # the first frame one period in, as a camera
        if self._t0 is None:
            self._t0 = (time.monotonic(), frame.timestamp)
        return self._t0[0] + (frame.timestamp - self._t0[1]) / 1e9

    def _play(self, rate: float) -> None:
        limit = int(self.get_parameter("max_frames").value)
        start = time.monotonic()
        try:
            while not self._stop.is_set() and not (limit and self.sent >= limit):
                frame = self._next_frame()
                if frame is None:
                    break
                if self._stop.wait(max(0.0, self._due(frame, start, rate) - time.monotonic())):
                    break
                self._publish(frame)
        except Exception as exc:  # a source that fails mid-way ends the replay, with the reason
            self.get_logger().error(
                f"replay of {self.get_parameter('source').value} stopped: {exc}")
        finally:
            self.finished = True

    def _publish(self, frame: Frame) -> None:
        msg = compressed_to_msg(frame.rgb) if self.compressed else numpy_to_msg(frame.rgb, "rgb8")
        now = self.get_clock().now()
        if frame.stamp is not None:  # a recording keeps its own stamps
            msg.header.stamp.sec, msg.header.stamp.nanosec = frame.stamp
        else:
            msg.header.stamp = now.to_msg()
        msg.header.frame_id = frame.frame_id or self.get_parameter("frame_id").value
        self.sent_at[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = now.nanoseconds
        while len(self.sent_at) > 10000:  # bounded: a long replay keeps the recent ones
            del self.sent_at[next(iter(self.sent_at))]
        self.publisher.publish(msg)
        self.sent += 1

    def destroy_node(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        super().destroy_node()
