"""FM training on a PyTorch device (``fmkit train --device cuda``): the learner that
:func:`fmkit.train.kernel_learner.train` uses for a device other than ``cpu``.

The compiled kernels (:mod:`fmkit.kernels.fm`) are CPU code. On a GPU the same model is trained
with PyTorch: for each mini-batch the rows of the distinct features it touches are gathered,
autograd gives the gradient of the batch's mean loss, and the update is
:func:`fmkit.train.optimizers.apply_rule` — the reference's own rule, written once for numpy
and torch — applied to those rows only (lazy updates, as the kernels and SageMaker do). On the
CPU device this path computes what the kernels compute (the tests hold it to them), which is
how it is tested on machines without a GPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from fmkit.data.batch import SparseBatch, shuffled_batches
from fmkit.errors import FM_DIVERGED_HINT, TrainingDiverged
from fmkit.models.fm.device import batch_tensors, fm_logits, resolve_device
from fmkit.models.fm.model import validation_metrics
from fmkit.models.fm.parameters import FMParameters, init_parameters
from fmkit.train.engine import Gradient, Source
from fmkit.train.optimizers import apply_rule, ftrl_initial_z, initial_accumulator

GROUPS = ("bias", "linear", "factors")


class TorchLearner:
    """An FM on a PyTorch ``device`` (a name or ``torch.device``): the weights ``w0, w, V``
    and, per group, the optimizer's two moments, as tensors of ``dtype`` (a numpy dtype) on
    the device."""

    primary = True
    diverged_hint = FM_DIVERGED_HINT

    def __init__(self, hp: dict[str, Any], params: FMParameters | None, device: Any,
                 dtype: Any = None):
        import torch

        self.hp, self.steps = hp, 0
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.dtype = getattr(torch, np.dtype(dtype or np.float32).name)
        params = params if params is not None else init_parameters(hp)
        self.groups = {}
        start = initial_accumulator(hp["optimizer"], hp)
        for group, array in zip(GROUPS, (params.w0, params.w, params.V)):
            param = self._tensor(np.asarray(array, dtype=np.float64))
            m = (ftrl_initial_z(param, group, hp).clone() if hp["optimizer"] == "ftrl"
                 else torch.zeros_like(param))
            self.groups[group] = (param, m, torch.full_like(param, start))

    def _tensor(self, array: Any):
        import torch

        return torch.as_tensor(array, dtype=self.dtype, device=self.device)

    def batches(self, source: Source, rng: np.random.Generator) -> Iterator[SparseBatch]:
        return self.mini_batches(source, self.hp["mini_batch_size"], rng)

    def mini_batches(self, source: Source, size: int, rng: np.random.Generator
                     ) -> Iterator[SparseBatch]:
        return shuffled_batches(source.blocks(), size, self.hp["shuffle"], rng)

    def step(self, batch: SparseBatch) -> tuple[float, int]:
        gradient = self.gradient(batch)
        self.apply(gradient)
        return gradient.loss, gradient.rows

    def gradient(self, batch: SparseBatch | None) -> Gradient:
        """The summed (not yet averaged) loss gradient of a batch's rows, by autograd over the
        rows of the distinct features it touches."""
        import torch

        w0, w, V = (self.groups[g][0] for g in GROUPS)
        if batch is None:
            return Gradient(0, 0.0, torch.zeros_like(w0),
                            [(torch.zeros(0, dtype=torch.int64, device=self.device),
                              torch.zeros((0, V.shape[1] + 1), dtype=self.dtype,
                                          device=self.device), V.shape[0])])
        rows, ids, values, labels = batch_tensors(batch, self.device, self.dtype)
        touched, position = torch.unique(ids, return_inverse=True)
        b = w0.clone().requires_grad_()
        w_rows = w[touched].clone().requires_grad_()
        V_rows = V[touched].clone().requires_grad_()
        y = fm_logits(b, w_rows, V_rows, rows, ids, values, batch.n_rows, position)
        if self.hp["predictor_type"] == "binary_classifier":
            losses = torch.nn.functional.binary_cross_entropy_with_logits(y, labels,
                                                                          reduction="none")
        else:
            losses = (y - labels) ** 2
        if batch.weights is not None:  # each row's loss times its sample weight
            losses = losses * torch.as_tensor(batch.weights, dtype=self.dtype,
                                              device=self.device)
        loss = losses.sum()
        loss.backward()
        G = torch.cat([w_rows.grad[:, None], V_rows.grad], dim=1)
        return Gradient(batch.n_rows, float(loss.detach()), b.grad, [(touched, G, V.shape[0])])

    def apply(self, gradient: Gradient) -> None:
        """One optimizer step (:func:`apply_rule`, lazily: the touched rows only) on the
        gradient of the step's mean loss."""
        import torch

        hp, n = self.hp, gradient.rows
        ids, G, _ = gradient.sparse[0]
        ids = torch.as_tensor(ids, device=self.device)
        G, g0 = self._tensor(G), self._tensor(gradient.dense)
        clip = hp["clip_gradient"] or 0.0
        self.steps += 1
        with torch.no_grad():
            for group, at, grad in (("bias", slice(None), g0 / n), ("linear", ids, G[:, 0] / n),
                                    ("factors", ids, G[:, 1:] / n)):
                param, m_all, s_all = self.groups[group]
                p, m, s = param[at].clone(), m_all[at].clone(), s_all[at].clone()
                g = grad * hp["rescale_grad"]
                if clip > 0:
                    g = g.clamp(-clip, clip)
                wd = hp[f"{group}_wd"]
                if hp["optimizer"] != "ftrl":
                    g = g + wd * p
                apply_rule(hp["optimizer"], p, g, m, s, hp[f"{group}_lr"], wd, self.steps, hp,
                           torch)
                param[at], m_all[at], s_all[at] = p, m, s

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        return {f"{group}/{i}": t.cpu().numpy() for group, tensors in self.groups.items()
                for i, t in enumerate(tensors)}, {}

    def restore(self, arrays: dict[str, np.ndarray], extra: dict) -> None:
        for group, tensors in self.groups.items():
            for i, t in enumerate(tensors):
                t.copy_(self._tensor(arrays[f"{group}/{i}"]))

    def weights(self) -> dict[str, np.ndarray]:
        return {group: self.groups[group][0].cpu().numpy().astype(np.float32)
                for group in GROUPS}

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        for group in GROUPS:
            self.groups[group][0].copy_(self._tensor(weights[group]))

    def evaluate(self, source: Source) -> dict[str, float]:
        return validation_metrics(self.hp, FMParameters(*self.weights().values()), source)

    def parameters(self, epoch: int) -> FMParameters:
        """The trained weights as numpy float32 (``epoch``: the last one trained)."""
        params = FMParameters(*self.weights().values())
        if not all(np.isfinite(a).all() for a in (params.w0, params.w, params.V)):
            raise TrainingDiverged(epoch, "a weight")
        return params
