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
from flowclas_ros.tools.common import asked_for_help


def usage() -> str:
    """Return this executable's ``--help``: how to run it and its parameters."""
    from flowclas_ros.node import parameters

    rows = [f"  {p.name:<22} {p.type.__name__:<5} {p.default_value()!r:<10} {p.change}"
            for p in parameters.table()]
    return (f"{__doc__.strip()}\n\nParameters (name, type, default, when it may change):\n"
            + "\n".join(rows) + f"\n  {parameters.OVERRIDES}.<camera>.*: per camera, with "
            f"`cameras` set\n\nEach one's meaning: `ros2 param describe <node> <name>`, the "
            f"README, config/anomaly.yaml.")


def main(args=None) -> int:
    """``anomaly_node`` executable: spin until Ctrl-C or the shutdown transition."""
    if asked_for_help(args):
        print(usage())
        return 0
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
