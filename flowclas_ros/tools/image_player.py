"""``image_player``: a stand-in camera (a folder of images, a video or a recording).

    ros2 run flowclas_ros image_player --ros-args -p source:=/path/to/frames -p rate:=10.0

The node and its parameters: :class:`flowclas_ros.node.image_player.ImagePlayer`. As the
sender of camera-sized frames it starts with the package's Fast DDS profile
(config/fastdds_large_frames.xml) where FASTRTPS_DEFAULT_PROFILES_FILE is unset: without it a
frame over 512 KiB leaves shared memory for UDP fragments and best-effort frames go missing.
"""
from __future__ import annotations

import rclpy
from rclpy.executors import ExternalShutdownException

from flowclas_ros.node.image_player import ImagePlayer
from flowclas_ros.paths import default_dds_profile
from flowclas_ros.tools.common import asked_for_help


def main(args=None) -> int:
    """``image_player`` executable: publish the source once (or looping), then exit."""
    if asked_for_help(args):
        from flowclas_ros.node import image_player

        print(f"{__doc__.strip()}\n\n{image_player.__doc__.strip()}")
        return 0
    profile = default_dds_profile()  # before rclpy.init: Fast DDS reads it then
    rclpy.init(args=args)
    node = ImagePlayer()
    if profile:
        node.get_logger().info(f"Fast DDS profile {profile} (FASTRTPS_DEFAULT_PROFILES_FILE "
                               "was unset; set it to use another)")
    try:
        node.start()
        while rclpy.ok() and not node.finished:
            rclpy.spin_once(node, timeout_sec=0.1)
        node.get_logger().info(f"published {node.sent} frames")
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
