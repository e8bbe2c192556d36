"""Parameter counts and CPU/GPU forward time of model configurations (torch eager, fp32).

    python -m flowclas_ros.tools.bench.model [--configs dinov2_vitl14 lite0] [--iters 3]

Prints one JSON object per configuration: parameters (backbone / trainable), input size and
forward latency (warm-up excluded). DINOv2 is randomly initialised: timing does not depend on
the weights.
"""
from __future__ import annotations

import argparse
import json
from functools import partial

import torch

from flowclas_ros.model import BackboneConfig, FlowCLAS, FlowConfig, ModelConfig

from .common import cpu_arch, time_ms

CONFIGS = {
    # the authors' model: DINOv2 ViT-L/14 + 16-step flow, evaluated at 518 x 1036
    "dinov2_vitl14": (ModelConfig(backbone=BackboneConfig(name="dinov2_vitl14"),
                                  flow=FlowConfig(steps=16)), (518, 1036)),
    # the CPU demo model: EfficientNet-Lite0 stride-16 stage + 8-step flow at 640 x 480
    "lite0": (ModelConfig(backbone=BackboneConfig(name="efficientnet_lite0", stages=[3]),
                          flow=FlowConfig(steps=8)), (480, 640)),
    "tiny": (ModelConfig(backbone=BackboneConfig(name="tiny"), flow=FlowConfig(steps=2)),
             (480, 640)),
}


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def bench(name: str, iters: int, device: str) -> dict:
    cfg, (h, w) = CONFIGS[name]
    model = FlowCLAS(cfg).eval().to(device)
    x = torch.rand(1, 3, h, w, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else None
    with torch.inference_mode():
        times = sorted(time_ms(partial(model, x), iters, warmup=1, sync=sync))
    return {
        "config": name,
        "input_hw": [h, w],
        "params_backbone": count(model.backbone),
        "params_flow": count(model.flow),
        "params_trainable_total": count(model) - count(model.backbone),
        "forward_ms_median": round(times[len(times) // 2], 1),
        "forward_ms_min": round(times[0], 1),
        "iters": iters,
        "device": device,
        "threads": torch.get_num_threads(),
        "cpu": cpu_arch(),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=["dinov2_vitl14", "lite0"], choices=CONFIGS)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    for name in args.configs:
        print(json.dumps(bench(name, args.iters, args.device)), flush=True)


if __name__ == "__main__":
    main()
