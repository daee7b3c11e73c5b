"""Compiled FFM kernels: scoring, and the gradient of a mini-batch.

They compute the functions of :mod:`fmkit.models.fm.ffm` (the tests hold them to it) on CSR
batches with a field per nonzero. The weight table is the FM's layout with a factor width of
``num_fields * k`` (a row ``[w_i, v_{i,0}, .., v_{i,F-1}]``, then the optimizer's moments), so
an optimizer step is the FM's own: :func:`fmkit.kernels.fm.apply_gradient` with
``k = num_fields * k``.

The public functions check that every field is below ``num_fields`` before any compiled code
runs (ids below ``feature_dim`` are the sources' check, as for the FM): no table read is out of
bounds whatever the input holds.
"""

from __future__ import annotations

import numpy as np

from fmkit.compile_cache import kernel, kernel_helper
from fmkit.kernels.float_mode import flush_denormals, restore_float_mode
from fmkit.kernels.fm import (
    BETA1,
    BETA2,
    FAST,
    NO_ORDER,
    NO_WEIGHTS,
    _adam_scales,
    _distinct_features,
    _frozen,
    _like,
    _per_rule,
    _prefetch_ahead,
    _prefetch_entries,
    _row_at,
    _row_loss_and_bias_step,
    _update_feature,
    _update_feature_rowwise,
    _weighted_loss_and_slope,
    kernel_rules,
    lock_free,
    step_minibatch,
    step_minibatch_rowwise,
)
from fmkit.kernels.lanes import LANES, lanes_sum, load_lanes, store_lanes, zero_lanes


@kernel_helper(fastmath=FAST, error_model="numpy")
def _dot(row_a, at_a, row_b, at_b, k):
    """<row_a[at_a:at_a + k], row_b[at_b:at_b + k]> in the rows' dtype, eight coordinates at
    a time as vectors (:mod:`fmkit.kernels.lanes`), then the rest one by one."""
    dot = _like(0.0, row_a)
    start = 0
    while start + LANES <= k:
        dot += lanes_sum(load_lanes(row_a, at_a + start, row_a)
                         * load_lanes(row_b, at_b + start, row_a))
        start += LANES
    for c in range(start, k):
        dot += row_a[at_a + c] * row_b[at_b + c]
    return dot


@kernel_helper(fastmath=FAST, error_model="numpy")
def _row_forward(indptr, indices, fields, values, r, T, k):
    """y_hat - w0 of row ``r`` (float64): the linear terms and every pair's
    <v_{i_a, f_b}, v_{i_b, f_a}> x_a x_b."""
    lo, hi = indptr[r], indptr[r + 1]
    total = 0.0
    for a in range(lo, hi):
        ia, fa = indices[a], fields[a]
        xa = np.float64(values[a])
        total += np.float64(T[ia, 0]) * xa
        for b in range(a + 1, hi):
            ib, fb = indices[b], fields[b]
            dot = _dot(T[ia], 1 + fb * k, T[ib], 1 + fa * k, k)
            total += np.float64(dot) * xa * np.float64(values[b])
    return total


@kernel(nogil=True, fastmath=FAST, error_model="numpy")
def predict_rows(indptr, indices, fields, values, w0, T, k, out):
    """y_hat of every row into ``out`` (float64; :func:`predict_logits` checks the fields)."""
    mode = flush_denormals()
    for r in range(indptr.size - 1):
        out[r] = np.float64(w0[0]) + _row_forward(indptr, indices, fields, values, r, T, k)
    restore_float_mode(mode)


@kernel_helper(fastmath=FAST, error_model="numpy")
def _pairs(flat, layout, values, first, n, k, S, width):
    """The pairs of a row of ``n`` nonzeros from ``first`` (``layout``: their positions, see
    :func:`_partner_sums`; ``flat``: the table read flat): returns the sum over a < b of
    <v_{i_a, f_b}, v_{i_b, f_a}> x_a x_b (in the table's dtype) and adds each factor vector's
    partner to ``S`` (flat, ``width`` to a nonzero, zeroed by the caller): ``S[a, f_b] += x_b
    v_{i_b, f_a}``, ``S[b, f_a] += x_a v_{i_a, f_b}``. Eight coordinates at a time while eight
    remain, summed as vectors. Unsigned positions and few live values keep this loop in
    registers: inside the trainer's body, on 2-D rows, it ran at half the speed
    (docs/performance.md, session 49)."""
    vectors = zero_lanes(flat)
    rest = _like(0.0, flat)
    whole = k - k % np.uintp(LANES)
    for a in range(n):
        start_a, shift_a = layout[2 * a], layout[2 * a + 1]
        xa = _like(values[first + a], flat)
        row_a = a * width
        for b in range(a + np.uintp(1), n):
            shift_b, xb = layout[2 * b + 1], _like(values[first + b], flat)
            at_a, at_b = start_a + shift_b, layout[2 * b] + shift_a  # v_{i_a,f_b}, v_{i_b,f_a}
            to_a, to_b = row_a + shift_b, b * width + shift_a
            xab = xa * xb
            for c in range(np.uintp(0), whole, np.uintp(LANES)):
                va = load_lanes(flat, at_a + c, flat)
                vb = load_lanes(flat, at_b + c, flat)
                vectors = vectors + va * vb * xab
                store_lanes(S, to_a + c, load_lanes(S, to_a + c, flat) + xb * vb)
                store_lanes(S, to_b + c, load_lanes(S, to_b + c, flat) + xa * va)
            dot = _like(0.0, flat)
            for c in range(whole, k):
                va, vb = flat[at_a + c], flat[at_b + c]
                dot += va * vb
                S[to_a + c] += xb * vb
                S[to_b + c] += xa * va
            rest += dot * xab
    return lanes_sum(vectors) + rest


@kernel_helper()
def _longest_row(indptr):
    """The most nonzeros of a row of the chunk (at least 1): what a row's partner sums and
    layout are sized by (over all its rows: a range of a shuffled order reaches any of them)."""
    longest = 1
    for r in range(indptr.size - 1):
        longest = max(longest, indptr[r + 1] - indptr[r])
    return longest


@kernel_helper(fastmath=FAST, error_model="numpy")
def _partner_sums(indptr, indices, fields, values, r, flat, columns, k, width, S, layout):
    """Row ``r``'s y_hat - w0 (float64), leaving in ``S`` (flat, ``width`` to a nonzero) each
    of its nonzeros' partner sums: S's row a, scaled by the row's slope and x_a, is the
    gradient of a's whole table row of field vectors. ``layout`` (2 per nonzero) receives
    where each nonzero's table row begins in ``flat`` (``columns`` to a row) and where its
    field's vectors begin in any row (1 + field * k): unsigned, as ids and fields were checked
    before any compiled code ran."""
    first = np.uintp(indptr[r])  # unsigned: a signed position brings negative-index code
    n = np.uintp(indptr[r + 1]) - first
    for a in range(n):
        layout[2 * a] = np.uintp(indices[first + a]) * columns
        layout[2 * a + 1] = np.uintp(fields[first + a]) * k + np.uintp(1)
    S[: n * width] = 0.0
    linear = _like(0.0, flat)
    for a in range(n):
        linear += flat[layout[2 * a]] * _like(values[first + a], flat)
    return np.float64(linear) + np.float64(_pairs(flat, layout, values, first, n, k, S, width))


@kernel(nogil=True, fastmath=FAST, error_model="numpy")
def _gradient(indptr, indices, fields, values, labels, weights, order, lo_row, hi_row, inv_rows,
              loss_kind, w0, T, k, pos, G, width):
    """The mean-loss gradient of rows ``lo_row:hi_row`` of ``order`` (empty: as stored) added
    into ``G`` (a row ``[g_w, g_v..]`` per slot; the slots of the rows' nonzeros, in that
    order, are ``pos``: see :func:`fmkit.kernels.fm._distinct_features`); returns ``(sum of
    the rows' losses, gradient of w0)``; ``width``: 1 + num_fields * k."""
    mode = flush_denormals()
    flat = T.reshape(T.size)  # a view (numba types no reshape of a non-contiguous table)
    longest = _longest_row(indptr)
    S, layout = np.empty(longest * width, T.dtype), np.empty(2 * longest, np.uintp)
    rows_S = S.reshape((longest, width))  # (on its rows the loop below vectorizes)
    weight_lines = (width * T.itemsize + 63) // 64  # the forward pass reads a row's weights
    total_loss = 0.0
    g0 = 0.0
    p = 0
    for q in range(lo_row, hi_row):
        r = _row_at(order, q)
        _prefetch_ahead(indptr, indices, values, order, q, hi_row, T, weight_lines)
        if order.size and q + 2 < hi_row:  # rows in shuffled order: their fields too
            _prefetch_entries(indptr, fields, order[q + 2])
        z = np.float64(w0[0]) + _partner_sums(indptr, indices, fields, values, r, flat,
                                              np.uintp(T.shape[1]), np.uintp(k),
                                              np.uintp(width), S, layout)
        loss, slope = _weighted_loss_and_slope(z, labels, weights, r, loss_kind)
        total_loss += loss
        slope *= inv_rows
        g0 += slope
        lo = indptr[r]
        for a in range(lo, indptr[r + 1]):
            sa = pos[p]
            p += 1
            scale = _like(slope, T) * _like(values[a], T)
            G[sa, 0] += scale
            sums = rows_S[a - lo]
            for c in range(1, width):
                G[sa, c] += scale * sums[c]
    restore_float_mode(mode)
    return total_loss, g0


def _check_fields(fields: np.ndarray, num_fields: int, T: np.ndarray, k: int) -> None:
    if fields.size and (int(fields.min()) < 0 or int(fields.max()) >= num_fields):
        raise ValueError(f"a field is outside 0..{num_fields - 1}")
    if T.shape[1] < 1 + num_fields * k:
        raise ValueError(f"the table has {T.shape[1]} columns, fewer than 1 + {num_fields} "
                         f"fields x {k} factors")


def predict_logits(indptr, indices, fields, values, w0, T, k: int, num_fields: int
                   ) -> np.ndarray:
    """y_hat of every row (float64)."""
    _check_fields(fields, num_fields, T, k)
    out = np.empty(indptr.size - 1)
    predict_rows(indptr, indices, fields, values, w0, T, k, out)
    return out


def minibatch_gradient(indptr, indices, fields, values, labels, inv_rows: float,
                       loss_kind: int, w0, T, k: int, num_fields: int, slot: np.ndarray,
                       weights: np.ndarray | None = None
                       ) -> tuple[float, float, np.ndarray, np.ndarray]:
    """The gradient of one mini-batch without updating, each row's loss scaled by
    ``inv_rows``: ``(sum of losses, gradient of w0, the distinct features, their gradient
    rows)`` — what :func:`fmkit.kernels.fm.apply_gradient` takes. ``slot`` (an int per table
    row, all -1) is left as it was found."""
    _check_fields(fields, num_fields, T, k)
    touched = np.empty(max(1, min(indices.size, slot.size)), np.int32)
    pos = np.empty(max(1, indices.size), np.int32)
    n = _distinct_features(indptr, indices, NO_ORDER, 0, indptr.size - 1, slot, touched, pos)
    slot[touched[:n]] = -1
    G = np.zeros((n, 1 + num_fields * k), T.dtype)
    loss, g0 = _gradient(indptr, indices, fields, values, labels,
                         NO_WEIGHTS if weights is None else weights, NO_ORDER, 0,
                         indptr.size - 1, inv_rows, loss_kind, w0, T, k, pos, G, G.shape[1])
    return loss, g0, touched[:n].astype(np.int64), G


def _batches_trainer(opt: int):
    """The mini-batch loop over a chunk, compiled for one update rule (the FM's
    :func:`fmkit.kernels.fm._batches_trainer` with the FFM's gradient)."""
    rule, rowwise = kernel_rules(opt)

    @kernel(nogil=True, fastmath=FAST, error_model="numpy")
    def train_batches(indptr, indices, fields, values, labels, weights, order, batch_size,
                      loss_kind, config, B, T, k, num_fields, slot, touched, pos, G, step):
        """Every row, in ``order`` (a permutation; empty: as stored), in mini-batches of
        ``batch_size``, each one optimizer step on its mean loss's gradient, lazily (the
        features it touched; a feature's whole row of field vectors). ``slot`` must be all -1
        and is left so; ``touched``/``G`` hold the largest mini-batch's distinct features,
        ``pos`` its nonzeros' slots. Returns the summed loss before each update."""
        mode = flush_denormals()
        cfg = _frozen(config)
        width = 1 + num_fields * k
        total_loss = 0.0
        g_bias = np.zeros(1, T.dtype)
        n_rows = indptr.size - 1
        for start in range(0, n_rows, batch_size):
            stop = min(start + batch_size, n_rows)
            n_touched = _distinct_features(indptr, indices, order, start, stop, slot, touched,
                                           pos)
            G[:n_touched, :width] = 0.0
            loss, g_bias[0] = _gradient(indptr, indices, fields, values, labels, weights, order,
                                        start, stop, 1.0 / (stop - start), loss_kind, B[0, :1],
                                        T, k, pos, G, width)
            total_loss += loss
            step += 1
            adam_lr, adam_eps = _adam_scales(np.float64(cfg[BETA1]) ** step,
                                             np.float64(cfg[BETA2]) ** step, T)
            if rowwise:
                step_minibatch_rowwise(B, T, g_bias, touched, n_touched, slot, G, width, k,
                                       rule, cfg, adam_lr, adam_eps)
            else:
                step_minibatch(B, T, g_bias, touched, n_touched, slot, G, width, k, rule, cfg,
                               adam_lr, adam_eps)
        restore_float_mode(mode)
        return total_loss

    return train_batches


_BATCHES = _per_rule(_batches_trainer)


def _rows_trainer(opt: int):
    """The per-row loop compiled for one update rule (as the FM's
    :func:`fmkit.kernels.fm._rows_trainer`)."""
    rule, rowwise = kernel_rules(opt)

    @kernel(nogil=True, fastmath=FAST, error_model="numpy")
    def train_rows(indptr, indices, fields, values, labels, weights, order, lo, hi, loss_kind,
                   config, B, T, k, num_fields, step, stride):
        """Rows ``lo:hi`` of ``order`` (a permutation; empty: as stored), an optimizer step
        each, fused as the FM's per-row loop: the forward pass leaves every factor vector's
        partner sum ``S[a, f] = sum over b != a in field f of x_b v_{i_b, f_a}`` (a row's
        features are distinct, so the sums are its gradient), then each feature's whole row of
        field vectors steps from ``slope x_a S[a]``. The order's row q takes Adam step ``step +
        stride * (q - lo + 1)``. Returns the summed loss before the updates."""
        mode = flush_denormals()
        cfg = _frozen(config)
        width = 1 + num_fields * k
        lines = (T.shape[1] * T.itemsize + 63) // 64
        flat = T.reshape(T.size)  # a view (numba types no reshape of a non-contiguous table)
        longest = _longest_row(indptr)
        S, layout = np.empty(longest * width, T.dtype), np.empty(2 * longest, np.uintp)
        rows_S = S.reshape((longest, width))
        one = np.ones(1, T.dtype)
        zero = _like(0.0, T)
        total_loss = 0.0
        b1_t, b2_t = np.float64(cfg[BETA1]) ** step, np.float64(cfg[BETA2]) ** step
        b1_stride, b2_stride = np.float64(cfg[BETA1]) ** stride, np.float64(cfg[BETA2]) ** stride
        for q in range(lo, hi):
            r = _row_at(order, q)
            _prefetch_ahead(indptr, indices, values, order, q, hi, T, lines)
            if order.size and q + 2 < hi:  # rows in shuffled order: their fields too
                _prefetch_entries(indptr, fields, order[q + 2])
            z = np.float64(B[0, 0]) + _partner_sums(indptr, indices, fields, values, r, flat,
                                                    np.uintp(T.shape[1]), np.uintp(k),
                                                    np.uintp(width), S, layout)
            b1_t *= b1_stride
            b2_t *= b2_stride
            loss, slope, adam_lr, adam_eps = _row_loss_and_bias_step(
                z, labels, weights, r, loss_kind, B, one, width, rule, cfg, b1_t, b2_t)
            total_loss += loss
            first = indptr[r]
            for a in range(first, indptr[r + 1]):
                gx = slope * _like(values[a], T)
                sums = rows_S[a - first]
                if rowwise:
                    _update_feature_rowwise(T, indices[a], one, sums, 0, gx, zero, width, k,
                                            rule, cfg, adam_lr, adam_eps)
                else:
                    _update_feature(T, indices[a], one, sums, 0, gx, zero, width, rule, cfg,
                                    adam_lr, adam_eps)
        restore_float_mode(mode)
        return total_loss

    return train_rows


_ROWS = _per_rule(_rows_trainer)


def train_online(indptr, indices, fields, values, labels, loss_kind: int, opt: int, config, B,
                 T, k: int, num_fields: int, step: int, parts: int = 1,
                 weights: np.ndarray | None = None, order: np.ndarray = NO_ORDER
                 ) -> tuple[float, int]:
    """Train on one chunk's rows one step per row (``mini_batch_size=1``), in ``order`` (a
    permutation; empty: as stored; shuffling by index saves copying rows), in place: on one
    part, on the calling thread, the same steps as :func:`train_minibatches` with batches of
    one row; on more, ``parts`` ranges of rows at once without locks (the FM's
    :func:`fmkit.kernels.fm.lock_free`). Returns ``(sum of losses, step count)``."""
    _check_fields(fields, num_fields, T, k)
    n = indptr.size - 1
    weights = NO_WEIGHTS if weights is None else weights
    loss = lock_free(_ROWS[opt], n, parts, B, lambda part, lo, hi, bias, parts: (
        indptr, indices, fields, values, labels, weights, order, lo, hi, loss_kind, config,
        bias, T, k, num_fields, step + part, parts))
    return loss, step + n


def train_minibatches(indptr, indices, fields, values, labels, batch_size: int, loss_kind: int,
                      opt: int, config, B, T, k: int, num_fields: int, slot, touched, pos,
                      G, step: int, weights: np.ndarray | None = None,
                      order: np.ndarray = NO_ORDER) -> tuple[float, int]:
    """Train on one chunk's rows in mini-batches of ``batch_size`` (1: a row per step), in
    ``order`` (as :func:`train_online`), in place, on the calling thread: the FM's semantics
    (one step per mini-batch on its mean loss, lazy updates). ``touched``/``G`` (the table's
    dtype, at least ``1 + num_fields * k`` columns) must hold the largest mini-batch's
    distinct features, ``pos`` (int32) its nonzeros.
    Returns ``(sum of losses, step count)``."""
    _check_fields(fields, num_fields, T, k)
    loss = _BATCHES[opt](indptr, indices, fields, values, labels,
                         NO_WEIGHTS if weights is None else weights, order, batch_size,
                         loss_kind, config, B, T, k, num_fields, slot, touched, pos, G, step)
    return loss, step + -(-(indptr.size - 1) // batch_size)
