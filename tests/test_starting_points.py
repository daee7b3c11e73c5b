"""fmkit's starting points (``auto`` init of the bias and factors) against values computed here
from the data, and SageMaker's init for a job that names its own settings."""

from __future__ import annotations

import numpy as np
import pytest

from fmkit.jobs.fm import train_files
from fmkit.models.fm.hyperparameters import validate
from tests.conftest import shared_file

FROZEN = {"bias_lr": 0, "linear_lr": 0, "factors_lr": 0, "epochs": 1}  # weights stay at start


def _labels(path) -> np.ndarray:
    return np.array([float(line.split(None, 1)[0]) for line in open(path)])


def _trained(tmp_path, path, **hp):
    model, _ = train_files({**FROZEN, **hp}, path, tmp_path / "model", progress=False)
    return model.params


def test_regressor_bias_starts_at_the_label_mean(tmp_path):
    ratings = tmp_path / "ratings.libsvm"
    rng = np.random.default_rng(3)
    y = rng.integers(1, 6, 5000)
    ratings.write_text("".join(f"{r} {u}:1 {100 + i}:1\n"
                               for r, u, i in zip(y, rng.integers(0, 100, 5000),
                                                  rng.integers(0, 50, 5000))))
    params = _trained(tmp_path, ratings, feature_dim=150, num_factors=4,
                      predictor_type="regressor")
    assert params.w0[0] == pytest.approx(y.mean(), rel=1e-6)
    # Adam's factor start: SageMaker's own sigma (docs/quality.md, "Starting points")
    assert params.V.std() == pytest.approx(0.001, rel=0.05)


@pytest.mark.parametrize("optimizer, sigma", [("adam", 0.001)])
def test_classifier_bias_starts_at_the_logit_of_the_positive_rate(tmp_path, optimizer, sigma):
    a9a = tmp_path / "a9a.head"  # -1/+1 labels, ~24% positive; one block
    a9a.write_text("".join(shared_file("a9a_libsvm", "a9a").read_text().splitlines(True)[:5000]))
    positive = (_labels(a9a) > 0).mean()
    params = _trained(tmp_path, a9a, feature_dim=123, num_factors=32, optimizer=optimizer,
                      predictor_type="binary_classifier")
    assert params.w0[0] == pytest.approx(np.log(positive / (1 - positive)), rel=1e-5)
    assert params.V.std() == pytest.approx(sigma, rel=0.05)


def test_a_job_that_names_its_init_settings_gets_sagemakers(tmp_path):
    hp = validate({"feature_dim": 10, "num_factors": 2, "predictor_type": "regressor",
                   "bias_init_sigma": "0.5", "factors_init_sigma": "0.2"})
    assert hp["bias_init_method"] == hp["factors_init_method"] == "normal"
    hp = validate({"feature_dim": 10, "num_factors": 2, "predictor_type": "regressor",
                   "bias_init_method": "constant", "bias_init_value": 2.5})
    assert (hp["bias_init_method"], hp["bias_init_value"]) == ("constant", 2.5)
    a9a = shared_file("a9a_libsvm", "a9a")
    params = _trained(tmp_path, a9a, feature_dim=123, num_factors=8,
                      predictor_type="binary_classifier", bias_init_method="constant",
                      bias_init_value=0.25, factors_init_sigma=0.003)
    assert params.w0[0] == np.float32(0.25)
    assert params.V.std() == pytest.approx(0.003, rel=0.1)


@pytest.mark.parametrize("optimizer, settings, sigma", [
    ("sgd", {}, 0.1), ("adagrad", {}, 0.1), ("ftrl", {}, 0.1),
    # Adam: ten steps of factors_lr, within [0.001, 0.01]
    ("adam", {}, 0.001), ("adam", {"factors_lr": 0.0005}, 0.005),
    ("adam", {"factors_lr": 0.003}, 0.01)])
def test_the_factors_start_per_rule(optimizer, settings, sigma):
    """The weights the trainer's tables start from (drawn straight into them; no kernel
    compiled, as each rule's would be on first training)."""
    from fmkit.data.sources import ArraySource
    from fmkit.jobs.training import with_starting_point
    from fmkit.train.optimizers import training_tables

    rng = np.random.default_rng(0)
    X = rng.random((50, 400)) < 0.1
    source = ArraySource(X.astype(np.float64), (rng.random(50) < 0.3).astype(float),
                         labels="binary")
    hp = with_starting_point(validate({"feature_dim": 400, "num_factors": 16,
                                       "predictor_type": "binary_classifier",
                                       "optimizer": optimizer, **settings}), source)
    _, table = training_tables(None, optimizer, hp)
    assert table[:, 1:17].std() == pytest.approx(sigma, rel=0.05)


def _planted_regression(scale: float, shift: float):
    """Rows of 10 of 200 one-hot features and labels from a planted FM (noise 0.3), times
    ``scale`` plus ``shift``: a price-like spread when scale is large."""
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    X = sp.random(8000, 200, density=0.05, random_state=0, format="csr")
    X.data[:] = 1
    w, V = rng.normal(0, 1, 200), rng.normal(0, 0.5, (200, 4))
    pairs = 0.5 * (((X @ V) ** 2).sum(1) - (X @ V ** 2).sum(1))
    return X, shift + scale * (X @ w + pairs + rng.normal(0, 0.3, X.shape[0]))


@pytest.mark.parametrize("scale, shift, rate, said", [
    (1e4, 2e5, 0.001, True),  # SageMaker's rates cannot reach a spread of 10,000s
    (1, 0, 0.02, False),  # labels of spread ~3 and rates that reach them
])
def test_a_regressor_that_learned_only_the_mean_says_so(caplog, scale, shift, rate, said):
    """The warning quotes the labels' variance as numpy computes it, and the training loss."""
    import logging

    from sklearn.metrics import r2_score

    from fmkit import FMRegressor

    X, y = _planted_regression(scale, shift)
    with caplog.at_level(logging.WARNING, logger="fmkit"):
        model = FMRegressor(num_factors=4, epochs=10, linear_lr=rate, factors_lr=rate).fit(X, y)
    warned = [r.getMessage() for r in caplog.records if "beyond the labels' mean" in r.getMessage()]
    r2 = r2_score(y, model.predict(X))
    assert bool(warned) == said and (r2 < 0.1 if said else r2 > 0.8), (warned, r2)
    if said:
        assert f"of their variance {np.var(y):.4g} " in warned[0], warned
        assert f"squared error {model.history_[-1].loss:.4g} " in warned[0], warned


@pytest.mark.parametrize("settings, said", [
    ({}, True),  # SageMaker's defaults: one epoch of 33 steps at its rates
    ({"epochs": 5, "mini_batch_size": 100, "linear_lr": 0.003, "factors_lr": 0.003}, False),
])  # (the second: the README tour's settings)
def test_a_classifier_that_learned_only_the_positive_rate_says_so(tmp_path, caplog, settings,
                                                                   said):
    """On a9a, SageMaker's defaults give every test row the majority label (a brute-force FM
    here scores the saved weights) and warn, quoting the log loss scikit-learn gives the
    positive rate alone; the README tour's settings separate the classes and do not warn."""
    import logging

    from sklearn.datasets import load_svmlight_file
    from sklearn.metrics import log_loss

    from fmkit.models.fm.model import FMModel

    hp = {"feature_dim": 123, "num_factors": 8, "predictor_type": "binary_classifier",
          **settings}
    with caplog.at_level(logging.WARNING, logger="fmkit"):
        train_files(validate(hp), shared_file("a9a_libsvm/a9a"), tmp_path / "m",
                    progress=False)
    warned = [r.getMessage() for r in caplog.records if "beyond the positive rate" in
              r.getMessage()]
    y = _labels(shared_file("a9a_libsvm/a9a")) > 0
    X, _ = load_svmlight_file(str(shared_file("a9a_libsvm/a9a.t")), n_features=123,
                              zero_based=False)
    params = FMModel.load(tmp_path / "m").params
    XV = X @ params.V
    pairs = 0.5 * ((XV ** 2).sum(1) - (X.power(2) @ params.V ** 2).sum(1))
    logits = params.w0[0] + X @ params.w + pairs
    positive = np.mean(logits >= 0)
    minority = min(positive, 1 - positive)
    assert bool(warned) == said and (minority == 0 if said else minority > 0.1), (warned,
                                                                                 minority)
    if said:
        assert f"rate's own {log_loss(y, np.full(y.size, y.mean())):.4g}," in warned[0], warned


def test_tunes_trials_keep_their_advice_to_themselves(tmp_path):
    """A search tries rates too small for the labels on purpose: its trials do not warn, and
    the user's own run afterwards does."""
    import logging

    from fmkit.jobs.training import _say_if_only_the_mean
    from fmkit.jobs.tune import _trial_environment
    from fmkit.train.engine import EpochStats

    hp = {"predictor_type": "regressor", "bias_lr": 0.1, "linear_lr": 0.001, "factors_lr": 1e-4}
    history = [EpochStats(epoch=1, loss=4.0, rows=10, seconds=1.0)]
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("fmkit").addHandler(handler)
    try:
        with _trial_environment(tmp_path, 1):
            _say_if_only_the_mean(history, (3.0, 4.0), hp)
        assert records == []
        _say_if_only_the_mean(history, (3.0, 4.0), hp)
        assert len(records) == 1 and "100% of their variance 4 " in records[0].getMessage()
    finally:
        logging.getLogger("fmkit").removeHandler(handler)


def test_an_estimators_named_start_is_the_one_it_trains_from():
    """``FMClassifier(factors_init_sigma=0.1)`` (fastFM's ``init_stdev``, docs/coming-from.md)
    starts its factors at that sigma, as a job naming it does: the estimator passed every
    parameter, fmkit's auto start among them, and auto ignored the named sigma."""
    from sklearn.datasets import load_svmlight_file

    from fmkit import FMClassifier, FMRegressor

    X, y = load_svmlight_file(str(shared_file("a9a_libsvm", "a9a")), n_features=124)
    X, y = X[:2000], y[:2000]
    frozen = {"bias_lr": 0.0, "linear_lr": 0.0, "factors_lr": 0.0, "num_factors": 8}
    named = FMClassifier(factors_init_sigma=0.1, **frozen).fit(X, y).model_.params
    assert named.V.std() == pytest.approx(0.1, rel=0.1)
    auto = FMClassifier(**frozen).fit(X, y).model_.params
    assert auto.V.std() < 0.02
    positive = (y > 0).mean()  # auto's bias: the logit of the positive rate
    assert auto.w0[0] == pytest.approx(np.log(positive / (1 - positive)), rel=1e-5)
    constant = FMRegressor(bias_init_method="constant", bias_init_value=0.25, **frozen)
    assert constant.fit(X, y).model_.params.w0[0] == np.float32(0.25)
