"""vision_msgs for the tests (test/ros_msgs.py, test/msgs/vision_msgs).

Built from the PyPI rosidl wheels, cached, importable here and in a process of its own, and a
Detection2DArray goes over real DDS between the two with every field intact, both ways.

The first run builds the package (25-45 s on two cores); later runs reuse the cache.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import ros_msgs
from vision_msgs_peer import as_plain, sample_message

HERE = Path(__file__).resolve().parent
MSG_FILES = ("BoundingBox2D", "BoundingBox2DArray", "BoundingBox3D", "BoundingBox3DArray",
             "Classification", "Detection2D", "Detection2DArray", "Detection3D",
             "Detection3DArray", "LabelInfo", "ObjectHypothesis", "ObjectHypothesisWithPose",
             "Point2D", "Pose2D", "VisionClass", "VisionInfo")
# The RIHS01 type hash of Detection2DArray in the released vision_msgs 4.1.1 (Jazzy), from its
# field definitions and those of std_msgs/geometry_msgs 5.3.6: ours must be the same type.
DETECTION2D_ARRAY_HASH = "RIHS01_214274120007f4a683866481336b70310268cfa107aebe9d594a6acf75bda968"


# the definitions and the cache (no build) ---------------------------------------------------
def test_package_defines_the_documented_messages():
    catkin_pkg = pytest.importorskip("catkin_pkg.package")
    src = HERE / "msgs" / "vision_msgs"
    pkg = catkin_pkg.parse_package(str(src / "package.xml"))
    pkg.validate()
    assert pkg.name == "vision_msgs" and "rosidl_interface_packages" in [
        g.name for g in pkg.member_of_groups]
    assert sorted(p.stem for p in (src / "msg").glob("*.msg")) == sorted(MSG_FILES)

    def fields(name):
        lines = (src / "msg" / f"{name}.msg").read_text().splitlines()
        return [tuple(ln.split()[:2]) for ln in lines if ln.strip() and not ln.startswith("#")]

    # the types, field for field in the documented order (DDS layouts depend on it)
    assert fields("Detection2DArray") == [("std_msgs/Header", "header"),
                                          ("Detection2D[]", "detections")]
    assert fields("Detection2D") == [("std_msgs/Header", "header"),
                                     ("ObjectHypothesisWithPose[]", "results"),
                                     ("BoundingBox2D", "bbox"), ("string", "id")]
    assert fields("ObjectHypothesisWithPose") == [
        ("ObjectHypothesis", "hypothesis"), ("geometry_msgs/PoseWithCovariance", "pose")]
    assert fields("ObjectHypothesis") == [("string", "class_id"), ("float64", "score")]
    assert fields("BoundingBox2D") == [("vision_msgs/Pose2D", "center"),
                                       ("float64", "size_x"), ("float64", "size_y")]
    assert fields("Pose2D") == [("vision_msgs/Point2D", "position"), ("float64", "theta")]
    assert fields("Point2D") == [("float64", "x"), ("float64", "y")]


def test_one_build_per_key_under_concurrent_callers(tmp_path, monkeypatch):
    """Check that two callers at once make one build per key.

    One builds while the other waits on the lock and takes its result; a failed build leaves
    nothing that counts as built, and the next call builds again.
    """
    monkeypatch.setenv(ros_msgs.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(ros_msgs, "missing_toolchain", lambda: None)
    monkeypatch.setattr(ros_msgs, "build_key", lambda package: "k")
    calls, started, release = [], threading.Event(), threading.Event()

    def fake_build(package, install, work):
        calls.append(package)
        started.set()
        assert release.wait(30)
        if len(calls) == 1:
            (install / "share" / package).mkdir(parents=True)
            (install / "share" / package / "package.xml").write_text("<package/>")

    monkeypatch.setattr(ros_msgs, "_colcon_build", fake_build)
    waiting = threading.Event()

    def lock_poll(seconds):  # the second caller found the lock taken
        waiting.set()
        time.sleep(min(seconds, 0.05))

    monkeypatch.setattr(ros_msgs, "time", SimpleNamespace(monotonic=time.monotonic,
                                                          sleep=lock_poll))
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(ros_msgs.build("vision_msgs")))
               for _ in range(2)]
    threads[0].start()
    assert started.wait(30)
    threads[1].start()
    assert waiting.wait(30)  # blocked on the lock while the first builds
    release.set()
    for t in threads:
        t.join(30)
    assert len(calls) == 1 and results == [tmp_path / "ros_msgs" / "vision_msgs" / "k"] * 2
    assert sorted(p.name for p in results[0].parent.iterdir()) == ["k", "k.lock"]  # no staging

    def failing(package, install, work):
        install.mkdir(parents=True)
        raise ros_msgs.BuildError("compiler said no")

    monkeypatch.setattr(ros_msgs, "build_key", lambda package: "k2")
    monkeypatch.setattr(ros_msgs, "_colcon_build", failing)
    with pytest.raises(ros_msgs.BuildError, match="compiler said no"):
        ros_msgs.build("vision_msgs")
    assert not (results[0].parent / "k2").exists()


def test_cache_key_follows_the_definitions(tmp_path, monkeypatch):
    key = ros_msgs.build_key("vision_msgs")
    assert key == ros_msgs.build_key("vision_msgs")
    copy = tmp_path / "vision_msgs"
    copy.mkdir()
    for f in (HERE / "msgs" / "vision_msgs").rglob("*"):
        if f.is_file():
            (copy / f.relative_to(HERE / "msgs" / "vision_msgs")).parent.mkdir(
                parents=True, exist_ok=True)
            (copy / f.relative_to(HERE / "msgs" / "vision_msgs")).write_bytes(f.read_bytes())
    monkeypatch.setattr(ros_msgs, "MSGS", tmp_path)
    assert ros_msgs.build_key("vision_msgs") == key
    (copy / "msg" / "Point2D.msg").write_text("float64 x\nfloat64 y\nfloat64 z\n")
    assert ros_msgs.build_key("vision_msgs") != key


# the build and DDS ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vision_msgs():
    """Return the built package's ``vision_msgs.msg``, importable in this process."""
    return ros_msgs.ensure_vision_msgs()


@pytest.fixture(scope="module")
def peer_env(vision_msgs):
    import ros_harness

    return ros_harness.subprocess_env(**ros_msgs.vision_msgs_env())


def _spawn(env, role: str, topic: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HERE / "vision_msgs_peer.py"), role, topic],
                            cwd=HERE, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 30.0) -> str:
    """Close the peer's stdin (a publishing peer stops on it), wait for it, return its output.

    The output is a few lines: no pipe fills up.
    """
    proc.stdin.close()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"the peer did not exit:\n{proc.stdout.read()}") from None
    return proc.stdout.read()


def _check(got: dict, expected: dict) -> None:
    """Field by field first (a readable failure), then the whole message."""
    assert got["header"] == expected["header"]
    assert len(got["detections"]) == 2
    for g, e in zip(got["detections"], expected["detections"]):
        assert (g["header"], g["id"], g["bbox"]) == (e["header"], e["id"], e["bbox"])
        assert [r["hypothesis"] for r in g["results"]] == [r["hypothesis"] for r in e["results"]]
        assert [r["pose"] for r in g["results"]] == [r["pose"] for r in e["results"]]
    assert got == expected


@pytest.mark.slow
def test_vision_msgs_imports_in_process_and_in_a_subprocess(vision_msgs, peer_env):
    from rclpy.serialization import deserialize_message, serialize_message

    msg = sample_message(vision_msgs)
    assert deserialize_message(serialize_message(msg), vision_msgs.Detection2DArray) == msg
    # the other process's bytes (CDR: its padding bytes are not defined, so compare messages)
    code = ("import sys; from vision_msgs import msg; from vision_msgs_peer import sample_message;"
            "from rclpy.serialization import serialize_message as s;"
            "sys.stdout.write(s(sample_message(msg)).hex())")
    out = subprocess.run([sys.executable, "-c", code], cwd=HERE, env=peer_env,
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert deserialize_message(bytes.fromhex(out.stdout), vision_msgs.Detection2DArray) == msg


@pytest.mark.ros
@pytest.mark.slow
def test_detections_from_another_process_arrive_intact(ros, vision_msgs, peer_env):
    from ros_harness import TIMEOUT, Probe, wait_until

    topic = "/t_vision/from_peer"
    probe = Probe(ros.client, {"det": topic}, msg_type=vision_msgs.Detection2DArray)
    proc = _spawn(peer_env, "pub", topic)
    try:
        wait_until(lambda: probe.msgs["det"] or proc.poll() is not None, timeout=2 * TIMEOUT,
                   what=f"a Detection2DArray from the peer on {topic}")
        types = dict(ros.client.get_topic_names_and_types())
        assert types.get(topic) == ["vision_msgs/msg/Detection2DArray"], types
        # the peer's type as discovery announced it: the released package's type hash
        peers = [i for i in ros.client.get_publishers_info_by_topic(topic)
                 if i.node_name == "vision_msgs_pub"]
        assert [str(i.topic_type_hash) for i in peers] == [DETECTION2D_ARRAY_HASH], peers
    finally:
        probe.close()
        log = _finish(proc)  # the peer stops publishing and exits
    assert proc.returncode == 0 and probe.msgs["det"], log
    got = probe.msgs["det"][0]
    _check(as_plain(got), as_plain(sample_message(vision_msgs)))
    assert got == sample_message(vision_msgs)


@pytest.mark.ros
@pytest.mark.slow
def test_detections_published_here_arrive_intact_in_another_process(ros, vision_msgs, peer_env):
    from ros_harness import TIMEOUT

    topic = "/t_vision/to_peer"
    pub = ros.publisher(topic, vision_msgs.Detection2DArray)
    message = sample_message(vision_msgs)
    proc = _spawn(peer_env, "sub", topic)
    deadline = time.monotonic() + 2 * TIMEOUT
    try:
        # publish (again every half second: it may precede discovery) until the peer has it
        while proc.poll() is None and time.monotonic() < deadline:
            if pub.get_subscription_count() > 0:
                pub.publish(message)
            try:
                proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
    finally:
        ros.client.destroy_publisher(pub)
        log = _finish(proc)
    assert proc.returncode == 0, log
    result = [ln for ln in log.splitlines() if ln.startswith("RESULT ")]
    assert result, log
    _check(json.loads(result[0][len("RESULT "):]), as_plain(message))
