"""Robot recordings.

Bags written here (rosbag2 sqlite3 and MCAP, raw and compressed images, an encoding the node
rejects, truncated data), read as training data, calibrated on, replayed by the player, their
outputs written to a new bag, and compressed frames into the node. The tests that start rclpy
do it through test/ros_harness.py (the ``ros``, ``nodes`` and ``ros_env`` fixtures).
"""
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

rosbags = pytest.importorskip("rosbags", reason="the rosbags package is not installed")

from rosbags.rosbag2 import StoragePlugin, Writer  # noqa: E402
from rosbags.typesys import Stores, get_typestore  # noqa: E402

from flowclas_ros.data.bags import (  # noqa: E402
    BagSelection,
    bag_dataset,
    bag_topics,
    iter_bag_frames,
    time_split,
)
from flowclas_ros.data.datasets import build_dataset  # noqa: E402
from flowclas_ros.image_codec import ImageFormatError, compressed_to_rgb, rgb_to_compressed  # noqa: E402

TS = get_typestore(Stores.ROS2_JAZZY)


def frame(i: int, h: int = 24, w: int = 32) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([yy * 4 + i * 3, xx * 5, np.full_like(yy, 60 + i)], -1).astype(np.uint8)


def write_bag(path: Path, n: int = 20, *, storage=StoragePlugin.MCAP, compressed=False,
              bad: dict | None = None, period_s: float = 0.5, topic="/cam/image",
              more_cameras: dict[str, int] | None = None) -> Path:
    """N frames at 1/period_s Hz; ``bad``: {index: "encoding" | "truncated"} broken messages.

    ``more_cameras``: {topic: seed} more raw cameras in the same recording, each seeing the
    same scene through its own noise (a camera of its own).
    """
    Image = TS.types["sensor_msgs/msg/Image"]
    CI = TS.types["sensor_msgs/msg/CompressedImage"]
    Header = TS.types["std_msgs/msg/Header"]
    Time = TS.types["builtin_interfaces/msg/Time"]
    msgtype = (CI if compressed else Image).__msgtype__
    with Writer(path, version=9, storage_plugin=storage) as w:
        conn = w.add_connection(topic, msgtype, typestore=TS)
        other = w.add_connection("/imu", "std_msgs/msg/String", typestore=TS)
        more = {t: (w.add_connection(t, Image.__msgtype__, typestore=TS),
                    np.random.default_rng(seed)) for t, seed in (more_cameras or {}).items()}
        for i in range(n):
            t_ns = 1_700_000_000_000_000_000 + int(i * period_s * 1e9)
            header = Header(stamp=Time(sec=100 + i, nanosec=7), frame_id="cam")
            rgb = frame(i)
            kind = (bad or {}).get(i)
            if compressed:
                data = rgb_to_compressed(rgb, "jpeg" if i % 2 else "png")
                if kind == "truncated":
                    data = data[: len(data) // 2]
                msg = CI(header=header, format="rgb8; jpeg compressed bgr8" if i % 2 else "png",
                         data=np.frombuffer(data, np.uint8))
            else:
                enc = "yuv422" if kind == "encoding" else "bgr8"
                data = rgb[:, :, ::-1].reshape(-1)
                if kind == "truncated":
                    data = data[:-10]
                msg = Image(header=header, height=24, width=32, encoding=enc, is_bigendian=0,
                            step=96, data=np.ascontiguousarray(data))
            w.write(conn, t_ns, TS.serialize_cdr(msg, msgtype))
            for c, rng in more.values():
                noisy = np.clip(rgb + rng.normal(0, 40, rgb.shape), 0, 255).astype(np.uint8)
                w.write(c, t_ns, TS.serialize_cdr(
                    Image(header=header, height=24, width=32, encoding="rgb8", is_bigendian=0,
                          step=96, data=noisy.reshape(-1)), Image.__msgtype__))
            w.write(other, t_ns, TS.serialize_cdr(TS.types["std_msgs/msg/String"](data="x"),
                                                  "std_msgs/msg/String"))
    return path


@pytest.mark.parametrize("storage", [StoragePlugin.MCAP, StoragePlugin.SQLITE3])
@pytest.mark.parametrize("compressed", [False, True])
def test_bags_stream_their_frames(tmp_path, storage, compressed):
    bag = write_bag(tmp_path / "bag", storage=storage, compressed=compressed)
    topics = bag_topics(bag)
    assert list(topics) == ["/cam/image"] and topics["/cam/image"][1] == 20
    counts: dict = {}
    frames = list(iter_bag_frames(bag, BagSelection("/cam/image", stride=3), counts))
    assert counts["messages"] == 20 and counts["frames"] == 7 and counts["skipped"] == 0
    assert [f.stamp for f in frames[:2]] == [(100, 7), (103, 7)] and frames[0].frame_id == "cam"
    for f, i in zip(frames, range(0, 20, 3)):
        err = np.abs(f.rgb.astype(int) - frame(i))
        if compressed and i % 2:  # jpeg is lossy
            assert err.mean() < 4
        else:
            assert err.max() == 0
    # a time range in seconds from the start of the recording: frames 4..9 at 2 Hz
    window = list(iter_bag_frames(bag, BagSelection("/cam/image", start_s=2.0, end_s=4.9)))
    assert [f.stamp[0] for f in window] == list(range(104, 110))


def test_a_bare_mcap_file_and_bad_messages(tmp_path):
    write_bag(tmp_path / "bag", bad={3: "encoding", 5: "truncated"})
    mcap = next((tmp_path / "bag").glob("*.mcap"))
    counts: dict = {}
    frames = list(iter_bag_frames(mcap, BagSelection("/cam/image"), counts))
    assert len(frames) == 18 and counts["skipped"] == 2
    assert any("yuv422" in e for e in counts["errors"])
    cbag = write_bag(tmp_path / "cbag", compressed=True, bad={2: "truncated"})
    counts = {}
    assert len(list(iter_bag_frames(cbag, BagSelection("/cam/image"), counts))) == 19
    assert counts["skipped"] == 1
    with pytest.raises(ValueError, match="no topic '/nope'.*'/cam/image'"):
        list(iter_bag_frames(mcap, BagSelection("/nope")))
    with pytest.raises(ValueError, match="not an image topic"):
        list(iter_bag_frames(mcap, BagSelection("/imu")))


def test_a_truncated_bag_file_is_an_error_not_a_hang(tmp_path):
    write_bag(tmp_path / "bag")
    mcap = next((tmp_path / "bag").glob("*.mcap"))
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(mcap.read_bytes()[: mcap.stat().st_size // 3])
    with pytest.raises(Exception) as info:
        list(iter_bag_frames(cut, BagSelection("/cam/image")))
    assert not isinstance(info.value, (KeyboardInterrupt, SystemExit))


def test_split_by_time_keeps_parts_apart():
    ts = [int(i * 0.1e9) for i in range(1000)]  # 100 s at 10 Hz
    parts = time_split(ts, (0.7, 0.15, 0.15), gap_s=1.0)
    assert parts["train"] and parts["calibration"] and parts["test"]
    assert max(parts["train"]) < min(parts["calibration"]) < min(parts["test"])
    gap = lambda a, b: (ts[min(parts[b])] - ts[max(parts[a])]) / 1e9  # noqa: E731
    assert gap("train", "calibration") >= 1.0 and gap("calibration", "test") >= 1.0
    assert abs(len(parts["train"]) / 1000 - 0.7) < 0.02


def test_bag_dataset_extracts_once_and_splits(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWCLAS_CACHE", str(tmp_path / "cache"))
    bag = write_bag(tmp_path / "bag", n=40, period_s=0.5)
    logs = []
    train = build_dataset("bag", bag, "train", topic="/cam/image", log=logs.append)
    cal = bag_dataset(bag, "calibration", topic="/cam/image", log=logs.append)
    test = bag_dataset(bag, "test", topic="/cam/image", log=logs.append)
    assert len(logs) == 1  # extracted once, then read from the cache
    assert len(train) + len(cal) + len(test) < 40  # the gaps between the parts
    assert max(train.names) < min(cal.names) < min(test.names)
    s = train[0]
    assert s.image.shape == (24, 32, 3) and (s.label == 0).all()
    with pytest.raises(ValueError, match="topic"):
        bag_dataset(bag, "train")


def test_compressed_decoding_refuses_what_it_cannot_read():
    good = rgb_to_compressed(frame(1), "png")

    class M:
        def __init__(self, fmt, data):
            self.format, self.data = fmt, data

    assert np.array_equal(compressed_to_rgb(M("png", good)), frame(1))
    for fmt, data, what in (("png", good[:50], "cannot decode"), ("jpeg", b"", "no data"),
                            ("tiff", good, "unsupported"), ("jpeg", good, "data is png")):
        with pytest.raises(ImageFormatError, match=what):
            compressed_to_rgb(M(fmt, data))
    from flowclas_ros.image_codec import ImageTooLarge

    with pytest.raises(ImageTooLarge):
        compressed_to_rgb(M("png", good), max_pixels=100)


# --- train, calibrate, write outputs --------------------------------------------------------

def _tiny_config(tmp_path: Path) -> Path:
    import yaml
    from test_training import make_fixture

    data = make_fixture(tmp_path / "data")
    cfg = {"model": {"backbone": {"name": "tiny", "channels": 16},
                     "flow": {"steps": 2, "hidden": 8, "subnet": "simple"}, "proj_dim": 8},
           "data": {"outliers": str(data / "outliers"), "outlier_filter": "none"},
           "cache": {"dir": str(tmp_path / "fcache"), "variants": 1},
           "train": {"epochs": 2, "batch_size": 2, "lr": 1.0e-2, "max_views": 16,
                     "progress": False, "checkpoint_every": 100}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_train_export_calibrate_and_outputs_from_a_bag(tmp_path, monkeypatch, capsys):
    from flowclas_ros.bundle.reader import load_bundle
    from flowclas_ros.tools import export as export_mod
    from flowclas_ros.tools.bag_outputs import main as outputs_main
    from flowclas_ros.tools.train import main as train_main

    monkeypatch.setenv("FLOWCLAS_CACHE", str(tmp_path / "cache"))
    bag = write_bag(tmp_path / "drive", n=40, compressed=True)
    run = tmp_path / "run"
    config = _tiny_config(tmp_path)
    # a config that selects on the road protocol (as the demo's does): a bag run trains without it
    config.write_text(config.read_text() + f"eval: {{protocol: {tmp_path / 'no_protocol'}}}\n")
    assert train_main(["--config", str(config), "--bag", str(bag), "--topic",
                       "/cam/image", "--out", str(run), "--quiet"]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["eval"]["protocol"] is None
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] > 0 and summary["cache"]["path"]
    out = tmp_path / "bundle"
    assert export_mod.main(["--checkpoint", str(run / "checkpoints" / "last.pt"), "--out",
                            str(out), "--input-size", "24", "32", "--calibration-bag", str(bag),
                            "--topic", "/cam/image", "--fpr", "0.1", "--no-verify"]) == 0
    b = load_bundle(out)
    cal = b.manifest["metrics"]["calibration"]
    assert b.threshold_fpr == 0.1 and cal["fpr_at_threshold"] <= 0.1
    assert cal["test_frames"] > 0 and 0.0 <= cal["test_fpr_at_threshold"] <= 1.0
    assert "calibration part of drive" in b.manifest["threshold"]["method"]
    assert "test_fpr_at_threshold" in (out / "MODEL_CARD.md").read_text()
    capsys.readouterr()
    assert outputs_main(["--bag", str(bag), "--topic", "/cam/image", "--model", str(out),
                         "--out", str(tmp_path / "drive_anomaly"), "--backend", "onnxruntime",
                         "--copy-input"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["frames"] == 40 and report["skipped"] == 0
    written = bag_topics(tmp_path / "drive_anomaly")
    assert {t: c for t, (_, c) in written.items()} == {
        "/anomaly/heatmap": 40, "/anomaly/mask": 40, "/anomaly/overlay": 40, "/cam/image": 40}
    stamps = [f.stamp for f in iter_bag_frames(tmp_path / "drive_anomaly",
                                               BagSelection("/anomaly/mask"))]
    assert stamps[:3] == [(100, 7), (101, 7), (102, 7)]  # the recording's own stamps


# --- replay and compressed input over DDS ----------------------------------------------------

@pytest.mark.ros
def test_player_replays_a_bag_with_its_stamps_into_the_compressed_input(tmp_path, tiny_bundle,
                                                                        ros, nodes):
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from ros_harness import wait_matched, wait_until

    from flowclas_ros.node.image_player import ImagePlayer

    bag = write_bag(tmp_path / "bag", n=10, compressed=True, bad={4: "truncated"},
                    period_s=0.05)
    node = nodes("/bag", model_path=str(tiny_bundle), image_transport="compressed",
                 image_qos="reliable")
    player = ros.add(ImagePlayer("player", namespace="/bag", context=ros.node_ctx,
                                 parameter_overrides=[
                                     Parameter("source", value=str(bag)),
                                     Parameter("topic", value="/cam/image"),
                                     Parameter("rate", value=0.0),
                                     Parameter("transport", value="compressed")]))
    probe = ros.probe("/bag", ("heatmap",),
                      QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE))
    try:
        ros.bring_up(node.get_fully_qualified_name())
        wait_matched(node, player.publisher, ("heatmap",))
        player.start()
        wait_until(lambda: player.finished, what="the player to finish")
        wait_until(lambda: node.stats()["published"] + node.stats()["malformed"] >= player.sent,
                   what="every frame sent to be served")
        stats = node.stats()
        assert player.sent == 9  # the truncated frame does not decode: the player skips it
        assert stats["malformed"] == 0 and stats["published"] == 9
        wait_until(lambda: len(probe.stamps("heatmap")) >= stats["published"],
                   what="every heatmap at the client")
        got = probe.stamps("heatmap")
        assert sorted(got)[:2] == [(100, 7), (101, 7)]  # the recording's stamps, kept
    finally:
        probe.close()
        ros.remove(player)


def test_player_paces_a_recording_on_its_own_thread(tmp_path, ros_env):
    """Check that the recorded rate is kept without any executor spinning the player.

    A busy executor made a timer-paced replay stall and then burst. Every frame goes out, at the
    recorded spacing.
    """
    import time

    from rclpy.parameter import Parameter
    from ros_harness import ros_context, wait_until

    from flowclas_ros.node.image_player import ImagePlayer

    bag = write_bag(tmp_path / "bag", n=6, period_s=0.05)
    with ros_context() as ctx:
        player = ImagePlayer("pacer", context=ctx, parameter_overrides=[
            Parameter("source", value=str(bag)), Parameter("topic", value="/cam/image"),
            Parameter("rate", value=0.0)])
        sent_at = []
        publish = player.publisher.publish
        player.publisher.publish = lambda msg: (sent_at.append(time.monotonic()), publish(msg))
        try:
            player.start()
            wait_until(lambda: player.finished, timeout=15, what="the player to finish")
            assert player.finished and player.sent == 6
            # never ahead of the recording's own 50 ms spacing (late is allowed on a busy machine)
            offsets = np.asarray(sent_at) - sent_at[0]
            assert np.all(offsets >= np.arange(6) * 0.05 - 0.005), offsets
        finally:
            player.destroy_node()
