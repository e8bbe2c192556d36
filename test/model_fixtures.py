"""Models for the tests: small FlowCLAS models that behave like trained ones.

A freshly built flow is the identity (its couplings end in zero-initialised convolutions), so
its scores hardly vary. :func:`demo_model` initialises the ActNorms on two real photographs and
perturbs the flow (:func:`perturb_flow`), which gives scores that vary across a frame: what the
backend, export and bundle tests compare. The benchmarks build their own models
(``flowclas_ros/tools/bench/backends.py``); these are the tests' and may differ.
"""
from __future__ import annotations

import torch

from flowclas_ros.model import BackboneConfig, FlowCLAS, FlowConfig, ModelConfig

CONFIGS = {
    "tiny": lambda: ModelConfig(backbone=BackboneConfig(name="tiny"), flow=FlowConfig(steps=2)),
    # EfficientNet-Lite0 (packaged ImageNet weights), its stride-16 stage, 8 flow steps
    "lite0": lambda: ModelConfig(backbone=BackboneConfig(name="efficientnet_lite0", stages=[3]),
                                 flow=FlowConfig(steps=8)),
}


def perturb_flow(model: FlowCLAS, scale: float = 0.05, seed: int = 0) -> None:
    """Give the zero-initialised coupling outputs, mu and log sigma small random values.

    Then the flow is not the identity (a stand-in for training).
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for step in model.flow.steps:
            for p in step.coupling.subnet.out.parameters():  # the zero-initialised last conv
                fan_in = p[0].numel() if p.dim() > 1 else 1
                p.copy_(torch.randn(p.shape, generator=g) * scale / fan_in ** 0.5)
        model.mu.copy_(torch.randn(model.mu.shape, generator=g) * 0.1)
        model.log_sigma.copy_(torch.randn(model.log_sigma.shape, generator=g) * 0.1)


def demo_model(config: str, seed: int = 0, init_size: tuple[int, int] = (128, 160),
               perturb: float = 0.05) -> FlowCLAS:
    """Build a FlowCLAS model (``config``: a name of :data:`CONFIGS`).

    Its ActNorms are initialised on two real photographs and its flow is perturbed.
    """
    from flowclas_ros.bundle.onnx_export import image_to_input, sample_images

    torch.manual_seed(seed)
    model = FlowCLAS(CONFIGS[config]()).eval()
    x = torch.cat([image_to_input(img, init_size) for _, img in sample_images()])
    with torch.no_grad():
        model.initialize(model.features(x))
    perturb_flow(model, perturb, seed)
    return model


def demo_score_range(model: FlowCLAS, input_size: tuple[int, int]) -> tuple[float, float]:
    """Return the display range export gives ``model`` at ``input_size`` (no calibration data)."""
    from flowclas_ros.export.calibration import photo_statistics

    return photo_statistics(model, input_size)["score_range"]
