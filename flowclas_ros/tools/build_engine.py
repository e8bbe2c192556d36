"""``build_engine``: fill the engine cache offline, so a robot never builds on boot.

    ros2 run flowclas_ros build_engine --bundle DIR [--backend tensorrt|torch_tensorrt]
        [--precision fp32|fp16] [--device cuda:0] [--cache-dir DIR]

Creates the backend once, as the node's configure would: a TensorRT engine (or a torch-tensorrt
program) for this GPU, TensorRT version, precision, input size and graph is built and stored,
or found already built. Prints JSON: what was built or found, where, and how long it took. Run
it on the robot itself (engines are specific to the GPU and the TensorRT version), as the user
the node runs as, or with the same ``--cache-dir`` / $FLOWCLAS_CACHE.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Sequence

from flowclas_ros.paths import CACHE_ENV
from flowclas_ros.runtime import BackendUnavailable, create_backend

from .common import setup_logging, strip_ros_args


def main(argv: Sequence[str] | None = None) -> int:
    argv = strip_ros_args(list(sys.argv[1:] if argv is None else argv))
    p = argparse.ArgumentParser(prog="build_engine", description=__doc__.split("\n\n")[0]
                                .replace("``", ""))
    p.add_argument("--bundle", required=True, help="bundle folder written by export")
    p.add_argument("--backend", default="tensorrt", choices=("tensorrt", "torch_tensorrt"))
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    p.add_argument("--device", default="cuda", help="cuda or cuda:N")
    p.add_argument("--cache-dir", help="cache folder (default $FLOWCLAS_CACHE/<backend> or "
                                       "~/.cache/flowclas_ros/<backend>)")
    args = p.parse_args(argv)
    setup_logging("%(levelname)s %(name)s: %(message)s")

    option = {"tensorrt": "engine_cache_dir", "torch_tensorrt": "cache_dir"}[args.backend]
    options = {option: args.cache_dir} if args.cache_dir else {}
    t0 = time.perf_counter()
    try:
        be = create_backend(args.bundle, backend=args.backend, device=args.device,
                            precision=args.precision, **options)
    except (BackendUnavailable, FileNotFoundError, ValueError) as exc:
        print(f"build_engine: error: {exc}", file=sys.stderr)
        return 2
    try:
        d = be.describe()
        h, w = be.bundle.input_size
        be.warmup(h, w)
    finally:
        be.close()
    print(json.dumps({**d, "seconds": round(time.perf_counter() - t0, 1),
                      "cache_env": os.environ.get(CACHE_ENV)}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
