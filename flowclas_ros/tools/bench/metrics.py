"""Time and peak memory of exact vs streaming pixel metrics on a synthetic Road-Anomaly-sized set.

    python -m flowclas_ros.tools.bench.metrics [--frames 60] [--height 720] [--width 1280]

60 frames of 1280x720 = 55.3 M pixels (Road Anomaly's size), generated one frame at a time from a
seed (so the generator holds one frame), ~10 % anomaly in a few blobs, a void border. Each mode
runs in its own subprocess so that its peak RSS (getrusage) is its own; the baseline is the RSS
after imports and before the first frame.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np


def frames(n: int, h: int, w: int, seed: int = 0):
    """(scores (h, w) float32, labels (h, w) uint8) per frame, deterministic."""
    for i in range(n):
        rng = np.random.default_rng(seed + i)
        labels = np.zeros((h, w), np.uint8)
        for _ in range(3):
            bh, bw = rng.integers(h // 10, h // 4), rng.integers(w // 10, w // 4)
            y, x = rng.integers(0, h - bh), rng.integers(0, w - bw)
            labels[y:y + bh, x:x + bw] = 1
        labels[: h // 40] = 255
        scores = rng.standard_normal((h, w), dtype=np.float32)
        scores += 2.0 * (labels == 1)
        yield scores, labels


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_one(mode: str, n: int, h: int, w: int) -> dict:
    from flowclas_ros.evaluation import ExactPixelMetrics, StreamingPixelMetrics

    base = _rss_mb()
    m = ExactPixelMetrics() if mode == "exact" else StreamingPixelMetrics()
    t_gen = t_upd = 0.0
    t0 = time.perf_counter()
    it = frames(n, h, w)
    for _ in range(n):
        a = time.perf_counter()
        s, lab = next(it)
        b = time.perf_counter()
        m.update(s, lab)
        t_upd += time.perf_counter() - b
        t_gen += b - a
    c = time.perf_counter()
    res = m.result()
    t_cmp = time.perf_counter() - c
    return {"mode": mode, "pixels": n * h * w, "valid": res.n_pos + res.n_neg,
            "update_s": round(t_upd, 2), "compute_s": round(t_cmp, 2),
            "total_s_without_data_generation": round(t_upd + t_cmp, 2),
            "generation_s": round(t_gen, 2), "wall_s": round(time.perf_counter() - t0, 2),
            "baseline_rss_mb": round(base, 1), "peak_rss_mb": round(_rss_mb(), 1),
            **res.metrics(), "best_f1_threshold": res.best_f1_threshold}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--mode", choices=("exact", "streaming"), help="run one mode (internal)")
    a = p.parse_args(argv)
    if a.mode:
        print(json.dumps(run_one(a.mode, a.frames, a.height, a.width)))
        return 0
    results = []
    for mode in ("exact", "streaming"):
        cmd = [sys.executable, "-m", "flowclas_ros.tools.bench.metrics", "--mode", mode,
               "--frames", str(a.frames), "--height", str(a.height), "--width", str(a.width)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    print(f"{a.frames} frames of {a.width}x{a.height} = {results[0]['pixels'] / 1e6:.1f} M pixels "
          f"({results[0]['valid'] / 1e6:.1f} M valid)")
    print(f"{'mode':10s} {'update s':>9s} {'compute s':>10s} {'total s':>8s} {'peak MB':>8s} "
          f"{'base MB':>8s} {'AUPRC':>9s} {'FPR95':>9s} {'AUROC':>9s}")
    for r in results:
        print(f"{r['mode']:10s} {r['update_s']:9.2f} {r['compute_s']:10.2f} "
              f"{r['total_s_without_data_generation']:8.2f} {r['peak_rss_mb']:8.0f} "
              f"{r['baseline_rss_mb']:8.0f} {r['auprc']:9.6f} {r['fpr95']:9.6f} {r['auroc']:9.6f}")
    e, s = results
    diffs = (f"{k} {s[k] - e[k]:+.2e}" for k in ("auprc", "fpr95", "auroc"))
    print("streaming - exact: " + ", ".join(diffs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
