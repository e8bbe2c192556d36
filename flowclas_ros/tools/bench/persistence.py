"""Count the single-frame regions that reach ``anomaly/detections``, persistence off and on.

A replayed sequence goes through the real node over DDS.

    python -m flowclas_ros.tools.bench.persistence [--bundle DIR] [--source DIR]
        [--settings 1/1 2/3] [--repeat 1] [--noise 0] [--min-region-pixels 50]

The ``flowclas_anomaly`` node (its own rclpy Context, as ``anomaly_node`` runs) gets the frames of
``--source`` (default: the shipped demo sequence, 20 CamVid frames 1 s apart, each with one
pasted COCO object) closed loop from a second participant, once per persistence setting
(``n/m``, set live on the same node: the same heatmaps each time). Each frame's
``anomaly/mask`` and ``anomaly/detections`` are received; the counting is done here:

* the **regions** of each frame are those of its received mask (8-connected, more than
  ``--min-region-pixels`` pixels: what the node's detections are made from);
* regions are **tracked** across frames by box IoU >= ``--iou`` (one to one, greedy, highest
  IoU first; a track may skip two frames, as persistence n of 3 keeps it); a region whose
  track has one frame appears in a single frame;
* each detection is the region of its frame with the same box; the report counts the
  detections, and those of single-frame regions.

``--repeat N`` shows each frame N times (a camera's neighbouring frames), each copy with
Gaussian pixel noise of ``--noise`` grey levels and a shift of up to one pixel (seeded), so
regions that flicker with the noise are single-frame while a steady object is not.
Detections need vision_msgs. Prints JSON; the README quotes it.
"""
from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

import numpy as np

from .common import machine_line


def load_frames(source: Path, repeat: int, noise: float, seed: int = 0) -> list[np.ndarray]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for p in sorted(source.glob("*.jpg")) + sorted(source.glob("*.png")):
        rgb = np.asarray(Image.open(p).convert("RGB"))
        for k in range(repeat):
            f = rgb
            if k and noise > 0:
                dy, dx = rng.integers(-1, 2, size=2)
                f = np.roll(rgb, (int(dy), int(dx)), axis=(0, 1)).astype(np.float32)
                f = np.clip(f + rng.normal(0, noise, f.shape), 0, 255).astype(np.uint8)
            out.append(f)
    return out


def track_lengths(frames_boxes: list[list[tuple]], iou: float,
                  max_gap: int = 2) -> list[list[int]]:
    """Count, for each frame's boxes, in how many frames the track of each box appears.

    A box joins
    the track whose last box (seen at most ``max_gap`` frames before the previous one) it
    overlaps most, box IoU >= ``iou``, one to one, greedy; else it starts a track. With
    ``max_gap`` 2 a region seen in frames t and t + 3 is one track, as persistence n of 3
    (a track is forgotten after 3 frames unseen) sees it.
    """
    from flowclas_ros.outputs.persistence import box_iou

    last: list[tuple[tuple, int]] = []  # track -> (last box, last frame)
    count: list[int] = []
    members: list[list[int]] = []
    for t, boxes in enumerate(frames_boxes):
        live = [k for k, (_, f) in enumerate(last) if f >= t - 1 - max_gap]
        ids = [-1] * len(boxes)
        if boxes and live:
            m = box_iou(np.array(boxes), np.array([last[k][0] for k in live]))
            pairs = sorted(((m[i, j], -live[j], i, j) for i in range(len(boxes))
                            for j in range(len(live)) if m[i, j] >= iou), reverse=True)
            used_i, used_j = set(), set()
            for _, _, i, j in pairs:
                if i not in used_i and j not in used_j:
                    used_i.add(i)
                    used_j.add(j)
                    ids[i] = live[j]
        for i, box in enumerate(boxes):
            if ids[i] < 0:
                ids[i] = len(last)
                last.append((box, t))
                count.append(0)
            last[ids[i]] = (box, t)
            count[ids[i]] += 1
        members.append(ids)
    return [[count[k] for k in ids] for ids in members]


def replay(bundle: Path, frames: list[np.ndarray], settings: list[tuple[int, int]], *,
           min_region_pixels: int, iou: float, domain_id: int) -> dict:
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from flowclas_ros.node.anomaly_node import AnomalyNode
    from flowclas_ros.node.image_conversion import numpy_to_msg
    from flowclas_ros.node.robot_messages import load_vision_msgs
    from flowclas_ros.outputs.regions import find_regions

    vm, why = load_vision_msgs()
    if vm is None:
        raise SystemExit(f"this count needs anomaly/detections: {why}")
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    ctx, bench_ctx = Context(), Context()
    rclpy.init(context=ctx, domain_id=domain_id)
    rclpy.init(context=bench_ctx, domain_id=domain_id)
    ns = f"/persistence_{os.getpid()}"
    node = AnomalyNode(namespace=ns, context=ctx, parameter_overrides=[
        Parameter("model_path", value=str(bundle)), Parameter("image_qos", value="reliable"),
        Parameter("min_region_pixels", value=min_region_pixels),
        Parameter("persistence_iou", value=iou)])
    bench = Node("flowclas_persistence_bench", context=bench_ctx)
    execs = [MultiThreadedExecutor(num_threads=3, context=ctx),
             SingleThreadedExecutor(context=bench_ctx)]
    execs[0].add_node(node)
    execs[1].add_node(bench)
    for e in execs:
        threading.Thread(target=e.spin, daemon=True).start()
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    got: dict[str, dict] = {"mask": {}, "det": {}}
    cv = threading.Condition()

    def keep(key):
        def cb(msg):
            with cv:
                got[key][(msg.header.stamp.sec, msg.header.stamp.nanosec)] = msg
                cv.notify_all()
        return cb

    try:
        for trigger in (node.trigger_configure, node.trigger_activate):
            if trigger() != TransitionCallbackReturn.SUCCESS:
                raise RuntimeError(f"{trigger.__name__} failed: {node.last_error}")
        bench.create_subscription(Image, f"{ns}/anomaly/mask", keep("mask"), qos)
        bench.create_subscription(vm.Detection2DArray, f"{ns}/anomaly/detections", keep("det"),
                                  qos)
        pub = bench.create_publisher(Image, f"{ns}/image", qos)
        deadline = time.monotonic() + 60
        while not (pub.get_subscription_count() and node._pubs["mask"].get_subscription_count()
                   and node._robot._det_pub.get_subscription_count()):  # noqa: SLF001
            if time.monotonic() > deadline:
                raise RuntimeError("DDS discovery did not complete")
            threading.Event().wait(0.01)
        results, stamp = {}, 0
        for n, m in settings:
            node.set_parameters([Parameter("persistence_m", value=max(m, node.get_parameter(
                "persistence_m").value)), Parameter("persistence_n", value=n),
                Parameter("persistence_m", value=m)])
            masks, dets = [], []
            for rgb in frames:
                stamp += 1
                msg = numpy_to_msg(rgb, "rgb8")
                msg.header.frame_id = "camera"
                msg.header.stamp.sec = stamp
                key = (stamp, 0)
                pub.publish(msg)
                with cv:
                    if not cv.wait_for(lambda: key in got["mask"] and key in got["det"], 30):
                        raise RuntimeError(f"no outputs for frame {stamp}")
                    mask = got["mask"].pop(key)
                    det = got["det"].pop(key)
                mask = np.frombuffer(mask.data, np.uint8).reshape(mask.height, mask.width)
                masks.append([r.box for r in find_regions(
                    mask, min_region_pixels=min_region_pixels).regions])
                dets.append([(round(d.bbox.center.position.x - (d.bbox.size_x - 1) / 2),
                              round(d.bbox.center.position.y - (d.bbox.size_y - 1) / 2),
                              int(d.bbox.size_x), int(d.bbox.size_y)) for d in det.detections])
            lengths = track_lengths(masks, iou)
            single = sum(1 for frame in lengths for n_ in frame if n_ == 1)
            reported = single_reported = 0
            for boxes, lens, ds in zip(masks, lengths, dets):
                for d in ds:
                    reported += 1
                    if d in boxes and lens[boxes.index(d)] == 1:
                        single_reported += 1
            results[f"{n}/{m}"] = {"regions": sum(map(len, masks)),
                                   "single_frame_regions": single,
                                   "detections": reported,
                                   "single_frame_regions_reported": single_reported}
        return results
    finally:
        node.release()
        for e in execs:
            e.shutdown(timeout_sec=5)
        node.destroy_node()
        bench.destroy_node()
        rclpy.try_shutdown(context=ctx)
        rclpy.try_shutdown(context=bench_ctx)


def main(argv=None) -> int:
    from flowclas_ros.node.anomaly_node import default_model_path
    from flowclas_ros.paths import package_file

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=Path(default_model_path()))
    ap.add_argument("--source", type=Path, default=package_file("models", "demo_sequence"))
    ap.add_argument("--settings", nargs="+", default=["1/1", "2/3"],
                    help="persistence settings n/m to compare")
    ap.add_argument("--repeat", type=int, default=1, help="show each frame this many times")
    ap.add_argument("--noise", type=float, default=0.0,
                    help="pixel noise (grey levels) and a one-pixel shift on repeated copies")
    ap.add_argument("--min-region-pixels", type=int, default=50)
    ap.add_argument("--iou", type=float, default=0.3)
    ap.add_argument("--domain-id", type=int, default=100 + os.getpid() % 100)
    args = ap.parse_args(argv)
    frames = load_frames(args.source, max(args.repeat, 1), args.noise)
    settings = [tuple(int(v) for v in s.split("/")) for s in args.settings]
    out = {"machine": machine_line(), "bundle": str(args.bundle), "source": str(args.source),
           "frames": len(frames), "repeat": args.repeat, "noise": args.noise,
           "min_region_pixels": args.min_region_pixels, "iou": args.iou,
           "results": replay(args.bundle, frames, settings,
                             min_region_pixels=args.min_region_pixels, iou=args.iou,
                             domain_id=args.domain_id)}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
