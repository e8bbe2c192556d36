"""Build the frames of the validation protocol from the shared data.

    python -m flowclas_ros.tools.build_protocol --data ../shared/data --out runs/protocol_v2

builds every part (:data:`flowclas_ros.data.protocol_sets.FULL_PARTS`): the seven of the first
protocol (``--legacy``: only those, exactly as before) and the small-obstacle parts at camera
resolution (:mod:`flowclas_ros.data.obstacle_sets`), whose unlabelled frames take their
drivable surface from the Cityscapes ESPNetv2 (``--road-weights``, default
``<data>/../weights/espnetv2-cityscapes/espnetv2_s_2.0_city_1024x512.pth``). The builder is
:func:`flowclas_ros.evaluation.protocol_build.build_protocol`.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from flowclas_ros.data.protocol_sets import FULL_PARTS, LEGACY_PARTS, ProtocolConfig
from flowclas_ros.evaluation.protocol_build import build_protocol


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flowclas_ros.tools.build_protocol",
                                description="Build the frames of the validation protocol from "
                                            "the shared data (KITTI Road, KITTI raw, nuScenes, "
                                            "IDD Lite, CamVid, Cityscapes sample, COCO).")
    p.add_argument("--data", required=True, help="the data root (../shared/data)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--parts", nargs="+", default=None, choices=FULL_PARTS, metavar="PART",
                   help=f"build only these parts (of {', '.join(FULL_PARTS)})")
    p.add_argument("--legacy", action="store_true",
                   help="only the seven parts of the first protocol (no small obstacles)")
    p.add_argument("--limit", type=int, default=None, help="at most N frames per part")
    p.add_argument("--road-weights", default=None,
                   help="the Cityscapes ESPNetv2 weights (road of the unlabelled frames)")
    p.add_argument("--device", default="cpu", help="where ESPNetv2 runs (cpu, cuda)")
    p.add_argument("--cityscapes-variants", type=int, default=None,
                   help="draws per Cityscapes frame in obstacles_cityscapes (default 4)")
    args = p.parse_args(argv)
    parts = tuple(args.parts) if args.parts else LEGACY_PARTS if args.legacy else FULL_PARTS
    cfg = ProtocolConfig(seed=args.seed, limit=args.limit, parts=parts)
    if args.cityscapes_variants is not None:
        cfg.obstacles.cityscapes_variants = args.cityscapes_variants
    try:
        desc = build_protocol(args.data, args.out, cfg, weights=args.road_weights,
                              device=args.device)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: desc[k] for k in ("parts", "outliers", "seconds")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
