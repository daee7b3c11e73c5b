"""The ``eval_set`` argument of the estimators' ``fit``, read one way for the FM and DeepFM."""

from __future__ import annotations

from typing import Any


def one_pair(eval_set) -> tuple[Any, Any]:
    """``(X, y)`` from ``eval_set``: the pair itself, or a list holding one pair (the form
    LightGBM's and XGBoost's estimators take; early stopping here watches one set)."""
    if isinstance(eval_set, list) and len(eval_set) == 1:
        eval_set = eval_set[0]
    if not isinstance(eval_set, tuple) or len(eval_set) != 2:
        raise ValueError("eval_set must be one (X, y) pair, or a list holding one")
    return eval_set
