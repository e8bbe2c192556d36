"""The node's parameters as one table: name, type, default, when it may change, its check.

Changes:

* ``live``: takes effect on the next frame (``ros2 param set`` in any state);
* ``structural``: read at configure; refused while a backend is loaded (cleanup, set, configure);
* ``read_only``: set at start-up only (rclpy refuses later changes).

Types, read-only flags and numeric ranges go into each parameter's descriptor, where rclpy
enforces them; choices and the other checks are applied by :func:`check_changes`, which the
node registers as its on-set-parameters callback. Validation here imports no torch.
"""
from __future__ import annotations

import array
import math
import re
from dataclasses import dataclass
from typing import Any, Callable

from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    ParameterType,
    SetParametersResult,
)
from rclpy.parameter import Parameter

from ..options import BACKENDS, COLORMAPS, DEVICE_PATTERN, IMAGE_QOS, IMAGE_TRANSPORTS, PRECISIONS

LIVE, STRUCTURAL, READ_ONLY = "live", "structural", "read_only"
DEFAULT_MAX_PIXELS = 3840 * 2160  # 4K UHD; an 8K frame (33 Mpx) is refused by default
MAX_CAMERAS = 16
OVERRIDES = "camera_overrides"  # camera_overrides.<camera>.<parameter>
CAMERA_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")  # one ROS name token: `<camera>/image`


def _device(value: Any) -> str | None:
    if not DEVICE_PATTERN.match(str(value)):
        return f"device must be auto, cpu, cuda or cuda:N, got {value!r}"
    return None


def _threshold(value: Any) -> str | None:
    if isinstance(value, (int, float)) and math.isinf(value):
        return "threshold must be finite, or NaN for the bundle's threshold"
    return None


def camera_names(value: Any) -> list[str]:
    """Return the ``cameras`` parameter as a list (a params file's ``[]`` arrives unset)."""
    if value is None or (isinstance(value, (list, tuple, array.array)) and len(value) == 0):
        return []
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError(f"cameras must be a list of names, got {value!r}")


def _cameras(value: Any) -> str | None:
    try:
        names = camera_names(value)
    except ValueError as exc:
        return str(exc)
    bad = [n for n in names if not CAMERA_NAME.match(n)]
    if bad:
        return (f"camera names must be ROS name tokens (a letter, then letters, digits or _), "
                f"got {bad}")
    if len(set(names)) != len(names):
        return f"camera names must be unique, got {names}"
    if len(names) > MAX_CAMERAS:
        return f"at most {MAX_CAMERAS} cameras, got {len(names)}"
    return None


@dataclass(frozen=True)
class Param:
    """One row of the table. ``default`` may be a function (evaluated at declaration)."""

    name: str
    type: type
    default: Any
    change: str
    description: str
    choices: tuple[str, ...] = ()
    check: Callable[[Any], str | None] | None = None
    float_range: tuple[float, float] | None = None
    int_range: tuple[int, int] | None = None

    def default_value(self) -> Any:
        return self.default() if callable(self.default) else self.default

    def descriptor(self) -> ParameterDescriptor:
        d = ParameterDescriptor(description=self.description,
                                read_only=self.change == READ_ONLY,
                                additional_constraints=("one of " + ", ".join(self.choices)
                                                        if self.choices else ""))
        if self.type in (float, list):
            # `ros2 param set ... threshold -5` sends an integer: accept it (checked in
            # problem()); a params file's empty list arrives unset or as a byte array
            d.dynamic_typing = True
        if self.float_range is not None:
            lo, hi = self.float_range
            d.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi),
                                                         step=0.0)]
        if self.int_range is not None:
            lo, hi = self.int_range
            d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=0)]
        return d

    def problem(self, value: Any, type_: int | None = None) -> str | None:
        """Why ``value`` is not acceptable (type of a float, choices, range, check), or None.

        ``type_``: the rcl_interfaces ParameterType of a new value (float parameters accept
        integers and doubles, nothing else).
        """
        if self.type is float and type_ is not None and type_ not in (
                ParameterType.PARAMETER_DOUBLE, ParameterType.PARAMETER_INTEGER):
            return f"{self.name} must be a number, got {value!r}"
        if self.choices and value not in self.choices:
            return f"{self.name} must be one of {self.choices}, got {value!r}"
        if self.float_range is not None and isinstance(value, (int, float)):
            lo, hi = self.float_range
            if not lo <= value <= hi:
                return f"{self.name} must be in [{lo:g}, {hi:g}], got {value}"
        return self.check(value) if self.check is not None else None


def table() -> tuple[Param, ...]:
    """Return the node's parameters."""
    return (
        Param("model_path", str, "", STRUCTURAL,
              "Bundle folder written by `export` (manifest.json + weights + ONNX). Empty = the "
              "demo bundle (installed share/flowclas_ros/models/, else the source tree's). "
              "Structural: change it while unconfigured."),
        Param("backend", str, "auto", STRUCTURAL,
              "Inference backend; auto picks the fastest available. Structural.",
              choices=BACKENDS),
        Param("device", str, "auto", STRUCTURAL, "auto, cpu, cuda or cuda:N. Structural.",
              check=_device),
        Param("precision", str, "fp32", STRUCTURAL,
              "Compute precision (fp16/bf16 need a backend and device that support them). "
              "Structural.", choices=PRECISIONS),
        Param("torch_compile", bool, False, STRUCTURAL,
              "torch backend: compile the model with torch.compile at configure (slower to "
              "start, faster per frame on a GPU). Structural."),
        Param("cuda_graphs", bool, False, STRUCTURAL,
              "torch backend on a GPU: capture the model in a CUDA graph at configure and replay "
              "it per frame (no per-kernel launch cost). Structural."),
        Param("cpu_threads", int, 0, STRUCTURAL,
              "Threads of CPU inference (ONNX Runtime's intra-op pool, torch's threads); 0 = the "
              "library's default (one per core). On a robot whose CPUs are shared, 1 or 2 keeps "
              "latency steady. Structural.", int_range=(0, 256)),
        Param("cpu_spinning", bool, False, STRUCTURAL,
              "Let ONNX Runtime's idle threads spin-wait between frames: a few percent faster "
              "on an idle machine, but it burns the cores other processes need (a robot's "
              "CPUs are shared), so off by default. Structural."),
        Param("threshold", float, float("nan"), LIVE,
              "Mask threshold on the raw score (mask = 255 where score >= threshold). NaN = the "
              "bundle's calibrated threshold. Raw scores can be negative, so any finite value "
              "is a real threshold. Changes live.", check=_threshold),
        Param("overlay_alpha", float, 0.5, LIVE,
              "Weight of the colour map in the overlay (0 = camera image only). Changes live.",
              float_range=(0.0, 1.0)),
        Param("colormap", str, "turbo", LIVE, "Colour map of the overlay. Changes live.",
              choices=COLORMAPS),
        Param("image_qos", str, "auto", READ_ONLY,
              "QoS of the image subscription: auto (reliable when every publisher of the "
              "topic offers reliable, else best effort; followed while active), sensor_data "
              "(best effort, keep last 5) or reliable (keep last 2). Read-only: set it at "
              "start-up.", choices=IMAGE_QOS),
        Param("image_transport", str, "raw", READ_ONLY,
              "raw: sensor_msgs/Image on `image`; compressed: sensor_msgs/CompressedImage (jpeg "
              "or png) on `image/compressed`, decoded on the inference thread. Read-only.",
              choices=IMAGE_TRANSPORTS),
        Param("publish_heatmap", bool, True, LIVE,
              "Publish anomaly/heatmap (32FC1 raw score). Computed only with a subscriber."),
        Param("publish_mask", bool, True, LIVE,
              "Publish anomaly/mask (mono8 0/255). Computed only with a subscriber."),
        Param("publish_overlay", bool, True, LIVE,
              "Publish anomaly/overlay (bgr8 colour map on the image). Computed only with a "
              "subscriber."),
        Param("max_image_pixels", int, DEFAULT_MAX_PIXELS, LIVE,
              "Frames with more pixels (width * height) are dropped with a warning before "
              "conversion and inference; DDS has already delivered the message, so this bounds "
              "the node's own work and memory, not the transport's. Changes live.",
              int_range=(1, 2**31 - 1)),
        Param("diagnostics_period", float, 1.0, READ_ONLY,
              "Seconds between /diagnostics messages. Read-only.", float_range=(0.05, 60.0)),
        Param("cameras", list, [], STRUCTURAL,
              "Camera names served by this one node, batched through one backend: camera c "
              "reads c/image (c/image/compressed) and publishes c/anomaly/*. Empty = the one "
              "camera on image. Per-camera camera_overrides.<c>.threshold, .ignore_mask, "
              ".depth_topic, .depth_info_topic. Structural.", check=_cameras),
    ) + robot_table()


def camera_table(names) -> tuple[Param, ...]:
    """List the per-camera overrides of ``names`` (declared at start-up and when set)."""
    rows = []
    for n in names:
        key = f"{OVERRIDES}.{n}"
        rows += [
            Param(f"{key}.threshold", float, float("nan"), LIVE,
                  f"Mask threshold of camera {n}; NaN = the node's threshold. Changes live.",
                  check=_threshold),
            Param(f"{key}.ignore_mask", str, "", STRUCTURAL,
                  f"Ignore mask PNG of camera {n}; empty = the node's ignore_mask. Structural."),
            Param(f"{key}.depth_topic", str, "", STRUCTURAL,
                  f"Aligned depth image of camera {n} (its anomaly/points); empty = no points "
                  f"(the node's depth_topic serves only the single camera: set with cameras, "
                  f"it is ignored with a warning at configure). Structural."),
            Param(f"{key}.depth_info_topic", str, "", STRUCTURAL,
                  f"CameraInfo of camera {n}'s depth image; empty = camera_info beside its "
                  f"depth_topic. Structural."),
        ]
    return tuple(rows)


def robot_table() -> tuple[Param, ...]:
    """List the parameters of the outputs a robot acts on (node/robot_outputs.py)."""
    return (
        Param("publish_detections", bool, True, LIVE,
              "Publish anomaly/detections (vision_msgs/Detection2DArray: one box per "
              "persistent anomalous region). Computed only with a subscriber; off without "
              "vision_msgs. Changes live."),
        Param("min_region_pixels", int, 50, LIVE,
              "A connected anomalous region is reported only with more than this many input "
              "pixels. Changes live.", int_range=(0, 2**31 - 1)),
        Param("persistence_n", int, 2, LIVE,
              "A region is reported (detections, points, snapshots) once seen in at least n of "
              "the last m processed frames (matched by box overlap); 1 of 1 = off. <= "
              "persistence_m. Changes live (the tracks restart).", int_range=(1, 60)),
        Param("persistence_m", int, 3, LIVE,
              "The m of persistence_n of m (frames), 1..60. Changes live (the tracks restart).",
              int_range=(1, 60)),
        Param("persistence_iou", float, 0.3, LIVE,
              "Box IoU that matches a region to the same region in the previous frames, "
              "(0, 1]. Changes live.", float_range=(0.01, 1.0)),
        Param("depth_topic", str, "", STRUCTURAL,
              "Aligned depth image (REP 118: 16UC1 mm or 32FC1 m, registered to the camera "
              "image) whose anomalous pixels are published as anomaly/points; empty = no "
              "points. Structural."),
        Param("depth_info_topic", str, "", STRUCTURAL,
              "CameraInfo of the depth image; empty = camera_info beside depth_topic "
              "(/cam/depth/image_raw -> /cam/depth/camera_info). Structural."),
        Param("depth_max_skew_s", float, 0.03, LIVE,
              "A camera frame is paired with the depth frame nearest in stamp within this many "
              "seconds (message_filters' ApproximateTime slop); none: no points for the frame. "
              "Changes live.", float_range=(0.0, 10.0)),
        Param("publish_points", bool, True, LIVE,
              "Publish anomaly/points (sensor_msgs/PointCloud2 x y z score in the depth "
              "optical frame) with depth_topic set. Computed only with a subscriber."),
        Param("max_points", int, 20000, LIVE,
              "At most this many points per cloud (evenly subsampled). Changes live.",
              int_range=(1, 10_000_000)),
        Param("depth_min_m", float, 0.1, LIVE,
              "Depths below this (metres) are skipped. Changes live.",
              float_range=(0.0, 1000.0)),
        Param("depth_max_m", float, 20.0, LIVE,
              "Depths beyond this (metres) are skipped. Changes live.",
              float_range=(0.0, 1000.0)),
        Param("ignore_mask", str, "", STRUCTURAL,
              "PNG of pixels never reported (non-zero = ignore: the robot's body, a hood); any "
              "size, resized nearest-neighbour to each frame. Not in the mask, detections or "
              "points; the heatmap stays raw. Empty = none. Structural."),
        Param("snapshot_dir", str, "", STRUCTURAL,
              "Folder for anomaly snapshots: one MCAP per event (camera frames, heatmaps, "
              "detections around a new persistent detection); with cameras, camera c's in "
              "snapshot_dir/c. Empty = off. Structural."),
        Param("snapshot_pre_s", float, 2.0, STRUCTURAL,
              "Seconds of frames kept before an event. Structural.", float_range=(0.0, 60.0)),
        Param("snapshot_post_s", float, 3.0, STRUCTURAL,
              "Seconds of frames written after an event. Structural.",
              float_range=(0.0, 600.0)),
        Param("snapshot_max_mb", float, 1000.0, STRUCTURAL,
              "The event files in snapshot_dir stay under this many MiB (oldest deleted "
              "first; with cameras, an equal share per camera's folder). Structural.",
              float_range=(0.1, 1e7)),
    )


PAIRS = (("persistence_n", "persistence_m", "persistence_n must be <= persistence_m (raise "
          "persistence_m first)"),
         ("depth_min_m", "depth_max_m", "depth_min_m must be < depth_max_m"))


def _pair_problem(values: dict) -> str | None:
    """Constraints between two parameters, on the values they would have."""
    for lo, hi, reason in PAIRS:
        a, b = values.get(lo), values.get(hi)
        if a is None or b is None:
            continue
        if (lo == "persistence_n" and a > b) or (lo == "depth_min_m" and a >= b):
            return f"{reason}; got {lo}={a}, {hi}={b}"
    return None


def declare(node, params: tuple[Param, ...]) -> None:
    """Declare every parameter on ``node``; start-up values of read-only ones are checked here.

    rclpy enforces read-only only after start-up, so a bad one could never be fixed.
    """
    for p in params:
        if not node.has_parameter(p.name):  # camera overrides: declared again for new names
            node.declare_parameter(p.name, p.default_value(), p.descriptor())
        if p.type is list and not len(node.get_parameter(p.name).value or ()):
            # a params file's [] arrives unset (rcl cannot type an empty list): an unset
            # parameter dumps as null, and loading null back deletes it
            node.set_parameters([Parameter(p.name, Parameter.Type.STRING_ARRAY, [])])
    for p in params:
        if p.change == READ_ONLY:
            reason = p.problem(node.get_parameter(p.name).value)
            if reason:
                raise ValueError(reason)


def check_changes(params: tuple[Param, ...], changes, configured: bool,
                  current: dict | None = None,
                  value_now: Callable[[str], Any] | None = None) -> SetParametersResult:
    """Act as the on-set-parameters callback: refuse invalid values and some structural changes.

    Structural changes are refused while ``configured`` (a backend is loaded); setting one to
    the value it has (``value_now(name)``) is no change, and succeeds: ``ros2 param load`` of
    the node's own dump. ``current``: the parameters' values now, for the constraints between
    two of them (:data:`PAIRS`).
    """
    by_name = {p.name: p for p in params}
    after = dict(current or {})
    for change in changes:
        spec = by_name.get(change.name)
        if spec is None:
            continue
        if int(getattr(change.type_, "value", change.type_)) == ParameterType.PARAMETER_NOT_SET:
            # unset = undeclared in rclpy (ros2 param delete; loading `name: null`)
            default = "[] (no cameras: the single image input)" if spec.type is list \
                else repr(spec.default_value())
            return SetParametersResult(successful=False, reason=(
                f"{spec.name} cannot be deleted or unset; set it to a value instead, e.g. "
                f"its default {default}"))
        if spec.change == STRUCTURAL and configured and not (
                value_now is not None and _same(value_now(spec.name), change.value)):
            reason = (f"{spec.name} is structural: deactivate and cleanup the node, set it, then "
                      f"configure again")
        else:
            reason = spec.problem(change.value, int(getattr(change.type_, "value", change.type_)))
        if reason:
            return SetParametersResult(successful=False, reason=reason)
        after[change.name] = change.value
    reason = _pair_problem(after) if current is not None else None
    if reason:
        return SetParametersResult(successful=False, reason=reason)
    return SetParametersResult(successful=True)


def _same(a, b) -> bool:
    """Whether two parameter values are equal (arrays element by element, NaN equal to NaN)."""
    if isinstance(a, (list, tuple, array.array)) and isinstance(b, (list, tuple, array.array)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


__all__ = ["DEFAULT_MAX_PIXELS", "LIVE", "MAX_CAMERAS", "OVERRIDES", "PAIRS", "READ_ONLY",
           "STRUCTURAL", "Param", "camera_names", "camera_table", "check_changes", "declare",
           "robot_table", "table"]
