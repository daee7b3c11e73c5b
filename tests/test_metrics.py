"""fmkit's metrics equal scikit-learn's on the same predictions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, log_loss, mean_squared_error, roc_auc_score

from fmkit.models import metrics
from fmkit.models.fm.parameters import sigmoid
from fmkit.models.metrics import compute_metrics, metrics_of_parts


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


@pytest.mark.parametrize("weighted", [False, True])
def test_binary_metrics_over_parts_in_chunks_equal_sklearn(weighted, monkeypatch):
    """Parts of uneven sizes, summed a few rows at a time (as a 178M-row file is, a million
    at a time), give scikit-learn's figures on the joined rows; ties included."""
    monkeypatch.setattr(metrics, "CHUNK_ROWS", 7)
    rng = np.random.default_rng(5)
    y = (rng.random(1000) < 0.4).astype(np.float32)
    logits = np.round(rng.normal(size=1000) * 2 + y, 1)  # (many ties)
    w = rng.random(1000) * 3 if weighted else None
    cuts = [0, 1, 130, 131, 600, 1000]
    parts = [slice(a, b) for a, b in zip(cuts, cuts[1:])]
    m = metrics_of_parts("binary_classifier", [y[p] for p in parts], [logits[p] for p in parts],
                         [w[p] for p in parts] if weighted else None)
    p = sigmoid(logits)
    labels = (p >= 0.5).astype(int)
    assert m["rows"] == 1000
    assert m["binary_classification_cross_entropy"] == pytest.approx(
        log_loss(y, p, sample_weight=w), rel=1e-10)
    assert m["binary_classification_accuracy"] == pytest.approx(
        accuracy_score(y, labels, sample_weight=w), rel=1e-12)
    assert m["binary_f_beta"] == pytest.approx(f1_score(y, labels, sample_weight=w), rel=1e-12)
    assert m["auc"] == pytest.approx(roc_auc_score(y, p, sample_weight=w), rel=1e-12)


@pytest.mark.parametrize("weighted", [False, True])
def test_past_exact_rows_the_auc_is_binned_within_its_stated_error(weighted):
    """Past ``exact_rows`` the scores are counted in bins: scikit-learn's AUC lies within
    the reported ``auc_bin_error`` (and here within 1e-5 of it); the other metrics stay
    scikit-learn's, and below the limit the AUC is exact and no error is reported."""
    rng = np.random.default_rng(3)
    n = 400_000
    z = rng.normal(-1, 1.5, n)
    y = (rng.random(n) < sigmoid(z + rng.normal(0, 1, n))).astype(np.float32)
    w = rng.random(n) * 3 if weighted else None
    p = sigmoid(z)
    for exact_rows, binned in ((n, False), (n // 4, True)):
        streaming = metrics.StreamingMetrics("binary_classifier", exact_rows=exact_rows)
        for start in range(0, n, 65_536):
            streaming.add(y[start:start + 65_536], z[start:start + 65_536],
                          None if w is None else w[start:start + 65_536])
        got = streaming.result()
        exact = roc_auc_score(y, p, sample_weight=w)
        assert ("auc_bin_error" in got) == binned
        if binned:
            assert 0 < got["auc_bin_error"] < 1e-4
            assert abs(got["auc"] - exact) <= got["auc_bin_error"]
            assert abs(got["auc"] - exact) < 1e-5
        else:
            assert got["auc"] == pytest.approx(exact, abs=1e-12)
        assert got["binary_classification_cross_entropy"] == pytest.approx(
            log_loss(y, p, sample_weight=w), rel=1e-12)
        assert got["binary_classification_accuracy"] == pytest.approx(
            accuracy_score(y, p >= 0.5, sample_weight=w), rel=1e-12)
        assert got["binary_f_beta"] == pytest.approx(f1_score(y, p >= 0.5, sample_weight=w),
                                                     rel=1e-12)


def test_the_metrics_memory_stops_growing_past_exact_rows():
    """What an evaluation of many rows holds: with 1M rows kept exactly, the peak of Python's
    allocations after 16M rows is that after 4M (the bins), where keeping every score
    would have grown by 96 MB."""
    import tracemalloc

    rng = np.random.default_rng(0)
    block = 1 << 20
    z = rng.normal(0, 2, block)
    y = (rng.random(block) < sigmoid(z)).astype(np.float32)
    streaming = metrics.StreamingMetrics("binary_classifier", exact_rows=block)
    peaks = {}
    tracemalloc.start()
    try:
        for blocks in range(1, 17):
            streaming.add(y, z)
            peaks[blocks] = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert streaming.result()["rows"] == 16 * block
    assert peaks[16] - peaks[4] < 8 << 20, (peaks[4], peaks[16])
