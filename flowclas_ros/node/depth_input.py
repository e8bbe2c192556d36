"""The depth input of ``anomaly/points``: an aligned depth image and its CameraInfo.

:class:`DepthInput` subscribes (at activate, in a callback group of its own, so a depth or
CameraInfo callback never waits for or blocks the image path) to ``depth_topic`` (REP 118:
16UC1 millimetres or 32FC1 metres, registered to the camera image) and its CameraInfo
(``depth_info_topic``; empty = ``camera_info`` beside the depth topic), both with the sensor
data QoS (best effort accepts reliable and best-effort publishers alike).

Validated like the image is, in O(1) on the executor thread: a depth image with an unknown
encoding or sizes that do not add up (:func:`flowclas_ros.outputs.depth.decode_depth`), or a
CameraInfo without usable intrinsics (zero focal length, ``k`` not 3x3, an ROI:
:func:`~flowclas_ros.outputs.depth.intrinsics_from_camera_info`) is dropped, counted and
logged (throttled); the node goes on. The latest valid CameraInfo is kept; each valid depth
frame goes into the :class:`~flowclas_ros.outputs.pairing.DepthPairer` (nearest stamp within
``depth_max_skew_s``, asked after inference).

:meth:`DepthInput.points` (worker thread): the camera frame's anomalous pixels back-projected
through the intrinsics (:func:`~flowclas_ros.outputs.depth.back_project`; a depth image of
another size read nearest-neighbour when the aspect matches, refused with a throttled reason
otherwise) into a PointCloud2 with the depth image's header (its optical frame).
"""
from __future__ import annotations

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image

from ..outputs.depth import back_project, decode_depth, depth_geometry, intrinsics_from_camera_info
from ..outputs.pairing import DepthPairer
from .rclpy_workarounds import no_event_handlers
from .robot_messages import cloud_msg

THROTTLE_S = 5.0


def info_topic_for(depth_topic: str, info_topic: str = "") -> str:
    """``info_topic``, else image_transport's sibling: ``.../image_raw`` -> ``.../camera_info``."""
    if info_topic:
        return info_topic
    head, sep, _ = depth_topic.rpartition("/")
    return f"{head}{sep}camera_info"


class DepthInput:
    """Depth and CameraInfo subscriptions, their validation and pairing (module docstring).

    ``tally``: the node's robot-output counters (a :class:`~.stats.Tally`): depth_received,
    depth_malformed, camera_info_malformed, depth_unpaired, depth_refused, points_no_info.
    """

    def __init__(self, node, depth_topic: str, info_topic: str, tally, max_skew_s: float):
        self.node, self.tally = node, tally
        self.depth_topic = node.resolve_topic_name(depth_topic)
        self.info_topic = node.resolve_topic_name(info_topic_for(depth_topic, info_topic))
        self.pairer = DepthPairer(max_skew_s, queue_size=10)
        self.intrinsics = None  # the latest valid CameraInfo's (replaced atomically)
        self.max_pixels = 0
        self._group = MutuallyExclusiveCallbackGroup()
        self._subs: list = []

    # lifecycle (executor thread) ---------------------------------------------------------------
    def activate(self) -> None:
        for msg_type, topic, cb in ((Image, self.depth_topic, self._on_depth),
                                    (CameraInfo, self.info_topic, self._on_info)):
            self._subs.append(self.node.create_subscription(
                msg_type, topic, cb, qos_profile_sensor_data, callback_group=self._group,
                event_callbacks=no_event_handlers(SubscriptionEventCallbacks)))

    def deactivate(self) -> None:
        for sub in self._subs:
            self.node.destroy_subscription(sub)
        self._subs = []
        self.pairer.clear()

    def set_max_skew(self, seconds: float) -> None:
        self.pairer.max_skew_ns = int(round(float(seconds) * 1e9))

    # callbacks (executor thread): O(1), never raise ---------------------------------------------
    def _warn(self, text: str) -> None:
        self.node.get_logger().warning(text, throttle_duration_sec=THROTTLE_S)

    def _on_depth(self, msg: Image) -> None:
        self.tally.add("depth_received")
        try:
            depth = decode_depth(msg, self.max_pixels)
        except Exception as exc:  # DepthFormatError, or a message we cannot even read
            self.tally.add("depth_malformed")
            self._warn(f"malformed depth image on {self.depth_topic} dropped: {exc}")
            return
        self.pairer.add(msg.header.stamp, (msg.header, depth))

    def _on_info(self, msg: CameraInfo) -> None:
        try:
            intrinsics = intrinsics_from_camera_info(msg)
        except Exception as exc:  # CameraInfoError, or an unreadable message
            self.tally.add("camera_info_malformed")
            self._warn(f"CameraInfo on {self.info_topic} dropped: {exc}")
            return
        self.intrinsics = intrinsics

    # the frame (worker thread) -----------------------------------------------------------------
    def status(self) -> str:
        """Say what the points output is doing, for /diagnostics."""
        if self.intrinsics is None:
            return f"off: no valid CameraInfo on {self.info_topic} yet"
        return f"on: depth {self.depth_topic}, CameraInfo {self.info_topic}"

    def points(self, header, camera_hw, pixels, score, *, max_points: int, min_depth: float,
               max_depth: float):
        """Back-project camera ``pixels`` (flat indices) of the frame with ``header``.

        Returns the PointCloud2, or None (no CameraInfo, no depth frame within the skew, a
        depth image that cannot be read on this camera grid: counted, logged throttled).
        """
        intrinsics = self.intrinsics
        if intrinsics is None:
            self.tally.add("points_no_info")
            self._warn(f"no points: no valid CameraInfo on {self.info_topic} yet")
            return None
        paired = self.pairer.match(header.stamp)
        if paired is None:
            self.tally.add("depth_unpaired")
            self._warn(f"no points for a frame: no depth image on {self.depth_topic} within "
                       f"depth_max_skew_s={self.pairer.max_skew_ns / 1e9:g} s of its stamp")
            return None
        depth_header, depth = paired.item
        try:
            geometry = depth_geometry(camera_hw, depth.shape, intrinsics)
        except ValueError as exc:  # DepthFormatError: another aspect ratio
            self.tally.add("depth_refused")
            self._warn(f"no points: {exc}")
            return None
        pts = back_project(pixels, camera_hw, depth, geometry, score, max_points=max_points,
                           min_depth=min_depth, max_depth=max_depth)
        return cloud_msg(pts.xyz, pts.score, depth_header, pts.packed)


__all__ = ["DepthInput", "info_topic_for"]
