"""The torch-tensorrt backend: the bundle's torch model compiled by torch-tensorrt (dynamo).

The score graph (normalise, pad, backbone, LayerNorm, flow, score, upsample; the same module the
ONNX export traces) is compiled for the bundle's fixed input size with explicit typing: the
backbone in the requested half precision, the flow and the score in float32, as the torch
backend and ``export --fp16`` run them. The compiled program is saved (torch-tensorrt's
ExportedProgram format) in a cache keyed like the TensorRT engines (torch-tensorrt, TensorRT
and torch versions, GPU, compute capability, precision, input shape, weights sha256); a key that
differs never finds an old program, so a robot compiles once (``build_engine``) and loads after.
The cache holds only files this backend wrote itself.
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import logging
import os
import time
from pathlib import Path

import torch

from flowclas_ros.bundle.graph import ScoreGraph
from flowclas_ros.bundle.reader import WEIGHTS_FILE, Bundle
from flowclas_ros.bundle.torch_model import build_torch_model

from .. import paths
from .backend import Backend, BackendUnavailable
from .cuda import require_cuda, torch_dtype
from .torch_pipeline import TorchPipeline

log = logging.getLogger("flowclas_ros.runtime")

KEY_SCHEMA = 1


def import_torch_tensorrt():
    try:
        return importlib.import_module("torch_tensorrt")
    except ImportError as exc:
        raise BackendUnavailable(
            "the torch_tensorrt backend needs the torch-tensorrt package matching this torch "
            f"(pip install -r requirements-gpu.txt); it is not installed ({exc}). Use backend "
            "tensorrt, onnxruntime or torch instead") from exc


def program_key(tt, precision: str, input_shape, weights_sha256: str, device) -> dict:
    """Everything the compiled program depends on."""
    props = torch.cuda.get_device_properties(device)
    try:
        trt_version = importlib.import_module("tensorrt").__version__
    except ImportError:
        trt_version = None
    return {"schema": KEY_SCHEMA, "torch_tensorrt": getattr(tt, "__version__", "?"),
            "tensorrt": trt_version, "torch": torch.__version__, "gpu_name": props.name,
            "compute_capability": f"{props.major}.{props.minor}", "precision": precision,
            "input_shape": [int(v) for v in input_shape], "weights_sha256": weights_sha256}


def key_digest(key: dict) -> str:
    return hashlib.sha256(
        json.dumps(key, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def compile_program(tt, graph: torch.nn.Module, example: torch.Tensor, workspace_bytes: int):
    """Compile ``graph`` with torch_tensorrt.compile.

    With explicit typing where this version has it (TensorRT 11 has no weak typing), else with
    the graph's own precisions enabled.
    """
    kwargs = {"ir": "dynamo", "inputs": [tt.Input(tuple(example.shape), dtype=torch.float32)],
              "workspace_size": workspace_bytes, "min_block_size": 1}
    params = inspect.signature(tt.compile).parameters
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    if "use_explicit_typing" in params or accepts_any:
        kwargs["use_explicit_typing"] = True
    else:
        dtypes = {p.dtype for p in graph.parameters()} | {torch.float32}
        kwargs["enabled_precisions"] = dtypes
    return tt.compile(graph, **kwargs)


class TorchTensorRTBackend(Backend):
    """torch-tensorrt backend: one compiled program per model input shape, each cached on disk.

    An aspect-keeping bundle has one per camera resolution, compiled or loaded at its first
    frame.
    """

    name = "torch_tensorrt"

    def __init__(self, bundle: Bundle, device: str = "cuda", precision: str = "fp32", *,
                 cache_dir: str | Path | None = None, workspace_gb: float = 4.0):
        self._tt = import_torch_tensorrt()
        self._dev = dev = require_cuda(device, "torch_tensorrt")
        self._dtype = torch_dtype(precision)
        self._precision = precision
        self._root = Path(cache_dir or paths.cache_dir("torch_tensorrt"))
        self._workspace = int(workspace_gb * (1 << 30))
        self._weights_sha = bundle.manifest["files"][WEIGHTS_FILE]["sha256"]
        self._bundle_for_build = bundle
        self._programs: dict[tuple[int, ...], torch.nn.Module] = {}
        h, w = bundle.input_size
        shape = (1, 3, h, w)
        self.key = program_key(self._tt, precision, shape, self._weights_sha, dev)
        self.program_path = self._root / f"{key_digest(self.key)}.ep"
        t0 = time.perf_counter()
        self.built = self._program_for(shape)
        self.engine_seconds = time.perf_counter() - t0
        log.info("torch-tensorrt program %s in %.1f s", "built" if self.built else "loaded",
                 self.engine_seconds)
        super().__init__(bundle, str(dev), precision, TorchPipeline(dev, bundle.resolution,
                                                                   bundle.score_range))

    @property
    def program(self):
        """The program of the reference shape (the bundle's input size)."""
        return next(iter(self._programs.values()), None)

    def _program_for(self, shape: tuple[int, ...]) -> bool:
        """Make the program of ``shape`` ready (cache or compile); True when compiled."""
        if shape in self._programs:
            return False
        tt, dev = self._tt, self._dev
        key = program_key(tt, self._precision, shape, self._weights_sha, dev)
        path = self._root / f"{key_digest(key)}.ep"
        meta = path.with_suffix(".json")
        t0 = time.perf_counter()
        with torch.cuda.device(dev):
            if (path.is_file() and meta.is_file()
                    and json.loads(meta.read_text()).get("key") == key):
                try:
                    self._programs[shape] = tt.load(str(path)).module()
                    log.info("torch-tensorrt program cache hit: %s", path)
                    return False
                except Exception as exc:  # a damaged file: compile again
                    log.warning("torch-tensorrt program %s did not load (%s): recompiling", path,
                                exc)
            model = build_torch_model(self._bundle_for_build).eval()
            half = self._dtype if self._precision != "fp32" else None
            if half is not None:
                model.backbone.to(half)
            graph = ScoreGraph(model, half=half).to(dev).eval()
            example = torch.rand(shape, device=dev)
            log.info("compiling with torch-tensorrt for %s (this takes a while)", key)
            program = compile_program(tt, graph, example, self._workspace)
            self._root.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.ep")
            tt.save(program, str(tmp), inputs=[example])
            os.replace(tmp, path)
            meta.write_text(json.dumps({"key": key, "seconds": time.perf_counter() - t0},
                                       indent=1))
            self._programs[shape] = program
        return True

    def describe(self) -> dict:
        d = super().describe()
        d.update(program=str(self.program_path), built=self.built,
                 engine_seconds=round(self.engine_seconds, 2),
                 shapes=[list(s) for s in self._programs])
        return d

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape)
        if shape not in self._programs:
            log.info("new input shape %s: preparing its torch-tensorrt program", shape)
            self._program_for(shape)
        with torch.inference_mode():
            return self._programs[shape](x.contiguous())[0].float()

    def _sync(self) -> None:
        torch.cuda.synchronize(self._dev)

    def _release(self) -> None:
        self._programs.clear()
        self._bundle_for_build = None
        torch.cuda.empty_cache()
