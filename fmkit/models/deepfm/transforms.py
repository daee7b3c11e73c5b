"""Raw columns into per-row lists of values: splitting multi-value and sequence columns,
crossing columns (``combo_feature``) and looking keys up in map columns (``lookup_feature``).

Each function returns the rows' values flat, with ``offsets`` (row ``i`` owns
``values[offsets[i]:offsets[i + 1]]``), which is what an embedding bag pools and what
:class:`fmkit.models.deepfm.features.Feature` bucketizes. Empty values (``"a||b"``, ``""``)
are no value; a missing one takes the feature's ``default_value`` when that is set.

A map column is TorchEasyRec's text form ``"k1:v1\\x1dk2:v2"`` (pairs split by ``\\x1d``, or
by ``,`` when the text holds no ``\\x1d``; key and value split at the last ``:``), or an
Arrow map or list-of-``"k:v"`` column from Parquet.
"""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fmkit.data.columns import number_texts

COMBINERS = ("sum", "mean", "min", "max", "count")
PAIRS = "\x1d"


class NotText(ValueError):
    """Values that cannot be ids: neither text nor numbers (a Parquet struct or map column),
    or bytes that are not UTF-8. ``row``: the first such value's position."""

    def __init__(self, problem: str, row: int = 0):
        super().__init__(problem)
        self.row = row


def texts(values: pa.Array) -> pa.Array:
    """Values as text (numbers as :func:`fmkit.data.columns.number_texts` writes them: ``5.0``
    is ``"5"``, so a number read from CSV or JSON is the same id; dates, decimals and bytes as
    Arrow spells them); :class:`NotText` for values that have no text."""
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        return values
    if pa.types.is_integer(values.type) or pa.types.is_floating(values.type):
        return number_texts(values)
    if pa.types.is_null(values.type):
        return pa.array([None] * len(values), pa.string())
    return _cast(values, pa.string())


def _cast(values: pa.Array, to: pa.DataType) -> pa.Array:
    try:
        return pc.cast(values, to)
    except pa.ArrowInvalid:  # (bytes to text: the first value that is not UTF-8)
        row = next((i for i, v in enumerate(values.to_pylist()) if not _utf8(v)), 0)
        raise NotText("bytes that are not UTF-8 text", row) from None
    except pa.ArrowNotImplementedError:
        present = np.flatnonzero(values.is_valid().to_numpy(zero_copy_only=False))
        raise NotText(f"expected text or numbers, got {values.type}",
                      int(present[0]) if present.size else 0) from None


def _utf8(value: object) -> bool:
    if not isinstance(value, bytes):
        return not isinstance(value, list) or all(map(_utf8, value))
    try:
        value.decode()
    except UnicodeDecodeError:
        return False
    return True


def value_lists(column: pa.Array, separator: str, default: str = "",
                limit: int | None = None) -> tuple[pa.Array, np.ndarray]:
    """The non-empty values of each row of ``column`` (text split by ``separator``, or a list
    column), missing rows given ``default``, at most the first ``limit`` per row;
    :class:`NotText` (naming its row) for values that cannot be ids."""
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        lists = _cast(column, pa.list_(pa.string()))
        if default:
            lists = pc.if_else(pc.is_null(lists), pa.scalar([default], pa.list_(pa.string())),
                               lists)
    else:
        text = texts(column)
        if default:
            text = pc.fill_null(text, default)
        lists = pc.split_pattern(text, separator)
    if limit is not None:
        lists = pc.list_slice(lists, 0, limit)
    flat = texts(lists.flatten())
    offsets = lists.offsets.to_numpy().astype(np.int64)
    offsets -= offsets[0]
    keep = pc.fill_null(pc.greater(pc.utf8_length(flat), 0), False).to_numpy(zero_copy_only=False)
    if not keep.all():
        flat = flat.filter(pa.array(keep))
        offsets = np.concatenate([[0], np.cumsum(keep)])[offsets]
    return flat, offsets


def crossed(inputs: list[tuple[pa.Array, np.ndarray]], rows: int) -> tuple[pa.Array, np.ndarray]:
    """Every combination of the inputs' values within a row, joined by ``_`` in input order
    (``a`` and ``x|y`` give ``a_x``, ``a_y``); a row missing any input has none."""
    lists = [(flat.to_pylist(), offsets) for flat, offsets in inputs]
    out: list[str] = []
    offsets = np.zeros(rows + 1, np.int64)
    for row in range(rows):
        parts = [values[o[row]:o[row + 1]] for values, o in lists]
        out.extend("_".join(combination) for combination in itertools.product(*parts))
        offsets[row + 1] = len(out)
    return pa.array(out, pa.string()), offsets


def _pairs(value) -> list[tuple[str, str]]:
    """The (key, value) pairs of one map cell."""
    if value is None:
        return []
    if isinstance(value, list):  # an Arrow map (pairs) or a list of "k:v" texts
        items = value
    else:
        items = str(value).split(PAIRS if PAIRS in str(value) else ",")
    pairs = []
    for item in items:
        if isinstance(item, tuple):
            key, found = item
            pairs.append((_text(key), _text(found)))
        elif item:
            key, sep, found = str(item).rpartition(":")
            if sep:
                pairs.append((key, found))
    return pairs


def _text(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def looked_up(maps: pa.Array, keys: pa.Array, separator: str, prefix_key: bool
              ) -> tuple[list[str], np.ndarray]:
    """Per row, the values its keys (multi-value, split by ``separator``) have in its map
    (keys not found give nothing); ``prefix_key`` writes each as ``key_value``."""
    key_values, key_offsets = value_lists(keys, separator)
    key_list = key_values.to_pylist()
    found: list[str] = []
    offsets = np.zeros(len(maps) + 1, np.int64)
    for row, cell in enumerate(maps.to_pylist()):
        table = dict(_pairs(cell))
        for key in key_list[key_offsets[row]:key_offsets[row + 1]]:
            if key in table:
                found.append(f"{key}_{table[key]}" if prefix_key else table[key])
        offsets[row + 1] = len(found)
    return found, offsets


def combine(values: np.ndarray, offsets: np.ndarray, combiner: str) -> np.ndarray:
    """Each row's numbers combined into one (NaN for a row without any; ``count`` is 0)."""
    counts = np.diff(offsets)
    if combiner == "count":
        return counts.astype(np.float64)
    out = np.full(counts.size, np.nan)
    has = counts > 0
    if values.size:
        reduce = {"sum": np.add, "mean": np.add, "min": np.minimum, "max": np.maximum}[combiner]
        reduced = reduce.reduceat(values, offsets[:-1][has])
        out[has] = reduced / counts[has] if combiner == "mean" else reduced
    return out


def quantile_boundaries(values: np.ndarray, buckets: int) -> list[float]:
    """``boundaries`` that split the finite ``values`` into ``buckets`` of about equal counts
    (repeated quantiles merged); ``[0.0]`` when there are none (a bucketized raw feature needs
    one boundary)."""
    values = values[np.isfinite(values)]
    if not values.size:
        return [0.0]
    return [float(e) for e in np.unique(np.quantile(values, np.linspace(0, 1, buckets + 1)[1:-1]))]
