"""fmkit's metrics equal scikit-learn's on the same predictions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, log_loss, mean_squared_error, roc_auc_score

from fmkit.models.fm.parameters import sigmoid
from fmkit.models.metrics import compute_metrics


@pytest.mark.parametrize("seed", range(4))
def test_binary_metrics_equal_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = (rng.random(2000) < 0.3).astype(np.float32)
    logits = rng.normal(size=2000) * 2 + y
    logits[:300] = np.round(logits[:300])  # ties for AUC
    logits[300] = 0.0  # score exactly 0.5 is labelled 1
    m = compute_metrics("binary_classifier", y, logits)
    p = sigmoid(logits)
    labels = (p >= 0.5).astype(int)
    assert m["rows"] == 2000
    assert m["binary_classification_cross_entropy"] == pytest.approx(log_loss(y, p), rel=1e-10)
    assert m["binary_classification_accuracy"] == pytest.approx(accuracy_score(y, labels))
    assert m["binary_f_beta"] == pytest.approx(f1_score(y, labels))
    assert m["auc"] == pytest.approx(roc_auc_score(y, p), rel=1e-12)


def test_f1_without_any_positive_is_zero_like_sklearn():
    y = np.zeros(10)
    logits = -np.ones(10)
    m = compute_metrics("binary_classifier", y, logits)
    assert m["binary_f_beta"] == f1_score(y, np.zeros(10), zero_division=0) == 0.0
    assert np.isnan(m["auc"])


def test_rmse_equals_sklearn():
    rng = np.random.default_rng(1)
    y = rng.normal(size=500)
    pred = y + rng.normal(size=500)
    m = compute_metrics("regressor", y, pred)
    assert m["rmse"] == pytest.approx(np.sqrt(mean_squared_error(y, pred)), rel=1e-12)
    assert m["rows"] == 500
