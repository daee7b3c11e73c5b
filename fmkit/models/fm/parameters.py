"""The factorization machine, written plainly: the reference every fast path is tested against.

    y_hat(x) = w0 + sum_i w_i x_i + sum_{i<j} <v_i, v_j> x_i x_j
             = w0 + X w + 1/2 sum_f [ (X V)_f^2 - (X^2)(V^2)_f ]        (O(k * nnz) per row)

Losses follow SageMaker: the mean log loss of sigmoid(y_hat) for ``binary_classifier`` and the
mean squared error for ``regressor``. These functions use scipy sparse algebra in float64; they
are for tests and small data. Training and prediction run in :mod:`fmkit.kernels.fm`.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import Any

import numpy as np
import scipy.sparse as sp


class FMParameters:
    """The learned weights: bias ``w0`` (shape (1,)), linear ``w`` (d,), factors ``V`` (d, k).

    ``w`` and ``V`` are views of one table with a row per feature, ``[w_i, v_i1..v_ik]``: the
    layout the kernels read, so one feature's weights share a cache line.
    """

    def __init__(self, w0: np.ndarray, w: np.ndarray, V: np.ndarray):
        V = np.asarray(V)
        table = np.empty((V.shape[0], V.shape[1] + 1), dtype=np.result_type(w, V))
        table[:, 0] = w
        table[:, 1:] = V
        self.w0 = np.asarray(w0, dtype=table.dtype).reshape(1).copy()
        self.table = table

    @classmethod
    def from_table(cls, w0: np.ndarray, table: np.ndarray) -> FMParameters:
        params = cls.__new__(cls)
        params.w0, params.table = w0, table
        return params

    @property
    def w(self) -> np.ndarray:
        return self.table[:, 0]

    @property
    def V(self) -> np.ndarray:
        return self.table[:, 1:]

    @property
    def feature_dim(self) -> int:
        return self.table.shape[0]

    @property
    def num_factors(self) -> int:
        return self.table.shape[1] - 1

    def copy(self) -> FMParameters:
        return FMParameters.from_table(self.w0.copy(), self.table.copy())


# the factors' auto start per rule, measured on validation rows (docs/quality.md, "Starting
# points"). Adam's steps are about factors_lr each whatever the gradient, so its start is as
# wide as ADAM_STEPS of them undo, within ADAM_SIGMA: SageMaker's 0.001 at its default rate,
# the a9a grid's best 0.01 at rates of 0.001 and more.
AUTO_FACTORS_SIGMA = {"adagrad": 0.1, "rowwise_adagrad": 0.1, "sgd": 0.1, "ftrl": 0.1,
                      "mcmc": 0.1, "als": 0.1}  # (libFM's and fastFM's init_stdev)
ADAM_STEPS, ADAM_SIGMA = 10, (0.001, 0.01)
LABEL_ROWS = 1 << 16  # the training rows the auto bias start is measured on


def starting_point(hp: dict[str, Any], label_mean: float | None) -> dict[str, Any]:
    """``hp`` with fmkit's ``auto`` init methods made concrete: the bias starts at the constant
    a model without features would predict — ``label_mean`` for a regressor, the logit of the
    positive rate ``label_mean`` for a classifier (0 when None: nothing measured) — and the
    factors are drawn from a normal whose width suits the optimizer (the factors' gradients are
    proportional to the other factors, so a start too small trains slowly; Adam's steps do not
    scale with the gradient, and a small start suffices)."""
    resolved = dict(hp)
    if hp["bias_init_method"] == "auto":
        start = 0.0
        if label_mean is not None and hp["predictor_type"] == "regressor":
            start = float(label_mean)
        elif label_mean is not None:
            rate = min(max(float(label_mean), 1e-6), 1 - 1e-6)
            start = float(np.log(rate / (1 - rate)))
        resolved.update(bias_init_method="constant", bias_init_value=start)
    if hp["factors_init_method"] == "auto":
        resolved.update(factors_init_method="normal",
                        factors_init_sigma=auto_factors_sigma(hp["optimizer"], hp["factors_lr"]))
    return resolved


def auto_factors_sigma(optimizer: str, factors_lr: float) -> float:
    """The standard deviation of the factors' ``auto`` start (see ``AUTO_FACTORS_SIGMA``)."""
    if optimizer == "adam":
        low, high = ADAM_SIGMA
        return min(max(ADAM_STEPS * factors_lr, low), high)
    return AUTO_FACTORS_SIGMA[optimizer]


INIT_ROWS = 1 << 16  # rows drawn per block, each block from a generator of its own


def _init(out: np.ndarray, hp: dict[str, Any], group: str, seeds: np.random.SeedSequence,
          pool: ThreadPoolExecutor | None) -> None:
    """Fill ``out`` as the group's ``*_init_*`` hyperparameters ask, in blocks of rows, each
    drawn by a generator seeded from the block's own child of ``seeds``: no temporary the size of
    ``out``, the blocks drawn on several threads (numpy's generators release the GIL), and the
    same numbers whatever the number of threads."""
    method = hp[f"{group}_init_method"]
    # drawn in float32 for float32 weights: 4x faster for a large table (0.39 s -> 0.1 s for
    # 9M weights), a visible part of a short training run
    draw = np.float32 if out.dtype == np.float32 else np.float64
    starts = range(0, out.shape[0], INIT_ROWS)

    def fill(start: int, seed: np.random.SeedSequence) -> None:
        part = out[start:start + INIT_ROWS]
        rng = np.random.default_rng(seed)
        if method == "normal":
            values = rng.standard_normal(size=part.shape, dtype=draw)
            values *= draw(hp[f"{group}_init_sigma"])
        elif method == "uniform":
            scale = hp[f"{group}_init_scale"]
            values = rng.random(size=part.shape, dtype=draw)
            values *= draw(2 * scale)
            values -= draw(scale)
        else:
            values = hp[f"{group}_init_value"]
        part[...] = values

    blocks = zip(starts, seeds.spawn(len(starts)))
    if pool is None:
        for start, seed in blocks:
            fill(start, seed)
    else:
        list(pool.map(lambda block: fill(*block), blocks))


def init_parameters(hp: dict[str, Any], dtype=np.float32, out: np.ndarray | None = None,
                    threads: int = 1) -> FMParameters:
    """Initial weights as the ``*_init_*`` hyperparameters ask, seeded by ``seed``; written into
    ``out`` (a (feature_dim, k+1) table, e.g. the first columns of a training table) if given.
    ``threads`` draw blocks of rows at once (9M weights: 0.075 s on one core, 0.04 s on two);
    the weights do not depend on it. ``auto`` methods not yet resolved by the trainer (which
    knows the labels: :func:`starting_point`) start the bias at 0."""
    hp = starting_point(hp, None)
    bias_seeds, linear_seeds, factor_seeds = np.random.SeedSequence(hp["seed"]).spawn(3)
    d, k = hp["feature_dim"], hp["num_factors"]
    w0 = np.empty(1, dtype=dtype)
    table = np.empty((d, k + 1), dtype=dtype) if out is None else out
    with ThreadPoolExecutor(threads) if threads > 1 and d > INIT_ROWS else nullcontext() as pool:
        _init(w0, hp, "bias", bias_seeds, None)
        _init(table[:, 0], hp, "linear", linear_seeds, pool)
        _init(table[:, 1:], hp, "factors", factor_seeds, pool)
    return FMParameters.from_table(w0, table)


def reference_logits(params: FMParameters, X: sp.spmatrix) -> np.ndarray:
    """y_hat for every row of ``X`` (float64)."""
    X = sp.csr_matrix(X, dtype=np.float64)
    V = params.V.astype(np.float64)
    sums = X @ V
    squares = X.multiply(X) @ (V * V)
    pairwise = 0.5 * (sums * sums - squares).sum(axis=1)
    return float(params.w0[0]) + X @ params.w.astype(np.float64) + np.asarray(pairwise).ravel()


def sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-z)), without overflow for large |z|."""
    z = np.asarray(z, dtype=np.float64)
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


def loss_and_slope(logits: np.ndarray, y: np.ndarray, predictor_type: str):
    """Per-row loss and its derivative with respect to y_hat."""
    logits = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if predictor_type == "binary_classifier":
        loss = np.maximum(logits, 0) - logits * y + np.log1p(np.exp(-np.abs(logits)))
        return loss, sigmoid(logits) - y
    diff = logits - y
    return diff * diff, 2.0 * diff


def reference_gradients(params: FMParameters, X: sp.spmatrix, y: np.ndarray,
                        predictor_type: str) -> tuple[float, np.ndarray, np.ndarray]:
    """Gradients of the mean loss over the rows of ``X``: (d/dw0, d/dw, d/dV), dense, float64."""
    X = sp.csr_matrix(X, dtype=np.float64)
    V = params.V.astype(np.float64)
    _, slope = loss_and_slope(reference_logits(params, X), y, predictor_type)
    slope = slope / X.shape[0]
    sums = X @ V  # (n, k)
    g0 = float(slope.sum())
    gw = X.T @ slope
    # d y_hat / d v_if = x_i * (sum_j v_jf x_j - v_if x_i)
    gV = X.T @ (slope[:, None] * sums) - V * (X.multiply(X).T @ slope)[:, None]
    return g0, np.asarray(gw).ravel(), np.asarray(gV)
