"""``flowclas_anomaly``: the rclpy lifecycle node that publishes FlowCLAS anomaly maps.

A thin ROS shell around :func:`flowclas_ros.runtime.create_backend`; no model logic here.

Lifecycle::

    unconfigured --configure--> inactive --activate--> active
         ^  (load + validate the bundle, create the backend, one warm-up inference,
         |   create the lifecycle publishers and the inference worker thread)
         +--cleanup-- inactive <--deactivate-- active
    shutdown from any primary state -> finalized (everything released; the ``anomaly_node``
    command, :mod:`flowclas_ros.tools.anomaly_node`, then exits)

A failed configure (missing bundle, bad manifest, backend unavailable, warm-up error) returns
FAILURE with one error line saying what to fix; the node stays unconfigured and a later configure,
after the parameter is fixed, can succeed.

Data path (one frame per camera in flight; :mod:`.cameras`)::

    image (sub, executor thread): validate sizes O(1) -> single-slot mailbox (a newer frame
        replaces the waiting one: never a queue); or image/compressed (image_transport:
        compressed): the format field only
    worker thread: mailbox -> numpy RGB (jpeg/png decoded here, flowclas_ros.image_codec) ->
        backend.infer(only the outputs someone subscribes to) -> anomaly/heatmap (32FC1),
        anomaly/mask (mono8), anomaly/overlay (bgr8), each with the input header unchanged

With ``cameras: [front, left, ...]`` (structural) one node serves them all through one backend
(created with ``max_batch`` = the number of cameras): ``<c>/image`` in, ``<c>/anomaly/...`` out,
a mailbox slot per camera, every camera's waiting frame inferred as one batch
(:meth:`Backend.infer_batch`), per-camera overrides ``camera_overrides.<c>.*`` and one
/diagnostics status per camera.

Inference runs on the worker thread (:mod:`.mailbox`), so the lifecycle and parameter services
keep answering during a slow frame. The parameters are one table in :mod:`.parameters`, the
/diagnostics status is built in :mod:`.diagnostics`, output messages in
:mod:`.image_conversion`, rclpy's quirks handled in :mod:`.rclpy_workarounds`, the cameras and
the data path in :mod:`.cameras`; this file is the lifecycle. Topics are relative (``image``,
``anomaly/...``): they follow the node's namespace and can be remapped. ``/diagnostics`` gets a
DiagnosticArray every ``diagnostics_period`` seconds in every state.
"""
from __future__ import annotations

import math
import threading
from contextlib import contextmanager
from typing import Any, Callable

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.event_handler import PublisherEventCallbacks
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from ..memory import freeze_long_lived, keep_frame_buffers, thaw
from ..paths import package_file
from . import input_qos, parameters
from .backend_loading import ConfigureError, load_backend
from .cameras import OUTPUTS, Camera, CameraPath, Settings, camera_parameters, unused_node_depth
from .diagnostics import camera_status, node_status
from .rclpy_workarounds import (
    answer_queries_during_transitions,
    guard_change_state_service,
    no_event_handlers,
)
from .robot_outputs import RobotOutputs
from .stats import Meters

NODE_NAME = "flowclas_anomaly"
DEMO_BUNDLE = "flowclas_lite2_hires"  # issue 18; flowclas_lite2_camvid is the previous one

OUTPUT_QOS = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE,
                        history=HistoryPolicy.KEEP_LAST)


def default_model_path() -> str:
    """Return the demo bundle: installed share/flowclas_ros/models/ first, else repo models/.

    Returns the repo path even where it does not exist (configure then says what to fix).
    """
    return str(package_file("models", DEMO_BUNDLE))


def _default_backend_factory(bundle, backend: str, device: str, precision: str, **options):
    from flowclas_ros.runtime.registry import create_backend

    return create_backend(bundle, backend=backend, device=device, precision=precision,
                          **options)


def _finite(value) -> float | None:
    """Return a threshold parameter as a float, or None for NaN (the fallback's)."""
    v = float(value)
    return None if math.isnan(v) else v


class AnomalyNode(LifecycleNode):
    """The FlowCLAS lifecycle node (see the module docstring).

    ``backend_factory(bundle, backend, device, precision, **options) -> Backend`` (``bundle``:
    the loaded :class:`~flowclas_ros.bundle.reader.Bundle`, which create_backend also takes;
    options: cpu_threads, cpu_spinning, torch_compile, cuda_graphs, and max_batch with
    ``cameras``) replaces :func:`flowclas_ros.runtime.create_backend` (tests wrap it); other
    kwargs go to ``Node`` (``namespace``, ``context``, ``parameter_overrides``, ...).
    """

    def __init__(self, node_name: str = NODE_NAME, *,
                 backend_factory: Callable[..., Any] | None = None, **kwargs):
        super().__init__(node_name, **kwargs)
        memory = keep_frame_buffers()  # process-wide, before the first frame's buffers
        self._backend_factory = backend_factory or _default_backend_factory
        guard_change_state_service(self)
        answer_queries_during_transitions(self)
        self._robot = RobotOutputs(self)  # the single camera's detections, points, snapshots
        self.meters = Meters()  # every frame of the node (with cameras: all of them summed)
        self.counters = self.meters.counters
        self.cameras: list[Camera] = []  # made at configure
        self._declare_parameters()
        self.add_on_set_parameters_callback(self._validate_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)

        self.state_label = "unconfigured"
        self.last_error = ""
        self.finalized = threading.Event()

        self._backend = None
        self._bundle = None
        self._backend_lock = threading.Lock()  # held by infer and close: never close mid-frame
        self._path: CameraPath | None = None
        self._pubs: dict[str, Any] = {}  # the single camera's outputs
        self._qos_timer = None  # image_qos auto, while active
        self._diag_group = MutuallyExclusiveCallbackGroup()
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        period = float(self.get_parameter("diagnostics_period").value)
        self._diag_timer = self.create_timer(period, self._publish_diagnostics,
                                             callback_group=self._diag_group)
        self._diag_previous: dict[str, Any] | None = None  # the counters at the last status
        self.get_logger().info(
            f"{self.get_fully_qualified_name()} created (unconfigured); configure it to load "
            f"{self.get_parameter('model_path').value or default_model_path()}; frame "
            f"buffers: {memory}")

    @property
    def _worker(self) -> CameraPath | None:
        return self._path

    @property
    def _sub(self):
        """The single camera's image subscription (None when not active)."""
        return self.cameras[0].sub if self.cameras else None

    # parameters --------------------------------------------------------------------------------
    def _declare_parameters(self) -> None:
        self._params = parameters.table()
        parameters.declare(self, self._params)
        self._declare_cameras()
        self._refresh_live()

    def _declare_cameras(self) -> tuple[list[str], str | None]:
        """Declare the overrides of the cameras named now; return the names, or the problem."""
        value = self.get_parameter("cameras").value
        spec = next(p for p in self._params if p.name == "cameras")
        reason = spec.problem(value)
        if reason:
            return [], reason
        names = parameters.camera_names(value)
        rows = parameters.camera_table(names)
        parameters.declare(self, rows)
        # a camera no longer named loses its overrides (a params file's return with its name)
        wanted = {p.name for p in rows}
        stale = {p.name for p in self._params
                 if p.name.startswith(f"{parameters.OVERRIDES}.") and p.name not in wanted}
        for name in stale:
            self.undeclare_parameter(name)
        known = {p.name for p in self._params}
        self._params = tuple(p for p in self._params if p.name not in stale) + tuple(
            p for p in rows if p.name not in known)
        return names, None

    def _refresh_live(self) -> None:
        """Cache the live parameters (read by the worker each frame without a lookup)."""
        g = lambda n: self.get_parameter(n).value  # noqa: E731
        self._threshold = _finite(g("threshold"))
        self._overlay_alpha = float(g("overlay_alpha"))
        self._colormap = str(g("colormap"))
        self._want = {"heatmap": bool(g("publish_heatmap")), "mask": bool(g("publish_mask")),
                      "overlay": bool(g("publish_overlay"))}
        self._max_pixels = int(g("max_image_pixels"))
        self.settings = Settings(self._threshold, self._overlay_alpha, self._colormap,
                                 dict(self._want), self._max_pixels)
        self._robot.refresh(g)
        for cam in self.cameras:
            if cam.name:
                cam.threshold = _finite(g(f"{parameters.OVERRIDES}.{cam.name}.threshold"))
                cam.robot.refresh(g)

    def _validate_parameters(self, params):
        """Reject invalid values, and structural changes while a backend is loaded."""
        current = {n: self.get_parameter(n).value for pair in parameters.PAIRS for n in pair[:2]}
        return parameters.check_changes(self._params, params, configured=self._backend is not None,
                                        current=current,
                                        value_now=lambda n: self.get_parameter(n).value)

    def _apply_parameters(self, params) -> None:
        if any(p.name == "cameras" for p in params):
            # their overrides can be set now (ros2 param set), before the configure reading them
            self._declare_cameras()
        self._refresh_live()

    # lifecycle ---------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        g = lambda n: self.get_parameter(n).value  # noqa: E731
        names, reason = self._declare_cameras()
        if reason:
            return self._fail(f"{reason}; set cameras (ros2 param set "
                              f"{self.get_fully_qualified_name()} cameras \"[front, left]\"), "
                              f"then configure again")
        path = str(g("model_path")) or default_model_path()
        options = {"cpu_threads": int(g("cpu_threads")),
                   "cpu_spinning": bool(g("cpu_spinning")),
                   "torch_compile": bool(g("torch_compile")),
                   "cuda_graphs": bool(g("cuda_graphs"))}
        if names:  # one backend batches every camera's frame (TensorRT: its 1..N profile)
            options["max_batch"] = len(names)
        set_path = f"ros2 param set {self.get_fully_qualified_name()} model_path /path/to/bundle"
        try:
            loaded = load_backend(path, str(g("backend")), str(g("device")), str(g("precision")),
                                  options, self._backend_factory, set_path,
                                  lambda text: setattr(self, "state_label", text),
                                  self._close_backend)
        except ConfigureError as exc:
            return self._fail(str(exc), tb=exc.tb)
        be, bundle = loaded.backend, loaded.bundle
        with self._backend_lock:
            self._backend, self._bundle = be, bundle
        self.cameras = ([Camera(n, RobotOutputs(self, f"{n}/"), Meters(), total=self.meters)
                         for n in names] or [Camera("", self._robot, self.meters)])
        self._refresh_live()  # the cameras' thresholds and robot settings
        for cam in self.cameras:
            topic = next(  # calibrated on this camera's own recorded topic, if it was
                (t for t in (self.resolve_topic_name(cam.prefix + name)
                             for name in ("image", "image/compressed"))
                 if bundle.topic_calibration(t) is not None), None)
            cam.calibrated = None if topic is None else bundle.topic_threshold(topic)
            cam.pubs = {name: self._make_publisher(Image, f"{cam.prefix}anomaly/{name}")
                        for name in OUTPUTS}
            reason = cam.robot.configure(
                camera_parameters(g, cam.name, len(names)), bundle, self._make_publisher,
                None if topic is None else bundle.topic_exceedance_table(topic))
            if reason is not None:
                self._release()
                return self._fail(f"camera {cam.name}: {reason}" if cam.name else reason)
        self._pubs = {} if names else self.cameras[0].pubs
        unused = unused_node_depth(g, names)
        if unused:  # said once per configure: the node's depth_topic serves no named camera
            self.get_logger().warning(unused)
        self._path = CameraPath(self, self.cameras, self._borrow_backend, lambda: self.settings)
        frozen = freeze_long_lived()  # libraries and backend: never scanned again (memory.py)
        self.last_error = ""
        self.state_label = "inactive"
        thr = bundle.mask_threshold(self._node_threshold())
        per_camera = [f"{c.name or 'image'} {c.calibrated:.4g}" for c in self.cameras
                      if c.calibrated is not None]
        h, w = bundle.input_size
        why = getattr(be, "selection_reason", "")
        built = getattr(be, "built", None)  # TensorRT engines and torch-tensorrt programs
        engine = ("" if built is None else
                  f"; engine {'built' if built else 'loaded from the cache'} in "
                  f"{getattr(be, 'engine_seconds', loaded.backend_s):.1f} s")
        served = f"; cameras {', '.join(names)} batched" if names else ""
        self.get_logger().info(
            f"configured: bundle {path} (input {w}x{h}), backend {be.name} on {be.device} "
            f"({be.precision}){' [' + why + ']' if why else ''}, threshold {thr:.4g}"
            f"{' (calibrated per topic: ' + ', '.join(per_camera) + ')' if per_camera else ''}; "
            f"backend ready in {loaded.backend_s:.1f} s{engine}{served}; {frozen} objects "
            f"exempt from the garbage collector's scans")
        return TransitionCallbackReturn.SUCCESS

    def _make_publisher(self, msg_type, topic: str):
        return self.create_lifecycle_publisher(
            msg_type, topic, OUTPUT_QOS,
            event_callbacks=no_event_handlers(PublisherEventCallbacks))

    @contextmanager
    def _borrow_backend(self):
        """Yield the backend under its lock (None once released): never closed mid-batch."""
        with self._backend_lock:
            yield self._backend

    def _fail(self, message: str, tb: str | None = None) -> TransitionCallbackReturn:
        self.state_label = "unconfigured"
        self.last_error = message
        self.get_logger().error(f"configure failed: {message}")
        if tb:
            self.get_logger().debug(tb)
        return TransitionCallbackReturn.FAILURE

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        qos_mode = self.get_parameter("image_qos").value
        # image_transport's naming: raw on `image`, compressed on `image/compressed`
        compressed = self.get_parameter("image_transport").value == "compressed"
        topics = self._path.subscribe(compressed, qos_mode)
        if qos_mode == "auto":  # follow the camera's QoS (.input_qos)
            self._qos_timer = self.create_timer(input_qos.RECHECK_S, self._path.adapt_qos,
                                                callback_group=self._diag_group)
        for cam in self.cameras:
            cam.robot.activate()  # the depth and CameraInfo subscriptions, if any
        ret = super().on_activate(state)  # enables the lifecycle publishers
        self.state_label = "active"
        self.get_logger().info(f"active: subscribed to {', '.join(topics)}")
        return ret

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._drop_subscription()
        if self._path is not None:
            self._path.discard()  # every camera's waiting frame, counted for it
        for cam in self.cameras:
            cam.robot.deactivate()
        ret = super().on_deactivate(state)
        self.state_label = "inactive"
        return ret

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self.state_label = "unconfigured"
        self.get_logger().info("cleaned up: backend released")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self.state_label = "finalized"
        self.finalized.set()
        self.get_logger().info(f"shut down from {state.label}")
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f"error while in {state.label}: releasing everything")
        self._release()
        self.state_label = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def _drop_subscription(self) -> None:
        if self._qos_timer is not None:
            self.destroy_timer(self._qos_timer)
            self._qos_timer = None
        if self._path is not None:
            self._path.unsubscribe()

    def _release(self) -> None:
        """Undo configure and activate (idempotent): subscriptions, worker, backend, publishers."""
        self._drop_subscription()
        if self._path is not None:
            self._path.stop()  # the batch in flight finishes first
        self._path = None
        with self._backend_lock:
            be, self._backend, self._bundle = self._backend, None, None
        self._close_backend(be)
        thaw()  # the released backend is collected as usual
        cameras, self.cameras, self._pubs = self.cameras, [], {}
        for robot in {id(r): r for r in [self._robot] + [c.robot for c in cameras]}.values():
            robot.release(self.destroy_lifecycle_publisher)
        for cam in cameras:
            for pub in cam.pubs.values():
                self.destroy_lifecycle_publisher(pub)
            cam.pubs = {}

    def _close_backend(self, be) -> None:
        if be is None:
            return
        try:
            be.close()
        except Exception as exc:
            self.get_logger().warning(f"closing the backend raised {exc!r}")

    def release(self) -> None:
        """Free the backend and the worker (``main``'s exit path; safe in any state)."""
        self._release()

    # diagnostics -------------------------------------------------------------------------------
    def _node_threshold(self) -> float | None:
        """Return the threshold the node reports; None: the bundle's.

        Its own; with the single camera, that camera's (its topic's calibrated one counts).
        """
        if self.cameras and not self._named():
            return self.cameras[0].mask_threshold(self._threshold)
        return self._threshold

    def _named(self) -> list[Camera]:
        """Return the cameras of a node with ``cameras`` (none for the single camera)."""
        return [c for c in self.cameras if c.name]

    def stats(self) -> dict[str, Any]:
        """Counters, rates and latency percentiles (ms) as published on /diagnostics.

        With ``cameras``: summed over them, and each camera's own under ``"cameras"``.
        """
        path, named = self._path, self._named()
        refusals = self._robot.refusals()
        for cam in named:
            refusals = {k: v + cam.robot.refusals()[k] for k, v in refusals.items()}
        out = self.meters.snapshot() | refusals | {
            "input_qos": ", ".join(sorted({path.qos_label(c) for c in self.cameras}))
            if path is not None else "",
            "waiting": len(path.mailbox) if path is not None else 0,
            "mailbox_high_water": path.mailbox.high_water if path is not None else 0}
        if named and path is not None:
            out["cameras"] = {c.name: path.camera_stats(c) for c in named}
        return out

    def _publish_diagnostics(self) -> None:
        be, bundle = self._backend, self._bundle
        named = self._named()
        thr = self._node_threshold()
        thr = bundle.mask_threshold(thr) if bundle is not None else thr
        # the bundle loaded, not the parameter (whose "" means the demo bundle)
        model_path = str(bundle.path) if bundle is not None else str(
            self.get_parameter("model_path").value)
        stats = self.stats()
        fqn = self.get_fully_qualified_name()
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        arr.status = [node_status(fqn, self.state_label, self.last_error, be, thr, model_path,
                                  stats, self._diag_previous,
                                  None if named else self._robot.status())]
        self._diag_previous = stats
        for cam in named:
            now = stats.get("cameras", {}).get(cam.name)
            if now is None:  # released meanwhile
                continue
            cam_thr = cam.mask_threshold(self._threshold)
            arr.status.append(camera_status(
                fqn, cam.name, self.resolve_topic_name(f"{cam.prefix}image"), self.state_label,
                be.device if be is not None else "none",
                bundle.mask_threshold(cam_thr) if bundle is not None else cam_thr, now,
                cam.previous, cam.robot.status()))
            cam.previous = now
        self._diag_pub.publish(arr)
