"""Writing a bundle's files: the weights, the manifest with every file's hash, the model card.

Only :mod:`flowclas_ros.export` writes bundles: it stages a folder with :func:`staged`, exports
the graph into it (``model.onnx``), then calls :func:`save_weights`, :func:`make_manifest` and
:func:`finish`. The folder becomes the bundle only when all of it succeeded, so a failed export
never leaves a half-written bundle. The manifest is strict JSON (NaN and infinity as null).
"""
from __future__ import annotations

import datetime as _dt
import importlib.metadata as md
import math
import platform
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from flowclas_ros import jsonio
from flowclas_ros.model.upgrade import LAYOUT

from .graph import INPUT_NAME, OUTPUT_NAME
from .hashing import config_sha256, sha256_file
from .model_card import model_card
from .preprocess import RESIZE_METHOD, Resolution
from .reader import FORMAT, FORMAT_VERSION, MANIFEST, MODEL_CARD, ONNX_FILE, WEIGHTS_FILE


@contextmanager
def staged(out_dir: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``out_dir`` to write into.

    It replaces ``out_dir`` (an existing bundle) when the block succeeds and is removed when it
    fails. A folder that exists and is not a bundle is never replaced.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not (out_dir / MANIFEST).is_file() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not a bundle; refusing to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the bundle is read by other users (ROS)
    try:
        yield tmp
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.replace(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_weights(model, folder: Path) -> None:
    """Save the full FlowCLAS state dict (backbone included) as ``weights.safetensors``."""
    from safetensors.torch import save_file

    sd = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(sd, str(folder / WEIGHTS_FILE), metadata={"format": FORMAT})


def library_versions() -> dict[str, str | None]:
    import flowclas_ros

    out: dict[str, str | None] = {"python": platform.python_version(),
                                  "flowclas_ros": flowclas_ros.__version__}
    for name in ("torch", "onnx", "onnxruntime", "onnxscript", "timm", "safetensors", "numpy"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def load_train_config(train_config: Any) -> Any:
    """Return a training config given as a dict, or read it from a YAML file."""
    if isinstance(train_config, (str, Path)) and Path(train_config).is_file():
        import yaml

        return yaml.safe_load(Path(train_config).read_text())
    return train_config


def make_manifest(model, *, input_size: tuple[int, int], threshold: float,
                  score_range: tuple[float, float], onnx: dict, threshold_fpr: float | None = None,
                  threshold_method: str | None = None, score_range_method: str | None = None,
                  metrics: dict | None = None, train_config: Any = None,
                  resolution: Resolution | dict | None = None,
                  exceedance: dict | None = None,
                  topic_thresholds: dict[str, dict] | None = None) -> dict:
    """Build the manifest of ``model`` (a FlowCLAS) exported at ``input_size``.

    See :mod:`.reader` for the fields; ``onnx`` is the graph's section (file aside).
    ``resolution``: frames keep their aspect ratio, scaled to it (the graph must be dynamic);
    None: every frame is resized to ``input_size``. ``exceedance``: the calibration set's
    exceedance table as ``{levels, scores, pixels, source}`` (:func:`exceedance_section`).
    ``topic_thresholds``: ``{topic: {value, fpr, ...}}``, each camera topic of a calibration
    recording calibrated on its own frames (``threshold.per_topic``).
    """
    h, w = (int(v) for v in input_size)
    lo, hi = (float(v) for v in score_range)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"score_range must be finite with lo < hi, got {score_range}")
    if not math.isfinite(float(threshold)):
        raise ValueError(f"threshold must be finite, got {threshold}")
    train_config = load_train_config(train_config)
    spec = Resolution.of(resolution).to_dict() if resolution is not None else None
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": {"config": model.config.to_dict(), "channels": model.channels,
                  "stride": model.stride, "score": model.config.score,
                  "higher_is_anomalous": True},
        "input": {"size": [h, w], "pad_multiple": model.backbone.pad_multiple,
                  "channel_order": "RGB", "layout": "NCHW", "dtype": "float32",
                  "value_range": [0.0, 1.0], "mean": model.mean.flatten().tolist(),
                  "std": model.std.flatten().tolist(), "normalised_in_graph": True,
                  "padded_in_graph": True, "resize": RESIZE_METHOD,
                  **({"resolution": spec} if spec else {})},
        "output": {"shape": [1, h, w], "dtype": "float32",
                   "meaning": "raw anomaly score per input pixel (higher = more anomalous)"},
        "onnx": {"file": ONNX_FILE, "input_name": INPUT_NAME, "output_name": OUTPUT_NAME, **onnx},
        "weights": {"file": WEIGHTS_FILE, "format": "safetensors", "layout": LAYOUT,
                    "content": "full FlowCLAS state dict (backbone included)"},
        "score_range": [lo, hi],
        "score_range_method": score_range_method or "given",
        "threshold": {"value": float(threshold), "fpr": threshold_fpr,
                      "method": threshold_method or (
                          "given" if threshold_fpr is None else
                          f"smallest threshold with inlier-pixel FPR <= {threshold_fpr}"),
                      **({"exceedance": exceedance} if exceedance else {}),
                      **({"per_topic": jsonio.to_json(topic_thresholds)}
                         if topic_thresholds else {})},
        "metrics": jsonio.to_json(metrics) if metrics is not None else None,
        "train_config": jsonio.to_json(train_config) if train_config is not None else None,
        "train_config_sha256": config_sha256(train_config) if train_config is not None else None,
        "versions": library_versions(),
        "files": {},
    }


def exceedance_section(table, pixels: int | None = None, source: str = "") -> dict:
    """Make the manifest's ``threshold.exceedance`` of a (K, 2) ``[level, score]`` table.

    The table is flowclas_ros.outputs.regions.exceedance_table's; the section holds two flat
    lists, the number of normal calibration pixels it was made of and where they came from.
    """
    rows = [[float(a), float(b)] for a, b in table]
    return {"levels": [r[0] for r in rows], "scores": [r[1] for r in rows],
            "pixels": None if pixels is None else int(pixels), "source": str(source),
            "meaning": "fraction of the calibration set's normal pixels scoring below a value"}


def finish(folder: Path, manifest: dict, card_notes: str | None = None) -> None:
    """Hash every file of ``folder`` into the manifest, then write the manifest and card.

    The manifest goes to manifest.json (strict JSON), the card to MODEL_CARD.md (with
    ``card_notes`` appended).
    """
    for f in sorted(folder.iterdir()):
        f.chmod(0o644)  # some writers create private files; the bundle is shared read-only
        if f.is_file() and f.name not in (MANIFEST, MODEL_CARD):
            manifest["files"][f.name] = {"sha256": sha256_file(f), "bytes": f.stat().st_size}
    (folder / MANIFEST).write_text(jsonio.dumps(manifest, indent=2) + "\n")
    card = model_card(manifest)
    if card_notes:
        card += "\n" + card_notes.strip() + "\n"
    (folder / MODEL_CARD).write_text(card)


__all__ = ["exceedance_section", "finish", "library_versions", "load_train_config",
           "make_manifest", "save_weights", "staged"]
