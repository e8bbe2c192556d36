r"""``anomaly_node``: the FlowCLAS lifecycle node as a process.

    ros2 run flowclas_ros anomaly_node --ros-args --params-file config/anomaly.yaml \
        -r image:=/camera/image_raw

The node, its topics, parameters and lifecycle: :mod:`flowclas_ros.node.anomaly_node`.
"""
from __future__ import annotations

import rclpy
from rclpy._rclpy_pybind11 import RCLError
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor

from flowclas_ros.node.anomaly_node import AnomalyNode


def main(args=None) -> int:
    """``anomaly_node`` executable: spin until Ctrl-C or the shutdown transition."""
    rclpy.init(args=args)
    node = None
    try:
        node = AnomalyNode()
        # several threads: get_state and /diagnostics answer during a long configure
        executor = MultiThreadedExecutor(num_threads=3)
        executor.add_node(node)
        while rclpy.ok() and not node.finalized.is_set():
            executor.spin_once(timeout_sec=0.25)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except RCLError:
        # Ctrl-C between rclpy.ok() and the next wait: the context is gone, so the wait set
        # cannot be built; that is a shutdown, anything else is a real error
        if rclpy.ok():
            raise
    finally:
        if node is not None:
            node.release()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
