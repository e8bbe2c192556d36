"""Benchmark evaluation (METHOD.md section 8).

    evaluate --dataset NAME --root DIR (--model PATH | --scores DIR) --out DIR
             [--split test] [--streaming] [--components auto|anomaly|obstacle|none]
             [--limit N] [--device cpu] [--backend auto] [--examples 4] [--save-scores]

writes OUT/metrics.json (auprc, fpr95, auroc as fractions; siou, ppv, mean_f1 when component
metrics are computed; dataset, n_images, n_pixels, mode, elapsed_s, peak_rss_mb, ...), and beside
it curves.png (PR and ROC) and examples.png (image, label, score of a few frames).

Score sources, all producing one (H, W) float map per image at the label's resolution:
* ``--scores DIR``: saved anomaly maps named after the images, DIR/<sample name>.npy (float) or
  DIR/<sample name>.png (16-bit, read as value / 65535; 8-bit is accepted with a warning since
  its 256 levels tie most pixels). Any method's outputs are compared on equal terms.
* ``--model FILE``: a training checkpoint; the model runs per image at native resolution.
* ``--model DIR``: an exported bundle, run through the runtime (flowclas_ros.runtime).

Component metrics need the dataset's best-F1 threshold before the first component can be
formed, so they take a second pass: the first pass caches each frame's score and label as .npy in
a temporary folder (or keeps the scores in OUT/scores with ``--save-scores``). ``auto`` picks the
Obstacle track for smiyc_obstacle and lost_and_found and the Anomaly track otherwise.

Library use: evaluate_scores (score maps) and evaluate_model (a model or a runtime backend).
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import resource
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from .components import ComponentConfig, ComponentMetrics, track_config
from .metrics import ExactPixelMetrics, PixelResult, StreamingPixelMetrics
from .plots import Example, plot_curves, plot_examples

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
OBSTACLE_DATASETS = ("smiyc_obstacle", "lost_and_found")
COMPONENT_CHOICES = ("auto", "anomaly", "obstacle", "none")
Scorer = Callable[[Any], np.ndarray]  # Sample -> (H, W) float score map


class EvaluationError(ValueError):
    """A problem with the inputs of an evaluation; the message says which file and what to do."""


def default_track(dataset: str) -> str:
    return "obstacle" if dataset in OBSTACLE_DATASETS else "anomaly"


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------
def load_dataset(name: str, root: str | Path, split: str = "test"):
    """The dataset reader of flowclas_ros.data (imported here: evaluation does not need it)."""
    from flowclas_ros.data.datasets import build_dataset

    return build_dataset(name, root, split)


def read_score_map(path: str | Path) -> np.ndarray:
    """A saved anomaly map -> (H, W) float32. .npy (any real dtype) or 16-bit / 8-bit PNG."""
    path = Path(path)
    if path.suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise EvaluationError(f"{path}: dtype {arr.dtype} is not a real-valued score map")
        arr = arr.astype(np.float32, copy=False)
    elif path.suffix == ".png":
        from PIL import Image

        with Image.open(path) as img:
            mode = img.mode
            arr = np.array(img)
        if mode.startswith("I;16") or (mode == "I" and arr.max(initial=0) <= 65535):
            arr = arr.astype(np.float32) / 65535.0
        elif mode == "L":
            warnings.warn(f"{path} is an 8-bit PNG: only 256 score levels, most pixels tie; save "
                          f"16-bit PNG or .npy for a faithful evaluation", stacklevel=2)
            arr = arr.astype(np.float32) / 255.0
        else:
            raise EvaluationError(f"{path}: PNG mode {mode} is not a single-channel score map; "
                                  f"save the raw score as 16-bit grey PNG or .npy, not colours")
    else:
        raise EvaluationError(f"{path}: score maps must be .npy or .png")
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise EvaluationError(f"{path}: score map has shape {arr.shape}, expected (H, W)")
    return arr


class ScoreFolder:
    """Scorer reading DIR/<sample.name>.npy (preferred) or DIR/<sample.name>.png."""

    SUFFIXES = (".npy", ".png")

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"score folder {self.root} does not exist")

    def path(self, name: str) -> Path:
        for suffix in self.SUFFIXES:
            p = self.root / f"{name}{suffix}"
            if p.is_file():
                return p
        raise FileNotFoundError(
            f"no score map for image {name!r}: expected {self.root / name}.npy or .png "
            f"(maps are named after the dataset's sample names)")

    def __call__(self, sample) -> np.ndarray:
        return read_score_map(self.path(sample.name))


def module_device(model) -> str:
    """The device of a module's first parameter or buffer (cpu when it has none)."""
    for t in itertools.chain(model.parameters(), model.buffers()):
        return str(t.device)
    return "cpu"


def model_scorer(model, device: str | None = None, autocast: bool = False,
                 input_size: tuple[int, int] | None = None) -> Scorer:
    """FlowCLAS (or any images -> (B, H, W) module), one image at a time.

    ``input_size`` None: at the image's native resolution; (h, w): as the runtime runs a bundle
    of that input size (the frame resized to it, the score resized back; runtime.pipeline).
    device: where to run; None keeps the module where it is. autocast: bf16 autocast (what
    training uses on CUDA). Puts the module in eval mode.
    """
    import torch

    from flowclas_ros.runtime.pipeline import TorchPipeline, resize_torch

    device = device or module_device(model)
    model = model.to(device).eval()
    device_type = torch.device(device).type

    def score(sample) -> np.ndarray:
        img = torch.from_numpy(np.ascontiguousarray(sample.image)).to(device)
        size = input_size or tuple(img.shape[:2])
        x = TorchPipeline.prepare_input(img, size)
        with torch.no_grad(), torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast):
            s = model(x)[0].float()
        return resize_torch(s[None, None], tuple(img.shape[:2]))[0, 0].cpu().numpy()

    return score


def backend_scorer(backend) -> Scorer:
    """A runtime Backend: its raw heatmap at input resolution."""

    def score(sample) -> np.ndarray:
        return backend.infer(sample.image, heatmap=True, mask=False, overlay=False).heatmap

    return score


def load_scorer(path: str | Path, device: str = "cpu",
                backend: str = "auto") -> tuple[Scorer, Callable[[], None]]:
    """--model PATH: a checkpoint file or a bundle directory -> (scorer, close)."""
    path = Path(path)
    if path.is_file():
        from flowclas_ros.model.checkpoint import load_model

        return model_scorer(load_model(path), device), (lambda: None)
    if path.is_dir():
        from flowclas_ros.runtime import create_backend

        b = create_backend(path, backend=backend, device=device)
        return backend_scorer(b), b.close
    raise FileNotFoundError(f"--model {path} does not exist (a checkpoint file or a bundle folder)")


# ---------------------------------------------------------------------------------------------
# the evaluation loop
# ---------------------------------------------------------------------------------------------
@dataclass
class Evaluation:
    metrics: dict  # what metrics.json holds (metric values as fractions; NaN where undefined)
    pixel: PixelResult  # with curves, for plots
    examples: list[Example] = field(default_factory=list)


def _check_map(score, label: np.ndarray, name: str) -> np.ndarray:
    if score is None:
        raise EvaluationError(f"no score map for image {name!r}")
    score = np.asarray(score)
    if score.shape != label.shape:
        raise EvaluationError(f"score map for image {name!r} has shape {score.shape} but its label "
                              f"is {label.shape}: maps must be (H, W) at the image's resolution")
    return score


def run_evaluation(scores: Scorer | Iterable[np.ndarray], dataset, *, streaming: bool = False,
                   bins: int = 2 ** 20, components: str | ComponentConfig | None = None,
                   limit: int | None = None, n_examples: int = 0,
                   save_scores: str | Path | None = None, progress: bool = False) -> Evaluation:
    """Score ``dataset`` (a Sequence of Samples) and compute the metrics.

    scores: a callable Sample -> (H, W) float map, or an iterable of maps in dataset order.
    streaming: fixed-memory histograms (``bins`` bins) instead of the exact sort.
    components: None (pixel metrics only), a track name ("anomaly", "obstacle") or a config.
    save_scores: a folder to keep every map as <sample name>.npy (float32).
    """
    from tqdm import tqdm

    n = len(dataset) if limit is None else min(len(dataset), int(limit))
    if n == 0:
        raise EvaluationError("the dataset has no images to evaluate")
    pixel = StreamingPixelMetrics(bins=bins) if streaming else ExactPixelMetrics()
    cfg = None if components in (None, "none") else track_config(components)
    want = set(np.linspace(0, n - 1, n_examples).round().astype(int).tolist() if n_examples else [])
    examples: list[Example] = []
    get = scores if callable(scores) else None
    it = None if get else iter(scores)
    save_dir = Path(save_scores) if save_scores is not None else None
    names: list[str] = []
    with tempfile.TemporaryDirectory(prefix="flowclas_eval_") as tmp:
        cache = Path(tmp)
        for i in tqdm(range(n), desc="evaluate", disable=not progress, unit="img"):
            sample = dataset[i]
            if get is not None:
                s = get(sample)
            else:
                try:
                    s = next(it)
                except StopIteration:
                    raise EvaluationError(f"the score iterable ended after {i} maps; the dataset "
                                          f"has {n} images") from None
            s = _check_map(s, sample.label, sample.name)
            pixel.update(s, sample.label)
            names.append(sample.name)
            if save_dir is not None:
                out = save_dir / f"{sample.name}.npy"
                out.parent.mkdir(parents=True, exist_ok=True)
                np.save(out, s.astype(np.float32, copy=False))
            if cfg is not None:
                if save_dir is None:
                    np.save(cache / f"{i:06d}_s.npy", s.astype(np.float32, copy=False))
                np.save(cache / f"{i:06d}_l.npy", sample.label)
            if i in want:
                examples.append(Example.from_frame(sample.name, sample.image, sample.label, s))
            del s, sample
        result = pixel.result()
        metrics: dict[str, Any] = dict(result.metrics())
        metrics.update(n_images=n, n_pixels=result.n_pos + result.n_neg,
                       n_anomaly_pixels=result.n_pos, mode="streaming" if streaming else "exact",
                       best_f1=result.best_f1, best_f1_threshold=result.best_f1_threshold,
                       fpr95_threshold=result.fpr95_threshold)
        if streaming:
            metrics.update(bins=bins, score_range=list(pixel.range) if pixel.range else None)
        if cfg is not None and math.isnan(result.best_f1_threshold):
            warnings.warn("no anomaly pixels: component metrics skipped", stacklevel=2)
        elif cfg is not None:
            comp = ComponentMetrics(result.best_f1_threshold, cfg)
            for i in tqdm(range(n), desc="components", disable=not progress, unit="img"):
                label = np.load(cache / f"{i:06d}_l.npy")
                s = np.load(cache / f"{i:06d}_s.npy" if save_dir is None
                            else save_dir / f"{names[i]}.npy")
                comp.update(s, label)
            metrics.update(comp.compute())
            metrics.update(component_threshold=result.best_f1_threshold,
                           component_min_pred_size=cfg.min_pred_size,
                           component_min_gt_size=cfg.min_gt_size)
    return Evaluation(metrics=metrics, pixel=result, examples=examples)


def evaluate_scores(scores: Scorer | Iterable[np.ndarray], dataset, **kwargs) -> dict:
    """Metrics dict of score maps against ``dataset``; keyword arguments of :func:`run_evaluation`."""
    return run_evaluation(scores, dataset, **kwargs).metrics


def evaluate_model(model_or_backend, dataset, *, device: str | None = None,
                   autocast: bool = False, **kwargs) -> dict:
    """Metrics dict of a FlowCLAS model (torch module) or a runtime Backend on ``dataset``.

    This is what training's checkpoint selection calls. A module runs on ``device`` (None: where
    it already is) in eval mode (bf16 with ``autocast``) and gets its previous train/eval mode
    and device back afterwards. Keyword arguments of :func:`run_evaluation`.
    """
    if hasattr(model_or_backend, "infer"):
        return run_evaluation(backend_scorer(model_or_backend), dataset, **kwargs).metrics
    import torch

    model = model_or_backend
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"expected a torch module or a runtime Backend, got {type(model).__name__}")
    was_training, was_on = model.training, module_device(model)
    try:
        return run_evaluation(model_scorer(model, device, autocast), dataset, **kwargs).metrics
    finally:
        model.to(was_on).train(was_training)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def _jsonable(v):
    """NaN / inf -> null (strict JSON); numpy scalars -> Python."""
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
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
    (out / "metrics.json").write_text(json.dumps(_jsonable(metrics), indent=2) + "\n")
    summary = ", ".join(f"{k} {100 * metrics[k]:.2f}" for k in ("auprc", "fpr95", "auroc", "siou",
                                                                 "ppv", "mean_f1")
                        if isinstance(metrics.get(k), float) and math.isfinite(metrics[k]))
    print(f"{args.dataset}: {summary} ({metrics['n_images']} images, {metrics['n_pixels']} pixels, "
          f"{metrics['mode']}, {metrics['elapsed_s']:.1f} s, peak {metrics['peak_rss_mb']:.0f} MB) "
          f"-> {out / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
