"""JSON instances straight to model inputs: the serving path for small requests.

A request's instances (``{"I1": 5, "C1": "68fd1e64"}`` each) could go through a column batch
(:func:`fmkit.data.columns.from_instances`) and :meth:`FeatureSet.encode`, as files do; but
for a request of one row that costs a dozen Arrow calls per feature, milliseconds where the
network takes a fraction of one. :func:`encode_instances` reads the Python values directly and
hashes every id of the request in one compiled call.

It gives exactly what the column path gives, or ``None`` when a value needs that path's
care: lists, booleans, fractional floats as ids (Arrow's float formatting), text as numbers,
values out of range, unknown fields. The caller then takes the column path, which encodes
them or raises the error that names the instance and field. A test fuzzes both paths
against each other.
"""

from __future__ import annotations

import math
from itertools import accumulate
from typing import Any

import numpy as np
import pyarrow as pa

from fmkit.data import columns
from fmkit.data.numbers import FLOAT32_MAX
from fmkit.models.deepfm.features import Encoded, Feature, FeatureSet, hash_strings

_EXACT_FLOAT_INT = 1 << 53  # integers a float64 column holds exactly
_INT64_LIMIT = 1 << 63


def encode_instances(features: FeatureSet, instances: list[Any], fields: frozenset[str]
                     ) -> Encoded | None:
    """Model inputs of JSON instances whose fields are all in ``fields``, or None where the
    column path must decide (see the module's docstring)."""
    if not instances or not all(type(i) is dict and fields.issuperset(i) for i in instances):
        return None
    if any(f.kind not in ("id_feature", "raw_feature") for f in features.used):
        return None  # sequences, crosses, lookups, expressions: the column path
    present = set().union(*instances)
    for name in present.difference(f.column for f in features.used):  # unused, still checked
        if columns.bad_value([instance.get(name) for instance in instances]) is not None:
            return None
    sparse: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    dense: dict[str, np.ndarray] = {}
    hashed: list[tuple[Feature, list[str], np.ndarray]] = []
    for feature in features.used:
        values = [instance.get(feature.column) for instance in instances]
        if feature.kind == "raw_feature":
            numbers = _numbers(values)
            if numbers is None:
                return None
            encoded = feature.raw_input(numbers)
            if not feature.sparse and not np.isfinite(encoded).all():
                return None  # beyond float32 after the normalizer: the column path says where
            (sparse if feature.sparse else dense)[feature.name] = encoded
            continue
        pieces = _pieces(feature, values)
        if pieces is None:
            return None
        texts, offsets = pieces
        if feature.config.hash_bucket_size:
            hashed.append((feature, texts, offsets))
            continue
        ids = _bucket_ids(feature, texts) if feature.config.num_buckets else _vocabulary_ids(
            feature, texts)
        if ids is None:
            return None
        sparse[feature.name] = ids, offsets
    if hashed:
        _hash_all(hashed, sparse)
    return Encoded(len(instances), sparse, dense)


def _numbers(values: list[Any]) -> np.ndarray | None:
    """float64 values (NaN for None) if every value is an int or a finite float within
    float32's range."""
    for value in values:
        kind = type(value)
        if kind is float:
            if not abs(value) <= FLOAT32_MAX:  # also NaN
                return None
        elif kind is int:
            if not -_INT64_LIMIT <= value < _INT64_LIMIT:
                return None
        elif value is not None:
            return None
    return np.array([math.nan if v is None else v for v in values], np.float64)


def _texts(values: list[Any]) -> list[str | None] | None:
    """Each id value as the column path writes it (:func:`fmkit.data.columns.number_texts`),
    or None for values left to that path: booleans, lists, fractional floats (Arrow's float
    text), integers beside floats beyond what a float64 column holds exactly."""
    kinds = set(map(type, values))
    if kinds == {str}:
        return values
    kinds.discard(type(None))
    if not kinds <= {str, int, float}:
        return None
    limit = _EXACT_FLOAT_INT if float in kinds and str not in kinds else _INT64_LIMIT
    texts = []
    for value in values:
        kind = type(value)
        if kind is int:
            if not -limit <= value < limit:
                return None
            value = str(value)
        elif kind is float:
            if not (value.is_integer() and abs(value) < _INT64_LIMIT):
                return None
            value = str(int(value))
        texts.append(value)
    return texts


def _pieces(feature: Feature, values: list[Any]) -> tuple[list[str], np.ndarray] | None:
    """The non-empty ids of each row (split by the separator, missing values given the
    default) and the rows' offsets into them."""
    texts = _texts(values)
    if texts is None:
        return None
    config = feature.config
    if config.default_value:
        texts = [config.default_value if t is None else t for t in texts]
    separator = config.separator
    if not any(separator in t for t in texts if t is not None):  # one id (or none) per row
        offsets = np.array([0, *accumulate(t is not None and t != "" for t in texts)],
                           np.int64)
        return [t for t in texts if t], offsets
    pieces: list[str] = []
    offsets = np.zeros(len(texts) + 1, np.int64)
    for row, text in enumerate(texts):
        if text is not None:
            pieces.extend(p for p in text.split(separator) if p)
        offsets[row + 1] = len(pieces)
    return pieces, offsets


def _bucket_ids(feature: Feature, texts: list[str]) -> np.ndarray | None:
    """``num_buckets`` ids written as plain decimal digits, each below the bucket count."""
    if not all(t.isascii() and t.isdigit() for t in texts):
        return None
    ids = [int(t) for t in texts]
    if ids and max(ids) >= feature.config.num_buckets:
        return None
    return np.array(ids, np.int64)


def _vocabulary_ids(feature: Feature, texts: list[str]) -> np.ndarray:
    """Vocabulary ids (:attr:`Feature.vocabulary_index`), out-of-vocabulary values
    :attr:`Feature.oov_id`."""
    index, unknown = feature.vocabulary_index, feature.oov_id
    return np.array([index.get(t, unknown) for t in texts], np.int64)


def _hash_all(hashed: list[tuple[Feature, list[str], np.ndarray]],
              sparse: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Hash the ids of every ``hash_bucket_size`` feature in one compiled call."""
    texts = [text for _, feature_texts, _ in hashed for text in feature_texts]
    buckets = np.repeat([f.num_embeddings for f, _, _ in hashed],
                        [len(feature_texts) for _, feature_texts, _ in hashed])
    ids = hash_strings(pa.array(texts, pa.large_string()), buckets)
    position = 0
    for feature, feature_texts, offsets in hashed:
        sparse[feature.name] = ids[position:position + len(feature_texts)], offsets
        position += len(feature_texts)
