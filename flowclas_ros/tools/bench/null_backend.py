"""A backend that computes nothing, to measure what the ROS plumbing around the model costs.

``bench.node --null-backend MS`` runs the node with :class:`NullBackend` in place of its
backend's ``infer``: each frame waits ``MS`` milliseconds with the GIL released (as ONNX
Runtime and torch do while they run) and writes a heatmap of the frame's size into the kind of
buffer the host pipeline writes its outputs into (:func:`~flowclas_ros.runtime.numpy_pipeline.
message_array`, which the heatmap message then shares). Every other cost of the node is the
real one: DDS both ways, rclpy's message conversions, validation, the hand-over to the worker
thread, publishing. End to end minus backend is then that plumbing alone, so
``MS * (goal ratio - 1)`` against it says whether any model of that speed can meet the goal.
"""
from __future__ import annotations

import time

import numpy as np

from flowclas_ros.runtime.backend import FrameResult
from flowclas_ros.runtime.numpy_pipeline import message_array


class NullBackend:
    """Wrap a real backend; ``infer`` waits ``ms`` and returns a heatmap of the frame's size.

    Mask and overlay are None (the bench subscribes to the heatmap only). Everything else
    (name, device, bundle, release) is the wrapped backend's.
    """

    def __init__(self, inner, ms: float):
        if ms < 0:
            raise ValueError(f"the null backend's time must be >= 0 ms, got {ms}")
        self.inner, self.ms = inner, float(ms)
        self._scores: dict[tuple[int, int], np.ndarray] = {}  # one score map per frame size

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def infer(self, image: np.ndarray, **_options) -> FrameResult:
        start = time.perf_counter()
        size = tuple(image.shape[:2])
        scores = self._scores.get(size)
        if scores is None:
            scores = np.random.default_rng(0).random(size, dtype=np.float32)
            self._scores[size] = scores
        time.sleep(self.ms / 1e3)
        heatmap = message_array(size, np.float32)
        np.copyto(heatmap, scores)  # the write a pipeline's upsampling would make
        return FrameResult(heatmap, None, None, (time.perf_counter() - start) * 1e3)

    def infer_batch(self, images, *, on_result=None, **_options) -> list[FrameResult]:
        """One frame after the other, each handed to ``on_result`` when it is ready."""
        results = []
        for i, image in enumerate(images):
            results.append(self.infer(image))
            if on_result is not None:
                on_result(i, results[-1])
        return results


__all__ = ["NullBackend"]
