"""What every entry point shares: ``ros2 run``'s extra arguments, named config files, logging."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from ..paths import package_file


def strip_ros_args(argv: list[str]) -> list[str]:
    """Drop the ``--ros-args ... [--]`` block that ``ros2 run`` may append."""
    if "--ros-args" not in argv:
        return argv
    i = argv.index("--ros-args")
    rest = argv[i + 1:]
    tail = rest[rest.index("--") + 1:] if "--" in rest else []
    return argv[:i] + tail


def asked_for_help(args: list[str] | None) -> bool:
    """Return whether a node executable's command line asks for ``-h`` or ``--help``.

    ``args``: rclpy's (program name first; None: ``sys.argv``); a ``--ros-args`` block is not
    looked into. A node's executable has no argparse of its own (its settings are ROS
    parameters), so without this check ``--help`` would start the node.
    """
    argv = sys.argv if args is None else args
    return any(a in ("-h", "--help") for a in strip_ros_args(list(argv[1:])))


def resolve_config(name: str) -> Path:
    """Return a config file given as a path, or by the name of one shipped in the package.

    Shipped configs are in the package's config/ folder (``train_demo_lite2_camvid`` or
    ``train_demo_lite2_camvid.yaml``).
    """
    path = Path(name).expanduser()
    if path.is_file():
        return path
    names = [name] if name.endswith((".yaml", ".yml")) else [f"{name}.yaml", name]
    for n in names:
        shipped = package_file("config", n)
        if shipped.is_file():
            return shipped
    raise FileNotFoundError(f"config {name!r} not found (as a path, or in the package's config "
                            f"folder {package_file('config')})")


def setup_logging(fmt: str = "%(asctime)s %(levelname)s %(message)s") -> None:
    logging.basicConfig(level=logging.INFO, format=fmt, datefmt="%H:%M:%S")


__all__ = ["resolve_config", "setup_logging", "strip_ros_args"]
