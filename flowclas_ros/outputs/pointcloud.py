"""Points as sensor_msgs/PointCloud2 content: the fields, the layout and the bytes (no ROS).

:func:`pack_points` lays out one point per 16 bytes, little-endian float32 ``x, y, z, score``
at offsets 0, 4, 8, 12 (PointField datatype 7 = FLOAT32, count 1), as an unorganised cloud
(``height`` 1, ``width`` N, ``row_step`` = 16 N, ``is_dense`` True: every point is finite).
:func:`~flowclas_ros.outputs.depth.back_project` already writes its points in this layout
(:attr:`~flowclas_ros.outputs.depth.Points.packed`), so the node only copies them once into the
message's ``data`` with :func:`packed_data` (``flowclas_ros/node/robot_messages.py``); for
points from elsewhere :func:`pack_points` gives the same bytes and the other fields::

    c = pack_points(points.xyz, points.score)
    msg = PointCloud2(header=depth_header, height=c.height, width=c.width,
                      fields=[PointField(name=f.name, offset=f.offset, datatype=f.datatype,
                                         count=f.count) for f in c.fields],
                      is_bigendian=c.is_bigendian, point_step=c.point_step,
                      row_step=c.row_step, is_dense=c.is_dense)
    msg.data = c.data  # bytes

The header is the **depth image's** (its frame_id is the optical frame the points are in).
"""
from __future__ import annotations

import array
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

FLOAT32 = 7  # sensor_msgs/PointField.FLOAT32


class FieldSpec(NamedTuple):
    """One sensor_msgs/PointField: name, byte offset in the point, datatype, count."""

    name: str
    offset: int
    datatype: int
    count: int = 1


FIELDS = (FieldSpec("x", 0, FLOAT32), FieldSpec("y", 4, FLOAT32), FieldSpec("z", 8, FLOAT32),
          FieldSpec("score", 12, FLOAT32))
POINT_STEP = 16


@dataclass(frozen=True)
class PackedCloud:
    """The PointCloud2 fields of N points (see the module docstring)."""

    data: bytes
    width: int
    fields: tuple[FieldSpec, ...] = FIELDS
    point_step: int = POINT_STEP
    height: int = 1
    is_bigendian: bool = False
    is_dense: bool = True

    @property
    def row_step(self) -> int:
        return self.point_step * self.width


def pack_points(xyz: np.ndarray, score: np.ndarray | None = None) -> PackedCloud:
    """(N, 3) positions and (N,) scores (None: 0) -> :class:`PackedCloud` (one copy)."""
    xyz = np.asarray(xyz, dtype=np.float32).reshape(-1, 3)
    n = xyz.shape[0]
    buf = np.empty((n, 4), dtype="<f4")
    buf[:, :3] = xyz
    if score is None:
        buf[:, 3] = 0.0
    else:
        s = np.asarray(score, dtype=np.float32).reshape(-1)
        if s.shape[0] != n:
            raise ValueError(f"{s.shape[0]} scores for {n} points")
        buf[:, 3] = s
    return PackedCloud(buf.tobytes(), n)


def packed_data(packed: np.ndarray) -> array.array:
    """Return (N, 4) ``x y z score`` float32 points as PointCloud2 ``data`` (one copy).

    An ``array.array('B')``: rclpy's generated setter for ``uint8[]`` keeps one as it is when it
    checks fields (``ROS_PYTHON_CHECK_FIELDS=1``; bytes are then checked byte by byte) and copies
    it with one memcpy otherwise (so do bytes; a numpy array is copied element by element).
    """
    buf = np.ascontiguousarray(packed, dtype="<f4")
    if buf.ndim != 2 or buf.shape[1] != 4:
        raise ValueError(f"packed points must be (N, 4), got shape {buf.shape}")
    data = array.array("B")
    data.frombytes(buf.reshape(-1).view(np.uint8))
    return data


def unpack_points(data: bytes) -> np.ndarray:
    """Return the inverse, for tests and tools: (N, 4) float32 ``x, y, z, score``."""
    return np.frombuffer(data, dtype="<f4").reshape(-1, 4)


__all__ = ["FIELDS", "FLOAT32", "FieldSpec", "POINT_STEP", "PackedCloud", "pack_points",
           "packed_data", "unpack_points"]
