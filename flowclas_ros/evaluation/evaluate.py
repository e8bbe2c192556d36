"""Benchmark evaluation (METHOD.md section 8): the metrics of a score source on a dataset.

:func:`run_evaluation` scores every frame (a :data:`~.scoring.Scorer` or an iterable of maps in
dataset order) and computes AUPRC, FPR95 and AUROC (exact, or streaming with fixed memory) and,
with a track, SMIYC's component metrics (sIoU, PPV, mean F1). Component metrics need the
dataset's best-F1 threshold before the first component can be formed, so they take a second
pass over maps cached in a temporary folder (or kept with ``save_scores``).
:func:`evaluate_model` is what training's checkpoint selection calls. The ``evaluate`` command
is :mod:`flowclas_ros.tools.evaluate`.
"""
from __future__ import annotations

import math
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .components import ComponentConfig, ComponentMetrics, track_config
from .metrics import ExactPixelMetrics, PixelResult
from .plots import Example
from .scoring import EvaluationError, Scorer, backend_scorer, model_scorer, module_device
from .streaming_metrics import StreamingPixelMetrics

OBSTACLE_DATASETS = ("smiyc_obstacle", "lost_and_found")
COMPONENT_CHOICES = ("auto", "anomaly", "obstacle", "none")
def default_track(dataset: str) -> str:
    return "obstacle" if dataset in OBSTACLE_DATASETS else "anomaly"


def load_dataset(name: str, root: str | Path, split: str = "test"):
    """Build a dataset with the reader of flowclas_ros.data.

    Imported here: evaluation does not need it.
    """
    from flowclas_ros.data.datasets import build_dataset

    return build_dataset(name, root, split)


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
        raise EvaluationError(f"score map for image {name!r} has shape {score.shape} but its "
                              f"label is {label.shape}: maps must be (H, W) at the image's "
                              "resolution")
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
    want = set(np.linspace(0, n - 1, n_examples).round().astype(int).tolist()
               if n_examples else [])
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
    """Return the metrics dict of score maps against ``dataset``.

    Keyword arguments of :func:`run_evaluation`.
    """
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
        raise TypeError("expected a torch module or a runtime Backend, "
                        f"got {type(model).__name__}")
    was_training, was_on = model.training, module_device(model)
    try:
        return run_evaluation(model_scorer(model, device, autocast), dataset, **kwargs).metrics
    finally:
        model.to(was_on).train(was_training)


__all__ = ["COMPONENT_CHOICES", "Evaluation", "EvaluationError", "OBSTACLE_DATASETS",
           "default_track", "evaluate_model", "evaluate_scores", "load_dataset",
           "run_evaluation"]
