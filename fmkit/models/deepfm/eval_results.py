"""TorchEasyRec's evaluation result files, kept in a DeepFM's model directory.

``tzrec.train_eval`` appends a JSON line to ``MODEL_DIR/train_eval_result.txt`` each time it
evaluates ``eval_input_path``, and ``tzrec.eval`` one to ``MODEL_DIR/eval_result.txt``
(``--eval_result_filename``): ``{"global_step": N, "auc": ..., ...}``, a value per configured
metric and loss, named by its type, keys after ``global_step`` sorted. Scripts that read them
(to pick a model, to report it) read fmkit's the same way. The values are fmkit's measurements
(:mod:`fmkit.models.metrics`: exact AUC, weighted by ``sample_weight_fields`` when configured);
a loss fmkit does not measure on evaluation data (``binary_focal_loss``, a cross entropy with
``label_smoothing``) is left out, as is a metric the model's kind has not
(``mean_absolute_error`` of a classifier).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from fmkit import files
from fmkit.models import artifact
from fmkit.models.artifact import EVAL_RESULT
from fmkit.models.deepfm.config import EasyRecConfig


def _metric_value(kind: str, settings: Any, metrics: dict[str, Any]) -> float | None:
    """A configured metric's value, by TorchEasyRec's type name, from fmkit's metrics."""
    if kind in ("auc", "multiclass_auc"):  # (of several classes: the one-vs-rest mean, the
        return metrics.get("auc")  # macro average torchmetrics' multiclass AUROC takes)
    if kind == "accuracy":
        return metrics.get("binary_classification_accuracy", metrics.get("multiclass_accuracy"))
    if kind == "mean_squared_error":
        return None if metrics.get("rmse") is None else metrics["rmse"] ** 2
    if kind == "grouped_auc":
        return metrics.get(f"grouped_auc_{settings.grouping_key}")
    return metrics.get(kind)  # normalized_entropy, mean_absolute_error


def _loss_value(kind: str, settings: Any, metrics: dict[str, Any]) -> float | None:
    """A configured loss's mean over the evaluated rows, where fmkit measures that loss."""
    if getattr(settings, "label_smoothing", 0.0):
        return None
    if kind == "binary_cross_entropy":
        return metrics.get("binary_classification_cross_entropy")
    if kind == "softmax_cross_entropy":
        return metrics.get("multiclass_cross_entropy")
    if kind == "l2_loss":  # (the mean squared error)
        return _metric_value("mean_squared_error", settings, metrics)
    return None  # binary_focal_loss


def result_line(config: EasyRecConfig, metrics: dict[str, Any], step: int | None) -> str:
    """One evaluation as TorchEasyRec writes it: a JSON line, ``global_step`` first."""
    named: dict[str, float | None] = {}
    for entries, value_of in ((config.model_config.metrics, _metric_value),
                              (config.model_config.losses, _loss_value)):
        for entry in entries:
            kind = next(name for name in entry.ONEOF if getattr(entry, name) is not None)
            value = value_of(kind, getattr(entry, kind), metrics)
            if value is not None:  # (NaN, an AUC of one class, as JSON's null)
                named[kind] = float(value) if math.isfinite(value) else None
    return json.dumps({"global_step": step, **dict(sorted(named.items()))}) + "\n"


def train_eval_result(config: EasyRecConfig, metrics: dict[str, Any]) -> str:
    """``train_eval_result.txt`` of a training's ``metrics.json``: a line per measurement
    made while training (each ``checks`` entry at its step, each epoch's ``validation`` at
    the epoch's last step), then one for ``test`` (``eval_input_path`` scored after training)
    at the run's last step."""
    lines, step = [], None
    for epoch in metrics.get("train", []):
        for check in epoch.get("checks") or []:
            lines.append(result_line(config, check, check.get("step")))
        step = epoch.get("steps", step)
        if epoch.get("validation"):
            lines.append(result_line(config, epoch["validation"], step))
    if metrics.get("test"):
        lines.append(result_line(config, metrics["test"], step))
    return "".join(lines)


def result_file(model_dir: str | Path, filename: str = EVAL_RESULT) -> Path:
    """Where ``tzrec.eval`` records an evaluation of the model in ``model_dir``: its file
    ``filename`` (an absolute ``filename``: that file). Checked before evaluating: a file
    there that is not such a record (``model.json``, someone's data) is refused, unchanged."""
    return files.appendable(artifact.resolve(model_dir) / filename, artifact.RESULT_LINES)


def append_evaluation(path: Path, model_dir: str | Path, config: EasyRecConfig,
                      metrics: dict[str, Any]) -> None:
    """``tzrec.eval``'s record of an evaluation of the model in ``model_dir``: a line added
    to ``path`` (:func:`result_file`), at the step the model's training ended at."""
    epochs = artifact.read_metrics(artifact.resolve(model_dir)).get("train") or [{}]
    files.append_text(path, result_line(config, metrics, epochs[-1].get("steps")),
                      artifact.RESULT_LINES)
