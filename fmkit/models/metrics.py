"""SageMaker's FM metrics plus AUC: one implementation for training logs, ``evaluate`` and tests.

Names match SageMaker's metric names without the ``test:`` prefix: ``rmse`` for regressors;
``binary_classification_cross_entropy``, ``binary_classification_accuracy`` and
``binary_f_beta`` (F1 at threshold 0.5) for binary classifiers, plus ``auc``; for a DeepFM of
several classes (``multiclass_classifier``, SageMaker's linear learner's names)
``multiclass_cross_entropy``, ``multiclass_accuracy`` and ``auc`` (one class against the
rest, averaged over classes). Every metric takes optional per-row weights (TorchEasyRec's
``sample_weight_fields``); :func:`grouped_auc` is the mean AUC over groups (e.g. users);
:func:`ranking_metrics` scores top-k recommendations against held-out relevant items.
"""

from __future__ import annotations

import numpy as np

from fmkit.errors import DataError
from fmkit.models.fm.parameters import sigmoid

THRESHOLD = 0.5


def _mean(values: np.ndarray, weights: np.ndarray | None) -> float:
    return float(np.average(values, weights=weights))


def rmse(y_true: np.ndarray, y_pred: np.ndarray, weights: np.ndarray | None = None) -> float:
    diff = np.asarray(y_pred, dtype=np.float64) - np.asarray(y_true, dtype=np.float64)
    return float(np.sqrt(_mean(diff * diff, weights)))


def log_loss_from_logits(y_true: np.ndarray, logits: np.ndarray,
                         weights: np.ndarray | None = None) -> float:
    """Mean binary cross entropy of sigmoid(logits), computed stably from the logits."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.float64)
    return _mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z))), weights)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of [rows, classes] logits."""
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def predicted_labels(scores: np.ndarray) -> np.ndarray:
    """1.0 where score >= 0.5 (SageMaker's inclusive threshold), else 0.0."""
    return (np.asarray(scores) >= THRESHOLD).astype(np.float64)


def prediction_fields(predictor_type: str, logits: np.ndarray) -> dict[str, np.ndarray]:
    """SageMaker's response fields of each row: ``score`` (sigmoid(y_hat) for classifiers,
    y_hat for regressors) and, for classifiers, ``predicted_label``."""
    if predictor_type == "multiclass_classifier":
        return {"score": softmax(logits), "predicted_label": np.argmax(logits, axis=1
                                                                       ).astype(np.float64)}
    if predictor_type != "binary_classifier":
        return {"score": logits}
    scores = sigmoid(logits)
    return {"score": scores, "predicted_label": predicted_labels(scores)}


def accuracy(y_true: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None
             ) -> float:
    return _mean(np.asarray(y_true) == np.asarray(labels), weights)


def f1(y_true: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> float:
    """F1 of the positive class; 0.0 when there is no true or predicted positive."""
    y = np.asarray(y_true) == 1
    p = np.asarray(labels) == 1
    w = np.ones(y.size) if weights is None else np.asarray(weights, np.float64)
    tp = w[y & p].sum()
    denominator = w[y].sum() + w[p].sum()
    return float(2 * tp / denominator) if denominator else 0.0


def auc(y_true: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Area under the ROC curve: the (weighted) share of positive-negative pairs ordered
    right, ties counted half; NaN for one class."""
    y = np.asarray(y_true) == 1
    w = np.ones(y.size) if weights is None else np.asarray(weights, np.float64)
    positive, negative = w * y, w * ~y
    total_positive, total_negative = positive.sum(), negative.sum()
    if total_positive == 0 or total_negative == 0:
        return float("nan")
    s = np.asarray(scores, dtype=np.float64)
    unique, group = np.unique(s, return_inverse=True)
    positive_of = np.bincount(group, positive, unique.size)
    negative_of = np.bincount(group, negative, unique.size)
    negative_below = np.cumsum(negative_of) - negative_of
    ordered = (positive_of * (negative_below + 0.5 * negative_of)).sum()
    return float(ordered / (total_positive * total_negative))


def grouped_auc(y_true: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> float:
    """TorchEasyRec's ``grouped_auc``: the unweighted mean of the AUCs of the groups (equal
    ``groups`` values) that hold both classes; NaN when none does."""
    order = np.argsort(groups, kind="stable")
    y, s, g = np.asarray(y_true)[order], np.asarray(scores)[order], np.asarray(groups)[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    values = [auc(y[a:b], s[a:b]) for a, b in zip(starts, np.r_[starts[1:], g.size])]
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def ranking_metrics(found: list[np.ndarray], relevant: list[np.ndarray], k: int
                    ) -> dict[str, float]:
    """Top-k quality of recommendations, as LightFM's ``precision_at_k`` and ``recall_at_k``
    and the usual NDCG, MRR and hit rate at k: the mean over the queries that have a relevant
    item (``relevant[q]``, positions in the catalogue) of what their ``found[q]`` (the
    positions recommended, best first, at most ``k``) holds. Relevance is binary: NDCG's gains
    are 1 at rank r discounted by log2(r + 1), over the ideal order of min(k, relevant) hits;
    MRR is 1 / the rank of the first hit (0 without one)."""
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    rows = []
    for top, wanted in zip(found, relevant):
        wanted = np.unique(wanted)
        if wanted.size == 0:
            continue
        hits = np.isin(np.asarray(top)[:k], wanted)
        first = np.flatnonzero(hits)
        ideal = discounts[: min(k, wanted.size)].sum()
        rows.append((hits.sum() / k, hits.sum() / wanted.size,
                     (discounts[: hits.size] * hits).sum() / ideal,
                     1.0 / (first[0] + 1) if first.size else 0.0, float(first.size > 0)))
    names = ("precision", "recall", "ndcg", "mrr", "hit_rate")
    means = np.mean(rows, axis=0) if rows else [float("nan")] * len(names)
    return {"queries": len(rows), **{f"{name}_at_{k}": float(value)
                                     for name, value in zip(names, means)}}


# early_stopping_metric: short name -> its key in compute_metrics per predictor type, and
# whether higher is better
WATCHED = {
    "auc": ({"binary_classifier": "auc", "multiclass_classifier": "auc"}, True),
    "logloss": ({"binary_classifier": "binary_classification_cross_entropy",
                 "multiclass_classifier": "multiclass_cross_entropy"}, False),
    "accuracy": ({"binary_classifier": "binary_classification_accuracy",
                  "multiclass_classifier": "multiclass_accuracy"}, True),
    "f1": ({"binary_classifier": "binary_f_beta"}, True),
    "rmse": ({"regressor": "rmse"}, False),
}
DEFAULT_WATCHED = {"binary_classifier": "auc", "regressor": "rmse",
                   "multiclass_classifier": "auc"}


def watched_metric(name: str, predictor_type: str) -> tuple[str, bool]:
    """The metric an ``early_stopping_metric`` names, as ``(compute_metrics key, higher is
    better)``. Takes the short names of :data:`WATCHED` or SageMaker's metric names, with or
    without their channel (``validation:binary_classification_accuracy``, ``validation:rmse``);
    ``""`` or ``auto`` is the predictor type's default (AUC, or RMSE for regressors). A name
    the predictor type does not compute is a ValueError naming the ones it does."""
    short = name.strip().lower().split(":", 1)[-1] or "auto"
    short = {key: s for s, (keys, _) in WATCHED.items() for key in keys.values()}.get(short,
                                                                                     short)
    if short == "auto":
        short = DEFAULT_WATCHED[predictor_type]
    allowed = [s for s, (keys, _) in WATCHED.items() if predictor_type in keys]
    if short not in allowed:
        example = WATCHED[allowed[-1]][0][predictor_type]
        raise ValueError(f"{name!r} is not a metric of a {predictor_type}; expected one of "
                         f"{', '.join(allowed)} (or SageMaker's name, e.g. "
                         f"validation:{example})")
    keys, higher_is_better = WATCHED[short]
    return keys[predictor_type], higher_is_better


def require_rows(metrics: dict, source: str) -> dict:
    """``metrics`` of a channel that held rows; an empty channel is an error (its metrics
    would be undefined, and a missing or filtered file should not pass unnoticed)."""
    if not metrics.get("rows"):
        raise DataError(str(source), None, "holds no data rows: nothing to evaluate")
    return metrics


def metrics_of_parts(predictor_type: str, label_parts: list[np.ndarray],
                     logit_parts: list[np.ndarray],
                     weight_parts: list[np.ndarray] | None = None) -> dict:
    """:func:`compute_metrics` over labels and logits (and weights) gathered batch by batch."""
    y = np.concatenate(label_parts) if label_parts else np.zeros(0, np.float32)
    z = np.concatenate(logit_parts) if logit_parts else np.zeros(0)
    w = np.concatenate(weight_parts) if weight_parts else None
    if not y.size:
        return {"rows": 0}  # no metric is defined: see require_rows
    return compute_metrics(predictor_type, y, z, w)


def compute_metrics(predictor_type: str, y_true: np.ndarray, logits: np.ndarray,
                    weights: np.ndarray | None = None) -> dict:
    """All metrics of a predictor type, from labels and the model's raw outputs y_hat
    (weighted by ``weights`` when given)."""
    rows = int(np.asarray(y_true).size)
    if predictor_type == "regressor":
        return {"rmse": rmse(y_true, logits, weights), "rows": rows}
    if predictor_type == "multiclass_classifier":
        return _multiclass_metrics(np.asarray(y_true).astype(np.int64), logits, weights)
    scores = sigmoid(logits)
    labels = predicted_labels(scores)
    return {
        "binary_classification_cross_entropy": log_loss_from_logits(y_true, logits, weights),
        "binary_classification_accuracy": accuracy(y_true, labels, weights),
        "binary_f_beta": f1(y_true, labels, weights),
        "auc": auc(y_true, scores, weights),
        "rows": rows,
    }


def _multiclass_metrics(y: np.ndarray, logits: np.ndarray, weights: np.ndarray | None
                        ) -> dict:
    z = np.asarray(logits, dtype=np.float64)
    shifted = z - z.max(axis=1, keepdims=True)
    log_probabilities = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    probabilities = np.exp(log_probabilities)
    per_class = [auc(y == c, probabilities[:, c], weights) for c in range(z.shape[1])]
    per_class = [v for v in per_class if not np.isnan(v)]
    return {
        "multiclass_cross_entropy": _mean(-log_probabilities[np.arange(y.size), y], weights),
        "multiclass_accuracy": accuracy(y, np.argmax(z, axis=1), weights),
        "auc": float(np.mean(per_class)) if per_class else float("nan"),
        "rows": int(y.size),
    }
