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

import math
import re
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numba import njit

from fmkit.data.columns import ColumnBatch, number_texts
from fmkit.data.numbers import FLOAT32_MAX
from fmkit.errors import DataError, excerpt
from fmkit.models.deepfm.config import ConfigError, EasyRecConfig, IdFeature, RawFeature

GROUPS = ("wide", "fm", "deep")


@dataclass
class Encoded:
    """One batch of model inputs (numpy; the model turns them into tensors)."""

    n_rows: int
    sparse: dict[str, tuple[np.ndarray, np.ndarray]]  # feature -> (ids, offsets)
    dense: dict[str, np.ndarray]  # feature -> float32 [n_rows, 1]
    labels: np.ndarray | None = None
    weights: np.ndarray | None = None  # float32 sample weights (sample_weight_fields)


@njit(cache=True)
def _fnv1a(offsets: np.ndarray, data: np.ndarray, buckets: np.ndarray) -> np.ndarray:
    """FNV-1a (64-bit) of each string, modulo its own bucket count ``buckets[i]``."""
    out = np.empty(offsets.size - 1, np.int64)
    for i in range(offsets.size - 1):
        h = np.uint64(14695981039346656037)
        for q in range(offsets[i], offsets[i + 1]):
            h = (h ^ np.uint64(data[q])) * np.uint64(1099511628211)
        out[i] = np.int64(h % np.uint64(buckets[i]))
    return out


def hash_strings(strings: pa.Array, buckets: int | np.ndarray) -> np.ndarray:
    """The bucket of each (non-null) string: FNV-1a of its UTF-8 bytes modulo ``buckets``
    (one count for all, or one per string)."""
    strings = pc.cast(strings, pa.large_string())
    if len(strings) == 0:
        return np.zeros(0, np.int64)
    _, offsets, data = strings.buffers()
    offsets = np.frombuffer(offsets, np.int64)[strings.offset: strings.offset + len(strings) + 1]
    data = np.frombuffer(data, np.uint8) if data is not None else np.zeros(1, np.uint8)
    if np.ndim(buckets) == 0:
        buckets = np.full(len(strings), buckets, np.int64)
    return _fnv1a(offsets, data, np.ascontiguousarray(buckets, np.int64))


def _as_strings(values: pa.Array) -> pa.Array:
    """Ids as text (numbers by :func:`fmkit.data.columns.number_texts`: ``5.0`` is ``"5"``)."""
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        return values
    if pa.types.is_integer(values.type) or pa.types.is_floating(values.type):
        return number_texts(values)
    return pc.cast(values, pa.string())


def _numbers(values: pa.Array, batch: ColumnBatch, column: str, rows: np.ndarray | None = None
             ) -> np.ndarray:
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
                if text is not None and not _is_number(text):
                    raise error(position, f"{excerpt(text)} is not a number") from None
            raise error(0, "a value is not a number") from None
    elif not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)
              or pa.types.is_boolean(values.type)):
        raise batch.error(0, f"column {column!r}: expected numbers, got {values.type}")
    result = pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)
    beyond = np.flatnonzero(np.abs(result) > FLOAT32_MAX)
    if beyond.size:
        raise error(int(beyond[0]), f"{float(result[beyond[0]])!r} is not a finite float32 "
                    "(infinity, or beyond ±3.4e38)")
    return result


_NUMBER = re.compile(r"\s*[+-]?(([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|nan|inf|infinity)\s*",
                     re.IGNORECASE)


def _is_number(text: str) -> bool:
    """A decimal number as Arrow reads it (not Python's ``float``: it also takes other
    scripts' digits and ``1_000``)."""
    return _NUMBER.fullmatch(text) is not None


@dataclass
class Feature:
    """One configured feature, checked, with what the model needs to know about it."""

    name: str
    column: str
    config: IdFeature | RawFeature
    sparse: bool  # embedding lookup (id, or bucketized raw) vs dense value
    embedding_name: str = ""
    embedding_dim: int = 1
    num_embeddings: int = 0
    pooling: str = "sum"
    init_fn: str | None = None
    vocabulary: pa.Array | None = None
    normalize: tuple = ()

    @property
    def inputs(self) -> list[str]:
        """The raw columns this feature reads."""
        return [self.column]

    @property
    def output_dim(self) -> int:
        return self.embedding_dim if self.sparse else 1

    @cached_property
    def vocabulary_index(self) -> dict[str, int]:
        """``vocab_list`` ids by value: 2 + the value's first position in the list."""
        index: dict[str, int] = {}
        for position, value in enumerate(self.config.vocab_list):
            index.setdefault(value, position + 2)
        return index

    # -- encoding -------------------------------------------------------------------------------
    def encode(self, batch: ColumnBatch) -> tuple[np.ndarray, np.ndarray] | np.ndarray:
        if isinstance(self.config, RawFeature):
            return self.raw_input(_numbers(batch.column(self.column), batch, self.column))
        return self._ids(batch)

    def raw_input(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray] | np.ndarray:
        """The model input of a raw feature's float64 values (NaN = missing): a dense column,
        or with ``boundaries`` each row's bucket as an (ids, offsets) pair."""
        values[np.isnan(values)] = float(self.config.default_value or 0)
        method, options = self.normalize or (None, {})
        if method == "log1p":
            values = np.log1p(np.maximum(values, 0.0))
        elif method == "log10":
            threshold = options.get("threshold", 1e-10)
            values = np.where(values > threshold, np.log10(np.maximum(values, threshold)),
                              options.get("default", -10.0))
        elif method == "zscore":
            values = (values - options.get("mean", 0.0)) / options.get("standard_deviation", 1.0)
        elif method == "minmax":
            low, high = options.get("min", 0.0), options.get("max", 1.0)
            values = (values - low) / (high - low)
        if not self.sparse:
            return values.astype(np.float32).reshape(-1, 1)
        ids = np.searchsorted(np.asarray(self.config.boundaries), values, side="right")
        return ids.astype(np.int64), np.arange(values.size + 1, dtype=np.int64)

    def _ids(self, batch: ColumnBatch) -> tuple[np.ndarray, np.ndarray]:
        config: IdFeature = self.config
        column = batch.column(self.column)
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            if config.default_value:
                column = pc.if_else(pc.is_null(column),
                                    pa.scalar([config.default_value], pa.list_(pa.string())),
                                    pc.cast(column, pa.list_(pa.string())))
            lists = column
        else:
            text = _as_strings(column)
            if config.default_value:
                text = pc.fill_null(text, config.default_value)
            lists = pc.split_pattern(text, config.separator)
        flat = _as_strings(lists.flatten())
        offsets = lists.offsets.to_numpy().astype(np.int64)
        offsets -= offsets[0]
        row_of = np.repeat(np.arange(batch.n_rows), np.diff(offsets))
        keep = pc.fill_null(pc.greater(pc.utf8_length(flat), 0), False).to_numpy(
            zero_copy_only=False)
        if not keep.all():  # empty values ("a||b", "") are no id
            flat, row_of = flat.filter(pa.array(keep)), row_of[keep]
            kept = np.concatenate([[0], np.cumsum(keep)])
            offsets = kept[offsets]
        if config.hash_bucket_size:
            ids = hash_strings(flat, self.num_embeddings)
        elif config.num_buckets:
            try:
                numbers = _numbers(flat, batch, self.column, row_of)
            except DataError as e:
                raise DataError(e.source, e.line, f"{e.problem} (num_buckets takes integer "
                                "ids; for text ids set hash_bucket_size instead)") from None
            bad = np.flatnonzero((numbers != np.round(numbers)) | (numbers < 0)
                                 | (numbers >= config.num_buckets))
            if bad.size:
                raise batch.error(int(row_of[bad[0]]), f"column {self.column!r}: id "
                                  f"{flat[int(bad[0])].as_py()!r} is not an integer in "
                                  f"[0, num_buckets={config.num_buckets}) (for text ids, "
                                  f"set hash_bucket_size instead)")
            ids = numbers.astype(np.int64)
        else:
            found = pc.index_in(flat, value_set=self.vocabulary).to_numpy(zero_copy_only=False)
            ids = np.where(np.isnan(found.astype(np.float64)), 1, np.nan_to_num(found) + 2
                           ).astype(np.int64)
        return ids, offsets


def _parse_normalizer(text: str | None, where: str) -> tuple:
    """TorchEasyRec's ``method=NAME,key=value,...`` (or just ``NAME``)."""
    if not text:
        return ()
    parts = [p.strip() for p in text.split(",") if p.strip()]
    options: dict[str, float] = {}
    method = None
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep:
            method = key
            continue
        if key == "method":
            method = value
            continue
        try:
            options[key] = float(value)
        except ValueError:
            raise ConfigError(f"{where}.normalizer: {key}={value!r} is not a number") from None
    if method not in ("log1p", "log10", "zscore", "minmax"):
        raise ConfigError(f"{where}.normalizer: method must be log1p, log10, zscore or minmax, "
                          f"got {method!r}")
    if method == "minmax" and options.get("max", 1.0) == options.get("min", 0.0):
        raise ConfigError(f"{where}.normalizer: minmax needs min != max")
    return method, options


def _feature(config: IdFeature | RawFeature, where: str) -> Feature:
    column = config.expression.split(":")[-1] if config.expression else config.feature_name
    embedding_name = config.embedding_name or f"{config.feature_name}_emb"
    if isinstance(config, IdFeature):
        sizes = [name for name in ("hash_bucket_size", "num_buckets", "vocab_list")
                 if getattr(config, name)]
        if len(sizes) != 1:
            raise ConfigError(f"{where}: set exactly one of hash_bucket_size, num_buckets, "
                              f"vocab_list (got {', '.join(sizes) or 'none'})")
        if config.pooling not in ("sum", "mean"):
            raise ConfigError(f"{where}.pooling: expected sum or mean, got {config.pooling!r}")
        if config.embedding_dim <= 0:
            raise ConfigError(f"{where}.embedding_dim: must be positive")
        if not config.separator:
            raise ConfigError(f"{where}.separator: must not be empty")
        size = (config.hash_bucket_size or config.num_buckets
                or len(config.vocab_list) + 2)
        if size <= 0:
            raise ConfigError(f"{where}.{sizes[0]}: must be positive")
        vocabulary = pa.array(config.vocab_list, pa.string()) if config.vocab_list else None
        return Feature(config.feature_name, column, config, True, embedding_name,
                       config.embedding_dim, size, config.pooling, config.init_fn, vocabulary)
    normalize = _parse_normalizer(config.normalizer, where)
    if config.value_dim != 1:
        raise ConfigError(f"{where}.value_dim: fmkit supports value_dim 1")
    try:
        float(config.default_value or 0)
    except ValueError:
        raise ConfigError(f"{where}.default_value: {config.default_value!r} is not a number"
                          ) from None
    if config.boundaries:
        if sorted(config.boundaries) != list(config.boundaries):
            raise ConfigError(f"{where}.boundaries: must be ascending")
        if not config.embedding_dim or config.embedding_dim <= 0:
            raise ConfigError(f"{where}.embedding_dim: a raw feature with boundaries needs a "
                              f"positive embedding_dim")
        return Feature(config.feature_name, column, config, True, embedding_name,
                       config.embedding_dim, len(config.boundaries) + 1, "sum", config.init_fn,
                       normalize=normalize)
    return Feature(config.feature_name, column, config, False, normalize=normalize)


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
    def from_config(cls, config: EasyRecConfig) -> FeatureSet:
        features: dict[str, Feature] = {}
        for i, entry in enumerate(config.feature_configs):
            where = f"feature_configs[{i}].{entry.kind}"
            feature = _feature(entry.feature, where)
            if feature.name in features:
                raise ConfigError(f"{where}.feature_name: {feature.name!r} is configured twice")
            features[feature.name] = feature
        label = config.data_config.label_fields[0]
        if any(f.column == label for f in features.values()):
            raise ConfigError(f"data_config.label_fields: the label column {label!r} is also a "
                              f"feature's input")
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
        weight = next(iter(config.data_config.sample_weight_fields), None)
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
        sparse, dense = {}, {}
        for feature in self.used:
            if feature.sparse:
                sparse[feature.name] = feature.encode(batch)
            else:
                dense[feature.name] = feature.encode(batch)
        if not labelled:
            return Encoded(batch.n_rows, sparse, dense)
        weights = self.weights(batch) if self.weight else None
        return Encoded(batch.n_rows, sparse, dense, self.labels(batch, label_mode), weights)

    def labels(self, batch: ColumnBatch, label_mode: str) -> np.ndarray:
        values = _numbers(batch.column(self.label), batch, self.label)
        missing = np.flatnonzero(np.isnan(values))
        if missing.size:
            raise batch.error(int(missing[0]), f"label column {self.label!r} is empty")
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
        values = _numbers(batch.column(self.weight), batch, self.weight)
        bad = np.flatnonzero(~(values >= 0) | ~np.isfinite(values))
        if bad.size:
            raise batch.error(int(bad[0]), f"sample weight column {self.weight!r}: "
                              f"{values[bad[0]]:g} is not a finite number >= 0")
        return values.astype(np.float32)


def default_init_bound(num_embeddings: int) -> float:
    """TorchEasyRec's (torchrec's) default table init: uniform on +-sqrt(1 / rows)."""
    return math.sqrt(1.0 / num_embeddings)
