"""Inference runtime: one Backend interface over torch, ONNX Runtime and TensorRT.

    from flowclas_ros.runtime import create_backend
    be = create_backend("models/my_bundle", backend="auto", device="auto", precision="fp32")
    be.warmup(480, 640)
    result = be.infer(rgb)          # FrameResult(heatmap, mask, overlay, inference_ms)
    be.close()

One module per concept: backend (the interface and ``auto``), torch_backend, onnx_backend,
tensorrt_backend, pipeline (frame -> model input, score -> outputs, on the backend's device),
visualisation (mask, colour maps, overlay). No ROS imports.
"""
from .backend import (BACKENDS, COLORMAPS, PRECISIONS, Backend, BackendUnavailable,
                      FrameResult, create_backend, resolve_device)

__all__ = ["BACKENDS", "COLORMAPS", "PRECISIONS", "Backend", "BackendUnavailable", "FrameResult",
           "create_backend", "resolve_device"]
