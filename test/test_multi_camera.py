"""One node, several cameras, batched (issue 20) over real DDS on loopback (rclpy, Fast DDS).

The node runs with ``cameras: [front, left, right]`` on a fake backend (:class:`BatchBackend`)
that records every forward run's frames: the red value of a frame's pixel (0, 0) says which
camera it came from, and is the frame's constant score, so each output can be traced to its
input. Waiting is on events and counters polled with a deadline (ros_harness.wait_until); the
deliberate delays are the simulated inference time and the publishers' pacing.
"""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy (ROS 2 Jazzy) is not installed")

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from ros_harness import OUTPUTS, RELIABLE, TIMEOUT, Probe, wait_until  # noqa: E402

from flowclas_ros.runtime.backend import FrameResult  # noqa: E402
from flowclas_ros.runtime.visualisation import mask_np, overlay_np  # noqa: E402

pytestmark = pytest.mark.ros

CAMERAS = ("front", "left", "right")
SIZES = {"front": (48, 64), "left": (120, 160), "right": (30, 40)}  # (height, width)
MARK = {"front": 10, "left": 20, "right": 30}  # red value of pixel (0, 0): the camera, the score


class BatchBackend:
    """A backend that records each forward run (the markers of its frames) and can be gated.

    ``delay``: the simulated inference time of a run; ``gate``: a run waits for it to be set.
    """

    name, device, precision = "fake", "cpu", "fp32"

    def __init__(self, bundle, options, delay=0.0):
        self.bundle, self.options, self.delay = bundle, options, delay
        self.runs: list[list[int]] = []
        self.thresholds: list[list[float]] = []
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.closed = False
        self._pause = threading.Event()  # never set: waiting on it is the simulated work

    def warmup(self, height, width):
        pass

    def infer(self, image, *, threshold=None, **kw):
        return self.infer_batch([image], threshold=[threshold], **kw)[0]

    def infer_batch(self, images, *, heatmap=True, mask=True, overlay=True, threshold=None,
                    overlay_alpha=0.5, colormap="turbo", on_result=None):
        n = len(images)
        per = [v if isinstance(v, list) else [v] * n for v in (heatmap, mask, overlay, threshold)]
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(TIMEOUT)
        if self.delay:
            self._pause.wait(self.delay)
        thr = [self.bundle.mask_threshold(t) for t in per[3]]
        self.runs.append([int(im[0, 0, 0]) for im in images])
        self.thresholds.append(thr)
        out = []
        for im, h, m, o, t in zip(images, *per[:3], thr):
            s = self.score_map(im)
            out.append(FrameResult(s if h else None, mask_np(s, t) if m else None,
                                   overlay_np(s, im, self.display_range(), overlay_alpha,
                                              colormap) if o else None, 1.0))
        for i, result in enumerate(out if on_result is not None else ()):
            on_result(i, result)  # one forward run: every result at its end
        return out

    def score_map(self, im):
        """Return the frame's score map: its marker everywhere."""
        return np.full(im.shape[:2], float(im[0, 0, 0]), np.float32)

    def display_range(self):
        return (0.0, 255.0)

    def close(self):
        self.closed = True


def recording_factory(make):
    """Return a backend factory building ``make(bundle, options)``; ``.made`` lists them."""
    made = []

    def factory(bundle, backend, device, precision, **options):
        made.append(make(bundle, options))
        return made[-1]

    factory.made = made
    return factory


def batch_factory(delay=0.0):
    return recording_factory(lambda bundle, options: BatchBackend(bundle, options, delay))


def image(cam, size=None):
    h, w = size or SIZES[cam]
    a = np.full((h, w, 3), 90, np.uint8)
    a[0, 0, 0] = MARK[cam]
    return a


_open_rigs: list[Rig] = []


@pytest.fixture(autouse=True)
def _close_rigs():
    """Close every rig a test opened, passed or failed: a failure stays that test's own."""
    yield
    while _open_rigs:
        _open_rigs[-1].close()


class Rig:
    """A node with three cameras, a publisher per camera and a probe on every output."""

    def __init__(self, ros, nodes, ns, factory, outputs=OUTPUTS, **params):
        self.ros, self.ns, self.factory = ros, ns, factory
        self.pubs, self.probe = {}, None
        _open_rigs.append(self)
        params = {"model_path": params.pop("model_path"), "image_qos": "reliable",
                  "cameras": list(CAMERAS), **params}
        self.node = nodes(ns, backend_factory=factory, **params)
        self.fqn = self.node.get_fully_qualified_name()
        ros.bring_up(self.fqn)
        self.pubs = {c: ros.publisher(f"{ns}/{c}/image") for c in CAMERAS}
        self.probe = Probe(ros.client, {f"{c}/{k}": f"{ns}/{c}/anomaly/{k}"
                                        for c in CAMERAS for k in outputs}, RELIABLE)
        cams = {c.name: c for c in self.node.cameras}
        wait_until(lambda: all(p.get_subscription_count() > 0 for p in self.pubs.values())
                   and all(pub.get_subscription_count() > 0 for c in CAMERAS
                           for k, pub in cams[c].pubs.items() if k in outputs),
                   what="discovery of every camera's topics")

    @property
    def backend(self) -> BatchBackend:
        return self.factory.made[-1]

    def cam(self, name):
        return self.node.stats()["cameras"][name]

    def send(self, cam, size=None):
        msg = self.ros.frame(image(cam, size), frame_id=f"{cam}_optical")
        self.pubs[cam].publish(msg)
        return msg

    def wait_output(self, cam, msg, keys=OUTPUTS):
        stamp = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        wait_until(lambda: all(self.probe.find(f"{cam}/{k}", stamp) is not None for k in keys),
                   what=f"{cam}'s outputs of stamp {stamp}")
        return {k: self.probe.find(f"{cam}/{k}", stamp) for k in keys}

    def idle(self):
        """Wait until no frame waits and every received frame is accounted for."""
        def drained():
            s = self.node.stats()
            return s["waiting"] == 0 and s["received"] == sum(
                s[k] for k in ("published", "replaced", "skipped", "malformed", "oversize",
                               "errors", "discarded"))
        wait_until(drained, what="the node to drain")

    def close(self):
        """Destroy the probe and publishers (again: nothing)."""
        if self in _open_rigs:
            _open_rigs.remove(self)
        if self.probe is not None:
            self.probe.close()
            self.probe = None
        for p in self.pubs.values():
            self.ros.client.destroy_publisher(p)
        self.pubs = {}


def test_three_cameras_get_their_own_outputs_headers_and_thresholds_in_one_batch(
        ros, nodes, tiny_bundle):
    factory = batch_factory()
    rig = Rig(ros, nodes, "/t_mc_batch", factory, model_path=str(tiny_bundle), threshold=15.0,
              **{"camera_overrides.left.threshold": 1e9})
    be = rig.backend
    assert len(factory.made) == 1 and be.options["max_batch"] == 3  # one backend for all
    # hold the worker in a first run, let every camera's frame wait, then release: one batch
    be.gate = threading.Event()
    first = rig.send("front")
    assert be.entered.wait(TIMEOUT)
    msgs = {c: rig.send(c) for c in CAMERAS}
    wait_until(lambda: rig.node.stats()["waiting"] == 3, what="a frame of every camera waiting")
    be.gate.set()
    rig.wait_output("front", first)
    for cam, msg in msgs.items():
        out = rig.wait_output(cam, msg)
        for key, enc in zip(OUTPUTS, ("32FC1", "mono8", "bgr8")):
            m = out[key]
            assert m.encoding == enc and (m.height, m.width) == SIZES[cam], (cam, key)
            assert m.header.frame_id == f"{cam}_optical", (cam, key)
            assert m.header.stamp == msg.header.stamp, (cam, key)
        heat = np.frombuffer(out["heatmap"].data, np.float32)
        assert np.all(heat == MARK[cam])  # this camera's own result
        mask = np.frombuffer(out["mask"].data, np.uint8)
        # threshold 15 for front (10: clear) and right (30: flagged); left's override 1e9
        assert np.all(mask == (255 if cam == "right" else 0)), cam
    assert [MARK[c] for c in CAMERAS] in be.runs  # the three cameras in one forward run
    i = be.runs.index([MARK[c] for c in CAMERAS])
    assert be.thresholds[i] == [15.0, 1e9, 15.0]
    for cam in CAMERAS:  # counted after the publish: the client may see the output first
        wait_until(lambda c=cam: rig.cam(c)["published"] >= 1, what=f"{cam}'s count")
        s = rig.cam(cam)
        assert s["errors"] == 0 and s["malformed"] == 0
    rig.close()


def test_each_camera_gets_the_threshold_calibrated_on_its_own_topic(ros, nodes, tiny_bundle,
                                                                   tmp_path):
    """threshold.per_topic (export --calibration-bag --topic T1 T2 ...) picks per camera.

    Matched by the camera's resolved input topic (front), also in its /compressed form (right);
    a camera override still wins (left).
    """
    import json
    import shutil

    bundle = tmp_path / "per_topic"
    shutil.copytree(tiny_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    ns = "/t_mc_topic"
    manifest["threshold"]["per_topic"] = {
        f"{ns}/front/image": {"value": 25.0, "fpr": 0.05},
        f"{ns}/left/image": {"value": 5.0, "fpr": 0.05},
        f"{ns}/right/image/compressed": {"value": 35.0, "fpr": 0.05}}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    factory = batch_factory()
    rig = Rig(ros, nodes, ns, factory, model_path=str(bundle),
              **{"camera_overrides.left.threshold": 1e9})
    assert {c.name: c.calibrated for c in rig.node.cameras} == {
        "front": 25.0, "left": 5.0, "right": 35.0}
    be = rig.backend
    for cam in CAMERAS:
        rig.wait_output(cam, rig.send(cam), keys=("mask",))
    flat = {m: t for run, thr in zip(be.runs, be.thresholds) for m, t in zip(run, thr)}
    assert flat == {MARK["front"]: 25.0, MARK["left"]: 1e9, MARK["right"]: 35.0}
    # the node's own threshold parameter comes before the per-topic ones, after overrides
    ros.set_params(rig.fqn, threshold=15.0)
    assert [c.mask_threshold(rig.node.settings.threshold) for c in rig.node.cameras] == [
        15.0, 1e9, 15.0]
    rig.close()


def test_no_camera_starves_when_one_publishes_five_times_faster(ros, nodes, tiny_bundle):
    factory = batch_factory(delay=0.08)  # about 12 runs a second
    rig = Rig(ros, nodes, "/t_mc_fair", factory, model_path=str(tiny_bundle),
              outputs=("heatmap",))
    sent = dict.fromkeys(CAMERAS, 0)
    last = {}
    pace, period, ticks = threading.Event(), 0.04, 75  # front at 25 Hz, the others at 5 Hz
    start = time.monotonic()
    for i in range(ticks):
        for cam in CAMERAS if i % 5 == 0 else ("front",):
            last[cam] = rig.send(cam)
            sent[cam] += 1
        pace.wait(max(0.0, start + (i + 1) * period - time.monotonic()))
    for cam in CAMERAS:  # the newest frame of every camera is processed
        rig.wait_output(cam, last[cam], ("heatmap",))
    rig.idle()
    stats = {c: rig.cam(c) for c in CAMERAS}
    print("fairness:", sent, {c: {k: s[k] for k in ("received", "published", "replaced")}
                              for c, s in stats.items()})
    for cam in ("left", "right"):  # each slow camera's frames (nearly) all processed
        assert stats[cam]["published"] >= 0.8 * sent[cam], (cam, stats[cam], sent)
    assert stats["front"]["published"] >= sent["left"]  # the fast one is not starved either
    assert max(len(r) for r in rig.backend.runs) >= 2  # cameras shared forward runs
    assert all(len(r) == len(set(r)) for r in rig.backend.runs)  # one frame per camera a run
    # a camera that stops publishing leaves nothing stale: later runs hold front's frame alone
    n = len(rig.backend.runs)
    for _ in range(3):
        rig.wait_output("front", rig.send("front"), ("heatmap",))
    assert rig.backend.runs[n:] and all(r == [MARK["front"]] for r in rig.backend.runs[n:])
    rig.close()


def test_one_cameras_bad_frames_are_its_own(ros, nodes, tiny_bundle):
    factory = batch_factory()
    rig = Rig(ros, nodes, "/t_mc_bad", factory, model_path=str(tiny_bundle),
              max_image_pixels=120 * 160, diagnostics_period=0.2, outputs=("heatmap",))
    arrays = []
    sub = ros.client.create_subscription(DiagnosticArray, "/diagnostics", arrays.append, 10)
    bad = rig.ros.frame(image("left"))
    bad.step = 7  # step < width x 3: malformed
    for i in range(3):  # one at a time: the input keeps the last 2, a burst could lose some
        rig.pubs["left"].publish(bad)
        wait_until(lambda: rig.cam("left")["malformed"] == i + 1, what="a malformed frame")
        rig.send("left", size=(240, 320))  # more than max_image_pixels: oversize
        wait_until(lambda: rig.cam("left")["oversize"] == i + 1, what="an oversize frame")
    for cam in ("front", "right"):  # the others keep flowing meanwhile
        for _ in range(2):
            rig.wait_output(cam, rig.send(cam), ("heatmap",))
    rig.wait_output("left", rig.send("left"), ("heatmap",))  # and left's good frames still go
    for cam in ("front", "right"):  # counted after the publish: the client may see it first
        wait_until(lambda c=cam: rig.cam(c)["published"] >= 2, what=f"{cam}'s count")
    stats = {c: rig.cam(c) for c in CAMERAS}
    for cam in ("front", "right"):
        assert stats[cam]["malformed"] == stats[cam]["oversize"] == 0, cam
    total = rig.node.stats()
    assert total["malformed"] == 3 and total["oversize"] == 3  # the node's sum
    # /diagnostics: one status per camera besides the node's; left's WARNs, the others are OK

    def camera_statuses():
        for arr in reversed(arrays[-10:]):
            named = {s.name.rsplit("camera ", 1)[-1]: s for s in arr.status
                     if ": camera " in s.name}
            if set(named) == set(CAMERAS):
                return named
        return None

    def values_of(named):
        return {c: {kv.key: kv.value for kv in s.values} for c, s in named.items()}

    def counted(named) -> bool:  # an array published before the last drop may arrive first
        left = values_of(named)["left"] if named else {}
        return left.get("dropped_malformed") == "3" and left.get("dropped_oversize") == "3"

    wait_until(lambda: counted(camera_statuses()), what="per-camera diagnostics with the drops")
    named = camera_statuses()
    values = values_of(named)
    assert values["front"]["dropped_malformed"] == "0"
    assert values["front"]["topic"] == "/t_mc_bad/front/image"
    for key in ("input_rate_hz", "latency_p50_ms", "latency_p99_ms", "dropped_frames"):
        assert key in values["right"]
    assert named["front"].level == DiagnosticStatus.OK
    ros.client.destroy_subscription(sub)
    rig.close()


def test_deactivate_drops_every_waiting_frame_and_cleanup_releases_the_backend(
        ros, nodes, tiny_bundle):
    factory = batch_factory()
    rig = Rig(ros, nodes, "/t_mc_lc", factory, model_path=str(tiny_bundle),
              outputs=("heatmap",))
    be = rig.backend
    be.gate = threading.Event()
    rig.send("front")
    assert be.entered.wait(TIMEOUT)  # front's frame in flight, held
    for cam in CAMERAS:
        rig.send(cam)
    wait_until(lambda: rig.node.stats()["waiting"] == 3, what="a frame of every camera waiting")
    assert rig.ros.change_state(rig.fqn, Transition.TRANSITION_DEACTIVATE)
    assert rig.node.stats()["waiting"] == 0
    for cam in CAMERAS:
        assert rig.cam(cam)["discarded"] >= 1, cam
    runs = len(be.runs)
    be.gate.set()
    wait_until(lambda: rig.cam("front")["discarded"] == 2, what="the frame in flight discarded")
    assert len(be.runs) == runs + 1  # the one in flight only: nothing waiting ran after it
    # cameras are structural: refused while configured
    result = rig.ros.set_params(rig.fqn, cameras=["front"])[0]
    assert not result.successful and "structural" in result.reason
    assert rig.ros.set_params(rig.fqn, cameras=list(CAMERAS))[0].successful  # no change: fine
    assert rig.ros.change_state(rig.fqn, Transition.TRANSITION_CLEANUP)
    assert be.closed and len(factory.made) == 1 and rig.node._backend is None
    assert rig.node.cameras == [] and rig.node.stats()["waiting"] == 0
    # unconfigured: cameras may change, and bad names are refused
    assert rig.ros.set_params(rig.fqn, cameras=["front", "rear"])[0].successful
    bad = rig.ros.set_params(rig.fqn, cameras=["front/left"])[0]
    assert not bad.successful and "token" in bad.reason
    # a camera no longer named has no overrides left; a new one's exist as soon as it is named
    # (ros2 param set, then configure)
    assert not rig.node.has_parameter("camera_overrides.left.threshold")
    assert rig.ros.set_params(rig.fqn, **{"camera_overrides.rear.threshold": 2.5})[0].successful
    assert rig.ros.change_state(rig.fqn, Transition.TRANSITION_CONFIGURE)
    assert {c.name: c.threshold for c in rig.node.cameras} == {"front": None, "rear": 2.5}
    rig.close()


def test_empty_cameras_keep_the_single_camera_topics(ros, nodes, tiny_bundle):
    factory = batch_factory()
    ns = "/t_mc_single"
    node = nodes(ns, model_path=str(tiny_bundle), image_qos="reliable", backend_factory=factory)
    assert node.get_parameter("cameras").value in ([], None)
    assert not [n for n in node._parameters if n.startswith("camera_overrides")]
    ros.bring_up(node.get_fully_qualified_name())
    assert "max_batch" not in factory.made[0].options  # the backend as before
    assert [c.name for c in node.cameras] == [""]
    pub, other = ros.publisher(f"{ns}/image"), ros.publisher(f"{ns}/front/image")
    probe = ros.probe(ns)
    wait_until(lambda: pub.get_subscription_count() == 1
               and all(node._pubs[k].get_subscription_count() > 0 for k in OUTPUTS),
               what="the single camera's topics")
    msg = ros.frame(image("front"), frame_id="cam")
    out = ros.roundtrip(pub, probe, msg)
    assert all(m.header.frame_id == "cam" for m in out.values())
    assert other.get_subscription_count() == 0
    wait_until(lambda: node.stats()["published"] >= 1, what="the count after the publish")
    assert "cameras" not in node.stats()
    probe.close()
    for p in (pub, other):
        ros.client.destroy_publisher(p)


def test_cameras_stay_a_list_of_names_that_cannot_be_deleted(ros, nodes, tiny_bundle):
    # a params file's `cameras: []` reaches the node unset (rcl cannot type an empty list)
    node = nodes("/t_mc_unset", model_path=str(tiny_bundle), cameras=None)
    fqn = node.get_fully_qualified_name()
    p = node.get_parameter("cameras")
    assert p.type_ == Parameter.Type.STRING_ARRAY and list(p.value) == []  # dumps as []
    # `ros2 param delete`, or loading `cameras: null`: refused, with what to do instead
    gone = ros.set_params(fqn, cameras=None)[0]
    assert not gone.successful and "[]" in gone.reason
    assert node.has_parameter("cameras")
    ros.bring_up(fqn)
    # `ros2 param load` of the node's own dump: [] (an untyped empty array) is no change
    assert ros.set_params(fqn, cameras=[])[0].successful
    assert [c.name for c in node.cameras] == [""]
