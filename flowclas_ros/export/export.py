"""``export``: a training checkpoint -> a model bundle (``ros2 run flowclas_ros export``).

    export --checkpoint runs/x/checkpoints/best.pt --out models/my_bundle \\
           [--input-size H W] [--dynamic] [--fp16] [--opset 17] \\
           [--calibration DIR --fpr 0.05] [--threshold X] [--backbone-weights FILE]

Threshold and display range:

* ``--calibration DIR`` (a folder dataset: DIR/images/<name>.png, DIR/labels/<name>.png with
  0 inlier / 1 anomaly / 255 void; without labels/ every pixel is an inlier): every frame is scored exactly as the runtime does (resize to
  the input size, score, bilinear back to the frame's size), then
  threshold = the smallest threshold whose false-positive rate on inlier pixels is <= --fpr;
  score_range = (1st percentile of inlier scores, 99.9th percentile of all valid scores), so
  typical background maps to the cold end of the colour map and only the top 0.1 % saturate.
  AUPRC / FPR95 / AUROC on that set go into the manifest's metrics.
* without it: score_range is the same percentiles over the scores of two real photographs
  (scikit-image's astronaut and coffee), and the threshold is --threshold or, as a placeholder,
  the 95th percentile of those scores (the manifest records it as uncalibrated).
* ``--threshold X`` always overrides the threshold (the FPR is then not recorded).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from flowclas_ros.data.datasets import Sample, build_dataset
from flowclas_ros.evaluation.evaluate import model_scorer
from flowclas_ros.evaluation.metrics import pixel_metrics, threshold_at_fpr
from flowclas_ros.labels import ANOMALY, INLIER, VOID
from flowclas_ros.model import FlowCLAS, ModelConfig

from .bundle import write_bundle

log = logging.getLogger("flowclas_ros.export")

INLIER_LO_PCT, ALL_HI_PCT = 1.0, 99.9
CLI_DESCRIPTION = """\
Export a training checkpoint to a model bundle (also: ros2 run flowclas_ros export).

With --calibration DIR (DIR/images/ and DIR/labels/ with 0 inlier, 1 anomaly, 255 void; without
labels/ every pixel is an inlier) the mask threshold is the smallest one whose false-positive
rate on inlier pixels is at most --fpr, every frame scored as the runtime does. Without it the
threshold is --threshold or an uncalibrated placeholder."""


def default_input_size(cfg: ModelConfig) -> tuple[int, int]:
    """DINOv2: 518 x 1036 (37 x 74 patches); CNNs: 480 x 640."""
    return (518, 1036) if cfg.backbone.name.startswith("dinov2") else (480, 640)


def load_checkpoint_model(path: str | Path, backbone_weights: str | None = None):
    """(model, checkpoint dict) from a training checkpoint; the backbone is rebuilt from its config."""
    from flowclas_ros.model.checkpoint import load_checkpoint

    data = load_checkpoint(path)
    cfg = ModelConfig.from_dict(data["model_config"])
    if backbone_weights:
        cfg.backbone.weights = backbone_weights
    model = FlowCLAS(cfg)
    model.load_trainable_state_dict(data["model"])
    return model.eval(), data


def _valid_scores(model: FlowCLAS, dataset, input_size, device) -> tuple[np.ndarray, np.ndarray, int]:
    """(scores, labels) of every non-void pixel of ``dataset``, scored as the runtime does."""
    score = model_scorer(model, device, input_size=input_size)  # as the runtime runs the bundle
    scores, labels = [], []
    for sample in dataset:
        heat = score(sample)
        if heat.shape != sample.label.shape:
            raise ValueError(f"calibration frame {sample.name}: label {sample.label.shape} vs "
                             f"image {heat.shape}")
        valid = sample.label != VOID
        scores.append(heat[valid])
        labels.append(sample.label[valid].astype(np.uint8))
    if not scores:
        raise ValueError("no calibration frames")
    return np.concatenate(scores), np.concatenate(labels), len(scores)


def calibrate(model: FlowCLAS, root, input_size: tuple[int, int], fpr: float,
              device: str = "cpu", name: str | None = None) -> dict:
    """Threshold at ``fpr`` and display range from a labelled folder dataset (see module doc);
    ``root`` may also be an ImageDataset (``name`` then says what it is)."""
    dataset = build_dataset("folder", root) if isinstance(root, (str, Path)) else root
    name = name or Path(root).name
    s, lab, n = _valid_scores(model, dataset, input_size, device)
    inl = s[lab == INLIER]
    if inl.size == 0:
        raise ValueError(f"the calibration set {name} has no inlier (0) pixels")
    thr = threshold_at_fpr(s, lab, fpr)
    lo = float(np.percentile(inl, INLIER_LO_PCT))
    hi = float(np.percentile(s, ALL_HI_PCT))
    if not hi > lo:
        hi = lo + max(abs(lo), 1.0) * 1e-3
    metrics = {"frames": n, "pixels": int(s.size), "outlier_pixels": int((lab == ANOMALY).sum()),
               "fpr_at_threshold": float((inl >= thr).mean())}
    if (lab == ANOMALY).any():
        metrics.update(pixel_metrics(s, lab))
    log.info("calibrated on %d frames: threshold %.5g at FPR %.3g, score range (%.4g, %.4g)",
             n, thr, fpr, lo, hi)
    return {"threshold": thr, "score_range": (lo, hi), "metrics": metrics,
            "threshold_method": f"smallest threshold with inlier-pixel FPR <= {fpr} on {n} frames "
                                f"of {name} (scored as the runtime does)",
            "score_range_method": f"({INLIER_LO_PCT}th percentile of inlier scores, "
                                  f"{ALL_HI_PCT}th percentile of all valid scores) on {name}"}


def calibrate_on_bag(model: FlowCLAS, bag: str | Path, topic: str, input_size: tuple[int, int],
                     fpr: float, device: str = "cpu", stride: int = 1) -> dict:
    """Threshold so that at most ``fpr`` of the pixels of the robot's own normal frames are
    flagged: calibrated on the bag's ``calibration`` part (every pixel an inlier: a recording of
    normal operation), the rate then measured on its held-out ``test`` part (later in time)."""
    from flowclas_ros.data.bags import bag_dataset

    cal_set = bag_dataset(bag, "calibration", topic=topic, stride=stride, log=log.info)
    test_set = bag_dataset(bag, "test", topic=topic, stride=stride, log=log.info)
    if len(cal_set) == 0:
        raise ValueError(f"bag {bag}: its calibration part (by time) has no frames of {topic}")
    label = f"the calibration part of {Path(bag).name} ({topic})"
    cal = calibrate(model, cal_set, input_size, fpr, device, name=label)
    if len(test_set):
        s, lab, n = _valid_scores(model, test_set, input_size, device)
        cal["metrics"]["test_frames"] = n
        cal["metrics"]["test_fpr_at_threshold"] = float((s >= cal["threshold"]).mean())
    cal["metrics"].update(bag=str(bag), topic=topic, promised_fpr=fpr)
    log.info("bag calibration: FPR %.4f promised, %.4f on %d held-out test frames", fpr,
             cal["metrics"].get("test_fpr_at_threshold", float("nan")),
             cal["metrics"].get("test_frames", 0))
    return cal


def photo_statistics(model: FlowCLAS, input_size: tuple[int, int], device: str = "cpu") -> dict:
    """Uncalibrated display range and placeholder threshold from two real photographs."""
    from .onnx_export import sample_images

    score = model_scorer(model, device, input_size=input_size)
    s = np.concatenate([score(Sample(img, np.zeros(img.shape[:2], np.uint8), name)).ravel()
                        for name, img in sample_images()])
    s = s[np.isfinite(s)]
    lo, hi = (float(v) for v in np.percentile(s, [INLIER_LO_PCT, ALL_HI_PCT]))
    if not hi > lo:
        hi = lo + max(abs(lo), 1.0) * 1e-3
    return {"threshold": float(np.percentile(s, 95.0)), "score_range": (lo, hi),
            "threshold_method": "uncalibrated placeholder: 95th percentile of the scores of "
                                "skimage astronaut + coffee; calibrate with --calibration",
            "score_range_method": f"({INLIER_LO_PCT}th, {ALL_HI_PCT}th) percentiles of the scores "
                                  f"of skimage astronaut + coffee (uncalibrated)"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="export", description=CLI_DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="training checkpoint (.pt)")
    p.add_argument("--out", required=True, help="bundle directory to write (replaced if a bundle)")
    p.add_argument("--input-size", nargs=2, type=int, metavar=("H", "W"),
                   help="graph input size (default: 518 1036 for DINOv2, else 480 640)")
    p.add_argument("--dynamic", action="store_true", help="graph accepts any H and W")
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
    p.add_argument("--topic", help="the camera topic of --calibration-bag")
    p.add_argument("--fpr", type=float, default=0.05, help="inlier false-positive rate of the "
                                                          "calibrated threshold (default 0.05)")
    p.add_argument("--threshold", type=float, help="mask threshold on the raw score (overrides)")
    p.add_argument("--protocol", help="a validation protocol folder (python -m flowclas_ros.data."
                                      "protocol_sets): its figures at the bundle's threshold go "
                                      "into the manifest and the model card")
    p.add_argument("--card-notes", help="a Markdown file appended to MODEL_CARD.md (data, "
                                        "licences, how the model was made)")
    p.add_argument("--backbone-weights", help="backbone weights file, if the checkpoint's config "
                                              "points to one that is not on this machine")
    p.add_argument("--device", default="cpu", help="device for calibration (cpu, cuda)")
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime vs torch check")
    args = p.parse_args(argv)
    if not 0.0 <= args.fpr <= 1.0:
        p.error(f"--fpr must be in [0, 1], got {args.fpr}")
    if args.input_size and min(args.input_size) < 1:
        p.error("--input-size must be positive")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _export(args)
    except (FileNotFoundError, ValueError, FileExistsError) as exc:
        print(f"export: error: {exc}", file=sys.stderr)
        return 2


def _export(args) -> int:
    model, ckpt = load_checkpoint_model(args.checkpoint, args.backbone_weights)
    size = tuple(args.input_size) if args.input_size else default_input_size(model.config)
    if args.calibration_bag:
        if not args.topic:
            raise ValueError("--calibration-bag needs --topic (the bag's camera topic)")
        cal = calibrate_on_bag(model, args.calibration_bag, args.topic, size, args.fpr,
                               args.device)
        fpr = args.fpr
    elif args.calibration:
        cal = calibrate(model, args.calibration, size, args.fpr, args.device)
        fpr = args.fpr
    else:
        cal = photo_statistics(model, size, args.device)
        fpr = None
    model = model.cpu()
    threshold, method = cal["threshold"], cal["threshold_method"]
    if args.threshold is not None:
        threshold, fpr, method = args.threshold, None, "given on the command line (--threshold)"
    metrics = {}
    if ckpt.get("metrics"):
        metrics["checkpoint"] = ckpt["metrics"]
    if cal.get("metrics"):
        metrics["calibration"] = cal["metrics"]
    if args.protocol:
        from flowclas_ros.evaluation.protocol import evaluate_protocol

        report = evaluate_protocol(model_scorer(model, args.device, input_size=size),
                                   args.protocol, threshold=threshold, log=log.info)
        metrics["protocol"] = {"threshold": threshold, "score": report.get("score"),
                               "parts": report["parts"]}
        model = model.cpu()
    notes = Path(args.card_notes).read_text() if args.card_notes else None
    bundle = write_bundle(model, args.out, input_size=size, threshold=threshold,
                          score_range=cal["score_range"], threshold_fpr=fpr,
                          train_config=ckpt.get("train_config"), metrics=metrics or None,
                          opset=args.opset, dynamic=args.dynamic, fp16=args.fp16,
                          threshold_method=method, score_range_method=cal["score_range_method"],
                          exporter=args.exporter, verify=not args.no_verify, card_notes=notes)
    m = bundle.manifest
    summary = {"bundle": str(bundle.path), "exporter": m["onnx"]["exporter"],
               "opset": m["onnx"]["opset"], "input_size": list(bundle.input_size),
               "dynamic": bundle.dynamic, "fp16": bundle.fp16, "threshold": bundle.threshold,
               "threshold_fpr": bundle.threshold_fpr, "score_range": list(bundle.score_range),
               "verification": m["onnx"]["verification"]}
    print(json.dumps(summary, indent=2))
    ver = m["onnx"]["verification"] or {}
    if ver.get("relative_to_score_range", 0.0) > (1e-2 if args.fp16 else 1e-3):
        log.warning("ONNX Runtime differs from torch by %.2g of the score range",
                    ver["relative_to_score_range"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
