"""DeepFM training: mini-batches of encoded columns, a sparse and a dense optimizer.

As TorchEasyRec does, embedding tables get the sparse optimizer (``sgd``, ``adagrad``,
``rowwise_adagrad`` or ``adam`` — lazy Adam; see :mod:`fmkit.train.embedding_optimizers`) and every
other parameter the dense one (``adam``, ``adamw``, ``adagrad``, ``adadelta``, ``rmsprop``, or
``sgd`` with TorchEasyRec's momentum 0.9), each with its own learning rate. The input is
streamed: blocks of rows are read and encoded on a background thread while the previous block
trains.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from fmkit.models.deepfm import torch_required  # noqa: F401  (before PyTorch, an extra)

# isort: split
import torch
from torch import nn

from fmkit.cpus import computes_bfloat16
from fmkit.data.background import background
from fmkit.errors import DataError
from fmkit.logs import log
from fmkit.models.deepfm.batches import mini_batches
from fmkit.models.deepfm.config import (
    ConfigError,
    DenseOptimizer,
    FocalLoss,
    GradClipping,
    OptimizerSettings,
    SparseOptimizer,
    TrainConfig,
)
from fmkit.models.deepfm.features import Encoded
from fmkit.train.averaging import DenseAverage
from fmkit.train.embedding_optimizers import CompiledOptimizer, DenseAdam, SparseRows
from fmkit.train.engine import Gradient, Source

Optimizer = torch.optim.Optimizer | CompiledOptimizer  # PyTorch's, or fmkit's compiled ones


def _chosen(message: SparseOptimizer | DenseOptimizer) -> tuple[str, OptimizerSettings]:
    name = next(n for n in message.ONEOF if getattr(message, n) is not None)
    return name.removesuffix("_optimizer"), getattr(message, name)


def sparse_optimizer(params: list[torch.Tensor], message: SparseOptimizer
                     ) -> Optimizer:
    name, s = _chosen(message)
    if params and params[0].device.type != "cpu":  # SparseRows is CPU code: PyTorch's own
        if s.weight_decay:
            raise ConfigError(f"train_config.sparse_optimizer.{name}_optimizer.weight_decay: "
                              "the embeddings' weight decay runs on the CPU only")
        if name == "sgd":
            return torch.optim.SGD(params, lr=s.lr)
        if name == "adagrad":
            return torch.optim.Adagrad(params, lr=s.lr,
                                       initial_accumulator_value=s.initial_accumulator_value)
        if name == "adam":
            return torch.optim.SparseAdam(params, lr=s.lr, betas=(s.beta1, s.beta2))
        raise ConfigError(f"train_config.sparse_optimizer: {name} runs on the CPU only")
    return SparseRows(params, name, lr=s.lr, betas=(s.beta1, s.beta2),
                      weight_decay=s.weight_decay, weight_decay_mode=s.weight_decay_mode,
                      initial_accumulator_value=s.initial_accumulator_value)


def dense_optimizer(params: list[torch.Tensor], message: DenseOptimizer) -> Optimizer:
    name, s = _chosen(message)
    if name == "sgd":
        momentum = 0.9 if s.momentum is None else s.momentum
        return torch.optim.SGD(params, lr=s.lr, momentum=momentum, weight_decay=s.weight_decay)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=s.lr, weight_decay=s.weight_decay,
                                   initial_accumulator_value=s.initial_accumulator_value)
    if name == "adadelta":
        return torch.optim.Adadelta(params, lr=s.lr, rho=s.rho, weight_decay=s.weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=s.lr, alpha=s.alpha, weight_decay=s.weight_decay,
                                   momentum=s.momentum or 0.0, centered=s.centered)
    if params and params[0].device.type == "cpu":  # without torch.optim's import of its compiler
        return DenseAdam(params, lr=s.lr, betas=(s.beta1, s.beta2), weight_decay=s.weight_decay,
                         decoupled=name == "adamw")
    kind = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    return kind(params, lr=s.lr, betas=(s.beta1, s.beta2), weight_decay=s.weight_decay,
                fused=bool(params) and params[0].device.type == "cuda" or None)


def _optimizer_arrays(optimizers: list[Optimizer]) -> tuple[dict, dict]:
    """The optimizers' state as numpy arrays plus a JSON description (for checkpoints)."""
    arrays, described = {}, []
    sparse, dense = optimizers
    for i, weight in enumerate(sparse.param_groups[0]["params"]):
        state = sparse.state.get(weight, {})
        for name in ("first", "second"):
            if name in state:
                arrays[f"sparse/{i}/{name}"] = state[name]
        described.append(state.get("step", 0))
    dense_state = dense.state_dict()
    plain = {"param_groups": dense_state["param_groups"], "state": {}}
    for index, entries in dense_state["state"].items():
        plain["state"][str(index)] = {}
        for name, value in entries.items():
            if torch.is_tensor(value):
                arrays[f"dense/{index}/{name}"] = value.detach().cpu().numpy()
                plain["state"][str(index)][name] = None
            else:
                plain["state"][str(index)][name] = value
    return arrays, {"sparse_steps": described, "dense": plain}


def _restore_optimizers(optimizers: list[Optimizer], arrays: dict,
                        extra: dict) -> None:
    sparse, dense = optimizers
    for i, weight in enumerate(sparse.param_groups[0]["params"]):
        state = sparse._state(weight, sparse.param_groups[0])
        state["step"] = extra["sparse_steps"][i]
        for name in ("first", "second"):
            if f"sparse/{i}/{name}" in arrays:
                state[name] = np.array(arrays[f"sparse/{i}/{name}"])
    plain = extra["dense"]
    state = {int(index): {name: (torch.from_numpy(np.array(arrays[f"dense/{index}/{name}"]))
                                 if value is None else value)
                          for name, value in entries.items()}
             for index, entries in plain["state"].items()}
    dense.load_state_dict({"param_groups": plain["param_groups"], "state": state})


def _some(batches: Iterator[Encoded], name: str, size: int) -> Iterator[Encoded]:
    """``batches``, or one line saying why ``drop_remainder`` left none to train."""
    empty = True
    for batch in batches:
        empty = False
        yield batch
    if empty:
        raise DataError(name, None, f"fewer rows than data_config.batch_size ({size}): "
                                    "drop_remainder leaves no batch to train")


def _focal_weights(logits: torch.Tensor, labels: torch.Tensor, focal: FocalLoss
                   ) -> torch.Tensor:
    """``binary_focal_loss``'s weight of each row's cross entropy (no gradient flows through
    it, as in TorchEasyRec's ``BinaryFocalLoss``)."""
    p = torch.sigmoid(logits)
    return (focal.alpha * labels * (1 - p) ** focal.gamma
            + (1 - focal.alpha) * (1 - labels) * p ** focal.gamma)


def _clip(params: list[torch.Tensor], clipping: GradClipping) -> None:
    """``grad_clipping`` on the dense parameters' gradients, as torchrec's
    ``GradientClippingOptimizer`` does it: each value into [-max_gradient, max_gradient], or
    all of them scaled by max_gradient / (their norm + 1e-6) where that is below 1."""
    grads = [p for p in params if p.grad is not None]
    if clipping.kind == "value":
        nn.utils.clip_grad_value_(grads, clipping.max_gradient)
    else:
        nn.utils.clip_grad_norm_(grads, clipping.max_gradient, norm_type=clipping.norm_type)


@contextlib.contextmanager
def _bag_gradients_clipped(net: nn.Module, limit: float | None) -> Iterator[None]:
    """Within the block, the embedding bags' outputs (the tables' and the wide tables') are
    made to clip their gradients into [-limit, limit], element by element, as fbgemm's fused
    optimizers clip the gradient reaching a table batch (their ``gradient_clipping``); no
    effect when ``limit`` is None."""
    if limit is None:
        yield
        return

    def clip(grad: torch.Tensor) -> torch.Tensor:
        return grad.clamp(-limit, limit)

    def hook(module: nn.Module, args: Any, output: dict[str, torch.Tensor]) -> None:
        for values in output.values():
            if values.requires_grad:
                values.register_hook(clip)

    handles = [banks.register_forward_hook(hook) for banks in (net.tables, net.wide_tables)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class DeepFMLearner:
    """A DeepFM network and its two optimizers, for :func:`fmkit.train.engine.fit`: a step is
    one mini-batch; ``evaluate`` scores a validation channel with ``scorer`` (in eval mode).
    With ``dense_optimizer.ema`` set it keeps the dense parameters' average
    (:class:`~fmkit.train.averaging.DenseAverage`): ``evaluate`` scores with it when
    ``eval_average``; ``weights`` (the best measurement's, kept by early stopping) and the
    weights the network ends with (``finish``) hold it when ``export_average``."""

    primary = True
    diverged_hint = ("Lower the learning rates (train_config's sparse_optimizer and "
                     "dense_optimizer lr, by 10x)")

    def __init__(self, net: nn.Module, config: TrainConfig, batch_size: int, loss_kind: str,
                 label_smoothing: float = 0.0, shuffle: bool = False,
                 scorer: Callable[[Any], dict[str, float]] | None = None,
                 drop_remainder: bool = False, focal: FocalLoss | None = None,
                 eval_average: bool = False, export_average: bool = False):
        torch.sparse.check_sparse_tensor_invariants.disable()  # explicit: PyTorch warns if not
        torch.manual_seed(config.seed)
        self.net, self.batch_size, self.shuffle = net, batch_size, shuffle
        self.drop_remainder = drop_remainder  # an epoch's last, smaller batch left out
        self.smoothing, self.scorer, self.steps = label_smoothing, scorer, 0
        self.focal = focal  # binary_focal_loss: the cross entropy weighted per row
        self.tables = [p for name, p in net.named_parameters() if "tables." in name]
        self.others = [p for name, p in net.named_parameters() if "tables." not in name]
        self.optimizers = [sparse_optimizer(self.tables, config.sparse_optimizer),
                           dense_optimizer(self.others, config.dense_optimizer)]
        # the dense gradients summed over gradient_accumulation_steps mini-batches, until the
        # dense optimizer steps on them (None: it steps every mini-batch)
        self.accumulation = max(config.gradient_accumulation_steps or 0, 1)
        self.pending = ([torch.zeros_like(p) for p in self.others] if self.accumulation > 1
                        else None)
        ema = config.dense_optimizer.ema
        self.average = DenseAverage(self.others, ema.decay) if ema is not None else None
        self.eval_average, self.export_average = eval_average, export_average
        clipping = config.grad_clipping
        self.clipping = clipping if clipping is not None and clipping.kind != "none" else None
        sparse = _chosen(config.sparse_optimizer)[1]
        # the fused sparse optimizers' gradient_clipping (fbgemm clips the gradient reaching
        # the embedding bags' outputs, each element; its loss is the mini-batch's mean)
        self.bag_limit = (1.0 if sparse.max_gradient is None else sparse.max_gradient
                          ) if sparse.gradient_clipping else None
        # per row; summed, then divided by the rows (or the sample weights) of the whole step,
        # which may span processes
        self.loss_kind = loss_kind
        # the forward pass in bfloat16 where the config asks and the device computes it
        # natively; backward follows its dtypes. Emulated bfloat16 trained 17 times slower
        # than float32 (docs/performance.md), so there it trains in float32, as it scores
        device = self.tables[0].device.type
        self.autocast = config.bfloat16 and computes_bfloat16(device)
        if config.bfloat16 and not self.autocast:
            log.warning("mixed_precision: BF16 trains in float32 here: the %s has no bfloat16 "
                        "instructions, and emulated bfloat16 is many times slower", device)
        self.criterion = {"binary": nn.BCEWithLogitsLoss(reduction="none"),
                          "multiclass": nn.CrossEntropyLoss(reduction="none",
                                                            label_smoothing=label_smoothing),
                          "real": nn.MSELoss(reduction="none")}[loss_kind]
        net.train()

    def batches(self, source: Source, rng: np.random.Generator) -> Iterator[Encoded]:
        return self.mini_batches(source, self.batch_size, rng)

    def mini_batches(self, source: Source, size: int, rng: np.random.Generator
                     ) -> Iterator[Encoded]:
        batches = mini_batches(background(source.blocks()), size, self.shuffle, rng,
                               self.drop_remainder)
        return _some(batches, source.name, size) if self.drop_remainder else batches

    def _loss(self, batch: Encoded | None, summed: bool = False
              ) -> tuple[torch.Tensor | None, float]:
        """The summed (sample-weighted) loss of a batch (None without one) and what it is
        divided by for the mean: its rows, or the sum of its sample weights; after clearing
        the gradients. ``summed``: the caller's backward takes the sum, not the mean (the
        bags' gradient limit scales with it)."""
        for optimizer in self.optimizers:
            optimizer.zero_grad()  # (torch.optim's too: set to None)
        if batch is None:
            return None, 0.0
        device = self.tables[0].device
        labels = torch.from_numpy(batch.labels).to(device)
        weights = None if batch.weights is None else torch.from_numpy(batch.weights).to(device)
        total = float(batch.n_rows) if weights is None else float(weights.sum())
        if self.loss_kind == "multiclass":
            labels = labels.long()  # (CrossEntropyLoss smooths class indices itself)
        elif self.smoothing:
            labels = labels * (1 - self.smoothing) + 0.5 * self.smoothing
        limit = None if self.bag_limit is None else self.bag_limit * (total if summed else 1)
        with torch.autocast(device.type, torch.bfloat16, enabled=self.autocast), \
                _bag_gradients_clipped(self.net, limit):
            outputs = self.net(batch)
        losses = self.criterion(outputs.float(), labels)
        if self.focal is not None:
            losses = losses * _focal_weights(outputs.float().detach(), labels, self.focal)
        return (losses.sum() if weights is None else (losses * weights).sum()), total

    def _update(self) -> None:
        sparse, dense = self.optimizers
        sparse.step()
        if self._dense_due():
            if self.clipping is not None:  # (the combined gradient, with several processes)
                _clip(self.others, self.clipping)
            dense.step()
            if self.average is not None:
                self.average.update()
            if self.pending is not None:
                for summed in self.pending:
                    summed.zero_()
        self.steps += 1

    def _dense_due(self) -> bool:
        """Whether the dense optimizer steps now: every mini-batch, or with
        gradient_accumulation_steps at the last of each run of them, on their gradients
        summed (put in the parameters' ``grad``)."""
        if self.pending is None:
            return True
        for summed, p in zip(self.pending, self.others):
            if p.grad is not None:
                summed += p.grad
        if (self.steps + 1) % self.accumulation:
            return False
        for summed, p in zip(self.pending, self.others):
            p.grad = summed  # (zeroed after the step; the next mini-batch's gradients are new)
        return True

    def step(self, batch: Encoded) -> tuple[float, int]:
        loss, total = self._loss(batch)
        mean = loss / max(total, 1e-30)  # (all weights 0: no update)
        mean.backward()
        self._update()
        return mean.detach().item() * batch.n_rows, batch.n_rows  # (epoch loss: mean of means)

    def gradient(self, batch: Encoded | None) -> Gradient:
        value, (loss, total) = 0.0, self._loss(batch, summed=True)
        if loss is not None:
            loss.backward()
            value = loss.detach().item()
        dense = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                           for p in self.others])
        sparse = []
        for weight in self.tables:
            grad = weight.grad
            if grad is not None:
                ids, values = grad._indices()[0], grad._values()
            else:
                ids, values = np.zeros(0, np.int64), np.zeros((0, weight.shape[1]), np.float32)
            sparse.append((ids, values, weight.shape[0]))
        weighted = batch is not None and batch.weights is not None
        return Gradient(batch.n_rows if batch is not None else 0, value, dense, sparse,
                        weight=total if weighted else 0.0)

    def apply(self, gradient: Gradient) -> None:
        n, device = gradient.weight or gradient.rows, self.tables[0].device
        flat = torch.from_numpy(np.asarray(gradient.dense, np.float32) / np.float32(n))
        offset = 0
        for p in self.others:
            p.grad = flat[offset:offset + p.numel()].view_as(p).to(device)
            offset += p.numel()
        for weight, (ids, values, _) in zip(self.tables, gradient.sparse):
            weight.grad = torch.sparse_coo_tensor(
                torch.from_numpy(ids)[None, :],
                torch.from_numpy(np.asarray(values, np.float32) / np.float32(n)),
                weight.shape).to(device)
        self._update()

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        arrays, extra = _optimizer_arrays(self.optimizers)
        arrays.update({f"net/{name}": value for name, value in self._net_weights().items()})
        arrays["torch_rng"] = torch.get_rng_state().numpy()
        if self.average is not None:
            averages, extra["dense_ema_updates"] = self.average.state()
            arrays.update({f"dense_ema/{i}": value for i, value in averages.items()})
        for i, summed in enumerate(self.pending or []):
            arrays[f"accumulated/{i}"] = summed.detach().cpu().numpy().copy()
        return arrays, extra

    def restore(self, arrays: dict[str, np.ndarray], extra: dict) -> None:
        self.set_weights({name.removeprefix("net/"): value for name, value in arrays.items()
                          if name.startswith("net/")})
        _restore_optimizers(self.optimizers, arrays, extra)
        torch.set_rng_state(torch.from_numpy(np.array(arrays["torch_rng"])))
        if self.average is not None:
            self.average.restore({name.removeprefix("dense_ema/"): value
                                  for name, value in arrays.items()
                                  if name.startswith("dense_ema/")},
                                 extra["dense_ema_updates"])
        with torch.no_grad():
            for i, summed in enumerate(self.pending or []):
                summed.copy_(torch.from_numpy(np.array(arrays[f"accumulated/{i}"])))

    def weights(self) -> dict[str, np.ndarray]:
        """The weights as the model would be written (the dense average, when exported)."""
        with self._averaged(self.export_average):
            return self._net_weights()

    def finish(self) -> None:
        """The network ends with the weights the model is written with: the dense
        parameters' average, when exported (called once the steps end)."""
        if self.export_average and self.average is not None and self.average.count:
            self.average.put_in_place()  # (the dense parameters only: no copy of the tables)

    def _averaged(self, active: bool) -> Any:
        return (self.average.swapped(active) if self.average is not None
                else contextlib.nullcontext())

    def _net_weights(self) -> dict[str, np.ndarray]:
        return {name: value.detach().cpu().numpy().copy()
                for name, value in self.net.state_dict().items()}

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        # (copied into the network's tensors: no copy of its own unless read-only)
        self.net.load_state_dict({name: torch.from_numpy(np.require(weights[name],
                                                                    requirements="W"))
                                  for name in self.net.state_dict()})

    def evaluate(self, source: Any) -> dict[str, float]:
        self.net.eval()
        try:
            with self._averaged(self.eval_average):
                return self.scorer(source)
        finally:
            self.net.train()
