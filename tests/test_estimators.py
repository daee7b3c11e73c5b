"""The scikit-learn style API: parameters, fit/predict, sklearn interoperability."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.metrics import accuracy_score, r2_score, roc_auc_score
from sklearn.model_selection import cross_val_score

from fmkit import FMClassifier, FMRegressor, HyperparameterError, load
from fmkit.models.planted import planted_ctr


@pytest.fixture(scope="module")
def ctr():
    data = planted_ctr(60000, [200, 100, 50, 20, 10], seed=3)
    return data.split(45000)


def test_params_follow_the_table_and_clone():
    model = FMClassifier(num_factors=4, epochs=3)
    params = model.get_params()
    assert params["num_factors"] == 4 and params["epochs"] == 3
    assert params["factors_lr"] == 1e-4 and params["mini_batch_size"] == 1000
    assert "feature_dim" not in params and "predictor_type" not in params
    copy = clone(model)
    assert copy.get_params() == params and copy is not model
    assert model.set_params(epochs=5) is model and model.epochs == 5
    with pytest.raises(ValueError):
        model.set_params(learning_rate=0.1)
    with pytest.raises(TypeError):
        FMClassifier(learning_rate=0.1)
    assert FMRegressor().num_factors == 64  # SageMaker's suggested starting point


def test_classifier_learns_planted_interactions(ctr):
    train, test = ctr
    model = FMClassifier(num_factors=8, epochs=4, mini_batch_size=256, bias_lr=0.01,
                         linear_lr=0.003, factors_lr=0.003, factors_init_sigma=0.01)
    model.fit(train.X, train.y, progress=False)
    proba = model.predict_proba(test.X)
    assert proba.shape == (test.X.shape[0], 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    oracle = roc_auc_score(test.y, test.probability)
    auc = roc_auc_score(test.y, proba[:, 1])
    assert auc > oracle - 0.03
    labels = model.predict(test.X)
    np.testing.assert_array_equal(labels, (proba[:, 1] >= 0.5).astype(int))
    assert model.score(test.X, test.y) == pytest.approx(accuracy_score(test.y, labels))
    assert [h.epoch for h in model.history_] == [1, 2, 3, 4]


def test_minus_one_plus_one_labels_come_back(tmp_path, ctr):
    train, test = ctr
    y = np.where(train.y == 1, 1, -1)
    model = FMClassifier(num_factors=4, epochs=1).fit(train.X, y, progress=False)
    assert set(np.unique(model.predict(test.X))) <= {-1, 1}
    model.save(tmp_path / "m")
    np.testing.assert_array_equal(load(tmp_path / "m").predict(test.X), model.predict(test.X))
    with pytest.raises(ValueError, match="labels must be 0/1 or -1/\\+1"):
        FMClassifier().fit(train.X, train.y * 3)


def test_regressor_dense_input_and_sklearn_cv():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 6))
    y = X @ rng.normal(size=6) + X[:, 0] * X[:, 1] - 2 * X[:, 2] * X[:, 3] + 0.1 * rng.normal(
        size=2000)
    model = FMRegressor(num_factors=4, epochs=40, mini_batch_size=50, bias_lr=0.05, bias_wd=0,
                        linear_lr=0.05, factors_lr=0.05, linear_wd=0, factors_wd=0,
                        factors_init_sigma=0.1)
    model.fit(X, y, progress=False)
    assert r2_score(y, model.predict(X)) > 0.99
    assert model.score(X, y) == pytest.approx(r2_score(y, model.predict(X)))
    scores = cross_val_score(model, X, y, cv=3)
    assert scores.min() > 0.95


def test_fit_validates_parameters_and_input():
    X = np.eye(4)
    with pytest.raises(HyperparameterError, match="hyperparameter epochs"):
        FMRegressor(epochs=0).fit(X, np.ones(4))
    with pytest.raises(ValueError, match="row 2"):
        FMRegressor().fit(np.array([[1.0], [2.0], [np.nan], [1.0]]), np.ones(4))
    with pytest.raises(AttributeError, match="not fitted"):
        FMRegressor().predict(X)
