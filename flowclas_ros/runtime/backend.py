"""The inference backend interface.

It defines :class:`Backend`, :class:`FrameResult` and :class:`BackendUnavailable`. A backend turns
an (H, W, 3) uint8 RGB frame of any size into a :class:`FrameResult`: the frame is resized to the
bundle's input size, scored, and the score is brought back to (H, W) and turned into only the
outputs asked for (see :mod:`.pipeline` and :mod:`.visualisation`), all on the backend's device.
Backends:

* ``torch`` (:mod:`.torch_backend`): CPU or CUDA, fp32/fp16/bf16, torch.compile, CUDA graphs;
* ``onnxruntime`` (:mod:`.onnx_backend`): CPU, CUDA and TensorRT execution providers;
* ``tensorrt`` (:mod:`.tensorrt_backend`): TensorRT engines built from the ONNX graph, cached;
* ``torch_tensorrt`` (:mod:`.torch_tensorrt_backend`): the bundle's torch model compiled with
  torch-tensorrt (dynamo), the compiled program cached on disk;

:mod:`.registry` creates them (``create_backend``, ``auto``); a backend module imports this one,
never the registry. A backend that cannot run here raises :class:`BackendUnavailable` with the
reason. This module imports no torch (a CPU node on ONNX Runtime never loads it). Every call
into a GPU backend runs under ``torch.cuda.device(its device)`` (:meth:`Backend.device_guard`):
the thread that calls it (the node's worker) starts with device 0 current, whatever device the
backend lives on.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from flowclas_ros.bundle.preprocess import check_image
from flowclas_ros.bundle.reader import Bundle

from .visualisation import check_alpha, check_colormap

log = logging.getLogger("flowclas_ros.runtime")

__all__ = ["Backend", "BackendUnavailable", "FrameResult", "batch_groups"]


def batch_groups(shapes: list[tuple[int, ...]], max_batch: int | None = None) -> list[list[int]]:
    """Group the indices of ``shapes`` by equal shape, first seen first, at most max_batch each.

    Frames resized to one model input shape can share a forward run; others cannot.
    """
    groups: dict[tuple[int, ...], list[list[int]]] = {}
    for i, shape in enumerate(shapes):
        runs = groups.setdefault(tuple(shape), [[]])
        if max_batch is not None and len(runs[-1]) >= max(1, max_batch):
            runs.append([])
        runs[-1].append(i)
    return [run for runs in groups.values() for run in runs]


def _concat(xs):
    """Stack (1, 3, h, w) inputs (numpy, or torch on a device) into one (n, 3, h, w)."""
    if isinstance(xs[0], np.ndarray):
        return np.concatenate(xs)
    import torch

    return torch.cat(xs)


@dataclass
class FrameResult:
    heatmap: np.ndarray | None  # (H, W) float32 raw score at input resolution, always finite
    mask: np.ndarray | None  # (H, W) uint8 0/255 (255 where score >= threshold)
    overlay: np.ndarray | None  # (H, W, 3) uint8 BGR, colour-mapped normalised score on the input
    inference_ms: float  # wall time of infer(): pre-processing, model, post-processing, copies


class BackendUnavailable(RuntimeError):
    """This backend/device/precision cannot run here; the message says why."""


class Backend:
    """Base class: :meth:`infer` = pipeline.prepare -> :meth:`_forward` -> pipeline.finish.

    Subclasses set ``pipeline`` (a Torch- or NumpyPipeline: ``prepare``, ``finish`` and the
    bundle's ``resolution``) and implement ``_forward`` (model input (1, 3, h, w) -> score
    (h, w), on the pipeline's device) and ``_release``.

    Batches (:meth:`infer_batch`, one node serving several cameras): frames of any sizes in,
    one :class:`FrameResult` each, in order, every one as :meth:`infer` would give it. Each
    frame is prepared on its own (resized to the model's input), the inputs are grouped by
    shape (a fixed-size bundle: one group; an aspect-keeping one: one per input shape, so
    cameras of one aspect ratio still batch), and a group of at least two frames that
    :meth:`_batches` accepts runs as one (n, 3, h, w) input through :meth:`_forward_batch`
    (-> (n, h, w)), at most ``max_batch`` frames a run. A backend that cannot batch (or a
    graph with a fixed batch of 1, e.g. a bundle exported before batching) keeps the default
    :meth:`_batches` False: its frames run one at a time, same results. ``inference_ms`` of
    each result is the time from the call until that result was ready.
    """

    max_batch: int | None = None  # frames per forward run; None = no limit

    name: str = "base"
    device: str
    precision: str
    bundle: Bundle

    def __init__(self, bundle: Bundle, device: str, precision: str, pipeline):
        self.bundle = bundle
        self.device = device
        self.precision = precision
        self.pipeline = pipeline
        self.selection_reason = ""  # set by create_backend(backend="auto")
        self._lock = threading.Lock()
        self._closed = False

    # --- subclass hooks ---
    def _forward(self, x):
        raise NotImplementedError

    def _batches(self, shape: tuple[int, ...]) -> bool:
        """Whether :meth:`_forward_batch` takes inputs of ``shape`` (n > 1, 3, h, w)."""
        return False

    def _forward_batch(self, x):
        """Score a batch: model input (n, 3, h, w) -> scores (n, h, w), on the device."""
        raise NotImplementedError

    def _sync(self) -> None:
        """Wait for queued device work (for timing when no output is copied back)."""

    def _release(self) -> None:
        pass

    def device_guard(self):
        """Return the context every call of this backend runs in.

        That is the backend's CUDA device made current (CUDA backends), nothing on the CPU.
        """
        if str(self.device).startswith("cuda"):
            import torch

            return torch.cuda.device(torch.device(self.device))
        return contextlib.nullcontext()

    def describe(self) -> dict:
        """Describe what runs where, for logs and diagnostics."""
        res = self.bundle.resolution
        return {"backend": self.name, "device": self.device, "precision": self.precision,
                "input_size": list(self.bundle.input_size),
                "resolution": res.to_dict() if res.keeps_aspect else "fixed",
                "bundle": str(self.bundle.path)}

    # --- the interface ---
    def infer(self, image, *, heatmap: bool = True, mask: bool = True, overlay: bool = True,
              threshold: float | None = None, overlay_alpha: float = 0.5,
              colormap: str = "turbo") -> FrameResult:
        """Score one (H, W, 3) uint8 RGB frame (numpy array, or a tensor for torch pipelines).

        threshold: None (or NaN) = the bundle's calibrated threshold
        (:meth:`~flowclas_ros.bundle.reader.Bundle.mask_threshold`). Only the outputs asked for
        are computed and copied to the host; the others are None.
        """
        if overlay:
            check_colormap(colormap)
            check_alpha(overlay_alpha)
        thr = self.bundle.mask_threshold(threshold)
        with self._lock, self.device_guard():
            if self._closed:
                raise RuntimeError(f"the {self.name} backend is closed")
            t0 = time.perf_counter()
            x, frame = self.pipeline.prepare(image)
            score = self._forward(x)
            heat, m, ov = self.pipeline.finish(score, frame, heatmap=heatmap, mask=mask,
                                               overlay=overlay, threshold=thr,
                                               alpha=overlay_alpha, colormap=colormap)
            if not (heatmap or mask or overlay):
                self._sync()
            ms = (time.perf_counter() - t0) * 1e3
        return FrameResult(heatmap=heat, mask=m, overlay=ov, inference_ms=ms)

    def infer_batch(self, images, *, heatmap=True, mask=True, overlay=True, threshold=None,
                    overlay_alpha: float = 0.5, colormap: str = "turbo",
                    on_result: Callable[[int, FrameResult], None] | None = None,
                    ) -> list[FrameResult]:
        """Score several (H_i, W_i, 3) uint8 RGB frames; one :class:`FrameResult` each, in order.

        ``heatmap``, ``mask``, ``overlay`` and ``threshold`` are one value for every frame or a
        sequence of one per frame (cameras differ in subscribers and thresholds).
        ``on_result(i, result)``: called as soon as frame ``i``'s result is ready (frames run
        one at a time: each after its own run; a batch run: all after it), so that a camera's
        outputs need not wait for the others' frames; its ``inference_ms`` is the time from
        the call to that moment.
        """
        n = len(images)
        if n == 0:
            return []
        per = {k: list(v) if isinstance(v, (list, tuple)) else [v] * n
               for k, v in (("heatmap", heatmap), ("mask", mask), ("overlay", overlay),
                            ("threshold", threshold))}
        if any(len(v) != n for v in per.values()):
            raise ValueError(f"infer_batch: every per-frame option needs {n} values")
        if any(per["overlay"]):
            check_colormap(colormap)
            check_alpha(overlay_alpha)
        thr = [self.bundle.mask_threshold(t) for t in per["threshold"]]
        anything = any(per["heatmap"] + per["mask"] + per["overlay"])
        outs: list = [None] * n
        with self._lock, self.device_guard():
            if self._closed:
                raise RuntimeError(f"the {self.name} backend is closed")
            t0 = time.perf_counter()
            sizes = [self.pipeline.resolution.model_size(*check_image(im)) for im in images]

            def finish(i, score, frame):
                heat, m, ov = self.pipeline.finish(
                    score, frame, heatmap=per["heatmap"][i], mask=per["mask"][i],
                    overlay=per["overlay"][i], threshold=thr[i], alpha=overlay_alpha,
                    colormap=colormap)
                if not anything:
                    self._sync()
                outs[i] = FrameResult(heat, m, ov, (time.perf_counter() - t0) * 1e3)
                if on_result is not None:
                    on_result(i, outs[i])

            for group in batch_groups(sizes, self.max_batch):
                prepared = {i: self.pipeline.prepare(images[i]) for i in group[:1]}
                if len(group) > 1 and self._batches(tuple(prepared[group[0]][0].shape)):
                    prepared.update((i, self.pipeline.prepare(images[i])) for i in group[1:])
                    scores = self._forward_batch(_concat([prepared[i][0] for i in group]))
                    for j, i in enumerate(group):  # before the next run reuses its buffers
                        finish(i, scores[j], prepared[i][1])
                    continue
                for i in group:  # one at a time, each prepared just before its run
                    x, frame = prepared.pop(i) if i in prepared else \
                        self.pipeline.prepare(images[i])
                    finish(i, self._forward(x), frame)
        return outs

    def warmup(self, height: int, width: int, iterations: int = 2) -> None:
        """Run a few full inferences on a synthetic (height, width) frame.

        Allocations, kernel selection, compilation and graph capture happen here, not on the
        first real frame.
        """
        frame = np.random.default_rng(0).integers(0, 256, (int(height), int(width), 3), np.uint8)
        t0 = time.perf_counter()
        for _ in range(max(1, iterations)):
            self.infer(frame)
        log.info("%s warm-up at %dx%d: %.0f ms", self.name, width, height,
                 (time.perf_counter() - t0) * 1e3)

    def close(self) -> None:
        """Release device memory; infer() afterwards raises. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._release()

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} on {self.device} ({self.precision})>"
