"""Train, evaluate and predict from the CLI on real data (a9a, MovieLens 100k)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.datasets import dump_svmlight_file
from sklearn.metrics import accuracy_score, f1_score, log_loss, mean_squared_error, roc_auc_score

from .conftest import movielens_onehot, shared_file

# SageMaker's metric regexes (spec §5.3), applied to the training log
METRIC_REGEXES = {
    "test:binary_classification_accuracy":
        r"#quality_metric: host=\S+, test binary_classification_accuracy <score>=(\S+)",
    "test:binary_f_beta": r"#quality_metric: host=\S+, test binary_f_\S+ <score>=(\S+)",
    "test:binary_classification_cross_entropy":
        r"#quality_metric: host=\S+, test binary_classification_cross_entropy <loss>=(\S+)",
    "test:rmse": r"#quality_metric: host=\S+, test rmse <loss>=(\S+)",
}

A9A_HP = ["feature_dim=123", "num_factors=8", "predictor_type=binary_classifier", "epochs=5",
          "mini_batch_size=100", "bias_lr=0.01", "bias_wd=0", "linear_lr=0.003",
          "factors_lr=0.003", "linear_wd=0.001", "factors_wd=0.001"]


@pytest.fixture(scope="module")
def a9a_model(tmp_path_factory):
    import contextlib
    import io

    from fmkit.cli import main

    model_dir = tmp_path_factory.mktemp("a9a") / "model"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["train", "--train", str(shared_file("a9a_libsvm", "a9a")), "--test",
                     str(shared_file("a9a_libsvm", "a9a.t")), "--model-dir", str(model_dir),
                     *A9A_HP])
    assert code == 0, err.getvalue()
    return model_dir, err.getvalue()


def test_a9a_quality_from_independent_metrics(a9a_model, cli, tmp_path, capsys):
    model_dir, _ = a9a_model
    test_file = shared_file("a9a_libsvm", "a9a.t")
    out = tmp_path / "pred.jsonl"
    code, _, err = cli("predict", "--model-dir", model_dir, "--data", test_file, "--output", out)
    assert code == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    y = np.array([1 if line.split()[0] == "+1" else 0
                  for line in test_file.read_text().splitlines()])
    scores = np.array([r["score"] for r in rows])
    labels = np.array([r["predicted_label"] for r in rows])
    assert len(rows) == y.size == 16281
    np.testing.assert_array_equal(labels, (scores >= 0.5).astype(float))
    auc, acc = roc_auc_score(y, scores), accuracy_score(y, labels)
    assert auc >= 0.90 and acc >= 0.84

    code, stdout, _ = cli("evaluate", "--model-dir", model_dir, "--data", test_file)
    assert code == 0
    metrics = json.loads(stdout)
    assert metrics["rows"] == 16281
    assert metrics["auc"] == pytest.approx(auc, abs=1e-9)
    assert metrics["binary_classification_accuracy"] == pytest.approx(acc)
    assert metrics["binary_f_beta"] == pytest.approx(f1_score(y, labels))
    assert metrics["binary_classification_cross_entropy"] == pytest.approx(
        log_loss(y, scores), rel=1e-6)
    with capsys.disabled():
        print(f"\na9a test AUC {auc:.4f}, accuracy {acc:.4f}")


def test_a9a_training_log_and_metrics_file(a9a_model):
    import re

    model_dir, log = a9a_model
    found = {}
    for name, pattern in METRIC_REGEXES.items():
        match = re.search(pattern, log)
        if name != "test:rmse":
            assert match, name
            found[name] = float(match.group(1))
    assert "epoch 5/5: train loss" in log and "ordered by label" not in log
    saved = json.loads((model_dir / "metrics.json").read_text())
    assert len(saved["train"]) == 5 and saved["train"][-1]["rows"] == 32561
    assert saved["test"]["binary_classification_accuracy"] == found[
        "test:binary_classification_accuracy"]
    meta = json.loads((model_dir / "model.json").read_text())
    assert meta["feature_dim"] == 123 and meta["index_base"] == 1
    assert meta["fmkit_version"] and meta["hyperparameters"]["epochs"] == 5


def test_movielens_100k_regression_rmse(cli, tmp_path, capsys):
    X, y = movielens_onehot("ua.base")
    Xt, yt = movielens_onehot("ua.test")
    train, test = tmp_path / "ua.base.libsvm", tmp_path / "ua.test.libsvm"
    dump_svmlight_file(X, y, str(train), zero_based=True)
    dump_svmlight_file(Xt, yt, str(test), zero_based=True)
    code, _, err = cli("train", "--train", train, "--test", test, "--model-dir", tmp_path / "m",
                       "feature_dim=2625", "num_factors=64", "predictor_type=regressor",
                       "epochs=15", "mini_batch_size=100", "bias_lr=0.01", "bias_wd=0",
                       "linear_lr=0.002", "factors_lr=0.002", "linear_wd=0.001",
                       "factors_wd=0.002", "factors_init_sigma=0.01")
    assert code == 0, err
    import re

    logged = float(re.search(METRIC_REGEXES["test:rmse"], err).group(1))
    code, stdout, _ = cli("predict", "--model-dir", tmp_path / "m", "--data", test)
    predictions = np.array([json.loads(line)["score"] for line in stdout.splitlines()])
    assert all("predicted_label" not in line for line in stdout.splitlines()[:5])
    rmse = float(np.sqrt(mean_squared_error(yt, predictions)))
    with capsys.disabled():
        print(f"\nMovieLens 100k ua.test RMSE: {rmse:.4f} (fmkit logged {logged:.4f})")
    assert rmse == pytest.approx(logged, rel=1e-6)
    assert rmse <= 0.93


def test_csv_channel_and_directory_channel(cli, tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 5))
    y = X @ np.array([1.0, -2.0, 0.5, 0.0, 3.0]) + 0.5 * X[:, 0] * X[:, 1] + 1.0
    channel = tmp_path / "train"
    channel.mkdir()
    for part in range(3):
        rows = slice(part * 1000, (part + 1) * 1000)
        np.savetxt(channel / f"part-{part}.csv", np.column_stack([y[rows], X[rows]]),
                   delimiter=",", fmt="%.8g")
    (channel / ".amazon.manifest").write_text("ignored")
    code, _, err = cli("train", "--train", channel, "--test", channel / "part-2.csv",
                       "--model-dir", tmp_path / "m", "feature_dim=5", "num_factors=4",
                       "predictor_type=regressor", "epochs=30", "mini_batch_size=50",
                       "bias_lr=0.05", "linear_lr=0.05", "factors_lr=0.05", "bias_wd=0",
                       "linear_wd=0", "factors_wd=0", "factors_init_sigma=0.1")
    assert code == 0, err
    assert "over 3000 rows" in err
    code, stdout, _ = cli("evaluate", "--model-dir", tmp_path / "m", "--data",
                          channel / "part-2.csv")
    assert json.loads(stdout)["rmse"] < 0.1 * np.std(y)


# early_stopping_metric -> (metrics.json key, higher is better, the metric computed by sklearn)
WATCHED = {
    "auc": ("auc", True, roc_auc_score),
    "logloss": ("binary_classification_cross_entropy", False, log_loss),
    "validation:binary_classification_accuracy": (
        "binary_classification_accuracy", True, lambda y, s: accuracy_score(y, s >= 0.5)),
    "f1": ("binary_f_beta", True, lambda y, s: f1_score(y, s >= 0.5)),
    "rmse": ("rmse", False, lambda y, s: mean_squared_error(y, s) ** 0.5),
}


@pytest.mark.parametrize("metric, device", [(m, "cpu") for m in WATCHED]
                         + [(m, "cpu:0") for m in WATCHED])
def test_early_stopping_on_each_metric_keeps_the_best_epoch(cli, tmp_path, metric, device):
    """A tiny noisy training set overfits; training stops `early_stopping_patience` epochs
    after the best epoch of the chosen metric and keeps that epoch's weights: the same as a
    run stopped at that epoch, with the validation metric sklearn computes from them. Every
    metric on the compiled kernels (``cpu``); three on the PyTorch device path (``cpu:0``,
    PyTorch's CPU), which shares the metric table and the EarlyStopping callback."""
    from fmkit.models.fm.planted import planted_ctr

    key, higher_is_better, sklearn_metric = WATCHED[metric]
    predictor = "regressor" if metric == "rmse" else "binary_classifier"
    data = planted_ctr(6000, [300, 200, 100], seed=5)
    train, valid = data.split(1000)
    train_file, valid_file = tmp_path / "train.libsvm", tmp_path / "valid.libsvm"
    dump_svmlight_file(train.X, train.y, str(train_file), zero_based=True)
    dump_svmlight_file(valid.X, valid.y, str(valid_file), zero_based=True)
    hp = ["--index-base", "0", "--device", device, "feature_dim=600", "num_factors=16",
          f"predictor_type={predictor}",
          "mini_batch_size=10", "bias_lr=0.05", "linear_lr=0.05", "factors_lr=0.05",
          "linear_wd=0", "factors_wd=0", "factors_init_sigma=0.1"]
    code, _, err = cli("train", "--train", train_file, "--validation", valid_file,
                       "--model-dir", tmp_path / "m", *hp, "epochs=60",
                       "early_stopping_patience=2", f"early_stopping_metric={metric}")
    assert code == 0, err
    history = json.loads((tmp_path / "m" / "metrics.json").read_text())["train"]
    values = np.array([h["validation"][key] for h in history])
    best = int(np.argmax(values) if higher_is_better else np.argmin(values))
    assert len(history) < 60 and len(history) == best + 1 + 2  # stopped 2 epochs after the best
    assert f"early stopping after epoch {len(history)}" in err
    assert f"epoch=1, validation {'binary_f_1.000' if key == 'binary_f_beta' else key} <" in err
    code, out, _ = cli("predict", "--model-dir", tmp_path / "m", "--data", valid_file)
    kept = np.array([json.loads(line)["score"] for line in out.splitlines()])
    assert sklearn_metric(valid.y, kept) == pytest.approx(values[best], rel=1e-5)
    code, _, err = cli("train", "--train", train_file, "--model-dir", tmp_path / "stopped", *hp,
                       f"epochs={best + 1}")
    assert code == 0, err
    code, out, _ = cli("predict", "--model-dir", tmp_path / "stopped", "--data", valid_file)
    stopped = np.array([json.loads(line)["score"] for line in out.splitlines()])
    np.testing.assert_allclose(kept, stopped, rtol=1e-6)


@pytest.mark.parametrize("device", ["cpu", "cpu:0"])
def test_validation_every_n_steps_keeps_the_best_step(cli, tmp_path, device):
    """``validation_every_steps=30`` at 100 mini-batches an epoch measures at steps 30, 60, 90,
    100 (the epoch's end), 120...; training stops (inside an epoch too)
    ``early_stopping_patience`` measurements after the best one and keeps its weights: those
    of a run stopped at that step (through the engine's ``max_steps``), with the AUC
    scikit-learn computes from them."""
    from fmkit.data.sources import FileSource
    from fmkit.jobs.training import with_starting_point
    from fmkit.models.fm.device import resolve_device
    from fmkit.models.fm.hyperparameters import validate
    from fmkit.models.fm.parameters import reference_logits, sigmoid
    from fmkit.models.fm.planted import planted_ctr
    from fmkit.train.engine import fit
    from fmkit.train.kernel_learner import fm_learner

    train, valid = planted_ctr(6000, [300, 200, 100], seed=5).split(1000)
    train_file, valid_file = tmp_path / "train.libsvm", tmp_path / "valid.libsvm"
    dump_svmlight_file(train.X, train.y, str(train_file), zero_based=True)
    dump_svmlight_file(valid.X, valid.y, str(valid_file), zero_based=True)
    hp = {"feature_dim": 600, "num_factors": 16, "predictor_type": "binary_classifier",
          "mini_batch_size": 10, "bias_lr": 0.05, "linear_lr": 0.05, "factors_lr": 0.05,
          "linear_wd": 0, "factors_wd": 0, "factors_init_sigma": 0.1}
    code, _, err = cli("train", "--train", train_file, "--validation", valid_file,
                       "--model-dir", tmp_path / "m", "--index-base", "0", "--device", device,
                       *(f"{k}={v}" for k, v in hp.items()), "epochs=60",
                       "early_stopping_patience=3", "validation_every_steps=30")
    assert code == 0, err
    history = json.loads((tmp_path / "m" / "metrics.json").read_text())["train"]
    measured = [(c["step"], c["auc"]) for h in history for c in h["checks"]]
    measured += [(h["steps"], h["validation"]["auc"]) for h in history]
    steps, aucs = zip(*sorted(measured))
    expected = sorted({s for s in range(30, steps[-1] + 1) if s % 30 == 0 or s % 100 == 0})
    assert history[-1]["steps"] % 30 == 0 or history[-1]["steps"] % 100 == 0
    assert list(steps) == expected and len(history) < 60
    best = int(np.argmax(aucs))
    assert len(steps) == best + 1 + 3  # three measurements after the best one
    code, out, _ = cli("predict", "--model-dir", tmp_path / "m", "--data", valid_file)
    kept = np.array([json.loads(line)["score"] for line in out.splitlines()])
    assert roc_auc_score(valid.y, kept) == pytest.approx(aucs[best], rel=1e-6)
    source = FileSource(train_file, "libsvm", 600, 0, labels="binary")
    hp = with_starting_point(validate(hp), source)  # the run's start (the auto bias)
    learner = fm_learner(hp, device=device if device == "cpu" else resolve_device(device),
                         pause_every=1)
    fit(learner, source, epochs=None, seed=hp["seed"], max_steps=steps[best])
    stopped = sigmoid(reference_logits(learner.parameters(0), valid.X))
    np.testing.assert_allclose(kept, stopped, rtol=1e-5)


def test_early_stopping_metric_must_be_one_the_predictor_computes(cli, tmp_path):
    code, _, err = cli("train", "--train", tmp_path / "none", "--model-dir", tmp_path / "m",
                       "feature_dim=4", "num_factors=2", "predictor_type=regressor",
                       "early_stopping_metric=auc")
    assert code == 1
    assert "early_stopping_metric: 'auc' is not a metric of a regressor; expected one of rmse" \
        in err


def test_hyperparameters_may_come_between_options(cli, tmp_path, capsys):
    """NAME=VALUE words after an option are hyperparameters as those before it are (argparse
    left them over as "unrecognized arguments"); an unknown option is still refused."""
    data = shared_file("a9a_libsvm", "a9a.t")
    code, _, err = cli("train", "--train", data, "feature_dim=123", "--model-dir",
                       tmp_path / "m", "num_factors=3", "--index-base", "1",
                       "predictor_type=binary_classifier", "mini_batch_size=500", "--quiet")
    assert code == 0, err
    hp = json.loads((tmp_path / "m" / "model.json").read_text())["hyperparameters"]
    assert (hp["num_factors"], hp["mini_batch_size"]) == (3, 500)
    code, _, err = cli("evaluate", "--model-dir", tmp_path / "m", "--data", data, "--set",
                       "data_config.delimiter=,")  # (a DeepFM's option)
    assert code == 1 and err.startswith("fmkit: error: 'data_config.delimiter=,' (--set, ") \
        and "changes how a DeepFM reads its files" in err, err
    code, _, err = cli("predict", "--model-dir", tmp_path / "m", "--data", data, "--batch_size",
                       "64")  # (tzrec.predict's option: named as given)
    assert code == 1 and err.startswith("fmkit: error: 'data_config.batch_size=64' (--set, or "
                                        "tzrec.predict's --batch_size"), err
    with pytest.raises(SystemExit) as exited:
        cli("train", "--train", data, "feature_dim=123", "--bogus", "num_factors=3")
    assert exited.value.code == 2
    assert capsys.readouterr().err == ("fmkit train: error: unrecognized arguments: --bogus "
                                       "(see fmkit train --help)\n")


def test_a_command_line_mistake_is_one_line_and_exit_2(capsys):
    """argparse's mistakes (a bad value, an unknown choice, a missing command) are one line
    naming the command's --help, not its whole usage first; exit 2 as argparse's."""
    from fmkit.cli import main

    for argv, line in (
            (["train", "--nproc", "x"], "fmkit train: error: argument --nproc: invalid int "
                                        "value: 'x' (see fmkit train --help)"),
            (["convert", "--to", "csv", "a", "b"], "fmkit convert: error: argument --to: "
                                                   "invalid choice: 'csv' (choose from "
                                                   "'recordio', 'libsvm') (see fmkit convert "
                                                   "--help)"),
            ([], "fmkit: error: the following arguments are required: COMMAND (see fmkit "
                 "--help)")):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2
        assert capsys.readouterr().err == line + "\n"


def test_undefined_metric_is_null_in_strict_json(cli, tmp_path):
    """AUC of a one-class test channel is undefined: null, never NaN, in every JSON output."""
    train, test = tmp_path / "train.libsvm", tmp_path / "test.libsvm"
    train.write_text("1 0:1\n0 1:1\n1 2:1\n")
    test.write_text("0 0:1\n0 1:1\n")
    args = ["--index-base", "0", "feature_dim=3", "num_factors=2",
            "predictor_type=binary_classifier"]
    code, _, err = cli("train", "--train", train, "--test", test, "--model-dir", tmp_path / "m",
                       *args)
    assert code == 0, err

    def reject(constant):
        raise ValueError(f"not strict JSON: {constant}")

    saved = json.loads((tmp_path / "m" / "metrics.json").read_text(), parse_constant=reject)
    assert saved["test"]["auc"] is None and saved["test"]["rows"] == 2
    code, out, _ = cli("evaluate", "--model-dir", tmp_path / "m", "--data", test)
    assert json.loads(out, parse_constant=reject)["auc"] is None


def test_the_model_does_not_depend_on_the_thread_count(tmp_path, monkeypatch):
    """Mini-batches train exactly on one thread, and the data order does not depend on how
    many threads parsed the file (each parses its own part of a block): a9a trained from its
    file with 1 and 2 threads, its blocks parsed in 1 and 3 parts, gives the same weights, bit
    for bit."""
    import numba

    from fmkit.data import libsvm
    from fmkit.jobs.fm import train_files
    from fmkit.models.fm.hyperparameters import validate

    hp = validate({"feature_dim": 123, "num_factors": 4, "epochs": 2, "mini_batch_size": 100,
                   "predictor_type": "binary_classifier"})
    before = numba.get_num_threads()
    models = []
    try:
        for threads, parts in ((1, 1), (min(2, numba.config.NUMBA_NUM_THREADS), 3)):
            numba.set_num_threads(threads)
            monkeypatch.setattr(libsvm, "thread_count", lambda parts=parts: parts)
            model, _ = train_files(hp, shared_file("a9a_libsvm", "a9a"),
                                   tmp_path / f"model-{threads}-{parts}", progress=False)
            models.append(model.params)
    finally:
        numba.set_num_threads(before)
    for one, two in zip((models[0].w0, models[0].w, models[0].V),
                        (models[1].w0, models[1].w, models[1].V)):
        np.testing.assert_array_equal(one, two)


def _guessed_totals(err: str, epoch: str) -> list[int]:
    """The totals a run's progress lines gave for ``epoch`` ("epoch 1/1: N of about M rows")."""
    return [int(line.split(" of about ")[1].split(" rows")[0]) for line in err.splitlines()
            if f"{epoch}: " in line and " of about " in line]


def test_a_single_epoch_over_a_channel_of_files_logs_its_guessed_size(cli, tmp_path,
                                                                      monkeypatch):
    """SageMaker's default of one epoch over a directory of files: the progress lines (every
    interval, here every step) show the rows the epoch will train, guessed from the bytes read:
    within 5% of the rows Python counts in the files."""
    from fmkit.train.callbacks import Progress

    monkeypatch.setattr(Progress, "LOG_EVERY", 0.0)
    lines = shared_file("a9a_libsvm", "a9a").read_text().splitlines(keepends=True)
    (tmp_path / "train").mkdir()
    for i in range(8):
        (tmp_path / "train" / f"part-{i}").write_text("".join(lines[i::8]))
    code, _, err = cli("train", "--train", tmp_path / "train", "--model-dir", tmp_path / "m",
                       "feature_dim=123", "num_factors=4", "predictor_type=binary_classifier")
    assert code == 0, err
    totals = _guessed_totals(err, "epoch 1/1")
    assert totals and all(abs(t - len(lines)) <= 0.05 * len(lines) for t in totals), err


def test_training_rows_sorted_by_label_are_said_once(cli, tmp_path):
    """a9a's negatives then its positives: training shuffles within chunks only, so the model
    learns one label after the other (its test accuracy falls to the negatives' share);
    the run says so once, naming the file, and still trains; a9a as it is says nothing (see
    test_a9a_training_log_and_metrics_file)."""
    lines = shared_file("a9a_libsvm", "a9a").read_text().splitlines(keepends=True)
    sorted_rows = tmp_path / "sorted.svm"
    sorted_rows.write_text("".join(sorted(lines, key=lambda line: line.startswith("+1"))))
    code, _, err = cli("train", "--train", sorted_rows, "--model-dir", tmp_path / "m",
                       "feature_dim=123", "num_factors=4", "predictor_type=binary_classifier",
                       "epochs=2")
    assert code == 0, err
    said = [line for line in err.splitlines() if "ordered by label" in line]
    assert len(said) == 1 and f"{sorted_rows}: the training rows come ordered by label" in said[0]
    assert (tmp_path / "m" / "weights.npz").exists()
