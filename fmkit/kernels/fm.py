"""Compiled FM kernels: mini-batch training with lazy optimizer updates, and prediction.

These compute the same functions as :mod:`fmkit.models.fm` (the tests hold them to it) but walk
the CSR arrays row by row in machine code: per row O(k * nnz) for the forward pass and the
gradient, per mini-batch one optimizer update of only the rows of ``w`` and ``V`` the batch
touched (plus ``w0``). Gradient buffers are indexed by a per-batch slot, not by feature id, so
their size is bounded by the batch, not by ``feature_dim``.

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
def _row_forward(indptr, indices, values, r, w0, w, V, sums):
    """y_hat of row ``r``; leaves sum_i v_if x_i in ``sums``."""
    k = V.shape[1]
    for f in range(k):
        sums[f] = 0.0
    linear = 0.0
    squares = 0.0
    for j in range(indptr[r], indptr[r + 1]):
        i = indices[j]
        x = np.float64(values[j])
        linear += np.float64(w[i]) * x
        for f in range(k):
            vx = np.float64(V[i, f]) * x
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
def _update(p, m, s, j, mj, sj, g, lr, opt, config, bc1, bc2):
    """One optimizer step of coordinate ``p[j]``; ``m``/``s`` are the optimizer's moments.

    ``mj``/``sj`` index the moments (0 into a one-element dummy when the rule has none).
    """
    if opt == ADAM:
        b1 = config[BETA1]
        b2 = config[BETA2]
        m[mj] = b1 * m[mj] + (1.0 - b1) * g
        s[sj] = b2 * s[sj] + (1.0 - b2) * g * g
        p[j] -= lr * (m[mj] / bc1) / (math.sqrt(s[sj] / bc2) + config[EPS])
    elif opt == ADAGRAD:
        s[sj] += g * g
        p[j] -= lr * g / (math.sqrt(s[sj]) + config[EPS])
    else:
        p[j] -= lr * g


@njit(cache=True)
def train_chunk(indptr, indices, values, labels, batch_size, loss_kind, opt, config,
                w0, w, V, m0, s0, mw, sw, mV, sV, slot, touched, gw_buf, gV_buf, sums, step):
    """Train on the rows of one chunk in mini-batches of ``batch_size``; update in place.

    ``slot`` (int32, feature_dim) must be all -1 on entry and is left so. Returns
    ``(sum of per-row losses before each update, optimizer step count)``.
    """
    n = indptr.size - 1
    k = V.shape[1]
    rescale = config[RESCALE]
    clip = config[CLIP]
    has_m = opt == ADAM
    has_s = opt != SGD
    total_loss = 0.0
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        n_touched = 0
        for j in range(indptr[start], indptr[stop]):
            i = indices[j]
            if slot[i] < 0:
                slot[i] = n_touched
                touched[n_touched] = i
                gw_buf[n_touched] = 0.0
                for f in range(k):
                    gV_buf[n_touched, f] = 0.0
                n_touched += 1
        inv_rows = 1.0 / (stop - start)
        g0 = 0.0
        for r in range(start, stop):
            z = _row_forward(indptr, indices, values, r, w0, w, V, sums)
            loss, slope = _loss_and_slope(z, np.float64(labels[r]), loss_kind)
            total_loss += loss
            slope *= inv_rows
            g0 += slope
            for j in range(indptr[r], indptr[r + 1]):
                i = indices[j]
                x = np.float64(values[j])
                t = slot[i]
                gx = slope * x
                gw_buf[t] += gx
                for f in range(k):
                    gV_buf[t, f] += gx * (sums[f] - np.float64(V[i, f]) * x)
        step += 1
        bc1 = 1.0 - config[BETA1] ** step
        bc2 = 1.0 - config[BETA2] ** step
        g = _gradient(g0, np.float64(w0[0]), rescale, clip, config[BIAS_WD])
        _update(w0, m0, s0, 0, 0, 0, g, config[BIAS_LR], opt, config, bc1, bc2)
        for t in range(n_touched):
            i = touched[t]
            slot[i] = -1
            mi = i if has_m else 0
            si = i if has_s else 0
            g = _gradient(gw_buf[t], np.float64(w[i]), rescale, clip, config[LINEAR_WD])
            _update(w, mw, sw, i, mi, si, g, config[LINEAR_LR], opt, config, bc1, bc2)
            Vi = V[i]
            mVi = mV[mi]
            sVi = sV[si]
            for f in range(k):
                g = _gradient(gV_buf[t, f], np.float64(Vi[f]), rescale, clip, config[FACTORS_WD])
                _update(Vi, mVi, sVi, f, f if has_m else 0, f if has_s else 0, g,
                        config[FACTORS_LR], opt, config, bc1, bc2)
    return total_loss, step


@njit(cache=True, parallel=True)
def predict_logits(indptr, indices, values, w0, w, V, out, n_chunks):
    """Write y_hat of every row into ``out`` (float64), in ``n_chunks`` chunks across threads."""
    n = indptr.size - 1
    k = V.shape[1]
    n_chunks = max(1, min(n, n_chunks))
    for c in prange(n_chunks):
        sums = np.empty(k, dtype=np.float64)
        for r in range(c * n // n_chunks, (c + 1) * n // n_chunks):
            out[r] = _row_forward(indptr, indices, values, r, w0, w, V, sums)
