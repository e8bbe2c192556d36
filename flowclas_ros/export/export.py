"""A training checkpoint -> a calibrated model bundle: what the ``export`` command does.

:func:`export_checkpoint` loads the checkpoint, calibrates the threshold and display range
(:mod:`.calibration`: a labelled folder, a robot's recording, or two photographs when there is
neither), optionally scores the model on the validation protocol at that threshold (the
figures go into the manifest and the model card), and writes the bundle (:mod:`.bundle`).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from flowclas_ros.bundle.preprocess import Resolution
from flowclas_ros.bundle.reader import Bundle
from flowclas_ros.bundle.writer import exceedance_section
from flowclas_ros.evaluation.scoring import model_scorer
from flowclas_ros.model.checkpoint import load_checkpoint
from flowclas_ros.model.config import ModelConfig
from flowclas_ros.model.flowclas import FlowCLAS

from .bundle import write_bundle
from .calibration import calibrate, calibrate_on_bag, photo_statistics

log = logging.getLogger("flowclas_ros.export")


def default_input_size(cfg: ModelConfig) -> tuple[int, int]:
    """DINOv2: 518 x 1036 (37 x 74 patches); CNNs: 480 x 640."""
    return (518, 1036) if cfg.backbone.name.startswith("dinov2") else (480, 640)


def load_checkpoint_model(path: str | Path, backbone_weights: str | None = None):
    """Load (model, checkpoint dict) from a training checkpoint.

    The backbone is rebuilt from its config.
    """
    data = load_checkpoint(path)
    cfg = ModelConfig.from_dict(data["model_config"])
    if backbone_weights:
        cfg.backbone.weights = backbone_weights
    model = FlowCLAS(cfg)
    model.load_trainable_state_dict(data["model"])
    return model.eval(), data


def export_checkpoint(checkpoint: str | Path, out: str | Path, *,
                      input_size: tuple[int, int] | None = None, dynamic: bool = False,
                      fp16: bool = False, opset: int = 17, exporter: str = "auto",
                      calibration: str | Path | None = None,
                      calibration_bag: str | Path | None = None,
                      topic: str | Sequence[str] | None = None,
                      fpr: float = 0.05, threshold: float | None = None,
                      protocol: str | Path | None = None, card_notes: str | None = None,
                      backbone_weights: str | None = None, device: str = "cpu",
                      verify: bool = True, resolution: dict | None = None,
                      ignore_mask: str | Path | None = None) -> Bundle:
    """Export ``checkpoint`` to the bundle ``out`` (see the module docstring).

    calibration: a folder dataset; calibration_bag + topic: a recording (takes precedence);
    neither: uncalibrated photo statistics. Several topics (a robot's cameras in one
    recording): each is calibrated on its own frames into ``threshold.per_topic`` (the node
    gives each camera the threshold and exceedance table of its input topic); the first also
    gives the bundle's own threshold, display range and exceedance table. threshold overrides
    the calibrated one (the FPR is then not recorded, nor the per-topic entries). card_notes:
    Markdown text appended to the model card.
    resolution: ``{"long_side": L}`` / ``{"pixels": P}`` (+ ``max_scale``): frames keep their
    aspect ratio (a dynamic graph; calibration scores every frame that way too); input_size is
    then the reference size the graph is verified at (default: a 2:1 frame at that resolution).
    ignore_mask: a PNG (non-zero = ignore: a car's hood, the robot's body) whose pixels are
    VOID in calibration (the node's ``ignore_mask``); the calibration's exceedance table goes
    into the manifest (``threshold.exceedance``, the node's detection score).
    """
    model, ckpt = load_checkpoint_model(checkpoint, backbone_weights)
    if resolution is not None:
        res = Resolution.of(resolution)
        size = tuple(input_size) if input_size else res.model_size(10**6, 2 * 10**6)
        scoring = res
    else:
        size = tuple(input_size) if input_size else default_input_size(model.config)
        scoring = size
    fpr_recorded = fpr
    ignore = None
    if ignore_mask:
        from flowclas_ros.outputs.ignore_mask import IgnoreMask, IgnoreMaskError

        try:
            ignore = IgnoreMask.from_file(ignore_mask)
        except IgnoreMaskError as exc:
            raise ValueError(str(exc)) from None
        if not (calibration_bag or calibration):
            raise ValueError("--ignore-mask applies to calibration: give --calibration-bag or "
                             "--calibration too")
    per_topic = None
    if calibration_bag:
        topics = [topic] if isinstance(topic, str) else list(topic or [])
        if not topics:
            raise ValueError("--calibration-bag needs --topic (the bag's camera topic)")
        if len(set(topics)) != len(topics) or not all(t.startswith("/") for t in topics):
            raise ValueError(f"--topic: give each camera topic once, as an absolute name "
                             f"(as the bag records it), got {topics}")
        cals = [calibrate_on_bag(model, calibration_bag, t, scoring, fpr, device, ignore=ignore)
                for t in topics]
        cal = cals[0]
        per_topic = {t: {"value": c["threshold"], "fpr": fpr,
                         "test_fpr": c["metrics"].get("test_fpr_at_threshold"),
                         "frames": c["metrics"].get("frames"),
                         **({"exceedance": _exceedance(c)} if c.get("exceedance") else {})}
                     for t, c in zip(topics, cals)}
    elif calibration:
        cal = calibrate(model, calibration, scoring, fpr, device, ignore=ignore)
    else:
        cal = photo_statistics(model, scoring, device)
        fpr_recorded = None
    model = model.cpu()
    thr, method = cal["threshold"], cal["threshold_method"]
    if threshold is not None:
        thr, fpr_recorded, method = threshold, None, "given on the command line (--threshold)"
        per_topic = None  # one threshold for every camera
    metrics = {}
    if ckpt.get("metrics"):
        metrics["checkpoint"] = ckpt["metrics"]
    if cal.get("metrics"):
        metrics["calibration"] = cal["metrics"]
    if protocol:
        from flowclas_ros.evaluation.protocol import evaluate_protocol

        report = evaluate_protocol(model_scorer(model, device, input_size=scoring), protocol,
                                   threshold=thr, log=log.info)
        metrics["protocol"] = {"threshold": thr, "score": report.get("score"),
                               "parts": report["parts"]}
        model = model.cpu()
    exceedance = _exceedance(cal) if cal.get("exceedance") else None
    bundle = write_bundle(model, out, input_size=size, threshold=thr,
                          score_range=cal["score_range"], threshold_fpr=fpr_recorded,
                          train_config=ckpt.get("train_config"), metrics=metrics or None,
                          opset=opset, dynamic=dynamic, fp16=fp16, threshold_method=method,
                          score_range_method=cal["score_range_method"], exporter=exporter,
                          verify=verify, card_notes=card_notes, resolution=resolution,
                          exceedance=exceedance, topic_thresholds=per_topic)
    ver = bundle.manifest["onnx"]["verification"] or {}
    if ver.get("relative_to_score_range", 0.0) > (1e-2 if fp16 else 1e-3):
        log.warning("ONNX Runtime differs from torch by %.2g of the score range",
                    ver["relative_to_score_range"])
    return bundle


def _exceedance(cal: dict) -> dict:
    """Return the manifest section of a calibration's exceedance table (a detection's score)."""
    exc = cal["exceedance"]
    return exceedance_section(exc["table"], exc["pixels"], exc["source"])


__all__ = ["default_input_size", "export_checkpoint", "load_checkpoint_model"]
