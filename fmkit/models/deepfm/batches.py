"""Encoded rows into training batches: slicing and concatenating.

:class:`~fmkit.models.deepfm.features.Encoded` blocks (one per block of the input) are cut into
mini-batches of a fixed size across block boundaries, optionally shuffling each block's rows
(the learner reads and encodes the next blocks on a thread: :mod:`fmkit.data.background`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from fmkit.models.deepfm.features import Encoded


def take_rows(batch: Encoded, rows: np.ndarray) -> Encoded:
    """The rows ``rows`` of a batch, in that order (slices and permutations alike)."""
    sparse = {}
    for name, (ids, offsets) in batch.sparse.items():
        starts, lengths = offsets[rows], offsets[rows + 1] - offsets[rows]
        new_offsets = np.zeros(rows.size + 1, np.int64)
        np.cumsum(lengths, out=new_offsets[1:])
        positions = np.repeat(starts - new_offsets[:-1], lengths) + np.arange(new_offsets[-1])
        sparse[name] = ids[positions], new_offsets
    dense = {name: values[rows] for name, values in batch.dense.items()}
    labels = batch.labels[rows] if batch.labels is not None else None
    weights = batch.weights[rows] if batch.weights is not None else None
    return Encoded(rows.size, sparse, dense, labels, weights)


def row_range(batch: Encoded, start: int, stop: int) -> Encoded:
    """Rows ``start:stop`` of a batch: :func:`take_rows` of a range, as views of its arrays
    (only the offsets are new)."""
    sparse = {name: (ids[offsets[start]:offsets[stop]], offsets[start:stop + 1] - offsets[start])
              for name, (ids, offsets) in batch.sparse.items()}
    dense = {name: values[start:stop] for name, values in batch.dense.items()}
    labels = batch.labels[start:stop] if batch.labels is not None else None
    weights = batch.weights[start:stop] if batch.weights is not None else None
    return Encoded(stop - start, sparse, dense, labels, weights)


def slices(batch: Encoded, size: int) -> Iterator[Encoded]:
    """A batch in consecutive :func:`row_range` slices of at most ``size`` rows (the batch
    itself when it has no more)."""
    if batch.n_rows <= size:
        yield batch
        return
    for start in range(0, batch.n_rows, size):
        yield row_range(batch, start, min(start + size, batch.n_rows))


def _rows(block: Encoded, order: np.ndarray | None, start: int, stop: int) -> Encoded:
    """Rows ``start:stop`` of ``order`` (None: as stored)."""
    return row_range(block, start, stop) if order is None else take_rows(block,
                                                                          order[start:stop])


def mini_batches(blocks: Iterable[Encoded], batch_size: int, shuffle: bool,
                 rng: np.random.Generator, drop_remainder: bool = False) -> Iterator[Encoded]:
    """Batches of ``batch_size`` rows across block boundaries (the last may be smaller,
    unless ``drop_remainder`` leaves it out); ``shuffle`` permutes the rows of each block
    first."""
    pending: list[Encoded] = []
    count = 0
    for block in blocks:
        order = rng.permutation(block.n_rows) if shuffle else None
        start = 0
        if pending:
            need = min(batch_size - count, block.n_rows)
            pending.append(_rows(block, order, 0, need))
            start, count = need, count + need
            if count < batch_size:
                continue
            yield concatenate(pending)
            pending, count = [], 0
        while block.n_rows - start >= batch_size:
            yield _rows(block, order, start, start + batch_size)
            start += batch_size
        if start < block.n_rows:
            pending, count = [_rows(block, order, start, block.n_rows)], block.n_rows - start
    if pending and not drop_remainder:
        yield concatenate(pending)


def concatenate(parts: list[Encoded]) -> Encoded:
    if len(parts) == 1:
        return parts[0]
    sparse = {}
    for name in parts[0].sparse:
        ids = np.concatenate([p.sparse[name][0] for p in parts])
        shifts = np.cumsum([0] + [p.sparse[name][1][-1] for p in parts[:-1]])
        offsets = np.concatenate([parts[0].sparse[name][1][:1]] + [
            p.sparse[name][1][1:] + shift for p, shift in zip(parts, shifts)])
        sparse[name] = ids, offsets
    dense = {name: np.concatenate([p.dense[name] for p in parts]) for name in parts[0].dense}
    labels = (np.concatenate([p.labels for p in parts]) if parts[0].labels is not None
              else None)
    weights = (np.concatenate([p.weights for p in parts]) if parts[0].weights is not None
               else None)
    return Encoded(sum(p.n_rows for p in parts), sparse, dense, labels, weights)


