"""The ROS 2 shell around the runtime backends: the only package that imports ROS.

* :mod:`.anomaly_node` - the ``flowclas_anomaly`` lifecycle node: its transitions and the data
  path of one frame (the executable is :mod:`flowclas_ros.tools.anomaly_node`);
* :mod:`.parameters` - the node's parameters as one table (type, default, when it may change);
* :mod:`.mailbox` - the one-slot mailbox and the inference worker thread;
* :mod:`.diagnostics` - the /diagnostics status; :mod:`.stats` - counters, rates, latencies;
* :mod:`.image_conversion` - numpy -> sensor_msgs/Image outputs, no cv_bridge (decoding input
  is :mod:`flowclas_ros.image_codec`);
* :mod:`.rclpy_workarounds` - rclpy quirks handled in one place;
* :mod:`.lifecycle_client` - bounded, retried lifecycle service calls (demo, tests);
* :mod:`.image_player` - plays a folder, video or recording as a camera.

Nothing here imports torch: a node on ONNX Runtime never loads it.
"""
