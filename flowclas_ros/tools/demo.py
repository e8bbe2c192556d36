"""``make demo``: the lifecycle node on the demo bundle, fed by a player node, over real DDS.

    python -m flowclas_ros.tools.demo [--source DIR_VIDEO_OR_BAG] [--topic NAME] [--rate HZ]
                                [--transport raw|compressed] [--out demo_output]
                                [--model BUNDLE] [--backend auto]

1. starts ``anomaly_node`` as its own process (as ``ros2 run`` would) on a private ROS domain;
2. brings it to active through its lifecycle services (configure, then activate);
3. plays the source (default: the shipped sequence ``models/demo_sequence_kitti``, a held-out
   KITTI raw drive with lost cargo composited on the road at camera resolution; or a
   recording, ``--source bag.mcap --topic NAME``, with its own stamps, at its recorded rate
   unless ``--rate`` is given) with
   :class:`~flowclas_ros.node.image_player.ImagePlayer`, raw or compressed (``--transport``);
4. writes every overlay it receives to ``<out>/overlay_NNNN.png``, and a summary (frames,
   throughput, latency p50/p99 from the frame's publication to the heatmap's arrival) to
   ``<out>/summary.json``;
5. shuts the node down through its lifecycle.

``python -m flowclas_ros.tools.demo --build-obstacle-sequence --hires ROOT/hires-road --coco
ROOT/coco128-seg`` rebuilds the shipped sequence from the project's data
(:mod:`flowclas_ros.data.demo_sequence`, models/demo_sequence_kitti/ATTRIBUTION.md);
``--build-sequence --camvid ROOT --coco ROOT`` the previous one, ``models/demo_sequence``
(CamVid with pasted COCO photos; ``--source models/demo_sequence`` plays it).
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from flowclas_ros import jsonio
from flowclas_ros.paths import SOURCE_ROOT

from .bench.common import percentile_summary

ROOT = SOURCE_ROOT
NODE = "flowclas_anomaly"


def default_bundle() -> Path:
    from flowclas_ros.node.anomaly_node import default_model_path

    return Path(default_model_path())


def _write_overlays(items: "queue.Queue", out: Path) -> None:
    """Writer thread: (index, rgb) items as out/overlay_<index>.png until None arrives."""
    from PIL import Image as PILImage

    while (item := items.get()) is not None:
        index, rgb = item
        PILImage.fromarray(rgb).save(out / f"overlay_{index:04d}.png", compress_level=1)


def run_demo(source: Path, out: Path, model: Path, backend: str, rate: float,
             max_frames: int, timeout: float, topic: str = "", transport: str = "raw") -> dict:
    """Run the demo end to end; returns the summary (also written to out/summary.json)."""
    # Imported here so `--help` and `--build-sequence` work without a ROS install.
    import rclpy
    from lifecycle_msgs.msg import Transition
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from flowclas_ros.node.image_player import ImagePlayer
    from flowclas_ros.node.lifecycle_client import LifecycleClient, NoReply
    from flowclas_ros.paths import DDS_PROFILE_ENV, default_dds_profile

    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("overlay_*.png"):
        old.unlink()
    env = dict(os.environ)
    # A private domain on loopback: the demo neither sees nor disturbs other ROS graphs.
    env.setdefault("ROS_DOMAIN_ID", str(100 + os.getpid() % 100))
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    # camera-sized frames need Fast DDS's large shared-memory segment on both sides
    default_dds_profile(env)
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE",
                                           DDS_PROFILE_ENV)})
    log_path = out / "anomaly_node.log"
    log = open(log_path, "w")
    node_proc = subprocess.Popen(
        [sys.executable, "-m", "flowclas_ros.tools.anomaly_node", "--ros-args",
         "-p", f"model_path:={model}", "-p", f"backend:={backend}",
         "-p", f"image_transport:={transport}"],
        env=env, stdout=log, stderr=subprocess.STDOUT)

    rclpy.init()
    demo = Node("flowclas_demo")
    player = ImagePlayer("image_player", parameter_overrides=[
        rclpy.parameter.Parameter("source", value=str(source)),
        rclpy.parameter.Parameter("topic", value=str(topic)),
        rclpy.parameter.Parameter("rate", value=float(rate)),
        rclpy.parameter.Parameter("max_frames", value=int(max_frames)),
        rclpy.parameter.Parameter("transport", value=str(transport)),
    ])
    # single-threaded: the callbacks only copy and queue. With rclpy's MultiThreadedExecutor
    # here the whole process stalled for up to 1.3 s at times on 2 cores, so the player's frames
    # went out in bursts and the node dropped the older ones of each burst
    executor = SingleThreadedExecutor()
    executor.add_node(demo)
    executor.add_node(player)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()

    received: dict[tuple[int, int], float] = {}  # stamp -> latency ms
    overlays = 0
    lock = threading.Lock()
    # PNG encoding (~50 ms a frame here) runs on its own thread: on the executor it delayed the
    # heatmap callbacks, so the summary measured the demo's writer instead of the node
    to_write: queue.Queue = queue.Queue()
    writer = threading.Thread(target=_write_overlays, args=(to_write, out), daemon=True)
    writer.start()
    done = threading.Event()
    t_last = [0.0]

    def all_in() -> None:  # under lock: every frame's heatmap and overlay have arrived
        if player.finished and min(len(received), overlays) >= player.sent:
            done.set()

    def stamp_key(msg: Image) -> tuple[int, int]:
        return msg.header.stamp.sec, msg.header.stamp.nanosec

    def on_heatmap(msg: Image) -> None:
        now = demo.get_clock().now().nanoseconds
        # when the player sent it (a recording's frames keep their old stamps)
        sent = player.sent_at.get(stamp_key(msg), msg.header.stamp.sec * 10**9
                                  + msg.header.stamp.nanosec)
        with lock:
            received[stamp_key(msg)] = (now - sent) / 1e6
            t_last[0] = time.perf_counter()
            all_in()

    def on_overlay(msg: Image) -> None:
        nonlocal overlays
        bgr = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.step)[:, : msg.width * 3]
        rgb = bgr.reshape(msg.height, msg.width, 3)[:, :, ::-1].copy()
        with lock:
            to_write.put((overlays, rgb))  # queued before done can be set: the writer gets it
            overlays += 1
            all_in()

    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    outputs = [demo.create_subscription(Image, topic_name, callback, qos)
               for topic_name, callback in (("anomaly/heatmap", on_heatmap),
                                            ("anomaly/overlay", on_overlay))]
    lifecycle = LifecycleClient(demo, NODE)

    def transition(tid: int, label: str) -> None:
        # bounded and retried: a reply lost during discovery must not hang the demo
        try:
            ok = lifecycle.change_state(tid, timeout_s=timeout,
                                        alive=lambda: node_proc.poll() is None)
        except NoReply:
            raise RuntimeError(f"{label}: no answer from {NODE} (see {log_path})") from None
        if not ok:
            raise RuntimeError(f"{label} failed (the node's reason is in {log_path})")

    summary: dict = {}
    try:
        if not lifecycle.wait_for_services(timeout):
            raise RuntimeError(f"{NODE} did not come up (see {log_path})")
        t0 = time.perf_counter()
        transition(Transition.TRANSITION_CONFIGURE, "configure")
        configure_s = time.perf_counter() - t0
        transition(Transition.TRANSITION_ACTIVATE, "activate")
        # the node's outputs must be matched before the first frame, or it is not computed
        deadline = time.monotonic() + timeout
        while (player.publisher.get_subscription_count() == 0
               or any(sub.get_publisher_count() == 0 for sub in outputs)) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        t_start = time.perf_counter()
        player.start()
        while not player.finished:
            done.wait(0.1)  # the player paces itself on its own thread; this only waits
        with lock:
            all_in()  # everything may have arrived before the player said it had finished
        # the last frames are still in flight: wait for them, up to a few inference times
        done.wait(timeout=max(5.0, 4.0 / rate) if rate > 0 else 5.0)
        elapsed = (t_last[0] or time.perf_counter()) - t_start
        to_write.put(None)
        writer.join()
        with lock:
            latencies = list(received.values())
        summary = {
            "source": str(source), "topic": topic or None, "transport": transport,
            "model": str(model), "backend": backend, "rate_hz": rate or "recorded",
            "frames_published": player.sent, "frames_received": len(latencies),
            "overlays_written": len(list(out.glob("overlay_*.png"))),
            "throughput_fps": round(len(latencies) / elapsed, 2) if elapsed > 0 else None,
            "latency_ms": {k: round(v, 1) for k, v in
                           percentile_summary(latencies).items() if k in ("p50", "p99")},
            "configure_s": round(configure_s, 2),
            "output_dir": str(out),
        }
        transition(Transition.TRANSITION_DEACTIVATE, "deactivate")
        transition(Transition.TRANSITION_CLEANUP, "cleanup")
        transition(Transition.TRANSITION_UNCONFIGURED_SHUTDOWN, "shutdown")
    finally:
        executor.shutdown()
        demo.destroy_node()
        player.destroy_node()
        rclpy.try_shutdown()
        try:
            node_proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            node_proc.terminate()
            node_proc.wait(timeout=10)
        log.close()
    jsonio.write(out / "summary.json", summary, indent=2)
    return summary


ATTRIBUTION = """# Demo sequence: attribution and licences

Twenty consecutive CamVid test frames with one object each from held-out COCO images pasted
in (the project's outlier-exposure paster, seed 0), saved as JPEG (quality 90). Rebuild:
`python -m flowclas_ros.tools.demo --build-sequence --camvid ROOT/camvid --coco ROOT/coco128-seg`.

* CamVid (SegNet version): G. Brostow, J. Fauqueur, R. Cipolla, "Semantic Object Classes in
  Video: A High-Definition Ground Truth Database", Pattern Recognition Letters 2009. Licence
  CC BY-NC 4.0: research and non-commercial use.
* COCO train2017 images (from the coco128-seg subset): T.-Y. Lin et al., "Microsoft COCO:
  Common Objects in Context", ECCV 2014. Annotations CC BY 4.0; each image keeps its Flickr
  licence (see the COCO annotation file for the image ids below).

| file | background | pasted object |
|---|---|---|
"""


def build_sequence(camvid: Path, coco: Path, out: Path, frames: int = 20) -> None:
    """Build the shipped sequence: the first ``frames`` CamVid test frames, saved as JPEG.

    Consecutive frames (one sequence) with held-out COCO objects pasted, as the validation set
    builds them.
    """
    from PIL import Image as PILImage

    from flowclas_ros.data.validation_set import build_validation_set

    with tempfile.TemporaryDirectory() as tmp:
        manifest = build_validation_set(camvid, coco, tmp, splits=("test",), limit=frames)
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob("*.jpg"):
            old.unlink()
        rows = []
        for i, frame in enumerate(manifest["frames"]):
            png = Path(tmp) / "images" / f"{frame['name']}.png"
            PILImage.open(png).convert("RGB").save(out / f"frame_{i:04d}.jpg", quality=90)
            rows.append(f"| frame_{i:04d}.jpg | CamVid test {Path(frame['frame']).stem} | "
                        f"COCO train2017 {frame['object']} (scale {frame['scale']}) |")
    (out / "ATTRIBUTION.md").write_text(ATTRIBUTION + "\n".join(rows) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="FlowCLAS ROS 2 demo: node + player over DDS")
    ap.add_argument("--source", type=Path, default=None,
                    help="folder of images, a video file, or a recording (rosbag2 folder or "
                         ".mcap; needs --topic) (default: the shipped sequence)")
    ap.add_argument("--topic", default="", help="the camera topic of a recording")
    ap.add_argument("--rate", type=float, default=None,
                    help="frames per second to publish (default 5; a recording: its own rate)")
    ap.add_argument("--transport", default="raw", choices=("raw", "compressed"),
                    help="publish sensor_msgs/Image or CompressedImage (jpeg) to the node")
    ap.add_argument("--frames", type=int, default=0, help="stop after N frames (0 = all)")
    ap.add_argument("--out", type=Path,
                    default=Path(os.environ.get("DEMO_OUTPUT", "demo_output")))
    ap.add_argument("--model", type=Path, default=None, help="bundle folder (default: demo)")
    ap.add_argument("--backend", default="auto",
                    choices=("auto", "torch", "onnxruntime", "tensorrt", "torch_tensorrt"))
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per lifecycle step")
    ap.add_argument("--build-sequence", action="store_true",
                    help="rebuild models/demo_sequence from --camvid and --coco, then exit")
    ap.add_argument("--build-obstacle-sequence", action="store_true",
                    help="rebuild models/demo_sequence_kitti from --hires and --coco, then exit")
    ap.add_argument("--camvid", type=Path)
    ap.add_argument("--hires", type=Path, help="the hires-road folder (KITTI raw frames)")
    ap.add_argument("--coco", type=Path)
    args = ap.parse_args(argv)
    if args.build_obstacle_sequence:
        if not (args.hires and args.coco):
            ap.error("--build-obstacle-sequence needs --hires and --coco")
        from flowclas_ros.data.demo_sequence import build_obstacle_sequence

        summary = build_obstacle_sequence(args.hires, args.coco,
                                          ROOT / "models" / "demo_sequence_kitti")
        print(json.dumps(summary))
        return 0
    if args.build_sequence:
        if not (args.camvid and args.coco):
            ap.error("--build-sequence needs --camvid and --coco")
        build_sequence(args.camvid, args.coco, ROOT / "models" / "demo_sequence")
        return 0
    from flowclas_ros.node.image_player import default_sequence, is_bag

    source = args.source or default_sequence()
    rate = args.rate if args.rate is not None else (0.0 if is_bag(source) else 5.0)
    model = args.model or default_bundle()
    if not Path(model).is_dir():
        print(f"no model bundle at {model}: train and export one (README: Training), or pass "
              "--model", file=sys.stderr)
        return 2
    try:
        summary = run_demo(source, args.out, model, args.backend, rate, args.frames,
                           args.timeout, topic=args.topic, transport=args.transport)
    except (RuntimeError, FileNotFoundError, ValueError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0 if summary.get("frames_received") else 1


if __name__ == "__main__":
    raise SystemExit(main())
