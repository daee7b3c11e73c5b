"""Compiled FM kernels: training (per-row and mini-batch, lazy optimizer updates) and prediction.

These compute the same functions as :mod:`fmkit.models.fm.parameters` and
:mod:`fmkit.train.optimizers` (the tests hold them to it) but walk the CSR arrays row by row in
machine code: per row O(k * nnz) for the forward pass and the gradient, and an optimizer update of
only the features the row (or mini-batch) touched.

Weights live in one table per model, a row per feature: ``[w_i, v_i1..v_ik]``. During training the
optimizer's moments follow in the same row, in blocks of k+1 columns (Adam: m then s; AdaGrad: s;
FTRL: z then sqrt(n); row-wise AdaGrad: one sum for w_i and one per factor vector), so one
update touches one or two cache lines and the k factor coordinates of weights and moments are
contiguous: the optimizer steps take them eight at a time as vectors
(:mod:`fmkit.kernels.lanes`). The bias is a one-row table of the same layout.

Arithmetic is done in the table's precision (float32 in production, float64 in the tests that
compare with the float64 reference to 1e-12); losses are summed in float64. ``FAST`` lets the
compiler reorder and fuse floating-point operations (as ``-ffast-math`` without assuming finite
numbers, so a diverging run still reports a non-finite loss).

The small helpers are compiled as functions of their own with LLVM's ``alwaysinline``
(``forceinline=True``), not inlined into numba's IR (``inline="always"``): the machine code is
the same, and numba no longer copies and re-types each helper's IR at every call site, which was
half of a first run's compile time (docs/performance.md, "First run").
"""

from __future__ import annotations

import math

import numpy as np
from numba.extending import overload

from fmkit.compile_cache import kernel, kernel_helper
from fmkit.cpus import on_threads
from fmkit.kernels.float_mode import flush_denormals, restore_float_mode
from fmkit.kernels.lanes import LANES, inverse_root, lanes_sum, load_lanes, store_lanes
from fmkit.kernels.prefetch import prefetch

LOGISTIC = 0
SQUARED = 1

SGD = 0
ADAGRAD = 1
ADAM = 2
FTRL = 3
ROWWISE_ADAGRAD = 4

# Positions in the ``config`` array (of the table's dtype) the training kernels take.
BIAS_LR, BIAS_WD, LINEAR_LR, LINEAR_WD, FACTORS_LR, FACTORS_WD = range(6)
CLIP, EPS, RESCALE, BETA1, BETA2, FTRL_BETA, FTRL_L1 = range(6, 13)
CONFIG_SIZE = 13

FAST = {"nsz", "arcp", "contract", "reassoc"}
AHEAD = 8  # table rows prefetched ahead of a mini-batch's updates
NO_ORDER = np.zeros(0, np.int64)  # a chunk's rows as stored
NO_WEIGHTS = np.zeros(0, np.float32)  # every row of weight 1


def _like(value, array):
    """``value`` cast to ``array``'s dtype (compiled: see the overload below)."""
    return array.dtype.type(value)


@overload(_like, inline="always")
def _like_compiled(value, array):
    dtype = array.dtype
    return lambda value, array: dtype(value)


@kernel_helper(fastmath=FAST, error_model="numpy")
def _row_forward(indptr, indices, values, r, T, k, sums):
    """y_hat - w0 of row ``r``; leaves sum_i v_if x_i in ``sums`` (the table's dtype). The
    factors are read eight at a time as vectors (see :mod:`fmkit.kernels.lanes`)."""
    for f in range(k):
        sums[f] = 0.0
    linear = _like(0.0, T)
    squares = _like(0.0, T)
    for j in range(indptr[r], indptr[r + 1]):
        row = T[indices[j]]
        x = _like(values[j], T)
        linear += row[0] * x
        start = 0
        while start + LANES <= k:
            vx = load_lanes(row, 1 + start, T) * x
            store_lanes(sums, start, load_lanes(sums, start, T) + vx)
            squares += lanes_sum(vx * vx)
            start += LANES
        for f in range(start, k):
            vx = row[1 + f] * x
            sums[f] += vx
            squares += vx * vx
    pairwise = _like(0.0, T)
    for f in range(k):
        pairwise += sums[f] * sums[f]
    return linear + _like(0.5, T) * (pairwise - squares)


@kernel_helper()
def _loss_and_slope(z, y, loss_kind):
    """Loss of one row and its derivative in y_hat (float64)."""
    if loss_kind == LOGISTIC:
        e = math.exp(-abs(z))  # one exponential serves the loss and the sigmoid
        loss = max(z, 0.0) - z * y + math.log1p(e)
        p = 1.0 / (1.0 + e) if z >= 0 else e / (1.0 + e)
        return loss, p - y
    d = z - y
    return d * d, 2.0 * d


@kernel_helper()
def _weighted_loss_and_slope(z, labels, weights, r, loss_kind):
    """Row ``r``'s loss and slope (:func:`_loss_and_slope`) times its sample weight
    (``weights`` empty: 1), as a loss weighted per row is differentiated."""
    loss, slope = _loss_and_slope(z, np.float64(labels[r]), loss_kind)
    if weights.size:
        w = np.float64(weights[r])
        return loss * w, slope * w
    return loss, slope


@kernel_helper(fastmath=FAST, error_model="numpy")
def _rule(opt, p, first, second, raw, lr, wd, cfg, adam_lr, adam_eps, like):
    """One optimizer step of a coordinate, or of eight as :class:`~fmkit.kernels.lanes.LanesType`:
    from the parameter ``p``, its moments (Adam's m / AdaGrad's s / FTRL's z in ``first``;
    Adam's s / FTRL's sqrt(n) in ``second``; unused ones are passed through) and the raw
    gradient, the new ``(p, first, second)``.

    Per coordinate (MXNet's order): g = clip(rescale * raw) + wd * param and the rule; FTRL takes
    wd as its L2 strength instead. ``cfg[CLIP]`` is +inf when clipping is off, so the code is
    branch-free. ``adam_lr``/``adam_eps`` scale Adam's lr and eps for its bias corrections (see
    :func:`_adam_scales`). ``like``: an array of the table's dtype, the precision of constants.
    """
    one = _like(1.0, like)  # (1 - b1 would be float64: int - float32 promotes)
    clip = cfg[CLIP]
    g = min(max(raw * cfg[RESCALE], -clip), clip)
    if opt == FTRL:
        inv_lr = one / lr
        root_new = np.sqrt(second * second + g * g)  # n is kept as sqrt(n): one root per step
        z = first + g - (root_new - second) * inv_lr * p
        shrunk = z - min(max(z, -cfg[FTRL_L1]), cfg[FTRL_L1])  # 0 where |z| <= l1
        return -shrunk / ((cfg[FTRL_BETA] + root_new) * inv_lr + wd), z, root_new
    g = g + wd * p
    if opt == SGD:
        return p - lr * g, first, second
    if opt == ADAGRAD:
        acc = first + g * g
        return p - lr * g * inverse_root(acc, cfg[EPS]), acc, second
    moment = cfg[BETA1] * first + (one - cfg[BETA1]) * g
    square = cfg[BETA2] * second + (one - cfg[BETA2]) * g * g
    step = p - lr * adam_lr * moment / (np.sqrt(square) + cfg[EPS] * adam_eps)
    return step, moment, square


@kernel_helper(fastmath=FAST, error_model="numpy")
def _rowwise_gradient(p, x, scale, decay, wd, cfg):
    """Row-wise AdaGrad's gradient of coordinates ``p`` (a number or Lanes) from their raw
    gradient's terms ``x``: ``clip(rescale * (scale * x - decay * p)) + wd * p``."""
    clip = cfg[CLIP]
    return min(max((scale * x - decay * p) * cfg[RESCALE], -clip), clip) + wd * p


@kernel_helper(fastmath=FAST, error_model="numpy")
def _apply_rowwise(w, m, lo, hi, group, G, shift, scale, decay, lr, wd, cfg):
    """Row-wise AdaGrad (fbgemm's and TorchRec's ``rowwise_adagrad``) on coordinates ``lo:hi``
    of a row, in groups of ``group`` from ``lo``: ``lo`` is 0 for a lone weight (the bias, a
    linear weight: its sum is ``m[0]``) or 1 for the factors (an FM's vector, or an FFM's
    vector per field: the j-th group's sum is ``m[1 + j]``). Each sum grows by its group's mean
    squared gradient and scales the whole group's step: ``s += mean(g^2); v -= lr * g /
    (sqrt(s) + eps)``. One sum per vector instead of one per coordinate keeps the training row
    about the size of its weights. Every group's sum grows first, then every group steps: in
    one pass, each group's square root and division waited on its own sum, and an FFM's ten
    groups a row ran one after another (docs/performance.md, session 49). The loops walk the
    groups without integer division, which made the update much slower (session 36)."""
    begin, at = lo, min(lo, 1)
    while begin < hi:  # the sums of the squared gradients
        end = min(begin + group, hi)
        squares = _like(0.0, w)
        c = begin
        while c + LANES <= end:
            g = _rowwise_gradient(load_lanes(w, c, w), load_lanes(G, c + shift, w), scale,
                                  decay, wd, cfg)
            squares += lanes_sum(g * g)
            c += LANES
        for rest in range(c, end):
            g1 = _rowwise_gradient(w[rest], _like(G[rest + shift], w), scale, decay, wd, cfg)
            squares += g1 * g1
        m[at] = m[at] + squares / _like(end - begin, w)
        begin, at = end, at + 1
    begin, at = lo, min(lo, 1)
    while begin < hi:  # the steps
        end = min(begin + group, hi)
        rate = lr / (np.sqrt(m[at]) + cfg[EPS])
        c = begin
        while c + LANES <= end:
            p = load_lanes(w, c, w)
            g = _rowwise_gradient(p, load_lanes(G, c + shift, w), scale, decay, wd, cfg)
            store_lanes(w, c, p - rate * g)
            c += LANES
        for rest in range(c, end):
            q = w[rest]
            w[rest] = q - rate * _rowwise_gradient(q, _like(G[rest + shift], w), scale, decay,
                                                   wd, cfg)
        begin, at = end, at + 1


@kernel_helper(fastmath=FAST, error_model="numpy")
def _apply(w, m, s, lo, hi, G, shift, scale, decay, lr, wd, opt, cfg, adam_lr, adam_eps):
    """One optimizer step (:func:`_rule`) of coordinates ``lo:hi`` of one table row, given as
    1-D views of its blocks: weights ``w``, Adam's m / AdaGrad's s / FTRL's z in ``m``, Adam's
    s / FTRL's sqrt(n) in ``s`` (see :func:`_row_blocks`), eight at a time while eight remain.

    The raw gradient of coordinate c is ``scale * G[c + shift] - decay * param``: the FM's own
    form (for a factor, slope * x * (sum_f - v_f x)), computed here rather than staged in an
    array so each step reads and writes only the table.
    """
    firsts = opt != SGD
    seconds = opt == ADAM or opt == FTRL
    start = lo
    while start + LANES <= hi:
        p = load_lanes(w, start, w)
        first = load_lanes(m, start, w) if firsts else p
        second = load_lanes(s, start, w) if seconds else p
        raw = scale * load_lanes(G, start + shift, w) - decay * p
        p, first, second = _rule(opt, p, first, second, raw, lr, wd, cfg, adam_lr, adam_eps, w)
        store_lanes(w, start, p)
        if firsts:
            store_lanes(m, start, first)
        if seconds:
            store_lanes(s, start, second)
        start += LANES
    for c in range(start, hi):
        p = w[c]
        first = m[c] if firsts else p
        second = s[c] if seconds else p
        raw = scale * _like(G[c + shift], w) - decay * p
        p, first, second = _rule(opt, p, first, second, raw, lr, wd, cfg, adam_lr, adam_eps, w)
        w[c] = p
        if firsts:
            m[c] = first
        if seconds:
            s[c] = second


@kernel_helper(fastmath=FAST, error_model="numpy")
def _apply_first(w, m, s, G, scale, lr, wd, opt, cfg, adam_lr, adam_eps):
    """:func:`_apply` of coordinate 0 alone (the bias, or a row's linear weight), from ``scale
    * G[0]`` without decay. Its positions are run-time ints, as the factors' are: a literal 0
    or 1 would make numba compile ``_apply`` once more (LLVM folds them all the same, ``_apply``
    being inlined)."""
    _apply(w, m, s, np.intp(0), np.intp(1), G, np.intp(0), scale, _like(0.0, w), lr, wd, opt,
           cfg, adam_lr, adam_eps)


@kernel_helper()
def _frozen(cfg):
    """``cfg``'s values as a tuple: passed by value, they stay in registers across the table
    stores (read from the array, each would be reloaded after every store that might alias it)."""
    return (cfg[0], cfg[1], cfg[2], cfg[3], cfg[4], cfg[5], cfg[6], cfg[7], cfg[8], cfg[9],
            cfg[10], cfg[11], cfg[12])


@kernel_helper()
def _adam_scales(beta1_t, beta2_t, T):
    """Adam's bias corrections at step t as factors of lr and eps, in the table's dtype:
    lr (m / (1 - b1^t)) / (sqrt(s / (1 - b2^t)) + eps)
    == lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(s) + eps * sqrt(1 - b2^t))."""
    root = math.sqrt(1.0 - beta2_t)
    return _like(root / (1.0 - beta1_t), T), _like(root, T)


@kernel_helper()
def _row_blocks(T, i, width):
    """Row ``i`` of a training table as 1-D views of its blocks (weights, first moment, second
    moment; empty where the rule keeps none), so the update reads and writes each block through
    a 1-D contiguous view."""
    row = T[i]
    return row[:width], row[width:2 * width], row[2 * width:3 * width]


@kernel_helper(fastmath=FAST, error_model="numpy")
def _update_feature(T, i, G_linear, G_factors, shift, scale, decay, width, opt, cfg, adam_lr,
                    adam_eps):
    """Update row ``i`` of ``T``: the linear weight from raw gradient ``scale * G_linear[0]``,
    the factors from ``scale * G_factors[c + shift] - decay * v_c`` (see :func:`_apply`)."""
    w, m, s = _row_blocks(T, i, width)
    _apply_first(w, m, s, G_linear, scale, cfg[LINEAR_LR], cfg[LINEAR_WD], opt, cfg, adam_lr,
                 adam_eps)
    # (run-time positions, as _apply_first's: one compiled _apply serves both)
    _apply(w, m, s, np.intp(1), width, G_factors, np.intp(shift), scale, decay, cfg[FACTORS_LR],
           cfg[FACTORS_WD], opt, cfg, adam_lr, adam_eps)


@kernel_helper(fastmath=FAST, error_model="numpy")
def _update_feature_rowwise(T, i, G_linear, G_factors, shift, scale, decay, width, group, opt,
                            cfg, adam_lr, adam_eps):
    """:func:`_update_feature` for row-wise AdaGrad: the linear weight, alone in its group, by
    AdaGrad (``opt``), the factor vectors of ``group`` coordinates by :func:`_apply_rowwise`.
    The kernels pick one of the two (:func:`kernel_rules`)."""
    w, m, s = _row_blocks(T, i, width)
    _apply_first(w, m, s, G_linear, scale, cfg[LINEAR_LR], cfg[LINEAR_WD], opt, cfg, adam_lr,
                 adam_eps)
    _apply_rowwise(w, m, 1, width, group, G_factors, shift, scale, decay, cfg[FACTORS_LR],
                   cfg[FACTORS_WD], cfg)


def kernel_rules(opt: int) -> tuple[int, bool]:
    """What a kernel compiled for ``opt`` steps with: the rule of the bias and the linear
    weights (row-wise AdaGrad is AdaGrad on a weight alone in its group), and whether its rows
    step by :func:`_update_feature_rowwise`. Each kernel picks the row update by a branch on
    that constant of its own, so that numba drops the row-wise code from the other rules'
    kernels: a branch on ``opt`` inside the shared helpers compiled it into every kernel and
    lengthened every first run, and a kernel that captured the update function itself was
    never loaded from numba's cache (docs/performance.md, session 36)."""
    if opt == ROWWISE_ADAGRAD:
        return ADAGRAD, True
    return opt, False


@kernel_helper()
def _row_at(order, q):
    """Row ``q`` of a chunk taken in ``order`` (a permutation; empty: as stored)."""
    return order[q] if order.size else q


@kernel_helper()
def _prefetch_entries(indptr, entries, r):
    """Start loading row ``r``'s ``entries`` (its ids or its values; a cache line holds
    sixteen)."""
    for j in range(indptr[r], indptr[r + 1], 16):
        prefetch(entries, j)


@kernel_helper()
def _prefetch_ahead(indptr, indices, values, order, q, hi, T, lines):
    """While row ``q`` of the order trains, start loading what the next rows need: the table rows
    of row q+1's features, the indices and values of row q+2, the offsets of row q+3."""
    if q + 3 < hi:
        prefetch(indptr, _row_at(order, q + 3))
    if q + 2 < hi:
        r = _row_at(order, q + 2)
        _prefetch_entries(indptr, indices, r)
        _prefetch_entries(indptr, values, r)
    if q + 1 < hi:
        r = _row_at(order, q + 1)
        step = 64 // T.itemsize
        for j in range(indptr[r], indptr[r + 1]):
            i = indices[j]
            for line in range(lines):
                prefetch(T, i, line * step)


@kernel_helper(fastmath=FAST, error_model="numpy")
def _row_loss_and_bias_step(z, labels, weights, r, loss_kind, B, one, width, opt, cfg, b1_t,
                            b2_t):
    """What every per-row loop does once row ``r``'s y_hat ``z`` is known: its (weighted)
    loss, and the step of the bias (which every row touches). Returns ``(loss, slope in the
    table's dtype, Adam's lr and eps factors for this step)``; ``one``: a 1-element array of 1
    in the table's dtype."""
    loss, slope = _weighted_loss_and_slope(z, labels, weights, r, loss_kind)
    adam_lr, adam_eps = _adam_scales(b1_t, b2_t, B)
    slope = _like(slope, B)
    bw, bm, bs = _row_blocks(B, 0, width)
    _apply_first(bw, bm, bs, one, slope, cfg[BIAS_LR], cfg[BIAS_WD], opt, cfg, adam_lr,
                 adam_eps)
    return loss, slope, adam_lr, adam_eps


def _rows_trainer(opt: int):
    """The per-row training loop compiled for one update rule: ``opt`` is a constant in the
    compiled code (a run-time switch among the four rules halves the rate)."""

    rule, rowwise = kernel_rules(opt)

    @kernel(nogil=True, fastmath=FAST, error_model="numpy")
    def train_rows(indptr, indices, values, labels, weights, order, lo, hi, loss_kind, config, B, T,
                   k, sums, step, stride):
        """The per-row loop of libFM and xLearn, fused: each row's update follows its forward pass
        while its weights are in cache. Rows ``lo:hi``; the row's Adam step is ``step + stride *
        (r - lo + 1)``. Returns the summed loss of the rows before their updates.

        A feature repeated within a row is not allowed (the sources reject it), so updating the
        row's features one after the other equals one update from the row's gradient.
        """
        mode = flush_denormals()
        cfg = _frozen(config)
        width = k + 1
        lines = (T.shape[1] * T.itemsize + 63) // 64
        one = np.ones(1, T.dtype)
        total_loss = 0.0
        # Adam's beta^t, advanced by a product per row rather than a power
        b1_t, b2_t = np.float64(cfg[BETA1]) ** step, np.float64(cfg[BETA2]) ** step
        b1_stride, b2_stride = np.float64(cfg[BETA1]) ** stride, np.float64(cfg[BETA2]) ** stride
        for q in range(lo, hi):
            r = _row_at(order, q)
            _prefetch_ahead(indptr, indices, values, order, q, hi, T, lines)
            z = np.float64(B[0, 0] + _row_forward(indptr, indices, values, r, T, k, sums))
            b1_t *= b1_stride
            b2_t *= b2_stride
            loss, slope, adam_lr, adam_eps = _row_loss_and_bias_step(
                z, labels, weights, r, loss_kind, B, one, width, rule, cfg, b1_t, b2_t)
            total_loss += loss
            for j in range(indptr[r], indptr[r + 1]):
                x = _like(values[j], T)
                gx = slope * x
                # d y_hat / d v_if = x_i (sum_f - v_if x_i): the sums are read at c - 1
                if rowwise:
                    _update_feature_rowwise(T, indices[j], one, sums, -1, gx, gx * x, width, k,
                                            rule, cfg, adam_lr, adam_eps)
                else:
                    _update_feature(T, indices[j], one, sums, -1, gx, gx * x, width, rule, cfg,
                                    adam_lr, adam_eps)
        restore_float_mode(mode)
        return total_loss

    return train_rows


RULES = (SGD, ADAGRAD, ADAM, FTRL, ROWWISE_ADAGRAD)


def moment_columns(opt: int, width: int, group: int) -> int:
    """The columns of optimizer state after a row's ``width`` weights: a block per moment of
    each weight, or for row-wise AdaGrad one sum for the linear weight and one per factor
    vector of ``group`` coordinates."""
    if opt == ROWWISE_ADAGRAD:
        return 1 + -(-(width - 1) // group)
    return width * {SGD: 0, ADAGRAD: 1, ADAM: 2, FTRL: 2}[opt]


def _rows_updater(opt: int):
    """The update of a range of features from their summed gradient rows, compiled for one
    update rule (as :func:`_rows_trainer`)."""

    rule, rowwise = kernel_rules(opt)

    @kernel(nogil=True, fastmath=FAST, error_model="numpy")
    def update_rows(T, rows, G, lo, hi, group, config, adam_lr, adam_eps):
        mode = flush_denormals()
        cfg = _frozen(config)
        for t in range(lo, hi):
            if rowwise:
                _update_feature_rowwise(T, rows[t], G[t], G[t], 0, 1.0, _like(0.0, T),
                                        G.shape[1], group, rule, cfg, adam_lr, adam_eps)
            else:
                _update_feature(T, rows[t], G[t], G[t], 0, 1.0, _like(0.0, T), G.shape[1], rule,
                                cfg, adam_lr, adam_eps)
        restore_float_mode(mode)

    return update_rows


def _per_rule(factory):
    """``factory(opt)`` for each update rule, each compiled on first use: a run compiles only
    the rule it trains with, and in its compiled code ``opt`` is a constant."""
    return {opt: factory(opt) for opt in RULES}


_ROWS = _per_rule(_rows_trainer)
_UPDATES = _per_rule(_rows_updater)


def train_online(indptr, indices, values, labels, order, loss_kind, opt, cfg, B, T, k, sums,
                 step, weights=None):
    """Train on every row of a chunk, one update per row (``mini_batch_size=1``), in the row
    order ``order`` (a permutation; empty: as stored; shuffling by index saves copying rows).

    With more than one thread part (``len(sums)``), the chunk's rows are cut into that many
    ranges trained at once on the shared table without locks (Hogwild, as xLearn does by
    default): updates may interleave, so the result is not bit-reproducible; one part is.
    The bias, which every row updates, would bounce between the cores' caches: each part
    trains its own copy through the chunk and the copies are averaged after it.
    ``weights``: each row's sample weight (None: 1). Returns ``(sum of per-row losses before
    each update, new step count)``.
    """
    n = indptr.size - 1
    weights = NO_WEIGHTS if weights is None else weights
    loss = lock_free(_ROWS[opt], n, sums.shape[0], B, lambda part, lo, hi, bias, parts: (
        indptr, indices, values, labels, weights, order, lo, hi, loss_kind, cfg, bias, T, k,
        sums[part], step + part, parts))
    return loss, step + n


def lock_free(train_rows, n: int, parts: int, B: np.ndarray, arguments) -> float:
    """Run a per-row loop over ``n`` rows cut into ``parts`` ranges, trained at once on
    fmkit's threads on the shared table without locks (Hogwild); returns the summed loss.
    ``arguments(part, lo, hi, bias, parts)`` gives ``train_rows``'s arguments for a range.
    The bias, which every row updates, would bounce between the cores' caches: each part
    trains its own copy and the copies are averaged after the chunk. One part runs on the
    calling thread with the bias itself."""
    if parts == 1:
        return train_rows(*arguments(0, 0, n, B, 1))
    width = B.shape[1]
    biases = np.empty((parts, 16 + width), B.dtype)  # 16: each copy on cache lines of its own
    biases[:, :width] = B[0]
    losses = on_threads(train_rows, [
        arguments(part, part * n // parts, (part + 1) * n // parts,
                  biases[part:part + 1, :width], parts) for part in range(parts)])
    B[0] = biases[:, :width].mean(axis=0)
    return sum(losses)


@kernel_helper()
def _prefetch_rows(indptr, indices, order, q, hi, T, k):
    """Start loading what the forward pass reads of the table rows of the features of row
    ``q`` of the order (columns 0..k, which straddle two cache lines in tables whose rows are
    not a multiple of 64 bytes), if ``q < hi``. Called two rows ahead of the forward pass: one
    row ahead the loads arrive late (docs/performance.md, "Mini-batch training without a
    second look-up or a copy")."""
    if q < hi:
        r = _row_at(order, q)
        for j in range(indptr[r], indptr[r + 1]):
            prefetch(T, indices[j], 0)
            prefetch(T, indices[j], k)


@kernel_helper(forceinline=False, fastmath=FAST, error_model="numpy")
def _accumulate(indptr, indices, values, labels, weights, order, lo, hi, loss_kind, inv_rows, B,
                T, k, sums, pos, p, G):
    """Add the mean-loss gradients of rows ``lo:hi`` of the order into the per-slot buffer
    ``G`` (a row ``[g_w, g_v1..g_vk]`` per slot, in the table's dtype); the slots of their
    nonzeros, in that order, are ``pos[p:]`` (:func:`_distinct_features`). Returns ``(sum of
    the rows' losses, gradient of w0)``."""
    total_loss = 0.0
    g0 = 0.0
    _prefetch_rows(indptr, indices, order, lo, hi, T, k)
    _prefetch_rows(indptr, indices, order, lo + 1, hi, T, k)
    for q in range(lo, hi):
        _prefetch_rows(indptr, indices, order, q + 2, hi, T, k)
        if order.size and q + 4 < hi:  # rows in shuffled order: their ids and values too
            _prefetch_entries(indptr, indices, order[q + 4])
            _prefetch_entries(indptr, values, order[q + 4])
        r = _row_at(order, q)
        z = np.float64(B[0, 0] + _row_forward(indptr, indices, values, r, T, k, sums))
        loss, slope = _weighted_loss_and_slope(z, labels, weights, r, loss_kind)
        total_loss += loss
        slope *= inv_rows
        g0 += slope
        for j in range(indptr[r], indptr[r + 1]):
            i = indices[j]
            x = _like(values[j], T)
            t = pos[p]
            p += 1
            gx = _like(slope, T) * x
            G[t, 0] += gx
            for f in range(k):
                G[t, 1 + f] += gx * (sums[f] - T[i, 1 + f] * x)
    return total_loss, g0


@kernel_helper()
def _slot_of(i, slot, seen, count):
    """The slot of id ``i`` in ``slot`` (an int per id, -1: none yet), giving it the next one,
    ``count``, if it has none (and appending ``i`` to ``seen``, the ids in first-seen order).
    Returns ``(its slot, the new count)``."""
    t = slot[i]
    if t < 0:
        t = count
        slot[i] = t
        seen[count] = i
        count += 1
    return t, count


@kernel(nogil=True, allocates=False)
def _distinct_features(indptr, indices, order, lo, hi, slot, touched, pos):
    """The distinct features of rows ``lo:hi`` of the order (empty: as stored) into
    ``touched`` (first-seen order), each one's position in ``slot``, and the position of each
    of the rows' nonzeros, in that order, into ``pos`` (so that the gradient pass reads its
    slots in sequence instead of looking each one up again in ``slot``, an array as long as
    the table); returns how many."""
    n_touched = np.intp(0)  # (a literal 0 would compile _slot_of once more, for it alone)
    p = 0
    for q in range(lo, hi):
        r = _row_at(order, q)
        if order.size and q + 3 < hi:  # rows in shuffled order: their ids too
            _prefetch_entries(indptr, indices, order[q + 3])
        if q + 1 < hi:  # the ids are scattered: start loading the next row's slots
            ahead = _row_at(order, q + 1)
            for j in range(indptr[ahead], indptr[ahead + 1]):
                prefetch(slot, indices[j])
        for j in range(indptr[r], indptr[r + 1]):
            pos[p], n_touched = _slot_of(indices[j], slot, touched, n_touched)
            p += 1
    return n_touched


@kernel(nogil=True, fastmath=FAST, error_model="numpy", allocates=False)
def _batch_gradient(indptr, indices, values, labels, weights, order, lo, hi, loss_kind, inv_rows,
                    B, T, k, sums, pos, p, G, n_touched):
    """The gradient of rows ``lo:hi`` of the order (a mini-batch, or one thread's share of
    one) into ``G`` cleared first (its ``n_touched`` slots): :func:`_accumulate`'s ``(loss,
    gradient of w0)``."""
    mode = flush_denormals()
    G[:n_touched] = 0.0
    loss, g0 = _accumulate(indptr, indices, values, labels, weights, order, lo, hi, loss_kind,
                           inv_rows, B, T, k, sums, pos, p, G)
    restore_float_mode(mode)
    return loss, g0


def _minibatch_stepper(rowwise: bool):
    """:func:`step_minibatch`, and with ``rowwise`` its row-wise AdaGrad twin (its rows by
    :func:`_update_feature_rowwise`)."""

    @kernel_helper(fastmath=FAST, error_model="numpy")
    def step(B, T, g_bias, touched, n_touched, slot, G, width, group, opt, cfg, adam_lr,
             adam_eps):
        """A mini-batch's optimizer step from its gradient: the bias from ``g_bias``, then
        each touched feature's row from ``G[t]`` (``width`` columns; factor vectors of
        ``group``), its slot reset to -1. Shared by the FM's and the FFM's mini-batch loops;
        ``opt``: :func:`kernel_rules`' first."""
        lines, line_floats = (T.shape[1] * T.itemsize + 63) // 64, 64 // T.itemsize
        bw, bm, bs = _row_blocks(B, 0, width)
        _apply_first(bw, bm, bs, g_bias, 1.0, cfg[BIAS_LR], cfg[BIAS_WD], opt, cfg, adam_lr,
                     adam_eps)
        for t in range(n_touched):
            if t + AHEAD < n_touched:  # the rows are scattered: start loading a later one
                for line in range(lines):
                    prefetch(T, touched[t + AHEAD], line * line_floats)
            i = touched[t]
            slot[i] = -1
            if rowwise:
                _update_feature_rowwise(T, i, G[t], G[t], 0, 1.0, _like(0.0, T), width, group,
                                        opt, cfg, adam_lr, adam_eps)
            else:
                _update_feature(T, i, G[t], G[t], 0, 1.0, _like(0.0, T), width, opt, cfg,
                                adam_lr, adam_eps)

    return step


# The FM's and the FFM's mini-batch loops each pick one of these with ``if rowwise:`` on
# their compile-time constant, so numba prunes the other call. A helper taking ``rowwise``
# compiles both (a longer first run), and a step held in a closure variable is never cached
# (docs/performance.md, session 44): hence the two alike branches.
step_minibatch = _minibatch_stepper(False)
step_minibatch_rowwise = _minibatch_stepper(True)


def _batches_trainer(opt: int):
    """The mini-batch loop compiled for one update rule (as :func:`_rows_trainer`)."""
    rule, rowwise = kernel_rules(opt)

    @kernel(nogil=True, fastmath=FAST, error_model="numpy")
    def train_batches(indptr, indices, values, labels, weights, order, lo, hi, batch_size,
                      loss_kind, config, B, T, k, slot, touched, pos, G, sums, step, stride):
        """Rows ``lo:hi`` of ``order`` (a permutation; empty: as stored) in mini-batches of
        ``batch_size`` (the last may be smaller), each one
        optimizer step on the gradient of its mean loss (SageMaker's and MXNet's semantics),
        lazily: only the features it touched. The j-th mini-batch (from 1) is Adam step
        ``step + stride * j``. ``slot`` (an int per table row) must be all -1 and is left so;
        ``touched`` and ``G`` (the table's dtype, a gradient row per distinct feature) hold a
        mini-batch's distinct features, ``pos`` its nonzeros' slots. Returns the summed loss of
        the rows before their updates."""
        mode = flush_denormals()
        cfg = _frozen(config)
        width = k + 1
        total_loss = 0.0
        # each mini-batch sets it (np.zeros would compile one more helper); in the table's
        # dtype, as G is, so that one compiled update serves both
        g_bias = np.empty(1, T.dtype)
        b1_t, b2_t = np.float64(cfg[BETA1]) ** step, np.float64(cfg[BETA2]) ** step
        b1_stride, b2_stride = np.float64(cfg[BETA1]) ** stride, np.float64(cfg[BETA2]) ** stride
        for start in range(lo, hi, batch_size):
            stop = min(start + batch_size, hi)
            n_touched = _distinct_features(indptr, indices, order, start, stop, slot, touched,
                                           pos)
            loss, g_bias[0] = _batch_gradient(indptr, indices, values, labels, weights, order,
                                              start, stop, loss_kind, 1.0 / (stop - start), B,
                                              T, k, sums, pos, 0, G, n_touched)
            total_loss += loss
            b1_t *= b1_stride
            b2_t *= b2_stride
            adam_lr, adam_eps = _adam_scales(b1_t, b2_t, T)
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


def train_minibatches(indptr, indices, values, labels, order, batch_size, loss_kind, opt, cfg, B,
                      T, k, slot, touched, pos, G, sums, step, weights=None):
    """Train on the rows of one chunk in mini-batches of ``batch_size``, in the row order
    ``order`` (a permutation; empty: as stored; shuffling by index saves copying rows), on the
    calling thread; update in place. Each mini-batch takes one optimizer step on the gradient
    of its mean loss (SageMaker's and MXNet's semantics). ``slot`` (int32, an entry per table
    row) must be all -1 and is left so; ``touched`` and ``G`` hold the largest mini-batch's
    distinct features, ``pos`` (int32) its nonzeros; ``weights``: each row's sample weight
    (None: 1; the mean loss is then the weighted losses' sum over the rows). Returns ``(sum of
    per-row losses before each update, step count)``."""
    n = indptr.size - 1
    loss = _BATCHES[opt](indptr, indices, values, labels,
                         NO_WEIGHTS if weights is None else weights, order, 0, n, batch_size,
                         loss_kind, cfg, B, T, k, slot, touched, pos, G, sums, step, 1)
    return loss, step + -(-n // batch_size)


@kernel(nogil=True)
def _sum_parts(G_parts, touched, slot, lo, hi):
    """Gradient rows ``lo:hi`` of every part summed into part 0, their slots reset to -1."""
    for t in range(lo, hi):
        for c in range(G_parts.shape[2]):
            acc = 0.0
            for q in range(G_parts.shape[0]):
                acc += G_parts[q, t, c]
            G_parts[0, t, c] = acc
        slot[touched[t]] = -1


def minibatch_gradient(indptr, indices, values, labels, inv_rows, loss_kind, B, T, k, slot,
                       touched, pos, G_parts, sums, weights=None):
    """The gradient of one mini-batch (all rows given) without updating: the distinct features
    land in ``touched[:n]`` and their summed gradient rows in ``G_parts[0, :n]``, each row's loss
    scaled by ``inv_rows`` (1 / the rows of the whole step, which may span processes). The rows
    are cut across the parts of ``G_parts`` (one per thread); ``pos`` (int32) holds the
    nonzeros' slots. Returns ``(sum of losses, gradient of w0, n)``; ``slot`` is left all -1."""
    n_rows = indptr.size - 1
    parts = G_parts.shape[0]
    n = _distinct_features(indptr, indices, NO_ORDER, 0, n_rows, slot, touched, pos)
    bounds = [part * n_rows // parts for part in range(parts + 1)]
    results = on_threads(_batch_gradient, [
        (indptr, indices, values, labels, NO_WEIGHTS if weights is None else weights, NO_ORDER,
         lo, hi, loss_kind, inv_rows, B, T, k, sums[part], pos, indptr[lo] - indptr[0],
         G_parts[part], n)
        for part, (lo, hi) in enumerate(zip(bounds, bounds[1:]))])
    on_threads(_sum_parts, [(G_parts, touched, slot, part * n // parts, (part + 1) * n // parts)
                            for part in range(parts)])
    return sum(r[0] for r in results), sum(r[1] for r in results), n


@kernel(nogil=True)
def sum_repeated_rows(rows, values, slot):
    """The distinct ``rows`` (first-seen order) and each one's summed ``values`` rows;
    ``slot`` (an int per table row, all -1) is left as it was found. Sums in a fixed order, so
    every process combining the same gathered gradients gets the same bits."""
    n, width = values.shape
    unique = np.empty(n, np.int64)
    summed = np.zeros((n, width), values.dtype)
    count = 0
    for j in range(n):
        if j + AHEAD < n:  # the rows are scattered over a large table: start loading a slot
            prefetch(slot, rows[j + AHEAD])
        s, count = _slot_of(rows[j], slot, unique, count)
        for c in range(width):
            summed[s, c] += values[j, c]
    for j in range(count):
        slot[unique[j]] = -1
    return unique[:count], summed[:count]


def _bias_stepper(opt: int):
    """The bias's part of :func:`apply_gradient`, compiled for one update rule."""

    rule, _ = kernel_rules(opt)

    @kernel(fastmath=FAST, error_model="numpy")
    def bias_step(g0, config, B, k, step):
        """Step ``step`` for the bias; returns Adam's scales of lr and eps at that step."""
        mode = flush_denormals()
        cfg = _frozen(config)
        adam_lr, adam_eps = _adam_scales(np.float64(cfg[BETA1]) ** step,
                                         np.float64(cfg[BETA2]) ** step, B)
        bw, bm, bs = _row_blocks(B, 0, k + 1)
        _apply_first(bw, bm, bs, np.full(1, _like(g0, B)), 1.0, cfg[BIAS_LR], cfg[BIAS_WD],
                     rule, cfg, adam_lr, adam_eps)
        restore_float_mode(mode)
        return adam_lr, adam_eps

    return bias_step


_BIAS_STEP = _per_rule(_bias_stepper)


def apply_gradient(rows, G, g0, opt, cfg, B, T, k, step, n_parts, group=None):
    """One optimizer step from a summed gradient: ``G[t]`` for the distinct features
    ``rows[t]``, ``g0`` for the bias (the second half of :func:`train_minibatches`'s step),
    the features cut across ``n_parts`` threads. ``k``: the factor columns; ``group``: one
    factor vector's length for row-wise AdaGrad (an FFM's k; default: ``k``). Returns the new
    step count."""
    step += 1
    adam_lr, adam_eps = _BIAS_STEP[opt](g0, cfg, B, k, step)
    n = rows.size
    on_threads(_UPDATES[opt], [(T, rows, G, part * n // n_parts, (part + 1) * n // n_parts,
                                group or k, cfg, adam_lr, adam_eps) for part in range(n_parts)])
    return step


def predict_logits(indptr, indices, values, w0, T, k, out, n_chunks):
    """Write y_hat of every row into ``out`` (float64), in ``n_chunks`` chunks, one per thread
    (:func:`predict_logits_serial` on each)."""
    n = indptr.size - 1
    n_chunks = max(1, min(n, n_chunks))
    bounds = [c * n // n_chunks for c in range(n_chunks + 1)]
    on_threads(predict_logits_serial, [(indptr[lo:hi + 1], indices, values, w0, T, k, out[lo:hi])
                                       for lo, hi in zip(bounds, bounds[1:])])


@kernel(nogil=True, fastmath=FAST, error_model="numpy")
def predict_logits_serial(indptr, indices, values, w0, T, k, out):
    """y_hat of every row into ``out`` on the calling thread (``indptr`` may be a slice of a
    batch's: positions in ``indices`` are absolute)."""
    mode = flush_denormals()
    sums = np.empty(k, dtype=T.dtype)
    in_order = np.empty(0, np.int64)
    for r in range(indptr.size - 1):
        _prefetch_ahead(indptr, indices, values, in_order, r, indptr.size - 1, T, 1)
        out[r] = w0[0] + _row_forward(indptr, indices, values, r, T, k, sums)
    restore_float_mode(mode)
