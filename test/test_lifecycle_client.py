"""The lifecycle client's retries when a service reply is lost.

rmw loses one so during discovery on a loaded machine: "failed to send response (timeout)". A
real graph cannot lose a reply on demand, so the clients here are stand-ins that drop chosen
replies; everything else (futures, the retry and state logic) is the real code.
"""
import threading

import pytest

pytest.importorskip("rclpy", reason="rclpy (ROS 2 Jazzy) is not installed")

from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from rclpy.task import Future  # noqa: E402

from flowclas_ros.node.lifecycle_client import LifecycleClient, NoReply, call  # noqa: E402


class LossyNode:
    """A lifecycle node's two services; ``lose`` lists which replies (by call number) vanish."""

    def __init__(self, state="unconfigured", lose_change=(), lose_get=(), refuse=False):
        self.state, self.refuse = state, refuse
        self.lose = {"change_state": set(lose_change), "get_state": set(lose_get)}
        self.calls = {"change_state": 0, "get_state": 0}
        self.lock = threading.Lock()

    def create_client(self, srv_type, name):
        return _Client(self, "change_state" if srv_type is ChangeState else "get_state", name)

    def serve(self, kind, request):
        with self.lock:
            self.calls[kind] += 1
            n = self.calls[kind]
            if kind == "change_state":
                goal = {Transition.TRANSITION_CONFIGURE: "inactive",
                        Transition.TRANSITION_ACTIVATE: "active",
                        Transition.TRANSITION_UNCONFIGURED_SHUTDOWN: "finalized"}
                ok = not self.refuse and request.transition.id in goal
                if ok:
                    self.state = goal[request.transition.id]
                res = ChangeState.Response(success=ok)
            else:
                res = GetState.Response()
                res.current_state.label = self.state
            return None if n in self.lose[kind] else res


class _Client:
    def __init__(self, node, kind, name):
        self.node, self.kind, self.srv_name = node, kind, name
        self.dropped = 0

    def wait_for_service(self, timeout_sec=None):
        return True

    def call_async(self, request):
        fut = Future()
        res = self.node.serve(self.kind, request)
        if res is not None:
            fut.set_result(res)  # a lost reply: the future never completes
        return fut

    def remove_pending_request(self, future):
        self.dropped += 1


def test_lost_configure_reply_counts_as_done_when_the_node_got_there():
    node = LossyNode(lose_change={1})
    lc = LifecycleClient(node, "/ns/n", attempt_s=0.2)
    assert lc.change_state(Transition.TRANSITION_CONFIGURE, timeout_s=5)
    assert node.state == "inactive" and node.calls["change_state"] == 1  # not sent twice


def test_slow_configure_answered_configuring_is_waited_for():
    """Check that a configure longer than one attempt is waited for: done, not failed.

    Its reply is late, get_state says "configuring" (the node answers it during a long
    configure), then "inactive".
    """
    node = LossyNode(lose_change={1})
    inner, polls = node.serve, []

    def serve(kind, request):
        res = inner(kind, request)
        if kind == "get_state" and len(polls) < 3:
            polls.append(1)
            res.current_state.label = "configuring"
        return res
    node.serve = serve
    lc = LifecycleClient(node, "/ns/n", attempt_s=0.2)
    assert lc.change_state(Transition.TRANSITION_CONFIGURE, timeout_s=5) is True
    assert len(polls) == 3 and node.calls["change_state"] == 1


def test_lost_request_is_sent_again():
    node = LossyNode(state="inactive")
    node.serve = _lose_request_once(node)
    lc = LifecycleClient(node, "/ns/n", attempt_s=0.2)
    assert lc.change_state(Transition.TRANSITION_ACTIVATE, timeout_s=5) is True
    assert node.state == "active"


def _lose_request_once(node):
    """Make the first change_state request never reach the node (it stays where it was)."""
    inner, seen = node.serve, []

    def serve(kind, request):
        if kind == "change_state" and not seen:
            seen.append(1)
            return None
        return inner(kind, request)
    return serve


def test_refused_transition_is_false_and_a_lost_get_state_is_retried():
    node = LossyNode(refuse=True, lose_get={1, 2})
    lc = LifecycleClient(node, "/ns/n", attempt_s=0.2)
    assert lc.change_state(Transition.TRANSITION_CONFIGURE, timeout_s=5) is False
    assert lc.get_state(timeout_s=5) == "unconfigured" and node.calls["get_state"] == 3


def test_shutdown_whose_node_left_without_answering_is_done():
    node = LossyNode(lose_change={1}, lose_get=set(range(1, 100)))
    gone = threading.Event()
    lc = LifecycleClient(node, "/ns/n", attempt_s=0.2)
    gone.set()
    assert lc.change_state(Transition.TRANSITION_UNCONFIGURED_SHUTDOWN, timeout_s=5,
                           alive=lambda: not gone.is_set())


def test_no_reply_at_all_is_an_error_after_the_timeout():
    node = LossyNode(lose_get=set(range(1, 1000)))
    with pytest.raises(NoReply, match="no reply"):
        call(node.create_client(GetState, "/ns/n/get_state"), GetState.Request(), 0.5, 0.1)


def test_bring_up_configures_then_activates_or_says_which_step_failed():
    node = LossyNode(lose_change={1})  # the configure reply lost on the way: still brought up
    LifecycleClient(node, "/ns/n", attempt_s=0.2).bring_up(timeout_s=5)
    assert node.state == "active"
    with pytest.raises(RuntimeError, match=r"/ns/n: configure failed \(see node\.log\)"):
        LifecycleClient(LossyNode(refuse=True), "/ns/n").bring_up(timeout_s=5, see="node.log")
