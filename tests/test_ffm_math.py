"""The field-aware FM: its reference and compiled kernels against a brute-force double loop
written here, finite differences, and the FM optimizer's numpy reference step by step."""

from __future__ import annotations

import numpy as np
import pytest

from fmkit.kernels import ffm as kernels
from fmkit.kernels.fm import LOGISTIC, SQUARED, apply_gradient
from fmkit.models.fm.ffm import reference_gradients, reference_logits
from fmkit.models.fm.hyperparameters import OPTIMIZERS, table_hyperparameters, validate
from fmkit.models.fm.parameters import FMParameters, loss_and_slope
from fmkit.train.optimizers import (
    OPTIMIZER_IDS,
    OptimizerState,
    kernel_config,
    reference_step,
    training_tables,
)

D, F, K = 30, 4, 3


def random_problem(seed: int, n: int = 25, k: int = K):
    """CSR rows of 1-7 distinct features, each with a random field; float64 weights."""
    rng = np.random.default_rng(seed)
    indptr, indices, fields, values = [0], [], [], []
    for _ in range(n):
        m = int(rng.integers(1, 8))
        indices += list(rng.choice(D, m, replace=False))
        fields += list(rng.integers(0, F, m))
        values += list(rng.normal(size=m))
        indptr.append(len(indices))
    params = FMParameters(w0=rng.normal(size=1), w=rng.normal(size=D),
                          V=rng.normal(scale=0.5, size=(D, F * k)))
    y = (rng.random(n) < 0.5).astype(np.float64)
    return (np.array(indptr, np.int64), np.array(indices, np.int32),
            np.array(fields, np.int32), np.array(values)), y, params


def in_float32(batch, y: np.ndarray, params: FMParameters):
    """The problem rounded to float32, the dtype fmkit trains in: the batch and weights whose
    float64 values are exactly the float32 ones (for the references) and the float32 copies
    the kernels run on — the production build, not a float64 build compiled for the test."""
    indptr, indices, fields, values = batch
    values32 = values.astype(np.float32)
    p32 = FMParameters(*(a.astype(np.float32) for a in (params.w0, params.w, params.V)))
    p64 = FMParameters(*(a.astype(np.float64) for a in (p32.w0, p32.w, p32.V)))
    return (((indptr, indices, fields, values32.astype(np.float64)), y, p64),
            ((indptr, indices, fields, values32), y.astype(np.float32), p32))


ATOL32 = 2e-5  # float32 kernels against the float64 references: rounding differences only


def brute_force(params: FMParameters, indptr, indices, fields, values) -> list[float]:
    """y_hat by the definition, plain Python: w0 + sum w_i x_i + sum over pairs a < b of
    sum_c v[i_a][f_b][c] * v[i_b][f_a][c] * x_a * x_b."""
    w0, w, table = float(params.w0[0]), params.w.tolist(), params.V.tolist()

    def v(feature, field):
        return table[feature][field * K:(field + 1) * K]

    out = []
    for r in range(len(indptr) - 1):
        row = list(range(indptr[r], indptr[r + 1]))
        total = w0 + sum(w[indices[a]] * values[a] for a in row)
        for p, a in enumerate(row):
            for b in row[p + 1:]:
                dot = sum(s * t for s, t in zip(v(indices[a], fields[b]),
                                                v(indices[b], fields[a])))
                total += dot * values[a] * values[b]
        out.append(total)
    return out


@pytest.mark.parametrize("seed", range(4))
def test_ffm_equals_brute_force_double_loop(seed):
    """The reference and the scoring kernel in float64 to 1e-9, and the kernel at the float32
    users score with to rounding."""
    (batch, _, params), (batch32, _, p32) = in_float32(*random_problem(seed))
    expected = brute_force(params, *batch)
    np.testing.assert_allclose(reference_logits(params, F, *batch), expected, rtol=0, atol=1e-9)
    fast = kernels.predict_logits(*batch, params.w0, params.table, K, F)
    np.testing.assert_allclose(fast, expected, rtol=0, atol=1e-9)
    fast32 = kernels.predict_logits(*batch32, p32.w0, p32.table, K, F)
    np.testing.assert_allclose(fast32, expected, rtol=0, atol=ATOL32)


@pytest.mark.parametrize("predictor_type", ["binary_classifier", "regressor"])
def test_gradients_match_finite_differences(predictor_type):
    (batch, y, params), (batch32, _, p32) = in_float32(*random_problem(7, n=12))
    if predictor_type == "regressor":
        y = np.random.default_rng(1).normal(size=y.size).astype(np.float32).astype(np.float64)

    def loss(p: FMParameters) -> float:
        z = np.array(brute_force(p, *batch))
        return float(loss_and_slope(z, y, predictor_type)[0].mean())

    g0, gw, gV = reference_gradients(params, F, *batch, y, predictor_type)
    kind = LOGISTIC if predictor_type == "binary_classifier" else SQUARED
    slot = np.full(D, -1, np.int32)
    _, k0, rows, G = kernels.minibatch_gradient(*batch32, y.astype(np.float32), 1 / y.size,
                                                kind, p32.w0, p32.table, K, F, slot)
    assert (slot == -1).all()
    dense = np.zeros((D, 1 + F * K))
    dense[rows] = G
    h = 1e-6
    checks = [("w0", (0,), g0, k0)]
    rng = np.random.default_rng(3)
    for i in rng.choice(D, 6, replace=False):
        checks.append(("w", (i,), gw[i], dense[i, 0]))
        for c in rng.choice(F * K, 3, replace=False):
            checks.append(("V", (i, c), gV[i, c], dense[i, 1 + c]))
    for name, idx, reference, fast in checks:
        plus, minus = params.copy(), params.copy()
        getattr(plus, name)[idx] += h
        getattr(minus, name)[idx] -= h
        numeric = (loss(plus) - loss(minus)) / (2 * h)
        assert reference == pytest.approx(numeric, rel=1e-5, abs=1e-7), (name, idx)
        assert fast == pytest.approx(reference, rel=1e-5, abs=1e-6), (name, idx)


@pytest.mark.parametrize("optimizer, predictor_type", [
    *((optimizer, "binary_classifier") for optimizer in OPTIMIZERS), ("adam", "regressor")])
def test_kernel_steps_match_reference_optimizer(optimizer, predictor_type):
    """Three mini-batches: the compiled gradient + the FM's compiled update (factor width
    F * k) == the reference gradient + the numpy reference step; features no
    mini-batch touched keep their weights (lazy updates)."""
    (batch, y, params), (batch32, y32, p32) = in_float32(*random_problem(11, n=30))
    indptr, indices, fields, values = batch
    hp = table_hyperparameters(validate(dict(
        feature_dim=D, num_factors=K, model_type="ffm", num_fields=F,
        predictor_type=predictor_type, optimizer=optimizer, rescale_grad=0.7, clip_gradient=0.5,
        bias_lr=0.05, linear_lr=0.03, factors_lr=0.02, bias_wd=0.01, linear_wd=0.1,
        factors_wd=0.05, initial_accumulator_value=0.1 if "adagrad" in optimizer else 0)))
    reference = params.copy()
    state = OptimizerState.initial(optimizer, reference, hp)
    bias, table = training_tables(p32.copy(), optimizer, hp)
    config = kernel_config(hp, table.dtype)
    kind = LOGISTIC if predictor_type == "binary_classifier" else SQUARED
    slot = np.full(D, -1, np.int32)
    step = 0
    for start in range(0, 30, 10):
        lo, hi = indptr[start], indptr[start + 10]
        part = (indptr[start:start + 11] - lo, indices[lo:hi], fields[lo:hi], values[lo:hi])
        grads = reference_gradients(reference, F, *part, y[start:start + 10], predictor_type)
        reference_step(reference, state, grads, np.unique(part[1]), hp)
        part32 = (*part[:3], batch32[3][lo:hi])
        _, g0, rows, G = kernels.minibatch_gradient(*part32, y32[start:start + 10], 1 / 10,
                                                    kind, bias[0, :1], table, K, F, slot)
        step = apply_gradient(rows, G, g0, OPTIMIZER_IDS[optimizer], config, bias, table,
                              F * K, step, 1, K)
    assert step == state.step == 3
    np.testing.assert_allclose(bias[0, 0], reference.w0[0], rtol=0, atol=ATOL32)
    np.testing.assert_allclose(table[:, : 1 + F * K], reference.table, rtol=0, atol=ATOL32)
    untouched = np.setdiff1d(np.arange(D), indices)
    np.testing.assert_array_equal(table[untouched, : 1 + F * K], p32.table[untouched])


def test_fields_outside_the_table_are_refused_before_any_compiled_code():
    batch, y, params = random_problem(2, n=5)
    indptr, indices, fields, values = batch
    bad = fields.copy()
    bad[-1] = F  # one past the last field: would read past the row
    with pytest.raises(ValueError, match="field is outside 0..3"):
        kernels.predict_logits(indptr, indices, bad, values, params.w0, params.table, K, F)
    with pytest.raises(ValueError, match="fewer than"):
        kernels.predict_logits(indptr, indices, fields, values, params.w0,
                               params.table[:, :5], K, F)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_chunk_trainer_equals_reference_steps(optimizer):
    """The compiled chunk trainer (the learner's path) == the numpy reference, one reference
    step per mini-batch (of 1 row: per-row training, and of 7)."""
    for batch_size in (1, 7):
        _check_chunk_trainer(optimizer, batch_size)
    for k in (K, 8, 11):  # k >= 8: the factor vectors also go eight coordinates at a time
        _check_chunk_trainer(optimizer, 1, per_row=True, k=k)


def _check_chunk_trainer(optimizer: str, batch_size: int, per_row: bool = False,
                         k: int = K) -> None:
    """``per_row``: the fused per-row loop (:func:`kernels.train_online`, what the learner runs
    at mini_batch_size=1) instead of mini-batches of ``batch_size``."""
    (batch, y, params), (batch32, y32, p32) = in_float32(*random_problem(13, n=21, k=k))
    indptr, indices, fields, values = batch
    hp = table_hyperparameters(validate(dict(
        feature_dim=D, num_factors=k, model_type="ffm", num_fields=F,
        predictor_type="binary_classifier", optimizer=optimizer, bias_lr=0.05, linear_lr=0.03,
        factors_lr=0.02, linear_wd=0.1, factors_wd=0.05)))
    reference = params.copy()
    state = OptimizerState.initial(optimizer, reference, hp)
    for start in range(0, 21, batch_size):
        stop = min(start + batch_size, 21)
        lo, hi = indptr[start], indptr[stop]
        part = (indptr[start:stop + 1] - lo, indices[lo:hi], fields[lo:hi], values[lo:hi])
        grads = reference_gradients(reference, F, *part, y[start:stop], "binary_classifier")
        reference_step(reference, state, grads, np.unique(part[1]), hp)
    bias, table = training_tables(p32.copy(), optimizer, hp)
    slot = np.full(D, -1, np.int32)
    touched = np.zeros(D, np.int32)
    G = np.zeros((D, 1 + F * k))
    if per_row:
        _, steps = kernels.train_online(*batch32, y32, LOGISTIC, OPTIMIZER_IDS[optimizer],
                                        kernel_config(hp, table.dtype), bias, table, k, F, 0)
    else:
        _, steps = kernels.train_minibatches(*batch32, y32, batch_size,
                                             LOGISTIC, OPTIMIZER_IDS[optimizer],
                                             kernel_config(hp, table.dtype), bias, table, k, F,
                                             slot, touched, np.zeros(indices.size, np.int32),
                                             G, 0)
    assert steps == state.step and (slot == -1).all()
    np.testing.assert_allclose(bias[0, 0], reference.w0[0], rtol=0, atol=ATOL32)
    np.testing.assert_allclose(table[:, : 1 + F * k], reference.table, rtol=0, atol=ATOL32)


@pytest.mark.parametrize("k", [K, 8, 11])  # coordinates one by one, one vector, and both
def test_rowwise_adagrad_keeps_one_sum_per_field_vector(k):
    """One step of ``rowwise_adagrad`` on an FFM's table, by the reference and by the compiled
    update, against a plain loop: each field vector of k factors (and each linear weight) has
    one sum, grown by the vector's mean squared gradient (fbgemm's row-wise AdaGrad)."""
    rng = np.random.default_rng(4)
    params = FMParameters(w0=rng.normal(size=1), w=rng.normal(size=D),
                          V=rng.normal(size=(D, F * k)))
    gw, gV = rng.normal(size=D), rng.normal(size=(D, F * k))
    touched = np.array([1, 4, 5])
    hp = table_hyperparameters(validate(dict(
        feature_dim=D, num_factors=k, model_type="ffm", num_fields=F, optimizer="rowwise_adagrad",
        predictor_type="regressor",
        linear_lr=0.3, factors_lr=0.2, factors_wd=0.05, initial_accumulator_value=0.1)))
    expected = params.copy()
    for i in touched:
        g = gw[i] + hp["linear_wd"] * params.w[i]
        expected.w[i] -= 0.3 * g / (np.sqrt(0.1 + g * g) + hp["eps"])
        for f in range(F):
            v = params.V[i, f * k:(f + 1) * k]
            g = gV[i, f * k:(f + 1) * k] + 0.05 * v
            s = 0.1 + sum(x * x for x in g) / k
            expected.V[i, f * k:(f + 1) * k] = v - 0.2 * g / (np.sqrt(s) + hp["eps"])
    reference = params.copy()
    state = OptimizerState.initial("rowwise_adagrad", reference, hp)
    reference_step(reference, state, (0.0, gw, gV), touched, hp)
    np.testing.assert_allclose(reference.table, expected.table, rtol=1e-12, atol=1e-12)
    p32 = FMParameters(*(a.astype(np.float32) for a in (params.w0, params.w, params.V)))
    bias, table = training_tables(p32, "rowwise_adagrad", hp)
    assert table.shape[1] < 1 + 2 * F * k  # a sum per vector, not per weight
    apply_gradient(touched, np.c_[gw, gV][touched], 0.0, OPTIMIZER_IDS["rowwise_adagrad"],
                   kernel_config(hp, table.dtype), bias, table, F * k, 0, 1, k)
    np.testing.assert_allclose(table[:, : 1 + F * k], expected.table, rtol=1e-5, atol=1e-5)


def test_sample_weights_count_as_repeated_rows():
    """A row of integer weight w adds what w copies of it add to a mini-batch's summed
    gradient and loss (0: nothing), per row or in a batch."""
    (_, _, _), (batch32, y32, p32) = in_float32(*random_problem(9))
    indptr, indices, fields, values = batch32
    weights = np.random.default_rng(2).integers(0, 4, y32.size).astype(np.float32)
    repeat = np.repeat(np.arange(y32.size), weights.astype(int))
    pieces = [np.arange(indptr[r], indptr[r + 1]) for r in repeat]
    repeated = (np.concatenate([[0], np.cumsum([len(q) for q in pieces])]).astype(np.int64),
                *(a[np.concatenate(pieces)] for a in (indices, fields, values)))
    slot = np.full(D, -1, np.int32)
    results = [kernels.minibatch_gradient(*rows, labels, 1.0, LOGISTIC, p32.w0, p32.table, K, F,
                                          slot, weights=w)
               for rows, labels, w in ((batch32, y32, weights), (repeated, y32[repeat], None))]
    (loss, g0, ids, G), (loss_r, g0_r, ids_r, G_r) = results
    assert loss == pytest.approx(loss_r, rel=1e-5) and g0 == pytest.approx(g0_r, rel=1e-5)
    dense, dense_r = np.zeros((D, G.shape[1])), np.zeros((D, G.shape[1]))
    dense[ids], dense_r[ids_r] = G, G_r
    np.testing.assert_allclose(dense, dense_r, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch_size", [1, 7])
def test_training_in_a_given_order_equals_training_the_permuted_rows(batch_size):
    """The FFM's kernels take a chunk's shuffled row order instead of a copy of the rows in
    it (as the FM's): one learner step on a chunk and an order equals one on the rows
    rearranged into that order. Rows alternate long and short, and the order puts the long
    ones first: its first mini-batch holds more nonzeros than any in the stored order, and the
    learner's buffers are sized for that."""
    from fmkit.data.batch import SparseBatch, take
    from fmkit.models.fm.parameters import starting_point
    from fmkit.train.kernel_learner import fm_learner

    rng = np.random.default_rng(5)
    lengths = np.tile([9, 1], 7)
    indptr = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    indices = np.concatenate([rng.choice(D, n, replace=False) for n in lengths]).astype(np.int32)
    fields = rng.integers(0, F, indices.size).astype(np.int32)
    values = rng.normal(size=indices.size).astype(np.float32)
    labels = (rng.random(lengths.size) < 0.5).astype(np.float32)
    chunk = SparseBatch(indptr, indices, values, labels, fields=fields)
    order = np.r_[np.arange(0, 14, 2), np.arange(1, 14, 2)].astype(np.int64)
    hp = starting_point(validate(dict(
        feature_dim=D, num_factors=K, model_type="ffm", num_fields=F, mini_batch_size=batch_size,
        predictor_type="binary_classifier", optimizer="adagrad", lock_free=0)), 0.5)
    results, learners = [], []
    for rows, row_order in ((chunk, order), (take(chunk, order), np.zeros(0, np.int64))):
        learners.append(fm_learner(hp))
        loss, _ = learners[-1].step((rows, row_order))
        results.append((loss, learners[-1].table.copy(), learners[-1].bias.copy()))
    if batch_size > 1:  # (a buffer written past its end corrupted the heap, results unchanged)
        largest = max(lengths[order][i:i + batch_size].sum() for i in range(0, 14, batch_size))
        assert learners[0].ws.positions.size >= largest
    assert results[0][0] == results[1][0]  # the same arithmetic in the same order
    np.testing.assert_array_equal(results[0][1], results[1][1])
    np.testing.assert_array_equal(results[0][2], results[1][2])
