"""What the benchmarks share: the machine they ran on, timing loops and percentile summaries.

Every benchmark prints the machine next to its numbers (a figure means little without it) and
times with :func:`time_ms`; a list of milliseconds becomes numbers with
:func:`percentile_summary` (``p50``/``p99``/``mean``/``n``) or :func:`latency_row` (the same,
rounded, as ``p50_ms``/``p99_ms``/``mean_ms`` with ``iters`` and ``fps``).
"""
from __future__ import annotations

import os
import platform
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np


def cpu_name() -> str:
    """Return the CPU's model name from /proc/cpuinfo.

    ``platform.processor()`` where there is none.
    """
    name = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return name


def cpu_arch() -> str:
    """``platform.processor()``, else the machine type (``x86_64``): bench model's ``cpu``."""
    return platform.processor() or platform.machine()


def machine_line() -> str:
    """One line: ``x86_64, 2 CPUs, <model name>``."""
    return f"{platform.machine()}, {os.cpu_count()} CPUs, {cpu_name()}"


def machine() -> dict:
    """Return the machine as a dict: CPU, core count, torch threads, load, versions, GPU."""
    import torch

    info = {"cpu": cpu_name(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "loadavg_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
            "torch": torch.__version__, "gpu": None}
    try:
        import onnxruntime as ort

        info["onnxruntime"] = ort.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def time_ms(fn: Callable[[], object], n: int, warmup: int = 0,
            sync: Callable[[], None] | None = None) -> list[float]:
    """Return the milliseconds of ``n`` calls of ``fn`` after ``warmup`` untimed ones.

    ``sync`` (e.g. ``torch.cuda.synchronize``) runs before the clock starts and before it stops.
    """
    for _ in range(warmup):
        fn()
    ms = []
    for _ in range(n):
        if sync is not None:
            sync()
        t0 = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        ms.append((time.perf_counter() - t0) * 1e3)
    return ms


def percentile_summary(samples: Iterable[float], qs=(50, 99)) -> dict[str, float]:
    """{"p50": .., "p99": .., "mean": .., "n": ..} of a list of ms values."""
    data = np.asarray(list(samples), dtype=np.float64)
    if data.size == 0:
        return {f"p{q:g}": float("nan") for q in qs} | {"mean": float("nan"), "n": 0}
    out = {f"p{q:g}": float(np.percentile(data, q)) for q in qs}
    out["mean"] = float(data.mean())
    out["n"] = int(data.size)
    return out


def latency_row(ms: Iterable[float]) -> dict:
    """Return a latency table row.

    iters, p50_ms, p99_ms, mean_ms (rounded to µs) and fps (one frame at a time: 1000 / mean).
    """
    s = percentile_summary(ms)
    return {"iters": s["n"], "p50_ms": round(s["p50"], 3), "p99_ms": round(s["p99"], 3),
            "mean_ms": round(s["mean"], 3), "fps": round(1000.0 / s["mean"], 2)}


__all__ = ["cpu_arch", "cpu_name", "latency_row", "machine", "machine_line",
           "percentile_summary", "time_ms"]


def stop_processes(procs: list[subprocess.Popen], timeout: float = 20.0) -> None:
    """Ctrl-C each process still running (a node shuts down cleanly on it), then reap them.

    One that has not exited after ``timeout`` seconds is killed.
    """
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    for p in procs:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
