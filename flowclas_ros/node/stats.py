"""Thread-safe counters for the node's diagnostics: frame accounting, event rates, latencies.

The rate and latency windows are bounded (a fixed number of samples and a time span), so memory
stays flat however long the node runs. Times are ``time.monotonic()`` seconds.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Counters:
    """Frame accounting.

    received = published + replaced + malformed + oversize + skipped + errors + discarded
    + (waiting or in flight).
    """

    received: int = 0
    published: int = 0  # frames whose outputs were published
    replaced: int = 0  # a newer frame took its place in the mailbox
    malformed: int = 0  # unknown encoding / sizes that do not add up
    oversize: int = 0  # more than max_image_pixels
    skipped: int = 0  # no output had a subscriber (nothing computed)
    errors: int = 0  # the backend raised
    discarded: int = 0  # waiting when the node was deactivated
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    NAMES = ("received", "published", "replaced", "malformed", "oversize", "skipped", "errors",
             "discarded")

    def add(self, name: str, n: int = 1) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + n)

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return {k: getattr(self, k) for k in self.NAMES}


class Tally:
    """Named counters, thread-safe.

    The robot outputs' accounting (depth frames, regions, points, snapshots). ``names`` start
    at 0; :meth:`add` also takes a new name.
    """

    def __init__(self, *names: str):
        self._counts = dict.fromkeys(names, 0)
        self._lock = threading.Lock()

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + n

    def set(self, name: str, value: int) -> None:
        with self._lock:
            self._counts[name] = value

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class RateMeter:
    """Events per second over the last ``window_s`` seconds (at most ``max_events`` kept)."""

    def __init__(self, window_s: float = 5.0, max_events: int = 4096):
        self.window_s = float(window_s)
        self._times: deque[float] = deque(maxlen=max_events)
        self._lock = threading.Lock()
        self.total = 0

    def tick(self, now: float | None = None) -> None:
        with self._lock:
            self._times.append(time.monotonic() if now is None else now)
            self.total += 1

    def rate(self, now: float | None = None) -> float:
        """Hz over the window; 0 with fewer than two events in it."""
        now = time.monotonic() if now is None else now
        with self._lock:
            while self._times and now - self._times[0] > self.window_s:
                self._times.popleft()
            n = len(self._times)
            if n < 2:
                return 0.0
            span = max(now - self._times[0], self._times[-1] - self._times[0])
            return (n - 1) / span if span > 0 else 0.0


class LatencyWindow:
    """The last ``size`` latency samples (milliseconds); percentiles over them."""

    def __init__(self, size: int = 512):
        self._samples: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()
        self.count = 0

    def add(self, ms: float) -> None:
        with self._lock:
            self._samples.append(float(ms))
            self.count += 1

    def percentiles(self, *qs: float) -> tuple[float, ...]:
        """Return the requested percentiles (0..100) in ms.

        NaN for each when there are no samples.
        """
        with self._lock:
            data = np.fromiter(self._samples, dtype=np.float64, count=len(self._samples))
        if data.size == 0:
            return tuple(float("nan") for _ in qs)
        return tuple(float(v) for v in np.percentile(data, qs))

    def __len__(self) -> int:
        with self._lock:
            return len(self._samples)


class Meters:
    """One stream's accounting: counters, input and output rates, latency and inference times.

    The node has one for all its frames and, with ``cameras``, one per camera
    (:mod:`.cameras`).
    """

    def __init__(self):
        self.counters = Counters()
        self.in_rate, self.out_rate = RateMeter(), RateMeter()
        self.latency, self.inference = LatencyWindow(), LatencyWindow()

    def snapshot(self) -> dict:
        """Counters, rates (Hz) and latency percentiles (ms), as AnomalyNode.stats() has them."""
        lat50, lat99 = self.latency.percentiles(50, 99)
        inf50, inf99 = self.inference.percentiles(50, 99)
        c = self.counters.snapshot()
        return c | {
            "dropped": c["replaced"] + c["malformed"] + c["oversize"],
            "input_rate_hz": self.in_rate.rate(), "output_rate_hz": self.out_rate.rate(),
            "latency_p50_ms": lat50, "latency_p99_ms": lat99,
            "inference_p50_ms": inf50, "inference_p99_ms": inf99,
        }
