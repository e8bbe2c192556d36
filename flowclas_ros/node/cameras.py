"""The node's cameras and their data path: a subscription and outputs each, one batch for all.

A :class:`Camera` is one image stream. With ``cameras`` empty the node has one unnamed camera,
``image`` in and ``anomaly/{heatmap,mask,overlay}`` out (today's topics); with ``cameras:
[front, left]`` each camera ``c`` reads ``c/image`` (``c/image/compressed`` with
``image_transport: compressed``) and publishes ``c/anomaly/{heatmap,mask,overlay}`` and, where
they are on, ``c/anomaly/detections`` and ``c/anomaly/points``, every message with its own
input's header. Each camera has its own :class:`~.robot_outputs.RobotOutputs` (ignore mask,
persistence tracks, depth input, snapshots in ``snapshot_dir/<c>``), its own counters, rates and
latencies (:class:`~.stats.Meters`, reported per camera on /diagnostics) and may override the
threshold, ignore mask and depth topic (``camera_overrides.<c>.*``, :func:`camera_parameters`).

:class:`CameraPath` is the data path::

    c/image (executor thread; its QoS per ``image_qos``, :mod:`.input_qos`): validate sizes
        O(1) -> c's slot of the mailbox (a newer frame of c replaces c's waiting one); bad
        frames are dropped and counted for c alone
    worker thread: every waiting frame, one per camera -> RGB (jpeg/png decoded here) ->
        backend.infer (one frame) or backend.infer_batch (several: one forward run for the
        frames of one model input shape where the backend batches) -> each camera's outputs
        with its input header, as soon as its result is ready

One slot per camera is the fairness: a camera publishing 5x faster than the others has one
frame in each batch like them, and a camera that stopped has none (nothing stale is batched).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, ContextManager

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.event_handler import SubscriptionEventCallbacks
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
from . import input_qos
from .image_conversion import bgr_to_msg, heatmap_to_msg, mask_to_msg
from .mailbox import InferenceWorker
from .parameters import OVERRIDES
from .rclpy_workarounds import no_event_handlers
from .stats import Meters

OUTPUTS = ("heatmap", "mask", "overlay")
THROTTLE_S = 5.0


@dataclass(frozen=True)
class Settings:
    """The node's live parameters the worker reads (replaced as a whole on a change)."""

    threshold: float | None = None  # None: the bundle's
    overlay_alpha: float = 0.5
    colormap: str = "turbo"
    want: dict[str, bool] = field(default_factory=lambda: dict.fromkeys(OUTPUTS, True))
    max_pixels: int = 0


def camera_parameters(get: Callable[[str], Any], name: str,
                      cameras: int = 1) -> Callable[[str], Any]:
    """Return ``get(parameter)`` as camera ``name`` (one of ``cameras``) sees it.

    The unnamed single camera sees the node's parameters. A named camera: its own
    ``camera_overrides.<name>.depth_topic`` / ``depth_info_topic`` (the node's depth_topic is
    one camera's depth, never shared), its ``ignore_mask`` else the node's, and its snapshots
    in ``snapshot_dir/<name>`` under an equal share of ``snapshot_max_mb`` (the whole
    ``snapshot_dir`` stays under it).
    """
    if not name:
        return get
    key = f"{OVERRIDES}.{name}."

    def camera_get(param: str) -> Any:
        if param in ("depth_topic", "depth_info_topic"):
            return get(key + param)
        if param == "ignore_mask":
            return get(key + param) or get(param)
        if param == "snapshot_dir":
            folder = str(get(param))
            return str(Path(folder) / name) if folder else ""
        if param == "snapshot_max_mb":
            return float(get(param)) / max(int(cameras), 1)
        return get(param)

    return camera_get


def unused_node_depth(get: Callable[[str], Any], names: list[str]) -> str | None:
    """Say why the node's own ``depth_topic`` is not used with ``cameras`` (None: it is unset).

    A depth image is registered to one camera, so it is never shared: each named camera takes
    only its own ``camera_overrides.<c>.depth_topic``; those without one publish no points.
    """
    topic = str(get("depth_topic")) or str(get("depth_info_topic"))
    if not names or not topic:
        return None
    bare = [n for n in names if not str(get(f"{OVERRIDES}.{n}.depth_topic"))]
    which = "depth_topic" if str(get("depth_topic")) else "depth_info_topic"
    text = (f"{which} {topic!r} is ignored with cameras set: a depth image is registered to "
            f"one camera, so each camera reads only its own {OVERRIDES}.<c>.depth_topic")
    if not bare:
        return f"{text} (every camera has one); set {which} to '' to silence this"
    return (f"{text}; camera(s) {', '.join(bare)} publish no anomaly/points (set "
            f"{OVERRIDES}.{bare[0]}.depth_topic to its aligned depth image)")


class Camera:
    """One image stream: its topics, publishers, robot outputs, threshold and statistics.

    ``meters``: its own accounting; ``total`` (named cameras): the node's, counted as well.
    """

    def __init__(self, name: str, robot, meters: Meters, total: Meters | None = None):
        self.name, self.robot, self.meters, self.total = name, robot, meters, total
        self.prefix = f"{name}/" if name else ""
        self.threshold: float | None = None  # camera_overrides.<name>.threshold; None: node's
        self.calibrated: float | None = None  # the bundle's threshold for its input topic
        self.pubs: dict[str, Any] = {}
        self.sub = None
        self.input_qos: str | None = None  # the subscription's (.input_qos.PROFILES key)
        self.previous: dict[str, Any] | None = None  # its statistics at the last /diagnostics

    def mask_threshold(self, node_threshold: float | None) -> float | None:
        """Return the threshold for this camera's frames; None: the bundle's own.

        Its override first, then the node's ``threshold`` parameter, then the threshold the
        bundle was calibrated to on this camera's own input topic (``export --calibration-bag
        --topic T1 T2 ...``).
        """
        for value in (self.threshold, node_threshold, self.calibrated):
            if value is not None:
                return value
        return None

    def add(self, counter: str, n: int = 1) -> None:
        self.meters.counters.add(counter, n)
        if self.total is not None:
            self.total.counters.add(counter, n)

    def received(self, now: float) -> None:
        for m in (self.meters, self.total):
            if m is not None:
                m.in_rate.tick(now)
                m.counters.add("received")

    def done(self, now: float, latency_ms: float, inference_ms: float) -> None:
        for m in (self.meters, self.total):
            if m is not None:
                m.counters.add("published")
                m.out_rate.tick(now)
                m.latency.add(latency_ms)
                m.inference.add(inference_ms)


@dataclass
class Frame:
    camera: Camera
    msg: Image | CompressedImage
    layout: ImageLayout | None  # raw frames: validated sizes; compressed: None (decoded later)
    received: float  # time.monotonic() when the subscription callback got it


@dataclass
class _Job:
    frame: Frame
    rgb: Any
    want: dict[str, bool]
    plan: Any  # RobotOutputs.plan()


class CameraPath:
    """Subscriptions, one-slot-per-camera mailbox, one worker, batched inference, outputs.

    ``borrow()``: a context manager giving the backend under the node's backend lock (None once
    released); ``settings()``: the node's live :class:`Settings`.
    """

    def __init__(self, node, cameras: list[Camera], borrow: Callable[[], ContextManager],
                 settings: Callable[[], Settings]):
        self.node, self.cameras = node, list(cameras)
        self._borrow, self._settings = borrow, settings
        self.worker: InferenceWorker[Frame] = InferenceWorker(
            self._process, self._on_error, tuple(c.name for c in self.cameras))
        self.mailbox = self.worker.mailbox
        # (un)subscribing: activate and deactivate on the executor, adapt_qos on its timer
        self._subs_lock = threading.Lock()
        self._compressed, self._mode = False, "sensor_data"

    # lifecycle (executor thread) ---------------------------------------------------------------
    def subscribe(self, compressed: bool, mode: str) -> list[str]:
        """Subscribe every camera's input (image_transport's naming); return topic and QoS each.

        ``mode``: the ``image_qos`` parameter (:mod:`.input_qos`; ``auto``: what the topic's
        publishers offer now, kept up to date by :meth:`adapt_qos`).
        """
        with self._subs_lock:
            self._compressed, self._mode = compressed, mode
            for cam in self.cameras:
                topic = self.node.resolve_topic_name(cam.prefix + self._input_name())
                pubs = self.node.get_publishers_info_by_topic(topic)
                self._subscribe(cam, input_qos.choose(mode, pubs))
            return [f"{cam.sub.topic_name} ({input_qos.label(mode, cam.input_qos)})"
                    for cam in self.cameras]

    def adapt_qos(self) -> None:
        """``image_qos: auto``: subscribe anew each camera whose publishers now offer another QoS.

        Runs on a timer while active (every :data:`.input_qos.RECHECK_S` s); a frame sent while
        the new subscription matches may be lost, once.
        """
        with self._subs_lock:
            if self._mode != "auto":
                return
            for cam in self.cameras:
                if cam.sub is None:  # deactivated
                    continue
                topic = cam.sub.topic_name
                pubs = self.node.get_publishers_info_by_topic(topic)
                want = input_qos.choose("auto", pubs, cam.input_qos)
                if want == cam.input_qos:
                    continue
                self.node.destroy_subscription(cam.sub)
                self._subscribe(cam, want)
                offers = sorted({p.qos_profile.reliability.name.lower() for p in pubs})
                self.node.get_logger().info(
                    f"{topic}: subscribed {want} now (its publishers offer "
                    f"{' and '.join(offers)}; image_qos: auto)")

    def _input_name(self) -> str:
        return "image/compressed" if self._compressed else "image"

    def _subscribe(self, cam: Camera, qos: str) -> None:
        msg_type, cb = ((CompressedImage, self._on_compressed) if self._compressed
                        else (Image, self._on_image))
        # a group per camera: one camera's callback never waits for another's
        cam.sub = self.node.create_subscription(
            msg_type, cam.prefix + self._input_name(), partial(cb, cam), input_qos.PROFILES[qos],
            callback_group=MutuallyExclusiveCallbackGroup(),
            event_callbacks=no_event_handlers(SubscriptionEventCallbacks))
        cam.input_qos = qos

    def unsubscribe(self) -> None:
        with self._subs_lock:
            for cam in self.cameras:
                if cam.sub is not None:
                    self.node.destroy_subscription(cam.sub)
                    cam.sub = None

    def qos_label(self, cam: Camera) -> str:
        """Return ``cam``'s input QoS for /diagnostics ("" while not subscribed)."""
        return input_qos.label(self._mode, cam.input_qos) if cam.sub is not None else ""

    def discard(self) -> None:
        """Drop every waiting frame (deactivate), counted for its camera."""
        had = set(self.worker.discard())
        for cam in self.cameras:
            if cam.name in had:
                cam.add("discarded")

    def stop(self) -> None:
        self.worker.stop()  # the batch in flight finishes first

    def camera_stats(self, cam: Camera) -> dict[str, Any]:
        """One camera's statistics (AnomalyNode.stats()'s keys, for that camera)."""
        return cam.meters.snapshot() | cam.robot.refusals() | {
            "input_qos": self.qos_label(cam), "waiting": self.mailbox.waiting(cam.name),
            "mailbox_high_water": self.mailbox.high_water}

    # subscription callbacks (executor thread): O(1), never raise ---------------------------------
    def _on_image(self, cam: Camera, msg: Image) -> None:
        now = time.monotonic()
        cam.received(now)
        try:
            layout = validate_image(msg, self._settings().max_pixels)
        except Exception as exc:
            self.refuse(cam, exc)
            return
        if self.worker.submit(Frame(cam, msg, layout, now), cam.name):
            cam.add("replaced")

    def _on_compressed(self, cam: Camera, msg: CompressedImage) -> None:
        """Check the format field only (decoding waits for the worker), then the mailbox."""
        now = time.monotonic()
        cam.received(now)
        try:
            compressed_format(msg.format)
            if len(msg.data) == 0:
                raise ImageFormatError("compressed image has no data")
        except Exception as exc:
            self.refuse(cam, exc)
            return
        if self.worker.submit(Frame(cam, msg, None, now), cam.name):
            cam.add("replaced")

    def refuse(self, cam: Camera, exc: Exception) -> None:
        """Count (for ``cam``) and log (throttled) a frame that cannot be used; go on."""
        log, where = self.node.get_logger(), f" (camera {cam.name})" if cam.name else ""
        if isinstance(exc, ImageTooLarge):
            cam.add("oversize")
            log.warning(f"frame refused{where}: {exc} (raise max_image_pixels to accept it)",
                        throttle_duration_sec=THROTTLE_S)
        elif isinstance(exc, ImageFormatError):
            cam.add("malformed")
            log.warning(f"malformed image dropped{where}: {exc}",
                        throttle_duration_sec=THROTTLE_S)
        else:  # defensive: a message we cannot even read
            cam.add("malformed")
            log.warning(f"unreadable image dropped{where}: {exc!r}",
                        throttle_duration_sec=THROTTLE_S)

    # the worker thread -------------------------------------------------------------------------
    def _on_error(self, exc: Exception, cam: Camera | None = None) -> None:
        if cam is not None:
            cam.add("errors")
        where = f" (camera {cam.name})" if cam is not None and cam.name else ""
        self.node.get_logger().error(f"inference failed{where}: {exc!r}",
                                     throttle_duration_sec=THROTTLE_S)

    def _process(self, frames: list[Frame]) -> None:
        """Run every camera's waiting frame as one batch and publish each camera's outputs.

        Each camera's outputs go out as soon as its result is ready (a backend that runs the
        frames one at a time hands each over after its own run).
        """
        s = self._settings()
        jobs = []
        for frame in frames:
            try:
                job = self._prepare(frame, s)
            except Exception as exc:  # this camera's frame only
                self._on_error(exc, frame.camera)
                continue
            if job is not None:
                jobs.append(job)
        if not jobs:
            return
        done: set[int] = set()

        def publish(i: int, result) -> None:
            done.add(i)
            try:
                self._publish(jobs[i], result)
            except Exception as exc:  # one camera's outputs failed: the others still go out
                self._on_error(exc, jobs[i].frame.camera)

        with self._borrow() as be:
            if be is None:  # released while the frames waited
                return
            try:
                results = self._infer(be, jobs, s, publish)
            except Exception as exc:  # an error for each camera left without its result
                failed = [j for i, j in enumerate(jobs) if i not in done]
                for job in failed[1:]:
                    job.frame.camera.add("errors")
                self._on_error(exc, failed[0].frame.camera if failed else None)
                return
        for i, result in enumerate(results):
            if i not in done:
                publish(i, result)

    def _prepare(self, frame: Frame, s: Settings) -> _Job | None:
        """Decide what the frame's camera needs and convert it to RGB; None: nothing to do."""
        cam = frame.camera
        want = {k: s.want[k] and cam.pubs[k].get_subscription_count() > 0 for k in cam.pubs}
        plan = cam.robot.plan()  # detections / points / snapshots: they need the regions
        if not any(want.values()) and not plan.regions:
            cam.add("skipped")  # nobody listens: compute nothing
            return None
        if frame.layout is None:  # compressed: decoded here, off the executor
            try:
                rgb = compressed_to_rgb(frame.msg, s.max_pixels)
            except Exception as exc:  # truncated, corrupt, oversize: counted, dropped
                self.refuse(cam, exc)
                return None
        else:
            rgb = image_to_rgb(frame.msg, layout=frame.layout, copy=False)  # msg outlives the job
        return _Job(frame, rgb, want, plan)

    @staticmethod
    def _infer(be, jobs: list[_Job], s: Settings, on_result) -> list:
        thr = [j.frame.camera.mask_threshold(s.threshold) for j in jobs]
        heat = [j.want["heatmap"] or j.plan.regions for j in jobs]
        mask = [j.want["mask"] or j.plan.regions for j in jobs]
        over = [j.want["overlay"] for j in jobs]
        common = {"overlay_alpha": s.overlay_alpha, "colormap": s.colormap}
        if len(jobs) == 1 or not hasattr(be, "infer_batch"):
            return [be.infer(j.rgb, heatmap=h, mask=m, overlay=o, threshold=t, **common)
                    for j, h, m, o, t in zip(jobs, heat, mask, over, thr)]
        return be.infer_batch([j.rgb for j in jobs], heatmap=heat, mask=mask, overlay=over,
                              threshold=thr, on_result=on_result, **common)

    def _publish(self, job: _Job, result) -> None:
        """Publish one camera's outputs of one frame, each with the frame's header."""
        cam, msg, want, plan = job.frame.camera, job.frame.msg, job.want, job.plan
        pubs, robot, header = cam.pubs, cam.robot, msg.header
        published = False
        if want["heatmap"]:  # the raw score, ignored pixels included
            published |= _send(pubs["heatmap"], heatmap_to_msg(result.heatmap, header,
                                                               finite=True))  # the pipeline's
        mask = robot.mask_out_ignored(result.mask)
        if want["mask"] and mask is not None:
            published |= _send(pubs["mask"], mask_to_msg(mask, header))
        found = robot.find(mask, result.heatmap, plan) if mask is not None else None
        if want["overlay"] and result.overlay is not None:
            overlay = robot.draw(result.overlay, found)  # the reported regions' boxes and ids
            published |= _send(pubs["overlay"], bgr_to_msg(overlay, header))
        published |= robot.publish(msg, result.heatmap, found, plan)
        done = time.monotonic()
        if published:
            cam.done(done, (done - job.frame.received) * 1e3, float(result.inference_ms))
        else:
            cam.add("discarded")  # deactivated while in flight


def _send(pub, msg) -> bool:
    if not pub.is_activated:
        return False
    pub.publish(msg)
    return True


__all__ = ["OUTPUTS", "Camera", "CameraPath", "Frame", "Settings", "camera_parameters",
           "unused_node_depth"]
