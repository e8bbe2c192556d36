r"""Find the pixels that stay the same over a recording and write them as an ignore mask PNG.

The pixels that stay the same: the car's hood, the robot's body. The PNG (255 = ignore) is for
the node's ``ignore_mask`` parameter.

    python -m flowclas_ros.tools.ignore_mask --bag drive.mcap --topic /camera/image_raw \
        --out hood.png [--frames 200] [--threshold 10] [--preview hood_preview.png]
    python -m flowclas_ros.tools.ignore_mask --source frames/ --out hood.png   # or a video

``--frames`` frames are sampled evenly over the whole recording. Prints the masked fraction;
look at the PNG (or ``--preview``, the mask tinted red on a frame) and edit it in any image
editor before use. The method and its knobs: :mod:`flowclas_ros.outputs.ignore_mask`.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Iterator

import numpy as np

from flowclas_ros.outputs.ignore_mask import StaticMaskBuilder, save_ignore_mask


def _bag_frames(bag: Path, topic: str, frames: int) -> Iterator[np.ndarray]:
    from flowclas_ros.data.bags import BagSelection, bag_topics, iter_bag_frames

    topics = bag_topics(bag)
    if topic not in topics:
        raise ValueError(f"bag {bag} has no image topic {topic!r}; its image topics: {topics}")
    stride = max(1, math.ceil(topics[topic][1] / frames))
    for f in iter_bag_frames(bag, BagSelection(topic=topic, stride=stride)):
        yield f.rgb


def _video_count(path: Path) -> int:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if stream.frames:
            return int(stream.frames)
        return sum(1 for p in container.demux(stream) if p.size)


def _source_frames(source: Path, frames: int) -> Iterator[np.ndarray]:
    from flowclas_ros.data.frame_sources import IMAGE_SUFFIXES, iter_frames, list_images

    if source.is_dir():
        files = list_images(source)
        if not files:
            raise FileNotFoundError(f"no images in {source}")
        pick = sorted(set(np.linspace(0, len(files) - 1, min(frames, len(files))).round()
                          .astype(int).tolist()))
        for k in pick:
            yield from iter_frames(files[k])
        return
    if source.suffix.lower() in IMAGE_SUFFIXES:
        raise ValueError(f"{source} is one image: a static mask needs a recording")
    stride = max(1, math.ceil(_video_count(source) / frames)) if source.exists() else 1
    for k, rgb in enumerate(iter_frames(source)):
        if k % stride == 0:
            yield rgb


def _preview(path: Path, frame: np.ndarray, mask: np.ndarray) -> None:
    from PIL import Image

    out = frame.astype(np.float32)
    out[mask] = out[mask] * 0.4 + np.array([255.0, 0.0, 0.0]) * 0.6
    Image.fromarray(out.astype(np.uint8)).save(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m flowclas_ros.tools.ignore_mask",
                                description="Write an ignore mask of what stays constant over a "
                                            "recording (hood, robot body).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--bag", type=Path, help="a rosbag2 folder or .mcap file")
    src.add_argument("--source", type=Path, help="a folder of images or a video file")
    p.add_argument("--topic", default="", help="the camera topic of --bag")
    p.add_argument("--out", type=Path, required=True, help="the PNG to write (255 = ignore)")
    p.add_argument("--frames", type=int, default=200, help="frames sampled over the recording")
    p.add_argument("--threshold", type=float, default=10.0,
                   help="a segment is static when its median temporal deviation (0-255 levels) "
                        "is at most this")
    p.add_argument("--min-area", type=float, default=0.005,
                   help="smallest static segment, as a fraction of the image")
    p.add_argument("--max-area", type=float, default=0.5,
                   help="largest static segment, as a fraction of the image (the scene is never "
                        "static)")
    p.add_argument("--edge-coherence", type=float, default=0.7,
                   help="gradient direction agreement (0-1) that makes an edge persistent")
    p.add_argument("--work-side", type=int, default=480,
                   help="longer side (pixels) the frames are subsampled to for the statistics")
    p.add_argument("--preview", type=Path, help="also write the mask tinted on the last frame")
    args = p.parse_args(argv)
    if args.bag is not None and not args.topic:
        p.error("--bag needs --topic")
    if args.frames < 3:
        p.error("--frames must be at least 3")
    builder = StaticMaskBuilder(args.work_side)
    last = None
    try:
        frames = (_bag_frames(args.bag, args.topic, args.frames) if args.bag is not None
                  else _source_frames(args.source, args.frames))
        for rgb in frames:
            builder.add(rgb)
            last = rgb
        result = builder.build(args.threshold, args.min_area, args.edge_coherence,
                               args.max_area)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_ignore_mask(result.mask, args.out)
    if args.preview is not None and last is not None:
        _preview(args.preview, last, result.mask)
    h, w = result.mask.shape
    print(f"{result.frames} frames ({w}x{h}); masked fraction {result.fraction:.4f} "
          f"({len([s for s in result.segments if s[3]])} static segment(s)) -> {args.out}")
    for area, dev, border, static in result.segments:
        print(f"  segment {area:7.2%} of the image, median deviation {dev:5.1f}, "
              f"{'touches the border' if border else 'inside'}: "
              f"{'STATIC' if static else 'moving'}")
    if result.fraction > 0.3:
        print("warning: more than 30 % of the image is masked: check the PNG; lower --threshold "
              "if the scene was taken for the robot", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
