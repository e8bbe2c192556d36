"""The multi-camera benchmark's stand-in for a robot's other software does work and stops."""
import threading

from flowclas_ros.tools.bench.multi_camera import Load


def test_load_processes_count_their_work_and_stop():
    busy = Load(1)
    try:
        start = busy.mark()
        for _ in range(600):  # spawning imports numpy: up to a minute on a busy machine
            if busy.mark()[1] > start[1]:
                break
            threading.Event().wait(0.1)
        assert Load.rate(start, busy.mark()) > 0
    finally:
        busy.close()
    assert not any(p.is_alive() for p in busy.procs)
    done = busy.mark()[1]
    threading.Event().wait(0.2)
    assert busy.mark()[1] == done  # stopped: no more work counted
