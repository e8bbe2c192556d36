"""The outputs a robot acts on, per frame, after inference: regions, detections, points, snapshots.

:class:`RobotOutputs` is owned by the node (:mod:`.anomaly_node`) and follows its lifecycle
(``configure`` -> ``activate`` -> ``deactivate`` -> ``release``); it owns the ignore mask, the
persistence state, the depth input (:mod:`.depth_input`), the snapshot recorder and their
publishers. Per frame, on the worker thread, :mod:`.anomaly_node` calls::

    plan = robot.plan()                     # who listens: detections, points, snapshots
    backend.infer(heatmap, mask if plan.regions or someone wants them ...)
    mask = robot.mask_out_ignored(mask)     # ignored pixels never in the mask (heatmap: raw)
    found = robot.find(mask, heatmap, plan) # regions > min_region_pixels, n-of-m persistence
    overlay = robot.draw(overlay, found)    # each reported region's box and id
    robot.publish(msg, heatmap, found, plan)  # detections, points, snapshot ring / events

The library behind it is :mod:`flowclas_ros.outputs` (no ROS). Nothing here runs when nobody
listens: with no subscriber to ``anomaly/detections`` or ``anomaly/points`` and no
``snapshot_dir``, :meth:`RobotOutputs.plan` says so and the frame costs what it did before.

Region score (``hypothesis.score``): the fraction of the bundle's calibration pixels (normal
scenes) that score below the region's peak raw score (:func:`~flowclas_ros.outputs.regions.
exceedance`, the manifest's ``threshold.exceedance``; a camera calibrated on its own recorded
topic uses that topic's table, ``threshold.per_topic``). Bundles exported before it have no
table: the score then falls back to the display-normalised peak, ``clip((peak - lo) / (hi -
lo), 0, 1)`` over the bundle's ``score_range`` (logged at configure).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sensor_msgs.msg import PointCloud2

from ..outputs.ignore_mask import IgnoreMask, IgnoreMaskError
from ..outputs.persistence import Detection, Persistence
from ..outputs.regions import Regions, find_regions
from .depth_input import DepthInput
from .overlay_boxes import draw_regions
from .parameters import OVERRIDES
from .robot_messages import detections_msg, load_vision_msgs
from .stats import LatencyWindow, Tally

THROTTLE_S = 5.0
TALLY = ("frames", "regions_found", "regions_reported", "detections_published",
         "clouds_published", "points_published", "last_points", "depth_received",
         "depth_malformed", "camera_info_malformed", "depth_unpaired", "depth_refused",
         "points_no_info", "ignore_refused")
REFUSALS = ("depth_malformed", "camera_info_malformed", "depth_refused", "ignore_refused")


@dataclass(frozen=True)
class Plan:
    """What this frame needs: ``regions`` is true when any of the others is."""

    detections: bool = False
    points: bool = False
    snapshots: bool = False

    @property
    def regions(self) -> bool:
        return self.detections or self.points or self.snapshots


@dataclass
class Found:
    """One frame's regions and the detections reported from them, with their scores."""

    regions: Regions
    detections: list[Detection]
    scores: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Live:
    """The live parameters, replaced as a whole on a change (read once per frame)."""

    publish_detections: bool = True
    publish_points: bool = True
    min_region_pixels: int = 50
    persistence: tuple[int, int, float] = (2, 3, 0.3)
    depth_max_skew_s: float = 0.03
    max_points: int = 20000
    depth_min_m: float = 0.1
    depth_max_m: float = 20.0
    max_pixels: int = 0

    @classmethod
    def read(cls, get) -> "Live":
        """From ``get(name) -> value`` (the node's parameters)."""
        return cls(bool(get("publish_detections")), bool(get("publish_points")),
                   int(get("min_region_pixels")),
                   (int(get("persistence_n")), int(get("persistence_m")),
                    float(get("persistence_iou"))),
                   float(get("depth_max_skew_s")), int(get("max_points")),
                   float(get("depth_min_m")), float(get("depth_max_m")),
                   int(get("max_image_pixels")))


class RobotOutputs:
    """Detections, points, persistence, the ignore mask and snapshots (module docstring)."""

    _vision_logged = False  # "vision_msgs is not installed" goes to the log once per process

    def __init__(self, node, prefix: str = ""):
        self.node = node
        self.prefix = prefix  # a camera's "<name>/" before its topics (node/cameras.py)
        self.camera = prefix.rstrip("/")
        self.tally = Tally(*TALLY)
        self.timing = LatencyWindow()  # ms of the worker per frame: wall time
        self.cpu_timing = LatencyWindow()  # and the worker thread's CPU time (load-independent)
        self.live = Live()
        self._vm, self.vision_reason = None, ""
        self._det_pub = self._pts_pub = None
        self.depth: DepthInput | None = None
        self.ignore: IgnoreMask | None = None
        self._keep: dict[tuple[int, int], np.ndarray] = {}
        self.recorder = None
        self._persistence = Persistence(2, 3, 0.3)
        self._continuous = False  # the previous frame had its regions found
        self._spent = (0.0, 0.0)  # ms of find() in this frame: wall, thread CPU
        self._table = None
        self._score_range = (0.0, 1.0)

    # parameters and lifecycle (executor thread) ------------------------------------------------
    def refresh(self, get) -> None:
        """Read the live parameters (``get(name) -> value``)."""
        self.live = Live.read(get)
        if self.depth is not None:
            self.depth.set_max_skew(self.live.depth_max_skew_s)
            self.depth.max_pixels = self.live.max_pixels

    def configure(self, get, bundle, make_publisher, exceedance=None) -> str | None:
        """Read the structural parameters and make what they ask for.

        Loads the ignore mask, starts the snapshot writer and creates the publishers
        (``make_publisher(type, topic)``); returns the reason it failed, or None.
        ``exceedance``: this camera's own calibration table (its topic's); None: the bundle's.
        """
        log = self.node.get_logger()
        mask_path = str(get("ignore_mask"))
        if mask_path:
            try:
                self.ignore = IgnoreMask.from_file(mask_path)
            except IgnoreMaskError as exc:
                which = (f"{OVERRIDES}.{self.camera}.ignore_mask (else the node's "
                         "ignore_mask)") if self.camera else "ignore_mask"
                return f"{exc}; fix {which} (or set it to '')"
            where = f"camera {self.camera}: " if self.camera else ""
            log.info(f"{where}ignore mask {mask_path}: {self.ignore.fraction:.1%} of the image "
                     "ignored")
        n, m, _ = self.live.persistence
        if n > m:
            return f"persistence_n={n} > persistence_m={m}: set persistence_n <= persistence_m"
        self._table = exceedance if exceedance is not None else bundle.exceedance_table
        self._score_range = tuple(bundle.score_range)
        if self._table is None:
            log.info("the bundle has no calibration exceedance table (exported before it was "
                     "recorded, or uncalibrated): a detection's score is its display-"
                     "normalised peak, clip((peak - lo) / (hi - lo), 0, 1) over score_range "
                     f"{self._score_range}")
        snapshot_dir = str(get("snapshot_dir"))
        if snapshot_dir:
            try:
                self.recorder = self._recorder(snapshot_dir, get)
            except (OSError, ValueError) as exc:
                return f"cannot write anomaly snapshots to {snapshot_dir}: {exc}; fix snapshot_dir"
        self._vm, self.vision_reason = load_vision_msgs()
        if self._vm is not None:
            try:
                self._det_pub = make_publisher(self._vm.Detection2DArray,
                                               f"{self.prefix}anomaly/detections")
            except Exception as exc:  # a vision_msgs whose type support does not load
                self._vm, self.vision_reason = None, f"vision_msgs cannot be used ({exc!r}): " \
                    "anomaly/detections is off; reinstall ros-jazzy-vision-msgs"
        if self._vm is None and not RobotOutputs._vision_logged:
            RobotOutputs._vision_logged = True
            log.warning(self.vision_reason)
        depth_topic = str(get("depth_topic"))
        if depth_topic:
            self.depth = DepthInput(self.node, depth_topic, str(get("depth_info_topic")),
                                    self.tally, self.live.depth_max_skew_s)
            self.depth.max_pixels = self.live.max_pixels
            self._pts_pub = make_publisher(PointCloud2, f"{self.prefix}anomaly/points")
        return None

    def _recorder(self, folder: str, get):
        from ..outputs.snapshots import SnapshotRecorder

        resolve = self.node.resolve_topic_name
        return SnapshotRecorder(
            Path(folder).expanduser(), pre_s=float(get("snapshot_pre_s")),
            post_s=float(get("snapshot_post_s")), max_mb=float(get("snapshot_max_mb")),
            image_topic=resolve(f"{self.prefix}image"),
            heatmap_topic=resolve(f"{self.prefix}anomaly/heatmap"),
            detections_topic=resolve(f"{self.prefix}anomaly/detections"))

    def activate(self) -> None:
        if self.depth is not None:
            self.depth.activate()

    def deactivate(self) -> None:
        """Drop the subscriptions, finish the open snapshot event, forget the tracks.

        A later activation is a new stream.
        """
        if self.depth is not None:
            self.depth.deactivate()
        if self.recorder is not None:
            self.recorder.finish()
        self._continuous = False

    def release(self, destroy_publisher) -> None:
        """Undo configure (idempotent): publishers, subscriptions, the snapshot writer."""
        self.deactivate()
        for pub in (self._det_pub, self._pts_pub):
            if pub is not None:
                destroy_publisher(pub)
        self._det_pub = self._pts_pub = None
        self.depth = None
        if self.recorder is not None:
            self.recorder.close()
            self.recorder = None
        self.ignore, self._keep, self._table = None, {}, None

    # the frame (worker thread) -----------------------------------------------------------------
    def plan(self) -> Plan:
        """Who needs this frame's regions: subscribers (and publish_*), snapshots."""
        live, det, pts = self.live, self._det_pub, self._pts_pub
        return Plan(
            detections=bool(det is not None and live.publish_detections
                            and det.get_subscription_count() > 0),
            points=bool(pts is not None and live.publish_points
                        and pts.get_subscription_count() > 0),
            snapshots=self.recorder is not None)

    def mask_out_ignored(self, mask: np.ndarray | None) -> np.ndarray | None:
        """Clear the ignored pixels of ``mask`` (uint8 0/255, in place) and return it.

        None when the ignore mask cannot be applied to this frame's size (another aspect
        ratio: the frame's mask, detections and points are then not published; counted,
        logged).
        """
        if mask is None or self.ignore is None:
            return mask
        key = mask.shape[:2]
        keep = self._keep.get(key)
        if keep is None:
            try:
                keep = np.where(self.ignore.for_size(*key), 0, 255).astype(np.uint8)
            except IgnoreMaskError as exc:
                self.tally.add("ignore_refused")
                self.node.get_logger().error(f"{exc}: no mask, detections or points for this "
                                             f"frame", throttle_duration_sec=THROTTLE_S)
                return None
            self._keep[key] = keep
        if not mask.flags.writeable:
            mask = np.array(mask)
        np.bitwise_and(mask, keep, out=mask)
        return mask

    def find(self, mask: np.ndarray, heatmap: np.ndarray, plan: Plan) -> Found | None:
        """Find the regions of the (ignore-masked) ``mask`` and the detections that persist.

        Returns them with their scores; None when no output needs them.
        """
        if not plan.regions:
            self._continuous = False
            return None
        t0, c0 = time.perf_counter(), time.thread_time()
        live = self.live
        p = self._persistence
        if (p.n, p.m, p.iou_threshold) != live.persistence:  # changed live: restart the tracks,
            fresh = Persistence(*live.persistence)  # never reusing an id
            fresh._next_id = p._next_id  # noqa: SLF001 - ids continue over the node's life
            self._persistence = p = fresh
        elif not self._continuous:  # frames went by unseen: a new stream for the tracks
            p.reset()
        self._continuous = True
        regions = find_regions(mask, heatmap, min_region_pixels=live.min_region_pixels,
                               table=self._table)
        dets = p.update(regions.regions)
        self.tally.add("frames")
        self.tally.add("regions_found", len(regions.regions))
        self.tally.add("regions_reported", len(dets))
        found = Found(regions, dets, [self._score(d) for d in dets])
        self._spent = ((time.perf_counter() - t0) * 1e3, (time.thread_time() - c0) * 1e3)
        return found

    def _score(self, det: Detection) -> float:
        r = det.region
        if self._table is not None and np.isfinite(r.score):
            return float(r.score)
        lo, hi = self._score_range
        return float(np.clip((r.peak - lo) / (hi - lo), 0.0, 1.0)) if np.isfinite(r.peak) else 0.0

    @staticmethod
    def draw(overlay: np.ndarray, found: Found | None) -> np.ndarray:
        """Draw each reported region's box and id on the overlay."""
        if found is None or not found.detections:
            return overlay
        return draw_regions(overlay, [d.region.box for d in found.detections],
                            [d.id for d in found.detections])

    def publish(self, frame_msg, heatmap: np.ndarray, found: Found | None, plan: Plan) -> bool:
        """Publish the detections and points of this frame, and hand it to the snapshots.

        True when a message was published.
        """
        if found is None:
            return False
        t0, c0 = time.perf_counter(), time.thread_time()
        header = frame_msg.header
        published = False
        if plan.detections and self._det_pub.is_activated:
            self._det_pub.publish(detections_msg(self._vm, header,
                                                 list(zip(found.detections, found.scores))))
            self.tally.add("detections_published")
            published = True
        if plan.points and self._pts_pub.is_activated:
            live = self.live
            pixels = found.regions.pixel_indices([d.region.label for d in found.detections])
            cloud = self.depth.points(header, found.regions.shape, pixels, heatmap,
                                      max_points=live.max_points, min_depth=live.depth_min_m,
                                      max_depth=live.depth_max_m)
            if cloud is not None:
                self._pts_pub.publish(cloud)
                self.tally.add("clouds_published")
                self.tally.add("points_published", cloud.width)
                self.tally.set("last_points", cloud.width)
                published = True
        if self.recorder is not None:
            self._snapshot(frame_msg, heatmap, found)
        self.timing.add(self._spent[0] + (time.perf_counter() - t0) * 1e3)
        self.cpu_timing.add(self._spent[1] + (time.thread_time() - c0) * 1e3)
        return published

    def _snapshot(self, frame_msg, heatmap, found: Found) -> None:
        """Put the frame into the recorder's ring (references only).

        A new persistent detection starts (or extends) an event; the writer thread does the
        rest.
        """
        header = frame_msg.header
        dets = []
        for d, score in zip(found.detections, found.scores):
            item = d.as_dict()
            item["score"] = score
            dets.append(item)
        self.recorder.add(header.stamp, frame_msg, heatmap, dets, header.frame_id)
        new = [d.id for d in found.detections if d.new]
        if new:
            self.recorder.trigger(header.stamp, reason=f"new detection(s) {', '.join(new)}")

    # diagnostics -------------------------------------------------------------------------------
    def status(self) -> tuple[dict[str, Any], list[str]]:
        """(values for /diagnostics, notes that make the status WARN)."""
        t = self.tally.snapshot()
        p50, p99 = self.timing.percentiles(50, 99)
        depth, recorder, ignore = self.depth, self.recorder, self.ignore  # release may run
        notes = []
        if self._vm is not None:
            det = "on" if self.live.publish_detections else "off: publish_detections is false"
        else:
            det = self.vision_reason or "off (not configured)"
        if depth is None:
            pts = (f"off: {OVERRIDES}.{self.camera}.depth_topic is empty" if self.camera
                   else "off: depth_topic is empty")
        else:
            pts = depth.status()
            if depth.intrinsics is None:
                notes.append(f"points {pts}")
        values: dict[str, Any] = {
            "detections": det, "points": pts,
            "ignore_mask": (f"{ignore.source} ({ignore.fraction:.1%} ignored)"
                            if ignore is not None else ""),
            "robot_outputs_p50_ms": f"{p50:.2f}", "robot_outputs_p99_ms": f"{p99:.2f}",
        }
        values.update({k: t.get(k, 0) for k in TALLY if k != "frames"})
        if recorder is not None:
            s = recorder.stats()
            values.update(snapshots=f"on: {recorder.folder}",
                          snapshot_events=s["events_written"], snapshot_bytes=s["bytes_written"],
                          snapshots_deleted=s["events_deleted"],
                          snapshot_dropped=s["dropped_queue"] + s["dropped_size"]
                          + s["dropped_error"], snapshot_errors=s["errors"])
            if s["last_error"]:
                notes.append(f"snapshot writer: {s['last_error']}")
        else:
            values["snapshots"] = "off: snapshot_dir is empty"
        return values, notes

    def refusals(self) -> dict[str, int]:
        """Count the refused depth, CameraInfo and ignore-mask inputs (cumulative)."""
        t = self.tally.snapshot()
        return {k: t.get(k, 0) for k in REFUSALS}


__all__ = ["Found", "Live", "Plan", "REFUSALS", "RobotOutputs"]
