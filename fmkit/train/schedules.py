"""Learning-rate schedules as TorchEasyRec defines them, and the callback that applies them.

:func:`learning_rate` is the rate of one step (or epoch) from a schedule message of
:mod:`fmkit.models.deepfm.config` and the optimizer's base rate; :class:`LearningRateSchedule`
sets it on an optimizer's parameter groups before every step, so the learner's step stays
unaware of schedules (the engine's callbacks own everything around a step).

``t`` counts the steps taken before the one about to run (or, ``by_epoch``, the epochs
completed), from 0:

* constant: ``base``;
* exponential decay: a linear warm-up from ``warmup_learning_rate`` to ``base`` over
  ``warmup_size``, then ``max(base * decay_factor ** p, min_learning_rate)`` with
  ``p = (t - warmup_size) / decay_size``, floored when ``staircase``;
* manual step: ``base`` until ``t`` passes ``schedule_sizes[0]``, then
  ``learning_rates[i]`` once ``t`` passes ``schedule_sizes[i]``; with ``warmup`` the first
  interval ramps linearly from ``base`` to ``learning_rates[0]``;
* cosine annealing: a warm-up as above, then
  ``min + (base - min) * (1 + cos(pi * min(t - warmup, T_max) / T_max)) / 2``;
* cosine annealing with warm restarts: a warm-up as above, then the same curve over periods
  of ``T_0``, ``T_0 * T_mult``, ``T_0 * T_mult**2``... steps, each starting again at ``base``
  (``T_cur`` steps into a period of ``T_i``: ``cos(pi * T_cur / T_i)``). The period is found
  in integers, so a restart falls exactly on its step (TorchEasyRec's and PyTorch's
  logarithm may place it one step late).
"""

from __future__ import annotations

import bisect
import math
from typing import Any

from fmkit.models.deepfm.config import (
    CosineAnnealing,
    CosineAnnealingWarmRestarts,
    ExponentialDecay,
    ManualStep,
    schedule_of,
)
from fmkit.train.engine import Callback, Run


def learning_rate(schedule: Any, base: float, t: int) -> float:
    """The learning rate after ``t`` steps (or epochs) under ``schedule`` (None: constant)."""
    if t < getattr(schedule, "warmup_size", 0):  # (the schedules with a linear warm-up)
        start = schedule.warmup_learning_rate
        return start + (base - start) * t / schedule.warmup_size
    if isinstance(schedule, ExponentialDecay):
        p = (t - schedule.warmup_size) / schedule.decay_size
        if schedule.staircase:
            p = math.floor(p)
        return max(base * schedule.decay_factor ** p, schedule.min_learning_rate)
    if isinstance(schedule, CosineAnnealing):
        done = min(t - schedule.warmup_size, schedule.T_max)
        low = schedule.min_learning_rate
        return low + (base - low) * 0.5 * (1 + math.cos(math.pi * done / schedule.T_max))
    if isinstance(schedule, CosineAnnealingWarmRestarts):
        done, period = t - schedule.warmup_size, schedule.T_0
        if schedule.T_mult == 1:
            done %= period
        while done >= period:  # (periods grow by T_mult >= 2: a few turns)
            done, period = done - period, period * schedule.T_mult
        low = schedule.min_learning_rate
        return low + (base - low) * 0.5 * (1 + math.cos(math.pi * done / period))
    if isinstance(schedule, ManualStep):
        index = bisect.bisect_left(schedule.schedule_sizes, t)
        if index > 0:
            return schedule.learning_rates[index - 1]
        if schedule.warmup:
            return base + (schedule.learning_rates[0] - base) * t / schedule.schedule_sizes[0]
    return base


def schedules_of(optimizers: list[Any], messages: list[Any]) -> LearningRateSchedule | None:
    """The callback for optimizers configured by ``SparseOptimizer``/``DenseOptimizer``
    messages (None when every rate is constant)."""
    entries = []
    for optimizer, message in zip(optimizers, messages):
        schedule = schedule_of(message)
        if schedule is not None:
            base = getattr(message, next(n for n in message.ONEOF if getattr(message, n))).lr
            entries.append((optimizer, schedule, base))
    return LearningRateSchedule(entries) if entries else None


class LearningRateSchedule(Callback):
    """Sets each optimizer's learning rate before every step from its schedule: a list of
    (optimizer, schedule, base rate); a constant rate needs no entry."""

    name = "learning_rate_schedule"

    def __init__(self, schedules: list[tuple[Any, Any, float]]):
        self.schedules = schedules

    def _apply(self, run: Run) -> None:
        for optimizer, schedule, base in self.schedules:
            t = run.epoch - 1 if schedule.by_epoch else run.learner.steps
            rate = learning_rate(schedule, base, t)
            for group in optimizer.param_groups:
                group["lr"] = 0.0 if base == 0 else rate  # a zero base stays frozen

    def before_epoch(self, run: Run) -> None:
        self._apply(run)

    def after_step(self, run: Run) -> bool:
        self._apply(run)
        return False
