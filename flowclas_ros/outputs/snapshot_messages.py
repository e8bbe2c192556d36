"""The messages of an anomaly snapshot, serialised for a bag with rosbags (no ROS install).

* the camera frame: a CompressedImage as received; a raw Image as received, or (``raw_as_jpeg``,
  the default) converted to RGB (:mod:`flowclas_ros.image_codec`) and JPEG-encoded into a
  CompressedImage with format ``"rgb8; jpeg compressed bgr8"`` (image_transport's naming);
* the heatmap: sensor_msgs/Image ``32FC1``, little-endian, ``step = 4 * width``;
* the detections: vision_msgs/msg/Detection2DArray, one Detection2D per detection dict with one
  ObjectHypothesisWithPose (``class_id``, ``score``; identity pose, zero covariance), the
  BoundingBox2D from ``center_x``, ``center_y``, ``size_x``, ``size_y`` (theta 0) and ``id``.

vision_msgs is not in rosbags' Jazzy typestore: :func:`typestore` registers its types from the
.msg definitions of vision_msgs 4.x (ROS 2 Jazzy) below, written from the package's
documentation; the bag then carries these definitions, so readers need no vision_msgs install.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from ..image_codec import compressed_format, image_to_rgb, rgb_to_compressed

VISION_MSGS: dict[str, str] = {
    "vision_msgs/msg/Point2D": "float64 x\nfloat64 y\n",
    "vision_msgs/msg/Pose2D": "vision_msgs/Point2D position\nfloat64 theta\n",
    "vision_msgs/msg/BoundingBox2D": "vision_msgs/Pose2D center\nfloat64 size_x\nfloat64 size_y\n",
    "vision_msgs/msg/ObjectHypothesis": "string class_id\nfloat64 score\n",
    "vision_msgs/msg/ObjectHypothesisWithPose": (
        "vision_msgs/ObjectHypothesis hypothesis\ngeometry_msgs/PoseWithCovariance pose\n"),
    "vision_msgs/msg/Detection2D": (
        "std_msgs/Header header\nvision_msgs/ObjectHypothesisWithPose[] results\n"
        "vision_msgs/BoundingBox2D bbox\nstring id\n"),
    "vision_msgs/msg/Detection2DArray": (
        "std_msgs/Header header\nvision_msgs/Detection2D[] detections\n"),
}
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED = "sensor_msgs/msg/CompressedImage"
DETECTIONS = "vision_msgs/msg/Detection2DArray"
JPEG_FORMAT = "rgb8; jpeg compressed bgr8"


@lru_cache(maxsize=1)
def typestore():
    """Rosbags' ROS 2 Jazzy typestore with vision_msgs 4.x registered (one per process)."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    ts = get_typestore(Stores.ROS2_JAZZY)
    types: dict = {}
    for name, text in VISION_MSGS.items():
        types.update(get_types_from_msg(text, name))
    ts.register(types)
    return ts


def _bytes(data) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).view(np.uint8).reshape(-1)
    return np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)


class SnapshotSerializer:
    """Builds and serialises (CDR) the three messages of a snapshot item."""

    def __init__(self, raw_as_jpeg: bool = True, jpeg_quality: int = 90):
        self.raw_as_jpeg = bool(raw_as_jpeg)
        self.jpeg_quality = int(jpeg_quality)
        self.ts = typestore()
        t = self.ts.types
        self._Header, self._Time = t["std_msgs/msg/Header"], t["builtin_interfaces/msg/Time"]

    def header(self, stamp_ns: int, frame_id: str):
        return self._Header(stamp=self._Time(sec=stamp_ns // 1_000_000_000,
                                             nanosec=stamp_ns % 1_000_000_000),
                            frame_id=str(frame_id))

    def frame(self, frame: Any, stamp_ns: int, frame_id: str) -> tuple[str, bytes]:
        """Return (message type, CDR bytes) of a camera frame.

        The frame is a CompressedImage (has ``format``) or a raw Image (duck-typed fields).
        Raises image_codec.ImageFormatError for a bad frame.
        """
        t = self.ts.types
        header = self.header(stamp_ns, frame_id)
        if hasattr(frame, "format"):
            compressed_format(frame.format)  # refuse what the bag readers could not decode
            msg = t[COMPRESSED](header=header, format=str(frame.format), data=_bytes(frame.data))
            return COMPRESSED, bytes(self.ts.serialize_cdr(msg, COMPRESSED))
        if self.raw_as_jpeg:
            jpeg = rgb_to_compressed(image_to_rgb(frame), "jpeg", self.jpeg_quality)
            msg = t[COMPRESSED](header=header, format=JPEG_FORMAT,
                                data=np.frombuffer(jpeg, dtype=np.uint8))
            return COMPRESSED, bytes(self.ts.serialize_cdr(msg, COMPRESSED))
        msg = t[IMAGE](header=header, height=int(frame.height), width=int(frame.width),
                       encoding=str(frame.encoding), is_bigendian=int(frame.is_bigendian),
                       step=int(frame.step), data=_bytes(frame.data))
        return IMAGE, bytes(self.ts.serialize_cdr(msg, IMAGE))

    def heatmap(self, heatmap: np.ndarray, stamp_ns: int, frame_id: str) -> bytes:
        """CDR bytes of a 32FC1 Image of an (H, W) score array."""
        hm = np.ascontiguousarray(heatmap, dtype="<f4")
        if hm.ndim != 2:
            raise ValueError(f"heatmap must be (H, W), got {hm.shape}")
        h, w = hm.shape
        msg = self.ts.types[IMAGE](header=self.header(stamp_ns, frame_id), height=h, width=w,
                                   encoding="32FC1", is_bigendian=0, step=4 * w,
                                   data=hm.view(np.uint8).reshape(-1))
        return bytes(self.ts.serialize_cdr(msg, IMAGE))

    def detections(self, detections, stamp_ns: int, frame_id: str) -> bytes:
        """Return the CDR bytes of a Detection2DArray of detection dicts.

        Keys: ``id``, ``score``, ``center_x``, ``center_y``, ``size_x``, ``size_y``; optional
        ``class_id``, default "anomaly"; :meth:`.persistence.Detection.as_dict` gives them.
        """
        t = self.ts.types
        header = self.header(stamp_ns, frame_id)
        out = []
        for d in detections:
            pose = t["geometry_msgs/msg/PoseWithCovariance"](
                pose=t["geometry_msgs/msg/Pose"](
                    position=t["geometry_msgs/msg/Point"](x=0.0, y=0.0, z=0.0),
                    orientation=t["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0)),
                covariance=np.zeros(36, dtype=np.float64))
            score = float(d.get("score", 0.0))
            hyp = t["vision_msgs/msg/ObjectHypothesisWithPose"](
                hypothesis=t["vision_msgs/msg/ObjectHypothesis"](
                    class_id=str(d.get("class_id", "anomaly")),
                    score=score if np.isfinite(score) else 0.0),
                pose=pose)
            bbox = t["vision_msgs/msg/BoundingBox2D"](
                center=t["vision_msgs/msg/Pose2D"](
                    position=t["vision_msgs/msg/Point2D"](x=float(d["center_x"]),
                                                           y=float(d["center_y"])),
                    theta=0.0),
                size_x=float(d["size_x"]), size_y=float(d["size_y"]))
            out.append(t["vision_msgs/msg/Detection2D"](header=header, results=[hyp], bbox=bbox,
                                                         id=str(d["id"])))
        msg = t[DETECTIONS](header=header, detections=out)
        return bytes(self.ts.serialize_cdr(msg, DETECTIONS))


__all__ = ["COMPRESSED", "DETECTIONS", "IMAGE", "JPEG_FORMAT", "SnapshotSerializer",
           "VISION_MSGS", "typestore"]
