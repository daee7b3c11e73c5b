"""FuxiCTR's feature encoders fitted on the training data, as its ``FeatureProcessor.fit``
does before it trains: :class:`Statistics` gathers, block by block, the value counts of
categorical and sequence columns, the longest sequence, and a uniform sample of each numeric
column; :data:`RECIPES` are the preprocess functions of FuxiCTR's Criteo and Avazu datasets
that fmkit computes (an expression of TorchEasyRec's language, and the same in numpy).
:mod:`fmkit.models.deepfm.fuxictr` turns what they find into features."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fmkit.data.columns import is_parquet, read_delimited, read_parquet
from fmkit.data.sampling import UniformSample
from fmkit.errors import excerpt
from fmkit.models.deepfm.features import float_values
from fmkit.models.deepfm.fuxictr_settings import fill_value, splitter
from fmkit.models.deepfm.transforms import NotText, quantile_boundaries, texts

BUCKETS = 10  # a numeric column's buckets (FuxiCTR's own num_buckets default)
SAMPLE = 1_000_000  # numeric values kept (a uniform sample) for a column's deciles


class Statistics:
    """What FuxiCTR's encoders fit, gathered over the training data block by block: value
    counts of categorical and sequence columns, the longest sequence, and a uniform sample of
    each numeric column (bottom-k of random keys) for its deciles."""

    def __init__(self, columns: list[dict[str, Any]], seed: int):
        self.columns = columns
        self.counts: dict[str, Counter] = {c["name"]: Counter() for c in columns
                                           if c["type"] != "numeric"}
        self.longest: dict[str, int] = {}
        rng = np.random.default_rng(seed)
        self.sample = {c["name"]: UniformSample(SAMPLE, rng) for c in columns
                       if c["type"] == "numeric"}

    def add(self, batch: Any) -> None:
        for col in self.columns:
            name = col["name"]
            values = batch.column(source_column(col))
            if col["type"] == "numeric":
                self.sample[name].add(column_numbers(batch, col, values))
                continue
            recipe = recipe_of(col)
            if recipe:
                try:
                    buckets = recipe[2](column_numbers(batch, col, values))
                except NotADate as e:
                    raise batch.error(e.row, f"column {excerpt(recipe[0])}: {e}") from None
                self.counts[name].update(dict(zip(*np.unique(buckets, return_counts=True))))
                continue
            try:
                values = self._ids(name, col, values)
            except NotText as e:
                raise batch.error(e.row, f"column {excerpt(name)}: {e}") from None
            counted = pc.value_counts(values.drop_null())
            self.counts[name].update(dict(zip(counted.field("values").to_pylist(),
                                              counted.field("counts").to_pylist())))

    def _ids(self, name: str, col: dict[str, Any], values: pa.Array) -> pa.Array:
        """A block's ids as text; a sequence's split (a Parquet list column is one already,
        which FuxiCTR joins with ``^`` and splits again), its longest length noted."""
        if col["type"] != "sequence":
            return texts(values)
        if not (pa.types.is_list(values.type) or pa.types.is_large_list(values.type)):
            values = pc.split_pattern(texts(values).fill_null(""), splitter(col))
        lengths = pc.list_value_length(values)
        if len(lengths) and lengths.null_count < len(lengths):
            self.longest[name] = max(self.longest.get(name, 0), pc.max(lengths).as_py())
        return texts(pc.list_flatten(values))

    def bucket_vocabulary(self, col: dict[str, Any], least: int) -> list[float]:
        """The values a recipe's column computed at least ``least`` times."""
        return sorted(float(v) for v, count in self.counts[col["name"]].items()
                      if count >= least)

    def vocabulary(self, col: dict[str, Any], least: int) -> list[str]:
        """The values seen at least ``least`` times, most frequent first (ties by value),
        without FuxiCTR's missing value ``""``."""
        counts = self.counts[col["name"]]
        return [value for value, count in sorted(counts.items(), key=lambda p: (-p[1], p[0]))
                if count >= least and value != ""]

    def boundaries(self, col: dict[str, Any]) -> list[float]:
        """A numeric column's deciles over its sample."""
        sample = self.sample[col["name"]]
        return quantile_boundaries(sample.result()[0] if sample.rows else np.zeros(0), BUCKETS)


def convert_to_bucket(values: np.ndarray) -> np.ndarray:
    """FuxiCTR's ``convert_to_bucket`` (its Criteo recipe): ``floor(ln(x)^2)`` above 2, else
    ``int(x)``."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(values > 2, np.floor(np.log(values) ** 2), np.trunc(values))


class NotADate(ValueError):
    """A value of Avazu's ``hour`` that is no date: ``row``, its position in the block."""

    def __init__(self, row: int, value: float):
        super().__init__(f"{value:.0f} is not a date and hour YYMMDDHH")
        self.row = row


def _weekday(values: np.ndarray) -> np.ndarray:
    """The weekday (Sunday 0) of Avazu's ``hour``, ``YYMMDDHH`` of the 2000s, by numpy's
    calendar arithmetic (months from 1970, then days); :class:`NotADate` for the first value
    that is none (a month 13, a 30 February), which FuxiCTR's ``date()`` would refuse too."""
    inside = (values >= 0) & (values < 1e8)
    whole = np.where(inside, values, 0).astype(np.int64)
    years, months, days = whole // 1_000_000 + 2000, whole // 10_000 % 100, whole // 100 % 100
    firsts = ((years - 1970) * 12 + np.clip(months, 1, 12) - 1).astype("datetime64[M]")
    dates = firsts.astype("datetime64[D]") + (days - 1)
    bad = ~inside | (months < 1) | (months > 12) | (days < 1) | (
        dates.astype("datetime64[M]") != firsts)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise NotADate(row, float(values[row]))
    return ((dates.astype(np.int64) + 4) % 7).astype(np.float64)  # (1970-01-01: Thursday)


# Sakamoto's weekday of YYMMDDHH in the expression language (Sunday 0), for the Avazu recipe
_Y, _M, _D = "(floor({v} / 1000000) + 2000)", "(floor({v} / 10000) % 100)", \
    "(floor({v} / 100) % 100)"
_YEAR = f"({_Y} - ({_M} < 3 ? 1 : 0))"
_MONTH = "(" + " : ".join(f"{_M} == {m} ? {t}" for m, t in zip(
    range(1, 12), (0, 3, 2, 5, 0, 3, 5, 1, 4, 6, 2))) + " : 4)"
WEEKDAY = (f"(({_YEAR} + floor({_YEAR} / 4) - floor({_YEAR} / 100) + floor({_YEAR} / 400) "
           f"+ {_MONTH} + {_D}) % 7)")
# FuxiCTR's preprocess functions that fmkit computes (an expr_feature, bucketized at the
# values the training data holds): name -> (the column read: None for the feature's own;
# the expression of it, v; the same in numpy). The Avazu ones read ``hour`` as FuxiCTR's
# Avazu encoder does, whatever the feature is named.
RECIPES = {
    "convert_to_bucket": (None, "{v} > 2 ? floor(log({v}) ^ 2) : trunc({v})",
                          convert_to_bucket),
    "convert_hour": ("hour", "{v} % 100", lambda v: np.mod(v, 100)),
    "convert_weekday": ("hour", WEEKDAY, _weekday),
    "convert_weekend": ("hour", f"({WEEKDAY} == 0 || {WEEKDAY} == 6) ? 1 : 0",
                        lambda v: np.isin(_weekday(v), (0, 6)).astype(np.float64)),
}


def recipe_of(col: dict[str, Any]) -> tuple[str, str, Any] | None:
    """A column's FuxiCTR recipe: (the column it reads, its expression, its numpy form)."""
    found = RECIPES.get(col.get("preprocess") or "")
    if found is None or col.get("type") != "categorical":
        return None
    source, expression, compute = found
    return source or col["name"], expression.format(v=source or col["name"]), compute


def source_column(col: dict[str, Any]) -> str:
    """The data column a feature reads (a recipe's input, else its own name)."""
    recipe = recipe_of(col)
    return recipe[0] if recipe else col["name"]


def column_numbers(batch: Any, col: dict[str, Any], values: pa.Array) -> np.ndarray:
    """A block of a numeric column as float64, read as training reads it
    (:func:`fmkit.models.deepfm.features.float_values`: text that is not a number is one line
    naming its row), missing values filled as FuxiCTR fills them (``fill_na``, 0 by
    default)."""
    numbers = float_values(values, batch, source_column(col))
    return np.where(np.isnan(numbers), fill_value(col), numbers)


def training_blocks(path: str, names: list[str], sep: str) -> Any:
    """The training data's blocks, as ``fmkit train`` reads them (texts as it sees them)."""
    if is_parquet(path):
        yield from read_parquet(path)
    else:
        yield from read_delimited(path, None, sep, True, needed=names)
