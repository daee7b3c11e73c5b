"""A learner and the user's options made into one run of the engine: the callbacks (progress,
early stopping, checkpoints), the process group (:func:`fmkit.distributed.data_parallel.parallel`)
and :func:`fmkit.train.engine.fit`. FM (:func:`train`, for files and the estimators alike) and
DeepFM (:mod:`fmkit.jobs.deepfm`) train through :func:`run`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fmkit.data.sources import LabelOrderWatched, UnitRows, held_if_small
from fmkit.distributed import all_sum
from fmkit.distributed.data_parallel import parallel
from fmkit.errors import DataError
from fmkit.logs import DEFAULT_HOST, advice, log, log_metrics
from fmkit.models import artifact
from fmkit.models.fm.hyperparameters import MCMC, SWEEPS
from fmkit.models.fm.parameters import LABEL_ROWS, FMParameters, starting_point
from fmkit.models.metrics import binary_entropy
from fmkit.train import interruption
from fmkit.train.callbacks import Checkpoint, EarlyStopping, Progress
from fmkit.train.checkpoint import Checkpointer
from fmkit.train.engine import Callback, EpochStats, Learner, Source, fit
from fmkit.train.kernel_learner import fm_learner


def run(learner: Learner, source: Source, *, batch_size: int, epochs: int | None, seed: int,
        max_steps: int | None = None, trained_epochs: int = 0, progress: bool | None = None,
        host: str = DEFAULT_HOST, early_stopping: EarlyStopping | None = None,
        checkpoints: Checkpointer | None = None, run_id: dict | None = None,
        resume: bool = False, callbacks: Sequence[Callback] = ()) -> list[EpochStats]:
    """Train ``learner`` on ``source`` for ``epochs`` more epochs (numbered after
    ``trained_epochs``) or ``max_steps`` steps; in a process group every process trains a
    replica. ``progress``: True/False forces the bar on/off, None shows it only on a terminal.
    ``checkpoints`` saves the state periodically; ``resume`` continues from the newest
    checkpoint, whose ``run_id`` (what defines the run) must match. ``callbacks`` run after
    these (an epoch's validation metrics are measured when they see it)."""
    hooks: list[Callback] = [Progress(progress, host)]
    if early_stopping is not None:
        hooks.append(early_stopping)
    if checkpoints is not None:
        hooks.append(Checkpoint(checkpoints, run_id or {}, resume))
    return fit(parallel(learner, batch_size), source,
               epochs=trained_epochs + epochs if epochs else None, seed=seed,
               callbacks=[*hooks, *callbacks], max_steps=max_steps,
               first_epoch=trained_epochs + 1)


def training_source(hp: dict[str, Any], source: Source) -> Source:
    """What an FM with ``hp`` trains on: ``source``, its rows scaled to unit length with
    ``instance_norm`` (scoring scales them in :meth:`FMModel.logits`, validation included),
    held in memory after the first epoch when the channel is small
    (:func:`~fmkit.data.sources.held_if_small`), watched for rows ordered by label
    (:class:`~fmkit.data.sources.LabelOrder`)."""
    return LabelOrderWatched(held_if_small(UnitRows(source) if hp["instance_norm"] else source,
                                           hp["epochs"]))


def with_starting_point(hp: dict[str, Any], source: Source) -> dict[str, Any]:
    """``hp`` with its ``auto`` init methods made concrete for training on ``source``
    (:func:`fmkit.models.fm.parameters.starting_point`)."""
    return _with_start(hp, source)[0]


def _with_start(hp: dict[str, Any], source: Source
                ) -> tuple[dict[str, Any], tuple[float, float] | None]:
    """:func:`with_starting_point`, and the labels' mean and variance it measured (None: none)."""
    moments = _label_moments(source) if hp["bias_init_method"] == "auto" else None
    return starting_point(hp, None if moments is None else moments[0]), moments


def _label_moments(source: Source) -> tuple[float, float] | None:
    """The mean label and the labels' variance (weighted by the rows' sample weights, if any)
    of the first :data:`LABEL_ROWS` rows of ``source`` (of each process's share, combined):
    the mean is what the ``auto`` bias starts from. A fixed number of rows, so the start does
    not depend on how the reader cut its blocks; enough for a start, the optimizer does the
    rest. None for a source read once (SageMaker's Pipe mode): the bias starts at 0."""
    if not getattr(source, "rereadable", True):
        return None
    parts, weights, rows = [], [], 0
    for block in source.blocks():
        parts.append(np.asarray(block.labels[: LABEL_ROWS - rows], dtype=np.float64))
        weights.append(np.ones(parts[-1].size) if block.weights is None else
                       np.asarray(block.weights[: parts[-1].size], dtype=np.float64))
        rows += parts[-1].size
        if rows >= LABEL_ROWS:
            break
    labels = np.concatenate(parts) if parts else np.zeros(0)
    weight = np.concatenate(weights) if weights else np.zeros(0)
    finite = np.isfinite(labels)
    labels, weight = labels[finite], weight[finite]
    total, squares, count = all_sum(np.array([(labels * weight).sum(),
                                              (labels * labels * weight).sum(), weight.sum()]))
    if not count:
        return None
    mean = total / count
    return float(mean), float(max(squares / count - mean * mean, 0.0))


# A model whose last epoch's training loss is this share or more of what the labels' mean
# alone scores (a regressor: their variance; a classifier: the log loss of always predicting
# the positive rate, CTR work's "normalized entropy") has learned little beyond it: said, with
# what to try (the shares measured on models that did and did not learn: docs/quality.md,
# "Session 64").
LITTLE_LEARNED = {"regressor": 0.9, "binary_classifier": 0.95}


def _say_if_only_the_mean(history: Sequence[EpochStats], moments: tuple[float, float] | None,
                          hp: dict[str, Any]) -> None:
    """Warn when the training loss stayed near what predicting the labels' mean scores:
    labels spread far wider than the learning rates can reach in the steps taken (a price in
    the 100,000s with SageMaker's rate 0.001 trains only the bias's start), or a classifier
    given too few steps (SageMaker's defaults on a9a: one epoch of 33 steps, every score
    below 0.5), look like a model that works."""
    if not moments or not history or hp.get("optimizer") in SWEEPS:  # (no rates to raise)
        return
    mean, variance = moments
    loss, kind = history[-1].loss, hp["predictor_type"]
    baseline = variance if kind == "regressor" else binary_entropy(mean)
    if baseline is None:
        return
    share = loss / baseline if baseline else 0.0
    if share < LITTLE_LEARNED.get(kind, np.inf):
        return
    if kind == "regressor":
        what = (f"the regressor learned little beyond the labels' mean: its training mean "
                f"squared error {loss:.4g} is {share:.0%} of their variance {variance:.4g} "
                f"(standard deviation {variance ** 0.5:.4g})")
        also = ", as may labels scaled to a spread near 1"
    else:
        what = (f"the classifier learned little beyond the positive rate {mean:.4g}: its "
                f"training log loss {loss:.4g} is {share:.0%} of that rate's own "
                f"{baseline:.4g}, so its scores stay near the rate and few rows, if any, get "
                f"the minority label")
        also = ""
    steps = history[-1].steps
    advice.warning("%s, after %d optimizer step%s. Larger learning rates (bias_lr, linear_lr, "
                   "factors_lr: %g, %g, %g) or more epochs may help (fmkit tune searches "
                   "them)%s", what, steps, "s"[steps == 1:], hp["bias_lr"], hp["linear_lr"],
                   hp["factors_lr"], also)


def keeps_last(hp: Mapping[str, Any]) -> bool:
    """Whether a run of ``hp`` keeps its last weights, not its best measurement's: Gibbs
    sampling not stopped early, whose model is the mean of all its samples (a better estimate
    with every sweep; the sweep validation likes best is the noise of its rows)."""
    return hp["optimizer"] == MCMC and not hp["early_stopping_patience"]


def train(hp: dict[str, Any], source: Source, params: FMParameters | None = None, *,
          validation: Source | None = None, progress: bool | None = None,
          host: str = DEFAULT_HOST, dtype=np.float32, checkpoints: Checkpointer | None = None,
          resume: bool = False, device: Any = "cpu", trained_epochs: int = 0,
          callbacks: Sequence[Callback] = ()) -> tuple[FMParameters, list[EpochStats]]:
    """Train an FM with validated hyperparameters ``hp`` on ``source``; return weights and history.

    ``params`` continues from given weights (a fresh optimizer state is used) that were
    trained ``trained_epochs`` epochs: this run trains ``epochs`` more, numbered after them,
    each with the data order it has in one longer run. ``device``: ``cpu`` trains on the
    compiled kernels, any other PyTorch device (or ``torch.device``) with PyTorch. With a
    ``validation`` source, its metrics are measured after every epoch (and every
    ``validation_every_steps`` mini-batches when set), the weights of the best measurement of
    ``early_stopping_metric`` are returned (the last ones where :func:`keeps_last`), and
    training stops after ``early_stopping_patience`` measurements without improvement.
    """
    moments = None
    if params is None:
        hp, moments = _with_start(hp, source)
    source = training_source(hp, source)
    every = hp["validation_every_steps"] if validation is not None else 0
    learner = fm_learner(hp, params, dtype, device, every)
    del params  # the learner holds the weights from here on
    stopping = None if validation is None else EarlyStopping(
        held_if_small(validation, hp["epochs"] + bool(every)), hp["early_stopping_metric"],
        hp["predictor_type"], hp["early_stopping_patience"], host, every,
        keep_best=not keeps_last(hp))
    history = run(learner, source, batch_size=hp["mini_batch_size"], epochs=hp["epochs"],
                  seed=hp["seed"], trained_epochs=trained_epochs, progress=progress, host=host,
                  early_stopping=stopping, checkpoints=checkpoints, run_id=hp, resume=resume,
                  callbacks=callbacks)
    _say_if_only_the_mean(history, moments, hp)
    return learner.parameters(history[-1].epoch), history


def check_first_block(blocks: Callable[[], Iterable[Any]], name: str,
                      rereadable: bool = True) -> None:
    """Read (and check) a channel scored after training up to its first block of rows, so
    that a file of another format, width or layout, or one without rows, fails before the
    training, not hours after it; a channel read once (a pipe) is left for its one reading."""
    if not rereadable:
        return
    for block in blocks():
        if block.n_rows:
            return
    raise DataError(name, None, "holds no data rows: nothing to evaluate")


def score_and_save(model: Any, model_dir: str | Path, metrics: dict[str, Any],
                   scorers: Mapping[str, Callable[[], dict[str, float]]],
                   host: str = DEFAULT_HOST) -> None:
    """Score each channel (its metric lines logged, its metrics stored under its name in
    ``metrics``), then save ``model`` with ``metrics``. A channel with a bad record further in
    still leaves the trained model written, without that channel's metrics, and its error
    says so: a run is not lost to one line of a test file. A run stopped on request (SIGTERM:
    :mod:`fmkit.train.interruption`) is saved at once, unscored, its ``metrics`` saying where
    it stopped: the time left before the process is killed is for writing the model."""
    reason = interruption.requested()
    if reason:
        where = metrics[artifact.STOPPED] = artifact.stop_record(metrics.get("train", []),
                                                                  reason)
        model.save(model_dir, metrics)
        log.warning("%s: the model trained so far (to epoch %s, %s rows in) was written to %s%s",
                    reason, where["epoch"], where["epoch_rows"], model_dir,
                    f", without {', '.join(scorers)} metrics" if scorers else "")
        return
    for channel, score in scorers.items():
        try:
            metrics[channel] = score()
        except DataError as e:
            model.save(model_dir, metrics)
            raise DataError(e.source, e.line, f"{e.problem} (the trained model was written to "
                            f"{model_dir}, without {channel} metrics)") from None
        log_metrics(channel, metrics[channel], host)
    model.save(model_dir, metrics)
    log.info("model written to %s", model_dir)
