"""The FlowCLAS model core: configs, backbones, flow, model, losses, checkpoints. No ROS imports.

``flowclas_ros.model.config`` holds the configuration dataclasses without torch; the modules
that build and run the model import torch, so the names below are imported on first use (a
node on ONNX Runtime reads a bundle's model config without loading torch).
"""
from .config import BackboneConfig, FlowConfig, ModelConfig

_LAZY = {"Backbone": "backbones", "build_backbone": "backbones", "Flow": "flow",
         "FlowCLAS": "flowclas"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Backbone", "BackboneConfig", "build_backbone", "Flow", "FlowConfig", "FlowCLAS",
           "ModelConfig"]
