"""DeepFM training: mini-batches of encoded columns, a sparse and a dense optimizer.

As TorchEasyRec does, embedding tables get the sparse optimizer (``sgd``, ``adagrad``,
``rowwise_adagrad`` or ``adam`` — lazy Adam; see :mod:`fmkit.deepfm.optimizers`) and every other
parameter the dense one (``adam``, ``adamw``, ``adagrad``, or ``sgd`` with TorchEasyRec's
momentum 0.9), each with its own learning rate. The input is streamed: blocks of rows are read
and encoded on a background thread while the previous block trains.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fmkit import distributed
from fmkit.deepfm.batches import background, mini_batches
from fmkit.deepfm.config import (
    ConfigError,
    DenseOptimizer,
    OptimizerSettings,
    SparseOptimizer,
    TrainConfig,
)
from fmkit.deepfm.features import Encoded
from fmkit.deepfm.optimizers import SparseRows
from fmkit.errors import TrainingDiverged
from fmkit.train.checkpoint import Checkpointer, TrainingState, check_resumable

log = logging.getLogger("fmkit")


def _chosen(message: SparseOptimizer | DenseOptimizer) -> tuple[str, OptimizerSettings]:
    name = next(n for n in message.ONEOF if getattr(message, n) is not None)
    return name.removesuffix("_optimizer"), getattr(message, name)


def sparse_optimizer(params: list[torch.Tensor], message: SparseOptimizer
                     ) -> torch.optim.Optimizer:
    name, s = _chosen(message)
    if params and params[0].device.type != "cpu":  # SparseRows is CPU code: PyTorch's own
        if name == "sgd":
            return torch.optim.SGD(params, lr=s.lr)
        if name == "adagrad":
            return torch.optim.Adagrad(params, lr=s.lr,
                                       initial_accumulator_value=s.initial_accumulator_value)
        if name == "adam":
            return torch.optim.SparseAdam(params, lr=s.lr, betas=(s.beta1, s.beta2))
        raise ConfigError(f"train_config.sparse_optimizer: {name} runs on the CPU only")
    return SparseRows(params, name, lr=s.lr, betas=(s.beta1, s.beta2),
                      weight_decay=s.weight_decay,
                      initial_accumulator_value=s.initial_accumulator_value)


def dense_optimizer(params: list[torch.Tensor], message: DenseOptimizer) -> torch.optim.Optimizer:
    name, s = _chosen(message)
    if name == "sgd":
        momentum = 0.9 if s.momentum is None else s.momentum
        return torch.optim.SGD(params, lr=s.lr, momentum=momentum, weight_decay=s.weight_decay)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=s.lr, weight_decay=s.weight_decay,
                                   initial_accumulator_value=s.initial_accumulator_value)
    kind = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    return kind(params, lr=s.lr, betas=(s.beta1, s.beta2), weight_decay=s.weight_decay)


def combine_gradients(tables: list[torch.Tensor], others: list[torch.Tensor]) -> None:
    """Sum every process's gradients into every process (each divided its loss by the rows of
    the whole step already): dense ones by one all-reduce of a flat buffer, the embedding
    tables' sparse ones by gathering their rows in rank order, so every process's optimizer
    then takes the same step."""
    import torch.distributed as dist

    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                      for p in others])
    dist.all_reduce(flat)
    offset = 0
    for p in others:
        p.grad = flat[offset:offset + p.numel()].view_as(p).clone()
        offset += p.numel()
    for weight in tables:
        grad = weight.grad
        if grad is not None:
            ids, values = grad._indices()[0].cpu().numpy(), grad._values().cpu().numpy()
        else:
            ids, values = np.zeros(0, np.int64), np.zeros((0, weight.shape[1]), np.float32)
        _, ids, values = distributed.all_gather_rows(np.zeros(0), ids, values)
        weight.grad = torch.sparse_coo_tensor(torch.from_numpy(ids)[None, :],
                                              torch.from_numpy(values.astype(np.float32)),
                                              weight.shape).to(weight.device)


@dataclass
class EpochStats:
    epoch: int
    rows: int
    steps: int
    loss: float
    seconds: float
    validation: dict[str, float] | None = None  # eval_input_path's metrics (early stopping)


def _optimizer_arrays(optimizers: list[torch.optim.Optimizer]) -> tuple[dict, dict]:
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


def _restore_optimizers(optimizers: list[torch.optim.Optimizer], arrays: dict,
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


def train_network(net: nn.Module, blocks: Callable[[], Iterator[Encoded]], config: TrainConfig,
                  batch_size: int, loss_kind: str, label_smoothing: float = 0.0,
                  shuffle: bool = False, progress: bool | None = None,
                  checkpoints: Checkpointer | None = None, resume: bool = False,
                  run_id: dict | None = None,
                  after_epoch: Callable[[EpochStats], bool] | None = None) -> list[EpochStats]:
    """Train ``net`` in place over ``num_epochs`` passes of ``blocks()`` (or ``num_steps``
    mini-batches); returns per-epoch statistics. ``after_epoch(stats)`` runs after every
    epoch with the network in eval mode (validation, early stopping) and stops training by
    returning True. ``checkpoints`` saves the network, the
    optimizers' state and the position (epoch, mini-batches done, the shuffling and dropout
    generators) periodically; ``resume`` continues from the newest checkpoint, replaying the
    epoch's data order. ``run_id`` (the configuration) must match the checkpoint's."""
    from tqdm import tqdm

    torch.sparse.check_sparse_tensor_invariants.disable()  # explicit: PyTorch warns if implicit
    torch.manual_seed(config.seed)
    rank, world = distributed.rank_and_size()
    rng = np.random.default_rng(config.seed)  # several processes: one per epoch, below
    tables = [p for name, p in net.named_parameters() if "tables." in name]
    others = [p for name, p in net.named_parameters() if "tables." not in name]
    optimizers = [sparse_optimizer(tables, config.sparse_optimizer),
                  dense_optimizer(others, config.dense_optimizer)]
    # summed, then divided by the rows of the whole step (which may span processes)
    criterion = (nn.BCEWithLogitsLoss(reduction="sum") if loss_kind == "binary"
                 else nn.MSELoss(reduction="sum"))
    local_size = -(-batch_size // world)
    show = (sys.stderr.isatty() if progress is None else progress) and rank == 0
    epochs = config.num_epochs or sys.maxsize
    history: list[EpochStats] = []
    steps, first_epoch, skip = 0, 1, 0
    resumed = checkpoints.latest() if checkpoints is not None and resume else None
    if resumed is not None:
        check_resumable(resumed, run_id or {}, checkpoints.directory)
        net.load_state_dict({name: torch.from_numpy(np.array(resumed.arrays[f"net/{name}"]))
                             for name in net.state_dict()})
        _restore_optimizers(optimizers, resumed.arrays, resumed.extra)
        steps, first_epoch, skip = resumed.step, resumed.epoch, resumed.chunks_done
        history = [EpochStats(**h) for h in resumed.history]
        log.info("resuming from %s: epoch %d, step %d", checkpoints.directory, first_epoch,
                 steps)
    net.train()
    for epoch in range(first_epoch, epochs + 1):
        started, rows, total_loss, epoch_steps = time.perf_counter(), 0, 0.0, 0
        if world > 1:  # per-epoch generators: every process can replay its epoch on resume
            rng = np.random.default_rng([config.seed, rank, epoch])
        if resumed is not None and epoch == first_epoch:
            if world == 1:
                rng.bit_generator.state = resumed.rng_state
            # (with several processes the loss carried over is rank 0's share: the epoch's
            # logged mean loss is then approximate; the weights are not)
            rows, total_loss = resumed.rows, resumed.loss_sum
        epoch_rng_state = rng.bit_generator.state  # replayed on resume: the same order
        bar = tqdm(desc=f"epoch {epoch}", unit=" rows", unit_scale=True, disable=not show,
                   leave=False)
        batches = mini_batches(background(blocks()), local_size, shuffle, rng)
        if resumed is not None and epoch == first_epoch:
            for _ in range(skip):  # trained before the checkpoint
                next(batches, None)
            torch.set_rng_state(torch.from_numpy(resumed.arrays["torch_rng"]))
            epoch_steps = skip
        while True:
            batch = next(batches, None)
            n_local = batch.n_rows if batch is not None else 0
            n_step = int(distributed.all_sum(np.array([n_local]))[0]) if world > 1 else n_local
            if n_step == 0:
                break
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            value = 0.0
            if batch is not None:  # (labels follow the tables' device)
                labels = torch.from_numpy(batch.labels).to(tables[0].device)
                if label_smoothing:
                    labels = labels * (1 - label_smoothing) + 0.5 * label_smoothing
                loss = criterion(net(batch), labels)
                (loss / n_step).backward()
                value = loss.detach().item()
            if world > 1:
                combine_gradients(tables, others)
            for optimizer in optimizers:
                optimizer.step()
            if not np.isfinite(value):
                raise TrainingDiverged(epoch, f"the loss of step {steps + 1}")
            steps += 1
            epoch_steps += 1
            rows += n_step
            total_loss += value
            bar.update(n_step)
            if config.log_step_count_steps and steps % config.log_step_count_steps == 0:
                log.debug("step %d: loss %.5f", steps, value / max(n_local, 1))
            if checkpoints is not None and rank == 0 and checkpoints.due(steps):
                arrays, extra = _optimizer_arrays(optimizers)
                arrays.update({f"net/{k}": v.detach().cpu().numpy()
                               for k, v in net.state_dict().items()})
                arrays["torch_rng"] = torch.get_rng_state().numpy()
                checkpoints.save(TrainingState(
                    steps, epoch, epoch_steps, rows, total_loss, epoch_rng_state,
                    [vars(h) for h in history], run_id or {}, arrays, extra))
            if config.num_steps and steps >= config.num_steps:
                break
        bar.close()
        if world > 1:
            total_loss = float(distributed.all_sum(np.array([total_loss]))[0])
        seconds = time.perf_counter() - started
        stats = EpochStats(epoch, rows, epoch_steps, total_loss / max(rows, 1), seconds)
        history.append(stats)
        log.info("epoch %d: %d rows, mean train loss %.5f, %.1f s (%.0f rows/s)", epoch, rows,
                 stats.loss, seconds, rows / max(seconds, 1e-9))
        if config.num_steps and steps >= config.num_steps or rows == 0:
            break
        if after_epoch is not None:
            net.eval()
            stop = after_epoch(stats)
            net.train()
            if stop:
                break
    net.eval()
    return history
