"""``fmkit tune``: the search's outputs checked against scikit-learn on the validation rows
the test splits off itself, resuming after SIGKILL, and two trials at once with ``--jobs 2``."""

from __future__ import annotations

import csv
import gzip
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from contextlib import closing
from datetime import datetime

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fmkit.models.base import load_model
from fmkit.models.fm.hyperparameters import MCMC_EPOCHS

from .conftest import REPO, fmkit_executable, shared_file

optuna = pytest.importorskip("optuna")  # the test extra installs it: never skipped in CI

# the optimizer fixed: each update rule's kernels compile on first use (seconds each with an
# empty compile cache, as in CI); the session's warm-up compiled Adam's
FIXED = ["feature_dim=123", "predictor_type=binary_classifier", "optimizer=adam", "epochs=4"]


@pytest.fixture(scope="module")
def a9a_head(tmp_path_factory):
    """The first 4,000 rows of a9a: trials of a few tens of milliseconds."""
    path = tmp_path_factory.mktemp("tune") / "a9a.head"
    path.write_text("".join(shared_file("a9a_libsvm", "a9a").read_text().splitlines(True)[:4000]))
    return path


def _trials(model_dir):
    with open(model_dir / "tune" / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


def _validation_auc(a9a_head, tmp_path, model) -> float:
    """scikit-learn's AUC of ``model`` on the last 10% of ``a9a_head``'s rows."""
    lines = a9a_head.read_text().splitlines()
    validation = tmp_path / "validation.libsvm"
    validation.write_text("\n".join(lines[3600:]) + "\n")
    y = np.array([line.split()[0] == "+1" for line in lines[3600:]])
    scores = model.predictions(next(model.read(validation, "libsvm", labelled=False)))["score"]
    return roc_auc_score(y, scores)


def test_tune_writes_the_best_trials_model_and_its_table(a9a_head, tmp_path, cli, monkeypatch):
    model_dir = tmp_path / "model"
    user_cache = tmp_path / "user-cache"  # the user's parsed-file cache: tune leaves none
    monkeypatch.setenv("FMKIT_CACHE_DIR", str(user_cache))
    code, _, err = cli("tune", "--train", a9a_head, "--validation-fraction", "0.1",
                       "--objective", "validation:auc", "--trials", "6", "--jobs", "1",
                       "--model-dir", model_dir, *FIXED)
    assert code == 0, err
    trials = _trials(model_dir)
    finished = [t for t in trials if t["state"] in ("COMPLETE", "PRUNED")]
    assert len(finished) == 6
    complete = [t for t in trials if t["state"] == "COMPLETE"]
    best = max(complete, key=lambda t: float(t["value"]))
    saved = json.loads((model_dir / "tune" / "best.json").read_text())
    assert saved["trial"] == int(best["number"])
    # the model carries the best trial's settings...
    model = load_model(model_dir)
    hp = model.hyperparameters
    assert (hp["optimizer"], hp["num_factors"], hp["mini_batch_size"]) == (
        "adam", int(best["num_factors"]), int(best["mini_batch_size"]))  # adam: fixed
    for group in ("bias", "linear", "factors"):  # one searched rate and decay for all three
        assert hp[f"{group}_lr"] == pytest.approx(float(best["learning_rate"]))
        assert hp[f"{group}_wd"] == pytest.approx(float(best["weight_decay"]))
    # ...and the objective is the AUC of the file's last 10% of rows, as scikit-learn scores
    assert _validation_auc(a9a_head, tmp_path, model) == pytest.approx(float(best["value"]),
                                                                       abs=0.01)
    assert not (tmp_path / "model.tuning").exists()  # the work directory is gone
    assert not user_cache.exists() or not list(user_cache.iterdir())  # with its cache
    assert (model_dir / "tune" / "optimization_history.png").stat().st_size > 1000
    code, _, err = cli("report", "--model-dir", model_dir)
    assert code == 0, err
    page = (model_dir / "report.html").read_text()
    assert "Hyperparameter search" in page and "param_importances" not in page  # embedded
    # the search's table: the best trials first, each figure the CSV's (to six digits)
    from .test_report import Page

    shown = Page(page).records(2)
    ranked = sorted(complete, key=lambda t: float(t["value"]), reverse=True)
    assert [row["number"] for row in shown] == [t["number"] for t in ranked][: len(shown)]
    for row, trial in zip(shown, ranked):
        for name, text in trial.items():
            try:
                number = float(text)
            except ValueError:
                assert row[name] == text, name
                continue
            assert float(row[name].replace(",", "")) == pytest.approx(number, rel=1e-5), name


def test_tune_refuses_bad_arguments_in_one_line(a9a_head, tmp_path, cli):
    for args, fragment in (
        ([*FIXED[1:]], "feature_dim"),
        ([*FIXED, "--validation", a9a_head], "--validation FILE or --validation-fraction"),
        ([*FIXED, "--objective", "validation:rmse"], "not a metric of a binary_classifier"),
        ([*FIXED, "factor_lr=0.1"], "unknown hyperparameter"),
        ([*FIXED, "--jobs", "0"], "--jobs must be >= 1"),
        ([*FIXED, "--seed", "-1"], "--seed must be in 0.."),  # (numpy's traceback before)
    ):
        code, _, err = cli("tune", "--train", a9a_head, "--validation-fraction", "0.1",
                           "--trials", "2", "--model-dir", tmp_path / "m", *args)
        assert code == 1 and fragment in err and err.count("\n") == 1, err
    assert not (tmp_path / "m.tuning").exists()  # refused before any work: nothing left
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    code, _, err = cli("tune", "--train", a9a_head, "--validation-fraction", "0.1",
                       "--trials", "2", "--model-dir", tmp_path / "mine", *FIXED)
    assert code == 1 and "nothing was changed" in err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_validation_rows_of_one_label_are_refused_before_any_trial(a9a_head, tmp_path, cli):
    """A file sorted by label leaves its last 10% one class: AUC cannot judge a trial there
    (the first trial failed naming the split's internal file); now one line before any trial
    names the training file and the fraction, and nothing is left behind."""
    lines = a9a_head.read_text().splitlines(keepends=True)
    data = tmp_path / "sorted.svm"
    data.write_text("".join(sorted(lines, key=lambda line: line.startswith("+1"))))
    code, _, err = cli("tune", "--train", data, "--validation-fraction", "0.1", "--trials", "2",
                       "--model-dir", tmp_path / "m", *FIXED)
    last = err.splitlines()[-1]
    assert code == 1 and err.count("fmkit: error") == 1, err
    assert last.startswith(f"fmkit: error: tune: every validation row has the label 1 (the last "
                           f"0.1 of {data}'s rows (--validation-fraction))"), err
    assert not (tmp_path / "m").exists() and not (tmp_path / "m.tuning").exists()


def test_a_deepfm_tunes_validation_rows_of_one_label_are_refused_too(tmp_path, cli):
    """The same for a configuration's tune (Criteo's sample sorted by label: its last 10%
    are clicks only): one line before any trial, nothing left behind."""
    lines = shared_file("criteo_kaggle_head1000", "train.txt").read_text().splitlines()
    data = tmp_path / "sorted.tsv"
    data.write_text("".join(f"{line}\n" for line in sorted(lines, key=lambda r: r.split("\t")[0])))
    code, _, err = cli("tune", "--config", REPO / "examples" / "deepfm_criteo.yaml", "--train",
                       data, "--validation-fraction", "0.1", "--trials", "2", "--model-dir",
                       tmp_path / "m")
    assert code == 1 and err.count("fmkit: error") == 1, err
    assert err.splitlines()[-1].startswith(
        f"fmkit: error: tune: every validation row has the label 1 (the last 0.1 of {data}'s "
        "rows (--validation-fraction))"), err
    assert not (tmp_path / "m").exists() and not (tmp_path / "m.tuning").exists()


def test_a_finished_tune_continues_with_more_trials_and_its_model_can_be_replaced(
        a9a_head, tmp_path, cli):
    model_dir = tmp_path / "model"
    args = ["--train", a9a_head, "--validation-fraction", "0.1", "--jobs", "1",
            "--model-dir", model_dir, *FIXED]
    code, _, err = cli("tune", *args, "--trials", "2")
    assert code == 0, err
    first = _trials(model_dir)
    code, _, err = cli("tune", *args, "--trials", "3")  # the same study, one trial more
    assert code == 0, err
    again = _trials(model_dir)
    assert len(again) == 3 and again[:2] == first
    saved = json.loads((model_dir / "tune" / "best.json").read_text())
    assert saved["objective"] == "validation:auc"  # the default objective, named
    code, _, err = cli("train", "--train", a9a_head, "--model-dir", model_dir, *FIXED,
                       "num_factors=4")
    assert code == 0, err
    assert sorted(p.name for p in model_dir.iterdir()) == ["metrics.json", "model.json",
                                                          "weights.npz"]


def test_a_damaged_study_is_one_line_that_says_what_to_remove(a9a_head, tmp_path, cli):
    """A finished study that SQLite cannot read is refused before it is restored (the copy
    would fail in the work directory run after run: it said "another program may be using
    it", naming the copy); a damaged study in the work directory names the directory to
    remove."""
    model_dir = tmp_path / "model"
    args = ["--train", a9a_head, "--validation-fraction", "0.1", "--jobs", "1", "--quiet",
            "--model-dir", model_dir, *FIXED]
    assert cli("tune", *args, "--trials", "1")[0] == 0
    study = model_dir / "tune" / "study.sqlite3"
    study.write_bytes(b"SQLite format 3\x00" + bytes(range(200)))
    code, _, err = cli("tune", *args, "--trials", "2")
    assert (code, err.strip()) == (1, f"fmkit: error: {study}: the finished study is damaged "
                                      "(file is not a database); remove it to start a new study")
    assert not (tmp_path / "model.tuning").exists()
    work = tmp_path / "model.tuning"  # what a killed tune leaves, its study then damaged
    work.mkdir()
    shutil.copy(model_dir / "tune" / "fmkit-tune.json", work)
    (work / "study.sqlite3").write_bytes(bytes(range(256)) * 4)
    code, _, err = cli("tune", *args, "--trials", "2")
    assert code == 1 and err.strip().endswith(
        f"the study database is damaged ((sqlite3.DatabaseError) file is not a database); "
        f"remove {work} to start the study anew")
    shutil.rmtree(work)
    study.unlink()
    assert cli("tune", *args, "--trials", "2")[0] == 0
    assert len(_trials(model_dir)) == 2


def test_tune_warns_when_validation_rows_hold_features_training_never_saw(a9a_head, tmp_path,
                                                                           cli):
    """A file sorted by user puts users training never saw in the last rows: the warning
    counts those rows as a plain loop over the split does; a9a's rows share their features."""
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(50), 20)  # sorted by user: the last 5 users only validate
    rows = [f"{int(rng.random() < 0.5)} {u}:1 {50 + rng.integers(30)}:1" for u in users]
    rows[-1] = "1 3:1 55:1"  # one validation row of a user training saw
    data = tmp_path / "sorted.libsvm"
    data.write_text("\n".join(rows) + "\n")
    args = ["--validation-fraction", "0.1", "--trials", "1", "--jobs", "1", "epochs=1",
            "feature_dim=80", "predictor_type=binary_classifier", "optimizer=adam"]
    code, _, err = cli("tune", "--train", data, "--model-dir", tmp_path / "m", *args)
    assert code == 0, err
    seen = {int(k.split(":")[0]) for row in rows[:900] for k in row.split()[1:]}
    cold = sum(any(int(k.split(":")[0]) not in seen for k in row.split()[1:])
               for row in rows[900:])
    assert cold == 99 and f"tune: {cold} of 100 validation rows (99%) hold a feature" in err
    code, _, err = cli("tune", "--train", a9a_head, "--model-dir", tmp_path / "a9a", *args[:-3],
                       *FIXED[:2])
    assert code == 0, err
    assert "hold a feature no training row has" not in err


def test_a_tune_whose_every_trial_diverges_says_so_in_one_line(a9a_head, tmp_path, cli):
    """(A trial pruned when it diverged has a value, the last epoch's: the trial log asked the
    study for its best value with no complete trial, and the tune died with a traceback.)"""
    code, _, err = cli("tune", "--train", a9a_head, "--validation-fraction", "0.1", "--trials",
                       "2", "--jobs", "1", "--model-dir", tmp_path / "m", *FIXED[:2],
                       "optimizer=sgd", "epochs=3", "mini_batch_size=4000",
                       *(f"{group}_lr=1e30" for group in ("bias", "linear", "factors")))
    assert code == 1 and "Traceback" not in err, err
    assert err.endswith(f"fmkit: error: tune: no trial completed: each diverged or was pruned "
                        f"(the study is in {tmp_path / 'm.tuning'}); fix a setting the search "
                        "should not vary as NAME=VALUE (e.g. optimizer=adam), or check the "
                        "data\n"), err


def _finished_trials(work) -> dict[int, tuple[str, float]]:
    """The study's finished trials as {number: (state, learning_rate)}, read through a
    read-only SQLite connection: Optuna's own storage writes while it opens (tables, then a
    version row), which races fmkit tune creating the same study."""
    uri = f"file:{work / 'study.sqlite3'}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True, timeout=5)) as db:
        rows = db.execute(
            "SELECT t.number, t.state, p.param_value FROM trials t JOIN trial_params p"
            " ON p.trial_id = t.trial_id WHERE p.param_name = 'learning_rate'"
            " AND t.state IN ('COMPLETE', 'PRUNED')").fetchall()
    return {int(number): (state, float(value)) for number, state, value in rows}


def test_tune_killed_with_sigkill_continues_the_same_study(a9a_head, tmp_path):
    model_dir, work = tmp_path / "model", tmp_path / "model.tuning"
    command = [fmkit_executable(), "tune", "--train", str(a9a_head), "--validation-fraction",
               "0.1", "--trials", "10", "--jobs", "1", "--model-dir", str(model_dir),
               *FIXED[:3], "epochs=20"]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline, before = time.monotonic() + 240, {}  # (a loaded machine: two trials can take long)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        if not (work / "study.sqlite3").exists():
            continue
        if first.poll() is not None:
            break  # it ended: its error is shown below
        try:
            before = _finished_trials(work)
        except sqlite3.Error:
            continue  # the study is not created yet
        if len(before) >= 2:
            break
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert len(before) >= 2, first.stderr.read().decode()
    assert not model_dir.exists()
    second = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    after = {int(t["number"]): t for t in _trials(model_dir)}
    assert sum(t["state"] in ("COMPLETE", "PRUNED") for t in after.values()) == 10
    for number, (state, learning_rate) in before.items():  # kept, not run again
        assert after[number]["state"] == state
        assert float(after[number]["learning_rate"]) == pytest.approx(learning_rate)


def test_tune_with_two_jobs_runs_two_trials_at_once(a9a_head, tmp_path):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.fail("this test needs 2 cores")
    model_dir = tmp_path / "model"
    done = subprocess.run([fmkit_executable(), "tune", "--train", str(a9a_head),
                           "--validation-fraction", "0.1", "--trials", "6", "--jobs", "2",
                           "--model-dir", str(model_dir), *FIXED[:3], "epochs=10"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    storage = optuna.storages.RDBStorage(f"sqlite:///{model_dir / 'tune' / 'study.sqlite3'}")
    trials = optuna.load_study(study_name="fmkit", storage=storage).get_trials()
    assert len({t.user_attrs["pid"] for t in trials}) == 2
    assert len(trials) == 6, [t.state for t in trials]  # --trials is exact with two jobs
    spans = sorted((t.datetime_start, t.datetime_complete) for t in trials)
    overlap = any(b[0] < a[1] for a, b in zip(spans, spans[1:]))
    assert overlap, [(a.isoformat(), b.isoformat()) for a, b in spans]
    assert all(isinstance(a, datetime) for a, _ in spans)


def test_tune_searches_a_deepfm_configuration(tmp_path, cli):
    """A DeepFM configuration's fields are searched: the model written carries the best
    trial's embedding width and layers, and the objective is the validation rows' AUC as
    scikit-learn computes it from the model's predictions (the training file gzipped, named
    by a --set field; the configuration's best exporter left to the search)."""
    from fmkit.data.movielens import join_ratings

    joined = tmp_path / "ua.base.csv"
    join_ratings(shared_file("movielens_100k", "u.data").parent, "ua.base", joined)
    lines = joined.read_text().splitlines(keepends=True)[:4001]  # header + 4,000 rows
    joined.write_bytes(gzip.compress("".join(lines).encode()))  # split as the text it holds
    model_dir = tmp_path / "model"
    code, _, err = cli("tune", "--config", REPO / "examples" / "deepfm_movielens.yaml",
                       "--set", f"train_input_path={joined}",  # (or --train)
                       "--validation-fraction", "0.1", "--trials", "2",
                       "--jobs", "1", "--model-dir", model_dir,
                       "--set", "train_config.num_epochs=2",
                       # (the search picks epochs by its objective: a best exporter's metric
                       # is not a second, conflicting choice)
                       "--objective", "validation:auc",
                       "--set", "export_config={exporter_type: best, "
                                "best_exporter_metric: accuracy}")
    assert code == 0, err
    trials = [t for t in _trials(model_dir) if t["state"] == "COMPLETE"]
    best = max(trials, key=lambda t: float(t["value"]))
    model = load_model(model_dir)
    deep = model.config.model_config.deepfm.deep
    assert "-".join(map(str, deep.hidden_units)) == best["hidden_units"]
    assert deep.dropout_ratio == [pytest.approx(float(best["dropout"]), abs=1e-4)] * len(
        deep.hidden_units)
    widths = {f.id_feature.embedding_dim for f in model.config.feature_configs if f.id_feature}
    assert widths == {int(best["embedding_dim"])}
    validation = tmp_path / "validation.csv"
    validation.write_text(lines[0] + "".join(lines[3601:]))
    y = np.array([line.split(",", 1)[0] == "1" for line in lines[3601:]])
    scores = np.concatenate([model.predictions(model.encode(batch, labelled=False))["score"]
                             for batch in model.read(validation)])
    assert roc_auc_score(y, scores) == pytest.approx(float(best["value"]), abs=0.02)


def test_a_deepfm_tune_validates_on_the_configurations_eval_input_path(tmp_path, cli):
    """Without --validation or --validation-fraction, a configuration's tune measures its
    trials on the configuration's ``eval_input_path``, as ``fmkit train --config`` does (it
    was refused): the best value is the eval rows' AUC as scikit-learn computes it from the
    written model's predictions, not the training rows'."""
    from fmkit.data.movielens import join_ratings

    joined = tmp_path / "ua.base.csv"
    join_ratings(shared_file("movielens_100k", "u.data").parent, "ua.base", joined)
    lines = joined.read_text().splitlines(keepends=True)[:6001]
    train, evaluation = tmp_path / "train.csv", tmp_path / "eval.csv"
    train.write_text("".join(lines[:5001]))
    evaluation.write_text(lines[0] + "".join(lines[5001:]))
    model_dir = tmp_path / "model"
    code, _, err = cli("tune", "--config", REPO / "examples" / "deepfm_movielens.yaml",
                       "--set", f"train_input_path={train}", "--set",
                       f"eval_input_path={evaluation}", "--trials", "1", "--jobs", "1",
                       "--model-dir", model_dir, "--set", "train_config.num_epochs=2")
    assert code == 0, err
    best = json.loads((model_dir / "tune" / "best.json").read_text())["value"]
    model = load_model(model_dir)

    def auc(path, rows: list[str]) -> float:
        y = np.array([line.split(",", 1)[0] == "1" for line in rows])
        scores = np.concatenate([model.predictions(model.encode(batch, labelled=False))["score"]
                                 for batch in model.read(path)])
        return roc_auc_score(y, scores)

    on_eval, on_train = auc(evaluation, lines[5001:]), auc(train, lines[1:5001])
    assert best == pytest.approx(on_eval, abs=1e-6)
    assert abs(on_train - on_eval) > 1e-3  # (the two files tell apart)


def test_a_parquet_file_is_not_split_by_lines(tmp_path, cli):
    """A configuration that reads CSV, given a Parquet file (read as Parquet by its bytes):
    --validation-fraction cuts text files only, so it is refused before anything is written
    (it cut the Parquet file's bytes into 'train.csv')."""
    from .conftest import REPO
    from .test_deepfm_parquet import sample_as_parquet

    parquet = tmp_path / "sample.parquet"
    sample_as_parquet(parquet)
    code, _, err = cli("tune", "--config", REPO / "examples" / "deepfm_criteo.yaml", "--train",
                       parquet, "--validation-fraction", "0.2", "--model-dir", tmp_path / "m")
    assert code == 1 and err.count("\n") == 1 and "give a Parquet channel's validation" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sample.parquet"]


def test_a_bad_row_met_by_a_worker_process_is_one_line(a9a_head, tmp_path):
    validation = tmp_path / "validation.libsvm"
    validation.write_text("+1 3:1 9:1\n+1 500:1\n")
    done = subprocess.run([fmkit_executable(), "tune", "--train", str(a9a_head), "--validation",
                           str(validation), "--trials", "2", "--jobs", "2", "--model-dir",
                           str(tmp_path / "model"), *FIXED], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        f"fmkit: error: {validation}:2: feature index 500 is out of range: feature_dim=123 "
        "with 1-based indices allows at most 123"), done.stderr
    assert "Traceback" not in done.stderr


def test_tune_keeps_an_ffms_fields_in_its_validation_split(tmp_path, cli):
    """--validation-fraction cuts a libffm file between its lines: the trials of an FFM see
    every field, and the model is field-aware."""
    from fmkit.models.fm.planted import planted_ctr

    data = planted_ctr(3000, [20, 15, 10], num_factors=2, field_aware=True, seed=1)
    train = tmp_path / "train.ffm.gz"
    train.write_bytes(gzip.compress(("\n".join(data.libffm_lines()) + "\n").encode()))
    model_dir = tmp_path / "model"
    code, _, err = cli("tune", "--train", train, "--validation-fraction", "0.1", "--trials",
                       "2", "--jobs", "1", "--model-dir", model_dir, "feature_dim=45",
                       "predictor_type=binary_classifier", "model_type=ffm", "optimizer=adam",
                       "epochs=2")
    assert code == 0, err
    model = load_model(model_dir)
    assert model.field_aware and model.num_fields == 3
    assert len([t for t in _trials(model_dir) if t["state"] == "COMPLETE"]) >= 1
    first = _trials(model_dir)[0]  # the FFM's defaults where the fixed values leave room
    assert (first["mini_batch_size"], first["learning_rate"]) == ("1", "0.2")


def test_one_job_repeats_its_trials_for_the_same_seed(a9a_head, tmp_path, cli):
    runs = []
    for name in ("one", "two"):
        code, _, err = cli("tune", "--train", a9a_head, "--validation-fraction", "0.1",
                           "--trials", "4", "--jobs", "1", "--seed", "3", "--model-dir",
                           tmp_path / name, *FIXED[:3], "epochs=2")
        assert code == 0, err
        runs.append([(t["num_factors"], t["learning_rate"], t["value"])
                     for t in _trials(tmp_path / name)])
    assert runs[0] == runs[1]


def test_an_ffms_trials_keep_its_row_scaling_and_may_train_a_row_per_step():
    """An FFM's search starts its batches at 1 row, and its trials keep the FFM defaults'
    row scaling (and with AdaGrad, the sums starting at 0.1) unless fixed; an FM's do not."""
    from fmkit.jobs.searches import FMSearch, TuneSettings

    def search(**fixed):
        return FMSearch(TuneSettings("t", None, 0.1, "validation:auc", {
            "feature_dim": 9, "predictor_type": "binary_classifier", **fixed}))

    ffm, fm = search(model_type="ffm"), search()
    batches = {s: next(d for d in s.dimensions() if d.name == "mini_batch_size")
               for s in (ffm, fm)}
    assert (batches[ffm].low, batches[fm].low) == (1, 100)
    adagrad = ffm.chosen({"optimizer": "adagrad", "learning_rate": 0.1})
    assert adagrad["instance_norm"] == 1 and adagrad["initial_accumulator_value"] == 0.1
    adam = ffm.chosen({"optimizer": "adam", "learning_rate": 0.1})
    assert adam["instance_norm"] == 1 and "initial_accumulator_value" not in adam
    assert "instance_norm" not in fm.chosen({"optimizer": "adagrad"})
    assert search(model_type="ffm", instance_norm=0).chosen({"optimizer": "sgd"})[
        "instance_norm"] == 0
    assert ffm.first_trial() == {"optimizer": "adagrad", "num_factors": 8,
                                 "mini_batch_size": 1, "learning_rate": 0.2,
                                 "weight_decay": 1e-6}  # the FFM's defaults, tried first
    assert search(model_type="ffm", num_factors=4).first_trial().keys() == {
        "optimizer", "mini_batch_size", "learning_rate", "weight_decay"}
    assert fm.first_trial() == {}


def test_a_deepfm_field_fixed_with_set_is_not_searched():
    """--set of a searched field (or of a section holding it) fixes it: the search leaves the
    dimension out and a trial's fields keep the user's value (hidden_units=[16] was replaced
    by the search's layers); dropout still follows the fixed layers' count. (One feature's
    width fixed at another than its group's is refused before any trial: the FM group's
    features share one width.)"""
    from fmkit.jobs.searches import DeepFMSearch, TuneSettings

    example = str(REPO / "examples" / "deepfm_criteo.yaml")

    def search(**fixed):
        return DeepFMSearch(TuneSettings("t.tsv", "v.tsv", None, "validation:auc", fixed,
                                         config=example))

    assert [d.name for d in search().dimensions()] == [
        "sparse_lr", "dense_lr", "embedding_dim", "hidden_units", "dropout"]
    fixed = search(**{"model_config.deepfm.deep.hidden_units": "[16, 8]",
                      "train_config.sparse_optimizer": "{adagrad_optimizer: {lr: 0.02}}",
                      "feature_configs[14].id_feature.embedding_dim": "16"})
    assert [d.name for d in fixed.dimensions()] == ["dense_lr", "dropout"]
    fields = fixed.chosen({"dense_lr": 0.001, "dropout": 0.25})
    assert fields == {"train_config.dense_optimizer.adam_optimizer.lr": 0.001,
                      "model_config.deepfm.deep.dropout_ratio": [0.25, 0.25]}
    assert fixed._document(fields)["model_config"]["deepfm"]["deep"]["hidden_units"] == [16, 8]
    # trials that start from a model's weights keep its shape: only rates and dropout searched
    tuned = search(**{"train_config.fine_tune_checkpoint": "models/criteo"})
    assert [d.name for d in tuned.dimensions()] == ["sparse_lr", "dense_lr", "dropout"]


def test_a_tune_of_mcmc_searches_the_factors_and_samples_every_sweep(a9a_head, tmp_path, cli):
    """With optimizer=mcmc fixed the search has no rates, decays or batches to try: each
    trial draws num_factors and factors_init_sigma and samples its MCMC_EPOCHS sweeps without
    stopping early; the model is the best trial's, its objective scikit-learn's AUC of the
    validation rows after the last sweep."""
    model_dir = tmp_path / "model"
    code, _, err = cli("tune", "--train", a9a_head, "--validation-fraction", "0.1",
                       "--objective", "validation:auc", "--trials", "2", "--jobs", "1",
                       "--model-dir", model_dir, "feature_dim=123",
                       "predictor_type=binary_classifier", "optimizer=mcmc")
    assert code == 0, err
    trials = _trials(model_dir)
    assert set(trials[0]) == {"number", "state", "value", "best_epoch", "seconds",
                              "num_factors", "factors_init_sigma"}
    best = json.loads((model_dir / "tune" / "best.json").read_text())
    model = load_model(model_dir)
    assert model.hyperparameters["optimizer"] == "mcmc"
    assert model.hyperparameters["num_factors"] == best["settings"]["num_factors"]
    history = json.loads((model_dir / "metrics.json").read_text())["train"]
    assert len(history) == MCMC_EPOCHS  # every sweep, none stopped early
    # the trial's value is its last sweep's, the model the mean of all its samples
    assert best["epoch"] == MCMC_EPOCHS
    assert _validation_auc(a9a_head, tmp_path, model) == pytest.approx(float(best["value"]),
                                                                       abs=1e-6)


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_pruning_decides_as_optunas_should_prune(direction):
    """The callback shows the pruner the completed trials read at a trial's first report, and
    reads them no more in that trial; with no trial completing meanwhile (one job) each
    epoch's decision is Optuna's own ``Trial.should_prune`` on the same study (its storage
    read anew each time)."""
    import optuna

    from fmkit.jobs.tune import Pruning, _pruner
    from fmkit.train.engine import EpochStats

    rng = np.random.default_rng(7)
    study = optuna.create_study(direction=direction, pruner=_pruner(),
                                storage=optuna.storages.InMemoryStorage())
    for _ in range(10):  # more than the pruner's startup trials
        curve = np.cumsum(rng.normal(0.01, 0.02, 12)) + rng.normal(0.8, 0.05)
        study.add_trial(optuna.trial.create_trial(
            value=float(curve[-1]), intermediate_values={e + 1: float(v)
                                                         for e, v in enumerate(curve)}))
    reads = []
    get_trials = study.get_trials
    study.get_trials = lambda *args, **kwargs: reads.append(1) or get_trials(*args, **kwargs)
    decisions = {True: 0, False: 0}
    for _ in range(25):
        trial = study.ask()
        callback = Pruning(trial, "auc")
        curve = np.cumsum(rng.normal(0.01, 0.03, 12)) + rng.normal(0.8, 0.08)
        for epoch, value in enumerate(curve, 1):
            stats = EpochStats(epoch, 0.5, 100, 0.1, validation={"auc": float(value)})
            reads.clear()
            try:
                callback.after_epoch(None, stats)
                pruned = False
            except optuna.TrialPruned:
                pruned = True
            assert len(reads) == (epoch == 1), (epoch, reads)  # the study read once a trial
            assert pruned == trial.should_prune(), (epoch, value)
            decisions[pruned] += 1
            if pruned:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            study.tell(trial, float(curve[-1]))
    assert decisions[True] and decisions[False], decisions  # both kinds were decided


def test_a_recordio_channel_is_split_into_the_rows_it_holds(a9a_head, tmp_path):
    """``--validation-fraction`` on a channel that is not one text file writes its rows as
    libsvm (the compiled writer): read back by scikit-learn, the training part is the first
    90% of the rows and the validation part the last 10%, values and labels exact."""
    from sklearn.datasets import load_svmlight_file

    from fmkit.data.recordio import write_rows
    from fmkit.jobs.searches import FMSearch, TuneSettings

    X, y = load_svmlight_file(str(a9a_head), n_features=123)  # (1-based ids -> columns 0..122)
    channel = tmp_path / "a9a.rec"
    with open(channel, "wb") as f:
        write_rows(f, X, y.clip(0, 1))
    search = FMSearch(TuneSettings(train=str(channel), validation=None, validation_fraction=0.1,
                                   objective="validation:auc",
                                   fixed={"feature_dim": 123,
                                          "predictor_type": "binary_classifier"}))
    search.split(tmp_path)
    split = tmp_path / "split"
    assert (split / "format").read_text() == "libsvm"
    zero_based = (split / "index_base").read_text() == "0"
    parts = [load_svmlight_file(str(split / name), n_features=123, zero_based=zero_based)
             for name in ("train.data", "validation.data")]
    cut = X.shape[0] - X.shape[0] // 10
    for (Xp, yp), rows in zip(parts, (slice(0, cut), slice(cut, None))):
        assert (Xp != X[rows]).nnz == 0 and np.array_equal(yp, y[rows].clip(0, 1))
