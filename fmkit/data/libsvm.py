"""libsvm / svmlight text: ``label idx:val idx:val ... [# comment]``, one row per line.

Parsing happens a block at a time inside one compiled function (no Python loop per row).
Indices are stored as written; the caller shifts them to 0-based (see :mod:`fmkit.data.sources`).
Blank lines and ``#`` comments are skipped, ``qid:N`` tokens (svmlight ranking) are ignored.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numba
import numpy as np
from numba import njit, prange

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


PARALLEL_BYTES = 1 << 20  # blocks at least this large are parsed in parts across threads


@njit(cache=True, parallel=True)
def _parse_parts(buf, bounds, first_lines, row_at, nnz_at, indptr, indices, values, labels,
                 lines, results):
    """:func:`parse_libsvm` on each part ``buf[bounds[p]:bounds[p+1]]`` (whole lines) in
    parallel, each writing its own region of the output arrays."""
    for p in prange(bounds.size - 1):
        lo, hi = bounds[p], bounds[p + 1]
        r0, z0 = row_at[p], nnz_at[p]
        rows, nnz, code, t0, t1, line = parse_libsvm(
            buf[lo:hi], first_lines[p], indptr[r0 + p:row_at[p + 1] + p + 1],
            indices[z0:nnz_at[p + 1]], values[z0:nnz_at[p + 1]], labels[r0:row_at[p + 1]],
            lines[r0:row_at[p + 1]])
        results[p, 0], results[p, 1], results[p, 2] = rows, nnz, code
        results[p, 3], results[p, 4], results[p, 5] = lo + t0, lo + t1, line


def parse_block(buf: np.ndarray, first_line: int, source: str) -> SparseBatch:
    """Parse a block of whole libsvm lines; raise :class:`DataError` naming file and line.

    A large block is cut at line ends into one part per thread, parsed in parallel.
    """
    parts = numba.get_num_threads() if buf.size >= PARALLEL_BYTES else 1
    bounds = [0]
    for p in range(1, parts):
        cut = int(np.argmax(buf[buf.size * p // parts:] == _NL)) + buf.size * p // parts + 1
        bounds.append(max(bounds[-1], min(cut, buf.size)))
    bounds = np.array([*bounds, buf.size], dtype=np.int64)
    newlines = np.array([np.count_nonzero(buf[a:b] == _NL) for a, b in zip(bounds, bounds[1:])])
    colons = np.array([np.count_nonzero(buf[a:b] == _COLON) for a, b in zip(bounds, bounds[1:])])
    row_at = np.concatenate([[0], np.cumsum(newlines + 1)]).astype(np.int64)
    nnz_at = np.concatenate([[0], np.cumsum(colons)]).astype(np.int64)
    first_lines = first_line + np.concatenate([[0], np.cumsum(newlines)[:-1]]).astype(np.int64)
    indptr = np.empty(row_at[-1] + parts, dtype=np.int64)
    indices = np.empty(nnz_at[-1], dtype=np.int32)
    values = np.empty(nnz_at[-1], dtype=np.float32)
    labels = np.empty(row_at[-1], dtype=np.float32)
    lines = np.empty(row_at[-1], dtype=np.int64)
    results = np.zeros((parts, 6), dtype=np.int64)
    _parse_parts(buf, bounds, first_lines, row_at, nnz_at, indptr, indices, values, labels,
                 lines, results)
    for _, _, code, t0, t1, line in results:  # the first problem in file order
        if code != 0:
            token = bytes(buf[t0:t1]).decode("utf-8", "replace")
            raise DataError(source, int(line), describe_problem(int(code), token))
    if parts == 1:
        rows, nnz = int(results[0, 0]), int(results[0, 1])
        return SparseBatch(indptr[: rows + 1], indices[:nnz], values[:nnz], labels[:rows],
                           lines[:rows], source)
    rows, nnz = results[:, 0], results[:, 1]
    offsets = np.concatenate([[0], np.cumsum(nnz)[:-1]])
    take_rows = [slice(row_at[p], row_at[p] + rows[p]) for p in range(parts)]
    take_nnz = [slice(nnz_at[p], nnz_at[p] + nnz[p]) for p in range(parts)]
    return SparseBatch(
        indptr=np.concatenate([[0]] + [indptr[row_at[p] + p + 1:row_at[p] + p + 1 + rows[p]]
                                       + offsets[p] for p in range(parts)]).astype(np.int64),
        indices=np.concatenate([indices[s] for s in take_nnz]),
        values=np.concatenate([values[s] for s in take_nnz]),
        labels=np.concatenate([labels[s] for s in take_rows]),
        lines=np.concatenate([lines[s] for s in take_rows]),
        source=source,
    )


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
