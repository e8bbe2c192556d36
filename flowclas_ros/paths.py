"""Where the package's data files are.

The installed share/flowclas_ros (colcon), else the source tree beside this package (a
checkout or an editable install). No ROS needed.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import MutableMapping

PACKAGE = "flowclas_ros"
SOURCE_ROOT = Path(__file__).resolve().parents[1]


def package_file(*parts: str) -> Path:
    """Return the path of a data file of the package.

    That is share/flowclas_ros/<parts> when installed and present there, else the source
    tree's (returned even where it does not exist, so the caller can say what is missing).
    """
    try:
        from ament_index_python.packages import get_package_share_directory

        installed = Path(get_package_share_directory(PACKAGE)).joinpath(*parts)
        if installed.exists():
            return installed
    except Exception:  # not installed with colcon (PackageNotFoundError), or no ament index
        pass
    return SOURCE_ROOT.joinpath(*parts)


CACHE_ENV = "FLOWCLAS_CACHE"


def cache_dir(kind: str = "") -> Path:
    """Return the folder where the package keeps what it can rebuild.

    That is ``$FLOWCLAS_CACHE/<kind>``, else ``~/.cache/flowclas_ros/<kind>`` (feature caches,
    extracted bag frames, engine caches).
    """
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / PACKAGE)
    return root / kind if kind else root


DDS_PROFILE_ENV = "FASTRTPS_DEFAULT_PROFILES_FILE"  # read by Fast DDS 2.x (rmw_fastrtps, Jazzy)


def dds_profile() -> Path:
    """Return the Fast DDS profile for camera-sized frames (config/fastdds_large_frames.xml)."""
    return package_file("config", "fastdds_large_frames.xml")


def default_dds_profile(environ: MutableMapping[str, str] | None = None) -> str | None:
    """Give Fast DDS the shipped profile where ``environ`` names none; return it, else None.

    ``environ``: ``os.environ`` (before ``rclpy.init``: Fast DDS reads it when the process's
    participant is made) or a child process's environment. A profile already named, even
    empty, is the user's choice and stays.
    """
    env = os.environ if environ is None else environ
    if DDS_PROFILE_ENV in env:
        return None
    env[DDS_PROFILE_ENV] = str(dds_profile())
    return env[DDS_PROFILE_ENV]


__all__ = ["CACHE_ENV", "DDS_PROFILE_ENV", "PACKAGE", "SOURCE_ROOT", "cache_dir",
           "default_dds_profile", "dds_profile", "package_file"]
