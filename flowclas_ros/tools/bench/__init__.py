"""The benchmarks: each prints its numbers (the README quotes them; no test asserts them).

Run each as a module (``--help`` lists its options):

* ``python -m flowclas_ros.tools.bench.model [--configs dinov2_vitl14 lite0] [--iters 3]`` -
  parameter counts and the torch eager forward time of model configurations;
* ``python -m flowclas_ros.tools.bench.backends --config lite0 | --bundle DIR [DIR ...]
  [--backends torch onnxruntime] [--sizes 640x480 1036x518]`` - warm latency p50/p99 and
  throughput of the backends, interleaved (several bundles: their ratio), as JSON;
* ``python -m flowclas_ros.tools.bench.node [--bundle DIR] [--frames 100]`` - the node end to
  end over DDS against the backend's own latency, the cost of decoding compressed frames, and
  (:mod:`.robot_path`) today's path against detections + persistence + points in the same run;
  ``--node-process``: the node in its own process (:mod:`.node_process`); ``--null-backend
  MS``: the ROS plumbing alone, around a backend that computes nothing (:mod:`.null_backend`);
* ``python -m flowclas_ros.tools.bench.persistence [--repeat 3 --noise 4]`` - how many
  single-frame regions reach ``anomaly/detections`` with persistence off and on, on a replay;
* ``python -m flowclas_ros.tools.bench.outputs`` - the per-frame cost of the outputs library
  (regions, persistence, back-projection, packing, snapshot buffering);
* ``python -m flowclas_ros.tools.bench.transport [--sizes 640x480 1280x720 1920x1080]
  [--rate 30] [--frames 60]`` - how many best-effort camera frames arrive over DDS, with and
  without the shipped Fast DDS profile on each side;
* ``python -m flowclas_ros.tools.bench.cache --config FILE [key=value ...] [--steps 20]`` -
  training steps with and without the frozen-feature cache, projected onto the schedule;
* ``python -m flowclas_ros.tools.bench.metrics [--frames 60] [--height 720] [--width 1280]`` -
  time and peak memory of exact vs streaming pixel metrics.

:mod:`.common` holds what they share: the machine description, timing loops, percentile
summaries. The one-command GPU check (``make gpu-check``) is :mod:`flowclas_ros.tools.gpu_check`.
"""
