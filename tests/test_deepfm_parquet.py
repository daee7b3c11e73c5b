"""DeepFM reads Parquet as it reads CSV: the same rows give the same model and scores; list
columns are multi-value features; bad values name the file and row."""

from __future__ import annotations

import csv
import json
import os
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fmkit.errors import DataError
from fmkit.jobs.deepfm import train_deepfm
from fmkit.models.deepfm import config as configs
from fmkit.models.deepfm import config_files

from .conftest import REPO, shared_file

EXAMPLE = REPO / "examples" / "deepfm_criteo.yaml"


def sample_as_parquet(path) -> None:
    """DeepCTR's Criteo sample as Parquet, typed as a warehouse would: int label, float counts
    (null when missing), string categories (null when missing); two row groups."""
    with open(shared_file("criteo_deepctr_sample", "criteo_sample.txt"), newline="") as f:
        rows = list(csv.DictReader(f))
    columns = {"label": pa.array([int(r["label"]) for r in rows])}
    for name in rows[0]:
        if name.startswith("I"):
            columns[name] = pa.array([float(r[name]) if r[name] else None for r in rows])
        elif name.startswith("C"):
            columns[name] = pa.array([r[name] or None for r in rows])
    pq.write_table(pa.table(columns), path, row_group_size=120)


def _train(tmp_path, name, train, **sets) -> dict:
    overrides = [f"train_input_path={json.dumps(str(train))}",
                 f"eval_input_path={json.dumps(str(train))}",
                 f"model_dir={json.dumps(str(tmp_path / name))}", "train_config.num_epochs=2",
                 *(f"{k}={v}" for k, v in sets.items())]
    model, metrics = train_deepfm(config_files.load(EXAMPLE, overrides), progress=False)
    return model, metrics["test"]


def test_parquet_and_csv_give_the_same_model(tmp_path):
    parquet = tmp_path / "sample.parquet"
    sample_as_parquet(parquet)
    csv_file = shared_file("criteo_deepctr_sample", "criteo_sample.txt")
    from_csv, csv_metrics = _train(tmp_path, "csv", csv_file, **{
        "data_config.delimiter": ",", "data_config.with_header": "true"})
    from_parquet, parquet_metrics = _train(tmp_path, "pq", parquet, **{
        "data_config.dataset_type": "ParquetDataset"})
    assert parquet_metrics["rows"] == csv_metrics["rows"] == 200
    assert parquet_metrics["auc"] == pytest.approx(csv_metrics["auc"], abs=1e-9)
    for (name, a), b in zip(from_csv.net.state_dict().items(),
                            from_parquet.net.state_dict().values()):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6, err_msg=name)
    # a Parquet file is read as Parquet whatever the model's dataset type, as its bytes say
    csv_scored = from_csv.evaluate(from_csv.read(csv_file))
    assert from_csv.evaluate(from_csv.read(parquet)) == pytest.approx(csv_scored, abs=1e-9)
    # ...unless told otherwise, in one line
    for fmt, message in (("csv", "is Parquet, not delimited text"),
                         ("libsvm", "a DeepFM reads columns .*--format libsvm is an FM's")):
        with pytest.raises(DataError, match=message):
            list(from_csv.read(parquet, fmt))
    # ...but not through a pipe, which cannot be read from its end: one line says so
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(parquet.read_bytes()))
    writer.start()
    with pytest.raises(DataError, match="is Parquet, which is read from the end of a file"):
        list(from_csv.read(fifo))
    writer.join(timeout=30)


def test_list_columns_are_multi_value_features(tmp_path):
    document = config_files.load_document(REPO / "examples" / "deepfm_movielens.yaml")
    config = configs.parse(document)
    from fmkit.models.deepfm.model import DeepFMModel

    model = DeepFMModel.create(config)
    base = {"user_id": [1, 2], "item_id": [3, 4], "age": [20, 40], "gender": ["M", "F"],
            "occupation": ["writer", "other"], "zip": ["857", "940"], "year": [1995, 1980]}
    as_text = tmp_path / "text.parquet"
    as_list = tmp_path / "list.parquet"
    pq.write_table(pa.table({**base, "genres": ["Action|Comedy", None]}), as_text)
    pq.write_table(pa.table({**base, "genres": pa.array([["Action", "Comedy"], None],
                                                         pa.list_(pa.string()))}), as_list)
    scores = [model.predictions(next(model.read(p, "parquet")))["score"]
              for p in (as_text, as_list)]
    np.testing.assert_allclose(scores[0], scores[1], rtol=1e-6)
    single = tmp_path / "single.parquet"
    pq.write_table(pa.table({**base, "genres": ["Action", None]}), single)
    assert not np.allclose(model.predictions(next(model.read(single, "parquet")))["score"],
                           scores[0])


def test_spark_written_types_read_as_the_plain_ones(tmp_path):
    """What Spark writes (TorchEasyRec's issue #122 for the lists): dictionary-encoded
    strings, lists of non-null strings, small nullable integers and decimals (a DECIMAL
    price failed with 'expected a number, got decimal128(10, 2)') score as plain strings,
    lists, int64 and float64 do."""
    import decimal

    config = configs.parse(config_files.load_document(REPO / "examples" / "deepfm_movielens.yaml"))
    from fmkit.models.deepfm.model import DeepFMModel

    model = DeepFMModel.create(config)
    plain = {"user_id": [1, 2, 3], "item_id": [3, 4, 5], "age": [20, None, 40],
             "gender": ["M", "F", None], "occupation": ["writer", "other", "writer"],
             "zip": ["857", "940", "857"], "year": [1995.5, 1980.25, None],
             "genres": pa.array([["Action", "Comedy"], None, ["Drama"]], pa.list_(pa.string()))}
    spark = {**plain, "age": pa.array(plain["age"], pa.int16()),
             "occupation": pa.array(plain["occupation"]).dictionary_encode(),
             "year": pa.array([None if v is None else decimal.Decimal(str(v))
                               for v in plain["year"]], pa.decimal128(6, 2)),
             "genres": pa.array(plain["genres"].to_pylist(),
                                pa.list_(pa.field("element", pa.string(), nullable=False)))}
    scores = []
    for name, columns in (("plain", plain), ("spark", spark)):
        pq.write_table(pa.table(columns), tmp_path / f"{name}.parquet")
        batch = next(model.read(tmp_path / f"{name}.parquet", "parquet"))
        scores.append(model.predictions(batch)["score"])
    np.testing.assert_array_equal(scores[0], scores[1])


def test_integers_beyond_2_to_the_53_are_numbers_too(tmp_path):
    """An int64 that float64 cannot hold exactly (a nanosecond timestamp, say) in a numeric
    column was pyarrow's 'Integer value ... not in range' traceback, from Parquet and from a
    JSON request alike; it is rounded to the nearest float64, as a float column holds it."""
    from fmkit.data.columns import from_instances

    config = configs.parse(config_files.load_document(REPO / "examples" / "deepfm_movielens.yaml"))
    from fmkit.models.deepfm.model import DeepFMModel

    model = DeepFMModel.create(config)
    huge = [2**60 + 1, 2**53 + 1, 1990]
    base = {"user_id": [1, 2, 3], "item_id": [3, 4, 5], "age": [20, 30, 40],
            "gender": ["M", "F", "M"], "occupation": ["writer", "other", "writer"],
            "zip": ["857", "940", "857"], "genres": ["Action", "Drama", None]}
    scores = []
    for name, year in (("int", pa.array(huge, pa.int64())),
                       ("float", pa.array([float(v) for v in huge], pa.float64()))):
        pq.write_table(pa.table({**base, "year": year}), tmp_path / f"{name}.parquet")
        scores.append(model.predictions(next(model.read(tmp_path / f"{name}.parquet",
                                                        "parquet")))["score"])
    np.testing.assert_array_equal(scores[0], scores[1])
    instances = [{**{k: v[i] for k, v in base.items()}, "year": year}
                 for i, year in enumerate(huge)]
    np.testing.assert_array_equal(model.predictions(from_instances(instances))["score"],
                                  scores[1])


def test_corrupt_parquet_bytes_are_one_line_naming_the_file(tmp_path):
    """Bytes changed in a Parquet file (compressed pages, dictionary indices, text that is not
    UTF-8, the footer's column names) were pyarrow's tracebacks (ArrowIndexError,
    ArrowInvalid, UnicodeDecodeError) or a line without the file ('Corrupt snappy compressed
    data.'); each is now a DataError naming the file, or the file still reads."""
    config = configs.parse(config_files.load_document(REPO / "examples" / "deepfm_movielens.yaml"))
    from fmkit.models.deepfm.model import DeepFMModel

    model = DeepFMModel.create(config)
    rng = np.random.default_rng(0)
    n = 300
    columns = {"user_id": rng.integers(1, 900, n), "item_id": rng.integers(1, 1600, n),
               "age": rng.integers(10, 70, n),
               "gender": pa.array(rng.choice(["M", "F"], n)).dictionary_encode(),
               "occupation": rng.choice(["writer", "other", "artist"], n),
               "zip": [f"{z:05d}" for z in rng.integers(0, 99999, n)],
               "year": rng.integers(1950, 1998, n),
               "genres": [["Action", "Comedy"][: 1 + i % 2] for i in range(n)]}
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table(columns), good)
    raw = good.read_bytes()
    outcomes = {"read": 0, "refused": 0}
    for case in range(150):
        damaged = bytearray(raw)
        for position in rng.integers(0, len(raw), rng.integers(1, 6)):
            damaged[position] = rng.integers(0, 256)
        path = tmp_path / f"damaged{case}.parquet"
        path.write_bytes(bytes(damaged))
        try:
            scores = [model.predictions(batch)["score"] for batch in model.read(path, "parquet")]
            assert np.isfinite(np.concatenate(scores)).all()
            outcomes["read"] += 1
        except DataError as e:
            assert str(e).startswith(str(path)) and "\n" not in str(e), str(e)
            outcomes["refused"] += 1
    assert outcomes["refused"] > 50 and outcomes["read"] > 0, outcomes


def test_a_bad_parquet_value_names_file_and_row(tmp_path):
    path = tmp_path / "bad.parquet"
    sample_as_parquet(path)
    table = pq.read_table(path)
    i1 = table.column("I1").to_pylist()
    i1[130] = None
    strings = [None if v is None else str(v) for v in i1]
    strings[150] = "lots"
    pq.write_table(table.set_column(table.schema.get_field_index("I1"), "I1",
                                    pa.array(strings)), path, row_group_size=120)
    with pytest.raises(DataError, match=r"bad.parquet: row 151: column 'I1': 'lots' is not a"):
        _train(tmp_path, "m", path, **{"data_config.dataset_type": "ParquetDataset"})
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("occupation, problem", [
    (pa.array([{"x": 1}, None, {"x": 2}]), "row 1: column 'occupation': expected text or "
     "numbers, got struct<x: int64>"),
    (pa.array([b"writer", b"\xff\xfe", b"other"]),
     "row 2: column 'occupation': bytes that are not UTF-8 text"),
    (pa.array([None, [("k", 1)], None], pa.map_(pa.string(), pa.int64())),
     "row 2: column 'occupation': expected text or numbers, got map<string, int64"),
    (pa.array([["a"], None, [b"\xff"]], pa.list_(pa.binary())),
     "row 3: column 'occupation': bytes that are not UTF-8 text"),
])
def test_an_id_column_of_values_that_are_not_ids_is_one_line(tmp_path, cli, occupation,
                                                            problem):
    """A Parquet id column of structs, maps or bytes that are not UTF-8 was a pyarrow
    traceback ('Unsupported cast from struct<x: int64> to utf8'); bytes that are UTF-8 (how
    some writers store text) read as the text they hold."""
    config = configs.parse(config_files.load_document(REPO / "examples" / "deepfm_movielens.yaml"))
    from fmkit.models.deepfm.model import DeepFMModel

    model = DeepFMModel.create(config)
    model.save(tmp_path / "m")
    columns = {"user_id": [1, 2, 3], "item_id": [3, 4, 5], "age": [20, 30, 40],
               "gender": ["M", "F", "M"], "zip": ["857", "940", "857"],
               "year": [1995.0, 1980.0, 1990.0], "genres": ["Action", "Drama", "Comedy"]}
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({**columns, "occupation": occupation}), path)
    code, out, err = cli("predict", "--model-dir", tmp_path / "m", "--data", path)
    assert code == 1 and not out and err.count("\n") == 1 and f"{path}: {problem}" in err, err

    scores = []
    for name, values in (("text", ["writer", "other", "writer"]),
                         ("bytes", [b"writer", b"other", b"writer"])):
        pq.write_table(pa.table({**columns, "occupation": values}), tmp_path / f"{name}.pq")
        scores.append(model.predictions(next(model.read(tmp_path / f"{name}.pq")))["score"])
    np.testing.assert_array_equal(scores[0], scores[1])
