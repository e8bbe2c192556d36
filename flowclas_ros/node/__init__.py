"""The ROS 2 shell around the runtime backends: the only package that imports ROS.

* :mod:`.anomaly_node` - the ``flowclas_anomaly`` lifecycle node: its parameters, transitions
  and one backend (the executable is :mod:`flowclas_ros.tools.anomaly_node`);
* :mod:`.cameras` - each camera's subscription and outputs, and the data path: one mailbox slot
  per camera, every waiting frame run as one batch;
* :mod:`.backend_loading` - configure's first half: the bundle and the backend, fix-it messages;
* :mod:`.robot_outputs` - what a robot acts on, per frame after inference: the ignore mask,
  regions, persistence, detections, points, snapshots (over :mod:`flowclas_ros.outputs`), with
  :mod:`.depth_input` (depth and CameraInfo in, validated and paired), :mod:`.robot_messages`
  (Detection2DArray, PointCloud2) and :mod:`.overlay_boxes` (boxes and ids on the overlay);
* :mod:`.parameters` - the node's parameters as one table (type, default, when it may change);
* :mod:`.mailbox` - the per-camera one-slot mailbox and the inference worker thread;
* :mod:`.diagnostics` - the /diagnostics status; :mod:`.stats` - counters, rates, latencies;
* :mod:`.image_conversion` - numpy -> sensor_msgs/Image outputs, no cv_bridge (decoding input
  is :mod:`flowclas_ros.image_codec`);
* :mod:`.rclpy_workarounds` - rclpy quirks handled in one place;
* :mod:`.lifecycle_client` - bounded, retried lifecycle service calls (demo, tests);
* :mod:`.image_player` - plays a folder, video or recording as a camera.

Nothing here imports torch: a node on ONNX Runtime never loads it.
"""
