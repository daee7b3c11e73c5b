"""File-to-file jobs: train, evaluate and predict on channels on disk.

These are the Python API behind ``fmkit train|evaluate|predict`` (the CLI only parses arguments)
and the SageMaker entry point. Hyperparameters are validated before any data is read.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from fmkit.data.sources import FileSource, detect_index_base
from fmkit.hyperparameters import validate
from fmkit.logs import DEFAULT_HOST, log, log_metrics
from fmkit.model import FMModel
from fmkit.train.trainer import train


def _index_base(source: FileSource, index_base: str | int) -> int:
    if str(index_base) == "auto":
        base = detect_index_base(source)
        log.info("%s: %d-based feature indices (detected)", source.name, base)
        return base
    if str(index_base) not in ("0", "1"):
        raise ValueError(f"index base must be auto, 0 or 1, got {index_base!r}")
    return int(index_base)


def train_files(hyperparameters: Mapping[str, Any], train_path: str | Path,
                model_dir: str | Path, *, test_path: str | Path | None = None,
                fmt: str = "auto", index_base: str | int = "auto", progress: bool | None = None,
                host: str = DEFAULT_HOST) -> tuple[FMModel, dict[str, Any]]:
    """Train on a channel, score the optional test channel, write the model directory.

    Returns the model and the metrics written to ``metrics.json``.
    """
    hp = validate(hyperparameters)
    label_mode = "binary" if hp["predictor_type"] == "binary_classifier" else "real"
    source = FileSource(train_path, fmt, hp["feature_dim"], labels=label_mode)
    source.index_base = _index_base(source, index_base)
    test_source = None
    if test_path is not None:
        test_source = FileSource(test_path, source.fmt, hp["feature_dim"], source.index_base,
                                 labels=label_mode)
    params, history = train(hp, source, progress=progress, host=host)
    model = FMModel(hp, params, source.index_base)
    metrics: dict[str, Any] = {"train": [vars(s) for s in history]}
    if test_source is not None:
        metrics["test"] = model.evaluate(test_source.blocks())
        log_metrics("test", metrics["test"], host)
    model.save(model_dir, metrics)
    log.info("model written to %s", model_dir)
    return model, metrics


def _source_for(model: FMModel, data_path: str | Path, fmt: str, labels: str | None) -> FileSource:
    return FileSource(data_path, fmt, model.feature_dim, model.index_base, labels=labels)


def evaluate_files(model_dir: str | Path, data_path: str | Path, *,
                   fmt: str = "auto") -> dict[str, float]:
    """SageMaker's metrics (plus AUC and ``rows``) of a model on a labelled channel."""
    model = FMModel.load(model_dir)
    return model.evaluate(_source_for(model, data_path, fmt, model.label_mode).blocks())


def _json_lines(predictions: dict[str, np.ndarray]) -> str:
    scores = predictions["score"].tolist()
    if "predicted_label" in predictions:
        labels = predictions["predicted_label"].tolist()
        rows = [f'{{"score": {s!r}, "predicted_label": {p!r}}}' for s, p in zip(scores, labels)]
    else:
        rows = [f'{{"score": {s!r}}}' for s in scores]
    return "\n".join(rows) + "\n" if rows else ""


def predict_files(model_dir: str | Path, data_path: str | Path,
                  output: str | Path | None = None, *, fmt: str = "auto") -> int:
    """Write one JSON line of predictions per input row; returns the number of rows.

    ``output`` is written under a temporary name and renamed when complete; None means stdout.
    """
    model = FMModel.load(model_dir)
    source = _source_for(model, data_path, fmt, labels=None)
    if output is None:
        return _write_predictions(model, source, sys.stdout)
    output = Path(output)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.partial-", dir=output.parent or ".")
    try:
        with os.fdopen(fd, "w") as f:
            rows = _write_predictions(model, source, f)
        os.replace(tmp, output)
    except BaseException:
        os.unlink(tmp)
        raise
    return rows


def _write_predictions(model: FMModel, source: FileSource, out: IO[str]) -> int:
    rows = 0
    for batch in source.blocks():
        out.write(_json_lines(model.predictions(batch)))
        rows += batch.n_rows
    return rows


def metrics_json(metrics: Mapping[str, Any]) -> str:
    """Metrics as strict JSON (an undefined value such as AUC on one class becomes null)."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
             for k, v in metrics.items()}
    return json.dumps(clean, sort_keys=True)
