"""Start the FlowCLAS anomaly node and bring it to active (optionally with rviz2).

    ros2 launch flowclas_ros anomaly.launch.py image_topic:=/camera/image_raw use_rviz:=true
    ros2 launch flowclas_ros anomaly.launch.py cameras:=[front,left,right]

The lifecycle node is configured as soon as it starts and activated the first time it reaches
``inactive``. If configure fails (the log line says what to fix), the node stays unconfigured:
fix the parameter (``ros2 param set``) and run ``ros2 lifecycle set <node> configure``; launch
then activates it. Only that first ``inactive`` is activated: after a later ``deactivate`` /
``cleanup`` / ``configure`` the node stays where ``ros2 lifecycle set`` leaves it.

Arguments: namespace, image_topic, params_file, model_path, backend, cameras, depth_topic,
ignore_mask, snapshot_dir, use_rviz, dds_profile. ``cameras:=[front,left,right]`` serves those
cameras from the one node, batched (``<namespace>/<c>/image`` in, ``<namespace>/<c>/anomaly/*``
out; their per-camera overrides go in the parameters file, ``camera_overrides.<c>.*``); empty
keeps the parameters file's ``cameras`` (``[]``: the single ``image`` input, which
``image_topic`` remaps). ``model_path``, ``backend``, ``depth_topic`` (an aligned
depth image: anomaly/points), ``ignore_mask`` (a PNG of pixels never reported) and
``snapshot_dir`` (anomaly snapshots) left empty keep the value of the parameters file.
``use_rviz:=true`` where rviz2 is not installed logs that and starts the node alone.
``dds_profile`` (default: the shipped config/fastdds_large_frames.xml; empty: Fast DDS's
defaults) is given to the processes this file starts as FASTRTPS_DEFAULT_PROFILES_FILE:
camera-sized best-effort frames need it on the *sending* side too, so start the camera driver
with the same variable (README, "Large images and QoS").
"""
import os

from launch import LaunchDescription
from launch.actions import (
    DeclareLaunchArgument,
    EmitEvent,
    LogInfo,
    OpaqueFunction,
    RegisterEventHandler,
)
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from lifecycle_msgs.msg import Transition

PACKAGE = "flowclas_ros"
PROFILE_ENV = "FASTRTPS_DEFAULT_PROFILES_FILE"  # read by Fast DDS 2.x (rmw_fastrtps, Jazzy)


def _share_dir() -> str:
    """Return the installed share/flowclas_ros, or the source tree when run from a checkout."""
    try:
        from ament_index_python.packages import get_package_share_directory

        return get_package_share_directory(PACKAGE)
    except Exception:  # not installed with colcon: use the files beside this launch file
        return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rviz2_installed() -> bool:
    """Whether the rviz2 package is in the ament index (it is not in the PyPI ROS 2 wheels)."""
    try:
        from ament_index_python.packages import get_package_share_directory

        get_package_share_directory("rviz2")
        return True
    except Exception:  # PackageNotFoundError, or no ament_index_python at all
        return False


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def _camera_list(value: str) -> list[str]:
    """Parse ``[front,left,right]`` (or ``front,left,right``) into names; '' gives []."""
    names = value.strip().strip("[]")
    return [n.strip().strip("'\"") for n in names.split(",") if n.strip().strip("'\"")]


def _launch_setup(context, *args, **kwargs):
    """Resolve the arguments, then build the node, its lifecycle events and rviz2."""
    namespace = LaunchConfiguration("namespace").perform(context)
    image_topic = LaunchConfiguration("image_topic").perform(context)
    params_file = LaunchConfiguration("params_file").perform(context)
    model_path = LaunchConfiguration("model_path").perform(context)
    backend = LaunchConfiguration("backend").perform(context)
    cameras = _camera_list(LaunchConfiguration("cameras").perform(context))
    optional = {name: LaunchConfiguration(name).perform(context)
                for name in ("depth_topic", "ignore_mask", "snapshot_dir")}
    use_rviz = _truthy(LaunchConfiguration("use_rviz").perform(context))
    dds_profile = LaunchConfiguration("dds_profile").perform(context)
    env = {PROFILE_ENV: dds_profile} if dds_profile else {}

    parameters = [params_file] if params_file else []
    overrides = {}
    if model_path:  # empty: keep the parameters file's value
        overrides["model_path"] = model_path
    if backend:
        overrides["backend"] = backend
    if cameras:  # structural: read at the configure below
        overrides["cameras"] = cameras
    overrides.update({name: value for name, value in optional.items() if value})
    if overrides:
        parameters.append(overrides)  # later entries win over the file

    anomaly = LifecycleNode(
        package=PACKAGE,
        executable="anomaly_node",
        name="flowclas_anomaly",
        namespace=namespace,
        parameters=parameters,
        remappings=[("image", image_topic)],
        additional_env=env,
        output="screen",
    )
    # inactive -> activate (registered before the node starts, so the event cannot be missed).
    # Once only: a later manual cleanup/configure is not activated behind the user's back.
    activate_when_inactive = RegisterEventHandler(OnStateTransition(
        target_lifecycle_node=anomaly,
        start_state="configuring",
        goal_state="inactive",
        handle_once=True,
        entities=[
            LogInfo(msg="flowclas_anomaly is inactive: activating"),
            EmitEvent(event=ChangeState(
                lifecycle_node_matcher=matches_action(anomaly),
                transition_id=Transition.TRANSITION_ACTIVATE)),
        ],
    ))
    configure_at_start = EmitEvent(event=ChangeState(
        lifecycle_node_matcher=matches_action(anomaly),
        transition_id=Transition.TRANSITION_CONFIGURE))
    actions = [activate_when_inactive, anomaly, configure_at_start]

    if use_rviz and not _rviz2_installed():
        # Without this check launch raises "package 'rviz2' not found" and takes the node down.
        actions.append(LogInfo(
            msg="use_rviz:=true but rviz2 is not installed (no 'rviz2' in AMENT_PREFIX_PATH): "
                "starting flowclas_anomaly without it; install rviz2 (apt install "
                "ros-jazzy-rviz2) or view the anomaly/* topics elsewhere"))
    elif use_rviz:
        # The .rviz file names topics relative to rviz2's namespace (the node's), and its camera
        # display reads "image", remapped here like the node's input.
        actions.append(Node(
            package="rviz2",
            executable="rviz2",
            name="flowclas_rviz",
            namespace=namespace,
            arguments=["-d", os.path.join(_share_dir(), "config", "anomaly.rviz")],
            remappings=[("image", image_topic)],
            additional_env=env,
            output="screen",
        ))
    return actions


def generate_launch_description() -> LaunchDescription:
    share = _share_dir()
    return LaunchDescription([
        DeclareLaunchArgument(
            "namespace", default_value="",
            description="Namespace of the node; outputs are <namespace>/anomaly/{heatmap,mask,"
                        "overlay}"),
        DeclareLaunchArgument(
            "image_topic", default_value="image",
            description="Camera topic (sensor_msgs/Image) remapped onto the node's 'image' "
                        "input, e.g. /camera/image_raw"),
        DeclareLaunchArgument(
            "params_file", default_value=os.path.join(share, "config", "anomaly.yaml"),
            description="Parameters file for flowclas_anomaly"),
        DeclareLaunchArgument(
            "model_path", default_value="",
            description="Model bundle folder; empty keeps the parameters file's model_path"),
        DeclareLaunchArgument(
            "backend", default_value="",
            description="auto | torch | onnxruntime | tensorrt; empty keeps the parameters "
                        "file's backend"),
        DeclareLaunchArgument(
            "cameras", default_value="",
            description="Cameras served by the one node, batched, e.g. [front,left,right]: "
                        "<c>/image in, <c>/anomaly/* out; empty keeps the parameters file's "
                        "cameras ([] = the single 'image' input)"),
        DeclareLaunchArgument(
            "depth_topic", default_value="",
            description="Aligned depth image (16UC1 mm / 32FC1 m, registered to the camera) "
                        "whose anomalous pixels go to anomaly/points, e.g. "
                        "/camera/aligned_depth_to_color/image_raw; empty keeps the parameters "
                        "file's depth_topic"),
        DeclareLaunchArgument(
            "ignore_mask", default_value="",
            description="PNG of pixels never reported (non-zero = ignore: the robot's body, a "
                        "hood); empty keeps the parameters file's ignore_mask"),
        DeclareLaunchArgument(
            "snapshot_dir", default_value="",
            description="Folder for anomaly snapshots (one MCAP per event); empty keeps the "
                        "parameters file's snapshot_dir"),
        DeclareLaunchArgument(
            "use_rviz", default_value="false",
            description="Start rviz2 with config/anomaly.rviz (camera, heatmap, mask, overlay, "
                        "anomaly points)"),
        DeclareLaunchArgument(
            "dds_profile", default_value=os.path.join(share, "config", "fastdds_large_frames.xml"),
            description="Fast DDS profile for the started processes (large shared-memory "
                        "segment for camera-sized frames); empty: Fast DDS defaults"),
        OpaqueFunction(function=_launch_setup),
    ])
