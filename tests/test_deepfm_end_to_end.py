"""The Criteo DeepFM example end to end: train, evaluate, predict and serve from the model
directory alone, checked against scikit-learn's metrics and between input paths; malformed
rows are reported with file and line."""

from __future__ import annotations

import csv
import json
import math
import shutil

import httpx
import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    log_loss,
    mean_absolute_error,
    mean_squared_error,
    roc_auc_score,
)

from .conftest import REPO, shared_file
from .deepfm_helpers import SMALL_CRITEO
from .test_server import start_server, stop

EXAMPLE = REPO / "examples" / "deepfm_criteo.yaml"
INTS = [f"I{i}" for i in range(1, 14)]
CATS = [f"C{i}" for i in range(1, 27)]


def criteo_rows(path, delimiter="\t", header=False) -> list[dict]:
    """Rows as dicts, parsed with the csv module; short rows lack their last categories."""
    with open(path, newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        if header:
            next(reader)
        return [dict(zip(["label", *INTS, *CATS], row)) for row in reader]


def instance(row: dict) -> dict:
    """A JSON instance of raw values: numbers for I-columns, strings for C-columns, missing
    values left out."""
    out = {}
    for name, value in row.items():
        if name == "label" or value == "":
            continue
        out[name] = int(float(value)) if name.startswith("I") else value
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from fmkit.cli import main

    model_dir = tmp_path_factory.mktemp("criteo") / "model"
    train = shared_file("criteo_kaggle_head1000", "train.txt")
    code = main(["train", "--config", str(EXAMPLE), "--quiet",
                 "--set", f"train_input_path={train}", "--set", f"eval_input_path={train}",
                 "--set", f"model_dir={model_dir}", "--set", "train_config.num_epochs=2"])
    assert code == 0
    return model_dir


def test_train_writes_metrics_that_sklearn_agrees_with(trained, cli):
    metrics = json.loads((trained / "metrics.json").read_text())["test"]
    train = shared_file("criteo_kaggle_head1000", "train.txt")
    code, out, _ = cli("predict", "--model-dir", trained, "--data", train)
    assert code == 0
    scores = np.array([json.loads(line)["score"] for line in out.splitlines()])
    labels = np.array([int(r["label"]) for r in criteo_rows(train)])
    assert scores.size == labels.size == 1000
    print(f"Criteo head1000 (train = test): AUC {metrics['auc']:.4f}")
    assert metrics["auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
    assert metrics["binary_classification_cross_entropy"] == pytest.approx(
        log_loss(labels, scores), abs=1e-6)
    assert metrics["auc"] > 0.7  # 2 epochs over the same 1000 rows


def test_evaluate_reads_the_csv_sample_with_its_header(trained, cli):
    sample = shared_file("criteo_deepctr_sample", "criteo_sample.txt")
    code, out, err = cli("evaluate", "--model-dir", trained, "--data", sample)
    assert code == 0, err
    metrics = json.loads(out)
    code, out, _ = cli("predict", "--model-dir", trained, "--data", sample)
    scores = np.array([json.loads(line)["score"] for line in out.splitlines()])
    labels = np.array([int(r["label"]) for r in criteo_rows(sample, ",", header=True)])
    assert metrics["rows"] == 200
    assert metrics["auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)


def test_a_header_in_another_order_with_extra_columns_is_read_by_name(trained, cli, tmp_path):
    """The example reads header-less TSV by position; a CSV whose first line names the columns
    in another order, beside a column the model does not use, is read by those names."""
    train = shared_file("criteo_kaggle_head1000", "train.txt")
    rows = criteo_rows(train)[:50]
    order = ["note", *reversed(["label", *INTS, *CATS])]
    shuffled = tmp_path / "shuffled.csv"
    with open(shuffled, "w", newline="") as f:
        writer = csv.DictWriter(f, order)
        writer.writeheader()
        writer.writerows({"note": "x", **row} for row in rows)
    original = tmp_path / "original.tsv"
    original.write_text("".join(line + "\n" for line in train.read_text().split("\n")[:50]))
    scores = []
    for data in (shuffled, original):
        code, out, err = cli("predict", "--model-dir", trained, "--data", data)
        assert code == 0, err
        scores.append([json.loads(line)["score"] for line in out.splitlines()])
    assert len(scores[0]) == 50
    np.testing.assert_allclose(scores[0], scores[1], rtol=1e-6)


def test_a_header_naming_other_columns_fails_with_a_hint_on_line_1(trained, cli, tmp_path):
    """A header that does not name the model's columns is read as data: its line's error
    says it looks like a header; a data row of text values that name no column does not."""
    train = shared_file("criteo_kaggle_head1000", "train.txt")
    lines = train.read_text().split("\n")[:5]
    renamed = tmp_path / "renamed.tsv"
    renamed.write_text("\t".join(["label", *(f"int{i}" for i in range(1, 14)),
                                  *(f"cat{i}" for i in range(1, 27))]) + "\n"
                       + "\n".join(lines) + "\n")
    code, _, err = cli("predict", "--model-dir", trained, "--data", renamed)
    assert code == 1
    assert f"{renamed}:1: column 'I1': 'int1' is not a number (line 1 looks like a header" \
        in err
    texts = tmp_path / "texts.tsv"
    texts.write_text("\t".join(["yes", *["x"] * 39]) + "\n" + "\n".join(lines) + "\n")
    code, _, err = cli("predict", "--model-dir", trained, "--data", texts)
    assert code == 1 and f"{texts}:1: " in err and "looks like a header" not in err


def test_the_example_trains_on_the_csv_sample(tmp_path, cli):
    sample = shared_file("criteo_deepctr_sample", "criteo_sample.txt")
    code, _, err = cli("train", "--config", EXAMPLE, "--quiet", "--train", sample,
                       "--test", sample, "--model-dir", tmp_path / "m",
                       "--set", "data_config.delimiter=,",
                       "--set", "data_config.with_header=true")
    assert code == 0, err
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert metrics["test"]["rows"] == 200


def first_rows_and_predictions(trained, cli, tmp_path, n: int) -> tuple[list[dict], list[dict]]:
    """The first ``n`` rows of the raw Criteo sample, and ``fmkit predict``'s output for them."""
    train = shared_file("criteo_kaggle_head1000", "train.txt")
    subset = tmp_path / "subset.tsv"
    subset.write_text("\n".join(train.read_text().split("\n")[:n]) + "\n")
    code, out, err = cli("predict", "--model-dir", trained, "--data", subset)
    assert code == 0, err
    return criteo_rows(train)[:n], [json.loads(line) for line in out.splitlines()]


def test_serve_answers_raw_feature_requests_as_predict_does(trained, cli, tmp_path):
    rows, expected = first_rows_and_predictions(trained, cli, tmp_path, 25)
    served = tmp_path / "served"
    shutil.copytree(trained, served)  # serving needs nothing but the model directory
    proc, url = start_server(served)
    try:
        body = {"instances": [instance(r) for r in rows]}
        answer = httpx.post(f"{url}/invocations", json=body,
                            headers={"Accept": "application/json"})
        assert answer.status_code == 200, answer.text
        predictions = answer.json()["predictions"]
        np.testing.assert_allclose([p["score"] for p in predictions],
                                   [e["score"] for e in expected], rtol=1e-5)
        assert [p["predicted_label"] for p in predictions] == [
            e["predicted_label"] for e in expected]
        lines = "\n".join(json.dumps(instance(r)) for r in rows[:3])
        answer = httpx.post(f"{url}/invocations", content=lines,
                            headers={"Content-Type": "application/jsonlines",
                                     "Accept": "application/jsonlines"})
        assert answer.status_code == 200
        np.testing.assert_allclose([json.loads(x)["score"] for x in answer.text.splitlines()],
                                   [e["score"] for e in expected[:3]], rtol=1e-5)
        bad = httpx.post(f"{url}/invocations", json={"instances": [{"I1": "many"}]})
        assert bad.status_code == 400 and "'many' is not a number" in bad.json()["error"]
        empty = httpx.post(f"{url}/invocations", json={"instances": []})  # (was a 500)
        assert empty.status_code == 200 and empty.json() == {"predictions": []}
        recordio = httpx.post(f"{url}/invocations", content=b"\x00",
                              headers={"Content-Type": "application/x-recordio-protobuf"})
        assert recordio.status_code == 415
        assert httpx.get(f"{url}/ping").status_code == 200  # still serving
    finally:
        stop(proc)


def test_serve_reads_csv_bodies_as_a_file_to_score_is_read(trained, cli, tmp_path):
    """SageMaker Batch Transform sends a CSV file's lines as ``text/csv``: with or without
    the label column, with or without a header (the columns in any order), comma or tab.
    Each answer equals the JSON request of the same rows, built by the csv module."""
    rows, expected = first_rows_and_predictions(trained, cli, tmp_path, 25)
    raw = shared_file("criteo_kaggle_head1000", "train.txt").read_text().split("\n")[:25]
    names = ["label", *INTS, *CATS]
    shuffled = [*reversed(CATS), *INTS]
    bodies = {
        "the training file's lines": "\n".join(raw) + "\n",
        "without the label, comma-separated": "\n".join(
            ",".join(line.split("\t")[1:]) for line in raw),
        "a header, another order, no label": "\n".join(
            [",".join(shuffled)] + [",".join(row.get(c, "") for c in shuffled)
                                    for row in (dict(zip(names, line.split("\t")))
                                                for line in raw)]) + "\n",
    }
    # Excel's "CSV UTF-8" starts with a byte-order mark: the header is read past it
    bodies["a header after a byte-order mark"] = "\ufeff" + bodies[
        "a header, another order, no label"]
    proc, url = start_server(trained)
    try:
        answer = httpx.post(f"{url}/invocations", headers={"Content-Type": "application/json"},
                            content="\ufeff" + json.dumps({"instances": [instance(r)
                                                                         for r in rows]}))
        assert answer.status_code == 200, answer.text
        by_json = [p["score"] for p in answer.json()["predictions"]]
        np.testing.assert_allclose(by_json, [e["score"] for e in expected], rtol=1e-5)
        for what, body in bodies.items():
            answer = httpx.post(f"{url}/invocations", content=body,
                                headers={"Content-Type": "text/csv"})
            assert answer.status_code == 200, (what, answer.text)
            np.testing.assert_allclose([p["score"] for p in answer.json()["predictions"]],
                                       by_json, rtol=1e-5, err_msg=what)
        fields = raw[1].split("\t")
        fields[2] = "many"  # I2 of the body's second line
        bad = httpx.post(f"{url}/invocations", content=raw[0] + "\n" + "\t".join(fields),
                         headers={"Content-Type": "text/csv"})
        assert bad.status_code == 400
        assert bad.json()["error"].endswith("request:2: column 'I2': 'many' is not a number")
        empty = httpx.post(f"{url}/invocations", content=b"", headers={"Content-Type": "text/csv"})
        assert empty.status_code == 200 and empty.json() == {"predictions": []}
        recordio = httpx.post(f"{url}/invocations", content=b"\x00",
                              headers={"Content-Type": "application/x-recordio-protobuf"})
        assert recordio.status_code == 415 and recordio.json()["error"].endswith(
            "this model reads application/json, application/jsonlines, text/csv")
    finally:
        stop(proc)


def test_a_glob_pattern_channel_evaluates_as_its_files_joined(trained, cli, tmp_path):
    """TorchEasyRec's ``data/*.csv`` input paths: the parts of the sample, matched by a
    pattern, evaluate as the whole file does."""
    train = shared_file("criteo_kaggle_head1000", "train.txt")
    lines = train.read_text().splitlines(keepends=True)
    for i in range(3):
        (tmp_path / f"part-{i}.tsv").write_text("".join(lines[i * 334:(i + 1) * 334]))
    code, whole, err = cli("evaluate", "--model-dir", trained, "--data", train)
    assert code == 0, err
    code, parts, err = cli("evaluate", "--model-dir", trained, "--data", f"{tmp_path}/part-*.tsv")
    assert code == 0, err
    assert json.loads(parts) == pytest.approx(json.loads(whole), rel=1e-6)  # (other blocks)


def test_a_first_epoch_logs_the_rows_it_will_train_guessed_from_the_bytes_read(
        cli, tmp_path, monkeypatch):
    """The progress lines of a DeepFM's first epoch over a channel of files (read in 4 KB
    blocks) show its size guessed where the rows are read, not biased by the rows the shuffle
    holds ahead of training: within 5% of the rows Python counts."""
    from fmkit.data import columns
    from fmkit.train.callbacks import Progress

    monkeypatch.setattr(Progress, "LOG_EVERY", 0.0)
    small_blocks = columns.iter_line_blocks
    monkeypatch.setattr(columns, "iter_line_blocks", lambda path, size: small_blocks(path, 4096))
    lines = shared_file("criteo_kaggle_head1000", "train.txt").read_text().splitlines(
        keepends=True)
    for i in range(3):
        (tmp_path / f"part-{i}.tsv").write_text("".join(lines[i::3]))
    code, _, err = cli("train", "--config", EXAMPLE, "--set", f"train_input_path={tmp_path}",
                       "--set", "eval_input_path=", "--set", f"model_dir={tmp_path / 'm'}",
                       "--set", "data_config.batch_size=32")
    assert code == 0, err
    totals = [int(line.split(" of about ")[1].split(" rows")[0]) for line in err.splitlines()
              if "epoch 1/2: " in line and " of about " in line]
    assert len(totals) > 10 and all(abs(t - len(lines)) <= 0.05 * len(lines) for t in totals), (
        totals)


def test_a_training_file_sorted_by_label_is_said_once(cli, tmp_path, monkeypatch):
    """A DeepFM shuffles within the blocks it reads: rows sorted by label are said, once,
    naming the file (runs of 64 rows here, for the sample's 1000); as they come, not."""
    from fmkit.data.sources import LabelOrder

    monkeypatch.setattr(LabelOrder, "RUN_ROWS", 64)
    lines = shared_file("criteo_kaggle_head1000", "train.txt").read_text().splitlines()
    (tmp_path / "sorted.tsv").write_text("".join(
        f"{line}\n" for line in sorted(lines, key=lambda r: r.split("\t")[0])))
    for name, said in (("sorted.tsv", 1), ("train.txt", 0)):
        train = tmp_path / name if said else shared_file("criteo_kaggle_head1000", name)
        code, _, err = cli("train", "--config", EXAMPLE, "--set", f"train_input_path={train}",
                           "--set", "eval_input_path=", "--set", f"model_dir={tmp_path / name}.m",
                           "--set", "train_config.num_epochs=2")
        assert code == 0, err
        lines_said = [line for line in err.splitlines() if "ordered by label" in line]
        assert len(lines_said) == said, err
        assert not said or f"{train}: the training rows come ordered by label" in lines_said[0]


def test_predict_reserved_columns_carry_each_rows_values(trained, cli, tmp_path, monkeypatch):
    """``--reserved-columns`` (TorchEasyRec's ``--reserved_columns``) starts each prediction
    with the row's values of those columns, as the csv module and pyarrow read them, over
    many blocks scored several at once; the scores are unchanged."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fmkit.data import columns

    rows, expected = first_rows_and_predictions(trained, cli, tmp_path, 1000)
    small_blocks = columns.iter_line_blocks  # 4 KB blocks: ~60 of them, scored in parallel
    monkeypatch.setattr(columns, "iter_line_blocks", lambda path, size: small_blocks(path, 4096))
    subset = tmp_path / "subset.tsv"
    code, out, err = cli("predict", "--model-dir", trained, "--data", subset,
                         "--reserved-columns", "C1,label,I2")
    assert code == 0, err
    got = [json.loads(line) for line in out.splitlines()]
    assert [list(g) for g in got[:1]] == [["C1", "label", "I2", "score", "predicted_label"]]
    assert [(g["C1"], g["label"], g["I2"]) for g in got] == [
        (r["C1"] or None, r["label"], r["I2"] or None) for r in rows]
    np.testing.assert_allclose([g["score"] for g in got], [e["score"] for e in expected],
                               rtol=1e-5)  # (other blocks: other float32 sums)

    table = pa.table({"request_id": pa.array(range(7, 1007), pa.int64()),
                      **{c: pa.array([int(r[c]) if r[c] else None for r in rows], pa.int64())
                         for c in INTS},
                      **{c: pa.array([r.get(c) or None for r in rows]) for c in CATS}})
    pq.write_table(table, tmp_path / "rows.parquet", row_group_size=100)
    code, out, err = cli("predict", "--model-dir", trained, "--data", tmp_path / "rows.parquet",
                         "--reserved_columns", "request_id", "--accept", "application/json")
    assert code == 0, err
    got = json.loads(out)["predictions"]
    assert [g["request_id"] for g in got] == list(range(7, 1007))
    np.testing.assert_allclose([g["score"] for g in got], [e["score"] for e in expected],
                               rtol=1e-5)

    output = tmp_path / "out.jsonl"
    for extra, problem in (
            (["--reserved-columns", "C1,nope"], f"{subset}: no column 'nope' (columns: "),
            (["--reserved-columns", "score"], "'score' is a column of the predictions"),
            (["--reserved-columns", "C1", "--accept", "application/x-recordio-protobuf"],
             "recordIO responses hold score and predicted_label only")):
        code, out, err = cli("predict", "--model-dir", trained, "--data", subset,
                             "--output", output, *extra)
        assert code == 1 and err.count("\n") == 1 and problem in err, err
        assert not output.exists()
    # (tables, TorchEasyRec's predict's output: tests/test_predict_tables.py)


@pytest.mark.parametrize("line, problem", [
    ("1\tabc" + "\t1" * 12 + "\tx" * 26, "column 'I1': 'abc' is not a number"),
    ("0" + "\t1" * 13 + "\tx" * 27, "41 fields, expected at most 40"),
])
def test_malformed_rows_are_reported_with_file_and_line(tmp_path, cli, line, problem):
    train = shared_file("criteo_kaggle_head1000", "train.txt")
    lines = train.read_text().split("\n")[:10]
    lines[6] = line
    bad = tmp_path / "bad.tsv"
    bad.write_text("\n".join(lines) + "\n")
    code, _, err = cli("train", "--config", EXAMPLE, "--quiet", "--train", bad,
                       "--model-dir", tmp_path / "m", "--set", "eval_input_path=")
    assert code == 1
    assert f"{bad}:7: {problem}" in err
    assert not (tmp_path / "m").exists()


def test_a_bad_eval_file_costs_no_training(tmp_path, cli):
    """eval_input_path bad in its first block fails before training (nothing written); bad
    further in, the trained model is written without test metrics and the error says so."""
    lines = shared_file("criteo_kaggle_head1000", "train.txt").read_text().splitlines()
    lines = [line + "\n" for line in lines] * 20  # 5 MB: past the first 4 MB block
    bad = "1\tabc" + "\t1" * 12 + "\tx" * 26 + "\n"
    head, tail = tmp_path / "head.tsv", tmp_path / "tail.tsv"
    head.write_text(bad + "".join(lines[:50]))
    tail.write_text("".join(lines) + bad)
    for path, model, line in ((head, "h", 1), (tail, "t", len(lines) + 1)):
        code, _, err = cli("train", "--config", EXAMPLE, "--quiet", "--model-dir",
                           tmp_path / model, "--set", f"eval_input_path={path}")
        assert code == 1 and f"{path}:{line}: column 'I1': 'abc' is not a number" in err, err
    assert not (tmp_path / "h").exists()
    assert f"(the trained model was written to {tmp_path / 't'}, without test metrics)" in err
    metrics = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert "test" not in metrics and len(metrics["train"]) == 2


def test_predict_reads_request_body_files(trained, cli, tmp_path):
    rows, predictions = first_rows_and_predictions(trained, cli, tmp_path, 5)
    expected = [p["score"] for p in predictions]
    bodies = {"json": json.dumps({"instances": [instance(r) for r in rows]}),
              "jsonlines": "\n".join(json.dumps(instance(r)) for r in rows) + "\n"}
    for fmt, body in bodies.items():
        path = tmp_path / f"requests.{fmt}"
        path.write_text(body)
        for given in (["--format", fmt], []):  # told by the first line without --format
            code, out, err = cli("predict", "--model-dir", trained, "--data", path, *given)
            assert code == 0, err
            np.testing.assert_allclose([json.loads(line)["score"] for line in out.splitlines()],
                                       expected, rtol=1e-5, err_msg=fmt)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"I1": 1}\n{"I1": \n')
    code, _, err = cli("predict", "--model-dir", trained, "--data", bad, "--format", "jsonlines")
    assert code == 1 and f"{bad}: line 2: malformed JSON" in err
    bad.write_text('{"I1": 1}\n\n[1]\n')  # a blank line still counts
    code, _, err = cli("predict", "--model-dir", trained, "--data", bad, "--format", "jsonlines")
    assert code == 1 and f"{bad}:3: expected an object of feature values, got list" in err


def test_blank_lines_are_skipped_and_a_line_without_the_delimiter_is_refused(trained, cli,
                                                                              tmp_path):
    """Blank lines score nothing (as pyarrow's and pandas' CSV readers skip them) and errors
    after them name the file's line; a file of another format (a libsvm file for a TSV model)
    is one line naming its first line, not a score per row of missing values."""
    lines = shared_file("criteo_kaggle_head1000", "train.txt").read_text().split("\n")[:4]
    plain, spaced = tmp_path / "plain.tsv", tmp_path / "spaced.tsv"
    plain.write_text("\n".join(lines) + "\n")
    spaced.write_text("\n".join(lines[:2]) + "\n\n\r\n" + "\n".join(lines[2:]) + "\n\n")
    scores = []
    for path in (plain, spaced):
        code, out, err = cli("predict", "--model-dir", trained, "--data", path)
        assert code == 0, err
        scores.append([json.loads(line)["score"] for line in out.splitlines()])
    assert len(scores[1]) == 4 and scores[0] == scores[1]
    spaced.write_text("\n".join(lines[:2]) + "\n\n\r\n" + "x" + lines[2][1:] + "\n")
    code, _, err = cli("evaluate", "--model-dir", trained, "--data", spaced)
    assert code == 1 and f"{spaced}:5: column 'label': 'x' is not a number" in err, err
    a9a = shared_file("a9a_libsvm", "a9a.t")
    code, out, err = cli("predict", "--model-dir", trained, "--data", a9a)
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1
    assert f"{a9a}:1: '-1 1:1 6:1 17:1 21:1 35:1 42:1 54:1 62:1'... (76 characters) is 1 " \
        "field, expected up to 40 separated by '\\t'" in err, err


def test_a_file_to_score_without_its_label_column_is_read_without_it(trained, cli, tmp_path):
    """Criteo's test.txt is train.txt less the label column. Read with the training layout,
    its columns came one place off (here refused at the first hashed id read as a count; in
    a file of numbers, scored silently wrong): it scores as the same rows with their label,
    and a command that needs the label says what it found."""
    lines = shared_file("criteo_kaggle_head1000", "train.txt").read_text().splitlines()[:50]
    labelled, unlabelled = tmp_path / "train.txt", tmp_path / "test.txt"
    labelled.write_text("\n".join(lines) + "\n")
    unlabelled.write_text("\n".join(line.split("\t", 1)[1] for line in lines) + "\n")
    scores = []
    for path in (labelled, unlabelled):
        code, out, err = cli("predict", "--model-dir", trained, "--data", path)
        assert code == 0, err
        scores.append([json.loads(line)["score"] for line in out.splitlines()])
    assert len(scores[1]) == 50 and np.allclose(scores[0], scores[1], rtol=0, atol=1e-6)
    assert f"{unlabelled}: no line has more than 39 fields, the columns less label: read as " \
        "a file without label" in err, err
    code, _, err = cli("evaluate", "--model-dir", trained, "--data", unlabelled)
    assert code == 1 and "has the file its label column?" in err, err


def _overfitting_run(tmp_path) -> tuple:
    """700 Criteo rows to train on (at batch 32, Adagrad lr 0.2: they overfit within a few
    epochs) and the other 300 to validate on: the validation file, its labels and the common
    arguments of ``fmkit train``."""
    lines = shared_file("criteo_kaggle_head1000", "train.txt").read_text().splitlines(True)
    train, valid = tmp_path / "train.txt", tmp_path / "valid.txt"
    train.write_text("".join(lines[:700]))
    valid.write_text("".join(lines[700:]))
    labels = [int(row["label"]) for row in criteo_rows(valid)]
    return valid, labels, ["train", "--config", EXAMPLE, "--quiet", *SMALL_CRITEO, "--set",
                           f"train_input_path={train}", "--set", "data_config.batch_size=32",
                           "--set", "data_config.shuffle=true",
                           "--set", "train_config.sparse_optimizer.adagrad_optimizer.lr=0.2"]


@pytest.mark.parametrize("metric, key, higher_is_better, sklearn_metric", [
    ("validation:binary_classification_cross_entropy", "binary_classification_cross_entropy",
     False, log_loss),
    ("auc", "auc", True, roc_auc_score),
    ("accuracy", "binary_classification_accuracy", True,
     lambda y, s: accuracy_score(y, np.asarray(s) >= 0.5)),
    ("f1", "binary_f_beta", True, lambda y, s: f1_score(y, np.asarray(s) >= 0.5)),
    ("rmse", "rmse", False, lambda y, s: mean_squared_error(y, s) ** 0.5),  # l2_loss below
])
def test_early_stopping_keeps_the_best_epoch(tmp_path, cli, metric, key, higher_is_better,
                                             sklearn_metric):
    """700 Criteo rows overfit within a few epochs: with train_config.early_stopping_patience
    the run scores eval_input_path after every epoch, stops two epochs after the best one and
    keeps its weights: those of a run stopped at that epoch, with the metric sklearn computes
    from their predictions."""
    valid, labels, common = _overfitting_run(tmp_path)
    if metric == "rmse":  # a regressor on the same 0/1 labels, with TorchEasyRec's metrics
        common += ["--set", "model_config.losses=[{l2_loss: {}}]", "--set",
                   "model_config.metrics=[{mean_squared_error: {}}, {mean_absolute_error: {}}]"]

    def predictions(model_dir) -> np.ndarray:
        code, out, err = cli("predict", "--model-dir", model_dir, "--data", valid)
        assert code == 0, err
        return np.array([json.loads(line)["score"] for line in out.splitlines()])

    code, _, err = cli(*common, "--set", f"eval_input_path={valid}",
                       "--set", f"model_dir={tmp_path / 'stopped'}",
                       "--set", "train_config.num_epochs=40",
                       "--set", "train_config.early_stopping_patience=2",
                       "--set", f"train_config.early_stopping_metric={metric}")
    assert code == 0, err
    history = json.loads((tmp_path / "stopped" / "metrics.json").read_text())["train"]
    values = np.array([h["validation"][key] for h in history])
    best = int(np.argmax(values) if higher_is_better else np.argmin(values))
    assert len(history) < 40 and len(history) == best + 1 + 2
    kept = predictions(tmp_path / "stopped")
    assert sklearn_metric(labels, kept) == pytest.approx(values[best], rel=1e-4)
    # TorchEasyRec's train_eval_result.txt: a line per epoch's evaluation, then the written
    # weights' at the last step (700 rows in batches of 32 an epoch)
    results = [json.loads(line) for line in
               (tmp_path / "stopped" / "train_eval_result.txt").read_text().splitlines()]
    steps = math.ceil(700 / 32)
    assert [r["global_step"] for r in results] == [steps * (i + 1) for i in range(len(history))
                                                   ] + [steps * len(history)]
    if metric == "rmse":
        assert set(results[-1]) == {"global_step", "l2_loss", "mean_absolute_error",
                                    "mean_squared_error"}
        assert results[-1]["mean_squared_error"] == pytest.approx(
            mean_squared_error(labels, kept), rel=1e-4)
        assert results[-1]["l2_loss"] == results[-1]["mean_squared_error"]
        assert results[-1]["mean_absolute_error"] == pytest.approx(
            mean_absolute_error(labels, kept), rel=1e-4)
    code, _, err = cli(*common, "--set", "eval_input_path=",
                       "--set", f"model_dir={tmp_path / 'short'}",
                       "--set", f"train_config.num_epochs={best + 1}")
    assert code == 0, err
    np.testing.assert_allclose(kept, predictions(tmp_path / "short"), rtol=1e-5, atol=1e-7)


def test_validation_every_n_steps_keeps_the_best_step(tmp_path, cli):
    """train_config.validation_every_steps=10 on 700 rows at batch 32 (22 steps an epoch)
    measures at steps 10, 20, 22 (the epoch's end), 30...; the run stops two measurements
    after the best one and keeps its weights: those of a run of num_steps = that step."""
    valid, labels, common = _overfitting_run(tmp_path)
    code, _, err = cli(*common, "--set", f"eval_input_path={valid}",
                       "--set", f"model_dir={tmp_path / 'stopped'}",
                       "--set", "train_config.num_epochs=40",
                       "--set", "train_config.early_stopping_patience=2",
                       "--set", "train_config.validation_every_steps=10")
    assert code == 0, err
    history = json.loads((tmp_path / "stopped" / "metrics.json").read_text())["train"]
    measured = sorted([(c["step"], c["auc"]) for h in history for c in h["checks"]]
                      + [(h["steps"], h["validation"]["auc"]) for h in history])
    steps, aucs = zip(*measured)
    assert list(steps) == sorted({s for s in range(10, steps[-1] + 1)
                                  if s % 10 == 0 or s % 22 == 0})
    best = int(np.argmax(aucs))
    assert len(steps) == best + 1 + 2 and len(history) < 40
    code, out, err = cli("predict", "--model-dir", tmp_path / "stopped", "--data", valid)
    assert code == 0, err
    kept = np.array([json.loads(line)["score"] for line in out.splitlines()])
    assert roc_auc_score(labels, kept) == pytest.approx(aucs[best], rel=1e-4)
    code, _, err = cli(*common, "--set", "eval_input_path=",
                       "--set", f"model_dir={tmp_path / 'short'}",
                       "--set", "train_config.num_epochs=null",
                       "--set", f"train_config.num_steps={steps[best]}")
    assert code == 0, err
    code, out, err = cli("predict", "--model-dir", tmp_path / "short", "--data", valid)
    short = np.array([json.loads(line)["score"] for line in out.splitlines()])
    np.testing.assert_allclose(kept, short, rtol=1e-5, atol=1e-7)


def test_early_stopping_needs_an_eval_input_path(tmp_path, cli):
    code, _, err = cli("train", "--config", EXAMPLE, "--set", "eval_input_path=",
                       "--set", f"model_dir={tmp_path / 'm'}",
                       "--set", "train_config.early_stopping_patience=2")
    assert code == 1
    assert "train_config.early_stopping_patience: early stopping scores eval_input_path" in err
    code, _, err = cli("train", "--config", EXAMPLE, "--set", f"model_dir={tmp_path / 'm'}",
                       "--set", "train_config.early_stopping_patience=2",
                       "--set", "train_config.early_stopping_metric=rmse")
    assert code == 1 and "'rmse' is not a metric of a binary_classifier" in err


def test_files_laid_out_otherwise_are_read_with_set_data_config(trained, cli, tmp_path):
    """``--set data_config.PATH=VALUE`` on predict and evaluate reads a file whose layout
    differs from the training files' (here: no header, ';', the columns reversed and the
    label renamed): the same scores and metrics as the original file's; fields outside
    data_config, and an FM, are refused."""
    lines = shared_file("criteo_kaggle_head1000", "train.txt").read_text().split("\n")[:300]
    original, reversed_ = tmp_path / "original.tsv", tmp_path / "reversed.txt"
    original.write_text("\n".join(lines) + "\n")
    names = ["label", *INTS, *CATS]
    rows = [(line.split("\t") + [""] * 40)[:40] for line in lines]
    reversed_.write_text("".join(";".join(reversed(row)) + "\n" for row in rows))
    layout = ["--set", "data_config.delimiter=;", "--set", "data_config.label_fields=[click]",
              "--set", "data_config.input_fields=[" + ", ".join(
                  f"{{input_name: {n}}}" for n in reversed(["click", *names[1:]])) + "]"]
    # the same names as TorchEasyRec's input_fields_str writes them, ODPS types included
    typed = ";".join(f"{n}:{'BIGINT' if n.startswith('I') else 'STRING'}"
                     for n in reversed(["click", *names[1:]])) + ";"
    as_text = [*layout[:4], "--set", f"data_config.input_fields_str={typed}"]
    answers = []
    for data, extra in ((original, []), (reversed_, layout), (reversed_, as_text)):
        code, predicted, err = cli("predict", "--model-dir", trained, "--data", data, *extra)
        assert code == 0, err
        code, measured, err = cli("evaluate", "--model-dir", trained, "--data", data, *extra)
        assert code == 0, err
        answers.append((predicted, json.loads(measured)))
    assert answers[1][0] == answers[0][0] and answers[1][0].count("\n") == 300
    assert answers[1][1] == answers[0][1] and answers[2] == answers[0]
    code, _, err = cli("predict", "--model-dir", trained, "--data", original, "--set",
                       "model_config.num_class=2")
    assert code == 1 and "only data_config fields change how files are read" in err
    code, _, err = cli("evaluate", "--model-dir", trained, "--data", original, "--set",
                       "data_config.label_fields=[I1]")  # (a configuration's rule too)
    assert code == 1 and "the label column 'I1' is also a feature's input" in err


def test_init_model_that_is_no_deepfm_says_what_it_is(cli, tmp_path):
    """A missing directory is named as missing (it was "not a DeepFM model directory"), an
    FM's as an FM's."""
    fm = tmp_path / "fm"
    code, _, err = cli("train", "--train", shared_file("a9a_libsvm", "a9a.t"), "--model-dir", fm,
                       "--quiet", "feature_dim=124", "num_factors=2",
                       "predictor_type=binary_classifier")
    assert code == 0, err
    for path, problem in ((tmp_path / "missing", f"{tmp_path / 'missing'}: no such model "
                           "directory"), (fm, f"--init-model {fm}: not a DeepFM model directory "
                                              "(an FM model)")):
        code, _, err = cli("train", "--config", EXAMPLE, "--quiet", "--set",
                           f"model_dir={tmp_path / 'd'}", "--init-model", path)
        assert code == 1 and problem in err, err
