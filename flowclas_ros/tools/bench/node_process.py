"""End to end through the node in its own process, as deployed (``bench.node --node-process``).

:mod:`.node` runs the node and the bench as two DDS participants of one process: Fast DDS then
hands every message over inside the process, without its shared-memory transport, which a
deployment never gets (the camera driver, the node and the consumers are separate processes).
Here ``anomaly_node`` runs as its own process, started as ``ros2 launch`` starts it (the shipped
DDS profile in its environment), and this process is the camera driver and the consumer: it
drives the lifecycle over its services, publishes rgb8 frames (best effort, as drivers do) and
subscribes to ``anomaly/heatmap`` only, closed loop (the next frame once the previous heatmap
arrived). Both processes keep freed frame buffers (:mod:`flowclas_ros.memory`), as the node
does in both measurements.

* end to end: just before ``publish(image)`` to the heatmap callback, in this process;
* backend and the node's receive-to-publish: the node's own figures from ``/diagnostics``
  (``inference_p50_ms`` is ``FrameResult.inference_ms``, as :mod:`.node` records it), read
  once every frame is published; its window holds the warm-up frames too (``warmup`` of
  ``warmup + frames``).
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from .common import machine_line, percentile_summary, stop_processes

NODE = "flowclas_anomaly"
GOAL_RATIO = 1.15


def run(bundle: Path, *, frames: int, warmup: int, height: int, width: int, backend: str,
        device: str, precision: str, domain_id: int, log_dir: Path,
        timeout: float = 120.0) -> dict:
    """Measure and return the JSON of :func:`.node.run` (``node``: where the node ran)."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from flowclas_ros.memory import keep_frame_buffers
    from flowclas_ros.node.image_conversion import numpy_to_msg
    from flowclas_ros.node.lifecycle_client import LifecycleClient
    from flowclas_ros.paths import default_dds_profile

    keep_frame_buffers()
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    default_dds_profile()
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id), PYTHONUNBUFFERED="1")
    ns = f"/bench_{os.getpid()}_{width}x{height}"
    log = log_dir / f"node_{width}x{height}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "flowclas_ros.tools.anomaly_node", "--ros-args",
         "-r", f"__ns:={ns}", "-p", f"model_path:={bundle}", "-p", f"backend:={backend}",
         "-p", f"device:={device}", "-p", f"precision:={precision}",
         "-p", "diagnostics_period:=0.25"],
        env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    ctx = Context()
    rclpy.init(context=ctx, domain_id=domain_id)
    bench = Node("flowclas_bench_process", context=ctx)
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(bench)
    threading.Thread(target=executor.spin, daemon=True).start()
    received: dict[int, float] = {}
    status: dict[str, str] = {}
    arrived = threading.Condition()

    def on_heatmap(msg):
        t = time.monotonic()
        with arrived:
            received[msg.header.stamp.sec] = t
            arrived.notify_all()

    def on_diagnostics(msg):
        for s in msg.status:
            if s.name.startswith(f"{ns}/{NODE}:") and s.name.endswith("segmentation"):
                with arrived:
                    status.clear()
                    status.update({kv.key: kv.value for kv in s.values})
                    arrived.notify_all()

    try:
        LifecycleClient(bench, f"{ns}/{NODE}").bring_up(timeout, see=str(log))
        bench.create_subscription(Image, f"{ns}/anomaly/heatmap", on_heatmap,
                                  QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE))
        bench.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
        pub = bench.create_publisher(Image, f"{ns}/image", qos_profile_sensor_data)
        deadline = time.monotonic() + timeout
        while pub.get_subscription_count() == 0 or not bench.get_publishers_info_by_topic(
                f"{ns}/anomaly/heatmap"):
            if time.monotonic() > deadline:
                raise RuntimeError("DDS discovery did not complete")
            threading.Event().wait(0.01)
        threading.Event().wait(0.5)  # the heatmap subscription matched on the node's side too

        rng = np.random.default_rng(0)
        images = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(4)]
        e2e, lost = [], 0
        for i in range(warmup + frames):
            header = Header(frame_id="bench")
            header.stamp.sec = 1 + i
            msg = numpy_to_msg(images[i % 4], "rgb8", header)  # the camera driver's work
            t0 = time.monotonic()
            pub.publish(msg)
            with arrived:
                ok = arrived.wait_for(lambda: 1 + i in received, timeout=10.0)
            if not ok:  # best effort input: count the loss, go on
                lost += 1
            elif i >= warmup:
                e2e.append((received[1 + i] - t0) * 1e3)
        published = warmup + frames - lost
        with arrived:  # the node's figures once they cover every frame
            if not arrived.wait_for(lambda: int(status.get("frames_published", -1)) >= published,
                                    timeout=30.0):
                raise RuntimeError(f"no /diagnostics of {ns}/{NODE} covering {published} frames")
            node = dict(status)
        s_e2e = percentile_summary(e2e)
        be = {"p50": float(node["inference_p50_ms"]), "p99": float(node["inference_p99_ms"])}
        return {
            "machine": machine_line(), "bundle": str(bundle),
            "node": "its own process (anomaly_node; DDS between processes)",
            "backend": node.get("backend"), "device": node.get("device"),
            "precision": node.get("precision"),
            "frame": f"{width}x{height} rgb8", "frames": len(e2e), "warmup": warmup,
            "lost": lost,
            "end_to_end_ms": s_e2e,
            "backend_ms": be,
            "node_receive_to_publish_ms": {"p50": float(node["latency_p50_ms"]),
                                           "p99": float(node["latency_p99_ms"])},
            "ratio_p50": s_e2e["p50"] / be["p50"],
            "ratio_p99": s_e2e["p99"] / be["p99"],
            "goal_ratio": GOAL_RATIO,
            "meets_goal_p50": s_e2e["p50"] / be["p50"] <= GOAL_RATIO,
        }
    finally:
        stop_processes([proc])
        executor.shutdown(timeout_sec=5)
        bench.destroy_node()
        rclpy.try_shutdown(context=ctx)


__all__ = ["run"]
