"""The torch backend: the bundle's weights in eager PyTorch, on the CPU or a CUDA GPU.

Precision: fp32, or fp16/bf16 via autocast with the frozen backbone's weights stored in that
dtype; the flow's main path and the score stay float32 (the coupling subnets run in half, the
log-determinant sums in float32), so half precision costs little accuracy.

Options: ``compile`` (torch.compile; a compile failure at the first frame falls back to eager
with a warning), ``cuda_graphs`` (capture the model at the bundle's fixed input size and replay
it: no per-kernel launch cost, one graph per input shape, a batch size included; with
``compile`` this is inductor's "reduce-overhead" mode),
``num_threads`` (torch.set_num_threads: process-wide), ``model`` (a FlowCLAS instance to use
instead of building one from the bundle's weights, e.g. for benchmarks). A batch of frames
(:meth:`Backend.infer_batch`) runs as one (n, 3, h, w) forward.
"""
from __future__ import annotations

import logging

import torch
from torch import Tensor

from flowclas_ros.bundle.reader import Bundle
from flowclas_ros.bundle.torch_model import build_torch_model
from flowclas_ros.model.flowclas import FlowCLAS

from .backend import Backend, BackendUnavailable
from .cuda import require_cuda, torch_dtype
from .torch_pipeline import TorchPipeline

log = logging.getLogger("flowclas_ros.runtime")


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, bundle: Bundle, device: str = "cpu", precision: str = "fp32", *,
                 compile: bool = False,  # noqa: A002 - public kwarg (torch.compile on/off)
                 cuda_graphs: bool = False, compile_mode: str | None = None,
                 num_threads: int | None = None, model: FlowCLAS | None = None):
        if str(device) == "cpu":
            dev = torch.device("cpu")
        elif str(device).startswith("cuda"):
            dev = torch.device(device)  # as given: "cuda" stays the current device at each call
            require_cuda(device, "torch")
        else:
            raise BackendUnavailable(f"the torch backend runs on cpu or cuda, not {device}")
        self.dtype = torch_dtype(precision)
        if precision == "bf16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise BackendUnavailable(f"{torch.cuda.get_device_name(dev)} has no bf16 support")
        if cuda_graphs and dev.type != "cuda":
            raise BackendUnavailable("cuda_graphs needs a CUDA device")
        if precision != "fp32" and dev.type == "cpu":
            log.warning("torch %s on the CPU is emulated and usually slower than fp32", precision)
        if num_threads:
            torch.set_num_threads(int(num_threads))
        model = (model if model is not None else build_torch_model(bundle)).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        if self.dtype != torch.float32:
            model.backbone.to(self.dtype)
        self.model = model.to(dev)
        super().__init__(bundle, str(dev), precision,
                         TorchPipeline(dev, bundle.resolution, bundle.score_range))
        self._dev = dev
        self.cuda_graphs = cuda_graphs
        self.compiled = False
        self._fn = self._eager
        if compile:
            if compile_mode is None:
                compile_mode = "reduce-overhead" if cuda_graphs else "default"
            try:
                self._fn = torch.compile(self._eager, mode=compile_mode, dynamic=False)
                self.compiled = True
                self._compile_mode = compile_mode
            except Exception as exc:  # no compiler toolchain, unsupported platform
                log.warning("torch.compile unavailable (%s): running eager", exc)
        self._first_call = True
        self._graphs: dict[tuple, tuple] = {}  # input shape -> (graph, static in, static out)

    def describe(self) -> dict:
        d = super().describe()
        d.update(compiled=self.compiled, cuda_graphs=self.cuda_graphs,
                 threads=torch.get_num_threads())
        if self._dev.type == "cuda":
            d["gpu"] = torch.cuda.get_device_name(self._dev)
        return d

    def _eager(self, x: Tensor) -> Tensor:
        with torch.autocast(self._dev.type, dtype=self.dtype,
                            enabled=self.dtype != torch.float32):
            return self.model(x).float()

    def _run(self, x: Tensor) -> Tensor:
        if not self._first_call:
            return self._fn(x)
        try:
            out = self._fn(x)
        except Exception as exc:
            if not self.compiled:
                raise
            log.warning("torch.compile failed at the first frame (%s: %s): running eager",
                        type(exc).__name__, str(exc).splitlines()[0][:300])
            self._fn, self.compiled = self._eager, False
            out = self._fn(x)
        self._first_call = False
        return out

    def _capture(self, x: Tensor) -> tuple:
        """Record one forward at this input shape into a CUDA graph (warm-up on a side stream)."""
        static_in = x.clone()
        side = torch.cuda.Stream(self._dev)
        side.wait_stream(torch.cuda.current_stream(self._dev))
        with torch.cuda.stream(side):
            for _ in range(3):
                self._run(static_in)
        torch.cuda.current_stream(self._dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self._fn(static_in)
        log.info("captured a CUDA graph at input %s", tuple(x.shape))
        return graph, static_in, static_out

    def _batches(self, shape: tuple[int, ...]) -> bool:
        return True

    def _forward(self, x: Tensor) -> Tensor:
        return self._forward_batch(x)[0]

    def _forward_batch(self, x: Tensor) -> Tensor:
        with torch.inference_mode():
            # compile + cuda_graphs = inductor's own CUDA graphs ("reduce-overhead")
            if self.cuda_graphs and not self.compiled:
                shape = tuple(x.shape)
                if shape not in self._graphs:
                    self._graphs[shape] = self._capture(x)
                graph, static_in, static_out = self._graphs[shape]
                static_in.copy_(x)
                graph.replay()
                return static_out
            return self._run(x)

    def _sync(self) -> None:
        if self._dev.type == "cuda":
            torch.cuda.synchronize(self._dev)

    def _release(self) -> None:
        self._graphs.clear()
        self._fn = None
        self.model = None
        if self._dev.type == "cuda":
            torch.cuda.empty_cache()
