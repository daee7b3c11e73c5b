"""The FM learner on the compiled kernels (and :func:`fm_learner`, which picks the learner for
a device).

It streams the source once per epoch: memory is bounded by the model, its optimizer state and
one block of data. Each chunk of mini-batches (or of rows, at ``mini_batch_size=1``) is one
compiled call; on a PyTorch device see :mod:`fmkit.train.torch_learner`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fmkit.cpus import thread_count
from fmkit.data.background import background
from fmkit.data.batch import SparseBatch, rebatch, shuffled_batches, take
from fmkit.errors import FM_DIVERGED_HINT, HyperparameterError, TrainingDiverged
from fmkit.kernels import ffm
from fmkit.kernels import fm as kernels
from fmkit.memory import prefaulted_zeros, release_large_blocks_to_os
from fmkit.models.fm.hyperparameters import SWEEPS, table_hyperparameters
from fmkit.models.fm.model import two_rows, validation_metrics
from fmkit.models.fm.parameters import FMParameters, starting_point
from fmkit.train.engine import Gradient, Source
from fmkit.train.mcmc_learner import Rows, SweepLearner
from fmkit.train.optimizers import OPTIMIZER_IDS, factor_group, kernel_config, training_tables
from fmkit.train.torch_learner import TorchLearner


@dataclass
class Workspace:
    """Scratch arrays the kernels reuse, per thread part: the row's factor sums, and for
    mini-batches a gradient row ``[g_w, g_v1..g_vk]`` per distinct feature of a mini-batch
    (in the table's dtype) with the feature -> slot map and each nonzero's slot
    (``positions``)."""

    parts: int
    k: int
    sums: np.ndarray
    slot: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    touched: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    positions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    grads: np.ndarray = field(default_factory=lambda: np.zeros((1, 0, 0)))

    @classmethod
    def create(cls, feature_dim: int, k: int, parts: int, dtype, batch_size: int) -> Workspace:
        # each part's sums on cache lines of their own: threads write them for every row, and
        # two parts sharing a line made lock-free training on 2 cores no faster than on 1
        padded = -(-k // 16) * 16 + 16
        ws = cls(parts=parts, k=k, sums=np.zeros((parts, padded), dtype))
        if batch_size > 1:
            ws.slot = np.full(feature_dim, -1, dtype=np.int32)
            ws.grads = np.zeros((parts, 0, k + 1), dtype)
        return ws

    def reserve(self, chunk: SparseBatch, batch_size: int, feature_dim: int,
                order: np.ndarray = kernels.NO_ORDER) -> None:
        """Grow the buffers to hold the nonzeros and distinct features of the chunk's largest
        mini-batch (its rows taken in ``order``, if given)."""
        bounds = np.r_[np.arange(0, chunk.n_rows, batch_size), chunk.n_rows]
        ends = chunk.indptr
        if order.size:
            ends = np.r_[0, np.cumsum(np.diff(chunk.indptr)[order])]
        nonzeros = max(1, int(np.diff(ends[bounds]).max(initial=0)))
        if nonzeros > self.positions.size:
            self.positions = np.zeros(max(nonzeros, 2 * self.positions.size), np.int32)
        need = min(feature_dim, nonzeros)
        if need > self.touched.size:
            need = min(feature_dim, max(need, 2 * self.touched.size))
            self.touched = np.zeros(need, np.int32)
            self.grads = np.zeros((self.parts, need, self.k + 1), self.sums.dtype)


def train_chunk(hp: dict[str, Any], chunk: SparseBatch, kind: int, config: np.ndarray,
                bias: np.ndarray, table: np.ndarray, ws: Workspace, step: int,
                order: np.ndarray = kernels.NO_ORDER, parts: int | None = None
                ) -> tuple[float, int]:
    """One chunk through the kernel for ``mini_batch_size``, its rows taken in ``order`` (a
    permutation; empty: as stored), a row per step on ``parts`` of the workspace's thread
    parts (default: all): returns (summed loss, step)."""
    opt = OPTIMIZER_IDS[hp["optimizer"]]
    k = ws.k
    batch_size = hp["mini_batch_size"]
    order = order.astype(np.int64, copy=False)
    if batch_size == 1:
        return kernels.train_online(chunk.indptr, chunk.indices, chunk.values, chunk.labels,
                                    order, kind, opt, config, bias, table, k, ws.sums[:parts],
                                    step, weights=chunk.weights)
    ws.reserve(chunk, batch_size, table.shape[0], order)
    return kernels.train_minibatches(chunk.indptr, chunk.indices, chunk.values, chunk.labels,
                                     order, batch_size, kind, opt, config, bias, table, k,
                                     ws.slot, ws.touched, ws.positions, ws.grads[0], ws.sums[0],
                                     step, weights=chunk.weights)


def reading_parts(parts: int, source: Source) -> int:
    """The thread parts a row per step trains on while a thread reads ``source`` ahead: one
    fewer when that thread parses (:attr:`~fmkit.data.sources.FileSource.parses`), as the
    reader leaves one to the trainer (:func:`fmkit.cpus.leaving_cores`). On two cores,
    training on both beside a parser was slower than on one (docs/performance.md)."""
    return parts - 1 if parts > 1 and getattr(source, "parses", False) else parts


def thread_parts(hp: dict[str, Any]) -> int:
    """How many threads a chunk is cut across: per-row training with ``lock_free`` runs a
    share of the rows on each of fmkit's threads (:func:`fmkit.cpus.thread_count`; Hogwild).
    Mini-batches train on one thread, exactly (SageMaker's semantics, no hand-off between
    threads per mini-batch) while another reads ahead; on several processes the threads split
    each step's gradient (:meth:`KernelLearner.gradient`)."""
    if hp["mini_batch_size"] > 1 or hp["lock_free"]:
        return thread_count()
    return 1


def loss_kind(predictor_type: str) -> int:
    return kernels.LOGISTIC if predictor_type == "binary_classifier" else kernels.SQUARED


class KernelLearner:
    """An FM trained by the compiled kernels (:mod:`fmkit.kernels.fm`) on training tables that
    hold each weight row beside its optimizer moments (:func:`training_tables`)."""

    primary = True
    diverged_hint = FM_DIVERGED_HINT

    def __init__(self, hp: dict[str, Any], params: FMParameters | None, dtype=np.float32,
                 pause_every: int = 0):
        self.hp, self.k, self.pause_every = hp, hp["num_factors"], pause_every
        self.group = factor_group(hp)
        self.bias, self.table = training_tables(params, hp["optimizer"], hp, dtype)
        self.ws = Workspace.create(self.table.shape[0], self.k, thread_parts(hp),
                                   self.table.dtype, hp["mini_batch_size"])
        self.config = kernel_config(hp, self.table.dtype)
        self.kind = loss_kind(hp["predictor_type"])
        self.steps = 0
        self.parts = self.ws.parts  # those a row per step trains on (reading_parts)

    def batches(self, source: Source, rng: np.random.Generator
                ) -> Iterator[tuple[SparseBatch, np.ndarray]]:
        """Chunks of whole mini-batches, each with its row order: one compiled call each.
        Chunks are joined and ordered on the reading thread, so the training thread only
        trains; the kernels take the order, which saves copying the rows into it. With
        ``pause_every``, a chunk is cut where the step count reaches a multiple of it, so that
        callbacks (validation every N steps) act there."""
        size, every = self.hp["mini_batch_size"], self.pause_every
        self.parts = reading_parts(self.ws.parts, source)

        def prepared() -> Iterator[tuple[SparseBatch, np.ndarray]]:
            for chunk in rebatch(source.blocks(), size):
                order = rng.permutation(chunk.n_rows) if self.hp["shuffle"] else kernels.NO_ORDER
                if order.size and every:
                    chunk, order = take(chunk, order), kernels.NO_ORDER
                yield chunk, order

        for chunk, order in background(prepared()):
            if not every:
                yield chunk, order
                continue
            start = 0
            while start < chunk.n_rows:
                stop = min(chunk.n_rows, start + (every - self.steps % every) * size)
                yield chunk.slice(start, stop), kernels.NO_ORDER
                start = stop

    def step(self, unit: tuple[SparseBatch, np.ndarray]) -> tuple[float, int]:
        chunk, order = unit
        loss, self.steps = train_chunk(self.hp, chunk, self.kind, self.config, self.bias,
                                       self.table, self.ws, self.steps, order, self.parts)
        return loss, chunk.n_rows

    def mini_batches(self, source: Source, size: int, rng: np.random.Generator
                     ) -> Iterator[SparseBatch]:
        return shuffled_batches(source.blocks(), size, self.hp["shuffle"], rng)

    def gradient(self, batch: SparseBatch | None) -> Gradient:
        ws, k = self.ws, self.k
        if batch is None:
            return Gradient(0, 0.0, np.zeros(1), [(np.zeros(0, np.int64), np.zeros((0, k + 1)),
                                                   self.table.shape[0])])
        ws.reserve(batch, batch.n_rows, self.table.shape[0])
        loss, g0, n = kernels.minibatch_gradient(
            batch.indptr, batch.indices, batch.values, batch.labels, 1.0, self.kind, self.bias,
            self.table, k, ws.slot, ws.touched, ws.positions, ws.grads, ws.sums,
            weights=batch.weights)
        return Gradient(batch.n_rows, loss, np.array([g0]),
                        [(ws.touched[:n].astype(np.int64), ws.grads[0, :n].copy(),
                          self.table.shape[0])])

    def apply(self, gradient: Gradient) -> None:
        (ids, rows, _), n = gradient.sparse[0], gradient.rows
        # (in the table's dtype, as the kernels' own sums: one compiled update serves both)
        self.steps = kernels.apply_gradient(ids, (rows / n).astype(self.table.dtype),
                                            gradient.dense[0] / n,
                                            OPTIMIZER_IDS[self.hp["optimizer"]], self.config,
                                            self.bias, self.table, self.k, self.steps,
                                            self.ws.parts, self.group)

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        return {"bias": self.bias, "table": self.table}, {}

    def restore(self, arrays: dict[str, np.ndarray], extra: dict) -> None:
        self.bias[...], self.table[...] = arrays["bias"], arrays["table"]

    def weights(self) -> dict[str, np.ndarray]:
        return {"w0": self.bias[0, :1].copy(), "table": self.table[:, : self.k + 1].copy()}

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        self.bias[0, :1], self.table[:, : self.k + 1] = weights["w0"], weights["table"]

    def evaluate(self, source: Source) -> dict[str, float]:
        view = FMParameters.from_table(self.bias[0, :1], self.table[:, : self.k + 1])
        return validation_metrics(self.hp, view, source)

    def parameters(self, epoch: int) -> FMParameters:
        """The weights trained up to ``epoch`` (plain SGD's table holds the weights alone: it
        is the model)."""
        k, table = self.k, self.table
        if not (np.isfinite(table[:, : k + 1]).all() and np.isfinite(self.bias[0, 0])):
            raise TrainingDiverged(epoch, "a weight")
        weights = table
        if table.shape[1] != k + 1:
            weights = prefaulted_zeros((table.shape[0], k + 1), table.dtype)
            weights[...] = table[:, : k + 1]
        return FMParameters.from_table(self.bias[0, :1].copy(), weights)


class FFMLearner(KernelLearner):
    """A field-aware FM on the compiled kernels (:mod:`fmkit.kernels.ffm`): the FM learner's
    chunks, each one compiled call of mini-batch steps, on a table whose factor width is
    ``num_fields * num_factors`` (the same optimizer state, checkpoints and weights API)."""

    def __init__(self, hp: dict[str, Any], params: FMParameters | None, dtype=np.float32,
                 pause_every: int = 0):
        super().__init__(table_hyperparameters(hp), params, dtype, pause_every)
        self.hp, self.factors, self.fields = hp, hp["num_factors"], hp["num_fields"]
        self.opt = OPTIMIZER_IDS[hp["optimizer"]]
        if not self.ws.slot.size:  # a row per step is a mini-batch of one here
            self.ws.slot = np.full(self.table.shape[0], -1, np.int32)

    def step(self, unit: tuple[SparseBatch, np.ndarray]) -> tuple[float, int]:
        chunk, order = unit
        size, ws = self.hp["mini_batch_size"], self.ws
        if size == 1:
            loss, self.steps = ffm.train_online(
                chunk.indptr, chunk.indices, chunk.field_ids(), chunk.values, chunk.labels,
                self.kind, self.opt, self.config, self.bias, self.table, self.factors,
                self.fields, self.steps, self.parts, weights=chunk.weights, order=order)
            return loss, chunk.n_rows
        ws.reserve(chunk, size, self.table.shape[0], order)
        loss, self.steps = ffm.train_minibatches(
            chunk.indptr, chunk.indices, chunk.field_ids(), chunk.values, chunk.labels, size,
            self.kind, self.opt, self.config, self.bias, self.table, self.factors, self.fields,
            ws.slot, ws.touched, ws.positions, ws.grads[0], self.steps, weights=chunk.weights,
            order=order)
        return loss, chunk.n_rows

    def gradient(self, batch: SparseBatch | None) -> Gradient:
        if batch is None:  # no rows left on this process: the FM's empty gradient
            return super().gradient(None)
        loss, g0, rows, G = ffm.minibatch_gradient(
            batch.indptr, batch.indices, batch.field_ids(), batch.values, batch.labels, 1.0,
            self.kind, self.bias[0, :1], self.table, self.factors, self.fields, self.ws.slot,
            weights=batch.weights)
        return Gradient(batch.n_rows, loss, np.array([g0]), [(rows, G, self.table.shape[0])])


def check_device(hp: dict[str, Any]) -> None:
    """Refuse, before any data is read, what trains on the CPU's kernels only."""
    if hp["optimizer"] in SWEEPS:
        raise HyperparameterError(f"optimizer={hp['optimizer']} trains on the CPU only "
                                  "(--device cpu)")
    if hp["model_type"] == "ffm":
        raise HyperparameterError("model_type=ffm trains on the CPU only (--device cpu)")


def fm_learner(hp: dict[str, Any], params: FMParameters | None = None, dtype=np.float32,
               device: Any = "cpu", pause_every: int = 0) -> KernelLearner:
    """The FM learner for ``device``: the compiled kernels on the string ``cpu`` (their steps
    end at multiples of ``pause_every``), else PyTorch (one mini-batch per step), also for
    ``torch.device("cpu")``: how the tests hold the PyTorch path to the kernels."""
    release_large_blocks_to_os()
    kernels_here = isinstance(device, str) and device == "cpu"
    if not kernels_here:
        check_device(hp)
    if hp["optimizer"] in SWEEPS:
        return SweepLearner(hp, params, dtype)
    if hp["model_type"] == "ffm":
        return FFMLearner(hp, params, dtype, pause_every)
    if kernels_here:
        return KernelLearner(hp, params, dtype, pause_every)
    return TorchLearner(hp, params, device, dtype)


def compile_kernels(hp: dict[str, Any]) -> None:
    """Compile (or load from numba's cache) the kernels a run with ``hp`` trains with on the
    CPU, by training a throwaway learner (``hp`` on four features) on two rows."""
    learner = fm_learner(starting_point({**hp, "feature_dim": 4}, None))
    if hp["optimizer"] in SWEEPS:
        learner.step(Rows(two_rows(False), 4))
        return
    order = np.arange(2) if hp["shuffle"] else kernels.NO_ORDER
    learner.step((two_rows(hp["model_type"] == "ffm"), order))
