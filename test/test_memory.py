"""The process memory policy of flowclas_ros.memory.

Freed frame buffers are kept for reuse, unless told not to; long-lived objects are exempt from
the garbage collector's scans until thawed.
"""
import gc
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


def test_creating_a_backend_applies_it(tiny_bundle):
    code = ("import flowclas_ros.memory as m; from flowclas_ros.runtime import create_backend; "
            f"b = create_backend({str(tiny_bundle)!r}, backend='onnxruntime'); print(m._applied)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=120, env={k: v for k, v in os.environ.items()
                                           if k not in ("FLOWCLAS_KEEP_FRAME_BUFFERS",
                                                        "GLIBC_TUNABLES")}).stdout
    assert out.strip().splitlines()[-1] == _run()[0]  # what keep_frame_buffers() says here


def test_freeze_exempts_what_exists_until_thawed():
    from flowclas_ros.memory import freeze_long_lived, thaw

    kept = [["a long-lived container"]]
    try:
        assert freeze_long_lived() == gc.get_freeze_count() > 0
        assert not any(o is kept for o in gc.get_objects())  # in the permanent generation
        new = [["made after the freeze"]]
        assert any(o is new for o in gc.get_objects())  # scanned as usual
    finally:
        thaw()
    assert gc.get_freeze_count() == 0 and any(o is kept for o in gc.get_objects())
