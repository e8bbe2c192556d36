"""The linters, as every ROS 2 Python package in ros2/demos carries them.

That is ament_flake8 and ament_pep257: here ruff with the same rules (ruff.toml), over the
package, tests, launch file and setup.py.
"""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ruff() -> str:
    exe = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(exe).exists():
        pytest.skip("ruff is not installed (pip install -r requirements.txt)")
    return exe


def test_flake8_and_pep257_rules_pass():
    proc = subprocess.run([_ruff(), "check", "--no-cache", "--output-format", "concise",
                           "flowclas_ros", "test", "launch", "setup.py"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
