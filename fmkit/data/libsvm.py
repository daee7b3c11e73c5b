"""libsvm / svmlight text: ``label idx:val idx:val ... [# comment]``, one row per line.

Parsing happens a block at a time inside one compiled function (no Python loop per row).
Indices are stored as written; the caller shifts them to 0-based (see :mod:`fmkit.data.sources`).
Blank lines and ``#`` comments are skipped, ``qid:N`` tokens (svmlight ranking) are ignored.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
from numba import njit

from fmkit.data.batch import SparseBatch
from fmkit.data.blocks import BLOCK_BYTES, iter_line_blocks
from fmkit.data.numbers import BAD_INDEX, BAD_NUMBER, NOT_FINITE, OK, parse_float, parse_index
from fmkit.errors import DataError

MISSING_COLON = 10

_NL, _CR, _SPACE, _TAB, _HASH, _COLON = 10, 13, 32, 9, 35, 58


@njit(cache=True, inline="always")
def _is_space(c):
    return c == _SPACE or c == _TAB


@njit(cache=True)
def _is_qid(buf, start, colon):
    return (colon - start == 3 and buf[start] == 113 and buf[start + 1] == 105
            and buf[start + 2] == 100)


@njit(cache=True)
def parse_libsvm(buf, first_line, indptr, indices, values, labels, lines):
    """Parse whole lines of ``buf`` into preallocated CSR arrays.

    Returns ``(rows, nnz, code, token_start, token_end, line)``; ``code`` is 0 on success, else the
    problem found at ``buf[token_start:token_end]`` on ``line``.
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
        for q in range(pos, end):
            if buf[q] == _HASH:
                stop = q
                break
        while stop > pos and (buf[stop - 1] == _CR or _is_space(buf[stop - 1])):
            stop -= 1
        p = pos
        while p < stop and _is_space(buf[p]):
            p += 1
        if p < stop:
            te = p
            while te < stop and not _is_space(buf[te]):
                te += 1
            label, code = parse_float(buf, p, te)
            if code != OK:
                return row, nnz, code, p, te, line
            p = te
            while True:
                while p < stop and _is_space(buf[p]):
                    p += 1
                if p >= stop:
                    break
                te = p
                colon = -1
                while te < stop and not _is_space(buf[te]):
                    if buf[te] == _COLON and colon < 0:
                        colon = te
                    te += 1
                if colon < 0:
                    return row, nnz, MISSING_COLON, p, te, line
                if _is_qid(buf, p, colon):
                    p = te
                    continue
                idx, code = parse_index(buf, p, colon)
                if code != OK:
                    return row, nnz, BAD_INDEX, p, te, line
                val, code = parse_float(buf, colon + 1, te)
                if code != OK:
                    return row, nnz, code, p, te, line
                indices[nnz] = idx
                values[nnz] = val
                nnz += 1
                p = te
            labels[row] = label
            lines[row] = line
            row += 1
            indptr[row] = nnz
        pos = end + 1
        line += 1
    return row, nnz, 0, 0, 0, line


def describe_problem(code: int, token: str) -> str:
    """The human text for a parser's problem code."""
    return {
        BAD_NUMBER: f"non-numeric value in {token!r}",
        NOT_FINITE: f"value {token!r} is not finite (NaN or infinity)",
        BAD_INDEX: f"feature index in {token!r} is not a non-negative integer below 2^31",
        MISSING_COLON: f"expected INDEX:VALUE, got {token!r}",
    }.get(code, f"cannot parse {token!r}")


def parse_block(buf: np.ndarray, first_line: int, source: str) -> SparseBatch:
    """Parse a block of whole libsvm lines; raise :class:`DataError` naming file and line."""
    max_rows = int(np.count_nonzero(buf == _NL)) + 1
    max_nnz = int(np.count_nonzero(buf == _COLON))
    indptr = np.empty(max_rows + 1, dtype=np.int64)
    indices = np.empty(max_nnz, dtype=np.int32)
    values = np.empty(max_nnz, dtype=np.float32)
    labels = np.empty(max_rows, dtype=np.float32)
    lines = np.empty(max_rows, dtype=np.int64)
    rows, nnz, code, t0, t1, line = parse_libsvm(
        buf, first_line, indptr, indices, values, labels, lines
    )
    if code != 0:
        token = bytes(buf[t0:t1]).decode("utf-8", "replace")
        raise DataError(source, int(line), describe_problem(int(code), token))
    return SparseBatch(indptr[: rows + 1], indices[:nnz], values[:nnz], labels[:rows],
                       lines[:rows], source)


def read_file_blocks(path: Path, block_bytes: int = BLOCK_BYTES) -> Iterator[SparseBatch]:
    """Stream a libsvm file as parsed blocks."""
    for buf, first_line in iter_line_blocks(path, block_bytes):
        yield parse_block(buf, first_line, str(path))


def write_libsvm(stream: BinaryIO, X, y, *, index_base: int = 0) -> None:
    """Write a CSR matrix and labels as libsvm text (for tests, benchmarks and ``convert``)."""
    X = X.tocsr()
    lines = []
    for r in range(X.shape[0]):
        lo, hi = X.indptr[r], X.indptr[r + 1]
        pairs = "".join(f" {int(i) + index_base}:{float(v):.9g}"
                        for i, v in zip(X.indices[lo:hi], X.data[lo:hi]))
        lines.append(f"{float(y[r]):.9g}{pairs}\n")
    stream.write("".join(lines).encode())
