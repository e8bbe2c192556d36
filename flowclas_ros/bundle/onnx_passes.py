"""Rewrites of an exported ONNX graph that keep its output and make ONNX Runtime faster.

``fold_same_padding``: EfficientNet's TF-"same" convolutions pad their input asymmetrically by
an amount computed from its height and width, so a graph with dynamic H and W carries, before
each strided convolution, a Pad node fed by a chain of Shape/Gather/Div/Cast nodes. ONNX Runtime
cannot fold such a Pad into the Conv and converts its blocked (NCHWc) layout back and forth
around it: on a 1024x576 frame the Pads and layout conversions were a quarter of the CPU time.
Yet the graph pads its input to the bundle's stride multiple first, so every strided convolution
sees an even size and its padding is the same for every frame. The pass measures each such
Pad's amounts in ONNX Runtime on probe sizes (none of them a multiple of the stride), and where
they agree moves them into the Conv's own ``pads`` attribute (which may be asymmetric) and
drops the Pad and its shape arithmetic. A Pad whose amounts depend on the size is left alone.
"""
from __future__ import annotations

import numpy as np

PROBE_SIZES = ((37, 53), (100, 150), (64, 64))  # (H, W) of the probe inputs of dynamic graphs


def _constant(name: str, producers: dict, initializers: dict):
    """Return the value of a graph constant (initializer or Constant node), or None."""
    from onnx import numpy_helper

    if name in initializers:
        return numpy_helper.to_array(initializers[name])
    node = producers.get(name)
    if node is not None and node.op_type == "Constant" and node.attribute:
        return numpy_helper.to_array(node.attribute[0].t)
    return None


def _probe_shapes(graph) -> list[tuple[int, ...]]:
    dims = graph.input[0].type.tensor_type.shape.dim
    fixed = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    if fixed[2] and fixed[3]:
        return [(1, fixed[1] or 3, fixed[2], fixed[3])]
    return [(1, fixed[1] or 3, h, w) for h, w in PROBE_SIZES]


def fold_same_padding(model) -> int:
    """Fold the size-independent Pad -> Conv pairs of ``model`` into the Conv.

    ``model`` is an onnx ModelProto, changed in place; returns how many Pads were folded.
    """
    import onnx
    import onnxruntime as ort
    from onnx import helper

    graph = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for n in graph.node for a in n.attribute):
        return 0  # subgraphs could read the names the pruning would drop
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    initializers = {i.name: i for i in graph.initializer}
    outputs = {o.name for o in graph.output}

    def foldable(n) -> bool:
        users = consumers.get(n.output[0], [])
        mode = next((a.s for a in n.attribute if a.name == "mode"), b"constant")
        value = (_constant(n.input[2], producers, initializers)
                 if len(n.input) > 2 and n.input[2] else None)
        return (len(users) == 1 and users[0].op_type == "Conv" and n.output[0] not in outputs
                and mode == b"constant" and (value is None or not np.any(value))
                and len(n.input) > 1 and n.input[1] and (len(n.input) < 4 or not n.input[3]))

    pads = [n for n in graph.node if n.op_type == "Pad" and foldable(n)]
    if not pads:
        return 0
    # measure every candidate's pad amounts in one session, exposing them as extra outputs
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    for n in pads:
        probe.graph.output.append(helper.make_tensor_value_info(n.input[1],
                                                                onnx.TensorProto.INT64, None))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(probe.SerializeToString(), opts,
                                    providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        dtype = np.float16 if "float16" in sess.get_inputs()[0].type else np.float32
        runs = [sess.run(None, {name: np.zeros(shape, dtype)}) for shape in _probe_shapes(graph)]
    except Exception:  # a graph the CPU provider cannot run is left as exported
        return 0
    folded = 0
    for k, n in enumerate(pads):
        amounts = [r[k].astype(np.int64).tolist() for r in runs]
        a = amounts[0]
        # NCHW pads: [N0, C0, H0, W0, N1, C1, H1, W1]; only H and W, never negative
        if any(v != a for v in amounts) or len(a) != 8 or a[0] or a[1] or a[4] or a[5] \
                or min(a) < 0:
            continue
        conv = consumers[n.output[0]][0]
        if any(at.name == "auto_pad" and at.s not in (b"", b"NOTSET") for at in conv.attribute):
            continue
        old = next((list(at.ints) for at in conv.attribute if at.name == "pads"), [0, 0, 0, 0])
        new = [old[0] + a[2], old[1] + a[3], old[2] + a[6], old[3] + a[7]]
        for at in [at for at in conv.attribute if at.name in ("pads", "auto_pad")]:
            conv.attribute.remove(at)
        conv.attribute.append(helper.make_attribute("pads", new))
        conv.input[0] = n.input[0]
        folded += 1
    if folded:
        _prune(graph)
    return folded


def _prune(graph) -> None:
    """Drop the nodes no graph output depends on (the folded Pads' shape arithmetic)."""
    needed = {o.name for o in graph.output}
    keep = []
    for n in reversed(list(graph.node)):
        if any(o in needed for o in n.output):
            keep.append(n)
            needed.update(i for i in n.input if i)
    del graph.node[:]
    graph.node.extend(reversed(keep))
    used = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(used)


__all__ = ["fold_same_padding"]
