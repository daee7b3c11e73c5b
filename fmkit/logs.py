"""Log set-up and SageMaker-style metric lines.

Lines look like SageMaker's first-party algorithms' (``[MM/DD/YYYY HH:MM:SS INFO thread] ...``) and
metric lines use their exact wording, so AWS-style ``MetricDefinitions`` regexes match, e.g.
``#quality_metric: host=algo-1, test rmse <loss>=0.93``.
"""

from __future__ import annotations

import functools
import logging
import sys

log = logging.getLogger("fmkit")
# advice on a finished run (what to try next): silenced where the runs are not the user's own
# (``fmkit tune``'s trials)
advice = logging.getLogger("fmkit.advice")

# Metric lines must reach the log even with --quiet (which keeps warnings only), so they get a
# level of their own between INFO and WARNING, printed as INFO like SageMaker's.
METRIC = 25
logging.addLevelName(METRIC, "INFO")

DEFAULT_HOST = "algo-1"

# metric name -> (wording in the log line, <loss> or <score>)
_QUALITY = {
    "rmse": ("rmse", "loss"),
    "binary_classification_accuracy": ("binary_classification_accuracy", "score"),
    "binary_classification_cross_entropy": ("binary_classification_cross_entropy", "loss"),
    "binary_f_beta": ("binary_f_1.000", "score"),
    "auc": ("auc", "score"),
    "normalized_entropy": ("normalized_entropy", "loss"),  # (when a DeepFM configures it)
}


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted (pytest, notebooks and
    ``contextlib.redirect_stderr`` replace it; a handler bound to an old stream would write to
    a closed file)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


@functools.cache
def log_once(message: str, level: int = logging.INFO) -> None:
    """Log ``message`` once per process: a file's reading is repeated every epoch, and a
    model's note on how it scores every request; the line is not."""
    log.log(level, "%s", message)


def setup_logging(quiet: bool = False) -> None:
    """Log fmkit's messages to stderr in SageMaker's format (warnings only when ``quiet``)."""
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(
        "[%(asctime)s %(levelname)s %(thread)d] %(message)s", datefmt="%m/%d/%Y %H:%M:%S"
    ))
    log.handlers[:] = [handler]
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False


def metric_lines(channel: str, metrics: dict[str, float], host: str = DEFAULT_HOST,
                 epoch: int | None = None) -> list[str]:
    """``#test_score`` and ``#quality_metric`` lines for each metric of a channel; with an
    ``epoch`` (a validation channel scored during training), the ``#quality_metric`` lines
    only, with ``epoch=N`` as SageMaker's algorithms write it."""
    lines = []
    when = "" if epoch is None else f"epoch={epoch}, "
    for name, (wording, kind) in _QUALITY.items():
        if name in metrics:
            value = metrics[name]
            if epoch is None:
                lines.append(f"#{channel}_score ({host}) : ({name!r}, {value!r})")
            lines.append(f"#quality_metric: host={host}, {when}{channel} {wording} "
                         f"<{kind}>={value!r}")
    return lines


def log_metrics(channel: str, metrics: dict[str, float], host: str = DEFAULT_HOST,
                epoch: int | None = None) -> None:
    for line in metric_lines(channel, metrics, host, epoch):
        log.log(METRIC, "%s", line)
