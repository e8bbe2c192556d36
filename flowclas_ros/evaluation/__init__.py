"""Benchmark evaluation: pixel metrics, SMIYC component metrics, score sources, the protocol.

metrics, streaming_metrics and components need only numpy/scipy; scoring, evaluate and protocol
(torch models, the runtime, the data readers) are imported on first use of their names. The
``evaluate`` command is :mod:`flowclas_ros.tools.evaluate`.
"""
from .components import TRACKS, ComponentConfig, ComponentMetrics, frame_components
from .metrics import ExactPixelMetrics, PixelResult, pixel_metrics, threshold_at_fpr
from .streaming_metrics import StreamingPixelMetrics

_LAZY = {"evaluate_scores": "evaluate", "evaluate_model": "evaluate",
         "run_evaluation": "evaluate", "EvaluationError": "evaluate",
         "evaluate_protocol": "protocol", "evaluate_model_on_protocol": "protocol",
         "selection_score": "protocol", "SELECTION_PARTS": "protocol",
         "CALIBRATION_PART": "protocol", "SCORE_PARTS": "protocol",
         "OBSTACLE_SELECTION_PARTS": "protocol", "combined_score": "protocol"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["TRACKS", "ComponentConfig", "ComponentMetrics", "frame_components",
           "ExactPixelMetrics", "PixelResult", "StreamingPixelMetrics", "pixel_metrics",
           "threshold_at_fpr", *_LAZY]
