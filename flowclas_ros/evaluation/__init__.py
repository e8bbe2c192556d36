"""Benchmark evaluation: pixel metrics, SMIYC component metrics, plots, the `evaluate` CLI.

metrics and components need only numpy/scipy; evaluate (torch, the data readers) is imported on
first use of its names.
"""
from .components import TRACKS, ComponentConfig, ComponentMetrics, frame_components
from .metrics import (ExactPixelMetrics, PixelResult, StreamingPixelMetrics, pixel_metrics,
                      threshold_at_fpr)

_LAZY = {"evaluate_scores": "evaluate", "evaluate_model": "evaluate",
         "run_evaluation": "evaluate", "EvaluationError": "evaluate",
         "evaluate_protocol": "protocol", "evaluate_model_on_protocol": "protocol",
         "selection_score": "protocol", "SELECTION_PARTS": "protocol",
         "CALIBRATION_PART": "protocol"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["TRACKS", "ComponentConfig", "ComponentMetrics", "frame_components",
           "ExactPixelMetrics", "PixelResult", "StreamingPixelMetrics", "pixel_metrics",
           "threshold_at_fpr", *_LAZY]
