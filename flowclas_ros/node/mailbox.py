"""The hand-over between the image subscription and inference: one slot and one worker thread.

The subscription callback (executor thread) puts each validated frame into a
:class:`FrameMailbox`; a newer frame replaces the one still waiting, so a slow backend drops
frames (counted by the caller) instead of queueing them: memory stays flat and latency is
bounded by about two inference times. :class:`InferenceWorker` is the daemon thread that takes
frames out and runs them, so the executor keeps answering lifecycle and parameter services
during a slow frame.
"""
from __future__ import annotations

import threading
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class FrameMailbox(Generic[T]):
    """A single slot between the subscription and the worker: ``put`` replaces what waits.

    Memory is bounded by construction: at most one waiting frame (``high_water`` <= 1).
    """

    def __init__(self):
        self._cv = threading.Condition()
        self._item: T | None = None
        self._closed = False
        self.high_water = 0

    def put(self, item: T) -> bool:
        """Store ``item``; True when it replaced a frame that was still waiting."""
        with self._cv:
            replaced = self._item is not None
            self._item = item
            self.high_water = max(self.high_water, 1)
            self._cv.notify()
            return replaced

    def get(self) -> T | None:
        """Block until a frame arrives (returned) or the mailbox is closed (None)."""
        with self._cv:
            while self._item is None and not self._closed:
                self._cv.wait()
            if self._closed:
                return None
            item, self._item = self._item, None
            return item

    def clear(self) -> bool:
        """Drop the waiting frame; True when there was one."""
        with self._cv:
            had = self._item is not None
            self._item = None
            return had

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._item = None
            self._cv.notify_all()

    def __len__(self) -> int:
        with self._cv:
            return int(self._item is not None)


class InferenceWorker(Generic[T]):
    """A daemon thread running ``process(frame)`` on every frame of its own mailbox.

    ``on_error(exc)`` is called (on the worker thread) when ``process`` raises; the worker
    never dies of a bad frame. :meth:`stop` lets the frame in flight finish, then joins.
    """

    def __init__(self, process: Callable[[T], None], on_error: Callable[[Exception], None],
                 name: str = "flowclas_infer"):
        self.mailbox: FrameMailbox[T] = FrameMailbox()
        self._process, self._on_error = process, on_error
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, frame: T) -> bool:
        """Hand ``frame`` over; True when it replaced a frame that was still waiting."""
        return self.mailbox.put(frame)

    def discard(self) -> bool:
        """Drop the waiting frame (not the one in flight); True when there was one."""
        return self.mailbox.clear()

    def stop(self) -> None:
        self.mailbox.close()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        while True:
            frame = self.mailbox.get()
            if frame is None:
                return
            try:
                self._process(frame)
            except Exception as exc:  # never let the worker die
                self._on_error(exc)


__all__ = ["FrameMailbox", "InferenceWorker"]
