r"""``export``: a training checkpoint -> a model bundle (``ros2 run flowclas_ros export``).

    export --checkpoint runs/x/checkpoints/best.pt --out models/my_bundle \
           [--input-size H W] [--dynamic] [--fp16] [--opset 17] \
           [--calibration DIR --fpr 0.05 | --calibration-bag BAG --topic T [T2 ...]] \
           [--threshold X] \
           [--ignore-mask PNG] \
           [--protocol DIR] [--card-notes FILE] [--backbone-weights FILE]
    export --regraph models/my_bundle [--out DIR]   # today's graph, same weights and threshold

What it does: :func:`flowclas_ros.export.export.export_checkpoint`; how the threshold is set:
:mod:`flowclas_ros.export.calibration`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import setup_logging, strip_ros_args

CLI_DESCRIPTION = """\
Export a training checkpoint to a model bundle (also: ros2 run flowclas_ros export).

With --calibration DIR (DIR/images/ and DIR/labels/ with 0 inlier, 1 anomaly, 255 void; without
labels/ every pixel is an inlier) the mask threshold is the smallest one whose false-positive
rate on inlier pixels is at most --fpr, every frame scored as the runtime does. Without it the
threshold is --threshold or an uncalibrated placeholder."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="export", description=CLI_DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="training checkpoint (.pt)")
    p.add_argument("--regraph", metavar="BUNDLE", help="instead of a checkpoint: export an "
                   "existing bundle's graph again with this version's exporter (its weights, "
                   "threshold and card kept; into --out, or in place without it)")
    p.add_argument("--out", help="bundle directory to write (replaced if a bundle)")
    p.add_argument("--input-size", nargs=2, type=int, metavar=("H", "W"),
                   help="graph input size (default: 518 1036 for DINOv2, else 480 640)")
    p.add_argument("--dynamic", action="store_true", help="graph accepts any H and W")
    p.add_argument("--long-side", type=int, help="keep each frame's aspect ratio, scaled so "
                   "that its longer side is at most this (a dynamic graph; the resolution the "
                   "model was trained and validated for)")
    p.add_argument("--max-pixels", type=int, help="keep each frame's aspect ratio, scaled to "
                   "at most this many pixels (with or instead of --long-side)")
    p.add_argument("--max-scale", type=float, default=1.0, help="with --long-side / "
                   "--max-pixels: never enlarge a frame more than this (default 1: a small "
                   "camera runs at its own resolution)")
    p.add_argument("--fp16", action="store_true", help="float16 backbone in the graph")
    p.add_argument("--opset", type=int, default=17,
                   help="minimum ONNX opset, >= 17 (the dynamo exporter emits 18 or newer; "
                        "--exporter torchscript emits exactly this one)")
    p.add_argument("--exporter", choices=("auto", "dynamo", "torchscript"), default="auto",
                   help="auto: dynamo first (TorchScript first with --dynamic), the other on "
                        "failure; the manifest records which one worked")
    p.add_argument("--calibration", help="folder dataset (images/, labels/) for the threshold")
    p.add_argument("--calibration-bag", help="calibrate on a recording of normal operation "
                   "instead: a rosbag2 folder or an .mcap file (its calibration part by time; "
                   "the rate is then measured on its test part)")
    p.add_argument("--topic", nargs="+", help="the camera topic(s) of --calibration-bag; with "
                   "several, each camera gets the threshold of its own frames (the node matches "
                   "a camera by its input topic); the first gives the display range")
    p.add_argument("--ignore-mask", help="a PNG (non-zero = ignore: the car's hood, the "
                   "robot's body; the node's ignore_mask) whose pixels are left out of "
                   "calibration (VOID), with --calibration-bag or --calibration")
    p.add_argument("--fpr", type=float, default=0.05, help="inlier false-positive rate of the "
                                                          "calibrated threshold (default 0.05)")
    p.add_argument("--threshold", type=float, help="mask threshold on the raw score (overrides)")
    p.add_argument("--protocol", help="a validation protocol folder (python -m flowclas_ros."
                                      "tools.build_protocol): its figures at the bundle's "
                                      "threshold go into the manifest and the model card")
    p.add_argument("--card-notes", help="a Markdown file appended to MODEL_CARD.md (data, "
                                        "licences, how the model was made)")
    p.add_argument("--backbone-weights", help="backbone weights file, if the checkpoint's config "
                                              "points to one that is not on this machine")
    p.add_argument("--device", default="cpu", help="device for calibration (cpu, cuda)")
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime vs torch check")
    args = p.parse_args(argv)
    if bool(args.checkpoint) == bool(args.regraph):
        p.error("give --checkpoint (with --out) or --regraph")
    if args.checkpoint and not args.out:
        p.error("--checkpoint needs --out")
    if not 0.0 <= args.fpr <= 1.0:
        p.error(f"--fpr must be in [0, 1], got {args.fpr}")
    if args.input_size and min(args.input_size) < 1:
        p.error("--input-size must be positive")
    return args


def main(argv=None) -> int:
    args = parse_args(strip_ros_args(list(sys.argv[1:] if argv is None else argv)))
    setup_logging("%(levelname)s %(name)s: %(message)s")
    from flowclas_ros.export.export import export_checkpoint

    if args.regraph:
        from flowclas_ros.export.bundle import regraph_bundle

        try:
            bundle = regraph_bundle(args.regraph, args.out, exporter=args.exporter,
                                    verify=not args.no_verify)
        except (FileNotFoundError, ValueError, FileExistsError) as exc:
            print(f"export: error: {exc}", file=sys.stderr)
            return 2
        print(json.dumps({"bundle": str(bundle.path), **{k: bundle.manifest["onnx"].get(k) for k
                          in ("exporter", "opset", "passes", "verification")}}, indent=2))
        return 0
    resolution = None
    if args.long_side or args.max_pixels:
        resolution = {"long_side": args.long_side, "pixels": args.max_pixels,
                      "max_scale": args.max_scale}
        resolution = {k: v for k, v in resolution.items() if v is not None}
    try:
        bundle = export_checkpoint(
            args.checkpoint, args.out, input_size=args.input_size, dynamic=args.dynamic,
            fp16=args.fp16, opset=args.opset, exporter=args.exporter,
            calibration=args.calibration, calibration_bag=args.calibration_bag,
            topic=args.topic, fpr=args.fpr, threshold=args.threshold, protocol=args.protocol,
            card_notes=Path(args.card_notes).read_text() if args.card_notes else None,
            backbone_weights=args.backbone_weights, device=args.device,
            verify=not args.no_verify, resolution=resolution, ignore_mask=args.ignore_mask)
    except (FileNotFoundError, ValueError, FileExistsError) as exc:
        print(f"export: error: {exc}", file=sys.stderr)
        return 2
    m = bundle.manifest
    summary = {"bundle": str(bundle.path), "exporter": m["onnx"]["exporter"],
               "opset": m["onnx"]["opset"], "input_size": list(bundle.input_size),
               "dynamic": bundle.dynamic, "fp16": bundle.fp16, "threshold": bundle.threshold,
               "resolution": bundle.resolution.to_dict(),
               "threshold_fpr": bundle.threshold_fpr, "score_range": list(bundle.score_range),
               "verification": m["onnx"]["verification"],
               "exceedance_table": bundle.exceedance_table is not None}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
