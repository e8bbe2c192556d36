"""The node's outputs a robot acts on (issue 19) over real DDS on loopback.

Detections, points, persistence, the ignore mask, anomaly snapshots, and the node without
vision_msgs.

Known score maps come from a fake backend (:class:`MapBackend`): the red value of a frame's
pixel (0, 0) says which map to return, so a republished frame gets the same map. vision_msgs is
the package built for the tests (test/ros_msgs.py), made importable here before any node is
configured; the node without it runs as a process of its own, whose environment lacks it.
Depth images and CameraInfo are published by the test side, each waited for (the node's
counters) before the camera frame it belongs to: no blind sleeps.
"""
from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy (ROS 2 Jazzy) is not installed")

import ros_msgs  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from PIL import Image as PILImage  # noqa: E402
from rclpy.event_handler import SubscriptionEventCallbacks  # noqa: E402
from ros_harness import RELIABLE, TIMEOUT, Probe, subprocess_env, wait_until  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, PointCloud2  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from flowclas_ros.node.image_conversion import numpy_to_msg  # noqa: E402
from flowclas_ros.outputs.pointcloud import unpack_points  # noqa: E402
from flowclas_ros.outputs.regions import exceedance, exceedance_table  # noqa: E402
from flowclas_ros.runtime.backend import FrameResult  # noqa: E402
from flowclas_ros.runtime.visualisation import mask_np, overlay_np  # noqa: E402

pytestmark = pytest.mark.ros

ROOT = Path(__file__).resolve().parents[1]
H, W = 120, 160
FX, FY, CX, CY = 100.0, 110.0, 79.5, 59.5


# fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vm():
    """vision_msgs.msg, importable in this process (built for the tests on first use)."""
    return ros_msgs.ensure_vision_msgs()


@pytest.fixture(scope="module")
def bundle(tiny_bundle, tmp_path_factory):
    """Copy the tiny bundle with an exceedance table of scores uniform in [-4, 4].

    The manifest is not hashed: the other files are the tiny bundle's.
    """
    import shutil

    out = tmp_path_factory.mktemp("robot") / "tiny_exceedance"
    shutil.copytree(tiny_bundle, out)
    m = json.loads((out / "manifest.json").read_text())
    table = exceedance_table(np.linspace(-4.0, 4.0, 10001))
    m["threshold"]["value"] = 0.0
    m["threshold"]["exceedance"] = {"levels": table[:, 0].tolist(),
                                    "scores": table[:, 1].tolist(), "pixels": 10001,
                                    "source": "test"}
    (out / "manifest.json").write_text(json.dumps(m))
    return out


class MapBackend:
    """A backend whose score maps are known.

    ``maps[k]`` for a frame whose pixel (0, 0) has red value k (a copy each call: the node may
    keep what it gets).
    """

    name, device, precision = "fake", "cpu", "fp32"

    def __init__(self, bundle, maps):
        self.bundle, self.maps, self.calls = bundle, maps, []

    def warmup(self, height, width):
        pass

    def infer(self, image, *, heatmap=True, mask=True, overlay=True, threshold=None,
              overlay_alpha=0.5, colormap="turbo"):
        self.calls.append({"heatmap": heatmap, "mask": mask, "overlay": overlay})
        s = np.array(self.maps[int(image[0, 0, 0])], dtype=np.float32)
        thr = self.bundle.mask_threshold(threshold)
        return FrameResult(s if heatmap else None, mask_np(s, thr) if mask else None,
                           overlay_np(s, image, self.bundle.score_range, overlay_alpha,
                                      colormap) if overlay else None, 1.0)

    def close(self):
        pass


def map_factory(maps):
    made = []

    def factory(bundle, backend, device, precision, **options):
        made.append(MapBackend(bundle, maps))
        return made[-1]

    factory.made = made
    return factory


def blank():
    return np.full((H, W), -2.0, np.float32)  # below the threshold 0 everywhere


def frame_rgb(k: int) -> np.ndarray:
    rgb = np.full((H, W, 3), 90, np.uint8)
    rgb[0, 0, 0] = k
    return rgb


class Probes(Probe):
    """A Probe over topics of different types: ``{key: (topic, type)}``."""

    def __init__(self, node, topics: dict, qos=RELIABLE):
        super().__init__(node, {}, qos)
        for key, (topic, msg_type) in topics.items():
            self.msgs[key] = []
            self.subs[key] = node.create_subscription(
                msg_type, topic, self._cb(key), qos,
                event_callbacks=SubscriptionEventCallbacks(use_default_callbacks=False))


class Rig:
    """A node under test with a fake backend, its probes and the test side's publishers."""

    def __init__(self, ros, nodes, ns, bundle, maps, vm=None, outputs=("det",), **params):
        self.ros, self.ns, self.maps = ros, ns, maps
        self.factory = map_factory(maps)
        self.node = nodes(ns, model_path=str(bundle), image_qos="reliable",
                          backend_factory=self.factory, **params)
        self.fqn = self.node.get_fully_qualified_name()
        ros.bring_up(self.fqn)
        topics = {"heatmap": (f"{ns}/anomaly/heatmap", Image),
                  "mask": (f"{ns}/anomaly/mask", Image),
                  "overlay": (f"{ns}/anomaly/overlay", Image),
                  "points": (f"{ns}/anomaly/points", PointCloud2)}
        if vm is not None:
            topics["det"] = (f"{ns}/anomaly/detections", vm.Detection2DArray)
        self.probe = Probes(ros.client, {k: topics[k] for k in outputs})
        self.pub = ros.publisher(f"{ns}/image")
        self.depth_pub = ros.publisher(f"{ns}/depth/image", Image)
        self.info_pub = ros.publisher(f"{ns}/depth/camera_info", CameraInfo)
        robot = self.node._robot
        wait_until(lambda: self.pub.get_subscription_count() > 0, what="the image subscription")
        for key in outputs:
            pub = {"det": robot._det_pub, "points": robot._pts_pub}.get(key) or \
                self.node._pubs[key]
            wait_until(lambda p=pub: p.get_subscription_count() > 0, what=f"{key} matched")

    def header(self, frame_id="camera_optical"):
        h = Header(frame_id=frame_id)
        h.stamp.sec, h.stamp.nanosec = self.ros.next_stamp()
        return h

    def camera_info(self, fx=FX, fy=FY, width=W, height=H):
        info = CameraInfo(width=width, height=height)
        info.header.frame_id = "depth_optical"
        info.k = [fx, 0.0, CX * width / W, 0.0, fy, CY * height / H, 0.0, 0.0, 1.0]
        return info

    def send_info(self, info=None):
        """Publish a valid CameraInfo until the node holds its intrinsics."""
        info = info or self.camera_info()
        robot = self.node._robot

        def held():
            if robot.depth.intrinsics is None:
                self.info_pub.publish(info)
                return False
            return True

        wait_until(lambda: self.info_pub.get_subscription_count() > 0, what="CameraInfo matched")
        wait_until(held, what="the node to take the CameraInfo")

    def send_depth(self, depth_msg):
        """Publish a depth image and wait until the node counted it."""
        wait_until(lambda: self.depth_pub.get_subscription_count() > 0, what="depth matched")
        tally = self.node._robot.tally
        before = tally.snapshot()["depth_received"]
        publish_until(self.depth_pub, depth_msg,
                      lambda: tally.snapshot()["depth_received"] > before, "the depth frame")

    def run(self, k, keys=("det",), depth=None, frame_id="camera_optical"):
        """Send one camera frame showing map ``k``; return its outputs ``keys``.

        With ``depth``, a depth image of the same stamp (``depth(header)``) goes first.
        """
        header = self.header(frame_id)
        if depth is not None:
            self.send_depth(depth(header))
        msg = numpy_to_msg(frame_rgb(k), "rgb8", header)
        return self.ros.roundtrip(self.pub, self.probe, msg, keys=keys)

    def close(self):
        self.probe.close()
        for p in (self.pub, self.depth_pub, self.info_pub):
            self.ros.client.destroy_publisher(p)


def publish_until(pub, msg, predicate, what: str) -> None:
    """Publish ``msg`` until ``predicate()`` holds (again every half second: best effort)."""
    last = [0.0]

    def check():
        if predicate():
            return True
        now = time.monotonic()
        if now - last[0] > 0.5:
            pub.publish(msg)
            last[0] = now
        return False

    wait_until(check, what=what)


def boxes_of(det_msg) -> list[tuple[float, float, float, float]]:
    return [(d.bbox.center.position.x, d.bbox.center.position.y, d.bbox.size_x, d.bbox.size_y)
            for d in det_msg.detections]


def expected_box(x0, y0, x1, y1):
    """BoundingBox2D of pixels x0..x1-1, y0..y1-1 (pixel-centre convention)."""
    return ((x0 + x1 - 1) / 2.0, (y0 + y1 - 1) / 2.0, float(x1 - x0), float(y1 - y0))


def plane_depth(header, encoding="32FC1", size=(H, W)):
    """Make a depth image of ``size`` of the plane z = 1.5 + 0.01 v metres (v: camera row)."""
    h, w = size
    v = (np.arange(h) + 0.5) * H / h - 0.5  # the camera row under each depth row's centre
    z = np.repeat((1.5 + 0.01 * v)[:, None], w, axis=1)
    dh = Header(frame_id="depth_optical")
    dh.stamp = header.stamp
    if encoding == "16UC1":
        return numpy_to_msg_depth(np.rint(z * 1000).astype("<u2"), "16UC1", dh)
    return numpy_to_msg_depth(z.astype("<f4"), "32FC1", dh)


def numpy_to_msg_depth(arr, encoding, header):
    msg = Image(header=header, height=arr.shape[0], width=arr.shape[1], encoding=encoding,
                is_bigendian=0, step=arr.shape[1] * arr.itemsize)
    msg.data = arr.tobytes()
    return msg


def cloud_points(msg) -> np.ndarray:
    return unpack_points(bytes(msg.data))


# tests ----------------------------------------------------------------------------------------
def test_detections_of_synthetic_regions_match_count_boxes_and_score(ros, nodes, bundle, vm):
    maps = {0: blank()}
    s = blank()
    s[10:30, 20:50] = 1.0  # a 30x20 rectangle, peak 1.5 below
    s[15, 25] = 1.5
    s[60:100, 100:110] = 0.5  # an L: a bar and a foot
    s[90:100, 110:140] = 0.5
    s[70:75, 40:45] = 3.0  # 25 pixels: at min_region_pixels, not reported
    maps[1] = s
    rig = Rig(ros, nodes, "/t_det", bundle, maps, vm, outputs=("det", "overlay"),
              persistence_n=1, persistence_m=1, min_region_pixels=25)
    out = rig.run(1, keys=("det", "overlay"))
    det = out["det"]
    assert det.header.frame_id == "camera_optical"
    assert sorted(boxes_of(det)) == pytest.approx(sorted(
        [expected_box(20, 10, 50, 30), expected_box(100, 60, 140, 100)]), abs=1.0)
    assert len({d.id for d in det.detections}) == 2
    table = rig.node._robot._table
    for d in det.detections:
        assert [r.hypothesis.class_id for r in d.results] == ["anomaly"]
        peak = 1.5 if d.bbox.size_x == 30 else 0.5
        assert d.results[0].hypothesis.score == pytest.approx(float(exceedance(table, peak)))
        assert 0.0 <= d.results[0].hypothesis.score <= 1.0
        assert d.header.stamp == det.header.stamp
    # the overlay draws each reported box (white, just outside the region) and nothing for
    # the one that was too small
    ov = np.frombuffer(out["overlay"].data, np.uint8).reshape(H, W, 3)
    assert (ov[9, 20:50] == 255).all() and (ov[10:30, 51] == 255).all()
    assert not (ov[69, 40:45] == 255).all()
    # a frame without regions: an empty array, same header rules
    assert rig.run(0)["det"].detections == []
    # raising min_region_pixels live drops the rectangle (600 pixels), not the L (700)
    assert ros.set_params(rig.fqn, min_region_pixels=650)[0].successful
    assert boxes_of(rig.run(1)["det"]) == pytest.approx([expected_box(100, 60, 140, 100)],
                                                        abs=1.0)
    rig.close()


def test_points_of_a_plane_back_project_within_a_centimetre(ros, nodes, bundle, vm):
    s = blank()
    s[20:40, 30:60] = 1.0  # 600 pixels
    maps = {0: blank(), 1: s}
    rig = Rig(ros, nodes, "/t_pts", bundle, maps, vm, outputs=("det", "points"),
              depth_topic="depth/image", persistence_n=1, persistence_m=1)
    rig.send_info()
    for encoding, size in (("32FC1", (H, W)), ("16UC1", (H // 2, W // 2))):
        out = rig.run(1, keys=("det", "points"),
                      depth=lambda h, e=encoding, sz=size: plane_depth(h, e, sz))
        cloud = out["points"]
        assert cloud.header.frame_id == "depth_optical" and cloud.is_dense
        assert [f.name for f in cloud.fields] == ["x", "y", "z", "score"]
        pts = cloud_points(cloud)
        assert len(pts) == 600, encoding
        x, y, z = pts[:, 0], pts[:, 1], pts[:, 2]
        u, v = np.rint(x * FX / z + CX), np.rint(y * FY / z + CY)  # the pixel of each point
        assert u.min() == 30 and u.max() == 59 and v.min() == 20 and v.max() == 39
        assert len({(a, b) for a, b in zip(u, v)}) == 600  # every pixel once
        depth_row = v if size == (H, W) else (np.floor((v + 0.5) * size[0] / H) + 0.5) * H / \
            size[0] - 0.5
        z_true = 1.5 + 0.01 * depth_row
        expect = np.stack([(u - CX) * z_true / FX, (v - CY) * z_true / FY, z_true], axis=1)
        assert np.abs(pts[:, :3] - expect).max() < 0.01, encoding
        assert np.allclose(pts[:, 3], 1.0)  # the raw score of each pixel
    # max_points bounds the cloud; a frame without regions gives an empty cloud
    assert ros.set_params(rig.fqn, max_points=100)[0].successful
    assert cloud_points(rig.run(1, ("points",), depth=plane_depth)["points"]).shape == (100, 4)
    assert rig.run(0, ("points",), depth=plane_depth)["points"].width == 0
    rig.close()


def test_bad_depth_and_camera_info_are_counted_and_the_image_path_goes_on(ros, nodes, bundle,
                                                                          vm):
    s = blank()
    s[20:40, 30:60] = 1.0
    maps = {0: blank(), 1: s}
    rig = Rig(ros, nodes, "/t_bad_depth", bundle, maps, vm,
              outputs=("det", "heatmap", "points"),
              depth_topic="depth/image", persistence_n=1, persistence_m=1)
    robot = rig.node._robot
    tally = robot.tally
    # no CameraInfo yet: detections and heatmaps flow, no points, and /diagnostics says why
    rig.run(1, keys=("det", "heatmap"), depth=plane_depth)
    values, notes = robot.status()
    assert "CameraInfo" in values["points"] and notes
    bad_infos = [rig.camera_info(fx=0.0), rig.camera_info(width=0)]
    short_k = rig.camera_info()
    short_k.k[0] = float("nan")
    for i, info in enumerate(bad_infos + [short_k]):
        before = tally.snapshot()["camera_info_malformed"]
        publish_until(rig.info_pub, info,
                      lambda b=before: tally.snapshot()["camera_info_malformed"] > b,
                      f"bad CameraInfo {i}")
    assert robot.depth.intrinsics is None
    rig.send_info()

    def bad(**kw):
        def make(header):
            m = plane_depth(header)
            for k, v in kw.items():
                setattr(m, k, v)
            return m
        return make

    for i, make in enumerate((bad(encoding="rgb8"), bad(data=bytes(10)), bad(step=4),
                              bad(height=0, width=0, step=0, data=b""))):
        before = tally.snapshot()["depth_malformed"]
        publish_until(rig.depth_pub, make(rig.header()),
                      lambda b=before: tally.snapshot()["depth_malformed"] > b,
                      f"malformed depth {i}")
    assert tally.snapshot()["depth_received"] == tally.snapshot()["depth_malformed"] + 1
    # a depth image of another aspect ratio: refused with a reason, no points for the frame
    rig.run(1, keys=("det", "heatmap"), depth=lambda h: plane_depth(h, size=(H, W // 2)))
    wait_until(lambda: tally.snapshot()["depth_refused"] == 1, what="the refused depth")
    assert rig.node.stats()["errors"] == 0
    assert ros.get_state(rig.fqn) == "active"
    rig.close()


def test_one_frame_region_never_reaches_the_robot_with_persistence_two_of_three(ros, nodes,
                                                                                 bundle, vm):
    b = blank()
    b[50:80, 100:130] = 1.0  # the region that stays
    both = b.copy()
    both[10:30, 10:40] = 1.0  # the one-frame region
    maps = {0: blank(), 1: b, 2: both}
    rig = Rig(ros, nodes, "/t_persist", bundle, maps, vm, outputs=("det", "points"),
              depth_topic="depth/image", persistence_n=2, persistence_m=3)
    rig.send_info()
    seq = [rig.run(k, ("det", "points"), depth=plane_depth) for k in (1, 2, 1, 1)]
    dets = [o["det"] for o in seq]
    assert dets[0].detections == []  # seen once: not yet
    ids = [[d.id for d in m.detections] for m in dets[1:]]
    assert ids[0] == ids[1] == ids[2] and len(ids[0]) == 1  # confirmed on its 2nd frame, kept
    for m in dets[1:]:
        assert boxes_of(m) == pytest.approx([expected_box(100, 50, 130, 80)], abs=1.0)
    # the points are the persistent region's only (never the one-frame region's)
    for k, o in enumerate(seq):
        pts = cloud_points(o["points"])
        assert len(pts) == (0 if k == 0 else 900)
        if len(pts):
            u = np.rint(pts[:, 0] * FX / pts[:, 2] + CX)
            assert u.min() >= 100
    rig.close()


def test_ignored_pixels_are_absent_from_mask_detections_and_points(ros, nodes, bundle, vm,
                                                                   tmp_path):
    ignore = np.zeros((60, 80), np.uint8)  # half the frame's size: resized to it
    ignore[:, :40] = 255  # the left half of the image (columns < 80 of 160)
    PILImage.fromarray(ignore).save(tmp_path / "hood.png")
    s = blank()
    s[20:40, 60:100] = 1.0  # straddles the edge at column 80
    s[70:90, 10:40] = 2.0  # entirely ignored
    maps = {1: s}
    rig = Rig(ros, nodes, "/t_ignore", bundle, maps, vm,
              outputs=("det", "points", "mask", "heatmap"), depth_topic="depth/image",
              ignore_mask=str(tmp_path / "hood.png"), persistence_n=1, persistence_m=1)
    rig.send_info()
    out = rig.run(1, ("det", "points", "mask", "heatmap"), depth=plane_depth)
    mask = np.frombuffer(out["mask"].data, np.uint8).reshape(H, W)
    assert not mask[:, :80].any()  # ignored: never in the mask
    assert (mask[20:40, 80:100] == 255).all()
    heat = np.frombuffer(out["heatmap"].data, np.float32).reshape(H, W)
    np.testing.assert_array_equal(heat, s)  # the heatmap shows the raw score
    assert boxes_of(out["det"]) == pytest.approx([expected_box(80, 20, 100, 40)], abs=1.0)
    pts = cloud_points(out["points"])
    assert len(pts) == 400 and np.rint(pts[:, 0] * FX / pts[:, 2] + CX).min() >= 80
    assert rig.node._robot.status()[0]["ignore_mask"].startswith(str(tmp_path / "hood.png"))
    rig.close()


def test_snapshot_mcap_around_an_event_is_bounded_and_read_by_train_bag(ros, nodes, bundle, vm,
                                                                        tmp_path):
    from flowclas_ros.data.bags import BagSelection, bag_dataset, bag_topics, iter_bag_frames

    s = blank()
    s[50:80, 100:130] = 1.0
    maps = {0: blank(), 1: s}
    folder = tmp_path / "events"
    rig = Rig(ros, nodes, "/t_snap", bundle, maps, vm, outputs=("heatmap",),
              snapshot_dir=str(folder), snapshot_pre_s=1.5, snapshot_post_s=1.5,
              snapshot_max_mb=0.35, persistence_n=2, persistence_m=3)
    rec = rig.node._robot.recorder
    # stamps 1 s apart (the harness's): 2 frames before the event, the region from the 3rd on
    # (confirmed on the 4th: the trigger), quiet again after; frames beyond end + pre close it
    for k in (0, 0, 1, 1, 1, 0, 0, 0, 0):
        rig.run(k, keys=("heatmap",))
    assert rec.flush(TIMEOUT)
    wait_until(lambda: rec.stats()["events_written"] == 1, what="the first event file")
    (first,) = sorted(folder.glob("anomaly_*.mcap"))
    topics = bag_topics(first)
    image_topic = "/t_snap/image/compressed"  # raw frames kept as JPEG
    assert set(topics) == {image_topic, "/t_snap/anomaly/heatmap"}
    # the trigger was the 4th frame: from 1.5 s before to 1.5 s after it, 1 s apart
    assert topics[image_topic][1] == 3
    frames = list(iter_bag_frames(first, BagSelection(topic=image_topic)))
    assert [f.rgb.shape for f in frames] == [(H, W, 3)] * 3
    ds = bag_dataset(first, None, topic=image_topic, cache_dir=tmp_path / "cache")
    assert len(ds) == 3 and ds[0].image.shape == (H, W, 3)  # what train --bag reads
    # more events: the folder stays under snapshot_max_mb, the oldest go first
    for _ in range(4):
        for k in (1, 1, 0, 0, 0, 0):
            rig.run(k, keys=("heatmap",))
    assert ros.change_state(rig.fqn, Transition.TRANSITION_DEACTIVATE)  # finishes the event
    assert rec.flush(TIMEOUT)
    wait_until(lambda: not rec.stats()["open"] and rec.stats()["pending"] == 0,
               what="the last event to close")
    st = rec.stats()
    total = sum(p.stat().st_size for p in folder.glob("anomaly_*.mcap"))
    assert st["events_written"] >= 4 and st["events_deleted"] >= 1, st
    assert total <= 0.35 * 1024 * 1024 and not first.exists()
    values, _ = rig.node._robot.status()
    assert values["snapshot_events"] == st["events_written"]
    rig.close()


def test_diagnostics_count_regions_points_and_snapshots(ros, nodes, bundle, vm, tmp_path):
    s = blank()
    s[20:40, 30:60] = 1.0
    maps = {1: s}
    rig = Rig(ros, nodes, "/t_robot_diag", bundle, maps, vm, outputs=("det", "points"),
              depth_topic="depth/image", snapshot_dir=str(tmp_path / "ev"),
              persistence_n=1, persistence_m=1, diagnostics_period=0.1)
    probe = Probe(ros.client, {"diag": "/diagnostics"}, msg_type=DiagnosticArray)
    rig.send_info()
    for _ in range(2):
        rig.run(1, ("det", "points"), depth=plane_depth)

    def values():
        with probe._cv:
            for arr in reversed(probe.msgs["diag"]):
                for st in arr.status:
                    if st.name.startswith(rig.fqn + ":"):
                        return {kv.key: kv.value for kv in st.values}
        return {}

    wait_until(lambda: values().get("points_published") == "1200", what="diagnostics counts")
    v = values()
    assert v["detections"] == "on" and v["points"].startswith("on")
    assert v["regions_found"] == "2" and v["regions_reported"] == "2"
    assert v["detections_published"] == "2" and v["clouds_published"] == "2"
    assert v["snapshots"].startswith("on") and "snapshot_events" in v
    assert math.isfinite(float(v["robot_outputs_p50_ms"]))
    probe.close()
    rig.close()


def test_robot_outputs_cost_nothing_without_subscribers(ros, nodes, bundle, vm):
    maps = {1: blank()}
    rig = Rig(ros, nodes, "/t_robot_lazy", bundle, maps, vm, outputs=("heatmap",),
              depth_topic="depth/image")
    rig.run(1, ("heatmap",))
    assert rig.factory.made[0].calls[-1] == {"heatmap": True, "mask": False, "overlay": False}
    assert rig.node._robot.tally.snapshot()["frames"] == 0  # no regions were looked for
    rig.close()


def test_robot_parameters_live_structural_and_pairs(ros, nodes, bundle, vm, tmp_path):
    node = nodes("/t_robot_par", model_path=str(bundle), backend_factory=map_factory({}))
    fqn = node.get_fully_qualified_name()
    res = ros.set_params(fqn, persistence_n=4)[0]  # m is 3
    assert not res.successful and "persistence_m" in res.reason
    assert ros.set_params(fqn, persistence_m=5)[0].successful
    assert ros.set_params(fqn, persistence_n=4)[0].successful
    assert not ros.set_params(fqn, depth_min_m=30.0)[0].successful  # > depth_max_m 20
    # a missing ignore mask fails configure with the file and the fix
    assert ros.set_params(fqn, ignore_mask=str(tmp_path / "none.png"))[0].successful
    assert not ros.change_state(fqn, Transition.TRANSITION_CONFIGURE)
    assert "none.png" in node.last_error and "ignore_mask" in node.last_error
    assert ros.set_params(fqn, ignore_mask="")[0].successful
    assert ros.change_state(fqn, Transition.TRANSITION_CONFIGURE)
    for structural in ({"depth_topic": "/d"}, {"snapshot_dir": "/tmp/x"},
                       {"ignore_mask": "/x.png"}, {"snapshot_max_mb": 5.0}):
        res = ros.set_params(fqn, **structural)[0]
        assert not res.successful and "structural" in res.reason, structural
    for live in ({"min_region_pixels": 10}, {"max_points": 5}, {"depth_max_skew_s": 0.1},
                 {"persistence_iou": 0.5}, {"publish_detections": False}):
        assert ros.set_params(fqn, **live)[0].successful, live
    assert node._robot.live.max_points == 5 and node._robot.live.persistence == (4, 5, 0.5)


@pytest.mark.slow
def test_node_without_vision_msgs_runs_and_says_so(ros, tiny_bundle):
    """Run the node in a process whose environment lacks vision_msgs.

    Configure and frames work, the log says once that detections are off and how to install
    them, and so does /diagnostics.
    """
    ns = "/t_novision"
    env = subprocess_env()
    code = "import importlib.util as u; print(u.find_spec('vision_msgs') is None)"
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60).stdout.strip() == "True"
    proc = subprocess.Popen(
        [sys.executable, "-m", "flowclas_ros.tools.anomaly_node", "--ros-args",
         "-r", f"__ns:={ns}", "-p", f"model_path:={tiny_bundle}", "-p", "image_qos:=reliable",
         "-p", "diagnostics_period:=0.2"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    fqn = f"{ns}/flowclas_anomaly"
    probe = Probe(ros.client, {"diag": "/diagnostics"}, msg_type=DiagnosticArray)
    try:
        for _ in range(2):  # configure twice: the log line comes once
            ros.bring_up(fqn)
            assert ros.change_state(fqn, Transition.TRANSITION_DEACTIVATE)
            assert ros.change_state(fqn, Transition.TRANSITION_CLEANUP)
        ros.bring_up(fqn)
        hp, pub = ros.probe(ns, ("heatmap",)), ros.publisher(f"{ns}/image")
        frame = numpy_to_msg(frame_rgb(0), "rgb8", Header(frame_id="c"))
        frame.header.stamp.sec, frame.header.stamp.nanosec = ros.next_stamp()
        ros.roundtrip(pub, hp, frame, keys=["heatmap"])

        def detections_value():
            with probe._cv:
                for arr in reversed(probe.msgs["diag"]):
                    for st in arr.status:
                        if st.name.startswith(fqn + ":"):
                            return {kv.key: kv.value for kv in st.values}.get("detections", "")
            return ""

        wait_until(lambda: "vision_msgs is not installed" in detections_value(),
                   what="diagnostics saying detections are off")
        hp.close()
        ros.client.destroy_publisher(pub)
    finally:
        probe.close()
        proc.send_signal(signal.SIGINT)
        try:
            log, _ = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            log, _ = proc.communicate()
    assert proc.returncode == 0 and "Traceback" not in log, log
    assert log.count("vision_msgs is not installed: anomaly/detections is off; apt install "
                     "ros-jazzy-vision-msgs") == 1, log
