"""scikit-learn estimators for DeepFM: :class:`DeepFMClassifier` and :class:`DeepFMRegressor`.

``X`` is a pandas DataFrame, a pyarrow Table or a dict of columns (DeepCTR's model input) of
raw columns (ids as text or integers, numbers, ``"a|b"`` multi-values, sequences, map columns:
whatever the features read), or a 2-D array (columns ``x0``, ``x1``, ...). ``config`` is the
feature and group configuration a ``fmkit train --config`` file holds — a dict, a YAML/JSON
file or TorchEasyRec's ``.config`` — of which the estimator uses the features, groups, network
and training settings; the label is ``y``, the sample weights ``sample_weight``, and the loss
follows from the class (binary or softmax cross entropy for a classifier by its number of
classes, l2_loss for a regressor; the configuration's loss of that kind keeps its options).
Without a ``config`` one is made from ``X`` (:func:`default_config`).

``save`` writes the same model directory ``fmkit train`` writes; :func:`fmkit.load` reads it
back as an estimator, and ``fmkit serve``/``predict`` take it as it is.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.sparse import issparse
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, column_or_1d

from fmkit.data.columns import ColumnBatch
from fmkit.errors import excerpt
from fmkit.eval_set import one_pair
from fmkit.models.metrics import predicted_labels, sigmoid, softmax

LABEL, WEIGHT = "__label__", "__weight__"  # the columns y and sample_weight become
BLOCK_ROWS = 1 << 20  # rows encoded (and shuffled, with data_config.shuffle) at once
HASH_ROWS_PER_VALUE, BUCKETS = 2, 10


def _table(X: Any) -> pa.Table:
    """``X`` as an Arrow table of plain (not dictionary-encoded) columns."""
    if issparse(X):
        raise TypeError("Sparse data was passed for X, but dense data is required (DeepFM "
                        "reads raw columns; for one-hot sparse rows use FMClassifier)")
    if isinstance(X, pa.Table):
        table = X
    elif hasattr(X, "columns") and hasattr(X, "dtypes"):  # a pandas DataFrame
        table = _from_pandas(X)
    elif isinstance(X, Mapping):  # DeepCTR's input: {column name: values}
        import pandas as pd

        table = _from_pandas(pd.DataFrame({name: list(values) if np.ndim(values) > 1 else values
                                           for name, values in X.items()}))
    else:
        array = np.asarray(X)
        if array.ndim != 2:
            raise ValueError(f"Expected a DataFrame, an Arrow table or a 2D array, got an "
                             f"array of shape {array.shape}. Reshape your data.")
        if array.shape[1] == 0:
            raise ValueError(f"Found array with 0 feature(s) (shape={array.shape}) while a "
                             f"minimum of 1 is required.")
        if array.dtype.kind == "c":
            raise ValueError("Complex data not supported")
        if array.dtype.kind == "f" and np.isinf(array).any():  # (NaN: a missing value)
            raise ValueError("Input X contains infinity.")
        table = pa.table({f"x{j}": array[:, j] for j in range(array.shape[1])})
    columns = {}
    for name, column in zip(table.column_names, table.columns):
        column = column.combine_chunks()
        if pa.types.is_dictionary(column.type):
            column = pc.cast(column, column.type.value_type)
        columns[name] = column
    return pa.table(columns) if columns else pa.table({})


_NOT_ARROW = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError)


def _from_pandas(X: Any) -> pa.Table:
    """A DataFrame as an Arrow table. A column of object dtype that mixes numbers and text
    (ids read from several sources: ``19`` and ``"19"``) is text, as a CSV file of it reads;
    other columns Arrow cannot convert are a ValueError naming the column."""
    try:
        table = pa.Table.from_pandas(X, preserve_index=False)
    except _NOT_ARROW as e:
        columns = {}
        for name in X.columns:
            column = X[name]
            if column.dtype.kind == "c":
                raise ValueError("Complex data not supported") from None
            try:
                columns[str(name)] = pa.array(column, from_pandas=True)
            except _NOT_ARROW:
                kinds = {type(v).__name__ for v in column if not _missing(v)}
                if column.dtype != object or not kinds <= {"str", "int", "float", "bool"}:
                    raise ValueError(f"X column {excerpt(str(name))}: {e}") from None
                columns[str(name)] = pa.array([None if _missing(v) else str(v)
                                               for v in column], pa.large_string())
        return pa.table(columns)
    return table.rename_columns([str(c) for c in X.columns])


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _batches(table: pa.Table, extra: dict[str, np.ndarray]) -> Iterator[ColumnBatch]:
    """The table (with label and weight columns added) in blocks of :data:`BLOCK_ROWS`."""
    for start in range(0, max(table.num_rows, 1), BLOCK_ROWS):
        part = table.slice(start, BLOCK_ROWS)
        columns = {name: column.combine_chunks()
                   for name, column in zip(part.column_names, part.columns)}
        columns.update({name: pa.array(values[start:start + part.num_rows])
                        for name, values in extra.items()})
        yield ColumnBatch(columns, part.num_rows, "X", offset=start)


def default_config(X: Any) -> dict[str, Any]:
    """A DeepFM configuration for the columns of ``X``: text, boolean and integer columns of
    few values, and list columns (multi-value ids), as hashed id features (2 rows per
    distinct value), numeric columns as raw features bucketized at their deciles; every
    feature in the wide, fm and deep groups (embedding_dim 8, deep layers 64 and 32), and
    examples/deepfm_movielens.yaml's training settings."""
    from fmkit.models.deepfm.transforms import quantile_boundaries  # (PyTorch's package:
    # imported on use)

    table = _table(X)
    features, names = [], []
    for name, column in zip(table.column_names, table.columns):
        multi = pa.types.is_list(column.type) or pa.types.is_large_list(column.type)
        if multi:
            column = pc.list_flatten(column)
        try:
            distinct = len(pc.unique(column.drop_null()))
        except pa.ArrowNotImplementedError:  # (a struct or map column, lists of lists)
            raise ValueError(f"X column {excerpt(name)} holds {excerpt(str(column.type))} "
                             f"values, which are not features: give numbers, text or "
                             f"lists of them") from None
        numeric = not multi and (pa.types.is_floating(column.type) or (
            pa.types.is_integer(column.type) and distinct > 64))
        init = "nn.init.normal_,std=0.01"
        if numeric:
            values = column.drop_null().to_numpy(zero_copy_only=False).astype(np.float64)
            # (NaN is missing: the default value's bucket, left out of the quantiles)
            features.append({"raw_feature": {"feature_name": name, "embedding_dim": 8,
                                             "boundaries": quantile_boundaries(values, BUCKETS),
                                             "init_fn": init}})
        else:
            features.append({"id_feature": {
                "feature_name": name, "embedding_dim": 8, "init_fn": init,
                "hash_bucket_size": max(HASH_ROWS_PER_VALUE * distinct, 8)}})
        names.append(name)
    return {
        "feature_configs": features,
        "model_config": {
            "feature_groups": [{"group_name": "wide", "group_type": "WIDE",
                                "feature_names": names},
                               {"group_name": "fm", "feature_names": names},
                               {"group_name": "deep", "feature_names": names}],
            "deepfm": {"deep": {"hidden_units": [64, 32]}, "wide_embedding_dim": 1}},
        "train_config": {
            "sparse_optimizer": {"rowwise_adagrad_optimizer": {"lr": 0.05}},
            "dense_optimizer": {"adam_optimizer": {"lr": 0.001}}, "num_epochs": 5},
        "data_config": {"batch_size": 512, "shuffle": True},
    }


def _configured_loss(given: Any, loss: dict[str, Any], estimator: Any) -> Any:
    """The loss to train with: the configuration's own (its options, ``label_smoothing``
    say, kept) when it is the estimator's kind, else ``loss``; one of another kind is refused
    rather than replaced."""
    if not given:
        return loss
    from fmkit.models.deepfm.config import Loss  # (PyTorch's package: imported on use)

    kinds = [next(iter(one), None) if isinstance(one, dict) else None for one in given]
    wanted = next(iter(loss))
    if kinds != [wanted] and not (wanted in Loss.BINARY and len(kinds) == 1
                                  and kinds[0] in Loss.BINARY):  # (two labels: either loss)
        raise ValueError(f"config: model_config.losses is {', '.join(map(str, kinds))}; this "
                         f"{type(estimator).__name__} trains with {wanted} (set its "
                         "options there, or leave losses out)")
    return given[0]


def _completed(document: dict[str, Any], made: dict[str, Any]) -> dict[str, Any]:
    """A configuration without features (``{"train_config": {"num_epochs": 2}}``, say) with
    those of ``made`` (:func:`default_config`): its features and feature groups, and each
    section or setting of ``made`` it leaves out; what it sets stays."""
    document["feature_configs"] = made["feature_configs"]
    for section, settings in made.items():
        if section != "feature_configs":
            mine = document.setdefault(section, {})
            for name, value in settings.items():
                mine.setdefault(name, value)
    return document


def _label_column(y: Any) -> str:
    """The label column's name in the saved configuration: a pandas Series' name (so that
    ``fmkit evaluate`` finds the label in a file with a header), else :data:`LABEL`."""
    name = getattr(y, "name", None)
    return name if isinstance(name, str) and name else LABEL


def _target(y: Any, name: str) -> np.ndarray:
    """``y`` as a 1-D array (a column vector with scikit-learn's warning)."""
    if y is None:
        raise ValueError(f"{name} requires y to be passed, but the target y is None")
    return column_or_1d(y, warn=True)


def _checked_table(X: Any, y: Any, where: str = "") -> pa.Table:
    """``X`` as a table, with scikit-learn's checks of its size and of ``y``'s length (their
    messages; ``where`` names an ``eval_set``)."""
    table = _table(X)
    if table.num_rows == 0:
        raise ValueError(f"{where}Found array with 0 sample(s) (shape=(0, "
                         f"{table.num_columns})) while a minimum of 1 is required.")
    if table.num_columns == 0:
        raise ValueError(f"{where}Found array with 0 feature(s) (shape=({table.num_rows}, 0)) "
                         f"while a minimum of 1 is required.")
    if len(y) != table.num_rows:
        raise ValueError(f"{where}Found input variables with inconsistent numbers of samples: "
                         f"[{table.num_rows}, {len(y)}]")
    return table


def _finite_target(y: Any, name: str) -> np.ndarray:
    y = _target(y, name).astype(np.float64)
    if not np.isfinite(y).all():
        raise ValueError("Input y contains NaN or infinity.")
    return y


class _DeepFMEstimator(BaseEstimator):
    _regressor = False

    def __init__(self, config: dict | str | Path | None = None, *, num_epochs: int | None = None,
                 batch_size: int | None = None, random_state: int | None = None,
                 verbose: bool = False, warm_start: bool = False):
        self.config = config
        self.num_epochs = num_epochs
        self.batch_size = batch_size
        self.random_state = random_state
        self.verbose = verbose
        self.warm_start = warm_start

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True
        tags.input_tags.categorical = True
        tags.input_tags.allow_nan = True  # a missing value takes the feature's default
        tags.non_deterministic = False
        return tags

    def _document(self, table: pa.Table, fitted: Any = None, label: str = LABEL
                  ) -> dict[str, Any]:
        """The configuration to train with: ``config``, else the ``fitted`` model's (a fit
        that continues it), else :func:`default_config` of ``table``."""
        from fmkit.models.deepfm.config import to_document
        from fmkit.models.deepfm.config_files import load_document

        if self.config is None and fitted is not None:
            document = to_document(fitted.config)
        elif self.config is None:
            document = default_config(table)
        else:
            document = (copy.deepcopy(self.config) if isinstance(self.config, dict)
                        else load_document(self.config))
            if not document.get("feature_configs"):
                document = _completed(document, default_config(table))
        for name in ("train_input_path", "eval_input_path", "model_dir"):
            document.pop(name, None)
        data = document.setdefault("data_config", {})
        data["label_fields"] = [label]
        data.pop("input_fields", None)
        train = document.setdefault("train_config", {})
        for key, value in (("num_epochs", self.num_epochs), ("seed", self.random_state)):
            if value is not None:
                train[key] = value
        if self.num_epochs is not None:
            train.pop("num_steps", None)
        if self.batch_size is not None:
            data["batch_size"] = self.batch_size
        return document

    def _continues(self, incremental: bool) -> bool:
        """Whether this fit continues the fitted model: ``warm_start``, or ``partial_fit``."""
        return (self.warm_start or incremental) and hasattr(self, "model_")

    def _fit(self, X: Any, y: Any, sample_weight: Any, loss: dict, num_class: int,
             eval_set: tuple[Any, np.ndarray] | None = None, incremental: bool = False,
             label: str = LABEL) -> _DeepFMEstimator:
        """Train on ``X, y`` (``y`` encoded: class indices or values); ``eval_set`` (``X_val``
        and its encoded ``y``) is ``fmkit train --validation``: scored after every epoch,
        the best epoch's weights kept, ``early_stopping_patience`` applied. A fit that
        continues (:meth:`_continues`) starts from the fitted weights, its epochs numbered
        after theirs; ``incremental`` (``partial_fit``) trains one epoch and keeps the
        optimizers' state for the next call."""
        from fmkit.jobs.deepfm import (
            Channel,
            Rows,
            continue_weights,
            deepfm_learner,
            early_stopping_of,
            fit_deepfm,
            network_change,
            start_from,
        )
        from fmkit.models.deepfm import config as configs
        from fmkit.models.deepfm.model import DeepFMModel

        table = _checked_table(X, y)
        if label in table.column_names:  # (a feature named as y: y keeps its own column)
            label = LABEL
        continues = self._continues(incremental)
        if continues:
            self._check_columns(table)
        validation = None
        if eval_set is not None:  # checked before any table is allocated
            X_val, y_val = eval_set
            table_val = _checked_table(X_val, y_val, "eval_set: ")
            if table_val.column_names != table.column_names:
                raise ValueError(f"eval_set: X has columns {table_val.column_names[:5]}, "
                                 f"the training X {table.column_names[:5]}")
            extra_val = {label: np.asarray(y_val, np.float64)}
            validation = Rows("eval_set", lambda: _batches(table_val, extra_val))
        document = self._document(table, self.model_ if continues else None, label)
        network = document.setdefault("model_config", {})
        network.update(losses=[_configured_loss(network.get("losses"), loss, self)],
                       num_class=num_class)
        if incremental:
            document["train_config"]["num_epochs"] = 1
            document["train_config"].pop("num_steps", None)
        extra = {label: np.asarray(y, np.float64)}
        if sample_weight is not None:  # (checked as the FM estimators check theirs)
            document["data_config"]["sample_weight_fields"] = [WEIGHT]
            extra[WEIGHT] = _check_sample_weight(sample_weight, table, dtype=np.float64,
                                                 ensure_non_negative=True)
        config = configs.parse(document, report_ignored=True)
        learner = getattr(self, "_learner", None) if incremental else None
        before = self.history_ if continues else []
        if learner is not None:
            model = self.model_  # the network the learner's optimizers hold
        else:
            model = DeepFMModel.create(config)
            if not continues:  # (train_config.fine_tune_checkpoint's weights, if it names any)
                before = start_from(config, model)
            else:
                change = network_change(model, self.model_)
                if change:
                    how = "fit starts over" if incremental else "warm_start=False starts over"
                    raise ValueError(f"{'partial_fit' if incremental else 'warm_start'}: "
                                     f"{change} ({how})")
                continue_weights(model, self.model_)
        if incremental:
            learner = self._learner = learner or deepfm_learner(model)
        channel = Channel("X", lambda: (model.encode(batch, labelled=True)
                                        for batch in _batches(table, extra)))
        watch = None if validation is None else early_stopping_of(config, model,
                                                                  validation=validation)
        history = fit_deepfm(model, channel, progress=None if self.verbose else False,
                             early_stopping=watch, trained_epochs=len(before), learner=learner)
        self.model_, self.history_ = model, before + [vars(h) for h in history]
        if not incremental:
            self._learner = None  # a partial_fit after fit continues its weights, fresh state
        self.n_features_in_ = table.num_columns
        model.estimator = {"n_features_in": table.num_columns}
        if hasattr(X, "columns"):
            self.feature_names_in_ = np.array(table.column_names, dtype=object)
            model.estimator["feature_names_in"] = table.column_names
        return self

    def _check_columns(self, table: pa.Table, names: bool = True) -> None:
        """``table`` has the fitted model's width (scikit-learn's message), and with
        ``names`` its columns, in any order (features read them by name; a 2-D array's are
        ``x0``, ``x1``, ...)."""
        if table.num_columns != self.n_features_in_:
            raise ValueError(f"X has {table.num_columns} features, but "
                             f"{type(self).__name__} is expecting {self.n_features_in_} "
                             f"features as input.")
        fitted = (list(self.feature_names_in_) if hasattr(self, "feature_names_in_")
                  else [f"x{j}" for j in range(self.n_features_in_)])
        if names and sorted(table.column_names) != sorted(fitted):
            raise ValueError(f"X has columns {table.column_names[:5]}, but "
                             f"{type(self).__name__} was fitted with {fitted[:5]}")

    def _logits(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "model_")
        table = _table(X)
        self._check_columns(table, names=False)
        parts = [self.model_.logits(batch) for batch in _batches(table, {})
                 if batch.n_rows]
        return np.concatenate(parts) if parts else np.zeros(0)

    def save(self, path: str | Path) -> Path:
        """Write the fitted model as a model directory (what ``fmkit train`` writes)."""
        check_is_fitted(self, "model_")
        return self.model_.save(path, {"train": self.history_})


class DeepFMClassifier(ClassifierMixin, _DeepFMEstimator):
    """DeepFM for two classes (binary cross entropy, ``predict_proba`` the sigmoid) or more
    (softmax cross entropy over ``num_class`` outputs)."""

    def fit(self, X: Any, y: Any, sample_weight: Any = None, *, eval_set: Any = None
            ) -> DeepFMClassifier:
        """Train on ``X, y``. ``eval_set=(X_val, y_val)`` (or a list holding that pair) is
        scored after every epoch; the best epoch's weights by the configuration's
        ``early_stopping_metric`` are kept, and ``early_stopping_patience`` (> 0) stops
        training after that many epochs without a better one (``fmkit train --validation``).
        With ``warm_start``, a fitted model continues: its weights, its classes."""
        return self._fit_classes(X, y, sample_weight, eval_set=eval_set)

    def partial_fit(self, X: Any, y: Any, classes: Any = None, sample_weight: Any = None
                    ) -> DeepFMClassifier:
        """One more epoch over ``X, y``, keeping the weights and the optimizers' state between
        calls (the first call after ``fit`` continues its weights with fresh optimizers);
        ``classes`` (every class ``y`` may hold) on the first call, as scikit-learn's
        incremental estimators take it."""
        return self._fit_classes(X, y, sample_weight, classes=classes, incremental=True)

    def _fit_classes(self, X: Any, y: Any, sample_weight: Any, eval_set: Any = None,
                     classes: Any = None, incremental: bool = False) -> DeepFMClassifier:
        label = _label_column(y)
        y = _target(y, type(self).__name__)
        check_classification_targets(y)
        if not self._continues(incremental):
            self.classes_ = np.unique(y if classes is None else classes)
            if self.classes_.size < 2:
                raise ValueError(f"DeepFMClassifier needs 2 or more classes; y has "
                                 f"{self.classes_.size} class")
        if self.classes_.size == 2:
            loss, num_class = {"binary_cross_entropy": {}}, 1
        else:
            loss, num_class = {"softmax_cross_entropy": {}}, int(self.classes_.size)
        watched = None
        if eval_set is not None:
            X_val, y_val = one_pair(eval_set)
            watched = (X_val, self._encoded(_target(y_val, type(self).__name__), "eval_set: "))
        self._fit(X, self._encoded(y), sample_weight, loss, num_class, watched, incremental,
                  label)
        self.model_.estimator["classes"] = self.classes_.tolist()
        return self

    def _encoded(self, y: np.ndarray, where: str = "") -> np.ndarray:
        """``y`` as indices into ``classes_``."""
        unknown = ~np.isin(y, self.classes_)
        if unknown.any():
            raise ValueError(f"{where}y holds a class that is not in classes_: "
                             f"{y[unknown][0].tolist()!r}")
        return np.searchsorted(self.classes_, y)

    def decision_function(self, X: Any) -> np.ndarray:
        return self._logits(X)

    def predict_proba(self, X: Any) -> np.ndarray:
        logits = self._logits(X)
        if logits.ndim == 2:
            return softmax(logits)
        p = sigmoid(logits)  # (no overflow warning far from 0)
        return np.column_stack([1.0 - p, p])

    def predict(self, X: Any) -> np.ndarray:
        probabilities = self.predict_proba(X)
        if probabilities.shape[1] == 2:
            return self.classes_[predicted_labels(probabilities[:, 1]).astype(int)]
        return self.classes_[np.argmax(probabilities, axis=1)]


class DeepFMRegressor(RegressorMixin, _DeepFMEstimator):
    """DeepFM with the squared loss (TorchEasyRec's ``l2_loss``); ``predict`` is y."""

    def fit(self, X: Any, y: Any, sample_weight: Any = None, *, eval_set: Any = None
            ) -> DeepFMRegressor:
        """Train on ``X, y``; ``eval_set`` and ``warm_start``: see
        :meth:`DeepFMClassifier.fit`."""
        watched = None
        if eval_set is not None:
            X_val, y_val = one_pair(eval_set)
            watched = (X_val, _finite_target(y_val, type(self).__name__))
        return self._fit(X, _finite_target(y, type(self).__name__), sample_weight,
                         {"l2_loss": {}}, 1, watched, label=_label_column(y))

    def partial_fit(self, X: Any, y: Any, sample_weight: Any = None) -> DeepFMRegressor:
        """One more epoch over ``X, y``: see :meth:`DeepFMClassifier.partial_fit`."""
        return self._fit(X, _finite_target(y, type(self).__name__), sample_weight,
                         {"l2_loss": {}}, 1, incremental=True, label=_label_column(y))

    def predict(self, X: Any) -> np.ndarray:
        return self._logits(X)


def load(path: str | Path) -> DeepFMClassifier | DeepFMRegressor:
    """A DeepFM model directory (written by ``save`` or ``fmkit train --config``) as a fitted
    estimator."""
    from fmkit.models.deepfm.model import DeepFMModel

    model = DeepFMModel.load(path)
    saved = model.estimator  # what an estimator's save added (else: from the configuration)
    if model.predictor_type == "regressor":
        estimator: _DeepFMEstimator = DeepFMRegressor()
    else:
        estimator = DeepFMClassifier()
        classes = saved.get("classes") or list(range(max(model.config.model_config.num_class,
                                                         2)))
        estimator.classes_ = np.array(classes)
    estimator.model_ = model
    columns = saved.get("feature_names_in") or model.features.input_columns()
    estimator.n_features_in_ = saved.get("n_features_in", len(columns))
    if "feature_names_in" in saved or "n_features_in" not in saved:
        estimator.feature_names_in_ = np.array(columns, dtype=object)
    estimator.history_ = []
    return estimator
