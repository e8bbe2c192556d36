r"""N cameras through one node (batched) against N single-camera nodes in separate processes.

    python -m flowclas_ros.tools.bench.multi_camera [--bundle DIR] [--cameras 4] [--rate 10] \
        [--width 640 --height 480] [--duration 20] [--backend onnxruntime] \
        [--param cpu_threads:=1 ...] [--load N] [--synchronized] [--out FILE]

Both setups run the ``anomaly_node`` executable as processes of their own (as ``ros2 run``
would) on a private ROS domain on loopback, one after the other, on the same bundle and backend
(CPU by default): ``one_node`` is one process with ``cameras: [cam0, ..., camN-1]`` (one backend,
every camera's waiting frame in one batch); ``separate_nodes`` is N processes, one camera each
(the node's single ``image`` input). The bench process publishes an rgb8 frame per camera at
``--rate`` Hz (the cameras staggered evenly over the period, as unsynchronised cameras are;
``--synchronized``: all at once, as a hardware-triggered rig's are) and
subscribes to each camera's ``anomaly/heatmap`` only.

Per setup: frames processed per camera (heatmaps received for the frames sent after
``--warmup`` s), end-to-end latency p50/p99 (publish to heatmap), and the total RSS of the
node processes (the sum, sampled every second; the peak). One JSON object on stdout (and in
``--out``).

``--load N``: N busy processes run beside the nodes while the frames flow, as a robot's other
software does (planning, mapping, drivers). Each setup is then measured under that load, and
the JSON says how much work the busy processes got done against running alone (the mean of
before and after both setups): the share of the CPU the setup left to the rest of the robot.
Linux shares the CPU per thread, so a setup with more threads (four node processes) takes more
of it from the others; both figures are needed to compare the setups fairly.

Bundle: ``--bundle``, else the demo bundle. Batching needs a graph with a dynamic batch
dimension; a bundle exported before batching has a fixed batch of 1, which the backend runs a
frame at a time. Unless ``--no-reexport``, such a bundle is copied to a temporary folder with its
ONNX graph re-exported from its own weights (``weights.safetensors``) with a dynamic batch
dimension (removed at the end); the JSON says which graph ran, and where the nodes' logs stay
(``logs``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from .common import machine, percentile_summary, stop_processes

NODE = "flowclas_anomaly"


def dynamic_batch_bundle(bundle: Path, out_dir: Path) -> tuple[Path, str]:
    """Return a bundle whose ONNX graph takes any batch, and a note saying which one it is.

    ``bundle`` itself when its graph already does; else its copy in ``out_dir`` with today's
    graph (``export --regraph``: dynamic batch, the same weights and threshold).
    """
    import onnx

    from flowclas_ros.bundle.reader import load_bundle
    from flowclas_ros.export.bundle import regraph_bundle

    b = load_bundle(bundle)
    dim = onnx.load(str(b.onnx_path), load_external_data=False).graph.input[0].type.tensor_type \
        .shape.dim[0]
    if dim.dim_param:
        return bundle, f"the bundle's graph (batch dimension {dim.dim_param!r})"
    t0 = time.perf_counter()
    copy = regraph_bundle(bundle, out_dir / f"{bundle.name}_dynamic_batch", verify=False)
    return copy.path, (f"re-exported from the bundle's weights with a dynamic batch dimension "
                       f"({copy.manifest['onnx']['exporter']}, {time.perf_counter() - t0:.0f} s);"
                       f" the shipped graph has batch 1")


def _rss_mb(pids: list[int]) -> float:
    """Sum the resident set sizes (MiB) of ``pids`` from /proc (Linux; gone processes: 0)."""
    total_kb = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            pass
    return total_kb / 1024


def _busy(counter, stop) -> None:
    """Stand for the robot's other software: one core's worth of work, counted as it goes."""
    while not stop.is_set():
        for _ in range(100_000):
            pass
        with counter.get_lock():
            counter.value += 1


class Load:
    """``n`` busy processes beside the nodes; :meth:`rate` is their work done per second.

    Spawned, not forked: this process has DDS threads. The rate over a window, against the
    rate with nothing else running (:func:`run` measures it before and after the setups), is
    the share of the CPU the node setup left to the rest of the robot.
    """

    def __init__(self, n: int):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.counter, self.stop = ctx.Value("q", 0), ctx.Event()
        self.procs = [ctx.Process(target=_busy, args=(self.counter, self.stop), daemon=True)
                      for _ in range(n)]
        for p in self.procs:
            p.start()

    def mark(self) -> tuple[float, int]:
        return time.monotonic(), self.counter.value

    @staticmethod
    def rate(a: tuple[float, int], b: tuple[float, int]) -> float:
        """Work units (1e5 loop turns) a second between two marks."""
        return (b[1] - a[1]) / max(1e-9, b[0] - a[0])

    def close(self) -> None:
        self.stop.set()
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()


def measure(client, setups: list[tuple[str, list[str], list[str]]], *, bundle: Path,
            backend: str, device: str, env: dict, log_dir: Path, rate: float, width: int,
            height: int, warmup: float, duration: float, params: tuple[str, ...] = (),
            load: int = 0, synchronized: bool = False, timeout: float = 300.0) -> dict:
    """Start one node process per setup entry, feed every camera, return the figures.

    ``setups``: (namespace, cameras parameter, camera topic prefixes) per process; ``params``:
    more ``name:=value`` node parameters, the same for every process; ``load``: busy processes
    beside the nodes while the frames flow (:class:`Load`); ``synchronized``: every camera's
    frame at the same instant.
    """
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from flowclas_ros.node.image_conversion import numpy_to_msg
    from flowclas_ros.node.lifecycle_client import LifecycleClient

    procs, busy = [], None
    for i, (ns, cameras, _) in enumerate(setups):
        args = [sys.executable, "-m", "flowclas_ros.tools.anomaly_node", "--ros-args",
                "-r", f"__ns:={ns}", "-p", f"model_path:={bundle}", "-p", f"backend:={backend}",
                "-p", f"device:={device}"]
        if cameras:
            args += ["-p", f"cameras:=[{','.join(cameras)}]"]
        for p in params:
            args += ["-p", p]
        log = open(log_dir / f"node_{ns.strip('/')}.log", "w")
        procs.append(subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT))
    qos = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
    topics = [f"{ns}/{prefix}" for ns, _, prefixes in setups for prefix in prefixes]
    sent: dict[tuple[str, int, int], float] = {}
    latency: dict[str, list[float]] = {t: [] for t in topics}
    lock = threading.Lock()

    def on_heatmap(topic, msg):
        now = time.monotonic()
        with lock:
            t0 = sent.get((topic, msg.header.stamp.sec, msg.header.stamp.nanosec))
            if t0 is not None:
                latency[topic].append((now - t0) * 1e3)

    pubs = {t: client.create_publisher(Image, f"{t}image", qos) for t in topics}
    subs = [client.create_subscription(Image, f"{t}anomaly/heatmap",
                                       lambda m, t=t: on_heatmap(t, m), qos) for t in topics]
    try:
        t0 = time.monotonic()
        for ns, _, _ in setups:  # one at a time: four simultaneous warm-ups measure nothing
            LifecycleClient(client, f"{ns}/{NODE}").bring_up(timeout, see=f"logs in {log_dir}")
        bring_up_s = time.monotonic() - t0
        deadline = time.monotonic() + timeout
        while any(p.get_subscription_count() == 0 for p in pubs.values()) or any(
                s.get_publisher_count() == 0 for s in subs):
            if time.monotonic() > deadline:
                raise RuntimeError("discovery of the node's topics timed out")
            time.sleep(0.05)
        rng = np.random.default_rng(0)
        frames = {t: numpy_to_msg(rng.integers(0, 256, (height, width, 3), np.uint8), "rgb8",
                                  Header(frame_id=f"{t}optical")) for t in topics}
        period, n = 1.0 / rate, len(topics)
        rss: list[float] = []
        busy, marks = Load(load) if load else None, []
        start = time.monotonic()
        counted = dict.fromkeys(topics, 0)
        k, pace = 0, threading.Event()
        while True:
            # camera k % n: staggered over the period, or every camera at the period's start
            tick = start + ((k // n) * period if synchronized else k * period / n)
            now = time.monotonic()
            if tick > start + warmup + duration:
                break
            if busy is not None and not marks and tick >= start + warmup:
                marks.append(busy.mark())
            pace.wait(max(0.0, tick - now))
            topic = topics[k % n]
            msg = frames[topic]
            msg.header.stamp.sec, msg.header.stamp.nanosec = 1000 + k, k
            with lock:
                if tick >= start + warmup:
                    sent[(topic, msg.header.stamp.sec, msg.header.stamp.nanosec)] = \
                        time.monotonic()
                    counted[topic] += 1
            pubs[topic].publish(msg)
            if k % max(1, int(n * rate)) == 0:  # about once a second
                rss.append(_rss_mb([p.pid for p in procs]))
            k += 1
        if busy is not None:
            marks.append(busy.mark())
            busy.close()
            busy = None
        pace.wait(3.0)  # the last frames in flight
        with lock:
            lat = {t: list(v) for t, v in latency.items()}
        every = [x for v in lat.values() for x in v]
        return {
            "processes": len(procs), "bring_up_s": round(bring_up_s, 1),
            "frames_sent_per_camera": counted,
            "frames_processed_per_camera": {t: len(v) for t, v in lat.items()},
            "frames_processed_total": len(every),
            "latency_ms": {k2: round(v, 1) for k2, v in percentile_summary(every).items()
                           if k2 in ("p50", "p99")},
            "latency_ms_per_camera": {t: {k2: round(v2, 1) for k2, v2 in
                                          percentile_summary(v).items() if k2 in ("p50", "p99")}
                                      for t, v in lat.items()},
            "rss_mb_total_peak": round(max(rss), 1) if rss else None,
            "rss_mb_total_end": round(_rss_mb([p.pid for p in procs]), 1),
            "load_work_per_s": round(Load.rate(*marks), 1) if len(marks) == 2 else None,
        }
    finally:
        if busy is not None:
            busy.close()
        for s in subs:
            client.destroy_subscription(s)
        for p in pubs.values():
            client.destroy_publisher(p)
        stop_processes(procs)


def _load_alone(n: int, seconds: float = 5.0) -> float:
    """Return the work rate of ``n`` busy processes with no node running (``load``'s 100 %)."""
    busy = Load(n)
    try:
        threading.Event().wait(2.0)  # spawned and running
        a = busy.mark()
        threading.Event().wait(seconds)
        return Load.rate(a, busy.mark())
    finally:
        busy.close()


def run(bundle: Path, *, cameras: int = 4, rate: float = 10.0, width: int = 640,
        height: int = 480, warmup: float = 3.0, duration: float = 20.0,
        backend: str = "onnxruntime", device: str = "cpu", reexport: bool = True,
        params: tuple[str, ...] = (), load: int = 0, synchronized: bool = False) -> dict:
    """Measure both setups, one after the other; return the JSON of the module docstring."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node

    from flowclas_ros.paths import DDS_PROFILE_ENV, default_dds_profile

    env = dict(os.environ, ROS_DOMAIN_ID=str(150 + os.getpid() % 80),
               ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", PYTHONUNBUFFERED="1")
    default_dds_profile(env)
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE",
                                           DDS_PROFILE_ENV)})
    work = Path(tempfile.mkdtemp(prefix="flowclas_bench_mc_"))
    graph = "the bundle's graph as shipped (not re-exported)"
    if reexport:
        bundle, graph = dynamic_batch_bundle(bundle, work)
    names = [f"cam{i}" for i in range(cameras)]
    rclpy.init()
    client = Node("flowclas_bench_multi_camera")
    executor = SingleThreadedExecutor()
    executor.add_node(client)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    common = {"bundle": bundle, "backend": backend, "device": device, "env": env,
              "log_dir": work, "rate": rate, "width": width, "height": height,
              "warmup": warmup, "duration": duration, "params": tuple(params), "load": load,
              "synchronized": synchronized}
    try:
        alone = [_load_alone(load)] if load else []  # before and after: the host drifts
        one = measure(client, [("/mc_one", names, [f"{n}/" for n in names])], **common)
        separate = measure(client, [(f"/mc_{n}", [], [""]) for n in names], **common)
        alone += [_load_alone(load)] if load else []
    finally:
        executor.shutdown(timeout_sec=5)
        client.destroy_node()
        rclpy.try_shutdown()
        if bundle.parent == work:  # the re-exported copy (17 MB); the node logs stay
            shutil.rmtree(bundle, ignore_errors=True)
    ratio = (one["rss_mb_total_peak"] / separate["rss_mb_total_peak"]
             if one["rss_mb_total_peak"] and separate["rss_mb_total_peak"] else None)
    return {
        "machine": machine(), "bundle": str(bundle), "graph": graph, "backend": backend,
        "device": device, "node_parameters": list(params), "cameras": cameras,
        "rate_hz": rate, "synchronized": synchronized, "frame": [width, height],
        "warmup_s": warmup, "duration_s": duration, "logs": str(work),
        "one_node": one, "separate_nodes": separate,
        "load": None if not load else {
            "processes": load, "work_per_s_alone_before_after": [round(a, 1) for a in alone],
            "share_left_one_node": round(one["load_work_per_s"] / np.mean(alone), 3),
            "share_left_separate_nodes": round(separate["load_work_per_s"] / np.mean(alone),
                                               3)},
        "rss_ratio_one_to_separate": round(ratio, 3) if ratio else None,
        "goal": "one node: at least as many frames processed, p99 no worse, at most half the "
                "total RSS of the separate nodes",
    }


def main(argv=None) -> None:
    from flowclas_ros.node.anomaly_node import default_model_path

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=Path(default_model_path()))
    ap.add_argument("--cameras", type=int, default=4)
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-reexport", dest="reexport", action="store_false",
                    help="run the bundle's graph as it is (batch 1: frames run one at a time)")
    ap.add_argument("--param", action="append", default=[], metavar="NAME:=VALUE",
                    help="a node parameter for every node process of both setups, e.g. "
                         "cpu_threads:=1 (repeatable)")
    ap.add_argument("--load", type=int, default=0, metavar="N",
                    help="N busy processes beside the nodes (the robot's other software): "
                         "frames and latency under load, and the share of the CPU each setup "
                         "left them")
    ap.add_argument("--synchronized", action="store_true",
                    help="every camera publishes at the same instant (a triggered rig)")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    if any(":=" not in p for p in a.param):
        ap.error("--param takes NAME:=VALUE")
    result = run(a.bundle, cameras=a.cameras, rate=a.rate, width=a.width, height=a.height,
                 warmup=a.warmup, duration=a.duration, backend=a.backend, device=a.device,
                 reexport=a.reexport, params=tuple(a.param), load=a.load,
                 synchronized=a.synchronized)
    text = json.dumps(result, indent=2)
    print(text)
    if a.out is not None:
        a.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
