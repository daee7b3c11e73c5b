"""Click-through-style data from a planted factorization machine, with known true probabilities.

Each row has one active id per categorical field (one-hot), ids drawn from a Zipf law as real
categorical features are. The click probability is sigmoid of a planted FM, so the best possible
(oracle) AUC and log loss on the data are known. Used by ``fmkit demo``, the tests and benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from fmkit.models.fm.parameters import FMParameters, reference_logits, sigmoid


@dataclass
class PlantedData:
    """Rows, sampled clicks, the planted model and its click probabilities."""

    X: sp.csr_matrix
    y: np.ndarray
    probability: np.ndarray
    truth: FMParameters

    def split(self, n_train: int) -> tuple[PlantedData, PlantedData]:
        """The first ``n_train`` rows and the rest, sharing the planted model."""
        head = PlantedData(self.X[:n_train], self.y[:n_train], self.probability[:n_train],
                           self.truth)
        tail = PlantedData(self.X[n_train:], self.y[n_train:], self.probability[n_train:],
                           self.truth)
        return head, tail


def zipf_ids(rng: np.random.Generator, n: int, size: int, exponent: float) -> np.ndarray:
    """``n`` ids in ``[0, size)`` with P(rank r) proportional to r^-exponent (ranks shuffled)."""
    weights = np.arange(1, size + 1, dtype=np.float64) ** -exponent
    cdf = np.cumsum(weights)
    ranks = np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right")
    return rng.permutation(size)[np.minimum(ranks, size - 1)]


def planted_ctr(n_rows: int, field_sizes: list[int], *, num_factors: int = 4,
                factor_sigma: float = 0.4, linear_sigma: float = 0.4, bias: float = -1.5,
                zipf_exponent: float = 1.1, seed: int = 0) -> PlantedData:
    """Sample ``n_rows`` one-hot rows over ``len(field_sizes)`` fields and their clicks."""
    rng = np.random.default_rng(seed)
    d = int(sum(field_sizes))
    truth = FMParameters(
        w0=np.array([bias]),
        w=rng.normal(0.0, linear_sigma, d),
        V=rng.normal(0.0, factor_sigma, (d, num_factors)),
    )
    offsets = np.cumsum([0, *field_sizes[:-1]])
    columns = np.empty((n_rows, len(field_sizes)), dtype=np.int32)
    for f, (offset, size) in enumerate(zip(offsets, field_sizes)):
        columns[:, f] = offset + zipf_ids(rng, n_rows, size, zipf_exponent)
    n_fields = len(field_sizes)
    X = sp.csr_matrix(
        (np.ones(n_rows * n_fields, dtype=np.float32), columns.ravel(),
         np.arange(0, n_rows * n_fields + 1, n_fields, dtype=np.int64)),
        shape=(n_rows, d),
    )
    probability = sigmoid(reference_logits(truth, X))
    y = (rng.random(n_rows) < probability).astype(np.float32)
    return PlantedData(X, y, probability, truth)
