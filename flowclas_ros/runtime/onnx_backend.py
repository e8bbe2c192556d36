"""The ONNX Runtime backend: the bundle's model.onnx on the CPU, CUDA or TensorRT provider.

* CPU (``CPUExecutionProvider``): numpy pre/post-processing; ``intra_op_num_threads`` (0 = ORT's
  default, one per physical core), ``graph_optimization_level`` (all | extended | basic |
  disable), ``allow_spinning`` (False: idle pool threads sleep instead of busy-waiting, which
  costs a little latency but leaves the cores to other processes, e.g. the rest of a robot).
* CUDA (``CUDAExecutionProvider``) and TensorRT (``TensorrtExecutionProvider``, ORT's own
  TensorRT integration with its engine cache: ``trt_engine_cache_enable``,
  ``trt_engine_cache_path``): when torch sees the GPU, pre/post-processing runs in torch on it
  and the graph reads and writes torch-owned device memory through I/O binding, so no frame or
  score crosses to the host unless it is published. ORT is given torch's current stream as its
  compute stream when the session is created (``user_compute_stream``), and the binding
  synchronises inputs and outputs around each run.

Batches (:meth:`Backend.infer_batch`): on a GPU provider, one run of (n, 3, h, w) where the
graph's batch dimension is symbolic (bundles exported since batching); a graph with a fixed
batch of 1 runs its frames one at a time. On the CPU provider frames always run one at a time:
a batch costs what its frames cost one by one there (4 frames of the demo bundle at 640x480:
103 ms against 4 x 26 ms), and one at a time each camera's result is out after its own run.

Precision is the graph's: fp32, or a float16 backbone for bundles exported with ``--fp16``.
fp16 on an fp32 graph is only possible with the TensorRT provider (``trt_fp16_enable``).
ORT silently falls back to the CPU when a GPU provider fails to load; that is detected and
raised as :class:`BackendUnavailable`.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from flowclas_ros.bundle.reader import Bundle

from .. import paths
from .backend import Backend, BackendUnavailable
from .cuda import cuda_available
from .numpy_pipeline import NumpyPipeline

log = logging.getLogger("flowclas_ros.runtime")

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
             "tensorrt": "TensorrtExecutionProvider"}


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, bundle: Bundle, device: str = "cpu", precision: str = "fp32", *,
                 provider: str = "auto", intra_op_num_threads: int = 0,
                 inter_op_num_threads: int = 0, graph_optimization_level: str = "all",
                 allow_spinning: bool = True,
                 trt_engine_cache_enable: bool = True, trt_engine_cache_path: str | None = None):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailable(f"onnxruntime is not installed ({exc})") from exc
        on_cpu = str(device) == "cpu"
        if provider == "auto":
            provider = "cpu" if on_cpu else "cuda"
        if provider not in PROVIDERS:
            raise BackendUnavailable(f"provider must be auto, cpu, cuda or tensorrt, "
                                     f"got {provider!r}")
        if (provider == "cpu") != on_cpu:
            raise BackendUnavailable(f"provider {provider} does not run on device {device}")
        ep = PROVIDERS[provider]
        available = ort.get_available_providers()
        if ep not in available:
            hint = " (install onnxruntime-gpu)" if provider != "cpu" else ""
            raise BackendUnavailable(f"ONNX Runtime {ort.__version__} has no {ep}{hint}; "
                                     f"available: {available}")
        graph_precision = "fp16" if bundle.fp16 else "fp32"
        trt_fp16 = False
        if precision != graph_precision:
            if provider == "tensorrt" and precision == "fp16":
                trt_fp16 = True
            elif precision == "fp32" and bundle.fp16:
                log.warning("this bundle's graph has a float16 backbone; running it as exported")
                precision = "fp16"
            else:
                raise BackendUnavailable(
                    f"ONNX Runtime runs the graph's precision ({graph_precision}); for "
                    f"{precision} export the bundle with --fp16, or use provider tensorrt (fp16) "
                    f"or the torch backend")
        device_id = int(str(device).partition(":")[2] or 0)
        providers: list = []
        if provider == "tensorrt":
            cache = Path(trt_engine_cache_path or paths.cache_dir("ort_tensorrt"))
            cache.mkdir(parents=True, exist_ok=True)
            providers.append((ep, {"device_id": device_id,
                                   "trt_engine_cache_enable": bool(trt_engine_cache_enable),
                                   "trt_engine_cache_path": str(cache),
                                   "trt_timing_cache_enable": True,
                                   "trt_timing_cache_path": str(cache),
                                   "trt_fp16_enable": trt_fp16}))
        # a GPU provider reads and writes torch's device memory when torch sees the GPU (CPU
        # ONNX Runtime never imports torch)
        self._torch_io = provider != "cpu" and cuda_available()
        if self._torch_io:
            import torch

            dev = torch.device(device)
        if provider in ("cuda", "tensorrt"):
            cuda_opts: dict = {"device_id": device_id}
            if self._torch_io:  # run on torch's stream: ordering with the pre/post-processing
                cuda_opts["user_compute_stream"] = str(torch.cuda.current_stream(dev).cuda_stream)
            providers.append(("CUDAExecutionProvider", cuda_opts))
            if provider == "tensorrt" and self._torch_io:
                providers[0][1]["user_compute_stream"] = cuda_opts["user_compute_stream"]
        providers.append("CPUExecutionProvider")

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                  "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}
        if graph_optimization_level not in levels:
            raise BackendUnavailable(f"graph_optimization_level must be one of {list(levels)}")
        opts.graph_optimization_level = levels[graph_optimization_level]
        opts.intra_op_num_threads = int(intra_op_num_threads)
        opts.inter_op_num_threads = int(inter_op_num_threads)
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if not allow_spinning:  # idle pool threads sleep instead of spinning: kinder to neighbours
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(bundle.onnx_path), opts, providers=providers)
        except Exception as exc:  # provider libraries missing, graph the provider cannot take
            raise BackendUnavailable(f"ONNX Runtime could not start {ep}: {exc}") from exc
        active = self.session.get_providers()
        if active[0] != ep:
            raise BackendUnavailable(f"ONNX Runtime fell back from {ep} to {active[0]} (its CUDA/"
                                     f"TensorRT libraries did not load); active: {active}")
        self.provider = ep
        self._in = bundle.manifest["onnx"]["input_name"]
        self._out = bundle.manifest["onnx"]["output_name"]
        self._device_id = device_id
        batch = self.session.get_inputs()[0].shape[0]
        self._dynamic_batch = not isinstance(batch, int)  # "batch" (symbolic) or None
        if self._torch_io:
            from .torch_pipeline import TorchPipeline

            pipeline = TorchPipeline(dev, bundle.resolution, bundle.score_range)
            dev_str = str(dev)
        else:
            pipeline = NumpyPipeline(bundle.resolution, bundle.score_range)
            dev_str = "cpu" if provider == "cpu" else str(device)
        super().__init__(bundle, dev_str, precision, pipeline)
        self._out_buf = None  # a torch tensor on the GPU, with I/O binding

    def describe(self) -> dict:
        d = super().describe()
        d.update(provider=self.provider, providers=self.session.get_providers())
        return d

    def _batches(self, shape: tuple[int, ...]) -> bool:
        return self._dynamic_batch and self.provider != PROVIDERS["cpu"]

    def _forward(self, x):
        return self._forward_batch(x)[0]

    def _forward_batch(self, x):
        if not self._torch_io:
            return self.session.run([self._out], {self._in: x})[0]
        # I/O binding on device memory owned by torch
        import torch

        x = x.contiguous()
        shape = (x.shape[0], x.shape[2], x.shape[3])
        if self._out_buf is None or tuple(self._out_buf.shape) != shape:
            self._out_buf = torch.empty(shape, dtype=torch.float32, device=x.device)
        binding = self.session.io_binding()
        binding.bind_input(self._in, "cuda", self._device_id, np.float32, tuple(x.shape),
                           x.data_ptr())
        binding.bind_output(self._out, "cuda", self._device_id, np.float32, shape,
                            self._out_buf.data_ptr())
        binding.synchronize_inputs()
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return self._out_buf

    def _sync(self) -> None:
        if self._torch_io:
            import torch

            torch.cuda.synchronize(self.pipeline.device)

    def _release(self) -> None:
        if hasattr(self.pipeline, "close"):
            self.pipeline.close()
        self.session = None
        self._out_buf = None
