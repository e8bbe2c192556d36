"""bench.node --node-process: the node in its own process, measured over DDS between processes."""
from __future__ import annotations

import pytest

pytest.importorskip("rclpy", reason="rclpy (ROS 2 Jazzy) is not installed")

from flowclas_ros.tools.bench import node_process  # noqa: E402


def test_measures_a_node_process_end_to_end_against_its_own_backend_time(
        ros_env, tiny_bundle, tmp_path):
    r = node_process.run(tiny_bundle, frames=6, warmup=2, height=48, width=64,
                         backend="onnxruntime", device="cpu", precision="fp32",
                         domain_id=int(ros_env["ROS_DOMAIN_ID"]), log_dir=tmp_path)
    assert r["frames"] + r["lost"] == 6 and r["frames"] >= 1
    assert r["backend"] == "onnxruntime" and r["device"] == "cpu"
    be, e2e = r["backend_ms"], r["end_to_end_ms"]
    # per frame the node's receive-to-publish holds its inference (the same frames' windows)
    assert 0 < be["p50"] <= r["node_receive_to_publish_ms"]["p50"] and e2e["p50"] > 0
    assert r["ratio_p50"] == pytest.approx(e2e["p50"] / be["p50"])
    assert (tmp_path / "node_64x48.log").is_file()  # the node process's log, for a failed run
