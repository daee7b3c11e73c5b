"""SageMaker's FM metrics plus AUC: one implementation for training logs, ``evaluate`` and tests.

Names match SageMaker's metric names without the ``test:`` prefix: ``rmse`` for regressors;
``binary_classification_cross_entropy``, ``binary_classification_accuracy`` and
``binary_f_beta`` (F1 at threshold 0.5) for binary classifiers, plus ``auc``.
"""

from __future__ import annotations

import numpy as np

from fmkit.errors import DataError
from fmkit.models.fm.parameters import sigmoid

THRESHOLD = 0.5


def rmse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    diff = np.asarray(y_pred, dtype=np.float64) - np.asarray(y_true, dtype=np.float64)
    return float(np.sqrt(np.mean(diff * diff)))


def log_loss_from_logits(y_true: np.ndarray, logits: np.ndarray) -> float:
    """Mean binary cross entropy of sigmoid(logits), computed stably from the logits."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.float64)
    return float(np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))))


def predicted_labels(scores: np.ndarray) -> np.ndarray:
    """1.0 where score >= 0.5 (SageMaker's inclusive threshold), else 0.0."""
    return (np.asarray(scores) >= THRESHOLD).astype(np.float64)


def prediction_fields(predictor_type: str, logits: np.ndarray) -> dict[str, np.ndarray]:
    """SageMaker's response fields of each row: ``score`` (sigmoid(y_hat) for classifiers,
    y_hat for regressors) and, for classifiers, ``predicted_label``."""
    if predictor_type != "binary_classifier":
        return {"score": logits}
    scores = sigmoid(logits)
    return {"score": scores, "predicted_label": predicted_labels(scores)}


def accuracy(y_true: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.asarray(y_true) == np.asarray(labels)))


def f1(y_true: np.ndarray, labels: np.ndarray) -> float:
    """F1 of the positive class; 0.0 when there is no true or predicted positive."""
    y = np.asarray(y_true) == 1
    p = np.asarray(labels) == 1
    tp = np.count_nonzero(y & p)
    denominator = np.count_nonzero(y) + np.count_nonzero(p)
    return float(2 * tp / denominator) if denominator else 0.0


def auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with ties counted half); NaN for one class."""
    y = np.asarray(y_true) == 1
    n_pos = int(np.count_nonzero(y))
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(s, kind="mergesort")
    sorted_scores = s[order]
    # average rank (1-based) of each group of tied scores
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], s.size]
    group_rank = (starts + ends + 1) / 2.0
    ranks = np.empty(s.size)
    ranks[order] = np.repeat(group_rank, ends - starts)
    rank_sum = ranks[y].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


# early_stopping_metric: short name -> (its key in compute_metrics, whether higher is better)
WATCHED = {
    "auc": ("auc", True),
    "logloss": ("binary_classification_cross_entropy", False),
    "accuracy": ("binary_classification_accuracy", True),
    "f1": ("binary_f_beta", True),
    "rmse": ("rmse", False),
}
DEFAULT_WATCHED = {"binary_classifier": "auc", "regressor": "rmse"}


def watched_metric(name: str, predictor_type: str) -> tuple[str, bool]:
    """The metric an ``early_stopping_metric`` names, as ``(compute_metrics key, higher is
    better)``. Takes the short names of :data:`WATCHED` or SageMaker's metric names, with or
    without their channel (``validation:binary_classification_accuracy``, ``validation:rmse``);
    ``""`` or ``auto`` is the predictor type's default (AUC, or RMSE for regressors). A name
    the predictor type does not compute is a ValueError naming the ones it does."""
    short = name.strip().lower().split(":", 1)[-1] or "auto"
    short = {key: s for s, (key, _) in WATCHED.items()}.get(short, short)
    if short == "auto":
        short = DEFAULT_WATCHED[predictor_type]
    allowed = [s for s, (key, _) in WATCHED.items()
               if (key == "rmse") == (predictor_type == "regressor")]
    if short not in allowed:
        raise ValueError(f"{name!r} is not a metric of a {predictor_type}; expected one of "
                         f"{', '.join(allowed)} (or SageMaker's name, e.g. "
                         f"validation:{WATCHED[allowed[-1]][0]})")
    return WATCHED[short]


def require_rows(metrics: dict, source: str) -> dict:
    """``metrics`` of a channel that held rows; an empty channel is an error (its metrics
    would be undefined, and a missing or filtered file should not pass unnoticed)."""
    if not metrics.get("rows"):
        raise DataError(str(source), None, "holds no data rows: nothing to evaluate")
    return metrics


def metrics_of_parts(predictor_type: str, label_parts: list[np.ndarray],
                     logit_parts: list[np.ndarray]) -> dict:
    """:func:`compute_metrics` over labels and logits gathered batch by batch."""
    y = np.concatenate(label_parts) if label_parts else np.zeros(0, np.float32)
    z = np.concatenate(logit_parts) if logit_parts else np.zeros(0)
    if not y.size:
        return {"rows": 0}  # no metric is defined: see require_rows
    return compute_metrics(predictor_type, y, z)


def compute_metrics(predictor_type: str, y_true: np.ndarray, logits: np.ndarray) -> dict:
    """All metrics of a predictor type, from labels and the model's raw outputs y_hat."""
    rows = int(np.asarray(y_true).size)
    if predictor_type == "regressor":
        return {"rmse": rmse(y_true, logits), "rows": rows}
    scores = sigmoid(logits)
    labels = predicted_labels(scores)
    return {
        "binary_classification_cross_entropy": log_loss_from_logits(y_true, logits),
        "binary_classification_accuracy": accuracy(y_true, labels),
        "binary_f_beta": f1(y_true, labels),
        "auc": auc(y_true, scores),
        "rows": rows,
    }
