"""``write_bundle``: a FlowCLAS model -> a validated bundle directory (graph, weights, manifest).

The bundle's format and reader live in :mod:`flowclas_ros.bundle`; this module is the exporting
side: it stages a folder (:func:`flowclas_ros.bundle.writer.staged`), exports and verifies the
ONNX graph into it (:mod:`flowclas_ros.bundle.onnx_export`), saves the weights, writes the
manifest and model card, and returns the bundle as the runtime will load it.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from flowclas_ros.bundle import reader as _reader
from flowclas_ros.bundle import writer
from flowclas_ros.bundle.onnx_export import export_onnx, verify_onnx
from flowclas_ros.model.flowclas import FlowCLAS

log = logging.getLogger("flowclas_ros.export")


def write_bundle(model: FlowCLAS, out_dir: str | Path, *, input_size: tuple[int, int],
                 threshold: float, score_range: tuple[float, float],
                 threshold_fpr: float | None = None, train_config: Any = None,
                 metrics: dict | None = None, opset: int = 17, dynamic: bool = False,
                 fp16: bool = False, threshold_method: str | None = None,
                 score_range_method: str | None = None, exporter: str = "auto",
                 verify: bool = True, card_notes: str | None = None,
                 resolution: dict | None = None,
                 exceedance: dict | None = None,
                 topic_thresholds: dict[str, dict] | None = None) -> _reader.Bundle:
    """Export ``model`` to a bundle directory ``out_dir`` and return it, loaded and validated.

    input_size (H, W): the graph's input size (and the size the runtime resizes frames to).
    threshold: mask threshold on the raw score; threshold_fpr the inlier false-positive rate it
    was calibrated at (None = not calibrated). score_range (lo, hi): the display range.
    train_config: a dict, or a YAML file, stored with its sha256. opset: the minimum opset (the
    dynamo exporter emits 18 or newer). exporter: "auto" | "dynamo" | "torchscript" (see
    :func:`flowclas_ros.bundle.onnx_export.export_onnx`). verify: compare ONNX Runtime with
    torch on a real photograph and record the difference. card_notes: Markdown appended to the
    card.
    resolution: ``{"long_side": L}`` and/or ``{"pixels": P}`` (and ``max_scale``): frames keep
    their aspect ratio, scaled to it, through a graph with dynamic H and W (``input_size`` is
    then the reference size the graph is verified at); None: frames are resized to input_size.
    exceedance: the calibration set's exceedance table as the manifest's
    ``threshold.exceedance`` (:func:`flowclas_ros.bundle.writer.exceedance_section`).
    topic_thresholds: ``{topic: {value, fpr, ...}}`` (``threshold.per_topic``): the thresholds
    of the cameras of a multi-camera calibration recording, each on its own frames.

    A failed export never leaves a half-written bundle; an existing bundle at ``out_dir`` is
    replaced.
    """
    h, w = (int(v) for v in input_size)
    model = model.eval().cpu().float()
    dynamic = dynamic or resolution is not None
    with writer.staged(out_dir) as tmp:
        # the cheap checks first, before minutes of export
        writer.make_manifest(model, input_size=(h, w), threshold=threshold,
                             score_range=score_range, onnx={}, resolution=resolution)
        info = export_onnx(model, tmp / _reader.ONNX_FILE, (h, w), opset=opset, dynamic=dynamic,
                           fp16=fp16, exporter=exporter)
        verification = (verify_onnx(model, tmp / _reader.ONNX_FILE, (h, w),
                                    score_range=tuple(float(v) for v in score_range))
                        if verify else None)
        writer.save_weights(model, tmp)
        onnx = {"opset": info["opset"], "requested_opset": opset, "exporter": info["exporter"],
                "exporter_note": info.get("note"), "dynamic": bool(dynamic), "fp16": bool(fp16),
                "passes": info.get("passes"), "verification": verification}
        manifest = writer.make_manifest(
            model, input_size=(h, w), threshold=threshold, score_range=score_range, onnx=onnx,
            threshold_fpr=threshold_fpr, threshold_method=threshold_method,
            score_range_method=score_range_method, metrics=metrics, train_config=train_config,
            resolution=resolution, exceedance=exceedance, topic_thresholds=topic_thresholds)
        writer.finish(tmp, manifest, card_notes)
    bundle = _reader.load_bundle(out_dir)
    log.info("wrote bundle %s (%s exporter, opset %s)", out_dir, info["exporter"], info["opset"])
    return bundle


def regraph_bundle(path: str | Path, out_dir: str | Path | None = None, *,
                   exporter: str = "auto", verify: bool = True) -> _reader.Bundle:
    """Export a bundle's graph again with today's exporter, keeping everything else.

    The model is rebuilt from the bundle's own weights, so thresholds, calibration, metrics and
    card notes carry over unchanged; only ``model.onnx`` and the manifest's ``onnx`` section
    (and the file hashes, library versions) are new. For bundles exported before a graph
    rewrite of :mod:`flowclas_ros.bundle.onnx_passes` existed. ``out_dir`` defaults to the
    bundle itself (replaced only once the new one is complete).
    """
    import json
    import shutil

    from flowclas_ros.bundle.model_card import model_card
    from flowclas_ros.bundle.torch_model import build_torch_model

    bundle = _reader.load_bundle(path)
    out_dir = Path(out_dir) if out_dir is not None else bundle.path
    manifest = json.loads((bundle.path / _reader.MANIFEST).read_text())
    old = manifest["onnx"]
    card = (bundle.path / _reader.MODEL_CARD).read_text()
    generated = model_card(manifest)
    notes = card[len(generated):].strip() if card.startswith(generated) else None
    model = build_torch_model(bundle)
    h, w = bundle.input_size
    with writer.staged(out_dir) as tmp:
        info = export_onnx(model, tmp / _reader.ONNX_FILE, (h, w), opset=old["requested_opset"],
                           dynamic=bool(old["dynamic"]), fp16=bool(old["fp16"]),
                           exporter=exporter)
        verification = (verify_onnx(model, tmp / _reader.ONNX_FILE, (h, w),
                                    score_range=tuple(manifest["score_range"]))
                        if verify else None)
        shutil.copy2(bundle.weights_path, tmp / _reader.WEIGHTS_FILE)
        manifest["onnx"] = {**old, "opset": info["opset"], "exporter": info["exporter"],
                            "exporter_note": info.get("note"), "passes": info.get("passes"),
                            "verification": verification}
        manifest["versions"] = writer.library_versions()
        manifest["files"] = {}
        writer.finish(tmp, manifest, notes)
    log.info("re-exported the graph of %s into %s", bundle.path, out_dir)
    return _reader.load_bundle(out_dir)


_MOVED = dict.fromkeys(("FORMAT", "FORMAT_VERSION", "MANIFEST", "ONNX_FILE", "WEIGHTS_FILE",
                        "MODEL_CARD", "Bundle", "BundleError", "load_bundle"),
                       "flowclas_ros.bundle.reader")
_MOVED.update(build_torch_model="flowclas_ros.bundle.torch_model",
              sha256_file="flowclas_ros.bundle.hashing",
              config_sha256="flowclas_ros.bundle.hashing",
              canonical_json="flowclas_ros.bundle.hashing",
              INPUT_NAME="flowclas_ros.bundle.graph", OUTPUT_NAME="flowclas_ros.bundle.graph",
              RESIZE_METHOD="flowclas_ros.bundle.preprocess",
              library_versions="flowclas_ros.bundle.writer")


def __getattr__(name):
    """Resolve the names that moved to flowclas_ros.bundle, with a FutureWarning.

    The bundle's reader moved to flowclas_ros.bundle in 0.2 (the runtime no longer reaches into
    the exporter to load a model); the old names still resolve, with a warning.
    """
    if name in _MOVED:
        import importlib

        value = getattr(importlib.import_module(_MOVED[name]), name)
        warnings.warn(f"flowclas_ros.export.bundle.{name} moved to {_MOVED[name]}.{name}",
                      FutureWarning, stacklevel=2)
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["regraph_bundle", "write_bundle"]
