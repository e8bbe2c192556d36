"""Moved: see :mod:`.numpy_pipeline` and :mod:`.torch_pipeline`.

:mod:`.numpy_pipeline` (ONNX Runtime on the CPU, no torch), :mod:`.torch_pipeline` (torch on
the backend's device); the deployed resize is :mod:`flowclas_ros.bundle.preprocess`.
"""
import importlib
import warnings

_NEW = {"NumpyPipeline": ".numpy_pipeline", "FLOAT32_MAX": ".numpy_pipeline",
        "TorchPipeline": ".torch_pipeline",
        "check_image": "flowclas_ros.bundle.preprocess",
        "resize_bilinear_np": "flowclas_ros.bundle.preprocess",
        "resize_torch": "flowclas_ros.bundle.preprocess_torch"}


def __getattr__(name):
    if name not in _NEW:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(_NEW[name], __package__)
    warnings.warn(f"flowclas_ros.runtime.pipeline.{name} moved to {module.__name__}.{name}",
                  FutureWarning, stacklevel=2)
    return getattr(module, name)
