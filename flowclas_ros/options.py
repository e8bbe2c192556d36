"""The choices a user can spell, in one torch-free place.

The node validates its parameters against these without importing the runtime, and the runtime,
export and CLIs use the same tuples, so a new backend or colour map is added here once.
"""
import re

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt", "torch_tensorrt")
PRECISIONS = ("fp32", "fp16", "bf16")
COLORMAPS = ("turbo", "jet", "inferno", "viridis", "gray")
IMAGE_QOS = ("auto", "sensor_data", "reliable")
IMAGE_TRANSPORTS = ("raw", "compressed")  # image_transport's names
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


def check_device(device: str) -> str:
    """``device`` lower-cased and stripped ("" means auto); ValueError unless auto/cpu/cuda[:N]."""
    device = (device or "auto").strip().lower()
    if not DEVICE_PATTERN.match(device):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    return device


__all__ = ["BACKENDS", "PRECISIONS", "COLORMAPS", "IMAGE_QOS", "IMAGE_TRANSPORTS",
           "DEVICE_PATTERN", "check_device"]
