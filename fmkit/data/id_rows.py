"""Sparse rows that carry an id instead of a label: the items and contexts of ``fmkit
recommend``.

Two forms, told apart by the first non-blank character of the file (``{``: JSON Lines):

* JSON Lines: ``{"id": "u1", "keys": [3, 17], "values": [1, 0.5], "fields": [0, 1]}`` per
  line; ``values`` default to 1, ``fields`` (a field-aware FM's) to none;
* libsvm / libffm with the id where the label goes: ``u1 3:1 17:0.5`` or ``u1 0:3:1 1:17:0.5``.

Every key is checked against the model's ``feature_dim`` (and field against ``num_fields``),
every value must be a finite number, and a key may appear once per row (a libffm row's key in
several fields is merged, as the file readers merge it): the compiled scoring code then never
reads outside its tables. A bad record is one error naming the file and line.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fmkit.data.batch import SparseBatch
from fmkit.data.blocks import read_input_lines
from fmkit.data.sources import merged_repeats
from fmkit.errors import DataError, excerpt

ID_BLOCK_ROWS = 1 << 16  # the rows of a block of contexts: what fmkit recommend holds at once


def iter_id_rows(path: str | Path, feature_dim: int, num_fields: int = 0,
                 rows: int | None = None) -> Iterator[tuple[list[Any], SparseBatch]]:
    """The ids and rows of a file (see the module docstring), ``rows`` (default
    :data:`ID_BLOCK_ROWS`) at a time, read line by line: memory is bounded by a block,
    whatever the file's size (one block, maybe empty, for a file without rows). A JSON row
    without an id takes its row number from 0."""
    path, rows = Path(path), rows or ID_BLOCK_ROWS
    block: list[tuple[int | None, dict]] = []
    done, json_lines = 0, None
    for number, line in enumerate(read_input_lines(path), start=1):
        if not line.strip():
            continue
        if json_lines is None:
            json_lines = line.lstrip().startswith("{")
        block.append((number, _json_record(line, path, number) if json_lines
                      else _libsvm_record(line, path, number, num_fields)))
        if len(block) == rows:
            yield rows_of(block, feature_dim, num_fields, str(path), not json_lines, done)
            done, block = done + len(block), []
    if block or not done:
        yield rows_of(block, feature_dim, num_fields, str(path), not json_lines, done)


def read_id_rows(path: str | Path, feature_dim: int, num_fields: int = 0
                 ) -> tuple[list[Any], SparseBatch]:
    """The ids and rows of a whole file (the items of a catalogue, which are held)."""
    return next(iter_id_rows(path, feature_dim, num_fields, rows=sys.maxsize))


def rows_of(records: list[tuple[int | None, dict]], feature_dim: int, num_fields: int,
            source: str, merge_repeats: bool = False, first_id: int = 0
            ) -> tuple[list[Any], SparseBatch]:
    """``(line or None, {"id", "keys", "values", "fields"})`` records checked into a batch.
    With ``merge_repeats``, a row with fields may repeat a key: one feature, its values summed,
    in its first field (a libffm line's rule); otherwise a repeated key is refused. A record
    without an id takes ``first_id`` + its position."""
    ids, indptr, keys, values, fields = [], [0], [], [], []
    for position, (line, record) in enumerate(records):
        def error(problem: str, line=line, position=position) -> DataError:
            if line is not None:
                return DataError(source, line, problem)
            return DataError(source, None, f"instance {position + 1}: {problem}")

        if not isinstance(record, dict):
            raise error(f"expected an object, got {excerpt(str(record))}")
        if "keys" not in record:  # ([] says "no features"; a misspelt "key" must not)
            raise error(f"no \"keys\" (its fields: {excerpt(', '.join(map(str, record)))}); "
                        "a row without features has \"keys\": []")
        row_keys = record["keys"]
        row_values = record.get("values", [1.0] * len(row_keys) if isinstance(row_keys, list)
                                else [])
        row_fields = record.get("fields")
        if not isinstance(row_keys, list) or not isinstance(row_values, list):
            raise error("keys and values must be lists")
        if len(row_values) != len(row_keys):
            raise error(f"{len(row_keys)} keys but {len(row_values)} values")
        for key in row_keys:
            if type(key) is not int or not 0 <= key < feature_dim:
                raise error(f"key {excerpt(str(key))} is not an integer in [0, "
                            f"feature_dim={feature_dim})")
        if len(set(row_keys)) != len(row_keys) and not (merge_repeats and row_fields):
            raise error("a key appears twice in the row")
        for value in row_values:
            if type(value) not in (int, float) or not math.isfinite(value):
                raise error(f"value {excerpt(str(value))} is not a finite number")
        if num_fields:
            if not isinstance(row_fields, list) or len(row_fields) != len(row_keys):
                raise error("a field-aware FM needs a field per key (\"fields\": [...])")
            for field in row_fields:
                if type(field) is not int or not 0 <= field < num_fields:
                    raise error(f"field {excerpt(str(field))} is not an integer in [0, "
                                f"num_fields={num_fields})")
            fields.extend(row_fields)
        ids.append(record.get("id", first_id + position))
        keys.extend(row_keys)
        values.extend(float(v) for v in row_values)
        indptr.append(len(keys))
    batch = SparseBatch(np.array(indptr, np.int64), np.array(keys, np.int32),
                        np.array(values, np.float32), np.zeros(len(ids), np.float32),
                        source=source,
                        fields=np.array(fields, np.int32) if num_fields else None)
    return ids, merged_repeats(batch) if merge_repeats else batch


def _json_record(line: str, path: Path, number: int) -> dict:
    try:
        record = json.loads(line)
    except ValueError as e:
        raise DataError(str(path), number, f"not JSON: {e}") from None
    if not isinstance(record, dict):
        raise DataError(str(path), number, "expected an object {\"id\", \"keys\", \"values\"}")
    return record


def _libsvm_record(line: str, path: Path, number: int, num_fields: int) -> dict:
    """A libsvm or libffm line, read as the training readers read the format: libffm's fields
    are kept for a field-aware FM (``num_fields``) and dropped for an FM, and a key that occurs
    in several fields of a libffm row is one feature, its values summed, in its first field
    (merged by :func:`rows_of`, as :func:`fmkit.data.sources.merged_repeats` merges them)."""
    parts = line.split()
    keys, values, fields = [], [], []
    for token in parts[1:]:
        pieces = token.split(":")
        try:
            if len(pieces) == 3:
                fields.append(int(pieces[0]))
                pieces = pieces[1:]
            if len(pieces) != 2:
                raise ValueError
            keys.append(int(pieces[0]))
            values.append(float(pieces[1]))
        except ValueError:
            raise DataError(str(path), number, "expected key:value or field:key:value, got "
                            f"{excerpt(token)}") from None
    if fields and len(fields) != len(keys):
        raise DataError(str(path), number, "a libffm row has field:key:value for every key")
    record: dict[str, Any] = {"id": parts[0], "keys": keys, "values": values}
    if num_fields or fields:  # (a libffm row's fields also mark it as one whose keys merge)
        record["fields"] = fields
    return record
