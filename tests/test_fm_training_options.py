"""Two of fmkit's own FM options, against computations written here: AdaGrad's
``initial_accumulator_value`` (one step worked by hand from a brute-force gradient) and
``instance_norm`` (rows scaled to unit length by a plain-Python loop; training on raw rows
with it equals training on the scaled rows without it, and scoring equals a brute-force FM or
FFM of the scaled rows)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from fmkit.data.batch import SparseBatch, unit_rows
from fmkit.data.sources import ArraySource
from fmkit.errors import ArtifactError, HyperparameterError
from fmkit.jobs.training import train
from fmkit.models.fm.export import onnx_model
from fmkit.models.fm.hyperparameters import validate
from fmkit.models.fm.model import FMModel
from fmkit.models.fm.parameters import FMParameters, init_parameters
from fmkit.models.fm.recommend import Catalogue
from fmkit.models.fm.sagemaker_artifact import artifact_bytes
from tests.test_ffm_math import K as FFM_K
from tests.test_ffm_math import brute_force as brute_force_ffm
from tests.test_ffm_math import random_problem as random_ffm_problem
from tests.test_fm_math import brute_force_fm


def plain_unit_rows(indptr, values) -> list[float]:
    """Every row's values divided by the row's length, one by one; a row of zeros as it is."""
    out = []
    for r in range(len(indptr) - 1):
        row = [float(v) for v in values[indptr[r]:indptr[r + 1]]]
        length = math.sqrt(sum(v * v for v in row))
        out += [v / length if length else v for v in row]
    return out


def test_unit_rows_equals_a_plain_loop_and_keeps_everything_else():
    rng = np.random.default_rng(0)
    indptr = np.array([0, 3, 3, 5, 9, 10], np.int64)  # row 1 has no values, row 4 a zero
    values = rng.normal(size=10).astype(np.float32)
    values[9] = 0.0
    batch = SparseBatch(indptr, rng.integers(0, 50, 10).astype(np.int32), values,
                        np.ones(5, np.float32), fields=rng.integers(0, 3, 10).astype(np.int32))
    scaled = unit_rows(batch)
    np.testing.assert_allclose(scaled.values, plain_unit_rows(indptr, values), rtol=1e-6)
    assert scaled.values.dtype == np.float32
    for name in ("indptr", "indices", "labels", "fields"):
        np.testing.assert_array_equal(getattr(scaled, name), getattr(batch, name))
    np.testing.assert_array_equal(batch.values, values)  # the input is not changed
    np.testing.assert_allclose(unit_rows(scaled).values, scaled.values, rtol=1e-6)


def _problem(seed: int = 3, n: int = 60, d: int = 12):
    rng = np.random.default_rng(seed)
    X = sp.random(n, d, density=0.4, random_state=seed, format="csr")
    X.data = rng.uniform(0.5, 3.0, X.data.size)
    X = X[np.diff(X.indptr) > 0]  # every row with a value
    y = (rng.random(X.shape[0]) < 0.5).astype(np.float64)
    return X.astype(np.float32), y


def _scaled_by_hand(X: sp.csr_matrix) -> sp.csr_matrix:
    out = X.copy()
    out.data = np.array(plain_unit_rows(X.indptr, X.data), np.float32)
    return out


@pytest.mark.parametrize("batch_size", [1, 7])
def test_instance_norm_trains_on_the_scaled_rows_and_scores_them(batch_size):
    X, y = _problem()
    hp = validate({"feature_dim": 12, "num_factors": 3, "predictor_type": "binary_classifier",
                   "epochs": 2, "mini_batch_size": batch_size, "optimizer": "adagrad",
                   "lock_free": 0, "bias_lr": 0.1, "linear_lr": 0.1, "factors_lr": 0.1,
                   "factors_init_sigma": 0.1, "seed": 2})
    start = init_parameters(hp)
    scaled = _scaled_by_hand(X)
    normed, _ = train({**hp, "instance_norm": 1}, ArraySource(X, y, labels="binary"),
                      start.copy(), progress=False)
    by_hand, _ = train(hp, ArraySource(scaled, y, labels="binary"), start.copy(),
                       progress=False)
    raw, _ = train(hp, ArraySource(X, y, labels="binary"), start.copy(), progress=False)
    for name in ("w0", "w", "V"):
        np.testing.assert_allclose(getattr(normed, name), getattr(by_hand, name), atol=1e-5,
                                   err_msg=name)
    assert not np.allclose(raw.V, normed.V, atol=1e-3)  # the option changes the training
    model = FMModel({**hp, "instance_norm": 1}, normed)
    rows = SparseBatch(X.indptr.astype(np.int64), X.indices, X.data, y.astype(np.float32))
    expected = brute_force_fm(normed.copy(), scaled.toarray().astype(np.float64))
    np.testing.assert_allclose(model.logits(rows), expected, rtol=1e-5, atol=1e-6)


def test_instance_norm_scores_a_field_aware_model_on_the_scaled_rows():
    (indptr, indices, fields, values), y, params = random_ffm_problem(4)
    hp = validate({"feature_dim": 30, "num_factors": FFM_K, "num_fields": 4,
                   "model_type": "ffm", "predictor_type": "binary_classifier",
                   "instance_norm": 1})
    params = FMParameters(*(a.astype(np.float32) for a in (params.w0, params.w, params.V)))
    batch = SparseBatch(indptr, indices, values.astype(np.float32), y.astype(np.float32),
                        fields=fields)
    scaled = plain_unit_rows(indptr, batch.values)
    expected = brute_force_ffm(params, indptr, indices.tolist(), fields.tolist(), scaled)
    np.testing.assert_allclose(FMModel(hp, params).logits(batch), expected, rtol=1e-5,
                               atol=1e-5)


def test_a_model_that_scales_its_rows_refuses_what_would_score_them_unscaled():
    """SageMaker's artifact and the approximate top-k's inner products cannot scale a joined
    row: refused (the exact top-k scores every item: tests/test_recommend.py). The ONNX graph
    scales rows itself: onnxruntime's y equals the FM of the rows scaled by hand, a row of
    zeros kept."""
    import onnxruntime

    X, y = _problem()
    X = sp.vstack([X, sp.csr_matrix((np.zeros(1, np.float32), ([0], [4])), shape=(1, 12))],
                  format="csr")  # a row whose only value is 0
    hp = validate({"feature_dim": 12, "num_factors": 3, "predictor_type": "binary_classifier",
                   "instance_norm": 1, "factors_init_sigma": 0.5})
    model = FMModel(hp, init_parameters(hp))
    rows = SparseBatch(X.indptr.astype(np.int64), X.indices, X.data, np.zeros(X.shape[0],
                                                                              np.float32))
    for export in (artifact_bytes,
                   lambda m: Catalogue.of(m, list(range(rows.n_rows)), rows).scoring):
        with pytest.raises(ArtifactError, match="instance_norm=1"):
            export(model)
    session = onnxruntime.InferenceSession(onnx_model(model).SerializeToString())
    found, _ = session.run(None, {
        "indices": X.indices.astype(np.int64), "values": X.data.astype(np.float32),
        "rows": np.repeat(np.arange(X.shape[0]), np.diff(X.indptr)).astype(np.int64),
        "batch_size": np.array([X.shape[0]], np.int64)})
    params = FMParameters(*(v.astype(np.float64) for v in (model.params.w0, model.params.w,
                                                           model.params.V)))
    expected = brute_force_fm(params, _scaled_by_hand(X).toarray().astype(np.float64))
    np.testing.assert_allclose(found, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch_size", [1, 2])
@pytest.mark.parametrize("device", ["cpu", "torch"])
def test_adagrad_starts_its_sums_at_initial_accumulator_value(batch_size, device):
    """One row twice (one step of the row at batch size 1, of their mean at 2: the same
    gradient), worked by hand: g from the FM's closed-form gradient of the log loss, then
    p - lr g / (sqrt(a + g^2) + eps)."""
    x = np.array([[0.0, 1.5, -0.5, 2.0]], np.float32)
    X, y = sp.csr_matrix(np.repeat(x, batch_size, axis=0)), np.ones(batch_size)
    a, lr = 0.3, 0.2
    hp = validate({"feature_dim": 4, "num_factors": 2, "predictor_type": "binary_classifier",
                   "mini_batch_size": batch_size, "optimizer": "adagrad", "shuffle": 0,
                   "lock_free": 0, "bias_lr": lr, "linear_lr": lr, "factors_lr": lr,
                   "bias_wd": 0, "linear_wd": 0, "factors_wd": 0, "factors_init_sigma": 0.3,
                   "initial_accumulator_value": a})
    start = init_parameters(hp)
    p = FMParameters(*(v.astype(np.float64) for v in (start.w0, start.w, start.V)))
    z = brute_force_fm(p, x.astype(np.float64))[0]
    slope = 1 / (1 + math.exp(-z)) - 1.0
    xs = x[0].astype(np.float64)
    g0, gw = slope, slope * xs
    gV = slope * xs[:, None] * (xs @ p.V - p.V * xs[:, None])

    def step(param, g):
        return param - lr * g / (np.sqrt(a + g * g) + hp["eps"])

    kwargs = {}
    if device == "torch":
        torch = pytest.importorskip("torch")
        kwargs["device"] = torch.device("cpu")
    trained, _ = train(hp, ArraySource(X, y, labels="binary"), start.copy(), progress=False,
                       **kwargs)
    np.testing.assert_allclose(trained.w0, step(p.w0, g0), rtol=1e-5)
    touched = xs != 0  # lazy: the feature the row lacks keeps its weights
    np.testing.assert_allclose(trained.w[touched], step(p.w, gw)[touched], rtol=1e-5)
    np.testing.assert_allclose(trained.V[touched], step(p.V, gV)[touched], rtol=1e-4,
                               atol=1e-7)
    np.testing.assert_array_equal(trained.V[~touched], start.V[~touched])


def test_initial_accumulator_value_is_adagrads_alone():
    with pytest.raises(HyperparameterError, match="needs optimizer=adagrad"):
        validate({"feature_dim": 4, "num_factors": 2, "predictor_type": "regressor",
                  "initial_accumulator_value": 0.1})


def test_partial_fit_with_instance_norm_trains_on_the_scaled_rows():
    """``partial_fit`` (its own engine call, not ``fit``'s) trains on the rows scaled as it
    scores them: the same weights as ``partial_fit`` on rows scaled here, without the option."""
    from fmkit.estimators import FMClassifier

    X, y = _problem()
    options = dict(num_factors=3, mini_batch_size=5, optimizer="adagrad", lock_free=0,
                   shuffle=0, bias_lr=0.1, linear_lr=0.1, factors_lr=0.1, seed=2)
    normed = FMClassifier(instance_norm=1, **options).partial_fit(X, y, classes=[0, 1])
    by_hand = FMClassifier(**options).partial_fit(_scaled_by_hand(X), y, classes=[0, 1])
    for name in ("w0", "w", "V"):
        np.testing.assert_allclose(getattr(normed.model_.params, name),
                                   getattr(by_hand.model_.params, name), atol=1e-5,
                                   err_msg=name)
