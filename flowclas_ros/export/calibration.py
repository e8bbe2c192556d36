"""Calibration: the mask threshold and display range of a model, scored as the runtime runs it.

* :func:`calibrate` on a labelled folder (``images/``, ``labels/`` with 0 inlier, 1 anomaly,
  255 void; without ``labels/`` every pixel is an inlier): every frame is scored exactly as the
  runtime does (resize to the input size, score, bilinear back to the frame's size), then
  threshold = the smallest threshold whose false-positive rate on inlier pixels is <= ``fpr``;
  score_range = (1st percentile of inlier scores, 99.9th percentile of all valid scores), so
  typical background maps to the cold end of the colour map and only the top 0.1 % saturate.
  AUPRC / FPR95 / AUROC on that set go into the manifest's metrics.
* :func:`calibrate_on_bag`: the same on a robot's recording of normal operation (its
  calibration part by time), the rate then measured on its held-out test part.
* ``ignore`` (an :class:`~flowclas_ros.outputs.ignore_mask.IgnoreMask`, ``export
  --ignore-mask``): its pixels (a car's hood, the robot's body) are VOID in every calibration
  and test frame, so they count neither as normal pixels nor towards the false-positive rate,
  as the node never reports them.
* Every calibration also records the **exceedance table** of its inlier scores
  (:func:`flowclas_ros.outputs.regions.exceedance_table`, the manifest's
  ``threshold.exceedance``): a detection's score in the node is the fraction of these normal
  pixels that score below the region's peak.
* :func:`photo_statistics`: without calibration data, the same percentiles over two real
  photographs (scikit-image's astronaut and coffee) and a placeholder threshold, recorded as
  uncalibrated.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from flowclas_ros.bundle.onnx_export import sample_images
from flowclas_ros.data.datasets import Sample, build_dataset
from flowclas_ros.evaluation.metrics import pixel_metrics, threshold_at_fpr
from flowclas_ros.evaluation.scoring import IgnoringDataset, model_scorer
from flowclas_ros.labels import ANOMALY, INLIER, VOID
from flowclas_ros.model.flowclas import FlowCLAS
from flowclas_ros.outputs.regions import exceedance_table

log = logging.getLogger("flowclas_ros.export")

INLIER_LO_PCT, ALL_HI_PCT = 1.0, 99.9


def _valid_scores(model: FlowCLAS, dataset, input_size,
                  device) -> tuple[np.ndarray, np.ndarray, int]:
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
              device: str = "cpu", name: str | None = None, ignore=None) -> dict:
    """Calibrate the threshold at ``fpr`` and the display range on a labelled folder dataset.

    See the module doc. ``root`` may also be an ImageDataset (``name`` then says what it is);
    ``ignore``: an IgnoreMask whose pixels are VOID.
    """
    dataset = build_dataset("folder", root) if isinstance(root, (str, Path)) else root
    name = name or Path(root).name
    if ignore is not None:
        dataset = IgnoringDataset(dataset, ignore)
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
    if ignore is not None:
        metrics["ignore_mask"] = {"file": getattr(ignore, "source", ""),
                                  "fraction": float(getattr(ignore, "fraction", float("nan")))}
    log.info("calibrated on %d frames: threshold %.5g at FPR %.3g, score range (%.4g, %.4g)",
             n, thr, fpr, lo, hi)
    return {"threshold": thr, "score_range": (lo, hi), "metrics": metrics,
            "exceedance": {"table": exceedance_table(inl), "pixels": int(inl.size),
                           "source": f"inlier pixels of {n} frames of {name}"
                                     + (" (ignore mask applied)" if ignore is not None else "")},
            "threshold_method": f"smallest threshold with inlier-pixel FPR <= {fpr} on {n} frames "
                                f"of {name} (scored as the runtime does)",
            "score_range_method": f"({INLIER_LO_PCT}th percentile of inlier scores, "
                                  f"{ALL_HI_PCT}th percentile of all valid scores) on {name}"}


def calibrate_on_bag(model: FlowCLAS, bag: str | Path, topic: str, input_size: tuple[int, int],
                     fpr: float, device: str = "cpu", stride: int = 1, ignore=None) -> dict:
    """Calibrate the threshold on a bag of the robot's own normal frames.

    At most ``fpr`` of the pixels of those frames are flagged: calibrated on the bag's
    ``calibration`` part (every pixel an inlier: a recording of normal operation), the rate then
    measured on its held-out ``test`` part (later in time). ``ignore``: an IgnoreMask whose
    pixels are VOID in both parts.
    """
    from flowclas_ros.data.bags import bag_dataset

    cal_set = bag_dataset(bag, "calibration", topic=topic, stride=stride, log=log.info)
    test_set = bag_dataset(bag, "test", topic=topic, stride=stride, log=log.info)
    if len(cal_set) == 0:
        raise ValueError(f"bag {bag}: its calibration part (by time) has no frames of {topic}")
    label = f"the calibration part of {Path(bag).name} ({topic})"
    cal = calibrate(model, cal_set, input_size, fpr, device, name=label, ignore=ignore)
    if len(test_set):
        if ignore is not None:
            test_set = IgnoringDataset(test_set, ignore)
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


__all__ = ["ALL_HI_PCT", "INLIER_LO_PCT", "calibrate", "calibrate_on_bag", "photo_statistics"]
