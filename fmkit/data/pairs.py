"""Training rows for implicit feedback (what users chose, with nothing said of the rest): each
interaction as its context's row joined with the chosen item's row, label 1, and
``negatives`` rows per interaction joining the context with items drawn uniformly (with
replacement) from those it has no interaction with, label 0.

:func:`draw_pairs` draws them once (``fmkit recommend pairs`` writes them to a file);
:class:`SampledPairs` is a training source that draws them anew every epoch, as LightFM's
losses sample during training: on MovieLens 100k, ten epochs on ten draws rank the held-out
items better than ten epochs on one (docs/recommend.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from fmkit.data.batch import SparseBatch
from fmkit.data.sources import ArraySource


def shared_key(contexts: SparseBatch, items: SparseBatch) -> tuple[int, int, int] | None:
    """The first key both a context and an item use, with the first context row and item row
    that hold it, or None: a context's row joined with an item's must not repeat a key."""
    shared = np.intersect1d(contexts.indices, items.indices)
    if not shared.size:
        return None
    key = int(shared[0])
    return key, _first_row_with(contexts, key), _first_row_with(items, key)


def _first_row_with(rows: SparseBatch, key: int) -> int:
    nonzero = int(np.flatnonzero(rows.indices[: rows.indptr[-1]] == key)[0])
    return int(np.searchsorted(rows.indptr, nonzero, "right")) - 1


def draw_pairs(contexts: SparseBatch, items: SparseBatch, chosen: list[np.ndarray],
               negatives: int, rng: np.random.Generator, width: int):
    """The joined rows (a scipy CSR matrix of ``width`` columns) and their labels, shuffled:
    ``chosen[r]`` holds the item positions context ``r`` chose."""
    parts = []  # (label, context row, item row) arrays
    for row, taken in enumerate(chosen):
        drawn = _unchosen(rng, items.n_rows, taken, taken.size * negatives)
        parts.append(np.array([np.r_[np.ones(taken.size), np.zeros(drawn.size)],
                               np.full(taken.size + drawn.size, row),
                               np.r_[taken, drawn]], np.int64))
    labels, rows, picked = np.concatenate(parts, axis=1)[:, rng.permutation(
        sum(p.shape[1] for p in parts))] if parts else np.zeros((3, 0), np.int64)
    joined = (contexts.matrix(width)[rows] + items.matrix(width)[picked]).tocsr()
    return joined, labels


def drawn_bytes(contexts: SparseBatch, items: SparseBatch, chosen: list[np.ndarray],
                negatives: int) -> float:
    """About the memory one :func:`draw_pairs` holds at its peak: per drawn row its label,
    context and item positions and shuffled place (int64 each), and per joined nonzero three
    CSR copies (the contexts' rows taken, the items', their sum; 12 bytes each)."""
    rows = sum(taken.size for taken in chosen) * (1 + negatives)
    nonzeros = (contexts.indptr[-1] / max(contexts.n_rows, 1)
                + items.indptr[-1] / max(items.n_rows, 1))
    return rows * (4 * 8 + 3 * 12 * nonzeros)


def _unchosen(rng: np.random.Generator, items: int, taken: np.ndarray, count: int
              ) -> np.ndarray:
    """``count`` item positions drawn uniformly (with replacement) from ``range(items)`` less
    ``taken``: drawn from all and redrawn where taken (few are, for most contexts), or from
    the complement when it is the smaller part; none when nothing is left."""
    if taken.size * 2 > items:
        others = np.setdiff1d(np.arange(items), taken)
        return rng.choice(others, count) if others.size else taken[:0]
    drawn = rng.integers(items, size=count)
    while (again := np.isin(drawn, taken)).any():
        drawn[again] = rng.integers(items, size=int(again.sum()))
    return drawn


@dataclass
class SampledPairs:
    """A training source of interactions and negatives drawn anew for every epoch
    (:meth:`for_epoch`, seeded by ``seed`` and the epoch, so a resumed or continued run draws
    what the uninterrupted one drew). Every process of a group draws the same rows and
    trains on its ``shard`` of them (every size-th row from its rank)."""

    name: str
    contexts: SparseBatch
    items: SparseBatch
    chosen: list[np.ndarray]
    negatives: int
    seed: int
    feature_dim: int
    labels: str | None = None
    shard: tuple[int, int] = (0, 1)

    def for_epoch(self, epoch: int) -> ArraySource:
        """The rows of ``epoch`` (1 for the first)."""
        rng = np.random.default_rng([self.seed, epoch])
        joined, labels = draw_pairs(self.contexts, self.items, self.chosen, self.negatives,
                                    rng, self.feature_dim)
        rank, size = self.shard
        return ArraySource(joined[rank::size], labels[rank::size].astype(np.float32),
                           self.feature_dim, self.labels)

    def blocks(self) -> Iterator[SparseBatch]:
        """The first epoch's rows (what is read before training: the label mean)."""
        return self.for_epoch(1).blocks()
