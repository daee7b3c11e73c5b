"""scikit-learn estimators: :class:`FMClassifier`, :class:`FMRegressor`, the field-aware
:class:`FFMClassifier` and :class:`FFMRegressor`, and :func:`load`.

Their parameters are the hyperparameter table's names (``feature_dim`` comes from ``X`` and
``predictor_type`` from the class) with the table's defaults, plus ``warm_start``; ``__init__``
only stores them and ``fit`` validates them, as scikit-learn's estimator rules ask, and input
goes through scikit-learn's own ``validate_data``. The FM estimators pass
``sklearn.utils.estimator_checks.parametrize_with_checks`` (``tests/test_estimators.py``), with
honest tags: sparse input, binary classification only. The FFM estimators take ``fields``, the
field of each column of ``X`` (as xLearn's ``FFMModel.fit`` does), and an FFM's defaults
(xLearn's settings, ``FFM_DEFAULTS``).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np
from scipy.sparse import issparse
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from fmkit.data import codecs
from fmkit.data.batch import SparseBatch, concat
from fmkit.data.sources import ArraySource
from fmkit.eval_set import one_pair
from fmkit.jobs.training import train, training_source, with_starting_point
from fmkit.models.fm.hyperparameters import AUTO_HELP, FFM_DEFAULTS, SWEEPS, TABLE, validate
from fmkit.models.fm.model import FMModel
from fmkit.models.metrics import predicted_labels
from fmkit.train.callbacks import Progress
from fmkit.train.engine import fit
from fmkit.train.kernel_learner import fm_learner

# inferred from the data and the class (an FFM's fields from its ``fields`` parameter)
_INFERRED = ("feature_dim", "predictor_type", "model_type", "num_fields")
_HYPERPARAMETERS = [h for h in TABLE if h.name not in _INFERRED]
PARAMETERS = {h.name: (h.suggested if h.default is None and h.required else h.default)
              for h in _HYPERPARAMETERS}
# validate's: SageMaker's (1 epoch; its decays), or the sweeps' defaults with mcmc and als
_BY_OPTIMIZER = ("epochs", "bias_wd", "linear_wd", "factors_wd")
for _name in _BY_OPTIMIZER:
    PARAMETERS[_name] = None
for _group in AUTO_HELP:  # unset, not the table's values: a start the user names is then
    # SageMaker's normal with that sigma (validate's rule), not fmkit's auto ignoring it
    PARAMETERS[f"{_group}_init_method"] = PARAMETERS[f"{_group}_init_sigma"] = None
PARAMETERS["warm_start"] = False  # scikit-learn's: fit continues from the fitted weights
FFM_PARAMETERS = {"fields": None, **PARAMETERS, **FFM_DEFAULTS}
_EXTRA_DOCS = {
    "warm_start": ("bool", "``fit`` continues from the fitted weights (a fresh optimizer state; "
                           "epochs numbered after the ones trained), as ``fmkit train "
                           "--init-model`` does."),
    "fields": ("array of int, one per column of X", "The field (0, 1, ...) of each column: "
               "each feature has a factor vector per field, and a pair of features multiplies "
               "the vectors each keeps for the other's field. Required."),
}


def _signature(parameters: dict[str, Any]) -> inspect.Signature:
    """``__init__``'s signature as scikit-learn introspects it: one keyword per parameter."""
    return inspect.Signature(
        [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        + [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)
           for name, default in parameters.items()])


def _parameters_doc(parameters: dict[str, Any]) -> str:
    """The numpydoc ``Parameters`` section, written from the hyperparameter table."""
    lines = ["Parameters", "----------"]
    for name, (kind, text) in _EXTRA_DOCS.items():
        if name in parameters and name != "warm_start":
            lines += [f"{name} : {kind}", f"    {text}"]
    for h in _HYPERPARAMETERS:
        default = parameters[h.name]
        unset = f" (unset: {h.default!r})" if default is None and h.default is not None else ""
        lines += [f"{h.name} : {h.kind.__name__}, default={default!r}{unset}",
                  f"    {h.help} ({h.describe_range()})"]
    kind, text = _EXTRA_DOCS["warm_start"]
    return "\n".join(lines + [f"warm_start : {kind}, default=False", f"    {text}"])


class _FMEstimator(BaseEstimator):
    _predictor_type: str
    _parameters = PARAMETERS  # an FFM's: FFM_PARAMETERS

    def __init__(self, **params: Any):
        unknown = sorted(set(params) - set(self._parameters))
        if unknown:
            raise TypeError(
                f"{type(self).__name__} got unknown parameter(s) {', '.join(unknown)}; "
                f"valid: {', '.join(self._parameters)}"
            )
        for name, default in self._parameters.items():
            setattr(self, name, params.get(name, default))

    __init__.__signature__ = _signature(PARAMETERS)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags

    # -- fitting and predicting -----------------------------------------------------------
    def _hyperparameters(self, feature_dim: int, column_fields: np.ndarray | None
                         ) -> dict[str, Any]:
        """The validated hyperparameters of a run on ``feature_dim`` columns; with
        ``column_fields`` (each column's field) an FFM's ``model_type`` and ``num_fields``."""
        raw = {k: v for k, v in self.get_params().items()
               if v is not None and k not in ("warm_start", "fields")}
        if column_fields is not None:
            raw.update(model_type="ffm", num_fields=int(column_fields.max(initial=0)) + 1)
        return validate({**raw, "feature_dim": feature_dim,
                         "predictor_type": self._predictor_type})

    def _column_fields(self, n_columns: int) -> np.ndarray | None:
        """The field of each column ``fit`` trains with (None: an FM)."""
        return None

    def _source(self, X, y=None, sample_weight=None, column_fields=None) -> ArraySource:
        """Rows of a checked ``X`` (and their labels) as the training and scoring code reads
        them: an FFM's with ``column_fields`` (the fitted model's unless given)."""
        model = getattr(self, "model_", None)
        if column_fields is None and model is not None:
            column_fields = model.column_fields
            if model.field_aware and column_fields is None:
                raise ValueError("this field-aware FM was trained on libffm rows, which give "
                                 "each nonzero its field: it scores libffm files (fmkit "
                                 "predict), not a matrix")
        return ArraySource(X, y, feature_dim=X.shape[1], labels=None if y is None else
                           self._labels, sample_weight=_sample_weight(sample_weight, X),
                           column_fields=column_fields)

    def _input(self, X, y=None, *, reset: bool):
        """``X`` (and ``y``) checked and converted by scikit-learn (CSR or dense float)."""
        regressor = self._predictor_type == "regressor"
        try:
            if y is None and not reset:
                return validate_data(self, X, accept_sparse="csr", reset=False,
                                     dtype=(np.float64, np.float32))
            return validate_data(self, X, y, accept_sparse="csr", reset=reset,
                                 y_numeric=regressor, dtype=(np.float64, np.float32))
        except ValueError as e:  # (numpy's words, then what to do)
            if not str(e).startswith("could not convert string to float"):
                raise
            raise ValueError(f"{e}: an FM takes numbers; one-hot encode text columns (say "
                             "with scikit-learn's OneHotEncoder), or use DeepFMClassifier / "
                             "DeepFMRegressor, which take raw columns") from None

    def _fit(self, X, y, sample_weight, eval_set, progress: bool | None) -> _FMEstimator:
        """``epochs`` epochs; with ``warm_start`` and a fitted model, from its weights (a fresh
        optimizer state, epochs numbered after the ones already trained). ``eval_set``: the
        validation channel of ``fmkit train --validation`` (see ``fit``)."""
        warm = self.warm_start and hasattr(self, "model_")
        X, y = self._input(X, y, reset=not warm)  # warm: X has the fitted model's width
        y = self._target(y, first=True)
        fields = self._column_fields(X.shape[1])
        source = self._source(X, y, sample_weight, fields)
        validation = None
        if eval_set is not None:
            X_val, y_val = one_pair(eval_set)
            X_val, y_val = self._input(X_val, y_val, reset=False)
            validation = self._source(X_val, self._target(y_val, first=False),
                                      column_fields=fields)
        hp = self._hyperparameters(source.feature_dim, fields)
        change = self.model_.shape_change(hp) if warm else None
        if change:
            raise ValueError(f"warm_start: {change}; a fit continues with the same shapes "
                             "(set warm_start=False to start over)")
        before = self.history_ if warm else []
        params, history = train(hp, source, self.model_.params if warm else None,
                                validation=validation, progress=progress,
                                trained_epochs=len(before))
        self.model_, self.history_ = FMModel(hp, params, column_fields=fields), before + history
        self._learner = None  # a partial_fit after fit continues its weights, a fresh state
        return self

    def _target(self, y: np.ndarray, first: bool, classes=None) -> np.ndarray:
        """The labels training takes (a classifier encodes its classes)."""
        return y

    def _partial_fit(self, X, y, classes=None, sample_weight=None) -> _FMEstimator:
        """One epoch over ``X, y`` continuing the weights *and the optimizer state* of the
        previous ``partial_fit`` calls: on rows in the same order (``shuffle=0``), calls on
        parts whose sizes are multiples of ``mini_batch_size`` train what one epoch over all
        of them trains (given the same start: an ``auto`` bias starts from the first call's
        labels). The first call after ``fit`` (or :func:`load`) continues the fitted weights
        with a fresh optimizer state, as ``warm_start`` does; its ``X`` must have their
        width."""
        learner = getattr(self, "_learner", None)
        fitted = learner is None and hasattr(self, "model_")
        first = learner is None and not fitted
        X, y = self._input(X, y, reset=first)
        fields = self._column_fields(X.shape[1]) if first else None  # else the model's
        source = self._source(X, self._target(y, first, classes), sample_weight, fields)
        if first:
            hp = with_starting_point(self._hyperparameters(source.feature_dim,
                                                           source.column_fields), source)
            if hp["optimizer"] in SWEEPS:  # (a sweep over each part alone: another model)
                raise ValueError(f"partial_fit: optimizer={hp['optimizer']} updates every "
                                 "weight from all the training rows in each sweep; call fit "
                                 "(with eval_set to watch each sweep)")
            learner, self.history_ = fm_learner(hp), []
        elif fitted:
            hp = self._hyperparameters(source.feature_dim, source.column_fields)
            change = self.model_.shape_change(hp)
            if change:
                raise ValueError(f"partial_fit: {change}; it continues the fitted model with "
                                 "the same shapes")
            learner = fm_learner(hp, self.model_.params)
        self._learner = learner
        epoch = len(self.history_) + 1
        self.history_ += fit(learner, training_source(learner.hp, source), epochs=epoch,
                             seed=learner.hp["seed"], first_epoch=epoch,
                             callbacks=[Progress(False)])
        self.model_ = FMModel(learner.hp, learner.parameters(epoch),
                              column_fields=source.column_fields)
        return self

    def _logits(self, X) -> np.ndarray:
        """The raw FM output y_hat of every row."""
        check_is_fitted(self, "model_")
        parts = [self.model_.logits(batch)
                 for batch in self._source(self._input(X, reset=False)).blocks()]
        logits = np.concatenate(parts) if parts else np.zeros(0)
        # as the CLI and server: no score that is not a finite number (a classifier's infinite
        # logit is a score of 0 or 1)
        bad = np.flatnonzero(np.isnan(logits) if self._predictor_type == "binary_classifier"
                             else ~np.isfinite(logits))
        if bad.size:
            raise ValueError(f"X row {int(bad[0])}: {codecs.NOT_FINITE}")
        return logits

    def recommend(self, contexts, items, k: int = 10, *, exclude=None,
                  approximate: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best ``items`` rows for each ``contexts`` row, exactly (the FM score of a
        context joined with an item splits into their parts and one inner product: see
        ``fmkit recommend``): ``(positions, scores)``, each (contexts, k) — item row numbers,
        best first (ties: the earlier row), and their y_hat; -1 and -inf pad rows with fewer
        than ``k`` candidates. ``exclude[r]``: item rows context ``r`` may not get.
        ``approximate``: candidates from an HNSW graph of the items (FAISS), scored exactly.
        Contexts and items must not share features."""
        from fmkit.models.fm.approximate import ApproximateIndex
        from fmkit.models.fm.recommend import top_k

        catalogue, context_rows, excluded = self._catalogue(contexts, items, exclude)
        index = ApproximateIndex.build(catalogue.scoring[0]) if approximate else None
        found = top_k(self.model_, catalogue, context_rows, k, excluded, index)
        positions = np.full((len(found), k), -1, np.int64)
        scores = np.full((len(found), k), -np.inf)
        for row, (chosen, values) in enumerate(found):
            positions[row, :chosen.size], scores[row, :chosen.size] = chosen, values
        return positions, scores

    def recommend_auc(self, contexts, items, relevant, *, exclude=None) -> np.ndarray:
        """Per ``contexts`` row, the AUC of its ``relevant`` items (item row numbers, a list
        per context) against every other ``items`` row, ``exclude[r]`` left out of both:
        LightFM's per-user ``auc_score``, ties counting half; NaN for a context without a
        relevant item (``fmkit recommend evaluate`` prints the mean as ``auc``)."""
        from fmkit.models.fm.recommend import context_aucs

        catalogue, context_rows, excluded = self._catalogue(contexts, items, exclude)
        wanted = _item_rows(relevant, context_rows.n_rows, len(catalogue.ids), "relevant")
        return context_aucs(self.model_, catalogue, context_rows, wanted, excluded)

    def _catalogue(self, contexts, items, exclude) -> tuple[Any, SparseBatch,
                                                            list[np.ndarray] | None]:
        """The items as a catalogue, the contexts as a batch and ``exclude`` checked."""
        from fmkit.models.fm.recommend import Catalogue

        check_is_fitted(self, "model_")
        item_rows, context_rows = self._batch(items), self._batch(contexts)
        catalogue = Catalogue.of(self.model_, list(range(item_rows.n_rows)), item_rows)
        excluded = None if exclude is None else _item_rows(exclude, context_rows.n_rows,
                                                          item_rows.n_rows)
        return catalogue, context_rows, excluded

    def _batch(self, X) -> SparseBatch:
        """``X``'s rows as one checked batch for the model (as :meth:`_logits` reads them)."""
        return concat(list(self._source(self._input(X, reset=False)).blocks()))

    def save(self, path: str | Path) -> Path:
        """Write the fitted model as a model directory (the same format the CLI writes)."""
        check_is_fitted(self, "model_")
        history = [vars(s) for s in getattr(self, "history_", [])]
        return self.model_.save(path, {"train": history})


def _sample_weight(sample_weight, X) -> np.ndarray | None:
    """``sample_weight`` checked by scikit-learn's rules (one finite weight >= 0 per row of
    ``X``, not all 0; a number is every row's) and divided by its mean, or None. Weights are
    relative: weights of 2 on some rows and 0 on as many train what repeating and dropping
    those rows trains (in one mini-batch, exactly), and the same weight on every row changes
    nothing, whatever the mini-batch size."""
    if sample_weight is None:
        return None
    weights = _check_sample_weight(sample_weight, X, dtype=np.float64, ensure_non_negative=True)
    return weights / weights.mean()


def _item_rows(lists, contexts: int, items: int, name: str = "exclude") -> list[np.ndarray]:
    """``recommend``'s ``exclude`` (or ``recommend_auc``'s ``relevant``, ``fit_interactions``'
    ``chosen``): a list of item row numbers per context row, checked (an item id or a list too
    few was ignored or an IndexError); or LightFM's interactions, a sparse matrix of a row per
    context and a column per item, whose positive entries are the items."""
    if issparse(lists):
        if lists.shape != (contexts, items):
            raise ValueError(f"{name} is a {lists.shape[0]} x {lists.shape[1]} matrix, "
                             f"expected a row per context row ({contexts}) and a column per "
                             f"item row ({items})")
        matrix = lists.tocsr()
        return [matrix.indices[lo:hi][matrix.data[lo:hi] > 0].astype(np.int64)
                for lo, hi in zip(matrix.indptr[:-1], matrix.indptr[1:])]
    if len(lists) != contexts:
        raise ValueError(f"{name} has {len(lists)} lists, expected one per context row "
                         f"({contexts})")
    rows = []
    for r, chosen in enumerate(lists):
        chosen = np.asarray(chosen).reshape(-1)
        if chosen.size and (chosen.dtype.kind not in "iu" or chosen.min() < 0
                            or chosen.max() >= items):
            raise ValueError(f"{name}[{r}]: expected item row numbers in 0..{items - 1}, "
                             f"got {chosen[:5].tolist()}")
        rows.append(chosen.astype(np.int64))
    return rows


class FMClassifier(ClassifierMixin, _FMEstimator):
    """Binary classifier: log loss, ``predict_proba`` = sigmoid(y_hat). Any two labels (the
    larger one, in ``classes_`` order, is the positive class: 1 of 0/1, +1 of -1/+1)."""

    _predictor_type = "binary_classifier"
    _labels = "binary"

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        return tags

    def _target(self, y: np.ndarray, first: bool, classes=None) -> np.ndarray:
        """``y`` as 0/1 by ``classes_`` (set from ``classes`` or ``y`` on a first fit)."""
        check_classification_targets(y)
        if first:
            self.classes_ = np.unique(y if classes is None else classes)
            if self.classes_.size != 2:
                raise ValueError(f"Only binary classification is supported: y has "
                                 f"{self.classes_.size} class(es), FMClassifier needs 2"
                                 + (" (a first partial_fit on rows of one class names both "
                                    "with classes=[...])" if classes is None
                                    and self.classes_.size == 1 else ""))
        unknown = ~np.isin(y, self.classes_)
        if unknown.any():
            raise ValueError(f"y holds a class that is not in classes_: {y[unknown][0].tolist()!r}")
        return (y == self.classes_[1]).astype(np.float64)

    def _keep_classes(self) -> FMClassifier:
        self.model_.classes = tuple(self.classes_.tolist())  # (saved in model.json)
        return self

    def fit(self, X, y, sample_weight=None, *, eval_set=None, progress: bool | None = None
            ) -> FMClassifier:
        """Train ``epochs`` epochs on ``X, y``. ``sample_weight``: each row's loss is
        multiplied by its weight over the mean weight (a row of twice the mean weight counts
        as two rows; ``partial_fit`` divides by each call's mean). ``eval_set=(X_val, y_val)``:
        measured after every epoch (``history_``), the best epoch's weights by
        ``early_stopping_metric`` are kept and training stops after
        ``early_stopping_patience`` epochs without a better one, as ``fmkit train
        --validation`` does (``optimizer=mcmc`` with no patience set keeps the mean of all
        its samples)."""
        return self._fit(X, y, sample_weight, eval_set, progress)._keep_classes()

    def partial_fit(self, X, y, classes=None, sample_weight=None) -> FMClassifier:
        """One more epoch over ``X, y`` (see ``_partial_fit``); ``classes`` may be given on
        the first call, as scikit-learn's incremental estimators take it."""
        return self._partial_fit(X, y, classes, sample_weight)._keep_classes()

    def fit_interactions(self, contexts, items, chosen, *, negatives: int = 4,
                         progress: bool | None = None) -> FMClassifier:
        """Train ``epochs`` epochs on implicit feedback, as ``fmkit train --interactions``
        does: each ``contexts`` row joined with each ``items`` row that ``chosen`` lists for
        it (item row numbers, a list per context; label 1) and with ``negatives`` item rows
        per interaction that it did not choose (label 0), drawn anew every epoch (seeded by
        ``seed`` and the epoch). ``contexts`` and ``items`` have the same columns, none used
        by both. Then :meth:`recommend` ranks items for contexts, :meth:`recommend_auc`
        measures it."""
        from fmkit.data.pairs import SampledPairs, shared_key

        if negatives < 1:
            raise ValueError(f"negatives must be >= 1, got {negatives}")
        contexts = validate_data(self, contexts, accept_sparse="csr", reset=True,
                                 dtype=(np.float64, np.float32))
        context_rows, item_rows = self._batch(contexts), self._batch(items)
        wanted = _item_rows(chosen, context_rows.n_rows, item_rows.n_rows, "chosen")
        if not sum(taken.size for taken in wanted):
            raise ValueError("chosen lists no item for any context: no pairs to train on")
        shared = shared_key(context_rows, item_rows)
        if shared:
            raise ValueError(f"context row {shared[1]} and item row {shared[2]} both use "
                             f"column {shared[0]}: contexts and items need columns of their "
                             "own")
        self._target(np.array([0.0, 1.0]), first=True)
        hp = self._hyperparameters(contexts.shape[1], None)
        source = SampledPairs("interactions", context_rows, item_rows, wanted, negatives,
                              hp["seed"], contexts.shape[1], self._labels)
        params, self.history_ = train(hp, source, progress=progress)
        self.model_, self._learner = FMModel(hp, params), None
        return self._keep_classes()

    def decision_function(self, X) -> np.ndarray:
        """The raw FM output y_hat of every row (> 0: the positive class)."""
        return self._logits(X)

    def predict_proba(self, X) -> np.ndarray:
        logits = self.decision_function(X)
        p = self.model_.scores(logits)
        return np.column_stack([1.0 - p, p])

    def predict(self, X) -> np.ndarray:
        positive = predicted_labels(self.predict_proba(X)[:, 1]).astype(bool)
        return np.where(positive, self.classes_[1], self.classes_[0])


class FMRegressor(RegressorMixin, _FMEstimator):
    """Regressor: squared loss, ``predict`` = y_hat."""

    _predictor_type = "regressor"
    _labels = "real"

    def fit(self, X, y, sample_weight=None, *, eval_set=None, progress: bool | None = None
            ) -> FMRegressor:
        """Train on ``X, y``; ``sample_weight`` and ``eval_set``: see
        :meth:`FMClassifier.fit`."""
        return self._fit(X, y, sample_weight, eval_set, progress)

    def partial_fit(self, X, y, sample_weight=None) -> FMRegressor:
        """One more epoch over ``X, y`` (see ``_partial_fit``)."""
        return self._partial_fit(X, y, sample_weight=sample_weight)

    def predict(self, X) -> np.ndarray:
        return self._logits(X)


class _FieldAware:
    """What makes an FM estimator field-aware: ``fields`` (each column's field) and an FFM's
    defaults."""

    _parameters = FFM_PARAMETERS
    fields: Any

    def __init__(self, **params: Any):
        super().__init__(**params)

    __init__.__signature__ = _signature(FFM_PARAMETERS)

    def fit_interactions(self, *args: Any, **kwargs: Any) -> Any:
        raise ValueError(f"{type(self).__name__}: fit_interactions trains an FM "
                         "(FMClassifier); the sampled pairs carry no fields")

    def _column_fields(self, n_columns: int) -> np.ndarray:
        name = type(self).__name__
        if self.fields is None:
            raise ValueError(f"{name} needs fields: the field (0, 1, ...) of each of X's "
                             f"{n_columns} columns")
        fields = np.asarray(self.fields)
        if fields.shape != (n_columns,) or fields.dtype.kind not in "iu" or (
                fields.size and fields.min() < 0):
            raise ValueError(f"{name}: fields must hold one integer >= 0 per column of X "
                             f"({n_columns}), got {str(self.fields)[:60]}")
        return fields.astype(np.int32)


class FFMClassifier(_FieldAware, FMClassifier):
    """Field-aware binary classifier (xLearn's ``FFMModel(task="binary")``): y_hat = w0 +
    sum w_i x_i + sum_{i<j} <v_{i, f(j)}, v_{j, f(i)}> x_i x_j, ``f`` the ``fields`` of the
    columns. Defaults: xLearn's FFM settings (AdaGrad a row per step, rate 0.2, rows scaled to
    unit length; docs/quality.md)."""


class FFMRegressor(_FieldAware, FMRegressor):
    """Field-aware regressor (squared loss); see :class:`FFMClassifier`."""


for _cls in (FMClassifier, FMRegressor, FFMClassifier, FFMRegressor):
    _cls.__doc__ += "\n\n" + _parameters_doc(_cls._parameters)


def load(path: str | Path) -> Any:
    """Load a model directory (written by ``save`` or ``fmkit train``) as a fitted estimator:
    an FM's as :class:`FMClassifier`/:class:`FMRegressor`, a DeepFM's as
    :class:`fmkit.deepfm_estimators.DeepFMClassifier`/``DeepFMRegressor``."""
    from fmkit.models import artifact

    if artifact.model_type(path) == "deepfm":
        from fmkit import deepfm_estimators

        return deepfm_estimators.load(path)
    model = FMModel.load(path)
    classifier = model.predictor_type == "binary_classifier"
    if model.field_aware:
        cls: type = FFMClassifier if classifier else FFMRegressor
    else:
        cls = FMClassifier if classifier else FMRegressor
    params = {k: v for k, v in model.hyperparameters.items() if k in PARAMETERS}
    for group in AUTO_HELP:  # fmkit's auto start: the estimator's unset parameters
        if params[f"{group}_init_method"] == "auto":
            params[f"{group}_init_method"] = params[f"{group}_init_sigma"] = None
    defaults = FFM_PARAMETERS if model.field_aware else PARAMETERS
    unset = validate({**model.hyperparameters, **{name: None for name in _BY_OPTIMIZER}},
                     saved=True)
    for name in _BY_OPTIMIZER:  # what validate gave an unset one (its optimizer's default)
        if defaults[name] is None and params[name] == unset[name]:
            params[name] = None
    if model.field_aware and model.column_fields is not None:
        params["fields"] = model.column_fields.tolist()
    estimator = cls(**params)
    estimator.model_ = model
    estimator.n_features_in_ = model.feature_dim
    estimator.history_ = []
    if cls is FMClassifier:
        estimator.classes_ = np.array(model.classes)
    return estimator
