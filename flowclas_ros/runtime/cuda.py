"""CUDA checks shared by the GPU backends, and torch's dtypes for the precisions.

torch is imported inside the functions: the registry asks :func:`cuda_available` before it
knows whether any backend will need torch, and a CPU robot without an NVIDIA driver never
loads torch to learn that it has no GPU.
"""
from __future__ import annotations

import os

from .backend import BackendUnavailable

_NVIDIA_DRIVER = "/proc/driver/nvidia/version"


def cuda_available() -> bool:
    """Return True when torch sees a CUDA GPU.

    Without an NVIDIA driver the answer is False without importing torch (about 900 MiB of a
    small robot's memory).
    """
    if not os.path.exists(_NVIDIA_DRIVER) and not os.path.exists("/dev/nvidia0"):
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def require_cuda(device: str, backend: str):
    """Return the ``torch.device`` of ``device`` for ``backend``.

    ``device`` is ``cuda`` or ``cuda:N`` (``cuda`` = the current GPU); raises
    :class:`BackendUnavailable` saying why when it cannot run there.
    """
    import torch

    if not str(device).startswith("cuda"):
        raise BackendUnavailable(f"the {backend} backend runs on a GPU, not on {device}")
    if not torch.cuda.is_available():
        raise BackendUnavailable(
            f"the {backend} backend needs a CUDA GPU visible to torch (torch.cuda.is_available() "
            f"is False; torch {torch.__version__}, built for CUDA {torch.version.cuda})")
    dev = torch.device(device)
    if dev.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    if dev.index >= torch.cuda.device_count():
        raise BackendUnavailable(f"{device}: only {torch.cuda.device_count()} GPU(s)")
    return dev


def torch_dtype(precision: str):
    """fp32 | fp16 | bf16 -> the torch dtype; :class:`BackendUnavailable` for anything else."""
    import torch

    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if precision not in dtypes:
        raise BackendUnavailable(f"precision must be one of {list(dtypes)}, got {precision!r}")
    return dtypes[precision]


__all__ = ["cuda_available", "require_cuda", "torch_dtype"]
