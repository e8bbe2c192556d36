"""The ROS 2 shell around the runtime backends: the only package that imports ROS.

* :mod:`.image_conversion` - sensor_msgs/Image <-> numpy, validated, no cv_bridge.
* :mod:`.stats` - rates and latency percentiles for the diagnostics.
* :mod:`.anomaly_node` - the ``flowclas_anomaly`` lifecycle node (executable ``anomaly_node``).
* :mod:`.bench_node` - end-to-end latency over DDS vs the backend's own latency.

Submodules are imported lazily so ``import flowclas_ros.node.image_conversion`` does not pull
in the backends, and the node module does not import torch until a bundle is configured.
"""
