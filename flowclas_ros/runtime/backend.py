"""Inference backends behind one small interface, and :func:`create_backend`.

A backend turns an (H, W, 3) uint8 RGB frame of any size into a :class:`FrameResult`: the frame
is resized to the bundle's input size, scored, and the score is brought back to (H, W) and turned
into only the outputs asked for (see :mod:`.pipeline` and :mod:`.visualisation`), all on the
backend's device. Backends:

* ``torch`` (:mod:`.torch_backend`): CPU or CUDA, fp32/fp16/bf16, torch.compile, CUDA graphs;
* ``onnxruntime`` (:mod:`.onnx_backend`): CPU, CUDA and TensorRT execution providers;
* ``tensorrt`` (:mod:`.tensorrt_backend`): TensorRT engines built from the ONNX graph, cached;
* ``torch_tensorrt`` (:mod:`.torch_tensorrt_backend`): the bundle's torch model compiled with
  torch-tensorrt (dynamo), the compiled program cached on disk;
* ``auto``: TensorRT where it is importable and a GPU exists, else ONNX Runtime CUDA, else torch
  CUDA, else ONNX Runtime CPU, else torch CPU. A candidate that fails for any reason (not
  installed, an engine that does not build, CUDA out of memory) is logged and the next one is
  tried; the choice and the reasons are logged on "flowclas_ros.runtime".

A backend that cannot run here raises :class:`BackendUnavailable` with the reason. Every call
into a GPU backend runs under ``torch.cuda.device(its device)`` (:meth:`Backend.device_guard`):
the thread that calls it (the node's worker) starts with device 0 current, whatever device the
backend lives on.
"""
from __future__ import annotations

import contextlib
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

    def device_guard(self):
        """The context every call of this backend runs in: the backend's CUDA device made
        current (CUDA backends), nothing on the CPU."""
        dev = torch.device(self.device)
        if dev.type == "cuda":
            return torch.cuda.device(dev)
        return contextlib.nullcontext()

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
    if name == "torch_tensorrt":
        from .torch_tensorrt_backend import TorchTensorRTBackend
        return TorchTensorRTBackend
    raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")


def _accepted(cls, options: dict) -> dict:
    """The options ``cls`` takes (auto passes everyone the same options)."""
    params = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in options.items() if k in params}


def backend_options(backend: str, cpu_threads: int = 0, cpu_spinning: bool = True,
                    torch_compile: bool = False, cuda_graphs: bool = False) -> dict:
    """The node's settings in the words of one backend class (0 threads = its default).

    cpu_threads / cpu_spinning: ONNX Runtime's intra-op pool (torch's threads; torch has no
    spin-wait setting). torch_compile / cuda_graphs: the torch backend's (the others compile
    anyway, or capture nothing)."""
    if backend == "onnxruntime":
        return {"intra_op_num_threads": int(cpu_threads), "allow_spinning": bool(cpu_spinning)}
    if backend == "torch":
        opts = {"num_threads": int(cpu_threads)} if cpu_threads else {}
        if torch_compile:
            opts["compile"] = True
        if cuda_graphs:
            opts["cuda_graphs"] = True
        return opts
    return {}


def _ort_providers() -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return ort.get_available_providers()


def _auto(bundle: Bundle, device: str, precision: str, options: dict, node: dict) -> Backend:
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
        node_opts = backend_options(name, **node)
        if name == "torch" and dev == "cpu":
            node_opts.pop("cuda_graphs", None)  # a GPU option: the CPU fallback runs without it
        try:
            be = cls(bundle, device=dev, precision=prec,
                     **{**node_opts, **_accepted(cls, options), **extra})
        except Exception as exc:  # not installed, build or parse errors, CUDA OOM, API drift
            first = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
            if isinstance(exc, (BackendUnavailable, ImportError)):
                reasons.append(f"{name} on {dev} unavailable: {first}")
            else:
                reasons.append(f"{name} on {dev} failed ({type(exc).__name__}): {first}")
                log.warning("backend auto: %s on %s failed, trying the next one: %r",
                            name, dev, exc)
            continue
        be.selection_reason = "; ".join(reasons) or "first choice"
        log.info("backend auto -> %s on %s (%s): %s", be.name, be.device, be.precision,
                 be.selection_reason)
        return be
    raise BackendUnavailable("no backend could run this bundle: " + "; ".join(reasons))


def create_backend(bundle_path: str | Path | Bundle, backend: str = "auto", device: str = "auto",
                   precision: str = "fp32", *, cpu_threads: int = 0, cpu_spinning: bool = True,
                   torch_compile: bool = False, cuda_graphs: bool = False,
                   **options) -> Backend:
    """Load (and validate) the bundle and start a backend on it.

    backend: auto | torch | onnxruntime | tensorrt. device: auto | cpu | cuda | cuda:N.
    precision: fp32 | fp16 | bf16. The node's settings, cpu_threads (0 = the library's default),
    cpu_spinning (ONNX Runtime's idle threads spin-wait), torch_compile and cuda_graphs (the torch
    backend), are mapped onto each backend's own options (:func:`backend_options`).
    options go to the backend class (e.g. ``compile=True`` for
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
    node = {"cpu_threads": cpu_threads, "cpu_spinning": cpu_spinning,
            "torch_compile": torch_compile, "cuda_graphs": cuda_graphs}
    if backend == "auto":
        return _auto(bundle, device, precision, options, node)
    be = _backend_class(backend)(bundle, device=resolve_device(device), precision=precision,
                                 **{**backend_options(backend, **node), **options})
    log.info("backend %s on %s (%s) for %s", be.name, be.device, be.precision, bundle.path)
    return be
