"""flowclas_ros: FlowCLAS normalizing-flow anomaly segmentation, with a ROS 2 node.

Only ``flowclas_ros.node`` imports ROS; the model, training, evaluation, export and runtime
packages are plain Python + PyTorch.
"""

__version__ = "0.1.0"
