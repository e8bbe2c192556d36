"""The process's memory policy for frames: buffers kept for reuse, long-lived objects unscanned.

Frame buffers: keep freed ones in the process instead of handing them back to the kernel.

Every frame allocates buffers of the frame's size several times: the host pipeline's resize
temporaries and outputs, and in the node rclpy's message conversions and (de)serialisation on
the way in and out. glibc serves an allocation over its mmap threshold (128 KiB, raised
dynamically only in the main arena and only up to the size last freed) with a fresh ``mmap``
and returns it with ``munmap`` on free, so each of those buffers is page-faulted in and zeroed
by the kernel anew every frame: at 1920x1080 that cost about 16 ms per frame here, end to end
(``bench.node``, README), 6 ms of it in the resize to the model's input alone. Raising the mmap
threshold above a frame's size and the trim threshold above a few frames' worth lets freed
buffers be reused as they are.

The setting is process-wide (every thread and arena), applied once, when a backend is created
(:func:`flowclas_ros.runtime.create_backend`: the node, the tools) or the node is built:
``FLOWCLAS_KEEP_FRAME_BUFFERS=0`` in the environment turns it off, and a ``GLIBC_TUNABLES``
that sets the malloc thresholds itself is left to win. The price is resident memory: up to
``TRIM_THRESHOLD`` of freed buffers may stay mapped.

Collector pauses: Python's cyclic garbage collector now and then scans every container object
of the process (a full collection), and a node holds some 60,000 of them once its libraries and
backend are loaded, nearly all for good: a full scan then stalls the worker about 30 ms here,
which with several cameras on one worker delays every camera's next frames.
:func:`freeze_long_lived` (the node calls it at the end of configure) collects once and moves
what exists to the collector's permanent generation, which it never scans; :func:`thaw`
(cleanup) gives it back, so that a backend released later is collected as usual. Objects
frozen are still freed by reference counting; only a reference cycle among them would wait
for the thaw.
"""
from __future__ import annotations

import ctypes
import gc
import os
import sys

ENV = "FLOWCLAS_KEEP_FRAME_BUFFERS"
MMAP_THRESHOLD = 32 << 20  # glibc's largest (HEAP_MAX_SIZE / 2): a 1080p heatmap is 8 MB
TRIM_THRESHOLD = 256 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)

_applied: str | None = None


def keep_frame_buffers() -> str:
    """Apply the setting of the module docstring once; return what was done, in words."""
    global _applied
    if _applied is not None:
        return _applied
    if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        _applied = f"not applied ({ENV}=0)"
    elif "malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        _applied = "not applied (GLIBC_TUNABLES sets malloc itself)"
    elif not sys.platform.startswith("linux"):
        _applied = "not applied (not Linux)"
    else:
        _applied = _mallopt()
    return _applied


def _mallopt() -> str:
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process runs on
    except (OSError, AttributeError):
        return "not applied (no mallopt in this C library)"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mmap first: setting it also ends glibc's dynamic adjustment of both thresholds
    if mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1 \
            or mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        return "not applied (mallopt refused)"
    return (f"freed buffers under {MMAP_THRESHOLD >> 20} MiB are reused (mmap threshold), up to "
            f"{TRIM_THRESHOLD >> 20} MiB kept (trim threshold)")


def freeze_long_lived() -> int:
    """Collect, then exempt every object alive now from later scans; return how many."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def thaw() -> None:
    """Hand the frozen objects back to the collector (they are scanned again from now on)."""
    gc.unfreeze()


__all__ = ["ENV", "freeze_long_lived", "keep_frame_buffers", "thaw"]
