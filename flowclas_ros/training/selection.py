"""Checkpoint selection.

The validation set or protocol a run is scored on, the scoring, and which step's checkpoint is
kept as best.pt.

``eval.protocol`` scores the validation protocol (:mod:`flowclas_ros.evaluation.protocol`) and
keeps the best selection score; ``eval.val_dir`` scores a folder of pasted frames and keeps the
best AUPRC. Either is built on rank 0 when missing and ``eval.build_if_missing`` is set.

The protocol is scored as the bundle will run (:func:`eval_resolution`: ``eval.input_size``, or
``eval.long_side`` for an aspect-keeping bundle) on ``eval.parts`` (default: the legacy
selection parts and kitti_clean, as always; with the small-obstacle parts among them and built,
the score weighs those as much as the rest, :func:`~flowclas_ros.evaluation.combined_score`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..bundle.preprocess import Resolution
from ..data.datasets import build_dataset
from ..data.protocol_sets import FULL_PARTS, PROTOCOL_FILE, ProtocolConfig, load_protocol
from ..data.validation_set import build_validation_set
from ..evaluation import (
    CALIBRATION_PART,
    SELECTION_PARTS,
    evaluate_model,
    evaluate_model_on_protocol,
)
from .config import ConfigError, EvalConfig, TrainConfig
from .distributed import DistInfo
from .inputs import outlier_source_kw

SELECTION_METRICS = ("auprc", "fpr95", "auroc")


def eval_resolution(e: EvalConfig) -> tuple[int, int] | Resolution:
    """Return how the protocol's frames reach the model.

    ``eval.long_side`` (aspect kept, never enlarged), else resized to ``eval.input_size``.
    """
    return Resolution(long_side=e.long_side) if e.long_side else tuple(e.input_size)


class CheckpointSelection:
    """The validation set of ``cfg.eval``, its scores, and the best figures so far.

    ``best`` is saved in every checkpoint so that a resumed run keeps selecting against them.
    """

    def __init__(self, cfg: TrainConfig, dist: DistInfo, log: Callable[[str], None]):
        self.cfg, self.dist, self.log = cfg, dist, log
        self.best: dict[str, Any] = {"auprc": -1.0, "step": -1}

    @property
    def key(self) -> str:
        """What best.pt maximises: the protocol's selection score, else the folder's AUPRC."""
        return "score" if self.cfg.eval.protocol else "auprc"

    def validation_set(self):
        """Return the protocol folder, or the validation folder dataset, or None.

        Either is built if asked.
        """
        e = self.cfg.eval
        if e.protocol:
            path = Path(e.protocol)
            if not (path / PROTOCOL_FILE).is_file() and e.build_if_missing:
                if self.dist.is_main:
                    self.log(f"building the validation protocol {path}")
                    self._build_protocol(path)
                self.dist.barrier()
            if not (path / PROTOCOL_FILE).is_file():
                raise FileNotFoundError(
                    f"eval.protocol {path} is not built: run python -m "
                    f"flowclas_ros.data.protocol_sets --data ../shared/data --out {path}, set "
                    f"eval.build_if_missing=true, or eval.protocol=null")
            return path
        if not e.val_dir:
            return None
        val_dir = Path(e.val_dir)
        if not val_dir.is_dir() and e.build_if_missing:
            if self.dist.is_main:
                self._build_validation_set(val_dir)
            self.dist.barrier()
        if not val_dir.is_dir():
            raise FileNotFoundError(
                f"eval.val_dir {val_dir} does not exist: build it with python -m "
                f"flowclas_ros.data.validation_set, set eval.build_if_missing=true, or "
                f"eval.val_dir=null")
        return build_dataset("folder", val_dir)

    def _build_protocol(self, path: Path) -> None:
        """Build the legacy parts, or every part when ``eval.parts`` names a small-obstacle one.

        The small-obstacle parts are built with the road segmentation they need
        (evaluation.protocol_build).
        """
        from ..evaluation.protocol_build import build_protocol

        e = self.cfg.eval
        legacy = ProtocolConfig().parts
        full = any(p not in legacy for p in e.parts or [])
        build_protocol(e.protocol_data, path,
                       ProtocolConfig(parts=FULL_PARTS) if full else ProtocolConfig(),
                       log=self.log)

    def _build_validation_set(self, val_dir: Path) -> None:
        d, e = self.cfg.data, self.cfg.eval
        if d.dataset != "camvid":
            raise ConfigError("eval.build_if_missing builds from CamVid: "
                              "data.dataset must be camvid")
        if not d.outliers:
            raise ConfigError("eval.build_if_missing needs data.outliers")
        self.log(f"building the validation set {val_dir}")
        build_validation_set(d.root, d.outliers, val_dir, splits=tuple(e.build_splits),
                             seed=e.build_seed, limit=e.build_limit,
                             split_seed=d.outlier_split_seed,
                             val_fraction=d.outlier_val_fraction, outlier_kw=outlier_source_kw(d))

    def score(self, model, val_set, autocast: bool) -> dict[str, Any]:
        """Return the selection figures of ``model`` on ``val_set``.

        ``val_set`` is what :meth:`validation_set` returns.
        """
        e = self.cfg.eval
        if e.protocol:
            wanted = e.parts or SELECTION_PARTS + (CALIBRATION_PART,)
            built = load_protocol(val_set)["parts"]  # parts it lacks are not asked for
            r = evaluate_model_on_protocol(
                model, val_set, eval_resolution(e), autocast=autocast, fpr=e.fpr,
                parts=tuple(p for p in wanted if p in built), limit=e.limit)
            scored = [p for p in r["parts"] if "auprc" in r["parts"][p]]
            means = [r["parts"][p] for p in scored if p in SELECTION_PARTS] or [
                r["parts"][p] for p in scored]
            extra = {k: r[k] for k in ("score_legacy", "score_obstacles") if k in r}
            return {"score": r.get("score", float("nan")), **extra,
                    **{k: float(np.mean([q[k] for q in means])) if means else float("nan")
                       for k in SELECTION_METRICS},
                    "parts": {p: {k: v for k, v in r["parts"][p].items()
                                  if k in SELECTION_METRICS or k.startswith(("road_", "recall"))}
                              for p in scored}}
        result = evaluate_model(model, val_set, limit=e.limit, autocast=autocast,
                                progress=self.cfg.train.progress)
        return {k: float(result[k]) for k in SELECTION_METRICS}

    def offer(self, step: int, metrics: dict[str, Any]) -> bool:
        """Whether ``metrics`` of ``step`` beat the best so far (then they are the best)."""
        improved = metrics[self.key] > self.best.get(self.key, -1.0)
        if improved:
            self.best = {"step": step, **metrics}
        return improved

    def report(self, step: int, metrics: dict[str, Any], improved: bool) -> str:
        shown = f"score {metrics['score']:.4f} " if "score" in metrics else ""
        return (f"step {step}: validation {shown}AUPRC {100 * metrics['auprc']:.2f} "
                f"FPR95 {100 * metrics['fpr95']:.2f} AUROC {100 * metrics['auroc']:.2f}"
                + ("  (new best, saved best.pt)" if improved else
                   f"  (best {self.best[self.key]:.4f} at step {self.best['step']})"))


__all__ = ["SELECTION_METRICS", "CheckpointSelection"]
