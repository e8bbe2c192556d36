"""Reading a model bundle.

A bundle is the one artifact that export writes and the runtime, node and tools load.

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
             normalised_in_graph, padded_in_graph, resize (how the runtime resizes frames),
             resolution (format 3, optional): {long_side | pixels, max_scale}: frames keep
             their aspect ratio, scaled to it (a dynamic graph); without it every frame is
             resized to ``size`` (:class:`~flowclas_ros.bundle.preprocess.Resolution`)
    output:  shape [1, H, W], dtype "float32", meaning
    onnx:    file, input_name, output_name, opset, requested_opset, exporter ("dynamo" |
             "torchscript"), dynamic, fp16, verification {image, provider, max_abs_diff,
             relative_to_score_range, ...}
    weights: file, format "safetensors", content, layout (the state-dict layout of
             flowclas_ros.model.upgrade; format 1 and 2 bundles: their format version)
    score_range [lo, hi] + score_range_method: raw scores mapped to [0, 1] for display
    threshold: {value, fpr (None = not calibrated), method, exceedance (optional: {levels,
             scores, pixels, source}: quantiles of the calibration set's normal-pixel scores,
             flowclas_ros.outputs.regions.exceedance_table; what a detection's score means),
             per_topic (optional: {topic: {value, fpr, exceedance, ...}}: each camera topic of a
             multi-camera calibration recording calibrated on its own frames)}
    metrics, train_config, train_config_sha256 (sha256 of the canonical JSON of train_config)
    versions: torch, onnx, onnxruntime, onnxscript, timm, flowclas_ros, python
    files:   {name: {sha256, bytes}} for every file the runtime reads

:func:`load_bundle` checks all of it and raises :class:`BundleError` naming exactly what is
wrong (missing file, format too new, manifest vs graph/weights mismatch, corrupted file).

This module imports neither torch nor the writer: a node on ONNX Runtime reads and checks a
bundle with numpy, onnx and safetensors alone. The graph's input and output names live in
:mod:`.graph`, the torch model in :mod:`.torch_model`, the writer in :mod:`.writer`.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from flowclas_ros.model.config import ModelConfig

from .hashing import sha256_file
from .preprocess import Resolution

FORMAT = "flowclas_ros.bundle"
# 3: input.resolution (aspect-keeping bundles) and weights.layout; 1 and 2 load too
FORMAT_VERSION = 3
MANIFEST = "manifest.json"
ONNX_FILE = "model.onnx"
WEIGHTS_FILE = "weights.safetensors"
MODEL_CARD = "MODEL_CARD.md"


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

    @property
    def resolution(self) -> Resolution:
        """How frames are sized for the model.

        Either kept aspect (format 3 with ``input.resolution``) or squeezed to ``input_size``.
        """
        spec = self.manifest["input"].get("resolution")
        return Resolution.of(spec if spec else self.input_size)

    @property
    def weights_layout(self) -> int:
        """The state-dict layout of the weights file (flowclas_ros.model.upgrade)."""
        w = self.manifest["weights"]
        return int(w.get("layout", min(int(self.manifest["format_version"]), 2)))

    @property
    def exceedance_table(self):
        """Return the calibration set's exceedance table, or None.

        A (K, 2) float64 array ``[level, score]`` (:func:`flowclas_ros.outputs.regions.
        exceedance`: the fraction of its normal pixels scoring below a value); None for a bundle
        exported without calibration data, or before the table was recorded (validated by
        :func:`load_bundle`).
        """
        return _table(self.manifest["threshold"].get("exceedance"))

    def topic_calibration(self, topic: str) -> dict | None:
        """Return ``threshold.per_topic``'s entry for ``topic``, or None.

        ``topic``: a camera's fully resolved image topic; its ``/compressed`` form (and the
        other way round) matches too, as a recording may hold either.
        """
        per = self.manifest["threshold"].get("per_topic") or {}
        base = topic[: -len("/compressed")] if topic.endswith("/compressed") else topic
        return next((per[name] for name in (topic, base, base + "/compressed") if name in per),
                    None)

    def topic_threshold(self, topic: str) -> float | None:
        """Return the threshold calibrated on ``topic``'s own frames, or None."""
        entry = self.topic_calibration(topic)
        return None if entry is None else float(entry["value"])

    def topic_exceedance_table(self, topic: str):
        """Return the exceedance table of ``topic``'s own calibration frames, or None.

        As :attr:`exceedance_table`; None where the topic was not calibrated on its own, or
        was before per-topic tables were recorded.
        """
        entry = self.topic_calibration(topic)
        return None if entry is None else _table(entry.get("exceedance"))

    def mask_threshold(self, override: float | None = None) -> float:
        """Return the mask threshold to use.

        That is ``override`` when it is a number, else (None or NaN, the node's "use the
        bundle's") the calibrated one.
        """
        if override is None or math.isnan(override):
            return self.threshold
        return float(override)


_REQUIRED = {
    "model": ("config", "channels", "stride", "score"),
    "input": ("size", "pad_multiple", "channel_order", "mean", "std", "value_range"),
    "onnx": ("file", "input_name", "output_name", "opset", "dynamic", "fp16"),
    "weights": ("file",),
    "threshold": ("value",),
}


def bundle_error(bundle: Path, what: str,
                 fix: str = "re-export the bundle with `export`") -> BundleError:
    """Return the error for ``bundle``: what is wrong, then what to do."""
    return BundleError(f"bundle {bundle}: {what}; {fix}")


def _read_manifest(path: Path) -> dict:
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise bundle_error(path,
                           f"{MANIFEST} is missing (not a model bundle, or an incomplete copy)",
                           "copy the whole bundle directory, or write one with `export`")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bundle_error(
            path, f"{MANIFEST} is not valid JSON ({exc}): the file is corrupted") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise bundle_error(path, f"{MANIFEST} has format {got!r}, expected {FORMAT!r}")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise bundle_error(path, f"{MANIFEST} has an invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        import flowclas_ros

        writer = manifest.get("versions", {}).get("flowclas_ros", "?")
        raise bundle_error(path, f"bundle format version {version} (written by flowclas_ros "
                                 f"{writer}) is too new: this flowclas_ros "
                                 f"{flowclas_ros.__version__} reads up to version "
                                 f"{FORMAT_VERSION}",
                           "upgrade flowclas_ros, or re-export the checkpoint with this version")
    missing = [k for k in ("model", "input", "onnx", "weights", "threshold", "score_range",
                           "files") if k not in manifest]
    missing += [f"{sec}.{k}" for sec, keys in _REQUIRED.items()
                if isinstance(manifest.get(sec), dict)
                for k in keys if k not in manifest[sec]]
    if missing:
        raise bundle_error(path, f"{MANIFEST} lacks {', '.join(missing)}")
    return manifest


def _table(spec):
    """Return a validated ``exceedance`` section as (K, 2) float64 ``[level, score]``, or None."""
    if not spec:
        return None
    import numpy as np

    return np.stack([np.asarray(spec["levels"], np.float64),
                     np.asarray(spec["scores"], np.float64)], axis=1)


def _exceedance_problem(spec) -> str | None:
    """Say why ``threshold.exceedance`` is unusable, or None.

    The rules of flowclas_ros.outputs.regions.check_exceedance_table, without importing it.
    """
    if not isinstance(spec, dict):
        return f"expected {{levels, scores}}, got {type(spec).__name__}"
    lv, q = spec.get("levels"), spec.get("scores")
    if not isinstance(lv, list) or not isinstance(q, list) or len(lv) != len(q) or len(lv) < 2:
        return "levels and scores must be lists of the same length (>= 2)"
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in lv + q):
        return "levels and scores must be finite numbers"
    if lv[0] != 0 or lv[-1] != 1 or any(b <= a for a, b in zip(lv, lv[1:])):
        return "levels must rise strictly from 0 to 1"
    if any(b < a for a, b in zip(q, q[1:])):
        return "scores must be non-decreasing"
    return None


def _check_values(path: Path, m: dict) -> tuple[tuple[int, int], float, tuple[float, float]]:
    size = m["input"]["size"]
    if (not isinstance(size, list) or len(size) != 2
            or not all(isinstance(v, int) and v > 0 for v in size)):
        raise bundle_error(path, f"input.size must be [H, W] positive integers, got {size!r}")
    thr = m["threshold"]["value"]
    if not isinstance(thr, (int, float)) or not math.isfinite(thr):
        raise bundle_error(path, f"threshold.value must be a finite number, got {thr!r}")
    sr = m["score_range"]
    if (not isinstance(sr, list) or len(sr) != 2
            or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in sr)
            or not sr[0] < sr[1]):
        raise bundle_error(path, f"score_range must be [lo, hi] finite with lo < hi, got {sr!r}")
    if m["input"]["channel_order"] != "RGB":
        raise bundle_error(path, f"input.channel_order {m['input']['channel_order']!r} is not "
                                 f"supported (the runtime feeds RGB)")
    try:
        ModelConfig.from_dict(m["model"]["config"])
    except (TypeError, ValueError) as exc:
        raise bundle_error(
            path, f"model.config does not describe a FlowCLAS model ({exc})") from exc
    exc = m["threshold"].get("exceedance")
    if exc:
        problem = _exceedance_problem(exc)
        if problem:
            raise bundle_error(path, f"threshold.exceedance is not a valid table: {problem}")
    per = m["threshold"].get("per_topic")
    if per is not None:
        if not isinstance(per, dict) or not all(
                isinstance(t, str) and t.startswith("/") and isinstance(v, dict)
                and isinstance(v.get("value"), (int, float)) and math.isfinite(v["value"])
                for t, v in per.items()):
            raise bundle_error(path, "threshold.per_topic must map absolute topic names to "
                                     "{value: a finite number, ...}")
        for topic, entry in per.items():
            problem = entry.get("exceedance") and _exceedance_problem(entry["exceedance"])
            if problem:
                raise bundle_error(path, f"threshold.per_topic[{topic!r}].exceedance is not a "
                                         f"valid table: {problem}")
    spec = m["input"].get("resolution")
    if spec is not None:
        try:
            res = Resolution.of(spec)
        except (TypeError, ValueError, AttributeError) as exc:
            raise bundle_error(path, f"input.resolution {spec!r} is not valid ({exc})") from exc
        if not isinstance(spec, dict) or res.fixed is not None:
            raise bundle_error(path, "input.resolution must be "
                                     f"{{long_side | pixels, max_scale}}, got {spec!r}")
        if not m["onnx"]["dynamic"]:
            raise bundle_error(path, "input.resolution keeps each frame's aspect ratio, which "
                                     "needs a graph with dynamic H and W (export --long-side)")
    return (size[0], size[1]), float(thr), (float(sr[0]), float(sr[1]))


def _check_files(path: Path, m: dict, check_hashes: bool) -> None:
    files = m["files"]
    for needed in (m["onnx"]["file"], m["weights"]["file"]):
        if needed not in files:
            raise bundle_error(path, f"{MANIFEST} lists no hash for {needed}")
    for name, info in files.items():
        f = path / name
        if not f.is_file():
            raise bundle_error(path, f"{name} is missing (listed in {MANIFEST})",
                               "copy the whole bundle directory, or re-export it")
        size = f.stat().st_size
        if "bytes" in info and size != info["bytes"]:
            raise bundle_error(path, f"{name} has {size} bytes, {MANIFEST} says {info['bytes']}: "
                                     f"the file is truncated or corrupted",
                               "copy it again, or re-export")
        if check_hashes:
            digest = sha256_file(f)
            if digest != info.get("sha256"):
                raise bundle_error(path, f"{name} does not match its sha256 in {MANIFEST} "
                                         f"(expected {str(info.get('sha256'))[:12]}..., found "
                                         f"{digest[:12]}...): the file is corrupted or was "
                                         f"modified after export",
                                   "copy it again, or re-export")


def _dims(value_info) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in value_info.type.tensor_type.shape.dim]


def _check_onnx(path: Path, m: dict, input_size: tuple[int, int]) -> None:
    import onnx

    try:
        proto = onnx.load(str(path / m["onnx"]["file"]), load_external_data=False)
    except Exception as exc:  # protobuf errors have no common base class
        raise bundle_error(
            path, f"{m['onnx']['file']} is not a readable ONNX model ({exc})") from exc
    graph = proto.graph
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if [i.name for i in inputs] != [m["onnx"]["input_name"]]:
        raise bundle_error(path, f"the graph's inputs are {[i.name for i in inputs]}, the "
                                 f"manifest says [{m['onnx']['input_name']!r}]")
    if [o.name for o in graph.output] != [m["onnx"]["output_name"]]:
        raise bundle_error(path, f"the graph's outputs are {[o.name for o in graph.output]}, the "
                                 f"manifest says [{m['onnx']['output_name']!r}]")
    if inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise bundle_error(path, "the graph's input is not float32")
    h, w = input_size
    din, dout = _dims(inputs[0]), _dims(graph.output[0])
    # batch: 1 (bundles before batching) or symbolic (N cameras in one run)
    if (len(din) != 4 or din[1] != 3 or not (din[0] == 1 or isinstance(din[0], str))
            or len(dout) != 3):
        raise bundle_error(path, f"the graph takes {din} and returns {dout}; expected "
                                 f"(N, 3, H, W) -> (N, H, W)")
    if m["onnx"]["dynamic"]:
        if any(isinstance(d, int) for d in din[2:]):
            raise bundle_error(path, f"the manifest says dynamic H/W but the graph takes {din}")
    elif din[2:] != [h, w] or dout[1:] != [h, w]:
        raise bundle_error(path, f"manifest input size (H, W) = ({h}, {w}) but "
                                 f"{m['onnx']['file']} takes {tuple(din)} and returns "
                                 f"{tuple(dout)}: manifest and graph disagree")


def _check_weights(path: Path, m: dict) -> None:
    from safetensors import safe_open

    wfile = path / m["weights"]["file"]
    c = m["model"]["channels"]
    try:
        with safe_open(str(wfile), framework="numpy") as f:
            keys = set(f.keys())
            need = {"mean": (1, 3, 1, 1), "std": (1, 3, 1, 1), "norm.weight": (c,), "mu": (c,)}
            for k, shape in need.items():
                if k not in keys:
                    raise bundle_error(
                        path, f"{wfile.name} has no tensor {k!r}: not FlowCLAS weights")
                got = tuple(f.get_slice(k).get_shape())
                if got != shape:
                    raise bundle_error(path, f"{wfile.name}: {k} has shape {got}, the manifest's "
                                             f"model ({c} channels) needs {shape}: manifest and "
                                             f"weights disagree")
            for k in ("mean", "std"):
                got = f.get_tensor(k).flatten().tolist()
                want = m["input"][k]
                if any(abs(a - b) > 1e-6 for a, b in zip(got, want)):
                    raise bundle_error(
                        path, f"{wfile.name}: {k} {got} differs from the manifest's {want}")
    except BundleError:
        raise
    except Exception as exc:  # safetensors raises its own error types
        raise bundle_error(
            path, f"{wfile.name} is not a readable safetensors file ({exc})") from exc


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




__all__ = ["FORMAT", "FORMAT_VERSION", "MANIFEST", "MODEL_CARD", "ONNX_FILE", "WEIGHTS_FILE",
           "Bundle", "BundleError", "load_bundle"]
