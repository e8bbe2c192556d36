"""Which backends exist and how one is chosen: :func:`create_backend`, ``auto``.

Backends are named here and imported only when asked for, so a node on ONNX Runtime never
imports torch or TensorRT. ``auto`` tries, in order: TensorRT where it is importable and a GPU
exists, ONNX Runtime CUDA, torch CUDA, ONNX Runtime CPU, torch CPU. A candidate that fails for
any reason (not installed, an engine that does not build, CUDA out of memory) is logged and the
next one is tried; the choice and the reasons are logged on "flowclas_ros.runtime".
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
from pathlib import Path

from flowclas_ros.bundle.reader import Bundle, load_bundle

from ..memory import keep_frame_buffers
from ..options import BACKENDS, PRECISIONS, check_device
from .backend import Backend, BackendUnavailable
from .cuda import cuda_available

log = logging.getLogger("flowclas_ros.runtime")

# name -> (module, class): imported on first use
REGISTRY = {
    "torch": (".torch_backend", "TorchBackend"),
    "onnxruntime": (".onnx_backend", "OnnxRuntimeBackend"),
    "tensorrt": (".tensorrt_backend", "TensorRTBackend"),
    "torch_tensorrt": (".torch_tensorrt_backend", "TorchTensorRTBackend"),
}


def backend_class(name: str) -> type[Backend]:
    if name not in REGISTRY:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    module, cls = REGISTRY[name]
    return getattr(importlib.import_module(module, __package__), cls)


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when a CUDA GPU is usable, else "cpu"; checks the spelling of others."""
    device = check_device(device)
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    return device


def _accepted(cls, options: dict) -> dict:
    """Return the options ``cls`` takes (auto passes everyone the same options)."""
    params = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in options.items() if k in params}


def backend_options(backend: str, cpu_threads: int = 0, cpu_spinning: bool = True,
                    torch_compile: bool = False, cuda_graphs: bool = False,
                    max_batch: int = 1) -> dict:
    """Return the node's settings in the words of one backend class (0 threads = its default).

    cpu_threads / cpu_spinning: ONNX Runtime's intra-op pool (torch's threads; torch has no
    spin-wait setting). torch_compile / cuda_graphs: the torch backend's (the others compile
    anyway, or capture nothing). max_batch (the node's camera count): the TensorRT engine's
    batch profile; ONNX Runtime and torch take any batch as it comes.
    """
    if backend == "onnxruntime":
        return {"intra_op_num_threads": int(cpu_threads), "allow_spinning": bool(cpu_spinning)}
    if backend == "torch":
        opts = {"num_threads": int(cpu_threads)} if cpu_threads else {}
        if torch_compile:
            opts["compile"] = True
        if cuda_graphs:
            opts["cuda_graphs"] = True
        return opts
    if backend == "tensorrt" and max_batch > 1:
        return {"max_batch": int(max_batch)}
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
    elif not cuda_available():
        reasons.append("no CUDA GPU (no NVIDIA driver, or torch.cuda.is_available() is False)")
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
        node_opts = backend_options(name, **node)
        if name == "torch" and dev == "cpu":
            node_opts.pop("cuda_graphs", None)  # a GPU option: the CPU fallback runs without it
        try:
            cls = backend_class(name)
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
                   torch_compile: bool = False, cuda_graphs: bool = False, max_batch: int = 1,
                   **options) -> Backend:
    """Load (and validate) the bundle and start a backend on it.

    backend: auto | torch | onnxruntime | tensorrt | torch_tensorrt. device: auto | cpu | cuda |
    cuda:N. precision: fp32 | fp16 | bf16. The node's settings, cpu_threads (0 = the library's
    default), cpu_spinning (ONNX Runtime's idle threads spin-wait), torch_compile and cuda_graphs
    (the torch backend) and max_batch (frames per batch, the node's cameras), are mapped onto
    each backend's own options (:func:`backend_options`).
    options go to the backend class (e.g. ``compile=True`` for torch, ``provider="tensorrt"`` or
    ``intra_op_num_threads=2`` for onnxruntime, ``engine_cache_dir=`` for tensorrt); with
    ``auto`` each candidate takes the ones it knows. Raises FileNotFoundError / BundleError for
    the bundle, BackendUnavailable when it cannot run.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    device = check_device(device)
    bundle = bundle_path if isinstance(bundle_path, Bundle) else load_bundle(bundle_path)
    keep_frame_buffers()  # process-wide, once: frame-sized temporaries reused, not re-faulted
    node = {"cpu_threads": cpu_threads, "cpu_spinning": cpu_spinning,
            "torch_compile": torch_compile, "cuda_graphs": cuda_graphs, "max_batch": max_batch}
    if backend == "auto":
        return _auto(bundle, device, precision, options, node)
    be = backend_class(backend)(bundle, device=resolve_device(device), precision=precision,
                                **{**backend_options(backend, **node), **options})
    log.info("backend %s on %s (%s) for %s", be.name, be.device, be.precision, bundle.path)
    return be


__all__ = ["REGISTRY", "backend_class", "backend_options", "create_backend", "resolve_device"]
