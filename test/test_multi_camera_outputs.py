"""Each camera's outputs a robot acts on (issues 19 and 20) over real DDS on loopback.

One node with ``cameras: [front, left]`` and a fake backend whose score maps are known
(:class:`MapBackend`: the red value of a frame's pixel (0, 0) picks the map): each camera's
detections on its own ``c/anomaly/detections`` with its own header and persistence tracks, a
camera's ignore-mask override, a camera's depth topic override with points on
``c/anomaly/points``, snapshots in ``snapshot_dir/<c>``, and the node's own ``depth_topic``
ignored with a warning. vision_msgs is the package built for the tests (test/ros_msgs.py).

Every frame is published once (reliable, after discovery both ways) and waited for on its
outputs; depth images and CameraInfo are published until the node has counted them; the
node's counters are waited for (they are bumped after the publish): no blind sleeps.
"""
from __future__ import annotations

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy (ROS 2 Jazzy) is not installed")

import ros_msgs  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from PIL import Image as PILImage  # noqa: E402
from ros_harness import TIMEOUT, wait_until  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, PointCloud2  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from test_multi_camera import BatchBackend, recording_factory  # noqa: E402
from test_robot_outputs_node import (  # noqa: E402
    CX,
    CY,
    FX,
    FY,
    H,
    Probes,
    W,
    boxes_of,
    cloud_points,
    expected_box,
    plane_depth,
    publish_until,
)

from flowclas_ros.node.image_conversion import numpy_to_msg  # noqa: E402

pytestmark = pytest.mark.ros

CAMERAS = ("front", "left")


@pytest.fixture(scope="module")
def vm():
    """vision_msgs.msg, importable in this process (built for the tests on first use)."""
    return ros_msgs.ensure_vision_msgs()


class MapBackend(BatchBackend):
    """A batching backend whose score maps are known: ``maps[k]`` for red value k at (0, 0)."""

    def __init__(self, bundle, maps, options):
        super().__init__(bundle, options)
        self.maps = maps

    def score_map(self, im):
        return np.array(self.maps[int(im[0, 0, 0])], dtype=np.float32)  # a fresh copy per frame

    def display_range(self):
        return self.bundle.score_range


def map_factory(maps):
    return recording_factory(lambda bundle, options: MapBackend(bundle, maps, options))


class LogRecorder:
    """Stand in for the node's logger: record each line as (level, text), and print it.

    Not forwarded: rclpy's logger keys its once/throttle state on the calling line, which
    would be this one for every level.
    """

    LEVELS = ("debug", "info", "warning", "warn", "error", "fatal")

    def __init__(self, logger):
        self._logger, self.lines = logger, []

    def __getattr__(self, name):
        if name not in self.LEVELS:
            return getattr(self._logger, name)

        def record(message, *args, **kwargs):
            self.lines.append((name, str(message)))
            print(f"[{name}] {message}")
            return True

        return record

    def warnings(self) -> list[str]:
        return [t for level, t in self.lines if level in ("warning", "warn")]


def blank():
    return np.full((H, W), -2.0, np.float32)  # below threshold 0 everywhere


def frame_rgb(k: int) -> np.ndarray:
    rgb = np.full((H, W, 3), 90, np.uint8)
    rgb[0, 0, 0] = k
    return rgb


TOPIC_TYPES = {"heatmap": Image, "mask": Image, "overlay": Image, "points": PointCloud2}


class Rig:
    """A node serving ``cameras``, the test side's publishers and probes on ``outputs``.

    ``outputs``: ``{camera: keys}`` (``det``, ``points``, ``heatmap``, ``mask``, ``overlay``).
    """

    def __init__(self, ros, nodes, ns, bundle, maps, vm, outputs, cameras=CAMERAS, **params):
        self.ros, self.ns = ros, ns
        self.factory = map_factory(maps)
        self.node = nodes(ns, model_path=str(bundle), image_qos="reliable",
                          cameras=list(cameras), threshold=0.0, backend_factory=self.factory,
                          **params)
        self.log = LogRecorder(self.node.get_logger())
        self.node.get_logger = lambda: self.log  # what configure says, for the tests
        self.fqn = self.node.get_fully_qualified_name()
        ros.bring_up(self.fqn)
        self.cams = {c.name: c for c in self.node.cameras}
        self.pubs = {c: ros.publisher(f"{ns}/{c}/image") for c in cameras}
        self.depth_pubs = {c: ros.publisher(f"{ns}/{c}/depth/image") for c in cameras}
        self.info_pubs = {c: ros.publisher(f"{ns}/{c}/depth/camera_info", CameraInfo)
                          for c in cameras}
        topics = {}
        for cam, keys in outputs.items():
            for k in keys:
                topic = "detections" if k == "det" else k
                msg_type = vm.Detection2DArray if k == "det" else TOPIC_TYPES[k]
                topics[f"{cam}/{k}"] = (f"{ns}/{cam}/anomaly/{topic}", msg_type)
        self.probe = Probes(ros.client, topics)
        for cam in cameras:  # discovery both ways: one reliable publish is then delivered
            pub, sub = self.pubs[cam], self.cams[cam].sub
            wait_until(lambda p=pub, s=sub: p.get_subscription_count() > 0
                       and s.get_publisher_count() > 0, what=f"{cam}'s image subscription")
        for key in topics:
            cam, k = key.split("/")
            robot = self.cams[cam].robot
            pub = {"det": robot._det_pub, "points": robot._pts_pub}.get(k) or \
                self.cams[cam].pubs[k]
            sub = self.probe.subs[key]
            wait_until(lambda p=pub, s=sub: p.get_subscription_count() > 0
                       and s.get_publisher_count() > 0, what=f"{key} matched")

    def header(self, cam):
        h = Header(frame_id=f"{cam}_optical")
        h.stamp.sec, h.stamp.nanosec = self.ros.next_stamp()
        return h

    def send_info(self, cam):
        """Publish a valid CameraInfo on ``cam``'s depth until the node holds its intrinsics."""
        info = CameraInfo(width=W, height=H)
        info.header.frame_id = f"{cam}_depth_optical"
        info.k = [FX, 0.0, CX, 0.0, FY, CY, 0.0, 0.0, 1.0]
        depth = self.cams[cam].robot.depth
        publish_until(self.info_pubs[cam], info, lambda: depth.intrinsics is not None,
                      f"{cam}'s CameraInfo")

    def send_depth(self, cam, msg):
        """Publish a depth image on ``cam``'s depth topic until the node counted it."""
        tally = self.cams[cam].robot.tally
        before = tally.snapshot()["depth_received"]
        publish_until(self.depth_pubs[cam], msg,
                      lambda: tally.snapshot()["depth_received"] > before, f"{cam}'s depth")

    def run(self, cam, k, keys=("det",), depth=None):
        """Send one frame of ``cam`` showing map ``k`` (once); return its outputs ``keys``."""
        header = self.header(cam)
        if depth is not None:
            self.send_depth(cam, depth(header))
        msg = numpy_to_msg(frame_rgb(k), "rgb8", header)
        published = self.cams[cam].meters.counters.snapshot().get("published", 0)
        self.pubs[cam].publish(msg)
        stamp = (header.stamp.sec, header.stamp.nanosec)
        wait_until(lambda: all(self.probe.find(f"{cam}/{key}", stamp) is not None
                               for key in keys), what=f"{cam}'s {keys} of stamp {stamp}")
        # the counters are bumped after the publish: this frame is done once they moved
        wait_until(lambda: self.cams[cam].meters.counters.snapshot().get("published", 0)
                   > published, what=f"{cam}'s frame counted")
        return {key: self.probe.find(f"{cam}/{key}", stamp) for key in keys}

    def close(self):
        self.probe.close()
        for pubs in (self.pubs, self.depth_pubs, self.info_pubs):
            for p in pubs.values():
                self.ros.client.destroy_publisher(p)


def ids_of(det_msg) -> list[str]:
    return [d.id for d in det_msg.detections]


# tests ----------------------------------------------------------------------------------------
def test_each_camera_has_its_own_detections_headers_and_persistence(ros, nodes, tiny_bundle,
                                                                     vm):
    first = blank()
    first[10:30, 20:50] = 1.0  # front's region, and left's one-frame region at the same place
    second = blank()
    second[60:90, 100:130] = 1.0  # left's region that stays
    maps = {0: blank(), 1: first, 2: second}
    rig = Rig(ros, nodes, "/t_mco_det", tiny_bundle, maps, vm,
              dict.fromkeys(CAMERAS, ("det",)), persistence_n=2, persistence_m=3)
    sent = {c: [] for c in CAMERAS}

    def run(cam, k):
        det = rig.run(cam, k)["det"]
        sent[cam].append((det.header.stamp.sec, det.header.stamp.nanosec))
        assert det.header.frame_id == f"{cam}_optical"  # its own input's header
        return det

    # front sees its region in three frames: confirmed on the second, same id after
    front = [run("front", 1) for _ in range(3)]
    assert front[0].detections == []
    assert ids_of(front[1]) == ids_of(front[2]) == ["1"]
    for det in front[1:]:
        assert boxes_of(det) == pytest.approx([expected_box(20, 10, 50, 30)], abs=1.0)
    # left sees the same region once: front's track does not make it persist on left
    assert run("left", 1).detections == []
    assert run("left", 0).detections == []
    # left's own region: confirmed on its second frame under left's own first id
    left = [run("left", 2) for _ in range(2)]
    assert left[0].detections == []
    assert ids_of(left[1]) == ["1"]
    assert boxes_of(left[1]) == pytest.approx([expected_box(100, 60, 130, 90)], abs=1.0)
    # front's track went on meanwhile, untouched by left's frames
    assert ids_of(run("front", 1)) == ["1"]
    # every camera's detections on its own topic only
    for cam in CAMERAS:
        assert set(rig.probe.stamps(f"{cam}/det")) == set(sent[cam]), cam
        tally = rig.cams[cam].robot.tally.snapshot()
        assert tally["detections_published"] == len(sent[cam]), cam
    rig.close()


def test_a_camera_calibrated_on_its_own_topic_scores_with_its_own_table(ros, nodes,
                                                                       tiny_bundle, vm,
                                                                       tmp_path):
    """A detection's score: the exceedance table of the camera's topic, else the bundle's.

    ``export --calibration-bag --topic T1 T2`` records each topic's table in
    ``threshold.per_topic``; the same region (peak 1.0) then scores 0.25 on front, whose
    normal pixels score higher, 0.75 on left and 0.5 (the bundle's table) on right, which was
    not calibrated on its own.
    """
    import json
    import shutil

    from flowclas_ros.bundle.writer import exceedance_section
    from flowclas_ros.outputs.regions import exceedance_table

    def table(lo):  # normal scores uniform on [lo, lo + 2]
        return exceedance_section(exceedance_table(np.linspace(lo, lo + 2, 4001)), 4001, "t")

    ns, cameras = "/t_mco_score", ("front", "left", "right")
    bundle = tmp_path / "per_topic_tables"
    shutil.copytree(tiny_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["threshold"]["exceedance"] = table(0.0)
    manifest["threshold"]["per_topic"] = {
        f"{ns}/front/image": {"value": 0.0, "fpr": 0.05, "exceedance": table(0.5)},
        f"{ns}/left/image/compressed": {"value": 0.0, "fpr": 0.05, "exceedance": table(-0.5)}}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    region = blank()
    region[10:30, 20:50] = 1.0
    rig = Rig(ros, nodes, ns, bundle, {0: blank(), 1: region}, vm,
              dict.fromkeys(cameras, ("det",)), cameras=cameras, persistence_n=1,
              persistence_m=1)
    for cam, want in (("front", 0.25), ("left", 0.75), ("right", 0.5)):
        det = rig.run(cam, 1)["det"]
        assert len(det.detections) == 1, cam
        assert det.detections[0].results[0].hypothesis.score == pytest.approx(want, abs=2e-3), \
            cam
    rig.close()


def test_a_cameras_ignore_mask_override_is_its_own(ros, nodes, tiny_bundle, vm, tmp_path):
    ignore = np.zeros((60, 80), np.uint8)  # half the frame's size: resized to it
    ignore[:, :40] = 255  # the left half of the image (columns < 80 of 160)
    PILImage.fromarray(ignore).save(tmp_path / "left_hood.png")
    s = blank()
    s[20:40, 10:50] = 1.0  # in the ignored half
    s[70:90, 100:140] = 2.0  # outside it
    maps = {1: s}
    rig = Rig(ros, nodes, "/t_mco_ignore", tiny_bundle, maps, vm,
              dict.fromkeys(CAMERAS, ("det", "mask", "heatmap")),
              persistence_n=1, persistence_m=1,
              **{"camera_overrides.left.ignore_mask": str(tmp_path / "left_hood.png")})
    both = sorted([expected_box(10, 20, 50, 40), expected_box(100, 70, 140, 90)])
    out = {c: rig.run(c, 1, ("det", "mask", "heatmap")) for c in CAMERAS}
    masks = {c: np.frombuffer(o["mask"].data, np.uint8).reshape(H, W) for c, o in out.items()}
    # left: its override removes the region from its mask and detections
    assert not masks["left"][:, :80].any()
    assert (masks["left"][70:90, 100:140] == 255).all()
    assert boxes_of(out["left"]["det"]) == pytest.approx([expected_box(100, 70, 140, 90)],
                                                         abs=1.0)
    # front (no override, none at the node) still reports both
    assert (masks["front"][20:40, 10:50] == 255).all()
    assert sorted(boxes_of(out["front"]["det"])) == pytest.approx(both, abs=1.0)
    for cam in CAMERAS:  # the heatmap stays raw on both
        heat = np.frombuffer(out[cam]["heatmap"].data, np.float32).reshape(H, W)
        np.testing.assert_array_equal(heat, s)
    assert rig.cams["front"].robot.ignore is None
    values, _ = rig.cams["left"].robot.status()
    assert values["ignore_mask"].startswith(str(tmp_path / "left_hood.png"))
    assert any("camera left: ignore mask" in t for _, t in rig.log.lines)
    rig.close()


def test_node_ignore_mask_is_every_cameras_default(ros, nodes, tiny_bundle, tmp_path):
    for name, column in (("node.png", 40), ("front.png", 10)):
        ignore = np.zeros((H, W), np.uint8)
        ignore[:, :column] = 255
        PILImage.fromarray(ignore).save(tmp_path / name)
    cameras = ("front", "left", "right")
    node = nodes("/t_mco_default", model_path=str(tiny_bundle), cameras=list(cameras),
                 backend_factory=map_factory({}), ignore_mask=str(tmp_path / "node.png"),
                 **{"camera_overrides.front.ignore_mask": str(tmp_path / "front.png")})
    fqn = node.get_fully_qualified_name()
    assert ros.change_state(fqn, Transition.TRANSITION_CONFIGURE)
    sources = {c.name: c.robot.ignore.source for c in node.cameras}
    assert sources == {"front": str(tmp_path / "front.png"),
                       "left": str(tmp_path / "node.png"), "right": str(tmp_path / "node.png")}
    assert ros.change_state(fqn, Transition.TRANSITION_CLEANUP)
    # a camera's unreadable mask fails configure naming the camera and its parameter
    missing = str(tmp_path / "none.png")
    assert ros.set_params(fqn, **{"camera_overrides.left.ignore_mask": missing})[0].successful
    assert not ros.change_state(fqn, Transition.TRANSITION_CONFIGURE)
    assert node.last_error.startswith("camera left: ") and "none.png" in node.last_error
    assert "camera_overrides.left.ignore_mask" in node.last_error
    assert node.cameras == [] and node._backend is None  # everything released


def test_a_cameras_depth_override_gives_its_points_only(ros, nodes, tiny_bundle, vm):
    s = blank()
    s[20:40, 30:60] = 1.0  # 600 pixels
    maps = {0: blank(), 1: s}
    rig = Rig(ros, nodes, "/t_mco_depth", tiny_bundle, maps, vm,
              {"front": ("det", "points"), "left": ("det",)},
              persistence_n=1, persistence_m=1, depth_topic="depth/image",
              **{"camera_overrides.front.depth_topic": "front/depth/image"})
    front, left = rig.cams["front"].robot, rig.cams["left"].robot
    # the node's own depth_topic serves no named camera: nothing subscribes to it, and
    # configure said so once, naming the camera left without points
    assert left.depth is None and left._pts_pub is None
    assert ros.client.count_subscribers(f"{rig.ns}/depth/image") == 0
    assert ros.client.count_publishers(f"{rig.ns}/left/anomaly/points") == 0
    warned = [t for t in rig.log.warnings() if "depth_topic 'depth/image' is ignored" in t]
    assert len(warned) == 1 and "left" in warned[0] and "front" not in warned[0].split(";")[1]
    assert left.status()[0]["points"] == "off: camera_overrides.left.depth_topic is empty"
    assert front.depth.depth_topic == f"{rig.ns}/front/depth/image"
    rig.send_info("front")
    out = rig.run("front", 1, ("det", "points"), depth=plane_depth)
    cloud = out["points"]
    assert cloud.header.frame_id == "depth_optical"
    pts = cloud_points(cloud)
    assert len(pts) == 600
    x, y, z = pts[:, 0], pts[:, 1], pts[:, 2]
    u, v = np.rint(x * FX / z + CX), np.rint(y * FY / z + CY)  # the pixel of each point
    assert u.min() == 30 and u.max() == 59 and v.min() == 20 and v.max() == 39
    z_true = 1.5 + 0.01 * v  # plane_depth's plane
    expect = np.stack([(u - CX) * z_true / FX, (v - CY) * z_true / FY, z_true], axis=1)
    assert np.abs(pts[:, :3] - expect).max() < 0.01
    # left: the same region gives its detections, and no points anywhere
    assert boxes_of(rig.run("left", 1)["det"]) == pytest.approx(
        [expected_box(30, 20, 60, 40)], abs=1.0)
    assert boxes_of(rig.run("front", 0, ("det", "points"), depth=plane_depth)["det"]) == []
    assert left.tally.snapshot()["clouds_published"] == 0
    assert front.tally.snapshot()["clouds_published"] == 2
    rig.close()


def test_snapshots_of_a_cameras_event_go_to_its_own_folder(ros, nodes, tiny_bundle, vm,
                                                          tmp_path):
    from flowclas_ros.data.bags import bag_topics

    s = blank()
    s[50:80, 100:130] = 1.0
    maps = {0: blank(), 1: s}
    folder = tmp_path / "events"
    rig = Rig(ros, nodes, "/t_mco_snap", tiny_bundle, maps, vm,
              dict.fromkeys(CAMERAS, ("heatmap",)), snapshot_dir=str(folder),
              snapshot_pre_s=1.5, snapshot_post_s=1.5, snapshot_max_mb=4.0,
              persistence_n=1, persistence_m=1)
    recorders = {c: rig.cams[c].robot.recorder for c in CAMERAS}
    assert {c: r.folder for c, r in recorders.items()} == {c: folder / c for c in CAMERAS}
    # snapshot_dir as a whole stays under snapshot_max_mb: an equal share per camera
    assert all(r.max_bytes == 2 * 1024 * 1024 for r in recorders.values())
    for cam, k in (("front", 0), ("left", 0), ("front", 1), ("left", 0), ("front", 0)):
        rig.run(cam, k, ("heatmap",))
    assert ros.change_state(rig.fqn, Transition.TRANSITION_DEACTIVATE)  # finishes the event
    for rec in recorders.values():
        assert rec.flush(TIMEOUT)
    wait_until(lambda: recorders["front"].stats()["events_written"] == 1,
               what="front's event file")
    (event,) = sorted((folder / "front").glob("anomaly_*.mcap"))
    assert set(bag_topics(event)) >= {"/t_mco_snap/front/image/compressed",
                                      "/t_mco_snap/front/anomaly/heatmap"}
    assert recorders["left"].stats()["events_written"] == 0
    assert not list((folder / "left").glob("*.mcap")) and not list(folder.glob("*.mcap"))
    rig.close()
