"""Top-k items for a context, exactly, from an FM or a field-aware FM.

Scoring a context row ``c`` joined with an item row ``i`` (their features disjoint) splits
into a part of the context, a part of the item and one inner product:

    y_hat(c + i) = a(c) + b(i) + <p(c), q(i)>

* FM: ``a(c) = y_hat(c)`` (the bias, c's linear terms and c's own pairs), ``b(i) = y_hat(i) -
  w0`` (i's linear terms and own pairs), ``p(c) = c V`` and ``q(i) = i V``: the pairs across
  context and item are ``sum_f (cV)_f (iV)_f``.
* FFM: the same ``a`` and ``b``; a pair of context feature j (field f) and item feature l
  (field g) is ``<v_{j,g}, v_{l,f}>``, so with ``P(c)[f, g] = sum_{j in c, field f} x_j v_{j,g}``
  and ``Q(i)[f, g] = sum_{l in i, field g} x_l v_{l,f}`` the cross term is
  ``sum_{f,g} <P(c)[f,g], Q(i)[f,g]>``: ``p`` and ``q`` are P and Q flattened (F*F*k values).

A model that scales each joined row to unit length (``instance_norm=1``, a field-aware FM's
default) scores ``w0 + s (L(c) + L(i)) + s^2 (P(c) + P(i) + <p(c), q(i)>)`` with ``s = 1 /
|c + i| = 1 / sqrt(|c|^2 + |i|^2)``, ``L`` the linear terms and ``P`` the own pairs of the
rows as given: no longer one inner product, so its top k scores every item exactly (float64,
blocks of items, ties to the earlier item), and ``--approximate`` is refused.

So the top k of a catalogue is an exact maximum inner product search over ``[q(i), b(i)]``
with ``[p(c), 1]``: a float32 matrix product per block of contexts and items (BLAS) finds
every item that can be among the k best — all scoring at least the k-th best of the blocks'
maxima, less twice the float32 pass's error bound — and those few are scored again in
float64 and sorted.
Classifier scores are monotone in y_hat, so ranking by y_hat is right for both predictor
types. Ties are broken by catalogue order (the earlier item first). For catalogues too large
to scan per query, :mod:`fmkit.models.fm.approximate` proposes the candidates instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from fmkit.data.batch import SparseBatch, row_sums
from fmkit.errors import ArtifactError, DataError, excerpt
from fmkit.models.fm.model import FMModel

BLOCK_SCORES = 1 << 22  # scores held at once (32 MB of float64)
BLOCK_ITEMS = 256  # items per block whose best score bounds the k-th best from below
QUERY_BLOCK = 256  # contexts scored together: each pass over the item factors serves them all
CATALOGUE_FILE = "catalogue.npz"


def _cross(model: FMModel, batch: SparseBatch, side: str) -> np.ndarray:
    """``p`` (``side="context"``) or ``q`` (``"item"``) of every row, float64."""
    used, columns = np.unique(batch.indices, return_inverse=True)
    V = model.params.V[used].astype(np.float64)  # the rows the batch uses, in float64

    def product(values: np.ndarray) -> np.ndarray:
        matrix = sp.csr_matrix((values.astype(np.float64), columns.reshape(-1), batch.indptr),
                               shape=(batch.n_rows, used.size))
        return np.asarray(matrix @ V)

    if not model.field_aware:
        return product(batch.values)
    F = model.num_fields
    k = V.shape[1] // F
    fields = model.fields_of(batch)
    out = np.empty((batch.n_rows, F, F, k))
    for f in range(F):  # rows' features of field f, times their factor tables
        out[:, f] = product(np.where(fields == f, batch.values, 0)).reshape(-1, F, k)
    # out[r, f, g] = sum over r's field-f features of x_j v_{j,g}: P as it is; Q[f, g] of an
    # item is out[g, f]
    return (out if side == "context" else out.transpose(0, 2, 1, 3)).reshape(batch.n_rows, -1)


@dataclass
class Catalogue:
    """The candidate items, prepared: their ids, ``b(i)``, ``q(i)`` and the features they use
    (a context may not use them: the split holds for disjoint features)."""

    ids: list[Any]
    bias: np.ndarray  # (items,)
    factors: np.ndarray  # (items, D)
    keys: np.ndarray  # sorted feature ids the items use
    # a model that scales its rows: L(i) and |i|^2 (``bias`` is then L(i) + P(i), unscaled)
    linear: np.ndarray | None = None
    squares: np.ndarray | None = None

    @cached_property
    def index(self) -> IdIndex:
        """Catalogue positions by id; built once, not per request."""
        return IdIndex(self.ids)

    def positions(self, ids: list[Any]) -> np.ndarray:
        """The positions of those of ``ids`` the catalogue holds (others are ignored)."""
        return self.index.positions(ids)

    @cached_property
    def scoring(self) -> tuple[np.ndarray, float]:
        """``[q(i), b(i)]`` in float32 (the first, fast pass) and the largest row norm (what
        bounds that pass's rounding error)."""
        if self.squares is not None:
            raise ArtifactError("--approximate searches inner products; this model scales "
                                "each joined row to unit length (instance_norm=1), so its "
                                "top k scores every item: drop --approximate")
        table = np.hstack([self.factors, self.bias[:, None]]).astype(np.float32)
        norm = float(np.sqrt((table.astype(np.float64) ** 2).sum(axis=1)).max()) if len(
            table) else 0.0
        return table, norm

    @classmethod
    def of(cls, model: FMModel, ids: list[Any], items: SparseBatch) -> Catalogue:
        scaled = model.hyperparameters.get("instance_norm")
        bias = _as_given(model).logits(items) - float(model.params.w0[0])
        catalogue = cls(list(ids), bias, _cross(model, items, "item"), np.unique(items.indices),
                        *(_linear_and_squares(model, items) if scaled else ()))
        catalogue.index.check_unique(ids, items.source)
        return catalogue

    def save(self, directory: str | Path) -> None:
        """Beside a model: ``catalogue.npz`` (numbers; ids as JSON text), loaded without
        pickle."""
        from fmkit.files import output_stream

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with output_stream(directory / CATALOGUE_FILE) as out:
            scaled = {} if self.squares is None else {"linear": self.linear,
                                                      "squares": self.squares}
            np.savez(out, bias=self.bias, factors=self.factors, keys=self.keys,
                     ids=np.array(json.dumps(self.ids)), **scaled)

    @classmethod
    def load(cls, directory: str | Path) -> Catalogue:
        path = Path(directory) / CATALOGUE_FILE
        try:
            with np.load(path, allow_pickle=False) as data:
                scaled = [data[name] for name in ("linear", "squares") if name in data]
                return cls(json.loads(str(data["ids"])), data["bias"], data["factors"],
                           data["keys"], *scaled)
        except (OSError, KeyError, ValueError) as e:
            raise ArtifactError(f"{path}: not a readable item catalogue ({e}); write it with "
                                "fmkit recommend index") from None


def id_key(value: Any) -> str:
    """How an item or query id is matched across files and requests: a number or a text as
    text, so ``7`` in a JSON file is ``"7"`` of a libsvm row (whose id, its label, is text);
    other JSON values by their JSON text (``[1]`` is not ``1``)."""
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        return str(value)
    return json.dumps(value, sort_keys=True)


class IdIndex(dict):
    """Positions by id (:func:`id_key`: ``1`` and ``"1"`` are one id, ``[1]`` another): a
    catalogue's, or an items file's before there is a model."""

    def __init__(self, ids: list[Any]):
        super().__init__((id_key(i), n) for n, i in enumerate(ids))

    def positions(self, ids: list[Any]) -> np.ndarray:
        """The positions of those of ``ids`` held here (others are ignored)."""
        return np.array([self[key] for key in map(id_key, ids) if key in self], np.int64)

    def check_unique(self, ids: list[Any], source: str, what: str = "item") -> None:
        """A :class:`DataError` naming the first id given twice in ``ids`` (what this index
        was built from), if one is."""
        if len(self) == len(ids):
            return
        first: dict[str, int] = {}
        for number, given in enumerate(ids, start=1):
            key = id_key(given)
            if key in first:
                shown = excerpt(json.dumps(given), quote=False)
                raise DataError(source, None, f"{what} id {shown} is given "
                                f"twice ({what}s {first[key]} and {number}): ids must be unique")
            first[key] = number


def _as_given(model: FMModel) -> FMModel:
    """``model`` scoring rows as given (without its unit-length scaling, if it has one)."""
    if not model.hyperparameters.get("instance_norm"):
        return model
    return replace(model, hyperparameters={**model.hyperparameters, "instance_norm": 0})


def _linear_and_squares(model: FMModel, batch: SparseBatch) -> tuple[np.ndarray, np.ndarray]:
    """Per row, ``L = sum w_j x_j`` and ``|x|^2``, float64, of the rows as given."""
    values = batch.values[: batch.indptr[-1]].astype(np.float64)
    weights = model.params.w[batch.indices[: batch.indptr[-1]]].astype(np.float64)
    return row_sums(batch, weights * values), row_sums(batch, values * values)


def top_k(model: FMModel, catalogue: Catalogue, contexts: SparseBatch, k: int,
          exclude: list[np.ndarray] | None = None, index: Any = None
          ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per context, the positions in the catalogue of its ``k`` best items (best first) and
    their y_hat; ``exclude[r]`` holds catalogue positions context ``r`` may not get. With an
    ``index`` (:class:`fmkit.models.fm.approximate.ApproximateIndex`) the candidates are those
    it proposes: the scores are exact, the set may miss items."""
    if k <= 0:
        raise DataError(contexts.source, None, f"k must be positive, got {k}")
    p = _context_factors(model, catalogue, contexts)
    if catalogue.squares is not None:
        return _scaled_top_k(_scorer(model, catalogue, contexts, p), catalogue,
                             contexts.n_rows, k, exclude)
    a = model.logits(contexts)
    query = np.hstack([p, np.ones((p.shape[0], 1))])
    results = []
    for start in range(0, contexts.n_rows, QUERY_BLOCK):
        stop = min(start + QUERY_BLOCK, contexts.n_rows)
        if index is None:
            rows, items = _exact_candidates(catalogue, query, start, stop, k, exclude)
        else:
            rows, items = _index_candidates(index, query, start, stop, k, exclude)
        # the candidates scored exactly (float64), then the k best of each context
        values = a[rows] + catalogue.bias[items] + np.einsum("ij,ij->i", p[rows],
                                                             catalogue.factors[items])
        results += _best_k(rows, items, values, start, stop, k)
    return results


def _context_factors(model: FMModel, catalogue: Catalogue, contexts: SparseBatch
                     ) -> np.ndarray:
    """``p(c)`` of every context, once checked against the catalogue: no feature of the
    items, and the catalogue made for this model's shape."""
    used = np.unique(contexts.indices)
    at = np.minimum(np.searchsorted(catalogue.keys, used), max(catalogue.keys.size - 1, 0))
    shared = used[catalogue.keys[at] == used] if catalogue.keys.size else used[:0]
    if shared.size:
        raise DataError(contexts.source, None, f"feature {int(shared[0])} is in contexts and "
                        "items: a context must not use the items' features")
    expected = catalogue.factors.shape[1]
    p = _cross(model, contexts, "context")
    if p.shape[1] != expected:
        raise ArtifactError(f"the item catalogue was made for another model ({expected} "
                            f"factor values per item, this model has {p.shape[1]})")
    return p


Scorer = Callable[[int, int, Any], np.ndarray]


def _scorer(model: FMModel, catalogue: Catalogue, contexts: SparseBatch, p: np.ndarray
            ) -> Scorer:
    """``scores(start, stop, items)``: the exact (float64) y_hat of contexts ``start:stop``
    joined with the catalogue's ``items`` (a slice or positions), a row per context: the
    split of the module docstring, or its scaled form for a model that scales its rows."""
    if catalogue.squares is None:
        a = model.logits(contexts)
        return lambda start, stop, items: (a[start:stop, None] + catalogue.bias[items]
                                           + p[start:stop] @ catalogue.factors[items].T)
    w0 = float(model.params.w0[0])
    linear, squares = _linear_and_squares(model, contexts)
    own = _as_given(model).logits(contexts) - w0 - linear  # P(c)
    item_own = catalogue.bias - catalogue.linear  # P(i)

    def scaled(start: int, stop: int, items: Any) -> np.ndarray:
        length2 = squares[start:stop, None] + catalogue.squares[None, items]
        scale = np.divide(1.0, np.sqrt(length2), out=np.ones_like(length2), where=length2 > 0)
        return (w0 + scale * (linear[start:stop, None] + catalogue.linear[items])
                + scale ** 2 * (own[start:stop, None] + item_own[items]
                                + p[start:stop] @ catalogue.factors[items].T))

    return scaled


def _best_k(rows: np.ndarray, items: np.ndarray, values: np.ndarray, start: int, stop: int,
            k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per context ``start:stop``, the k best of its scored candidates ``(items, values)``:
    best first, ties to the earlier item."""
    order = np.lexsort((items, -values, rows))
    bounds = np.searchsorted(rows[order], np.arange(start, stop + 1))
    return [(items[order[lo:min(hi, lo + k)]], values[order[lo:min(hi, lo + k)]])
            for lo, hi in zip(bounds[:-1], bounds[1:])]


def _scaled_top_k(scores: Scorer, catalogue: Catalogue, n_contexts: int, k: int,
                  exclude: list[np.ndarray] | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`top_k` of a model that scales its rows: every item scored (module docstring),
    a tile of items at a time, each tile's k best of each context kept."""
    tile = max(k, BLOCK_SCORES // QUERY_BLOCK)
    results = []
    for start in range(0, n_contexts, QUERY_BLOCK):
        stop = min(start + QUERY_BLOCK, n_contexts)
        rows, items, values = [], [], []
        for first in range(0, len(catalogue.ids), tile):
            last = min(first + tile, len(catalogue.ids))
            block = scores(start, stop, slice(first, last))
            _exclude(block, exclude, start, first)
            # every score that may be among the k best (ties too): _best_k orders them
            row, column = _candidates(block, k, np.zeros(stop - start))
            found = block[row, column]
            keep = np.isfinite(found)  # (excluded items)
            rows.append(row[keep] + start)
            items.append(column[keep] + first)
            values.append(found[keep])
        results += _best_k(*map(np.concatenate, (rows, items, values)), start, stop, k)
    return results


def context_aucs(model: FMModel, catalogue: Catalogue, contexts: SparseBatch,
                 relevant: list[np.ndarray], exclude: list[np.ndarray] | None = None
                 ) -> np.ndarray:
    """Per context, the AUC of its ``relevant`` items (catalogue positions) against every
    other item of the catalogue, ``exclude[r]`` left out of both: the chance that a relevant
    item scores above another, ties counting half (LightFM's per-user ``auc_score``, with
    scikit-learn's ``roc_auc_score`` tie rule). NaN for a context without a relevant item or
    without another item. Every item is scored exactly (float64), a tile at a time, twice
    when the catalogue takes several tiles: the relevant items' scores come from the same
    computation as the others', so items alike score alike and tie."""
    scores = _scorer(model, catalogue, contexts, _context_factors(model, catalogue, contexts))
    n_items, tile = len(catalogue.ids), max(1, BLOCK_SCORES // QUERY_BLOCK)
    tiles = [(first, min(first + tile, n_items)) for first in range(0, n_items, tile)]
    out = np.full(contexts.n_rows, np.nan)
    for start in range(0, contexts.n_rows, QUERY_BLOCK):
        stop = min(start + QUERY_BLOCK, contexts.n_rows)
        excluded = [exclude[r] if exclude else [] for r in range(start, stop)]
        positive = [np.setdiff1d(relevant[r], gone).astype(np.int64)
                    for r, gone in zip(range(start, stop), excluded)]
        if not sum(p.size for p in positive):
            continue
        left_out = [np.union1d(relevant[r], gone).astype(np.int64)
                    for r, gone in zip(range(start, stop), excluded)]
        mine = [np.empty(p.size) for p in positive]
        for first, last in tiles:
            block = scores(start, stop, slice(first, last))
            for r, items in enumerate(positive):
                inside = (items >= first) & (items < last)
                mine[r][inside] = block[r, items[inside] - first]
        below, ties, others = (np.zeros(stop - start) for _ in range(3))
        for first, last in tiles:
            if len(tiles) > 1:  # (one tile: the block just scored)
                block = scores(start, stop, slice(first, last))
            for r in range(stop - start):
                gone = left_out[r][(left_out[r] >= first) & (left_out[r] < last)] - first
                rest = np.sort(np.delete(block[r], gone))
                lower = np.searchsorted(rest, mine[r], "left")
                below[r] += lower.sum()
                ties[r] += (np.searchsorted(rest, mine[r], "right") - lower).sum()
                others[r] += rest.size
        pairs = np.array([m.size for m in mine]) * others
        out[start:stop] = np.where(pairs > 0, (below + 0.5 * ties) / np.maximum(pairs, 1),
                                   np.nan)
    return out


def _exclude(scores: np.ndarray, exclude: list[np.ndarray] | None, start: int,
             first: int) -> None:
    """Set to -inf the scores of the items contexts ``start:`` may not get, in a block of
    scores whose rows are those contexts and whose columns are items ``first:``."""
    if exclude is None:
        return
    last = first + scores.shape[1]
    for r in range(start, start + scores.shape[0]):
        mine = exclude[r][(exclude[r] >= first) & (exclude[r] < last)]
        scores[r - start, mine - first] = -np.inf


def _exact_candidates(catalogue: Catalogue, query: np.ndarray, start: int, stop: int, k: int,
                      exclude: list[np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
    """(context row, item position) of every item that may be among the k best of contexts
    ``start:stop`` (see the module docstring)."""
    table, item_norm = catalogue.scoring
    n_items = table.shape[0]
    tile = max(BLOCK_ITEMS * k, BLOCK_SCORES // QUERY_BLOCK)
    # the float32 pass's error bound per context: rounding the inputs and summing D + 1
    # products, (D + 4) units in the last place of |p'| |q'| (twice, for safety)
    margin = (2 * (table.shape[1] + 3) * 2.0 ** -24
              * np.sqrt((query[start:stop] ** 2).sum(axis=1)) * item_norm)
    query32 = query[start:stop].astype(np.float32)
    rows, items = [], []
    for first in range(0, n_items, tile):
        last = min(first + tile, n_items)
        scores = query32 @ table[first:last].T  # y_hat - a(c), to float32
        _exclude(scores, exclude, start, first)
        row, column = _candidates(scores, k, margin)
        keep = np.isfinite(scores[row, column])  # (excluded items)
        rows.append(row[keep] + start)
        items.append(column[keep] + first)
    return np.concatenate(rows), np.concatenate(items)


def _index_candidates(index: Any, query: np.ndarray, start: int, stop: int, k: int,
                      exclude: list[np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
    """(context row, item position) of the items the approximate index proposes, less the
    excluded ones (it is asked for as many more)."""
    from fmkit.models.fm.approximate import SEARCH_FACTOR

    extra = max((exclude[r].size for r in range(start, stop)), default=0) if exclude else 0
    found = index.candidates(query[start:stop], SEARCH_FACTOR * k + extra)
    rows = np.repeat(np.arange(start, stop), found.shape[1])
    items = found.reshape(-1)
    keep = items >= 0
    if exclude is not None:
        for r in range(start, stop):
            if exclude[r].size:
                mine = rows == r
                keep[mine] &= ~np.isin(items[mine], exclude[r])
    return rows[keep], items[keep]


def _float32_below(values: np.ndarray) -> np.ndarray:
    """``values`` in float32, rounded down (a float32 floor never above the float64 one)."""
    rounded = values.astype(np.float32)
    above = rounded > values
    rounded[above] = np.nextafter(rounded[above], np.float32(-np.inf))
    return rounded


def _candidates(scores: np.ndarray, k: int, margin: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) of every score that may be among its row's k best: at least the k-th
    best of the maxima of blocks of :data:`BLOCK_ITEMS` (k maxima of distinct blocks are k
    distinct items, so that is no better than the k-th best) less ``2 * margin``. Only the
    blocks whose maximum reaches that are searched: a pass over the scores for the maxima
    instead of a partial sort of every row (1.5 ms per 100,000 items) or a comparison of
    every score."""
    rows, n = scores.shape
    whole = n // BLOCK_ITEMS
    if whole < k:  # too few blocks (a small catalogue, or its last items): sort the rows
        if n <= k:
            return np.nonzero(np.ones_like(scores, dtype=bool))
        floors = _float32_below(np.partition(scores, n - k, axis=1)[:, n - k] - 2 * margin)
        return np.nonzero(scores >= floors[:, None])
    blocks = scores[:, : whole * BLOCK_ITEMS].reshape(rows, whole, BLOCK_ITEMS)
    maxima = blocks.max(axis=2)
    floors = _float32_below(np.partition(maxima, whole - k, axis=1)[:, whole - k] - 2 * margin)
    block_row, block = np.nonzero(maxima >= floors[:, None])
    hit, offset = np.nonzero(blocks[block_row, block] >= floors[block_row, None])
    row, column = block_row[hit], block[hit] * BLOCK_ITEMS + offset
    tail_row, tail = np.nonzero(scores[:, whole * BLOCK_ITEMS:] >= floors[:, None])
    return (np.concatenate([row, tail_row]),
            np.concatenate([column, tail + whole * BLOCK_ITEMS]))
