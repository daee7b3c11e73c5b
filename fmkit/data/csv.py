"""Dense CSV: the label in the first column, then one column per feature, no header.

This is SageMaker's CSV training layout. Zeros are dropped so rows become sparse batches.
Every row must have as many columns as the first row. A file to score may leave the label
out: rows of exactly ``feature_dim`` columns, read without one when labels are not needed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fmkit.compile_cache import kernel
from fmkit.data.batch import SparseBatch
from fmkit.data.blocks import BLOCK_BYTES, iter_line_blocks
from fmkit.data.numbers import BAD_NUMBER, NOT_FINITE, OK, parse_float
from fmkit.errors import DataError, excerpt
from fmkit.logs import log_once

WRONG_COLUMNS = 20

_NL, _CR, _COMMA, _SPACE, _TAB = 10, 13, 44, 32, 9


@kernel(nogil=True, allocates=False)
def parse_csv(buf, first_line, n_columns, label_columns, indptr, indices, values, labels,
              lines):
    """Parse whole CSV lines into preallocated CSR arrays.

    ``n_columns`` is the expected column count (-1: take it from the first row);
    ``label_columns`` is 1 (the first column is the label) or 0 (every column is a feature;
    labels 0). Returns ``(rows, nnz, code, token_start, token_end, line, n_columns,
    columns_seen)``.
    """
    n = buf.size
    pos = 0
    row = 0
    nnz = 0
    line = first_line
    indptr[0] = 0
    while pos < n:
        end = pos
        while end < n and buf[end] != _NL:
            end += 1
        stop = end
        if stop > pos and buf[stop - 1] == _CR:
            stop -= 1
        blank = True
        for q in range(pos, stop):
            if buf[q] != _SPACE and buf[q] != _TAB:
                blank = False
                break
        if not blank:
            col = 0
            p = pos
            while True:
                fe = p
                while fe < stop and buf[fe] != _COMMA:
                    fe += 1
                a, b = p, fe
                while a < b and (buf[a] == _SPACE or buf[a] == _TAB):
                    a += 1
                while b > a and (buf[b - 1] == _SPACE or buf[b - 1] == _TAB):
                    b -= 1
                value, code = parse_float(buf, a, b)
                if code != OK:
                    return row, nnz, code, a, b, line, n_columns, col
                if col < label_columns:
                    labels[row] = value
                elif value != 0.0:
                    indices[nnz] = col - label_columns
                    values[nnz] = value
                    nnz += 1
                col += 1
                if fe >= stop:
                    break
                p = fe + 1
            if n_columns < 0:
                n_columns = col
            elif col != n_columns:
                return row, nnz, WRONG_COLUMNS, pos, stop, line, n_columns, col
            lines[row] = line
            row += 1
            indptr[row] = nnz
        pos = end + 1
        line += 1
    return row, nnz, 0, 0, 0, line, n_columns, 0


class CsvParser:
    """Parses the blocks of one CSV stream, remembering its column count across blocks.
    With ``feature_dim``, rows of exactly that many columns hold no label: read so when
    ``labelled`` is false (a file to score), with a warning either way."""

    def __init__(self, source: str, feature_dim: int | None = None, labelled: bool = True):
        self.source = source
        self.n_columns = -1
        self.feature_dim, self.labelled = feature_dim, labelled
        self.label_columns = 1

    def _check_label(self, buf: np.ndarray) -> None:
        """Decide, from the first line of a block, whether the rows hold a label."""
        ends = np.flatnonzero(buf == _NL)
        line = buf[:ends[0] if ends.size else buf.size]
        if not line.size or int(np.count_nonzero(line == _COMMA)) + 1 != self.feature_dim:
            return
        message = (f"{self.source}: rows of {self.feature_dim} columns, feature_dim without a "
                   "label column")
        if self.labelled:
            log_once(f"{message}: has the file its label? Its first column is read as the "
                     "label", logging.WARNING)
        else:
            log_once(f"{message}: read as features only", logging.WARNING)
            self.label_columns = 0

    def parse_block(self, buf: np.ndarray, first_line: int) -> SparseBatch:
        max_rows = int(np.count_nonzero(buf == _NL)) + 1
        max_nnz = int(np.count_nonzero(buf == _COMMA)) + max_rows
        indptr = np.empty(max_rows + 1, dtype=np.int64)
        indices = np.empty(max_nnz, dtype=np.int32)
        values = np.empty(max_nnz, dtype=np.float32)
        labels = np.empty(max_rows, dtype=np.float32)
        lines = np.empty(max_rows, dtype=np.int64)
        if self.n_columns < 0 and self.feature_dim:
            self._check_label(buf)
        rows, nnz, code, t0, t1, line, n_columns, seen = parse_csv(
            buf, first_line, self.n_columns, self.label_columns, indptr, indices, values,
            labels, lines
        )
        self.n_columns = int(n_columns)
        if not self.label_columns:
            labels[:rows] = 0.0
        if code != 0:
            token = bytes(buf[t0:t1])  # (excerpt shows non-UTF-8 bytes as \xNN)
            raise DataError(self.source, int(line), self._describe(int(code), token, int(seen)))
        return SparseBatch(indptr[: rows + 1], indices[:nnz], values[:nnz], labels[:rows],
                           lines[:rows], self.source)

    def _describe(self, code: int, token: bytes, column: int) -> str:
        if code == WRONG_COLUMNS:
            return f"expected {self.n_columns} columns like the first row, got {column}"
        where = ("label (column 1)" if column < self.label_columns
                 else f"column {column + 1}")
        if code == NOT_FINITE:
            return (f"{where}: value {excerpt(token)} is not a finite float32 (NaN, infinity, "
                    "or beyond ±3.4e38)")
        if code == BAD_NUMBER and not token:
            return f"{where}: empty value"
        return f"{where}: non-numeric value {excerpt(token)} (CSV files have no header)"


def read_file_blocks(path: Path, block_bytes: int = BLOCK_BYTES,
                     shard: tuple[int, int] = (0, 1), feature_dim: int | None = None,
                     labelled: bool = True) -> Iterator[SparseBatch]:
    """Stream a CSV file as parsed blocks (with ``shard=(part, parts)``: every parts-th;
    ``feature_dim`` and ``labelled``: see :class:`CsvParser`)."""
    parser = CsvParser(str(path), feature_dim, labelled)
    part, parts = shard
    for index, (buf, first_line) in enumerate(iter_line_blocks(path, block_bytes)):
        if index % parts == part:
            yield parser.parse_block(buf, first_line)
