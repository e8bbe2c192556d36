"""Driving a lifecycle node through its services, robust to replies lost in discovery.

A service reply can be lost while the two participants are still discovering each other: on a
loaded machine rmw logs "failed to send response (timeout): client will not receive response"
and a single ``call_async`` then waits forever. So every call here is bounded and retried:

* ``get_state`` is idempotent: a call whose reply does not come within ``attempt_s`` is sent
  again, until ``timeout_s``;
* ``change_state`` is not (a second configure would be refused): when its reply does not come,
  the node is asked for its state until no transition is running (a node may answer
  "configuring" meanwhile, or hold get_state behind the transition), and the transition counts
  as done when the node reached its goal, is resent when the node is still where it started,
  and fails with the node's state otherwise.

Call it from a thread other than the one spinning ``node`` (futures are completed by the
executor spinning it).
"""
from __future__ import annotations

import threading
import time
from typing import Callable

from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState

# where each transition ends (primary states); shutdown ends the node: "finalized"
GOAL = {
    Transition.TRANSITION_CONFIGURE: "inactive",
    Transition.TRANSITION_CLEANUP: "unconfigured",
    Transition.TRANSITION_ACTIVATE: "active",
    Transition.TRANSITION_DEACTIVATE: "inactive",
    Transition.TRANSITION_UNCONFIGURED_SHUTDOWN: "finalized",
    Transition.TRANSITION_INACTIVE_SHUTDOWN: "finalized",
    Transition.TRANSITION_ACTIVE_SHUTDOWN: "finalized",
}
START = {
    Transition.TRANSITION_CONFIGURE: "unconfigured",
    Transition.TRANSITION_CLEANUP: "inactive",
    Transition.TRANSITION_ACTIVATE: "inactive",
    Transition.TRANSITION_DEACTIVATE: "active",
    Transition.TRANSITION_UNCONFIGURED_SHUTDOWN: "unconfigured",
    Transition.TRANSITION_INACTIVE_SHUTDOWN: "inactive",
    Transition.TRANSITION_ACTIVE_SHUTDOWN: "active",
}


# transition states: a node answers get_state with one of these while a transition runs (this
# package's node does, from a reentrant group, during a long configure)
TRANSITIONAL = ("configuring", "cleaningup", "shuttingdown", "activating", "deactivating",
                "errorprocessing")


class NoReply(TimeoutError):
    """The service did not answer within the time allowed."""


def call(client, request, timeout_s: float, attempt_s: float = 5.0,
         alive: Callable[[], bool] | None = None):
    """Return ``client``'s response to ``request``, resending it every ``attempt_s``.

    Resending is for idempotent services only; it goes on until ``timeout_s``; NoReply after
    that, or as soon as ``alive()`` is False.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        if not client.wait_for_service(timeout_sec=max(min(attempt_s, deadline - time.monotonic()),
                                                       0.01)):
            if time.monotonic() >= deadline or (alive is not None and not alive()):
                raise NoReply(f"{client.srv_name} is not available")
            continue
        future = client.call_async(request)
        answered = threading.Event()
        future.add_done_callback(lambda _: answered.set())
        until = min(time.monotonic() + attempt_s, deadline)
        while not answered.wait(min(0.2, max(until - time.monotonic(), 0.0))):
            if time.monotonic() >= until or (alive is not None and not alive()):
                break
        if answered.is_set():
            return future.result()
        client.remove_pending_request(future)
        if time.monotonic() >= deadline or (alive is not None and not alive()):
            raise NoReply(f"no reply from {client.srv_name} within {timeout_s:.0f} s")


class LifecycleClient:
    """get_state / change_state of the lifecycle node ``target`` (its fully qualified name)."""

    def __init__(self, node, target: str, attempt_s: float = 5.0):
        self.target = target.rstrip("/")
        self.attempt_s = attempt_s
        self._get = node.create_client(GetState, f"{self.target}/get_state")
        self._change = node.create_client(ChangeState, f"{self.target}/change_state")

    def wait_for_services(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        return all(c.wait_for_service(timeout_sec=max(deadline - time.monotonic(), 0.01))
                   for c in (self._get, self._change))

    def get_state(self, timeout_s: float = 30.0, alive: Callable[[], bool] | None = None) -> str:
        res = call(self._get, GetState.Request(), timeout_s, self.attempt_s, alive)
        return res.current_state.label

    def change_state(self, transition_id: int, timeout_s: float = 120.0,
                     alive: Callable[[], bool] | None = None) -> bool:
        """Return True when the node made the transition; False when it refused or failed it."""
        goal, start = GOAL.get(transition_id), START.get(transition_id)
        deadline = time.monotonic() + timeout_s
        req = ChangeState.Request()
        req.transition.id = transition_id
        while True:
            left = deadline - time.monotonic()
            try:
                # one attempt of the full remaining time would wait forever on a lost reply
                return bool(call(self._change, req, max(min(self.attempt_s, left), 0.01),
                                 self.attempt_s, alive).success)
            except NoReply:
                if time.monotonic() >= deadline or (alive is not None and not alive()):
                    if goal == "finalized" and alive is not None and not alive():
                        return True  # shut down: the node process is gone
                    raise
            try:
                state = self._settled_state(deadline, alive)
            except NoReply:
                if goal == "finalized":
                    return True  # the node finalised and left before answering
                raise
            if state == goal:
                return True
            if state != start:
                return False  # neither done nor untouched: the node went elsewhere (error)
            # still where it started: the request itself was lost; send it again


    def bring_up(self, timeout_s: float = 120.0, see: str = "its log") -> None:
        """Wait for the node's services, configure it, activate it (each within ``timeout_s``).

        RuntimeError says which step failed and where to look (``see``: its log, say).
        """
        if not self.wait_for_services(timeout_s):
            raise RuntimeError(f"{self.target} did not come up (see {see})")
        for name, tid in (("configure", Transition.TRANSITION_CONFIGURE),
                          ("activate", Transition.TRANSITION_ACTIVATE)):
            if not self.change_state(tid, timeout_s):
                raise RuntimeError(f"{self.target}: {name} failed (see {see})")

    def _settled_state(self, deadline: float, alive: Callable[[], bool] | None) -> str:
        """Return the node's state once no transition is running; NoReply at the deadline.

        A slow configure is waited for, not mistaken for a failed one.
        """
        pause = threading.Event()
        while True:
            state = self.get_state(max(deadline - time.monotonic(), 0.01), alive)
            if state not in TRANSITIONAL:
                return state
            if time.monotonic() >= deadline or (alive is not None and not alive()):
                raise NoReply(f"{self.target} is still {state}")
            pause.wait(0.2)


__all__ = ["GOAL", "LifecycleClient", "NoReply", "START", "TRANSITIONAL", "call"]
