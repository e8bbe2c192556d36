"""The node's /diagnostics status: one DiagnosticStatus built from its state and statistics.

Level: OK when active; WARN when frames were refused (malformed, oversize, backend errors;
malformed depth images or CameraInfo, a depth image or ignore mask of another aspect ratio)
*since the previous status* (one bad frame does not taint the node for good), when an output
is off for a reason to fix (points without a CameraInfo) or when the node is not active;
ERROR with the last configure error. The values are strings, as diagnostic_msgs wants them;
the frame counters are cumulative. The robot outputs' values (detections, points, regions,
snapshots) come from :meth:`.robot_outputs.RobotOutputs.status`. A node with ``cameras`` adds
one status per camera (:func:`camera_status`: its rates, latency, drops and robot outputs) to
the same DiagnosticArray.
"""
from __future__ import annotations

from typing import Any

from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

REFUSALS = ("malformed", "oversize", "errors", "depth_malformed", "camera_info_malformed",
            "depth_refused", "ignore_refused")


def node_status(name: str, state: str, last_error: str, backend, threshold: float | None,
                model_path: str, stats: dict[str, Any],
                previous: dict[str, Any] | None = None,
                outputs: tuple[dict[str, Any], list[str]] | None = None) -> DiagnosticStatus:
    """Build the node's DiagnosticStatus.

    ``backend``: the loaded runtime Backend or None; ``stats``: AnomalyNode.stats() now,
    ``previous``: at the previous status (None: the counters start from zero); ``outputs``:
    the robot outputs' (values, notes), notes making an active node WARN.
    """
    status = DiagnosticStatus()
    status.name = f"{name}: FlowCLAS anomaly segmentation"
    status.hardware_id = backend.device if backend is not None else "none"
    extra, notes = outputs if outputs is not None else ({}, [])
    _level(status, state, last_error, stats, previous, notes)
    values = {
        "state": state,
        "backend": backend.name if backend is not None else "",
        "device": backend.device if backend is not None else "",
        "precision": backend.precision if backend is not None else "",
        "model_path": model_path,
        "threshold": "" if threshold is None else f"{threshold:.6g}",
        "input_qos": stats.get("input_qos", ""),
        **_frame_values(stats),
        **extra,
    }
    status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
    return status


def camera_status(name: str, camera: str, topic: str, state: str, hardware_id: str,
                  threshold: float | None, stats: dict[str, Any],
                  previous: dict[str, Any] | None = None,
                  outputs: tuple[dict[str, Any], list[str]] | None = None) -> DiagnosticStatus:
    """Build one camera's DiagnosticStatus (node with ``cameras``): its rates, latency, drops.

    ``stats``: the camera's statistics now (CameraPath.camera_stats), ``previous`` at the
    previous status; the level as the node's (WARN for this camera's recent refusals).
    """
    status = DiagnosticStatus()
    status.name = f"{name}: camera {camera}"
    status.hardware_id = hardware_id
    extra, notes = outputs if outputs is not None else ({}, [])
    _level(status, state, "", stats, previous, notes)
    values = {"camera": camera, "topic": topic, "input_qos": stats.get("input_qos", ""),
              "threshold": "" if threshold is None else f"{threshold:.6g}",
              "waiting": stats.get("waiting", 0), **_frame_values(stats), **extra}
    status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
    return status


def _level(status: DiagnosticStatus, state: str, last_error: str, s: dict[str, Any],
           previous: dict[str, Any] | None, notes: list[str]) -> None:
    """Set the level and message: OK active, WARN for recent refusals or notes, else state."""
    recent = {k: s.get(k, 0) - (previous or {}).get(k, 0) for k in REFUSALS}
    if state == "active":
        status.level, status.message = DiagnosticStatus.OK, "active"
        parts = []
        if any(recent.values()):
            parts.append("refused since the last status: " + ", ".join(
                f"{n} {k}" for k, n in recent.items() if n))
        parts += notes
        if parts:
            status.level = DiagnosticStatus.WARN
            status.message = "active; " + "; ".join(parts)
    elif last_error:
        status.level, status.message = DiagnosticStatus.ERROR, last_error
    else:
        status.level, status.message = DiagnosticStatus.WARN, state


def _frame_values(s: dict[str, Any]) -> dict[str, Any]:
    """Return the rates, latencies and frame counters as diagnostics values."""
    return {
        "input_rate_hz": f"{s['input_rate_hz']:.2f}",
        "output_rate_hz": f"{s['output_rate_hz']:.2f}",
        "latency_p50_ms": f"{s['latency_p50_ms']:.2f}",
        "latency_p99_ms": f"{s['latency_p99_ms']:.2f}",
        "inference_p50_ms": f"{s['inference_p50_ms']:.2f}",
        "inference_p99_ms": f"{s['inference_p99_ms']:.2f}",
        "frames_received": s["received"],
        "frames_published": s["published"],
        "dropped_frames": s["dropped"],
        "dropped_replaced": s["replaced"],
        "dropped_malformed": s["malformed"],
        "dropped_oversize": s["oversize"],
        "skipped_no_subscribers": s["skipped"],
        "inference_errors": s["errors"],
    }


__all__ = ["camera_status", "node_status"]
