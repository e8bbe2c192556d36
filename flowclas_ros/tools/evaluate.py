"""``evaluate``: score a benchmark with the benchmark's own metric definitions (METHOD.md 8).

    evaluate --dataset NAME --root DIR (--model PATH | --scores DIR) --out DIR
             [--split test] [--streaming] [--components auto|anomaly|obstacle|none]
             [--limit N] [--device cpu] [--backend auto] [--examples 4] [--save-scores]

writes OUT/metrics.json (auprc, fpr95, auroc as fractions; siou, ppv, mean_f1 when component
metrics are computed; dataset, n_images, n_pixels, mode, elapsed_s, peak_rss_mb, ...; strict
JSON, undefined values null), and beside it curves.png (PR and ROC) and examples.png (image,
label, score of a few frames). The library: :mod:`flowclas_ros.evaluation`.
"""
from __future__ import annotations

import argparse
import math
import resource
import sys
import time
from pathlib import Path

from flowclas_ros import jsonio
from flowclas_ros.evaluation.evaluate import (
    COMPONENT_CHOICES,
    EvaluationError,
    default_track,
    load_dataset,
    run_evaluation,
)
from flowclas_ros.evaluation.plots import plot_curves, plot_examples
from flowclas_ros.evaluation.scoring import ScoreFolder, Scorer, load_scorer

from .common import setup_logging, strip_ros_args

CLI_DESCRIPTION = """\
Score a benchmark with the benchmark's own metric definitions (METHOD.md section 8).

Writes OUT/metrics.json (auprc, fpr95, auroc as fractions; siou, ppv, mean_f1 when component
metrics are computed), OUT/curves.png (PR and ROC) and OUT/examples.png.

Score sources, one (H, W) float map per image at the label's resolution:
  --scores DIR   saved maps named after the images: DIR/<name>.npy (float) or DIR/<name>.png
                 (16-bit, read as value / 65535), so any method is compared on equal terms
  --model FILE   a training checkpoint, run per image at native resolution
  --model DIR    an exported bundle, run through the runtime backends

Component metrics take a second pass over cached maps; --components auto picks the Obstacle
track for smiyc_obstacle and lost_and_found, the Anomaly track otherwise."""

def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evaluate", description=CLI_DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True,
                   help="dataset name (road_anomaly, fishyscapes_laf, fishyscapes_static, "
                   "smiyc_anomaly, smiyc_obstacle, lost_and_found, allo, folder)")
    p.add_argument("--root", required=True, help="the dataset's folder")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="training checkpoint (.pt) or exported bundle folder")
    src.add_argument("--scores", help="folder of saved maps <name>.npy or 16-bit <name>.png")
    p.add_argument("--out", required=True, help="output folder for metrics.json and the plots")
    p.add_argument("--split", default="test", help="dataset split (default test; single-split "
                   "benchmarks ignore it)")
    p.add_argument("--streaming", action="store_true",
                   help="fixed-memory binned metrics instead of the exact sort")
    p.add_argument("--bins", type=int, default=2 ** 20, help="streaming bins (default 2^20)")
    p.add_argument("--components", choices=COMPONENT_CHOICES, default="auto",
                   help="SMIYC component metrics track; auto: obstacle for smiyc_obstacle and "
                   "lost_and_found, anomaly otherwise")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N images only")
    p.add_argument("--device", default="cpu", help="torch device for --model (cpu, cuda, ...)")
    p.add_argument("--backend", default="auto", help="runtime backend for a bundle --model")
    p.add_argument("--examples", type=int, default=4, help="frames in examples.png (0: none)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--save-scores", action="store_true", help="keep every map in OUT/scores")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(strip_ros_args(list(sys.argv[1:] if argv is None else argv)))
    setup_logging("%(message)s")
    t0 = time.perf_counter()
    out = Path(args.out)
    track = default_track(args.dataset) if args.components == "auto" else args.components
    close = lambda: None  # noqa: E731
    try:
        dataset = load_dataset(args.dataset, args.root, args.split)
        if args.scores is not None:
            scorer: Scorer = ScoreFolder(args.scores)
        else:
            scorer, close = load_scorer(args.model, device=args.device, backend=args.backend)
        ev = run_evaluation(scorer, dataset, streaming=args.streaming, bins=args.bins,
                            components=None if track == "none" else track, limit=args.limit,
                            n_examples=0 if args.no_plots else args.examples,
                            save_scores=out / "scores" if args.save_scores else None,
                            progress=not args.quiet)
    except (EvaluationError, FileNotFoundError, ValueError) as e:
        parser.exit(1, f"evaluate: error: {e}\n")
    finally:
        close()
    metrics = {**ev.metrics, "dataset": args.dataset, "split": args.split,
               "source": str(args.model if args.model is not None else args.scores),
               "components": track}
    out.mkdir(parents=True, exist_ok=True)
    if not args.no_plots:
        title = f"{args.dataset} ({metrics['n_images']} images)"
        if ev.pixel.n_pos and ev.pixel.n_neg:
            plot_curves(ev.pixel, out / "curves.png", title=title)
        if ev.examples:
            plot_examples(ev.examples, out / "examples.png", threshold=ev.pixel.best_f1_threshold)
    metrics.update(elapsed_s=round(time.perf_counter() - t0, 3),
                   peak_rss_mb=round(peak_rss_mb(), 1))
    jsonio.write(out / "metrics.json", metrics, indent=2)
    summary = ", ".join(f"{k} {100 * metrics[k]:.2f}" for k in ("auprc", "fpr95", "auroc", "siou",
                                                                 "ppv", "mean_f1")
                        if isinstance(metrics.get(k), float) and math.isfinite(metrics[k]))
    print(f"{args.dataset}: {summary} ({metrics['n_images']} images, "
          f"{metrics['n_pixels']} pixels, {metrics['mode']}, {metrics['elapsed_s']:.1f} s, "
          f"peak {metrics['peak_rss_mb']:.0f} MB) -> {out / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
