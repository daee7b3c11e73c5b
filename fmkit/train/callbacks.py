"""What happens around the training steps, written once for every learner (see
:mod:`fmkit.train.engine`): progress and the epoch log, validation with early stopping, and
checkpoints — as LightGBM's ``callback.py`` and xgboost's ``EarlyStopping`` /
``TrainingCheckPoint`` do it."""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np

from fmkit.errors import DataError
from fmkit.logs import DEFAULT_HOST, log, log_metrics
from fmkit.models.metrics import watched_metric
from fmkit.train.checkpoint import (
    Checkpointer,
    channel_size,
    check_resumable,
    check_same_data,
)
from fmkit.train.engine import Callback, EpochStats, Run


class Progress(Callback):
    """A bar on a terminal (rows, rows/s, running loss); elsewhere a log line every
    ``interval`` seconds. Both show the epoch's total and an ETA: from the second epoch on
    the first's row count; in a first epoch the source's guess, from how far reading has come
    through its files (``estimated_rows()``; none for rows in memory, pipes and Parquet).
    After each epoch its log line and SageMaker's ``#progress_metric``
    and ``#throughput_metric`` lines. Only the primary process reports. ``show``: True/False
    forces the bar on/off, None shows it when stderr is a terminal."""

    name = "progress"
    LOG_EVERY = 30.0  # seconds between log lines (without a terminal), unless ``interval``
    ESTIMATE_EVERY = 1.0  # seconds between the bar's guesses of a first epoch's size

    def __init__(self, show: bool | None = None, host: str = DEFAULT_HOST,
                 interval: float | None = None):
        self.show = sys.stderr.isatty() if show is None else show
        self.host = host
        self.interval = self.LOG_EVERY if interval is None else interval
        self.bar: Any = None
        self.shown = 0
        self.last = self.estimated = 0.0
        self.total: int | None = None
        self.exact = False

    def _where(self, run: Run) -> str:
        return f"epoch {run.epoch}" + (f"/{run.epochs}" if run.epochs else "")

    def before_epoch(self, run: Run) -> None:
        if not run.learner.primary:
            return
        self.shown, self.last = run.rows, time.monotonic()
        self.started, self.total = (self.last, self.shown), (run.history[-1].rows
                                                             if run.history else None)
        self.exact = self.total is not None
        if self.show:
            from tqdm import tqdm

            self.bar = tqdm(desc=self._where(run), unit=" rows", unit_scale=True,
                            file=sys.stderr, initial=run.rows, total=self.total)

    def after_step(self, run: Run) -> None:
        if run.stopped and run.learner.primary:
            log.warning("%s: %s: training stops after %d rows of the epoch (step %d); the "
                        "model trained so far is written", self._where(run), run.stopped,
                        run.rows, run.learner.steps)
        if self.bar is not None:
            if not self.exact and time.monotonic() - self.estimated >= self.ESTIMATE_EVERY:
                self.estimated = time.monotonic()
                self.bar.total = self._estimate(run)
            self.bar.update(run.rows - self.shown)
            self.shown = run.rows
            self.bar.set_postfix(loss=f"{run.loss_sum / run.rows:.5f}", refresh=False)
        elif run.learner.primary and time.monotonic() - self.last >= self.interval:
            self.last = time.monotonic()
            rate = (run.rows - self.started[1]) / max(self.last - self.started[0], 1e-9)
            total = self.total if self.exact else self._estimate(run)
            of = f" of {'' if self.exact else 'about '}{total}" if total else ""
            eta = (f", ETA {max(total - run.rows, 0) / max(rate, 1e-9):.0f} s" if total else "")
            log.info("%s: %d%s rows (%.0f rows/s%s), running train loss %.6f",
                     self._where(run), run.rows, of, rate, eta, run.loss_sum / run.rows)

    def _estimate(self, run: Run) -> int | None:
        """A first epoch's rows as the source guesses them (the last guess while it has
        none: between files, or when reading is done; times the processes that read a shard
        each), never fewer than the rows trained."""
        estimated_rows = getattr(run.source, "estimated_rows", None)
        guess = estimated_rows() if estimated_rows else None
        if guess:
            self.total = guess * getattr(run.learner, "processes", 1)
        return max(self.total, run.rows) if self.total else None

    def after_epoch(self, run: Run, stats: EpochStats) -> bool:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if run.learner.primary:
            log.info("%s: train loss %.6f over %d rows (%.0f rows/s)", self._where(run),
                     stats.loss, stats.rows, stats.rows_per_second)
            if run.epochs:
                log.info("#progress_metric: host=%s, completed %d %% of epochs", self.host,
                         round(100 * stats.epoch / run.epochs))
            log.info("#throughput_metric: host=%s, train throughput=%.1f records/second",
                     self.host, stats.rows_per_second)
        return False


class EarlyStopping(Callback):
    """Scores ``validation`` after every epoch (SageMaker's ``#quality_metric: host=...,
    epoch=N, validation ...`` lines) and, with ``every_steps``, also after the step that
    passes each multiple of it (on the compiled kernels: at the end of the data chunk holding
    it); keeps the best measurement's weights by ``metric`` (an ``early_stopping_metric``
    name) and puts them back when training ends, and stops after ``patience`` measurements
    without improvement (0: never). The first measurement is the best so far; later ones must
    be strictly better. ``keep_best=False`` measures (and stops) without keeping weights: for
    a learner whose last weights are its best estimate (Gibbs sampling's mean of samples)."""

    name = "early_stopping"

    def __init__(self, validation: Any, metric: str, predictor_type: str, patience: int,
                 host: str = DEFAULT_HOST, every_steps: int = 0, keep_best: bool = True):
        self.validation, self.host, self.every_steps = validation, host, every_steps
        self.key, self.higher_is_better = watched_metric(metric, predictor_type)
        self.patience, self.keep_best = patience, keep_best
        self.best_value: float | None = None
        self.best_epoch = self.best_step = self.worse = self.measured_step = 0
        self.best_weights: dict[str, np.ndarray] = {}
        self.checks: list[dict[str, float]] = []

    def after_step(self, run: Run) -> bool:
        step, every = run.learner.steps, self.every_steps
        if not every or step // every == self.measured_step // every:
            return False
        metrics = self._measure(run)
        self.checks.append({"step": step, **metrics})
        return self._stop(run.epoch)

    def after_epoch(self, run: Run, stats: EpochStats) -> bool:
        if self.checks and self.measured_step == run.learner.steps:  # after_step judged it
            stats.validation = {k: v for k, v in self.checks.pop().items() if k != "step"}
            stop = False
        else:
            stats.validation = self._measure(run)
            stop = self._stop(run.epoch)
        stats.checks, self.checks = self.checks, []
        return stop

    def _measure(self, run: Run) -> dict[str, float]:
        """The validation metrics now; the weights kept when they are the best so far."""
        self.measured_step = run.learner.steps
        metrics = run.learner.evaluate(self.validation)
        if run.learner.primary:
            log_metrics("validation", metrics, self.host, run.epoch)
        value = metrics[self.key]
        if value is None or not np.isfinite(value):  # AUC of one class: nothing to compare
            raise DataError(str(getattr(self.validation, "name", "validation")), None,
                            f"{self.key} is undefined on these validation rows (one class "
                            f"only): early stopping cannot watch it; give rows of both "
                            f"classes, or watch another metric (early_stopping_metric)")
        if self.best_value is None or (value > self.best_value if self.higher_is_better
                                       else value < self.best_value):
            self.best_value, self.best_epoch, self.best_step = value, run.epoch, run.learner.steps
            self.best_weights, self.worse = {}, 0  # (the last best's copy freed first)
            if self.keep_best:
                self.best_weights = run.learner.weights()
        else:
            self.worse += 1
        return metrics

    def _stop(self, epoch: int) -> bool:
        if not self.patience or self.worse < self.patience:
            return False
        log.info("early stopping after epoch %d, step %d: the best validation %s was at "
                 "epoch %d, step %d", epoch, self.measured_step, self.key, self.best_epoch,
                 self.best_step)
        return True

    def after_fit(self, run: Run) -> None:
        if self.best_weights:
            run.learner.set_weights(self.best_weights)

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        return self.best_weights, {"best_value": self.best_value, "best_epoch": self.best_epoch,
                                   "best_step": self.best_step, "worse": self.worse,
                                   "measured_step": self.measured_step, "checks": self.checks}

    def restore(self, arrays: dict[str, np.ndarray], extra: dict) -> None:
        self.best_weights = dict(arrays)
        for name in ("best_value", "best_epoch", "best_step", "worse", "measured_step",
                     "checks"):
            setattr(self, name, extra.get(name, getattr(self, name)))


class Checkpoint(Callback):
    """Saves the run (learner, callbacks, place in the data) when ``checkpoints`` says it is
    due, and at a step the run stops after on request (SIGTERM), from the primary process;
    with ``resume``, continues from its newest checkpoint, which must have been taken with the
    same ``run_id`` (the hyperparameters) on the same training files (their count and size:
    the run skips the chunks already trained)."""

    name = "checkpoint"

    def __init__(self, checkpoints: Checkpointer, run_id: dict, resume: bool = False):
        self.checkpoints, self.run_id, self.resume = checkpoints, run_id, resume
        self.data: dict[str, int] | None = None

    def before_fit(self, run: Run) -> None:
        self.data = channel_size(run.source)
        state = self.checkpoints.latest() if self.resume else None
        if state is not None:
            check_resumable(state, self.run_id, self.checkpoints.directory)
            check_same_data(state.extra.get(self.name, {}).get("data"), self.data,
                            self.checkpoints.directory)
            run.restore(state)
            log.info("resuming from %s: epoch %d, step %d", self.checkpoints.directory,
                     state.epoch, state.step)
        elif self.resume and run.learner.primary:  # (a first run of a command that always
            # says --resume, or a mistyped directory: either way the user should know)
            log.warning("--resume: %s holds no complete checkpoint; training from the start",
                        self.checkpoints.directory)

    def after_step(self, run: Run) -> None:
        if run.learner.primary and (run.stopped or self.checkpoints.due(run.learner.steps)):
            self.checkpoints.save(run.training_state(self.run_id))

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        return {}, ({"data": self.data} if self.data else {})
