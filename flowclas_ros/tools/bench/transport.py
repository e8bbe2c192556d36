"""How many camera frames arrive over DDS, with and without the Fast DDS large-frames profile.

Best-effort images of camera sizes, with and without the Fast DDS profile
config/fastdds_large_frames.xml on each side.

    python -m flowclas_ros.tools.bench.transport [--sizes 640x480 1280x720 1920x1080]
        [--rate 30] [--frames 60] [--sides none sub pub both] [--qos sensor_data reliable]

For every size and every placement of the profile (on neither side, the subscriber only, the
publisher only, both) a publisher process sends ``--frames`` rgb8 Images at ``--rate`` Hz to a
subscriber process on the same machine, both with the node's image QoS (``sensor_data``: best
effort, keep last 5; ``reliable``: keep last 2), on a private domain on loopback. Each frame
carries its index in the stamp; the subscriber counts distinct frames. Prints JSON: per
(qos, size, sides) the fraction received. Output is quoted in the README, never asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from flowclas_ros.paths import DDS_PROFILE_ENV as PROFILE_ENV
from flowclas_ros.paths import dds_profile

PROFILE = dds_profile()


def _qos(name: str):
    """Return the node's own image QoS of that name (``image_qos``'s fixed choices)."""
    from flowclas_ros.node.input_qos import PROFILES

    return PROFILES[name]


def run_publisher(width: int, height: int, rate: float, frames: int, qos: str,
                  topic: str = "bench_image") -> int:
    import numpy as np
    import rclpy
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("bench_transport_pub")
    pub = node.create_publisher(Image, topic, _qos(qos))
    msg = Image(height=height, width=width, encoding="rgb8", step=width * 3)
    msg.data = np.random.default_rng(0).integers(0, 256, height * width * 3, np.uint8).tobytes()
    deadline = time.monotonic() + 30
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
    time.sleep(1.0)  # discovery of the subscriber's locators completes after the match
    period = 1.0 / rate
    t0 = time.monotonic()
    for i in range(frames):
        msg.header.stamp.sec = i
        pub.publish(msg)
        wait = t0 + (i + 1) * period - time.monotonic()
        if wait > 0:
            time.sleep(wait)
    time.sleep(1.0)  # let the last frames leave
    node.destroy_node()
    rclpy.shutdown()
    return 0


def run_subscriber(frames: int, rate: float, qos: str) -> int:
    import rclpy
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("bench_transport_sub")
    got: set[int] = set()
    node.create_subscription(Image, "bench_image", lambda m: got.add(m.header.stamp.sec),
                             _qos(qos))
    deadline = time.monotonic() + 30 + frames / rate + 5
    seen, changed = 0, time.monotonic()
    while time.monotonic() < deadline and len(got) < frames:
        rclpy.spin_once(node, timeout_sec=0.1)
        if len(got) != seen:
            seen, changed = len(got), time.monotonic()
        elif got and time.monotonic() - changed > 3.0:
            break  # nothing new for 3 s: the publisher is done
    print(json.dumps({"received": len(got)}), flush=True)
    node.destroy_node()
    rclpy.shutdown()
    return 0


def measure(width: int, height: int, rate: float, frames: int, sides: str, qos: str,
            domain: int) -> dict:
    base = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
                PYTHONUNBUFFERED="1")
    base.pop(PROFILE_ENV, None)
    with_profile = dict(base, **{PROFILE_ENV: str(PROFILE)})
    sub_env = with_profile if sides in ("sub", "both") else base
    pub_env = with_profile if sides in ("pub", "both") else base
    me = [sys.executable, "-m", "flowclas_ros.tools.bench.transport"]
    sub = subprocess.Popen(me + ["--role", "sub", "--frames", str(frames), "--rate", str(rate),
                                 "--qos", qos], env=sub_env, stdout=subprocess.PIPE, text=True)
    pub = subprocess.Popen(me + ["--role", "pub", "--size", f"{width}x{height}", "--rate",
                                 str(rate), "--frames", str(frames), "--qos", qos], env=pub_env)
    out, _ = sub.communicate(timeout=120)
    pub.wait(timeout=60)
    received = json.loads(out.strip().splitlines()[-1])["received"]
    return {"size": f"{width}x{height}", "bytes": width * height * 3, "qos": qos,
            "profile_on": sides, "sent": frames, "received": received,
            "fraction": round(received / frames, 3)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--role", choices=("bench", "pub", "sub"), default="bench")
    ap.add_argument("--sizes", nargs="+", default=["640x480", "1280x720", "1920x1080"])
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--rate", type=float, default=30.0)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--sides", nargs="+", default=["none", "sub", "pub", "both"],
                    choices=("none", "sub", "pub", "both"))
    ap.add_argument("--qos", nargs="+", default=["sensor_data"],
                    choices=("sensor_data", "reliable"))
    ap.add_argument("--topic", default="bench_image", help="topic of --role pub")
    args = ap.parse_args(argv)
    if args.role == "pub":
        w, h = (int(v) for v in args.size.split("x"))
        return run_publisher(w, h, args.rate, args.frames, args.qos[0], args.topic)
    if args.role == "sub":
        return run_subscriber(args.frames, args.rate, args.qos[0])
    rows = []
    domain = 150 + os.getpid() % 50
    for qos in args.qos:
        for size in args.sizes:
            w, h = (int(v) for v in size.split("x"))
            for sides in args.sides:
                rows.append(measure(w, h, args.rate, args.frames, sides, qos, domain))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"rate_hz": args.rate, "frames": args.frames, "profile": str(PROFILE),
                      "results": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
