"""The flowclas_anomaly lifecycle node over real DDS on loopback (rclpy, Fast DDS).

The node runs in its own rclpy Context (its own DDS participant) on a MultiThreadedExecutor in
a background thread; the test side is a second Context with its own executor, so every message
and service call goes through DDS. Lifecycle transitions use the node's real
``change_state``/``get_state`` services, parameters the real ``set_parameters`` service. Two
tests start the ``python -m flowclas_ros.tools.anomaly_node`` executable as a subprocess.

The contexts, executors, service calls, probes and waits are test/ros_harness.py's (the ``ros``
and ``nodes`` fixtures: conftest.py). Waiting is on events (futures, threading.Event, counters
polled with a deadline); the only deliberate delay is the simulated slow backend of the flood
test.
"""
from __future__ import annotations

import gc
import importlib.util
import math
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy (ROS 2 Jazzy) is not installed")

import yaml  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from ros_harness import OUTPUTS, TIMEOUT, Probe, subprocess_env, wait_matched, wait_until  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from flowclas_ros.image_codec import image_to_rgb  # noqa: E402
from flowclas_ros.node import anomaly_node as an  # noqa: E402

pytestmark = pytest.mark.ros

ROOT = Path(__file__).resolve().parents[1]


# fixtures (ros, nodes: conftest.py over ros_harness.py) --------------------------------------
class WrappedBackend:
    """The real backend, recording calls; optional delay or gate to make inference slow."""

    def __init__(self, inner, delay: float = 0.0):
        self.inner, self.delay = inner, delay
        self.calls: list[tuple[tuple, dict]] = []
        self.durations: list[float] = []
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.closed = False
        self._pause = threading.Event()  # never set: waiting on it is the simulated work

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def infer(self, image, **kw):
        t0 = time.monotonic()
        self.calls.append((image.shape, kw))
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(TIMEOUT)
        if self.delay:
            self._pause.wait(self.delay)  # the simulated slow backend
        try:
            return self.inner.infer(image, **kw)
        finally:
            self.durations.append(time.monotonic() - t0)

    def close(self):
        self.closed = True
        self.inner.close()


def wrapping_factory(delay: float = 0.0):
    """backend_factory for the node that keeps the wrappers it made (``.made``)."""
    made: list[WrappedBackend] = []

    def factory(bundle, backend, device, precision, **cpu):
        from flowclas_ros.runtime import create_backend

        made.append(WrappedBackend(create_backend(bundle, backend=backend, device=device,
                                                  precision=precision, **cpu), delay))
        return made[-1]

    factory.made = made
    return factory


def rgb_image(h=48, w=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# tests --------------------------------------------------------------------------------------
def test_outputs_have_encodings_sizes_and_input_header(ros, nodes, tiny_bundle):
    ns = "/t_io"
    node = nodes(ns, model_path=str(tiny_bundle))  # default image_qos: sensor_data
    ros.bring_up(node.get_fully_qualified_name())
    probe, pub = ros.probe(ns), ros.publisher(f"{ns}/image")
    wait_matched(node, pub, OUTPUTS)
    rgb = rgb_image(48, 64)
    grey16 = (rgb[:, :, 0].astype(np.uint16) * 257)
    alpha = np.full((48, 64, 1), 9, np.uint8)
    inputs = [
        ("rgb8", rgb, {}),
        ("bgr8", rgb[:, :, ::-1], {"step": 64 * 3 + 8}),  # padded rows
        ("rgba8", np.concatenate([rgb, alpha], 2), {}),
        ("bgra8", np.concatenate([rgb[:, :, ::-1], alpha], 2), {"step": 64 * 4 + 4}),
        ("mono8", rgb[:, :, 0], {"step": 70}),
        ("mono16", grey16, {"big_endian": True}),
        ("mono16", grey16, {"big_endian": False, "step": 130}),
    ]
    for enc, arr, kw in inputs:
        msg = ros.frame(arr, enc, frame_id=f"cam_{enc}", **kw)
        out = ros.roundtrip(pub, probe, msg)
        for key, expected_enc in zip(OUTPUTS, ("32FC1", "mono8", "bgr8")):
            m = out[key]
            assert m.encoding == expected_enc, (enc, key)
            assert (m.height, m.width) == (48, 64), (enc, key)
            assert m.header.frame_id == f"cam_{enc}"
            assert (m.header.stamp.sec, m.header.stamp.nanosec) == (
                msg.header.stamp.sec, msg.header.stamp.nanosec)
        hm = np.frombuffer(out["heatmap"].data, ">f4" if out["heatmap"].is_bigendian else "<f4")
        assert hm.size == 48 * 64 and np.isfinite(hm).all()
        assert set(np.unique(np.frombuffer(out["mask"].data, np.uint8))) <= {0, 255}
        assert image_to_rgb(out["overlay"]).shape == (48, 64, 3)
    # same pixels -> same heatmap whatever the encoding (rgb8 vs padded bgr8)
    a = ros.roundtrip(pub, probe, ros.frame(rgb, "rgb8"), keys=["heatmap"])["heatmap"]
    b = ros.roundtrip(pub, probe, ros.frame(rgb[:, :, ::-1], "bgr8", step=200),
                      keys=["heatmap"])["heatmap"]
    assert bytes(a.data) == bytes(b.data)
    s = node.stats()
    assert s["published"] >= len(inputs) and s["malformed"] == 0 and s["errors"] == 0
    probe.close()
    ros.client.destroy_publisher(pub)


def test_every_lifecycle_transition_and_shutdown_from_each_state(ros, nodes, tiny_bundle):
    T = Transition
    factory = wrapping_factory()
    ns = "/t_lc"
    node = nodes(ns, model_path=str(tiny_bundle), image_qos="reliable", backend_factory=factory)
    fqn = node.get_fully_qualified_name()
    pub = ros.publisher(f"{ns}/image")
    assert ros.get_state(fqn) == "unconfigured"
    assert not ros.change_state(fqn, T.TRANSITION_ACTIVATE)  # not from unconfigured
    assert ros.get_state(fqn) == "unconfigured"

    assert ros.change_state(fqn, T.TRANSITION_CONFIGURE)
    assert ros.get_state(fqn) == "inactive" and len(factory.made) == 1
    assert factory.made[0].inner is not None and node._backend is not None
    assert pub.get_subscription_count() == 0  # no subscription until active
    for _ in range(2):  # activate/deactivate twice: the subscription comes and goes over DDS
        assert ros.change_state(fqn, T.TRANSITION_ACTIVATE)
        assert ros.get_state(fqn) == "active"
        wait_until(lambda: pub.get_subscription_count() == 1, what="image subscription")
        assert ros.change_state(fqn, T.TRANSITION_DEACTIVATE)
        assert ros.get_state(fqn) == "inactive"
        wait_until(lambda: pub.get_subscription_count() == 0, what="subscription removed")
    assert ros.change_state(fqn, T.TRANSITION_CLEANUP)
    assert ros.get_state(fqn) == "unconfigured"
    assert factory.made[0].closed and node._backend is None  # backend released
    assert ros.change_state(fqn, T.TRANSITION_CONFIGURE)  # configure again after cleanup
    assert len(factory.made) == 2 and ros.get_state(fqn) == "inactive"
    # shutdown from inactive
    assert ros.change_state(fqn, T.TRANSITION_INACTIVE_SHUTDOWN)
    assert ros.get_state(fqn) == "finalized" and node.finalized.is_set()
    assert factory.made[1].closed
    assert not ros.change_state(fqn, T.TRANSITION_CONFIGURE)  # finalized is final

    # shutdown from unconfigured
    n2 = nodes("/t_lc2", model_path=str(tiny_bundle))
    f2 = n2.get_fully_qualified_name()
    assert ros.change_state(f2, T.TRANSITION_UNCONFIGURED_SHUTDOWN)
    assert ros.get_state(f2) == "finalized"

    # shutdown from active, with the subscription and a backend in place
    f3_factory = wrapping_factory()
    n3 = nodes("/t_lc3", model_path=str(tiny_bundle), image_qos="reliable",
               backend_factory=f3_factory)
    f3 = n3.get_fully_qualified_name()
    pub3 = ros.publisher("/t_lc3/image")
    ros.bring_up(f3)
    wait_until(lambda: pub3.get_subscription_count() == 1, what="image subscription")
    assert ros.change_state(f3, T.TRANSITION_ACTIVE_SHUTDOWN)
    assert ros.get_state(f3) == "finalized"
    assert f3_factory.made[0].closed and n3._sub is None and n3._worker is None
    wait_until(lambda: pub3.get_subscription_count() == 0, what="subscription removed")
    for p in (pub, pub3):
        ros.client.destroy_publisher(p)


def test_configure_fails_with_a_fix_it_message_then_succeeds(ros, nodes, tiny_bundle, tmp_path):
    T = Transition
    node = nodes("/t_cfg", model_path=str(tmp_path / "missing_bundle"))
    fqn = node.get_fully_qualified_name()
    assert not ros.change_state(fqn, T.TRANSITION_CONFIGURE)
    assert ros.get_state(fqn) == "unconfigured"
    assert "missing_bundle" in node.last_error and "model_path" in node.last_error
    assert node._backend is None and not node._pubs

    broken = tmp_path / "broken_bundle"
    broken.mkdir()
    (broken / "manifest.json").write_text("{this is not json")
    assert ros.set_params(fqn, model_path=str(broken))[0].successful
    assert not ros.change_state(fqn, T.TRANSITION_CONFIGURE)
    assert ros.get_state(fqn) == "unconfigured" and "broken_bundle" in node.last_error

    if importlib.util.find_spec("tensorrt") is None:  # a backend this machine cannot run
        assert ros.set_params(fqn, model_path=str(tiny_bundle), backend="tensorrt")[0].successful
        assert not ros.change_state(fqn, T.TRANSITION_CONFIGURE)
        assert ros.get_state(fqn) == "unconfigured" and "backend" in node.last_error
        assert ros.set_params(fqn, backend="auto")[0].successful

    assert ros.set_params(fqn, model_path=str(tiny_bundle))[0].successful
    assert ros.change_state(fqn, T.TRANSITION_CONFIGURE)
    assert ros.get_state(fqn) == "inactive" and node.last_error == ""
    assert gc.get_freeze_count() > 0  # what configure loaded is exempt from the gc's scans
    # structural parameters are refused while a backend is loaded, with the reason
    res = ros.set_params(fqn, model_path=str(broken))[0]
    assert not res.successful and "cleanup" in res.reason
    assert not ros.set_params(fqn, backend="torch")[0].successful
    # ... unless the value is the one it has (ros2 param load of the node's own dump)
    same = ros.set_params(fqn, model_path=str(tiny_bundle),
                          backend=node.get_parameter("backend").value)
    assert [r.successful for r in same] == [True, True], [r.reason for r in same]
    assert ros.change_state(fqn, T.TRANSITION_CLEANUP)
    assert gc.get_freeze_count() == 0  # thawed: the released backend is collected as usual
    assert ros.set_params(fqn, device="cpu")[0].successful  # allowed again once unconfigured


def test_malformed_messages_are_dropped_and_the_node_keeps_serving(ros, nodes, tiny_bundle):
    ns = "/t_bad"
    node = nodes(ns, model_path=str(tiny_bundle), image_qos="reliable")
    ros.bring_up(node.get_fully_qualified_name())
    probe, pub = ros.probe(ns, ("heatmap",)), ros.publisher(f"{ns}/image")
    wait_matched(node, pub, ("heatmap",))

    def bad(**kw):
        m = ros.frame(rgb_image(8, 8))
        for k, v in kw.items():
            setattr(m, k, v)
        return m

    malformed = [
        bad(data=bytes(10)),  # short data
        bad(step=20),  # step smaller than width * 3
        bad(step=30),  # step * height larger than the data
        bad(encoding="yuv422"),  # unknown encoding
        bad(encoding="32FC1"),  # known to ROS, not an input we take
        bad(height=0, width=0, step=0, data=b""),  # zero size
        bad(width=0),
    ]
    for i, m in enumerate(malformed):  # one at a time: the input keeps only the last 2
        pub.publish(m)
        wait_until(lambda: node.stats()["malformed"] == i + 1, what=f"malformed message {i}")
    out = ros.roundtrip(pub, probe, ros.frame(rgb_image()), keys=["heatmap"])
    assert out["heatmap"].width == 64
    s = node.stats()
    assert s["malformed"] == len(malformed) and s["errors"] == 0 and s["dropped"] >= len(malformed)
    assert ros.get_state(node.get_fully_qualified_name()) == "active"
    probe.close()
    ros.client.destroy_publisher(pub)


def test_8k_frame_is_refused_by_the_size_limit_without_exhausting_memory(ros, nodes, tiny_bundle):
    import psutil

    ns = "/t_8k"
    factory = wrapping_factory()
    node = nodes(ns, model_path=str(tiny_bundle), image_qos="reliable", backend_factory=factory)
    fqn = node.get_fully_qualified_name()
    ros.bring_up(fqn)
    probe, pub = ros.probe(ns, ("heatmap",)), ros.publisher(f"{ns}/image")
    wait_matched(node, pub, ("heatmap",))
    assert node.get_parameter("max_image_pixels").value == 3840 * 2160
    rss0 = psutil.Process().memory_info().rss
    big = ros.frame(np.zeros((4320, 7680, 3), np.uint8))  # 8K rgb8: 99.5 MB
    pub.publish(big)
    del big
    wait_until(lambda: node.stats()["oversize"] == 1, what="the 8K frame to be refused")
    assert all(shape[0] * shape[1] <= 3840 * 2160 for shape, _ in factory.made[0].calls)
    # still serving; memory is back near where it was (the refused frame was never copied)
    ros.roundtrip(pub, probe, ros.frame(rgb_image()), keys=["heatmap"])
    grown = (psutil.Process().memory_info().rss - rss0) / 2**20
    assert grown < 400, f"RSS grew by {grown:.0f} MiB"
    # the limit changes live: a 64x48 frame is refused at 1000 pixels, served again after
    assert ros.set_params(fqn, max_image_pixels=1000)[0].successful
    pub.publish(ros.frame(rgb_image()))
    wait_until(lambda: node.stats()["oversize"] == 2, what="the small frame to be refused")
    assert ros.set_params(fqn, max_image_pixels=8294400)[0].successful
    ros.roundtrip(pub, probe, ros.frame(rgb_image()), keys=["heatmap"])
    probe.close()
    ros.client.destroy_publisher(pub)


def test_flood_into_a_slow_backend_keeps_one_frame_in_flight(ros, nodes, tiny_bundle):
    import psutil

    delay = 0.1
    ns = "/t_flood"
    factory = wrapping_factory(delay)
    node = nodes(ns, model_path=str(tiny_bundle), image_qos="reliable", backend_factory=factory)
    fqn = node.get_fully_qualified_name()
    ros.bring_up(fqn)
    probe, pub = ros.probe(ns, ("heatmap",)), ros.publisher(f"{ns}/image")
    wait_matched(node, pub, ("heatmap",))
    ros.roundtrip(pub, probe, ros.frame(rgb_image(480, 640)), keys=["heatmap"])  # warm path
    base = node.stats()
    wrapper = factory.made[0]
    calls0 = len(wrapper.calls)
    rss0 = psutil.Process().memory_info().rss

    n = 200  # 2 s at 100 Hz of 640x480 rgb8 (0.9 MB each: a queue would show in memory)
    frames = [ros.frame(rgb_image(480, 640, seed=i % 4)) for i in range(4)]
    start, period = time.monotonic(), 0.01
    pace = threading.Event()  # never set: paces the publisher at 100 Hz
    last = None
    for i in range(n):
        last = frames[i % 4]
        last.header.stamp.sec, last.header.stamp.nanosec = ros.next_stamp()
        pub.publish(last)
        pace.wait(max(0.0, start + (i + 1) * period - time.monotonic()))
    last_stamp = (last.header.stamp.sec, last.header.stamp.nanosec)
    # the newest frame is always processed: wait for its heatmap, then for the node to idle
    with probe._cv:
        assert probe._cv.wait_for(lambda: probe.find("heatmap", last_stamp) is not None, TIMEOUT)
    wait_until(lambda: node.stats()["waiting"] == 0 and node.stats()["received"]
               == node.stats()["published"] + node.stats()["replaced"] + node.stats()["skipped"],
               what="the node to drain")
    s = node.stats()
    print("flood:", {k: s[k] - base.get(k, 0) for k in ("received", "published", "replaced")},
          {k: s[k] for k in ("latency_p50_ms", "latency_p99_ms", "inference_p99_ms")})
    received = s["received"] - base["received"]
    published = s["published"] - base["published"]
    replaced = s["replaced"] - base["replaced"]
    assert received > n // 2  # reliable, keep-last input: most frames reach the callback
    assert published + replaced == received  # every frame accounted for: done or replaced
    assert s["mailbox_high_water"] <= 1  # the queue never grew past one waiting frame
    assert published == len(wrapper.calls) - calls0
    assert published <= received // 3  # the slow backend saw a fraction of the frames
    # latency bounded by one frame waiting + one in flight (not by the flood's length)
    worst_infer = max(wrapper.durations[calls0:])
    assert s["latency_p99_ms"] <= (2 * worst_infer + 0.5) * 1e3, s
    grown = (psutil.Process().memory_info().rss - rss0) / 2**20
    print(f"flood: RSS grew {grown:.1f} MiB")
    assert grown < 120, f"RSS grew by {grown:.0f} MiB during the flood"
    probe.close()
    ros.client.destroy_publisher(pub)


def test_services_answer_during_a_slow_frame(ros, nodes, tiny_bundle):
    ns = "/t_slow"
    factory = wrapping_factory()
    node = nodes(ns, model_path=str(tiny_bundle), image_qos="reliable", backend_factory=factory)
    fqn = node.get_fully_qualified_name()
    ros.bring_up(fqn)
    probe, pub = ros.probe(ns, ("mask",)), ros.publisher(f"{ns}/image")
    wait_matched(node, pub, ("mask",))
    wrapper = factory.made[0]
    wrapper.gate, wrapper.entered = threading.Event(), threading.Event()
    msg = ros.frame(rgb_image())
    pub.publish(msg)
    assert wrapper.entered.wait(TIMEOUT)  # inference is now blocked inside the backend
    assert ros.get_state(fqn, timeout=10) == "active"
    assert ros.set_params(fqn, timeout=10, overlay_alpha=0.25)[0].successful
    wrapper.gate.set()
    wrapper.gate = None
    stamp = (msg.header.stamp.sec, msg.header.stamp.nanosec)
    with probe._cv:
        assert probe._cv.wait_for(lambda: probe.find("mask", stamp) is not None, TIMEOUT)
    probe.close()
    ros.client.destroy_publisher(pub)


def _mask_values(msg) -> np.ndarray:
    return np.frombuffer(msg.data, np.uint8)


def test_parameter_updates_take_effect_and_bad_values_are_rejected(ros, nodes, tiny_bundle):
    ns = "/t_par"
    node = nodes(ns, model_path=str(tiny_bundle), image_qos="reliable")
    fqn = node.get_fully_qualified_name()
    ros.bring_up(fqn)
    probe, pub = ros.probe(ns), ros.publisher(f"{ns}/image")
    wait_matched(node, pub, OUTPUTS)
    rgb = rgb_image()

    def run():
        return ros.roundtrip(pub, probe, ros.frame(rgb))

    default = run()
    hm = np.frombuffer(default["heatmap"].data, np.float32)
    assert ros.set_params(fqn, threshold=float(hm.min()) - 1.0)[0].successful
    assert (_mask_values(run()["mask"]) == 255).all()
    assert ros.set_params(fqn, threshold=float(hm.max()) + 1.0)[0].successful
    assert (_mask_values(run()["mask"]) == 0).all()
    mid = float(np.median(hm))
    assert ros.set_params(fqn, threshold=mid)[0].successful
    np.testing.assert_array_equal(_mask_values(run()["mask"]), np.where(hm >= mid, 255, 0))
    assert ros.set_params(fqn, threshold=float("nan"))[0].successful  # back to the bundle's
    np.testing.assert_array_equal(_mask_values(run()["mask"]), _mask_values(default["mask"]))

    overlays = {}
    for alpha, cmap in ((0.0, "turbo"), (1.0, "turbo"), (1.0, "gray")):
        assert all(r.successful for r in ros.set_params(fqn, overlay_alpha=alpha, colormap=cmap))
        overlays[(alpha, cmap)] = image_to_rgb(run()["overlay"])
    # alpha 0 is the camera image alone; the colour map changes the overlay
    assert np.abs(overlays[(0.0, "turbo")].astype(int) - rgb).max() <= 1
    assert not np.array_equal(overlays[(1.0, "turbo")], overlays[(0.0, "turbo")])
    assert not np.array_equal(overlays[(1.0, "turbo")], overlays[(1.0, "gray")])
    g = overlays[(1.0, "gray")]
    assert np.array_equal(g[:, :, 0], g[:, :, 1])  # a grey map has equal channels

    rejected = [
        {"overlay_alpha": 1.5}, {"overlay_alpha": -0.1}, {"colormap": "rainbow"},
        {"threshold": float("inf")}, {"threshold": "high"}, {"image_qos": "reliable"},
        {"diagnostics_period": 2.0}, {"max_image_pixels": 0}, {"model_path": "/elsewhere"},
        {"publish_mask": "yes"},
    ]
    for params in rejected:
        res = ros.set_params(fqn, **params)[0]
        assert not res.successful, params
    assert node.get_parameter("overlay_alpha").value == 1.0
    assert node.get_parameter("colormap").value == "gray"
    # structural values are validated even when they could be set (unconfigured)
    assert ros.change_state(fqn, Transition.TRANSITION_DEACTIVATE)
    assert ros.change_state(fqn, Transition.TRANSITION_CLEANUP)
    for params in ({"backend": "cuda"}, {"device": "gpu0"}, {"precision": "int8"}):
        assert not ros.set_params(fqn, **params)[0].successful, params
    for params in ({"backend": "onnxruntime"}, {"device": "cuda:1"}, {"precision": "fp16"}):
        assert ros.set_params(fqn, **params)[0].successful, params
    probe.close()
    ros.client.destroy_publisher(pub)


def test_outputs_without_subscribers_are_not_computed(ros, nodes, tiny_bundle):
    ns = "/t_lazy"
    factory = wrapping_factory()
    node = nodes(ns, model_path=str(tiny_bundle), image_qos="reliable", backend_factory=factory)
    fqn = node.get_fully_qualified_name()
    ros.bring_up(fqn)
    probe, pub = ros.probe(ns, ("mask",)), ros.publisher(f"{ns}/image")
    wait_matched(node, pub, ("mask",))
    wrapper = factory.made[0]
    ros.roundtrip(pub, probe, ros.frame(rgb_image()), keys=["mask"])
    _, kw = wrapper.calls[-1]
    assert (kw["heatmap"], kw["mask"], kw["overlay"]) == (False, True, False)
    # the only wanted output switched off: nothing is computed at all
    assert ros.set_params(fqn, publish_mask=False)[0].successful
    calls, skipped = len(wrapper.calls), node.stats()["skipped"]
    pub.publish(ros.frame(rgb_image()))
    wait_until(lambda: node.stats()["skipped"] == skipped + 1, what="the frame to be skipped")
    assert len(wrapper.calls) == calls
    probe.close()
    ros.client.destroy_publisher(pub)


def test_diagnostics(ros, nodes, tiny_bundle):
    ns = "/t_diag"
    node = nodes(ns, model_path=str(tiny_bundle), image_qos="reliable", diagnostics_period=0.1)
    fqn = node.get_fully_qualified_name()
    probe = Probe(ros.client, {"diag": "/diagnostics"}, msg_type=DiagnosticArray)

    def latest():
        with probe._cv:
            for arr in reversed(probe.msgs["diag"]):
                for st in arr.status:
                    if st.name.startswith(fqn + ":"):
                        return st, {kv.key: kv.value for kv in st.values}
        return None, None

    wait_until(lambda: latest()[0] is not None, what="a diagnostics message")
    status, values = latest()
    assert values["state"] == "unconfigured" and status.level == status.WARN
    for key in ("input_rate_hz", "output_rate_hz", "latency_p50_ms", "latency_p99_ms",
                "inference_p50_ms", "inference_p99_ms", "dropped_frames", "backend", "device"):
        assert key in values
    ros.bring_up(fqn)
    hp, pub = ros.probe(ns, ("heatmap",)), ros.publisher(f"{ns}/image")
    wait_matched(node, pub, ("heatmap",))
    for _ in range(3):
        ros.roundtrip(pub, hp, ros.frame(rgb_image()), keys=["heatmap"])
    with probe._cv:
        probe.msgs["diag"].clear()
    wait_until(lambda: (latest()[1] or {}).get("frames_published") == "3",
               what="diagnostics to count 3 frames")
    status, values = latest()
    assert values["state"] == "active" and status.level == status.OK
    assert values["backend"] and values["device"] and status.hardware_id == values["device"]
    assert float(values["latency_p50_ms"]) > 0 and float(values["inference_p50_ms"]) > 0
    assert float(values["latency_p99_ms"]) >= float(values["inference_p99_ms"])
    assert math.isfinite(float(values["threshold"]))
    for p in (probe, hp):
        p.close()
    ros.client.destroy_publisher(pub)


def test_parameters_file_declares_every_parameter(ros, nodes):
    doc = yaml.safe_load((ROOT / "config" / "anomaly.yaml").read_text())
    params = doc["/**"]["ros__parameters"]
    node = nodes("/t_yaml", **params)
    builtin = {"use_sim_time", "start_type_description_service"}  # rclpy's own
    declared = set(node._parameters) - builtin
    assert declared == set(params)
    assert math.isnan(node.get_parameter("threshold").value)
    assert node.get_parameter("model_path").value == ""  # "" = the demo bundle
    # the node's own default is the same "" the README and the parameters file document
    assert nodes("/t_yaml_default").get_parameter("model_path").value == ""
    # every parameter carries a description; the structural ones say how to change them
    for name in declared:
        assert node.describe_parameter(name).description, name
    assert node.describe_parameter("image_qos").read_only
    text = (ROOT / "config" / "anomaly.yaml").read_text().splitlines()
    for name in params:  # a comment on the line or the lines just above each entry
        i = next(i for i, line in enumerate(text) if line.strip().startswith(f"{name}:"))
        assert "#" in text[i] or text[i - 1].strip().startswith("#"), name


def test_colormaps_match_the_runtime():
    from flowclas_ros.node.parameters import table
    from flowclas_ros.runtime import COLORMAPS

    spec = {p.name: p for p in table()}["colormap"]
    assert tuple(COLORMAPS) == spec.choices


def test_default_model_path_points_at_the_demo_bundle():
    assert Path(an.default_model_path()).name == an.DEMO_BUNDLE


# the executable ------------------------------------------------------------------------------
def _spawn(ns: str, *ros_args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "flowclas_ros.tools.anomaly_node", "--ros-args",
         "-r", f"__ns:={ns}", *ros_args],
        cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)


def _finish(proc: subprocess.Popen, timeout: float = TIMEOUT) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"the node did not exit:\n{out}")
    return out


@pytest.mark.parametrize("executable,expected", [
    ("anomaly_node", ("model_path", "cameras", "structural", "camera_overrides")),
    ("image_player", ("source", "rate", "transport")),
])
def test_node_executables_answer_help_without_starting_a_node(executable, expected):
    for argv in (["--help"], ["-h", "--ros-args", "-p", "rate:=5.0"]):
        out = subprocess.run([sys.executable, "-m", f"flowclas_ros.tools.{executable}", *argv],
                             cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
                             timeout=TIMEOUT)
        assert out.returncode == 0, out.stderr
        assert all(word in out.stdout for word in expected), out.stdout
        assert "[INFO]" not in out.stdout + out.stderr  # no node was made


def test_help_is_looked_for_outside_the_ros_arguments():
    from flowclas_ros.tools.common import asked_for_help

    assert asked_for_help(["node", "--ros-args", "-p", "a:=1", "--", "--help"])
    assert not asked_for_help(["node", "--ros-args", "-r", "image:=/cam"])
    assert not asked_for_help(["node"])


@pytest.mark.slow
def test_executable_serves_frames_and_exits_cleanly_on_ctrl_c(ros, tiny_bundle):
    ns = "/t_exe"
    proc = _spawn(ns, "-p", f"model_path:={tiny_bundle}", "-p", "image_qos:=reliable",
                  "-r", f"image:={ns}/camera")
    try:
        fqn = f"{ns}/flowclas_anomaly"
        ros.bring_up(fqn)
        probe, pub = ros.probe(ns), ros.publisher(f"{ns}/camera")
        msg = ros.frame(rgb_image(), frame_id="exe_cam")
        out = ros.roundtrip(pub, probe, msg)
        assert out["heatmap"].encoding == "32FC1" and out["overlay"].header.frame_id == "exe_cam"
        probe.close()
        ros.client.destroy_publisher(pub)
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C while active, backend loaded
        log = _finish(proc)
    assert proc.returncode == 0, log
    assert "Traceback" not in log, log


@pytest.mark.slow
def test_executable_exits_after_the_shutdown_transition(ros):
    ns = "/t_exe2"
    proc = _spawn(ns)
    try:
        fqn = f"{ns}/flowclas_anomaly"
        assert ros.get_state(fqn) == "unconfigured"
        assert ros.change_state(fqn, Transition.TRANSITION_UNCONFIGURED_SHUTDOWN,
                                alive=lambda: proc.poll() is None)
    finally:
        log = _finish(proc)
    assert proc.returncode == 0 and "Traceback" not in log, log


# issue 11: diagnostics window, CPU settings, numbers typed as integers, messages -------------
def _latest_status(probe: Probe, fqn: str):
    with probe._cv:
        for arr in reversed(probe.msgs["diag"]):
            for st in arr.status:
                if st.name.startswith(fqn + ":"):
                    return st, {kv.key: kv.value for kv in st.values}
    return None, None


def test_diagnostics_warn_for_recent_refusals_only(ros, nodes, tiny_bundle):
    ns = "/t_diag_window"
    node = nodes(ns, model_path=str(tiny_bundle), image_qos="reliable", diagnostics_period=0.1)
    fqn = node.get_fully_qualified_name()
    probe = Probe(ros.client, {"diag": "/diagnostics"}, msg_type=DiagnosticArray)
    ros.bring_up(fqn)
    pub = ros.publisher(f"{ns}/image")
    wait_matched(node, pub)
    bad = ros.frame(rgb_image(8, 8))
    bad.encoding = "yuv422"
    pub.publish(bad)
    wait_until(lambda: node.stats()["malformed"] == 1, what="the malformed frame")
    wait_until(lambda: (_latest_status(probe, fqn)[1] or {}).get("dropped_malformed") == "1",
               what="a status counting the refused frame")
    seen_warn = threading.Event()

    def warn_then_ok():
        st, values = _latest_status(probe, fqn)
        if st is None or values.get("dropped_malformed") != "1":
            return False
        if st.level == st.WARN:
            seen_warn.set()
        return seen_warn.is_set() and st.level == st.OK

    # the status of the period with the bad frame warns; the next ones are OK again, while the
    # counter stays cumulative
    wait_until(warn_then_ok, what="WARN for the refused frame, then OK")
    _, values = _latest_status(probe, fqn)
    assert values["state"] == "active" and values["dropped_malformed"] == "1"
    assert values["model_path"] == str(tiny_bundle)  # the bundle loaded
    probe.close()
    ros.client.destroy_publisher(pub)


def test_cpu_threads_and_spinning_reach_onnxruntime(ros, nodes, tiny_bundle):
    ns = "/t_cpu"
    node = nodes(ns, model_path=str(tiny_bundle), backend="onnxruntime", device="cpu",
                 cpu_threads=1, cpu_spinning=False)
    fqn = node.get_fully_qualified_name()
    assert ros.change_state(fqn, Transition.TRANSITION_CONFIGURE)
    opts = node._backend.session.get_session_options()
    assert opts.intra_op_num_threads == 1
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    res = ros.set_params(fqn, cpu_threads=2)[0]  # structural
    assert not res.successful and "structural" in res.reason
    assert ros.change_state(fqn, Transition.TRANSITION_CLEANUP)
    assert ros.set_params(fqn, cpu_threads=2, cpu_spinning=True)[0].successful
    assert ros.change_state(fqn, Transition.TRANSITION_CONFIGURE)
    assert node._backend.session.get_session_options().intra_op_num_threads == 2
    assert ros.change_state(fqn, Transition.TRANSITION_CLEANUP)
    assert not ros.set_params(fqn, cpu_threads=-1)[0].successful


def test_numbers_given_as_integers_are_accepted(ros, nodes, tiny_bundle):
    """`ros2 param set ... threshold -5` sends an integer: a double parameter takes it."""
    node = nodes("/t_int", model_path=str(tiny_bundle))
    fqn = node.get_fully_qualified_name()
    assert ros.set_params(fqn, threshold=-5)[0].successful
    assert node._threshold == -5.0
    assert ros.set_params(fqn, overlay_alpha=1)[0].successful
    assert node._overlay_alpha == 1.0
    for bad in ({"overlay_alpha": 2}, {"threshold": "low"}, {"threshold": True}):
        assert not ros.set_params(fqn, **bad)[0].successful, bad
    assert node._threshold == -5.0 and node._overlay_alpha == 1.0


def test_configure_failure_says_the_path_and_the_fix_once(ros, nodes, tmp_path):
    broken = tmp_path / "broken_bundle"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    node = nodes("/t_msg", model_path=str(broken))
    assert not ros.change_state(node.get_fully_qualified_name(), Transition.TRANSITION_CONFIGURE)
    msg = node.last_error
    assert msg.count(str(broken)) == 1 and msg.count("re-export") == 1, msg
    assert "model_path" in msg and "configure again" in msg
    missing = tmp_path / "nowhere"
    assert ros.set_params(node.get_fully_qualified_name(), model_path=str(missing))[0].successful
    assert not ros.change_state(node.get_fully_qualified_name(), Transition.TRANSITION_CONFIGURE)
    assert node.last_error.count(str(missing)) == 1, node.last_error


def test_camera_sized_best_effort_frames_arrive(ros, nodes, tiny_bundle):
    """Check that 720p rgb8 (2.7 MB) best-effort frames from another process reach the node.

    Best effort is the camera drivers' QoS, and the frames come from another process (as a
    camera driver's do): with the shipped DDS profile every frame reaches the node (Fast DDS's
    default 512 KiB shared-memory segment lost most of them).
    """
    ns = "/t_720p"
    node = nodes(ns, model_path=str(tiny_bundle))  # image_qos: sensor_data, the default
    ros.bring_up(node.get_fully_qualified_name())
    camera = subprocess.run(
        [sys.executable, "-m", "flowclas_ros.tools.bench.transport", "--role", "pub",
         "--size", "1280x720", "--rate", "10", "--frames", "20", "--topic", f"{ns}/image"],
        cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert camera.returncode == 0, camera.stderr
    wait_until(lambda: node.stats()["received"] >= 20, timeout=10,
               what="all 20 best-effort 720p frames")
    assert node.stats()["malformed"] == 0


# issue 12: a long configure (an engine build) leaves get_state and diagnostics answering -----
def test_get_state_and_diagnostics_answer_during_a_long_configure(ros, nodes, tiny_bundle):
    gate, entered = threading.Event(), threading.Event()

    def slow_factory(bundle, backend, device, precision, **options):
        from flowclas_ros.runtime import create_backend

        entered.set()
        assert gate.wait(TIMEOUT)  # the "engine build"
        return create_backend(bundle, backend=backend, device=device, precision=precision,
                              **options)

    node = nodes("/t_slowcfg", model_path=str(tiny_bundle), diagnostics_period=0.1,
                 backend_factory=slow_factory)
    fqn = node.get_fully_qualified_name()
    probe = Probe(ros.client, {"diag": "/diagnostics"}, msg_type=DiagnosticArray)
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(
        ok=ros.change_state(fqn, Transition.TRANSITION_CONFIGURE)))
    worker.start()
    try:
        assert entered.wait(TIMEOUT)
        assert ros.get_state(fqn, timeout=10) == "configuring"  # answered, not blocked
        wait_until(lambda: "starting the auto backend" in
                   ((_latest_status(probe, fqn)[1] or {}).get("state", "")),
                   what="diagnostics saying what configure is doing")
    finally:
        gate.set()
        worker.join(TIMEOUT)
    assert result.get("ok") and ros.get_state(fqn) == "inactive"
    probe.close()


def test_torch_compile_and_cuda_graphs_reach_the_torch_backend(ros, nodes, tiny_bundle):
    from flowclas_ros.runtime import create_backend
    from flowclas_ros.runtime.registry import backend_options

    seen: list[dict] = []

    def recording_factory(bundle, backend, device, precision, **options):
        seen.append(dict(options, backend=backend))
        # compiling the tiny model on a CPU takes long: check the plumbing, run eager
        return create_backend(bundle, backend="torch", device="cpu")

    node = nodes("/t_compile", model_path=str(tiny_bundle), backend="torch", device="cpu",
                 torch_compile=True, cuda_graphs=True, backend_factory=recording_factory)
    fqn = node.get_fully_qualified_name()
    assert ros.change_state(fqn, Transition.TRANSITION_CONFIGURE)
    assert seen[-1]["torch_compile"] is True and seen[-1]["cuda_graphs"] is True
    # what the default factory hands the torch backend for them (and nothing to the others)
    assert backend_options("torch", **{k: seen[-1][k] for k in
                                        ("cpu_threads", "cpu_spinning", "torch_compile",
                                         "cuda_graphs")}) == {"compile": True,
                                                              "cuda_graphs": True}
    assert "compile" not in backend_options("onnxruntime", torch_compile=True)
    res = ros.set_params(fqn, cuda_graphs=False)[0]
    assert not res.successful and "structural" in res.reason


# issue 13: compressed input ------------------------------------------------------------------
def test_compressed_images_in_and_bad_ones_dropped(ros, nodes, tiny_bundle):
    from sensor_msgs.msg import CompressedImage

    from flowclas_ros.node.image_conversion import compressed_to_msg

    ns = "/t_compressed"
    node = nodes(ns, model_path=str(tiny_bundle), image_qos="reliable",
                 image_transport="compressed")
    ros.bring_up(node.get_fully_qualified_name())
    probe = ros.probe(ns, ("heatmap",))
    pub = ros.publisher(f"{ns}/image/compressed", CompressedImage)
    wait_matched(node, pub, ("heatmap",))
    rgb = rgb_image()
    header = Header(frame_id="zcam")
    header.stamp.sec, header.stamp.nanosec = ros.next_stamp()
    good = compressed_to_msg(rgb, "png", header)
    out = ros.roundtrip(pub, probe, good, keys=["heatmap"])
    assert (out["heatmap"].width, out["heatmap"].height) == (64, 48)
    assert out["heatmap"].header.frame_id == "zcam"
    truncated = compressed_to_msg(rgb, "jpeg", header)
    truncated.data = truncated.data[: len(truncated.data) // 2]
    empty = compressed_to_msg(rgb, "png", header)
    empty.data = []
    unknown = compressed_to_msg(rgb, "png", header)
    unknown.format = "tiff"
    for i, bad in enumerate((truncated, empty, unknown)):
        pub.publish(bad)
        wait_until(lambda: node.stats()["malformed"] == i + 1, what=f"bad compressed frame {i}")
    assert ros.get_state(node.get_fully_qualified_name()) == "active"
    assert node.stats()["errors"] == 0
    probe.close()
    ros.client.destroy_publisher(pub)
