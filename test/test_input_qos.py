"""image_qos: auto subscribes with the camera's own QoS and follows it while active (real DDS)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy (ROS 2 Jazzy) is not installed")

from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from ros_harness import wait_until  # noqa: E402

from flowclas_ros.node.input_qos import choose  # noqa: E402

RELIABLE_PUB = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
NODE = "flowclas_anomaly"


def _offer(reliability):
    return SimpleNamespace(qos_profile=QoSProfile(depth=1, reliability=reliability))


def test_auto_takes_reliable_only_when_every_publisher_offers_it():
    rel, be = _offer(ReliabilityPolicy.RELIABLE), _offer(ReliabilityPolicy.BEST_EFFORT)
    assert choose("auto", [rel, rel]) == "reliable"
    assert choose("auto", [rel, be]) == "sensor_data"  # a reliable one would miss the other
    assert choose("auto", [be]) == "sensor_data"
    assert choose("auto", []) == "sensor_data"  # nothing offered yet: takes either kind
    assert choose("auto", [], current="reliable") == "reliable"  # a driver restarting
    assert choose("sensor_data", [rel]) == "sensor_data" and choose("reliable", [be]) == "reliable"


def _subscribed(ros, topic: str, ns: str):
    """Return the reliability the node's subscription to ``topic`` has, as the graph sees it."""
    mine = [i for i in ros.client.get_subscriptions_info_by_topic(topic)
            if i.node_name == NODE and i.node_namespace == ns]
    return mine[0].qos_profile.reliability if len(mine) == 1 else None


def _frame(ros, seed=0):
    return ros.frame(np.random.default_rng(seed).integers(0, 256, (24, 32, 3), np.uint8))


def test_a_reliable_camera_gets_a_reliable_subscription_from_the_start(ros, nodes, tiny_bundle):
    ns = "/t_qos_rel"
    pub = ros.publisher(f"{ns}/image", qos=RELIABLE_PUB)  # image_transport's default QoS
    node = nodes(ns, model_path=str(tiny_bundle))  # image_qos: auto, the default
    wait_until(lambda: node.get_publishers_info_by_topic(f"{ns}/image"),
               what="the node to see the camera")
    ros.bring_up(node.get_fully_qualified_name())
    wait_until(lambda: _subscribed(ros, f"{ns}/image", ns) == ReliabilityPolicy.RELIABLE,
               what="a reliable image subscription")
    assert node.stats()["input_qos"] == "reliable (auto)"
    probe = ros.probe(ns, outputs=("heatmap",))
    assert ros.roundtrip(pub, probe, _frame(ros), keys=["heatmap"])["heatmap"].width == 32


def test_auto_follows_the_cameras_qos_while_active(ros, nodes, tiny_bundle):
    ns = "/t_qos_follow"
    node = nodes(ns, model_path=str(tiny_bundle))
    ros.bring_up(node.get_fully_qualified_name())  # no camera yet: best effort takes either
    topic = f"{ns}/image"
    wait_until(lambda: _subscribed(ros, topic, ns) == ReliabilityPolicy.BEST_EFFORT,
               what="a best-effort subscription without a camera")
    probe = ros.probe(ns, outputs=("heatmap",))

    reliable = ros.publisher(topic, qos=RELIABLE_PUB)  # a reliable driver starts
    wait_until(lambda: _subscribed(ros, topic, ns) == ReliabilityPolicy.RELIABLE,
               what="the subscription to become reliable")
    ros.roundtrip(reliable, probe, _frame(ros, 1), keys=["heatmap"])

    ros.client.destroy_publisher(reliable)  # it is replaced by a best-effort driver
    best_effort = ros.publisher(topic, qos=qos_profile_sensor_data)
    wait_until(lambda: _subscribed(ros, topic, ns) == ReliabilityPolicy.BEST_EFFORT,
               what="the subscription to go back to best effort")
    ros.roundtrip(best_effort, probe, _frame(ros, 2), keys=["heatmap"])
    assert node.stats()["input_qos"] == "sensor_data (auto)"

    fqn = node.get_fully_qualified_name()
    from lifecycle_msgs.msg import Transition

    assert ros.change_state(fqn, Transition.TRANSITION_DEACTIVATE)
    assert node._qos_timer is None and node.stats()["input_qos"] == ""  # noqa: SLF001
    assert ros.change_state(fqn, Transition.TRANSITION_ACTIVATE)
    ros.roundtrip(best_effort, probe, _frame(ros, 3), keys=["heatmap"])


def test_each_camera_gets_its_own_publishers_qos(ros, nodes, tiny_bundle):
    ns = "/t_qos_cams"
    pubs = {"front": ros.publisher(f"{ns}/front/image", qos=RELIABLE_PUB),
            "rear": ros.publisher(f"{ns}/rear/image", qos=qos_profile_sensor_data)}
    node = nodes(ns, model_path=str(tiny_bundle), cameras=["front", "rear"])
    ros.bring_up(node.get_fully_qualified_name())
    wait_until(lambda: (_subscribed(ros, f"{ns}/front/image", ns),
                        _subscribed(ros, f"{ns}/rear/image", ns))
               == (ReliabilityPolicy.RELIABLE, ReliabilityPolicy.BEST_EFFORT),
               what="front reliable, rear best effort")
    cams = node.stats()["cameras"]
    assert (cams["front"]["input_qos"], cams["rear"]["input_qos"]) == (
        "reliable (auto)", "sensor_data (auto)")
    for i, (name, pub) in enumerate(pubs.items()):
        probe = ros.probe(f"{ns}/{name}", outputs=("heatmap",))
        ros.roundtrip(pub, probe, _frame(ros, 10 + i), keys=["heatmap"])


def test_a_fixed_qos_is_kept_whatever_the_camera_offers(ros, nodes, tiny_bundle):
    ns = "/t_qos_fixed"
    pub = ros.publisher(f"{ns}/image", qos=RELIABLE_PUB)
    node = nodes(ns, model_path=str(tiny_bundle), image_qos="sensor_data")
    ros.bring_up(node.get_fully_qualified_name())
    wait_until(lambda: _subscribed(ros, f"{ns}/image", ns) == ReliabilityPolicy.BEST_EFFORT,
               what="the best-effort subscription asked for")
    assert node._qos_timer is None  # noqa: SLF001  nothing follows the camera
    assert node.stats()["input_qos"] == "sensor_data"
    ros.roundtrip(pub, ros.probe(ns, outputs=("heatmap",)), _frame(ros), keys=["heatmap"])
