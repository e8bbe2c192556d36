"""The TensorRT backend: an engine built from the bundle's ONNX graph, cached on disk.

The engine is built with the TensorRT builder (``OnnxParser`` on the graph, a fixed optimisation
profile at the bundle's input size) as a **strongly typed** network: every layer runs in the
type the ONNX graph gives it. TensorRT 10.12 deprecated and 11 removed the weakly-typed
precision flags (``BuilderFlag.FP16``), and they let TensorRT run the whole flow (exp, log-det
sums, sums of squares over up to 1024 channels) in half precision while the torch path and the
threshold calibration keep it in fp32. So ``precision: fp16`` means the bundle's fp16 graph (an
``export --fp16`` bundle) or, for an fp32 bundle, an fp16 graph derived from its weights
(:func:`graph_for_precision`: the backbone in float16, the flow and the score in float32, as
``export --fp16`` makes it), cached beside the engines. TensorRT 10 and 11 are supported; an
older TensorRT, or one that lacks an API used here, raises :class:`BackendUnavailable` naming
what is missing (:func:`check_api`). Engines are stored in an :class:`EngineCache`. An engine is
only valid for the exact TensorRT version, GPU model and compute capability, precision, input
shape, batch range and graph it was built from, so those seven make the cache key
(:class:`EngineKey`). The engine file's name is the key's sha256 and a JSON sidecar repeats the
key and the engine's own sha256: a different key never finds an old engine, and a sidecar that
disagrees (or a corrupted engine) is rebuilt with a warning, never reused.
Builds are logged with their duration.

Batches (``max_batch`` N > 1: the node's camera count, on a graph whose batch dimension is
symbolic): the engine's optimisation profile spans batch 1..N (optimised for N) and the key
records N; a graph with a fixed batch of 1 keeps N = 1 and runs frames one at a time.

Frames, scores and post-processing stay on the GPU (torch tensors; TensorRT reads and writes
them in place on torch's current stream).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from flowclas_ros.bundle.reader import Bundle

from .. import paths
from .backend import Backend, BackendUnavailable
from .cuda import require_cuda
from .torch_pipeline import TorchPipeline

log = logging.getLogger("flowclas_ros.runtime")

KEY_SCHEMA = 2  # bump when the engine build recipe changes: old engines then miss


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on.

    ``input_shape`` is (1, 3, H, W); ``max_batch`` the profile's largest batch (1..N).
    """

    trt_version: str
    gpu_name: str
    compute_capability: str  # "9.0"
    precision: str  # fp32 | fp16 | bf16
    input_shape: tuple[int, ...]
    onnx_sha256: str
    max_batch: int = 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        d["schema"] = KEY_SCHEMA
        return d

    def digest(self) -> str:
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def engine_cache_key(*, trt_version: str, gpu_name: str, compute_capability: str,
                     precision: str, input_shape, onnx_sha256: str, max_batch: int = 1) -> str:
    """Return the cache key (hex sha256) of an engine built under these conditions."""
    return EngineKey(str(trt_version), str(gpu_name), str(compute_capability), str(precision),
                     tuple(int(v) for v in input_shape), str(onnx_sha256),
                     int(max_batch)).digest()


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class EngineCache:
    """Serialized engines in ``root``: <digest>.engine + <digest>.json (key, engine sha256)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def paths(self, key: EngineKey) -> tuple[Path, Path]:
        d = key.digest()
        return self.root / f"{d}.engine", self.root / f"{d}.json"

    def load(self, key: EngineKey) -> bytes | None:
        """Return the cached engine for exactly ``key``.

        None when it is absent, mismatched or corrupted.
        """
        engine, meta = self.paths(key)
        if not engine.is_file() or not meta.is_file():
            return None
        try:
            info = json.loads(meta.read_text())
        except (OSError, json.JSONDecodeError):
            log.warning("engine cache %s: unreadable sidecar, rebuilding", meta)
            return None
        if info.get("key") != key.to_dict():
            log.warning("engine cache %s was built for %s, not %s: rebuilding", engine.name,
                        info.get("key"), key.to_dict())
            return None
        data = engine.read_bytes()
        if hashlib.sha256(data).hexdigest() != info.get("engine_sha256"):
            log.warning("engine cache %s is corrupted (sha256 mismatch): rebuilding", engine)
            return None
        return data

    def store(self, key: EngineKey, data: bytes, build_seconds: float) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        engine, meta = self.paths(key)
        _atomic_write(engine, data)
        info = {"key": key.to_dict(), "engine_sha256": hashlib.sha256(data).hexdigest(),
                "bytes": len(data), "build_seconds": round(build_seconds, 2),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        _atomic_write(meta, (json.dumps(info, indent=2) + "\n").encode())
        return engine

    def get_or_build(self, key: EngineKey, build: Callable[[], bytes]) -> tuple[bytes, bool]:
        """(engine bytes, built?) - the cached engine for ``key``, else ``build()`` stored."""
        data = self.load(key)
        if data is not None:
            log.info("TensorRT engine cache hit: %s", self.paths(key)[0])
            return data, False
        log.info("building TensorRT engine for %s (this takes a while)", key.to_dict())
        t0 = time.perf_counter()
        data = build()
        seconds = time.perf_counter() - t0
        path = self.store(key, data, seconds)
        log.info("built TensorRT engine in %.1f s -> %s (%.1f MB)", seconds, path, len(data) / 1e6)
        return data, True


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailable(
            "the tensorrt backend needs NVIDIA TensorRT's Python package (pip install tensorrt "
            "matching your CUDA, or the JetPack/TensorRT apt packages); it is not installed "
            f"({exc}). Use backend onnxruntime or torch instead") from exc
    return trt


REQUIRED_API = (  # what this backend calls: TensorRT 10 and 11 have all of it
    "Logger", "Builder", "OnnxParser", "Runtime", "MemoryPoolType.WORKSPACE",
    "NetworkDefinitionCreationFlag.STRONGLY_TYPED", "IExecutionContext.execute_async_v3",
    "IExecutionContext.set_tensor_address", "IExecutionContext.set_input_shape",
)


def check_api(trt) -> None:
    """BackendUnavailable naming what this TensorRT lacks of :data:`REQUIRED_API`."""
    missing = []
    for name in REQUIRED_API:
        obj = trt
        for part in name.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                missing.append(name)
                break
    if missing:
        raise BackendUnavailable(
            f"TensorRT {getattr(trt, '__version__', '?')} lacks {', '.join(missing)}: the "
            f"tensorrt backend needs TensorRT 10 or 11 (strongly typed networks, named tensor "
            f"addresses); install a newer tensorrt, or use backend onnxruntime or torch")


def network_flags(trt) -> int:
    """Return the network creation flags.

    Strongly typed (precision from the graph's own types); explicit batch on TensorRT versions
    that still have the flag (a no-op there since 10).
    """
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    return flags


def build_engine(trt, onnx_path: Path, input_shape: tuple[int, ...], input_name: str,
                 workspace_bytes: int = 4 << 30, max_batch: int = 1) -> bytes:
    """Parse ``onnx_path`` into a strongly typed network and build a serialized engine.

    The engine is for exactly ``input_shape``, or with ``max_batch`` > 1 for its batches of
    1..max_batch (a graph with a symbolic batch dimension).
    """
    check_api(trt)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    profile = builder.create_optimization_profile()
    largest = (int(max_batch),) + tuple(input_shape[1:])
    profile.set_shape(input_name, input_shape, largest, largest)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine for {onnx_path}")
    return bytes(serialized)


def onnx_batch_dynamic(onnx_path: Path) -> bool:
    """Whether the graph's input has a symbolic batch dimension (exported since batching)."""
    try:
        import onnx

        dim = onnx.load(str(onnx_path), load_external_data=False).graph.input[0] \
            .type.tensor_type.shape.dim[0]
        return not dim.HasField("dim_value")
    except Exception:  # no onnx, unreadable graph: the safe answer is one frame a run
        return False


def graph_for_precision(bundle: Bundle, precision: str, cache_dir: Path) -> tuple[Path, str, str]:
    """(ONNX graph, its sha256, the precision it runs in) for ``precision`` on this bundle.

    fp32: the bundle's graph. fp16: the bundle's own graph when it was exported with --fp16,
    else one derived from its weights (backbone float16; flow, score, input and output float32)
    and cached in ``cache_dir``. bf16 has no exported graph yet: BackendUnavailable.
    """
    from flowclas_ros.bundle.hashing import sha256_file
    from flowclas_ros.bundle.onnx_export import export_onnx
    from flowclas_ros.bundle.torch_model import build_torch_model

    graph = "fp16" if bundle.fp16 else "fp32"
    if precision == graph:
        return bundle.onnx_path, bundle.onnx_sha256, graph
    if graph == "fp16":
        log.warning("this bundle's graph has a float16 backbone: running it as exported (fp16)")
        return bundle.onnx_path, bundle.onnx_sha256, "fp16"
    if precision != "fp16":
        raise BackendUnavailable(
            f"TensorRT runs the precision of the graph it is given (strongly typed); flowclas_ros "
            f"exports fp32 and fp16 graphs, not {precision}: use precision fp16, or the torch "
            f"backend for {precision}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{bundle.onnx_sha256[:24]}-fp16.onnx"
    if not path.is_file():
        log.info("deriving an fp16 graph (float16 backbone, float32 flow) from %s", bundle.path)
        tmp = path.with_suffix(".tmp.onnx")
        export_onnx(build_torch_model(bundle), tmp, bundle.input_size, fp16=True,
                    dynamic=bundle.dynamic)
        os.replace(tmp, path)
    return path, sha256_file(path), "fp16"


class TensorRTBackend(Backend):
    """TensorRT backend: one engine per model input shape.

    A bundle with a fixed input size has one; an aspect-keeping bundle (format 3) one per camera
    resolution, built (or loaded from the cache) at the first frame of that shape and kept.
    """

    name = "tensorrt"

    def __init__(self, bundle: Bundle, device: str = "cuda", precision: str = "fp32", *,
                 engine_cache_dir: str | Path | None = None, workspace_gb: float = 4.0,
                 max_batch: int = 1):
        trt = import_tensorrt()
        dev = require_cuda(device, "tensorrt")
        check_api(trt)
        self._trt = trt
        self._props = torch.cuda.get_device_properties(dev)
        self._dev = dev
        self._workspace = int(workspace_gb * (1 << 30))
        cache_root = Path(engine_cache_dir or paths.cache_dir("tensorrt"))
        self._onnx_path, self._onnx_sha, precision = graph_for_precision(bundle, precision,
                                                                         cache_root)
        self._precision = precision
        # a fixed-batch graph (exported before batching) cannot take a profile beyond 1
        self.max_batch = max(1, int(max_batch)) if onnx_batch_dynamic(self._onnx_path) else 1
        self.cache = EngineCache(cache_root)
        self._in = bundle.manifest["onnx"]["input_name"]
        self._out = bundle.manifest["onnx"]["output_name"]
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engines: dict[tuple[int, ...], tuple] = {}  # shape -> (engine, context, output)
        h, w = bundle.input_size
        self.key = self._key((1, 3, h, w))
        t0 = time.perf_counter()
        self.built = self._engine_for(self.key.input_shape)  # the reference shape, at configure
        self.engine_seconds = time.perf_counter() - t0  # building, or reading the cache
        super().__init__(bundle, str(dev), precision, TorchPipeline(dev, bundle.resolution,
                                                                   bundle.score_range))

    def _key(self, shape: tuple[int, ...]) -> EngineKey:
        p = self._props
        return EngineKey(self._trt.__version__, p.name, f"{p.major}.{p.minor}", self._precision,
                         tuple(int(v) for v in shape), self._onnx_sha, self.max_batch)

    def _engine_for(self, shape: tuple[int, ...]) -> bool:
        """Make the engine of ``shape`` ready; True when it had to be built."""
        if shape in self._engines:
            return False
        key = self._key(shape)

        def build() -> bytes:
            with torch.cuda.device(self._dev):
                return build_engine(self._trt, self._onnx_path, key.input_shape, self._in,
                                    self._workspace, key.max_batch)

        data, built = self.cache.get_or_build(key, build)
        with torch.cuda.device(self._dev):
            engine = self._runtime.deserialize_cuda_engine(data)
            if engine is None and not built:  # stale despite its key: rebuild once
                log.warning("cached engine %s did not deserialize: rebuilding",
                            self.cache.paths(key)[0])
                data = build()
                self.cache.store(key, data, 0.0)
                engine = self._runtime.deserialize_cuda_engine(data)
            if engine is None:
                raise RuntimeError("TensorRT could not deserialize the engine it built")
            context = engine.create_execution_context()
            context.set_input_shape(self._in, (key.max_batch,) + key.input_shape[1:])
            out = torch.empty(tuple(context.get_tensor_shape(self._out)), dtype=torch.float32,
                              device=self._dev)  # room for the largest batch
        self._engines[shape] = (engine, context, out)
        return built

    def describe(self) -> dict:
        d = super().describe()
        d.update(engine=str(self.cache.paths(self.key)[0]), built=self.built,
                 engine_seconds=round(self.engine_seconds, 2), gpu=self.key.gpu_name,
                 trt=self.key.trt_version, shapes=[list(s) for s in self._engines])
        return d

    def _batches(self, shape: tuple[int, ...]) -> bool:
        return self.max_batch > 1

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_batch(x)[0]

    def _forward_batch(self, x: torch.Tensor) -> torch.Tensor:
        # runs inside device_guard(): the engine's device is current on this thread
        x = x.contiguous()
        n, shape = int(x.shape[0]), (1,) + tuple(x.shape[1:])
        if shape not in self._engines:
            log.info("new input shape %s: preparing its TensorRT engine", shape)
            self._engine_for(shape)
        _, context, out = self._engines[shape]
        context.set_input_shape(self._in, tuple(x.shape))  # n <= max_batch (infer_batch)
        out = out[:n]  # the leading rows of a contiguous buffer: contiguous
        context.set_tensor_address(self._in, x.data_ptr())
        context.set_tensor_address(self._out, out.data_ptr())
        stream = torch.cuda.current_stream(self._dev)
        if not context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        return out

    def _sync(self) -> None:
        torch.cuda.synchronize(self._dev)

    def _release(self) -> None:
        self._engines.clear()
        self._runtime = None
        torch.cuda.empty_cache()
