"""A trained DeepFM: configuration, features and network, with FMModel's serving interface.

:class:`DeepFMModel` answers the same calls as :class:`fmkit.models.fm.model.FMModel` —
``predictions``,
``evaluate``, ``read``, ``request_decoder``, ``save``/``load`` — so ``fmkit evaluate``,
``fmkit predict`` and ``fmkit serve`` treat both alike. Its model directory stores the whole
configuration in ``model.json`` (features, groups, network, data layout) and the network's
weights in ``weights.npz``: serving needs nothing but the directory, and loading executes no
code (numpy arrays without pickle; init and activation names are parsed, not evaluated).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from fmkit.models.deepfm import torch_required  # noqa: F401  (before PyTorch, an extra)

# isort: split
import torch

from fmkit.cpus import computes_bfloat16, leaving_cores, multiplies_int8, ordered_map, thread_count
from fmkit.data import codecs, columns
from fmkit.data.columns import ColumnBatch
from fmkit.errors import ArtifactError, DataError, FMKitError, excerpt
from fmkit.logs import log_once
from fmkit.memory import check_fits
from fmkit.models import artifact
from fmkit.models.deepfm import config as configs
from fmkit.models.deepfm import eval_results, prototext, quantized
from fmkit.models.deepfm.batches import slices
from fmkit.models.deepfm.features import (
    Encoded,
    FeatureSet,
    class_indices,
    class_values,
    named_classes,
)
from fmkit.models.deepfm.instances import encode_instances
from fmkit.models.deepfm.network import DeepFMNet
from fmkit.models.deepfm.small_batches import SMALL_ROWS, NumpyForward
from fmkit.models.metrics import (
    StreamingMetrics,
    grouped_auc,
    prediction_fields,
    sigmoid,
    softmax,
)

MODEL_TYPE = "deepfm"
SCORING_ROWS = 4096
INT8_ROWS = 1024  # the numpy forward's slices when it scores every batch (int8): in cache


def predictor_type(config: configs.EasyRecConfig) -> str:
    """``binary_classifier`` for binary cross entropy (or focal loss), ``multiclass_classifier``
    for softmax cross entropy, ``regressor`` for l2_loss."""
    loss = config.model_config.losses[0]
    if loss.softmax_cross_entropy is not None:
        return "multiclass_classifier"
    return "binary_classifier" if loss.binary else "regressor"


LABEL_MODES = {"binary_classifier": "binary", "multiclass_classifier": "multiclass",
               "regressor": "real"}


@dataclass
class DeepFMModel:
    config: configs.EasyRecConfig
    features: FeatureSet
    net: DeepFMNet
    # what a scikit-learn estimator keeps beside the model (its classes, its input columns)
    estimator: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, config: configs.EasyRecConfig, initialise: bool = True,
               saved: bool = False) -> DeepFMModel:
        """A new model with initial weights (seeded by ``train_config.seed``), or with its
        embedding tables left unset (``initialise=False``: weights about to be loaded;
        ``saved``: a trained model's configuration, see :meth:`FeatureSet.from_config`)."""
        config = configs.read_vocabulary_files(config)
        features = FeatureSet.from_config(config, saved)
        if not saved:  # (a loaded model's tables are mapped from its file, and it trains only
            check_memory(config, features)  # as a new model, checked then: --init-model)
        torch.manual_seed(config.train_config.seed)
        return cls(config, features, DeepFMNet(features, config.model_config.deepfm,
                                               initialise, config.model_config.num_class))

    def to(self, device: str) -> DeepFMModel:
        """Score on a PyTorch device (``cuda``)."""
        if device != "cpu":
            from fmkit.models.fm.device import resolve_device

            self.net.to(resolve_device(device))
            self.__dict__.pop("numpy_forward", None)
            self.__dict__.pop("scores_in_bfloat16", None)
            self.__dict__.pop("scores_in_int8", None)
        return self

    @cached_property
    def numpy_forward(self) -> NumpyForward | None:
        """The forward pass for batches of a few rows (views of the weights, which loading
        and training update in place), or None where it has no twin."""
        return NumpyForward.of(self.net, bfloat16=self.scores_in_bfloat16,
                               int8=self.scores_in_int8)

    @cached_property
    def scores_in_int8(self) -> bool:
        """A model exported with ``export_config.dense_quantization: INT8`` scores its MLPs'
        linear layers with int8 products (:mod:`fmkit.models.deepfm.quantized`) on the CPU,
        through the numpy forward for every batch; a model it cannot score so (another
        device, several classes, a CPU without int8 instructions, where int8 products are
        slower than float32's, or whose int8 products are not exact) scores in float32,
        which the log says once."""
        if self.config.export_config.dense_quantization != "INT8":
            return False
        if (self.net.output.weight.device.type != "cpu"
                or NumpyForward.of(self.net, int8=True) is None):
            reason = "int8 scoring covers CPU models with one output"
        elif not multiplies_int8():
            reason = ("this CPU has no int8 instructions (VNNI), so PyTorch's int8 products "
                      "are slower than float32's")
        elif not quantized.weight_levels():
            reason = "this CPU's int8 products are not exact"
        else:
            return True
        log_once("this model (export_config.dense_quantization: INT8) scores in float32 here: "
                 + reason)
        return False

    @cached_property
    def scores_in_bfloat16(self) -> bool:
        """A model trained in bfloat16 (``train_config.mixed_precision: BF16``) or exported
        so (``export_config.mixed_precision: BF16``) scores in bfloat16 where its device
        computes bfloat16 natively; elsewhere in float32 (emulated bfloat16 is several times
        slower: docs/performance.md), which the log says once. ``dense_quantization: INT8``
        takes its place: the layers between the int8 products score in float32."""
        asked = [f"{part}.mixed_precision: BF16" for part in ("train_config", "export_config")
                 if getattr(self.config, part).mixed_precision == "BF16"]
        if not asked or self.config.export_config.dense_quantization:
            return False
        device = self.net.output.weight.device.type
        if computes_bfloat16(device):
            return True
        log_once(f"this model ({asked[0]}) scores in float32 here: the {device} has no "
                  "bfloat16 instructions")
        return False

    @property
    def predictor_type(self) -> str:
        return predictor_type(self.config)

    @property
    def label_mode(self) -> str:
        return LABEL_MODES[self.predictor_type]

    # -- input -----------------------------------------------------------------------------
    def read_as(self, overrides: Iterable[str]) -> None:
        """Read files with ``data_config`` changed by ``--set data_config.PATH=VALUE``
        overrides: files to score or measure laid out otherwise than the training files
        (another delimiter, no header, other columns or a label of another name). Other
        sections are the trained model's and refused."""
        from fmkit.models.deepfm import config_files

        overrides = list(overrides)
        for assignment in overrides:
            path = assignment.partition("=")[0].strip()
            if not path.startswith("data_config."):
                raise configs.ConfigError(f"--set {excerpt(path, quote=False)}: only "
                                          "data_config fields change how files are read; the "
                                          "rest is the trained model's")
        document = config_files.apply_overrides(configs.to_document(self.config), overrides)
        data = configs.parse(document, saved=True).data_config
        self.features.read_columns(data)
        self.config = dataclasses.replace(self.config, data_config=data)

    @property
    def classes(self) -> list | None:
        """The class names an estimator was fitted on, where they are not the network's label
        indices: files to measure hold them, and ``predicted_label`` is one of them."""
        return named_classes(self.estimator.get("classes"), max(self.features.num_class, 2))

    def read(self, path: str | Path, fmt: str = "auto", *, labelled: bool = True,
             shard: tuple[int, int] = (0, 1)) -> Iterator[ColumnBatch]:
        """:meth:`read_layout`'s batches; read for their labels (``labelled``), an estimator's
        class names become the network's label indices."""
        batches = self.read_layout(path, fmt, labelled=labelled, shard=shard)
        classes = self.classes if labelled else None
        if classes is None:
            return batches
        return (class_indices(batch, self.features.label, classes) for batch in batches)

    def read_layout(self, path: str | Path, fmt: str = "auto", *, labelled: bool = True,
                    shard: tuple[int, int] = (0, 1)) -> Iterator[ColumnBatch]:
        """Column batches of a channel in the configured layout (``fmt``: ``auto``, ``csv``,
        ``parquet``, or ``json``/``jsonlines`` request bodies). ``auto`` reads a Parquet file as
        Parquet whatever the configured dataset type, and also reads delimited
        files whose delimiter differs from the configured one, or that have a header line
        naming the columns the model reads (``labelled``: the label too; see
        :func:`fmkit.data.columns.sniff`). ``shard``: this process's share (see
        :func:`fmkit.data.sources.shard_files`)."""
        data = self.config.data_config
        if fmt not in ("auto", "csv", "parquet", "json", "jsonlines"):
            raise DataError(str(path), None, f"a DeepFM reads columns (CSV/TSV, Parquet, JSON); "
                            f"--format {fmt} is an FM's input")
        if fmt == "auto":
            fmt = codecs.request_format(path) or fmt
        if fmt in ("json", "jsonlines"):
            yield from _request_files(path, fmt, self.check_request)
            return
        if fmt == "parquet" or (fmt == "auto" and (data.dataset_type == "ParquetDataset"
                                                   or columns.is_parquet(path))):
            yield from columns.read_parquet(path, shard=shard)
            return
        names = [f.input_name for f in data.input_fields] or None
        guessed = names is None and not data.with_header
        if guessed:
            names = self.default_layout()
        needed = [*(data.label_fields if labelled else []), *self.features.input_columns()]
        optional = [*data.label_fields, *data.sample_weight_fields]
        for batch in columns.read_delimited(path, names, data.delimiter, data.with_header,
                                            detect=fmt == "auto", shard=shard, needed=needed,
                                            optional=optional, labelled=labelled):
            if guessed and batch.first_line == 1:  # (no header line: the layout is used)
                _log_layout_once(tuple(names))
            yield batch

    def default_layout(self) -> list[str]:
        """The columns of a delimited file without header when ``input_fields`` is not set (as
        in TorchEasyRec's own Criteo example): the label, the sample weight if any, then each
        feature's inputs in configuration order."""
        data = self.config.data_config
        return list(dict.fromkeys([*data.label_fields, *data.sample_weight_fields,
                                   *self.features.input_columns()]))

    def encode(self, batch: ColumnBatch, labelled: bool = False):
        return self.features.encode(batch, labelled, self.label_mode)

    #: what a request may carry: raw feature values (recordIO carries no feature names)
    request_types = (codecs.JSON, codecs.JSONLINES, codecs.CSV)

    def request_decoder(self) -> Callable[[bytes, str], Encoded | ColumnBatch]:
        """Decodes ``application/json`` and ``application/jsonlines`` bodies of raw feature
        values, straight into model inputs where it can (see
        :mod:`fmkit.models.deepfm.instances`), and ``text/csv`` bodies as a file to score is
        read (:meth:`csv_request`)."""
        fields = frozenset(self.request_columns())

        def decode(body: bytes, content_type: str) -> Encoded | ColumnBatch:
            kind = codecs.request_type(content_type, self.request_types)
            if kind == codecs.CSV:
                return self.csv_request(body)
            instances = (codecs.json_instances(body) if kind == codecs.JSON
                         else codecs.jsonlines_instances(body)[0])
            encoded = encode_instances(self.features, instances, fields)
            if encoded is not None:
                return encoded
            try:
                return self.check_request(columns.from_instances(instances))
            except FMKitError as e:
                raise codecs.RequestError(str(e)) from None

        return decode

    def csv_request(self, body: bytes) -> ColumnBatch:
        """A ``text/csv`` body (SageMaker Batch Transform's lines of a CSV file) as columns:
        a first line naming every column the model reads is a header; else the columns are
        the configured ``input_fields`` (or :meth:`default_layout`), less the label and weight
        when the lines have that many fewer fields. The delimiter is the configured one, or
        the one the first line uses. Errors name the body's line."""
        data = self.config.data_config
        names = [f.input_name for f in data.input_fields] or self.default_layout()
        return columns.read_delimited_text(
            body, "request", names, data.delimiter, needed=self.features.input_columns(),
            optional=[*data.label_fields, *data.sample_weight_fields])

    def warm_up_requests(self) -> list[tuple[bytes, str]]:
        """Request bodies a new server scores before it answers, so that no user's request
        waits while a process loads its compiled hashing and initialises PyTorch (0.75 s for
        the first one-row request): a value in every feature, 1 row (the numpy forward) and
        ``SMALL_ROWS + 1`` rows (PyTorch's)."""
        instance = {column: 0 if f.numeric and f.kind != "lookup_feature" else "0"
                    for f in self.features.used for column in f.inputs}
        return [(json.dumps({"instances": [instance] * rows}).encode(), codecs.JSON)
                for rows in (1, SMALL_ROWS + 1)]

    def request_columns(self) -> list[str]:
        """The raw fields a request may name: the configured input fields, else the
        features' columns and the label."""
        fields = [f.input_name for f in self.config.data_config.input_fields]
        return fields or list(dict.fromkeys(
            [*self.features.input_columns(), self.features.label]))

    def input_types(self) -> dict[str, str]:
        """The ``input_type`` each configured input field declares (TorchEasyRec's
        ``FieldType`` names), for the fields that declare one."""
        return {f.input_name: f.input_type for f in self.config.data_config.input_fields
                if f.input_type}

    def check_request(self, batch: ColumnBatch) -> ColumnBatch:
        """``batch`` if every field it names is one the model knows: an unknown or mis-cased
        name would otherwise be scored as a missing value, silently."""
        known = self.request_columns()
        unknown = [name for name in batch.columns if name not in known]
        if unknown:
            # the label (and weight) may be sent along, but they are not features to name
            others = {self.features.label, *self.config.data_config.sample_weight_fields}
            names = [name for name in known if name not in others]
            shown = ", ".join(names[:40]) + (", ..." if len(names) > 40 else "")
            problem = (f"unknown feature {', '.join(excerpt(n) for n in unknown[:5])}: this "
                       f"model's features are {shown}")
            given = (np.flatnonzero(batch.columns[unknown[0]].is_valid().to_numpy(
                zero_copy_only=False)) if batch.absent_is_missing else ())
            if len(given):  # (JSON instances: the first that names it, with a value)
                raise batch.error(int(given[0]), problem)
            raise DataError(batch.source, None, problem)
        return batch

    # -- scoring ---------------------------------------------------------------------------
    @torch.no_grad()
    def logits(self, batch: ColumnBatch | Encoded) -> np.ndarray:
        """y of every row (float64); a bad value raises a DataError naming its row."""
        return self._forward(batch if isinstance(batch, Encoded) else self.encode(batch))

    def _forward(self, encoded) -> np.ndarray:
        """y of encoded rows, in slices of ``SCORING_ROWS`` (a block of 17,000 Criteo rows at
        once spills the MLP's activations out of cache: 25% slower); in bfloat16 for a
        ``mixed_precision: BF16`` model (:attr:`scores_in_bfloat16`), with int8 products for
        a ``dense_quantization: INT8`` one (:attr:`scores_in_int8`)."""
        if self.net.training:  # (eval() walks every module: a tenth of a one-row request)
            self.net.eval()
        if encoded.n_rows == 0:
            return np.zeros(0)
        if encoded.n_rows <= SMALL_ROWS and self.numpy_forward is not None:
            return self.numpy_forward(encoded).astype(np.float64)
        if self.scores_in_int8:  # every batch through the numpy forward (its int8 products)
            return np.concatenate([self.numpy_forward(part)
                                   for part in slices(encoded, INT8_ROWS)]).astype(np.float64)
        device = self.net.output.weight.device
        with torch.autocast(device.type, torch.bfloat16, enabled=self.scores_in_bfloat16):
            parts = [self.net(part) for part in slices(encoded, SCORING_ROWS)]
        return (parts[0] if len(parts) == 1 else torch.cat(parts)).double().cpu().numpy()

    def outputs(self, batch: ColumnBatch | Encoded) -> dict[str, np.ndarray]:
        """TorchEasyRec's prediction dict: ``logits`` and ``probs`` for binary cross entropy
        (one value per row) and softmax cross entropy (one per class; with two classes also
        ``probs1``), ``y`` for l2_loss."""
        y = self.logits(batch)
        if self.predictor_type == "binary_classifier":
            return {"logits": y, "probs": sigmoid(y)}  # (no overflow warning for y << 0)
        if self.predictor_type == "multiclass_classifier":
            probs = softmax(y)
            return {"logits": y, "probs": probs, **({"probs1": probs[:, 1]}
                                                    if probs.shape[1] == 2 else {})}
        return {"y": y}

    @property
    def output_columns(self) -> tuple[str, ...]:
        """The keys of :meth:`outputs`: the columns of ``fmkit predict``'s tables."""
        if self.predictor_type == "binary_classifier":
            return ("logits", "probs")
        if self.predictor_type == "multiclass_classifier":
            return ("logits", "probs", *(("probs1",) if self.features.num_class == 2 else ()))
        return ("y",)

    def outputs_of(self, blocks: Iterable[ColumnBatch | Encoded]
                   ) -> Iterator[dict[str, np.ndarray]]:
        """Each block's :meth:`outputs`, in order, several blocks at once (:meth:`_at_once`)."""
        return self._at_once(self.outputs, blocks)

    def predictions(self, batch: ColumnBatch | Encoded) -> dict[str, np.ndarray]:
        """``score`` (and ``predicted_label`` for classifiers: an estimator's class names, as
        its ``predict`` gives them) of every row."""
        fields = prediction_fields(self.predictor_type, self.logits(batch))
        classes = self.classes if "predicted_label" in fields else None
        if classes is not None:
            fields["predicted_label"] = class_values(classes)[
                fields["predicted_label"].astype(np.int64)]
        return fields

    def predictions_of(self, blocks: Iterable[ColumnBatch | Encoded]
                       ) -> Iterator[dict[str, np.ndarray]]:
        """Each block's :meth:`predictions`, in order, several blocks at once
        (:meth:`_at_once`)."""
        return self._at_once(self.predictions, blocks)

    def _at_once(self, function: Callable[[Any], Any], blocks: Iterable[Any]) -> Iterator[Any]:
        """``function(block)`` of each block, in order. On the CPU, as many blocks at once as
        PyTorch has threads, each encoded and scored on one thread with one PyTorch thread: a
        block's serial parts (encoding, look-ups) then overlap another's matrix products,
        where PyTorch's threads on one block left a core idle during them. Fewer than two
        blocks a thread (a small file) are scored one by one on PyTorch's threads instead: the
        largest block alone on one thread would take longer. PyTorch's thread count is 1 until
        the iterator is exhausted or closed. Measurements: docs/performance.md, session 34."""
        threads = torch.get_num_threads()
        blocks = iter(blocks)
        first = list(itertools.islice(blocks, 2 * threads))
        if (threads <= 1 or len(first) < 2 * threads
                or self.net.output.weight.device.type != "cpu"):
            yield from map(function, itertools.chain(first, blocks))
            return

        def one(block: Any) -> Any:
            with leaving_cores(thread_count()):  # its encoding on this thread too
                return function(block)

        torch.set_num_threads(1)
        try:
            yield from ordered_map(one, itertools.chain(first, blocks), threads)
        finally:
            torch.set_num_threads(threads)

    def evaluate(self, batches: Iterator[ColumnBatch], max_rows: int | None = None
                 ) -> dict[str, float]:
        """The FM metrics (RMSE, or log loss/accuracy/F1/AUC), weighted by the sample weight
        column if one is configured, plus each configured ``grouped_auc``,
        ``normalized_entropy`` and (a regressor's) ``mean_absolute_error``, over labelled
        batches (their first ``max_rows`` rows if given), a batch at a time: memory bounded
        whatever the rows (:class:`~fmkit.models.metrics.StreamingMetrics`), except a
        ``grouped_auc``'s, which keeps each row's label, score and group."""
        keys = self.grouping_keys()
        metrics = StreamingMetrics(self.predictor_type)
        grouped: dict[str, tuple[list, list, list]] = {key: ([], [], []) for key in keys}
        for encoded, logits in self._scored(batches, max_rows):
            metrics.add(encoded.labels, logits, encoded.weights)
            for key in keys:
                ids, offsets = encoded.sparse[key]
                first = np.full(encoded.n_rows, -1, np.int64)  # rows without an id: group -1
                has = offsets[1:] > offsets[:-1]
                first[has] = ids[offsets[:-1][has]]
                for held, part in zip(grouped[key], (encoded.labels,
                                                     self._positive_scores(logits), first)):
                    held.append(part)
        result = metrics.result()
        if not result.get("rows"):
            return result
        configured = self.config.model_config.metrics
        if any(m.normalized_entropy is not None for m in configured):
            result["normalized_entropy"] = metrics.normalized_entropy()
        if self.predictor_type == "regressor" and any(m.mean_absolute_error is not None
                                                      for m in configured):
            result["mean_absolute_error"] = metrics.mean_absolute_error()
        for key, (labels, scores, groups) in grouped.items():
            result[f"grouped_auc_{key}"] = grouped_auc(
                np.concatenate(labels), np.concatenate(scores), np.concatenate(groups))
        return result

    def _positive_scores(self, logits: np.ndarray) -> np.ndarray:
        if self.predictor_type == "multiclass_classifier":
            return softmax(logits)[:, 1]  # (grouped AUC needs two classes)
        return logits

    def grouping_keys(self) -> list[str]:
        """The features ``grouped_auc`` metrics group by (a sparse feature each: the group of
        a row is its first id)."""
        keys = [m.grouped_auc.grouping_key for m in self.config.model_config.metrics
                if m.grouped_auc is not None]
        for key in keys:
            feature = self.features.features.get(key)
            if feature is None or not feature.sparse or feature not in self.features.used:
                raise configs.ConfigError(f"model_config.metrics.grouped_auc.grouping_key: "
                                          f"{key!r} is not a sparse feature of a group")
        if keys and self.predictor_type == "regressor":
            raise configs.ConfigError("model_config.metrics.grouped_auc: needs a classifier")
        if keys and self.features.num_class > 2:
            raise configs.ConfigError("model_config.metrics.grouped_auc: needs num_class <= 2")
        return keys

    def labelled_logits(self, batches: Iterator[ColumnBatch], max_rows: int | None = None
                        ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The labels and y_hat of each labelled batch (of the first ``max_rows`` rows)."""
        for encoded, logits in self._scored(batches, max_rows):
            yield encoded.labels, logits

    def _scored(self, batches: Iterator[ColumnBatch], max_rows: int | None
                ) -> Iterator[tuple[Encoded, np.ndarray]]:
        """Each labelled batch (of the first ``max_rows`` rows) encoded, with its y_hat."""
        self.net.eval()

        def limited() -> Iterator[ColumnBatch]:
            seen = 0
            for batch in batches:
                if max_rows is not None:
                    if seen >= max_rows:
                        return
                    batch = columns.head(batch, max_rows - seen)
                seen += batch.n_rows
                yield batch

        @torch.no_grad()  # (per thread)
        def score(batch: ColumnBatch) -> tuple[Encoded, np.ndarray]:
            encoded = self.encode(batch, labelled=True)
            return encoded, self._forward(encoded)

        yield from self._at_once(score, limited())

    # -- the model directory ---------------------------------------------------------------
    def save(self, path: str | Path, metrics: dict[str, Any] | None = None) -> Path:
        meta = {"model_type": MODEL_TYPE, "predictor_type": self.predictor_type,
                "config": configs.to_document(self.config)}
        if self.estimator:
            meta["estimator"] = self.estimator
        weights = {name: t.detach().cpu().numpy() for name, t in self.net.state_dict().items()}
        # (written from any device; loading puts the model on the CPU)
        metrics = metrics or {}
        # TorchEasyRec's: the configuration as trained (tzrec.train_eval writes it; its other
        # commands take it as --pipeline_config_path) and the evaluations made while training
        texts = {artifact.PIPELINE_CONFIG: prototext.format_text(self.config)}
        evaluations = eval_results.train_eval_result(self.config, metrics)
        if evaluations:
            texts[artifact.TRAIN_EVAL_RESULT] = evaluations
        return artifact.save_directory(path, meta, weights, metrics, texts)

    @classmethod
    def load(cls, path: str | Path) -> DeepFMModel:
        meta, weights, _ = artifact.load_directory(path, mapped=True)
        if meta.get("model_type") != MODEL_TYPE:
            raise ArtifactError(f"{path}: model_type {meta.get('model_type')!r} is not "
                                f"{MODEL_TYPE!r}")
        try:
            config = configs.parse(meta["config"], saved=True)
        except (KeyError, configs.ConfigError) as e:
            raise ArtifactError(f"{path}: model.json has no valid DeepFM configuration: {e}"
                                ) from None
        model = cls.create(config, initialise=False, saved=True)
        expected = model.net.state_dict()
        if set(weights) != set(expected):
            missing = sorted(set(expected) - set(weights)) or sorted(set(weights) - set(expected))
            raise ArtifactError(f"{path}: weights do not match the configuration "
                                f"(e.g. {missing[0]!r})")
        for name, tensor in expected.items():
            if tuple(weights[name].shape) != tuple(tensor.shape):
                raise ArtifactError(f"{path}: array {name!r} has shape "
                                    f"{tuple(weights[name].shape)}, expected "
                                    f"{tuple(tensor.shape)} from the configuration")
            if not name.startswith(("tables.", "wide_tables.")):  # (the embedding tables,
                artifact.check_finite(path, name, weights[name])  # most of it, stay unread)
        # assign: the parameters become the arrays mapped from the file, instead of copies
        model.net.load_state_dict({name: torch.from_numpy(np.asarray(array))
                                   for name, array in weights.items()}, assign=True)
        model.net.eval()
        if isinstance(meta.get("estimator"), dict):
            model.estimator = meta["estimator"]
            try:
                model.classes  # noqa: B018 (checked as the file is read)
            except ValueError as e:
                raise ArtifactError(f"{path}: model.json: {e}") from None
        return model


def _log_layout_once(names: tuple[str, ...]) -> None:
    shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
    log_once(f"data_config.input_fields is not set and the files have no header: reading "
              f"their {len(names)} columns as the label then the features' inputs ({shown}); "
              f"set input_fields if they differ")


# per embedding weight: the optimizer's state beside it (row-wise AdaGrad: one per row)
_STATE_PER_WEIGHT = {"sgd_optimizer": 0, "adagrad_optimizer": 1, "rowwise_adagrad_optimizer": 0,
                     "adam_optimizer": 2}


def check_memory(config: configs.EasyRecConfig, features: FeatureSet) -> None:
    """Refuse a network that cannot fit in memory (TorchEasyRec's own Criteo example asks for
    204 million embedding rows; a mistyped hidden_units for terabytes), naming the largest
    part, before any is allocated."""
    sparse = config.train_config.sparse_optimizer
    kind = next((name for name in _STATE_PER_WEIGHT if getattr(sparse, name) is not None),
                "adam_optimizer")
    factor = 4 * (1 + _STATE_PER_WEIGHT[kind])
    wide = set(features.groups["wide"])
    tables = []
    for name, feature in features.tables.items():
        columns = feature.embedding_dim
        if any(f.embedding_name == name and f.name in wide for f in features.features.values()):
            columns += features.wide_embedding_dim
        tables.append((f"embedding {name!r} ({feature.num_embeddings} rows x {columns})",
                       feature.num_embeddings * columns * factor, feature))
    dense = _dense_weights(config, features)
    # the MLPs: weight, gradient and the dense optimizer's two moments (Adam's) per weight;
    # one copy of every weight besides: the best epoch's (early stopping), or the arrays the
    # model is written from
    parts = [part[:2] for part in tables] + [
        (f"the dense layers ({dense} weights)", dense * 16),
        ("a copy of the weights", (sum(size for _, size, _ in tables) // factor + dense) * 4)]
    largest = max(tables, key=lambda part: part[1], default=None)
    if largest is None or dense * 16 >= largest[1]:
        advice = ("Lower model_config.deepfm's hidden_units (deep and final), the largest "
                  "part")
    else:
        feature = largest[2]
        index, entry = next((i, e) for i, e in enumerate(config.feature_configs)
                            if e.feature.feature_name == feature.name)
        size = next((n for n in ("hash_bucket_size", "num_buckets")
                     if getattr(entry.feature, n, None)), None)
        example = (f"--set 'feature_configs[{index}].{entry.kind}.{size}=1000000'" if size
                   else f"--set 'feature_configs[{index}].{entry.kind}.embedding_dim=8'")
        advice = (f"Lower hash_bucket_size / num_buckets of the largest tables, or their "
                  f"embedding_dim (e.g. {example})")
    check_fits("This DeepFM", parts, f"{advice}; more processes (--nproc) do not help, each "
                                     "holds every table.")


def _dense_weights(config: configs.EasyRecConfig, features: FeatureSet) -> int:
    """The weights of the network's linear layers (deep, final and output), counted from the
    configuration before any is made (a mistyped hidden_units could ask for terabytes)."""
    deepfm = config.model_config.deepfm

    def layers(inputs: int, units: list[int]) -> tuple[int, int]:
        count = 0
        for out in units:
            count, inputs = count + (inputs + 1) * out, out
        return count, inputs

    deep_dim = sum(features.features[n].output_dim for n in features.groups["deep"])
    count, out = layers(deep_dim, deepfm.deep.hidden_units)
    if deepfm.final is not None:
        fm_dim = features.features[features.groups[features.fm_group][0]].output_dim
        more, out = layers(1 + fm_dim + out, deepfm.final.hidden_units)
        count += more
    return count + (out + 1) * config.model_config.num_class


def _request_files(path: str | Path, fmt: str,
                   check: Callable[[ColumnBatch], ColumnBatch]) -> Iterator[ColumnBatch]:
    """JSON (``{"instances": [...]}``) or JSON Lines files of raw feature values."""

    def decode(body: bytes, kind: str, source: str, first_line: int) -> ColumnBatch:
        if kind == "json":
            return check(columns.from_instances(codecs.json_instances(body), source))
        instances, lines = codecs.jsonlines_instances(body, first_line)
        return check(columns.from_instances(instances, source, lines))

    return codecs.read_request_files(path, fmt, decode)
