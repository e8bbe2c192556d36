"""The node's outputs for a recording, written to a new bag beside it: the ``bag_outputs`` command.

Every frame of ``--topic`` (sensor_msgs/Image or CompressedImage) goes through the same runtime
backend, threshold and colour map as the node, and ``/anomaly/heatmap`` (32FC1), ``/anomaly/mask``
(mono8) and ``/anomaly/overlay`` (bgr8) are written with the frame's own header (stamp,
frame_id) and receive time, so a viewer (Foxglove, rqt_bag, ``ros2 bag play``) shows them in step
with the recording; ``--copy-input`` puts the camera frames in the new bag too. No ROS install
needed (``rosbags``). Prints JSON: frames, skipped messages, the mean flagged fraction.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np


def _image(ts, header, array: np.ndarray, encoding: str):
    Image = ts.types["sensor_msgs/msg/Image"]
    a = np.ascontiguousarray(array)
    h, w = a.shape[:2]
    return Image(header=header, height=h, width=w, encoding=encoding,
                 is_bigendian=int(sys.byteorder == "big") if encoding == "32FC1" else 0,
                 step=int(a.strides[0]), data=a.reshape(-1).view(np.uint8))


def write_outputs(bag: Path, topic: str, model: Path, out: Path, *, storage: str = "mcap",
                  backend: str = "auto", device: str = "auto", copy_input: bool = False,
                  threshold: float | None = None) -> dict:
    from rosbags.highlevel import AnyReader
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    from flowclas_ros.image_codec import ImageFormatError, compressed_to_rgb, image_to_rgb

    from .registry import create_backend

    ts = get_typestore(Stores.ROS2_JAZZY)
    if out.exists():
        raise FileExistsError(f"{out} exists: choose another --out")
    plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[storage]
    counts = {"frames": 0, "skipped": 0}
    flagged = []
    t0 = time.perf_counter()
    be = create_backend(model, backend=backend, device=device)
    try:
        with AnyReader([bag], default_typestore=ts) as reader, \
                Writer(out, version=9, storage_plugin=plugin) as writer:
            conns = [c for c in reader.connections if c.topic == topic]
            if not conns:
                raise ValueError(f"bag {bag} has no topic {topic!r}; its topics: "
                                 f"{sorted(c.topic for c in reader.connections)}")
            image_type = "sensor_msgs/msg/Image"
            outs = {k: writer.add_connection(f"/anomaly/{k}", image_type, typestore=ts)
                    for k in ("heatmap", "mask", "overlay")}
            copy = (writer.add_connection(topic, conns[0].msgtype, typestore=ts)
                    if copy_input else None)
            for conn, stamp_ns, raw in reader.messages(connections=conns):
                msg = reader.deserialize(raw, conn.msgtype)
                try:
                    rgb = (compressed_to_rgb(msg) if conn.msgtype.endswith("CompressedImage")
                           else image_to_rgb(msg))
                except ImageFormatError:
                    counts["skipped"] += 1
                    continue
                r = be.infer(rgb, threshold=threshold)
                for key, arr, enc in (("heatmap", r.heatmap, "32FC1"), ("mask", r.mask, "mono8"),
                                      ("overlay", r.overlay, "bgr8")):
                    writer.write(outs[key], stamp_ns,
                                 ts.serialize_cdr(_image(ts, msg.header, arr, enc), image_type))
                if copy is not None:
                    writer.write(copy, stamp_ns, raw)
                counts["frames"] += 1
                flagged.append(float((r.mask > 0).mean()))
    finally:
        be.close()
    return {"bag": str(bag), "topic": topic, "out": str(out), **counts,
            "mean_flagged_fraction": float(np.mean(flagged)) if flagged else None,
            "threshold": threshold if threshold is not None else be.bundle.threshold,
            "backend": be.name, "seconds": round(time.perf_counter() - t0, 1)}


__all__ = ["write_outputs"]
