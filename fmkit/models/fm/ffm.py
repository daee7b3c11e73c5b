"""The field-aware factorization machine (FFM), written plainly: the reference the compiled
kernels (:mod:`fmkit.kernels.ffm`) are tested against.

    y_hat(x) = w0 + sum_i w_i x_i + sum_{a<b} <v_{i_a, f_b}, v_{i_b, f_a}> x_a x_b

for the nonzeros ``a < b`` of a row, feature ``i_a`` in field ``f_a``: each feature keeps one
factor vector per field, and a pair uses the vector each feature keeps for the *other's* field
(Juan et al., 2016, as libffm and xLearn). A row of the weight table is ``[w_i, v_{i,0},
v_{i,1}, .., v_{i,F-1}]``: an :class:`~fmkit.models.fm.parameters.FMParameters` whose factor
width is ``num_fields * k``, so the FM's optimizer state, update rules and model directory
serve the FFM unchanged. Per row the cost is O(nnz^2 k), against the FM's O(nnz k).
"""

from __future__ import annotations

import numpy as np

from fmkit.models.fm.parameters import FMParameters, loss_and_slope


def field_factors(params: FMParameters, num_fields: int) -> np.ndarray:
    """The factors as ``(feature_dim, num_fields, k)`` (a view)."""
    return params.V.reshape(params.feature_dim, num_fields, -1)


def _rows(indptr, indices, fields, values):
    for r in range(len(indptr) - 1):
        lo, hi = indptr[r], indptr[r + 1]
        yield (np.asarray(indices[lo:hi]), np.asarray(fields[lo:hi]),
               np.asarray(values[lo:hi], dtype=np.float64))


def reference_logits(params: FMParameters, num_fields: int, indptr, indices, fields,
                     values) -> np.ndarray:
    """y_hat of every row of a CSR batch with a field per nonzero (float64)."""
    V = field_factors(params, num_fields).astype(np.float64)
    w = params.w.astype(np.float64)
    out = []
    for ids, fs, xs in _rows(indptr, indices, fields, values):
        # pair (a, b) uses v[ids[a], fs[b]] . v[ids[b], fs[a]]
        cross = np.einsum("abk,bak->ab", V[ids[:, None], fs[None, :]],
                          V[ids[:, None], fs[None, :]]) * np.outer(xs, xs)
        out.append(float(params.w0[0]) + w[ids] @ xs + np.triu(cross, 1).sum())
    return np.array(out)


def reference_gradients(params: FMParameters, num_fields: int, indptr, indices, fields,
                        values, y: np.ndarray, predictor_type: str
                        ) -> tuple[float, np.ndarray, np.ndarray]:
    """Gradients of the mean loss over the rows: (d/dw0, d/dw, d/dV), dense, float64, ``V``
    as the table stores it (``(feature_dim, num_fields * k)``)."""
    V = field_factors(params, num_fields).astype(np.float64)
    _, slope = loss_and_slope(reference_logits(params, num_fields, indptr, indices, fields,
                                               values), y, predictor_type)
    slope = slope / (len(indptr) - 1)
    gw = np.zeros(params.feature_dim)
    gV = np.zeros_like(V)
    for s, (ids, fs, xs) in zip(slope, _rows(indptr, indices, fields, values)):
        np.add.at(gw, ids, s * xs)
        for a in range(len(ids)):
            for b in range(a + 1, len(ids)):
                scale = s * xs[a] * xs[b]
                gV[ids[a], fs[b]] += scale * V[ids[b], fs[a]]
                gV[ids[b], fs[a]] += scale * V[ids[a], fs[b]]
    return float(slope.sum()), gw, gV.reshape(params.feature_dim, -1)
