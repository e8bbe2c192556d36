"""Batched inference (issue 20): one forward run for several frames, results as one by one.

No DDS here: the backends' :meth:`infer_batch` on the tiny bundle (exported with a dynamic batch
dimension), the shape grouping, the one-at-a-time runs of ONNX Runtime on the CPU and of graphs
with a fixed batch of 1, and each result handed over as soon as it is ready.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flowclas_ros.bundle.reader import load_bundle
from flowclas_ros.runtime import create_backend
from flowclas_ros.runtime.backend import batch_groups

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def frames(*sizes):
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, (h, w, 3), np.uint8) for h, w in sizes]


def _recording(backend):
    """Record the batch size of every forward run (a single frame's ``_forward`` runs 1)."""
    runs = []
    many = backend._forward_batch

    def forward_batch(x):
        runs.append(int(x.shape[0]))
        return many(x)

    backend._forward_batch = forward_batch
    return runs


def test_batch_groups_by_shape_in_order_and_bounded():
    a, b = (1, 3, 48, 64), (1, 3, 36, 64)
    assert batch_groups([a, b, a, a, b]) == [[0, 2, 3], [1, 4]]
    assert batch_groups([a, a, a, b], max_batch=2) == [[0, 1], [2], [3]]
    assert batch_groups([]) == []


@pytest.mark.parametrize("name,want", [("onnxruntime", [1, 1, 1]), ("torch", [3])])
def test_batch_equals_frame_by_frame(tiny_bundle, name, want):
    """One run in torch; ONNX Runtime on the CPU runs one frame at a time (no gain there)."""
    imgs = frames((48, 64), (120, 160), (30, 40))  # cameras of different resolutions
    thresholds = [None, -1e9, 1e9]
    with create_backend(tiny_bundle, backend=name, device="cpu") as be:
        single = [be.infer(im, threshold=t) for im, t in zip(imgs, thresholds)]
        runs = _recording(be)
        batch = be.infer_batch(imgs, threshold=thresholds)
        thr = [be.bundle.mask_threshold(t) for t in thresholds]
    assert runs == want  # torch: one run, every frame resized to the bundle's input size
    for s, b, im, t in zip(single, batch, imgs, thr):
        assert b.heatmap.shape == b.mask.shape == im.shape[:2]
        np.testing.assert_allclose(b.heatmap, s.heatmap, rtol=1e-5, atol=1e-5)
        # the tiny model's scores sit within 1e-6 of its threshold: compare the definition
        np.testing.assert_array_equal(b.mask > 0, b.heatmap >= t)
        assert b.overlay.shape == im.shape  # (its colours amplify the tiny model's 1e-7 noise)
    assert batch[1].mask.all() and not batch[2].mask.any()  # each frame its own threshold


def test_per_frame_outputs_and_empty_batch(tiny_bundle):
    imgs = frames((48, 64), (48, 64))
    with create_backend(tiny_bundle, backend="onnxruntime", device="cpu") as be:
        assert be.infer_batch([]) == []
        a, b = be.infer_batch(imgs, heatmap=[True, False], mask=False, overlay=[False, True])
        assert a.heatmap is not None and a.overlay is None and a.mask is None
        assert b.heatmap is None and b.overlay is not None
        with pytest.raises(ValueError, match="2 values"):
            be.infer_batch(imgs, threshold=[0.0])


def test_a_fixed_batch_graph_runs_one_frame_at_a_time():
    bundle = load_bundle(FIXTURES / "layout1_bundle")  # exported before batching: batch 1
    h, w = bundle.input_size
    imgs = frames((h, w), (h, w))
    with create_backend(bundle, backend="onnxruntime", device="cpu") as be:
        assert not be._batches((2, 3, h, w))
        single = [be.infer(im) for im in imgs]
        runs = _recording(be)
        batch = be.infer_batch(imgs)
    assert runs == [1, 1]
    for s, b in zip(single, batch):
        np.testing.assert_array_equal(s.heatmap, b.heatmap)


@pytest.mark.parametrize("name", ["onnxruntime", "torch"])
def test_each_result_is_handed_over_when_ready(tiny_bundle, name):
    """``on_result``: one frame at a time, each result before the next frame is prepared."""
    imgs = frames((48, 64), (120, 160), (30, 40))
    events = []
    with create_backend(tiny_bundle, backend=name, device="cpu") as be:
        prepare = be.pipeline.prepare

        def recording_prepare(image):
            events.append(("prepare", image.shape[:2]))
            return prepare(image)

        be.pipeline.prepare = recording_prepare
        batch = be.infer_batch(imgs, on_result=lambda i, r: events.append(("result", i, r)))
    handed = [e for e in events if e[0] == "result"]
    assert [i for _, i, _ in handed] == [0, 1, 2] and all(
        r is batch[i] for _, i, r in handed)
    times = [r.inference_ms for r in batch]
    assert times == sorted(times) and times[0] > 0
    if name == "onnxruntime":  # frame by frame: result i before frame i + 1 is prepared
        assert [e[0] for e in events] == ["prepare", "result"] * 3
    else:  # one run: every frame prepared first, then every result
        assert [e[0] for e in events] == ["prepare"] * 3 + ["result"] * 3
