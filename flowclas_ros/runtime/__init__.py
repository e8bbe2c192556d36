"""Inference runtime: one Backend interface over torch, ONNX Runtime and TensorRT.

    from flowclas_ros.runtime import create_backend
    be = create_backend("models/my_bundle", backend="auto", device="auto", precision="fp32")
    be.warmup(480, 640)
    result = be.infer(rgb)          # FrameResult(heatmap, mask, overlay, inference_ms)
    be.close()

One module per concept: backend (the interface), registry (which backends exist, ``auto``),
torch_backend, onnx_backend, tensorrt_backend, torch_tensorrt_backend, cuda (the GPU checks),
numpy_pipeline / torch_pipeline (frame -> model input, score -> outputs, on the backend's
device), visualisation (mask, colour maps, overlay), bag_outputs (the outputs of a recording).
No ROS imports; importing this package imports no torch.
"""
from ..options import BACKENDS, COLORMAPS, PRECISIONS
from .backend import Backend, BackendUnavailable, FrameResult
from .registry import create_backend, resolve_device

__all__ = ["BACKENDS", "COLORMAPS", "PRECISIONS", "Backend", "BackendUnavailable", "FrameResult",
           "create_backend", "resolve_device"]
