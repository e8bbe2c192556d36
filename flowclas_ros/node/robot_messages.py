"""The messages of the outputs a robot acts on: vision_msgs/Detection2DArray and PointCloud2.

* :func:`load_vision_msgs`: vision_msgs comes from the ROS install (``apt install
  ros-jazzy-vision-msgs``); imported on first use, and where it is missing the node runs without
  ``anomaly/detections`` (:data:`MISSING_VISION_MSGS` says so once in the log and in
  /diagnostics).
* :func:`detections_msg`: one Detection2D per reported region, with the input's header: the box
  in input pixels (BoundingBox2D, pixel-centre convention of
  :meth:`flowclas_ros.outputs.regions.Region.bbox2d`, theta 0), one hypothesis with class id
  ``anomaly`` and the region's score in [0, 1] (identity pose, zero covariance), the
  persistence id.
* :func:`cloud_msg`: the points of :mod:`flowclas_ros.outputs.pointcloud` (x y z score, float32,
  16 bytes a point, unorganised, dense) with the depth image's header.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from sensor_msgs.msg import PointCloud2, PointField

from ..outputs.pointcloud import POINT_STEP, pack_points, packed_data

CLASS_ID = "anomaly"
MISSING_VISION_MSGS = ("vision_msgs is not installed: anomaly/detections is off; apt install "
                       "ros-jazzy-vision-msgs")


def load_vision_msgs() -> tuple[Any, str]:
    """Import vision_msgs: (its ``msg`` module, "") or (None, why it cannot be used)."""
    try:
        from vision_msgs import msg
    except ImportError as exc:
        return None, f"{MISSING_VISION_MSGS} ({exc})"
    return msg, ""


def detections_msg(vm, header, detections: Sequence[tuple[Any, float]]):
    """Detection2DArray of ``(persistence.Detection, score)`` pairs; ``vm``: vision_msgs.msg."""
    out = vm.Detection2DArray()
    out.header = header
    dets = []
    for det, score in detections:
        d = vm.Detection2D()
        d.header = header
        d.id = det.id
        cx, cy, sx, sy = det.region.bbox2d()
        d.bbox.center.position.x, d.bbox.center.position.y = cx, cy
        d.bbox.size_x, d.bbox.size_y = sx, sy
        hyp = vm.ObjectHypothesisWithPose()
        hyp.hypothesis.class_id = CLASS_ID
        hyp.hypothesis.score = float(score)
        d.results = [hyp]
        dets.append(d)
    out.detections = dets
    return out


_FIELDS = None


def _fields() -> list:
    global _FIELDS
    if _FIELDS is None:
        from ..outputs.pointcloud import FIELDS

        _FIELDS = [PointField(name=f.name, offset=f.offset, datatype=f.datatype, count=f.count)
                   for f in FIELDS]
    return _FIELDS


def cloud_msg(xyz, score, header, packed=None) -> PointCloud2:
    """PointCloud2 of (N, 3) points and (N,) scores with ``header`` (the depth image's).

    ``packed``: the same points already laid out (N, 4) ``x y z score`` float32
    (:attr:`flowclas_ros.outputs.depth.Points.packed`): copied once into the message, and
    ``xyz``/``score`` are not read.
    """
    if packed is None:
        packed = np.frombuffer(pack_points(xyz, score).data, dtype="<f4").reshape(-1, 4)
    msg = PointCloud2()
    msg.header = header
    msg.height, msg.width = 1, int(packed.shape[0])
    msg.fields = _fields()
    msg.is_bigendian = False
    msg.point_step, msg.row_step = POINT_STEP, POINT_STEP * int(packed.shape[0])
    msg.is_dense = True
    msg.data = packed_data(packed)  # an array.array('B'): the setter's fast path
    return msg


__all__ = ["CLASS_ID", "MISSING_VISION_MSGS", "cloud_msg", "detections_msg", "load_vision_msgs"]
