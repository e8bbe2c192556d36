"""Measure the cost of the outputs a robot acts on, on a running node (``bench.node``, part 2).

Today's path against detections + persistence + points, in one run.

:func:`measure` drives an already active ``flowclas_anomaly`` node (configured with
:data:`NODE_PARAMETERS`: a depth topic, persistence 2 of 3, at most 20000 points) from a peer
process (:class:`Peer`, this module run with ``--peer``), as a robot's camera drivers and the
consumers of the outputs are: the camera images, depth images and CameraInfo are published
there and the heatmaps, detections and points received and timed there (one clock:
``time.monotonic``), never sharing the node's GIL. Closed loop, one frame in flight:

* frames: those of the shipped demo sequence (resized to the frame size) whose regions hold
  more than 22k pixels at the mask threshold chosen for it (the highest that leaves at least
  6 such frames), each shown for 5 consecutive frames (a camera's neighbouring frames look
  alike; persistence needs that): every frame has its 20k points once confirmed;
* **today** blocks: ``publish_detections`` and ``publish_points`` off, only the heatmap
  wanted: exactly the existing path; latency = image published -> heatmap received;
* **robot** blocks: both on, a synthetic 16UC1 depth image (a plane at 3-4 m) and its
  CameraInfo published beside each frame (the same stamp); latency = image published -> the
  last of heatmap, detections and points received;
* the blocks alternate (``block`` frames each) so that load changes hit both, a robot block
  showing the frames of the today block before it; the first 3 frames of every block are left
  out (persistence confirms regions on their 2nd frame).

Reports both latencies' p50/p99, the added p50/p99 (robot - today), the node's own time in
the robot outputs (:attr:`flowclas_ros.node.robot_outputs.RobotOutputs.timing`: regions,
persistence, messages, back-projection; wall and the worker thread's CPU time, which other
processes' load does not inflate) and the points and detections per frame.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time

import numpy as np

from flowclas_ros.paths import DDS_PROFILE_ENV

from .common import percentile_summary

NODE_PARAMETERS = {"depth_topic": "depth/image", "persistence_n": 2, "persistence_m": 3,
                   "max_points": 20000, "min_region_pixels": 50, "publish_detections": False,
                   "publish_points": False}
FX = 525.0
REPEAT = 5  # camera frames per demo frame
SKIP = 3  # frames left out at the start of each block
TARGET_PIXELS = 22000
MIN_FRAMES = 6


def demo_frames(height: int, width: int) -> list[np.ndarray]:
    """Load the demo sequence at (height, width), RGB."""
    from PIL import Image

    from flowclas_ros.paths import package_file

    folder = package_file("models", "demo_sequence")
    return [np.asarray(Image.open(p).convert("RGB").resize((width, height), Image.BILINEAR))
            for p in sorted(folder.glob("frame_*.jpg"))]


def pick_threshold(backend, frames, min_pixels: int = 50) -> tuple[float, list[int]]:
    """Pick a threshold, and the frames, whose regions hold more than 20k pixels.

    The highest threshold at which at least MIN_FRAMES of ``frames`` have regions (more than
    ``min_pixels`` each) of at least TARGET_PIXELS pixels in all, and the indices of those
    frames: the bench shows only them, so that (persistence confirmed) every frame has its
    20k points.
    """
    from flowclas_ros.outputs.regions import find_regions

    heat = [backend.infer(f, heatmap=True, mask=False, overlay=False).heatmap for f in frames]
    best = (1.0, list(range(len(frames))))
    for thr in np.arange(float(max(h.max() for h in heat)), 0.5, -0.05):
        if sum(int(np.count_nonzero(h >= thr)) >= TARGET_PIXELS for h in heat) < MIN_FRAMES:
            continue  # a quick bound: the regions hold at most the mask's pixels
        px = [sum(r.pixels for r in find_regions(h >= thr, h, min_region_pixels=min_pixels)
                  .regions) for h in heat]
        best = (float(thr), [k for k, n in enumerate(px) if n >= TARGET_PIXELS])
        if len(best[1]) >= MIN_FRAMES:
            break
    return best


def depth_messages(height: int, width: int):
    """Make a 16UC1 depth Image of a tilted plane (3 m at the top, 4 m at the bottom).

    Returns (the Image, its CameraInfo), frame ``depth_optical``.
    """
    from sensor_msgs.msg import CameraInfo, Image

    z = np.repeat(np.linspace(3000, 4000, height, dtype=np.float64)[:, None], width, 1)
    depth = Image(height=height, width=width, encoding="16UC1", is_bigendian=0, step=2 * width)
    depth.header.frame_id = "depth_optical"
    depth.data = np.rint(z).astype("<u2").tobytes()
    info = CameraInfo(width=width, height=height)
    info.header.frame_id = "depth_optical"
    info.k = [FX, 0.0, (width - 1) / 2, 0.0, FX, (height - 1) / 2, 0.0, 0.0, 1.0]
    return depth, info


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        tick.wait(0.01)


def measure(node, ns: str, *, domain_id: int, height: int, width: int, frames: int,
            block: int, first_stamp: int, timeout: float = 60.0) -> dict:
    """Alternate today / robot blocks on ``node`` from a peer process (module docstring).

    ``node``: an active ``flowclas_anomaly`` in namespace ``ns`` on ``domain_id``, spun by
    the caller, configured with :data:`NODE_PARAMETERS`.
    """
    from rclpy.parameter import Parameter

    robot = node._robot  # noqa: SLF001 - the bench reads the node's own counters
    images = demo_frames(height, width)
    thr, keep = pick_threshold(node._backend, images)  # noqa: SLF001
    node.set_parameters([Parameter("threshold", value=thr)])
    spec = {"ns": ns, "domain_id": domain_id, "height": height, "width": width, "keep": keep,
            "block": block, "first_stamp": first_stamp, "timeout": timeout}
    lat: dict[str, list[float]] = {"today": [], "robot": []}
    points, dets, lost = [], [], 0
    with Peer(spec, timeout) as peer:
        pubs = [node._pubs["heatmap"], robot._pts_pub]  # noqa: SLF001
        pubs += [robot._det_pub] if peer.detections else []  # noqa: SLF001
        _wait(lambda: all(p.get_subscription_count() > 0 for p in pubs), timeout,
              "the peer's heatmap/points/detections subscriptions")
        _wait(lambda: peer.call({"cmd": "info"}) and robot.depth.intrinsics is not None,
              timeout, "the CameraInfo")
        robot.timing = type(robot.timing)()  # the robot blocks' own time only
        robot.cpu_timing = type(robot.cpu_timing)()
        for b0 in range(0, frames, block):
            on = (b0 // block) % 2 == 1
            node.set_parameters([Parameter("publish_detections", value=on),
                                 Parameter("publish_points", value=on)])
            got = peer.call({"cmd": "run", "robot": on, "start": b0,
                             "count": min(block, frames - b0)})
            if all(ms is None for _, ms, _, _ in got["frames"]):
                raise RuntimeError(
                    f"no frame of a block of {len(got['frames'])} came back from the node "
                    f"(robot outputs {'on' if on else 'off'}): between processes, camera frames "
                    f"need the shared-memory DDS profile ({DDS_PROFILE_ENV})")
            for i, ms, n_points, n_dets in got["frames"]:
                if ms is None:
                    lost += 1
                elif i % block >= SKIP:
                    lat["robot" if on else "today"].append(ms)
                    if on:
                        points.append(n_points)
                        if n_dets is not None:
                            dets.append(n_dets)
    today, with_robot = percentile_summary(lat["today"]), percentile_summary(lat["robot"])
    own50, own99 = robot.timing.percentiles(50, 99)
    cpu50, cpu99 = robot.cpu_timing.percentiles(50, 99)
    return {
        "frames": f"demo sequence at {width}x{height}, each shown {REPEAT}x; blocks of {block},"
                  f" the first {SKIP} of each left out",
        "threshold": thr, "demo_frames_used": keep,
        "detections": "on" if peer.detections else f"off: {peer.why}",
        "today_ms": today, "with_robot_outputs_ms": with_robot,
        "added_p50_ms": with_robot["p50"] - today["p50"],
        "added_p99_ms": with_robot["p99"] - today["p99"],
        "node_robot_outputs_ms": {"p50": own50, "p99": own99},
        "node_robot_outputs_thread_cpu_ms": {"p50": cpu50, "p99": cpu99},
        "points_per_frame": float(np.mean(points)) if points else 0.0,
        "detections_per_frame": float(np.mean(dets)) if dets else None,
        "lost": lost,
    }


class Peer:
    """The consumer and camera side of the comparison, as its own process (:func:`peer_main`).

    Commands go to its stdin as JSON lines, one JSON line answers each; its first line says
    it is ready (its publishers matched, its subscriptions made) and whether it receives
    detections (vision_msgs importable there: the environment is this process's).
    """

    def __init__(self, spec: dict, timeout: float):
        self.timeout = timeout
        self.proc = subprocess.Popen(
            [sys.executable, "-m", __name__, "--peer", json.dumps(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        hello = self._read()
        self.detections, self.why = hello["detections"], hello.get("why", "")

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the bench peer exited (code {self.proc.wait()}); its errors "
                               "are above")
        return json.loads(line)

    def call(self, command: dict) -> dict:
        self.proc.stdin.write(json.dumps(command) + "\n")
        return self._read()

    def __enter__(self) -> "Peer":
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=self.timeout)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


def peer_main(spec: dict) -> int:
    """Run the peer: publish frames (and depth) closed loop, time what comes back."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2

    from flowclas_ros.node.image_conversion import numpy_to_msg
    from flowclas_ros.node.robot_messages import load_vision_msgs

    ns, timeout = spec["ns"], float(spec["timeout"])
    rclpy.init(domain_id=int(spec["domain_id"]))
    peer = Node("flowclas_bench_peer")
    reliable = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
    arrived = threading.Condition()
    got: dict[str, dict] = {"heatmap": {}, "det": {}, "points": {}}

    def record(key, size):
        def cb(msg):
            t = time.monotonic()
            with arrived:
                got[key][(msg.header.stamp.sec, msg.header.stamp.nanosec)] = (t, size(msg))
                arrived.notify_all()
        return cb

    vm, why = load_vision_msgs()
    peer.create_subscription(Image, f"{ns}/anomaly/heatmap", record("heatmap", lambda m: 0),
                             reliable)
    peer.create_subscription(PointCloud2, f"{ns}/anomaly/points",
                             record("points", lambda m: m.width), reliable)
    if vm is not None:
        peer.create_subscription(vm.Detection2DArray, f"{ns}/anomaly/detections",
                                 record("det", lambda m: len(m.detections)), reliable)
    pub = peer.create_publisher(Image, f"{ns}/image", qos_profile_sensor_data)
    depth_pub = peer.create_publisher(Image, f"{ns}/depth/image", qos_profile_sensor_data)
    info_pub = peer.create_publisher(CameraInfo, f"{ns}/depth/camera_info", reliable)
    executor = SingleThreadedExecutor()
    executor.add_node(peer)
    threading.Thread(target=executor.spin, daemon=True).start()
    _wait(lambda: all(p.get_subscription_count() > 0 for p in (pub, depth_pub, info_pub)),
          timeout, "the node's image and depth subscriptions")
    images = demo_frames(int(spec["height"]), int(spec["width"]))
    images = [images[k] for k in spec["keep"]]
    depth, info = depth_messages(int(spec["height"]), int(spec["width"]))
    block, first = int(spec["block"]), int(spec["first_stamp"])
    print(json.dumps({"detections": vm is not None, "why": why}), flush=True)

    def frame(i: int, robot: bool) -> list:
        stamp = (first + i, 0)
        k = (i // (2 * block)) * block + i % block  # a today block and the robot block after
        msg = numpy_to_msg(images[(k // REPEAT) % len(images)], "rgb8")  # it: the same frames
        msg.header.frame_id = "bench"
        msg.header.stamp.sec, msg.header.stamp.nanosec = stamp
        keys = ["heatmap"] + (["points"] + (["det"] if vm is not None else []) if robot else [])
        if robot:  # the depth camera's own message: not part of the frame's latency
            depth.header.stamp = msg.header.stamp
            depth_pub.publish(depth)
        t0 = time.monotonic()
        pub.publish(msg)
        with arrived:
            if not arrived.wait_for(lambda: all(stamp in got[k] for k in keys), timeout=10.0):
                return [i, None, None, None]
        done = max(got[k][stamp][0] for k in keys)
        return [i, (done - t0) * 1e3, got["points"].get(stamp, (0, 0))[1] if robot else None,
                got["det"].get(stamp, (0, None))[1] if robot else None]

    try:
        for line in sys.stdin:
            cmd = json.loads(line)
            if cmd["cmd"] == "info":
                info_pub.publish(info)
                print(json.dumps({"ok": True}), flush=True)
            elif cmd["cmd"] == "run":
                rows = [frame(i, bool(cmd["robot"]))
                        for i in range(cmd["start"], cmd["start"] + cmd["count"])]
                print(json.dumps({"frames": rows}), flush=True)
            else:
                break
    finally:
        executor.shutdown(timeout_sec=5)
        peer.destroy_node()
        rclpy.try_shutdown()
    return 0


__all__ = ["NODE_PARAMETERS", "Peer", "demo_frames", "depth_messages", "measure", "peer_main",
           "pick_threshold"]


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="the peer process of bench.node's robot_outputs")
    ap.add_argument("--peer", required=True, help="its settings, as JSON (from Peer)")
    raise SystemExit(peer_main(json.loads(ap.parse_args().peer)))
