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


def log_loss_from_logits(y_true: np.ndarray, logits: np.ndarray,
                         weights: np.ndarray | None = None) -> float:
    """Mean binary cross entropy of sigmoid(logits), computed stably from the logits."""
    return _mean(_log_losses(np.asarray(y_true, dtype=np.float64),
                             np.asarray(logits, dtype=np.float64)), weights)


def _log_losses(y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Each row's binary cross entropy of sigmoid(z) against labels y (0/1), from z."""
    return np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))


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


def auc(y_true: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Area under the ROC curve: the (weighted) share of positive-negative pairs ordered
    right, ties counted half; NaN for one class."""
    y = np.asarray(y_true) == 1
    if weights is None:
        s = np.asarray(scores, dtype=np.float64)
        return auc_of_classes(s[y], s[~y])
    w = np.asarray(weights, np.float64)
    unique, group = np.unique(np.asarray(scores, dtype=np.float64), return_inverse=True)
    return _auc_of_counts(np.bincount(group, w * y, unique.size),
                          np.bincount(group, w * ~y, unique.size))


def _auc_of_counts(positive: np.ndarray, negative: np.ndarray) -> float:
    """The AUC of (weighted) counts of positives and negatives per score level, the levels
    ascending: each positive's negatives below it plus half those level with it; NaN for one
    class."""
    total = positive.sum() * negative.sum()
    if not total:
        return float("nan")
    below = np.cumsum(negative) - negative
    return float((positive * (below + 0.5 * negative)).sum() / total)


CHUNK_ROWS = 1 << 20  # rows a metric's temporaries hold at once


def auc_of_classes(positive: np.ndarray, negative: np.ndarray) -> float:
    """The unweighted AUC of the positives' and the negatives' scores (arrays this function
    may sort in place), counted exactly in integers: for each positive, the negatives below
    it plus half those equal, by binary search in the sorted negatives, a chunk of positives
    at a time. Memory: the two arrays, 8 bytes a row (docs/performance.md, session 57)."""
    if not positive.size or not negative.size:
        return float("nan")
    negative.sort()
    positive.sort()  # (sorted queries: the binary searches walk the negatives in order)
    twice = 0  # 2 x (pairs ordered right + half the ties) = left + right insertion points
    for start in range(0, positive.size, CHUNK_ROWS):
        chunk = positive[start:start + CHUNK_ROWS]
        twice += int(np.searchsorted(negative, chunk, "left").sum())
        twice += int(np.searchsorted(negative, chunk, "right").sum())
    return twice / (2.0 * positive.size * negative.size)


def grouped_auc(y_true: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> float:
    """TorchEasyRec's ``grouped_auc``: the unweighted mean of the AUCs of the groups (equal
    ``groups`` values) that hold both classes; NaN when none does."""
    order = np.argsort(groups, kind="stable")
    y, s, g = np.asarray(y_true)[order], np.asarray(scores)[order], np.asarray(groups)[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    values = [auc(y[a:b], s[a:b]) for a, b in zip(starts, np.r_[starts[1:], g.size])]
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


class RankingMeans:
    """:func:`ranking_metrics` taken over blocks of queries (:meth:`add` each), in memory that
    does not grow with the queries: their sums, then :meth:`means`."""

    NAMES = ("precision", "recall", "ndcg", "mrr", "hit_rate")

    def __init__(self, k: int):
        self.k = k
        self.discounts = 1.0 / np.log2(np.arange(2, k + 2))
        self.sums, self.queries = np.zeros(len(self.NAMES)), 0

    def add(self, found: list[np.ndarray], relevant: list[np.ndarray]) -> None:
        k, discounts = self.k, self.discounts
        for top, wanted in zip(found, relevant):
            wanted = np.unique(wanted)
            if wanted.size == 0:
                continue
            hits = np.isin(np.asarray(top)[:k], wanted)
            first = np.flatnonzero(hits)
            ideal = discounts[: min(k, wanted.size)].sum()
            self.sums += (hits.sum() / k, hits.sum() / wanted.size,
                          (discounts[: hits.size] * hits).sum() / ideal,
                          1.0 / (first[0] + 1) if first.size else 0.0, float(first.size > 0))
            self.queries += 1

    def means(self) -> dict[str, float]:
        means = self.sums / self.queries if self.queries else [float("nan")] * len(self.NAMES)
        return {"queries": self.queries, **{f"{name}_at_{self.k}": float(value)
                                            for name, value in zip(self.NAMES, means)}}


def ranking_metrics(found: list[np.ndarray], relevant: list[np.ndarray], k: int
                    ) -> dict[str, float]:
    """Top-k quality of recommendations, as LightFM's ``precision_at_k`` and ``recall_at_k``
    and the usual NDCG, MRR and hit rate at k: the mean over the queries that have a relevant
    item (``relevant[q]``, positions in the catalogue) of what their ``found[q]`` (the
    positions recommended, best first, at most ``k``) holds. Relevance is binary: NDCG's gains
    are 1 at rank r discounted by log2(r + 1), over the ideal order of min(k, relevant) hits;
    MRR is 1 / the rank of the first hit (0 without one)."""
    means = RankingMeans(k)
    means.add(found, relevant)
    return means.means()


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


def binary_entropy(rate: float) -> float | None:
    """The log loss of always predicting a positive ``rate``: normalized entropy's
    denominator (TorchEasyRec's, torchrec's), and what a classifier that learned nothing
    scores; None when the labels hold one class (it is 0)."""
    if not 0 < rate < 1:
        return None
    return float(-(rate * np.log(rate) + (1 - rate) * np.log1p(-rate)))


def require_rows(metrics: dict, source: str) -> dict:
    """``metrics`` of a channel that held rows; an empty channel is an error (its metrics
    would be undefined, and a missing or filtered file should not pass unnoticed)."""
    if not metrics.get("rows"):
        raise DataError(str(source), None, "holds no data rows: nothing to evaluate")
    return metrics


def metrics_of_parts(predictor_type: str, label_parts: list[np.ndarray],
                     logit_parts: list[np.ndarray],
                     weight_parts: list[np.ndarray] | None = None) -> dict:
    """:func:`compute_metrics` over labels and logits (and weights) gathered batch by batch
    (see :class:`StreamingMetrics`)."""
    metrics = StreamingMetrics(predictor_type)
    for index, (labels, logits) in enumerate(zip(label_parts, logit_parts)):
        metrics.add(labels, logits, None if weight_parts is None else weight_parts[index])
    return metrics.result()


def compute_metrics(predictor_type: str, y_true: np.ndarray, logits: np.ndarray,
                    weights: np.ndarray | None = None) -> dict:
    """All metrics of a predictor type, from labels and the model's raw outputs y_hat
    (weighted by ``weights`` when given)."""
    if predictor_type == "multiclass_classifier":
        return _multiclass_metrics(np.asarray(y_true).astype(np.int64), logits, weights)
    return metrics_of_parts(predictor_type, [np.asarray(y_true)], [np.asarray(logits)],
                            None if weights is None else [np.asarray(weights)])


# Rows whose scores a binary classifier's AUC keeps, to count it exactly (8 bytes a row,
# 128 MiB; weighted, 17: label, score and weight); past them the AUC is counted in bins of the
# scores (AUC_BINS, 64 MiB of counts), pairs within a bin as ties, and the most that can move
# it is said (auc_bin_error).
EXACT_AUC_ROWS = 1 << 24
_MANTISSA_BITS = 12  # a bin: a score's float64 exponent and the first 12 bits of its mantissa
AUC_BINS = (1023 << _MANTISSA_BITS) + 1  # every score in [0, 1]


def _bins(scores: np.ndarray) -> np.ndarray:
    """Each score's bin, in the scores' order (the bits of a float64 >= 0 ascend with it)."""
    return (scores.view(np.uint64) >> np.uint64(52 - _MANTISSA_BITS)).astype(np.intp)


class StreamingMetrics:
    """A predictor type's metrics over blocks of rows added one at a time: ``add(labels,
    logits, weights)``, then ``result()``. A regressor's and a binary classifier's memory does
    not grow with the rows past :data:`EXACT_AUC_ROWS` (sums, taken ``CHUNK_ROWS`` rows at a
    time, and the AUC's scores, then bins); a multiclass model's holds its rows."""

    def __init__(self, predictor_type: str, exact_rows: int = EXACT_AUC_ROWS):
        self.kind, self.exact_rows, self.rows = predictor_type, exact_rows, 0
        # binary: weight, loss, correct, true positive, positive, predicted positive;
        # regressor: weight, squared error, absolute error
        self.sums = np.zeros(6)
        self.held: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []
        self.binned: np.ndarray | None = None  # (2, AUC_BINS): negatives', positives' weight

    def add(self, labels: np.ndarray, logits: np.ndarray,
            weights: np.ndarray | None = None) -> None:
        labels, logits = np.asarray(labels), np.asarray(logits)
        self.rows += len(labels)
        if self.kind == "multiclass_classifier":
            self.held.append((labels, logits, weights))
            return
        for start in range(0, labels.size, CHUNK_ROWS):
            stop = start + CHUNK_ROWS
            w = (np.ones(min(stop, labels.size) - start) if weights is None
                 else np.asarray(weights[start:stop], np.float64))
            z = np.asarray(logits[start:stop], dtype=np.float64)
            if self.kind == "regressor":
                d = z - np.asarray(labels[start:stop], dtype=np.float64)
                self.sums[:3] += (w.sum(), w @ (d * d), w @ np.abs(d))
                continue
            y = np.asarray(labels[start:stop]) == 1
            scores = sigmoid(z)
            p = predicted_labels(scores) == 1  # the label a prediction carries
            self.sums += (w.sum(), w @ _log_losses(y, z), w[y == p].sum(), w[y & p].sum(),
                          w[y].sum(), w[p].sum())
            self._keep(y, scores, None if weights is None else w)

    def _keep(self, y: np.ndarray, scores: np.ndarray, w: np.ndarray | None) -> None:
        """The AUC's share of a chunk: held (unweighted: the scores split by class; weighted:
        labels, scores and weights), or counted into bins once the rows pass
        ``exact_rows``."""
        if self.binned is None and self.rows > self.exact_rows:
            self.binned = np.zeros((2, AUC_BINS))
            for first, second, weights in self.held:
                if weights is None:  # (held unweighted: the positives', the negatives')
                    self._count(second, 0)
                    self._count(first, 1)
                else:
                    self._count_rows(first, second, weights)
            self.held = []
        if self.binned is not None:
            self._count_rows(y, scores, w)
        elif w is None:
            self.held.append((scores[y], scores[~y], None))
        else:
            self.held.append((y, scores, w))

    def _count_rows(self, y: np.ndarray, scores: np.ndarray, w: np.ndarray | None) -> None:
        self._count(scores[~y], 0, None if w is None else w[~y])
        self._count(scores[y], 1, None if w is None else w[y])

    def _count(self, scores: np.ndarray, label: int, w: np.ndarray | None = None) -> None:
        # (np.add.at touches the rows' bins only: a bincount over all the bins per block made
        # evaluating 20M rows take 3.5 times as long)
        np.add.at(self.binned[label], _bins(scores), 1.0 if w is None else w)

    def result(self) -> dict:
        if not self.rows:
            return {"rows": 0}  # no metric is defined: see require_rows
        if self.kind == "multiclass_classifier":
            labels, logits, weights = zip(*self.held)
            return _multiclass_metrics(np.concatenate(labels).astype(np.int64),
                                       np.concatenate(logits),
                                       None if weights[0] is None else np.concatenate(weights))
        if self.kind == "regressor":
            return {"rmse": float(np.sqrt(self.sums[1] / self.sums[0])), "rows": self.rows}
        total, loss, correct, true_positive, positive, predicted = self.sums
        metrics = {
            "binary_classification_cross_entropy": float(loss / total),
            "binary_classification_accuracy": float(correct / total),
            "binary_f_beta": float(2 * true_positive / (positive + predicted))
            if positive + predicted else 0.0,
            "auc": self._auc(),
            "rows": self.rows,
        }
        if self.binned is not None:
            metrics["auc_bin_error"] = self._bin_error()
        return metrics

    def normalized_entropy(self) -> float | None:
        """A binary classifier's (weighted) log loss over :func:`binary_entropy` of its
        labels' (weighted) positive rate; None for labels of one class."""
        total, loss, _, _, positive, _ = self.sums
        entropy = binary_entropy(positive / total) if total else None
        return None if entropy is None else float(loss / total / entropy)

    def mean_absolute_error(self) -> float:
        """A regressor's (weighted) mean absolute error (TorchEasyRec's
        ``mean_absolute_error`` metric)."""
        return float(self.sums[2] / self.sums[0])

    def _auc(self) -> float:
        if self.binned is not None:
            return _auc_of_counts(self.binned[1], self.binned[0])
        if self.held and self.held[0][2] is None:
            return auc_of_classes(np.concatenate([h[0] for h in self.held]),
                                  np.concatenate([h[1] for h in self.held]))
        return auc(*(np.concatenate(parts) for parts in zip(*self.held)))

    def _bin_error(self) -> float:
        """The most the binned AUC can differ from the exact one: half the share of
        positive-negative pairs that share a bin (counted as ties)."""
        negative, positive = self.binned
        total = positive.sum() * negative.sum()
        return float((positive * negative).sum() / (2 * total)) if total else 0.0


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
