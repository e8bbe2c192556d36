"""The model bundle: the one artifact that training/export produces and the runtime consumes.

A bundle is a directory::

    manifest.json          what the graph expects and how to read its output (below)
    model.onnx             image in, score map out (normalisation and padding inside the graph)
    [model.onnx.data]      the graph's weights, only for graphs over ~2 GB (ViT-g)
    weights.safetensors    the full FlowCLAS state dict, backbone included (no network to load)
    MODEL_CARD.md          a human-readable summary (not validated)

``manifest.json`` (format ``flowclas_ros.bundle``, version :data:`FORMAT_VERSION`)::

    format, format_version, created_utc
    model:   config (ModelConfig.to_dict()), channels, stride, score ("nll" | "latent"),
             higher_is_anomalous
    input:   size [H, W] the graph was exported at, pad_multiple, channel_order "RGB",
             layout "NCHW", dtype "float32", value_range [0, 1], mean, std,
             normalised_in_graph, padded_in_graph, resize (how the runtime resizes frames)
    output:  shape [1, H, W], dtype "float32", meaning
    onnx:    file, input_name, output_name, opset, requested_opset, exporter ("dynamo" |
             "torchscript"), dynamic, fp16, verification {image, provider, max_abs_diff,
             relative_to_score_range, ...}
    weights: file, format "safetensors", content
    score_range [lo, hi] + score_range_method: raw scores mapped to [0, 1] for display
    threshold: {value, fpr (None = not calibrated), method}
    metrics, train_config, train_config_sha256 (sha256 of the canonical JSON of train_config)
    versions: torch, onnx, onnxruntime, onnxscript, timm, flowclas_ros, python
    files:   {name: {sha256, bytes}} for every file the runtime reads

:func:`load_bundle` checks all of it and raises :class:`BundleError` naming exactly what is
wrong (missing file, format too new, manifest vs graph/weights mismatch, corrupted file).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from flowclas_ros.model import FlowCLAS, ModelConfig
from flowclas_ros.model.upgrade import upgrade_state_dict

log = logging.getLogger("flowclas_ros.export")

FORMAT = "flowclas_ros.bundle"
FORMAT_VERSION = 2  # = the weights' state-dict layout (flowclas_ros.model.upgrade); 1 loads too
MANIFEST = "manifest.json"
ONNX_FILE = "model.onnx"
WEIGHTS_FILE = "weights.safetensors"
MODEL_CARD = "MODEL_CARD.md"
INPUT_NAME, OUTPUT_NAME = "image", "score"
RESIZE_METHOD = "bilinear, half-pixel centres (align_corners=False), antialiased where the frame shrinks (as torch antialias=True)"


class BundleError(ValueError):
    """A bundle that cannot be used; the message says what is wrong and what to do."""


@dataclass
class Bundle:
    """A validated bundle (see the module docstring for the manifest's fields)."""

    path: Path
    manifest: dict
    onnx_path: Path
    weights_path: Path
    input_size: tuple[int, int]  # (H, W) the graph was exported at
    threshold: float  # calibrated mask threshold on the raw score
    score_range: tuple[float, float]  # (lo, hi) raw scores mapped to [0, 1] for display

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.manifest["model"]["config"])

    @property
    def dynamic(self) -> bool:
        """True when the graph accepts any H, W (the runtime still feeds ``input_size``)."""
        return bool(self.manifest["onnx"]["dynamic"])

    @property
    def fp16(self) -> bool:
        """True when the graph's backbone runs in float16 (input and output stay float32)."""
        return bool(self.manifest["onnx"]["fp16"])

    @property
    def threshold_fpr(self) -> float | None:
        return self.manifest["threshold"].get("fpr")

    @property
    def onnx_sha256(self) -> str:
        return self.manifest["files"][ONNX_FILE]["sha256"]

    @property
    def mean(self) -> list[float]:
        return list(self.manifest["input"]["mean"])

    @property
    def std(self) -> list[float]:
        return list(self.manifest["input"]["std"])

    @property
    def pad_multiple(self) -> int:
        return int(self.manifest["input"]["pad_multiple"])


# --- hashing -------------------------------------------------------------------------------------

_MEMO_MIN_BYTES = 64 << 20  # big files are hashed once per process unless they change on disk
_hash_memo: dict[tuple, str] = {}


def sha256_file(path: str | Path) -> str:
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if st.st_size >= _MEMO_MIN_BYTES and key in _hash_memo:
        return _hash_memo[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    digest = h.hexdigest()
    if st.st_size >= _MEMO_MIN_BYTES:
        _hash_memo[key] = digest
    return digest


def canonical_json(obj: Any) -> str:
    """Deterministic JSON (sorted keys, no spaces); non-JSON values become strings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def config_sha256(config: Any) -> str:
    """sha256 of the canonical JSON of a config dict (what the manifest's train_config_sha256 is)."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()


def library_versions() -> dict[str, str | None]:
    import importlib.metadata as md

    import flowclas_ros

    out: dict[str, str | None] = {"python": platform.python_version(), "torch": torch.__version__,
                                  "flowclas_ros": flowclas_ros.__version__}
    for name in ("onnx", "onnxruntime", "onnxscript", "timm", "safetensors", "numpy"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


# --- loading -------------------------------------------------------------------------------------

_REQUIRED = {
    "model": ("config", "channels", "stride", "score"),
    "input": ("size", "pad_multiple", "channel_order", "mean", "std", "value_range"),
    "onnx": ("file", "input_name", "output_name", "opset", "dynamic", "fp16"),
    "weights": ("file",),
    "threshold": ("value",),
}


def _fail(bundle: Path, what: str, fix: str = "re-export the bundle with `export`") -> BundleError:
    return BundleError(f"bundle {bundle}: {what}; {fix}")


def _read_manifest(path: Path) -> dict:
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise _fail(path, f"{MANIFEST} is missing (not a model bundle, or an incomplete copy)",
                    "copy the whole bundle directory, or write one with `export`")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _fail(path, f"{MANIFEST} is not valid JSON ({exc}): the file is corrupted") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise _fail(path, f"{MANIFEST} has format {got!r}, expected {FORMAT!r}")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise _fail(path, f"{MANIFEST} has an invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        import flowclas_ros

        writer = manifest.get("versions", {}).get("flowclas_ros", "?")
        raise _fail(path, f"bundle format version {version} (written by flowclas_ros {writer}) is "
                          f"too new: this flowclas_ros {flowclas_ros.__version__} reads up to "
                          f"version {FORMAT_VERSION}",
                    "upgrade flowclas_ros, or re-export the checkpoint with this version")
    missing = [k for k in ("model", "input", "onnx", "weights", "threshold", "score_range", "files")
               if k not in manifest]
    missing += [f"{sec}.{k}" for sec, keys in _REQUIRED.items() if isinstance(manifest.get(sec), dict)
                for k in keys if k not in manifest[sec]]
    if missing:
        raise _fail(path, f"{MANIFEST} lacks {', '.join(missing)}")
    return manifest


def _check_values(path: Path, m: dict) -> tuple[tuple[int, int], float, tuple[float, float]]:
    size = m["input"]["size"]
    if (not isinstance(size, list) or len(size) != 2
            or not all(isinstance(v, int) and v > 0 for v in size)):
        raise _fail(path, f"input.size must be [H, W] positive integers, got {size!r}")
    thr = m["threshold"]["value"]
    if not isinstance(thr, (int, float)) or not math.isfinite(thr):
        raise _fail(path, f"threshold.value must be a finite number, got {thr!r}")
    sr = m["score_range"]
    if (not isinstance(sr, list) or len(sr) != 2
            or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in sr)
            or not sr[0] < sr[1]):
        raise _fail(path, f"score_range must be [lo, hi] finite with lo < hi, got {sr!r}")
    if m["input"]["channel_order"] != "RGB":
        raise _fail(path, f"input.channel_order {m['input']['channel_order']!r} is not supported "
                          f"(the runtime feeds RGB)")
    try:
        ModelConfig.from_dict(m["model"]["config"])
    except (TypeError, ValueError) as exc:
        raise _fail(path, f"model.config does not describe a FlowCLAS model ({exc})") from exc
    return (size[0], size[1]), float(thr), (float(sr[0]), float(sr[1]))


def _check_files(path: Path, m: dict, check_hashes: bool) -> None:
    files = m["files"]
    for needed in (m["onnx"]["file"], m["weights"]["file"]):
        if needed not in files:
            raise _fail(path, f"{MANIFEST} lists no hash for {needed}")
    for name, info in files.items():
        f = path / name
        if not f.is_file():
            raise _fail(path, f"{name} is missing (listed in {MANIFEST})",
                        "copy the whole bundle directory, or re-export it")
        size = f.stat().st_size
        if "bytes" in info and size != info["bytes"]:
            raise _fail(path, f"{name} has {size} bytes, {MANIFEST} says {info['bytes']}: the file "
                              f"is truncated or corrupted", "copy it again, or re-export")
        if check_hashes:
            digest = sha256_file(f)
            if digest != info.get("sha256"):
                raise _fail(path, f"{name} does not match its sha256 in {MANIFEST} (expected "
                                  f"{str(info.get('sha256'))[:12]}..., found {digest[:12]}...): "
                                  f"the file is corrupted or was modified after export",
                            "copy it again, or re-export")


def _dims(value_info) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in value_info.type.tensor_type.shape.dim]


def _check_onnx(path: Path, m: dict, input_size: tuple[int, int]) -> None:
    import onnx

    try:
        proto = onnx.load(str(path / m["onnx"]["file"]), load_external_data=False)
    except Exception as exc:  # protobuf errors have no common base class
        raise _fail(path, f"{m['onnx']['file']} is not a readable ONNX model ({exc})") from exc
    graph = proto.graph
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if [i.name for i in inputs] != [m["onnx"]["input_name"]]:
        raise _fail(path, f"the graph's inputs are {[i.name for i in inputs]}, the manifest says "
                          f"[{m['onnx']['input_name']!r}]")
    if [o.name for o in graph.output] != [m["onnx"]["output_name"]]:
        raise _fail(path, f"the graph's outputs are {[o.name for o in graph.output]}, the manifest "
                          f"says [{m['onnx']['output_name']!r}]")
    if inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise _fail(path, "the graph's input is not float32")
    h, w = input_size
    din, dout = _dims(inputs[0]), _dims(graph.output[0])
    if len(din) != 4 or din[:2] != [1, 3] or len(dout) != 3:
        raise _fail(path, f"the graph takes {din} and returns {dout}; expected (1, 3, H, W) -> "
                          f"(1, H, W)")
    if m["onnx"]["dynamic"]:
        if any(isinstance(d, int) for d in din[2:]):
            raise _fail(path, f"the manifest says dynamic H/W but the graph takes {din}")
    elif din[2:] != [h, w] or dout[1:] != [h, w]:
        raise _fail(path, f"manifest input size (H, W) = ({h}, {w}) but {m['onnx']['file']} takes "
                          f"{tuple(din)} and returns {tuple(dout)}: manifest and graph disagree")


def _check_weights(path: Path, m: dict) -> None:
    from safetensors import safe_open

    wfile = path / m["weights"]["file"]
    c = m["model"]["channels"]
    try:
        with safe_open(str(wfile), framework="pt") as f:
            keys = set(f.keys())
            need = {"mean": (1, 3, 1, 1), "std": (1, 3, 1, 1), "norm.weight": (c,), "mu": (c,)}
            for k, shape in need.items():
                if k not in keys:
                    raise _fail(path, f"{wfile.name} has no tensor {k!r}: not FlowCLAS weights")
                got = tuple(f.get_slice(k).get_shape())
                if got != shape:
                    raise _fail(path, f"{wfile.name}: {k} has shape {got}, the manifest's model "
                                      f"({c} channels) needs {shape}: manifest and weights disagree")
            for k in ("mean", "std"):
                got = f.get_tensor(k).flatten().tolist()
                want = m["input"][k]
                if any(abs(a - b) > 1e-6 for a, b in zip(got, want)):
                    raise _fail(path, f"{wfile.name}: {k} {got} differs from the manifest's {want}")
    except BundleError:
        raise
    except Exception as exc:  # safetensors raises its own error types
        raise _fail(path, f"{wfile.name} is not a readable safetensors file ({exc})") from exc


def load_bundle(path: str | Path, *, check_hashes: bool = True) -> Bundle:
    """Read and validate a bundle directory (or its manifest.json).

    Raises FileNotFoundError when ``path`` does not exist and :class:`BundleError` for anything
    wrong inside. ``check_hashes=False`` skips the sha256 of every file (sizes are still checked).
    """
    path = Path(path)
    if path.is_file() and path.name == MANIFEST:
        path = path.parent
    if not path.exists():
        raise FileNotFoundError(f"model bundle {path} does not exist")
    if not path.is_dir():
        raise BundleError(f"{path} is a file; a bundle is a directory holding {MANIFEST}, "
                          f"{ONNX_FILE} and {WEIGHTS_FILE} (written by `export`)")
    manifest = _read_manifest(path)
    input_size, threshold, score_range = _check_values(path, manifest)
    _check_files(path, manifest, check_hashes)
    _check_onnx(path, manifest, input_size)
    _check_weights(path, manifest)
    return Bundle(path=path, manifest=manifest, onnx_path=path / manifest["onnx"]["file"],
                  weights_path=path / manifest["weights"]["file"], input_size=input_size,
                  threshold=threshold, score_range=score_range)


def build_torch_model(bundle: Bundle | str | Path) -> FlowCLAS:
    """The FlowCLAS model of a bundle (eval mode, CPU), entirely from its weights file.

    The backbone is built without its pretrained source (no network, no weights package): every
    tensor comes from ``weights.safetensors``.
    """
    from safetensors.torch import load_file

    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    cfg = bundle.model_config
    cfg.backbone.weights = None
    cfg.backbone.pretrained = False
    model = FlowCLAS(cfg)
    sd = upgrade_state_dict(load_file(str(bundle.weights_path)),
                            int(bundle.manifest["format_version"]))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    wrong = [f"{k} {tuple(sd[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
             if k in sd and sd[k].shape != v.shape]
    if missing or unexpected or wrong:
        raise _fail(bundle.path, f"{bundle.weights_path.name} does not fit the manifest's model: "
                                 f"missing {missing[:5]}, unexpected {unexpected[:5]}, "
                                 f"shape mismatches {wrong[:5]}")
    model.load_state_dict(sd, strict=True)
    return model.eval()


# --- writing -------------------------------------------------------------------------------------

def _load_train_config(train_config: Any) -> Any:
    if isinstance(train_config, (str, Path)) and Path(train_config).is_file():
        import yaml

        return yaml.safe_load(Path(train_config).read_text())
    return train_config


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def _model_card(m: dict) -> str:
    cfg = m["model"]["config"]
    thr = m["threshold"]
    ver = m["onnx"].get("verification") or {}
    lines = [
        "# FlowCLAS model bundle", "",
        f"* Backbone: `{cfg['backbone']['name']}` (stages {cfg['backbone'].get('stages')}), "
        f"flow: {cfg['flow']['steps']} steps ({cfg['flow']['subnet']} subnet), score: "
        f"`{cfg['score']}` (higher = more anomalous).",
        f"* Input: RGB float32 in [0, 1], {m['input']['size'][0]}x{m['input']['size'][1]} (H x W)"
        f"{', any size (dynamic graph)' if m['onnx']['dynamic'] else ''}; normalisation "
        f"(mean {m['input']['mean']}, std {m['input']['std']}) and zero padding to a multiple of "
        f"{m['input']['pad_multiple']} happen inside the graph. The runtime resizes frames "
        f"({m['input']['resize']}).",
        f"* Mask threshold: {thr['value']:.6g} ({thr.get('method')}"
        + (f", FPR {thr['fpr']:.3g} on inlier pixels" if thr.get("fpr") is not None else "") + ").",
        f"* Display range: {m['score_range']} ({m.get('score_range_method')}).",
        f"* ONNX: opset {m['onnx']['opset']}, {m['onnx']['exporter']} exporter"
        f"{', float16 backbone' if m['onnx']['fp16'] else ''}."
        + (f" ONNX Runtime vs torch on {ver.get('image')}: max |diff| {ver.get('max_abs_diff'):.3g} "
           f"({ver.get('relative_to_score_range'):.2g} of the score range)." if ver else ""),
    ]
    metrics = dict(m.get("metrics") or {})
    protocol = metrics.pop("protocol", None)
    if metrics:
        lines.append(f"* Metrics: {json.dumps(metrics)}")
    if m.get("train_config_sha256"):
        lines.append(f"* Training config sha256: `{m['train_config_sha256']}`")
    lines.append(f"* Libraries: {json.dumps(m['versions'])}")
    if protocol:
        lines += ["", "## Validation protocol", "",
                  f"Selection score {protocol.get('score') or float('nan'):.4f}; figures of every "
                  f"part at this bundle's threshold {protocol['threshold']:.6g} "
                  "(flowclas_ros.evaluation.protocol; fractions, void excluded):", "",
                  "| part | AUPRC | FPR95 | AUROC | FPR at threshold | TPR at threshold |",
                  "|---|---|---|---|---|---|"]
        for part, r in protocol["parts"].items():
            cell = lambda k: f"{r[k]:.3f}" if isinstance(r.get(k), float) else ""  # noqa: E731
            lines.append(f"| {part} | {cell('auprc')} | {cell('fpr95')} | {cell('auroc')} | "
                         f"{cell('fpr_at_threshold')} | {cell('tpr_at_threshold')} |")
    return "\n".join(lines) + "\n"


def write_bundle(model: FlowCLAS, out_dir: str | Path, *, input_size: tuple[int, int],
                 threshold: float, score_range: tuple[float, float],
                 threshold_fpr: float | None = None, train_config: Any = None,
                 metrics: dict | None = None, opset: int = 17, dynamic: bool = False,
                 fp16: bool = False, threshold_method: str | None = None,
                 score_range_method: str | None = None, exporter: str = "auto",
                 verify: bool = True, card_notes: str | None = None) -> Bundle:
    """Export ``model`` to a bundle directory ``out_dir`` and return it, loaded and validated.

    input_size (H, W): the graph's input size (and the size the runtime resizes frames to).
    threshold: mask threshold on the raw score; threshold_fpr the inlier false-positive rate it
    was calibrated at (None = not calibrated). score_range (lo, hi): the display range.
    train_config: a dict, or a YAML file, stored with its sha256. opset: the minimum opset (the
    dynamo exporter emits 18 or newer). exporter: "auto" | "dynamo" | "torchscript" (see
    :func:`flowclas_ros.export.onnx_export.export_onnx`). verify: compare ONNX Runtime with torch
    on a real photograph and record the difference. card_notes: Markdown appended to the card.

    The bundle is written to a temporary sibling directory and moved into place, so a failed
    export never leaves a half-written bundle; an existing bundle at ``out_dir`` is replaced.
    """
    from safetensors.torch import save_file

    from .onnx_export import export_onnx, verify_onnx

    out_dir = Path(out_dir)
    h, w = (int(v) for v in input_size)
    lo, hi = (float(v) for v in score_range)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"score_range must be finite with lo < hi, got {score_range}")
    if not math.isfinite(float(threshold)):
        raise ValueError(f"threshold must be finite, got {threshold}")
    if out_dir.exists() and not (out_dir / MANIFEST).is_file() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not a bundle; refusing to replace it")
    model = model.eval().cpu().float()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the bundle is read by other users (ROS)
    try:
        info = export_onnx(model, tmp / ONNX_FILE, (h, w), opset=opset, dynamic=dynamic,
                           fp16=fp16, exporter=exporter)
        verification = None
        if verify:
            verification = verify_onnx(model, tmp / ONNX_FILE, (h, w), score_range=(lo, hi))
        sd = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
        save_file(sd, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT})
        train_config = _load_train_config(train_config)
        manifest = {
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
                      "padded_in_graph": True, "resize": RESIZE_METHOD},
            "output": {"shape": [1, h, w], "dtype": "float32",
                       "meaning": "raw anomaly score per input pixel (higher = more anomalous)"},
            "onnx": {"file": ONNX_FILE, "input_name": INPUT_NAME, "output_name": OUTPUT_NAME,
                     "opset": info["opset"], "requested_opset": opset,
                     "exporter": info["exporter"], "exporter_note": info.get("note"),
                     "dynamic": bool(dynamic), "fp16": bool(fp16),
                     "verification": verification},
            "weights": {"file": WEIGHTS_FILE, "format": "safetensors",
                        "content": "full FlowCLAS state dict (backbone included)"},
            "score_range": [lo, hi],
            "score_range_method": score_range_method or "given",
            "threshold": {"value": float(threshold), "fpr": threshold_fpr,
                          "method": threshold_method or (
                              "given" if threshold_fpr is None else
                              f"smallest threshold with inlier-pixel FPR <= {threshold_fpr}")},
            "metrics": _jsonable(metrics) if metrics is not None else None,
            "train_config": _jsonable(train_config) if train_config is not None else None,
            "train_config_sha256": config_sha256(train_config) if train_config is not None else None,
            "versions": library_versions(),
            "files": {},
        }
        for f in sorted(tmp.iterdir()):
            f.chmod(0o644)  # some writers create private files; the bundle is shared read-only
            if f.is_file() and f.name not in (MANIFEST, MODEL_CARD):
                manifest["files"][f.name] = {"sha256": sha256_file(f), "bytes": f.stat().st_size}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        card = _model_card(manifest)
        if card_notes:
            card += "\n" + card_notes.strip() + "\n"
        (tmp / MODEL_CARD).write_text(card)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    bundle = load_bundle(out_dir)
    log.info("wrote bundle %s (%s exporter, opset %s)", out_dir, info["exporter"], info["opset"])
    return bundle
