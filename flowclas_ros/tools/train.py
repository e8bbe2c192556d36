"""``train`` console script: ``train --config FILE [key=value ...] [--resume] [--out DIR]``.

``--bag PATH --topic NAME`` trains on a robot's recording (rosbag2 or MCAP): its frames of that
topic, split by time (flowclas_ros.data.bags), are the inliers.

Also ``ros2 run flowclas_ros train ...`` and, for several GPUs (or CPU processes with gloo),
``torchrun --nproc_per_node=N -m flowclas_ros.tools.train --config FILE``.

``--config`` takes a path, or the name of a config shipped in the package's config/ folder
(``train_demo_lite2_camvid``). Overrides use dotted keys parsed as YAML: ``train.lr=1e-4``
``model.flow.steps=4`` ``data.image_size=[180,240]``; an unknown key or a wrongly typed value is
an error that names the key. Output (default runs/<config name>-<objective>): config.yaml,
checkpoints/last.pt, checkpoints/best.pt, log.csv, tb/, summary.json. ``--resume`` continues
from checkpoints/last.pt, or from step 0 a run stopped before its first checkpoint (the part of
the feature cache it built is kept).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

from ..training.config import ConfigError, load_config
from .common import resolve_config, setup_logging, strip_ros_args


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train",
                                description="Train a FlowCLAS anomaly segmentation model.")
    p.add_argument("--config", required=True,
                   help="YAML config file, or the name of a shipped one")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides with dotted keys, "
                        "e.g. train.lr=1e-4 train.objective=nll")
    p.add_argument("--out", default=None, help="output folder (overrides the config's 'out')")
    p.add_argument("--bag", default=None, help="train on a recording: a rosbag2 folder or an "
                   ".mcap file (data.dataset=bag, data.root=BAG; "
                   "no validation unless eval.* is set)")
    p.add_argument("--topic", default=None, help="the bag's camera topic (data.bag.topic)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in OUT exactly where it stopped: from "
                        "checkpoints/last.pt, or from step 0 if it stopped before that")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in an OUT that holds a run")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = strip_ros_args(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_intermixed_args(argv)
    setup_logging()
    try:
        overrides = []
        if args.bag:
            # The road protocol and the CamVid validation set say nothing about a robot's own
            # domain; its held-out frames are for export --calibration-bag. An explicit
            # eval.* override below turns validation back on.
            overrides += ["data.dataset=bag", f"data.root={args.bag}", "data.split=train",
                          "eval.protocol=null", "eval.val_dir=null"]
        if args.topic:
            overrides.append(f"data.bag.topic={args.topic}")
        overrides += list(args.overrides) + (["train.progress=false"] if args.quiet else [])
        cfg = load_config(resolve_config(args.config), overrides)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 2

    from tqdm.contrib.logging import logging_redirect_tqdm

    from ..training.distributed import cleanup_distributed, setup_distributed
    from ..training.trainer import train

    dist = setup_distributed(cfg.train.device)
    ok = False
    try:
        with logging_redirect_tqdm():
            train(cfg, out=args.out, resume=args.resume, overwrite=args.overwrite, dist=dist)
        ok = True
    except (ConfigError, FileExistsError, FileNotFoundError) as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 2
    finally:
        cleanup_distributed(dist, ok)
    if dist.initialized:
        # A worker of a multi-process job ends without the interpreter's teardown: there gloo's
        # C++ state now and then aborted a finished worker ("terminate called without an active
        # exception", no Python frame left; 3 of 112 two-process runs of test_distributed beside
        # two busy loops here), and torchrun failed a job whose files were all written.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
