"""The GPU path on a machine without one.

Auto's fallback order, the device guard, strongly typed TensorRT builds (a stand-in TensorRT
module), the derived fp16 graph, cache keys, the torch-tensorrt and build_engine entry points,
and the GPU check's CPU side. The GPU itself is exercised by `make gpu-check` (README, "GPU").
"""
import contextlib
import json
import types

import numpy as np
import onnx
import pytest
import torch

from flowclas_ros.bundle.reader import load_bundle
from flowclas_ros.runtime import Backend, BackendUnavailable, create_backend
from flowclas_ros.runtime.numpy_pipeline import NumpyPipeline
from flowclas_ros.runtime.registry import backend_options
from flowclas_ros.runtime.tensorrt_backend import (
    build_engine,
    check_api,
    graph_for_precision,
    network_flags,
)

# --- auto ------------------------------------------------------------------------------------

def test_auto_falls_back_when_a_backend_fails_for_any_reason(tiny_bundle, monkeypatch, caplog):
    from flowclas_ros.runtime import onnx_backend

    def broken(self, *a, **k):
        raise RuntimeError("CUDA error: out of memory")  # not a BackendUnavailable

    monkeypatch.setattr(onnx_backend.OnnxRuntimeBackend, "__init__", broken)
    with caplog.at_level("INFO", logger="flowclas_ros.runtime"):
        be = create_backend(tiny_bundle, backend="auto", device="cpu")
    try:
        assert be.name == "torch"
        assert "onnxruntime on cpu failed (RuntimeError)" in be.selection_reason
    finally:
        be.close()


# --- the device guard ------------------------------------------------------------------------

class _FakeCudaBackend(Backend):
    """A backend that says it lives on cuda:1 and records where its work runs."""

    name = "fake"

    def __init__(self, bundle, log):
        super().__init__(bundle, "cuda:1", "fp32", NumpyPipeline(bundle.input_size, (0.0, 1.0)))
        self.log = log

    def _forward(self, x):
        self.log.append(("forward", list(self.log_guard)))
        return np.zeros(x.shape[2:], np.float32)


def test_every_call_runs_under_the_backends_cuda_device(tiny_bundle, monkeypatch):
    """Check that every call makes the backend's CUDA device current.

    The node's worker thread starts with device 0 current: infer must make its own device
    current around the pre-processing, the model and the post-processing.
    """
    entered: list[str] = []

    @contextlib.contextmanager
    def device(dev):
        entered.append(str(dev))
        try:
            yield
        finally:
            entered.remove(str(dev))

    monkeypatch.setattr(torch.cuda, "device", device)
    log: list = []
    be = _FakeCudaBackend(load_bundle(tiny_bundle), log)
    be.log_guard = entered
    be.infer(np.zeros((30, 40, 3), np.uint8))
    assert log == [("forward", ["cuda:1"])] and entered == []


# --- TensorRT ---------------------------------------------------------------------------------

def _fake_tensorrt(version="11.1.0", strongly_typed=True, explicit_batch=False):
    calls: dict = {"flags": None, "set_flag": [], "profile": None}

    class Flag:
        pass

    if strongly_typed:
        Flag.STRONGLY_TYPED = 3
    if explicit_batch:
        Flag.EXPLICIT_BATCH = 0

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class Config:
        def set_memory_pool_limit(self, pool, size):
            calls["workspace"] = size

        def set_flag(self, flag):  # the weakly-typed precision flags: must not be used
            calls["set_flag"].append(flag)

        def add_optimization_profile(self, profile):
            pass

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            calls["profile"] = (name, tuple(lo), tuple(opt), tuple(hi))

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            calls["flags"] = flags
            return object()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return b"engine-bytes"

    class Parser:
        num_errors = 0

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            calls["parsed"] = path
            return True

    class Context:
        def execute_async_v3(self, stream):
            return True

        def set_tensor_address(self, name, ptr):
            pass

        def set_input_shape(self, name, shape):
            pass

    trt = types.SimpleNamespace(
        __version__=version, Logger=Logger, Builder=Builder, OnnxParser=Parser, Runtime=object,
        MemoryPoolType=types.SimpleNamespace(WORKSPACE=0), NetworkDefinitionCreationFlag=Flag,
        IExecutionContext=Context, BuilderFlag=types.SimpleNamespace())
    return trt, calls


@pytest.mark.parametrize("version,explicit", [("10.13.0", True), ("11.1.0", False)])
def test_tensorrt_builds_strongly_typed_networks(version, explicit, tmp_path):
    trt, calls = _fake_tensorrt(version, explicit_batch=explicit)
    data = build_engine(trt, tmp_path / "m.onnx", (1, 3, 48, 64), "image")
    assert data == b"engine-bytes"
    assert calls["flags"] & (1 << 3)  # STRONGLY_TYPED: precision from the graph's own types
    assert calls["set_flag"] == []  # no BuilderFlag.FP16 / BF16 (removed in TensorRT 11)
    assert calls["profile"] == ("image", (1, 3, 48, 64), (1, 3, 48, 64), (1, 3, 48, 64))
    assert network_flags(trt) == calls["flags"]
    build_engine(trt, tmp_path / "m.onnx", (1, 3, 48, 64), "image", max_batch=4)
    assert calls["profile"] == ("image", (1, 3, 48, 64), (4, 3, 48, 64), (4, 3, 48, 64))


def test_old_tensorrt_is_unavailable_with_what_it_lacks():
    trt, _ = _fake_tensorrt("8.6.1", strongly_typed=False)
    with pytest.raises(BackendUnavailable, match="8.6.1 lacks NetworkDefinitionCreationFlag"
                                                 ".STRONGLY_TYPED.*TensorRT 10 or 11"):
        check_api(trt)


def test_fp16_graph_derived_from_an_fp32_bundle(tiny_bundle, tmp_path):
    """Check precision fp16 on an fp32 bundle: a derived graph, built once and reused.

    The graph has a float16 backbone and a float32 flow, input and output (what export --fp16
    writes).
    """
    bundle = load_bundle(tiny_bundle)
    path, sha, prec = graph_for_precision(bundle, "fp16", tmp_path)
    assert prec == "fp16" and path.parent == tmp_path and sha != bundle.onnx_sha256
    proto = onnx.load(str(path))
    types_ = {i.data_type for i in proto.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in types_ and onnx.TensorProto.FLOAT in types_
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    mtime = path.stat().st_mtime_ns
    assert graph_for_precision(bundle, "fp16", tmp_path)[0].stat().st_mtime_ns == mtime
    assert graph_for_precision(bundle, "fp32", tmp_path)[:2] == (bundle.onnx_path,
                                                                 bundle.onnx_sha256)
    with pytest.raises(BackendUnavailable, match="bf16"):
        graph_for_precision(bundle, "bf16", tmp_path)


# --- torch-tensorrt and build_engine -------------------------------------------------------------

def test_torch_tensorrt_key_and_unavailable_message(tiny_bundle, monkeypatch):
    import importlib.util

    from flowclas_ros.runtime import torch_tensorrt_backend as ttb

    props = types.SimpleNamespace(name="NVIDIA H200", major=9, minor=0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda dev: props)
    tt = types.SimpleNamespace(__version__="2.14.0")
    key = ttb.program_key(tt, "fp16", (1, 3, 48, 64), "abc", "cuda:0")
    assert key["gpu_name"] == "NVIDIA H200" and key["compute_capability"] == "9.0"
    digests = {ttb.key_digest(key)}
    for field, value in (("precision", "fp32"), ("input_shape", [1, 3, 96, 128]),
                         ("weights_sha256", "def"), ("torch_tensorrt", "2.13.0")):
        digests.add(ttb.key_digest({**key, field: value}))
    assert len(digests) == 5  # every input changes the key
    if importlib.util.find_spec("torch_tensorrt") is None:
        with pytest.raises(BackendUnavailable, match="torch-tensorrt"):
            create_backend(tiny_bundle, backend="torch_tensorrt", device="cuda")


def test_torch_tensorrt_compiles_with_explicit_typing():
    from flowclas_ros.runtime.torch_tensorrt_backend import compile_program

    seen = {}

    def fake_compile(module, **kwargs):  # the torch_tensorrt.compile of 2.14 takes **kwargs
        seen.update(kwargs)
        return module

    tt = types.SimpleNamespace(compile=fake_compile, Input=lambda shape, dtype: (shape, dtype))
    graph = torch.nn.Conv2d(3, 3, 1)
    compile_program(tt, graph, torch.zeros(1, 3, 8, 8), 1 << 20)
    assert seen["ir"] == "dynamo" and seen["use_explicit_typing"] is True
    assert "enabled_precisions" not in seen and seen["inputs"] == [((1, 3, 8, 8), torch.float32)]


def test_build_engine_cli_says_why_it_cannot_build(tiny_bundle, capsys):
    from flowclas_ros.tools.build_engine import main

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the CLI would build")
    assert main(["--bundle", str(tiny_bundle), "--backend", "tensorrt"]) == 2
    err = capsys.readouterr().err
    assert "build_engine: error:" in err and ("tensorrt" in err.lower())


def test_backend_options_map_the_node_settings():
    opts = backend_options
    assert opts("torch", cpu_threads=2, torch_compile=True, cuda_graphs=True) == {
        "num_threads": 2, "compile": True, "cuda_graphs": True}
    assert opts("onnxruntime", cpu_threads=1, cpu_spinning=False, torch_compile=True) == {
        "intra_op_num_threads": 1, "allow_spinning": False}
    assert opts("tensorrt", cpu_threads=4, torch_compile=True) == {}


# --- the GPU check, CPU side -------------------------------------------------------------------

@pytest.mark.slow
def test_gpu_check_runs_its_cpu_side(tmp_path):
    from model_fixtures import demo_model, demo_score_range

    from flowclas_ros.export.bundle import write_bundle
    from flowclas_ros.tools.gpu_check import main

    model = demo_model("tiny")  # initialised and perturbed: scores that vary across the frame
    lo, hi = demo_score_range(model, (48, 64))
    bundle = write_bundle(model, tmp_path / "b", input_size=(48, 64), threshold=(lo + hi) / 2,
                          score_range=(lo, hi), verify=False)
    out = tmp_path / "gpu_check.json"
    assert main(["--bundle", str(bundle.path), "--allow-cpu", "--iters", "3", "--skip", "node",
                 "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    labels = {r["variant"] for r in report["bundle_checks"]}
    if not report["cuda"]:
        assert labels == {"torch/fp32", "onnxruntime/cpu/fp32"}
        assert "vit" in report["unavailable"]
    for row in report["bundle_checks"]:
        for size in ("640x480", "1920x1080"):
            r = row["sizes"][size]
            assert r["parity"]["relative_to_score_range"] < 1e-3
            assert r["parity"]["mask_agreement"] > 0.99
            assert r["latency"]["p50_ms"] > 0
