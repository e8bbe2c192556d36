"""The deployed graph: what a bundle's ``model.onnx`` computes, and its input and output names.

``image`` float32 (1, 3, H, W) RGB in [0, 1] -> ``score`` float32 (1, H, W), the raw anomaly score
per input pixel (higher = more anomalous). Normalisation and zero padding to the backbone's
multiple happen inside; the runtime only resizes the frame (:mod:`.preprocess`). The ONNX
export traces this module, torch-tensorrt compiles it, and the torch backend runs the same
arithmetic, so every backend computes one function.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from flowclas_ros.model.flowclas import FlowCLAS

INPUT_NAME, OUTPUT_NAME = "image", "score"


class ScoreGraph(nn.Module):
    """(1, 3, H, W) RGB [0, 1] float32 -> (1, H, W) float32.

    ``fp16`` (or ``half=torch.float16 / torch.bfloat16``): the backbone runs in that dtype (its
    weights must already be in it), the LayerNorm, flow and score in float32 (the flow's
    log-determinant sums are what suffers most from half precision, and the backbone is where
    the time goes).
    """

    def __init__(self, model: FlowCLAS, fp16: bool = False, half: torch.dtype | None = None):
        super().__init__()
        self.model = model
        self.half = torch.float16 if fp16 else half

    def forward(self, image: Tensor) -> Tensor:
        m = self.model
        x = m.normalize_and_pad(image)
        if self.half is not None:
            x = x.to(self.half)
        z, logdet = m.latent(m.backbone(x))  # latent() casts the features back to float32
        return m.upsample(m.score_map(z, logdet), image.shape[-2:]).float()


__all__ = ["INPUT_NAME", "OUTPUT_NAME", "ScoreGraph"]
