"""The run's logs on rank 0: ``log.csv`` and TensorBoard (``tb/``), one row per log interval.

Training rows average the steps since the previous row; validation rows hold the metrics of one
pass. On resume the CSV keeps only the rows up to the resumed step and TensorBoard purges the
later events, so a killed and resumed run logs like one that never stopped.
"""
from __future__ import annotations

import csv
import logging
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger("flowclas_ros.training")

CSV_FIELDS = ("kind", "step", "epoch", "lr", "loss", "nll", "con", "grad_norm", "img_per_s",
              "elapsed_s", "auprc", "fpr95", "auroc", "score")
AVERAGED = ("loss", "nll", "con", "grad_norm")
TB_SCALARS = ("lr", "loss", "nll", "con", "grad_norm", "img_per_s", "auprc", "fpr95", "auroc",
              "score")


class RunLog:
    """CSV + TensorBoard writers for ``out`` (``resume_step``: the step the run resumed at)."""

    def __init__(self, out: Path, resume_step: int | None, images_per_step: int):
        out.mkdir(parents=True, exist_ok=True)
        path = out / "log.csv"
        rows = []
        if resume_step is not None and path.is_file():
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        self._file = path.open("w", newline="")
        self._csv = csv.DictWriter(self._file, fieldnames=CSV_FIELDS)
        self._csv.writeheader()
        self._csv.writerows(rows)
        self._file.flush()
        self._tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(out / "tb"), purge_step=resume_step)
        except ImportError:  # tensorboard is optional at run time
            logger.info("tensorboard is not installed: no TensorBoard logs")
        self.images_per_step = images_per_step
        self._sums: dict[str, float] = {}
        self._n = 0
        self._t0 = time.perf_counter()

    def add_step(self, out: dict[str, float]) -> None:
        """Accumulate one step's losses for the next training row."""
        for k in AVERAGED:
            self._sums[k] = self._sums.get(k, 0.0) + out[k]
        self._n += 1

    def train_row(self, step: int, epoch: int, lr: float, elapsed_s: float) -> None:
        """Write the averages since the last row, then start a new interval."""
        dt = time.perf_counter() - self._t0
        self._write({"kind": "train", "step": step, "epoch": epoch, "lr": lr,
                     **{k: v / max(self._n, 1) for k, v in self._sums.items()},
                     "img_per_s": self.images_per_step * self._n / max(dt, 1e-9),
                     "elapsed_s": elapsed_s})
        self._sums, self._n, self._t0 = {}, 0, time.perf_counter()

    def val_row(self, step: int, epoch: int, metrics: dict[str, float]) -> None:
        self._write({"kind": "val", "step": step, "epoch": epoch, **metrics})

    def _write(self, row: dict[str, Any]) -> None:
        self._csv.writerow({k: row.get(k, "") for k in CSV_FIELDS})
        self._file.flush()
        if self._tb is not None:
            prefix = "val" if row["kind"] == "val" else "train"
            for k in TB_SCALARS:
                if row.get(k, "") != "":
                    self._tb.add_scalar(f"{prefix}/{k}", row[k], row["step"])
            self._tb.flush()

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


__all__ = ["CSV_FIELDS", "RunLog"]
