"""The scikit-learn style API: parameters, fit/predict, sklearn interoperability."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.metrics import accuracy_score, mean_squared_error, r2_score, roc_auc_score
from sklearn.model_selection import cross_val_score
from sklearn.utils.estimator_checks import parametrize_with_checks

from fmkit import (
    DeepFMClassifier,
    DeepFMRegressor,
    FMClassifier,
    FMRegressor,
    HyperparameterError,
    load,
)
from fmkit.errors import DataError
from fmkit.models.fm.planted import planted_ctr
from tests.test_fm_math import random_problem


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
    other = FMClassifier(num_factors=4, epochs=1).fit(train.X, train.y * 3, progress=False)
    np.testing.assert_array_equal(other.predict(test.X), 3 * model.predict(test.X).clip(0))
    for classes in (np.array([0, 3]), np.array(["no", "yes"])):  # (saved as 0/1 until now)
        other = FMClassifier(num_factors=4, epochs=1).fit(train.X, classes[train.y.astype(int)],
                                                          progress=False)
        other.save(tmp_path / str(classes[1]))
        loaded = load(tmp_path / str(classes[1]))
        np.testing.assert_array_equal(loaded.classes_, classes)
        np.testing.assert_array_equal(loaded.predict(test.X), other.predict(test.X))
    with pytest.raises(ValueError, match="Only binary classification is supported"):
        FMClassifier().fit(train.X, train.y + (np.arange(train.y.size) % 3 == 0))


@pytest.mark.parametrize("Estimator", [FMClassifier, FMRegressor])
def test_fm_sample_weights_in_one_batch_equal_repeated_rows(Estimator):
    """Integer sample weights train, in one mini-batch, what the rows repeated that many times
    (0: dropped) train: weights are relative (divided by their mean), so the mean loss is the
    repeated rows' (scikit-learn's definition of a weight); the same weight on every row
    changes nothing, also one row per step."""
    X, y, _ = random_problem(11, n=60, d=15, k=3)
    y = y.astype(int) if Estimator is FMClassifier else y + X.sum(axis=1).A1
    weights = np.random.default_rng(1).integers(0, 4, 60)
    repeat = np.repeat(np.arange(60), weights)
    params = dict(num_factors=3, epochs=5, optimizer="adam", bias_lr=0.05, linear_lr=0.05,
                  factors_lr=0.05)  # (shuffled: a weight must follow its row)
    weighted = Estimator(mini_batch_size=60, **params).fit(X, y, sample_weight=weights)
    repeated = Estimator(mini_batch_size=repeat.size, **params).fit(X[repeat], y[repeat])
    np.testing.assert_allclose(weighted.decision_function(X) if Estimator is FMClassifier
                               else weighted.predict(X), repeated.decision_function(X)
                               if Estimator is FMClassifier else repeated.predict(X),
                               rtol=0, atol=1e-5)
    per_row = dict(params, mini_batch_size=1, lock_free=0)
    same = Estimator(**per_row).fit(X, y, sample_weight=np.full(60, 7.0))
    plain = Estimator(**per_row).fit(X, y)
    np.testing.assert_allclose(same.model_.params.V, plain.model_.params.V, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="[Nn]egative"):
        Estimator(**params).fit(X, y, sample_weight=-weights)


def test_fm_sample_weights_on_the_pytorch_path_equal_the_kernels():
    import torch

    from fmkit.data.sources import ArraySource
    from fmkit.jobs.training import train
    from fmkit.models.fm.hyperparameters import validate

    X, y, _ = random_problem(12, n=80, d=15, k=3)
    hp = validate(dict(feature_dim=15, num_factors=3, predictor_type="binary_classifier",
                       mini_batch_size=16, epochs=2, bias_lr=0.05, linear_lr=0.05,
                       factors_lr=0.05))
    weights = np.random.default_rng(3).uniform(0, 3, 80)
    source = ArraySource(X, y, labels="binary", sample_weight=weights)
    kernel, _ = train(hp, source, progress=False)
    device, _ = train(hp, source, progress=False, device=torch.device("cpu"))
    unweighted, _ = train(hp, ArraySource(X, y, labels="binary"), progress=False)
    np.testing.assert_allclose(device.V, kernel.V, rtol=0, atol=1e-5)
    assert np.abs(unweighted.V - kernel.V).max() > 1e-3  # (the weights did something)


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
    with pytest.raises(ValueError, match="Input X contains NaN"):  # scikit-learn's words
        FMRegressor().fit(np.array([[1.0], [2.0], [np.nan], [1.0]]), np.ones(4))
    with pytest.raises(AttributeError, match="not fitted"):
        FMRegressor().predict(X)


def _sparse_problem(rows=1000, seed=0):
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    X = sp.random(rows, 50, density=0.1, format="csr", random_state=seed)
    return X, (rng.random(rows) < 0.3).astype(int)


def test_partial_fit_over_two_halves_is_one_epoch_over_both():
    """partial_fit keeps the optimizer state (Adam's moments and step) between calls: halves
    of whole mini-batches, in order, train what one epoch over all the rows trains (from the
    same start: the auto bias start of partial_fit sees only the first part's labels)."""
    X, y = _sparse_problem()
    settings = dict(num_factors=4, mini_batch_size=50, optimizer="adam", shuffle=0,
                    factors_lr=0.05, linear_lr=0.05, epochs=1, bias_init_method="constant",
                    bias_init_value=0.0)
    whole = FMClassifier(**settings).fit(X, y, progress=False)
    parts = FMClassifier(**settings).partial_fit(X[:500], y[:500], classes=[0, 1])
    parts.partial_fit(X[500:], y[500:])
    assert [h.epoch for h in parts.history_] == [1, 2]
    for name in ("w0", "w", "V"):
        np.testing.assert_allclose(getattr(parts.model_.params, name),
                                   getattr(whole.model_.params, name), rtol=1e-5, atol=1e-7)
    # a fresh optimizer state on the second half (a new estimator warm-started from the
    # first half's weights) is not the same
    first = FMClassifier(**settings).fit(X[:500], y[:500], progress=False)
    restarted = clone(first).set_params(warm_start=True)
    restarted.model_, restarted.history_, restarted.n_features_in_ = (
        first.model_, first.history_, first.n_features_in_)
    restarted.classes_ = first.classes_
    restarted.fit(X[500:], y[500:], progress=False)
    assert not np.allclose(restarted.model_.params.V, whole.model_.params.V, rtol=1e-5)


def test_a_first_partial_fit_on_one_class_asks_for_classes():
    """A stream whose first part holds one class: without ``classes`` the error says how to
    name both; with them the call trains, and a later part's other class is known."""
    X, y = _sparse_problem()
    ones = np.flatnonzero(y == 1)
    with pytest.raises(ValueError, match=re.escape(
            "y has 1 class(es), FMClassifier needs 2 (a first partial_fit on rows of one class "
            "names both with classes=[...])")):
        FMClassifier(num_factors=4).partial_fit(X[ones], y[ones])
    model = FMClassifier(num_factors=4).partial_fit(X[ones], y[ones], classes=[0, 1])
    model.partial_fit(X, y)
    assert model.classes_.tolist() == [0, 1] and len(model.history_) == 2


def test_warm_start_continues_fit_with_epochs_numbered_after_it():
    """With plain SGD (no optimizer state) and each epoch's order seeded by its number, two
    warm-started fits of one epoch equal one fit of two."""
    X, y = _sparse_problem(seed=1)
    settings = dict(num_factors=4, mini_batch_size=20, optimizer="sgd", factors_lr=0.05,
                    linear_lr=0.05)
    two = FMRegressor(**settings, epochs=2).fit(X, y, progress=False)
    warm = FMRegressor(**settings, epochs=1, warm_start=True)
    warm.fit(X, y, progress=False)
    once = warm.model_.params.V.copy()
    warm.fit(X, y, progress=False)
    assert not np.allclose(once, two.model_.params.V)
    np.testing.assert_allclose(warm.model_.params.V, two.model_.params.V, rtol=1e-6, atol=1e-8)
    assert [h.epoch for h in warm.history_] == [1, 2]
    cold = FMRegressor(**settings, epochs=1).fit(X, y, progress=False).fit(X, y, progress=False)
    np.testing.assert_allclose(cold.model_.params.V, once)  # without warm_start: starts over
    # partial_fit after fit continues the fitted weights, as scikit-learn's SGD estimators do
    continued = FMRegressor(**settings, epochs=1).fit(X, y, progress=False)
    with pytest.raises(ValueError, match="X has 10 features"):
        continued.partial_fit(X[:, :10], y)
    continued.partial_fit(X, y)
    np.testing.assert_allclose(continued.model_.params.V, two.model_.params.V, rtol=1e-6,
                               atol=1e-8)
    assert [h.epoch for h in continued.history_] == [1, 2]
    # what would change the weights' shapes is refused, and the fitted model is kept
    for change, message in ((dict(num_factors=8), "the model has num_factors=4, this run "
                             "num_factors=8"), (dict(), "X has 10 features")):
        refused = clone(warm).set_params(**change)
        refused.model_, refused.history_ = warm.model_, warm.history_
        refused.n_features_in_ = X.shape[1]
        with pytest.raises(ValueError, match=message):
            refused.fit(X[:, :10] if not change else X, y, progress=False)
        assert refused.n_features_in_ == X.shape[1] and refused.model_ is warm.model_


@pytest.mark.parametrize("Estimator, metric, score", [
    (FMClassifier, "auc", lambda m, X, y: roc_auc_score(y, m.predict_proba(X)[:, 1])),
    (FMRegressor, "rmse", lambda m, X, y: -np.sqrt(mean_squared_error(y, m.predict(X)))),
])
def test_eval_set_keeps_the_best_epoch_as_a_run_stopped_there(Estimator, metric, score):
    """fit(eval_set=...) measures the set after every epoch, keeps the best epoch's weights
    and stops after early_stopping_patience worse ones: the model equals a run of exactly
    that many epochs, and the best epoch's recorded figure is scikit-learn's on it."""
    X, y = _sparse_problem(rows=1500, seed=2)
    train, held = slice(0, 1000), slice(1000, None)
    settings = dict(num_factors=4, mini_batch_size=50, optimizer="adam", factors_lr=0.05,
                    linear_lr=0.05, bias_lr=0.05, early_stopping_patience=2)
    stopped = Estimator(**settings, epochs=40).fit(X[train], y[train],
                                                  eval_set=[(X[held], y[held])], progress=False)
    figures = [h.validation[metric] for h in stopped.history_]
    best = (max if metric == "auc" else min)(range(len(figures)), key=figures.__getitem__) + 1
    assert len(figures) == best + 2 < 40  # stopped two epochs after the best one
    short = Estimator(**settings, epochs=best).fit(X[train], y[train], progress=False)
    np.testing.assert_allclose(stopped.model_.params.V, short.model_.params.V, rtol=1e-6)
    assert abs(score(short, X[held], y[held])) == pytest.approx(figures[best - 1], abs=1e-9)
    with pytest.raises(ValueError, match="one .X, y. pair"):
        Estimator(**settings).fit(X, y, eval_set=[(X, y), (X, y)])
    with pytest.raises(ValueError, match="features"):
        Estimator(**settings).fit(X, y, eval_set=(X[:, :10], y))


@pytest.mark.parametrize("Estimator", [DeepFMClassifier, DeepFMRegressor])
def test_deepfm_eval_set_keeps_the_best_epoch_as_a_run_stopped_there(Estimator):
    """As the FM's: the model kept equals a run of the best epoch's count, and that epoch's
    recorded figure is scikit-learn's on it; eval_set's columns must be the training ones."""
    import pandas as pd

    from fmkit.deepfm_estimators import default_config

    rng = np.random.default_rng(4)
    user, item = rng.integers(0, 50, 3000), rng.integers(0, 40, 3000)
    logit = rng.normal(0, 1, 50)[user] + rng.normal(0, 1, 40)[item]
    X = pd.DataFrame({"user": user, "item": item})
    classifier = Estimator is DeepFMClassifier
    y = (rng.random(3000) < 1 / (1 + np.exp(-logit))).astype(int) if classifier else logit
    config = default_config(X)
    config["train_config"].update(early_stopping_patience=2, seed=1)
    stopped = Estimator(config, num_epochs=40, batch_size=64).fit(
        X[:2000], y[:2000], eval_set=[(X[2000:], y[2000:])])
    metric = "auc" if classifier else "rmse"
    figures = [h["validation"][metric] for h in stopped.history_]
    best = (max if classifier else min)(range(len(figures)), key=figures.__getitem__) + 1
    assert 1 < best and len(figures) == best + 2 < 40
    short = Estimator(config, num_epochs=best, batch_size=64).fit(X[:2000], y[:2000])
    held = X[2000:]
    if classifier:
        np.testing.assert_allclose(stopped.predict_proba(held), short.predict_proba(held),
                                   rtol=1e-5)
        figure = roc_auc_score(y[2000:], short.predict_proba(held)[:, 1])
    else:
        np.testing.assert_allclose(stopped.predict(held), short.predict(held), rtol=1e-5)
        figure = np.sqrt(mean_squared_error(y[2000:], short.predict(held)))
    assert figure == pytest.approx(figures[best - 1], abs=1e-6)
    with pytest.raises(ValueError, match="columns"):
        Estimator(config, num_epochs=1).fit(X, y, eval_set=(X[["item", "user"]], y))


def test_deepfm_default_config_reads_a_list_column_as_multi_value_ids():
    """A DataFrame column of lists (tags) becomes a hashed id feature of the distinct
    values in its lists, and the model learns from the values inside them."""
    import pandas as pd

    from fmkit.deepfm_estimators import default_config

    rng = np.random.default_rng(7)
    tags = [list(rng.choice(["a", "b", "c", "d", "hot"], rng.integers(0, 3), replace=False))
            for _ in range(4000)]
    X = pd.DataFrame({"user": rng.integers(0, 20, 4000).astype(str), "tags": tags})
    y = np.array([int("hot" in t) for t in tags])
    feature = default_config(X)["feature_configs"][1]["id_feature"]
    assert feature["feature_name"] == "tags" and feature["hash_bucket_size"] == 10
    model = DeepFMClassifier(num_epochs=3).fit(X[:3000], y[:3000])
    assert roc_auc_score(y[3000:], model.predict_proba(X[3000:])[:, 1]) > 0.99


def test_a_deepfm_configuration_without_features_gets_the_columns_features(tmp_path):
    """A configuration that sets training or network settings only (no feature_configs)
    gets the features, groups and other settings made from the columns: with nothing but the
    epochs it trains what ``num_epochs`` alone trains; what it sets is kept (the saved
    network)."""
    import json

    X, y, _ = _deepfm_problem()
    alone = DeepFMClassifier(num_epochs=1).fit(X, y).predict_proba(X)
    given = DeepFMClassifier(config={"train_config": {"num_epochs": 1}}).fit(X, y)
    np.testing.assert_array_equal(given.predict_proba(X), alone)
    narrow = DeepFMClassifier(config={"model_config": {"deepfm": {"deep": {
        "hidden_units": [16]}}}}, num_epochs=1).fit(X, y)
    saved = json.loads((narrow.save(tmp_path / "m") / "model.json").read_text())["config"]
    assert saved["model_config"]["deepfm"]["deep"]["hidden_units"] == [16]
    assert [f["id_feature"]["feature_name"] for f in saved["feature_configs"]] == ["user",
                                                                                  "item"]


def _deepfm_problem():
    import pandas as pd

    from fmkit.deepfm_estimators import default_config

    rng = np.random.default_rng(5)
    user, item = rng.integers(0, 50, 2000), rng.integers(0, 40, 2000)
    logit = rng.normal(0, 1, 50)[user] + rng.normal(0, 1, 40)[item]
    X = pd.DataFrame({"user": user, "item": item})
    y = (rng.random(2000) < 1 / (1 + np.exp(-logit))).astype(int)
    config = default_config(X)
    config["data_config"]["shuffle"] = False
    return X, y, config


@pytest.mark.parametrize("classes", [["cat", "dog", "eel"], [3, 7]])
def test_deepfm_classes_by_name_through_the_cli(classes, tmp_path, capsys):
    """A DeepFM estimator fitted on class names (or numbers other than 0..n-1): ``fmkit
    predict`` answers the names its ``predict`` gives, ``fmkit evaluate`` reads a file of them
    (its figures scikit-learn's), and recordIO, whose predicted_label is a number, is refused
    for names."""
    from fmkit.cli import main

    X, y, _ = _deepfm_problem()
    named = np.array(classes)[(X["item"].to_numpy() + y) % len(classes)]
    model = DeepFMClassifier(num_epochs=2, random_state=0).fit(X, named)
    model.save(tmp_path / "m")
    X.assign(animal=named).to_csv(tmp_path / "named.csv", index=False)
    X.to_csv(tmp_path / "features.csv", index=False)
    capsys.readouterr()
    assert main(["predict", "--model-dir", str(tmp_path / "m"), "--data",
                 str(tmp_path / "features.csv")]) == 0
    answered = [json.loads(line)["predicted_label"]
                for line in capsys.readouterr().out.splitlines()]
    assert answered == model.predict(X).tolist()
    assert main(["evaluate", "--model-dir", str(tmp_path / "m"), "--data",
                 str(tmp_path / "named.csv"), "--set", "data_config.label_fields=[animal]"]) == 0
    measured = json.loads(capsys.readouterr().out)
    accuracy = accuracy_score(named.astype(str), model.predict(X).astype(str))
    key = "binary_classification_accuracy" if len(classes) == 2 else "multiclass_accuracy"
    assert measured[key] == pytest.approx(accuracy)
    if len(classes) == 2:
        assert measured["auc"] == pytest.approx(roc_auc_score(named == classes[1],
                                                              model.predict_proba(X)[:, 1]))
    stray = "owl" if isinstance(classes[0], str) else 5
    X.assign(animal=np.where(np.arange(len(X)) == 4, stray, named)).to_csv(
        tmp_path / "stray.csv", index=False)
    assert main(["evaluate", "--model-dir", str(tmp_path / "m"), "--data",
                 str(tmp_path / "stray.csv"), "--set", "data_config.label_fields=[animal]"]) == 1
    assert f"stray.csv:6: label '{stray}' is not one of the model's classes (" in \
        capsys.readouterr().err
    code = main(["predict", "--model-dir", str(tmp_path / "m"), "--data",
                 str(tmp_path / "features.csv"), "--accept", "application/x-recordio-protobuf",
                 "--output", str(tmp_path / "out.rec")])
    assert (code == 1) == isinstance(classes[0], str)


def test_deepfm_ids_mixing_numbers_and_text_are_text():
    """An object column of ids from several sources (19 and "19") was Arrow's ArrowInvalid:
    it is read as text, as a CSV file of it reads, so it trains and scores as the column of
    numbers does; a column Arrow cannot take otherwise is a ValueError naming it."""
    X, y, config = _deepfm_problem()
    mixed = X.assign(user=[u if i % 2 else str(u) for i, u in enumerate(X["user"])])
    numbers = DeepFMClassifier(config=config, num_epochs=2, random_state=0).fit(X, y)
    texts = DeepFMClassifier(config=config, num_epochs=2, random_state=0).fit(mixed, y)
    np.testing.assert_array_equal(texts.predict_proba(mixed), numbers.predict_proba(X))
    with pytest.raises(ValueError, match="X column 'user': .*cannot mix list and non-list"):
        texts.predict(X.assign(user=[[1]] + [1] * (len(X) - 1)))


@pytest.mark.parametrize("column, refusal", [
    (lambda X: X["user"] + 1j, "Complex data not supported"),
    (lambda X: [{"a": 1}] * len(X), "X column 'extra' holds 'struct<a: int64>' values, which "
                                    "are not features"),
    (lambda X: [[[1], [2]]] * len(X), "X column 'extra' holds 'list<item: int64>' values")])
def test_deepfm_default_config_refuses_columns_that_are_not_features(column, refusal):
    """A complex column (scikit-learn's refusal) and a column of dicts or of lists of lists
    were pyarrow's ArrowNotImplementedError ("Unsupported numpy type 15", "Function 'unique'
    has no kernel matching input types"): a ValueError naming the column."""
    X, y, _ = _deepfm_problem()
    with pytest.raises(ValueError, match=re.escape(refusal)):
        DeepFMClassifier(num_epochs=1).fit(X.assign(extra=column(X)), y)


def test_deepfm_takes_a_dict_of_columns_as_deepctr_does():
    """DeepCTR's model input, {name: array} (a 2-D array: a list per row), trains and scores as
    the DataFrame of the same columns; columns of different lengths are a ValueError."""
    import pandas as pd

    X, y, _ = _deepfm_problem()
    rng = np.random.default_rng(1)
    history = rng.integers(0, 9, (len(X), 3))
    columns = {"user": X["user"].to_numpy(), "item": X["item"].astype(str).to_numpy(),
               "history": history}
    frame = pd.DataFrame({"user": columns["user"], "item": columns["item"],
                          "history": list(history)})
    by_dict = DeepFMClassifier(num_epochs=2, random_state=0).fit(columns, y)
    by_frame = DeepFMClassifier(num_epochs=2, random_state=0).fit(frame, y)
    np.testing.assert_array_equal(by_dict.predict_proba(columns), by_frame.predict_proba(frame))
    with pytest.raises(ValueError, match="same length"):
        DeepFMClassifier(num_epochs=1).fit({"a": [1, 2, 3], "b": [1, 2]}, [0, 1, 0])


def test_deepfm_estimator_errors_name_the_row_of_x(monkeypatch):
    """X is read in blocks: a bad value's row is counted from X's first row, not its block's."""
    import fmkit.deepfm_estimators as module

    X, y, _ = _deepfm_problem()
    X = X.assign(price=np.linspace(1, 9, len(X)).round(3).astype(str))  # text of numbers
    model = DeepFMClassifier(num_epochs=1).fit(X.astype({"price": float}), y)
    monkeypatch.setattr(module, "BLOCK_ROWS", 100)
    X.loc[249, "price"] = "cheap"
    with pytest.raises(DataError, match="X: row 250: column 'price': 'cheap' is not a number"):
        model.predict(X)


def test_deepfm_partial_fit_over_two_halves_is_one_epoch_over_both():
    """As the FM's: partial_fit keeps the optimizers' state (row-wise AdaGrad's and Adam's)
    between calls, so halves of whole mini-batches, in order, train what one epoch trains."""
    X, y, config = _deepfm_problem()
    settings = dict(num_epochs=1, batch_size=100, random_state=3)
    whole = DeepFMClassifier(config, **settings).fit(X, y)
    parts = DeepFMClassifier(config, **settings).partial_fit(X[:1000], y[:1000], classes=[0, 1])
    parts.partial_fit(X[1000:], y[1000:])
    assert [h["epoch"] for h in parts.history_] == [1, 2]
    np.testing.assert_allclose(parts.predict_proba(X), whole.predict_proba(X), rtol=1e-5,
                               atol=1e-7)
    with pytest.raises(ValueError, match="y holds a class that is not in classes_: 7"):
        parts.partial_fit(X, np.full(2000, 7))


def test_deepfm_warm_start_and_partial_fit_after_fit_continue_the_fitted_weights(tmp_path):
    """With optimizers that keep no state (SGD without momentum), a warm-started second fit
    of one epoch, a partial_fit after a fit of one, or a fit of one starting from a saved
    fit of one (train_config.fine_tune_checkpoint), equals one fit of two epochs; what
    would not continue the fitted network is refused and the fitted model kept."""
    X, y, config = _deepfm_problem()
    config["train_config"].update(
        sparse_optimizer={"sgd_optimizer": {"lr": 0.05}},
        dense_optimizer={"sgd_optimizer": {"lr": 0.01, "momentum": 0.0}})
    two = DeepFMRegressor(config, num_epochs=2, batch_size=50, random_state=1).fit(X, y)
    warm = DeepFMRegressor(config, num_epochs=1, batch_size=50, random_state=1,
                           warm_start=True)
    once = warm.fit(X, y).predict(X)
    warm.fit(X, y)
    assert not np.allclose(once, two.predict(X), rtol=1e-4)
    np.testing.assert_allclose(warm.predict(X), two.predict(X), rtol=1e-5, atol=1e-6)
    assert [h["epoch"] for h in warm.history_] == [1, 2]
    continued = DeepFMRegressor(config, num_epochs=1, batch_size=50, random_state=1).fit(X, y)
    continued.partial_fit(X, y)
    np.testing.assert_allclose(continued.predict(X), two.predict(X), rtol=1e-5, atol=1e-6)
    DeepFMRegressor(config, num_epochs=1, batch_size=50, random_state=1).fit(X, y).save(
        tmp_path / "one")
    tuned = {**config, "train_config": {**config["train_config"],
                                        "fine_tune_checkpoint": str(tmp_path / "one")}}
    fine = DeepFMRegressor(tuned, num_epochs=1, batch_size=50, random_state=1).fit(X, y)
    np.testing.assert_allclose(fine.predict(X), two.predict(X), rtol=1e-5, atol=1e-6)
    assert [h["epoch"] for h in fine.history_] == [1, 2]
    other = {**config, "model_config": {**config["model_config"],
                                        "deepfm": {"deep": {"hidden_units": [16]}}}}
    kept = warm.model_
    for change, X_new, message in ((dict(config=other), X, "warm_start: the model's "
                                    "model_config differ"),
                                   (dict(), X.rename(columns={"item": "movie"}),
                                    "was fitted with")):
        with pytest.raises(ValueError, match=message):
            warm.set_params(**change).fit(X_new, y)
        assert warm.model_ is kept
        warm.set_params(config=config)


# settings that learn scikit-learn's small check problems (SageMaker's defaults train one
# epoch at learning rates for millions of rows)
CHECKED = dict(num_factors=2, epochs=30, mini_batch_size=10, bias_lr=0.05, linear_lr=0.05,
               factors_lr=0.05, bias_wd=0, linear_wd=0, factors_wd=0)


_WEIGHTS_BY_BATCH = ("mini-batch training: a weighted row and its repeats land in different "
                     "batches, so only full-batch training equals the repeated data (to float32 "
                     "precision, not 1e-7): test_fm_sample_weights_in_one_batch_equal_repeated"
                     "_rows, tests/test_deepfm_training_options.py")


@parametrize_with_checks([FMClassifier(**CHECKED), FMRegressor(**CHECKED)],
                         expected_failed_checks=lambda estimator: dict.fromkeys(
                             ["check_sample_weight_equivalence_on_dense_data",
                              "check_sample_weight_equivalence_on_sparse_data"],
                             _WEIGHTS_BY_BATCH))
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


# DeepFM (its estimators take raw columns; a 2-D array's columns become features x0, x1 ...)


@parametrize_with_checks(
    [DeepFMClassifier(num_epochs=2, batch_size=32), DeepFMRegressor(num_epochs=2, batch_size=32)],
    expected_failed_checks=lambda estimator: {
        "check_sample_weight_equivalence_on_dense_data": _WEIGHTS_BY_BATCH})
def test_scikit_learn_estimator_checks_deepfm(estimator, check):
    check(estimator)


def test_a_label_beyond_float32_is_named_as_such():
    """1e40 is a finite number, but not a float32 one: the message says which rule it broke
    (it said "not a finite number")."""
    X = np.eye(4)
    with pytest.raises(DataError, match=r"row 2: label is not a finite number within "
                                        r"float32's range"):
        FMRegressor(num_factors=2).fit(X, [1.0, 2.0, 1e40, 3.0])


@pytest.mark.parametrize("kind", [FMRegressor, FMClassifier])
def test_a_row_whose_score_overflows_is_an_error_naming_it_not_a_nan(kind):
    """Values near float32's limit overflow y_hat's squares: predict says which row, as
    ``fmkit predict`` and the server do, instead of returning NaN."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 4)), np.arange(60) % 2
    model = kind(num_factors=2, epochs=2).fit(X, y)
    X[7] = 3e38
    with pytest.raises(ValueError, match="X row 7: the score is not a finite number"):
        model.predict(X)
    assert np.isfinite(model.predict(X[:7])).all()


def test_a_deepfm_estimator_trains_with_its_configurations_loss_options():
    """The configuration's binary_cross_entropy keeps its label_smoothing (the estimator put
    its own loss in place of the configuration's); a loss of another kind is refused.
    Smoothing 0.5 trains on targets 0.25 and 0.75 (TorchEasyRec's y (1 - s) + s / 2): no
    probability leaves [0.2, 0.8], where without it separable rows go past 0.95."""
    import pandas as pd

    from fmkit.deepfm_estimators import default_config

    rng = np.random.default_rng(5)
    user = rng.integers(0, 30, 3000)
    X = pd.DataFrame({"user": user, "item": rng.integers(0, 5, 3000)})
    y = (user % 2).astype(int)  # the user decides the label
    config = default_config(X)
    plain = DeepFMClassifier(config, num_epochs=20, batch_size=64).fit(X, y).predict_proba(X)
    config["model_config"]["losses"] = [{"binary_cross_entropy": {"label_smoothing": 0.5}}]
    smoothed = DeepFMClassifier(config, num_epochs=20, batch_size=64).fit(X, y)
    assert plain[:, 1].max() > 0.95 and plain[:, 1].min() < 0.05
    assert 0.2 < smoothed.predict_proba(X)[:, 1].min() < smoothed.predict_proba(X)[:, 1].max() < 0.8
    config["model_config"]["losses"] = [{"l2_loss": {}}]
    with pytest.raises(ValueError, match="losses is l2_loss; this DeepFMClassifier trains with "
                                         "binary_cross_entropy"):
        DeepFMClassifier(config, num_epochs=1).fit(X, y)
    # a focal loss is a binary classifier's too: kept with its settings, probabilities out
    config["model_config"]["losses"] = [{"binary_focal_loss": {"gamma": 2.0, "alpha": 0.5}}]
    focal = DeepFMClassifier(config, num_epochs=3, batch_size=64).fit(X, y)
    assert focal.model_.config.model_config.losses[0].binary_focal_loss.gamma == 2.0
    assert roc_auc_score(y, focal.predict_proba(X)[:, 1]) > 0.9


def test_a_numeric_column_with_missing_values_is_bucketized_at_the_deciles_of_the_others():
    """default_config's boundaries come from the values that are there: one NaN in a numpy
    column once made every boundary NaN, every row one bucket, and the column useless."""
    from fmkit.deepfm_estimators import BUCKETS, default_config

    rng = np.random.default_rng(8)
    price = rng.random(2000) * 100
    y = (price > 50).astype(int)  # the price decides the label
    price[::100] = np.nan
    X = np.column_stack([price, rng.integers(0, 5, 2000)])
    feature = default_config(X)["feature_configs"][0]["raw_feature"]  # (column x0)
    expected = np.unique(np.nanquantile(price, np.linspace(0, 1, BUCKETS + 1)[1:-1]))
    np.testing.assert_allclose(feature["boundaries"], expected)
    model = DeepFMClassifier(num_epochs=5, batch_size=64).fit(X, y)
    known = ~np.isnan(price)
    assert roc_auc_score(y[known], model.predict_proba(X[known])[:, 1]) > 0.95


def test_text_columns_given_to_an_fm_say_what_to_do():
    """A DataFrame with a text column: numpy's words (scikit-learn's checks expect them),
    then what to do (one-hot encode, or the DeepFM estimators, which take raw columns)."""
    import pandas as pd

    frame = pd.DataFrame({"city": ["x", "y", "x", "y"], "n": [1.0, 2.0, 3.0, 4.0]})
    with pytest.raises(ValueError, match=r"^could not convert string to float: 'x': an FM "
                       r"takes numbers; one-hot encode"):
        FMClassifier(epochs=1).fit(frame, [0, 1, 0, 1])
    fitted = FMRegressor(epochs=1).fit(frame[["n"]], [1.0, 2.0, 3.0, 4.0])
    with pytest.raises(ValueError, match="DeepFMRegressor, which take raw columns"):
        fitted.predict(frame[["city"]].rename(columns={"city": "n"}))
