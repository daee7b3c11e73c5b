"""The training loop, written once for every model, device and process count.

:func:`fit` owns the epochs, the data order, and the place in the data a checkpoint records; a
*learner* (:class:`Learner`: FM on the compiled kernels, FM on a PyTorch device, DeepFM) owns
only its step and its state; everything around the steps — progress, the epoch log, validation
and early stopping, checkpoints and resuming — is a :class:`Callback` (as LightGBM's
``engine.train`` and xgboost's ``TrainingCallback`` do it). Several processes are a learner
that wraps another (:class:`fmkit.distributed.data_parallel.DataParallel`), not branches in
this loop.

Each epoch's data order comes from a generator seeded by ``(seed, epoch)``, so a resumed run
replays the epoch it stopped in (reading and skipping the steps already trained) without saving
generator states.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from fmkit.errors import DataError, TrainingDiverged
from fmkit.train import interruption
from fmkit.train.checkpoint import TrainingState


@dataclass
class EpochStats:
    """One epoch of the history ``metrics.json`` keeps under ``train``."""

    epoch: int
    loss: float  # mean training loss of the epoch's rows, each taken before its update
    rows: int
    seconds: float
    rows_per_second: float = 0.0
    steps: int = 0  # optimizer steps taken by the epoch's end (counted over the whole run)
    validation: dict[str, float] | None = None  # the validation channel's metrics
    # validation measured within the epoch (every validation_every_steps): step and metrics
    checks: list[dict[str, float]] = field(default_factory=list)

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> EpochStats:
        """An epoch of a checkpoint's history; fields of older versions are left out."""
        return cls(**{name: saved[name] for name in cls.__dataclass_fields__ if name in saved})


@dataclass
class Gradient:
    """One step's gradient on one process, summed (not yet averaged) over its rows: what a
    learner hands :class:`fmkit.distributed.data_parallel.DataParallel` to combine across
    processes."""

    rows: int
    loss: float
    dense: np.ndarray  # parameters every row touches (flat)
    sparse: list[tuple[Any, Any, int]]  # per table: (row ids, their gradient rows, table rows)
    weight: float = 0.0  # the rows' summed sample weights, the mean's divisor (0: rows)


class Source(Protocol):
    """Rows in blocks, read again every epoch. A source whose rows differ per epoch (negatives
    drawn anew: :class:`fmkit.data.pairs.SampledPairs`) also has ``for_epoch(epoch)``, the
    source of that epoch's rows (:func:`epoch_rows`); one read from files may have
    ``estimated_rows()``, its guess of the pass in progress (a first epoch's progress)."""

    name: str

    def blocks(self) -> Iterator[Any]: ...


def epoch_rows(source: Source, epoch: int) -> Source:
    """What ``epoch`` trains on: ``source``, or its ``for_epoch(epoch)`` when it has one."""
    for_epoch = getattr(source, "for_epoch", None)
    return source if for_epoch is None else for_epoch(epoch)


class Learner(Protocol):
    """What :func:`fit` trains. ``step`` takes one unit of ``batches`` (a mini-batch, or for the
    compiled FM kernels a whole chunk of them: one compiled call) and returns its summed loss
    and rows; a step over no rows ends the epoch. ``state``/``restore`` are what a checkpoint
    keeps (weights, optimizer state: arrays and JSON); ``weights``/``set_weights`` copy the
    weights alone (the best epoch's, for early stopping). A learner that can be combined
    across processes also has ``mini_batches(source, size, rng)``, ``gradient(batch)`` and
    ``apply(gradient)``. A learner may define ``stop_request()``, what the loop asks after each
    step (a process group's answer, agreed by all); else it asks
    :func:`fmkit.train.interruption.requested`. One that trains on several processes' shards
    says how many as ``processes``. One whose model is written with other weights than the
    ones it steps (a dense average) defines ``finish()``, which puts them in place when the
    steps end, before the callbacks' ``after_fit`` (early stopping's best weights come from
    ``weights``, already in that form)."""

    primary: bool  # this process logs and writes (replicas on other processes do not)
    steps: int  # optimizer steps so far
    diverged_hint: str  # what to change when the loss is not finite, in the model's terms

    def batches(self, source: Source, rng: np.random.Generator) -> Iterator[Any]: ...

    def step(self, unit: Any) -> tuple[float, int]: ...

    def state(self) -> tuple[dict[str, np.ndarray], dict]: ...

    def restore(self, arrays: dict[str, np.ndarray], extra: dict) -> None: ...

    def weights(self) -> dict[str, np.ndarray]: ...

    def set_weights(self, weights: dict[str, np.ndarray]) -> None: ...

    def evaluate(self, source: Any) -> dict[str, float]: ...


@dataclass
class Run:
    """Where a :func:`fit` is: what callbacks read (and what a checkpoint records)."""

    learner: Learner
    source: Source
    epochs: int | None  # None: until max_steps
    callbacks: list[Callback]
    epoch: int = 1  # the epoch in progress
    units: int = 0  # steps of ``learner.batches`` done in this epoch
    rows: int = 0  # rows done in this epoch
    loss_sum: float = 0.0
    history: list[EpochStats] = field(default_factory=list)
    stopped: str | None = None  # why the run ends after this step (a signal's name), if asked

    def training_state(self, run_id: dict) -> TrainingState:
        """The learner's and the callbacks' state at this point, for a checkpoint."""
        arrays, extra = {}, {}
        for name, part in [("learner", self.learner), *((c.name, c) for c in self.callbacks)]:
            part_arrays, extra[name] = part.state()
            arrays.update({f"{name}/{key}": value for key, value in part_arrays.items()})
        return TrainingState(self.learner.steps, self.epoch, self.units, self.rows,
                             self.loss_sum, [vars(h) for h in self.history], run_id, arrays,
                             extra)

    def restore(self, state: TrainingState) -> None:
        """Continue from a checkpoint taken by :meth:`training_state`."""
        for name, part in [("learner", self.learner), *((c.name, c) for c in self.callbacks)]:
            prefix = f"{name}/"
            part.restore({key.removeprefix(prefix): value for key, value in state.arrays.items()
                          if key.startswith(prefix)}, state.extra.get(name, {}))
        self.learner.steps = state.step
        self.epoch, self.units, self.rows, self.loss_sum = (state.epoch, state.chunks_done,
                                                            state.rows, state.loss_sum)
        self.history = [EpochStats.from_dict(h) for h in state.history]


class Callback:
    """A hook around the steps; every method is optional. ``after_step`` and ``after_epoch``
    return True to stop training (after a step: the epoch ends there, as the last one);
    ``state``/``restore`` are what a checkpoint keeps of the callback."""

    name = "callback"

    def before_fit(self, run: Run) -> None: ...

    def before_epoch(self, run: Run) -> None: ...

    def after_step(self, run: Run) -> bool:
        return False

    def after_epoch(self, run: Run, stats: EpochStats) -> bool:
        return False

    def after_fit(self, run: Run) -> None: ...

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        return {}, {}

    def restore(self, arrays: dict[str, np.ndarray], extra: dict) -> None: ...


def fit(learner: Learner, source: Source, *, epochs: int | None, seed: int,
        callbacks: Sequence[Callback] = (), max_steps: int = 0,
        first_epoch: int = 1) -> list[EpochStats]:
    """Train ``learner`` on ``source`` from epoch ``first_epoch`` (> 1: continuing a model
    trained that far, with the data order that run would have had) to ``epochs`` (None: until
    ``max_steps`` optimizer steps; 0: no step limit); returns the per-epoch history."""
    run = Run(learner, source, epochs, list(callbacks), first_epoch)
    stop_request = getattr(learner, "stop_request", interruption.requested)
    for callback in run.callbacks:
        callback.before_fit(run)  # a checkpoint callback may resume: run.epoch, run.units...
    first, stop = run.epoch, False
    for epoch in range(first, (epochs or sys.maxsize) + 1):
        skip = run.units if epoch == first else 0
        if not skip:
            run.units, run.rows, run.loss_sum = 0, 0, 0.0
        run.epoch, started = epoch, time.perf_counter()
        units = learner.batches(epoch_rows(source, epoch), np.random.default_rng([seed, epoch]))
        for _ in range(skip):  # trained before the checkpoint this run resumed from
            next(units, None)
        for callback in run.callbacks:
            callback.before_epoch(run)
        for unit in units:
            loss, rows = learner.step(unit)
            if rows == 0:
                break
            if not math.isfinite(loss):
                raise TrainingDiverged(epoch, f"the loss of step {learner.steps}",
                                       learner.diverged_hint)
            run.units, run.rows, run.loss_sum = run.units + 1, run.rows + rows, run.loss_sum + loss
            run.stopped = stop_request()  # (before the callbacks: a checkpoint is taken here)
            stop = any([callback.after_step(run) for callback in run.callbacks]) or bool(
                run.stopped)
            if stop or (max_steps and learner.steps >= max_steps):
                break
        if run.rows == 0:
            raise DataError(source.name, None, "holds no data rows")
        seconds = time.perf_counter() - started
        stats = EpochStats(epoch, run.loss_sum / run.rows, run.rows, seconds,
                           run.rows / max(seconds, 1e-9), learner.steps)
        run.history.append(stats)
        stop = any([callback.after_epoch(run, stats) for callback in run.callbacks]) or stop
        if stop or (max_steps and learner.steps >= max_steps):
            break
    finish = getattr(learner, "finish", None)
    if finish is not None:
        finish()
    for callback in run.callbacks:
        callback.after_fit(run)
    return run.history
