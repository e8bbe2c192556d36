"""The deployment path imports only what it runs: a node on ONNX Runtime never loads torch.

A separate process (a fresh interpreter, so nothing the test session imported counts) starts the
node on the demo bundle with ``backend: onnxruntime``, configures and activates it, serves real
frames over DDS until heatmaps come back, and reports what it imported and its resident memory.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("rclpy", reason="rclpy (ROS 2 Jazzy) is not installed")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")

ROOT = Path(__file__).resolve().parents[1]
DEMO_BUNDLE = ROOT / "models" / "flowclas_lite2_camvid"

SCRIPT = r"""
import json, sys, threading, time
import numpy as np
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from flowclas_ros.node.anomaly_node import AnomalyNode
from flowclas_ros.node.image_conversion import numpy_to_msg

bundle, domain, frames = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rclpy.init(domain_id=domain)
node = AnomalyNode(parameter_overrides=[
    Parameter("model_path", value=bundle), Parameter("backend", value="onnxruntime"),
    Parameter("device", value="auto"), Parameter("cpu_threads", value=1)])
assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS, node.last_error
assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
client = Node("deployment_probe")
qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
got = []
done = threading.Event()
def on_heatmap(msg):
    got.append(msg.header.stamp.sec)
    if len(set(got)) >= frames:
        done.set()
client.create_subscription(Image, "anomaly/heatmap", on_heatmap, qos)
pub = client.create_publisher(Image, "image", qos)
ex = SingleThreadedExecutor()
ex.add_node(node)
ex.add_node(client)
threading.Thread(target=ex.spin, daemon=True).start()
rgb = np.random.default_rng(0).integers(0, 256, (480, 640, 3), np.uint8)
deadline = time.monotonic() + 120
sec = 0
while not done.is_set():
    if time.monotonic() > deadline:
        raise SystemExit(f"no heatmaps: {len(got)} of {frames}")
    if pub.get_subscription_count() and node._pubs["heatmap"].get_subscription_count():
        sec += 1
        msg = numpy_to_msg(rgb, "rgb8", Header(frame_id="camera"))
        msg.header.stamp.sec = sec
        pub.publish(msg)
    done.wait(0.2)
rss = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS:"))
print(json.dumps({"heatmaps": len(set(got)), "backend": node._backend.name,
                  "torch_modules": sorted(m for m in sys.modules if m.split(".")[0] == "torch"),
                  "rss_mib": rss / 1024}))
ex.shutdown(timeout_sec=5)
node.release()
rclpy.shutdown()
"""


@pytest.mark.ros
@pytest.mark.skipif(not DEMO_BUNDLE.is_dir(), reason="the demo bundle is not in this checkout")
def test_node_on_onnxruntime_imports_no_torch():
    env = {**os.environ, "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    domain = str(150 + os.getpid() % 80)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(DEMO_BUNDLE), domain, "3"],
                          capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["backend"] == "onnxruntime"
    assert report["heatmaps"] >= 3
    assert report["torch_modules"] == [], f"torch was imported: {report['torch_modules'][:5]}"
    # the ONNX Runtime node alone: about 0.2 GB; with torch it held about 0.9 GB
    assert report["rss_mib"] < 300, report
