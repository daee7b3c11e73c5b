"""``fmkit recommend``: top-k items per context from an FM or FFM model directory.

Items and contexts are rows with ids (:mod:`fmkit.data.id_rows`); the items are prepared
once into a catalogue (``fmkit recommend index`` keeps it in ``MODEL_DIR/items/``, where the
server finds it) or on the fly from ``--items``. The search itself is
:mod:`fmkit.models.fm.recommend`; ``fmkit recommend evaluate`` scores the top k against
held-out items; ``fmkit recommend pairs`` and ``fmkit train --interactions`` make training
rows of implicit feedback (:mod:`fmkit.data.pairs`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fmkit import distributed, files
from fmkit.data.batch import SparseBatch
from fmkit.data.blocks import read_input_lines
from fmkit.data.id_rows import iter_id_rows, read_id_rows
from fmkit.data.libsvm import write_libsvm
from fmkit.data.pairs import SampledPairs, draw_pairs, drawn_bytes, shared_key
from fmkit.data.sources import FileSource
from fmkit.errors import ArtifactError, DataError, HyperparameterError, excerpt, require_option
from fmkit.logs import log
from fmkit.memory import check_fits
from fmkit.models import artifact
from fmkit.models.base import load_fm
from fmkit.models.fm.approximate import CHECK_FILE, INDEX_FILE, ApproximateIndex
from fmkit.models.fm.model import FMModel
from fmkit.models.fm.recommend import (
    CATALOGUE_FILE,
    Catalogue,
    IdIndex,
    context_aucs,
    id_key,
    top_k,
)
from fmkit.models.metrics import RankingMeans


def _recommender(model_dir: str | Path) -> FMModel:
    if artifact.model_type(model_dir) not in (None, "fm"):
        raise ArtifactError(f"{model_dir}: recommend takes an FM or field-aware FM model "
                            "(a DeepFM's score does not split into context and item parts)")
    return load_fm(model_dir)


def index_items(model_dir: str | Path, items: str | Path, approximate: bool = False) -> int:
    """``fmkit recommend index``: the catalogue of ``items`` written beside the model (and
    with ``approximate`` its HNSW graph); returns the item count."""
    model = _recommender(model_dir)
    ids, batch = read_id_rows(items, model.feature_dim, model.input_fields)
    catalogue = Catalogue.of(model, ids, batch)
    directory = artifact.resolve(model_dir) / artifact.ITEMS_DIR
    files.guard_directory(directory, _holds_a_catalogue, "item catalogue")
    graph = ApproximateIndex.build(catalogue.scoring[0]) if approximate else None
    ApproximateIndex.discard(directory)  # (a graph of the previous catalogue)
    catalogue.save(directory)
    if graph is not None:
        graph.save(directory)
    return len(ids)


def _holds_a_catalogue(directory: Path) -> bool:
    """Whether ``directory`` holds only what ``fmkit recommend index`` writes there (and its
    hidden partial files)."""
    ours = {CATALOGUE_FILE, INDEX_FILE, CHECK_FILE}
    return all(name in ours or name.startswith(".") for name in os.listdir(directory))


def approximate_index(model_dir: str | Path, catalogue: Catalogue, built_here: bool
                      ) -> ApproximateIndex:
    """The HNSW graph of ``catalogue``: built now for items given on the command line
    (``built_here``), else the one ``fmkit recommend index --approximate`` kept."""
    if built_here:
        return ApproximateIndex.build(catalogue.scoring[0])
    return ApproximateIndex.load(artifact.resolve(model_dir) / artifact.ITEMS_DIR,
                                 catalogue.scoring[0])


def saved_catalogue(model_dir: str | Path) -> Catalogue | None:
    """The catalogue ``fmkit recommend index`` kept in a model directory, or None."""
    directory = artifact.resolve(model_dir) / artifact.ITEMS_DIR
    return Catalogue.load(directory) if directory.is_dir() else None


def catalogue_of(model: FMModel, model_dir: str | Path, items: str | Path | None) -> Catalogue:
    """The catalogue of ``items``, else the one ``fmkit recommend index`` kept."""
    if items is not None:
        return Catalogue.of(model, *read_id_rows(items, model.feature_dim, model.input_fields))
    catalogue = saved_catalogue(model_dir)
    if catalogue is None:
        raise ArtifactError(f"{model_dir}: no item catalogue; give --items FILE or write one "
                            f"with fmkit recommend index --model-dir {model_dir} --items FILE")
    return catalogue


ANSWERS = files.Recognise("fmkit's recommendations",  # what recommend_files may replace
                          lambda head: head.startswith(b'{"id": ') and b'"items": ' in head)


def _answers(ids: list[Any], catalogue: Catalogue,
             found: list[tuple[np.ndarray, np.ndarray]]) -> list[dict[str, Any]]:
    """``{"id", "items", "scores"}`` per query: what the CLI and the server answer."""
    return [{"id": query, "items": [catalogue.ids[p] for p in positions],
             "scores": scores.tolist()} for query, (positions, scores) in zip(ids, found)]


NO_ITEMS = np.zeros(0, np.int64)  # the positions of a query a file does not list
# a block of contexts searched: their ids, each one's (positions, scores) best first, and
# the function of relevant positions to their AUCs
ContextBlock = tuple[list[Any], list[tuple[np.ndarray, np.ndarray]],
                     Callable[[list[np.ndarray]], np.ndarray]]


class ListedItems:
    """An ``{"id": query id, "items": [item ids]}`` JSON Lines file (``--exclude``,
    ``--relevant``, ``--interactions``), held as each query's catalogue positions (an array
    per query, not the file's text): :meth:`lists` gives a block of queries theirs. Item ids
    the catalogue does not hold are left out; :meth:`finish` says how many of the asked
    queries' items that was, and when no query id of the file (for interactions, any) was
    asked for."""

    def __init__(self, path: str | Path, catalogue: Catalogue | IdIndex,
                 what: str = "excluded"):
        self.path, self.what = path, what
        self.held: dict[str, tuple[np.ndarray, int]] = {}  # positions, items given
        for number, line in enumerate(read_input_lines(path), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                items = record["items"]
                key = id_key(record["id"])
            except (ValueError, KeyError, TypeError):
                raise DataError(str(path), number, 'expected {"id": query id, "items": [item '
                                'ids]}') from None
            if not isinstance(items, list):
                raise DataError(str(path), number, '"items" must be a list of item ids')
            positions, given = catalogue.positions(items), len(items)
            if key in self.held:  # (a query's items over several lines)
                before, counted = self.held[key]
                positions, given = np.concatenate([before, positions]), counted + given
            self.held[key] = positions, given
        self.asked: set[str] = set()
        self.example: str | None = None  # a query id asked for, for the warning
        self.given = self.found = 0

    def lists(self, query_ids: list[Any]) -> list[np.ndarray]:
        """Each query's positions (none for a query the file does not list)."""
        lists = []
        for key in map(id_key, query_ids):
            self.example = key if self.example is None else self.example
            positions, given = self.held.get(key, (NO_ITEMS, 0))
            if key in self.held:
                self.asked.add(key)
                self.given, self.found = self.given + given, self.found + positions.size
            lists.append(positions)
        return lists

    def finish(self) -> None:
        """The warnings, once every query was asked for."""
        strangers = len(self.held) - len(self.asked)
        if self.what == "interaction" and strangers:  # (training data: a list goes unread)
            log.warning("%s: %d of its %d contexts are not among the contexts' rows: their "
                        "interactions are left out", self.path, strangers, len(self.held))
        elif self.held and strangers == len(self.held):
            log.warning("%s: none of its %d query ids (e.g. %s) is among the contexts' ids "
                        "(e.g. %s): no item is %s", self.path, len(self.held),
                        excerpt(next(iter(self.held))), excerpt(self.example or "none"),
                        self.what)
        if self.given > self.found:
            log.warning("%s: %d of the %d %s items of these contexts are not in the "
                        "catalogue: left out", self.path, self.given - self.found, self.given,
                        self.what)



def _top_k_blocks(model_dir: str | Path, contexts: str | Path, k: int,
                  items: str | Path | None, exclude: str | Path | None, approximate: bool
                  ) -> tuple[Catalogue, Iterator[ContextBlock]]:
    """The catalogue, and per block of contexts (:func:`fmkit.data.id_rows.iter_id_rows`:
    memory bounded by a block, whatever the number of contexts) their ids, each one's
    ``(positions, scores)``, best first, and their AUCs of given relevant positions
    (:func:`context_aucs`, ``exclude`` left out)."""
    require_option(k >= 1, "--k", ">= 1", k)
    model = _recommender(model_dir)
    catalogue = catalogue_of(model, model_dir, items)
    index = approximate_index(model_dir, catalogue, items is not None) if approximate else None
    excluded = ListedItems(exclude, catalogue) if exclude is not None else None

    def blocks() -> Iterator[ContextBlock]:
        for ids, batch in iter_id_rows(contexts, model.feature_dim, model.input_fields):
            left_out = excluded.lists(ids) if excluded else None
            found = top_k(model, catalogue, batch, k, left_out, index)
            yield ids, found, lambda relevant, batch=batch, left_out=left_out: context_aucs(
                model, catalogue, batch, relevant, left_out)
        if excluded:
            excluded.finish()

    return catalogue, blocks()


def recommend_files(model_dir: str | Path, contexts: str | Path, k: int, *,
                    items: str | Path | None = None, exclude: str | Path | None = None,
                    output: str | Path | None = None, approximate: bool = False) -> int:
    """``fmkit recommend``: JSON Lines ``{"id", "items", "scores"}`` per context (scores are
    y_hat), to ``output`` or stdout; to an ``output`` named ``.parquet``, ``.csv`` or ``.tsv``
    a table of a row per recommended item (``id``, ``rank``, ``item``, ``score``). Returns the
    number of contexts. ``approximate``: the candidates come from the HNSW graph (exact
    scores; recall below 1 is possible)."""
    from fmkit.data import tables  # (pyarrow: only for a table)

    kind = tables.table_kind(output, None)
    catalogue, blocks = _top_k_blocks(model_dir, contexts, k, items, exclude, approximate)
    count = 0
    if kind:  # a row per recommended item: id, rank, item, score
        with (files.output_stream(output, tables.TABLES, compress=True) as out,
              tables.PredictionTable(out, kind, (list(tables.RECOMMENDATIONS), [])) as table):
            for ids, found, _ in blocks:
                table.write(tables.recommendations(ids, catalogue.ids, found))
                count += len(ids)
        return count
    with files.output_stream(output, ANSWERS, compress=True) as out:
        for ids, found, _ in blocks:
            out.write("".join(json.dumps(answer) + "\n"
                              for answer in _answers(ids, catalogue, found)).encode())
            count += len(ids)
    return count


def evaluate_files(model_dir: str | Path, contexts: str | Path, relevant: str | Path, k: int,
                   *, items: str | Path | None = None, exclude: str | Path | None = None,
                   approximate: bool = False) -> dict[str, float]:
    """``fmkit recommend evaluate``: how good each context's top ``k`` is against the items
    ``relevant`` lists for it (held-out interactions; a ``{"id", "items"}`` JSON Lines file
    like ``exclude``, which usually lists the training interactions):
    :func:`fmkit.models.metrics.ranking_metrics` over the contexts with a relevant item, and
    ``auc``, the mean over them of each context's AUC against the whole catalogue
    (:func:`context_aucs`). ``approximate`` (for catalogues too large to score every item
    per context) leaves ``auc`` out."""
    catalogue, blocks = _top_k_blocks(model_dir, contexts, k, items, exclude, approximate)
    wanted = ListedItems(relevant, catalogue, "relevant")
    means, auc_sum, auc_count = RankingMeans(k), 0.0, 0
    for ids, found, aucs in blocks:
        lists = wanted.lists(ids)
        means.add([positions for positions, _ in found], lists)
        if not approximate:
            each = aucs(lists)
            auc_sum, auc_count = auc_sum + np.nansum(each), auc_count + np.isfinite(each).sum()
    wanted.finish()
    metrics = means.means()
    if not metrics["queries"]:
        raise DataError(str(relevant), None, "lists no catalogue item for any context of "
                        f"{contexts}: nothing to evaluate")
    if auc_count:
        metrics["auc"] = float(auc_sum / auc_count)
    return metrics


ANY_KEY = 2**31 - 1  # before a model there is no feature_dim to check keys against


def write_pairs(contexts: str | Path, items: str | Path, interactions: str | Path,
                output: str | Path | None, negatives: int = 4, seed: int = 0
                ) -> tuple[int, int]:
    """``fmkit recommend pairs``: training rows for implicit feedback
    (:mod:`fmkit.data.pairs`) from ``{"id": context id, "items": [item ids]}`` JSON Lines
    interactions, drawn once (seeded) and shuffled, as libsvm with 0-based keys. Returns
    ``(positive rows, negative rows)``."""
    context_rows, item_rows, chosen = _interactions(contexts, items, interactions, negatives,
                                                    ANY_KEY)
    width = 1 + max(int(context_rows.indices.max(initial=0)), int(item_rows.indices.max(
        initial=0)))
    joined, labels = draw_pairs(context_rows, item_rows, chosen, negatives,
                                np.random.default_rng(seed), width)
    with files.output_stream(output, files.ONLY_EMPTY, compress=True) as out:
        write_libsvm(out, joined, labels)
    positive = int(labels.sum())
    return positive, labels.size - positive


def train_pairs(hyperparameters: Mapping[str, Any], contexts: str | Path, items: str | Path,
                interactions: str | Path, model_dir: str | Path, *, negatives: int = 4,
                test_path: str | Path | None = None, **options: Any
                ) -> tuple[FMModel, dict[str, Any]]:
    """``fmkit train --interactions``: an FM classifier trained on implicit feedback, its
    negatives drawn anew every epoch (:class:`fmkit.data.pairs.SampledPairs`, seeded by the
    ``seed`` hyperparameter); ``test_path``, ``options``: as :func:`fmkit.jobs.fm.train_files`
    takes them (checkpoints, progress, ...)."""
    from fmkit.jobs.fm import train_sources
    from fmkit.models.fm.hyperparameters import validate

    hp = validate(hyperparameters)
    checkpoints = options.get("checkpoints")
    artifact.check_destination(model_dir, checkpoints and checkpoints.directory)
    require_option(negatives >= 1, "--negatives", ">= 1 to train", negatives)
    if hp["predictor_type"] != "binary_classifier" or hp["model_type"] != "fm":
        raise HyperparameterError("--interactions trains an FM binary classifier "
                                  "(predictor_type=binary_classifier, model_type=fm)")
    context_rows, item_rows, chosen = _interactions(contexts, items, interactions, negatives,
                                                    hp["feature_dim"])
    source = SampledPairs(str(interactions), context_rows, item_rows, chosen, negatives,
                          hp["seed"], hp["feature_dim"], "binary", distributed.shard())
    scored = {} if test_path is None else {"test": FileSource(
        test_path, "auto", hp["feature_dim"], 0, labels="binary")}
    return train_sources(hp, source, model_dir, scored, **options)


def _interactions(contexts: str | Path, items: str | Path, interactions: str | Path,
                  negatives: int, feature_dim: int
                  ) -> tuple[SparseBatch, SparseBatch, list[np.ndarray]]:
    """The contexts' and items' rows (ids unique, no key shared) and, per context, the item
    positions ``interactions`` lists for it (at least one for some context)."""
    require_option(negatives >= 0, "--negatives", ">= 0", negatives)
    context_ids, context_rows = read_id_rows(contexts, feature_dim)
    item_ids, item_rows = read_id_rows(items, feature_dim)
    IdIndex(context_ids).check_unique(context_ids, str(contexts), "context")
    item_index = IdIndex(item_ids)
    item_index.check_unique(item_ids, str(items))
    shared = shared_key(context_rows, item_rows)
    if shared:
        key, context, item = shared
        context, item = (excerpt(json.dumps(ids[row]), quote=False)
                         for ids, row in ((context_ids, context), (item_ids, item)))
        raise DataError(str(items), None, f"context {context} and item {item} share the key "
                        f"{key}: contexts and items must have features of their own")
    listed = ListedItems(interactions, item_index, "interaction")
    chosen = listed.lists(context_ids)
    listed.finish()
    if not sum(taken.size for taken in chosen):
        raise DataError(str(interactions), None, f"names no item of {items} for a context of "
                        f"{contexts}: no pairs to draw")
    check_fits(f"--negatives {negatives}", [("the rows drawn", drawn_bytes(
        context_rows, item_rows, chosen, negatives))], "Draw fewer negatives per interaction.",
        held="the rows it draws")
    return context_rows, item_rows, chosen


REQUEST_FIELDS = ("id", "keys", "values", "fields", "exclude")  # of a /recommend instance


def recommend_request(model: FMModel, catalogue: Catalogue, body: bytes) -> bytes:
    """The server's ``POST /recommend``: ``{"instances": [{"id", "keys", "values"[, "fields"],
    "exclude": [item ids]}], "k": 10}`` in, ``{"recommendations": [{"id", "items",
    "scores"}]}`` out (an instance's id defaults to its position)."""
    from fmkit.data import codecs
    from fmkit.data.id_rows import rows_of

    document = codecs.strict_json(codecs.body_text(body))
    if not isinstance(document, dict) or not isinstance(document.get("instances"), list):
        raise codecs.RequestError('expected {"instances": [{"keys": [...], "values": [...]}], '
                                  '"k": K}')
    instances, k = document["instances"], document.get("k", 10)
    unknown = [("", name) for name in document if name not in ("instances", "k")]
    unknown += [(f"instance {number}: ", name)
                for number, instance in enumerate(instances, start=1)
                if isinstance(instance, dict) for name in instance if name not in REQUEST_FIELDS]
    if unknown:  # (a misplaced "exclude" would recommend what it should leave out)
        where, name = unknown[0]
        raise codecs.RequestError(f"{where}unknown field {excerpt(json.dumps(name), quote=False)}"
                                  f'; a request is {{"instances": [{{{", ".join(REQUEST_FIELDS)}'
                                  '}], "k"}')
    if type(k) is not int or k <= 0:
        raise codecs.RequestError(f'"k" must be a positive integer, got '
                                  f'{excerpt(json.dumps(k), quote=False)}')
    ids, batch = rows_of([(None, i) for i in instances], model.feature_dim, model.input_fields,
                         "request")
    exclude = []
    for number, instance in enumerate(instances, start=1):
        items = instance.get("exclude", []) if isinstance(instance, dict) else []
        if not isinstance(items, list):
            raise codecs.RequestError(f'instance {number}: "exclude" must be a list of item ids')
        exclude.append(catalogue.positions(items))
    found = top_k(model, catalogue, batch, k, exclude)
    return json.dumps({"recommendations": _answers(ids, catalogue, found)}).encode()
