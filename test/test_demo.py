"""`make demo` end to end.

The node as its own process, the player, lifecycle services, DDS (in the ROS test environment
of test/ros_harness.py).
"""
import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("rclpy")

from flowclas_ros.node.image_player import default_sequence, iter_frames  # noqa: E402
from flowclas_ros.tools.demo import main as demo_main  # noqa: E402


def _frames(folder, n=3, size=(64, 48)):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(
            folder / f"f{i}.png")
    return folder


def test_iter_frames_reads_folders_videos_and_refuses_the_rest(tmp_path):
    frames = list(iter_frames(_frames(tmp_path / "imgs")))
    assert len(frames) == 3 and frames[0].shape == (48, 64, 3) and frames[0].dtype == np.uint8
    av = pytest.importorskip("av")
    video = tmp_path / "clip.mp4"
    with av.open(str(video), "w") as container:
        stream = container.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(4):
            img = np.full((48, 64, 3), 40 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    decoded = list(iter_frames(video))
    assert len(decoded) == 4 and decoded[0].shape == (48, 64, 3)
    assert abs(int(decoded[3].mean()) - 120) < 10  # the content survives the codec
    with pytest.raises(FileNotFoundError):
        next(iter_frames(tmp_path / "absent"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        next(iter_frames(tmp_path / "notes.txt"))


def test_shipped_demo_sequence_is_small_and_attributed():
    seq = default_sequence()
    files = sorted(seq.glob("*.jpg"))
    assert seq.name == "demo_sequence_kitti" and 0 < len(files) <= 20
    assert "CC BY-NC-SA 3.0" in (seq / "ATTRIBUTION.md").read_text()  # KITTI raw
    old = seq.parent / "demo_sequence"  # the previous sequence, still used by the benchmarks
    assert 0 < len(list(old.glob("*.jpg"))) <= 20
    assert "CC BY-NC 4.0" in (old / "ATTRIBUTION.md").read_text()


@pytest.mark.ros
def test_demo_writes_overlays_and_summary(tmp_path, tiny_bundle, ros_env):
    # ros_env (test/ros_harness.py): the demo's node and client on this session's domain, on
    # loopback, with the shipped DDS profile; os.environ as it was after the test
    out = tmp_path / "demo_output"
    code = demo_main(["--source", str(_frames(tmp_path / "imgs")), "--model", str(tiny_bundle),
                      "--rate", "10", "--backend", "onnxruntime", "--out", str(out),
                      "--timeout", "60"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames_published"] == 3
    assert summary["frames_received"] == 3 and summary["overlays_written"] == 3
    assert summary["latency_ms"]["p50"] > 0 and summary["throughput_fps"] > 0
    overlay = np.asarray(Image.open(out / "overlay_0000.png"))
    assert overlay.shape == (48, 64, 3)


def test_demo_refuses_a_missing_bundle(tmp_path, capsys):
    assert demo_main(["--model", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    assert "no model bundle" in capsys.readouterr().err
