"""Inference runtime: one Backend interface over torch, ONNX Runtime and TensorRT.

    from flowclas_ros.runtime import create_backend
    be = create_backend("models/my_bundle", backend="auto", device="auto", precision="fp32")
    be.warmup(480, 640)
    result = be.infer(rgb)          # FrameResult(heatmap, mask, overlay, inference_ms)
    be.close()
"""
from .backend import (BACKENDS, PRECISIONS, Backend, BackendUnavailable, FrameResult,
                      create_backend, resolve_device)
from .preprocess import COLORMAPS

__all__ = ["BACKENDS", "COLORMAPS", "PRECISIONS", "Backend", "BackendUnavailable", "FrameResult",
           "create_backend", "resolve_device"]
