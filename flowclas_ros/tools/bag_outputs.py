r"""``bag_outputs``: the node's outputs for a recording, written to a new bag beside it.

    bag_outputs --bag drive.mcap --topic /camera/image_raw --model BUNDLE \
        [--out drive_anomaly] [--storage mcap|sqlite3] [--backend auto] [--copy-input]

The library: :func:`flowclas_ros.runtime.bag_outputs.write_outputs`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from flowclas_ros.runtime.bag_outputs import write_outputs

from .common import strip_ros_args


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bag_outputs", description="Write the node's heatmap, "
                                "mask and overlay for every frame of a recording into a new bag.")
    p.add_argument("--bag", required=True, type=Path, help="rosbag2 folder or .mcap file")
    p.add_argument("--topic", required=True, help="its camera topic")
    p.add_argument("--model", required=True, type=Path, help="bundle folder")
    p.add_argument("--out", type=Path, help="the new bag (default: <bag>_anomaly beside it)")
    p.add_argument("--storage", default="mcap", choices=("mcap", "sqlite3"))
    p.add_argument("--backend", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--threshold", type=float, default=None, help="default: the bundle's")
    p.add_argument("--copy-input", action="store_true", help="copy the camera topic too")
    args = p.parse_args(strip_ros_args(list(sys.argv[1:] if argv is None else argv)))
    out = args.out or args.bag.with_name(args.bag.stem + "_anomaly")
    try:
        report = write_outputs(args.bag, args.topic, args.model, out, storage=args.storage,
                               backend=args.backend, device=args.device,
                               copy_input=args.copy_input, threshold=args.threshold)
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"bag_outputs: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
