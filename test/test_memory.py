"""Freed frame buffers are kept for reuse (flowclas_ros.memory), unless told not to."""
import os
import subprocess
import sys

import pytest

CODE = "from flowclas_ros.memory import keep_frame_buffers as k; print(k()); print(k())"


def _run(**env) -> list[str]:
    full = {k: v for k, v in os.environ.items() if k not in ("FLOWCLAS_KEEP_FRAME_BUFFERS",
                                                            "GLIBC_TUNABLES")}
    full.update(env)
    out = subprocess.run([sys.executable, "-c", CODE], env=full, capture_output=True, text=True,
                         check=True, timeout=60).stdout
    return out.splitlines()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt (Linux)")
def test_applied_once_by_default():
    first, second = _run()
    assert first == second  # once per process
    if os.confstr("CS_GNU_LIBC_VERSION"):  # glibc: mallopt takes both thresholds
        assert first.startswith("freed buffers under 32 MiB are reused")


def test_the_environment_turns_it_off():
    off = _run(FLOWCLAS_KEEP_FRAME_BUFFERS="0")[0]
    assert off == "not applied (FLOWCLAS_KEEP_FRAME_BUFFERS=0)"
    assert _run(GLIBC_TUNABLES="glibc.malloc.trim_threshold=1000000")[0].startswith(
        "not applied (GLIBC_TUNABLES")
