"""Predictions written as a table: a Parquet or CSV file of named columns.

TorchEasyRec's offline prediction (``tzrec.predict``) writes its prediction dict and the
``--reserved_columns`` of each input row through a ``ParquetWriter`` or ``CsvWriter``; ``fmkit
predict`` does the same when its output is named ``.parquet``, ``.csv`` or ``.tsv`` or
``--writer-type`` says so. As TorchEasyRec's writers: model outputs first, then the reserved
columns; numbers as float32; one-value-per-class outputs as lists (Parquet only: a CSV cell
holds one value). ``fmkit recommend`` writes its top k the same way, a row per item. A
Parquet file carries the key ``fmkit: predictions`` in its metadata, and a CSV file starts
with its quoted header, so a later run may replace it and nothing else.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa

from fmkit import compression, files
from fmkit.errors import HyperparameterError, excerpt

WRITER_TYPES = {"ParquetWriter": "parquet", "CsvWriter": "csv"}  # TorchEasyRec's names
SUFFIXES = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv"}
DELIMITERS = {"csv": ",", "tsv": "\t"}
_MARK = {b"fmkit": b"predictions"}
# every column a model's predictions may have: an FM's (SageMaker's response fields) and a
# DeepFM's (TorchEasyRec's prediction dict); a CSV file whose header starts with one is ours
OUTPUT_NAMES = ("score", "predicted_label", "logits", "probs", "probs1", "y")
RECOMMENDATIONS = ("id", "rank", "item", "score")  # fmkit recommend's table, a row per item


def table_kind(output: str | Path | None, writer_type: str | None) -> str | None:
    """``parquet``, ``csv`` or ``tsv`` when predictions go to a table (by ``writer_type``, else
    by the output's suffix), None for SageMaker responses. A suffix that names another kind
    than ``writer_type`` is refused."""
    suffix = compression.content_suffix(output) if output else ""
    by_name = SUFFIXES.get(suffix)
    if by_name == "parquet" and compression.by_name(output):
        raise HyperparameterError(f"{output}: Parquet compresses its columns itself: name it "
                                  ".parquet")
    if writer_type is None:
        return by_name
    kind = WRITER_TYPES.get(writer_type)
    if kind is None:
        raise HyperparameterError(f"--writer-type {excerpt(writer_type)}: expected one of "
                                  f"{', '.join(WRITER_TYPES)}")
    if by_name == "tsv" and kind == "csv":
        return "tsv"
    if suffix in (*SUFFIXES, ".jsonl", ".json", ".pbr") and by_name != kind:
        raise HyperparameterError(f"--writer-type {writer_type} writes {kind}, and the "
                                  f"output is named {suffix}: name it .{kind}")
    return kind


def table_path(output: str | Path | None, kind: str) -> str | Path | None:
    """Where a table goes: ``output``, or for a directory (an existing one, or a name ending
    in ``/``: TorchEasyRec's ``--predict_output_path``) its ``part-0.parquet`` (``.csv``),
    the file TorchEasyRec's writer of rank 0 writes there; the directory is made if missing."""
    if output is None or str(output) == "-":
        return output
    if not (Path(output).is_dir() or str(output).endswith("/")):
        return output
    directory = Path(output)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise files.OutputError(directory, f"cannot create the directory: "
                                f"{files.describe_os_error(e)}") from None
    return directory / f"part-0.{'parquet' if kind == 'parquet' else 'csv'}"


def _ours(path: Path, head: bytes) -> bool:
    """Whether an existing file (its first bytes: ``head``) is a table this module wrote."""
    import pyarrow.parquet as pq

    if head.startswith(b"PAR1"):
        try:
            return (pq.read_schema(path).metadata or {}).get(b"fmkit") == _MARK[b"fmkit"]
        except (OSError, pa.ArrowException):
            return False
    first = head.split(b"\n", 1)[0]
    return (any(first.startswith(b'"%s"' % name.encode()) for name in OUTPUT_NAMES)
            or any(first == sep.encode().join(b'"%s"' % name.encode() for name in RECOMMENDATIONS)
                   for sep in DELIMITERS.values()))


TABLES = files.Recognise("fmkit's table of predictions", file_test=_ours)


def ids(values: list[Any]) -> pa.Array:
    """Ids as a column: of their own type when they share one (numbers, text), else as text
    (the ids of JSON Lines files may mix them)."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if v is None else str(v) for v in values], pa.string())


def recommendations(queries: list[Any], items: list[Any],
                    found: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, pa.Array]:
    """``fmkit recommend``'s answers as a table's columns, a row per recommended item:
    the query's id, the item's rank (1 = best), its id and its score (float32)."""
    counts = np.array([positions.size for positions, _ in found], dtype=np.int64)
    positions = (np.concatenate([p for p, _ in found]) if found else np.zeros(0, np.int64))
    scores = np.concatenate([s for _, s in found]) if found else np.zeros(0)
    ranks = np.concatenate([np.arange(1, c + 1) for c in counts]) if found else np.zeros(0)
    return {"id": ids([q for q, c in zip(queries, counts) for _ in range(c)]),
            "rank": pa.array(ranks.astype(np.int32)),
            "item": ids([items[p] for p in positions.tolist()]),
            "score": pa.array(scores.astype(np.float32))}


def _arrow(values: Any) -> pa.Array:
    """A column for the table: numbers as float32 (TorchEasyRec's writers), a row of several
    values (one per class) as a list; input columns as they were read."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    values = np.asarray(values)
    if values.ndim == 2:
        flat = pa.array(values.astype(np.float32).ravel())
        offsets = pa.array(np.arange(0, len(flat) + 1, values.shape[1], dtype=np.int32))
        return pa.ListArray.from_arrays(offsets, flat)
    return pa.array(values.astype(np.float32))


# TorchEasyRec's scalar FieldTypes as Arrow types: its CSV reader parses a column declared
# with one (data_config.input_fields' input_type), and its writers keep that type
DECLARED = {"INT32": pa.int32(), "INT64": pa.int64(), "STRING": pa.string(),
            "FLOAT": pa.float32(), "DOUBLE": pa.float64(), "BOOLEAN": pa.bool_()}


class OneType:
    """Keeps each reserved column of a table to one type: the ``input_type`` its input field
    declares (TorchEasyRec's names; text is parsed, a value that is not one is refused naming
    its row), else the first block's. A later block's values are cast to it (a Parquet file of
    int32 ids after one of int64), or refused naming the block's first row (text where
    numbers were). Undeclared values of JSON instances, whose types may change from line to
    line, are text."""

    def __init__(self, declared: Mapping[str, str] | None = None) -> None:
        self.declared = {name: kind for name, kind in (declared or {}).items()
                         if kind in DECLARED}
        self.types = {name: DECLARED[kind] for name, kind in self.declared.items()}

    def __call__(self, block: Any, name: str, values: pa.Array) -> pa.Array:
        if block.absent_is_missing:
            values = values.cast(pa.string())
        if name in self.declared and (pa.types.is_string(values.type)
                                      or pa.types.is_large_string(values.type)):
            return self._parsed(block, name, values, self.types[name])
        kind = self.types.setdefault(name, values.type)
        if values.type == kind:
            return values
        try:
            return values.cast(kind)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise block.error(0, f"column {name!r} holds {values.type} here and {kind} in the "
                              "rows before: a table's column has one type") from None

    def _parsed(self, block: Any, name: str, values: pa.Array, kind: pa.DataType) -> pa.Array:
        try:
            return values.cast(kind)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            for row, text in enumerate(values.to_pylist()):
                try:
                    pa.array([text], pa.string()).cast(kind)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    raise block.error(row, f"column {name!r}: {excerpt(text)} is not "
                                      f"{self.declared[name]} (its input_type)") from None
            raise


class PredictionTable:
    """Writes blocks of named columns to one Parquet or CSV file (``kind``), streamed; the
    first block fixes the columns and their types (reserved columns: :class:`OneType`). As a
    context manager it finishes the file when the block ends, and lets it go unfinished when
    the block raises (the caller's output stream then removes it)."""

    def __init__(self, stream: BinaryIO, kind: str,
                 names: tuple[list[str], list[str]] = ([], [])):
        self.stream, self.kind = stream, kind
        self.names = names  # (output columns, reserved columns): the header of no rows
        self._writer: Any = None
        self._schema: pa.Schema | None = None
        self.rows = 0

    def __enter__(self) -> PredictionTable:
        return self

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> None:
        if kind is None:
            self.close()
        else:
            self.discard()

    def write(self, columns: Mapping[str, Any]) -> None:
        arrays = [_arrow(values) for values in columns.values()]
        if self._writer is None:
            self._open(pa.RecordBatch.from_arrays(arrays, names=list(columns)).schema)
        self._writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=self._schema))
        self.rows += len(arrays[0])

    def _open(self, schema: pa.Schema) -> None:
        if self.kind == "parquet":
            import pyarrow.parquet as pq

            self._schema = schema.with_metadata(_MARK)
            self._writer = pq.ParquetWriter(self.stream, self._schema)
            return
        import pyarrow.csv as pcsv

        nested = [field for field in schema if pa.types.is_nested(field.type)]
        if nested and nested[0].name in self.names[0]:  # (a model's output)
            raise HyperparameterError(f"column {nested[0].name!r} holds one value per class, "
                                      "and a CSV cell holds one value: write Parquet "
                                      "(.parquet), or choose other columns with "
                                      "--output-columns")
        if nested:  # (an input column: a list, a map, a struct)
            raise HyperparameterError(f"column {nested[0].name!r} holds {nested[0].type} "
                                      "values, and a CSV cell holds one value: write Parquet "
                                      "(.parquet), or reserve other columns")
        self._schema = schema
        self._writer = pcsv.CSVWriter(self.stream, schema, write_options=pcsv.WriteOptions(
            delimiter=DELIMITERS[self.kind]))

    def close(self) -> None:
        """Finish the file (Parquet's footer); a table of no rows still has its columns
        (outputs as float32, reserved columns as text)."""
        if self._writer is None:
            outputs, reserved = self.names
            self._open(pa.schema([*((name, pa.float32()) for name in outputs),
                                  *((name, pa.string()) for name in reserved)]))
        self._writer.close()

    def discard(self) -> None:
        """Let go of a table left unfinished by an error (its file is removed)."""
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._writer = None
