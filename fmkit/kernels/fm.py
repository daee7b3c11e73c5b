"""Compiled FM kernels: mini-batch training with lazy optimizer updates, and prediction.

These compute the same functions as :mod:`fmkit.models.fm` (the tests hold them to it) but walk
the CSR arrays row by row in machine code: per row O(k * nnz) for the forward pass and the
gradient, per mini-batch one optimizer update of only the rows of ``w`` and ``V`` the batch
touched (plus ``w0``). Gradient buffers are indexed by a per-batch slot, not by feature id, so
their size is bounded by the batch, not by ``feature_dim``.

Weights live in one table per model, a row per feature: ``[w_i, v_i1..v_ik]``; during training
the optimizer's moments follow in the same row, so an update touches one or two cache lines
instead of six arrays (measured: twice the rate of separate arrays for Adam).

The kernels are generic over float32/float64 weights; arithmetic is done in float64.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

LOGISTIC = 0
SQUARED = 1

SGD = 0
ADAGRAD = 1
ADAM = 2

# Positions in the ``config`` float64 array the training kernel takes.
BIAS_LR, BIAS_WD, LINEAR_LR, LINEAR_WD, FACTORS_LR, FACTORS_WD = range(6)
CLIP, EPS, RESCALE, BETA1, BETA2 = range(6, 11)
CONFIG_SIZE = 11


@njit(cache=True, inline="always")
def _row_forward(indptr, indices, values, r, w0, T, k, sums):
    """y_hat of row ``r``; leaves sum_i v_if x_i in ``sums``.

    ``T`` is the weight table, one row per feature: ``T[i, 0] = w_i``, ``T[i, 1:k+1] = v_i``
    (a training table carries optimizer state in further columns).
    """
    for f in range(k):
        sums[f] = 0.0
    linear = 0.0
    squares = 0.0
    for j in range(indptr[r], indptr[r + 1]):
        i = indices[j]
        x = np.float64(values[j])
        linear += np.float64(T[i, 0]) * x
        for f in range(k):
            vx = np.float64(T[i, 1 + f]) * x
            sums[f] += vx
            squares += vx * vx
    pairwise = 0.0
    for f in range(k):
        pairwise += sums[f] * sums[f]
    return np.float64(w0[0]) + linear + 0.5 * (pairwise - squares)


@njit(cache=True, inline="always")
def _loss_and_slope(z, y, loss_kind):
    if loss_kind == LOGISTIC:
        loss = max(z, 0.0) - z * y + math.log1p(math.exp(-abs(z)))
        if z >= 0:
            p = 1.0 / (1.0 + math.exp(-z))
        else:
            ez = math.exp(z)
            p = ez / (1.0 + ez)
        return loss, p - y
    d = z - y
    return d * d, 2.0 * d


@njit(cache=True, inline="always")
def _gradient(g, param, rescale, clip, wd):
    """MXNet's order: rescale, clip, then add L2 weight decay."""
    g = g * rescale
    if clip > 0.0:
        g = min(max(g, -clip), clip)
    return g + wd * param


@njit(cache=True, inline="always")
def _step(p, m, s, g, lr, opt, config, bc1, bc2):
    """One optimizer step of one coordinate: returns the new ``(param, m, s)``."""
    if opt == ADAM:
        b1 = config[BETA1]
        b2 = config[BETA2]
        m = b1 * m + (1.0 - b1) * g
        s = b2 * s + (1.0 - b2) * g * g
        p -= lr * (m / bc1) / (math.sqrt(s / bc2) + config[EPS])
    elif opt == ADAGRAD:
        s += g * g
        p -= lr * g / (math.sqrt(s) + config[EPS])
    else:
        p -= lr * g
    return p, m, s


@njit(cache=True, inline="always")
def _update_feature(i, g_linear, g_factors, t, T, k, opt, config, bc1, bc2):
    """Update row ``i`` of the training table from its raw gradients (``g_factors[t]``).

    Columns of ``T``: ``[w, v_1..v_k]`` then, per optimizer, Adam's m and s or AdaGrad's s for
    each of those k+1 coordinates, so one feature's weights and state share a few cache lines.
    """
    width = k + 1
    m_at = width
    s_at = 2 * width if opt == ADAM else width
    rescale = config[RESCALE]
    clip = config[CLIP]
    for c in range(width):
        raw = g_linear if c == 0 else g_factors[t, c - 1]
        wd = config[LINEAR_WD] if c == 0 else config[FACTORS_WD]
        lr = config[LINEAR_LR] if c == 0 else config[FACTORS_LR]
        p = np.float64(T[i, c])
        g = _gradient(raw, p, rescale, clip, wd)
        if opt == ADAM:
            p, m, s = _step(p, np.float64(T[i, m_at + c]), np.float64(T[i, s_at + c]), g, lr,
                            opt, config, bc1, bc2)
            T[i, m_at + c] = m
            T[i, s_at + c] = s
        elif opt == ADAGRAD:
            p, m, s = _step(p, 0.0, np.float64(T[i, s_at + c]), g, lr, opt, config, bc1, bc2)
            T[i, s_at + c] = s
        else:
            p, m, s = _step(p, 0.0, 0.0, g, lr, opt, config, bc1, bc2)
        T[i, c] = p


@njit(cache=True, inline="always")
def _update_bias(g0, w0, bias_state, opt, config, bc1, bc2):
    g = _gradient(g0, np.float64(w0[0]), config[RESCALE], config[CLIP], config[BIAS_WD])
    p, m, s = _step(np.float64(w0[0]), bias_state[0], bias_state[1], g, config[BIAS_LR], opt,
                    config, bc1, bc2)
    w0[0] = p
    bias_state[0] = m
    bias_state[1] = s


def table_width(num_factors: int, optimizer_id: int) -> int:
    """Columns of a training table: the k+1 weights, then the optimizer's moments for each."""
    moments = {ADAM: 2, ADAGRAD: 1, SGD: 0}[optimizer_id]
    return (num_factors + 1) * (1 + moments)


@njit(cache=True, inline="always")
def _accumulate(indptr, indices, values, labels, lo, hi, loss_kind, inv_rows, w0, T, k, sums,
                slot, gw, gV):
    """Add the mean-loss gradients of rows ``lo:hi`` into the per-slot buffers ``gw``/``gV``;
    returns ``(sum of the rows' losses, gradient of w0)``."""
    total_loss = 0.0
    g0 = 0.0
    for r in range(lo, hi):
        z = _row_forward(indptr, indices, values, r, w0, T, k, sums)
        loss, slope = _loss_and_slope(z, np.float64(labels[r]), loss_kind)
        total_loss += loss
        slope *= inv_rows
        g0 += slope
        for j in range(indptr[r], indptr[r + 1]):
            i = indices[j]
            x = np.float64(values[j])
            t = slot[i]
            gx = slope * x
            gw[t] += gx
            for f in range(k):
                gV[t, f] += gx * (sums[f] - np.float64(T[i, 1 + f]) * x)
    return total_loss, g0


@njit(cache=True, parallel=True)
def train_chunk(indptr, indices, values, labels, batch_size, loss_kind, opt, config,
                w0, bias_state, T, k, slot, touched, gw_parts, gV_parts, sums_parts, step):
    """Train on the rows of one chunk in mini-batches of ``batch_size``; update in place.

    Each mini-batch takes one optimizer step on the gradient of its mean loss (SageMaker's and
    MXNet's semantics). Its rows are cut into ``len(gw_parts)`` parts, one per thread, whose
    gradients accumulate in separate buffers and are summed in a fixed order; the touched
    features, all distinct, are then updated in parallel too: no races, and the result equals
    one thread's to rounding. ``batch_size == 1`` runs the fused loop of :func:`_train_online`.

    ``T`` is the training table (see :func:`_update_feature`); ``slot`` (int32, feature_dim)
    must be all -1 on entry and is left so. Returns ``(sum of per-row losses before each
    update, optimizer step count)``.
    """
    if batch_size == 1:
        return _train_online(indptr, indices, values, labels, loss_kind, opt, config,
                             w0, bias_state, T, k, sums_parts[0], gV_parts[0], step)
    n = indptr.size - 1
    n_parts = gw_parts.shape[0]
    loss_parts = np.zeros(n_parts)
    g0_parts = np.zeros(n_parts)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        n_touched = 0
        for j in range(indptr[start], indptr[stop]):
            i = indices[j]
            if slot[i] < 0:
                slot[i] = n_touched
                touched[n_touched] = i
                n_touched += 1
        rows = stop - start
        for part in prange(n_parts):
            gw = gw_parts[part]
            gV = gV_parts[part]
            for t in range(n_touched):
                gw[t] = 0.0
                for f in range(k):
                    gV[t, f] = 0.0
            loss, g0 = _accumulate(indptr, indices, values, labels,
                                   start + part * rows // n_parts,
                                   start + (part + 1) * rows // n_parts, loss_kind, 1.0 / rows,
                                   w0, T, k, sums_parts[part], slot, gw, gV)
            loss_parts[part] += loss
            g0_parts[part] = g0
        step += 1
        bc1 = 1.0 - config[BETA1] ** step
        bc2 = 1.0 - config[BETA2] ** step
        _update_bias(g0_parts.sum(), w0, bias_state, opt, config, bc1, bc2)
        for part in prange(n_parts):
            total = gV_parts[part]  # this part's slice of features gathers every part's sums
            for t in range(part * n_touched // n_parts, (part + 1) * n_touched // n_parts):
                g_linear = 0.0
                for q in range(n_parts):
                    g_linear += gw_parts[q, t]
                for f in range(k):
                    acc = 0.0
                    for q in range(n_parts):
                        acc += gV_parts[q, t, f]
                    total[t, f] = acc
                i = touched[t]
                slot[i] = -1
                _update_feature(i, g_linear, total, t, T, k, opt, config, bc1, bc2)
    return loss_parts.sum(), step


@njit(cache=True)
def _train_online(indptr, indices, values, labels, loss_kind, opt, config,
                  w0, bias_state, T, k, sums, g_row, step):
    """Mini-batches of one row, fused: each row's update follows its forward pass while its
    weights are still in cache (the classic per-example SGD loop of libFM and xLearn).

    A feature repeated within a row is not allowed (the sources reject it), so updating the
    row's features one after the other equals updating them from one gradient.
    """
    total_loss = 0.0
    for r in range(indptr.size - 1):
        z = _row_forward(indptr, indices, values, r, w0, T, k, sums)
        loss, slope = _loss_and_slope(z, np.float64(labels[r]), loss_kind)
        total_loss += loss
        step += 1
        bc1 = 1.0 - config[BETA1] ** step
        bc2 = 1.0 - config[BETA2] ** step
        _update_bias(slope, w0, bias_state, opt, config, bc1, bc2)
        for j in range(indptr[r], indptr[r + 1]):
            i = indices[j]
            x = np.float64(values[j])
            gx = slope * x
            for f in range(k):
                g_row[0, f] = gx * (sums[f] - np.float64(T[i, 1 + f]) * x)
            _update_feature(i, gx, g_row, 0, T, k, opt, config, bc1, bc2)
    return total_loss, step


@njit(cache=True, parallel=True)
def predict_logits(indptr, indices, values, w0, T, k, out, n_chunks):
    """Write y_hat of every row into ``out`` (float64), in ``n_chunks`` chunks across threads."""
    n = indptr.size - 1
    n_chunks = max(1, min(n, n_chunks))
    for c in prange(n_chunks):
        sums = np.empty(k, dtype=np.float64)
        for r in range(c * n // n_chunks, (c + 1) * n // n_chunks):
            out[r] = _row_forward(indptr, indices, values, r, w0, T, k, sums)


@njit(cache=True)
def predict_logits_serial(indptr, indices, values, w0, T, k, out):
    """:func:`predict_logits` on the calling thread: no thread start-up for small requests."""
    sums = np.empty(k, dtype=np.float64)
    for r in range(indptr.size - 1):
        out[r] = _row_forward(indptr, indices, values, r, w0, T, k, sums)
