"""``fmkit report``: every plot is a real embedded PNG with something drawn on it, and every
figure of its tables is the one ``metrics.json`` holds (and the data's metrics are
scikit-learn's)."""

from __future__ import annotations

import base64
import io
import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from matplotlib.image import imread
from sklearn.metrics import roc_auc_score

from fmkit.models.base import Model, load_model

from .conftest import REPO, shared_file


class Page(HTMLParser):
    """The tables (rows of cell texts, header titles first) and images of a page."""

    def __init__(self, text: str):
        super().__init__()
        self.tables, self.images, self._cell = [], [], None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = attrs.get("title", "") if tag == "th" else ""
            self._header = tag == "th"
        elif tag == "img":
            self.images.append(attrs["src"])

    def handle_data(self, data):
        if self._cell is not None and not self._header:
            self._cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append(self._cell.strip())
            self._cell = None

    def records(self, index: int) -> list[dict[str, str]]:
        header, *rows = self.tables[index]
        return [dict(zip(header, row)) for row in rows]


def _check_page(model_dir, plots: int) -> tuple[Page, dict]:
    page = Page((model_dir / "report.html").read_text())
    assert len(page.images) == plots
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1])
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        pixels = imread(io.BytesIO(png))
        assert pixels.shape[0] > 200 and pixels.shape[1] > 200
        assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 20  # drawn on
    metrics = json.loads((model_dir / "metrics.json").read_text())
    history = page.records(1)
    assert len(history) == len(metrics["train"])
    for shown, saved in zip(history, metrics["train"]):
        for name, value in saved.items():
            if name == "checks":
                continue  # (measurements within an epoch: points of the learning curve)
            if name == "validation":
                for metric, v in (value or {}).items():
                    if metric == "rows":
                        continue  # (the validation channel's size: not a column)
                    assert float(shown[f"validation: {metric}"]) == pytest.approx(v, rel=1e-5)
            else:  # (rows/s in whole digits, with thousands separators)
                assert float(shown[name].replace(",", "")) == pytest.approx(value, rel=1e-5), name
    channels = {row["channel"]: row for row in page.records(0)}
    for channel, values in metrics.items():
        if channel != "train":
            for name, value in values.items():
                assert float(channels[channel][name]) == pytest.approx(value, rel=1e-5)
    return page, channels


def test_report_of_an_fm_with_validation_and_test_data(tmp_path, cli):
    a9a, a9a_t = shared_file("a9a_libsvm", "a9a"), shared_file("a9a_libsvm", "a9a.t")
    code, _, err = cli("train", "--train", a9a, "--validation", a9a_t, "--model-dir",
                       tmp_path / "m", "--quiet", "feature_dim=124", "num_factors=4",
                       "predictor_type=binary_classifier", "epochs=3", "mini_batch_size=100",
                       "validation_every_steps=150")
    assert code == 0, err
    code, _, err = cli("report", "--model-dir", tmp_path / "m", "--data", a9a_t, "--quiet")
    assert code == 0, err
    _, channels = _check_page(tmp_path / "m", plots=4)  # curves, ROC, PR, calibration
    assert isinstance(load_model(tmp_path / "m"), Model)  # the declared model interface
    y = np.array([1 if line.split()[0] == "+1" else 0 for line in a9a_t.open()])
    code, out, _ = cli("predict", "--model-dir", tmp_path / "m", "--data", a9a_t)
    scores = [json.loads(line)["score"] for line in out.splitlines()]
    data_auc = float(next(row for name, row in channels.items() if name.startswith("data"))
                     ["auc"])
    assert data_auc == pytest.approx(roc_auc_score(y, scores), rel=1e-5)


def test_the_plots_rows_are_a_uniform_sample_of_the_stream_of_blocks():
    """The plots of a large channel draw from rows chosen at random while the blocks stream
    by (1-d labels with 2-d class logits, empty blocks): each sampled row is one row of the
    blocks joined, its columns together, in order, none twice; over 2,000 seeds every row is
    chosen as often as any other (a binomial count, within 5.6 standard deviations)."""
    from fmkit.data.sampling import UniformSample

    sizes = (5, 0, 17, 1, 0, 40, 37)
    labels = np.arange(sum(sizes), dtype=np.float64)
    logits = np.stack([labels * 10, labels * 10 + 1, labels * 10 + 2], axis=1)
    starts = np.cumsum((0, *sizes))
    counts = np.zeros(labels.size)
    for seed in range(2000):
        sample = UniformSample(20, np.random.default_rng(seed))
        for a, b in zip(starts[:-1], starts[1:]):
            sample.add(labels[a:b], logits[a:b])
        chosen, their_logits = sample.result()
        assert sample.rows == 100 and chosen.size == 20
        assert np.all(np.diff(chosen) > 0)  # in order, none twice
        np.testing.assert_array_equal(their_logits, logits[chosen.astype(int)])
        counts[chosen.astype(int)] += 1
    assert np.all(np.abs(counts - 400) < 100), counts
    whole = UniformSample(1000, np.random.default_rng(0))
    whole.add(labels, logits)
    np.testing.assert_array_equal(whole.result()[0], labels)  # fewer rows than the size: all


def test_a_large_channels_plots_are_drawn_from_a_sample_its_metrics_from_every_row(
        tmp_path, cli, monkeypatch):
    """Memory bounded by the model: a test channel of more than PLOT_ROWS rows is plotted from
    that many rows chosen at random (the page says so); its metrics stay every row's
    (scikit-learn's AUC of fmkit predict's scores)."""
    from fmkit import report

    monkeypatch.setattr(report, "PLOT_ROWS", 1000)
    a9a, a9a_t = shared_file("a9a_libsvm", "a9a"), shared_file("a9a_libsvm", "a9a.t")
    code, _, err = cli("train", "--train", a9a, "--model-dir", tmp_path / "m", "--quiet",
                       "feature_dim=124", "num_factors=4", "predictor_type=binary_classifier")
    assert code == 0, err
    code, _, err = cli("report", "--model-dir", tmp_path / "m", "--data", a9a_t, "--quiet")
    assert code == 0, err
    _, channels = _check_page(tmp_path / "m", plots=4)  # curves, ROC, PR, calibration
    assert ("The plots are drawn from 1,000 of the data's 16,281 rows, chosen at random"
            in (tmp_path / "m" / "report.html").read_text())
    y = np.array([1 if line.split()[0] == "+1" else 0 for line in a9a_t.open()])
    code, out, _ = cli("predict", "--model-dir", tmp_path / "m", "--data", a9a_t)
    scores = [json.loads(line)["score"] for line in out.splitlines()]
    data_auc = float(next(row for name, row in channels.items() if name.startswith("data"))
                     ["auc"])
    assert data_auc == pytest.approx(roc_auc_score(y, scores), rel=1e-5)


def test_report_of_the_criteo_deepfm_example(tmp_path, cli):
    train = shared_file("criteo_kaggle_head1000", "train.txt")
    code, _, err = cli("train", "--config", REPO / "examples" / "deepfm_criteo.yaml", "--quiet",
                       "--set", f"train_input_path={train}", "--set", f"eval_input_path={train}",
                       "--set", f"model_dir={tmp_path / 'd'}",
                       "--set", "train_config.num_epochs=2",
                       "--set", "train_config.early_stopping_patience=2")
    assert code == 0, err
    output = tmp_path / "elsewhere.html"
    code, _, err = cli("report", "--model-dir", tmp_path / "d", "--output", output, "--quiet")
    assert code == 0, err
    assert not (tmp_path / "d" / "report.html").exists()
    output.rename(tmp_path / "d" / "report.html")
    _check_page(tmp_path / "d", plots=1)  # learning curves only: no --data
    assert isinstance(load_model(tmp_path / "d"), Model)


def test_report_of_a_several_class_deepfm_from_its_estimator(tmp_path, cli, monkeypatch):
    """A softmax DeepFM's page (it was a traceback: a binary ROC of several classes): one
    ROC per class against the rest and the confusion matrix, named by the estimator's class
    names; its data's accuracy is scikit-learn's on the predicted class. The estimator saved
    ``y``'s name as the label column, so a file with a header is evaluated without
    configuration."""
    import pandas as pd
    from sklearn.metrics import accuracy_score

    from fmkit import DeepFMClassifier
    from fmkit import report as reports

    rng = np.random.default_rng(2)
    X = pd.DataFrame({"user": rng.integers(0, 30, 2000).astype(str),
                      "item": rng.integers(0, 20, 2000).astype(str)})
    y = pd.Series(np.array(["cat", "dog", "eel"])[X["item"].astype(int) % 3], name="kind")
    DeepFMClassifier(num_epochs=2).fit(X[:1500], y[:1500]).save(tmp_path / "m")
    held = tmp_path / "held.csv"
    X[1500:].assign(kind=y[1500:]).to_csv(held, index=False)
    shown, png = [], reports._png

    def recorded(figure):  # the texts each plot shows: legend entries and tick labels
        shown.extend(t.get_text() for axis in figure.axes for t in [
            *(axis.get_legend().get_texts() if axis.get_legend() else []),
            *axis.get_xticklabels()])
        return png(figure)

    monkeypatch.setattr(reports, "_png", recorded)
    code, _, err = cli("report", "--model-dir", tmp_path / "m", "--data", held, "--quiet")
    assert code == 0, err
    assert {"cat", "dog", "eel"} <= set(shown)
    assert any(text.startswith("class dog: AUC") for text in shown), shown
    page, channels = _check_page(tmp_path / "m", plots=3)  # curves, ROC, confusion matrix
    code, out, _ = cli("predict", "--model-dir", tmp_path / "m", "--data", held)
    predicted = [json.loads(line)["predicted_label"] for line in out.splitlines()]
    row = next(row for name, row in channels.items() if name.startswith("data"))
    assert float(row["multiclass_accuracy"]) == pytest.approx(
        accuracy_score(y[1500:], predicted), rel=1e-6)
    unlabelled = tmp_path / "features.csv"  # a header naming the features only: scored alike
    X[1500:].to_csv(unlabelled, index=False)
    code, again, err = cli("predict", "--model-dir", tmp_path / "m", "--data", unlabelled)
    assert code == 0 and again == out, err


def test_report_of_a_directory_that_is_not_a_model_is_one_line(tmp_path, cli):
    code, _, err = cli("report", "--model-dir", tmp_path)
    assert code == 1 and err.startswith("fmkit: error:") and len(err.splitlines()) == 1
    assert re.search("model", err)


def test_report_of_a_run_stopped_by_sigterm_says_so(tmp_path, cli):
    """A model written when SIGTERM stopped its training (``metrics.json`` ``stopped``, as
    ``tests/test_checkpoints.py`` makes them): the page says where it stopped, and the record
    is not shown as a channel of metrics."""
    a9a = shared_file("a9a_libsvm", "a9a")
    code, _, err = cli("train", "--train", a9a, "--model-dir", tmp_path / "m", "--quiet",
                       "feature_dim=124", "num_factors=4", "predictor_type=binary_classifier",
                       "epochs=2", "mini_batch_size=100")
    assert code == 0, err
    path = tmp_path / "m" / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics["stopped"] = {"by": "SIGTERM", "epoch": 2, "epoch_rows": 12300, "step": 449}
    path.write_text(json.dumps(metrics))
    code, _, err = cli("report", "--model-dir", tmp_path / "m", "--data",
                       shared_file("a9a_libsvm", "a9a.t"), "--quiet")
    assert code == 0, err
    text = (tmp_path / "m" / "report.html").read_text()
    assert ("Training was stopped by SIGTERM in epoch 2, after 12300 of its rows (step 449)"
            in text)
    assert [row["channel"] for row in Page(text).records(0)] == [
        f"data ({shared_file('a9a_libsvm', 'a9a.t')})"]
