"""``fmkit predict`` writing a table (Parquet, CSV, TSV), as TorchEasyRec's predict writes one:
the model's outputs, then the ``--reserved_columns``. Scores are checked against computations
written here (a DeepFM in numpy, the FM's formula in numpy on scikit-learn's reading of the
file); the files are read back with pyarrow and the csv module."""

from __future__ import annotations

import csv
import json
import subprocess

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.datasets import load_svmlight_file

from fmkit.data import columns as columns_module
from fmkit.jobs.fm import train_files
from fmkit.models.deepfm import config as configs
from fmkit.models.deepfm.model import DeepFMModel

from .conftest import fmkit_executable, run_fmkit, shared_file
from .deepfm_helpers import ROWS, numpy_forward, small, tables_of

COPIES = 120  # 480 rows: in 4 KB blocks, several blocks scored at once


def _rows() -> list[dict]:
    return [{**row, "request_id": 1000 + i}
            for i, row in enumerate(ROWS * COPIES)]


def _write_inputs(tmp_path) -> dict[str, object]:
    rows = _rows()
    names = ["request_id", "user", "item", "tags", "age", "price"]
    text = ",".join(names) + "\n" + "".join(
        ",".join("" if row[n] is None else str(row[n]) for n in names) + "\n" for row in rows)
    (tmp_path / "rows.csv").write_text(text)
    pq.write_table(pa.table({
        "request_id": pa.array([r["request_id"] for r in rows], pa.int64()),
        "user": pa.array([str(r["user"]) for r in rows]),
        "item": pa.array([r["item"] for r in rows], pa.int64()),
        "tags": pa.array([r["tags"] for r in rows]),
        "age": pa.array([r["age"] for r in rows], pa.int64()),
        "price": pa.array([r["price"] for r in rows], pa.float64())}),
        tmp_path / "rows.parquet", row_group_size=50)
    return {"csv": tmp_path / "rows.csv", "parquet": tmp_path / "rows.parquet"}


def _read_table(path) -> dict[str, list]:
    """A written table's columns: pyarrow for Parquet, the csv module for text."""
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        return {name: table.column(name).to_pylist() for name in table.column_names}
    with open(path, newline="") as f:
        lines = list(csv.reader(f, delimiter="\t" if path.suffix == ".tsv" else ","))
    return {name: [line[i] for line in lines[1:]] for i, name in enumerate(lines[0])}


@pytest.mark.parametrize("source, output", [("parquet", "p.parquet"), ("csv", "p.csv"),
                                            ("parquet", "p.tsv"), ("csv", "p.parquet")])
def test_a_deepfm_table_holds_torcheasyrecs_outputs_then_the_reserved_columns(
        small_deepfm_dir, cli, tmp_path, monkeypatch, source, output):
    small_blocks, parquet_blocks = columns_module.iter_line_blocks, columns_module.read_parquet
    monkeypatch.setattr(columns_module, "iter_line_blocks",
                        lambda path, size: small_blocks(path, 4096))
    monkeypatch.setattr(columns_module, "read_parquet",
                        lambda path, shard: parquet_blocks(path, 40, shard))
    data = _write_inputs(tmp_path)[source]
    code, _, err = cli("predict", "--model-dir", small_deepfm_dir, "--data", data,
                       "--output", tmp_path / output, "--reserved_columns", "request_id,user")
    assert code == 0, err
    got = _read_table(tmp_path / output)
    assert list(got) == ["logits", "probs", "request_id", "user"]  # (TorchEasyRec's order)

    model = DeepFMModel.load(small_deepfm_dir)
    state = {k: v.double().numpy() for k, v in model.net.state_dict().items()}
    expected = numpy_forward(state, tables_of(model), ROWS * COPIES)
    logits = np.array(got["logits"], dtype=np.float64)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)  # (float32 written)
    np.testing.assert_allclose(np.array(got["probs"], dtype=np.float64),
                               1 / (1 + np.exp(-expected)), rtol=1e-5, atol=1e-6)
    ids = [1000 + i for i in range(len(expected))]
    users = [str(row["user"]) for row in ROWS * COPIES]
    if output.endswith(".parquet"):
        schema = pq.read_schema(tmp_path / output)
        assert schema.field("logits").type == pa.float32()
        # a Parquet input's column keeps its type; text fields are text
        assert got["request_id"] == (ids if source == "parquet" else [str(i) for i in ids])
    else:
        assert got["request_id"] == [str(i) for i in ids]
    assert got["user"] == users


def test_output_columns_and_the_writer_type_choose_as_torcheasyrec(small_deepfm_dir, cli,
                                                                  tmp_path):
    data = _write_inputs(tmp_path)["parquet"]
    code, out, err = cli("predict", "--model-dir", small_deepfm_dir, "--data", data,
                         "--writer_type", "CsvWriter", "--output_columns", "probs",
                         "--reserved-columns", "request_id", "--quiet")
    assert code == 0, err
    lines = list(csv.reader(out.splitlines()))
    assert lines[0] == ["probs", "request_id"] and len(lines) == 1 + len(ROWS) * COPIES
    assert [line[1] for line in lines[1:]] == [str(1000 + i) for i in range(len(lines) - 1)]
    code, _, err = cli("predict", "--model-dir", small_deepfm_dir, "--data", data,
                       "--writer-type", "ParquetWriter", "--output", tmp_path / "preds")
    assert code == 0, err
    assert pq.read_table(tmp_path / "preds").column_names == ["logits", "probs"]
    code, _, err = cli("predict", "--model-dir", small_deepfm_dir, "--data", data,
                       "--writer_type", "ParquetWriter", "--output", f"{tmp_path / 'dir'}/")
    assert code == 0, err  # (TorchEasyRec's --predict_output_path: a directory, part-0 in it)
    assert pq.read_table(tmp_path / "dir" / "part-0.parquet").num_rows == len(ROWS) * COPIES
    result = subprocess.run([fmkit_executable(), "predict", "--model-dir", small_deepfm_dir,
                             "--data", data, "--writer-type", "ParquetWriter", "--quiet"],
                            capture_output=True)  # (standard output: a pipe)
    assert result.returncode == 0, result.stderr
    assert pq.read_table(pa.BufferReader(result.stdout)).num_rows == len(ROWS) * COPIES


def test_an_fm_table_holds_score_and_predicted_label(cli, tmp_path):
    rows = shared_file("a9a_libsvm", "a9a").read_text().splitlines()[:3000]
    (tmp_path / "a.svm").write_text("\n".join(rows) + "\n")
    train_files({"feature_dim": 123, "num_factors": 4, "predictor_type": "binary_classifier",
                 "epochs": 1}, tmp_path / "a.svm", tmp_path / "fm", progress=False)
    code, _, err = cli("predict", "--model-dir", tmp_path / "fm", "--data", tmp_path / "a.svm",
                       "--output", tmp_path / "p.parquet")
    assert code == 0, err
    got = pq.read_table(tmp_path / "p.parquet")
    assert got.column_names == ["score", "predicted_label"]

    X, _ = load_svmlight_file(str(tmp_path / "a.svm"), n_features=123, zero_based=False)
    with np.load(tmp_path / "fm" / "weights.npz", allow_pickle=False) as weights:
        w0, w, V = (weights[k].astype(np.float64) for k in ("w0", "w", "V"))
    X = X.toarray()
    y = w0.reshape(()) + X @ w.ravel() + 0.5 * ((X @ V) ** 2 - (X ** 2) @ (V ** 2)).sum(axis=1)
    expected = 1 / (1 + np.exp(-y))
    scores = np.array(got.column("score").to_pylist())
    np.testing.assert_allclose(scores, expected, rtol=1e-5)
    assert got.column("predicted_label").to_pylist() == (expected >= 0.5).astype(float).tolist()

    # outputs named .gz, .bz2, .xz are compressed so (read back with Python's own modules),
    # the suffix beneath naming the form: the same bytes as the plain files; a converted
    # channel too; Parquet (compressed inside) is refused; a compressed file that is not ours
    # is not replaced, ours is
    import bz2
    import gzip
    import lzma

    plain = {}
    for name in ("p.jsonl", "p.csv"):
        code, _, err = cli("predict", "--model-dir", tmp_path / "fm", "--data",
                           tmp_path / "a.svm", "--output", tmp_path / name)
        assert code == 0, err
        plain[name] = (tmp_path / name).read_bytes()
    for name, opener in (("p.jsonl.gz", gzip.open), ("p.csv.gz", gzip.open),
                         ("p.csv.bz2", bz2.open), ("p.jsonl.xz", lzma.open)):
        for _ in range(2):  # (the second replaces the first)
            code, _, err = cli("predict", "--model-dir", tmp_path / "fm", "--data",
                               tmp_path / "a.svm", "--output", tmp_path / name)
            assert code == 0, err
        with opener(tmp_path / name) as f:
            assert f.read() == plain[name.rsplit(".", 1)[0]], name
    code, _, err = cli("convert", "--to", "recordio", tmp_path / "a.svm", tmp_path / "a.rec")
    assert code == 0, err
    for name in ("b.svm", "b.svm.gz"):
        code, _, err = cli("convert", "--to", "libsvm", tmp_path / "a.rec", tmp_path / name)
        assert code == 0, err
    with gzip.open(tmp_path / "b.svm.gz") as f:
        assert f.read() == (tmp_path / "b.svm").read_bytes()
    code, _, err = cli("predict", "--model-dir", tmp_path / "fm", "--data", tmp_path / "a.svm",
                       "--output", tmp_path / "p.parquet.gz")
    assert code == 1 and err == (f"fmkit: error: {tmp_path / 'p.parquet.gz'}: Parquet "
                                 "compresses its columns itself: name it .parquet\n"), err
    (tmp_path / "theirs.csv.gz").write_bytes(gzip.compress(b"a,b\n1,2\n"))
    code, _, err = cli("predict", "--model-dir", tmp_path / "fm", "--data", tmp_path / "a.svm",
                       "--output", tmp_path / "theirs.csv.gz")
    assert code == 1 and "theirs.csv.gz: exists and is not fmkit's table" in err, err
    assert gzip.decompress((tmp_path / "theirs.csv.gz").read_bytes()) == b"a,b\n1,2\n"


def test_class_scores_are_lists_in_parquet_and_refused_in_csv(cli, tmp_path):
    for classes in (3, 2):
        document = small(model_config={**small()["model_config"], "num_class": classes,
                                       "losses": [{"softmax_cross_entropy": {}}]})
        DeepFMModel.create(configs.parse(document)).save(tmp_path / f"m{classes}")
    data = _write_inputs(tmp_path)["parquet"]
    code, _, err = cli("predict", "--model-dir", tmp_path / "m3", "--data", data,
                       "--output", tmp_path / "p.parquet")
    assert code == 0, err
    table = pq.read_table(tmp_path / "p.parquet")
    assert table.column_names == ["logits", "probs"]
    logits = np.array(table.column("logits").to_pylist(), dtype=np.float64)
    assert logits.shape == (len(ROWS) * COPIES, 3)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(np.array(table.column("probs").to_pylist()),
                               e / e.sum(axis=1, keepdims=True), rtol=1e-5)
    code, _, err = cli("predict", "--model-dir", tmp_path / "m2", "--data", data,
                       "--output", tmp_path / "p2.parquet")
    assert code == 0, err
    table = pq.read_table(tmp_path / "p2.parquet")
    assert table.column_names == ["logits", "probs", "probs1"]
    assert table.column("probs1").to_pylist() == [p[1] for p in table.column("probs").to_pylist()]

    code, _, err = cli("predict", "--model-dir", tmp_path / "m3", "--data", data,
                       "--output", tmp_path / "p.csv")
    assert code == 1 and err.count("\n") == 1, err
    assert "column 'logits' holds one value per class, and a CSV cell holds one value" in err
    assert not (tmp_path / "p.csv").exists()


def test_a_table_replaces_only_a_table_of_predictions(small_deepfm_dir, cli, tmp_path):
    data = _write_inputs(tmp_path)["csv"]
    pq.write_table(pa.table({"probs": [0.5]}), tmp_path / "theirs.parquet")  # not ours
    (tmp_path / "theirs.csv").write_text("logits,probs\n1,2\n")  # (unquoted: not pyarrow's)
    for name in ("theirs.parquet", "theirs.csv"):
        before = (tmp_path / name).read_bytes()
        code, _, err = cli("predict", "--model-dir", small_deepfm_dir, "--data", data,
                           "--output", tmp_path / name)
        assert code == 1 and err.count("\n") == 1, err
        assert f"{tmp_path / name}: exists and is not fmkit's table of predictions" in err
        assert (tmp_path / name).read_bytes() == before
    assert "(it starts 'PAR1" in cli("predict", "--model-dir", small_deepfm_dir, "--data",
                                       data, "--output", tmp_path / "theirs.parquet")[2]
    for name in ("ours.parquet", "ours.csv"):  # a second run replaces the first's table
        for run in range(2):
            code, _, err = cli("predict", "--model-dir", small_deepfm_dir, "--data", data,
                               "--output", tmp_path / name, "--output-columns", "probs")
            assert code == 0, (run, err)


@pytest.mark.parametrize("extra, problem", [
    (["--output", "o.csv", "--accept", "application/json"],
     "--accept application/json: a csv table is not a SageMaker response"),
    (["--output", "o.jsonl", "--output-columns", "probs"],
     "--output-columns chooses a table's columns"),
    (["--output", "o.csv", "--output-columns", "score"],
     "--output-columns: 'score' is not an output of this model (logits, probs)"),
    (["--output", "o.csv", "--reserved-columns", "probs"],
     "--reserved-columns: 'probs' is a column of the predictions"),
    (["--output", "o.parquet", "--writer-type", "CsvWriter"],
     "--writer-type CsvWriter writes csv, and the output is named .parquet: name it .csv"),
    (["--output", "o", "--writer-type", "OdpsWriter"],
     "--writer-type 'OdpsWriter': expected one of ParquetWriter, CsvWriter"),
])
def test_table_options_that_contradict_are_one_line(small_deepfm_dir, cli, tmp_path,
                                                    monkeypatch, extra, problem):
    monkeypatch.chdir(tmp_path)
    data = _write_inputs(tmp_path)["csv"]
    code, out, err = cli("predict", "--model-dir", small_deepfm_dir, "--data", data, *extra)
    assert code == 1 and err.count("\n") == 1 and problem in err, err
    assert not out and not list(tmp_path.glob("o*"))


def test_reserved_ids_of_json_instances_are_text_in_a_table(small_deepfm_dir, cli, tmp_path):
    """JSON values' types may change from line to line; a table's column keeps one, so ids
    from JSON are written as text (a JSON response keeps them as they came)."""
    lines = [json.dumps({**row, "user": 7 if i % 2 else "alice"}) for i, row in enumerate(ROWS)]
    (tmp_path / "rows.jsonl").write_text("\n".join(lines) + "\n")
    code, _, err = cli("predict", "--model-dir", small_deepfm_dir, "--data",
                       tmp_path / "rows.jsonl", "--output", tmp_path / "p.parquet",
                       "--reserved_columns", "user,item")
    assert code == 0, err
    table = pq.read_table(tmp_path / "p.parquet")
    assert table.column("user").to_pylist() == ["alice", "7", "alice", "7"]
    assert table.column("item").to_pylist() == [str(row["item"]) for row in ROWS]


def test_a_reserved_column_keeps_one_type_over_the_files(small_deepfm_dir, tmp_path):
    """A directory of Parquet files: ids of int32 after int64 are cast to int64; text where
    numbers were is one line naming the file, and no table (nor a message from pyarrow's
    unfinished writer) is left."""
    rows = _rows()[:8]
    features = {"user": [str(r["user"]) for r in rows], "item": [r["item"] for r in rows],
                "tags": [r["tags"] for r in rows], "age": [r["age"] for r in rows],
                "price": [r["price"] for r in rows]}
    data = tmp_path / "data"
    data.mkdir()
    for file in range(6):  # (more blocks than are scored at once: the table is begun)
        ids = pa.array(range(8 * file, 8 * file + 8), pa.int32() if file % 2 else pa.int64())
        pq.write_table(pa.table({**features, "rid": ids}), data / f"{file}.parquet")
    result = run_fmkit("predict", "--model-dir", small_deepfm_dir, "--data", data,
                       "--output", tmp_path / "p.parquet", "--reserved_columns", "rid", "--quiet")
    assert result.returncode == 0, result.stderr
    assert pq.read_table(tmp_path / "p.parquet").column("rid").to_pylist() == list(range(48))

    pq.write_table(pa.table({**features, "rid": [f"r{i}" for i in range(8)]}),
                   data / "7.parquet")
    for output in ("q.parquet", "q.csv"):
        result = run_fmkit("predict", "--model-dir", small_deepfm_dir, "--data", data,
                           "--output", tmp_path / output, "--reserved_columns", "rid")
        assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
        assert (f"{data / '7.parquet'}: row 1: column 'rid' holds string here and int64 in "
                "the rows before: a table's column has one type") in result.stderr
        assert not (tmp_path / output).exists()


def test_a_declared_input_type_types_a_text_column(small_deepfm_dir, cli, tmp_path):
    """As TorchEasyRec's CSV reader parses a column an ``input_fields`` entry types, a table
    holds a CSV column declared INT64 as int64 (FLOAT: float32); a value that is not one
    names its line."""
    fields = ("[{input_name: rid, input_type: INT64}, {input_name: user}, {input_name: item},"
              " {input_name: tags}, {input_name: age, input_type: FLOAT}, {input_name: price}]")
    lines = ["rid,user,item,tags,age,price", "7,u1,3,a,20,1.5", "8,u2,4,b,,2.5"]
    (tmp_path / "r.csv").write_text("\n".join(lines) + "\n")
    code, _, err = cli("predict", "--model-dir", small_deepfm_dir, "--data", tmp_path / "r.csv",
                       "--output", tmp_path / "p.parquet", "--reserved_columns", "rid,age,user",
                       "--set", f"data_config.input_fields={fields}")
    assert code == 0, err
    table = pq.read_table(tmp_path / "p.parquet")
    types = [table.schema.field(n).type for n in ("rid", "age", "user")]
    assert types[:2] == [pa.int64(), pa.float32()] and pa.types.is_large_string(types[2])
    assert table.column("rid").to_pylist() == [7, 8]
    assert table.column("age").to_pylist() == [20.0, None]

    (tmp_path / "r.csv").write_text("\n".join([*lines, "r9,u3,5,c,40,0.5"]) + "\n")
    code, _, err = cli("predict", "--model-dir", small_deepfm_dir, "--data", tmp_path / "r.csv",
                       "--output", tmp_path / "q.parquet", "--reserved_columns", "rid",
                       "--set", f"data_config.input_fields={fields}")
    assert code == 1 and err.count("\n") == 1, err
    assert f"{tmp_path / 'r.csv'}:4: column 'rid': 'r9' is not INT64 (its input_type)" in err
    assert not (tmp_path / "q.parquet").exists()


def test_nested_reserved_columns_go_to_parquet_and_are_refused_in_csv(small_deepfm_dir, cli,
                                                                     tmp_path):
    """A reserved list, map or struct column keeps its values in Parquet; a CSV cell holds
    one value, so CSV is refused in one line (map and struct were pyarrow's traceback,
    'Unsupported Type'), and no file is left."""
    rows = _rows()[:3]
    nested = {"tags_list": pa.array([["a", "b"], None, []]),
              "kv": pa.array([[("k", 1)], None, []], pa.map_(pa.string(), pa.int64())),
              "meta": pa.array([{"a": 1}, None, {"a": 2}])}
    pq.write_table(pa.table({"user": [str(r["user"]) for r in rows],
                             "item": [r["item"] for r in rows], "tags": [r["tags"] for r in rows],
                             "age": [r["age"] for r in rows], "price": [r["price"] for r in rows],
                             **nested}), tmp_path / "n.parquet")
    for name, values in nested.items():
        code, _, err = cli("predict", "--model-dir", small_deepfm_dir, "--data",
                           tmp_path / "n.parquet", "--output", tmp_path / "p.parquet",
                           "--reserved_columns", name)
        assert code == 0, err
        assert pq.read_table(tmp_path / "p.parquet").column(name).to_pylist() == \
            values.to_pylist()
        code, _, err = cli("predict", "--model-dir", small_deepfm_dir, "--data",
                           tmp_path / "n.parquet", "--output", tmp_path / "p.csv",
                           "--reserved_columns", name)
        assert code == 1 and err.count("\n") == 1, err
        kind = pq.read_schema(tmp_path / "n.parquet").field(name).type  # (as the file has it)
        assert f"column {name!r} holds {kind} values, and a CSV cell holds one" in err
        assert not (tmp_path / "p.csv").exists()
