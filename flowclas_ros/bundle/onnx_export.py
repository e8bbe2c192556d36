"""The score graph serialised as ONNX (a bundle's ``model.onnx``) and its check against torch.

The graph is :class:`flowclas_ros.bundle.graph.ScoreGraph`: input ``image`` float32
(N, 3, H, W) RGB in [0, 1], output ``score`` float32 (N, H, W), N a dynamic batch dimension
(``batch``: one node's cameras scored in one run; bundles exported before it take N = 1 only).
With ``fp16`` the backbone runs in float16 while the flow, the score and the graph's
input/output stay float32.

Exporters: ``dynamo`` (torch.export + onnxscript, opset 18+) and ``torchscript`` (the legacy
exporter, opset 17+). ``exporter="auto"`` tries dynamo first for static shapes and TorchScript
first for dynamic H/W: dynamo's symbolic shapes through EfficientNet's TF-"same" padding took
258 s to export Lite0 here, against 1.6 s for TorchScript. Whichever fails hands over to the other,
and the result records which one worked and why.
"""
from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from flowclas_ros.model.flowclas import FlowCLAS

from .graph import INPUT_NAME, OUTPUT_NAME, ScoreGraph
from .onnx_passes import fold_same_padding
from .preprocess_torch import frame_to_input

log = logging.getLogger("flowclas_ros.export")

EXTERNAL_DATA_BYTES = 1_500_000_000  # protobuf's 2 GB limit, with margin for the graph itself
DYNAMO_MIN_OPSET = 18  # the dynamo exporter's translations start at 18
BATCH_DIM = "batch"  # the graph's symbolic first dimension


def sample_images() -> list[tuple[str, np.ndarray]]:
    """Real photographs shipped with scikit-image (offline): [(name, (H, W, 3) uint8 RGB)]."""
    import skimage.data

    return [("skimage.data.astronaut", skimage.data.astronaut()),
            ("skimage.data.coffee", skimage.data.coffee())]


def image_to_input(image: np.ndarray, size: tuple[int, int]) -> Tensor:
    """(H, W, 3) uint8 RGB -> (1, 3, h, w) float32 in [0, 1], resized as the runtime does."""
    return frame_to_input(torch.from_numpy(np.ascontiguousarray(image)), size)


def _export_dynamo(graph: nn.Module, x: Tensor, path: Path, opset: int, dynamic: bool,
                   external: bool) -> None:
    from torch.export import Dim

    shapes = {"image": {0: Dim.DYNAMIC, 2: Dim.DYNAMIC, 3: Dim.DYNAMIC} if dynamic
              else {0: Dim.DYNAMIC}}
    # The exporter prints progress on stdout and its optimiser logs every pass at INFO; keep
    # both out of the CLI's output.
    quiet = [logging.getLogger(n) for n in ("onnx_ir", "onnxscript", "torch.onnx")]
    levels = [q.level for q in quiet]
    try:
        for q in quiet:
            q.setLevel(logging.WARNING)
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(graph, (x,), str(path), dynamo=True, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_shapes=shapes, external_data=external, optimize=True,
                              verbose=False)
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)


def _export_torchscript(graph: nn.Module, x: Tensor, path: Path, opset: int,
                        dynamic: bool) -> None:
    axes = ({INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
             OUTPUT_NAME: {0: "batch", 1: "height", 2: "width"}} if dynamic
            else {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, (x,), str(path), dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes=axes, do_constant_folding=True)


def _fix_io_shapes(path: Path, size: tuple[int, int], dynamic: bool) -> int:
    """Declare exactly (N, 3, H, W) -> (N, H, W) (symbolic H, W when dynamic); return the opset."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    h, w = ("height", "width") if dynamic else size

    def set_dims(value_info, dims):
        shape = value_info.type.tensor_type.shape
        del shape.dim[:]
        for d in dims:
            dim = shape.dim.add()
            if isinstance(d, str):
                dim.dim_param = d
            else:
                dim.dim_value = int(d)

    set_dims(proto.graph.input[0], [BATCH_DIM, 3, h, w])
    set_dims(proto.graph.output[0], [BATCH_DIM, h, w])
    onnx.save(proto, str(path))
    onnx.checker.check_model(str(path))
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def _fold_padding(path: Path) -> int:
    """Apply :func:`.onnx_passes.fold_same_padding` to the file; return the Pads folded."""
    import onnx

    proto = onnx.load(str(path))
    folded = fold_same_padding(proto)
    if folded:
        onnx.save(proto, str(path))
        onnx.checker.check_model(str(path))
        log.info("folded %d size-independent Pad nodes into their convolutions", folded)
    return folded


def export_onnx(model: FlowCLAS, path: str | Path, input_size: tuple[int, int], *,
                opset: int = 17, dynamic: bool = False, fp16: bool = False,
                exporter: str = "auto") -> dict:
    """Write the score graph of ``model`` (not modified) to ``path``.

    Returns {"exporter", "opset", "external_data", "seconds", "note", "passes"}; ``note`` says
    why the first exporter tried did not produce the graph, if it did not; ``passes`` what the
    graph rewrites of :mod:`.onnx_passes` changed.
    """
    import copy

    if opset < 17:
        raise ValueError(f"opset must be 17 or newer, got {opset}")
    if exporter not in ("auto", "dynamo", "torchscript"):
        raise ValueError(f"exporter must be auto, dynamo or torchscript, got {exporter!r}")
    path = Path(path)
    model = model.eval()
    if fp16:
        model = copy.deepcopy(model)
        model.backbone.half()
    graph = ScoreGraph(model, fp16=fp16).eval()
    # an example batch of 2: with 1, the exporters specialise the batch dimension to 1
    x = torch.rand(2, 3, *input_size, generator=torch.Generator().manual_seed(0))
    n_bytes = sum(p.numel() * p.element_size() for p in model.state_dict().values())
    external = n_bytes > EXTERNAL_DATA_BYTES
    if exporter == "auto":
        order = ["torchscript", "dynamo"] if dynamic else ["dynamo", "torchscript"]
    else:
        order = [exporter]
    notes = []
    for name in order:
        for stale in (path, path.with_name(path.name + ".data")):  # a failed try's leftovers
            stale.unlink(missing_ok=True)
        t0 = time.perf_counter()
        try:
            if name == "dynamo":
                _export_dynamo(graph, x, path, max(opset, DYNAMO_MIN_OPSET), dynamic, external)
            else:
                _export_torchscript(graph, x, path, opset, dynamic)
            actual = _fix_io_shapes(path, input_size, dynamic)
        except Exception as exc:  # any exporter failure: try the next one
            msg = f"{name} exporter failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            log.warning(msg)
            notes.append(msg)
            continue
        folded = 0 if external else _fold_padding(path)
        seconds = time.perf_counter() - t0
        if dynamic and name == "torchscript" and exporter == "auto":
            notes.append("dynamic H/W: TorchScript first (dynamo's symbolic shapes are very slow "
                         "to export through TF-'same' padding)")
        log.info("exported %s with the %s exporter (opset %d) in %.1f s", path.name, name,
                 actual, seconds)
        return {"exporter": name, "opset": actual, "external_data": external,
                "seconds": round(seconds, 2), "note": "; ".join(notes) or None,
                "passes": {"fold_same_padding": folded}}
    raise RuntimeError("ONNX export failed with every exporter: " + " | ".join(notes))


def verify_onnx(model: FlowCLAS, onnx_path: str | Path, input_size: tuple[int, int], *,
                score_range: tuple[float, float] | None = None,
                image: tuple[str, np.ndarray] | None = None,
                providers: tuple[str, ...] = ("CPUExecutionProvider",)) -> dict:
    """Run the graph in ONNX Runtime and the model in torch (fp32, eager) on a real photograph.

    Returns {"image", "input_size", "provider", "max_abs_diff", "mean_abs_diff",
    "score_range_span", "relative_to_score_range", "finite"}; the span is ``score_range``'s or,
    without one, the 0.1..99.9 percentile spread of the torch scores. A graph the provider
    cannot run gives {"skipped": reason}.
    """
    import onnxruntime as ort

    name, img = image or sample_images()[0]
    x = image_to_input(img, input_size)
    with torch.inference_mode():
        ref = model.eval().float()(x)[0].numpy()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(onnx_path), opts, providers=list(providers))
        out = sess.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0][0]
    except Exception as exc:  # e.g. float16 kernels missing on this provider
        log.warning("ONNX Runtime could not run %s: %s", onnx_path, exc)
        return {"image": name, "skipped": f"{type(exc).__name__}: {str(exc)[:300]}"}
    if score_range is not None:
        span = float(score_range[1] - score_range[0])
    else:
        lo, hi = np.percentile(ref, [0.1, 99.9])
        span = float(hi - lo) or 1.0
    diff = np.abs(out.astype(np.float64) - ref.astype(np.float64))
    result = {"image": name, "input_size": list(input_size), "provider": sess.get_providers()[0],
              "torch_reference": "fp32 eager", "max_abs_diff": float(diff.max()),
              "mean_abs_diff": float(diff.mean()), "score_range_span": span,
              "relative_to_score_range": float(diff.max() / span),
              "finite": bool(np.isfinite(out).all())}
    log.info("ONNX Runtime vs torch on %s at %dx%d: max |diff| %.3g = %.2g of the score range",
             name, input_size[0], input_size[1], result["max_abs_diff"],
             result["relative_to_score_range"])
    return result


__all__ = ["BATCH_DIM", "export_onnx", "image_to_input", "sample_images", "verify_onnx"]
