"""Pairing each camera frame with the depth frame nearest in stamp: a small, thread-safe buffer.

The node's depth subscription callback calls :meth:`DepthPairer.add` with each depth message;
the inference worker calls :meth:`DepthPairer.match` with the camera frame's stamp **after**
inference (as late as possible, so a depth frame stamped just after the camera frame, which
usually arrives a little later, is already in the buffer).

The rule (message_filters' ApproximateTime for two streams, as its Python
``ApproximateTimeSynchronizer(slop=max_skew_s)`` decides a pair, with one deliberate
difference):

* the buffer keeps the ``queue_size`` most recently **received** depth frames (older ones are
  forgotten, whatever their stamps);
* ``match(t)`` returns the buffered depth frame whose header stamp is nearest to the camera
  stamp ``t``, provided ``|stamp - t| <= max_skew_s`` (inclusive); none when no depth frame is
  that close. Equal distances: the earlier stamp wins; equal stamps: the later-received frame.
* **difference**: a depth frame is not consumed by a match; it may pair with several camera
  frames (message_filters uses each message once). The node processes only some camera frames
  (a newer frame replaces a waiting one) and depth often runs at a lower rate than colour, so
  consuming would leave frames without depth for no gain in accuracy.

Stamps are integer nanoseconds (:func:`stamp_ns` turns a builtin_interfaces/Time or a header
into one). ``match`` is O(queue_size); both methods take one lock, held for microseconds.
"""
from __future__ import annotations

import numbers
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any


def stamp_ns(stamp) -> int:
    """Return the integer nanoseconds of a stamp.

    The stamp is an int, a builtin_interfaces/Time (``sec``, ``nanosec``) or a std_msgs/Header
    (its ``stamp``).
    """
    if isinstance(stamp, numbers.Integral) and not isinstance(stamp, bool):
        return int(stamp)
    if hasattr(stamp, "stamp"):
        stamp = stamp.stamp
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


@dataclass(frozen=True)
class Paired:
    """A match.

    The depth item as given to :meth:`DepthPairer.add`, its stamp, and ``skew_ns`` = depth
    stamp - camera stamp (signed).
    """

    item: Any
    stamp_ns: int
    skew_ns: int


class DepthPairer:
    """The buffer of recent depth frames and the nearest-stamp rule (module docstring)."""

    def __init__(self, max_skew_s: float = 0.02, queue_size: int = 10):
        if not max_skew_s >= 0:
            raise ValueError(f"max_skew_s must be >= 0, got {max_skew_s}")
        if int(queue_size) < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.max_skew_ns = int(round(float(max_skew_s) * 1e9))
        self._buf: deque[tuple[int, Any]] = deque(maxlen=int(queue_size))
        self._lock = threading.Lock()
        self.counts = {"depth": 0, "matched": 0, "unmatched": 0}

    def add(self, stamp, item: Any) -> None:
        """Buffer a depth frame that arrived (any thread).

        ``stamp`` as for :func:`stamp_ns`; ``item`` is returned as is by :meth:`match` (the
        message, or an already decoded image).
        """
        t = stamp_ns(stamp)
        with self._lock:
            self._buf.append((t, item))
            self.counts["depth"] += 1

    def match(self, stamp) -> Paired | None:
        """Return the depth frame nearest to the camera ``stamp`` within ``max_skew_s``.

        None when there is none.
        """
        t = stamp_ns(stamp)
        best: tuple[int, int, int] | None = None  # (|skew|, stamp, -arrival)
        best_item = None
        with self._lock:
            for k, (s, item) in enumerate(self._buf):
                d = abs(s - t)
                if d > self.max_skew_ns:
                    continue
                key = (d, s, -k)
                if best is None or key < best:
                    best, best_item = key, item
            self.counts["matched" if best is not None else "unmatched"] += 1
        if best is None:
            return None
        return Paired(best_item, best[1], best[1] - t)

    def clear(self) -> None:
        """Forget every buffered depth frame (deactivate, a new stream)."""
        with self._lock:
            self._buf.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._buf)


__all__ = ["DepthPairer", "Paired", "stamp_ns"]
