"""The FM function, its gradients and one optimizer step: reference and kernels vs independent
computations (a brute-force double loop, finite differences, step-by-step numpy)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from fmkit.data.batch import SparseBatch
from fmkit.kernels import fm as kernels
from fmkit.models.fm.hyperparameters import OPTIMIZERS, validate
from fmkit.models.fm.parameters import FMParameters, reference_gradients, reference_logits
from fmkit.train.kernel_learner import Workspace, train_chunk
from fmkit.train.optimizers import OptimizerState, kernel_config, reference_step, training_tables

PREDICTORS = ("binary_classifier", "regressor")


def brute_force_fm(params: FMParameters, X: np.ndarray) -> np.ndarray:
    """y_hat by the definition: O(n^2 k) double loop over feature pairs."""
    out = np.empty(X.shape[0])
    d = X.shape[1]
    for r in range(X.shape[0]):
        x = X[r]
        total = params.w0[0] + sum(params.w[i] * x[i] for i in range(d))
        for i in range(d):
            for j in range(i + 1, d):
                total += float(np.dot(params.V[i], params.V[j])) * x[i] * x[j]
        out[r] = total
    return out


def random_problem(seed: int, n: int = 40, d: int = 25, k: int = 5, density: float = 0.25):
    rng = np.random.default_rng(seed)
    X = sp.random(n, d, density=density, random_state=seed, format="csr", dtype=np.float64)
    X.data = rng.normal(size=X.data.size)
    params = FMParameters(w0=rng.normal(size=1), w=rng.normal(size=d),
                          V=rng.normal(scale=0.5, size=(d, k)))
    y = (rng.random(n) < 0.5).astype(np.float64)
    return X, y, params


def in_float32(X: sp.csr_matrix, y: np.ndarray, params: FMParameters):
    """The problem rounded to float32, the dtype fmkit trains in: (X, y, params) whose float64
    values are exactly the float32 ones, for the numpy reference, and the float32 copies the
    kernels train. (Comparing at the production dtype, not a float64 build of the kernels, also
    spares compiling every kernel a second time.)"""
    X64 = X.copy()
    X64.data = X.data.astype(np.float32).astype(np.float64)
    p64 = FMParameters(*(a.astype(np.float32).astype(np.float64)
                         for a in (params.w0, params.w, params.V)))
    X32 = X64.astype(np.float32)
    p32 = FMParameters(*(a.astype(np.float32) for a in (params.w0, params.w, params.V)))
    return (X64, y, p64), (X32, y.astype(np.float32), p32)


# float32 kernels against the float64 reference, a few steps in: rounding differences only
ATOL32 = 2e-5


def kernel_logits(params: FMParameters, X: sp.csr_matrix) -> np.ndarray:
    out = np.empty(X.shape[0])
    kernels.predict_logits(X.indptr.astype(np.int64), X.indices.astype(np.int32), X.data,
                           params.w0, params.table, params.num_factors, out, 3)
    return out


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k", [5, 8, 21])
def test_fm_equals_brute_force_double_loop(seed, k):
    """k=5: factors one by one; 8: one vector of eight; 21: two vectors and five one by one."""
    X, _, params = random_problem(seed, k=k)
    expected = brute_force_fm(params, X.toarray())
    np.testing.assert_allclose(reference_logits(params, X), expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(kernel_logits(params, X), expected, rtol=0, atol=1e-9)


def test_kernel_on_a_strided_table_view():
    """A column view of a wider table (as validation scores the training table's weights) is
    read through its stride."""
    X, _, params = random_problem(3, k=8)
    wide = np.zeros((params.table.shape[0], 2 * params.table.shape[1]))
    wide[:, : params.table.shape[1]] = params.table
    view = FMParameters.from_table(params.w0, wide[:, : params.table.shape[1]])
    np.testing.assert_allclose(kernel_logits(view, X), brute_force_fm(params, X.toarray()),
                               rtol=0, atol=1e-9)


def test_kernel_float32_weights_close_to_float64():
    X, _, params = random_problem(11, n=200, d=60, k=8)
    p32 = FMParameters(*(a.astype(np.float32) for a in (params.w0, params.w, params.V)))
    X32 = X.astype(np.float32)
    expected = brute_force_fm(p32, X32.toarray().astype(np.float64))
    np.testing.assert_allclose(kernel_logits(p32, X32), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("predictor_type", PREDICTORS)
def test_gradients_match_finite_differences(predictor_type):
    X, y, params = random_problem(3, n=15, d=8, k=3, density=0.5)
    if predictor_type == "regressor":
        y = np.random.default_rng(0).normal(size=y.size)

    def loss(p: FMParameters) -> float:
        z = brute_force_fm(p, X.toarray())
        if predictor_type == "regressor":
            return float(np.mean((z - y) ** 2))
        return float(np.mean(np.log1p(np.exp(-z)) + (1 - y) * z))

    g0, gw, gV = reference_gradients(params, X, y, predictor_type)
    h = 1e-6
    for name, grad in (("w0", np.array([g0])), ("w", gw), ("V", gV)):
        array = getattr(params, name)
        numeric = np.zeros_like(array)
        for idx in np.ndindex(array.shape):
            plus, minus = params.copy(), params.copy()
            getattr(plus, name)[idx] += h
            getattr(minus, name)[idx] -= h
            numeric[idx] = (loss(plus) - loss(minus)) / (2 * h)
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-7, err_msg=name)


def _kernel_train(params, X, y, hp, batch_size, epochs=1, parts=1, weights=None):
    """Train ``params`` in place with the compiled kernels (rows or mini-batches cut into
    ``parts`` thread parts; each row's loss times ``weights``); returns the summed loss and
    the step count."""
    d, k = params.V.shape
    hp = {**hp, "mini_batch_size": batch_size}
    bias, table = training_tables(params, hp["optimizer"], hp)
    ws = Workspace.create(d, k, parts, table.dtype, batch_size)
    batch = SparseBatch(X.indptr.astype(np.int64), X.indices.astype(np.int32), X.data, y,
                        weights=weights)
    kind = kernels.LOGISTIC if hp["predictor_type"] == "binary_classifier" else kernels.SQUARED
    step, total = 0, 0.0
    for _ in range(epochs):
        loss, step = train_chunk(hp, batch, kind, kernel_config(hp, table.dtype), bias, table,
                                 ws, step)
        total += loss
    if batch_size > 1:
        assert (ws.slot == -1).all(), "the kernel must leave its slot map clean"
    params.table[:] = table[:, : k + 1]
    params.w0[:] = bias[0, :1]
    return total, step


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("predictor_type", PREDICTORS)
@pytest.mark.parametrize("clip", [None, 0.02])
@pytest.mark.parametrize("k", [4, 13, 16])
def test_kernel_steps_match_reference_optimizer(optimizer, predictor_type, clip, k):
    """Three mini-batches through the kernel == three numpy reference steps (k=4:
    coordinates one by one; 13: eight as a vector, five one by one; 16: two vectors)."""
    (X, y, params), (X32, y32, fast) = in_float32(*random_problem(5, n=30, d=20, k=k))
    hp = validate(dict(feature_dim=20, num_factors=k, predictor_type=predictor_type,
                       optimizer=optimizer, clip_gradient=clip, rescale_grad=0.7,
                       bias_lr=0.05, linear_lr=0.03, factors_lr=0.02, bias_wd=0.01,
                       linear_wd=0.1, factors_wd=0.05))
    reference = params.copy()
    ref_state = OptimizerState.initial(optimizer, reference, hp)
    for start in range(0, 30, 10):
        rows = X[start:start + 10]
        grads = reference_gradients(reference, rows, y[start:start + 10], predictor_type)
        reference_step(reference, ref_state, grads, np.unique(rows.indices), hp)
    _, steps = _kernel_train(fast, X32, y32, hp, batch_size=10)
    assert steps == ref_state.step == 3
    for name in ("w0", "w", "V"):
        np.testing.assert_allclose(getattr(fast, name), getattr(reference, name), rtol=0,
                                   atol=ATOL32, err_msg=name)
    # untouched features keep their weights: the updates are lazy
    untouched = np.setdiff1d(np.arange(20), X.indices)
    np.testing.assert_array_equal(fast.V[untouched], params.V[untouched])


def test_kernel_loss_is_mean_loss_before_update():
    (X, y, params), (X32, y32, p32) = in_float32(*random_problem(8, n=12))
    hp = validate(dict(feature_dim=25, num_factors=5, predictor_type="binary_classifier"))
    z = brute_force_fm(params, X.toarray())
    expected = np.sum(np.log1p(np.exp(-z)) + (1 - y) * z)
    loss, _ = _kernel_train(p32, X32, y32, hp, 12)
    assert loss == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("batch_size", [1, 10])
@pytest.mark.parametrize("predictor_type", PREDICTORS)
def test_sample_weights_scale_each_rows_loss(batch_size, predictor_type):
    """A row's sample weight multiplies its loss: each step equals the reference step on the
    gradient of the weighted losses' sum over the batch's rows (per row, and in batches), and
    the summed loss is the weighted one."""
    (X, y, params), (X32, y32, fast) = in_float32(*random_problem(7, n=30, d=20, k=4))
    weights = np.random.default_rng(4).choice([0.0, 0.5, 1.0, 3.0], 30).astype(np.float32)
    hp = validate(dict(feature_dim=20, num_factors=4, predictor_type=predictor_type,
                       optimizer="adam", bias_lr=0.05, linear_lr=0.03, factors_lr=0.02,
                       linear_wd=0.01, factors_wd=0.02, lock_free=0))
    reference = params.copy()
    state = OptimizerState.initial("adam", reference, hp)
    expected_loss = 0.0
    for start in range(0, 30, batch_size):
        rows = slice(start, start + batch_size)
        per_row = [reference_gradients(reference, X[r], y[r:r + 1], predictor_type)
                   for r in range(start, start + batch_size)]
        z = brute_force_fm(reference, X[rows].toarray())
        losses = (np.log1p(np.exp(-np.abs(z))) + np.maximum(z, 0) - z * y[rows]
                  if predictor_type == "binary_classifier" else (z - y[rows]) ** 2)
        expected_loss += float(np.dot(weights[rows], losses))
        w = weights[rows].astype(np.float64)
        grads = tuple(sum(wr * g[part] for wr, g in zip(w, per_row)) / batch_size
                      for part in range(3))
        reference_step(reference, state, grads, np.unique(X[rows].indices), hp)
    loss, _ = _kernel_train(fast, X32, y32, hp, batch_size, weights=weights)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    for name in ("w0", "w", "V"):
        np.testing.assert_allclose(getattr(fast, name), getattr(reference, name), rtol=0,
                                   atol=ATOL32, err_msg=name)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("k", [4, 8, 13])
def test_online_kernel_matches_reference_one_row_at_a_time(optimizer, k):
    """mini_batch_size=1 runs the fused loop: it must equal one reference step per row."""
    (X, y, params), (X32, y32, fast) = in_float32(*random_problem(6, n=25, d=20, k=k))
    hp = validate(dict(feature_dim=20, num_factors=k, predictor_type="binary_classifier",
                       optimizer=optimizer, mini_batch_size=1, clip_gradient=0.5,
                       bias_lr=0.05, linear_lr=0.03, factors_lr=0.02, linear_wd=0.01,
                       factors_wd=0.02))
    reference = params.copy()
    state = OptimizerState.initial(optimizer, reference, hp)
    for r in range(25):
        row = X[r]
        grads = reference_gradients(reference, row, y[r:r + 1], "binary_classifier")
        reference_step(reference, state, grads, row.indices, hp)
    _kernel_train(fast, X32, y32, hp, batch_size=1)
    for name in ("w0", "w", "V"):
        np.testing.assert_allclose(getattr(fast, name), getattr(reference, name), rtol=0,
                                   atol=ATOL32, err_msg=name)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_minibatch_training_is_the_same_on_any_thread_count(optimizer, tmp_path):
    """Mini-batches train on one thread while another reads ahead: the model is bit for bit
    the same with 1 and 2 numba threads, from a file (read on a background thread) and from
    memory alike, and its steps equal the numpy reference's."""
    import numba
    from sklearn.datasets import dump_svmlight_file

    from fmkit.data.sources import ArraySource, FileSource
    from fmkit.jobs.training import train

    (X, y, params), (_, _, params32) = in_float32(*random_problem(9, n=64, d=30, k=5))
    path = tmp_path / "train.libsvm"
    dump_svmlight_file(X, y, str(path), zero_based=True)
    hp = validate(dict(feature_dim=30, num_factors=5, predictor_type="binary_classifier",
                       optimizer=optimizer, mini_batch_size=16, clip_gradient=0.3, shuffle=0,
                       epochs=2, bias_lr=0.05, linear_lr=0.03, factors_lr=0.02, linear_wd=0.01))
    reference = params.copy()
    state = OptimizerState.initial(optimizer, reference, hp)
    for start in list(range(0, 64, 16)) * 2:
        rows = X[start:start + 16]
        grads = reference_gradients(reference, rows, y[start:start + 16], "binary_classifier")
        reference_step(reference, state, grads, np.unique(rows.indices), hp)
    before = numba.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            numba.set_num_threads(threads)
            for source in (FileSource(path, "libsvm", 30, 0, labels="binary"),
                           ArraySource(X, y, labels="binary")):
                trained, _ = train(hp, source, params32.copy(), progress=False)
                results.append(trained)
    finally:
        numba.set_num_threads(before)
    for trained in results:
        for name in ("w0", "w", "V"):
            np.testing.assert_array_equal(getattr(trained, name), getattr(results[0], name))
            np.testing.assert_allclose(getattr(trained, name), getattr(reference, name), rtol=0,
                                       atol=ATOL32, err_msg=name)


def _planted_auc(hp, threads: int) -> tuple[float, float, int]:
    """Train on a planted CTR problem with ``threads`` numba threads; (test AUC, oracle AUC,
    rows trained)."""
    import numba
    from sklearn.metrics import roc_auc_score

    from fmkit.data.sources import ArraySource
    from fmkit.jobs.training import train
    from fmkit.models.fm.model import FMModel
    from fmkit.models.fm.planted import planted_ctr

    train_part, test_part = planted_ctr(80000, [300, 200, 100, 50, 20], seed=11).split(60000)
    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        params, history = train(hp, ArraySource(train_part.X, train_part.y, labels="binary"),
                                progress=False)
    finally:
        numba.set_num_threads(before)
    model = FMModel(hp, params)
    scores = model.logits(next(ArraySource(test_part.X, test_part.y).blocks()))
    return (roc_auc_score(test_part.y, scores), roc_auc_score(test_part.y, test_part.probability),
            history[0].rows)


@pytest.mark.parametrize("optimizer,lr", [("sgd", 0.01), ("adagrad", 0.05), ("adam", 0.003),
                                          ("ftrl", 0.05)])
def test_lock_free_two_threads_learn_as_well_as_one(optimizer, lr):
    """Hogwild per-row training on 2 threads sees every row once and reaches the 1-thread AUC
    (within 0.02); both learn the planted model (AUC > 0.72; the oracle, the planted model's own
    probabilities, scores 0.81 and chance 0.5)."""
    hp = validate(dict(feature_dim=670, num_factors=4, predictor_type="binary_classifier",
                       mini_batch_size=1, optimizer=optimizer, epochs=2, bias_lr=lr,
                       linear_lr=lr, factors_lr=lr, bias_wd=0, linear_wd=1e-5, factors_wd=1e-5))
    one, oracle, rows_one = _planted_auc({**hp, "lock_free": 0}, threads=1)
    two, _, rows_two = _planted_auc(hp, threads=2)
    print(f"{optimizer}: test AUC 1 thread {one:.4f}, 2 threads lock-free {two:.4f}, "
          f"oracle {oracle:.4f}")
    assert rows_one == rows_two == 60000
    assert abs(one - two) < 0.02  # Hogwild interleaving varies from run to run
    assert min(one, two) > 0.72 and oracle > 0.8


@pytest.mark.parametrize("batch_size", [1, 7])
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_training_in_a_given_order_equals_training_the_permuted_rows(optimizer, batch_size):
    """Shuffling passes a row order to the kernels instead of copying rows (per row, and in
    mini-batches, the last one smaller): the result must be that of training on the rows
    rearranged into that order, which the other tests hold to the reference."""
    from fmkit.data.batch import take

    _, (X, y, params) = in_float32(*random_problem(12, n=40, d=20, k=4))
    hp = validate(dict(feature_dim=20, num_factors=4, predictor_type="binary_classifier",
                       optimizer=optimizer, mini_batch_size=batch_size, lock_free=0,
                       bias_lr=0.05, linear_lr=0.03, factors_lr=0.02))
    order = np.random.default_rng(3).permutation(40)
    batch = SparseBatch(X.indptr.astype(np.int64), X.indices.astype(np.int32), X.data, y)
    results = []
    for chunk, row_order in ((batch, order), (take(batch, order), np.zeros(0, np.int64))):
        bias, table = training_tables(params.copy(), optimizer, hp)
        ws = Workspace.create(20, 4, 1, table.dtype, batch_size)
        loss, _ = train_chunk(hp, chunk, kernels.LOGISTIC, kernel_config(hp, table.dtype), bias,
                              table, ws, 0, row_order)
        results.append((loss, table.copy(), bias.copy()))
    assert results[0][0] == results[1][0]  # the same arithmetic in the same order
    np.testing.assert_array_equal(results[0][1], results[1][1])
    np.testing.assert_array_equal(results[0][2], results[1][2])


def test_lanes_arithmetic_equals_numpy():
    """The eight-coordinate vectors of the training kernels: loads (converting float64 to the
    float32 of ``like``), + - * /, unary minus, min, max and sqrt with scalars broadcast, store."""
    from numba import njit

    from fmkit.kernels.lanes import load_lanes, store_lanes

    @njit
    def combine(a, b, g, out):
        x, y, z = load_lanes(a, 1, a), load_lanes(b, 0, a), load_lanes(g, 2, a)
        clipped = min(max(x * np.float32(2.0) - y / z, -np.float32(0.5)), np.float32(3.0))
        store_lanes(out, 1, clipped + np.sqrt(y) - (-x) * 0.5)

    rng = np.random.default_rng(0)
    a = rng.normal(size=10).astype(np.float32)
    b = rng.random(10).astype(np.float32)
    g = rng.random(12) + 0.5
    out = np.zeros(10, np.float32)
    combine(a, b, g, out)
    x, y, z = a[1:9], b[:8], g[2:10].astype(np.float32)
    expected = np.minimum(np.maximum(x * 2 - y / z, -0.5), 3.0) + np.sqrt(y) + x * 0.5
    np.testing.assert_allclose(out[1:9], expected, rtol=1e-6)
    assert out[0] == out[9] == 0  # nothing outside the eight lanes is written


def test_inverse_root_is_within_a_few_units_in_the_last_place():
    """AdaGrad's 1 / (sqrt(s) + eps), eight lanes and one value at a time: with eps 0 (the
    kernels' estimate path where the processor has one) within 8 float32 units in the last
    place of the float64 value over sums from 1e-30 to 1e30 (x86 documents the estimate's
    relative error as at most 1.5 x 2^-12; one Newton step leaves (3/2) e^2 plus rounding,
    under 5 units: docs/performance.md, session 53); with eps > 0 the exact formula, also at
    s = 0. An unrefined estimate is off by thousands of units and fails."""
    from numba import njit

    from fmkit.kernels.lanes import inverse_root, load_lanes, store_lanes

    @njit
    def roots(acc, eps, out, one):  # ``out``: eight at a time (whole groups); ``one``: each
        for start in range(0, acc.size - 7, 8):
            store_lanes(out, start, inverse_root(load_lanes(acc, start, acc), eps))
        for i in range(acc.size):
            one[i] = inverse_root(acc[i], eps)

    rng = np.random.default_rng(0)
    acc = (10.0 ** rng.uniform(-30, 30, 4099)).astype(np.float32)
    lanes = slice(0, acc.size - acc.size % 8)
    for eps in (np.float32(0.0), np.float32(1e-8), np.float32(0.5)):
        out, one = np.zeros_like(acc), np.zeros_like(acc)
        roots(acc, eps, out, one)
        exact = 1.0 / (np.sqrt(acc.astype(np.float64)) + np.float64(eps))
        ulp = np.spacing(exact.astype(np.float32)).astype(np.float64)
        assert np.max(np.abs(out[lanes] - exact[lanes]) / ulp[lanes]) <= 8
        assert np.max(np.abs(one - exact) / ulp) <= 8
    zero = np.zeros(16, np.float32)
    out, one = np.zeros_like(zero), np.zeros_like(zero)
    roots(zero, np.float32(1e-8), out, one)
    np.testing.assert_allclose(out, 1e8, rtol=1e-6)
    np.testing.assert_allclose(one, 1e8, rtol=1e-6)


def test_kernels_drop_an_eps_only_where_it_cannot_change_a_step():
    """kernel_eps is 0 only where AdaGrad's sums start at s0 with eps / sqrt(s0) at most the
    table dtype's unit roundoff; and an AdaGrad step with eps 0 equals the float64 reference
    step with eps (the step of the FFM's defaults: s0 0.1, eps 1e-8)."""
    from fmkit.train.optimizers import kernel_eps

    base = dict(feature_dim=20, num_factors=4, predictor_type="binary_classifier",
                optimizer="adagrad")
    assert kernel_eps(validate({**base, "initial_accumulator_value": 0.1})) == 1e-8  # float64
    assert kernel_eps(validate({**base, "initial_accumulator_value": 0.1}), np.float32) == 0.0
    assert kernel_eps(validate({**base, "initial_accumulator_value": 1e-10}), np.float32) == 1e-8
    assert kernel_eps(validate({**base, "initial_accumulator_value": 0.1, "eps": 1e-6}),
                      np.float32) == pytest.approx(1e-6)
    assert kernel_eps(validate({**base, "initial_accumulator_value": 0.0}), np.float32) == 1e-8
    assert kernel_eps(validate({**base, "optimizer": "adam"}), np.float32) == 1e-8

    (X, y, params), (X32, y32, fast) = in_float32(*random_problem(5, n=40, d=20, k=8))
    hp = validate({**base, "num_factors": 8, "initial_accumulator_value": 0.1,
                   "mini_batch_size": 1, "lock_free": 0, "bias_lr": 0.2, "linear_lr": 0.2,
                   "factors_lr": 0.2})
    assert kernel_config(hp, np.float32)[kernels.EPS] == 0.0
    reference = params.copy()
    state = OptimizerState.initial("adagrad", reference, hp)
    for r in range(40):
        grads = reference_gradients(reference, X[r], y[r:r + 1], "binary_classifier")
        reference_step(reference, state, grads, X[r].indices, hp)
    _kernel_train(fast, X32, y32, hp, batch_size=1)
    for name in ("w0", "w", "V"):
        np.testing.assert_allclose(getattr(fast, name), getattr(reference, name), rtol=0,
                                   atol=ATOL32, err_msg=name)


@pytest.mark.skipif(__import__("platform").machine() != "x86_64",
                    reason="the flush-to-zero mode is x86-64's (elsewhere the calls do nothing)")
def test_kernels_read_denormals_as_zero_and_give_the_thread_its_float_mode_back():
    """Inside a kernel a denormal weight reads as 0 (1e-39 x 1e30 scores 0, not the 1e-9 of
    IEEE arithmetic: the FM's and the FFM's scorers, and their training steps, which flush
    denormal results to 0); after it, numpy on the same thread has IEEE semantics again."""
    from fmkit.kernels import ffm

    tiny = np.float32(1e-39)
    assert 0 < tiny < np.finfo(np.float32).tiny  # a denormal
    indptr, indices = np.array([0, 1], np.int64), np.array([0], np.int32)
    values, w0 = np.array([1e30], np.float32), np.zeros(1, np.float32)
    table = np.zeros((2, 3), np.float32)
    table[0, 0] = tiny
    out = np.full(1, np.nan)
    kernels.predict_logits_serial(indptr, indices, values, w0, table, 2, out)
    assert out[0] == 0.0
    assert np.float32(1e-38) / np.float32(100) > 0  # IEEE again: the quotient is a denormal
    fields = np.zeros(1, np.int32)
    assert ffm.predict_logits(indptr, indices, fields, values, w0, table, 2, 1)[0] == 0.0
    assert np.float32(1e-38) / np.float32(100) > 0
    # a training step whose exact result is a denormal stores 0: SGD on a squared loss from
    # w = 3e-38 (z = w x, x = 1) towards y = 1.75e-38: slope 2 (z - y) = 2.5e-38, and
    # w - lr slope x = 5e-39, below the smallest normal float32
    hp = validate(dict(feature_dim=2, num_factors=2, predictor_type="regressor",
                       optimizer="sgd", mini_batch_size=1, lock_free=0, bias_lr=0.0,
                       linear_lr=1.0, factors_lr=0.0, linear_wd=0.0, bias_wd=0.0))
    params = FMParameters(np.zeros(1, np.float32), np.array([3e-38, 0.0], np.float32),
                          np.zeros((2, 2), np.float32))
    bias, table = training_tables(params, "sgd", hp)
    assert table.dtype == np.float32
    ws = Workspace.create(2, 2, 1, table.dtype, 1)
    batch = SparseBatch(np.array([0, 1], np.int64), np.array([0], np.int32),
                        np.array([1.0], np.float32), np.array([1.75e-38], np.float32))
    w = np.float32(3e-38) - np.float32(2 * (np.float64(np.float32(3e-38))
                                            - np.float64(np.float32(1.75e-38))))
    assert 0 < w < np.finfo(np.float32).tiny  # what IEEE arithmetic would store
    train_chunk(hp, batch, kernels.SQUARED, kernel_config(hp, table.dtype), bias, table, ws, 0)
    assert table[0, 0] == 0.0
    assert np.float32(1e-38) / np.float32(100) > 0
