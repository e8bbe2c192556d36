r"""Score a checkpoint or bundle on every part of the validation protocol.

    python -m flowclas_ros.tools.protocol --protocol runs/protocol --model BUNDLE_OR_CKPT \
        [--out report.json] [--components] [--bundle-threshold] [--ignore-mask MASK.png]
    python -m flowclas_ros.tools.protocol --protocol runs/protocol_v2 \
        --model espnetv2_s_2.0_city_1024x512.pth --baseline espnetv2-entropy

prints every part's figures, a table of the main ones and the selection score (higher is
better; with the small-obstacle parts, its two halves too); the protocol is
:mod:`flowclas_ros.evaluation.protocol`, its frames :mod:`flowclas_ros.data.protocol_sets` and
:mod:`flowclas_ros.data.obstacle_sets`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from flowclas_ros import jsonio
from flowclas_ros.bundle.reader import load_bundle
from flowclas_ros.evaluation.protocol import DEFAULT_FPR, evaluate_protocol
from flowclas_ros.evaluation.scoring import load_scorer, model_scorer
from flowclas_ros.model.checkpoint import load_model
from flowclas_ros.outputs.ignore_mask import IgnoreMask

from .common import strip_ros_args


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m flowclas_ros.tools.protocol",
        description="Score a checkpoint or bundle on every part of the validation protocol and "
                    "print its selection score (higher is better).")
    p.add_argument("--protocol", required=True, help="a folder built by "
                   "python -m flowclas_ros.tools.build_protocol")
    p.add_argument("--model", required=True, help="training checkpoint (.pt) or bundle folder; "
                   "with --baseline, that baseline's weights file")
    p.add_argument("--baseline", choices=("espnetv2-entropy",),
                   help="score a reference method instead of a FlowCLAS model: the softmax "
                        "entropy of the Cityscapes ESPNetv2 (--model: its .pth), each frame "
                        "scaled to 512 rows as the network was trained (aspect kept)")
    p.add_argument("--input-size", nargs=2, type=int, metavar=("H", "W"),
                   help="input size for a checkpoint (a bundle brings its own); default 360 480")
    p.add_argument("--fpr", type=float, default=DEFAULT_FPR,
                   help="inlier FPR of the thresholds calibrated on kitti_clean and hires_clean "
                        "(default 0.05)")
    p.add_argument("--bundle-threshold", action="store_true",
                   help="use the bundle's own threshold instead of calibrating one")
    p.add_argument("--parts", nargs="+", default=None)
    p.add_argument("--limit", type=int, default=None, help="frames per part (quick looks)")
    p.add_argument("--components", action="store_true", help="also sIoU, PPV, mean F1")
    p.add_argument("--backend", default="onnxruntime", help="runtime backend for a bundle")
    p.add_argument("--ignore-mask", help="a robot's ignore mask (PNG, non-zero = ignore; "
                   "python -m flowclas_ros.tools.ignore_mask): its pixels are VOID in every "
                   "frame, "
                   "calibration included; every part scored must have the mask's aspect ratio "
                   "(choose them with --parts)")
    p.add_argument("--out", help="write the report as JSON here")
    args = p.parse_args(strip_ros_args(list(sys.argv[1:] if argv is None else argv)))
    path = Path(args.model)
    threshold = None
    try:
        ignore = IgnoreMask.from_file(args.ignore_mask) if args.ignore_mask else None
        if args.baseline:
            scorer, close = entropy_baseline(path), (lambda: None)
        elif path.is_dir():
            scorer, close = load_scorer(path, device="cpu", backend=args.backend)
            if args.bundle_threshold:
                threshold = load_bundle(path).threshold
        else:
            size = tuple(args.input_size) if args.input_size else (360, 480)
            scorer, close = model_scorer(load_model(path), "cpu", input_size=size), (lambda: None)
        try:
            report = evaluate_protocol(scorer, args.protocol, fpr=args.fpr, parts=args.parts,
                                       limit=args.limit, components=args.components,
                                       threshold=threshold, log=print, ignore=ignore)
        finally:
            close()
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report["model"] = str(path)
    if args.out:
        jsonio.write(args.out, report)
    print(summary(report, args.fpr))
    return 0


def entropy_baseline(weights: Path):
    """Return the ESPNetv2 softmax-entropy scorer (the issue-18 reference point)."""
    from flowclas_ros.model.espnetv2 import ESPNetv2Seg, entropy_scorer

    if not weights.is_file():
        raise FileNotFoundError(f"--baseline espnetv2-entropy needs the ESPNetv2 Cityscapes "
                                f"weights as --model, and {weights} is not a file")
    net = ESPNetv2Seg().load_cityscapes(weights)
    per_size: dict = {}

    def score(sample):
        h, w = sample.image.shape[:2]
        if (h, w) not in per_size:  # 512 rows, aspect kept: the network's training scale
            per_size[(h, w)] = entropy_scorer(net, "cpu",
                                              input_size=(512, max(round(w * 512 / h), 1)))
        return per_size[(h, w)](sample)

    return score


COLUMNS = (("auprc", "AUPRC"), ("fpr95", "FPR95"), ("auroc", "AUROC"),
           ("road_auprc", "road AUPRC"), ("road_fpr95", "road FPR95"),
           ("fpr_at_threshold", "FPR@t"), ("road_fpr_at_threshold", "road FPR@t"),
           ("recall_small", "R<500"), ("recall_medium", "R500-5k"), ("recall_large", "R>5k"),
           ("precision", "P"), ("f1", "F1"))


def summary(report: dict, fpr: float) -> str:
    """Return the main figures as a markdown table, then the selection score and its halves."""
    def cell(v) -> str:
        return f"{v:.3f}" if isinstance(v, float) else "" if v is None else str(v)

    lines = ["| part | frames | " + " | ".join(h for _, h in COLUMNS) + " |",
             "|---" * (len(COLUMNS) + 2) + "|"]
    for part, r in report["parts"].items():
        lines.append(f"| {part} | {r.get('frames', '')} | " +
                     " | ".join(cell(r.get(k)) for k, _ in COLUMNS) + " |")
    t = report.get("threshold")
    lines.append(f"selection score {report.get('score', float('nan')):.4f} (threshold "
                 f"{t if t is None else format(t, '.4g')} at FPR {fpr} on kitti_clean)")
    if "score_obstacles" in report:
        lines.append(f"  legacy half {report.get('score_legacy', float('nan')):.4f}, small-"
                     f"obstacle half {report['score_obstacles']:.4f} (threshold "
                     f"{report['hires_threshold']:.4g} at FPR {fpr} on hires_clean)")
    return "\n".join(lines)




if __name__ == "__main__":
    sys.exit(main())
