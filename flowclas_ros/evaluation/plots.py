"""Figures written beside metrics.json: PR and ROC curves, and a grid of example heatmaps.

Uses matplotlib's object API with the Agg canvas, never pyplot, so no display and no global state.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .metrics import PixelResult

MAX_SIDE = 480  # examples are kept at most this large (pixels) to bound memory


@dataclass
class Example:
    """One frame for the heatmap grid, downsampled by striding."""

    name: str
    image: np.ndarray  # (h, w, 3) uint8 RGB
    label: np.ndarray  # (h, w) uint8 0/1/255
    score: np.ndarray  # (h, w) float32

    @classmethod
    def from_frame(cls, name: str, image, label, score, max_side: int = MAX_SIDE) -> "Example":
        h, w = label.shape
        step = max(1, int(np.ceil(max(h, w) / max_side)))
        sl = (slice(None, None, step), slice(None, None, step))
        return cls(name, np.array(image[sl]), np.array(label[sl]),
                   np.asarray(score[sl], dtype=np.float32).copy())


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=100)
    return path


def plot_curves(result: PixelResult, path: str | Path, title: str = "") -> Path:
    """PR (left) and ROC (right, log FPR) curves with AUPRC, AUROC and the FPR95 point."""
    fig = Figure(figsize=(11, 4.6))
    ax_pr, ax_roc = fig.subplots(1, 2)
    ax_pr.step(result.recall, result.precision, where="post",
               label=f"AUPRC {100 * result.auprc:.2f}")
    ax_pr.axhline(result.n_pos / max(1, result.n_pos + result.n_neg), color="grey", lw=0.8,
                  ls="--", label="chance")
    ax_pr.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.01), title="PR")
    ax_roc.plot(result.fpr, result.tpr, label=f"AUROC {100 * result.auroc:.2f}")
    if np.isfinite(result.fpr95):
        ax_roc.plot([result.fpr95], [0.95], "o", color="C3",
                    label=f"FPR95 {100 * result.fpr95:.2f}")
    ax_roc.set(xlabel="false positive rate", ylabel="true positive rate", ylim=(0, 1.01),
               title="ROC")
    positive_fpr = result.fpr[result.fpr > 0]
    if positive_fpr.size:
        ax_roc.set_xscale("log")
        ax_roc.set_xlim(max(positive_fpr.min(), 1e-6), 1)
    for ax in (ax_pr, ax_roc):
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower left" if ax is ax_pr else "lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def _label_rgb(label: np.ndarray) -> np.ndarray:
    """Inlier dark grey, anomaly red, void white."""
    out = np.full(label.shape + (3,), 40, np.uint8)
    out[label == 1] = (230, 30, 30)
    out[label == 255] = (255, 255, 255)
    return out


def plot_examples(examples: list[Example], path: str | Path, threshold: float | None = None,
                  score_range: tuple[float, float] | None = None) -> Path:
    """Rows of (image, label, anomaly score); the score colour range is shared by all rows.

    score_range: (lo, hi) for the colour map; None takes the 1st/99.9th percentile of all
    examples' finite scores. threshold: drawn as a white contour on the score when given.
    """
    if not examples:
        raise ValueError("no examples to plot")
    if score_range is None:
        finite = np.concatenate([e.score[np.isfinite(e.score)].ravel() for e in examples])
        lo, hi = (np.percentile(finite, [1, 99.9]) if finite.size else (0.0, 1.0))
        score_range = (float(lo), float(hi) if hi > lo else float(lo) + 1.0)
    n = len(examples)
    aspect = examples[0].label.shape[1] / examples[0].label.shape[0]
    fig = Figure(figsize=(3 * 3.2 * aspect / 1.6 + 0.6, 2.2 * n + 0.4))
    axes = np.atleast_2d(fig.subplots(n, 3))
    for row, e in zip(axes, examples):
        row[0].imshow(e.image)
        row[0].set_title(e.name, fontsize=8)
        row[1].imshow(_label_rgb(e.label))
        row[1].set_title("label (red anomaly, white void)", fontsize=8)
        im = row[2].imshow(np.nan_to_num(e.score, nan=score_range[0]), cmap="turbo",
                           vmin=score_range[0], vmax=score_range[1])
        if threshold is not None and np.isfinite(threshold):
            flagged = (e.score >= threshold).astype(np.float32)
            if 0 < flagged.sum() < flagged.size:
                row[2].contour(flagged, levels=[0.5], colors="white", linewidths=0.6)
        row[2].set_title("anomaly score", fontsize=8)
        fig.colorbar(im, ax=row[2], fraction=0.046, pad=0.02)
        for ax in row:
            ax.set_axis_off()
    fig.tight_layout()
    return _save(fig, path)
