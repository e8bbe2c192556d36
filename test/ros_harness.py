"""The ROS test harness: every test that starts rclpy starts it through here.

* the environment (:func:`ros_env`, :func:`ros_environment`, :func:`subprocess_env`): a domain
  of this test session's own (``DOMAIN_ID``), discovery kept on this host (loopback), and the
  shipped Fast DDS profile (camera-sized best-effort frames need its shared-memory segment), as
  the launch file and the README set it up; concurrent sessions on the machine do not see each
  other;
* :func:`ros_context`: one rclpy Context on that domain, shut down on leaving;
* :class:`Ros`: two Contexts (two DDS participants) with an executor each, spinning in
  background threads: ``node_ctx`` for the nodes under test, a ``client`` node on the other, so
  every message and service call goes through DDS; nodes started and stopped, lifecycle and
  parameter services called bounded and retried (a reply can be lost during discovery on a
  loaded machine: :mod:`flowclas_ros.node.lifecycle_client`), publishers, :class:`Probe`
  subscriptions, frames with unique stamps and a publish-until-answered round trip;
* waiting on events, never blind sleeps: :func:`wait_until` polls a predicate on a short Event
  wait up to a deadline, :func:`wait_matched` waits for DDS discovery.

The pytest fixtures (``ros``, ``ros_env``, ``nodes``) are in conftest.py.
"""
from __future__ import annotations

import os
import threading
import time
import traceback
import warnings
from contextlib import contextmanager

import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy (ROS 2 Jazzy) is not installed")

from lifecycle_msgs.msg import Transition  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks  # noqa: E402
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from flowclas_ros.node.image_conversion import numpy_to_msg  # noqa: E402
from flowclas_ros.node.lifecycle_client import LifecycleClient, call  # noqa: E402
from flowclas_ros.paths import DDS_PROFILE_ENV, dds_profile  # noqa: E402

# A domain of our own per test session (domain ids must be < 233).
DOMAIN_ID = 100 + os.getpid() % 100
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
OUTPUTS = ("heatmap", "mask", "overlay")
TIMEOUT = 30.0


# the environment ----------------------------------------------------------------------------
def ros_env() -> dict[str, str]:
    """Return the variables every ROS test runs under.

    They are: loopback discovery, the shipped Fast DDS profile, this session's domain.
    """
    return {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", DDS_PROFILE_ENV: str(dds_profile()),
            "ROS_DOMAIN_ID": str(DOMAIN_ID)}


@contextmanager
def ros_environment():
    """Put :func:`ros_env` in ``os.environ`` (before rclpy starts: it reads them then).

    They are restored on leaving (code under test, such as the demo, may set them too).
    """
    env = ros_env()
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def subprocess_env(**extra: str) -> dict[str, str]:
    """Return the environment for a ROS process started by a test.

    It is ours, :func:`ros_env`, unbuffered output, and ``extra``.
    """
    return dict(os.environ, **ros_env(), PYTHONUNBUFFERED="1", **extra)


@contextmanager
def ros_context(domain_id: int = DOMAIN_ID):
    """One rclpy Context (one DDS participant) on ``domain_id``, shut down on leaving."""
    ctx = Context()
    rclpy.init(context=ctx, domain_id=domain_id)
    try:
        yield ctx
    finally:
        rclpy.try_shutdown(context=ctx)


# waiting ------------------------------------------------------------------------------------
def wait_until(predicate, timeout: float = TIMEOUT, what: str = "condition") -> None:
    """Poll ``predicate`` on a short Event wait until it holds; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        tick.wait(0.02)


def wait_matched(node, pub=None, outputs=()) -> None:
    """Wait until DDS discovery is done.

    Done means: the AnomalyNode ``node`` sees our subscriptions to ``outputs``, and ``pub``
    (ours) sees the node's image subscription.
    """
    wait_until(lambda: all(node._pubs[k].get_subscription_count() > 0 for k in outputs),
               what="the node to see the output subscriptions")
    if pub is not None:
        wait_until(lambda: pub.get_subscription_count() > 0, what="the image subscription")


class Probe:
    """Subscriptions on the test side collecting messages per topic (the last 50 each)."""

    def __init__(self, node: Node, topics: dict[str, str], qos=RELIABLE, msg_type=Image):
        self.node, self._cv = node, threading.Condition()
        self.msgs: dict[str, list] = {k: [] for k in topics}
        # no QoS event handlers: destroying them while the executor spins races in rclpy
        self.subs = {k: node.create_subscription(
            msg_type, t, self._cb(k), qos,
            event_callbacks=SubscriptionEventCallbacks(use_default_callbacks=False))
            for k, t in topics.items()}

    def _cb(self, key):
        def cb(msg):
            with self._cv:
                self.msgs[key].append(msg)
                del self.msgs[key][:-50]  # keep memory bounded
                self._cv.notify_all()
        return cb

    def find(self, key, stamp):
        with self._cv:
            for m in reversed(self.msgs[key]):
                if (m.header.stamp.sec, m.header.stamp.nanosec) == stamp:
                    return m
        return None

    def stamps(self, key) -> list[tuple[int, int]]:
        """(sec, nanosec) of the messages of ``key`` received so far."""
        with self._cv:
            return [(m.header.stamp.sec, m.header.stamp.nanosec) for m in self.msgs[key]]

    def close(self):
        for s in self.subs.values():
            self.node.destroy_subscription(s)


# the graph ----------------------------------------------------------------------------------
class Ros:
    """Two rclpy contexts on one domain: ``node_ctx`` for the nodes under test, ``client`` side.

    Each has a MultiThreadedExecutor spinning in a background thread.
    """

    def __init__(self, domain_id: int = DOMAIN_ID, node_threads: int = 4, client_threads: int = 2):
        self.domain_id = domain_id
        self.node_ctx, self.client_ctx = Context(), Context()
        rclpy.init(context=self.node_ctx, domain_id=domain_id)
        rclpy.init(context=self.client_ctx, domain_id=domain_id)
        self.node_exec = MultiThreadedExecutor(num_threads=node_threads, context=self.node_ctx)
        self.client_exec = MultiThreadedExecutor(num_threads=client_threads,
                                                 context=self.client_ctx)
        self.client = Node("flowclas_test_client", context=self.client_ctx)
        self.client_exec.add_node(self.client)
        self.spin_errors: list[str] = []  # what rclpy raised in a spin thread, survived
        self._threads = [threading.Thread(target=self._spin, args=(e,), daemon=True)
                         for e in (self.node_exec, self.client_exec)]
        for t in self._threads:
            t.start()
        self._clients: dict = {}
        self._stamp = 0

    def _spin(self, executor) -> None:
        """Spin until shutdown, surviving what a spin raises.

        rclpy's multi-threaded executor can raise from a spin (a handle destroyed while it
        builds its wait set, on a loaded machine); a spin thread that died would leave every
        later test of the module without service replies. The error is kept and reported when
        the harness closes (a warning).
        """
        while executor.context.ok():
            try:
                executor.spin()
                return
            except ExternalShutdownException:
                return
            except Exception:  # noqa: BLE001 - kept, reported at close, spinning goes on
                if not executor.context.ok():
                    return  # shut down while spinning
                if len(self.spin_errors) >= 20:
                    raise  # not a race: something breaks every spin
                self.spin_errors.append(traceback.format_exc())

    def close(self):
        for err in self.spin_errors:  # in pytest's warnings summary
            warnings.warn(f"ros_harness: a spin raised and went on:\n{err}", stacklevel=1)
        for e in (self.node_exec, self.client_exec):
            e.shutdown(timeout_sec=5)
        self.client.destroy_node()
        rclpy.shutdown(context=self.node_ctx)
        rclpy.shutdown(context=self.client_ctx)
        for t in self._threads:
            t.join(timeout=5)

    # nodes under test
    def add(self, node: Node) -> Node:
        """Spin ``node`` (made with ``context=ros.node_ctx``) on the node side's executor."""
        self.node_exec.add_node(node)
        return node

    def remove(self, node: Node) -> None:
        """Stop spinning ``node``, release what it holds (a backend), destroy it."""
        self.node_exec.remove_node(node)
        if hasattr(node, "release"):
            node.release()
        node.destroy_node()

    def start_node(self, namespace: str, *, backend_factory=None, **params):
        """Start a ``flowclas_anomaly`` node in ``namespace`` with ``params``, spinning."""
        from flowclas_ros.node.anomaly_node import AnomalyNode

        overrides = [Parameter(k, value=v) for k, v in params.items()]
        return self.add(AnomalyNode(namespace=namespace, context=self.node_ctx,
                                    parameter_overrides=overrides,
                                    backend_factory=backend_factory))

    stop_node = remove

    # services: every call bounded and retried
    def _client_for(self, srv_type, name):
        key = (srv_type, name)
        if key not in self._clients:
            cli = self.client.create_client(srv_type, name)
            assert cli.wait_for_service(timeout_sec=TIMEOUT), f"service {name} not available"
            self._clients[key] = cli
        return self._clients[key]

    def lifecycle(self, fqn: str) -> LifecycleClient:
        """Return the lifecycle client of the node ``fqn`` (its services seen first)."""
        if fqn not in self._clients:
            lc = LifecycleClient(self.client, fqn)
            assert lc.wait_for_services(TIMEOUT), f"lifecycle services of {fqn} not available"
            self._clients[fqn] = lc
        return self._clients[fqn]

    def change_state(self, fqn: str, transition_id: int, timeout: float = 120.0,
                     alive=None) -> bool:
        return self.lifecycle(fqn).change_state(transition_id, timeout, alive)

    def get_state(self, fqn: str, timeout: float = TIMEOUT) -> str:
        return self.lifecycle(fqn).get_state(timeout)

    def set_params(self, fqn: str, timeout: float = TIMEOUT, **params):
        req = SetParameters.Request()
        req.parameters = [Parameter(k, value=v).to_parameter_msg() for k, v in params.items()]
        return call(self._client_for(SetParameters, f"{fqn}/set_parameters"), req,
                    timeout).results

    def bring_up(self, fqn: str) -> None:
        """configure, activate: the node is active."""
        assert self.change_state(fqn, Transition.TRANSITION_CONFIGURE), "configure failed"
        assert self.change_state(fqn, Transition.TRANSITION_ACTIVATE), "activate failed"
        assert self.get_state(fqn) == "active"

    # topics
    def publisher(self, topic: str, msg_type=Image, qos=RELIABLE):
        return self.client.create_publisher(
            msg_type, topic, qos,
            event_callbacks=PublisherEventCallbacks(use_default_callbacks=False))

    def probe(self, namespace: str, outputs=OUTPUTS, qos=RELIABLE) -> Probe:
        """Return a Probe on the node's outputs in ``namespace``."""
        return Probe(self.client, {k: f"{namespace}/anomaly/{k}" for k in outputs}, qos)

    def next_stamp(self) -> tuple[int, int]:
        self._stamp += 1
        return 1000 + self._stamp, 123_000 + self._stamp

    def frame(self, array, encoding="rgb8", frame_id="camera_optical", **kw) -> Image:
        header = Header(frame_id=frame_id)
        header.stamp.sec, header.stamp.nanosec = self.next_stamp()
        return numpy_to_msg(array, encoding, header, **kw)

    def roundtrip(self, pub, probe: Probe, msg, keys=None, timeout=TIMEOUT) -> dict:
        """Publish ``msg`` until every output in ``keys`` arrived with its stamp; return them.

        ``msg`` is published again every second: the input may be best effort.
        """
        keys = tuple(keys or probe.msgs)
        stamp = (msg.header.stamp.sec, msg.header.stamp.nanosec)
        got: dict = {}
        deadline = time.monotonic() + timeout
        while True:
            pub.publish(msg)
            republish = time.monotonic() + 1.0
            with probe._cv:
                while True:
                    got = {k: probe.find(k, stamp) for k in keys}
                    if all(v is not None for v in got.values()):
                        return got
                    now = time.monotonic()
                    if now > deadline:
                        missing = [k for k, v in got.items() if v is None]
                        raise AssertionError(f"no {missing} output for stamp {stamp}")
                    if now > republish:
                        break
                    probe._cv.wait(min(republish, deadline) - now)
