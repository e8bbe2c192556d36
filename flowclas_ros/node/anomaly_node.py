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

Data path (one frame in flight)::

    image (sub, executor thread): validate sizes O(1) -> single-slot mailbox (a newer frame
        replaces the waiting one: never a queue); or image/compressed (image_transport:
        compressed): the format field only
    worker thread: mailbox -> numpy RGB (jpeg/png decoded here, flowclas_ros.image_codec) ->
        backend.infer(only the outputs someone subscribes to) -> anomaly/heatmap (32FC1),
        anomaly/mask (mono8), anomaly/overlay (bgr8), each with the input header unchanged

Inference runs on the worker thread (:mod:`.mailbox`), so the lifecycle and parameter services
keep answering during a slow frame. The parameters are one table in :mod:`.parameters`, the
/diagnostics status is built in :mod:`.diagnostics`, output messages in
:mod:`.image_conversion`, rclpy's quirks handled in :mod:`.rclpy_workarounds`; this file is the
lifecycle and the data path. Topics are relative (``image``, ``anomaly/...``): they follow the
node's namespace and can be remapped. ``/diagnostics`` gets a DiagnosticArray every
``diagnostics_period`` seconds in every state.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image

from ..image_codec import (
    ImageFormatError,
    ImageLayout,
    ImageTooLarge,
    compressed_format,
    compressed_to_rgb,
    image_to_rgb,
    validate_image,
)
from ..paths import package_file
from . import parameters
from .backend_loading import ConfigureError, load_backend
from .diagnostics import node_status
from .image_conversion import bgr_to_msg, heatmap_to_msg, mask_to_msg
from .mailbox import InferenceWorker
from .rclpy_workarounds import (
    answer_queries_during_transitions,
    guard_change_state_service,
    no_event_handlers,
)
from .robot_outputs import RobotOutputs
from .stats import Counters, LatencyWindow, RateMeter

NODE_NAME = "flowclas_anomaly"
DEMO_BUNDLE = "flowclas_lite2_camvid"

OUTPUT_QOS = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE,
                        history=HistoryPolicy.KEEP_LAST)
RELIABLE_INPUT_QOS = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE,
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


@dataclass
class _Frame:
    msg: Image | CompressedImage
    layout: ImageLayout | None  # raw frames: validated sizes; compressed: None (decoded later)
    received: float  # time.monotonic() when the subscription callback got it


class AnomalyNode(LifecycleNode):
    """The FlowCLAS lifecycle node (see the module docstring).

    ``backend_factory(bundle, backend, device, precision, **options) -> Backend`` (``bundle``:
    the loaded :class:`~flowclas_ros.bundle.reader.Bundle`, which create_backend also takes;
    options: cpu_threads, cpu_spinning, torch_compile, cuda_graphs) replaces
    :func:`flowclas_ros.runtime.create_backend` (tests wrap it); other kwargs go to ``Node``
    (``namespace``, ``context``, ``parameter_overrides``, ...).
    """

    def __init__(self, node_name: str = NODE_NAME, *,
                 backend_factory: Callable[..., Any] | None = None, **kwargs):
        super().__init__(node_name, **kwargs)
        self._backend_factory = backend_factory or _default_backend_factory
        guard_change_state_service(self)
        answer_queries_during_transitions(self)
        self._robot = RobotOutputs(self)  # detections, points, persistence, snapshots
        self._declare_parameters()
        self.add_on_set_parameters_callback(self._validate_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)

        self.counters = Counters()
        self._in_rate, self._out_rate = RateMeter(), RateMeter()
        self._latency, self._inference = LatencyWindow(), LatencyWindow()
        self.state_label = "unconfigured"
        self.last_error = ""
        self.finalized = threading.Event()

        self._backend = None
        self._bundle = None
        self._backend_lock = threading.Lock()  # held by infer and close: never close mid-frame
        self._worker: InferenceWorker[_Frame] | None = None
        self._pubs: dict[str, Any] = {}
        self._sub = None
        self._sub_group = MutuallyExclusiveCallbackGroup()
        self._diag_group = MutuallyExclusiveCallbackGroup()
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        period = float(self.get_parameter("diagnostics_period").value)
        self._diag_timer = self.create_timer(period, self._publish_diagnostics,
                                             callback_group=self._diag_group)
        self._diag_previous: dict[str, Any] | None = None  # the counters at the last status
        self.get_logger().info(
            f"{self.get_fully_qualified_name()} created (unconfigured); configure it to load "
            f"{self.get_parameter('model_path').value or default_model_path()}")

    # parameters --------------------------------------------------------------------------------
    def _declare_parameters(self) -> None:
        self._params = parameters.table()
        parameters.declare(self, self._params)
        self._refresh_live()

    def _refresh_live(self) -> None:
        """Cache the live parameters (read by the worker each frame without a lookup)."""
        g = lambda n: self.get_parameter(n).value  # noqa: E731
        thr = float(g("threshold"))
        self._threshold: float | None = None if math.isnan(thr) else thr
        self._overlay_alpha = float(g("overlay_alpha"))
        self._colormap = str(g("colormap"))
        self._want = {"heatmap": bool(g("publish_heatmap")), "mask": bool(g("publish_mask")),
                      "overlay": bool(g("publish_overlay"))}
        self._max_pixels = int(g("max_image_pixels"))
        self._robot.refresh(g)

    def _validate_parameters(self, params):
        """Reject invalid values, and structural changes while a backend is loaded."""
        current = {n: self.get_parameter(n).value for pair in parameters.PAIRS for n in pair[:2]}
        return parameters.check_changes(self._params, params, configured=self._backend is not None,
                                        current=current)

    def _apply_parameters(self, params) -> None:
        self._refresh_live()

    # lifecycle ---------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        g = lambda n: self.get_parameter(n).value  # noqa: E731
        path = str(g("model_path")) or default_model_path()
        options = {"cpu_threads": int(g("cpu_threads")),
                   "cpu_spinning": bool(g("cpu_spinning")),
                   "torch_compile": bool(g("torch_compile")),
                   "cuda_graphs": bool(g("cuda_graphs"))}
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
        self._pubs = {name: self._make_publisher(Image, f"anomaly/{name}")
                      for name in ("heatmap", "mask", "overlay")}
        reason = self._robot.configure(g, bundle, self._make_publisher)
        if reason is not None:
            self._release()
            return self._fail(reason)
        self._worker = InferenceWorker(self._process, self._on_inference_error)
        self.last_error = ""
        self.state_label = "inactive"
        thr = bundle.mask_threshold(self._threshold)
        h, w = bundle.input_size
        why = getattr(be, "selection_reason", "")
        built = getattr(be, "built", None)  # TensorRT engines and torch-tensorrt programs
        engine = ("" if built is None else
                  f"; engine {'built' if built else 'loaded from the cache'} in "
                  f"{getattr(be, 'engine_seconds', loaded.backend_s):.1f} s")
        self.get_logger().info(
            f"configured: bundle {path} (input {w}x{h}), backend {be.name} on {be.device} "
            f"({be.precision}){' [' + why + ']' if why else ''}, threshold {thr:.4g}; "
            f"backend ready in {loaded.backend_s:.1f} s{engine}")
        return TransitionCallbackReturn.SUCCESS

    def _make_publisher(self, msg_type, topic: str):
        return self.create_lifecycle_publisher(
            msg_type, topic, OUTPUT_QOS,
            event_callbacks=no_event_handlers(PublisherEventCallbacks))

    def _fail(self, message: str, tb: str | None = None) -> TransitionCallbackReturn:
        self.state_label = "unconfigured"
        self.last_error = message
        self.get_logger().error(f"configure failed: {message}")
        if tb:
            self.get_logger().debug(tb)
        return TransitionCallbackReturn.FAILURE

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        qos_name = self.get_parameter("image_qos").value
        qos = qos_profile_sensor_data if qos_name == "sensor_data" else RELIABLE_INPUT_QOS
        # image_transport's naming: raw on `image`, compressed on `image/compressed`
        if self.get_parameter("image_transport").value == "compressed":
            msg_type, topic, callback = CompressedImage, "image/compressed", self._on_compressed
        else:
            msg_type, topic, callback = Image, "image", self._on_image
        self._sub = self.create_subscription(
            msg_type, topic, callback, qos, callback_group=self._sub_group,
            event_callbacks=no_event_handlers(SubscriptionEventCallbacks))
        self._robot.activate()  # the depth and CameraInfo subscriptions, if any
        ret = super().on_activate(state)  # enables the lifecycle publishers
        self.state_label = "active"
        self.get_logger().info(f"active: subscribed to {self._sub.topic_name} ({qos_name})")
        return ret

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._drop_subscription()
        if self._worker is not None and self._worker.discard():
            self.counters.add("discarded")
        self._robot.deactivate()
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
        if self._sub is not None:
            self.destroy_subscription(self._sub)
            self._sub = None

    def _release(self) -> None:
        """Undo configure and activate (idempotent): subscription, worker, backend, publishers."""
        self._drop_subscription()
        if self._worker is not None:
            self._worker.stop()  # the frame in flight finishes first
        self._worker = None
        with self._backend_lock:
            be, self._backend, self._bundle = self._backend, None, None
        self._close_backend(be)
        self._robot.release(self.destroy_lifecycle_publisher)
        for pub in self._pubs.values():
            self.destroy_lifecycle_publisher(pub)
        self._pubs = {}

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

    # data path ---------------------------------------------------------------------------------
    def _on_image(self, msg: Image) -> None:
        """Executor thread: O(1) validation, then the single-slot mailbox. Never raises."""
        now = time.monotonic()
        self._in_rate.tick(now)
        self.counters.add("received")
        try:
            layout = validate_image(msg, self._max_pixels)
        except Exception as exc:
            self._refuse(exc)
            return
        worker = self._worker
        if worker is not None and worker.submit(_Frame(msg, layout, now)):
            self.counters.add("replaced")

    def _on_compressed(self, msg: CompressedImage) -> None:
        """Check a compressed frame's format, then hand it to the single-slot mailbox.

        Executor thread: the format field only (decoding waits for the worker), then the
        single-slot mailbox. Never raises.
        """
        now = time.monotonic()
        self._in_rate.tick(now)
        self.counters.add("received")
        try:
            compressed_format(msg.format)
            if len(msg.data) == 0:
                raise ImageFormatError("compressed image has no data")
        except Exception as exc:
            self._refuse(exc)
            return
        worker = self._worker
        if worker is not None and worker.submit(_Frame(msg, None, now)):
            self.counters.add("replaced")

    def _refuse(self, exc: Exception) -> None:
        """Count and log (throttled) a frame that cannot be used; the node goes on."""
        if isinstance(exc, ImageTooLarge):
            self.counters.add("oversize")
            self.get_logger().warning(f"frame refused: {exc} (raise max_image_pixels to accept "
                                      f"it)", throttle_duration_sec=5.0)
        elif isinstance(exc, ImageFormatError):
            self.counters.add("malformed")
            self.get_logger().warning(f"malformed image dropped: {exc}",
                                      throttle_duration_sec=5.0)
        else:  # defensive: a message we cannot even read
            self.counters.add("malformed")
            self.get_logger().warning(f"unreadable image dropped: {exc!r}",
                                      throttle_duration_sec=5.0)

    def _on_inference_error(self, exc: Exception) -> None:
        self.counters.add("errors")
        self.get_logger().error(f"inference failed: {exc!r}", throttle_duration_sec=5.0)

    def _process(self, frame: _Frame) -> None:
        """Worker thread: one frame from the mailbox to the published outputs."""
        pubs, robot = self._pubs, self._robot
        want = {k: self._want[k] and pubs[k].get_subscription_count() > 0 for k in pubs}
        plan = robot.plan()  # detections / points / snapshots: they need the regions
        if not any(want.values()) and not plan.regions:
            self.counters.add("skipped")  # nobody listens: compute nothing
            return
        if frame.layout is None:  # compressed: decoded here, off the executor
            try:
                rgb = compressed_to_rgb(frame.msg, self._max_pixels)
            except Exception as exc:  # truncated, corrupt, oversize: counted, dropped
                self._refuse(exc)
                return
        else:
            rgb = image_to_rgb(frame.msg, layout=frame.layout)
        with self._backend_lock:
            be = self._backend
            if be is None:  # released while the frame waited
                return
            result = be.infer(rgb, heatmap=want["heatmap"] or plan.regions,
                              mask=want["mask"] or plan.regions, overlay=want["overlay"],
                              threshold=self._threshold, overlay_alpha=self._overlay_alpha,
                              colormap=self._colormap)
        header = frame.msg.header
        published = False
        if want["heatmap"]:  # the raw score, ignored pixels included
            published |= self._publish(pubs["heatmap"], heatmap_to_msg(result.heatmap, header))
        mask = robot.mask_out_ignored(result.mask)
        if want["mask"] and mask is not None:
            published |= self._publish(pubs["mask"], mask_to_msg(mask, header))
        found = robot.find(mask, result.heatmap, plan) if mask is not None else None
        if want["overlay"] and result.overlay is not None:
            overlay = robot.draw(result.overlay, found)  # the reported regions' boxes and ids
            published |= self._publish(pubs["overlay"], bgr_to_msg(overlay, header))
        published |= robot.publish(frame.msg, result.heatmap, found, plan)
        done = time.monotonic()
        if published:
            self.counters.add("published")
            self._out_rate.tick(done)
            self._latency.add((done - frame.received) * 1e3)
            self._inference.add(float(result.inference_ms))
        else:
            self.counters.add("discarded")  # deactivated while in flight

    @staticmethod
    def _publish(pub, msg) -> bool:
        if not pub.is_activated:
            return False
        pub.publish(msg)
        return True

    # diagnostics -------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counters, rates and latency percentiles (ms) as published on /diagnostics."""
        lat50, lat99 = self._latency.percentiles(50, 99)
        inf50, inf99 = self._inference.percentiles(50, 99)
        c = self.counters.snapshot()
        mailbox = self._worker.mailbox if self._worker is not None else None
        return c | self._robot.refusals() | {
            "dropped": c["replaced"] + c["malformed"] + c["oversize"],
            "waiting": len(mailbox) if mailbox is not None else 0,
            "mailbox_high_water": mailbox.high_water if mailbox is not None else 0,
            "input_rate_hz": self._in_rate.rate(),
            "output_rate_hz": self._out_rate.rate(),
            "latency_p50_ms": lat50, "latency_p99_ms": lat99,
            "inference_p50_ms": inf50, "inference_p99_ms": inf99,
        }

    def _publish_diagnostics(self) -> None:
        be, bundle = self._backend, self._bundle
        thr = bundle.mask_threshold(self._threshold) if bundle is not None else self._threshold
        # the bundle loaded, not the parameter (whose "" means the demo bundle)
        model_path = str(bundle.path) if bundle is not None else str(
            self.get_parameter("model_path").value)
        stats = self.stats()
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        arr.status = [node_status(self.get_fully_qualified_name(), self.state_label,
                                  self.last_error, be, thr, model_path, stats,
                                  self._diag_previous, self._robot.status())]
        self._diag_previous = stats
        self._diag_pub.publish(arr)
