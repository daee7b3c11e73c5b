"""Optimizer state and the reference update rule of each optimizer.

SageMaker does not name FM's optimizer; fmkit uses Adam by default (``optimizer`` picks AdaGrad or
plain SGD instead), with per-group learning rates and weight decay (bias, linear, factors), and
*lazy* updates: a mini-batch updates only ``w0`` and the rows of ``w`` and ``V`` whose feature
occurs in it, as MXNet's and PyTorch's sparse optimizers do. Per coordinate:

    g = clip(rescale_grad * g, clip_gradient) + wd * param
    adam:    m = b1 m + (1-b1) g;  s = b2 s + (1-b2) g^2;
             param -= lr * (m / (1 - b1^t)) / (sqrt(s / (1 - b2^t)) + eps)
    adagrad: s += g^2;  param -= lr * g / (sqrt(s) + eps)
    sgd:     param -= lr * g

``t`` counts mini-batches. :func:`reference_step` is that rule in numpy, the oracle for the
compiled update in :mod:`fmkit.kernels.fm`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fmkit.kernels import fm as kernels
from fmkit.models.fm import FMParameters

BETA1, BETA2 = 0.9, 0.999
OPTIMIZER_IDS = {"sgd": kernels.SGD, "adagrad": kernels.ADAGRAD, "adam": kernels.ADAM}


def kernel_config(hp: dict[str, Any]) -> np.ndarray:
    """The hyperparameters the training kernel reads, as its float64 ``config`` array."""
    config = np.zeros(kernels.CONFIG_SIZE)
    config[kernels.BIAS_LR] = hp["bias_lr"]
    config[kernels.BIAS_WD] = hp["bias_wd"]
    config[kernels.LINEAR_LR] = hp["linear_lr"]
    config[kernels.LINEAR_WD] = hp["linear_wd"]
    config[kernels.FACTORS_LR] = hp["factors_lr"]
    config[kernels.FACTORS_WD] = hp["factors_wd"]
    config[kernels.CLIP] = hp["clip_gradient"] or 0.0
    config[kernels.EPS] = hp["eps"]
    config[kernels.RESCALE] = hp["rescale_grad"]
    config[kernels.BETA1] = BETA1
    config[kernels.BETA2] = BETA2
    return config


@dataclass
class OptimizerState:
    """The reference's moments per parameter group (``m`` first, ``s`` second) and step count.

    (The compiled trainer keeps the same moments beside the weights in its training table.)

    A rule that keeps no ``m`` (AdaGrad, SGD) or no ``s`` (SGD) gets one-element placeholders,
    so memory is only spent on state the rule uses.
    """

    name: str
    m0: np.ndarray
    s0: np.ndarray
    mw: np.ndarray
    sw: np.ndarray
    mV: np.ndarray
    sV: np.ndarray
    step: int = 0

    @classmethod
    def zeros(cls, name: str, params: FMParameters) -> OptimizerState:
        d, k = params.V.shape
        dtype = params.V.dtype
        with_m = name == "adam"
        with_s = name != "sgd"

        def state(used: bool, shape: tuple[int, ...]) -> np.ndarray:
            # an unused moment is a placeholder of one row: (1,) or (1, k)
            return np.zeros(shape if used else (1, *shape[1:]), dtype=dtype)

        return cls(
            name=name,
            m0=np.zeros(1, dtype), s0=np.zeros(1, dtype),
            mw=state(with_m, (d,)), sw=state(with_s, (d,)),
            mV=state(with_m, (d, k)), sV=state(with_s, (d, k)),
        )


def _rule(name: str, param, g, m, s, lr, eps, t):
    if name == "adam":
        m[...] = BETA1 * m + (1 - BETA1) * g
        s[...] = BETA2 * s + (1 - BETA2) * g * g
        param -= lr * (m / (1 - BETA1**t)) / (np.sqrt(s / (1 - BETA2**t)) + eps)
    elif name == "adagrad":
        s += g * g
        param -= lr * g / (np.sqrt(s) + eps)
    else:
        param -= lr * g


def reference_step(params: FMParameters, state: OptimizerState, grads, touched: np.ndarray,
                   hp: dict[str, Any]) -> None:
    """Apply one lazy update in place: ``grads`` = (g0, gw, gV) dense, ``touched`` = feature ids."""
    g0, gw, gV = grads
    state.step += 1
    t = state.step
    clip = hp["clip_gradient"] or 0.0

    def prepare(g, param, wd):
        g = np.asarray(g, dtype=np.float64) * hp["rescale_grad"]
        if clip > 0:
            g = np.clip(g, -clip, clip)
        return g + wd * param

    name = state.name
    eps = hp["eps"]
    # bias
    p0 = params.w0.astype(np.float64)
    m0, s0 = state.m0.astype(np.float64), state.s0.astype(np.float64)
    _rule(name, p0, prepare(g0, p0, hp["bias_wd"]), m0, s0, hp["bias_lr"], eps, t)
    params.w0[:], state.m0[:], state.s0[:] = p0, m0, s0
    rows = np.asarray(touched)
    for param, m_all, s_all, grad, group in (
        (params.w, state.mw, state.sw, gw, "linear"),
        (params.V, state.mV, state.sV, gV, "factors"),
    ):
        p = param[rows].astype(np.float64)
        m = m_all[rows].astype(np.float64) if name == "adam" else np.zeros_like(p)
        s = s_all[rows].astype(np.float64) if name != "sgd" else np.zeros_like(p)
        _rule(name, p, prepare(grad[rows], p, hp[f"{group}_wd"]), m, s, hp[f"{group}_lr"], eps, t)
        param[rows] = p
        if name == "adam":
            m_all[rows] = m
        if name != "sgd":
            s_all[rows] = s
