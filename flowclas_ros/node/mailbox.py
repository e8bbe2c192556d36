"""The hand-over between the image subscriptions and inference: one slot per camera, one worker.

Each camera's subscription callback (executor thread) puts its validated frame into its own slot
of a :class:`FrameMailbox`; a newer frame of that camera replaces the one still waiting, so a
slow backend drops frames (counted by the caller) instead of queueing them: memory stays flat
and latency is bounded by about two inference times. :class:`InferenceWorker` is the daemon
thread that takes *every* waiting frame at once, one per camera, and runs them as one batch, so
the executor keeps answering lifecycle and parameter services during a slow batch.

Fairness follows from the slots: a camera publishing five times faster than the others still
has one frame in each batch, the others' frames never wait behind its backlog (there is none),
and a camera that stops publishing has an empty slot after its last frame was taken, so no
stale frame of it is ever batched again.
"""
from __future__ import annotations

import threading
from typing import Callable, Generic, Hashable, TypeVar

T = TypeVar("T")


class FrameMailbox(Generic[T]):
    """One slot per camera under one lock: ``put`` replaces what waits for that camera.

    Memory is bounded by construction: at most one waiting frame per camera (``high_water``,
    the most frames that ever waited for one camera, is at most 1). :meth:`take` hands over
    every waiting frame, in the cameras' order.
    """

    def __init__(self, keys: tuple[Hashable, ...] = ("",)):
        self._cv = threading.Condition()
        self._keys = tuple(keys)
        self._items: dict[Hashable, T | None] = dict.fromkeys(self._keys)
        self._closed = False
        self.high_water = 0

    def put(self, item: T, key: Hashable = "") -> bool:
        """Store ``item`` in ``key``'s slot; True when it replaced a frame still waiting there."""
        with self._cv:
            if key not in self._items:
                raise KeyError(f"no mailbox slot for camera {key!r}")
            replaced = self._items[key] is not None
            self._items[key] = item
            self.high_water = max(self.high_water, 1)
            self._cv.notify()
            return replaced

    def take(self) -> list[T] | None:
        """Block until a frame waits (every waiting one returned) or the mailbox is closed."""
        with self._cv:
            while not self._closed and all(v is None for v in self._items.values()):
                self._cv.wait()
            if self._closed:
                return None
            batch = [v for v in self._items.values() if v is not None]
            self._items = dict.fromkeys(self._keys)
            return batch

    def clear(self) -> list[Hashable]:
        """Drop every waiting frame; return the keys that had one."""
        with self._cv:
            had = [k for k, v in self._items.items() if v is not None]
            self._items = dict.fromkeys(self._keys)
            return had

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._items = dict.fromkeys(self._keys)
            self._cv.notify_all()

    def waiting(self, key: Hashable) -> int:
        """Return 1 when a frame of ``key`` waits, else 0."""
        with self._cv:
            return int(self._items.get(key) is not None)

    def __len__(self) -> int:
        with self._cv:
            return sum(v is not None for v in self._items.values())


class InferenceWorker(Generic[T]):
    """A daemon thread running ``process(batch)`` on every batch its mailbox hands over.

    ``keys``: the cameras (one slot each). ``on_error(exc)`` is called (on the worker thread)
    when ``process`` raises; the worker never dies of a bad batch. :meth:`stop` lets the batch
    in flight finish, then joins.
    """

    def __init__(self, process: Callable[[list[T]], None], on_error: Callable[[Exception], None],
                 keys: tuple[Hashable, ...] = ("",), name: str = "flowclas_infer"):
        self.mailbox: FrameMailbox[T] = FrameMailbox(keys)
        self._process, self._on_error = process, on_error
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, frame: T, key: Hashable = "") -> bool:
        """Hand ``frame`` over; True when it replaced a frame of ``key`` still waiting."""
        return self.mailbox.put(frame, key)

    def discard(self) -> list[Hashable]:
        """Drop the waiting frames (not those in flight); return the keys that had one."""
        return self.mailbox.clear()

    def stop(self) -> None:
        self.mailbox.close()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        while True:
            batch = self.mailbox.take()
            if batch is None:
                return
            try:
                self._process(batch)
            except Exception as exc:  # never let the worker die
                self._on_error(exc)


__all__ = ["FrameMailbox", "InferenceWorker"]
