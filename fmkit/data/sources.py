"""Data sources: where batches come from (files or in-memory arrays), checked and 0-based.

A source is re-iterable: each call of :meth:`blocks` streams the data again, which is how the
trainer runs several epochs over a file without holding it in memory. Every block it yields has
0-based feature ids below ``feature_dim``, no duplicate id within a row, and (when labels are
checked) labels the predictor type accepts, so models never see malformed rows.
"""

from __future__ import annotations

import functools
import glob
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fmkit.compile_cache import kernel
from fmkit.data import csv, libsvm, recordio
from fmkit.data.batch import SparseBatch, concat, unit_rows
from fmkit.data.blocks import BLOCK_BYTES, PassMeter, compressed, open_input
from fmkit.data.cache import cached_blocks
from fmkit.errors import DataError
from fmkit.logs import advice

# format name -> function streaming a file's parsed blocks
READERS = {
    "libsvm": libsvm.read_file_blocks,
    "libffm": libsvm.read_libffm_blocks,
    "csv": csv.read_file_blocks,
    "recordio": recordio.read_file_blocks,
}
FORMATS = ("auto", *READERS)
# formats whose feature indices are written 0- or 1-based (``index_base``); the rest are 0-based
INDEXED_FORMATS = ("libsvm", "libffm")
IGNORED_FILES = {".amazon.manifest"}
URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:/")  # s3://, gs://, https://, hdfs://...
GLOB = re.compile(r"[*?[]")  # a glob pattern's special characters


def channel_files(path: str | Path) -> list[Path]:
    """The files of a channel: the file itself, every regular file under a directory, or
    (a path that names neither) TorchEasyRec's input path: comma-separated glob patterns
    (``data/train/*.parquet,extra.parquet``), each pattern's matches sorted. A directory's or
    a pattern's empty files are left out: they hold no rows, and the first file shows the
    channel's format (Spark and Hive write an empty ``_SUCCESS`` beside their parts, which
    sorts first)."""
    given, path = str(path), Path(path)
    if path.is_file() or path.is_fifo():
        return [path]
    if path.is_dir():
        files = sorted(
            p for p in path.rglob("*")
            if p.is_file() and p.name not in IGNORED_FILES and not p.name.startswith(".")
            and p.stat().st_size
        )
        if not files:
            raise DataError(str(path), None, "directory holds no data files")
        return files
    if "," in given or GLOB.search(given):
        return _pattern_files(given)
    if URL.match(given):  # Path("s3://b/k") is "s3:/b/k": still a scheme and a slash
        raise DataError(given, None, "is a URL: fmkit reads local files, directories and pipes; "
                        "copy it first (aws s3 cp, gsutil cp, curl -O)")
    if given == "-":
        raise DataError(given, None, "no such file: standard input is /dev/stdin (with "
                        "--format: a pipe's format is not detected)")
    if path.exists():  # /dev/null, a terminal, a socket: nothing a channel's rows come from
        raise DataError(str(path), None, "is not a file, a directory or a pipe")
    raise DataError(str(path), None, "no such file or directory")


def _pattern_files(given: str) -> list[Path]:
    """The files of comma-separated paths and glob patterns, in the order given (a pattern's
    matches sorted, as TorchEasyRec's ``list_input_files`` reads them)."""
    files: list[Path] = []
    for part in (p.strip() for p in given.split(",")):
        if not part:
            continue
        matches = ([m for m in sorted(glob.glob(part)) if not os.path.isfile(m)
                    or os.path.getsize(m)] if GLOB.search(part) else [part])
        if not matches:
            raise DataError(part, None, "no file matches this pattern (or only empty ones)")
        for match in matches:
            files.extend(channel_files(match))
    if not files:
        raise DataError(given, None, "names no file")
    return files


def shard_files(files: Sequence[Path], shard: tuple[int, int]
                ) -> tuple[list[Path], tuple[int, int]]:
    """A process's share of a channel's ``files`` (``shard=(part, parts)``), and the shard of
    each file's blocks it reads: whole files when there are at least as many files as
    processes (each then read entirely), else every file with the shard applied to its
    blocks."""
    part, parts = shard
    if parts > 1 and len(files) >= parts:
        return list(files[part::parts]), (0, 1)
    return list(files), shard


def require_channels(named: Iterable[tuple[str, str | Path | None]]) -> None:
    """Every given channel of ``(setting, path)`` pairs exists (:func:`channel_files`), else
    a :class:`DataError` that names the setting too (``... no such file or directory
    (eval_input_path)``): a configuration file's relative path may not be one the user typed."""
    for name, path in named:
        try:
            if path:
                channel_files(path)
        except DataError as e:
            raise DataError(e.source, e.line, f"{e.problem} ({name})") from None


def refuse_pipe(path: str | Path, problem: str) -> None:
    """Raise a :class:`DataError` saying ``problem`` when the channel at ``path`` is a pipe (a
    FIFO, or a shell's ``<(zcat day_0.gz)``): its rows can be read only once."""
    if channel_files(path)[0].is_fifo():
        raise DataError(str(path), None, f"is a pipe, read once: {problem}")


PARQUET_MAGIC = b"PAR1"  # a Parquet file's first bytes: a DeepFM's input, never an FM's


def opens_json(head: bytes) -> bool:
    """Whether a file's first bytes open a JSON object or array: SageMaker request bodies,
    not a training format (no libsvm, libffm or CSV line starts so)."""
    return head.lstrip()[:1] in (b"{", b"[")


def detect_format(path: str | Path) -> str:
    """``recordio`` from its magic number, else ``libsvm``, ``libffm`` or ``csv`` from the first
    data line."""
    first = channel_files(path)[0]
    if first.is_fifo():
        raise DataError(str(first), None, "cannot detect the format of a pipe: give --format")
    with open_input(first) as f:
        head = f.read(1 << 16)
    if head.startswith(PARQUET_MAGIC):
        raise DataError(str(first), None, "is Parquet: an FM reads libsvm, libffm, CSV or "
                        "recordIO-protobuf (Parquet columns are a DeepFM's input)")
    if archive_kind(head):
        raise DataError(str(first), None, f"is {archive_kind(head)}, not data: unpack it, and "
                        "give the libsvm, libffm, CSV or recordIO-protobuf file it holds")
    if opens_json(head):
        raise DataError(str(first), None, "is JSON (SageMaker request bodies, which fmkit "
                        "predict scores): training and evaluation read libsvm, libffm, CSV or "
                        "recordIO-protobuf")
    return format_of(head)


def archive_kind(head: bytes) -> str | None:
    """What an archive given where data goes is, from its first 512 bytes (a zip: weights'
    ``.npz``; a tar: a ``model.tar.gz``, decompressed), else None."""
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (.npz, .zip)"
    return "a tar archive" if head[257:262] == b"ustar" else None


def format_of(head: bytes) -> str:
    """The format a file's first bytes show: ``recordio`` from its magic number, else
    ``libsvm``, ``libffm`` or ``csv`` from the first data line."""
    if head.startswith(recordio.MAGIC_BYTES):
        return "recordio"
    for raw in head.split(b"\n"):
        text = raw.split(b"#", 1)[0].strip()
        if not text:
            continue
        if b"," in text and b":" not in text:
            return "csv"
        if any(token.count(b":") == 2 for token in text.split()[1:]):
            return "libffm"
        return "libsvm"
    return "libsvm"


@kernel(nogil=True, allocates=False)
def _find_bad_index(indptr, indices, feature_dim, mark, stamp):
    """First ``(row, position, problem)`` with an id out of range (1) or repeated in its row (2).

    A row whose ids ascend (as most writers emit them) has no repeat: only rows that do not
    ascend are checked through ``mark``, the per-feature stamp of the row that last saw it.
    """
    for r in range(indptr.size - 1):
        lo, hi = indptr[r], indptr[r + 1]
        ascending = True
        for j in range(lo, hi):
            i = indices[j]
            if i < 0 or i >= feature_dim:
                return r, j, 1
            if j > lo and i <= indices[j - 1]:
                ascending = False
        if not ascending:
            row_stamp = stamp + r
            for j in range(lo, hi):
                i = indices[j]
                if mark[i] == row_stamp:
                    return r, j, 2
                mark[i] = row_stamp
    return -1, -1, 0


@kernel(nogil=True, allocates=False)
def _merge_rows(indptr, indices, values, fields, out_indptr, out_indices, out_values,
                out_fields):
    """Each row's repeated feature ids as one entry holding the sum of their values (first
    occurrence order kept, with its field when ``out_fields`` is not empty)."""
    with_fields = out_fields.size > 0
    nnz = 0
    out_indptr[0] = 0
    for r in range(indptr.size - 1):
        start = nnz
        for j in range(indptr[r], indptr[r + 1]):
            i = indices[j]
            for q in range(start, nnz):
                if out_indices[q] == i:
                    out_values[q] += values[j]
                    break
            else:
                out_indices[nnz] = i
                out_values[nnz] = values[j]
                if with_fields:
                    out_fields[nnz] = fields[j]
                nnz += 1
        out_indptr[r + 1] = nnz
    return nnz


def merged_repeats(batch: SparseBatch) -> SparseBatch:
    """``batch`` with each row's repeated feature ids as one entry, their values summed, in
    the first one's place and field: how a libffm row's key written in several fields is read
    (by the training readers, and by :mod:`fmkit.data.id_rows`)."""
    indptr = np.empty_like(batch.indptr)
    indices = np.empty_like(batch.indices)
    values = np.empty_like(batch.values)
    has_fields = batch.fields is not None
    fields = np.empty(batch.indices.size if has_fields else 0, dtype=np.int32)
    nnz = _merge_rows(batch.indptr, batch.indices, batch.values,
                      batch.fields if has_fields else fields, indptr, indices, values, fields)
    return SparseBatch(indptr, indices[:nnz], values[:nnz], batch.labels, batch.lines,
                       batch.source, batch.first_row, batch.row_unit, batch.widths,
                       fields[:nnz] if has_fields else None)


@dataclass
class BatchChecker:
    """Checks and normalises the blocks of one source; keeps the state that spans blocks.

    ``labels`` says which labels to accept: ``"binary"`` (0/1, or -1/+1 mapped to 0/1),
    ``"real"`` (any finite number) or None (not checked: prediction ignores them).
    ``merge_repeats``: a feature repeated within a row has its values summed instead of being
    an error (libffm, where one feature id may occur in several fields of a row; the first
    occurrence's field is kept). ``num_fields`` > 0 (an FFM): every nonzero has a field below
    it.
    """

    feature_dim: int
    index_base: int = 0
    labels: str | None = None
    merge_repeats: bool = False
    num_fields: int = 0
    _mark: np.ndarray | None = field(default=None, repr=False)
    _rows_seen: int = 0

    def __call__(self, batch: SparseBatch) -> SparseBatch:
        if self.index_base:
            batch.indices = batch.indices - np.int32(self.index_base)
        if batch.widths is not None:
            self._check_widths(batch)
        batch = self._check_indices(batch)
        if self.num_fields:
            self._check_fields(batch)
        if self.labels and np.isnan(batch.labels).any():
            row = int(np.flatnonzero(np.isnan(batch.labels))[0])
            raise DataError(*batch.where(row), "the record has no label")
        if self.labels == "binary":
            batch.labels = self._binary_labels(batch)
        elif self.labels == "real":
            bad = np.flatnonzero(~np.isfinite(batch.labels))
            if bad.size:
                raise DataError(*batch.where(int(bad[0])), "label is not a finite number "
                                "within float32's range (|label| <= 3.4e38)")
        return batch

    def _check_indices(self, batch: SparseBatch) -> SparseBatch:
        if self._mark is None:
            self._mark = np.full(self.feature_dim, -1, dtype=np.int64)
        row, pos, problem = _find_bad_index(
            batch.indptr, batch.indices, self.feature_dim, self._mark, self._rows_seen
        )
        self._rows_seen += batch.n_rows
        if problem == 2 and self.merge_repeats:
            batch = merged_repeats(batch)
            row, pos, problem = _find_bad_index(
                batch.indptr, batch.indices, self.feature_dim, self._mark, self._rows_seen
            )
            self._rows_seen += batch.n_rows
        if problem:
            written = int(batch.indices[pos]) + self.index_base
            if problem == 2:
                why = f"feature index {written} appears twice in the row"
            elif written < self.index_base:
                why = (f"feature index {written} is below the index base {self.index_base} "
                       "(1-based, as given or as detected on a training file without index 0: "
                       "if 0 is a feature, train with --index-base 0)")
            else:
                why = (f"feature index {written} is out of range: feature_dim={self.feature_dim}"
                       f" with {self.index_base}-based indices allows at most "
                       f"{self.feature_dim - 1 + self.index_base}")
            raise DataError(*batch.where(int(row)), why)
        return batch

    def _check_fields(self, batch: SparseBatch) -> None:
        """An FFM's input names a field below ``num_fields`` for every nonzero."""
        fields = batch.field_ids()
        bad = np.flatnonzero((fields < 0) | (fields >= self.num_fields))
        if bad.size:
            row = int(np.searchsorted(batch.indptr, bad[0], side="right")) - 1
            raise DataError(*batch.where(row), f"field {int(fields[bad[0]])} is out of "
                            f"range: num_fields={self.num_fields} allows 0..{self.num_fields - 1}")

    def _check_widths(self, batch: SparseBatch) -> None:
        """recordIO rows declare their width: dense length or sparse shape = feature_dim."""
        bad = np.flatnonzero((batch.widths >= 0) & (batch.widths != self.feature_dim))
        if bad.size:
            row = int(bad[0])
            raise DataError(*batch.where(row), f"the features tensor has shape "
                            f"[{int(batch.widths[row])}], expected [{self.feature_dim}] "
                            "(feature_dim)")

    @staticmethod
    def _binary_labels(batch: SparseBatch) -> np.ndarray:
        labels = batch.labels
        ok = (labels == 0) | (labels == 1) | (labels == -1)
        if not ok.all():
            row = int(np.flatnonzero(~ok)[0])
            raise DataError(*batch.where(row),
                            f"label {float(labels[row]):g} is not valid for a binary classifier"
                            " (expected 0/1 or -1/+1)")
        return np.where(labels == -1, np.float32(0), labels).astype(np.float32)


@dataclass
class FileSource:
    """A channel on disk (one file or a directory of files) in libsvm or CSV format.

    With ``shard=(part, parts)`` a process reads its share: whole files when the channel has
    at least ``parts`` files, else every parts-th 4 MB block of lines of each file."""

    path: str | Path
    fmt: str
    feature_dim: int
    index_base: int = 0
    labels: str | None = None
    block_bytes: int = BLOCK_BYTES
    cache: bool = False  # keep a binary copy of parsed text files (see fmkit.data.cache)
    shard: tuple[int, int] = (0, 1)  # (part, parts): read only this process's share
    num_fields: int = 0  # an FFM's fields: every nonzero must name one below it (libffm)
    scoring: bool = False  # a file to score: its text rows may leave out their labels
    _drained: bool = field(default=False, init=False, repr=False)  # a pipe, once read
    _meter: PassMeter | None = field(default=None, init=False, repr=False)  # the last pass

    def __post_init__(self) -> None:
        if self.fmt not in FORMATS:
            raise DataError(str(self.path), None, f"unknown format {self.fmt!r}")
        self.files = channel_files(self.path)
        if self.fmt == "auto":
            self.fmt = detect_format(self.path)
        if self.fmt not in INDEXED_FORMATS:
            self.index_base = 0

    @property
    def name(self) -> str:
        return str(self.path)

    @property
    def rereadable(self) -> bool:
        """False for a pipe (a FIFO, or a shell's ``<(zcat day_0.gz)``): its rows can be read
        only once, so nothing may read ahead of the one pass (the training engine, the index
        base and field count detections ask first)."""
        return not self.files[0].is_fifo()

    @property
    def parses(self) -> bool:
        """Whether a pass over this source parses text or records (not a binary cache's copy):
        work that the thread reading ahead shares the cores with the trainer for."""
        return not self.cache

    def require_rereadable(self, problem: str) -> None:
        """Raise a :class:`DataError` saying ``problem`` when this source is a pipe."""
        if not self.rereadable:
            refuse_pipe(self.path, problem)

    def raw_blocks(self) -> Iterator[SparseBatch]:
        """Parsed blocks as written in the file: indices not shifted, nothing checked."""
        if not self.rereadable:  # reopening a drained FIFO would wait for a writer forever
            if self._drained:
                self.require_rereadable("its rows were read already")
            self._drained = True
        read = READERS[self.fmt]
        if self.fmt != "recordio":  # a text file to score may leave its labels out
            read = functools.partial(read, labelled=not self.scoring,
                                     **({"feature_dim": self.feature_dim}
                                        if self.fmt == "csv" else {}))
        files, shard = shard_files(self.files, self.shard)
        for file in files:
            self._check_text(file)
            if self.cache and shard[1] == 1 and self.fmt != "recordio" and file.is_file():
                yield from cached_blocks(file, self.fmt,
                                         lambda file=file: read(file, self.block_bytes))
            else:  # several processes on one file: every parts-th block of it, the blocks
                # small enough that each process gets several
                block_bytes = self.block_bytes
                if shard[1] > 1 and file.is_file():
                    block_bytes = int(np.clip(file.stat().st_size // (8 * shard[1]), 1 << 16,
                                              block_bytes))
                yield from read(file, block_bytes, shard=shard)

    def estimated_rows(self) -> int | None:
        """The rows of the pass in progress over this process's files, guessed (see
        :class:`fmkit.data.blocks.PassMeter`)."""
        return self._meter.estimated_rows() if self._meter else None

    def _check_text(self, file: Path) -> None:
        """A recordIO file in a text channel, a CSV file in a libsvm or libffm one, or a
        libffm file in a CSV one is named as such (parsed as the channel's format, it gave
        "non-numeric value in '^'" or "in '1,0,1'"): a channel's files share its first file's
        format."""
        if self.fmt != "recordio" and file.is_file():
            with open_input(file) as f:
                found = format_of(f.read(1 << 16))
            # (libsvm is also what a one-column CSV line looks like: not told apart)
            if found == "recordio" or (found != "libsvm"
                                       and (found == "csv") != (self.fmt == "csv")):
                named = {"recordio": "recordIO-protobuf", "csv": "CSV"}.get(found, found)
                raise DataError(str(file), None, f"is {named}, not {self.fmt}" + (
                    "" if file == self.files[0] else
                    " as this channel's first file: a channel's files share one format"))

    def blocks(self) -> Iterator[SparseBatch]:
        check = BatchChecker(self.feature_dim, self.index_base, self.labels,
                             merge_repeats=self.fmt == "libffm", num_fields=self.num_fields)
        self._meter = PassMeter(shard_files(self.files, self.shard)[0])
        for batch in self._meter.counted(self.raw_blocks()):
            yield check(batch)


# a two-row file of each text format (the second row 0-based), for compile_reader
TEXT_SAMPLES = {
    "libsvm": "1 1:0.5 3:1\n0 0:1\n",
    "libffm": "1 0:1:0.5 1:3:1\n0 0:0:1\n",
    "csv": "1,0.5,0\n0,0,1\n",
}


def compile_reader(fmt: str) -> None:
    """Compile (or load from numba's cache) what reading a channel of the text format ``fmt``
    runs, by reading a two-row file of it (see :func:`fmkit.compile_cache.compile_ahead`)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="fmkit-compile-") as tmp:
        path = Path(tmp, f"sample.{fmt}")
        path.write_text(TEXT_SAMPLES[fmt])
        for _ in FileSource(path, fmt, feature_dim=4, labels="binary").blocks():
            pass


def detect_index_base(source: FileSource) -> int:
    """0 if any feature index 0 occurs in the source's libsvm files, else 1 (as scikit-learn).

    The choice is made once on the training data and stored with the model, so test and
    prediction files are read the same way even if they happen not to use index 0.
    """
    if source.fmt not in INDEXED_FORMATS:
        return 0
    for batch in source.raw_blocks():
        if batch.indices.size and int(batch.indices.min()) == 0:
            return 0
    return 1


@dataclass
class ArraySource:
    """In-memory rows (a scipy sparse matrix or a dense array) served in blocks, with each
    row's sample weight when given (finite and >= 0, checked by the caller), and for a
    field-aware FM each nonzero's field from ``column_fields`` (the field of each column;
    fields 0 to its largest are checked as a libffm file's are)."""

    X: object
    y: np.ndarray | None
    feature_dim: int | None = None
    labels: str | None = None
    block_rows: int = 1 << 20
    sample_weight: np.ndarray | None = None
    column_fields: np.ndarray | None = None

    def __post_init__(self) -> None:
        X = self.X
        if hasattr(X, "tocsr"):
            X = X.tocsr()
        else:
            import scipy.sparse as sp

            X = np.asarray(X, dtype=np.float64)
            if X.ndim != 2:
                raise DataError("X", None, f"expected a 2-D array, got shape {X.shape}")
            X = sp.csr_matrix(X)
        X.sum_duplicates()
        self._csr = X
        if self.feature_dim is None:
            self.feature_dim = X.shape[1]
        n = X.shape[0]
        y = np.zeros(n, dtype=np.float32) if self.y is None else np.asarray(self.y)
        if y.shape != (n,):
            raise DataError("y", None, f"expected {n} labels, got shape {y.shape}")
        if not np.issubdtype(y.dtype, np.number):
            raise DataError("y", None, f"labels must be numbers, got dtype {y.dtype}")
        self._y = y.astype(np.float32)
        if self.column_fields is not None and self.column_fields.shape != (X.shape[1],):
            raise DataError("X", None, f"{X.shape[1]} columns, but fields for "
                            f"{self.column_fields.size}")
        if not np.isfinite(X.data).all():
            row = int(np.searchsorted(X.indptr, np.flatnonzero(~np.isfinite(X.data))[0], "right"))
            raise DataError(f"X row {row - 1}", None, "value is not finite (NaN or infinity)")

    @property
    def name(self) -> str:
        return "<array>"

    def blocks(self) -> Iterator[SparseBatch]:
        X = self._csr
        fields = self.column_fields
        check = BatchChecker(self.feature_dim, 0, self.labels,
                             num_fields=0 if fields is None else int(fields.max(initial=-1)) + 1)
        for start in range(0, X.shape[0], self.block_rows):
            stop = min(start + self.block_rows, X.shape[0])
            lo, hi = X.indptr[start], X.indptr[stop]
            yield check(SparseBatch(
                fields=None if self.column_fields is None
                else self.column_fields[X.indices[lo:hi]],
                indptr=(X.indptr[start : stop + 1] - lo).astype(np.int64),
                indices=X.indices[lo:hi].astype(np.int32),
                values=X.data[lo:hi].astype(np.float32),
                labels=self._y[start:stop],
                lines=None,
                source="X",
                first_row=start,
                weights=None if self.sample_weight is None
                else np.asarray(self.sample_weight[start:stop], np.float32),
            ))


# a training or validation channel of at most this much plain text (uncompressed, not a pipe)
# is parsed once per run and its checked rows held in memory for the later epochs: parsed rows
# take about two to four times their text (docs/performance.md, session 49)
HELD_BYTES = 32 << 20


class Wrapped:
    """A source around another (``source``): anything it does not define is the wrapped
    source's, and an epoch's rows (:func:`fmkit.train.engine.epoch_rows`) are the wrapped
    source's rows of that epoch, wrapped alike (:meth:`_around`)."""

    def __init__(self, source: Any) -> None:
        self.source = source

    def __getattr__(self, name: str) -> Any:
        return getattr(self.source, name)

    def for_epoch(self, epoch: int) -> Any:
        inner = getattr(self.source, "for_epoch", None)
        return self if inner is None else self._around(inner(epoch))

    def _around(self, source: Any) -> Wrapped:
        """This wrapper around another source."""
        return type(self)(source)


class HeldRows(Wrapped):
    """``source``'s rows, read (parsed and checked) in its first full pass and then replayed
    from memory: what a run of several epochs over a small channel trains and validates on, so
    that each epoch does not wait for the file's parse (a9a: the reader, not the trainer, set
    the pace of every epoch). The rows are those a new pass would read, joined into one batch
    after the first pass: the training chunks (:func:`~fmkit.data.batch.rebatch`, the same
    whatever the blocks) are then views of it, where joining blocks into chunks again cost
    each later epoch a copy of its rows (docs/performance.md, session 53). The data order and
    the model are the same. Anything else is the wrapped source's, ``parses`` included: a
    replay keeps the thread parts of a streamed run, so the lock-free steps are the same."""

    def __init__(self, source: Any) -> None:
        super().__init__(source)
        self._held: list[SparseBatch] | None = None

    def blocks(self) -> Iterator[SparseBatch]:
        return iter(self._held) if self._held is not None else self._first_pass()

    def _first_pass(self) -> Iterator[SparseBatch]:
        read = []
        for block in self.source.blocks():
            read.append(block)
            yield block
        self._held = [concat(read)] if read else []  # (a pass left early holds nothing)

    def for_epoch(self, epoch: int) -> HeldRows:
        """Every epoch's rows are the same (see :func:`fmkit.train.engine.epoch_rows`)."""
        return self


def held_if_small(source: Any, passes: int) -> Any:
    """``source`` as :class:`HeldRows` when it will be read ``passes`` > 1 times and its
    channel is plain text (or recordIO) files of at most :data:`HELD_BYTES` (``source`` a
    :class:`FileSource`, or :class:`UnitRows` of one); else ``source`` itself. Rows scaled
    from rows already held (an FFM's field count holds them) are held scaled, so that no
    epoch scales them again."""
    channel = source.source if isinstance(source, UnitRows) else source
    if isinstance(channel, HeldRows):
        return HeldRows(source) if channel is not source and passes > 1 else source
    if passes <= 1 or not isinstance(channel, FileSource) or not channel.rereadable:
        return source
    if sum(file.stat().st_size for file in channel.files) > HELD_BYTES:
        return source
    return source if any(compressed(file) for file in channel.files) else HeldRows(source)


class UnitRows(Wrapped):
    """``source`` with every row scaled to unit length (:func:`~fmkit.data.batch.unit_rows`):
    what an FM with ``instance_norm=1`` trains on. Anything else is the wrapped source's."""

    def blocks(self) -> Iterator[SparseBatch]:
        return map(unit_rows, self.source.blocks())


class LabelOrder:
    """Watches the rows of a training channel for rows that come ordered by label (a file
    sorted by label, or positives then negatives). Training shuffles rows only within a chunk
    (FM: :data:`~fmkit.data.batch.CHUNK_ROWS` rows; DeepFM: a block read), so such a channel
    teaches one label after the other and leaves a poor model without an error. The rows are
    cut into runs of :data:`RUN_ROWS` (each block's own); once a pass has read :data:`RUNS`
    runs and the differences between the runs' means hold :data:`SHARE` or more of the
    labels' variance (rows in random order: about runs / rows), it warns once, naming the
    channel."""

    RUN_ROWS = 4096
    RUNS = 8
    SHARE = 0.5

    def __init__(self, name: str):
        self.name, self.warned = str(name), False

    def checked(self, batches: Iterator[Any]) -> Iterator[Any]:
        """``batches`` (each with ``labels``) unchanged, watched as one pass."""
        rows = total = squares = between = 0.0
        runs = 0
        for batch in batches:
            labels = np.zeros(0) if self.warned else np.asarray(batch.labels, dtype=np.float64)
            if labels.size:
                starts = np.arange(0, labels.size, self.RUN_ROWS)
                sums = np.add.reduceat(labels, starts)
                rows, total, runs = rows + labels.size, total + float(sums.sum()), runs + sums.size
                squares += float(np.square(labels).sum())  # (not BLAS: its threads spin)
                between += float((sums * sums / np.diff(starts, append=labels.size)).sum())
                spread = squares - total * total / rows
                if runs >= self.RUNS and spread > 0:
                    self._say((between - total * total / rows) / spread)
            yield batch

    def _say(self, share: float) -> None:
        if share >= self.SHARE:
            self.warned = True
            advice.warning(
                "%s: the training rows come ordered by label (the means of runs of %d rows "
                "hold %.0f%% of the labels' variance): training shuffles rows only within "
                "chunks, so it learns one label after another, and the model can be poor. "
                "Shuffle the rows first (shuf FILE -o SHUFFLED; terashuf for files larger "
                "than memory)", self.name, self.RUN_ROWS, 100 * share)


class LabelOrderWatched(Wrapped):
    """``source`` with its blocks watched by a :class:`LabelOrder` (one for every epoch's
    rows: it warns once per run). Anything else is the wrapped source's."""

    def __init__(self, source: Any, watch: LabelOrder | None = None) -> None:
        super().__init__(source)
        self.watch = watch or LabelOrder(source.name)

    def blocks(self) -> Iterator[Any]:
        return self.watch.checked(self.source.blocks())

    def _around(self, source: Any) -> LabelOrderWatched:
        return LabelOrderWatched(source, self.watch)
