"""``fmkit predict``: every input row's prediction, written as SageMaker's responses (the same
bytes ``/invocations`` answers) or as a table (TorchEasyRec's predict), with the input columns
``--reserved-columns`` names carried into each prediction.

Re-exported by :mod:`fmkit.jobs.fm`, the jobs' documented Python API.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from fmkit import compile_cache, files
from fmkit.cpus import leaving_cores
from fmkit.data import codecs
from fmkit.data.background import background
from fmkit.data.sources import TEXT_SAMPLES
from fmkit.errors import DataError, HyperparameterError, excerpt
from fmkit.models.base import Model, load_model
from fmkit.models.fm.model import FMModel, scorer_cached

if TYPE_CHECKING:
    from fmkit.data.tables import PredictionTable  # (imported with pyarrow, for tables only)


def predict_files(model_dir: str | Path, data_path: str | Path,
                  output: str | Path | None = None, *, fmt: str = "auto",
                  accept: str | None = None, device: str = "cpu",
                  data_config: Sequence[str] = (), reserved_columns: Sequence[str] = (),
                  writer_type: str | None = None, output_columns: Sequence[str] = ()) -> int:
    """Write the predictions of every input row; returns the row count.

    By default as SageMaker responses: ``accept`` is a response type (JSON Lines when None).
    An ``output`` named ``.parquet``, ``.csv`` or ``.tsv``, or a ``writer_type`` (TorchEasyRec's
    ``ParquetWriter``, ``CsvWriter``), writes a table instead (:mod:`fmkit.data.tables`): the
    model's ``output_columns`` (or those named), then the ``reserved_columns``. ``fmt`` is a
    training format or ``json``/``jsonlines`` (SageMaker request bodies). ``output`` is written
    under a temporary name and renamed when complete; None means stdout. ``data_config``: see
    :func:`fmkit.models.base.load_model`. ``reserved_columns`` (a DeepFM's input columns,
    TorchEasyRec's ``--reserved_columns``) carry each row's ids into its prediction.
    """
    from fmkit.data import tables  # (pyarrow: an FM's predictions to JSON never load it)

    kind = tables.table_kind(output, writer_type)
    if kind is not None and accept is not None:
        raise HyperparameterError(f"--accept {accept}: a {kind} table is not a SageMaker "
                                  "response (leave --accept out, or name the output .jsonl)")
    if kind is None and output_columns:
        raise HyperparameterError("--output-columns chooses a table's columns (an output "
                                  "named .parquet, .csv or .tsv, or --writer-type); "
                                  "SageMaker's responses hold score and predicted_label")
    model = load_model(model_dir, device, data_config)
    if isinstance(model, FMModel):
        compile_scorer_ahead(model.field_aware, fmt)
    columns = _output_columns(model, output_columns) if kind else ()
    writer = None if kind else codecs.ResponseWriter(accept or codecs.JSONLINES, unit="row")
    reserved = (_Reserved(model, reserved_columns, columns or codecs.RESPONSE_FIELDS,
                          writer.accept if writer else None) if reserved_columns else None)
    if reserved and not writer:  # (a DeepFM's: _Reserved refuses an FM)
        reserved.conform = tables.OneType(model.input_types())
    output = tables.table_path(output, kind) if kind else output  # (a directory: part-0)
    try:  # the reader parses a block ahead on a core of its own: scoring leaves it that core
        with (files.output_stream(output, tables.TABLES if kind else codecs.RESPONSES,
                                 compress=True) as out,
              leaving_cores(1)):
            blocks = background(model.read(data_path, fmt, labelled=False))
            blocks = reserved.tap(blocks) if reserved else blocks
            if writer is None:
                with tables.PredictionTable(out, kind, (list(columns), reserved.names
                                                        if reserved else [])) as table:
                    _write_table(model, blocks, table, columns, reserved)
                return table.rows
            return _write_predictions(model, blocks, writer, out, reserved)
    except codecs.RequestError as e:
        raise DataError(str(data_path), None, str(e)) from None


def _output_columns(model: Model, chosen: Sequence[str]) -> tuple[str, ...]:
    """The model's output columns a table holds: ``chosen`` (TorchEasyRec's
    ``--output_columns``), else all of them."""
    unknown = [name for name in chosen if name not in model.output_columns]
    if unknown:
        raise HyperparameterError(f"--output-columns: {excerpt(unknown[0])} is not an output "
                                  f"of this model ({', '.join(model.output_columns)})")
    return tuple(dict.fromkeys(chosen)) or model.output_columns


class _Reserved:
    """The values of ``--reserved-columns`` of each block a DeepFM scores, taken as the
    block goes in and handed out, in order, as its predictions come out."""

    def __init__(self, model: Model, names: Sequence[str], outputs: Sequence[str],
                 accept: str | None):
        # a table's: each column keeps one type (tables.OneType)
        self.conform: Callable[[Any, str, Any], Any] | None = None
        if isinstance(model, FMModel):
            raise HyperparameterError("--reserved-columns: an FM's rows have no named columns "
                                      "(a DeepFM's have)")
        if accept == codecs.RECORDIO:
            raise HyperparameterError("--reserved-columns: recordIO responses hold score and "
                                      "predicted_label only; accept application/jsonlines or "
                                      "application/json")
        clash = [name for name in names if name in outputs]
        if clash:
            raise HyperparameterError(f"--reserved-columns: {clash[0]!r} is a column of the "
                                      "predictions")
        self.names = list(dict.fromkeys(names))
        self.request_columns = model.request_columns()
        self.pending: collections.deque = collections.deque()

    def tap(self, blocks: Iterable[Any]) -> Iterator[Any]:
        for block in blocks:
            if block.absent_is_missing:  # JSON instances: the columns their requests may name
                unknown = [n for n in self.names if n not in self.request_columns]
                if unknown:
                    raise DataError(block.source, None, f"no column {unknown[0]!r}: JSON "
                                    "instances name the model's columns only")
            self.pending.append({name: self._column(block, name) for name in self.names})
            yield block

    def _column(self, block: Any, name: str) -> Any:
        """A reserved column's values (a pyarrow array), as a table keeps them when it is
        one."""
        values = block.column(name)
        return self.conform(block, name, values) if self.conform else values

    def next(self) -> dict[str, Any]:
        return self.pending.popleft()


def compile_scorer_ahead(field_aware: bool, fmt: str, with_reader: bool = False) -> None:
    """On a first run from a text format (the FM's or FFM's scorer not yet in numba's cache),
    a helper process compiles the scorer (``with_reader``: the format's reader too) while
    this one compiles what it needs first: the trainer, or the reader when it scores. The
    first ``fmkit predict`` of a9a waited 4.8 s for reader and scorer one after the other
    (docs/performance.md)."""
    if fmt not in (*TEXT_SAMPLES, "auto") or scorer_cached(field_aware):
        return
    reader = (f"from fmkit.data.sources import compile_reader; compile_reader({fmt!r}); "
              if with_reader and fmt in TEXT_SAMPLES else "")
    compile_cache.compile_ahead(f"{reader}from fmkit.models.fm.model import compile_scorer; "
                                f"compile_scorer({field_aware})")


def _write_predictions(model: Model, blocks: Iterable[Any], writer: codecs.ResponseWriter,
                       out: BinaryIO, reserved: _Reserved | None = None) -> int:
    rows = 0
    out.write(writer.begin())
    for predictions in model.predictions_of(blocks):
        values = ({name: column.to_pylist() for name, column in reserved.next().items()}
                  if reserved else None)
        out.write(writer.part(predictions, first=rows + 1, reserved=values))
        rows += len(predictions["score"])
    out.write(writer.end())
    out.flush()
    return rows


def _write_table(model: Model, blocks: Iterable[Any], table: PredictionTable,
                 columns: Sequence[str], reserved: _Reserved | None = None) -> None:
    for outputs in model.outputs_of(blocks):
        codecs.check_finite(outputs, "row", table.rows + 1)
        table.write({**{name: outputs[name] for name in columns},
                     **(reserved.next() if reserved else {})})
