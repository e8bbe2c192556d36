"""Known rclpy (Jazzy) quirks, worked around in one place (each names what it avoids).

* an invalid lifecycle transition request raises inside rclpy's change_state service instead
  of answering ``success: false``, which ends the executor's spin;
* get_state does not answer while a long configure (a TensorRT engine build) holds the
  default callback group;
* QoS event handlers destroyed while a multi-threaded executor builds its wait set raise
  InvalidHandle in the executor.
"""
from __future__ import annotations

import weakref

from rclpy.callback_groups import ReentrantCallbackGroup


def no_event_handlers(cls):
    """Return no QoS event handlers, for entities created and destroyed at transitions.

    In rclpy an event handler destroyed while a multi-threaded executor builds its wait set
    raises InvalidHandle in the executor (ros2/rclpy#1142, #1206, #1284) and stops the spin.
    """
    return cls(use_default_callbacks=False)


def guard_change_state_service(node) -> None:
    """Answer an invalid transition request (e.g. activate while unconfigured) with success=False.

    rclpy's own handler raises RCLError there, which would end the executor's spin (and with it
    the node) instead of answering the caller.
    """
    srv = getattr(node, "_service_change_state", None)
    if srv is None:
        return
    handler = srv.callback

    def change_state(request, response):
        try:
            return handler(request, response)
        except Exception as exc:
            node.get_logger().warning(
                f"transition {request.transition.id} {request.transition.label!r} refused in "
                f"state {node.state_label}: {exc}")
            response.success = False
            return response

    srv.callback = change_state


def answer_queries_during_transitions(node) -> None:
    """Move get_state and the other read-only lifecycle services to a reentrant group of their own.

    A configure that builds an engine for minutes runs in the default group, and get_state must
    still answer (with "configuring") meanwhile. With a multi-threaded executor (the
    ``anomaly_node`` command uses one) they run beside the transition.
    """
    group = ReentrantCallbackGroup()
    for attr in ("_service_get_state", "_service_get_available_states",
                 "_service_get_available_transitions", "_service_get_transition_graph"):
        srv = getattr(node, attr, None)
        if srv is None:
            continue
        srv.callback_group.entities.discard(weakref.ref(srv))
        srv.callback_group = group
        group.add_entity(srv)


__all__ = ["answer_queries_during_transitions", "guard_change_state_service",
           "no_event_handlers"]
