"""launch/anomaly.launch.py.

* Without launch_ros (ROS 2 from PyPI wheels has no launch): the file's syntax (ast), its
  launch arguments and imports against the launch_ros Jazzy API, and its setup function run
  against recording stand-ins of the launch classes; the rviz2 view and the installed files.
* With launch, launch_ros and launch_testing installed (a colcon workspace): a launch_testing
  test that launches it twice with a tiny bundle (the single camera; ``cameras:=[front,
  left]``), sees each node reach ``active`` by itself (configure at start, activate on reaching
  inactive) and serve a frame on every camera's topics, and checks the exit codes.
  Elsewhere that test is reported as skipped, with the reason.

The static checks are unittest.TestCase classes so they run under pytest and, where the
launch_testing plugin takes this file over, inside the launch test as well.
"""
from __future__ import annotations

import ast
import builtins
import importlib.util
import os
import sys
import types
import unittest
from pathlib import Path
from unittest import mock

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILE = ROOT / "launch" / "anomaly.launch.py"
RVIZ_FILE = ROOT / "config" / "anomaly.rviz"
EXPECTED_ARGUMENTS = {"namespace", "image_topic", "params_file", "model_path", "backend",
                      "depth_topic", "ignore_mask", "snapshot_dir", "use_rviz", "dds_profile",
                      "cameras"}
# The names the file may import, as the launch/launch_ros Jazzy packages spell them.
JAZZY_API = {
    "launch": {"LaunchDescription"},
    "launch.actions": {"DeclareLaunchArgument", "EmitEvent", "LogInfo", "OpaqueFunction",
                       "RegisterEventHandler", "IncludeLaunchDescription", "GroupAction"},
    "launch.conditions": {"IfCondition", "UnlessCondition"},
    "launch.events": {"matches_action", "Shutdown"},
    "launch.substitutions": {"LaunchConfiguration", "PathJoinSubstitution"},
    "launch_ros.actions": {"LifecycleNode", "Node", "PushRosNamespace"},
    "launch_ros.event_handlers": {"OnStateTransition"},
    "launch_ros.events.lifecycle": {"ChangeState", "StateTransition"},
    "launch_ros.substitutions": {"FindPackageShare"},
    "lifecycle_msgs.msg": {"Transition", "State"},
    "ament_index_python.packages": {"get_package_share_directory"},
}
def launch_testing_skip_reason() -> str | None:
    """Return why the launch_testing test cannot run here, or None when it can.

    launch, launch_ros and launch_testing must be importable and flowclas_ros must resolve in
    the ament index (a sourced colcon workspace; a ROS install alone has AMENT_PREFIX_PATH
    without this package).
    """
    missing = [m for m in ("launch", "launch_ros", "launch_testing")
               if importlib.util.find_spec(m) is None]
    if missing:
        return (f"{', '.join(missing)} not installed (the ROS 2 PyPI wheels used here have no "
                f"launch); anomaly.launch.py is checked statically instead")
    try:
        from ament_index_python.packages import get_package_share_directory

        get_package_share_directory("flowclas_ros")
    except Exception as exc:  # PackageNotFoundError, or OSError without AMENT_PREFIX_PATH
        return (f"flowclas_ros is not in the ament index ({type(exc).__name__}: {exc}); build "
                f"it with colcon and source install/setup.bash to run the launch test")
    return None


SKIP_REASON = launch_testing_skip_reason()
HAVE_LAUNCH_TESTING = SKIP_REASON is None


def _tree() -> ast.Module:
    return ast.parse(LAUNCH_FILE.read_text(), filename=str(LAUNCH_FILE))


def _calls(tree, name):
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and getattr(n.func, "id", getattr(n.func, "attr", None)) == name]


def _kw(call, key):
    for k in call.keywords:
        if k.arg == key:
            return k.value
    return None


# recording stand-ins for the launch classes -------------------------------------------------
class _Recorded:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class _LaunchConfiguration(_Recorded):
    def perform(self, context):
        return context.launch_configurations[self.args[0]]


def _fake_launch_modules() -> dict[str, types.ModuleType]:
    mods = {}
    for name, attrs in JAZZY_API.items():
        if name.startswith(("lifecycle_msgs", "ament_index_python")):
            continue  # real packages
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # parents first
            mods.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
        for attr in attrs:
            setattr(mods[name], attr, type(attr, (_Recorded,), {}))
    mods["launch.substitutions"].LaunchConfiguration = _LaunchConfiguration
    mods["launch.events"].matches_action = lambda action: ("matches", action)
    return mods


def _load_with_fakes():
    """Run the launch file with the stand-ins as its launch imports, and build its description.

    Its imports, at load and in its functions, see the stand-ins through its own builtins;
    sys.modules is left alone, since under launch_testing these checks run while a real launch
    in another thread imports the real modules.
    """
    fakes = _fake_launch_modules()

    def fake_import(name, globs=None, locs=None, fromlist=(), level=0):
        if level == 0 and name in fakes:
            return fakes[name] if fromlist else fakes[name.partition(".")[0]]
        return builtins.__import__(name, globs, locs, fromlist, level)

    module = types.ModuleType("anomaly_launch_under_test")
    module.__file__ = str(LAUNCH_FILE)
    module.__builtins__ = {**vars(builtins), "__import__": fake_import}
    exec(compile(LAUNCH_FILE.read_text(), str(LAUNCH_FILE), "exec"), module.__dict__)
    return module, module.generate_launch_description(), fakes


class TestLaunchFileStatic(unittest.TestCase):
    def test_syntax_and_declared_arguments(self):
        tree = _tree()
        compile(tree, str(LAUNCH_FILE), "exec")
        names = {c.args[0].value for c in _calls(tree, "DeclareLaunchArgument")}
        self.assertEqual(names, EXPECTED_ARGUMENTS)
        for call in _calls(tree, "DeclareLaunchArgument"):
            self.assertIsNotNone(_kw(call, "default_value"), call.args[0].value)
            self.assertIsNotNone(_kw(call, "description"), call.args[0].value)
        funcs = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        self.assertIn("generate_launch_description", funcs)

    def test_imports_exist_in_the_jazzy_api(self):
        for node in ast.walk(_tree()):
            if isinstance(node, ast.ImportFrom):
                allowed = JAZZY_API.get(node.module)
                if node.module in ("os", "__future__"):
                    continue
                self.assertIsNotNone(allowed, f"unexpected import from {node.module}")
                for alias in node.names:
                    self.assertIn(alias.name, allowed, f"{node.module}.{alias.name}")

    def test_lifecycle_node_is_configured_then_activated(self):
        tree = _tree()
        (node,) = _calls(tree, "LifecycleNode")
        self.assertEqual(_kw(node, "executable").value, "anomaly_node")
        self.assertEqual(_kw(node, "name").value, "flowclas_anomaly")
        self.assertEqual(_kw(node, "package").id, "PACKAGE")
        transitions = {ast.unparse(_kw(c, "transition_id")) for c in _calls(tree, "ChangeState")}
        self.assertEqual(transitions, {"Transition.TRANSITION_CONFIGURE",
                                       "Transition.TRANSITION_ACTIVATE"})
        (handler,) = _calls(tree, "OnStateTransition")
        self.assertEqual(_kw(handler, "goal_state").value, "inactive")
        self.assertIn("TRANSITION_ACTIVATE", ast.unparse(_kw(handler, "entities")))
        # once: a later manual cleanup -> configure leaves the node inactive
        self.assertIs(_kw(handler, "handle_once").value, True)

    def test_setup_builds_the_node_events_and_rviz(self):
        module, description, fakes = _load_with_fakes()
        args = {a.args[0]: a.kwargs["default_value"] for a in description.args[0]
                if type(a).__name__ == "DeclareLaunchArgument"}
        self.assertEqual(set(args), EXPECTED_ARGUMENTS)
        self.assertTrue(args["params_file"].endswith(os.path.join("config", "anomaly.yaml")))
        self.assertEqual((args["use_rviz"], args["model_path"], args["backend"]),
                         ("false", "", ""))
        (setup,) = [a for a in description.args[0] if type(a).__name__ == "OpaqueFunction"]

        def run(**overrides):
            context = types.SimpleNamespace(launch_configurations=dict(args, **overrides))
            return setup.kwargs["function"](context)

        actions = run(namespace="/cam0", image_topic="/camera/image_raw")
        kinds = [type(a).__name__ for a in actions]
        self.assertEqual(kinds, ["RegisterEventHandler", "LifecycleNode", "EmitEvent"])
        handler, node, configure = actions
        self.assertEqual(node.kwargs["namespace"], "/cam0")
        self.assertEqual(node.kwargs["remappings"], [("image", "/camera/image_raw")])
        # the large-frames DDS profile is handed to the node (and exists where it points)
        profile = node.kwargs["additional_env"]["FASTRTPS_DEFAULT_PROFILES_FILE"]
        self.assertTrue(Path(profile).is_file() and profile.endswith("fastdds_large_frames.xml"))
        self.assertEqual(run(dds_profile="")[1].kwargs["additional_env"], {})
        # empty model_path/backend keep the parameters file's values: no override dict
        self.assertEqual(node.kwargs["parameters"], [args["params_file"]])
        on_inactive = handler.args[0]
        self.assertIs(on_inactive.kwargs["target_lifecycle_node"], node)
        emitted = [e for e in on_inactive.kwargs["entities"] if type(e).__name__ == "EmitEvent"]
        activate = emitted[0].kwargs["event"]
        self.assertEqual(activate.kwargs["transition_id"], 3)  # TRANSITION_ACTIVATE
        self.assertEqual(activate.kwargs["lifecycle_node_matcher"], ("matches", node))
        self.assertEqual(configure.kwargs["event"].kwargs["transition_id"], 1)  # CONFIGURE

        with mock.patch.object(module, "_rviz2_installed", return_value=True):
            actions = run(model_path="/models/b", backend="onnxruntime", use_rviz="true")
        self.assertEqual([type(a).__name__ for a in actions][-1], "Node")
        self.assertEqual(actions[1].kwargs["parameters"][-1],
                         {"model_path": "/models/b", "backend": "onnxruntime"})
        # the robot outputs' optional arguments override the file only when given
        self.assertEqual((args["depth_topic"], args["ignore_mask"], args["snapshot_dir"]),
                         ("", "", ""))
        robot = run(depth_topic="/cam/depth/image_raw", ignore_mask="/hood.png",
                    snapshot_dir="/var/events")[1]
        self.assertEqual(robot.kwargs["parameters"][-1],
                         {"depth_topic": "/cam/depth/image_raw", "ignore_mask": "/hood.png",
                          "snapshot_dir": "/var/events"})
        rviz = actions[-1]
        self.assertEqual(rviz.kwargs["executable"], "rviz2")
        self.assertEqual(rviz.kwargs["arguments"][0], "-d")
        # the source tree's file, or its installed copy where flowclas_ros is in the ament index
        view = Path(rviz.kwargs["arguments"][1])
        self.assertTrue(view.is_file(), view)
        self.assertEqual(view.parts[-2:], ("config", "anomaly.rviz"))

        # rviz2 missing (the PyPI wheels have none): a log line instead of a launch error
        with mock.patch.object(module, "_rviz2_installed", return_value=False):
            actions = run(use_rviz="true")
        kinds = [type(a).__name__ for a in actions]
        self.assertEqual(kinds, ["RegisterEventHandler", "LifecycleNode", "EmitEvent", "LogInfo"])
        self.assertIn("rviz2 is not installed", actions[-1].kwargs["msg"])

    def test_rviz_view_shows_camera_heatmap_mask_overlay(self):
        view = yaml.safe_load(RVIZ_FILE.read_text())
        displays = view["Visualization Manager"]["Displays"]
        images = [d for d in displays if d["Class"] == "rviz_default_plugins/Image"]
        self.assertEqual({d["Topic"]["Value"] for d in images},
                         {"image", "anomaly/heatmap", "anomaly/mask", "anomaly/overlay"})
        for d in images:  # best effort subscribes to reliable and best-effort publishers alike
            self.assertEqual(d["Topic"]["Reliability Policy"], "Best Effort")
        # the anomaly points (x y z score) as a point cloud coloured by score
        (cloud,) = [d for d in displays if d["Class"] == "rviz_default_plugins/PointCloud2"]
        self.assertEqual(cloud["Topic"]["Value"], "anomaly/points")
        self.assertEqual(cloud["Topic"]["Reliability Policy"], "Best Effort")
        self.assertEqual((cloud["Color Transformer"], cloud["Channel Name"]),
                         ("Intensity", "score"))

    def test_installed_files(self):
        setup_py = (ROOT / "setup.py").read_text()
        self.assertIn("anomaly_node = flowclas_ros.tools.anomaly_node:main", setup_py)
        self.assertIn('glob("launch/*.py")', setup_py)
        self.assertIn('glob("config/*.rviz")', setup_py)
        self.assertTrue((ROOT / "config" / "anomaly.yaml").is_file())


if HAVE_LAUNCH_TESTING:  # pragma: no cover - needs a ROS 2 workspace with launch installed
    import launch_testing
    import launch_testing.actions
    import launch_testing.asserts
    from launch import LaunchDescription
    from launch.actions import IncludeLaunchDescription
    from launch.launch_description_sources import PythonLaunchDescriptionSource

    NAMESPACE = f"/launch_test_{os.getpid()}"

    def _tiny_bundle() -> str:
        import atexit
        import shutil
        import tempfile

        import torch

        from flowclas_ros.export.bundle import write_bundle
        from flowclas_ros.model import BackboneConfig, FlowCLAS, FlowConfig, ModelConfig

        torch.manual_seed(0)
        model = FlowCLAS(ModelConfig(backbone=BackboneConfig(name="tiny"),
                                     flow=FlowConfig(steps=2))).eval()
        tmp = tempfile.mkdtemp(prefix="flowclas_launch_")
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)  # the test leaves nothing behind
        out = Path(tmp) / "tiny"
        write_bundle(model, out, input_size=(48, 64), threshold=0.0, score_range=(-5.0, 5.0))
        return str(out)

    MULTI = f"{NAMESPACE}_cams"  # the same file with cameras:=[front, left]

    def _include(namespace: str, **arguments: str):
        """Include the launch file with these arguments, in a group that keeps them its own."""
        from launch.actions import GroupAction

        return GroupAction([IncludeLaunchDescription(
            PythonLaunchDescriptionSource(str(LAUNCH_FILE)),
            launch_arguments={"namespace": namespace,
                              "params_file": str(ROOT / "config" / "anomaly.yaml"),
                              "model_path": _tiny_bundle(), "backend": "auto",
                              "use_rviz": "false", **arguments}.items())])

    @pytest.mark.launch_test
    def generate_test_description():
        os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        return LaunchDescription([
            _include(NAMESPACE, image_topic=f"{NAMESPACE}/camera"),
            _include(MULTI, cameras="[front, left]"),  # as typed on a command line
            launch_testing.actions.ReadyToTest()]), {}

    class TestNodeComesUpActive(unittest.TestCase):
        def setUp(self):
            import rclpy

            self.context = rclpy.Context()
            rclpy.init(context=self.context)
            self.node = rclpy.create_node("launch_test_client", context=self.context)

        def tearDown(self):
            self.node.destroy_node()
            self.context.try_shutdown()

        def wait_active(self, fqn: str) -> None:
            """Ask the node's state (retrying: discovery and configure take a while)."""
            import time

            import rclpy
            from lifecycle_msgs.srv import GetState

            cli = self.node.create_client(GetState, f"{fqn}/get_state")
            self.assertTrue(cli.wait_for_service(timeout_sec=60), f"no {fqn}/get_state")
            deadline = time.monotonic() + 120
            label = ""
            while label != "active" and time.monotonic() < deadline:
                fut = cli.call_async(GetState.Request())
                rclpy.spin_until_future_complete(self.node, fut, timeout_sec=5,
                                                 executor=self.executor())
                label = fut.result().current_state.label if fut.done() else label
            self.assertEqual(label, "active", fqn)

        def executor(self):
            from rclpy.executors import SingleThreadedExecutor

            if not hasattr(self, "_executor"):
                self._executor = SingleThreadedExecutor(context=self.context)
            return self._executor

        def serves(self, image_topic: str, heatmap_topic: str, frame_id: str) -> None:
            """Publish frames on image_topic until a heatmap with their header comes back."""
            import threading
            import time

            import numpy as np
            from rclpy.qos import QoSProfile, ReliabilityPolicy
            from sensor_msgs.msg import Image
            from std_msgs.msg import Header

            from flowclas_ros.node.image_conversion import numpy_to_msg

            got = threading.Event()
            qos = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
            self.node.create_subscription(
                Image, heatmap_topic,
                lambda m: got.set() if m.header.frame_id == frame_id else None, qos)
            pub = self.node.create_publisher(Image, image_topic, qos)
            frame = numpy_to_msg(np.zeros((48, 64, 3), np.uint8), "rgb8",
                                 Header(frame_id=frame_id))
            deadline = time.monotonic() + 60
            while not got.is_set() and time.monotonic() < deadline:
                pub.publish(frame)
                self.executor().spin_once(timeout_sec=0.5)
            self.assertTrue(got.is_set(), f"no heatmap on {heatmap_topic}")

        def test_active_and_serving(self):
            self.executor().add_node(self.node)
            self.wait_active(f"{NAMESPACE}/flowclas_anomaly")
            self.serves(f"{NAMESPACE}/camera", f"{NAMESPACE}/anomaly/heatmap", "cam")

        def test_cameras_argument_gives_each_camera_its_topics(self):
            self.executor().add_node(self.node)
            self.wait_active(f"{MULTI}/flowclas_anomaly")
            for cam in ("front", "left"):
                self.serves(f"{MULTI}/{cam}/image", f"{MULTI}/{cam}/anomaly/heatmap", cam)

    @launch_testing.post_shutdown_test()
    class TestExit(unittest.TestCase):
        def test_exit_codes(self, proc_info):
            # the node handles the SIGINT launch sends at shutdown and exits 0
            launch_testing.asserts.assertExitCodes(proc_info)

else:

    def test_launch_testing_of_the_launch_file():
        pytest.skip(SKIP_REASON)


def test_launch_test_skips_where_the_package_is_not_in_the_ament_index(tmp_path):
    """Check the skip where flowclas_ros is not in the ament index but launch_testing imports.

    With AMENT_PREFIX_PATH unset, the launch test is skipped with that reason, not collected and
    failed.
    """
    import subprocess

    for name in ("launch", "launch_ros", "launch_testing"):  # importable stand-ins
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
    env = {k: v for k, v in os.environ.items() if k != "AMENT_PREFIX_PATH"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT / "test"),
                                         env.get("PYTHONPATH", "")])
    code = ("import test_launch as t; print(t.HAVE_LAUNCH_TESTING); print(t.SKIP_REASON)")
    r = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    have, reason = r.stdout.splitlines()[:2]
    assert have == "False" and "ament index" in reason
