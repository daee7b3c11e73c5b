"""The trainer: epochs of mini-batches from a source through the compiled kernel.

One trainer serves the CLI, the Python estimators and the SageMaker entry point. It streams the
source once per epoch (memory is bounded by the model, its optimizer state and one block of data),
logs the mean training loss per epoch, and shows a progress bar on a terminal.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numba
import numpy as np
from tqdm import tqdm

from fmkit import distributed
from fmkit.data.batch import SparseBatch, rebatch, take
from fmkit.errors import DataError, HyperparameterError, TrainingDiverged
from fmkit.kernels import fm as kernels
from fmkit.logs import DEFAULT_HOST, log, log_metrics
from fmkit.memory import prefaulted_zeros, release_large_blocks_to_os
from fmkit.metrics import require_rows
from fmkit.models.fm import FMParameters
from fmkit.train.callbacks import EarlyStopping
from fmkit.train.checkpoint import Checkpointer, TrainingState, check_resumable
from fmkit.train.optimizers import OPTIMIZER_IDS, kernel_config, training_tables


class Source(Protocol):
    name: str

    def blocks(self): ...


@dataclass
class EpochStats:
    epoch: int
    loss: float
    rows: int
    seconds: float
    validation: dict[str, float] | None = None  # the validation channel's metrics

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("inf")

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> EpochStats:
        """An epoch of a checkpoint's history; fields of older versions are left out."""
        return cls(**{name: saved[name] for name in cls.__dataclass_fields__ if name in saved})


@dataclass
class Workspace:
    """Scratch arrays the kernels reuse, per thread part: the row's factor sums, and for
    mini-batches a gradient row ``[g_w, g_v1..g_vk]`` per distinct feature (float64) with the
    feature -> slot map."""

    parts: int
    k: int
    sums: np.ndarray
    slot: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    touched: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    grads: np.ndarray = field(default_factory=lambda: np.zeros((1, 0, 0)))

    @classmethod
    def create(cls, feature_dim: int, k: int, parts: int, dtype, batch_size: int) -> Workspace:
        # each part's sums on cache lines of their own: threads write them for every row, and
        # two parts sharing a line made lock-free training on 2 cores no faster than on 1
        padded = -(-k // 16) * 16 + 16
        ws = cls(parts=parts, k=k, sums=np.zeros((parts, padded), dtype))
        if batch_size > 1:
            ws.slot = np.full(feature_dim, -1, dtype=np.int32)
            ws.grads = np.zeros((parts, 0, k + 1))
        return ws

    def reserve(self, chunk: SparseBatch, batch_size: int, feature_dim: int) -> None:
        """Grow the buffers to hold the distinct features of the chunk's largest mini-batch."""
        bounds = np.r_[np.arange(0, chunk.n_rows, batch_size), chunk.n_rows]
        need = max(1, min(feature_dim, int(np.diff(chunk.indptr[bounds]).max(initial=0))))
        if need > self.touched.size:
            need = min(feature_dim, max(need, 2 * self.touched.size))
            self.touched = np.zeros(need, np.int32)
            self.grads = np.zeros((self.parts, need, self.k + 1))


NO_ORDER = np.zeros(0, dtype=np.int64)


def train_chunk(hp: dict[str, Any], chunk: SparseBatch, kind: int, config: np.ndarray,
                bias: np.ndarray, table: np.ndarray, ws: Workspace, step: int,
                order: np.ndarray = NO_ORDER) -> tuple[float, int]:
    """One chunk through the kernel for ``mini_batch_size``, its rows taken in ``order`` (a
    permutation; empty: as stored): returns (summed loss, step)."""
    opt = OPTIMIZER_IDS[hp["optimizer"]]
    k = ws.k
    batch_size = hp["mini_batch_size"]
    if batch_size == 1:
        return kernels.train_online(chunk.indptr, chunk.indices, chunk.values, chunk.labels,
                                    order.astype(np.int64, copy=False), kind, opt, config, bias,
                                    table, k, ws.sums, step)
    if order.size:
        chunk = take(chunk, order)
    ws.reserve(chunk, batch_size, table.shape[0])
    return kernels.train_minibatches(chunk.indptr, chunk.indices, chunk.values, chunk.labels,
                                     batch_size, kind, opt, config, bias, table, k, ws.slot,
                                     ws.touched, ws.grads, ws.sums, step)


def thread_parts(hp: dict[str, Any]) -> int:
    """How many threads a chunk is cut across: mini-batches always split over numba's thread
    count ($NUMBA_NUM_THREADS), deterministically; per-row training only when lock-free."""
    if hp["mini_batch_size"] > 1 or hp["lock_free"]:
        return numba.get_num_threads()
    return 1


def loss_kind(predictor_type: str) -> int:
    return kernels.LOGISTIC if predictor_type == "binary_classifier" else kernels.SQUARED


def local_batches(source: Source, size: int, shuffle: bool,
                   rng: np.random.Generator) -> Iterator[SparseBatch]:
    """This process's rows in mini-batches of ``size`` (shuffled within each chunk)."""
    for chunk in rebatch(source.blocks(), size):
        order = rng.permutation(chunk.n_rows) if shuffle else np.arange(chunk.n_rows)
        for start in range(0, chunk.n_rows, size):
            yield take(chunk, order[start:start + size])


def distributed_epoch(hp: dict[str, Any], source: Source, kind: int, config: np.ndarray,
                      bias: np.ndarray, table: np.ndarray, ws: Workspace, step: int,
                      epoch: int, bar, checkpoints: Checkpointer | None = None,
                      resumed: TrainingState | None = None,
                      history: list | None = None) -> tuple[int, float, int]:
    """One epoch in step with the other processes: each step every process computes the
    gradient of its next ``mini_batch_size / processes`` rows, the sparse gradients are
    gathered and summed in rank order, and every process applies the same update, so the
    replicas stay identical. A process out of rows contributes nothing until all are.
    Each process shuffles with a generator seeded by (seed, rank, epoch), so an epoch's order
    can be replayed without saved generator states: rank 0 alone writes checkpoints (the
    replicas are identical) with the steps done in the epoch, and a resumed run skips that many
    steps of every process's batches. Returns (rows of all processes, their summed loss, step).
    """
    rank, world = distributed.rank_and_size()
    local = max(1, -(-hp["mini_batch_size"] // world))
    opt = OPTIMIZER_IDS[hp["optimizer"]]
    k = ws.k
    rng = np.random.default_rng([hp["seed"], rank, epoch])
    batches = local_batches(source, local, hp["shuffle"], rng)
    rows, loss_sum, done = 0, 0.0, 0
    if resumed is not None:
        for _ in range(resumed.chunks_done):  # steps trained before the checkpoint
            next(batches, None)
        rows, loss_sum, done = resumed.rows, resumed.loss_sum, resumed.chunks_done
    empty_ids, empty_rows = np.zeros(0, np.int64), np.zeros((0, k + 1))
    while True:
        batch = next(batches, None)
        ids, grads, loss, g0 = empty_ids, empty_rows, 0.0, 0.0
        if batch is not None:
            ws.reserve(batch, local, table.shape[0])
            loss, g0, n = kernels.minibatch_gradient(
                batch.indptr, batch.indices, batch.values, batch.labels, 1.0, kind, bias, table,
                k, ws.slot, ws.touched, ws.grads, ws.sums)
            ids, grads = ws.touched[:n].astype(np.int64), ws.grads[0, :n].copy()
        (n_rows, loss, g0), ids, grads = distributed.sum_sparse_rows(
            np.array([batch.n_rows if batch is not None else 0, loss, g0]), ids, grads,
            ws.slot)
        if n_rows == 0:
            return rows, loss_sum, step
        step = kernels.apply_gradient(ids, grads / n_rows, g0 / n_rows, opt, config, bias,
                                      table, k, step, ws.parts)
        rows += int(n_rows)
        loss_sum += loss
        done += 1
        bar.update(int(n_rows))
        if checkpoints is not None and rank == 0 and checkpoints.due(step):
            checkpoints.save(TrainingState(step, epoch, done, rows, loss_sum, {},
                                           [vars(h) for h in history or []], hp,
                                           {"bias": bias, "table": table}))


def train(hp: dict[str, Any], source: Source, params: FMParameters | None = None, *,
          validation: Source | None = None, progress: bool | None = None,
          host: str = DEFAULT_HOST, dtype=np.float32, checkpoints: Checkpointer | None = None,
          resume: bool = False) -> tuple[FMParameters, list[EpochStats]]:
    """Train an FM with validated hyperparameters ``hp`` on ``source``; return weights and history.

    ``params`` continues from given weights (a fresh optimizer state is used). With a
    ``validation`` source, its metrics are measured after every epoch, the weights of the best
    epoch of ``early_stopping_metric`` are returned, and training stops after
    ``early_stopping_patience`` epochs without improvement (:class:`EarlyStopping`).
    ``progress``: True/False forces the bar on/off, None shows it only when stderr is a
    terminal. ``checkpoints`` saves the training state periodically (see
    :mod:`fmkit.train.checkpoint`); with ``resume`` training continues from its newest one.
    """
    release_large_blocks_to_os()
    k = hp["num_factors"]
    bias, table = training_tables(params, hp["optimizer"], hp, dtype)
    del params  # the training tables hold the weights from here on
    step = 0
    batch_size = hp["mini_batch_size"]
    ws = Workspace.create(table.shape[0], k, thread_parts(hp), table.dtype, batch_size)
    config = kernel_config(hp, table.dtype)
    kind = loss_kind(hp["predictor_type"])
    show = sys.stderr.isatty() if progress is None else progress
    _, world = distributed.rank_and_size()
    if world > 1 and batch_size < 2:
        raise HyperparameterError("training on several processes combines mini-batch "
                                  "gradients: set mini_batch_size >= 2 (per-row lock-free "
                                  "training is for one process)")
    rng = np.random.default_rng(hp["seed"])  # (several processes: see distributed_epoch)
    history: list[EpochStats] = []
    epochs = hp["epochs"]
    stopper = EarlyStopping(hp["early_stopping_metric"], hp["predictor_type"],
                            hp["early_stopping_patience"])
    first_epoch, skip, resumed_rows, resumed_loss = 1, 0, 0, 0.0
    state = checkpoints.latest() if checkpoints is not None and resume else None
    if state is not None:
        check_resumable(state, hp, checkpoints.directory)
        if validation is not None:
            raise HyperparameterError("--resume continues training without a validation "
                                      "channel")
        bias[...], table[...] = state.arrays["bias"], state.arrays["table"]
        step, first_epoch, skip = state.step, state.epoch, state.chunks_done
        resumed_rows, resumed_loss = state.rows, state.loss_sum
        if world == 1:
            rng.bit_generator.state = state.rng_state
        history = [EpochStats.from_dict(h) for h in state.history]
        log.info("resuming from %s: epoch %d, step %d", checkpoints.directory, state.epoch,
                 state.step)
    for epoch in range(first_epoch, epochs + 1):
        started = time.perf_counter()
        rows, loss_sum = (resumed_rows, resumed_loss) if epoch == first_epoch else (0, 0.0)
        with tqdm(desc=f"epoch {epoch}/{epochs}", unit=" rows", unit_scale=True,
                  disable=not show, file=sys.stderr) as bar:
            if world > 1:
                rows, loss_sum, step = distributed_epoch(
                    hp, source, kind, config, bias, table, ws, step, epoch, bar, checkpoints,
                    state if epoch == first_epoch else None, history)
            for index, chunk in enumerate(rebatch(source.blocks(), batch_size)
                                          if world == 1 else ()):
                if epoch == first_epoch and index < skip:
                    continue  # trained before the checkpoint this run resumed from
                order = rng.permutation(chunk.n_rows) if hp["shuffle"] else NO_ORDER
                chunk_loss, step = train_chunk(hp, chunk, kind, config, bias, table, ws, step,
                                               order)
                rows += chunk.n_rows
                loss_sum += chunk_loss
                bar.update(chunk.n_rows)
                bar.set_postfix(loss=f"{loss_sum / max(rows, 1):.5f}", refresh=False)
                if checkpoints is not None and checkpoints.due(step):
                    checkpoints.save(TrainingState(
                        step, epoch, index + 1, rows, loss_sum, rng.bit_generator.state,
                        [vars(h) for h in history], hp, {"bias": bias, "table": table}))
        if rows == 0:
            raise DataError(source.name, None, "holds no data rows")
        stats = EpochStats(epoch, loss_sum / rows, rows, time.perf_counter() - started)
        history.append(stats)
        log.info("epoch %d/%d: train loss %.6f over %d rows (%.0f rows/s)", epoch, epochs,
                 stats.loss, rows, stats.rows_per_second)
        log.info("#progress_metric: host=%s, completed %d %% of epochs", host,
                 round(100 * epoch / epochs))
        log.info("#throughput_metric: host=%s, train throughput=%.1f records/second", host,
                 stats.rows_per_second)
        if not np.isfinite(stats.loss):
            raise TrainingDiverged(epoch)
        if validation is not None:
            current = FMParameters.from_table(bias[0, :1], table[:, : k + 1])  # a view, not a copy
            stats.validation = validation_metrics(hp, current, validation, epoch, host)
            if stopper.update(epoch, stats.validation, current.copy):
                break
    if not (np.isfinite(table[:, : k + 1]).all() and np.isfinite(bias[0, 0])):
        raise TrainingDiverged(history[-1].epoch, "a weight")
    if stopper.best_weights is not None:
        return stopper.best_weights, history
    weights = table  # plain SGD's table holds the weights alone: it is the model
    if table.shape[1] != k + 1:
        weights = prefaulted_zeros((table.shape[0], k + 1), table.dtype)
        weights[...] = table[:, : k + 1]
    return FMParameters.from_table(bias[0, :1].copy(), weights), history


def validation_metrics(hp: dict[str, Any], params: FMParameters, validation: Source,
                       epoch: int, host: str) -> dict[str, float]:
    """Every metric of the validation channel after ``epoch``, logged as SageMaker's
    ``#quality_metric: host=..., epoch=N, validation auc <score>=...`` lines."""
    from fmkit.model import FMModel

    metrics = require_rows(FMModel(hp, params).evaluate(validation.blocks()), validation.name)
    log_metrics("validation", metrics, host, epoch)
    return metrics
