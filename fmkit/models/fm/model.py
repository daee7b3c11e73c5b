"""A trained factorization machine: weights, hyperparameters and how its input is read.

:class:`FMModel` is what training produces, what a model directory stores and what ``evaluate``,
``predict`` (and the server) use. It scores batches with the compiled kernel.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fmkit import compile_cache
from fmkit.cpus import thread_count
from fmkit.data import codecs
from fmkit.data.batch import SparseBatch, unit_rows
from fmkit.errors import ArtifactError
from fmkit.kernels import ffm
from fmkit.kernels import fm as kernels
from fmkit.models import artifact
from fmkit.models.fm.hyperparameters import factor_width, table_hyperparameters, validate
from fmkit.models.fm.parameters import FMParameters, init_parameters, sigmoid
from fmkit.models.metrics import StreamingMetrics, prediction_fields, require_rows

MODEL_TYPE = "fm"
PARALLEL_ROWS = 2048  # below this, scoring on one thread beats starting the pool


def label_mode(predictor_type: str) -> str:
    """How sources check labels for a predictor type (see :mod:`fmkit.data.sources`)."""
    return "binary" if predictor_type == "binary_classifier" else "real"


@dataclass
class FMModel:
    """Hyperparameters (validated), weights, and the index base of its libsvm input."""

    hyperparameters: dict[str, Any]
    params: FMParameters
    index_base: int = 0
    classes: tuple = (0, 1)  # the Python API's labels (0/1, -1/+1, 'no'/'yes'): the CLI and
    # server answer SageMaker's predicted_label 0/1 whatever they are
    column_fields: np.ndarray | None = None  # an FFM fitted on a matrix: each column's field
    # (int32), which every row's nonzeros then take (see fields_of)

    @property
    def predictor_type(self) -> str:
        return self.hyperparameters["predictor_type"]

    @property
    def feature_dim(self) -> int:
        return self.params.feature_dim

    @property
    def label_mode(self) -> str:
        return label_mode(self.predictor_type)

    @property
    def num_fields(self) -> int:
        """An FFM's fields (0 for an FM)."""
        return self.hyperparameters["num_fields"] if self.field_aware else 0

    @property
    def field_aware(self) -> bool:
        return self.hyperparameters.get("model_type", "fm") == "ffm"

    @property
    def input_fields(self) -> int:
        """The fields a row must carry for this model: an FFM's ``num_fields``, or 0 for an FM
        and for an FFM that knows each column's field (fitted on a matrix): its rows may be
        libsvm, CSV, recordIO or requests without ``fields``."""
        return self.num_fields if self.column_fields is None else 0

    def fields_of(self, batch: SparseBatch) -> np.ndarray:
        """Each nonzero's field: its column's (``column_fields``), else the one it carries."""
        if self.column_fields is not None:
            return self.column_fields[batch.indices]
        return batch.field_ids()

    def shape_change(self, hp: dict[str, Any]) -> str | None:
        """The first of ``hp`` (validated hyperparameters) that would give the weights another
        shape than this model's, as ``"the model has name=ours, this run name=theirs"``; None
        when training may continue from these weights (``fmkit train --init-model``, the
        estimators' ``warm_start``)."""
        shapes = ["feature_dim", "num_factors", "predictor_type", "model_type"]
        if hp["model_type"] == "ffm":
            shapes.append("num_fields")
        for name in shapes:
            ours = self.hyperparameters.get(name, "fm" if name == "model_type" else None)
            if ours != hp[name]:
                return f"the model has {name}={ours}, this run {name}={hp[name]}"
        return None

    def to(self, device: str) -> FMModel:
        """Score on a PyTorch device (``cuda``) instead of the compiled CPU kernels."""
        if device != "cpu" and self.field_aware:
            raise ArtifactError("a field-aware FM scores on the CPU only (--device cpu)")
        if device != "cpu":
            from fmkit.models.fm.device import DeviceScorer, resolve_device

            self._scorer = DeviceScorer(self.params, resolve_device(device))
        return self

    def logits(self, batch: SparseBatch) -> np.ndarray:
        """y_hat of every row (float64); with ``instance_norm``, of the rows scaled to unit
        length, as the model trained on them."""
        if self.hyperparameters.get("instance_norm"):
            batch = unit_rows(batch)
        scorer = getattr(self, "_scorer", None)
        if scorer is not None:
            return scorer.logits(batch)
        p = self.params
        if self.field_aware:
            return ffm.predict_logits(batch.indptr, batch.indices, self.fields_of(batch),
                                      batch.values,
                                      p.w0, p.table, self.hyperparameters["num_factors"],
                                      self.num_fields)
        out = np.empty(batch.n_rows, dtype=np.float64)
        if batch.n_rows >= PARALLEL_ROWS:
            kernels.predict_logits(batch.indptr, batch.indices, batch.values, p.w0, p.table,
                                   p.num_factors, out, thread_count())
        elif batch.n_rows:
            kernels.predict_logits_serial(batch.indptr, batch.indices, batch.values, p.w0,
                                          p.table, p.num_factors, out)
        return out

    def scores(self, logits: np.ndarray) -> np.ndarray:
        """SageMaker's ``score``: sigmoid(y_hat) for classifiers, y_hat for regressors."""
        return sigmoid(logits) if self.predictor_type == "binary_classifier" else logits

    def predictions(self, batch: SparseBatch) -> dict[str, np.ndarray]:
        """``score`` (and ``predicted_label`` for classifiers) of every row."""
        return prediction_fields(self.predictor_type, self.logits(batch))

    def predictions_of(self, blocks: Iterable[SparseBatch]) -> Iterator[dict[str, np.ndarray]]:
        """Each block's :meth:`predictions`, in order (the kernel uses fmkit's threads)."""
        return map(self.predictions, blocks)

    @property
    def output_columns(self) -> tuple[str, ...]:
        """The columns of ``fmkit predict``'s tables: SageMaker's response fields."""
        return ("score", "predicted_label")[:2 if self.predictor_type == "binary_classifier"
                                            else 1]

    def outputs_of(self, blocks: Iterable[SparseBatch]) -> Iterator[dict[str, np.ndarray]]:
        """:meth:`predictions_of`: an FM's named outputs are SageMaker's response fields."""
        return self.predictions_of(blocks)

    def read(self, path: str | Path, fmt: str = "auto", *, labelled: bool = True
             ) -> Iterator[SparseBatch]:
        """Blocks of a channel (``fmt``: a training format, or ``json``/``jsonlines`` request
        bodies); ``labelled`` checks the labels for this predictor type, else text rows may
        leave them out (a file to score)."""
        from fmkit.data.sources import FileSource

        if fmt == "auto" and not labelled:  # (labelled: the reader refuses request bodies)
            fmt = codecs.request_format(path) or fmt
        if fmt not in ("json", "jsonlines"):
            labels = self.label_mode if labelled else None
            yield from FileSource(path, fmt, self.feature_dim, self.index_base,
                                  labels=labels, num_fields=self.input_fields,
                                  scoring=not labelled).blocks()
            return

        def decode(body: bytes, kind: str, source: str, first_line: int) -> SparseBatch:
            if kind == "json":
                return codecs.parse_json(body, self.feature_dim, source, self.input_fields)
            return codecs.parse_jsonlines(body, self.feature_dim, source, first_line,
                                          self.input_fields)

        yield from codecs.read_request_files(path, fmt, decode)

    #: what a request may carry, as SageMaker's FM reads it (no CSV)
    request_types = codecs.CONTENT_TYPES

    def request_decoder(self):
        """Decodes request bodies into batches for this model (see :mod:`fmkit.data.codecs`)."""
        return codecs.RequestDecoder(self.feature_dim, self.input_fields)

    def warm_up_requests(self) -> list[tuple[bytes, str]]:
        """Request bodies a new server scores before it answers, so that no user's request
        waits while a process loads its compiled kernels (0.4 s for the first JSON request):
        one JSON row (the serial kernel) and a recordIO block of ``PARALLEL_ROWS`` rows (its
        reader and the parallel kernel); for an FFM one JSON row with its fields."""
        import scipy.sparse as sp

        from fmkit.data import recordio

        features = {"keys": [0], "values": [1.0], "shape": [self.feature_dim],
                    **({"fields": [0]} if self.input_fields else {})}
        one_row = (json.dumps({"instances": [{"data": {"features": features}}]}).encode(),
                   codecs.JSON)
        if self.input_fields:  # recordIO has no fields
            return [one_row]
        body = io.BytesIO()
        recordio.write_rows(body, sp.csr_matrix(([1.0] * PARALLEL_ROWS,
                                                 [0] * PARALLEL_ROWS, range(PARALLEL_ROWS + 1)),
                                                shape=(PARALLEL_ROWS, self.feature_dim)))
        return [one_row, (body.getvalue(), codecs.RECORDIO)]

    def labelled_logits(self, blocks: Iterator[SparseBatch]
                        ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The labels and y_hat of each labelled block."""
        for batch in blocks:
            yield batch.labels, self.logits(batch)

    def evaluate(self, blocks: Iterator[SparseBatch]) -> dict[str, float]:
        """SageMaker's test metrics (plus AUC and ``rows``) over labelled blocks, a block at a
        time (memory bounded whatever the rows: :class:`~fmkit.models.metrics.StreamingMetrics`)."""
        metrics = StreamingMetrics(self.predictor_type)
        for labels, logits in self.labelled_logits(blocks):
            metrics.add(labels, logits)
        return metrics.result()

    # -- the model directory -------------------------------------------------------------
    def save(self, path: str | Path, metrics: dict[str, Any] | None = None) -> Path:
        meta = {
            "model_type": MODEL_TYPE,
            "predictor_type": self.predictor_type,
            "feature_dim": self.feature_dim,
            "num_factors": self.hyperparameters["num_factors"],
            "index_base": self.index_base,
            "classes": list(self.classes),
            "hyperparameters": self.hyperparameters,
        }
        weights = {"w0": self.params.w0, "w": self.params.w, "V": self.params.V}
        if self.column_fields is not None:
            weights["column_fields"] = self.column_fields
        return artifact.save_directory(path, meta, weights, metrics or {})

    @classmethod
    def load(cls, path: str | Path) -> FMModel:
        meta, weights, _ = artifact.load_directory(path)
        if meta.get("model_type") != MODEL_TYPE:
            raise ArtifactError(
                f"{path}: model_type {meta.get('model_type')!r} is not {MODEL_TYPE!r}")
        try:
            hp = validate(meta["hyperparameters"], saved=True)
            d, k = int(meta["feature_dim"]), int(meta["num_factors"])
            index_base = int(meta.get("index_base", 0))
            classes = tuple(artifact.checked_classes(meta.get("classes", [0, 1]), 2))
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(f"{path}: model.json is incomplete or invalid: {e}") from None
        if (hp["feature_dim"], hp["num_factors"]) != (d, k):
            raise ArtifactError(f"{path}: model.json disagrees with its own hyperparameters")
        params = FMParameters(
            w0=artifact.check_shape(path, weights, "w0", (1,)),
            w=artifact.check_shape(path, weights, "w", (d,)),
            V=artifact.check_shape(path, weights, "V", (d, factor_width(hp))),
        )
        column_fields = weights.get("column_fields")
        if column_fields is not None and (
                column_fields.shape != (d,) or column_fields.dtype != np.int32
                or (d and not 0 <= column_fields.min() <= column_fields.max()
                    < hp["num_fields"])):
            raise ArtifactError(f"{path}: array 'column_fields': expected {d} int32 fields "
                                f"below num_fields={hp['num_fields']}")
        return cls(hp, params, index_base, classes, column_fields)


def two_rows(field_aware: bool) -> SparseBatch:
    """Two labelled rows over features 0..3 (in field 0), typed as the readers type them:
    what compiling a kernel ahead of the data runs on."""
    return SparseBatch(indptr=np.array([0, 2, 3], np.int64), indices=np.array([1, 3, 0], np.int32),
                       values=np.array([0.5, 1.0, 1.0], np.float32),
                       labels=np.array([1.0, 0.0], np.float32),
                       fields=np.zeros(3, np.int32) if field_aware else None)


def scorer_cached(field_aware: bool) -> bool:
    """Whether numba's cache holds the FM's (or FFM's) scoring kernel."""
    return compile_cache.cached(ffm.predict_rows if field_aware else kernels.predict_logits_serial)


def compile_scorer(field_aware: bool) -> None:
    """Compile (or load from numba's cache) the FM's (or FFM's) scoring kernel, on two rows of
    a small model (see :func:`fmkit.compile_cache.compile_ahead`)."""
    hp = validate({"feature_dim": 4, "num_factors": 2, "predictor_type": "binary_classifier",
                   "model_type": "ffm" if field_aware else "fm",
                   "num_fields": 2 if field_aware else 0})
    FMModel(hp, init_parameters(table_hyperparameters(hp))).logits(two_rows(field_aware))


def validation_metrics(hp: dict[str, Any], params: FMParameters, source: Any
                       ) -> dict[str, float]:
    """Every metric of a labelled source (``name``, ``blocks()``) for the weights ``params``:
    what the FM learners report for a validation channel after each epoch."""
    return require_rows(FMModel(hp, params).evaluate(source.blocks()), source.name)
