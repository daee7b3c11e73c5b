"""Raw named columns for DeepFM: delimited text (CSV/TSV), Parquet and JSON instances.

Each reader yields :class:`ColumnBatch` es: a block of rows as Arrow arrays, one per named
column, with where the rows came from so that a later check can name the file and line.
Delimited text is split by a compiled tokenizer rather than a CSV parser, because CTR logs
(raw Criteo TSV) drop trailing empty fields: a short row is padded with missing values, a long
row is an error, and so is a line without the delimiter where several columns are expected (a
file of another format or delimiter, which would otherwise score as rows of missing values).
Blank lines are skipped, as pyarrow's and pandas' CSV readers and fmkit's libsvm reader do.
The delimiter is one character. A field may be quoted as RFC 4180 and pyarrow's CSV reader
(TorchEasyRec's) have it: a ``"`` that opens a field quotes it up to the next lone ``"``, so
that it can hold the delimiter (MovieLens titles: ``"Apartment, The (1960)"``), and ``""``
inside stands for ``"``; a quoted field holds no line break (pyarrow's default too): a quote
that does not close on its line is text, as in a raw log's ``"red shoes``. A block without
``"`` is split by the vectorized path alone. Each column becomes an Arrow string array
(empty fields null) in one copy.
Parquet is read a row group at a time with pyarrow; list columns are multi-value features.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import logging
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fmkit.compile_cache import kernel
from fmkit.data import recordio
from fmkit.data.blocks import BOM, iter_line_blocks
from fmkit.data.sources import PARQUET_MAGIC, archive_kind, channel_files, shard_files
from fmkit.errors import DataError, excerpt
from fmkit.logs import log_once

BLOCK_BYTES = 1 << 22


@dataclass
class ColumnBatch:
    """Rows as named Arrow arrays. ``first_line`` is the file line of row 0 (text files), or
    None where rows are numbered instead (Parquet, requests); ``lines``, when set, is each
    row's file line (rows that are not consecutive lines: blank lines were skipped)."""

    columns: dict[str, pa.Array]
    n_rows: int
    source: str
    first_line: int | None = None
    absent_is_missing: bool = False  # JSON instances: a feature left out is a missing value
    header_like: bool = False  # the file's line 1, read as data, looks like a header
    lines: np.ndarray | None = None
    unit: str = "row"  # what a row is called where rows are numbered ("instance": requests)
    offset: int = 0  # where rows are numbered: the rows before row 0 (a Parquet file's)

    def error(self, row: int, problem: str) -> DataError:
        """A :class:`DataError` naming row ``row`` of this batch."""
        if self.lines is not None:
            line = int(self.lines[row])
        elif self.first_line is not None:
            line = self.first_line + row
        else:
            return DataError(self.source, None, f"{self.unit} {self.offset + row + 1}: "
                             f"{problem}")
        if line == 1 and self.header_like:
            problem += (" (line 1 looks like a header: set data_config.with_header: true or "
                        "input_fields)")
        return DataError(self.source, line, problem)

    def column(self, name: str) -> pa.Array:
        try:
            return self.columns[name]
        except KeyError:
            if self.absent_is_missing:
                return pa.nulls(self.n_rows, pa.string())
            shown = [excerpt(column, quote=False) for column in list(self.columns)[:20]]
            more = f", ... ({len(self.columns)} in all)" if len(self.columns) > 20 else ""
            raise DataError(self.source, None, f"no column {excerpt(name)} (columns: "
                            f"{', '.join(shown)}{more})") from None


QUOTE = 34  # '"'


@kernel(nogil=True)
def _unquoted(buf: np.ndarray, lo: int, hi: int, data: np.ndarray, at: int) -> int:
    """The length of the quoted field ``buf[lo:hi]`` (``buf[lo]`` is its opening quote) once
    unquoted: its text up to the closing quote with ``""`` as ``"``, then any rest as it is;
    with ``data`` not empty, that text is also copied to ``data[at:]``."""
    length, quoted, p = 0, True, lo + 1
    while p < hi:
        c = buf[p]
        p += 1
        if quoted and c == QUOTE:
            if p < hi and buf[p] == QUOTE:
                p += 1  # "" inside a quoted field: one quote
            else:
                quoted = False  # the closing quote
                continue
        if data.size:
            data[at + length] = c
        length += 1
    return length


@kernel(nogil=True)
def _fields(buf: np.ndarray, stops: np.ndarray, start: int, n_columns: int,
            offsets: np.ndarray, data: np.ndarray, counts: np.ndarray,
            quoted: np.ndarray) -> None:
    """One pass over the fields of ``buf[start:]``, which end at ``stops`` (the positions of
    the delimiters and newlines, and the end of the buffer if it ends without one): each
    row's field count into ``counts``; with ``data`` empty, each field's length into
    ``offsets[column, row + 1]``; else its bytes copied to ``data[offsets[column, row]:]``.
    A line's trailing CR is not part of its last field; fields beyond ``n_columns`` are
    counted only. ``quoted`` (empty, or a flag per field): the fields to unquote
    (:func:`_unquoted`)."""
    row, column, field_start = 0, 0, start
    for i, stop in enumerate(stops):
        newline = stop == buf.size or buf[stop] == 10
        end = stop
        if newline and end > field_start and buf[end - 1] == 13:
            end -= 1
        if column < n_columns:
            if quoted.size and quoted[i]:
                if data.size == 0:
                    offsets[column, row + 1] = _unquoted(buf, field_start, end, data, 0)
                else:
                    _unquoted(buf, field_start, end, data, offsets[column, row])
            elif data.size == 0:
                offsets[column, row + 1] = end - field_start
            else:
                at = offsets[column, row] - field_start
                for k in range(field_start, end):  # (a loop: a slice costs a view per field)
                    data[at + k] = buf[k]
        column += 1
        field_start = stop + 1
        if newline:
            counts[row] = column
            row += 1
            column = 0


@kernel(nogil=True)
def _quoted_stops(buf: np.ndarray, start: int, delimiter: int, stops: np.ndarray,
                  quoted: np.ndarray) -> int:
    """The field ends of ``buf[start:]`` into ``stops`` (the delimiters and newlines outside
    quoted fields, and the end of the buffer if it ends without a newline), walked byte by
    byte, and whether each field is quoted into ``quoted``; returns how many. A quote that
    does not close on its line is text: the line is walked again from after it."""
    n, opened, field_start = 0, -1, True  # opened: where the open quoted field starts
    p = start
    while p < buf.size:
        c = buf[p]
        p += 1
        if opened >= 0:
            if c == QUOTE and p < buf.size and buf[p] == QUOTE:
                p += 1  # "" inside a quoted field
            elif c == QUOTE:
                quoted[n], opened = True, -1
            elif c == 10:
                p, opened = opened + 1, -1  # not closed on its line: a quote as text
            if p >= buf.size and opened >= 0:  # ... nor before the end of the buffer
                p, opened = opened + 1, -1
        elif c == delimiter or c == 10:
            stops[n] = p - 1
            n += 1
            quoted[n] = False
            field_start = True
        else:
            if field_start and c == QUOTE:
                opened = p - 1
            field_start = False
    if buf.size > start and buf[buf.size - 1] != 10:  # a last line without its newline
        stops[n] = buf.size
        n += 1
    return n


def _split(buf: np.ndarray, start: int, delimiter: int, n_columns: int
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The lines of ``buf[start:]`` as columns in Arrow's layout: ``offsets`` [columns,
    rows + 1] (each column's from 0) and one ``data`` buffer holding column ``j``'s bytes
    from ``bases[j]``; and each row's field count. The field ends are found vectorized (byte
    by byte where a quote occurs), then two compiled passes over the fields: lengths, then
    bytes."""
    text = buf[start:]
    unterminated = bool(text.size) and text[-1] != 10  # a last line without its newline
    newlines = text == 10
    ends = (text == delimiter) | newlines
    if (text == QUOTE).any():
        stops = np.empty(int(np.count_nonzero(ends)) + 1, np.int64)
        quoted = np.zeros(stops.size + 1, np.bool_)
        stops = stops[:_quoted_stops(buf, start, delimiter, stops, quoted)]
        rows = int(np.count_nonzero(buf[stops[:stops.size - unterminated]] == 10))
    else:
        stops = np.flatnonzero(ends) + start
        if unterminated:
            stops = np.append(stops, buf.size)
        quoted = np.zeros(0, np.bool_)
        rows = int(np.count_nonzero(newlines))
    rows += unterminated
    offsets = np.zeros((n_columns, rows + 1), np.int64)
    counts = np.zeros(rows, np.int64)
    _fields(buf, stops, start, n_columns, offsets, np.empty(0, np.uint8), counts, quoted)
    np.cumsum(offsets, axis=1, out=offsets)
    bases = np.concatenate([[0], np.cumsum(offsets[:, -1])])
    data = np.empty(max(int(bases[-1]), 1), np.uint8)
    _fields(buf, stops, start, n_columns, offsets + bases[:-1, None], data, counts, quoted)
    return offsets, data, bases, counts


def _check_utf8(buf: np.ndarray, start: int, source: str, first_line: int) -> None:
    """Valid UTF-8 text (one vectorized pass), else a DataError naming the first bad line."""
    whole = pa.LargeStringArray.from_buffers(
        1, pa.py_buffer(np.array([0, buf.size - start], np.int64)), pa.py_buffer(buf[start:]))
    try:
        whole.validate(full=True)
    except pa.ArrowInvalid:
        for n, line in enumerate(buf[start:].tobytes().split(b"\n")):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                raise DataError(source, first_line + n, "not valid UTF-8 text") from None


def split_block(buf: np.ndarray, start: int, names: Sequence[str], delimiter: str,
                source: str, first_line: int) -> ColumnBatch:
    """The lines of ``buf[start:]`` split at ``delimiter`` into the columns ``names``; an
    empty or missing (trailing) field is null; more fields than names, or one field where
    names are several, is an error; blank lines are skipped."""
    _check_utf8(buf, start, source, first_line)
    separator = delimiter.encode()
    if len(separator) != 1:
        raise DataError(source, None, f"delimiter {delimiter!r}: expected one character")
    offsets, data, bases, counts = _split(buf, start, separator[0], len(names))
    blank = (counts == 1) & (offsets[0, 1:] == offsets[0, :-1])
    lone = (counts == 1) & ~blank & (len(names) > 1)
    bad = np.flatnonzero((counts > len(names)) | lone)
    if bad.size:
        row = int(bad[0])
        named = f"{', '.join(excerpt(name, quote=False) for name in names[:3])}, ..."
        if counts[row] > 1:
            problem = f"{counts[row]} fields, expected at most {len(names)} ({named})"
        else:
            field = data[offsets[0, row]:offsets[0, row + 1]].tobytes()
            problem = (f"{excerpt(field)} is 1 field, expected up to {len(names)} separated "
                       f"by {delimiter!r} ({named}): is it a file of this model's columns, and "
                       "data_config.delimiter its delimiter?"
                       + (" Or the rest of a quoted value begun on the line before: a row's "
                          "values must be on one line" if b'"' in field else ""))
        raise DataError(source, first_line + row, problem)
    columns = {}
    present = offsets[:, 1:] > offsets[:, :-1]
    nulls = present.shape[1] - np.count_nonzero(present, axis=1)
    for j, name in enumerate(names):
        validity = (pa.py_buffer(np.packbits(present[j], bitorder="little")) if nulls[j]
                    else None)
        columns[name] = pa.LargeStringArray.from_buffers(
            len(counts), pa.py_buffer(offsets[j]), pa.py_buffer(data[bases[j]:bases[j + 1]]),
            validity, int(nulls[j]))
    if not blank.any():
        return ColumnBatch(columns, len(counts), source, first_line)
    keep = pa.array(~blank)
    return ColumnBatch({name: column.filter(keep) for name, column in columns.items()},
                       int(np.count_nonzero(~blank)), source, first_line,
                       lines=first_line + np.flatnonzero(~blank))


DELIMITERS = ("\t", ",", ";", "|")


def sniff(first_line: str, names: Sequence[str] | None, delimiter: str,
          with_header: bool, needed: Sequence[str] | None = None) -> tuple[str, bool]:
    """The delimiter and header flag of a file whose first line is ``first_line``: as
    configured, unless the line is a header after all: split by the configured delimiter or
    another one, it names every column the model reads (``needed``, default every configured
    column ``names``), in any order and perhaps among others (a CSV file with a header for a
    model trained on TSV; a header-less configuration whose column order was guessed; a file
    with more columns than the model reads; a file to score, without the label). A data row
    holding every column's name as its values is not a risk worth a wrong refusal."""
    needed = needed or names
    if needed and not with_header:
        for candidate in dict.fromkeys((delimiter, *DELIMITERS)):
            fields = [c.strip() for c in line_fields(first_line, candidate)]
            if set(needed) <= set(fields):
                return candidate, True
    if delimiter not in first_line:
        for candidate in DELIMITERS:
            if candidate in first_line:
                return candidate, with_header
    return delimiter, with_header


def line_fields(line: str, delimiter: str) -> list[str]:
    """One line's fields, unquoted as :func:`split_block` unquotes them (a header line, a
    first line that may be one)."""
    if '"' in line and len(delimiter) == 1:
        try:
            return next(csv.reader([line], delimiter=delimiter), [""])
        except csv.Error:  # a CR inside the line: split_block reads it as text
            pass
    return line.split(delimiter)


def _check_header(columns: list[str], source: str) -> None:
    """A header line names each column once (a second ``user`` column would silently stand
    for the first)."""
    seen: dict[str, int] = {}
    for number, name in enumerate(columns, start=1):
        if name and name in seen:
            numbers = sum(is_number(text) for text in columns)
            hint = ("; line 1 looks like data: set data_config.with_header: false or "
                    "input_fields" if 2 * numbers > len(columns) else "")
            raise DataError(source, 1, f"the header names column {excerpt(name)} twice "
                            f"(columns {seen[name]} and {number}){hint}")
        seen[name] = number


_NUMBER = re.compile(r"\s*[+-]?(([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|nan|inf|infinity)\s*",
                     re.IGNORECASE)


def is_number(text: str) -> bool:
    """A decimal number as Arrow reads a numeric column's text (not Python's ``float``: it
    also takes other scripts' digits and ``1_000``)."""
    return _NUMBER.fullmatch(text) is not None


def _header_like(fields: list[str], names: Sequence[str]) -> bool:
    """Whether a first line read as data looks like a header all the same: no field is a
    number and one of them is a column name (for the error message of its line only)."""
    stripped = [f.strip() for f in fields]
    if any(is_number(text) for text in stripped):
        return False
    return any(text in names for text in stripped if text)


def _most_fields(buf: np.ndarray, start: int, delimiter: str) -> int:
    """The largest field count of the lines of ``buf[start:]`` (a quoted delimiter is no
    field's end)."""
    return int(_split(buf, start, ord(delimiter), 0)[3].max(initial=1))


def _without_absent(columns: list[str], optional: Sequence[str], labelled: bool,
                    buf: np.ndarray, start: int, delimiter: str, source: str) -> list[str]:
    """The columns of a file without header: ``columns``, or ``columns`` less the
    ``optional`` ones (a label, a sample weight) when no line of its first block has more
    fields than the others: a file to score without its label (Criteo's ``test.txt`` beside
    ``train.txt``), whose columns would otherwise be read one place off. A file read for its
    labels (``labelled``) keeps them, with a warning."""
    absent = [c for c in optional if c in columns]
    if not absent or _most_fields(buf, start, delimiter) != len(columns) - len(absent):
        return columns
    shown = ", ".join(absent)
    fewer = f"{source}: no line has more than {len(columns) - len(absent)} fields, the columns"
    if labelled:
        log_once(f"{fewer} less {shown}: has the file its {shown} column? It is read as the "
                 f"first of {', '.join(columns[:4])}, ...", logging.WARNING)
        return columns
    log_once(f"{fewer} less {shown}: read as a file without {shown}", logging.WARNING)
    return [c for c in columns if c not in absent]


def read_delimited(path: str | Path, names: Sequence[str] | None, delimiter: str,
                   with_header: bool, block_bytes: int = BLOCK_BYTES,
                   detect: bool = False, shard: tuple[int, int] = (0, 1),
                   needed: Sequence[str] | None = None, optional: Sequence[str] = (),
                   labelled: bool = True) -> Iterator[ColumnBatch]:
    """Every file of a channel as column batches. Column names come from each file's header
    line (``with_header``) or from ``names``; ``detect`` lets :func:`sniff` adapt the
    delimiter and header flag to each file (a header names the ``needed`` columns).
    ``optional``: columns of ``names`` a file without header may lack where it is not read
    for its labels (``labelled``; see :func:`_without_absent`). ``shard=(part, parts)``: see
    :func:`fmkit.data.sources.shard_files` (blocks of lines are dealt out in turn)."""
    files, (part, parts) = shard_files(channel_files(path), shard)
    for file in files:
        if parts > 1:
            block_bytes = int(np.clip(file.stat().st_size // (8 * parts), 1 << 16, block_bytes))
        blocks = iter_line_blocks(file, block_bytes)
        first = next(blocks, None)
        if first is None:
            continue
        if first[0][:len(PARQUET_MAGIC)].tobytes() == PARQUET_MAGIC:  # a pipe, or --format csv
            raise DataError(str(file), None, "is Parquet, which is read from the end of a "
                            "file: give the file, not a pipe" if file.is_fifo() else
                            "is Parquet, not delimited text (--format auto reads it)")
        head = first[0][:512].tobytes()
        if archive_kind(head) or head.startswith(recordio.MAGIC_BYTES):
            raise DataError(str(file), None, f"is {archive_kind(head) or 'recordIO-protobuf'},"
                            " not delimited text or Parquet (a DeepFM's columns)")
        yield from _delimited_blocks(itertools.chain([first], blocks), str(file), names,
                                     delimiter, with_header, detect, needed, optional, labelled,
                                     (part, parts))


def read_delimited_text(body: bytes, source: str, names: Sequence[str], delimiter: str,
                        needed: Sequence[str], optional: Sequence[str] = ()) -> ColumnBatch:
    """Delimited text held in memory (a ``text/csv`` request) as one column batch, read as
    :func:`read_delimited` reads a file to score with ``detect``: its first line is a header
    if it names every ``needed`` column, else its columns are ``names``, less the
    ``optional`` ones (a label) when no line has that many fields."""
    buf = np.frombuffer(body.removeprefix(BOM), dtype=np.uint8)  # (as a file's: open_input)
    for batch in _delimited_blocks(iter([(buf, 1)]), source, names, delimiter, False, True,
                                   needed, optional, False, (0, 1)):
        return batch
    return ColumnBatch({name: pa.nulls(0, pa.large_string()) for name in needed}, 0, source)


def _delimited_blocks(blocks: Iterator[tuple[np.ndarray, int]], source: str,
                      names: Sequence[str] | None, delimiter: str, with_header: bool,
                      detect: bool, needed: Sequence[str] | None, optional: Sequence[str],
                      labelled: bool, shard: tuple[int, int]) -> Iterator[ColumnBatch]:
    """The column batches of one file's blocks of whole lines (see :func:`read_delimited`):
    the first line decides the columns, and every ``parts``-th block is split."""
    part, parts = shard
    columns, separator, header = list(names or []), delimiter, with_header
    header_like = False
    for index, (buf, first_line) in enumerate(blocks):
        start = 0
        if first_line == 1 and buf.size:
            newline = np.flatnonzero(buf == 10)
            end = int(newline[0]) if newline.size else buf.size
            text = buf[:end].tobytes().decode("utf-8", "replace").rstrip("\r")
            if detect:
                separator, header = sniff(text, names, delimiter, with_header, needed)
            if header:
                columns = [c.strip() for c in line_fields(text, separator)]
                _check_header(columns, source)
                start, first_line = min(end + 1, buf.size), 2
            else:
                header_like = _header_like(line_fields(text, separator), columns)
                columns = _without_absent(columns, optional, labelled, buf, start, separator,
                                          source)
        if not columns:
            raise DataError(source, None, "no column names: set data_config.input_fields or "
                            "with_header: true")
        if start < buf.size and index % parts == part:
            batch = split_block(buf, start, columns, separator, source, first_line)
            batch.header_like = header_like
            yield batch


def is_parquet(path: str | Path) -> bool:
    """Whether a channel's first file is Parquet, by its first bytes; a pipe is
    never asked (reading would take its bytes)."""
    first = channel_files(path)[0]
    if first.is_fifo():
        return False
    try:
        with open(first, "rb") as f:
            return f.read(len(PARQUET_MAGIC)) == PARQUET_MAGIC
    except OSError:
        return False


def read_parquet(path: str | Path, batch_rows: int = 65536,
                 shard: tuple[int, int] = (0, 1)) -> Iterator[ColumnBatch]:
    """Every Parquet file of a channel as column batches (``shard``: see
    :func:`fmkit.data.sources.shard_files`; batches are dealt out in turn)."""
    import pyarrow.parquet as pq

    files, (part, parts) = shard_files(channel_files(path), shard)
    for file in files:
        try:
            reader = pq.ParquetFile(file)
        except (pa.ArrowException, OSError, UnicodeDecodeError) as e:  # (the last: names)
            raise DataError(str(file), None, f"not a Parquet file: "
                            f"{excerpt(str(e), 80, quote=False)}") from None
        done, batches = 0, reader.iter_batches(batch_size=batch_rows)
        for index in itertools.count():
            try:  # decompressed and checked whole (UTF-8 text, dictionary indices, offsets):
                # corrupt bytes are one line naming the file, not an error deep in decoding
                batch = next(batches, None)
                mine = batch is not None and index % parts == part
                if mine:
                    batch.validate(full=True)
            except (pa.ArrowException, OSError) as e:
                raise DataError(str(file), None, f"corrupt Parquet data after row {done}: "
                                f"{excerpt(str(e), 80, quote=False)}") from None
            if batch is None:
                break
            if mine:
                columns = {name: batch.column(i) for i, name in enumerate(batch.schema.names)}
                yield ColumnBatch(columns, batch.num_rows, str(file), offset=done)
            done += batch.num_rows


def from_instances(instances: list[Any], source: str = "request",
                   lines: Sequence[int] | None = None) -> ColumnBatch:
    """JSON instances (``{"I1": 5, "C1": "68fd1e64"}`` each) as a column batch; a key missing
    from an instance is a missing value. ``lines``: each instance's line in the file
    ``source`` (JSON Lines), else errors name the instance's number."""

    def error(row: int, problem: str) -> DataError:
        if lines is not None:
            return DataError(source, lines[row], problem)
        return DataError(source, None, f"instance {row + 1}: {problem}")

    names: dict[str, None] = {}
    for row, instance in enumerate(instances):
        if not isinstance(instance, dict):
            raise error(row, f"expected an object of feature values, got "
                        f"{type(instance).__name__}")
        names.update(dict.fromkeys(instance))
    columns = {}
    for name in names:
        values = [instance.get(name) for instance in instances]
        bad = bad_value(values)
        if bad is not None:
            raise error(bad[0], f"feature {excerpt(name)}: {bad[1]}")
        columns[name] = _python_column(values)
    return ColumnBatch(columns, len(instances), source, absent_is_missing=True,
                       lines=None if lines is None else np.asarray(lines), unit="instance")


_INT64 = (-(1 << 63), (1 << 63) - 1)


def bad_value(values: list[Any]) -> tuple[int, str] | None:
    """``(row, problem)`` of the first value a feature column cannot hold: another type than
    a number, a string or a list of them, an integer beyond 64 bits, a non-finite float."""
    for row, value in enumerate(values):
        for item in (value if isinstance(value, (list, tuple)) else [value]):
            if item is None or isinstance(item, str):
                continue
            if type(item) is int:
                if not _INT64[0] <= item <= _INT64[1]:
                    return row, f"{excerpt(str(item), quote=False)} is beyond 64-bit integers"
            elif type(item) is float:
                if not math.isfinite(item):
                    return row, f"{item} is not a finite number"
            elif type(item) is not bool:
                kind = {dict: "an object", list: "a list in a list"}.get(type(item),
                                                                        type(item).__name__)
                return row, f"cannot use {kind} ({excerpt(json.dumps(item, default=str))})"
    return None


def _python_column(values: list[Any]) -> pa.Array:
    """Python values of one feature (checked by :func:`bad_value`) as an Arrow array:
    numbers, strings, or lists of them; mixed kinds become strings (ids), each number written
    by :func:`number_texts`' rule, so that a value's text never depends on the other rows."""
    kinds = {type(v) for v in values if v is not None}
    if kinds & {list, tuple}:
        lists = [None if v is None else list(v) if isinstance(v, (list, tuple)) else [v]
                 for v in values]
        flat = _texts([x for items in lists if items is not None for x in items])
        position, out = 0, []
        for items in lists:
            out.append(None if items is None else flat[position:position + len(items)])
            position += len(items or ())
        return pa.array(out, pa.list_(pa.string()))
    if kinds and kinds <= {int, float}:
        return pa.array(values, pa.float64() if float in kinds else pa.int64())
    return pa.array(_texts(values), pa.string())


def _texts(values: list[Any]) -> list[str | None]:
    """Mixed Python values as text: strings as they are, floats by :func:`number_texts`,
    booleans as JSON and a CSV file write them (``true``), anything else by ``str``."""
    floats = [v for v in values if type(v) is float]
    written = iter(number_texts(pa.array(floats, pa.float64())).to_pylist() if floats else ())
    return [v if v is None or type(v) is str else next(written) if type(v) is float
            else ("true" if v else "false") if type(v) is bool else str(v) for v in values]


def number_texts(values: pa.Array) -> pa.Array:
    """Numbers as the text of ids, one rule whatever else is in the batch or file: integers,
    and integral floats within 64-bit integers, in decimal (``7.0`` is ``"7"``); other floats
    as Arrow writes them (``"2.5"``, ``"1e-7"``)."""
    if not pa.types.is_floating(values.type):
        return pc.cast(values, pa.string())
    numbers = values.to_numpy(zero_copy_only=False).astype(np.float64)
    with np.errstate(invalid="ignore"):
        integral = (numbers == np.round(numbers)) & (np.abs(numbers) < 2.0 ** 63)
    texts = pc.cast(values, pa.string())
    if not integral.any():
        return texts
    integers = pa.array(np.where(integral, numbers, 0).astype(np.int64))
    return pc.if_else(pa.array(integral), pc.cast(integers, pa.string()), texts)


def head(batch: ColumnBatch, rows: int) -> ColumnBatch:
    """The first ``rows`` rows of a batch."""
    if rows >= batch.n_rows:
        return batch
    columns = {name: array.slice(0, rows) for name, array in batch.columns.items()}
    return dataclasses.replace(batch, columns=columns, n_rows=rows)
