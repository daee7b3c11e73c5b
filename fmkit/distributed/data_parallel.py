"""Data parallelism as a wrapper around a single-process learner (TorchRec's pattern:
``DistributedModelParallel`` wraps a module instead of branching inside it)."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import chain, repeat
from typing import Any

import numpy as np

from fmkit.distributed import active, all_gather_rows, all_sum, primary, rank_and_size
from fmkit.errors import HyperparameterError
from fmkit.kernels.fm import sum_repeated_rows
from fmkit.train import interruption
from fmkit.train.engine import Gradient, Learner, Source


def sum_sparse_rows(ids: np.ndarray, rows: np.ndarray, slot: np.ndarray,
                    counts: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every process's sparse gradient rows gathered (:func:`all_gather_rows`; ``counts``:
    each process's number of rows, if known), each distinct id's rows summed in rank order:
    the same arrays on every process. ``slot``: one -1 per table row (scratch)."""
    ids, rows = all_gather_rows(ids, rows, counts)
    return sum_repeated_rows(ids, rows, slot)


def _numpy(array: Any) -> np.ndarray:
    return array.detach().cpu().numpy() if hasattr(array, "detach") else np.asarray(array)


class DataParallel:
    """A learner on every process of the group, each a replica of the same model: every step
    each process computes the gradient of its next ``batch_size / processes`` rows of its own
    shard, the gradients are summed (the dense part by an all-reduce, the sparse rows gathered
    and summed per id in rank order) and every replica applies the same update. A process out
    of rows contributes nothing until all are; the epoch ends then. Each process shuffles with
    a generator of its own drawn from the epoch's. Only rank 0 is ``primary``."""

    def __init__(self, learner: Learner, batch_size: int):
        self.rank, self.size = rank_and_size()
        self.learner, self.primary = learner, primary()
        self.local = max(1, -(-batch_size // self.size))
        self.slots: dict[int, np.ndarray] = {}
        self.stopping: str | None = None

    @property
    def processes(self) -> int:
        """How many processes train, each on its shard: a first epoch's progress guesses the
        whole epoch's rows as this many times its own shard's."""
        return self.size

    def stop_request(self) -> str | None:
        """Whether the run stops after the last step: one answer on every process (a signal
        reaches each at its own moment; the step's all-reduce carries who had one)."""
        return self.stopping

    def __getattr__(self, name: str) -> Any:  # state, weights, evaluate...: the replica's
        return getattr(self.learner, name)

    @property
    def steps(self) -> int:
        return self.learner.steps

    @steps.setter
    def steps(self, value: int) -> None:
        self.learner.steps = value

    def batches(self, source: Source, rng: np.random.Generator) -> Iterator[Any]:
        mine = np.random.default_rng([int(rng.integers(2**62)), self.rank])
        return chain(self.learner.mini_batches(source, self.local, mine), repeat(None))

    def step(self, batch: Any) -> tuple[float, int]:
        local = self.learner.gradient(batch)
        dense = _numpy(local.dense).ravel()
        asked = interruption.requested()  # a process asked to stop: all stop after this step
        # one all-reduce: the sums, the stop request, each process's count of sparse rows per
        # table (at its rank's place: the sum is every count) and the dense gradient
        counts = np.zeros((len(local.sparse), self.size))
        counts[:, self.rank] = [len(ids) for ids, _, _ in local.sparse]
        total = all_sum(np.concatenate([[local.rows, local.loss, local.weight, bool(asked),
                                         interruption.as_number(asked)], counts.ravel(),
                                        dense]))
        rows, loss, weight = int(total[0]), float(total[1]), float(total[2])
        self.stopping = asked or interruption.from_numbers(total[3], total[4])
        if self.stopping and not asked:
            interruption.request(self.stopping)  # this process's job ends as the others' do
        if rows == 0:
            return 0.0, 0
        every = total[5:5 + counts.size].reshape(counts.shape).astype(np.int64)
        sparse = []
        for (ids, values, table_rows), table_counts in zip(local.sparse, every):
            if table_rows not in self.slots:
                self.slots[table_rows] = np.full(table_rows, -1, np.int32)
            ids, values = sum_sparse_rows(_numpy(ids).astype(np.int64), _numpy(values),
                                          self.slots[table_rows], table_counts.tolist())
            sparse.append((ids, values, table_rows))
        self.learner.apply(Gradient(rows, loss, total[5 + counts.size:], sparse, weight))
        return (loss * rows / weight if weight else loss), rows


def parallel(learner: Learner, batch_size: int) -> Learner:
    """``learner`` wrapped in :class:`DataParallel` in a process group, as it is otherwise."""
    if not active():
        return learner
    if getattr(learner, "one_process", None):
        raise HyperparameterError(learner.one_process)
    if batch_size < 2:
        raise HyperparameterError("training on several processes combines mini-batch "
                                  "gradients: set mini_batch_size >= 2 (per-row lock-free "
                                  "training is for one process)")
    return DataParallel(learner, batch_size)
