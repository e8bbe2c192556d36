"""Anomalies a robot can act on (no ROS, no torch): what the node makes of a heatmap and a mask.

* :mod:`.regions` - connected anomalous regions: boxes in input pixels, size, peak score and a
  calibrated score (the exceedance of the calibration set's normal pixels);
* :mod:`.persistence` - n-of-m persistence with stable ids;
* :mod:`.pairing` - each camera frame's nearest depth frame (ApproximateTime for two streams);
* :mod:`.depth` - depth images and CameraInfo, validated; back-projection of pixels to points;
* :mod:`.pointcloud` - points as PointCloud2 content;
* :mod:`.ignore_mask` - pixels never reported (loading, resizing, and finding them in a
  recording: ``python -m flowclas_ros.tools.ignore_mask``);
* :mod:`.snapshots` (with :mod:`.snapshot_messages`) - the seconds around each event as an MCAP
  file, written off the caller's thread;
* :mod:`.resize` - the nearest-neighbour rule they share.

Layer 2: imports numpy, scipy, PIL, rosbags (lazily, in the snapshot writer) and only the
layer-0 modules of the package.
"""
