"""Training's arithmetic: fp32, or bf16 autocast around the backbone and the flow.

Not the runtime's precisions (:data:`flowclas_ros.options.PRECISIONS`, what an exported backend
runs in): training either autocasts to bf16 or does not, and ``auto`` decides by the device.
"""
from __future__ import annotations

# auto: bf16 autocast on CUDA (fast and stable there), fp32 on CPU (bf16 is slow on most CPUs)
TRAINING_PRECISIONS = ("auto", "fp32", "bf16")


def uses_autocast(precision: str, device_type: str) -> bool:
    """Return whether a run on ``device_type`` autocasts to bf16.

    ``precision`` is the run's ``train.precision``.
    """
    if precision not in TRAINING_PRECISIONS:
        raise ValueError(f"training precision must be one of {TRAINING_PRECISIONS}, "
                         f"got {precision!r}")
    return precision == "bf16" or (precision == "auto" and device_type == "cuda")


def precision_name(autocast: bool) -> str:
    """Name what a run computed in, as the cache key and the summary say it."""
    return "bf16" if autocast else "fp32"


__all__ = ["TRAINING_PRECISIONS", "precision_name", "uses_autocast"]
