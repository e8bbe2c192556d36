"""Benchmark the per-frame cost of the actionable outputs on synthetic frames, as JSON.

The outputs: regions, persistence, depth points, point cloud packing, snapshot buffering.

    python -m flowclas_ros.tools.bench.outputs [--width 640] [--height 480] [--regions 10]
        [--points 20000] [--depth-scale 1.0] [--iters 400]

Each frame: a smooth random score map with ``--regions`` blobs above the threshold (they drift
a pixel or two from frame to frame, 16 frames in turn), a bottom-band ignore mask and a 16UC1
depth image (``--depth-scale`` 0.5: a half-size depth image, read through the resize rule).
The stages are timed one after the other on every frame, so machine load hits them alike, as
wall time and as the thread's CPU time (``time.thread_time``: what the stage costs when it is
not descheduled by other processes; its resolution is coarser on some kernels):

* ``regions``: :func:`~flowclas_ros.outputs.regions.find_regions` (ignore mask applied, 8-connected
  components from the mask's runs, boxes, peaks, exceedance scores);
* ``persistence``: :meth:`~flowclas_ros.outputs.persistence.Persistence.update` (2 of 3);
* ``back_projection``: decoding the depth message, the reported regions' pixels, and
  :func:`~flowclas_ros.outputs.depth.back_project` to at most ``--points`` points;
* ``packing``: :func:`~flowclas_ros.outputs.pointcloud.packed_data` (the points, already laid
  out by the back-projection, copied once into PointCloud2 data, as the node does);
* ``snapshot_add``: :meth:`~flowclas_ros.outputs.snapshots.SnapshotRecorder.add` (no event);
* ``total``: all of them.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from types import SimpleNamespace

import numpy as np
from scipy import ndimage

from flowclas_ros.outputs.depth import Intrinsics, back_project, decode_depth, depth_geometry
from flowclas_ros.outputs.persistence import Persistence
from flowclas_ros.outputs.pointcloud import packed_data
from flowclas_ros.outputs.regions import exceedance_table, find_regions
from flowclas_ros.outputs.snapshots import SnapshotRecorder

from .common import latency_row, machine_line

STAGES = ("regions", "persistence", "back_projection", "packing", "snapshot_add")


def make_frames(h: int, w: int, regions: int, points: int, n: int = 16, seed: int = 0):
    """Return ``n`` (score, mask) pairs.

    Smooth noise below the threshold 1.0 plus ``regions`` blobs (total area about 1.25 x
    ``points``) drifting by a pixel or two per frame.
    """
    rng = np.random.default_rng(seed)
    base = ndimage.gaussian_filter(rng.standard_normal((h, w)), 4).astype(np.float32)
    base = base / (np.abs(base).max() + 1e-6) * 0.8  # |base| < 1: nothing above threshold
    side = max(4, int(np.sqrt(1.25 * points / regions)))
    cols = int(np.ceil(np.sqrt(regions * w / max(h, 1))))
    rows = int(np.ceil(regions / cols))
    cell_h, cell_w = (h - h // 10) // rows, w // cols  # the bottom tenth is the ignore band
    if cell_h < side + 8 or cell_w < side + 8:
        raise ValueError(f"{regions} regions of {side}x{side} pixels do not fit in {w}x{h}")
    centres = np.array([(r * cell_h + cell_h // 2, c * cell_w + cell_w // 2)
                        for r in range(rows) for c in range(cols)][:regions])
    out = []
    for k in range(n):
        score = base.copy()
        for j, (cy, cx) in enumerate(centres):
            dy, dx = (k + j) % 3, (k * 2 + j) % 3
            y0, x0 = cy - side // 2 + dy, cx - side // 2 + dx
            score[y0:y0 + side, x0:x0 + side] = 1.5 + 0.1 * j
        out.append((score, score >= 1.0))
    return out


def _cpu_row(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"p50_ms": round(float(np.percentile(a, 50)), 3),
            "p99_ms": round(float(np.percentile(a, 99)), 3)}


def depth_msg(h: int, w: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    mm = rng.integers(500, 8000, (h, w), dtype=np.uint16)
    return SimpleNamespace(height=h, width=w, encoding="16UC1", is_bigendian=0, step=2 * w,
                           data=mm.tobytes())


def run(width: int, height: int, regions: int, points: int, depth_scale: float,
        iters: int) -> dict:
    frames = make_frames(height, width, regions, points)
    ignore = np.zeros((height, width), bool)
    ignore[-height // 10:] = True
    table = exceedance_table(np.random.default_rng(2).standard_normal(200_000) * 0.3)
    dh, dw = int(round(height * depth_scale)), int(round(width * depth_scale))
    dmsg = depth_msg(dh, dw)
    intr = Intrinsics(500.0 * depth_scale, 500.0 * depth_scale, dw / 2 - 0.5, dh / 2 - 0.5, dw,
                      dh)
    persistence = Persistence(2, 3)
    times = {s: [] for s in STAGES + ("total",)}
    cpu = {s: [] for s in STAGES + ("total",)}
    sizes = {"regions": [], "points": [], "pixels": []}
    frame_msg = SimpleNamespace(format="jpeg", data=b"\xff\xd8")
    with tempfile.TemporaryDirectory() as tmp:
        rec = SnapshotRecorder(tmp, pre_s=2.0, post_s=2.0, max_mb=10)
        for k in range(iters + 20):
            score, mask = frames[k % len(frames)]
            t, c = [time.perf_counter()], [time.thread_time()]

            def mark():
                t.append(time.perf_counter())
                c.append(time.thread_time())

            found = find_regions(mask, score, min_region_pixels=50, ignore=ignore, table=table)
            mark()
            dets = persistence.update(found.regions)
            mark()
            depth = decode_depth(dmsg)
            geo = depth_geometry((height, width), depth.shape, intr)
            pix = found.pixel_indices([d.region.label for d in dets])
            pts = back_project(pix, (height, width), depth, geo, score, max_points=points)
            mark()
            cloud = packed_data(pts.packed)
            mark()
            rec.add(1_700_000_000_000_000_000 + k * 33_000_000, frame_msg, score,
                    [d.as_dict() for d in dets])
            mark()
            if k >= 20:  # warm-up excluded
                for s, a, b in zip(STAGES, t, t[1:]):
                    times[s].append((b - a) * 1e3)
                for s, a, b in zip(STAGES, c, c[1:]):
                    cpu[s].append((b - a) * 1e3)
                times["total"].append((t[-1] - t[0]) * 1e3)
                cpu["total"].append((c[-1] - c[0]) * 1e3)
                sizes["regions"].append(len(found.regions))
                sizes["points"].append(len(cloud) // 16)
                sizes["pixels"].append(pts.candidates)
        rec.close()
    return {"wall": {s: latency_row(v) for s, v in times.items()},
            "thread_cpu": {s: _cpu_row(v) for s, v in cpu.items()}} | {
        "regions_per_frame": float(np.median(sizes["regions"])),
        "points_per_frame": float(np.median(sizes["points"])),
        "anomalous_pixels_per_frame": float(np.median(sizes["pixels"]))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m flowclas_ros.tools.bench.outputs",
                                description="Per-frame cost of regions, persistence, depth "
                                            "points and packing.")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--regions", type=int, default=10)
    p.add_argument("--points", type=int, default=20000)
    p.add_argument("--depth-scale", type=float, default=1.0,
                   help="depth image size relative to the camera image (0.5: half size)")
    p.add_argument("--iters", type=int, default=400)
    args = p.parse_args(argv)
    load0 = os.getloadavg()[0]
    res = run(args.width, args.height, args.regions, args.points, args.depth_scale, args.iters)
    out = {"machine": machine_line(), "loadavg_1min_before": round(load0, 2),
           "loadavg_1min_after": round(os.getloadavg()[0], 2),
           "size": f"{args.width}x{args.height}", "depth_scale": args.depth_scale,
           "results": res}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
