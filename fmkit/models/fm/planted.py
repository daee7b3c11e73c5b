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
    fields: np.ndarray | None = None  # field-aware: the field of each nonzero of X (CSR order)

    def split(self, n_train: int) -> tuple[PlantedData, PlantedData]:
        """The first ``n_train`` rows and the rest, sharing the planted model."""
        cut = int(self.X.indptr[n_train])
        fields = (None, None) if self.fields is None else (self.fields[:cut], self.fields[cut:])
        head = PlantedData(self.X[:n_train], self.y[:n_train], self.probability[:n_train],
                           self.truth, fields[0])
        tail = PlantedData(self.X[n_train:], self.y[n_train:], self.probability[n_train:],
                           self.truth, fields[1])
        return head, tail

    def libffm_lines(self) -> list[str]:
        """The rows as libffm text (``label field:index:value ...``, 0-based indices)."""
        X, fields = self.X, self.fields
        return [f"{int(self.y[r])} " + " ".join(
            f"{fields[j]}:{X.indices[j]}:{X.data[j]:g}" for j in range(X.indptr[r],
                                                                     X.indptr[r + 1]))
            for r in range(X.shape[0])]


def zipf_ids(rng: np.random.Generator, n: int, size: int, exponent: float) -> np.ndarray:
    """``n`` ids in ``[0, size)`` with P(rank r) proportional to r^-exponent (ranks shuffled)."""
    weights = np.arange(1, size + 1, dtype=np.float64) ** -exponent
    cdf = np.cumsum(weights)
    ranks = np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right")
    return rng.permutation(size)[np.minimum(ranks, size - 1)]


def planted_ctr(n_rows: int, field_sizes: list[int], *, num_factors: int = 4,
                factor_sigma: float = 0.4, linear_sigma: float = 0.4, bias: float = -1.5,
                zipf_exponent: float = 1.1, seed: int = 0,
                field_aware: bool = False) -> PlantedData:
    """Sample ``n_rows`` one-hot rows over ``len(field_sizes)`` fields and their clicks; with
    ``field_aware`` the planted model is a field-aware FM (a factor vector per feature and
    field, :mod:`fmkit.models.fm.ffm`), and the data keeps each nonzero's field."""
    rng = np.random.default_rng(seed)
    d = int(sum(field_sizes))
    n_fields = len(field_sizes)
    width = num_factors * (n_fields if field_aware else 1)
    truth = FMParameters(
        w0=np.array([bias]),
        w=rng.normal(0.0, linear_sigma, d),
        V=rng.normal(0.0, factor_sigma, (d, width)),
    )
    offsets = np.cumsum([0, *field_sizes[:-1]])
    columns = np.empty((n_rows, len(field_sizes)), dtype=np.int32)
    for f, (offset, size) in enumerate(zip(offsets, field_sizes)):
        columns[:, f] = offset + zipf_ids(rng, n_rows, size, zipf_exponent)
    X = sp.csr_matrix(
        (np.ones(n_rows * n_fields, dtype=np.float32), columns.ravel(),
         np.arange(0, n_rows * n_fields + 1, n_fields, dtype=np.int64)),
        shape=(n_rows, d),
    )
    fields = None
    if field_aware:
        from fmkit.models.fm import ffm

        fields = np.tile(np.arange(n_fields, dtype=np.int32), n_rows)
        logits = ffm.reference_logits(truth, n_fields, X.indptr, X.indices, fields, X.data)
    else:
        logits = reference_logits(truth, X)
    probability = sigmoid(logits)
    y = (rng.random(n_rows) < probability).astype(np.float32)
    return PlantedData(X, y, probability, truth, fields)
