"""FuxiCTR's settings read with their types: its YAML takes whatever is written (``1e-3``,
without a dot, is a string to PyYAML, which FuxiCTR hands on as it is), so every setting
:mod:`fmkit.models.deepfm.fuxictr` reads goes through :func:`setting`, and a value of another
kind is one line naming it, never a TypeError from inside."""

from __future__ import annotations

import math
from typing import Any

from fmkit.errors import excerpt
from fmkit.models.deepfm.config import ConfigError

SETTING_KINDS = {"int": "an integer", "number": "a number", "flag": "true or false",
                 "text": "text", "ints": "a list of integers",
                 "numbers": "a number or a list of numbers", "texts": "text or a list of text"}


def setting(settings: dict[str, Any], key: str, kind: str, default: Any = None,
            where: str = "") -> Any:
    """``settings[key]`` as ``kind`` (a key of :data:`SETTING_KINDS`), ``default`` when unset;
    a value of another kind is one line naming the setting. Numbers may be text: PyYAML reads
    ``1e-3``, without a dot, as a string, which FuxiCTR hands on as it is."""
    value = settings.get(key)
    if value is None:
        return default
    try:
        return _typed(value, kind)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{where}{key}: expected {SETTING_KINDS[kind]}, got "
                          f"{excerpt(str(value))}") from None


def _typed(value: Any, kind: str) -> Any:
    if kind in ("ints", "numbers", "texts"):
        one = kind[:-1] if kind != "numbers" else "number"
        if isinstance(value, list):
            return [_typed(v, one) for v in value]
        if kind == "ints":
            raise TypeError(value)
        return _typed(value, one)
    if isinstance(value, (list, dict, bool)) and kind != "flag":
        raise TypeError(value)
    if kind == "text":
        return str(value)
    if kind == "flag":
        flags = {"true": True, "1": True, "false": False, "0": False}
        if isinstance(value, (list, dict)) or str(value).lower() not in flags:
            raise ValueError(value)
        return flags[str(value).lower()]
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(value)
    if kind == "number":
        return number
    if number != int(number):
        raise ValueError(value)
    return int(number)


def column_where(col: dict[str, Any]) -> str:
    """How a message names a FuxiCTR feature column."""
    return f"feature_cols {excerpt(col['name'])}: "


def fill_value(col: dict[str, Any]) -> float:
    """A numeric column's missing value: ``fill_na``, FuxiCTR's 0 by default."""
    return setting(col, "fill_na", "number", 0.0, column_where(col))


def splitter(col: dict[str, Any]) -> str:
    """A sequence column's ``splitter`` (FuxiCTR's ``^`` by default), never empty."""
    text = setting(col, "splitter", "text", "^", column_where(col))
    if not text:
        raise ConfigError(f"{column_where(col)}splitter: empty")
    return text
