"""Optimizer state and the reference update rule of each optimizer.

SageMaker does not name FM's optimizer; fmkit uses Adam by default (``optimizer`` picks AdaGrad,
FTRL-proximal or plain SGD instead), with per-group learning rates and weight decay (bias,
linear, factors), and *lazy* updates: a mini-batch updates only ``w0`` and the rows of ``w``
and ``V`` whose feature occurs in it, as MXNet's and PyTorch's sparse optimizers do. Per coordinate:

    g = clip(rescale_grad * g, clip_gradient) + wd * param
    adam:    m = b1 m + (1-b1) g;  s = b2 s + (1-b2) g^2;
             param -= lr * (m / (1 - b1^t)) / (sqrt(s / (1 - b2^t)) + eps)
    adagrad: s += g^2;  param -= lr * g / (sqrt(s) + eps)
    rowwise_adagrad: AdaGrad with one s per factor vector (and per linear weight), grown by the
             vector's mean g^2 (fbgemm's and TorchRec's row-wise AdaGrad): less state to carry
    sgd:     param -= lr * g
    ftrl:    (g without the wd term; lr is FTRL's alpha, wd its L2, ftrl_beta and ftrl_l1 the rest)
             n' = n + g^2;  z += g - (sqrt(n') - sqrt(n)) / lr * param;  n = n'
             param = 0 if |z| <= l1 else -(z - sign(z) l1) / ((beta + sqrt(n)) / lr + wd)

FTRL's z starts at -param * (beta / lr + wd), the value whose closed form gives back the initial
weights (so the random factor init is kept, as for the other rules). ``t`` counts updates.
:func:`reference_step` is that rule in numpy, the oracle for the compiled update in
:mod:`fmkit.kernels.fm`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fmkit.cpus import thread_count
from fmkit.kernels import fm as kernels
from fmkit.memory import check_fits, prefaulted_zeros
from fmkit.models.fm.hyperparameters import SWEEPS
from fmkit.models.fm.parameters import FMParameters, init_parameters

BETA1, BETA2 = 0.9, 0.999
OPTIMIZER_IDS = {"sgd": kernels.SGD, "adagrad": kernels.ADAGRAD, "adam": kernels.ADAM,
                 "ftrl": kernels.FTRL, "rowwise_adagrad": kernels.ROWWISE_ADAGRAD}
ACCUMULATING = ("adagrad", "rowwise_adagrad")  # the rules whose sums start at a set value
GROUPS = ("bias", "linear", "factors")


def kernel_config(hp: dict[str, Any], dtype=np.float64) -> np.ndarray:
    """The hyperparameters the training kernels read, as their ``config`` array (of the
    training table's dtype)."""
    config = np.zeros(kernels.CONFIG_SIZE)
    config[kernels.BIAS_LR] = hp["bias_lr"]
    config[kernels.BIAS_WD] = hp["bias_wd"]
    config[kernels.LINEAR_LR] = hp["linear_lr"]
    config[kernels.LINEAR_WD] = hp["linear_wd"]
    config[kernels.FACTORS_LR] = hp["factors_lr"]
    config[kernels.FACTORS_WD] = hp["factors_wd"]
    clip = hp["clip_gradient"] or 0.0
    config[kernels.CLIP] = clip if clip > 0 else np.inf
    config[kernels.EPS] = kernel_eps(hp, dtype)
    config[kernels.RESCALE] = hp["rescale_grad"]
    config[kernels.BETA1] = BETA1
    config[kernels.BETA2] = BETA2
    config[kernels.FTRL_BETA] = hp["ftrl_beta"]
    config[kernels.FTRL_L1] = hp["ftrl_l1"]
    return config.astype(dtype)


def ftrl_z_factor(group: str, hp: dict[str, Any]) -> float:
    """FTRL's z that maps back to a weight (n = 0) is ``weight * this``: ``-(beta / lr + wd)``."""
    lr = hp[f"{group}_lr"]
    return -(hp["ftrl_beta"] / lr + hp[f"{group}_wd"]) if lr > 0 else 0.0


def ftrl_initial_z(param, group: str, hp: dict[str, Any]):
    """FTRL's z that maps back to ``param`` (n = 0)."""
    return param * ftrl_z_factor(group, hp)


def kernel_eps(hp: dict[str, Any], dtype=np.float64) -> float:
    """``eps`` as the training kernels take it: 0 where it cannot change a step of a table of
    ``dtype``, i.e. AdaGrad's sums start at a value ``s0`` with ``eps / sqrt(s0)`` at most the
    dtype's unit roundoff (sums only grow, and 1 / (sqrt(s) + eps) is 1 / sqrt(s) times
    1 / (1 + eps / sqrt(s))). A zero eps lets the kernels take 1 / sqrt(s) from the processor's
    estimate (:func:`fmkit.kernels.lanes.inverse_root`); an FFM's defaults (s0 0.1, eps 1e-8)
    are such a case."""
    floor = initial_accumulator(hp["optimizer"], hp)
    if floor > 0 and hp["eps"] / np.sqrt(floor) <= np.finfo(dtype).eps / 2:
        return 0.0
    return float(hp["eps"])


def initial_accumulator(optimizer: str, hp: dict[str, Any]) -> float:
    """What ``optimizer``'s sums of squared gradients start from: ``initial_accumulator_value``
    for AdaGrad (either kind), 0 for the other rules."""
    return float(hp.get("initial_accumulator_value", 0.0)) if optimizer in ACCUMULATING else 0.0


def factor_group(hp: dict[str, Any]) -> int:
    """The length of one factor vector, which row-wise AdaGrad keeps one sum for: an FM's
    ``num_factors``; an FFM's table (``num_factors`` = its fields x k) says its k in
    ``factor_group`` (:func:`fmkit.models.fm.hyperparameters.table_hyperparameters`)."""
    return hp.get("factor_group", hp["num_factors"])


CACHE_LINE = 64


def _table_layout(num_factors: int, group: int, optimizer: str, dtype
                  ) -> tuple[int, int, int]:
    """``(width, columns, stored)`` of a training table row: the weights, the weights with the
    optimizer's moment blocks, and that padded to whole cache lines when the padding costs at
    most a quarter more memory (Adam's and FTRL's 3 x (k+1) = 27 float32 for k=8 become 32:
    each update then touches 2 lines instead of up to 3; measured +15% rows/s). The padding
    columns are at the end of each row and stay unused."""
    width = num_factors + 1
    columns = width + kernels.moment_columns(OPTIMIZER_IDS[optimizer], width, group)
    per_line = CACHE_LINE // np.dtype(dtype).itemsize
    padded = -(-columns // per_line) * per_line
    return width, columns, padded if padded <= 1.25 * columns else columns


def check_memory(hp: dict[str, Any], dtype=np.float32) -> None:
    """Refuse hyperparameters whose training tables cannot fit in memory (see
    :func:`fmkit.memory.check_fits`): the table, the returned weights and a row index."""
    rows, itemsize = hp["feature_dim"], np.dtype(dtype).itemsize
    if hp["optimizer"] in SWEEPS:  # (mcmc: a sample and the samples' mean) in float64
        width, stored, itemsize = hp["num_factors"] + 1, 2 * (hp["num_factors"] + 1), 8
    else:
        width, _, stored = _table_layout(hp["num_factors"], factor_group(hp), hp["optimizer"],
                                         dtype)
    check_fits(f"An FM with feature_dim={rows} and num_factors={hp['num_factors']}", [
        (f"weights and {hp['optimizer']} state ({rows} x {stored})", rows * stored * itemsize),
        (f"returned weights ({rows} x {width})", rows * width * itemsize),
        ("per-feature scratch", rows * 8),
    ], "Lower feature_dim (hash the features into fewer ids) or num_factors, or use "
       "optimizer=sgd (no per-weight state) or rowwise_adagrad (a sum per factor vector).")


def training_tables(params: FMParameters | None, optimizer: str, hp: dict[str, Any],
                    dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """The bias and feature tables the training kernels update: each weight row widened with
    the optimizer's moment blocks (see :mod:`fmkit.kernels.fm`). The bias is a one-row table of
    the same layout whose factor columns stay 0. Without ``params``, fresh weights are drawn
    straight into the table (no second copy of the model in memory)."""
    opt = OPTIMIZER_IDS[optimizer]
    dtype = params.table.dtype if params is not None else dtype
    width, columns, stored = _table_layout(hp["num_factors"], factor_group(hp), optimizer, dtype)
    check_memory({**hp, "optimizer": optimizer}, dtype)
    table = prefaulted_zeros((hp["feature_dim"], stored), dtype)
    if params is None:
        params = init_parameters(hp, dtype, out=table[:, :width], threads=thread_count())
    else:
        table[:, :width] = params.table
    bias = np.zeros((1, columns), dtype)
    bias[0, 0] = params.w0[0]
    if opt == kernels.FTRL:
        bias[0, width] = ftrl_initial_z(params.w0[0], "bias", hp)
        np.multiply(params.w, ftrl_z_factor("linear", hp), out=table[:, width])
        np.multiply(params.V, ftrl_z_factor("factors", hp), out=table[:, width + 1: 2 * width])
    if optimizer in ACCUMULATING:
        start = initial_accumulator(optimizer, hp)
        bias[0, width:] = start
        table[:, width:columns] = start
    return bias, table


@dataclass
class OptimizerState:
    """The reference's moments per parameter group (``m`` first: Adam's m or FTRL's z; ``s``
    second: Adam's or AdaGrad's s, FTRL's n) and step count. (The compiled trainer keeps the
    same moments beside the weights in its training tables.)"""

    name: str
    m0: np.ndarray
    s0: np.ndarray
    mw: np.ndarray
    sw: np.ndarray
    mV: np.ndarray
    sV: np.ndarray
    step: int = 0

    @classmethod
    def initial(cls, name: str, params: FMParameters, hp: dict[str, Any]) -> OptimizerState:
        def z(param, group):
            return (ftrl_initial_z(param, group, hp) if name == "ftrl"
                    else np.zeros_like(param)).astype(np.float64)

        start = initial_accumulator(name, hp)
        return cls(name=name,
                   m0=z(params.w0, "bias"), s0=np.full(1, start),
                   mw=z(params.w, "linear"), sw=np.full(params.feature_dim, start),
                   mV=z(params.V, "factors"), sV=np.full(params.V.shape, start))


def apply_rule(name: str, param, g, m, s, lr, wd, t, hp, xp=np):
    """One step of ``name`` on arrays in place; ``g`` already carries ``wd * param`` except
    for FTRL, which takes ``wd`` as its L2 strength. ``xp`` is the array library (numpy for
    the reference, torch for training on a device): the same arithmetic for both."""
    eps = hp["eps"]
    if name == "adam":
        m[...] = BETA1 * m + (1 - BETA1) * g
        s[...] = BETA2 * s + (1 - BETA2) * g * g
        param -= lr * (m / (1 - BETA1**t)) / (xp.sqrt(s / (1 - BETA2**t)) + eps)
    elif name == "adagrad":
        s += g * g
        param -= lr * g / (xp.sqrt(s) + eps)
    elif name == "rowwise_adagrad":  # s holds each vector's sum in each of its coordinates
        if g.ndim == 2:
            rows, group = g.shape[0], factor_group(hp)
            each = s.reshape(rows, -1, group)  # a view: s is contiguous
            each += (g * g).reshape(rows, -1, group).sum(-1)[..., None] / group
        else:
            s += g * g
        param -= lr * g / (xp.sqrt(s) + eps)
    elif name == "ftrl":
        beta, l1 = hp["ftrl_beta"], hp["ftrl_l1"]
        n_new = s + g * g
        m += g - (xp.sqrt(n_new) - xp.sqrt(s)) / lr * param
        s[...] = n_new
        closed = -(m - xp.sign(m) * l1) / ((beta + xp.sqrt(n_new)) / lr + wd)
        param[...] = xp.where(xp.abs(m) > l1, closed, xp.zeros_like(closed))
    else:
        param -= lr * g


def reference_step(params: FMParameters, state: OptimizerState, grads, touched: np.ndarray,
                   hp: dict[str, Any]) -> None:
    """Apply one lazy update in place: ``grads`` = (g0, gw, gV) dense, ``touched`` = feature ids."""
    g0, gw, gV = grads
    state.step += 1
    clip = hp["clip_gradient"] or 0.0
    name = state.name
    rows = np.asarray(touched)
    for param, m_all, s_all, grad, group, at in (
        (params.w0, state.m0, state.s0, np.atleast_1d(g0), "bias", np.array([0])),
        (params.w, state.mw, state.sw, gw, "linear", rows),
        (params.V, state.mV, state.sV, gV, "factors", rows),
    ):
        p = param[at].astype(np.float64)
        m, s = m_all[at], s_all[at]
        g = np.asarray(grad[at], dtype=np.float64) * hp["rescale_grad"]
        if clip > 0:
            g = np.clip(g, -clip, clip)
        wd = hp[f"{group}_wd"]
        if name != "ftrl":
            g = g + wd * p
        apply_rule(name, p, g, m, s, hp[f"{group}_lr"], wd, state.step, hp)
        param[at], m_all[at], s_all[at] = p, m, s
