"""``image_player``: publishes a folder of images or a video file as sensor_msgs/Image.

A stand-in camera for demos and tests: ``ros2 run flowclas_ros image_player --ros-args
-p source:=/path/to/frames -p rate:=10.0``. Frames are decoded lazily, one per tick, and
published on ``image`` (relative: follows the namespace, remappable) as rgb8 with the current
time as stamp.

Parameters: source (folder, image file or video file; default: the shipped demo sequence),
rate (Hz), loop (restart at the end), frame_id, max_frames (0 = all).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from .image_conversion import numpy_to_msg

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v"}


def default_sequence() -> Path:
    """The demo sequence shipped with the package (installed share/ first, then the source tree)."""
    try:
        from ament_index_python.packages import get_package_share_directory

        installed = Path(get_package_share_directory("flowclas_ros")) / "models" / "demo_sequence"
        if installed.is_dir():
            return installed
    except Exception:  # not installed with colcon: use the source tree
        pass
    return Path(__file__).resolve().parents[2] / "models" / "demo_sequence"


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def iter_frames(source: str | Path) -> Iterator[np.ndarray]:
    """(H, W, 3) uint8 RGB frames of a folder, an image file or a video file, in order."""
    from PIL import Image as PILImage

    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"image source {path} does not exist: give a folder of images "
                                "or a video file")
    if path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES:
        files = list_images(path) if path.is_dir() else [path]
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {path}")
        for f in files:
            with PILImage.open(f) as im:
                yield np.asarray(im.convert("RGB"))
        return
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise ValueError(f"{path}: not a folder, an image or a video "
                         f"({', '.join(sorted(VIDEO_SUFFIXES))})")
    import av  # PyAV bundles FFmpeg: no system codec needed

    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")


class ImagePlayer(Node):
    """Publishes frames from ``source`` at ``rate`` Hz on ``image``; counts what it sent."""

    def __init__(self, node_name: str = "image_player", **kwargs):
        super().__init__(node_name, **kwargs)
        self.declare_parameter("source", str(default_sequence()))
        self.declare_parameter("rate", 10.0)
        self.declare_parameter("loop", False)
        self.declare_parameter("frame_id", "camera")
        self.declare_parameter("max_frames", 0)
        self.publisher = self.create_publisher(
            Image, "image", QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE))
        self.sent = 0
        self.finished = False
        self._frames: Iterator[np.ndarray] | None = None
        self._timer = None

    def start(self) -> None:
        """Start publishing (separate from construction so a caller can wait for subscribers)."""
        rate = float(self.get_parameter("rate").value)
        if rate <= 0:
            raise ValueError(f"rate must be > 0 Hz, got {rate}")
        self._frames = iter_frames(self.get_parameter("source").value)
        self._timer = self.create_timer(1.0 / rate, self._tick)

    def _next_frame(self) -> np.ndarray | None:
        try:
            return next(self._frames)
        except StopIteration:
            if not self.get_parameter("loop").value:
                return None
            self._frames = iter_frames(self.get_parameter("source").value)
            return next(self._frames, None)

    def _tick(self) -> None:
        limit = int(self.get_parameter("max_frames").value)
        frame = None if (limit and self.sent >= limit) else self._next_frame()
        if frame is None:
            self.finished = True
            self._timer.cancel()
            return
        msg = numpy_to_msg(frame, "rgb8")
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = self.get_parameter("frame_id").value
        self.publisher.publish(msg)
        self.sent += 1


def main(args=None) -> int:
    rclpy.init(args=args)
    node = ImagePlayer()
    try:
        node.start()
        while rclpy.ok() and not node.finished:
            rclpy.spin_once(node, timeout_sec=0.1)
        node.get_logger().info(f"published {node.sent} frames")
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
