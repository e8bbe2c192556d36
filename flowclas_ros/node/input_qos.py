"""The image subscriptions' QoS: ``sensor_data``, ``reliable``, or ``auto``, the camera's own.

A subscription's QoS decides what the link between the camera and the node is: best effort as
soon as either side is best effort. Best effort loses a camera-sized frame whenever one of its
fragments is lost, which is what happens to a frame over Fast DDS's 512 KiB shared-memory
segment when the camera driver runs without the shipped profile: from a reliable publisher
(image_transport's default) 9-17 of 90 640x480 frames and 0-2 of 90 720p or 1080p frames reached
a best-effort subscriber here, 90 of 90 a reliable one. A reliable subscription, though, never
connects to a best-effort publisher (a driver using ``sensor_data``).

``auto`` (the default) therefore takes what the camera offers, as ``ros2 topic echo`` and
rosbag2 do: reliable when every publisher of the topic offers reliable, best effort otherwise.
Until a publisher exists it subscribes best effort, which takes either kind; the node looks
again every :data:`RECHECK_S` seconds while active and subscribes anew when the publishers'
offer changed (:meth:`.cameras.CameraPath.adapt_qos`). With no publisher left it keeps what it
has, so a driver restarting with the same QoS costs nothing.
"""
from __future__ import annotations

from typing import Iterable

from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

RECHECK_S = 1.0
PROFILES: dict[str, QoSProfile] = {
    "sensor_data": qos_profile_sensor_data,  # best effort, keep last 5
    "reliable": QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE,
                           history=HistoryPolicy.KEEP_LAST),
}


def choose(mode: str, publishers: Iterable, current: str | None = None) -> str:
    """Return the QoS (a :data:`PROFILES` key) to subscribe with.

    ``mode``: the ``image_qos`` parameter; ``publishers``: the topic's
    ``TopicEndpointInfo`` (``node.get_publishers_info_by_topic``); ``current``: what is
    subscribed now (None: nothing yet).
    """
    if mode != "auto":
        return mode
    offers = [p.qos_profile.reliability for p in publishers]
    if not offers:
        return current or "sensor_data"
    return "reliable" if all(r == ReliabilityPolicy.RELIABLE for r in offers) else "sensor_data"


def label(mode: str, chosen: str) -> str:
    """Describe the subscription's QoS for logs and /diagnostics, e.g. ``reliable (auto)``."""
    return f"{chosen} (auto)" if mode == "auto" else chosen


__all__ = ["PROFILES", "RECHECK_S", "choose", "label"]
