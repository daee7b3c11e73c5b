"""Readers: libsvm, CSV and DeepFM's delimited columns parsed exactly as independent parsers
do, streamed in blocks, and every bad record reported as FILE:LINE: problem (non-zero exit
from the CLI)."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import logging
import lzma
import os
import subprocess
import threading
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import dump_svmlight_file, load_svmlight_file

from fmkit.data import columns, libsvm
from fmkit.data.batch import concat, rebatch
from fmkit.data.numbers import NOT_FINITE, parse_float
from fmkit.data.sources import FileSource, detect_format, detect_index_base
from fmkit.errors import DataError
from fmkit.models.fm.model import FMModel

from .conftest import run_fmkit, shared_file
from .deepfm_helpers import small


def read_all(source: FileSource) -> tuple[sp.csr_matrix, np.ndarray]:
    batch = concat(list(source.blocks()))
    X = sp.csr_matrix((batch.values, batch.indices, batch.indptr),
                      shape=(batch.n_rows, source.feature_dim))
    return X, batch.labels


@pytest.mark.parametrize("block_bytes", [1 << 22, 4096, 97])
def test_a9a_equals_sklearn_reader(block_bytes):
    path = shared_file("a9a_libsvm", "a9a")
    source = FileSource(path, "auto", 123, index_base=1, labels="binary",
                        block_bytes=block_bytes)
    X, y = read_all(source)
    X_ref, y_ref = load_svmlight_file(str(path), n_features=123, zero_based=False)
    assert X.shape == X_ref.shape == (32561, 123)
    assert (X != X_ref.astype(np.float32)).nnz == 0
    np.testing.assert_array_equal(y, (y_ref == 1).astype(np.float32))


def test_a_channel_of_comma_separated_glob_patterns_reads_their_files_in_order(tmp_path, cli):
    """TorchEasyRec's input paths: patterns' matches sorted, patterns in the order given (the
    rows as scikit-learn reads the files one after the other); a pattern matching nothing, a
    missing file or a URL among them is one line."""
    lines = shared_file("a9a_libsvm", "a9a").read_text().splitlines(keepends=True)
    for i, name in enumerate(["part-2", "part-0", "part-1", "other"]):
        (tmp_path / name).write_text("".join(lines[i * 100:(i + 1) * 100]))
    given = f"{tmp_path}/other,{tmp_path}/part-*"
    X, y = read_all(FileSource(given, "libsvm", 123, index_base=1, labels="binary"))
    order = [tmp_path / n for n in ("other", "part-0", "part-1", "part-2")]
    parts = [load_svmlight_file(str(p), n_features=123, zero_based=False) for p in order]
    assert (X != sp.vstack([p[0] for p in parts]).astype(np.float32)).nnz == 0
    np.testing.assert_array_equal(y, np.concatenate([p[1] == 1 for p in parts]))
    hp = ["feature_dim=123", "num_factors=2", "predictor_type=binary_classifier"]
    for train, problem in ((f"{tmp_path}/nope-*", f"{tmp_path}/nope-*: no file matches this "
                            "pattern"),
                           (f"{tmp_path}/part-0,{tmp_path}/gone", f"{tmp_path}/gone: no such "
                            "file or directory"),
                           (f"s3://b/k,{tmp_path}/part-0", "s3://b/k: is a URL")):
        code, _, err = cli("train", "--train", train, "--model-dir", tmp_path / "m", *hp)
        assert code == 1 and err.startswith(f"fmkit: error: {problem}"), err
        assert not (tmp_path / "m").exists()


def test_a_parquet_file_given_to_an_fm_says_what_it_is(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"label": [1, 0], "x": [0.5, 1.5]}), path)
    with pytest.raises(DataError, match=f"^{path}: is Parquet: an FM reads libsvm"):
        FileSource(path, "auto", 10)  # (it was parsed as libsvm: "non-numeric value in 'PAR1")


def test_an_archive_given_as_data_says_what_it_is(tmp_path):
    """An .npz (weights) or a model.tar.gz given where data goes was parsed as libsvm or CSV
    ("non-numeric value in 'model_algo-1\\x00...'"): made here with Python's own zipfile,
    tarfile and numpy."""
    import tarfile

    import numpy as np

    np.savez(tmp_path / "weights.npz", w=np.zeros(3))
    (tmp_path / "rows.svm").write_text("1 1:1\n")
    with tarfile.open(tmp_path / "model.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "rows.svm", arcname="rows.svm")
    from fmkit.data.columns import read_delimited
    from fmkit.data.recordio import write_rows

    with open(tmp_path / "rows.rec", "wb") as f:
        write_rows(f, np.eye(2), np.ones(2))
    for name, kind in (("weights.npz", "a zip archive"), ("model.tar.gz", "a tar archive")):
        with pytest.raises(DataError, match=f"^{tmp_path / name}: is {kind}"):
            FileSource(tmp_path / name, "auto", 10)
    for name, kind in (("weights.npz", "a zip archive"), ("model.tar.gz", "a tar archive"),
                       ("rows.rec", "recordIO-protobuf")):  # (a DeepFM's reader)
        with pytest.raises(DataError, match=f"^{tmp_path / name}: is {kind}.*, not delimited"):
            next(read_delimited(tmp_path / name, ["label", "x"], ",", False))


def test_index_base_detection(tmp_path):
    assert detect_index_base(FileSource(shared_file("a9a_libsvm", "a9a"), "auto", 123)) == 1
    zero = tmp_path / "zero.libsvm"
    zero.write_text("1 3:1\n0 0:2 5:1\n")
    assert detect_index_base(FileSource(zero, "auto", 10)) == 0


def test_float_parser_matches_python_float():
    from numba import njit

    # the parsers' helper, compiled into a caller as they compile it
    _parse_float = njit(lambda buf, start, end: parse_float(buf, start, end))
    rng = np.random.default_rng(0)
    texts = ["0", "-0.0", "+1.5", "1e-05", "3.", ".5", "-.25e+2", "123456789012345678901",
             "1e308", "1.5e-300", "0.1", "0.30000000000000004", "7E+3",
             "1.7976931348623157e308", "2.2250738585072014e-308"]
    texts += [repr(float(v)) for v in rng.normal(scale=1e3, size=300)]
    texts += [f"{v:.6g}" for v in rng.lognormal(sigma=20, size=300)]
    for text in texts:
        buf = np.frombuffer(text.encode(), np.uint8)
        value, code = _parse_float(buf, 0, buf.size)
        if abs(float(text)) > np.finfo(np.float32).max:  # fmkit stores float32: refused
            assert code == NOT_FINITE, text
            continue
        assert code == 0, text
        assert value == pytest.approx(float(text), rel=4.5e-16, abs=1e-320), text


def test_comments_crlf_blank_lines_qid_and_missing_final_newline(tmp_path):
    path = tmp_path / "odd.libsvm"
    path.write_bytes(b"# header comment\r\n1 qid:3 1:0.5 4:2 # trailing\r\n\r\n   \n-1 2:1e-3\n0")
    X, y = read_all(FileSource(path, "libsvm", 5, index_base=0, labels="binary"))
    np.testing.assert_array_equal(y, [1, 0, 0])
    np.testing.assert_allclose(X.toarray(), [[0, 0.5, 0, 0, 2], [0, 0, 1e-3, 0, 0], [0] * 5],
                               rtol=1e-7)


def test_csv_equals_numpy_loadtxt(tmp_path):
    rng = np.random.default_rng(1)
    table = np.round(rng.normal(size=(500, 7)), 4)
    table[rng.random(table.shape) < 0.5] = 0.0
    path = tmp_path / "dense.csv"
    np.savetxt(path, table, delimiter=",", fmt="%.4f")
    assert detect_format(path) == "csv"
    X, y = read_all(FileSource(path, "auto", 6, labels="real", block_bytes=1000))
    expected = np.loadtxt(path, delimiter=",")
    np.testing.assert_allclose(y, expected[:, 0], rtol=1e-6)
    np.testing.assert_allclose(X.toarray(), expected[:, 1:], rtol=1e-6)


@pytest.mark.parametrize("block_bytes", [5000, 1 << 20, 1 << 26])
def test_rebatch_makes_the_same_chunks_whatever_the_blocks(block_bytes):
    """Chunks of whole mini-batches, all of one size but the last, the same rows in the same
    order whether the file came in 5 kB blocks, 1 MB ones or one block (thread count and
    block size must not change the data order, or the model)."""
    path = shared_file("a9a_libsvm", "a9a.t")
    source = FileSource(path, "libsvm", 123, index_base=1, labels="binary",
                        block_bytes=block_bytes)
    chunks = list(rebatch(source.blocks(), 64, chunk_rows=1000))
    assert [c.n_rows for c in chunks] == [960] * 16 + [16281 - 16 * 960]
    everything = list(FileSource(path, "libsvm", 123, index_base=1, labels="binary").blocks())
    np.testing.assert_array_equal(concat(chunks).indices, concat(everything).indices)


# -- bad input: FILE:LINE: problem ---------------------------------------------------------
GOOD = "1 1:0.5 3:1\n0 2:1\n"
BAD_LIBSVM = [
    ("1 1:0.5 3:1\n0 2:1 12:1\n", 2, "feature index 12 is out of range: feature_dim=10"),
    ("1 1:0.5\n0 2:abc\n", 2, "non-numeric value in '2:abc'"),
    ("1 1:0.5\n0 x:1\n", 2, "feature index in 'x:1' is not a non-negative integer"),
    ("1 1:0.5\n0 2:nan\n", 2, "value '2:nan' is not a finite float32"),
    ("1 1:0.5\n0 2:-inf\n", 2, "value '2:-inf' is not a finite float32"),
    ("1 1:0.5\n0 2:1e999\n", 2, "value '2:1e999' is not a finite float32"),
    ("1 1:0.5\n0 3:1e39\n", 2, "value '3:1e39' is not a finite float32"),  # beyond float32
    ("1 1:0.5\n0 2\n", 2, "expected INDEX:VALUE, got '2'"),
    ("1 1:0.5\nyes 2:1\n", 2, "non-numeric value in 'yes'"),
    ("1 1:0.5\n\n2 2:1\n", 3, "label 2 is not valid for a binary classifier"),
    ("1 1:0.5\n0 2:1 2:3\n", 2, "feature index 2 appears twice in the row"),
    ("1 1:0.5\n0 5:1 2:1 7:1 5:3\n", 2, "feature index 5 appears twice in the row"),
    ("1 3:1 1:1\n0 1:1 2:1 3:1\n1 4:1 qid:3 4:2\n", 3, "feature index 4 appears twice"),
    ("1 1:0.5\r\n0 1:1 99999999999:1\r\n", 2,
     "feature index in '99999999999:1' is not a non-negative integer below 2^31"),
    ("1 1:0.5\n0 1:1 2:\n", 2, "non-numeric value in '2:'"),
]


@pytest.mark.parametrize("text,line,problem", BAD_LIBSVM)
def test_bad_libsvm_records_name_file_and_line(cli, tmp_path, text, line, problem):
    path = tmp_path / "bad.libsvm"
    path.write_text(text)
    code, _, err = cli("train", "--train", path, "--model-dir", tmp_path / "m",
                       "--index-base", "0", "feature_dim=10", "num_factors=2",
                       "predictor_type=binary_classifier")
    assert code != 0
    assert f"{path}:{line}: {problem}" in err
    assert "Traceback" not in err
    assert not (tmp_path / "m").exists()


def test_bad_label_for_regressor(cli, tmp_path):
    path = tmp_path / "bad.libsvm"
    path.write_text("1.5 1:1\nNaN 2:1\n")
    code, _, err = cli("train", "--train", path, "--model-dir", tmp_path / "m",
                       "feature_dim=10", "num_factors=2", "predictor_type=regressor")
    assert code != 0 and f"{path}:2: value 'NaN' is not a finite float32" in err


BAD_CSV = [
    ("1,0.5,2\n0,1\n", 2, "expected 3 columns like the first row, got 2"),
    ("1,0.5,2\n0,abc,1\n", 2, "column 2: non-numeric value 'abc'"),
    ("1,0.5,2\n0,,1\n", 2, "column 2: empty value"),
    ("1,0.5,2\n0,inf,1\n", 2, "column 2: value 'inf' is not a finite float32"),
    ("label,a,b\n1,0.5,2\n", 1, "label (column 1): non-numeric value 'label'"),
    ("1,0.5,2\n3,1,1\n", 2, "label 3 is not valid for a binary classifier"),
]


@pytest.mark.parametrize("text,line,problem", BAD_CSV)
def test_bad_csv_records_name_file_and_line(cli, tmp_path, text, line, problem):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    code, _, err = cli("train", "--train", path, "--model-dir", tmp_path / "m", "--format",
                       "csv", "feature_dim=2", "num_factors=2", "predictor_type=binary_classifier")
    assert code != 0 and f"{path}:{line}: {problem}" in err


def _trained_and_scored(cli, model, train, scored, *hyperparameters):
    """A binary classifier trained on ``train``, and ``fmkit predict``'s scores of each file
    of ``scored``, with the last command's stderr."""
    code, _, err = cli("train", "--quiet", "--train", train, "--model-dir", model,
                       "predictor_type=binary_classifier", *hyperparameters)
    assert code == 0, err
    scores = []
    for path in scored:
        code, out, err = cli("predict", "--model-dir", model, "--data", path)
        assert code == 0, err
        scores.append([json.loads(line)["score"] for line in out.splitlines()])
    return scores, err


def test_a_csv_to_score_without_its_label_column(cli, tmp_path):
    """A CSV file of exactly feature_dim columns is a file to score without the label: read
    with the label column first, its features came one place off and scored silently wrong.
    predict reads it as features only (scores equal to the labelled file's, in blocks smaller
    than the file); evaluate, which needs labels, keeps the layout and warns."""
    rng = np.random.default_rng(2)
    X = np.round(rng.normal(size=(400, 5)), 3)
    y = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(int)
    labelled, features = tmp_path / "train.csv", tmp_path / "test.csv"
    np.savetxt(labelled, np.column_stack([y, X]), delimiter=",", fmt="%g")
    np.savetxt(features, X, delimiter=",", fmt="%g")
    scores, err = _trained_and_scored(cli, tmp_path / "m", labelled, [labelled, features],
                                      "feature_dim=5", "num_factors=2", "epochs=3",
                                      "mini_batch_size=20")
    assert len(scores[1]) == 400 and scores[0] == scores[1]
    assert f"{features}: rows of 5 columns, feature_dim without a label column: read as " \
        "features only" in err
    X_read, _ = read_all(FileSource(features, "csv", 5, block_bytes=1000, scoring=True))
    np.testing.assert_allclose(X_read.toarray(), X, rtol=1e-6)
    code, _, err = cli("evaluate", "--model-dir", tmp_path / "m", "--data", features)
    assert code == 1 and "has the file its label?" in err, err


def test_a_libsvm_file_to_score_without_labels(cli, tmp_path):
    """Lines that start with their first pair (xLearn reads such files to score) are scored as
    the same lines with labels; a command that needs labels says the label is missing, where
    it said "non-numeric value in '1:1'"."""
    lines = shared_file("a9a_libsvm", "a9a.t").read_text().splitlines()[:300]
    labelled, unlabelled = tmp_path / "labelled.libsvm", tmp_path / "unlabelled.libsvm"
    labelled.write_text("\n".join(lines) + "\n")
    unlabelled.write_text("\n".join(line.split(" ", 1)[1] for line in lines) + "\n")
    scores, _ = _trained_and_scored(cli, tmp_path / "m", labelled, [labelled, unlabelled],
                                    "feature_dim=124", "num_factors=4", "epochs=2",
                                    "mini_batch_size=10")
    assert len(scores[1]) == 300 and scores[0] == scores[1]
    missing = f"{unlabelled}:1: no label: the line starts with the pair '{lines[0].split()[1]}'"
    code, _, err = cli("evaluate", "--model-dir", tmp_path / "m", "--data", unlabelled)
    assert code == 1 and missing in err, err
    code, _, err = cli("train", "--train", unlabelled, "--model-dir", tmp_path / "m2",
                       "feature_dim=124", "num_factors=4", "predictor_type=binary_classifier")
    assert code == 1 and missing in err, err


def test_csv_wider_than_feature_dim(cli, tmp_path):
    path = tmp_path / "wide.csv"
    path.write_text("1,0.5,2,3\n")
    code, _, err = cli("train", "--train", path, "--model-dir", tmp_path / "m",
                       "feature_dim=2", "num_factors=2", "predictor_type=regressor")
    assert code != 0 and f"{path}:1: feature index 2 is out of range: feature_dim=2" in err


def test_bad_test_channel_and_missing_file(cli, tmp_path):
    good = tmp_path / "good.libsvm"
    good.write_text(GOOD)
    bad = tmp_path / "bad.libsvm"
    bad.write_text("1 1:1\n1 1:1\n1 1:1 2:x\n")
    args = ["--model-dir", tmp_path / "m", "feature_dim=10", "num_factors=2",
            "predictor_type=binary_classifier"]
    code, _, err = cli("train", "--train", good, "--test", bad, *args)
    assert code != 0 and f"{bad}:3: non-numeric value in '2:x'" in err
    code, _, err = cli("train", "--train", tmp_path / "nope", *args)
    assert code != 0 and f"{tmp_path / 'nope'}: no such file or directory" in err
    code, _, err = cli("train", "--train", "/dev/null", *args)  # it exists: a device
    assert code == 1 and err.endswith("fmkit: error: /dev/null: is not a file, a directory or "
                                      "a pipe\n")


def test_a_bad_test_channel_costs_no_training(cli, tmp_path):
    """A test channel bad in its first block fails before training (no epoch runs, nothing
    is written); one bad further in leaves the trained model written, without test metrics,
    and says so: the same weights as a run without the test channel."""
    a9a, a9a_t = shared_file("a9a_libsvm", "a9a"), shared_file("a9a_libsvm", "a9a.t")
    args = ["feature_dim=123", "num_factors=4", "predictor_type=binary_classifier",
            "epochs=2", "lock_free=0"]
    head, tail = tmp_path / "head.libsvm", tmp_path / "tail.libsvm"
    lines = a9a_t.read_text().splitlines(True)
    head.write_text("1 1:1 200:1\n" + "".join(lines[:100]))
    tail.write_text("".join(lines) + "1 1:1 200:1\n")
    problem = "feature index 200 is out of range: feature_dim=123"
    code, _, err = cli("train", "--train", a9a, "--test", head, "--model-dir", tmp_path / "h",
                       *args)
    assert code == 1 and f"{head}:1: {problem}" in err and "epoch 1" not in err
    assert not (tmp_path / "h").exists()
    code, _, err = cli("train", "--train", a9a, "--test", tail, "--model-dir", tmp_path / "t",
                       *args)
    assert code == 1 and f"{tail}:{len(lines) + 1}: {problem}" in err
    assert f"(the trained model was written to {tmp_path / 't'}, without test metrics)" in err
    assert cli("train", "--train", a9a, "--model-dir", tmp_path / "plain", *args)[0] == 0
    kept, plain = (np.load(tmp_path / name / "weights.npz") for name in ("t", "plain"))
    for name in ("w0", "w", "V"):
        np.testing.assert_array_equal(kept[name], plain[name])
    assert "test" not in json.loads((tmp_path / "t" / "metrics.json").read_text())


def test_console_script_exit_code_on_bad_data(tmp_path):
    path = tmp_path / "bad.libsvm"
    path.write_text("1 1:0.5\n0 99:1\n")
    result = run_fmkit("train", "--train", path, "--model-dir", tmp_path / "m", "--quiet",
                       "feature_dim=10", "num_factors=2", "predictor_type=binary_classifier")
    assert result.returncode == 1
    assert result.stderr.strip().endswith(
        f"{path}:2: feature index 99 is out of range: feature_dim=10 with 1-based indices "
        "allows at most 10") or f"{path}:2: feature index 99 is out of range" in result.stderr


def test_sklearn_written_file_round_trips(tmp_path):
    rng = np.random.default_rng(2)
    X = sp.random(300, 50, density=0.1, random_state=2, format="csr")
    X.data = np.round(rng.normal(size=X.data.size), 5)
    y = rng.normal(size=300).round(3)
    path = tmp_path / "sk.libsvm"
    dump_svmlight_file(X, y, str(path), zero_based=True)
    Xr, yr = read_all(FileSource(path, "libsvm", 50, index_base=0, labels="real"))
    np.testing.assert_allclose(Xr.toarray(), X.toarray(), rtol=1e-6)
    np.testing.assert_allclose(yr, y, rtol=1e-6)
    assert libsvm  # the module under test


def python_libsvm(X: sp.csr_matrix, y: np.ndarray, base: int) -> bytes:
    """libsvm text from a plain-Python loop: each number as ``%.9g`` spells it."""
    lines = []
    for r in range(X.shape[0]):
        pairs = "".join(f" {int(i) + base}:{float(v):.9g}" for i, v in zip(
            X.indices[X.indptr[r]:X.indptr[r + 1]], X.data[X.indptr[r]:X.indptr[r + 1]]))
        lines.append(f"{float(y[r]):.9g}{pairs}\n")
    return "".join(lines).encode()


SPELLED = st.one_of(st.floats(width=32), st.sampled_from(
    [0.0, -0.0, 1.0, -1.0, 1e9, -1e9, 999_999_999.0, -999_999_999.0, 1e-45, 3.4e38, 0.5]),
    st.integers(-(2**24), 2**24).map(float))


@settings(max_examples=200, deadline=None, database=None, derandomize=True)
@given(rows=st.lists(st.tuples(SPELLED, st.dictionaries(st.integers(0, 2**31 - 2), SPELLED,
                                                        max_size=5)), max_size=8),
       base=st.sampled_from([0, 1]), split=st.integers(1, 4))
def test_written_libsvm_spells_every_number_as_python_does(rows, base, split):
    """The compiled writer (small integers spelled by itself, other numbers by Python once per
    distinct value, a block of rows per call) writes what a Python loop writes with ``%.9g``,
    NaN, infinities, -0 and float32's extremes included; rows in several blocks alike."""
    indptr = np.cumsum([0] + [len(pairs) for _, pairs in rows])
    keys = [key for _, pairs in rows for key in sorted(pairs)]
    data = [pairs[key] for _, pairs in rows for key in sorted(pairs)]
    X = sp.csr_matrix((np.array(data, np.float32), np.array(keys, np.int64), indptr),
                      shape=(len(rows), 2**31 - 1))
    y = np.array([label for label, _ in rows], np.float32)
    stream = io.BytesIO()
    libsvm.write_libsvm(stream, X, y, index_base=base, block_rows=split)
    assert stream.getvalue() == python_libsvm(X, y, base)


def test_written_libsvm_reads_back_as_the_same_float32_rows(tmp_path):
    rng = np.random.default_rng(4)
    X = sp.random(2000, 300, density=0.05, random_state=4, format="csr", dtype=np.float32)
    X.data = (rng.normal(size=X.data.size) * 10.0 ** rng.integers(-30, 30, X.data.size)
              ).astype(np.float32)
    X.data[::3] = rng.integers(-5, 5, X.data[::3].size)
    y = rng.integers(0, 2, 2000).astype(np.float32)
    with open(tmp_path / "w.libsvm", "wb") as f:
        libsvm.write_libsvm(f, X, y, index_base=1)
    Xr, yr = read_all(FileSource(tmp_path / "w.libsvm", "libsvm", 300, index_base=1,
                                 labels="binary"))
    assert np.array_equal(Xr.toarray(), X.toarray()) and np.array_equal(yr, y)


@pytest.mark.parametrize("bad_line", [3, 39_000, 79_998])
def test_large_blocks_parsed_in_parallel_keep_line_numbers(tmp_path, bad_line):
    """Blocks over 1 MB are cut into parts parsed on several threads: rows and the line named
    in an error must still be exact."""
    rows = [f"{i % 2} {i % 97}:1 {100 + i % 89}:0.5 {300 + i % 7}:2" for i in range(80_000)]
    good = tmp_path / "good.libsvm"
    good.write_text("\n".join(rows) + "\n")
    assert good.stat().st_size > 1 << 20  # one 4 MB read block, parsed in parts
    X, y = read_all(FileSource(good, "libsvm", 400, index_base=0, labels="binary"))
    X_ref, y_ref = load_svmlight_file(str(good), n_features=400, zero_based=True)
    assert (X != X_ref).nnz == 0 and (y == y_ref).all()
    rows[bad_line - 1] = "1 5:oops"
    bad = tmp_path / "bad.libsvm"
    bad.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=rf"bad.libsvm:{bad_line}: non-numeric value in '5:oops'"):
        read_all(FileSource(bad, "libsvm", 400, index_base=0, labels="binary"))


def test_libffm_reads_as_its_features_like_xlearns_fm(tmp_path):
    """xLearn's Criteo demo file: fields dropped, features and values in file order, as a plain
    Python split of each ``field:feature:value`` token reads them; a feature id repeated across
    fields of a row is one feature whose values add up."""
    path = shared_file("criteo_xlearn_libffm", "small_train.txt")
    assert detect_format(path) == "libffm"
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    expected_ids, expected_values = [], []
    for row in rows:  # a feature id in two fields of a row: one feature, values summed
        features: dict[int, float] = {}
        for token in row[1:]:
            _, feature, value = token.split(":")
            features[int(feature)] = features.get(int(feature), 0.0) + float(value)
        expected_ids += features
        expected_values += features.values()
    assert len(expected_ids) < sum(len(r) - 1 for r in rows), "the file has such repeats"
    blocks = list(FileSource(path, "auto", 10000, labels="binary").blocks())
    assert sum(b.n_rows for b in blocks) == len(rows) == 200
    np.testing.assert_array_equal(np.concatenate([b.indices for b in blocks]), expected_ids)
    np.testing.assert_allclose(np.concatenate([b.values for b in blocks]), expected_values,
                               rtol=1e-6)
    np.testing.assert_array_equal(np.concatenate([b.labels for b in blocks]),
                                  [float(r[0]) for r in rows])


@pytest.mark.parametrize("text,line,message", [
    ("1 0:3:1\n0 1:4:1 5:1\n", 2, "expected FIELD:INDEX:VALUE (libffm), got '5:1'"),
    ("1 0:3:1\n0 1:x:1\n", 2, "feature index in '1:x:1' is not a non-negative integer"),
    ("1 0:3:1\n0 1:4:abc\n", 2, "non-numeric value in '1:4:abc'"),
])
def test_bad_libffm_records_name_file_and_line(tmp_path, text, line, message):
    path = tmp_path / "bad.ffm"
    path.write_text(text)
    with pytest.raises(DataError) as e:
        list(FileSource(path, "libffm", 100, labels="binary").blocks())
    assert str(e.value).startswith(f"{path}:{line}: {message}")


FIELD = st.text(alphabet="ab\té,\r", max_size=4)


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(lines=st.lists(st.lists(FIELD, min_size=1, max_size=4), max_size=6),
       delimiter=st.sampled_from(["\t", ","]), crlf=st.booleans(), final_newline=st.booleans(),
       block_bytes=st.sampled_from([1 << 20, 7]))
def test_delimited_columns_split_as_python(tmp_path_factory, lines, delimiter, crlf,
                                           final_newline, block_bytes):
    """DeepFM's delimited reader (blocks of lines into Arrow columns) against Python's
    ``str.split``: a row's fields in order, an empty or absent (trailing) field missing, a
    line's final CR not part of its last field, a blank line skipped; more fields than
    columns, or a line without the delimiter, an error naming the line."""
    names = ["x", "y", "z"]
    texts = [delimiter.join(fields) for fields in lines]
    body = ("\r\n" if crlf else "\n").join(texts) + (("\r\n" if crlf else "\n")
                                                     if final_newline else "")
    path = tmp_path_factory.mktemp("tsv") / "data.tsv"
    path.write_bytes(body.encode())
    lines = (body.split("\n")[:-1] if body.endswith("\n") else body.split("\n") if body
             else [])
    _check_rows(path, names, delimiter, block_bytes,
                [text.removesuffix("\r").split(delimiter) for text in lines])


def _check_rows(path, names, delimiter, block_bytes, lines, problem_prefix=str) -> None:
    """The delimited reader's rows of ``path`` against ``lines`` (each line's fields, split
    independently): an empty field missing, a line of one empty field skipped, more fields
    than ``names`` or a lone field an error naming the first such line."""
    expected, problem = [], None
    for number, fields in enumerate(lines, start=1):
        if fields == [""]:
            continue
        if len(fields) > len(names):
            problem = problem or f"{path}:{number}: {len(fields)} fields, expected at most 3"
        if len(fields) == 1:
            problem = problem or f"{path}:{number}: {fields[0]!r} is 1 field, expected up to 3"
        if not problem:
            expected.append([f or None for f in fields] + [None] * (len(names) - len(fields)))
    try:
        got = [list(row) for batch in columns.read_delimited(path, names, delimiter, False,
                                                             block_bytes=block_bytes)
               for row in zip(*(batch.columns[n].to_pylist() for n in names))]
    except DataError as e:
        assert problem is not None and str(e).startswith(problem_prefix(problem)), (str(e),
                                                                                    problem)
        return
    assert problem is None
    assert got == expected


def test_a_quoted_value_across_lines_is_named_as_such(tmp_path):
    """A quoted value holding a line break (which the reader does not read: a row is a line)
    fails on the line it continues onto, and the message says what it may be; a lone field
    without a quote gets no such guess."""
    for text, hinted in (('1,a,"hello\nworld"\n', True), ("1,a,b\nword\n", False)):
        path = tmp_path / "data.csv"
        path.write_text(text)
        with pytest.raises(DataError) as e:
            list(columns.read_delimited(path, ["x", "y", "z"], ",", False))
        assert str(e.value).startswith(f"{path}:2: ")
        assert ("the rest of a quoted value begun on the line before" in str(e.value)) == hinted


QUOTED_FIELD = st.text(alphabet='ab"\té,', max_size=4)


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(rows=st.lists(st.lists(QUOTED_FIELD, min_size=1, max_size=4), max_size=6),
       delimiter=st.sampled_from(["\t", ","]), quote_all=st.booleans(), crlf=st.booleans(),
       block_bytes=st.sampled_from([1 << 20, 7]))
def test_quoted_fields_split_as_pythons_csv_module(tmp_path_factory, rows, delimiter,
                                                   quote_all, crlf, block_bytes):
    """Fields quoted as Python's ``csv`` writer quotes them (those holding the delimiter or a
    quote, or all of them), with quotes inside: the reader's rows equal ``csv.reader``'s,
    under the same rules as unquoted text (an empty field missing, a blank line skipped,
    more fields than columns an error naming the line)."""
    import csv
    import io

    names = ["x", "y", "z"]
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter, lineterminator="\r\n" if crlf else "\n",
               quoting=csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL).writerows(rows)
    path = tmp_path_factory.mktemp("csv") / "data.csv"
    path.write_bytes(out.getvalue().encode())
    lines = list(csv.reader(io.StringIO(out.getvalue()), delimiter=delimiter))
    _check_rows(path, names, delimiter, block_bytes, lines,
                lambda problem: problem.split(" is 1 field")[0])


@settings(max_examples=200, deadline=None, database=None, derandomize=True)
@given(text=st.text(alphabet='ab"\t,\r\n', max_size=40),
       block_bytes=st.sampled_from([1 << 20, 5]))
def test_any_quotes_read_as_rows_or_one_error(tmp_path_factory, text, block_bytes):
    """Quotes anywhere (open, closed, doubled, at a block's end): rows whose quoted fields
    are unquoted and whose other fields are their text, or a DataError, never anything else;
    a line without a quote splits as ``str.split`` splits it."""
    path = tmp_path_factory.mktemp("q") / "data.csv"
    path.write_bytes(text.encode())
    names = ["x", "y", "z"]
    try:
        rows = [list(row) for batch in columns.read_delimited(path, names, ",", False,
                                                              block_bytes=block_bytes)
                for row in zip(*(batch.columns[n].to_pylist() for n in names))]
    except DataError:
        return
    plain = [line.removesuffix("\r").split(",") for line in text.split("\n")]
    if '"' not in text:
        expected = [[f or None for f in fields] + [None] * (3 - len(fields))
                    for fields in plain if fields != [""]]
        assert rows == expected


def test_a_csv_with_quoted_titles_reads_as_pandas_does(tmp_path):
    """The MovieLens-1M sample (DeepCTR's) quotes titles holding a comma: its columns equal
    pandas', with a header quoted as R's write.csv writes it. A quote left open on its line is
    text (the reader's way before quoting): in a CSV title it splits the line into too many
    fields, an error naming the line."""
    import pandas as pd

    sample = shared_file("movielens_1m_deepctr_sample", "movielens_sample.txt")
    expected = pd.read_csv(sample, dtype=str, keep_default_na=False)
    for path in (sample, tmp_path / "quoted_header.csv"):
        if path != sample:
            lines = sample.read_text().splitlines(True)
            header = ",".join(f'"{name}"' for name in lines[0].strip().split(","))
            path.write_text(header + "\n" + "".join(lines[1:]))
        batches = list(columns.read_delimited(path, None, ",", True))
        assert list(batches[0].columns) == list(expected.columns)
        for name in expected.columns:
            got = [v for b in batches for v in b.columns[name].to_pylist()]
            assert got == [v or None for v in expected[name]], name
    assert any("," in title for title in expected["title"])
    # a quote that does not close on its line is text (a raw log's query), as before quoting
    raw = tmp_path / "raw.tsv"
    raw.write_text('user\tquery\tlabel\n1\t"red shoes\t0\n2\t"a\tb"\t1\n3\t"blue\n')
    batch = next(columns.read_delimited(raw, None, "\t", True))
    assert batch.columns["query"].to_pylist() == ['"red shoes', "a\tb", '"blue']
    broken = tmp_path / "open.csv"
    broken.write_text('user,title,label\n1,"Apartment, The,1\n2,x,0\n')
    with pytest.raises(DataError) as e:
        list(columns.read_delimited(broken, None, ",", True))
    assert str(e.value).startswith(f"{broken}:2: 4 fields, expected at most 3")


COMPRESSORS = {"gzip": gzip.compress, "bzip2": bz2.compress, "xz": lzma.compress}


@pytest.mark.parametrize("kind", COMPRESSORS)
def test_compressed_files_read_as_the_text_they_hold(tmp_path, kind):
    """gzip, bzip2 and xz files are told by their first bytes, not their name, and read as
    the text they hold: libsvm rows equal scikit-learn's reading of the plain file (small
    blocks, so lines straddle reads), DeepFM's columns equal Python's split."""
    plain = shared_file("a9a_libsvm", "a9a.t")
    path = tmp_path / "data"
    path.write_bytes(COMPRESSORS[kind](plain.read_bytes()))
    assert detect_format(path) == "libsvm"
    X, y = read_all(FileSource(path, "auto", 123, index_base=1, labels="binary",
                               block_bytes=1 << 16))
    X_ref, y_ref = load_svmlight_file(str(plain), n_features=123, zero_based=False)
    assert X.shape == X_ref.shape and (X != X_ref.astype(np.float32)).nnz == 0
    np.testing.assert_array_equal(y, y_ref == 1)
    text = "".join(f"u{i % 7},{i},{i % 2}\n" for i in range(5000))
    table = tmp_path / "table"
    table.write_bytes(COMPRESSORS[kind](text.encode()))
    rows = [row for batch in columns.read_delimited(table, ["user", "item", "label"], ",",
                                                    False, block_bytes=4096)
            for row in zip(*(batch.columns[n].to_pylist() for n in ("user", "item", "label")))]
    assert [list(r) for r in rows] == [line.split(",") for line in text.splitlines()]


def test_damaged_and_unsupported_compressed_files_are_one_line(tmp_path):
    whole = gzip.compress(shared_file("a9a_libsvm", "a9a.t").read_bytes())
    (tmp_path / "cut.gz").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "bad.gz").write_bytes(whole[:20] + bytes(range(256)) * 40)
    (tmp_path / "a.zst").write_bytes(b"\x28\xb5\x2f\xfd" + bytes(100))
    for name, problem in (("cut.gz", "cut.gz: cannot decompress: Compressed file ended"),
                          ("bad.gz", "bad.gz: cannot decompress"),
                          ("a.zst", "a.zst: is zstd-compressed: decompress it first")):
        result = run_fmkit("train", "--train", tmp_path / name, "--model-dir", tmp_path / "m",
                           "--index-base", "1", "feature_dim=123", "num_factors=2",
                           "predictor_type=binary_classifier")
        assert result.returncode == 1, name
        assert problem in result.stderr and len(result.stderr.strip().splitlines()) == 1, (
            name, result.stderr)


def test_a_pipe_is_read_once(tmp_path):
    """A FIFO (or a shell's <(zcat ...)) trains one epoch, as the file would with the same
    settings; what would read it twice (epochs > 1, detecting the index base, DeepFM's
    epochs) is refused before anything is read, never left waiting for a writer (each run
    is a process with a deadline, so a regression fails instead of hanging the suite)."""
    import yaml

    data = shared_file("a9a_libsvm", "a9a")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    hp = ["feature_dim=123", "num_factors=4", "predictor_type=binary_classifier",
          "mini_batch_size=100", "bias_init_method=constant", "bias_init_value=0"]

    def train(*args: str) -> subprocess.CompletedProcess:
        return run_fmkit("train", *args, timeout=120)

    for base, epochs, problem in (("auto", 1, "give --index-base"),
                                  ("1", 2, "epochs=2 reads it once per epoch")):
        result = train("--train", fifo, "--format", "libsvm", "--index-base", base,
                       "--model-dir", tmp_path / "m", *hp, f"epochs={epochs}")
        assert result.returncode == 1
        assert f"{fifo}: is a pipe, read once: {problem}" in result.stderr, result.stderr
    result = train("--train", data, "--validation", fifo, "--format", "libsvm", "--index-base",
                   "1", "--model-dir", tmp_path / "m", *hp, "validation_every_steps=50")
    assert result.returncode == 1 and "validation_every_steps reads it several" in result.stderr
    writer = threading.Thread(target=lambda: fifo.write_bytes(gzip.compress(data.read_bytes())),
                              daemon=True)
    writer.start()
    result = train("--train", fifo, "--format", "libsvm", "--index-base", "1", "--model-dir",
                   tmp_path / "from_pipe", *hp)
    assert result.returncode == 0, result.stderr
    assert train("--train", data, "--model-dir", tmp_path / "from_file", *hp).returncode == 0
    piped, filed = (FMModel.load(tmp_path / d).params for d in ("from_pipe", "from_file"))
    for name in ("w0", "w", "V"):
        np.testing.assert_allclose(getattr(piped, name), getattr(filed, name), rtol=1e-6)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(small(train_input_path=str(fifo),
                                           model_dir=str(tmp_path / "deepfm"))))
    result = train("--config", config, "--set", "train_config.num_epochs=2")
    assert result.returncode == 1
    assert "is a pipe, read once: training reads it once per epoch" in result.stderr


def test_compressed_request_and_catalogue_files_answer_as_plain_ones(tmp_path, cli):
    """``fmkit predict --format jsonlines|json`` and ``fmkit recommend`` read gzip files as
    the text they hold: the same answers as from the plain files; without ``--format`` the
    request files are told by their first line, not read as libsvm; ``evaluate`` refuses them
    in one line (they carry no labels)."""
    model = tmp_path / "model"
    assert cli("train", "--quiet", "--train", shared_file("a9a_libsvm", "a9a"), "--model-dir",
               model, "feature_dim=123", "num_factors=4", "predictor_type=binary_classifier",
               "mini_batch_size=100")[0] == 0
    rows = [{"features": {"keys": [i % 100, 100 + i % 23], "shape": [123], "values": [1, 1]}}
            for i in range(50)]
    plain = {"jsonlines": "".join(json.dumps({"data": r}) + "\n" for r in rows),
             "json": json.dumps({"instances": [{"data": r} for r in rows]}),
             "items": "".join(json.dumps({"id": i, "keys": [100 + i]}) + "\n" for i in range(20)),
             "contexts": "".join(json.dumps({"id": u, "keys": [u, u + 7]}) + "\n"
                                 for u in range(5))}
    answers = {}
    for packed in (False, True):
        paths = {}
        for name, text in plain.items():
            paths[name] = tmp_path / f"{name}{'.gz' * packed}"
            paths[name].write_bytes(gzip.compress(text.encode()) if packed else text.encode())
        runs = [("predict", "--model-dir", model, "--data", paths[fmt], "--format", fmt)
                for fmt in ("jsonlines", "json")]
        runs.append(("recommend", "--model-dir", model, "--items", paths["items"],
                     "--context", paths["contexts"], "--k", "3"))
        runs += [run[:-2] for run in runs[:2]]  # --format auto
        results = [cli(*run) for run in runs]
        assert all(code == 0 for code, _, _ in results), [err for _, _, err in results]
        answers[packed] = [out for _, out, _ in results]
        assert answers[packed][3:] == answers[packed][:2]
        code, _, err = cli("evaluate", "--model-dir", model, "--data", paths["json"])
        assert code == 1
        assert err.strip().splitlines()[-1] == (
            f"fmkit: error: {paths['json']}: is JSON (SageMaker request bodies, which fmkit "
            "predict scores): training and evaluation read libsvm, libffm, CSV or "
            "recordIO-protobuf")
    assert answers[True] == answers[False]
    assert answers[True][0].count("\n") == 50 and answers[True][2].count("\n") == 5


def test_a_byte_order_mark_is_skipped_and_a_url_is_named(tmp_path, cli):
    """A UTF-8 byte-order mark before the first line (Excel's "CSV UTF-8") is not part of
    the first label or column name, plain or compressed; a URL is one line saying fmkit
    reads local files, not "no such file"."""
    plain = shared_file("a9a_libsvm", "a9a.t")
    marked = tmp_path / "marked"
    marked.write_bytes(gzip.compress(b"\xef\xbb\xbf" + plain.read_bytes()))
    X, y = read_all(FileSource(marked, "auto", 123, index_base=1, labels="binary"))
    X_ref, y_ref = load_svmlight_file(str(plain), n_features=123, zero_based=False)
    assert (X != X_ref.astype(np.float32)).nnz == 0 and np.array_equal(y, y_ref == 1)
    table = tmp_path / "table.csv"
    table.write_bytes(b"\xef\xbb\xbflabel,user\n1,u1\n0,u2\n")
    batch = next(columns.read_delimited(table, None, ",", True))
    assert list(batch.columns) == ["label", "user"]
    assert batch.columns["label"].to_pylist() == ["1", "0"]
    code, _, err = cli("train", "--train", "s3://bucket/day_0.gz", "--model-dir", tmp_path / "m",
                       "feature_dim=10", "num_factors=2", "predictor_type=binary_classifier")
    assert code == 1 and err.strip() == (
        "fmkit: error: s3://bucket/day_0.gz: is a URL: fmkit reads local files, directories "
        "and pipes; copy it first (aws s3 cp, gsutil cp, curl -O)")
    # "-" is no file: the message names /dev/stdin, which reads a pipe given its format
    assert cli("train", "--train", plain, "--model-dir", tmp_path / "m", "--quiet",
               "feature_dim=123", "num_factors=2", "predictor_type=binary_classifier")[0] == 0
    code, _, err = cli("evaluate", "--model-dir", tmp_path / "m", "--data", "-")
    assert code == 1 and "-: no such file: standard input is /dev/stdin (with --format" in err
    piped = run_fmkit("evaluate", "--model-dir", tmp_path / "m", "--data", "/dev/stdin",
                      "--format", "libsvm", input=plain.read_text())
    code, filed, _ = cli("evaluate", "--model-dir", tmp_path / "m", "--data", plain)
    assert code == 0 and piped.returncode == 0 and piped.stdout == filed, piped.stderr


def test_a_recordio_file_in_a_text_channel_is_named(tmp_path):
    """A channel's files share its first file's format: a recordIO file among libsvm files
    is named as such before any of its bytes are parsed as text."""
    from fmkit.data import recordio

    channel = tmp_path / "channel"
    channel.mkdir()
    (channel / "part-0").write_text("1 1:1 3:0.5\n0 2:1\n")
    with open(channel / "part-1", "wb") as f:
        recordio.write_rows(f, sp.csr_matrix(np.eye(2, 4, dtype=np.float32)),
                            np.array([1, 0], np.float32))
    rows = 0
    with pytest.raises(DataError, match="part-1: is recordIO-protobuf, not libsvm as this "
                                        "channel's first file"):
        for batch in FileSource(channel, "auto", 4, 1).blocks():
            rows += batch.n_rows
    assert rows == 2  # the first file's rows, read


@pytest.mark.parametrize("first, second, problem", [
    ("1 1:1 3:0.5\n0 2:1\n", "1,0,1,0\n0,1,0,1\n", "is CSV, not libsvm"),
    ("1 0:1:1 1:3:0.5\n0 0:2:1\n", "1,0,1,0\n", "is CSV, not libffm"),
    ("1,0,1,0\n0,1,0,1\n", "1 0:1:1 1:3:0.5\n", "is libffm, not csv"),
    ("1 0:1:1 1:3:0.5\n0 0:2:1\n", "1\n0 0:1:1\n", None),  # (a row without features)
])
def test_a_file_of_another_text_format_in_a_channel_is_named(tmp_path, first, second,
                                                            problem):
    """A CSV file among libsvm or libffm files (and a libffm file among CSV ones) is named as
    such, not parsed into "non-numeric value in '1,0,1,0'"; a libffm file whose first row has
    no features is read."""
    channel = tmp_path / "channel"
    channel.mkdir()
    (channel / "part-0").write_text(first)
    (channel / "part-1").write_text(second)
    source = FileSource(channel, "auto", 4, 0)
    rows = 0
    if problem is None:
        rows = sum(batch.n_rows for batch in source.blocks())
        assert rows == first.count("\n") + second.count("\n")
        return
    with pytest.raises(DataError, match=f"part-1: {problem} as this channel's first file: a "
                                        "channel's files share one format"):
        for batch in source.blocks():
            rows += batch.n_rows
    assert rows == first.count("\n")  # the first file's rows, read


def test_a_header_naming_a_column_twice_is_refused(tmp_path):
    """pandas would read the second ``user`` as ``user.1``; a DeepFM reads columns by name,
    and the second silently stood for the first."""
    table = tmp_path / "t.csv"
    table.write_text("label,user,user,item\n1,u1,u2,i1\n")
    with pytest.raises(DataError, match=r"t.csv:1: the header names column 'user' twice "
                                        r"\(columns 2 and 3\)"):
        next(columns.read_delimited(table, None, ",", True))
    with pytest.raises(DataError, match=r"t.csv:1: the header names column 'user' twice "
                                        r"\(columns 2 and 3\)$"):  # (no hint: names)
        next(columns.read_delimited(table, None, ",", True))
    table.write_text("1,5,1,20,24,M\n0,3,2,20,24,F\n")  # with_header, but line 1 is data
    with pytest.raises(DataError, match=r"t.csv:1: the header names column '1' twice "
                                        r"\(columns 1 and 3\); line 1 looks like data: set "
                                        r"data_config.with_header: false or input_fields$"):
        next(columns.read_delimited(table, None, ",", True))
    table.write_text("label,user,,,item\n1,u1,,,i1\n")  # (unnamed columns are not read)
    assert list(next(columns.read_delimited(table, None, ",", True)).columns) == [
        "label", "user", "", "item"]


def test_held_rows_are_scaled_and_joined_in_their_first_pass_only(tmp_path, monkeypatch):
    """A small channel read for several epochs is parsed, scaled to unit length (an FFM's
    ``instance_norm`` default), and joined into one batch in its first pass; later passes
    replay that batch, and the training chunks cut from it are views of it: no epoch after the
    first parses, scales or copies rows. Its rows and values equal the file's, scaled by a
    plain loop. Rows an FFM's field count already holds are held scaled the same way."""
    from fmkit.data import sources
    from fmkit.data.sources import HeldRows, UnitRows, held_if_small

    rng = np.random.default_rng(0)
    lines = [f"{i % 2} " + " ".join(f"{f}:{f * 10 + rng.integers(10)}:{rng.uniform(0.5, 2):.3f}"
                                    for f in range(5)) for i in range(3000)]
    path = tmp_path / "rows.ffm"
    path.write_text("\n".join(lines) + "\n")
    scaled = []
    monkeypatch.setattr(sources, "unit_rows",
                        lambda batch, scale=sources.unit_rows: scaled.append(1) or scale(batch))
    expected = [[float(t.split(":")[2]) for t in line.split()[1:]] for line in lines]
    expected = np.concatenate([np.array(v) / np.sqrt(np.sum(np.square(v))) for v in expected])

    def source():
        return FileSource(path, "auto", 50, index_base=0, labels="binary", block_bytes=8192)

    for held in (held_if_small(UnitRows(source()), 3),
                 held_if_small(UnitRows(HeldRows(source())), 3)):
        assert isinstance(held, HeldRows)
        first = list(held.blocks())
        assert len(first) > 3 and len(scaled) == len(first)  # several blocks, each scaled once
        scaled.clear()
        (replay,) = held.blocks()
        assert list(held.blocks())[0] is replay and not scaled
        np.testing.assert_allclose(replay.values, expected, rtol=1e-6)
        np.testing.assert_array_equal(replay.indices, np.concatenate([b.indices for b in first]))
        chunks = list(rebatch(held.blocks(), 7, chunk_rows=700))
        assert sum(c.n_rows for c in chunks) == 3000
        assert all(np.shares_memory(c.values, replay.values) for c in chunks)


def test_a_pass_guesses_its_rows_from_the_share_of_bytes_read(tmp_path):
    """A first epoch's progress shows a total guessed from the rows read so far over the share
    of the channel's bytes read (a compressed file's compressed bytes): checked against the
    rows counted line by line, block after block, over plain files and over gzip files (six
    copies of the rows: the decompressor reads ahead by a few kilobytes)."""
    lines = shared_file("a9a_libsvm", "a9a").read_text().splitlines(keepends=True)
    for kind, copies, write in (
            ("plain", 1, lambda path, text: path.write_text(text)),
            ("gzip", 6, lambda path, text: path.write_bytes(gzip.compress(text.encode(), 1)))):
        channel, rows = tmp_path / kind, lines * copies
        channel.mkdir()
        cuts = [0, len(rows) // 5, len(rows) * 3 // 5, len(rows)]
        for i in range(3):
            write(channel / f"part-{i}", "".join(rows[cuts[i]:cuts[i + 1]]))
        source = FileSource(str(channel), "libsvm", 123, index_base=1, labels="binary",
                            block_bytes=1 << 14)
        assert source.estimated_rows() is None  # (no pass yet)
        guesses = [source.estimated_rows() for _ in source.blocks()]
        assert len(guesses) > 100 and guesses[-1] == len(rows)  # all of it read: exact
        later = guesses[len(guesses) // 10:]  # after a tenth of the blocks
        assert all(abs(g - len(rows)) < 0.05 * len(rows) for g in later), (
            kind, min(later), max(later))
        for _ in source.blocks():  # a new pass starts again: one block is too little to guess
            assert source.estimated_rows() is None
            break


def _first_warning_share(labels: list[float], run: int, runs: int, share: float) -> float | None:
    """The rule by a plain loop: over the first k runs of ``run`` rows (k >= ``runs``), the
    share of the labels' variance between the runs' means; the first that reaches ``share``
    (None if none does)."""
    for k in range(runs, -(-len(labels) // run) + 1):
        seen = labels[:k * run]
        mean = sum(seen) / len(seen)
        total = sum((y - mean) ** 2 for y in seen)
        between = sum(len(part) * (sum(part) / len(part) - mean) ** 2
                      for part in (seen[i:i + run] for i in range(0, len(seen), run)))
        if total > 0 and between / total >= share:
            return between / total
    return None


@pytest.mark.parametrize("order", ["a9a as is", "a9a sorted", "ratings by user",
                                   "ratings sorted"])
def test_label_order_is_said_only_for_rows_ordered_by_label(caplog, order):
    """a9a and MovieLens' ratings as they come (sorted by user) are not ordered by label;
    sorted, they are: warned once, at the share the rule computed by a plain loop gives."""
    from fmkit.data.sources import LabelOrder
    from fmkit.logs import advice

    if order.startswith("ratings"):
        labels = [float(line.split()[2]) for line in shared_file(
            "movielens_100k", "ua.base").read_text().splitlines()]
    else:
        labels = [float(line.split(None, 1)[0] == "+1") for line in shared_file(
            "a9a_libsvm", "a9a").read_text().splitlines()]
    if order.endswith("sorted"):
        labels.sort()
    run = LabelOrder.RUN_ROWS
    blocks = [SimpleNamespace(labels=np.array(labels[i:i + run], dtype=np.float32))
              for i in range(0, len(labels), run)]
    caplog.set_level(logging.WARNING, logger=advice.name)  # (pytest's handler on it)
    assert list(LabelOrder("chan").checked(iter(blocks))) == blocks
    said = [r.getMessage() for r in caplog.records if "ordered by label" in r.getMessage()]
    expected = _first_warning_share(labels, run, LabelOrder.RUNS, LabelOrder.SHARE)
    assert (expected is not None) == order.endswith("sorted")
    assert len(said) == (expected is not None), said
    if said:
        assert said[0].startswith("chan: the training rows come ordered by label")
        assert f"hold {100 * expected:.0f}% of the labels' variance" in said[0]
