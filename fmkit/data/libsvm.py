"""libsvm / svmlight text: ``label idx:val idx:val ... [# comment]``, one row per line, and
libffm text: ``label field:idx:val ...`` (the fields kept beside the indices: an FFM uses them,
an FM ignores them, as xLearn's FM does).

Parsing happens a block at a time inside one compiled function (no Python loop per row).
Indices are stored as written; the caller shifts them to 0-based (see :mod:`fmkit.data.sources`).
Blank lines and ``#`` comments are skipped, ``qid:N`` tokens (svmlight ranking) are ignored.
Writing libsvm (:func:`write_libsvm`) is compiled too, a block of rows per call.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from fmkit.compile_cache import kernel, kernel_helper
from fmkit.cpus import on_threads, thread_count
from fmkit.data.batch import SparseBatch
from fmkit.data.blocks import BLOCK_BYTES, count_newlines, iter_blocks
from fmkit.data.numbers import BAD_INDEX, BAD_NUMBER, NOT_FINITE, OK, parse_float
from fmkit.errors import DataError, excerpt

MISSING_COLON = 10
MISSING_FIELD = 11
NO_LABEL = 12

_NL, _CR, _SPACE, _TAB, _HASH, _COLON = 10, 13, 32, 9, 35, 58


@kernel_helper()
def _is_space(c):
    return c == _SPACE or c == _TAB or c == _CR


@kernel_helper()
def _ends_token(c):
    return c == _SPACE or c == _TAB or c == _CR or c == _NL or c == _HASH


@kernel_helper()
def _token_end(buf, p, n):
    while p < n and not _ends_token(buf[p]):
        p += 1
    return p


@kernel_helper(forceinline=False)
def _bad_pair(buf, start, end, ffm):
    """The problem code of an ``[FIELD:]INDEX:VALUE`` token whose ids did not parse."""
    colons = 0
    for q in range(start, end):
        if buf[q] == _COLON:
            colons += 1
    if colons == 0:
        return MISSING_COLON
    if ffm and colons == 1:
        return MISSING_FIELD
    return BAD_INDEX


@kernel_helper()
def _parse_id(buf, p, n):
    """Digits at ``p`` as an int (stops past 2^31 - 1); returns ``(value, end)``."""
    value = 0
    while p < n and 48 <= buf[p] <= 57 and value <= 2147483647:
        value = value * 10 + (buf[p] - 48)
        p += 1
    return value, p


@kernel_helper()
def _next_token(buf, p, n):
    """Where the line's next token starts, at or after ``p``; -1 at the line's end (a newline,
    a ``#`` comment or the end of the buffer)."""
    while p < n and _is_space(buf[p]):
        p += 1
    if p >= n or buf[p] == _NL or buf[p] == _HASH:
        return -1
    return p


@kernel_helper()
def _is_qid(buf, start, n):
    return (start + 3 < n and buf[start] == 113 and buf[start + 1] == 105
            and buf[start + 2] == 100 and buf[start + 3] == _COLON)


@kernel(nogil=True, allocates=False)
def parse_libsvm(buf, first_line, indptr, indices, values, labels, lines, fields, ffm,
                 optional_label):
    """Parse whole lines of ``buf`` into preallocated CSR arrays, in one pass over the bytes;
    ``ffm``: the tokens are libffm's ``field:index:value``, each field written to ``fields``;
    ``optional_label``: a line may start with its first pair (a file to score: label 0).

    Returns ``(rows, nnz, code, token_start, token_end, line)``; ``code`` is 0 on success, else the
    problem found at ``buf[token_start:token_end]`` on ``line``.
    """
    n = buf.size
    p = 0
    row = 0
    nnz = 0
    line = first_line
    indptr[0] = 0
    while p < n:
        start = _next_token(buf, p, n)
        if start >= 0:
            te = _token_end(buf, start, n)
            label, code = parse_float(buf, start, te)
            p = te
            if code != OK:
                if _bad_pair(buf, start, te, False) == MISSING_COLON:
                    return row, nnz, code, start, te, line
                if not optional_label:  # a pair where the label should be
                    return row, nnz, NO_LABEL, start, te, line
                label, p = 0.0, start
            while True:
                start = _next_token(buf, p, n)
                if start < 0:
                    break
                idx, p = _parse_id(buf, start, n)
                good = p > start and p < n and buf[p] == _COLON and idx <= 2147483647
                field = idx
                if good and ffm:  # that was the field: the index follows
                    p += 1
                    field_end = p
                    idx, p = _parse_id(buf, p, n)
                    good = p > field_end and p < n and buf[p] == _COLON and idx <= 2147483647
                if not good:
                    te = _token_end(buf, start, n)
                    if p == start and _is_qid(buf, start, n):  # svmlight's qid:N: ignored
                        p = te
                        continue
                    return row, nnz, _bad_pair(buf, start, te, ffm), start, te, line
                p += 1
                if p + 1 <= n and 48 <= buf[p] <= 57 and (p + 1 == n or _ends_token(buf[p + 1])):
                    val = np.float64(buf[p] - 48)  # the common one-digit value (one-hot "1")
                    p += 1
                else:
                    te = _token_end(buf, p, n)
                    val, code = parse_float(buf, p, te)
                    if code != OK:
                        return row, nnz, code, start, te, line
                    p = te
                indices[nnz] = idx
                values[nnz] = val
                if ffm:
                    fields[nnz] = field
                nnz += 1
            labels[row] = label
            lines[row] = line
            row += 1
            indptr[row] = nnz
        while p < n and buf[p] != _NL:  # a comment, or the rest of a blank line
            p += 1
        p += 1
        line += 1
    return row, nnz, 0, 0, 0, line


@kernel(nogil=True, allocates=False)
def _largest_field(buf):
    """The largest field of the ``field:index:value`` tokens in whole libffm lines (-1 if
    none): the tokens as :func:`parse_libsvm` walks them, reading only their two ids. A token
    that is not one (``qid:``, a malformed one) is passed over: the reader refuses it later."""
    n = buf.size
    p = 0
    largest = -1
    while p < n:
        start = _next_token(buf, p, n)
        if start >= 0:
            p = _token_end(buf, start, n)  # the label
            while True:
                start = _next_token(buf, p, n)
                if start < 0:
                    break
                field, p = _parse_id(buf, start, n)
                if p > start and p < n and buf[p] == _COLON:
                    index_start = p + 1
                    _, p = _parse_id(buf, index_start, n)
                    if p > index_start and p < n and buf[p] == _COLON:
                        largest = max(largest, field)
                p = _token_end(buf, p, n)
        while p < n and buf[p] != _NL:
            p += 1
        p += 1
    return largest


def describe_problem(code: int, token: bytes) -> str:
    """The human text for a parser's problem code."""
    token = excerpt(token)
    return {
        BAD_NUMBER: f"non-numeric value in {token}",
        NOT_FINITE: f"value {token} is not a finite float32 (NaN, infinity, or beyond ±3.4e38)",
        BAD_INDEX: f"feature index in {token} is not a non-negative integer below 2^31",
        MISSING_COLON: f"expected INDEX:VALUE, got {token}",
        MISSING_FIELD: f"expected FIELD:INDEX:VALUE (libffm), got {token}",
        NO_LABEL: f"no label: the line starts with the pair {token} (a file to score without "
                  "labels is read by predict; this needs them)",
    }.get(code, f"cannot parse {token}")


PARALLEL_BYTES = 1 << 20  # blocks at least this large are parsed in parts across threads


def line_bounds(buf: np.ndarray, parts: int) -> np.ndarray:
    """Where to cut a block of whole lines into ``parts`` parts of about equal size: after a
    newline (a part may be empty); ``parts + 1`` offsets from 0 to ``buf.size``."""
    bounds = [0]
    for p in range(1, parts):
        at = buf.size * p // parts
        at += int(np.argmax(buf[at:] == _NL))  # the next line end; 0 offset if there is none
        cut = at + 1 if buf[at] == _NL else buf.size
        bounds.append(max(bounds[-1], min(cut, buf.size)))
    return np.array([*bounds, buf.size], dtype=np.int64)


def _parse_part(buf, lo, hi, row_at, r1, nnz_at, z1, part, indptr, indices, values, labels,
                lines, fields, ffm, optional_label):
    """:func:`parse_libsvm` on the whole lines ``buf[lo:hi]`` into part ``part``'s region of
    the output arrays (rows ``row_at:r1``, features ``nnz_at:z1``; sized by the part's bytes,
    so no pass counts rows first), line numbers counted from the part's start."""
    return parse_libsvm(buf[lo:hi], 0, indptr[row_at + part:r1 + part + 1],
                        indices[nnz_at:z1], values[nnz_at:z1], labels[row_at:r1],
                        lines[row_at:r1], fields[nnz_at:z1] if ffm else fields, ffm,
                        optional_label)


def parse_block(buf: np.ndarray, first_line: int, source: str, ffm: bool = False,
                labelled: bool = True) -> tuple[list[SparseBatch], int]:
    """Parse a block of whole libsvm lines into one batch per part, and count its newlines;
    raise :class:`DataError` naming file and line. Unless ``labelled``, a line may leave out
    its label (it starts with a pair; xLearn reads such files to score too).

    A large block is cut at line ends into one part per thread, parsed in parallel; each part
    becomes its own batch (views of the block's arrays: nothing is copied to join them).
    """
    parts = thread_count() if buf.size >= PARALLEL_BYTES else 1
    bounds = line_bounds(buf, parts)
    newlines = np.array(on_threads(count_newlines, [(buf, bounds[p], bounds[p + 1])
                                                    for p in range(parts)]), dtype=np.int64)
    # rows: at most one per line; features: at most one per 4 bytes (" 1:1"), a bound whose
    # untouched pages cost address space, not memory
    row_at = np.concatenate([[0], np.cumsum(newlines + 1)]).astype(np.int64)
    nnz_at = np.concatenate([[0], np.cumsum(np.diff(bounds) // 4 + 1)]).astype(np.int64)
    indptr = np.empty(row_at[-1] + parts, dtype=np.int64)
    indices = np.empty(nnz_at[-1], dtype=np.int32)
    values = np.empty(nnz_at[-1], dtype=np.float32)
    labels = np.empty(row_at[-1], dtype=np.float32)
    lines = np.empty(row_at[-1], dtype=np.int64)
    fields = np.empty(nnz_at[-1] if ffm else 0, dtype=np.int32)
    results = on_threads(_parse_part, [
        (buf, bounds[p], bounds[p + 1], row_at[p], row_at[p + 1], nnz_at[p], nnz_at[p + 1], p,
         indptr, indices, values, labels, lines, fields, ffm, not labelled)
        for p in range(parts)])
    batches = []
    line = first_line
    for p, (rows, nnz, code, t0, t1, lines_in_part) in enumerate(results):
        t0, t1 = t0 + bounds[p], t1 + bounds[p]
        if code != 0:  # the first problem in file order
            token = bytes(buf[t0:min(t1, t0 + 200)])  # (excerpt shows non-UTF-8 bytes as \xNN)
            raise DataError(source, line + lines_in_part, describe_problem(code, token))
        r0, z0 = row_at[p], nnz_at[p]
        part_lines = lines[r0:r0 + rows]
        part_lines += line
        batches.append(SparseBatch(indptr[r0 + p:r0 + p + rows + 1], indices[z0:z0 + nnz],
                                   values[z0:z0 + nnz], labels[r0:r0 + rows], part_lines,
                                   source, fields=fields[z0:z0 + nnz] if ffm else None))
        line += lines_in_part
    return batches, int(newlines.sum())


def largest_field(path: Path, block_bytes: int = BLOCK_BYTES) -> int:
    """The largest field a libffm file's tokens name (-1 if none), from its bytes alone: what
    an FFM's ``num_fields`` defaults to (+1), found without parsing the file's numbers. A large
    block is cut at line ends into one part per thread, scanned at once (as
    :func:`parse_block` parses): the whole file's extra pass, before training starts."""
    largest = -1
    for buf in iter_blocks(path, block_bytes):
        bounds = line_bounds(buf, thread_count() if buf.size >= PARALLEL_BYTES else 1)
        largest = max([largest, *on_threads(_largest_field, [
            (buf[lo:hi],) for lo, hi in zip(bounds[:-1], bounds[1:])])])
    return int(largest)


def read_file_blocks(path: Path, block_bytes: int = BLOCK_BYTES, ffm: bool = False,
                     shard: tuple[int, int] = (0, 1), labelled: bool = True
                     ) -> Iterator[SparseBatch]:
    """Stream a libsvm (or with ``ffm``, libffm) file as parsed blocks; with ``shard=(part,
    parts)`` only every parts-th block of lines from the part-th (the others are counted for
    line numbers, not parsed); ``labelled``: see :func:`parse_block`."""
    line = 1
    part, parts = shard
    for index, buf in enumerate(iter_blocks(path, block_bytes)):
        if index % parts != part:
            line += count_newlines(buf, 0, buf.size)
            continue
        batches, newlines = parse_block(buf, line, str(path), ffm, labelled)
        yield from batches
        line += newlines


def read_libffm_blocks(path: Path, block_bytes: int = BLOCK_BYTES,
                       shard: tuple[int, int] = (0, 1), labelled: bool = True
                       ) -> Iterator[SparseBatch]:
    """Stream a libffm file as parsed blocks (with each nonzero's field)."""
    return read_file_blocks(path, block_bytes, ffm=True, shard=shard, labelled=labelled)


WRITE_ROWS = 1 << 16  # rows spelled per compiled call: the text of one call is held at once
WHOLE_BELOW = 1e9  # integers the writer spells itself: those %.9g writes as their digits


def write_libsvm(stream: BinaryIO, X, y, *, index_base: int = 0,
                 block_rows: int = WRITE_ROWS) -> None:
    """Write a CSR matrix and labels as libsvm text (``convert``, ``recommend pairs``, ``tune``'s
    validation split), each number as Python's ``f"{float(v):.9g}"`` spells it (every float32
    exactly). Compiled, a block of rows at a time; only numbers that are not small integers are
    spelled by Python, once per distinct value (a Python loop per row was the slowest step of
    those commands: docs/performance.md, session 55)."""
    X = X.tocsr()
    labels = np.asarray(y, dtype=np.float64)
    for start in range(0, X.shape[0], block_rows):
        stop = min(start + block_rows, X.shape[0])
        lo, hi = X.indptr[start], X.indptr[stop]
        numbers = np.concatenate([labels[start:stop], X.data[lo:hi]], dtype=np.float64)
        text, starts, spelled = _spellings(numbers)
        indptr = X.indptr[start:stop + 1] - lo
        indices = X.indices[lo:hi]
        args = (indptr, indices, index_base, numbers, spelled, text, starts)
        out = np.empty(_spell_rows(*args, np.empty(0, np.uint8)), np.uint8)
        _spell_rows(*args, out)
        stream.write(out.data)


def _spellings(numbers: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``%.9g`` spellings of the numbers the compiled writer does not spell itself (all but
    integers below 10^9 in magnitude, -0 excepted), each distinct one once: their bytes end to
    end, where each begins (and the end), and per number its spelling's position (-1: none)."""
    whole = (numbers == np.floor(numbers)) & (np.abs(numbers) < WHOLE_BELOW)
    whole &= ~((numbers == 0) & np.signbit(numbers))
    spelled = np.full(numbers.size, -1, np.int64)
    others = ~whole
    distinct, spelled[others] = np.unique(numbers[others].view(np.uint64), return_inverse=True)
    words = [f"{v:.9g}".encode() for v in distinct.view(np.float64).tolist()]
    starts = np.zeros(len(words) + 1, np.int64)
    np.cumsum([len(w) for w in words], out=starts[1:])
    return np.frombuffer(b"".join(words), np.uint8), starts, spelled


@kernel_helper()
def _put_int(value, out, at, write):
    """The decimal digits of ``value`` (with its sign) at ``out[at:]`` (only counted unless
    ``write``); returns where they end."""
    if value < 0:
        if write:
            out[at] = 45
        at += 1
        value = -value
    digits, bound = 1, 10
    while value >= bound and digits < 19:  # (10^19 overflows: int64 has 19 digits at most)
        digits, bound = digits + 1, bound * 10
    if write:
        for d in range(digits):
            out[at + digits - 1 - d] = 48 + value % 10
            value //= 10
    return at + digits


@kernel_helper()
def _put_number(numbers, spelled, text, starts, j, out, at, write):
    """Number ``j`` at ``out[at:]``: its digits, or its spelling from ``text``."""
    if spelled[j] < 0:
        return _put_int(np.int64(numbers[j]), out, at, write)
    lo, hi = starts[spelled[j]], starts[spelled[j] + 1]
    if write:
        for c in range(lo, hi):
            out[at + c - lo] = text[c]
    return at + hi - lo


@kernel(nogil=True, allocates=False)
def _spell_rows(indptr, indices, base, numbers, spelled, text, starts, out):
    """The rows as libsvm lines into ``out`` (numbers: the rows' labels, then their values);
    with an empty ``out``, only their length. Returns the length."""
    write = out.size > 0
    rows = indptr.size - 1
    at = 0
    for r in range(rows):
        at = _put_number(numbers, spelled, text, starts, r, out, at, write)
        for j in range(indptr[r], indptr[r + 1]):
            if write:
                out[at] = _SPACE
            at = _put_int(np.int64(indices[j]) + base, out, at + 1, write)
            if write:
                out[at] = _COLON
            at = _put_number(numbers, spelled, text, starts, rows + j, out, at + 1, write)
        if write:
            out[at] = _NL
        at += 1
    return at
