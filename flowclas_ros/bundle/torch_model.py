"""A bundle's FlowCLAS model in torch, rebuilt entirely from its ``weights.safetensors``.

For the backends that run torch (torch, torch-tensorrt) and for tools; the reader itself needs
no torch.
"""
from __future__ import annotations

from pathlib import Path

from flowclas_ros.model.flowclas import FlowCLAS
from flowclas_ros.model.upgrade import upgrade_state_dict

from .reader import Bundle, bundle_error, load_bundle


def build_torch_model(bundle: Bundle | str | Path) -> FlowCLAS:
    """Build the FlowCLAS model of a bundle (eval mode, CPU), entirely from its weights file.

    The backbone is built without its pretrained source (no network, no weights package): every
    tensor comes from ``weights.safetensors``.
    """
    from safetensors.torch import load_file

    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    cfg = bundle.model_config
    cfg.backbone.weights = None
    cfg.backbone.pretrained = False
    model = FlowCLAS(cfg)
    sd = upgrade_state_dict(load_file(str(bundle.weights_path)), bundle.weights_layout)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    wrong = [f"{k} {tuple(sd[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
             if k in sd and sd[k].shape != v.shape]
    if missing or unexpected or wrong:
        raise bundle_error(bundle.path, f"{bundle.weights_path.name} does not fit the manifest's "
                                        f"model: missing {missing[:5]}, unexpected "
                                        f"{unexpected[:5]}, shape mismatches {wrong[:5]}")
    model.load_state_dict(sd, strict=True)
    return model.eval()


__all__ = ["build_torch_model"]
