"""The ROS 2 shell around the runtime backends: the only package that imports ROS.

* :mod:`.anomaly_node` - the ``flowclas_anomaly`` lifecycle node (executable ``anomaly_node``):
  its transitions and the data path of one frame;
* :mod:`.parameters` - the node's parameters as one table (type, default, when it may change);
* :mod:`.mailbox` - the one-slot mailbox and the inference worker thread;
* :mod:`.diagnostics` - the /diagnostics status; :mod:`.stats` - counters, rates, latencies;
* :mod:`.image_conversion` - sensor_msgs/Image <-> numpy, validated, no cv_bridge;
* :mod:`.image_player` - plays a folder or video as Images; :mod:`.bench_node` - end-to-end
  latency over DDS against the backend's own.

Submodules are imported lazily so ``import flowclas_ros.node.image_conversion`` does not pull
in the backends, and the node module does not import torch until a bundle is configured.
"""
