"""The training loop itself (:mod:`fmkit.train.engine` and its callbacks), on a learner written
here in plain Python: a running mean of the labels, one step per row. What it must do is easy
to compute by hand: which rows each epoch sees, in which order, where a resumed run picks up,
which weights early stopping keeps, what progress says without a terminal."""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass

import numpy as np
import pytest

from fmkit.errors import DataError, TrainingDiverged
from fmkit.logs import log
from fmkit.train import interruption
from fmkit.train.callbacks import Checkpoint, EarlyStopping, Progress
from fmkit.train.checkpoint import Checkpointer
from fmkit.train.engine import Callback, fit


@dataclass
class Rows:
    name: str
    values: list[float]

    def blocks(self):
        yield from self.values


class MeanLearner:
    """w moves toward each row's value: w += (x - w) / (steps + 1); loss (x - w)^2."""

    primary = True
    diverged_hint = "Lower the mean's step"

    def __init__(self, shuffle: bool = True):
        self.w, self.steps, self.shuffle, self.seen = 0.0, 0, shuffle, []

    def batches(self, source, rng):
        values = list(source.blocks())
        order = rng.permutation(len(values)) if self.shuffle else range(len(values))
        return (values[i] for i in order)

    def step(self, x):
        loss = (x - self.w) ** 2
        self.w += (x - self.w) / (self.steps + 1)
        self.steps += 1
        self.seen.append(x)
        return loss, 1

    def state(self):
        return {"w": np.array([self.w])}, {"seen": self.seen}

    def restore(self, arrays, extra):
        self.w, self.seen = float(arrays["w"][0]), list(extra["seen"])

    def weights(self):
        return {"w": np.array([self.w])}

    def set_weights(self, weights):
        self.w = float(weights["w"][0])

    def evaluate(self, target):
        return {"rmse": abs(self.w - target), "mse": (self.w - target) ** 2}


def test_every_epoch_sees_every_row_in_an_order_seeded_by_the_epoch():
    source = Rows("r", [1.0, 2.0, 3.0, 4.0, 5.0])
    learner = MeanLearner()
    history = fit(learner, source, epochs=3, seed=7)
    assert [h.rows for h in history] == [5, 5, 5] and learner.steps == 15
    for epoch in range(3):
        order = np.random.default_rng([7, epoch + 1]).permutation(5)
        assert learner.seen[5 * epoch: 5 * epoch + 5] == [source.values[i] for i in order]
    assert learner.w == pytest.approx(3.0)  # the mean of every row seen
    assert all(h.rows_per_second > 0 and h.seconds > 0 for h in history)


def test_max_steps_stops_inside_an_epoch_and_first_epoch_continues_numbering():
    learner = MeanLearner(shuffle=False)
    history = fit(learner, Rows("r", [1.0, 2.0, 3.0]), epochs=None, seed=0, max_steps=7)
    assert learner.steps == 7 and [h.rows for h in history] == [3, 3, 1]
    history = fit(MeanLearner(), Rows("r", [1.0]), epochs=4, seed=0, first_epoch=3)
    assert [h.epoch for h in history] == [3, 4]


def test_no_rows_and_a_non_finite_loss_are_errors():
    with pytest.raises(DataError, match="empty: holds no data rows"):
        fit(MeanLearner(), Rows("empty", []), epochs=1, seed=0)
    with pytest.raises(TrainingDiverged, match="epoch 1: .* written. Lower the mean's step$"):
        fit(MeanLearner(), Rows("r", [1.0, float("inf")]), epochs=1, seed=0)


class StopAfter(Callback):
    """Kills the run (as SIGKILL would) after ``steps`` steps."""

    def __init__(self, steps: int):
        self.steps = steps

    def after_step(self, run):
        if run.learner.steps == self.steps:
            raise KeyboardInterrupt


def test_a_resumed_run_equals_an_uninterrupted_one_early_stopping_included(tmp_path):
    """Early stopping's best weights and epoch are part of the checkpoint: the resumed run
    keeps the same best epoch and restores the same weights."""
    source = Rows("r", [float(v) for v in range(10)])

    def run(*extra, resume=False):
        learner = MeanLearner()
        stopper = EarlyStopping(4.5, "rmse", "regressor", patience=0)
        fit(learner, source, epochs=4, seed=1, callbacks=[stopper, *extra])
        return learner, stopper

    straight, straight_stopper = run()
    saver = Checkpointer(tmp_path / "c", every_steps=3)
    with pytest.raises(KeyboardInterrupt):
        run(Checkpoint(saver, {"seed": 1}), StopAfter(25))
    assert saver.latest().step == 24
    resumed, resumed_stopper = run(Checkpoint(saver, {"seed": 1}, resume=True))
    assert resumed.seen == straight.seen and resumed.w == straight.w
    assert resumed_stopper.best_epoch == straight_stopper.best_epoch
    # the weights kept are those of the epoch whose |w - 4.5| was smallest
    best = min(range(1, 5), key=lambda e: abs(np.mean(straight.seen[: 10 * e]) - 4.5))
    assert straight_stopper.best_epoch == best
    assert straight.w == pytest.approx(np.mean(straight.seen[: 10 * best]))


class SignalAt(Callback):
    """Requests a stop, as the SIGTERM handler does, when the run reaches ``steps`` steps
    (after the callbacks of that step: the loop sees it after the next one)."""

    def __init__(self, steps: int):
        self.steps = steps

    def after_step(self, run):
        if run.learner.steps == self.steps:
            interruption.request("SIGTERM")


def test_a_stop_request_ends_the_run_after_the_next_step_with_a_checkpoint_there(tmp_path):
    """A request ends the epoch (and the run) after the step in progress; the checkpoint taken
    there resumes to the uninterrupted run, which no request touches."""
    source = Rows("r", [float(v) for v in range(10)])
    straight = MeanLearner()
    fit(straight, source, epochs=3, seed=2)
    saver = Checkpointer(tmp_path / "c", every_steps=100)  # never due: only the stop's
    stopped = MeanLearner()
    with interruption.stop_on(signal.SIGTERM):
        history = fit(stopped, source, epochs=3, seed=2,
                      callbacks=[Checkpoint(saver, {"seed": 2}), SignalAt(13)])
        assert interruption.requested() == "SIGTERM"
    assert interruption.requested() is None  # the block's end clears it
    assert stopped.steps == 14 and [h.rows for h in history] == [10, 4]
    assert stopped.seen == straight.seen[:14] and saver.latest().step == 14
    resumed = MeanLearner()
    fit(resumed, source, epochs=3, seed=2, callbacks=[Checkpoint(saver, {"seed": 2}, True)])
    assert resumed.seen == straight.seen and resumed.w == straight.w


def test_early_stopping_stops_after_patience_epochs_without_improvement():
    learner = MeanLearner(shuffle=False)
    stopper = EarlyStopping(1.0, "rmse", "regressor", patience=2)
    history = fit(learner, Rows("r", [1.0, 1.0, 5.0]), epochs=20, seed=0, callbacks=[stopper])
    # w after epoch e is the mean of e copies of [1, 1, 5]: 7/3 always, so epoch 1 stays best
    assert [h.epoch for h in history] == [1, 2, 3] and stopper.best_epoch == 1
    assert [h.validation["rmse"] for h in history] == pytest.approx([4 / 3] * 3)


def test_early_stopping_holds_one_copy_of_the_best_weights_at_a_time():
    """(A new best's copy was made while the last one was still held: a DeepFM's tables twice
    over beside the model, 190 MB more peak memory on a 177 MB model.)"""
    import gc
    import weakref

    class Counting(MeanLearner):
        copies: list = []

        def step(self, x):  # (w grows every epoch: every epoch is a new best toward 100)
            self.w, self.steps = self.w + x, self.steps + 1
            return 0.0, 1

        def weights(self):
            gc.collect()
            alive = sum(ref() is not None for ref in self.copies)
            weights = super().weights()
            self.copies.append(weakref.ref(weights["w"]))
            self.alive_at_copy.append(alive)
            return weights

    learner = Counting(shuffle=False)
    learner.alive_at_copy = []
    stopper = EarlyStopping(100.0, "rmse", "regressor", patience=0)
    fit(learner, Rows("r", [1.0, 3.0, 8.0]), epochs=4, seed=0, callbacks=[stopper])
    assert stopper.best_epoch == 4 and learner.alive_at_copy == [0, 0, 0, 0]


def test_early_stopping_refuses_a_metric_it_cannot_compare():
    """(An AUC on rows of one class is NaN: no later epoch was 'better', so training stopped
    after `patience` epochs and kept the first epoch's weights, without a word.)"""
    with pytest.raises(DataError, match="rmse is undefined on these validation rows"):
        fit(MeanLearner(), Rows("r", [1.0, 2.0]), epochs=5, seed=0,
            callbacks=[EarlyStopping(float("nan"), "rmse", "regressor", patience=2)])


def test_progress_logs_lines_without_a_terminal(caplog):
    caplog.set_level(logging.INFO, logger=log.name)
    log.propagate = True
    try:
        fit(MeanLearner(shuffle=False), Rows("r", [1.0, 2.0]), epochs=2, seed=0,
            callbacks=[Progress(show=False, interval=0.0)])
    finally:
        log.propagate = False
    lines = [r.getMessage() for r in caplog.records]
    first, second = (next(line for line in lines if line.startswith(f"epoch {e}/2: 1 {of}rows"))
                     for e, of in ((1, ""), (2, "of 2 ")))
    assert first.endswith("rows/s), running train loss 1.000000")  # size not known yet
    assert "rows/s, ETA " in second  # the first epoch told the size
    assert any(line.startswith("epoch 2/2: train loss") for line in lines)
    assert "#progress_metric: host=algo-1, completed 100 % of epochs" in lines


@dataclass
class GuessingRows(Rows):
    """Rows whose reader guesses the pass's total (as a file's does from the bytes read)."""

    guess: int | None = None

    def estimated_rows(self):
        return self.guess


def test_progress_shows_a_first_epochs_guessed_total_and_later_the_counted_one(caplog):
    """Default SageMaker jobs train one epoch: its lines show the source's guess of the rows
    ("of about"), never fewer than the rows trained, and later epochs the first one's count."""
    caplog.set_level(logging.INFO, logger=log.name)  # (pytest's handler on it)
    fit(MeanLearner(shuffle=False), GuessingRows("r", [1.0, 2.0, 3.0, 4.0], guess=10),
        epochs=2, seed=0, callbacks=[Progress(show=False, interval=0.0)])
    fit(MeanLearner(shuffle=False), GuessingRows("r", [1.0, 2.0, 3.0], guess=2),
        epochs=1, seed=0, callbacks=[Progress(show=False, interval=0.0)])
    lines = [r.getMessage() for r in caplog.records if "running train loss" in r.getMessage()]
    assert [line.split(" (")[0] for line in lines] == [
        "epoch 1/2: 1 of about 10 rows", "epoch 1/2: 2 of about 10 rows",
        "epoch 1/2: 3 of about 10 rows", "epoch 1/2: 4 of about 10 rows",
        "epoch 2/2: 1 of 4 rows", "epoch 2/2: 2 of 4 rows", "epoch 2/2: 3 of 4 rows",
        "epoch 2/2: 4 of 4 rows",
        "epoch 1/1: 1 of about 2 rows", "epoch 1/1: 2 of about 2 rows",
        "epoch 1/1: 3 of about 3 rows"]
    assert all(", ETA " in line for line in lines)


def test_validation_every_n_steps_measures_between_epoch_ends_and_keeps_the_best_step():
    """Rows 0..9 in file order, target 2.0: w after step s is the mean of the first s rows
    seen, so every measurement (steps 4, 8, 10 = epoch end, 12, ...) is computed by hand."""
    values = [float(v) for v in range(10)]
    learner = MeanLearner(shuffle=False)
    stopper = EarlyStopping(2.0, "rmse", "regressor", patience=2, every_steps=4)
    history = fit(learner, Rows("r", values), epochs=5, seed=0, callbacks=[stopper])

    def mean_after(step):
        return np.mean((values * 5)[:step])

    steps = [4, 8, 10, 12]  # the mean moves away from 2 after step 5: best at step 4
    assert [c["step"] for c in history[0].checks] == [4, 8]
    assert [c["rmse"] for c in history[0].checks] == pytest.approx(
        [abs(mean_after(s) - 2.0) for s in steps[:2]])
    assert history[0].validation["rmse"] == pytest.approx(abs(mean_after(10) - 2.0))
    # patience 2: steps 8 and 10 are worse than 4 → stop at the epoch end after step 10
    assert len(history) == 1 and learner.steps == 10
    assert (stopper.best_epoch, stopper.best_step) == (1, 4)
    assert learner.w == pytest.approx(mean_after(4))  # the best step's weights were put back


def test_validation_every_n_steps_can_stop_inside_an_epoch():
    values = [0.0] * 3 + [9.0] * 17  # best at step 3 (w = 0 = target), worse from then on
    learner = MeanLearner(shuffle=False)
    stopper = EarlyStopping(0.0, "rmse", "regressor", patience=2, every_steps=3)
    history = fit(learner, Rows("r", values), epochs=3, seed=0, callbacks=[stopper])
    assert learner.steps == 9 and [h.rows for h in history] == [9]  # measured at 3, 6, 9
    assert [c["step"] for c in history[0].checks] == [3, 6]
    assert learner.w == 0.0 and stopper.best_step == 3


def test_processes_agree_on_the_signal_that_stopped_them():
    """The sum a step's all-reduce carries names the signal when every process that had one
    had the same (a process stopped by the others' signal reports it, not a vague reason)."""
    numbers = [interruption.as_number(r) for r in ("SIGTERM", None, "SIGTERM")]
    assert numbers == [int(signal.SIGTERM), 0, int(signal.SIGTERM)]
    assert interruption.from_numbers(2, sum(numbers)) == "SIGTERM"
    assert interruption.from_numbers(0, 0) is None
    mixed = interruption.as_number("SIGTERM") + interruption.as_number("SIGINT")
    assert interruption.from_numbers(2, mixed) == "a stop asked of another process"
    assert interruption.from_numbers(1, interruption.as_number("tests")) == (
        "a stop asked of another process")
