"""``fmkit report``: a model directory's training history and, given labelled data, its
quality, as one self-contained HTML page: the plots are drawn with matplotlib and embedded as
PNG data, the tables are ``metrics.json`` (and the data's metrics) as written."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fmkit import files
from fmkit.data.sampling import UniformSample
from fmkit.errors import FMKitError
from fmkit.models import artifact
from fmkit.models.base import load_model
from fmkit.models.fm.parameters import sigmoid
from fmkit.models.metrics import StreamingMetrics, require_rows, softmax

SHORT = {"binary_classification_accuracy": "accuracy", "binary_f_beta": "F1",
         "binary_classification_cross_entropy": "log loss"}  # SageMaker's names, in headers
PAGE_START = "<!DOCTYPE html><html><head><meta charset='utf-8'><title>fmkit report</title>"
PAGES = files.Recognise("an fmkit report", lambda head: head.startswith(PAGE_START.encode()))
STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
         "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
         "padding:3px 8px;text-align:right}th{background:#f3f3f3}img{max-width:100%}"
         "figure{margin:0 1em 1em 0}.plots{display:flex;flex-wrap:wrap}"
         ".wide{overflow-x:auto}")  # (a table wider than the page scrolls on its own)


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise FMKitError("fmkit report draws its plots with matplotlib: "
                         "pip install 'fmkit[report]'") from None
    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    import matplotlib.pyplot as plt

    return plt


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=90)
    figure.clf()
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _validation_names(history: list[dict]) -> list[str]:
    """The validation metrics measured in any epoch (the channel's row count aside)."""
    return sorted({n for h in history for n in (h.get("validation") or {}) if n != "rows"})


def _measurements(history: list[dict], name: str) -> list[tuple[float, float]]:
    """(epoch, value) of every validation measurement of ``name``: at each epoch's end, and
    within it (``checks``, every validation_every_steps) at the fraction of its steps done."""
    points, before = [], 0
    for h in history:
        steps = h.get("steps") or 0
        points += [(h["epoch"] - 1 + (c["step"] - before) / max(steps - before, 1), c[name])
                   for c in h.get("checks", []) if name in c]
        if name in (h.get("validation") or {}):
            points.append((h["epoch"], h["validation"][name]))
        before = steps
    return points


def _learning_curves(plt, history: list[dict]) -> str:
    """Training loss, and each validation metric, per epoch."""
    measured = _validation_names(history)
    figure, axes = plt.subplots(1, 1 + bool(measured), figsize=(11 if measured else 6, 4),
                                squeeze=False)
    epochs = [h["epoch"] for h in history]
    axes[0, 0].plot(epochs, [h["loss"] for h in history], "o-")
    axes[0, 0].set(title="training loss", xlabel="epoch", ylabel="mean loss")
    for name in measured:
        points = sorted(_measurements(history, name))
        axes[0, 1].plot(*zip(*points), "o-", label=SHORT.get(name, name))
    if measured:
        axes[0, 1].set(title="validation", xlabel="epoch")
        # beside the curves, not on them (inside, it covered the log loss's points)
        axes[0, 1].legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small")
    from matplotlib.ticker import MaxNLocator

    for axis in axes[0]:
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _png(figure)


PLOT_ROWS = 1_000_000  # rows the quality plots are drawn from at most (chosen at random)


def _quality_plots(plt, predictor_type: str, y: np.ndarray, z: np.ndarray,
                   class_names: list | None = None) -> dict[str, str]:
    """ROC, precision-recall and calibration (binary classifiers); each class's ROC against
    the rest and the confusion matrix (several classes, named by ``class_names`` when an
    estimator's classes have names); predicted against actual and the residuals
    (regressors)."""
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

    if predictor_type == "multiclass_classifier":
        return _class_plots(plt, y.astype(np.int64), softmax(z), class_names)
    if predictor_type == "regressor":
        figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
        shown = np.random.default_rng(0).permutation(y.size)[:5000]
        left.scatter(y[shown], z[shown], s=4, alpha=0.4)
        low, high = float(min(y.min(), z.min())), float(max(y.max(), z.max()))
        left.plot([low, high], [low, high], "k--", lw=1)
        left.set(title="predicted against actual", xlabel="label", ylabel="prediction")
        right.hist(z - y, bins=50)
        right.set(title="residuals", xlabel="prediction - label", ylabel="rows")
        return {"Predictions": _png(figure)}
    p = sigmoid(z)
    plots = {}
    figure, axis = plt.subplots(figsize=(5, 4.5))
    fpr, tpr, _ = roc_curve(y, p)
    axis.plot(fpr, tpr, label=f"AUC {auc(fpr, tpr):.4f}")
    axis.plot([0, 1], [0, 1], "k--", lw=1)
    axis.set(title="ROC", xlabel="false positive rate", ylabel="true positive rate")
    axis.legend(loc="lower right")
    plots["ROC"] = _png(figure)
    figure, axis = plt.subplots(figsize=(5, 4.5))
    precision, recall, _ = precision_recall_curve(y, p)
    axis.plot(recall, precision, label=f"average precision {average_precision_score(y, p):.4f}")
    axis.axhline(y.mean(), color="k", ls="--", lw=1)
    axis.set(title="precision-recall", xlabel="recall", ylabel="precision")
    axis.legend(loc="lower left")
    plots["Precision-recall"] = _png(figure)
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(5, 6), sharex=True,
                                         gridspec_kw={"height_ratios": [3, 1]})
    observed, predicted = calibration_curve(y, p, n_bins=10, strategy="quantile")
    top.plot(predicted, observed, "o-")
    top.plot([0, 1], [0, 1], "k--", lw=1)
    top.set(title="calibration", ylabel="positive rate")
    bottom.hist(p, bins=50)
    bottom.set(xlabel="predicted probability", ylabel="rows")
    plots["Calibration"] = _png(figure)
    return plots


def _class_plots(plt, y: np.ndarray, p: np.ndarray, class_names: list | None = None
                 ) -> dict[str, str]:
    """One ROC curve per class (the class against the rest; a class absent from ``y`` has
    none) and the confusion matrix, each row's share of its true class's rows."""
    from sklearn.metrics import auc, confusion_matrix, roc_curve

    classes = p.shape[1]
    names = [str(c) for c in class_names] if class_names else [str(c) for c in range(classes)]
    figure, axis = plt.subplots(figsize=(5, 4.5))
    for c in range(classes):
        if 0 < np.count_nonzero(y == c) < y.size:
            fpr, tpr, _ = roc_curve(y == c, p[:, c])
            axis.plot(fpr, tpr, lw=1, label=f"class {names[c]}: AUC {auc(fpr, tpr):.4f}")
    axis.plot([0, 1], [0, 1], "k--", lw=1)
    axis.set(title="ROC, each class against the rest", xlabel="false positive rate",
             ylabel="true positive rate")
    axis.legend(loc="lower right", fontsize="small")
    plots = {"ROC": _png(figure)}
    counts = confusion_matrix(y, p.argmax(axis=1), labels=np.arange(classes))
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    figure, axis = plt.subplots(figsize=(5, 4.5))
    image = axis.imshow(shares, vmin=0, vmax=1, cmap="Blues")
    figure.colorbar(image, ax=axis, label="share of the true class's rows")
    axis.set(title="confusion matrix", xlabel="predicted class", ylabel="true class",
             xticks=range(classes), yticks=range(classes), xticklabels=names,
             yticklabels=names)
    plots["Confusion matrix"] = _png(figure)
    return plots


def _cell(value: Any) -> str:
    """A table cell: a float to six significant digits, a large one (rows/s) in whole digits
    with thousands separators (1,947,450 rather than 1.94745e+06)."""
    if isinstance(value, float):
        return f"{value:,.0f}" if 1e5 <= abs(value) < 1e15 else f"{value:.6g}"
    return html.escape(str(value))


def _number(text: str) -> Any:
    """A CSV cell as the number it holds (an int, else a float), or as written: so a table of
    CSV rows shows figures as :func:`_cell` shows numbers."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def short(column: str) -> str:
        prefix, _, name = column.rpartition(" ")
        return f"{prefix} {SHORT.get(name, name)}".strip()

    head = "".join(f'<th title="{html.escape(c)}">{html.escape(short(c))}</th>'
                   for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_cell(r.get(c, ''))}</td>" for c in columns)
                   + "</tr>" for r in rows)
    return f'<div class="wide"><table><tr>{head}</tr>{body}</table></div>'


def _history_table(history: list[dict]) -> str:
    measured = _validation_names(history)
    rows = [{**{k: v for k, v in h.items() if k not in ("validation", "checks")},
             **{f"validation: {n}": v for n, v in (h.get("validation") or {}).items()}}
            for h in history]
    columns = ["epoch", "loss", "rows", "steps", "seconds", "rows_per_second",
               *(f"validation: {n}" for n in measured)]
    return _table(rows, [c for c in columns if any(c in r for r in rows)])


TUNE_PLOTS = {"optimization_history.png": "Optimization history",
              "param_importances.png": "Hyperparameter importance"}


def _tune_section(directory: Path) -> list[str]:
    """What ``fmkit tune`` left in ``MODEL_DIR/tune/``: the best trial, the ten best trials and
    the search's plots (none without a search)."""
    if not (directory / "trials.csv").exists():
        return []
    import csv
    import json

    best = json.loads((directory / "best.json").read_text())
    with open(directory / "trials.csv", newline="") as f:
        trials = [{name: _number(text) for name, text in row.items()}
                  for row in csv.DictReader(f) if row["value"]]
    trials.sort(key=lambda row: row["value"], reverse=best["higher_is_better"])
    parts = ["<h2>Hyperparameter search</h2>",
             f"<p>best of {len(trials)} measured trials: trial {best['trial']}, "
             f"{html.escape(best['objective'])} = {best['value']:.6g} at epoch {best['epoch']}"
             f"{' (refit on all rows)' if best['refit'] else ''}</p>",
             _table(trials[:10], list(trials[0]) if trials else []),
             '<div class="plots">']
    for name, title in TUNE_PLOTS.items():
        if (directory / name).exists():
            png = base64.b64encode((directory / name).read_bytes()).decode()
            parts.append(f'<figure><img alt="{title}" src="data:image/png;base64,{png}">'
                         f'<figcaption>{title}</figcaption></figure>')
    return [*parts, "</div>"]


def _stopped(where: Any) -> list[str]:
    """A sentence when the run was stopped on request (SIGTERM) before its epochs were done."""
    if not isinstance(where, dict):
        return []
    by, epoch, rows, step = (html.escape(str(where.get(name)))
                             for name in ("by", "epoch", "epoch_rows", "step"))
    return [f"<p><strong>Training was stopped by {by} in epoch {epoch}, after {rows} of its rows "
            f"(step {step}): this is the model trained so far.</strong></p>"]


def write_report(model_dir: str | Path, data: str | Path | None = None,
                 output: str | Path | None = None, fmt: str = "auto",
                 data_config: Sequence[str] = ()) -> Path:
    """Write the page (default ``MODEL_DIR/report.html``, under a temporary name renamed into
    place); with labelled ``data`` (read as ``data_config`` says: see
    :func:`fmkit.models.base.load_model`), its metrics and quality plots too. Returns its
    path."""
    plt = _pyplot()
    model = load_model(model_dir, data_config=data_config)
    metrics = artifact.read_metrics(model_dir)
    history = artifact.training_history(metrics)
    channels = {name: values for name, values in metrics.items()
                if name not in ("train", artifact.STOPPED) and isinstance(values, dict)}
    plots = {"Learning curves": _learning_curves(plt, history)} if history else {}
    sampled = ""
    if data is not None:
        measured = StreamingMetrics(model.predictor_type)
        sample = UniformSample(PLOT_ROWS, np.random.default_rng(0))
        for labels, logits in model.labelled_logits(model.read(data, fmt, labelled=True)):
            measured.add(labels, logits)
            sample.add(labels, logits)
        channels[f"data ({data})"] = require_rows(measured.result(), str(data))
        rows = sample.rows
        plots.update(_quality_plots(plt, model.predictor_type, *sample.result(),
                                    getattr(model, "classes", None)))
        if rows > PLOT_ROWS:
            sampled = f"<p>The plots are drawn from {PLOT_ROWS:,} of the data's {rows:,} rows, " \
                      "chosen at random; the metrics are of every row.</p>"
    names = sorted({n for values in channels.values() for n in values})
    parts = [f"<h1>fmkit model: {html.escape(str(model_dir))}</h1>",
             f"<p>{html.escape(model.predictor_type)}, {type(model).__name__}</p>",
             *_stopped(metrics.get(artifact.STOPPED)),
             "<h2>Metrics</h2>",
             _table([{"channel": c, **v} for c, v in channels.items()], ["channel", *names]),
             "<h2>Training history</h2>", _history_table(history)]
    parts += ['<h2>Plots</h2>', sampled, '<div class="plots">', *(
        f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{png}">'
        f'<figcaption>{html.escape(title)}</figcaption></figure>'
        for title, png in plots.items()), "</div>"]
    parts += _tune_section(artifact.resolve(model_dir) / artifact.TUNE_DIR)
    page = f"{PAGE_START}<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>"
    target = Path(output) if output else artifact.resolve(model_dir) / artifact.REPORT_FILE
    files.write_text(target, page, PAGES)
    return target
