"""Shared test fixtures.

Seeded torch, the real-data folder (skips cleanly where absent), the tiny bundle, and the ROS
fixtures over test/ros_harness.py.
"""
import logging
import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    """../shared/data beside the project, or $FLOWCLAS_DATA."""
    return Path(os.environ.get("FLOWCLAS_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _our_logs_reach_caplog():
    """Let the package's log records reach the root logger (caplog) where launch is installed.

    Importing ROS 2's ``launch`` (its pytest plugins do, on every ROS install) makes each
    logger created afterwards a non-propagating LaunchLogger, so ``caplog`` saw none of ours.
    """
    loggers = [logging.getLogger(n) for n in list(logging.root.manager.loggerDict)
               if n == "flowclas_ros" or n.startswith("flowclas_ros.")]
    was = [lg.propagate for lg in loggers]
    for lg in loggers:
        lg.propagate = True
    logger_class = logging.getLoggerClass()
    logging.setLoggerClass(logging.Logger)  # loggers first made during the test propagate too
    yield
    logging.setLoggerClass(logger_class)
    for lg, p in zip(loggers, was):
        lg.propagate = p


@pytest.fixture
def shared_data() -> Path:
    root = data_root()
    if not root.is_dir():
        pytest.skip(f"real data not found at {root} (set FLOWCLAS_DATA to its folder)")
    return root


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """Build a bundle of the tiny test model (shared by the node, demo and player tests).

    Its threshold is at the median score of a random image.
    """
    import torch

    from flowclas_ros.export.bundle import write_bundle
    from flowclas_ros.model import BackboneConfig, FlowCLAS, FlowConfig, ModelConfig

    torch.manual_seed(0)
    model = FlowCLAS(ModelConfig(backbone=BackboneConfig(name="tiny"),
                                 flow=FlowConfig(steps=2))).eval()
    with torch.no_grad():
        scores = model(torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(0)))
    out = tmp_path_factory.mktemp("bundle") / "tiny"
    write_bundle(model, out, input_size=(48, 64), threshold=float(scores.median()),
                 score_range=(float(scores.min()), float(scores.max())))
    return out


# ROS: the harness is test/ros_harness.py; these fixtures skip where rclpy is not installed ---
def _ros_harness():
    pytest.importorskip("rclpy", reason="rclpy (ROS 2 Jazzy) is not installed")
    import ros_harness

    return ros_harness


@pytest.fixture
def ros_env():
    """Put the ROS environment in os.environ for one test, restored after it.

    The ROS environment: loopback discovery, the shipped Fast DDS profile, the session's own
    domain. For tests that start rclpy or ROS processes themselves (the demo, a bare Context).
    """
    with _ros_harness().ros_environment() as env:
        yield env


@pytest.fixture(scope="module")
def ros():
    """Yield a :class:`ros_harness.Ros` (two contexts, executors spinning), one per test module.

    It runs in the ROS environment.
    """
    harness = _ros_harness()
    with harness.ros_environment():
        r = harness.Ros()
        try:
            yield r
        finally:
            r.close()


@pytest.fixture
def nodes(ros):
    """Yield start(namespace, **params) -> a flowclas_anomaly node, spinning.

    Every node is destroyed after the test.
    """
    started = []

    def start(namespace, **kw):
        node = ros.start_node(namespace, **kw)
        started.append(node)
        return node

    yield start
    for node in started:
        ros.stop_node(node)
