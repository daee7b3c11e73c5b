"""Encoded rows into training batches: slicing, concatenating, and reading ahead on a thread.

:class:`~fmkit.models.deepfm.features.Encoded` blocks (one per block of the input) are cut into
mini-batches of a fixed size across block boundaries, optionally shuffling each block's rows,
while a background thread reads and encodes the next blocks.
"""

from __future__ import annotations

import queue
import threading
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
    return Encoded(rows.size, sparse, dense, labels)


def mini_batches(blocks: Iterable[Encoded], batch_size: int, shuffle: bool,
                 rng: np.random.Generator) -> Iterator[Encoded]:
    """Batches of ``batch_size`` rows across block boundaries (the last may be smaller);
    ``shuffle`` permutes the rows of each block first."""
    pending: list[Encoded] = []
    count = 0
    for block in blocks:
        order = rng.permutation(block.n_rows) if shuffle else np.arange(block.n_rows)
        start = 0
        if pending:
            need = batch_size - count
            pending.append(take_rows(block, order[:need]))
            start, count = min(need, block.n_rows), count + min(need, block.n_rows)
            if count < batch_size:
                continue
            yield concatenate(pending)
            pending, count = [], 0
        while block.n_rows - start >= batch_size:
            yield take_rows(block, order[start:start + batch_size])
            start += batch_size
        if start < block.n_rows:
            pending, count = [take_rows(block, order[start:])], block.n_rows - start
    if pending:
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
    return Encoded(sum(p.n_rows for p in parts), sparse, dense, labels)


def background(items: Iterator, depth: int = 2) -> Iterator:
    """``items`` produced on a thread, ``depth`` ahead (reading and encoding overlap training;
    pyarrow, numba and PyTorch release the GIL). Errors are raised in the consumer."""
    buffer: queue.Queue = queue.Queue(depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                buffer.put((item, None))
            buffer.put((done, None))
        except BaseException as e:  # handed to the consumer
            buffer.put((done, e))

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while True:
            item, error = buffer.get()
            if item is done:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                buffer.get_nowait()
            except queue.Empty:
                thread.join(0.05)
