r"""Build the pasted-CamVid development set (the previous yardstick).

    python -m flowclas_ros.tools.build_validation_set --camvid ../shared/data/camvid \
        --coco ../shared/data/coco128-seg --out runs/val_camvid

How: :mod:`flowclas_ros.data.validation_set`.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from flowclas_ros.data.outlier_sources import DEFAULT_SPLIT_SEED, DEFAULT_VAL_FRACTION
from flowclas_ros.data.validation_set import build_validation_set


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m flowclas_ros.tools.build_validation_set",
        description="Build CamVid val/test frames with held-out COCO objects pasted.")
    p.add_argument("--camvid", required=True, help="CamVid root (SegNet layout)")
    p.add_argument("--coco", required=True,
                   help="outlier source: COCO instances .json or root, YOLO-seg root, "
                        "or mask PNGs")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="paste seed (default 0)")
    p.add_argument("--split-seed", type=int, default=DEFAULT_SPLIT_SEED,
                   help="seed of the train/held-out outlier split; must match training "
                        "(default 0)")
    p.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION,
                   help="held-out fraction of the outlier source; must match training "
                        "(default 0.25)")
    p.add_argument("--splits", nargs="+", default=["val", "test"],
                   choices=["train", "val", "test"])
    p.add_argument("--limit", type=int, default=None, help="at most N frames per split")
    p.add_argument("--filter", default="road", choices=["road", "allo", "none"],
                   help="COCO class filter (default road)")
    args = p.parse_args(argv)
    try:
        m = build_validation_set(args.camvid, args.coco, args.out, splits=args.splits,
                                 seed=args.seed, limit=args.limit, split_seed=args.split_seed,
                                 val_fraction=args.val_fraction,
                                 outlier_kw={"filter": args.filter})
    except (FileNotFoundError, ValueError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    c = m["counts"]
    px = c["pixels"]
    total = sum(px.values())
    print(f"wrote {c['frames']} frames ({c['per_split']}) to {args.out} in {m['seconds']:.1f} s; "
          f"{m['outliers']['objects']} held-out objects, {c['pasted']} frames pasted, "
          f"outlier pixels {100 * px['outlier'] / max(total, 1):.2f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
