"""MODEL_CARD.md: a bundle's manifest in words (not validated; the manifest is the truth)."""
from __future__ import annotations

import json


def model_card(m: dict) -> str:
    """MODEL_CARD.md of a manifest: what the bundle is, in a few lines, and its protocol table."""
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
        + (f", FPR {thr['fpr']:.3g} on inlier pixels" if thr.get("fpr") is not None else "")
        + ").",
        f"* Display range: {m['score_range']} ({m.get('score_range_method')}).",
        f"* ONNX: opset {m['onnx']['opset']}, {m['onnx']['exporter']} exporter"
        f"{', float16 backbone' if m['onnx']['fp16'] else ''}."
        + (f" ONNX Runtime vs torch on {ver.get('image')}: "
           f"max |diff| {ver.get('max_abs_diff'):.3g} "
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


__all__ = ["model_card"]
