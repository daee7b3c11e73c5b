"""The sparse batch every reader yields and every model consumes.

A :class:`SparseBatch` is a block of rows in CSR layout (``indptr``, ``indices``, ``values``) with
one label per row and, for rows read from a file, the line each row came from, so that any later
check can still say ``FILE:LINE``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

import numpy as np

from fmkit.compile_cache import kernel
from fmkit.errors import DataError


@dataclass
class SparseBatch:
    """Rows in CSR layout. ``indices`` are 0-based feature ids, ``labels`` float32."""

    indptr: np.ndarray  # int64, n_rows + 1
    indices: np.ndarray  # int32, nnz
    values: np.ndarray  # float32 (or float64), nnz
    labels: np.ndarray  # float32, n_rows
    lines: np.ndarray | None = None  # int64 line numbers in `source`, or None for arrays
    source: str = "<array>"
    first_row: int = 0  # for in-memory data (no lines): the row number of row 0
    row_unit: str = "line"  # what ``lines`` count: file "line"s or recordIO "record"s
    widths: np.ndarray | None = None  # recordIO: each row's declared feature count (-1: none)
    fields: np.ndarray | None = None  # libffm: int32 field of each nonzero (FFM), else None
    weights: np.ndarray | None = None  # float32 sample weight of each row (estimators), or None

    @property
    def n_rows(self) -> int:
        return len(self.indptr) - 1

    def matrix(self, width: int):
        """The rows as a scipy CSR matrix of ``width`` columns (sharing the arrays)."""
        import scipy.sparse as sp  # (not at start-up: the server and CLI need it rarely)

        return sp.csr_matrix((self.values, self.indices, self.indptr),
                             shape=(self.n_rows, width))

    def field_ids(self) -> np.ndarray:
        """Each nonzero's field, which a field-aware FM needs: an error naming the source when
        the rows carry none (libsvm, CSV, recordIO, an in-memory matrix)."""
        if self.fields is None:
            raise DataError(self.source, None, "a field-aware FM (model_type=ffm) needs each "
                            "feature's field: libffm input (label field:index:value ...)")
        return self.fields

    def where(self, row: int) -> tuple[str, int | None]:
        """``(source, line)`` naming a row in an error message."""
        if self.lines is not None and self.row_unit == "record":
            return f"{self.source}: record {int(self.lines[row])}", None
        if self.lines is not None:
            return self.source, int(self.lines[row])
        return f"{self.source} row {self.first_row + row}", None

    def slice(self, start: int, stop: int) -> SparseBatch:
        """Rows ``start:stop`` as a batch sharing memory where possible."""
        lo, hi = self.indptr[start], self.indptr[stop]
        return SparseBatch(
            indptr=self.indptr[start : stop + 1] - lo,
            indices=self.indices[lo:hi],
            values=self.values[lo:hi],
            labels=self.labels[start:stop],
            lines=None if self.lines is None else self.lines[start:stop],
            source=self.source,
            first_row=self.first_row + start,
            row_unit=self.row_unit,
            widths=None if self.widths is None else self.widths[start:stop],
            fields=None if self.fields is None else self.fields[lo:hi],
            weights=None if self.weights is None else self.weights[start:stop],
        )


@kernel(nogil=True, allocates=False)
def _gather_rows(indptr, indices, values, fields, rows, out_indptr, out_indices, out_values,
                 out_fields):
    """Rows ``rows`` of a CSR batch into the ``out_`` arrays; ``fields`` too unless empty."""
    nnz = 0
    out_indptr[0] = 0
    with_fields = out_fields.size > 0
    for n in range(rows.size):
        r = rows[n]
        for j in range(indptr[r], indptr[r + 1]):
            out_indices[nnz] = indices[j]
            out_values[nnz] = values[j]
            if with_fields:
                out_fields[nnz] = fields[j]
            nnz += 1
        out_indptr[n + 1] = nnz


def take(batch: SparseBatch, rows: np.ndarray) -> SparseBatch:
    """The given rows of a batch, in the given order (used to shuffle rows within a chunk)."""
    rows = np.asarray(rows, dtype=np.int64)
    lengths = np.diff(batch.indptr)[rows]
    nnz = int(lengths.sum())
    indptr = np.empty(rows.size + 1, dtype=np.int64)
    indices = np.empty(nnz, dtype=batch.indices.dtype)
    values = np.empty(nnz, dtype=batch.values.dtype)
    has_fields = batch.fields is not None
    fields = np.empty(nnz if has_fields else 0, dtype=np.int32)
    _gather_rows(batch.indptr, batch.indices, batch.values,
                 batch.fields if has_fields else fields, rows, indptr, indices, values, fields)
    return SparseBatch(indptr, indices, values, batch.labels[rows],
                       None if batch.lines is None else batch.lines[rows], batch.source,
                       batch.first_row, batch.row_unit,
                       None if batch.widths is None else batch.widths[rows],
                       fields if has_fields else None,
                       None if batch.weights is None else batch.weights[rows])


def row_sums(batch: SparseBatch, per_nonzero: np.ndarray) -> np.ndarray:
    """Per row of ``batch``, the sum of ``per_nonzero`` (a value for each of its nonzeros, in
    order), in float64."""
    rows = np.repeat(np.arange(batch.n_rows), np.diff(batch.indptr))
    return np.bincount(rows, weights=per_nonzero, minlength=batch.n_rows)


@kernel(nogil=True, allocates=False)
def _scale_to_unit(indptr, values, out):
    """Each row's values divided by its L2 length into ``out``: the squares summed in float64
    in the row's order, each value times 1 / length in float64, then rounded to ``out``'s
    dtype. A row whose length is 0 is copied as it is."""
    for r in range(indptr.size - 1):
        total = 0.0
        for j in range(indptr[r], indptr[r + 1]):
            total += np.float64(values[j]) * np.float64(values[j])
        scale = 1.0 / np.sqrt(total) if total > 0.0 else 1.0
        for j in range(indptr[r], indptr[r + 1]):
            out[j] = np.float64(values[j]) * scale


def unit_rows(batch: SparseBatch) -> SparseBatch:
    """The batch with every row's values divided by the row's L2 length: xLearn's instance
    normalization of its FFM (FM hyperparameter ``instance_norm``; xLearn's FM divides its
    pairwise terms by the squared length once more). A row of zeros, or without
    values, is kept as it is. Scaling a row already of unit length leaves it so (up to
    rounding). One compiled pass and one new array: on the reading thread, numpy's five
    temporary arrays (each a fresh mapping, see :mod:`fmkit.memory`) took longer than the
    parse."""
    scaled = np.empty(batch.indptr[-1], batch.values.dtype)
    _scale_to_unit(batch.indptr, batch.values, scaled)
    return replace(batch, values=scaled)


def concat(batches: list[SparseBatch]) -> SparseBatch:
    """Join batches row-wise (their line numbers are kept; the first source names the result)."""
    if len(batches) == 1:
        return batches[0]
    offsets = np.cumsum([0] + [b.indptr[-1] for b in batches[:-1]])
    indptr = np.concatenate(
        [batches[0].indptr[:1]] + [b.indptr[1:] + off for b, off in zip(batches, offsets)]
    )
    has_lines = all(b.lines is not None for b in batches)
    has_widths = all(b.widths is not None for b in batches)
    has_fields = all(b.fields is not None for b in batches)
    has_weights = all(b.weights is not None for b in batches)
    return SparseBatch(
        indptr=indptr,
        indices=np.concatenate([b.indices for b in batches]),
        values=np.concatenate([b.values for b in batches]),
        labels=np.concatenate([b.labels for b in batches]),
        lines=np.concatenate([b.lines for b in batches]) if has_lines else None,
        source=batches[0].source,
        first_row=batches[0].first_row,
        row_unit=batches[0].row_unit,
        widths=np.concatenate([b.widths for b in batches]) if has_widths else None,
        fields=np.concatenate([b.fields for b in batches]) if has_fields else None,
        weights=np.concatenate([b.weights for b in batches]) if has_weights else None,
    )


CHUNK_ROWS = 16384  # rows per training chunk (rounded down to whole mini-batches)


def rebatch(blocks: Iterable[SparseBatch], batch_size: int,
            chunk_rows: int = CHUNK_ROWS) -> Iterator[SparseBatch]:
    """Regroup blocks into chunks of one fixed size: whole mini-batches, about ``chunk_rows``
    rows (at least one mini-batch); the last chunk holds what is left.

    Readers cut files into blocks of bytes, and the parser cuts a block into one part per
    thread; a chunk's rows are shuffled together and trained in one compiled call. Chunks of
    a fixed size make the data order, and so the model, the same whatever the block size and
    however many threads parsed it.
    """
    size = max(1, chunk_rows // batch_size) * batch_size
    pending: list[SparseBatch] = []
    held = 0
    for block in blocks:
        if block.n_rows == 0:
            continue
        pending.append(block)
        held += block.n_rows
        if held < size:
            continue
        joined = concat(pending) if len(pending) > 1 else pending[0]
        start = 0
        while joined.n_rows - start >= size:
            yield joined.slice(start, start + size)
            start += size
        pending = [joined.slice(start, joined.n_rows)] if start < joined.n_rows else []
        held = joined.n_rows - start
    if held:
        yield concat(pending) if len(pending) > 1 else pending[0]


def shuffled_batches(blocks: Iterable[SparseBatch], size: int, shuffle: bool,
                     rng: np.random.Generator) -> Iterator[SparseBatch]:
    """Mini-batches of ``size`` rows (the last may be smaller), with ``shuffle`` the rows of
    each chunk (:func:`rebatch`) in an order drawn from ``rng``."""
    for chunk in rebatch(blocks, size):
        order = rng.permutation(chunk.n_rows) if shuffle else np.arange(chunk.n_rows)
        for start in range(0, chunk.n_rows, size):
            yield take(chunk, order[start:start + size])
