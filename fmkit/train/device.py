"""FM training on a PyTorch device (``fmkit train --device cuda``).

The compiled kernels (:mod:`fmkit.kernels.fm`) are CPU code. On a GPU the same model is trained
with PyTorch: for each mini-batch the rows of the distinct features it touches are gathered,
autograd gives the gradient of the batch's mean loss, and the update is
:func:`fmkit.train.optimizers.apply_rule` — the reference's own rule, written once for numpy
and torch — applied to those rows only (lazy updates, as the kernels and SageMaker do). On the
CPU device this path computes what the kernels compute (the tests hold it to them), which is
how it is tested on machines without a GPU.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np

from fmkit import distributed
from fmkit.data.batch import SparseBatch
from fmkit.errors import DataError, TrainingDiverged
from fmkit.logs import DEFAULT_HOST, log
from fmkit.models.fm import FMParameters, init_parameters
from fmkit.models.fm_torch import batch_tensors, fm_logits
from fmkit.train.callbacks import EarlyStopping
from fmkit.train.optimizers import apply_rule, ftrl_initial_z
from fmkit.train.trainer import EpochStats, local_batches, validation_metrics


def _batch_gradient(batch: SparseBatch | None, w0, w, V, hp: dict[str, Any], device, dtype):
    """The summed (not yet averaged) loss gradient of a batch's rows: (touched feature ids,
    their gradient rows [g_w, g_v...], g_w0, summed loss, rows); empty for no batch."""
    import torch

    if batch is None:
        return (torch.zeros(0, dtype=torch.int64, device=device),
                torch.zeros((0, V.shape[1] + 1), dtype=dtype, device=device),
                torch.zeros_like(w0), 0.0, 0)
    rows, ids, values, labels = batch_tensors(batch, device, dtype)
    touched, position = torch.unique(ids, return_inverse=True)
    b = w0.clone().requires_grad_()
    w_rows = w[touched].clone().requires_grad_()
    V_rows = V[touched].clone().requires_grad_()
    y = fm_logits(b, w_rows, V_rows, rows, ids, values, batch.n_rows, position)
    if hp["predictor_type"] == "binary_classifier":
        loss = torch.nn.functional.binary_cross_entropy_with_logits(y, labels, reduction="sum")
    else:
        loss = ((y - labels) ** 2).sum()
    loss.backward()
    G = torch.cat([w_rows.grad[:, None], V_rows.grad], dim=1)
    return touched, G, b.grad, float(loss.detach()), batch.n_rows


def train_on_device(hp: dict[str, Any], source, device, params: FMParameters | None = None, *,
                    validation=None, progress: bool | None = None, dtype=None,
                    host: str = DEFAULT_HOST) -> tuple[FMParameters, list]:
    """Train an FM on ``device`` with mini-batches of ``mini_batch_size``; returns the weights
    (numpy) and per-epoch statistics, as :func:`fmkit.train.trainer.train` does (a
    ``validation`` source drives early stopping the same way). With several
    processes each computes the gradient of its share of every step and the sparse gradient
    rows are gathered and summed in rank order (as the CPU trainer does), so every replica
    takes the same step."""
    import torch
    from tqdm import tqdm


    dtype = dtype or torch.float32
    name = hp["optimizer"]
    params = params if params is not None else init_parameters(hp)
    as_tensor = {"dtype": dtype, "device": device}
    w0, w, V = (torch.tensor(np.asarray(a, dtype=np.float64), **as_tensor)
                for a in (params.w0, params.w, params.V))
    groups = {}
    for group, param in (("bias", w0), ("linear", w), ("factors", V)):
        m = (ftrl_initial_z(param, group, hp).clone() if name == "ftrl"
             else torch.zeros_like(param))
        groups[group] = (param, m, torch.zeros_like(param))
    clip = hp["clip_gradient"] or 0.0
    rank, world = distributed.rank_and_size()
    local = -(-hp["mini_batch_size"] // world)  # each process's share of a step
    slot = np.full(hp["feature_dim"], -1, np.int64) if world > 1 else None
    rng = np.random.default_rng(hp["seed"])
    show = (sys.stderr.isatty() if progress is None else progress) and rank == 0
    history, step = [], 0
    stopper = EarlyStopping(hp["early_stopping_metric"], hp["predictor_type"],
                            hp["early_stopping_patience"])

    def weights() -> FMParameters:
        return FMParameters(*(t.cpu().numpy().astype(np.float32) for t in (w0, w, V)))

    for epoch in range(1, hp["epochs"] + 1):
        started, rows_seen, loss_sum = time.perf_counter(), 0, 0.0
        if world > 1:  # per-epoch generators, as the CPU trainer's several processes use
            rng = np.random.default_rng([hp["seed"], rank, epoch])
        bar = tqdm(desc=f"epoch {epoch}/{hp['epochs']}", unit=" rows", unit_scale=True,
                   disable=not show, file=sys.stderr)
        batches = local_batches(source, local, hp["shuffle"], rng)
        while True:
            batch = next(batches, None)
            touched, G, g0, loss, n = _batch_gradient(batch, w0, w, V, hp, device, dtype)
            if world > 1:  # every process's sparse gradient rows, summed in rank order
                (n, loss, g0_sum), ids, rows = distributed.sum_sparse_rows(
                    np.array([n, loss, float(g0)]), touched.cpu().numpy(),
                    G.double().cpu().numpy(), slot)
                touched = torch.from_numpy(ids).to(device)
                G = torch.from_numpy(rows).to(device=device, dtype=dtype)
                g0 = torch.full_like(w0, g0_sum)
            if n == 0:
                break
            step += 1
            with torch.no_grad():
                for group, at, grad in (("bias", slice(None), g0 / n),
                                        ("linear", touched, G[:, 0] / n),
                                        ("factors", touched, G[:, 1:] / n)):
                    param, m_all, s_all = groups[group]
                    p, m, s = param[at].clone(), m_all[at].clone(), s_all[at].clone()
                    g = grad * hp["rescale_grad"]
                    if clip > 0:
                        g = g.clamp(-clip, clip)
                    wd = hp[f"{group}_wd"]
                    if name != "ftrl":
                        g = g + wd * p
                    apply_rule(name, p, g, m, s, hp[f"{group}_lr"], wd, step, hp, torch)
                    param[at], m_all[at], s_all[at] = p, m, s
            rows_seen += int(n)
            loss_sum += loss
            bar.update(int(n))
        bar.close()
        if rows_seen == 0:
            raise DataError(source.name, None, "holds no data rows")
        stats = EpochStats(epoch, loss_sum / rows_seen, rows_seen, time.perf_counter() - started)
        if not np.isfinite(stats.loss):
            raise TrainingDiverged(epoch)
        history.append(stats)
        log.info("epoch %d/%d: train loss %.6f over %d rows (%.0f rows/s) on %s", epoch,
                 hp["epochs"], stats.loss, rows_seen, stats.rows_per_second, device)
        if validation is not None:
            current = weights()
            stats.validation = validation_metrics(hp, current, validation, epoch, host)
            if stopper.update(epoch, stats.validation, lambda kept=current: kept):  # a fresh copy
                break
    best = stopper.best_weights
    return (best if best is not None else weights()), history
