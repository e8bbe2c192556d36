"""List the image topics of a recording, or record a folder of images / a video as one.

    python -m flowclas_ros.tools.bags drive.mcap                      # topics, types, counts
    python -m flowclas_ros.tools.bags out.mcap --from frames/ --rate 10

The library: :mod:`flowclas_ros.data.bags`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from flowclas_ros.data.bags import bag_topics, write_bag
from flowclas_ros.data.frame_sources import iter_frames


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m flowclas_ros.tools.bags",
                                description="List the image topics of a recording, or record a "
                                            "folder of images / a video as one.")
    p.add_argument("bag", type=Path, help="the recording (read), or the one to write")
    p.add_argument("--from", dest="source", type=Path,
                   help="write BAG from this folder of images or video file")
    p.add_argument("--topic", default="/camera/image_raw")
    p.add_argument("--rate", type=float, default=10.0, help="frames per second of the recording")
    p.add_argument("--compressed", action="store_true", help="CompressedImage (jpeg) frames")
    p.add_argument("--storage", default="mcap", choices=("mcap", "sqlite3"))
    args = p.parse_args(argv)
    try:
        if args.source is not None:
            n = write_bag(iter_frames(args.source), args.bag, args.topic, rate=args.rate,
                          compressed=args.compressed, storage=args.storage)
            print(f"recorded {n} frames of {args.source} as {args.bag} ({args.topic}, "
                  f"{args.rate:g} Hz)")
        else:
            print(json.dumps(bag_topics(args.bag), indent=1))
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
