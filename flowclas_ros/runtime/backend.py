"""Inference backends behind one small interface, and :func:`create_backend`.

A backend turns an (H, W, 3) uint8 RGB frame of any size into a :class:`FrameResult`: the frame
is resized to the bundle's input size, scored, and the score is brought back to (H, W) and turned
into only the outputs asked for (see :mod:`.pipeline` and :mod:`.visualisation`), all on the
backend's device. Backends:

* ``torch`` (:mod:`.torch_backend`): CPU or CUDA, fp32/fp16/bf16, torch.compile, CUDA graphs;
* ``onnxruntime`` (:mod:`.onnx_backend`): CPU, CUDA and TensorRT execution providers;
* ``tensorrt`` (:mod:`.tensorrt_backend`): TensorRT engines built from the ONNX graph, cached;
* ``auto``: TensorRT where it is importable and a GPU exists, else ONNX Runtime CUDA, else torch
  CUDA, else ONNX Runtime CPU. The choice and the reason are logged on "flowclas_ros.runtime".

A backend that cannot run here raises :class:`BackendUnavailable` with the reason.
"""
from __future__ import annotations

import importlib.util
import inspect
import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from flowclas_ros.export.bundle import Bundle, load_bundle

from ..options import BACKENDS, COLORMAPS, PRECISIONS, check_device
from .visualisation import check_alpha, check_colormap

log = logging.getLogger("flowclas_ros.runtime")

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

__all__ = ["FrameResult", "Backend", "BackendUnavailable", "COLORMAPS", "BACKENDS", "PRECISIONS",
           "create_backend", "resolve_device"]


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

    Subclasses set ``pipeline`` (a Torch- or NumpyPipeline) and implement ``_forward`` (model
    input (1, 3, h, w) -> score (h, w), on the pipeline's device) and ``_release``.
    """

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

    def _sync(self) -> None:
        """Wait for queued device work (for timing when no output is copied back)."""

    def _release(self) -> None:
        pass

    def describe(self) -> dict:
        """What runs where, for logs and diagnostics."""
        return {"backend": self.name, "device": self.device, "precision": self.precision,
                "input_size": list(self.bundle.input_size), "bundle": str(self.bundle.path)}

    # --- the interface ---
    def infer(self, image, *, heatmap: bool = True, mask: bool = True, overlay: bool = True,
              threshold: float | None = None, overlay_alpha: float = 0.5,
              colormap: str = "turbo") -> FrameResult:
        """Score one (H, W, 3) uint8 RGB frame (numpy array, or a tensor for torch pipelines).

        threshold: None (or NaN) = the bundle's calibrated threshold. Only the outputs asked for
        are computed and copied to the host; the others are None.
        """
        if overlay:
            check_colormap(colormap)
            check_alpha(overlay_alpha)
        thr = self.bundle.threshold if threshold is None or math.isnan(threshold) else float(threshold)
        with self._lock:
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

    def warmup(self, height: int, width: int, iterations: int = 2) -> None:
        """Run a few full inferences on a synthetic (height, width) frame: allocations, kernel
        selection, compilation and graph capture happen here, not on the first real frame."""
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


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when torch sees a GPU, else "cpu"; checks the spelling of others."""
    device = check_device(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _backend_class(name: str):
    if name == "torch":
        from .torch_backend import TorchBackend
        return TorchBackend
    if name == "onnxruntime":
        from .onnx_backend import OnnxRuntimeBackend
        return OnnxRuntimeBackend
    if name == "tensorrt":
        from .tensorrt_backend import TensorRTBackend
        return TensorRTBackend
    raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")


def _accepted(cls, options: dict) -> dict:
    """The options ``cls`` takes (auto passes everyone the same options)."""
    params = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in options.items() if k in params}


def cpu_options(backend: str, cpu_threads: int = 0, cpu_spinning: bool = True) -> dict:
    """The node's CPU settings in the words of one backend class (0 threads = its default)."""
    if backend == "onnxruntime":
        return {"intra_op_num_threads": int(cpu_threads), "allow_spinning": bool(cpu_spinning)}
    if backend == "torch" and cpu_threads:
        return {"num_threads": int(cpu_threads)}  # torch has no spin-wait setting
    return {}


def _ort_providers() -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return ort.get_available_providers()


def _auto(bundle: Bundle, device: str, precision: str, options: dict, cpu: dict) -> Backend:
    reasons: list[str] = []
    candidates: list[tuple[str, str, dict]] = []
    if device == "cpu":
        reasons.append("device=cpu asked for: GPU backends skipped")
    elif not torch.cuda.is_available():
        reasons.append(f"no CUDA GPU (torch {torch.__version__}: torch.cuda.is_available() is "
                       f"False)")
    else:
        device = "cuda" if device == "auto" else device
        if importlib.util.find_spec("tensorrt") is not None:
            candidates.append(("tensorrt", device, {}))
        else:
            reasons.append("tensorrt is not installed")
        if "CUDAExecutionProvider" in _ort_providers():
            candidates.append(("onnxruntime", device, {"provider": "cuda"}))
        else:
            reasons.append("onnxruntime has no CUDAExecutionProvider (onnxruntime-gpu not "
                           "installed)")
        candidates.append(("torch", device, {}))
    candidates += [("onnxruntime", "cpu", {"provider": "cpu"}), ("torch", "cpu", {})]
    for name, dev, extra in candidates:
        prec = precision
        if dev == "cpu" and precision != "fp32":
            reasons.append(f"{precision} is for GPUs: running fp32 on the CPU")
            prec = "fp32"
        cls = _backend_class(name)
        try:
            be = cls(bundle, device=dev, precision=prec,
                     **{**cpu_options(name, **cpu), **_accepted(cls, options), **extra})
        except (BackendUnavailable, ImportError) as exc:
            reasons.append(f"{name} on {dev} unavailable: {exc}")
            continue
        be.selection_reason = "; ".join(reasons) or "first choice"
        log.info("backend auto -> %s on %s (%s): %s", be.name, be.device, be.precision,
                 be.selection_reason)
        return be
    raise BackendUnavailable("no backend could run this bundle: " + "; ".join(reasons))


def create_backend(bundle_path: str | Path | Bundle, backend: str = "auto", device: str = "auto",
                   precision: str = "fp32", *, cpu_threads: int = 0, cpu_spinning: bool = True,
                   **options) -> Backend:
    """Load (and validate) the bundle and start a backend on it.

    backend: auto | torch | onnxruntime | tensorrt. device: auto | cpu | cuda | cuda:N.
    precision: fp32 | fp16 | bf16. cpu_threads (0 = the library's default) and cpu_spinning
    (ONNX Runtime's idle threads spin-wait) are mapped onto each backend's own options
    (:func:`cpu_options`). options go to the backend class (e.g. ``compile=True`` for
    torch, ``provider="tensorrt"`` or ``intra_op_num_threads=2`` for onnxruntime,
    ``engine_cache_dir=`` for tensorrt); with ``auto`` each candidate takes the ones it knows.
    Raises FileNotFoundError / BundleError for the bundle, BackendUnavailable when it cannot run.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    device = check_device(device)
    bundle = bundle_path if isinstance(bundle_path, Bundle) else load_bundle(bundle_path)
    cpu = {"cpu_threads": cpu_threads, "cpu_spinning": cpu_spinning}
    if backend == "auto":
        return _auto(bundle, device, precision, options, cpu)
    be = _backend_class(backend)(bundle, device=resolve_device(device), precision=precision,
                                 **{**cpu_options(backend, **cpu), **options})
    log.info("backend %s on %s (%s) for %s", be.name, be.device, be.precision, bundle.path)
    return be
