"""The shipped Fast DDS profile: given where the environment names none, a user's choice kept."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flowclas_ros.paths import DDS_PROFILE_ENV, dds_profile, default_dds_profile

ROOT = Path(__file__).resolve().parents[1]


def test_the_shipped_profile_is_given_only_where_none_is_named():
    env: dict[str, str] = {}
    assert default_dds_profile(env) == str(dds_profile()) == env[DDS_PROFILE_ENV]
    assert Path(env[DDS_PROFILE_ENV]).is_file()
    for named in ("/etc/my_profile.xml", ""):  # even empty: the user's, kept
        env = {DDS_PROFILE_ENV: named}
        assert default_dds_profile(env) is None and env[DDS_PROFILE_ENV] == named


@pytest.mark.parametrize("named", [None, "own"])
def test_image_player_sends_with_the_shipped_profile_unless_told_otherwise(named, tmp_path):
    pytest.importorskip("rclpy", reason="rclpy (ROS 2 Jazzy) is not installed")
    from ros_harness import TIMEOUT, subprocess_env

    env = subprocess_env()
    env.pop(DDS_PROFILE_ENV, None)
    if named:
        own = tmp_path / "own.xml"
        own.write_text(dds_profile().read_text())
        env[DDS_PROFILE_ENV] = str(own)
    code = ("import os, sys; from flowclas_ros.tools import image_player as p; rc = p.main("
            "['image_player', '--ros-args', '-p', 'max_frames:=1', '-p', 'rate:=50.0']); "
            f"print('PROFILE', os.environ.get({DDS_PROFILE_ENV!r})); sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=TIMEOUT)
    log = out.stdout + out.stderr
    assert out.returncode == 0 and "published 1 frames" in log, log
    want = str(own) if named else str(dds_profile())
    assert f"PROFILE {want}\n" in out.stdout, log  # what the process's Fast DDS read
    assert ("Fast DDS profile" in log) == (not named), log  # and it says so when it chose
