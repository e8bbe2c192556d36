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

from flowclas_ros.export.bundle import WEIGHTS_FILE, Bundle, build_torch_model

from .backend import TORCH_DTYPES, Backend, BackendUnavailable
from .onnx_backend import default_cache_dir
from .pipeline import TorchPipeline

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
    return hashlib.sha256(json.dumps(key, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def compile_program(tt, graph: torch.nn.Module, example: torch.Tensor, workspace_bytes: int):
    """torch_tensorrt.compile with explicit typing where this version has it (TensorRT 11
    has no weak typing), else with the graph's own precisions enabled."""
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
    name = "torch_tensorrt"

    def __init__(self, bundle: Bundle, device: str = "cuda", precision: str = "fp32", *,
                 cache_dir: str | Path | None = None, workspace_gb: float = 4.0):
        tt = import_torch_tensorrt()
        if not torch.cuda.is_available():
            raise BackendUnavailable("the torch_tensorrt backend needs a CUDA GPU visible to "
                                     "torch (torch.cuda.is_available() is False)")
        if not str(device).startswith("cuda"):
            raise BackendUnavailable(f"the torch_tensorrt backend runs on a GPU, not on {device}")
        if precision not in TORCH_DTYPES:
            raise BackendUnavailable(f"precision must be one of {list(TORCH_DTYPES)}")
        dev = torch.device(device)
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        h, w = bundle.input_size
        shape = (1, 3, h, w)
        key = program_key(tt, precision, shape, bundle.manifest["files"][WEIGHTS_FILE]["sha256"],
                          dev)
        root = Path(cache_dir or default_cache_dir("torch_tensorrt"))
        path, meta = root / f"{key_digest(key)}.ep", root / f"{key_digest(key)}.json"
        self.key, self.program_path = key, path
        t0 = time.perf_counter()
        with torch.cuda.device(dev):
            program = None
            if path.is_file() and meta.is_file() and json.loads(meta.read_text()).get("key") == key:
                try:
                    program = tt.load(str(path)).module()
                    self.built = False
                    log.info("torch-tensorrt program cache hit: %s", path)
                except Exception as exc:  # a damaged file: compile again
                    log.warning("torch-tensorrt program %s did not load (%s): recompiling", path,
                                exc)
            if program is None:
                from flowclas_ros.export.onnx_export import ScoreGraph

                model = build_torch_model(bundle).eval()
                if precision != "fp32":
                    model.backbone.to(TORCH_DTYPES[precision])
                graph = ScoreGraph(model, half=TORCH_DTYPES[precision]
                                   if precision != "fp32" else None).to(dev).eval()
                example = torch.rand(shape, device=dev)
                log.info("compiling with torch-tensorrt for %s (this takes a while)", key)
                program = compile_program(tt, graph, example, int(workspace_gb * (1 << 30)))
                root.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp.ep")
                tt.save(program, str(tmp), inputs=[example])
                os.replace(tmp, path)
                meta.write_text(json.dumps({"key": key, "seconds": time.perf_counter() - t0},
                                           indent=1))
                self.built = True
        self.engine_seconds = time.perf_counter() - t0
        log.info("torch-tensorrt program %s in %.1f s", "built" if self.built else "loaded",
                 self.engine_seconds)
        self.program = program
        self._dev = dev
        super().__init__(bundle, str(dev), precision, TorchPipeline(dev, bundle.input_size,
                                                                   bundle.score_range))

    def describe(self) -> dict:
        d = super().describe()
        d.update(program=str(self.program_path), built=self.built,
                 engine_seconds=round(self.engine_seconds, 2))
        return d

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.program(x.contiguous())[0].float()

    def _sync(self) -> None:
        torch.cuda.synchronize(self._dev)

    def _release(self) -> None:
        self.program = None
        torch.cuda.empty_cache()
