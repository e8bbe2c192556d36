"""bench.node --null-backend: the node's plumbing timed around a backend that computes nothing."""
from __future__ import annotations

import array

import numpy as np
import pytest

from flowclas_ros.tools.bench.null_backend import NullBackend


class _Inner:
    name, device = "onnxruntime", "cpu"

    def infer(self, image, **kw):  # the real backend must never run
        raise AssertionError("the wrapped backend's infer ran")


def test_gives_a_heatmap_of_the_frames_size_in_a_message_buffer_after_its_time():
    be = NullBackend(_Inner(), ms=5)
    result = be.infer(np.zeros((30, 40, 3), np.uint8), heatmap=True, mask=True)
    hm = result.heatmap
    assert hm.shape == (30, 40) and hm.dtype == np.float32 and np.isfinite(hm).all()
    assert result.mask is None and result.overlay is None
    assert result.inference_ms >= 5
    base = hm.base
    while isinstance(base, (np.ndarray, memoryview)):  # shared with the message, as a pipeline's
        base = base.obj if isinstance(base, memoryview) else base.base
    assert isinstance(base, array.array) and len(base) == hm.nbytes
    assert be.name == "onnxruntime" and be.device == "cpu"  # the rest is the real backend's


def test_batches_one_frame_after_the_other_each_handed_over_when_ready():
    be = NullBackend(_Inner(), ms=0)
    seen = []
    results = be.infer_batch([np.zeros((8, 8, 3), np.uint8), np.zeros((4, 6, 3), np.uint8)],
                             heatmap=[True, True], on_result=lambda i, r: seen.append(i))
    assert seen == [0, 1] and [r.heatmap.shape for r in results] == [(8, 8), (4, 6)]


def test_refuses_a_negative_time():
    with pytest.raises(ValueError, match=">= 0"):
        NullBackend(_Inner(), ms=-1)


def test_measures_the_nodes_plumbing_over_dds(ros_env, tiny_bundle):
    pytest.importorskip("rclpy", reason="rclpy (ROS 2 Jazzy) is not installed")
    from flowclas_ros.tools.bench import node as bench_node

    r = bench_node.run(tiny_bundle, frames=5, warmup=2, height=48, width=64,
                       backend="onnxruntime", device="cpu", precision="fp32",
                       domain_id=int(ros_env["ROS_DOMAIN_ID"]), null_backend_ms=15)
    assert r["null_backend_ms"] == 15 and r["frames"] + r["lost"] == 5 and r["frames"] >= 1
    be, e2e = r["backend_ms"], r["end_to_end_ms"]
    assert be["p50"] >= 15  # the null backend's own time, not the model's
    assert e2e["p50"] > be["p50"] and r["node_receive_to_publish_ms"]["p50"] >= be["p50"]
