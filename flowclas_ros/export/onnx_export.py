"""Moved: see :mod:`flowclas_ros.bundle.onnx_export`.

The ONNX serialisation of the score graph is :mod:`flowclas_ros.bundle.onnx_export` (the
runtime derives fp16 graphs with it, and the runtime sits below export).
"""
import importlib
import warnings

_NEW = {"ScoreGraph": "flowclas_ros.bundle.graph", "INPUT_NAME": "flowclas_ros.bundle.graph",
        "OUTPUT_NAME": "flowclas_ros.bundle.graph"}


def __getattr__(name):
    module = _NEW.get(name, "flowclas_ros.bundle.onnx_export")
    value = getattr(importlib.import_module(module), name)  # AttributeError for unknown names
    warnings.warn(f"flowclas_ros.export.onnx_export.{name} moved to {module}.{name}",
                  FutureWarning, stacklevel=2)
    return value
