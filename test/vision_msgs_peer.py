"""The other process of test_vision_msgs.py, and the message both sides agree on.

``python vision_msgs_peer.py pub TOPIC``: publishes :func:`sample_message` on TOPIC (reliable)
every half second once a subscription is matched, until its stdin closes (the test has what it
needs) or TIMEOUT passes. ``python vision_msgs_peer.py sub TOPIC``: prints the first message it
receives on TOPIC as ``RESULT <json of as_plain(msg)>`` and exits 0; exits 1 after TIMEOUT.

Started with ``ros_harness.subprocess_env(**ros_msgs.vision_msgs_env())``: the test session's
domain and discovery settings, and the vision_msgs built for the tests. Imports only rclpy and
the messages (no pytest, no flowclas_ros).
"""
from __future__ import annotations

import json
import sys
import threading
import time

TIMEOUT = 60.0


def sample_message(msg):
    """Build a Detection2DArray with every field set to a value of its own.

    It has two detections (their own headers, ids and boxes), one with one hypothesis and one
    with two, each with a pose and a full covariance. ``msg`` is the ``vision_msgs.msg``
    module.
    """
    out = msg.Detection2DArray()
    out.header.stamp.sec, out.header.stamp.nanosec = 1714, 250_000_001
    out.header.frame_id = "camera_optical"
    for i, (class_id, score) in enumerate((("anomaly", 0.875), ("obstacle", 0.3125))):
        det = msg.Detection2D()
        det.header.stamp.sec, det.header.stamp.nanosec = 1714 + i, 250_000_002 + i
        det.header.frame_id = f"camera_optical_{i}"
        det.id = f"blob-{i}"
        det.bbox.center.position.x = 120.5 + i
        det.bbox.center.position.y = 64.25 + 2 * i
        det.bbox.center.theta = 0.125 * (i + 1)
        det.bbox.size_x, det.bbox.size_y = 40.0 + i, 22.5 + 3 * i
        for j in range(i + 1):
            hyp = msg.ObjectHypothesisWithPose()
            hyp.hypothesis.class_id = class_id if j == 0 else "unknown"
            hyp.hypothesis.score = score / (j + 1)
            p = hyp.pose.pose
            p.position.x, p.position.y, p.position.z = 1.5 + i, -2.25 - j, 0.75
            p.orientation.x, p.orientation.y = 0.0, 0.0
            p.orientation.z, p.orientation.w = 0.6, 0.8
            hyp.pose.covariance = [0.25 * k + i + 0.5 * j for k in range(36)]
            det.results.append(hyp)
        out.detections.append(det)
    return out


def as_plain(value):
    """Return a message as plain dicts, lists and numbers (every field, recursively)."""
    if hasattr(value, "get_fields_and_field_types"):
        return {name: as_plain(getattr(value, name))
                for name in value.get_fields_and_field_types()}
    if hasattr(value, "tolist"):  # numpy arrays (fixed-size numeric fields)
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [as_plain(v) for v in value]
    return value


def main(role: str, topic: str) -> int:
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from vision_msgs import msg

    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    ctx = Context()
    rclpy.init(context=ctx)  # ROS_DOMAIN_ID from the environment
    node = rclpy.create_node(f"vision_msgs_{role}", context=ctx)
    deadline = time.monotonic() + TIMEOUT
    try:
        if role == "pub":
            pub = node.create_publisher(msg.Detection2DArray, topic, qos)
            message = sample_message(msg)
            stop = threading.Event()
            threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
            while not stop.is_set():
                if time.monotonic() > deadline:
                    print("timed out before the test closed stdin", flush=True)
                    return 1
                if pub.get_subscription_count() > 0:
                    pub.publish(message)
                stop.wait(0.5)
            return 0
        got: list = []
        node.create_subscription(msg.Detection2DArray, topic, got.append, qos)
        executor = SingleThreadedExecutor(context=ctx)
        executor.add_node(node)
        while not got:
            if time.monotonic() > deadline:
                print(f"no message on {topic} within {TIMEOUT:.0f}s", flush=True)
                return 1
            executor.spin_once(timeout_sec=0.1)
        print("RESULT " + json.dumps(as_plain(got[0])), flush=True)
        return 0
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
