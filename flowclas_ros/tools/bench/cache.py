"""How much the frozen-feature cache saves: training steps with and without it.

    python -m flowclas_ros.tools.bench.cache --config FILE [key=value ...] [--steps 20]
        [--json OUT.json] [--cache-dir DIR]

Builds the cache for the config in a fresh folder (timed; ``--cache-dir`` reuses a cache there
and reports the build time recorded in its meta.json), times
``--steps`` training steps reading it, then the same number of steps that paste and run the
backbone on every batch, and projects both onto the config's full schedule:

    total_cached = cache build + steps * step_s_cached
    total_online = steps * step_s_online

Nothing is written to the run's output folder (checkpoints and logs go to a temporary folder).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from flowclas_ros.training.config import ConfigError, load_config

from ..common import resolve_config


def _step_time(trainer, steps: int) -> float:
    """Seconds per step of the training loop (data, features, step) after one warm-up step."""
    trainer.fit(stop_after=1)
    trainer.fit(stop_after=steps)
    return trainer.timing["train_s"] / trainer.timing["steps"]


def bench(config: str | Path, overrides: Sequence[str] = (), steps: int = 20,
          cache_dir: str | None = None) -> dict:
    from flowclas_ros.training.trainer import Trainer

    overrides = list(overrides) + ["train.progress=false", "eval.val_dir=null"]
    with tempfile.TemporaryDirectory(prefix="flowclas_bench_") as tmp:
        cdir = cache_dir or str(Path(tmp) / "cache")
        cached = Trainer(load_config(config,
                                     overrides + ["cache.enabled=true", f"cache.dir={cdir}"]),
                         out=Path(tmp) / "cached", overwrite=True)
        t0 = time.perf_counter()
        cached.prepare_cache()
        build_s = time.perf_counter() - t0
        built = cached.cache_built
        if not built:  # reused (--cache-dir): report the time its build took, from its meta.json
            build_s = float(cached.cache.meta.get("build_seconds", build_s))
        step_cached = _step_time(cached, steps)
        cache_bytes = cached.cache.nbytes()

        online = Trainer(load_config(config, overrides + ["cache.enabled=false"]),
                         out=Path(tmp) / "online", overwrite=True)
        step_online = _step_time(online, steps)

    total = cached.total_steps
    spe = cached.steps_per_epoch
    result = {
        "config": str(config), "overrides": list(overrides),
        "objective": cached.cfg.train.objective,
        "device": str(cached.device), "steps_timed": steps,
        "steps_per_epoch": spe, "total_steps": total,
        "cache_variants": cached.cfg.cache.variants, "cache_images": len(cached.pairs),
        "cache_built": built, "cache_build_s": build_s,
        "cache_bytes": cache_bytes,
        "step_s_cached": step_cached, "step_s_online": step_online,
        "epoch_s_cached": spe * step_cached, "epoch_s_online": spe * step_online,
        "epoch_speedup": step_online / step_cached,
        "total_s_cached": build_s + total * step_cached,
        "total_s_online": total * step_online,
    }
    result["total_speedup"] = result["total_s_online"] / result["total_s_cached"]
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flowclas_ros.tools.bench.cache",
                                description="Time training with and without the feature cache.")
    p.add_argument("--config", required=True)
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--steps", type=int, default=20, help="timed steps per mode (default 20)")
    p.add_argument("--cache-dir", default=None,
                   help="reuse/keep the cache here (default: a temporary folder, built fresh)")
    p.add_argument("--json", default=None, help="also write the result to this file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        r = bench(resolve_config(args.config), args.overrides, args.steps, args.cache_dir)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"bench_cache: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(r, indent=1))
    print(f"\nper step: {r['step_s_cached']:.3f} s cached vs {r['step_s_online']:.3f} s online "
          f"({r['epoch_speedup']:.1f}x); full schedule ({r['total_steps']} steps): "
          f"{r['total_s_cached'] / 60:.1f} min with the cache (build {r['cache_build_s']:.0f} s) "
          f"vs {r['total_s_online'] / 60:.1f} min without ({r['total_speedup']:.1f}x)")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
