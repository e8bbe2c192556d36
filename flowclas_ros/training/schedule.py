"""One-cycle learning-rate schedule, stepped once per optimiser step.

factor(s) for step s of T with W warm-up steps:
* s < W:       linear from ``start_factor`` to 1 (reaching 1 at s = W);
* W <= s <= T: cosine from 1 down to ``final_factor``;
* s > T:       ``final_factor``.
The learning rate of every parameter group is its base lr times factor(s). ``constant`` is the
same schedule with the factor held at 1 (no warm-up, no decay).
"""
from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

SCHEDULES = ("one_cycle", "constant")  # one_cycle: warm-up + cosine, the authors'


def one_cycle_factor(step: int, total_steps: int, warmup_steps: int,
                     start_factor: float = 0.01, final_factor: float = 0.01) -> float:
    if warmup_steps > 0 and step < warmup_steps:
        return start_factor + (1.0 - start_factor) * step / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    t = min(max(step - warmup_steps, 0) / span, 1.0)
    return final_factor + (1.0 - final_factor) * 0.5 * (1.0 + math.cos(math.pi * t))


class OneCycleSchedule(LRScheduler):
    """Linear warm-up then cosine decay; its state_dict holds only numbers (weights_only safe)."""

    def __init__(self, optimizer: Optimizer, total_steps: int, warmup_steps: int,
                 start_factor: float = 0.01, final_factor: float = 0.01, last_epoch: int = -1):
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.total_steps = int(total_steps)
        self.warmup_steps = int(min(max(warmup_steps, 0), total_steps))
        self.start_factor = float(start_factor)
        self.final_factor = float(final_factor)
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int | None = None) -> float:
        return one_cycle_factor(self.last_epoch if step is None else step, self.total_steps,
                                self.warmup_steps, self.start_factor, self.final_factor)

    def get_lr(self) -> list[float]:
        f = self.factor()
        return [base * f for base in self.base_lrs]


def warmup_steps_for(total_steps: int, warmup_fraction: float) -> int:
    return int(round(total_steps * warmup_fraction))


def build_schedule(optimizer: Optimizer, schedule: str, total_steps: int, warmup_fraction: float,
                   start_factor: float, final_factor: float) -> OneCycleSchedule:
    """Build the :data:`SCHEDULES` entry ``schedule`` over ``total_steps`` optimiser steps."""
    if schedule == "constant":
        return OneCycleSchedule(optimizer, total_steps, 0, 1.0, 1.0)
    if schedule != "one_cycle":
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    return OneCycleSchedule(optimizer, total_steps, warmup_steps_for(total_steps, warmup_fraction),
                            start_factor, final_factor)


__all__ = ["SCHEDULES", "OneCycleSchedule", "build_schedule", "one_cycle_factor",
           "warmup_steps_for"]
