"""From raw columns to model inputs: TorchEasyRec's id and raw features, and the group rules.

:class:`FeatureSet` is built once from the configuration (checking TorchEasyRec's rules, each
with its own message) and encodes each :class:`~fmkit.data.columns.ColumnBatch` into
:class:`Encoded` arrays: for every sparse feature the embedding rows of each row's ids as an
(ids, offsets) pair, as ``nn.EmbeddingBag`` takes them; for every dense feature a float column.

* id features: strings or integers, hashed into ``hash_bucket_size`` buckets (FNV-1a of the
  UTF-8 text, so ``5`` and ``"5"`` are the same id), taken as they are below ``num_buckets``,
  or looked up in ``vocab_list`` (rows 0 = missing, 1 = out of vocabulary, then the list, as
  TorchEasyRec does). A column may hold several values split by ``separator`` (or be a list
  column in Parquet); the embeddings of one row are pooled by ``pooling`` (sum or mean). A
  missing value takes ``default_value``; the default "" means no id (a zero embedding).
* raw features: numbers, missing = ``default_value`` ("0"), optionally normalized; with
  ``boundaries`` bucketized into ``len(boundaries) + 1`` embedding rows (bucket = the number
  of boundaries <= value), else used as a dense value.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fmkit.compile_cache import kernel
from fmkit.cpus import on_threads, thread_count
from fmkit.data.columns import ColumnBatch, is_number
from fmkit.data.numbers import FLOAT32_MAX
from fmkit.errors import DataError, excerpt
from fmkit.logs import log
from fmkit.models.artifact import checked_classes
from fmkit.models.deepfm import expressions, transforms
from fmkit.models.deepfm.config import ConfigError, DataConfig, EasyRecConfig

GROUPS = ("wide", "fm", "deep")


# a batch of at least this many rows encodes its features on fmkit's threads (the compiled
# kernels and Arrow's release the GIL); a request's few rows, on the calling thread
PARALLEL_ROWS = 2048


@dataclass
class Encoded:
    """One batch of model inputs (numpy; the model turns them into tensors)."""

    n_rows: int
    sparse: dict[str, tuple[np.ndarray, np.ndarray]]  # feature -> (ids, offsets)
    dense: dict[str, np.ndarray]  # feature -> float32 [n_rows, 1]
    labels: np.ndarray | None = None
    weights: np.ndarray | None = None  # float32 sample weights (sample_weight_fields)


@kernel(nogil=True)
def _fnv1a_bucket(data: np.ndarray, start: int, end: int, buckets: int) -> int:
    """FNV-1a (64-bit) of the bytes ``data[start:end]``, modulo ``buckets``."""
    h = np.uint64(14695981039346656037)
    for q in range(start, end):
        h = (h ^ np.uint64(data[q])) * np.uint64(1099511628211)
    return np.int64(h % np.uint64(buckets))


@kernel(nogil=True)
def _fnv1a(offsets: np.ndarray, data: np.ndarray, buckets: np.ndarray) -> np.ndarray:
    """FNV-1a (64-bit) of each string, modulo its own bucket count ``buckets[i]``."""
    out = np.empty(offsets.size - 1, np.int64)
    for i in range(offsets.size - 1):
        out[i] = _fnv1a_bucket(data, offsets[i], offsets[i + 1], buckets[i])
    return out


@kernel(nogil=True)
def _split_values(data: np.ndarray, start: int, end: int, separator: np.ndarray, limit: int,
                  buckets: int, out: np.ndarray, filled: int) -> int:
    """The non-empty values among the first ``limit`` parts of ``data[start:end]`` split at
    ``separator`` (every occurrence, left to right), hashed into ``out[filled:]``; returns
    ``filled`` plus their count."""
    first, width = separator[0], separator.size
    parts, value_start, q = 0, start, start
    while q < end and parts < limit:
        if data[q] != first or q + width > end:
            q += 1
            continue
        k = 1
        while k < width and data[q + k] == separator[k]:
            k += 1
        if k < width:
            q += 1
            continue
        if q > value_start:
            out[filled] = _fnv1a_bucket(data, value_start, q, buckets)
            filled += 1
        parts += 1
        q += width
        value_start = q
    if parts < limit and end > value_start:
        out[filled] = _fnv1a_bucket(data, value_start, end, buckets)
        filled += 1
    return filled


@kernel(nogil=True)
def _hash_value_lists(offsets: np.ndarray, data: np.ndarray, valid: np.ndarray,
                      separator: np.ndarray, default: np.ndarray, limit: int, buckets: int):
    """Each text's values hashed (see :func:`hash_value_lists`): ids and row offsets; a
    missing text (``valid`` false) reads as ``default``."""
    rows = offsets.size - 1
    # values at most: a row's text has one more part than separators, each of which starts
    # with the separator's first byte; a missing row's default, one more than its length
    most = rows * (1 + default.size)
    for q in range(offsets[0], offsets[rows]):
        most += data[q] == separator[0]
    ids = np.empty(most, np.int64)
    row_offsets = np.zeros(rows + 1, np.int64)
    single = most == rows * (1 + default.size) and limit > 0  # no separator: one value a text
    for i in range(rows):
        if valid[i] and single:  # (hashed in one pass, without looking for separators)
            filled = row_offsets[i]
            if offsets[i + 1] > offsets[i]:
                ids[filled] = _fnv1a_bucket(data, offsets[i], offsets[i + 1], buckets)
                filled += 1
            row_offsets[i + 1] = filled
        elif valid[i]:
            row_offsets[i + 1] = _split_values(data, offsets[i], offsets[i + 1], separator,
                                               limit, buckets, ids, row_offsets[i])
        else:
            row_offsets[i + 1] = _split_values(default, 0, default.size, separator, limit,
                                               buckets, ids, row_offsets[i])
    return ids[:row_offsets[rows]].copy(), row_offsets


def hash_value_lists(texts: pa.Array, separator: str, default: str, limit: int | None,
                     buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """The hashed ids of :func:`~fmkit.models.deepfm.transforms.value_lists` of a text column,
    one compiled pass instead of splitting into Arrow lists, filtering and hashing: the same
    ids (a test holds them to it). ``texts``: a (large) string array; ``separator`` not
    empty; a missing text reads as ``default`` ("": no value)."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    offsets, data = _string_buffers(texts)
    valid = (texts.is_valid().to_numpy(zero_copy_only=False) if texts.null_count
             else np.ones(len(texts), np.bool_))
    return _hash_value_lists(offsets, data, valid, np.frombuffer(separator.encode(), np.uint8),
                             np.frombuffer(default.encode(), np.uint8),
                             limit if limit is not None else 2 ** 62, buckets)


def _string_buffers(texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A (large) string array's int64 offsets (its slice's) and bytes, without a copy of the
    bytes."""
    _, offsets, data = texts.buffers()
    wide = pa.types.is_large_string(texts.type)
    offsets = np.frombuffer(offsets, np.int64 if wide else np.int32)[
        texts.offset: texts.offset + len(texts) + 1].astype(np.int64, copy=False)
    return offsets, np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)


def hash_strings(strings: pa.Array, buckets: int | np.ndarray) -> np.ndarray:
    """The bucket of each (non-null) string: FNV-1a of its UTF-8 bytes modulo ``buckets``
    (one count for all, or one per string)."""
    strings = pc.cast(strings, pa.large_string())
    if len(strings) == 0:
        return np.zeros(0, np.int64)
    offsets, data = _string_buffers(strings)
    if np.ndim(buckets) == 0:
        buckets = np.full(len(strings), buckets, np.int64)
    return _fnv1a(offsets, data, np.ascontiguousarray(buckets, np.int64))




def float_values(values: pa.Array, batch: ColumnBatch, column: str,
                 rows: np.ndarray | None = None) -> np.ndarray:
    """float64 values (NaN where null, or written ``nan``); a value that is not a number
    (ASCII digits only: Python's ``float`` would take other scripts' digits) or beyond
    float32's range is an error naming its row (``rows`` maps positions of ``values`` to
    batch rows when they differ)."""

    def error(position: int, problem: str) -> DataError:
        row = int(rows[position]) if rows is not None else position
        return batch.error(row, f"column {column!r}: {problem}")

    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        try:
            values = pc.cast(pc.utf8_trim_whitespace(values), pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            for position, text in enumerate(values.to_pylist()):
                if text is not None and not is_number(text):
                    raise error(position, f"{excerpt(text)} is not a number") from None
            raise error(0, "a value is not a number") from None
    elif not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)
              or pa.types.is_boolean(values.type) or pa.types.is_decimal(values.type)):
        present = np.flatnonzero(values.is_valid().to_numpy(zero_copy_only=False))
        kind = values.type
        if pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
            kind = "a list"
            # a lone value may arrive wrapped in a list too: name the first row holding several
            lengths = pc.fill_null(pc.list_value_length(values), 0).to_numpy()
            several = np.flatnonzero(lengths > 1)
            present = several if several.size else present
        raise error(int(present[0]) if present.size else 0, f"expected a number, got {kind}")
    # (unsafe: an int64 beyond 2^53, a nanosecond timestamp say, is rounded, not refused)
    result = pc.cast(values, pa.float64(), safe=False).to_numpy(zero_copy_only=False
                                                                 ).astype(np.float64)
    beyond = np.flatnonzero(np.abs(result) > FLOAT32_MAX)
    if beyond.size:
        raise error(int(beyond[0]), f"{float(result[beyond[0]])!r} is not a finite float32 "
                    "(infinity, or beyond ±3.4e38)")
    return result


def _column_name(expression: str | None, default: str) -> str:
    """The column an input names: ``"user:uid"`` reads ``uid``."""
    return expression.split(":")[-1] if expression else default


@dataclass
class Feature:
    """One configured feature, checked, with what the model needs to know about it.

    ``kind`` is the configuration's feature type. Categorical kinds (id, sequence id, combo,
    discrete lookup) turn each row into a list of values that :meth:`_bucketize` maps to
    embedding rows; numeric kinds (raw, sequence raw, expression, lookup) into numbers that
    :meth:`raw_input` normalizes and either bucketizes (``boundaries``) or keeps dense."""

    name: str
    column: str
    config: Any
    sparse: bool  # embedding lookup (id, or bucketized raw) vs dense value
    embedding_name: str = ""
    embedding_dim: int = 1
    num_embeddings: int = 0
    pooling: str = "sum"
    init_fn: str | None = None
    vocabulary: pa.Array | None = None  # values of vocab_list / vocab_dict, and their ids:
    vocabulary_ids: np.ndarray | None = None
    normalize: tuple = ()
    kind: str = "id_feature"
    columns: tuple[str, ...] = ()  # the inputs of a combo, lookup (map, key) or expression
    expression: Any = None  # expr_feature: the parsed expression

    @property
    def inputs(self) -> list[str]:
        """The raw columns this feature reads."""
        return list(self.columns) or [self.column]

    @property
    def output_dim(self) -> int:
        return self.embedding_dim if self.sparse else 1

    @property
    def numeric(self) -> bool:
        return self.kind in ("raw_feature", "sequence_raw_feature", "expr_feature") or (
            self.kind == "lookup_feature" and not self.config.need_discrete)

    @cached_property
    def vocabulary_index(self) -> dict[str, int]:
        """Vocabulary ids by value (the first occurrence of a repeated value)."""
        index: dict[str, int] = {}
        for value, row in zip(self.vocabulary.to_pylist(), self.vocabulary_ids.tolist()):
            index.setdefault(value, row)
        return index

    @property
    def oov_id(self) -> int:
        """The row of a value outside the vocabulary: ``default_bucketize_value``, else 1."""
        value = getattr(self.config, "default_bucketize_value", None)
        return 1 if value is None else value

    # -- encoding -------------------------------------------------------------------------------
    def encode(self, batch: ColumnBatch) -> tuple[np.ndarray, np.ndarray] | np.ndarray:
        if self.kind == "raw_feature":
            return self.raw_input(float_values(batch.column(self.column), batch, self.column),
                                  batch.error)
        if self.kind == "expr_feature":
            values = {name: float_values(batch.column(name), batch, name) for name in self.columns}
            return self.raw_input(self.expression.evaluate(values), batch.error)
        if self.kind == "sequence_raw_feature":
            return self._sequence_numbers(batch)
        if self.kind == "lookup_feature":
            return self._lookup(batch)
        if self.kind == "combo_feature":
            flat, offsets = transforms.crossed(
                [self._lists(batch, c, self.config.separator, self.config.default_value)
                 for c in self.columns], batch.n_rows)
        else:
            column = batch.column(self.column)
            separator = getattr(self.config, "sequence_delim", None) or self.config.separator
            limit = getattr(self.config, "sequence_length", None)
            if (getattr(self.config, "hash_bucket_size", None) and separator
                    and (pa.types.is_string(column.type) or pa.types.is_large_string(column.type))):
                return hash_value_lists(column, separator, self.config.default_value or "",
                                        limit, self.num_embeddings)
            flat, offsets = self._lists(batch, self.column, separator,
                                        self.config.default_value, limit)
        return self._bucketize(flat, offsets, batch)

    def _lists(self, batch: ColumnBatch, name: str, separator: str, default: str = "",
               limit: int | None = None) -> tuple[pa.Array, np.ndarray]:
        """:func:`transforms.value_lists` of a column: a value that cannot be an id (a struct,
        bytes that are not UTF-8) is a :class:`DataError` naming its row and column."""
        try:
            return transforms.value_lists(batch.column(name), separator, default, limit)
        except transforms.NotText as e:
            raise batch.error(e.row, f"column {name!r}: {e}") from None

    def _normalized(self, values: np.ndarray) -> np.ndarray:
        """float64 values (NaN = missing, given ``default_value``) after the normalizer."""
        values = np.where(np.isnan(values), float(self.config.default_value or 0), values)
        method, options = self.normalize or (None, {})
        if method == "log1p":
            values = np.log1p(np.maximum(values, 0.0))
        elif method == "log10":
            above = values > options.get("threshold", 1e-10)  # (> 0: their log is finite)
            logs = np.full_like(values, options.get("default", -10.0))
            logs[above] = np.log10(values[above])
            values = logs
        elif method == "zscore":
            values = (values - options.get("mean", 0.0)) / options.get("standard_deviation", 1.0)
        elif method == "minmax":
            low, high = options.get("min", 0.0), options.get("max", 1.0)
            values = (values - low) / (high - low)
        return values

    def raw_input(self, values: np.ndarray, error: Callable[[int, str], Exception] | None = None
                  ) -> tuple[np.ndarray, np.ndarray] | np.ndarray:
        """The model input of a numeric feature's float64 values (NaN = missing): a dense
        column, or with ``boundaries`` each row's bucket as an (ids, offsets) pair. A dense
        value the normalizer takes beyond float32 is ``error(row, problem)`` (it would reach
        the network as infinity); without ``error`` it is left infinite, for the caller to
        see."""
        normalized = self._normalized(values)
        if not self.sparse:
            if error is not None:
                self._check_range(values, normalized, error)
            with np.errstate(over="ignore"):  # (infinity: for the caller without ``error``)
                return normalized.astype(np.float32).reshape(-1, 1)
        values = normalized
        ids = np.searchsorted(np.asarray(self.config.boundaries), values, side="right")
        return ids.astype(np.int64), np.arange(values.size + 1, dtype=np.int64)

    def _check_range(self, values: np.ndarray, normalized: np.ndarray,
                      error: Callable[[int, str], Exception]) -> None:
        beyond = np.flatnonzero(np.abs(normalized) > FLOAT32_MAX)
        if beyond.size:
            row = int(beyond[0])
            step = (f"its normalizer ({self.normalize[0]})" if self.normalize
                    else "combining the values found")
            raise error(row, f"column {self.column!r}: {float(values[row]):.6g} is "
                             f"{float(normalized[row]):.3g} after {step}, beyond float32")

    def _sequence_numbers(self, batch: ColumnBatch) -> tuple[np.ndarray, np.ndarray] | np.ndarray:
        """A number sequence per row: its values' buckets pooled by the embedding bag, or
        (dense) their sum or mean; an empty sequence is one ``default_value``."""
        config = self.config
        flat, offsets = self._lists(batch, self.column, config.sequence_delim, "",
                                    config.sequence_length)
        row_of = np.repeat(np.arange(batch.n_rows), np.diff(offsets))
        values = float_values(flat, batch, self.column, row_of)
        counts = np.diff(offsets)
        empty = np.flatnonzero(counts == 0)
        if empty.size:  # an empty sequence counts as one default value
            values = np.insert(values, offsets[empty], np.nan)
            counts = np.maximum(counts, 1)
            offsets = np.concatenate([[0], np.cumsum(counts)])
        values = self._normalized(values)
        if self.sparse:
            ids = np.searchsorted(np.asarray(config.boundaries), values, side="right")
            return ids.astype(np.int64), offsets.astype(np.int64)
        sums = np.add.reduceat(values, offsets[:-1]) if values.size else np.zeros(0)
        pooled = sums / counts if config.pooling == "mean" else sums
        beyond = np.flatnonzero(~(np.abs(pooled) <= FLOAT32_MAX))  # (inf - inf: NaN too)
        if beyond.size:
            raise batch.error(int(beyond[0]), f"column {self.column!r}: the sequence's values "
                              f"pool ({config.pooling}) to {float(pooled[beyond[0]]):.3g} "
                              "after the normalizer, beyond float32")
        return pooled.astype(np.float32).reshape(-1, 1)

    def _lookup(self, batch: ColumnBatch) -> tuple[np.ndarray, np.ndarray] | np.ndarray:
        config = self.config
        try:
            found, offsets = transforms.looked_up(batch.column(self.columns[0]),
                                                  batch.column(self.columns[1]),
                                                  config.separator,
                                                  config.need_key and config.need_discrete)
        except transforms.NotText as e:  # (the keys: the map's cells are read as pairs)
            raise batch.error(e.row, f"column {self.columns[1]!r}: {e}") from None
        if config.need_discrete:
            return self._bucketize(pa.array(found, pa.string()), offsets, batch)
        row_of = np.repeat(np.arange(batch.n_rows), np.diff(offsets))
        values = float_values(pa.array(found, pa.string()), batch, self.columns[0], row_of)
        return self.raw_input(transforms.combine(values, offsets, config.combiner), batch.error)

    def _bucketize(self, flat: pa.Array, offsets: np.ndarray, batch: ColumnBatch
                   ) -> tuple[np.ndarray, np.ndarray]:
        """The embedding rows of categorical values (``flat``, row ``i`` owning
        ``flat[offsets[i]:offsets[i + 1]]``, text as :mod:`~fmkit.models.deepfm.transforms` gives
        it): hashed, taken as integers below
        ``num_buckets``, or looked up in the vocabulary."""
        config = self.config
        if getattr(config, "hash_bucket_size", None):
            return hash_strings(flat, self.num_embeddings), offsets
        if getattr(config, "num_buckets", None):
            row_of = np.repeat(np.arange(batch.n_rows), np.diff(offsets))
            try:
                numbers = float_values(flat, batch, self.column, row_of)
            except DataError as e:
                raise DataError(e.source, e.line, f"{e.problem} (num_buckets takes integer "
                                "ids; for text ids set hash_bucket_size instead)") from None
            bad = np.flatnonzero((numbers != np.round(numbers)) | (numbers < 0)
                                 | (numbers >= config.num_buckets))
            if bad.size:
                value = flat[int(bad[0])].as_py()
                shown = excerpt(value) if isinstance(value, str) else repr(value)
                raise batch.error(int(row_of[bad[0]]), f"column {self.column!r}: id "
                                  f"{shown} is not an integer in "
                                  f"[0, num_buckets={config.num_buckets}) (for text ids, "
                                  f"set hash_bucket_size instead)")
            return numbers.astype(np.int64), offsets
        found = pc.index_in(flat, value_set=self.vocabulary).to_numpy(zero_copy_only=False)
        known = ~np.isnan(found.astype(np.float64))
        ids = np.full(len(flat), self.oov_id, np.int64)
        ids[known] = self.vocabulary_ids[np.nan_to_num(found[known]).astype(np.int64)]
        return ids, offsets


# a dense raw input this large, not normalized, saturates the deep network's first layer
# (TorchEasyRec's Criteo configs expect counts already log-transformed)
RAW_WARNING = 1000.0


_WARNED: set[str] = set()  # features warned about in this process


def _warn_unscaled(features: list[Feature], dense: dict[str, np.ndarray]) -> None:
    """One warning line for the dense inputs of a batch that reach ``RAW_WARNING`` without a
    normalizer, each feature named once per process."""
    found = []
    for feature in features:
        values = dense.get(feature.name)
        if values is None or not values.size or feature.normalize or feature.name in _WARNED:
            continue
        largest = float(np.max(np.abs(values)))
        if RAW_WARNING <= largest < math.inf:
            _WARNED.add(feature.name)
            found.append(f"{feature.name} ({largest:g})")
    if found:
        log.warning("raw features without a normalizer reach large values: %s; the deep "
                    "network takes them as they are, and inputs this large saturate it: set "
                    "normalizer (log1p, zscore, minmax) or boundaries", ", ".join(found))


def _float_or_nan(text: str) -> float:
    """A setting's number (NaN when the text is none: each caller's check then refuses it)."""
    try:
        return float(text)
    except ValueError:
        return math.nan


NORMALIZER_OPTIONS = {"log1p": (), "log10": ("threshold", "default"),
                      "zscore": ("mean", "standard_deviation"), "minmax": ("min", "max")}


def _parse_normalizer(text: str | None, where: str) -> tuple:
    """TorchEasyRec's ``method=NAME,key=value,...`` (or just ``NAME``) as ``(method,
    options)``; the rules a new configuration also meets are :func:`_check_normalizer`'s."""
    if not text:
        return ()
    where = f"{where}.normalizer"
    pairs = _normalizer_pairs(text)
    methods = [value if key == "method" else key for key, sep, value in pairs
               if key == "method" or not sep]
    method = methods[0] if len(methods) == 1 else None
    if method == "expression":
        raise ConfigError(f"{where}: method=expression is not supported: compute the value "
                          "with an expr_feature")
    if method not in NORMALIZER_OPTIONS:
        raise ConfigError(f"{where}: method must be log1p, log10, zscore or minmax, got "
                          f"{excerpt(', '.join(methods) or text)}")
    options = {key: _float_or_nan(value) for key, sep, value in pairs
               if sep and key in NORMALIZER_OPTIONS[method]}
    if method == "minmax" and options.get("max", 1.0) == options.get("min", 0.0):
        raise ConfigError(f"{where}: minmax needs min != max")
    return method, options


def _normalizer_pairs(text: str) -> list[tuple[str, str, str]]:
    """``(key, "=", value)`` of each comma-separated part (``(name, "", "")`` for a bare one)."""
    return [part.strip().partition("=") for part in text.split(",") if part.strip()]


def _check_normalizer(feature: Feature, where: str) -> None:
    """A new configuration's normalizer (``feature.normalize``, parsed from its text; a
    discrete lookup, which does not use it, parses it here): each of the method's options a
    finite number, and no option the method does not read (a misspelt ``std=`` would leave
    the default standing). A model saved before these rules keeps loading as it trained."""
    method, options = feature.normalize or _parse_normalizer(feature.config.normalizer, where)
    where = f"{where}.normalizer"
    for key, sep, value in _normalizer_pairs(feature.config.normalizer):
        if sep and key != "method" and key not in NORMALIZER_OPTIONS[method]:
            reads = " and ".join(NORMALIZER_OPTIONS[method]) or "no option"
            raise ConfigError(f"{where}: {method} reads {reads}, not {excerpt(key)}")
        if sep and key != "method" and not math.isfinite(options[key]):
            raise ConfigError(f"{where}: {key}={excerpt(value)} is not a finite number")
    if method == "zscore" and options.get("standard_deviation", 1.0) <= 0:
        raise ConfigError(f"{where}: standard_deviation must be positive")
    if method == "log10" and options.get("threshold", 1e-10) < 0:
        raise ConfigError(f"{where}: threshold must be >= 0 (the log of a value at or "
                          "below 0 is not a number)")


def _check_defaults(feature: Feature, where: str) -> None:
    """A new configuration's ``default_value``: an id in range for an integer id feature
    (else each missing value's row is said to be bad data), a finite number for a numeric
    one (an infinite default made every missing value's input infinite: training
    "diverged")."""
    config = feature.config
    if not config.default_value:
        return
    if feature.sparse and getattr(config, "num_buckets", None):
        for value in config.default_value.split(config.separator):
            number = _float_or_nan(value)
            if not (0 <= number < feature.num_embeddings and number == round(number)):
                raise ConfigError(f"{where}.default_value: {excerpt(value)} is not an id in "
                                  f"[0, num_buckets={feature.num_embeddings})")
    elif feature.numeric and not math.isfinite(
            _float_or_nan(config.default_value)):
        raise ConfigError(f"{where}.default_value: {excerpt(config.default_value)} is not a "
                          "finite number")


def _vocabulary(config: Any, where: str) -> tuple[pa.Array, np.ndarray, int]:
    """A vocabulary's values, their embedding rows and the table's row count, as TorchEasyRec
    numbers them: without ``default_bucketize_value`` rows 0 (the missing value's default)
    and 1 (out of vocabulary) are reserved and ``vocab_list`` starts at 2; with it the rows
    are the user's (``vocab_list`` positions from 0, ``vocab_dict`` values) and values
    outside the vocabulary take ``default_bucketize_value``."""
    reserved = config.default_bucketize_value is None
    if config.vocab_list:
        values = list(config.vocab_list)
        rows = [position + (2 if reserved else 0) for position in range(len(values))]
    else:
        values, rows = list(config.vocab_dict), list(config.vocab_dict.values())
        if reserved and any(row < 2 for row, value in zip(rows, values)
                            if value != config.default_value):
            raise ConfigError(f"{where}.vocab_dict: ids 0 and 1 are reserved (the default "
                              f"value and out-of-vocabulary values) unless "
                              f"default_bucketize_value is set; start at 2")
        if any(row < 0 for row in rows):
            raise ConfigError(f"{where}.vocab_dict: ids must be >= 0")
    if reserved and config.default_value and config.default_value not in values:
        values, rows = [*values, config.default_value], [*rows, 0]
    elif reserved and config.default_value in values:  # (the default value's row is 0)
        rows = [0 if value == config.default_value else row for value, row in zip(values, rows)]
    size = max([*rows, 1 if reserved else config.default_bucketize_value]) + 1
    if not reserved and config.default_bucketize_value < 0:
        raise ConfigError(f"{where}.default_bucketize_value: must be >= 0")
    return pa.array(values, pa.string()), np.array(rows, np.int64), size


def _categorical(config: Any, where: str, kind: str, column: str,
                 columns: tuple[str, ...] = ()) -> Feature:
    """An id, sequence id, combo or discrete lookup feature."""
    sizes = [name for name in ("hash_bucket_size", "num_buckets", "vocab_list", "vocab_dict",
                               "vocab_file") if getattr(config, name, None)]
    if len(sizes) != 1:
        raise ConfigError(f"{where}: set exactly one of hash_bucket_size, num_buckets, "
                          f"vocab_list, vocab_dict, vocab_file (got {', '.join(sizes) or 'none'})")
    if sizes[0] == "vocab_file":
        raise ConfigError(f"{where}.vocab_file: not read yet (fmkit reads vocabulary files "
                          f"when the model is created)")
    if config.pooling not in ("sum", "mean"):
        raise ConfigError(f"{where}.pooling: expected sum or mean, got {config.pooling!r}")
    if not config.embedding_dim or config.embedding_dim <= 0:
        raise ConfigError(f"{where}.embedding_dim: must be positive")
    if not config.separator:
        raise ConfigError(f"{where}.separator: must not be empty")
    vocabulary = rows = None
    if sizes[0] in ("vocab_list", "vocab_dict"):
        vocabulary, rows, size = _vocabulary(config, where)
    else:
        size = getattr(config, sizes[0])
    if size <= 0:
        raise ConfigError(f"{where}.{sizes[0]}: must be positive")
    return Feature(config.feature_name, column, config, True,
                   config.embedding_name or f"{config.feature_name}_emb", config.embedding_dim,
                   size, config.pooling, config.init_fn, vocabulary, rows, kind=kind,
                   columns=columns)


def _numeric(config: Any, where: str, kind: str, column: str, columns: tuple[str, ...] = (),
             expression: Any = None) -> Feature:
    """A raw, sequence raw, expression or numeric lookup feature."""
    normalize = _parse_normalizer(config.normalizer, where)
    if (getattr(config, "value_dim", None) or 1) != 1:
        raise ConfigError(f"{where}.value_dim: fmkit supports value_dim 1")
    try:
        float(config.default_value or 0)
    except ValueError:
        raise ConfigError(f"{where}.default_value: {config.default_value!r} is not a number"
                          ) from None
    if getattr(config, "pooling", "sum") not in ("sum", "mean"):
        raise ConfigError(f"{where}.pooling: expected sum or mean, got {config.pooling!r}")
    common = {"kind": kind, "columns": columns, "expression": expression,
              "normalize": normalize, "pooling": getattr(config, "pooling", "sum")}
    if not config.boundaries:
        return Feature(config.feature_name, column, config, False, **common)
    if sorted(config.boundaries) != list(config.boundaries):
        raise ConfigError(f"{where}.boundaries: must be ascending")
    if not config.embedding_dim or config.embedding_dim <= 0:
        raise ConfigError(f"{where}.embedding_dim: a feature with boundaries needs a positive "
                          f"embedding_dim")
    return Feature(config.feature_name, column, config, True,
                   config.embedding_name or f"{config.feature_name}_emb", config.embedding_dim,
                   len(config.boundaries) + 1, init_fn=config.init_fn, **common)


def _feature(config: Any, kind: str, where: str) -> Feature:
    column = _column_name(getattr(config, "expression", None)
                          if kind not in ("combo_feature", "expr_feature") else None,
                          config.feature_name)
    if kind in ("sequence_id_feature", "sequence_raw_feature"):
        if not config.sequence_length or config.sequence_length <= 0:
            raise ConfigError(f"{where}.sequence_length: required, a positive integer")
        if not config.sequence_delim:
            raise ConfigError(f"{where}.sequence_delim: must not be empty")
    if kind in ("id_feature", "sequence_id_feature"):
        return _categorical(config, where, kind, column)
    if kind in ("raw_feature", "sequence_raw_feature"):
        return _numeric(config, where, kind, column)
    if kind == "combo_feature":
        if len(config.expression) < 2:
            raise ConfigError(f"{where}.expression: a combo feature crosses two or more inputs")
        columns = tuple(_column_name(e, "") for e in config.expression)
        return _categorical(config, where, kind, columns[0], columns)
    if kind == "lookup_feature":
        if config.combiner not in transforms.COMBINERS:
            raise ConfigError(f"{where}.combiner: expected one of "
                              f"{', '.join(transforms.COMBINERS)}, got {config.combiner!r}")
        columns = (_column_name(config.map, ""), _column_name(config.key, ""))
        if config.need_discrete:
            return _categorical(config, where, kind, columns[0], columns)
        if config.hash_bucket_size or config.num_buckets or config.vocab_list or config.vocab_dict:
            raise ConfigError(f"{where}: hash_bucket_size, num_buckets and vocabularies need "
                              f"need_discrete: true (numeric values use boundaries)")
        return _numeric(config, where, kind, columns[0], columns)
    # expr_feature
    names = [_column_name(v, "") for v in config.variables]
    parsed = expressions.parse(config.expression, names, f"{where}.expression")
    return _numeric(config, where, kind, names[0] if names else config.feature_name,
                    tuple(n for n in names if n in parsed.variables) or ("",), parsed)


def _label_and_weight(features: dict[str, Feature], data: DataConfig
                      ) -> tuple[str, str | None]:
    """The label and sample weight columns ``data`` names; the label is no feature's input."""
    label = data.label_fields[0]
    if any(label in f.inputs for f in features.values()):
        raise ConfigError(f"data_config.label_fields: the label column {label!r} is also a "
                          f"feature's input")
    return label, next(iter(data.sample_weight_fields), None)


@dataclass
class FeatureSet:
    """The configured features, their groups and embedding tables, checked."""

    features: dict[str, Feature]
    groups: dict[str, list[str]]  # "wide", "fm" (optional), "deep" -> feature names
    label: str
    wide_embedding_dim: int
    tables: dict[str, Feature] = field(default_factory=dict)  # embedding name -> first user
    weight: str | None = None  # the sample weight column
    num_class: int = 1

    @classmethod
    def from_config(cls, config: EasyRecConfig, saved: bool = False) -> FeatureSet:
        """The features of ``config``; ``saved``: a trained model's, which is not held to the
        rules a new configuration meets (:func:`_check_normalizer`, :func:`_check_defaults`)
        that an older fmkit did not have: the model loads and scores as it trained."""
        features: dict[str, Feature] = {}
        for i, entry in enumerate(config.feature_configs):
            where = f"feature_configs[{i}].{entry.kind}"
            feature = _feature(entry.feature, entry.kind, where)
            if not saved:
                if getattr(entry.feature, "normalizer", None):
                    _check_normalizer(feature, where)
                _check_defaults(feature, where)
            if feature.name in features:
                raise ConfigError(f"{where}.feature_name: {feature.name!r} is configured twice")
            features[feature.name] = feature
        label, weight = _label_and_weight(features, config.data_config)
        groups: dict[str, list[str]] = {}
        for i, group in enumerate(config.model_config.feature_groups):
            where = f"model_config.feature_groups[{i}]"
            name = group.group_name
            if name not in GROUPS:
                raise ConfigError(f"{where}.group_name: DeepFM uses the groups wide, fm "
                                  f"(optional) and deep, got {name!r}")
            if name in groups:
                raise ConfigError(f"{where}.group_name: group {name!r} is configured twice")
            expected = "WIDE" if name == "wide" else "DEEP"
            if group.group_type != expected:
                raise ConfigError(f"{where}.group_type: group {name!r} must be {expected}, got "
                                  f"{group.group_type!r}")
            if not group.feature_names:
                raise ConfigError(f"{where}.feature_names: group {name!r} has no features")
            for feature_name in group.feature_names:
                if feature_name not in features:
                    raise ConfigError(f"{where}.feature_names: unknown feature "
                                      f"{feature_name!r} (configured: {', '.join(features)})")
                if name == "wide" and not features[feature_name].sparse:
                    raise ConfigError(f"{where}: dense feature [{feature_name}] should not be "
                                      f"configured in wide group.")
            groups[name] = list(group.feature_names)
        for name in ("wide", "deep"):
            if name not in groups:
                raise ConfigError(f"model_config.feature_groups: DeepFM needs a group named "
                                  f"{name!r} (and optionally 'fm')")
        fm_group = "fm" if "fm" in groups else "deep"
        dims = {f: features[f].output_dim for f in groups[fm_group]}
        if len(set(dims.values())) != 1:
            raise ConfigError(f"model_config.feature_groups ({fm_group}): embedding dimension "
                              f"of fm features must be same. but got {dims}")
        wide_dim = config.model_config.deepfm.wide_embedding_dim
        if wide_dim <= 0:
            raise ConfigError("model_config.deepfm.wide_embedding_dim: must be positive")
        result = cls(features, groups, label, wide_dim, weight=weight,
                     num_class=config.model_config.num_class)
        result._check_tables()
        return result

    def _check_tables(self) -> None:
        for feature in self.features.values():
            if not feature.sparse:
                continue
            first = self.tables.setdefault(feature.embedding_name, feature)
            for attribute in ("num_embeddings", "embedding_dim", "pooling", "init_fn"):
                if getattr(first, attribute) != getattr(feature, attribute):
                    raise ConfigError(
                        f"features {first.name!r} and {feature.name!r} share embedding "
                        f"{feature.embedding_name!r} but differ in {attribute} "
                        f"({getattr(first, attribute)!r} vs {getattr(feature, attribute)!r})")

    def input_columns(self) -> list[str]:
        """The raw columns the features read, in configuration order."""
        return list(dict.fromkeys(column for f in self.features.values() for column in f.inputs))

    @property
    def fm_group(self) -> str:
        return "fm" if "fm" in self.groups else "deep"

    @property
    def used(self) -> list[Feature]:
        """The features some group uses, in configuration order."""
        names = {n for group in self.groups.values() for n in group}
        return [f for f in self.features.values() if f.name in names]

    def encode(self, batch: ColumnBatch, labelled: bool, label_mode: str) -> Encoded:
        """Model inputs of a batch (and its labels and sample weights when ``labelled``;
        ``label_mode``: ``binary``, ``real`` or ``multiclass``)."""
        used = self.used
        threads = thread_count() if batch.n_rows >= PARALLEL_ROWS else 1
        inputs = on_threads(Feature.encode, [(feature, batch) for feature in used], threads)
        sparse = {f.name: values for f, values in zip(used, inputs) if f.sparse}
        dense = {f.name: values for f, values in zip(used, inputs) if not f.sparse}
        if not labelled:
            return Encoded(batch.n_rows, sparse, dense)
        _warn_unscaled(self.used, dense)  # (training and evaluation; not per served request)
        weights = self.weights(batch) if self.weight else None
        return Encoded(batch.n_rows, sparse, dense, self.labels(batch, label_mode), weights)

    def read_columns(self, data: DataConfig) -> None:
        """Take the label and sample weight from ``data`` (files laid out otherwise than the
        training files), by the rules a configuration's are taken by."""
        self.label, self.weight = _label_and_weight(self.features, data)

    def labels(self, batch: ColumnBatch, label_mode: str) -> np.ndarray:
        column = batch.column(self.label)
        values = float_values(column, batch, self.label)
        for missing, problem in ((column.is_null().to_numpy(zero_copy_only=False), "is empty"),
                                 (np.isnan(values), "is nan")):  # (an empty field, or "nan")
            if missing.any():
                raise batch.error(int(np.argmax(missing)),
                                  f"label column {self.label!r} {problem}")
        if label_mode == "binary":
            bad = np.flatnonzero((values != 0) & (values != 1))
            if bad.size:
                raise batch.error(int(bad[0]), f"label {values[bad[0]]:g} is not 0 or 1 "
                                  f"(binary cross entropy)")
        elif label_mode == "multiclass":
            bad = np.flatnonzero((values != np.round(values)) | (values < 0)
                                 | (values >= self.num_class))
            if bad.size:
                raise batch.error(int(bad[0]), f"label {values[bad[0]]:g} is not a class in "
                                  f"0..{self.num_class - 1} (num_class {self.num_class})")
        elif not np.isfinite(values).all():
            row = int(np.flatnonzero(~np.isfinite(values))[0])
            raise batch.error(row, f"label {values[row]} is not finite")
        return values.astype(np.float32)

    def weights(self, batch: ColumnBatch) -> np.ndarray:
        """The sample weight of each row: a finite number >= 0 (missing: an error)."""
        column = batch.column(self.weight)
        values = float_values(column, batch, self.weight)
        bad = np.flatnonzero(~(values >= 0) | ~np.isfinite(values))
        if bad.size:
            row = int(bad[0])
            raise batch.error(row, f"sample weight column {self.weight!r}: " + (
                "is empty" if not column[row].is_valid else
                f"{values[row]:g} is not a finite number >= 0"))
        return values.astype(np.float32)


def named_classes(classes: Any, outputs: int) -> list | None:
    """The class names a scikit-learn estimator was fitted on (``model.json``'s
    ``estimator.classes``) where they are not the label indices the network predicts
    (``outputs``: its classes, 2 for a binary model): None for 0..n-1; checked, as a model
    file is read."""
    if classes is None:
        return None
    try:
        checked_classes(classes, outputs)
    except ValueError as e:
        raise ValueError(f"estimator.{e}") from None
    return None if classes == list(range(outputs)) else classes


def class_values(classes: list) -> np.ndarray:
    """An estimator's classes as an array: float64 numbers (a recordIO response can carry
    them), else names (object)."""
    numbers = all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in classes)
    return np.array(classes, dtype=np.float64 if numbers else object)


def class_indices(batch: ColumnBatch, label: str, classes: list) -> ColumnBatch:
    """``batch`` with the class names of its ``label`` column (as a file of an estimator's
    classes holds them: ``dog``, or ``7`` of classes 3, 7) replaced by their indices, the
    labels the network learnt; a value that is no class is an error naming its row."""
    column = batch.column(label)
    values = class_values(classes)
    if values.dtype != object:
        numbers = float_values(column, batch, label)
        found = np.full(numbers.shape, -1, np.int64)
        for index, value in enumerate(values):
            found[numbers == value] = index
    else:
        text = pc.utf8_trim_whitespace(column.cast(pa.large_string()))
        found = pc.fill_null(pc.index_in(text, value_set=pa.array([str(c) for c in classes],
                                                                   pa.large_string())),
                             -1).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero((found < 0) & column.is_valid().to_numpy(zero_copy_only=False))
    if bad.size:
        shown = ", ".join(map(str, classes[:10])) + (", ..." if len(classes) > 10 else "")
        raise batch.error(int(bad[0]), f"label {excerpt(str(column[int(bad[0])]))} is not one "
                          f"of the model's classes ({shown})")
    indices = pa.array(found.astype(np.float64), mask=~column.is_valid().to_numpy(
        zero_copy_only=False))
    return dataclasses.replace(batch, columns={**batch.columns, label: indices})


def default_init_bound(num_embeddings: int) -> float:
    """TorchEasyRec's (torchrec's) default table init: uniform on +-sqrt(1 / rows)."""
    return math.sqrt(1.0 / num_embeddings)
