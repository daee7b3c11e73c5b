"""scikit-learn style estimators: :class:`FMClassifier`, :class:`FMRegressor` and :func:`load`.

Their parameters are the hyperparameter table's names (``feature_dim`` comes from ``X`` and
``predictor_type`` from the class) with the table's defaults; ``__init__`` only stores them and
``fit`` validates them, as scikit-learn's estimator rules ask. ``get_params``/``set_params`` make
them work with ``sklearn.base.clone``, grid search, cross-validation and pipelines.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin

from fmkit.data.sources import ArraySource
from fmkit.hyperparameters import TABLE, validate
from fmkit.metrics import predicted_labels
from fmkit.model import FMModel
from fmkit.train.trainer import train

_INFERRED = ("feature_dim", "predictor_type")
PARAMETERS = {
    h.name: (h.suggested if h.default is None and h.required else h.default)
    for h in TABLE
    if h.name not in _INFERRED
}


def _signature() -> inspect.Signature:
    """``__init__``'s signature as scikit-learn introspects it: one keyword per table entry."""
    parameters = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    parameters += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)
                   for name, default in PARAMETERS.items()]
    return inspect.Signature(parameters)


class _FMEstimator(BaseEstimator):
    _predictor_type: str

    def __init__(self, **params: Any):
        unknown = sorted(set(params) - set(PARAMETERS))
        if unknown:
            raise TypeError(
                f"{type(self).__name__} got unknown parameter(s) {', '.join(unknown)}; "
                f"valid: {', '.join(PARAMETERS)}"
            )
        for name, default in PARAMETERS.items():
            setattr(self, name, params.get(name, default))

    __init__.__signature__ = _signature()

    # -- fitting and predicting -----------------------------------------------------------
    def _hyperparameters(self, feature_dim: int) -> dict[str, Any]:
        raw = {k: v for k, v in self.get_params().items() if v is not None}
        return validate({**raw, "feature_dim": feature_dim,
                         "predictor_type": self._predictor_type})

    def _fit(self, X, y, label_mode: str, progress: bool | None) -> _FMEstimator:
        source = ArraySource(X, y, labels=label_mode)
        hp = self._hyperparameters(source.feature_dim)
        params, history = train(hp, source, progress=progress)
        self.model_ = FMModel(hp, params)
        self.history_ = history
        self.n_features_in_ = source.feature_dim
        return self

    def _check_fitted(self) -> FMModel:
        model = getattr(self, "model_", None)
        if model is None:
            raise AttributeError(f"this {type(self).__name__} is not fitted yet: call fit first")
        return model

    def decision_function(self, X) -> np.ndarray:
        """The raw FM output y_hat of every row."""
        model = self._check_fitted()
        source = ArraySource(X, None, feature_dim=model.feature_dim)
        parts = [model.logits(batch) for batch in source.blocks()]
        return np.concatenate(parts) if parts else np.zeros(0)

    def save(self, path: str | Path) -> Path:
        """Write the fitted model as a model directory (the same format the CLI writes)."""
        model = self._check_fitted()
        history = [vars(s) for s in getattr(self, "history_", [])]
        return model.save(path, {"train": history})


class FMClassifier(ClassifierMixin, _FMEstimator):
    """Binary classifier: log loss, ``predict_proba`` = sigmoid(y_hat). Labels 0/1 or -1/+1."""

    _predictor_type = "binary_classifier"

    def fit(self, X, y, *, progress: bool | None = None) -> FMClassifier:
        y = np.asarray(y)
        classes = np.unique(y)
        if not (set(classes.tolist()) <= {0, 1} or set(classes.tolist()) <= {-1, 1}):
            raise ValueError(f"labels must be 0/1 or -1/+1, got {classes.tolist()[:10]}")
        self.classes_ = np.array([-1, 1]) if -1 in classes else np.array([0, 1])
        self._fit(X, y, "binary", progress)
        self.model_.classes = tuple(int(c) for c in self.classes_)
        return self

    def predict_proba(self, X) -> np.ndarray:
        p = self._check_fitted().scores(self.decision_function(X))
        return np.column_stack([1.0 - p, p])

    def predict(self, X) -> np.ndarray:
        positive = predicted_labels(self.predict_proba(X)[:, 1]).astype(bool)
        return np.where(positive, self.classes_[1], self.classes_[0])


class FMRegressor(RegressorMixin, _FMEstimator):
    """Regressor: squared loss, ``predict`` = y_hat."""

    _predictor_type = "regressor"

    def fit(self, X, y, *, progress: bool | None = None) -> FMRegressor:
        return self._fit(X, y, "real", progress)

    def predict(self, X) -> np.ndarray:
        return self.decision_function(X)


def load(path: str | Path) -> FMClassifier | FMRegressor:
    """Load a model directory (written by ``save`` or ``fmkit train``) as a fitted estimator."""
    model = FMModel.load(path)
    cls = FMClassifier if model.predictor_type == "binary_classifier" else FMRegressor
    params = {k: v for k, v in model.hyperparameters.items() if k in PARAMETERS}
    estimator = cls(**params)
    estimator.model_ = model
    estimator.n_features_in_ = model.feature_dim
    estimator.history_ = []
    if cls is FMClassifier:
        estimator.classes_ = np.array(model.classes)
    return estimator
