"""DeepFM's compiled optimizers: sparse updates of only the touched rows of the embedding
tables, and Adam on the dense parameters.

``nn.EmbeddingBag(sparse=True)`` yields a gradient with one row per looked-up id (ids repeat
across a batch). PyTorch's sparse optimizers coalesce it by sorting and then update through
generic sparse-tensor ops, milliseconds per step for a batch of Criteo rows. Here one compiled
pass sums the repeated rows through a per-table scratch index (no sort), and a second applies
the rule to each touched row, both on fmkit's threads. The rules are PyTorch's, step for step
(the tests compare them with ``torch.optim.SGD``, ``Adagrad`` and ``SparseAdam``), plus
fbgemm's row-wise AdaGrad, whose state is one number per row.

Neither derives from ``torch.optim.Optimizer``: building or stepping one imports
``torch._dynamo`` (PyTorch's compiler, which fmkit never runs), about a second of every
training process (docs/performance.md, "Session 37"). They keep the part of its interface
fmkit uses: ``param_groups`` (where the learning-rate schedules set ``lr``), ``state``,
``zero_grad`` and ``step``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np
import torch

from fmkit.compile_cache import kernel
from fmkit.cpus import on_threads, thread_count
from fmkit.kernels.fm import sum_repeated_rows
from fmkit.kernels.prefetch import prefetch

SGD, ADAGRAD, ROWWISE_ADAGRAD, ADAM = range(4)
AHEAD = 8  # rows prefetched ahead of the update
RULES = {"sgd": SGD, "adagrad": ADAGRAD, "rowwise_adagrad": ROWWISE_ADAGRAD, "adam": ADAM}


@kernel(nogil=True, fastmath={"nsz", "arcp", "contract"})
def _update(rule: int, weight: np.ndarray, first: np.ndarray, second: np.ndarray,
            rows: np.ndarray, grads: np.ndarray, lr: float, eps: float, beta1: float,
            beta2: float, l2: float, shrink: float, step_size: float) -> None:
    """Each row of ``rows`` stepped by its gradient row; ``l2`` is added to row-wise
    AdaGrad's gradient times the weight, ``shrink`` multiplies the weight before row-wise
    AdaGrad's and Adam's step (fbgemm's coupled and decoupled weight decay)."""
    dim = weight.shape[1]
    for j in range(rows.size):
        if j + AHEAD < rows.size:  # the rows are random: start loading a later one now
            ahead = rows[j + AHEAD]
            prefetch(weight, ahead, 0)
            if first.shape[0]:
                prefetch(first, ahead, 0)
            if second.shape[0]:
                prefetch(second, ahead, 0)
        r = rows[j]
        if rule == SGD:
            for d in range(dim):
                weight[r, d] -= lr * grads[j, d]
        elif rule == ADAGRAD:
            for d in range(dim):
                g = grads[j, d]
                first[r, d] += g * g
                weight[r, d] -= lr * g / (math.sqrt(first[r, d]) + eps)
        elif rule == ROWWISE_ADAGRAD:
            total = 0.0
            for d in range(dim):
                g = grads[j, d] + l2 * weight[r, d]
                grads[j, d] = g
                total += g * g
            first[r, 0] += total / dim
            scale = lr / (math.sqrt(first[r, 0]) + eps)
            for d in range(dim):
                weight[r, d] = shrink * weight[r, d] - scale * grads[j, d]
        else:  # lazy Adam, as torch.optim.SparseAdam
            for d in range(dim):
                g = grads[j, d]
                first[r, d] += (g - first[r, d]) * (1.0 - beta1)
                second[r, d] += (g * g - second[r, d]) * (1.0 - beta2)
                weight[r, d] = (shrink * weight[r, d]
                                - step_size * first[r, d] / (math.sqrt(second[r, d]) + eps))


def _filled(shape: tuple[int, int], value: float) -> np.ndarray:
    """A float32 array of ``value``; of zeros, left to the system to zero a page when a row
    on it is first touched (a table's rows are mostly never touched on small inputs)."""
    return np.zeros(shape, np.float32) if value == 0 else np.full(shape, value, np.float32)


class CompiledOptimizer:
    """One group of parameters with its settings (``param_groups``, as torch.optim has them),
    the state of each parameter, and ``zero_grad``."""

    def __init__(self, params: Iterable[torch.Tensor], settings: dict):
        self.param_groups = [{"params": list(params), **settings}]
        self.state: dict[torch.Tensor, dict] = {}

    def zero_grad(self) -> None:
        """Drop the gradients (torch.optim's default, ``set_to_none``)."""
        for weight in self.param_groups[0]["params"]:
            weight.grad = None


class SparseRows(CompiledOptimizer):
    """SGD, AdaGrad, row-wise AdaGrad or lazy Adam over sparse embedding gradients.

    Weight decay acts on the rows a step touches, as fbgemm's fused optimizers apply it:
    Adam's is decoupled (the weight times ``1 - lr * weight_decay`` before the step),
    row-wise AdaGrad's as ``weight_decay_mode`` says (``NONE``, TorchEasyRec's default;
    ``L2``, added to the gradient; ``DECOUPLE``, as Adam's); SGD and AdaGrad have none."""

    def __init__(self, params: Iterable[torch.Tensor], rule: str, lr: float, *,
                 eps: float | None = None, betas: tuple[float, float] = (0.9, 0.999),
                 weight_decay: float = 0.0, weight_decay_mode: str = "NONE",
                 initial_accumulator_value: float = 0.0):
        if rule not in RULES:
            raise ValueError(f"unknown sparse rule {rule!r}")
        if weight_decay and rule in ("sgd", "adagrad"):
            raise ValueError(f"the sparse {rule} rule has no weight decay")
        if weight_decay_mode not in ("NONE", "L2", "DECOUPLE"):
            raise ValueError(f"unknown weight_decay_mode {weight_decay_mode!r}")
        default_eps = {"adagrad": 1e-10, "rowwise_adagrad": 1e-8, "adam": 1e-8}.get(rule, 0.0)
        super().__init__(params, {
            "lr": lr, "eps": default_eps if eps is None else eps, "betas": betas,
            "weight_decay": weight_decay, "weight_decay_mode": weight_decay_mode,
            "initial_accumulator_value": initial_accumulator_value})
        self.rule = rule

    def _decay(self, group: dict) -> tuple[float, float]:
        """``(l2, shrink)`` of :func:`_update` for this rule and group."""
        decay, mode = group["weight_decay"], group["weight_decay_mode"]
        coupled = self.rule == "rowwise_adagrad" and mode == "L2"
        decoupled = self.rule == "adam" or self.rule == "rowwise_adagrad" and mode == "DECOUPLE"
        return (decay if coupled else 0.0), (1.0 - group["lr"] * decay if decoupled else 1.0)

    def _state(self, weight: torch.Tensor, group: dict) -> dict:
        state = self.state.setdefault(weight, {})
        if not state:
            rows, dim = weight.shape
            state["step"] = 0
            state["slot"] = np.full(rows, -1, np.int64)
            initial = group["initial_accumulator_value"]
            empty = np.zeros((0, dim), np.float32)
            state["first"] = {
                "adagrad": lambda: _filled((rows, dim), initial),
                "rowwise_adagrad": lambda: _filled((rows, 1), initial),
                "adam": lambda: np.zeros((rows, dim), np.float32),
            }.get(self.rule, lambda: empty)()
            state["second"] = np.zeros((rows, dim), np.float32) if self.rule == "adam" else empty
        return state

    @torch.no_grad()
    def step(self, closure: Callable | None = None) -> None:
        """One step of every table with a gradient: the repeated rows of each table summed
        (the tables on threads of their own), then the touched rows updated, each table's cut
        into a range per thread (a table's touched rows are distinct, so no two threads write
        one: the result is the one-thread result, bit for bit)."""
        tables = []
        for group in self.param_groups:
            for weight in group["params"]:
                if weight.grad is None:
                    continue
                if not weight.grad.is_sparse:
                    raise ValueError("SparseRows takes the sparse gradients of "
                                     "nn.EmbeddingBag(sparse=True)")
                state = self._state(weight, group)
                state["step"] += 1
                tables.append((group, weight, state))
        threads = thread_count()
        summed = on_threads(sum_repeated_rows, [
            (np.ascontiguousarray(weight.grad._indices()[0].numpy()),
             np.ascontiguousarray(weight.grad._values().numpy()), state["slot"])
            for _, weight, state in tables], threads)
        updates = []
        for (group, weight, state), (unique, sums) in zip(tables, summed):
            beta1, beta2 = group["betas"]
            t = state["step"]
            step_size = group["lr"] * math.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
            bounds = [part * unique.size // threads for part in range(threads + 1)]
            updates += [(RULES[self.rule], weight.detach().numpy(), state["first"],
                         state["second"], unique[lo:hi], sums[lo:hi], group["lr"], group["eps"],
                         beta1, beta2, *self._decay(group), step_size)
                        for lo, hi in zip(bounds, bounds[1:])]
        on_threads(_update, updates, threads)
        for _, weight, _ in tables:
            _changed(weight)


@kernel(nogil=True, error_model="numpy")
def _adam(weight: np.ndarray, grad: np.ndarray, first: np.ndarray, second: np.ndarray,
          mix: np.float32, beta2: np.float32, rest2: np.float32, eps: np.float32,
          weight_decay: np.float32, shrink: np.float32, step_size: np.float32,
          root: np.float32) -> None:
    """One step of torch.optim.Adam's single-tensor rule on flat float32 arrays, in its
    order of operations: L2 (``weight_decay``) or AdamW's ``shrink``, ``first`` moved toward
    the gradient by ``mix`` (lerp, in the form PyTorch takes for a weight below or above 0.5),
    ``second`` decayed by ``beta2`` plus ``rest2`` g²; the step divides by √second / ``root``
    + ``eps``. (numpy's error model: numba's default checks every division for zero, which
    keeps the loop from being vectorized; docs/performance.md, "Session 37".)"""
    low, other = mix < 0.5, np.float32(1) - mix
    for i in range(weight.size):
        g = grad[i] + weight_decay * weight[i]
        w = weight[i] * shrink
        m = first[i] + mix * (g - first[i]) if low else g - (g - first[i]) * other
        v = second[i] * beta2 + rest2 * g * g
        first[i], second[i] = m, v
        weight[i] = w + -step_size * (m / (np.sqrt(v) / root + eps))


def _changed(weight: torch.Tensor) -> None:
    """Bumps ``weight``'s version after compiled code changed it through a numpy view, as
    an in-place PyTorch operation would: what caches values derived from a parameter (the
    numpy forward's bfloat16 or int8 weights) sees the version, not the memory."""
    torch.autograd.graph.increment_version(weight)


class DenseAdam(CompiledOptimizer):
    """Adam, or AdamW (``decoupled``), on dense CPU parameters: torch.optim's rules and state
    (``step``, ``exp_avg``, ``exp_avg_sq`` per parameter, in its ``state_dict`` layout), one
    compiled pass per parameter."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, decoupled: bool = False):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps,
                                  "weight_decay": weight_decay, "decoupled": decoupled})

    @torch.no_grad()
    def step(self, closure: Callable | None = None) -> None:
        group = self.param_groups[0]
        lr, (beta1, beta2), decay = group["lr"], group["betas"], group["weight_decay"]
        f32 = np.float32
        for weight in group["params"]:
            if weight.grad is None:
                continue
            state = self.state.setdefault(weight, {})
            if not state:
                state.update(step=0, exp_avg=torch.zeros_like(weight),
                             exp_avg_sq=torch.zeros_like(weight))
            state["step"] += 1
            t = state["step"]
            _adam(weight.view(-1).numpy(), weight.grad.contiguous().view(-1).numpy(),
                  state["exp_avg"].view(-1).numpy(), state["exp_avg_sq"].view(-1).numpy(),
                  f32(1 - beta1), f32(beta2), f32(1 - beta2), f32(group["eps"]),
                  f32(0.0 if group["decoupled"] else decay),
                  f32(1 - lr * decay if group["decoupled"] else 1.0),
                  f32(lr / (1 - beta1 ** t)), f32((1 - beta2 ** t) ** 0.5))
            _changed(weight)

    def state_dict(self) -> dict:
        """torch.optim's layout: each parameter's state by its index in the group."""
        group = self.param_groups[0]
        index = {id(p): i for i, p in enumerate(group["params"])}
        return {"state": {index[id(p)]: dict(s) for p, s in self.state.items()},
                "param_groups": [{**{k: v for k, v in group.items() if k != "params"},
                                  "params": list(range(len(group["params"])))}]}

    def load_state_dict(self, state_dict: dict) -> None:
        group = self.param_groups[0]
        saved = state_dict["param_groups"][0]
        group.update({k: v for k, v in saved.items() if k != "params"})
        self.state = {}
        for i, entries in state_dict["state"].items():
            weight = group["params"][int(i)]
            self.state[weight] = {
                "step": int(float(entries["step"])),
                **{name: torch.as_tensor(entries[name], dtype=weight.dtype).reshape(weight.shape)
                   .clone() for name in ("exp_avg", "exp_avg_sq")}}
