"""optimizer=mcmc, a Bayesian FM sampled by Gibbs sweeps (libFM's MCMC).

The compiled sweep is held to a plain-Python sweep that draws each parameter from its
conditional computed by brute force (full FM predictions with the parameter at 0 and at 1: the
FM is linear in each parameter), with the same random stream (numba's generator and NumPy's
``RandomState`` give the same normal, uniform and exponential draws for a seed). Its
distributions are held to scipy's, and the models to the issue's quality targets, scored by
scikit-learn from ``fmkit predict``."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp
from numba import njit
from scipy import stats
from sklearn.datasets import dump_svmlight_file
from sklearn.metrics import mean_squared_error, roc_auc_score

from fmkit import FMClassifier, FMRegressor
from fmkit.errors import DataError, HyperparameterError
from fmkit.kernels import mcmc
from fmkit.models.fm.hyperparameters import MCMC_EPOCHS, validate

from .conftest import movielens_onehot, shared_file

FMKIT = [sys.executable, "-m", "fmkit"]


def brute_force(X, w0, w, V):
    """y_hat by the FM's definition, a double loop over the pairs (float64)."""
    X = X.toarray()
    out = np.full(X.shape[0], float(w0))
    for n, x in enumerate(X):
        out[n] += x @ w
        for i in range(len(x)):
            for j in range(i + 1, len(x)):
                out[n] += (V[i] @ V[j]) * x[i] * x[j]
    return out


def reference_gamma(r, shape, rate):
    d = shape - 1 / 3
    c = 1 / math.sqrt(9 * d)
    while True:
        x = r.normal()
        v = 1 + c * x
        if v <= 0:
            continue
        v = v ** 3
        u = r.random_sample()
        if u < 1 - 0.0331 * x ** 4 or math.log(u) < 0.5 * x * x + d * (1 - v + math.log(v)):
            return d * v / rate


def reference_above(r, a):
    if a <= 0:
        while True:
            z = r.normal()
            if z > a:
                return z
    rate = 0.5 * (a + math.sqrt(a * a + 4))
    while True:
        z = a + r.exponential(1 / rate)
        if r.random_sample() <= math.exp(-0.5 * (z - rate) ** 2):
            return z


def reference_prior(r, values, mu):
    spread = ((values - mu) ** 2).sum()
    precision = reference_gamma(r, 0.5 * (1 + values.size + 1),
                                0.5 * (1 + spread + mu ** 2))
    mean = values.sum() / (values.size + 1)
    return precision, mean + math.sqrt(1 / ((values.size + 1) * precision)) * r.normal()


def reference_sweep(X, y, classifier, w0, w, V, hyper, seed):
    """One sweep in plain Python: every conditional from brute-force predictions."""
    r = np.random.RandomState(seed)
    k = V.shape[1]
    y_hat = brute_force(X, w0[0], w, V)
    if classifier:
        target = np.array([h + reference_above(r, -h) if label > 0.5
                           else h - reference_above(r, h) for h, label in zip(y_hat, y)])
        alpha = 1.0
    else:
        target = y.copy()
        alpha = reference_gamma(r, 0.5 * (1 + y.size), 0.5 * (1 + ((y - y_hat) ** 2).sum()))
        hyper[0] = alpha

    def draw(put, prior_mean, prior_precision):
        put(0.0)
        g = brute_force(X, w0[0], w, V)
        put(1.0)
        h = brute_force(X, w0[0], w, V) - g
        variance = 1 / (alpha * (h * h).sum() + prior_precision)
        mean = variance * (alpha * (h * (target - g)).sum() + prior_mean * prior_precision)
        put(mean + math.sqrt(variance) * r.normal())

    draw(lambda v: w0.__setitem__(0, v), 0.0, 0.0)
    for i in range(w.size):
        draw(lambda v, i=i: w.__setitem__(i, v), hyper[2], hyper[1])
    for f in range(k):
        for i in range(w.size):
            draw(lambda v, i=i, f=f: V.__setitem__((i, f), v), hyper[3 + k + f], hyper[3 + f])
    hyper[1], hyper[2] = reference_prior(r, w, hyper[2])
    for f in range(k):
        hyper[3 + f], hyper[3 + k + f] = reference_prior(r, V[:, f], hyper[3 + k + f])


def tiny(classifier, seed=0):
    rng = np.random.default_rng(seed)
    X = sp.random(40, 6, density=0.5, random_state=seed, format="csr") * 2
    X.data -= 1.0
    y = rng.normal(size=40) + X @ rng.normal(size=6)
    return X, ((y > 0).astype(float) if classifier else y)


@pytest.mark.parametrize("classifier", [False, True])
def test_the_compiled_sweep_equals_a_brute_force_sweep_draw_for_draw(classifier):
    """Three sweeps from the same state and seeds: every weight and hyperparameter equal to
    1e-8, and the kernel's residuals the brute-force ones."""
    X, y = tiny(classifier)
    k, rng = 3, np.random.default_rng(1)
    w0, w, V = np.array([0.1]), rng.normal(0, 0.1, 6), rng.normal(0, 0.1, (6, k))
    hyper = np.r_[1.0, 1.0, 0.0, np.ones(k), np.zeros(k)]
    mine = [a.copy() for a in (w0, w, V, hyper)]
    columns = X.tocsc()
    scratch = np.zeros((2, X.shape[0]))
    for seed in (11, 12, 13):
        mcmc.sweep(X.indptr.astype(np.int64), X.indices, X.data, columns.indptr.astype(
            np.int64), columns.indices, columns.data, y, classifier, *mine, seed, *scratch)
        reference_sweep(X, y, classifier, w0, w, V, hyper, seed)
        for got, want in zip(mine, (w0, w, V, hyper)):
            np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-10)
        if not classifier:  # the residuals the sweep kept up to date, after its last draw
            np.testing.assert_allclose(scratch[0], y - brute_force(X, w0[0], w, V), atol=1e-9)


def test_the_conditional_draws_mean_and_variance_are_the_posteriors():
    """For one linear weight with the others fixed, the log posterior evaluated by brute force
    on a grid is the quadratic of the draw's mean and variance: many draws of the reference
    formula (the kernel's, by the test above) match scipy's fit of those moments."""
    X, y = tiny(False, seed=3)
    rng = np.random.default_rng(2)
    w0, w, V = 0.2, rng.normal(size=6), rng.normal(0, 0.3, (6, 2))
    alpha, mu, lam = 2.0, 0.1, 3.0

    def log_posterior(value):
        trial = w.copy()
        trial[4] = value
        residual = y - brute_force(X, w0, trial, V)
        return -0.5 * alpha * (residual ** 2).sum() - 0.5 * lam * (value - mu) ** 2

    grid = np.linspace(-3, 3, 7)
    a, b, _ = np.polyfit(grid, [log_posterior(v) for v in grid], 2)
    variance, mean = -1 / (2 * a), -b / (2 * a)
    trial = w.copy()
    trial[4] = 0.0
    g, h = brute_force(X, w0, trial, V), X[:, 4].toarray().ravel()
    draws = [mcmc._draw((h * h).sum(), (h * (y - g)).sum(), mu, lam, alpha)
             for _ in range(4000)]  # (the kernel's draw, compiled)
    assert abs(np.mean(draws) - mean) < 4 * math.sqrt(variance / len(draws))
    assert np.var(draws) == pytest.approx(variance, rel=0.1)


@njit
def draws(gamma, argument, n):
    """``n`` draws, the stream seeded: Gamma(``argument``, rate 2), or N(0, 1) above
    ``argument``."""
    np.random.seed(5)
    out = np.empty(n)
    for i in range(n):
        out[i] = mcmc.gamma(argument, 2.0) if gamma else mcmc.standard_normal_above(argument)
    return out


@pytest.mark.parametrize("a", [-1.5, 0.0, 0.7, 3.0])
def test_the_truncated_normal_draws_follow_scipy(a):
    sample = draws(False, a, 20000)
    assert sample.min() > a
    assert stats.kstest(sample, stats.truncnorm(a, np.inf).cdf).pvalue > 0.001


@pytest.mark.parametrize("shape", [1.0, 3.5, 500.0])
def test_the_gamma_draws_follow_scipy(shape):
    assert stats.kstest(draws(True, shape, 20000), stats.gamma(shape, scale=0.5).cdf
                        ).pvalue > 0.001


def test_mcmc_names_its_own_epochs_and_refuses_what_it_cannot_do():
    base = {"feature_dim": 10, "num_factors": 2, "predictor_type": "regressor"}
    assert validate({**base, "optimizer": "mcmc"})["epochs"] == MCMC_EPOCHS == 200
    assert validate({**base, "optimizer": "mcmc"})["early_stopping_patience"] == 0
    assert validate({**base, "optimizer": "mcmc",
                     "early_stopping_patience": "2"})["early_stopping_patience"] == 2
    assert validate({**base, "optimizer": "mcmc", "epochs": 7})["epochs"] == 7
    assert validate(base)["epochs"] == 1  # SageMaker's default, whatever mcmc does
    with pytest.raises(Exception, match="model_type=fm"):
        validate({**base, "optimizer": "mcmc", "model_type": "ffm"})
    X = sp.random(60, 5, density=0.5, format="csr", random_state=0)
    y = np.arange(60) % 2
    with pytest.raises(DataError, match="sample weights"):
        FMClassifier(num_factors=2, optimizer="mcmc").fit(X, y, sample_weight=np.ones(60))
    with pytest.raises(ValueError, match="partial_fit: optimizer=mcmc updates every weight "):
        FMClassifier(num_factors=2, optimizer="mcmc").partial_fit(X, y, classes=[0, 1])
    model = FMClassifier(num_factors=2, optimizer="mcmc", epochs=3, warm_start=True).fit(X, y)
    with pytest.raises(HyperparameterError, match="its own chain"):
        model.fit(X, y)


@pytest.mark.parametrize("option, message", [
    (["--device", "cpu:0"], "optimizer=mcmc trains on the CPU only (--device cpu)"),
    (["--nproc", "2"], "optimizer=mcmc trains in one process: each of its sweeps updates every "
                       "weight from all the training rows (use --nproc 1)"),
])
def test_mcmc_on_a_device_or_several_processes_is_one_line(tmp_path, cli, option, message):
    code, _, err = cli("train", "--train", shared_file("a9a_libsvm", "a9a.t"), "--model-dir",
                       tmp_path / "m", *option, "feature_dim=124", "num_factors=2",
                       "predictor_type=binary_classifier", "optimizer=MCMC")
    assert (code, err.strip()) == (1, f"fmkit: error: {message}")
    assert not (tmp_path / "m").exists()


def test_mcmc_beats_the_best_tuned_peers_on_movielens_untuned(tmp_path):
    """Issue 16's best tuned peers (refit on ua.base, scored on ua.test): RMSE 0.9361 (PyTorch
    FM, Adam + L2) and AUC 0.7699 (xLearn FM) on rating >= 4. optimizer=mcmc with k=8 and
    nothing else set (200 sweeps) beats both: the regressor from Python, the classifier from
    the command line, scored by ``fmkit predict``."""
    X, y = movielens_onehot("ua.base")
    X_test, y_test = movielens_onehot("ua.test")
    model = FMRegressor(num_factors=8, optimizer="mcmc").fit(X, y)
    assert math.sqrt(mean_squared_error(y_test, model.predict(X_test))) < 0.9361

    paths = {}
    for name, (rows, ratings) in {"train": (X, y), "test": (X_test, y_test)}.items():
        paths[name] = tmp_path / f"{name}.libsvm"
        dump_svmlight_file(rows, (ratings >= 4).astype(int), str(paths[name]), zero_based=True)
    subprocess.run([*FMKIT, "train", "--quiet", "--train", paths["train"], "--model-dir",
                    tmp_path / "model", "--index-base", "0", "feature_dim=2625",
                    "num_factors=8", "predictor_type=binary_classifier", "optimizer=mcmc"],
                   check=True)
    out = tmp_path / "predictions.jsonl"
    subprocess.run([*FMKIT, "predict", "--quiet", "--model-dir", tmp_path / "model", "--data",
                    paths["test"], "--output", out], check=True)
    scores = [json.loads(line)["score"] for line in out.read_text().splitlines()]
    assert roc_auc_score(y_test >= 4, scores) > 0.7699


def test_an_mcmc_run_with_validation_killed_and_resumed_equals_an_uninterrupted_one(tmp_path,
                                                                                    cli):
    """A checkpoint holds the chain (the sample, the hyperparameters, the samples' mean) and
    each sweep's seed follows from the step: SIGKILL, then --resume, ends with the weights and
    validation history of one uninterrupted run."""
    from .test_checkpoints import kill_resume_and_compare

    hp = ["feature_dim=124", "num_factors=4", "predictor_type=binary_classifier",
          "optimizer=mcmc", "epochs=100", "seed=3"]
    test_rows = shared_file("a9a_libsvm", "a9a.t")  # (a smaller file: faster sweeps)
    common = ["train", "--train", test_rows, "--validation", test_rows, "--index-base", "1",
              "--quiet", *hp]
    state, _ = kill_resume_and_compare(tmp_path, cli, common, 10, 1e-9)
    assert "learner/mean_V" in state.arrays and state.step < 100
    straight, resumed = (json.loads((tmp_path / name / "metrics.json").read_text())["train"]
                         for name in ("straight", "resumed"))
    assert [h["validation"] for h in resumed] == [h["validation"] for h in straight]


def test_a_validation_channel_reports_on_the_chain_without_changing_the_model(tmp_path, cli):
    """The model is the mean of every sample after the burn-in, validation channel or not: the
    sweep whose mean validation liked best (it kept that one) is the noise of its rows, and
    the mean of all the samples is the better estimate (docs/quality.md, session 47). With
    early_stopping_patience set, the run stops and keeps the best, as any other. (Validation
    rows with flipped labels make every sweep worse than the first.)"""
    lines = shared_file("a9a_libsvm", "a9a.t").read_text().splitlines(True)
    train, flipped = tmp_path / "train.libsvm", tmp_path / "flipped.libsvm"
    train.write_text("".join(lines[:6000]))
    flipped.write_text("".join(("-1" if line.startswith("+1") else "+1") + line[2:]
                               for line in lines[6000:9000]))
    hp = ["--index-base", "1", "--quiet", "feature_dim=124", "num_factors=4",
          "predictor_type=binary_classifier", "optimizer=mcmc", "epochs=12", "seed=5"]
    weights = {}
    for name, extra in {"alone": [], "validated": ["--validation", flipped],
                        "stopped": ["--validation", flipped, "early_stopping_patience=2"],
                        "first": ["epochs=1"]}.items():
        assert cli("train", "--train", train, "--model-dir", tmp_path / name, *hp,
                   *extra)[0] == 0
        weights[name] = np.load(tmp_path / name / "weights.npz")
    history = json.loads((tmp_path / "validated" / "metrics.json").read_text())["train"]
    aucs = [h["validation"]["auc"] for h in history]
    assert len(aucs) == 12 and max(aucs) == aucs[0] > aucs[-1]
    stopped = json.loads((tmp_path / "stopped" / "metrics.json").read_text())["train"]
    assert len(stopped) == 3
    for name in weights["alone"].files:
        np.testing.assert_array_equal(weights["validated"][name], weights["alone"][name])
        np.testing.assert_array_equal(weights["stopped"][name], weights["first"][name])


def test_rows_that_cannot_fit_in_memory_are_refused_while_reading(monkeypatch):
    """MCMC holds its rows: with 50 kB available, 1,000 rows of 2.5 values are refused with
    the estimate and what to do instead, not an allocator's error."""
    from fmkit import memory

    monkeypatch.setattr(memory, "available_bytes", lambda: 50_000)
    X = sp.random(1000, 5, density=0.5, format="csr", random_state=0)
    with pytest.raises(memory.TooLarge, match=r"1,000 rows, 2,500 values .* gradient optimizer"):
        FMClassifier(num_factors=2, optimizer="mcmc", epochs=3).fit(X, np.arange(1000) % 2)


def test_a_regressor_samples_labels_of_any_scale_alike():
    """Labels times 10,000 plus 200,000 (prices, say) give the same chain on the standardized
    labels: the predictions are the unit-scale model's, scaled and shifted (float32), and fit
    the planted FM; sampled on the raw labels, the weights stayed near 0 (R^2 0.08)."""
    from sklearn.metrics import r2_score

    rng = np.random.default_rng(0)
    X = sp.random(4000, 30, density=0.15, format="csr", random_state=1)
    X_test = sp.random(1000, 30, density=0.15, format="csr", random_state=2)
    w0, w, V = 0.3, rng.normal(size=30), rng.normal(0, 0.5, (30, 3))
    y = brute_force(X, w0, w, V) + rng.normal(0, 0.1, 4000)
    unit = FMRegressor(num_factors=3, optimizer="mcmc").fit(X, y).predict(X_test)
    priced = FMRegressor(num_factors=3, optimizer="mcmc").fit(X, 1e4 * y + 2e5).predict(X_test)
    np.testing.assert_allclose(priced, 1e4 * unit + 2e5, rtol=1e-5)
    assert r2_score(brute_force(X_test, w0, w, V), unit) > 0.95
