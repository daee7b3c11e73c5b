"""What the training loops do after each epoch, written once: today early stopping on a
validation channel (as LightGBM's ``early_stopping`` callback and xgboost's ``EarlyStopping``
do it: watch one metric, remember the best round, stop after ``patience`` rounds without
improvement)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fmkit.logs import log
from fmkit.metrics import watched_metric


class EarlyStopping:
    """Watches ``metric`` (an ``early_stopping_metric`` name) on the validation metrics of
    each epoch, keeps a snapshot of the best epoch's weights, and says when ``patience``
    epochs have passed without improvement (0: never). The first epoch is always the best so
    far; later ones must be strictly better."""

    def __init__(self, metric: str, predictor_type: str, patience: int):
        self.key, self.higher_is_better = watched_metric(metric, predictor_type)
        self.patience = patience
        self.best_value: float | None = None
        self.best_epoch = 0
        self.best_weights: Any = None

    def update(self, epoch: int, metrics: dict[str, float], snapshot: Callable[[], Any]) -> bool:
        """Record ``epoch``'s validation ``metrics``; ``snapshot()`` copies the weights when
        they are the best so far. Returns whether training should stop."""
        value = metrics[self.key]
        if self.best_value is None or (value > self.best_value if self.higher_is_better
                                       else value < self.best_value):
            self.best_value, self.best_epoch, self.best_weights = value, epoch, snapshot()
        if self.patience and epoch - self.best_epoch >= self.patience:
            log.info("early stopping after epoch %d: the best validation %s was at epoch %d",
                     epoch, self.key, self.best_epoch)
            return True
        return False
