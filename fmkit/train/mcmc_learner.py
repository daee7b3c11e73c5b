"""The FM learner of the whole-data sweeps (:mod:`fmkit.kernels.mcmc`): ``optimizer=mcmc``, a
Bayesian FM sampled by Gibbs sweeps (libFM's MCMC), with no learning rate or regularization to
tune; and ``optimizer=als``, the same sweeps without sampling (libFM's and fastFM's
alternating least squares), with L2 weights and no learning rate.

An epoch is one sweep over every training row; the rows are held in memory (read once, or
again when the source draws new rows per epoch), as libFM's and myFM's MCMC hold them. The
model it returns is the mean of the sampled weights after the burn-in (the first tenth of the
epochs): an ordinary FM, scored, served and exported as any other, which predicts almost as
well as averaging every sample's predictions would (docs/quality.md, "Session 46"). A
classifier is sampled as a probit model and saved on the logit scale (``PROBIT_TO_LOGIT``:
sigmoid(1.702 t) is within 0.01 of Phi(t)). An ALS model is its last sweep's weights (or the
best validated one's), its regressor on the labels' own scale: its L2 weights are the
objective's, as libFM's and fastFM's are.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from fmkit.data.batch import SparseBatch, concat
from fmkit.errors import DataError, HyperparameterError, TrainingDiverged
from fmkit.kernels import mcmc
from fmkit.memory import check_fits
from fmkit.models.fm.hyperparameters import MCMC, sweeps_in_one_process
from fmkit.models.fm.model import validation_metrics
from fmkit.models.fm.parameters import FMParameters, init_parameters
from fmkit.train.engine import Source

# the bytes Rows takes (and the copies made building it) per row and per nonzero value
ROW_BYTES, NONZERO_BYTES = 48, 40
STREAM_ADVICE = ("Train on fewer rows, or with a gradient optimizer (optimizer=adam and the "
                 "others stream the file: their memory is the model's)")
PROBIT_TO_LOGIT = 1.702
BURN_IN_SHARE = 0.1  # the share of the epochs whose samples the model's mean leaves out
# A sweep's training loss this many times its first one: the sweeps lost their precision
# (feature values like 1e30 cancel the residuals they keep), not a model a chain or least
# squares can reach (ALS's loss never rises; a chain's stays near its optimum's).
BREAKDOWN = 10.0
DIVERGED_HINT = ("optimizer=mcmc has no learning rate: scale the labels (or the feature "
                 "values) to a spread near 1")
ALS_DIVERGED_HINT = ("optimizer=als has no learning rate: raise its L2 weights (linear_wd, "
                     "factors_wd), or scale the feature values to a spread near 1")


class Rows:
    """The training rows in memory, by row (CSR) and by feature (CSC), float64, as a sweep
    reads them."""

    def __init__(self, batch: SparseBatch, feature_dim: int, shift: float = 0.0,
                 scale: float = 1.0):
        if batch.weights is not None:
            raise DataError(batch.source, None, "the sweeps of optimizer=mcmc and als take no "
                            "sample weights")
        matrix = batch.matrix(feature_dim).astype(np.float64)
        matrix.sum_duplicates()
        columns = matrix.tocsc()
        self.indptr, self.indices = matrix.indptr.astype(np.int64), matrix.indices
        self.values = matrix.data
        self.labels = (batch.labels.astype(np.float64) - shift) / scale
        self.colptr, self.rows = columns.indptr.astype(np.int64), columns.indices
        self.column_values = columns.data
        self.scratch = np.zeros((2, batch.n_rows))

    @property
    def n_rows(self) -> int:
        return self.labels.size


class SweepLearner:
    """The engine's learner (:class:`fmkit.train.engine.Learner`) for ``optimizer=mcmc`` and
    ``optimizer=als``."""

    primary = True

    def __init__(self, hp: dict[str, Any], params: FMParameters | None, dtype=np.float32):
        self.sampled = hp["optimizer"] == MCMC
        if params is not None and self.sampled:
            raise HyperparameterError("optimizer=mcmc starts its own chain: it cannot continue "
                                      "a model (--init-model, warm_start)")
        self.diverged_hint = DIVERGED_HINT if self.sampled else ALS_DIVERGED_HINT
        self.one_process = sweeps_in_one_process(hp["optimizer"])  # (parallel() refuses)
        self.hp, self.dtype, k = hp, dtype, hp["num_factors"]
        self.hyper = np.zeros(mcmc.FACTORS + 2 * k)
        if self.sampled:  # the priors' precisions: drawn from the first sweep on
            self.hyper[[mcmc.ALPHA, mcmc.LAMBDA_W]] = 1.0
            self.hyper[mcmc.FACTORS: mcmc.FACTORS + k] = 1.0
        else:  # ALS: the L2 weights, fixed (alpha 1, prior means 0)
            self.hyper[[mcmc.ALPHA, mcmc.LAMBDA_W]] = 1.0, hp["linear_wd"]
            self.hyper[mcmc.FACTORS: mcmc.FACTORS + k] = hp["factors_wd"]
        self.kept = 0
        self.burn_in = int(BURN_IN_SHARE * hp["epochs"])
        self.classifier = hp["predictor_type"] == "binary_classifier"
        # the model's weights from the chain's: a sampled regressor works on its labels
        # standardized (set from the first rows: the priors' scale is then the labels'), a
        # classifier on the probit scale
        self.shift, self.scale = ((0.0, PROBIT_TO_LOGIT) if self.classifier
                                  else (None, None) if self.sampled else (0.0, 1.0))
        start = params if params is not None else init_parameters(hp, np.float64)
        self.w0, self.w, self.V = (np.array(a, dtype=np.float64)
                                   for a in (start.w0.reshape(1), start.w, start.V))
        if self.classifier:  # (the start on the logit scale)
            self.w0 /= self.scale
            if params is not None:
                self.w /= self.scale
                self.V /= np.sqrt(self.scale)
        self.mean = {"w0": np.zeros(1), "w": np.zeros_like(self.w), "V": np.zeros_like(self.V)}
        self.steps = 0
        self.first_loss: float | None = None  # (the first sweep's, for _check_precision)
        self._rows: tuple[Source, Rows] | None = None

    def batches(self, source: Source, rng: np.random.Generator) -> Iterator[Rows]:
        """One unit per epoch: every row of ``source``, read the first time it is seen."""
        if self._rows is None or self._rows[0] is not source:
            self._rows = None  # (the last epoch's rows, if the source draws new ones)
            blocks, rows, nonzeros = [], 0, 0
            for block in source.blocks():
                blocks.append(block)
                rows, nonzeros = rows + block.n_rows, nonzeros + int(block.indptr[-1])
                check_fits(f"optimizer={self.hp['optimizer']} on {source.name}", [
                    (f"{rows:,} rows, {nonzeros:,} values by row and by feature",
                     ROW_BYTES * rows + NONZERO_BYTES * nonzeros)], STREAM_ADVICE,
                    held="the training rows it holds in memory (read so far)")
            if not rows:
                raise DataError(source.name, None, "holds no data rows")
            batch = concat(blocks)
            if self.classifier:
                self._rows = (source, Rows(batch, self.hp["feature_dim"]))
            else:
                self._standardize(batch.labels.astype(np.float64))
                self._rows = (source, Rows(batch, self.hp["feature_dim"], self.shift,
                                           self.scale))
        yield self._rows[1]

    def _standardize(self, labels: np.ndarray) -> None:
        """A regressor's label mean and spread, from the first rows it samples on (unless
        restored): priors of unit scale then fit labels of any scale, where a chain on prices
        in the 100,000s kept its weights near 0."""
        if self.scale is None:
            self.shift, self.scale = float(labels.mean()), float(labels.std()) or 1.0
            self.w0[0] = (self.w0[0] - self.shift) / self.scale

    def step(self, rows: Rows) -> tuple[float, int]:
        seed = int(np.random.default_rng([self.hp["seed"], self.steps]).integers(2**31))
        loss = mcmc.sweep(rows.indptr, rows.indices, rows.values, rows.colptr, rows.rows,
                          rows.column_values, rows.labels, self.classifier, self.w0, self.w,
                          self.V, self.hyper, seed, *rows.scratch, self.sampled,
                          mcmc.LAMBDA_BIAS if self.sampled else self.hp["bias_wd"])
        self._check_precision(loss, rows.n_rows)
        self.steps += 1
        if self.sampled and self.steps > self.burn_in:
            self.kept += 1
            for name, sample in (("w0", self.w0), ("w", self.w), ("V", self.V)):
                self.mean[name] += (sample - self.mean[name]) / self.kept
        return loss, rows.n_rows

    def _check_precision(self, loss: float, rows: int) -> None:
        """Refuse the weights of sweeps that lost their precision: the loss of the targets
        before this sweep (after the last) :data:`BREAKDOWN` times the first sweep's, where
        the weights stayed finite and the model would have been written (a9a with two values
        of 1e30: ALS's w0 reached 1.3e9, every score 1)."""
        if self.first_loss is None:
            self.first_loss = loss
        elif loss > BREAKDOWN * self.first_loss + 1e-9 * rows:
            raise TrainingDiverged(self.steps, "the training loss", self.diverged_hint,
                                   f"rose to {loss / max(self.first_loss, 1e-300):.3g} times "
                                   "its first sweep's: the sweeps lost their precision")

    def _model(self) -> dict[str, np.ndarray]:
        """The weights the model is: the samples' mean after the burn-in (before it ends, the
        current sample)."""
        return self.mean if self.kept else {"w0": self.w0, "w": self.w, "V": self.V}

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        return ({"w0": self.w0, "w": self.w, "V": self.V, "hyper": self.hyper,
                 **{f"mean_{name}": value for name, value in self.mean.items()}},
                {"kept": self.kept, "shift": self.shift, "scale": self.scale,
                 "first_loss": self.first_loss})

    def restore(self, arrays: dict[str, np.ndarray], extra: dict) -> None:
        for name in ("w0", "w", "V", "hyper"):
            getattr(self, name)[...] = arrays[name]
        for name in self.mean:
            self.mean[name][...] = arrays[f"mean_{name}"]
        self.kept = int(extra["kept"])
        self.first_loss = extra.get("first_loss")
        self.shift, self.scale = extra["shift"], extra["scale"]

    def weights(self) -> dict[str, np.ndarray]:
        return {name: value.copy() for name, value in self._model().items()}

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        self.mean = {name: value.copy() for name, value in weights.items()}
        self.kept = max(self.kept, 1)

    def evaluate(self, source: Source) -> dict[str, float]:
        return validation_metrics(self.hp, self.parameters(self.steps), source)

    def parameters(self, epoch: int) -> FMParameters:
        """The model's weights (a regressor's in the labels' units, a classifier's on the logit
        scale: y_hat times ``scale`` plus ``shift``), in the run's dtype."""
        model = self._model()
        if not all(np.isfinite(value).all() for value in model.values()):
            raise TrainingDiverged(epoch, "a weight", self.diverged_hint)
        shift, scale = self.shift or 0.0, self.scale or 1.0
        return FMParameters((shift + model["w0"] * scale).astype(self.dtype),
                            (model["w"] * scale).astype(self.dtype),
                            (model["V"] * np.sqrt(scale)).astype(self.dtype))
