"""The trainer: epochs of mini-batches from a source through the compiled kernel.

One trainer serves the CLI, the Python estimators and the SageMaker entry point. It streams the
source once per epoch (memory is bounded by the model, its optimizer state and one block of data),
logs the mean training loss per epoch, and shows a progress bar on a terminal.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numba
import numpy as np
from tqdm import tqdm

from fmkit.data.batch import SparseBatch, rebatch, take
from fmkit.errors import DataError
from fmkit.kernels import fm as kernels
from fmkit.logs import DEFAULT_HOST, log
from fmkit.memory import release_large_blocks_to_os
from fmkit.models.fm import FMParameters, init_parameters
from fmkit.train.optimizers import OPTIMIZER_IDS, kernel_config


class Source(Protocol):
    name: str

    def blocks(self): ...


@dataclass
class EpochStats:
    epoch: int
    loss: float
    rows: int
    seconds: float
    validation_loss: float | None = None

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("inf")


@dataclass
class Workspace:
    """Scratch arrays the kernels reuse: the feature -> slot map, and per thread (``parts``) a
    gradient buffer per slot and the row's factor sums."""

    slot: np.ndarray
    parts: int
    k: int
    touched: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    gw: np.ndarray = field(default_factory=lambda: np.zeros((1, 0)))
    gV: np.ndarray = field(default_factory=lambda: np.zeros((1, 0, 0)))
    sums: np.ndarray = field(default_factory=lambda: np.zeros((1, 0)))

    @classmethod
    def for_params(cls, params: FMParameters, parts: int = 1) -> Workspace:
        k = params.num_factors
        return cls(slot=np.full(params.feature_dim, -1, dtype=np.int32), parts=parts, k=k,
                   sums=np.zeros((parts, k)), gV=np.zeros((parts, 0, k)))

    def reserve(self, chunk: SparseBatch, batch_size: int, feature_dim: int) -> None:
        """Grow the buffers to hold the distinct features of the chunk's largest mini-batch."""
        bounds = np.r_[np.arange(0, chunk.n_rows, batch_size), chunk.n_rows]
        need = max(1, min(feature_dim, int(np.diff(chunk.indptr[bounds]).max(initial=0))))
        if need > self.touched.size:
            need = min(feature_dim, max(need, 2 * self.touched.size))
            self.touched = np.zeros(need, np.int32)
            self.gw = np.zeros((self.parts, need))
            self.gV = np.zeros((self.parts, need, self.k))


def loss_kind(predictor_type: str) -> int:
    return kernels.LOGISTIC if predictor_type == "binary_classifier" else kernels.SQUARED


def train(hp: dict[str, Any], source: Source, params: FMParameters | None = None, *,
          validation: Source | None = None, progress: bool | None = None,
          host: str = DEFAULT_HOST, dtype=np.float32) -> tuple[FMParameters, list[EpochStats]]:
    """Train an FM with validated hyperparameters ``hp`` on ``source``; return weights and history.

    ``params`` continues from given weights (a fresh optimizer state is used). With a
    ``validation`` source, its loss is measured after every epoch, the best epoch's weights are
    returned, and training stops after ``early_stopping_patience`` epochs without improvement.
    ``progress``: True/False forces the bar on/off, None shows it only when stderr is a
    terminal.
    """
    release_large_blocks_to_os()
    params = params if params is not None else init_parameters(hp, dtype)
    opt = OPTIMIZER_IDS[hp["optimizer"]]
    k = params.num_factors
    table = training_table(params, opt)
    w0 = params.w0.copy()
    bias_state = np.zeros(2)
    step = 0
    # mini-batches are split across the cores (numba's thread count, $NUMBA_NUM_THREADS);
    # the fused one-row loop (mini_batch_size=1) runs on one
    parts = numba.get_num_threads() if hp["mini_batch_size"] > 1 else 1
    ws = Workspace.for_params(params, parts)
    del params  # the training table holds the weights from here on
    config = kernel_config(hp)
    batch_size = hp["mini_batch_size"]
    kind = loss_kind(hp["predictor_type"])
    show = sys.stderr.isatty() if progress is None else progress
    rng = np.random.default_rng(hp["seed"])
    history: list[EpochStats] = []
    epochs = hp["epochs"]
    best: tuple[float, int, FMParameters] | None = None
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        rows, loss_sum = 0, 0.0
        with tqdm(desc=f"epoch {epoch}/{epochs}", unit=" rows", unit_scale=True,
                  disable=not show, file=sys.stderr) as bar:
            for chunk in rebatch(source.blocks(), batch_size):
                if hp["shuffle"]:
                    chunk = take(chunk, rng.permutation(chunk.n_rows))
                ws.reserve(chunk, batch_size, table.shape[0])
                chunk_loss, step = kernels.train_chunk(
                    chunk.indptr, chunk.indices, chunk.values, chunk.labels, batch_size, kind,
                    opt, config, w0, bias_state, table, k, ws.slot, ws.touched, ws.gw, ws.gV,
                    ws.sums, step)
                rows += chunk.n_rows
                loss_sum += chunk_loss
                bar.update(chunk.n_rows)
                bar.set_postfix(loss=f"{loss_sum / max(rows, 1):.5f}", refresh=False)
        if rows == 0:
            raise DataError(source.name, None, "holds no data rows")
        stats = EpochStats(epoch, loss_sum / rows, rows, time.perf_counter() - started)
        history.append(stats)
        log.info("epoch %d/%d: train loss %.6f over %d rows (%.0f rows/s)", epoch, epochs,
                 stats.loss, rows, stats.rows_per_second)
        log.info("#progress_metric: host=%s, completed %d %% of epochs", host,
                 round(100 * epoch / epochs))
        log.info("#throughput_metric: host=%s, train throughput=%.1f records/second", host,
                 stats.rows_per_second)
        if not np.isfinite(stats.loss):
            log.warning("training loss is not finite: lower the learning rates or set "
                        "clip_gradient")
        if validation is not None:
            current = FMParameters.from_table(w0, table[:, : k + 1])  # a view, not a copy
            stats.validation_loss = validation_loss(hp, current, validation)
            log.info("#quality_metric: host=%s, epoch=%d, validation %s <loss>=%r", host, epoch,
                     VALIDATION_METRIC[hp["predictor_type"]], stats.validation_loss)
            if best is None or stats.validation_loss < best[0]:
                best = (stats.validation_loss, epoch, current.copy())
            patience = hp["early_stopping_patience"]
            if patience and epoch - best[1] >= patience:
                log.info("early stopping after epoch %d: the best validation loss was at "
                         "epoch %d", epoch, best[1])
                break
    if best is not None:
        return best[2], history
    return FMParameters.from_table(w0, np.ascontiguousarray(table[:, : k + 1])), history


VALIDATION_METRIC = {"binary_classifier": "binary_classification_cross_entropy",
                     "regressor": "rmse"}


def validation_loss(hp: dict[str, Any], params: FMParameters, validation: Source) -> float:
    """The loss early stopping watches: log loss (classifier) or RMSE (regressor)."""
    from fmkit.model import FMModel

    metrics = FMModel(hp, params).evaluate(validation.blocks())
    return float(metrics[VALIDATION_METRIC[hp["predictor_type"]]])


def training_table(params: FMParameters, optimizer_id: int) -> np.ndarray:
    """The weight table widened with zeroed optimizer moments (see :mod:`fmkit.kernels.fm`)."""
    width = kernels.table_width(params.num_factors, optimizer_id)
    table = np.zeros((params.feature_dim, width), dtype=params.table.dtype)
    table[:, : params.num_factors + 1] = params.table
    return table
