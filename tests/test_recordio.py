"""recordIO-protobuf against the real SageMaker Python SDK 2.x: golden bytes, byte-identical
writing, SDK-written files training fmkit, multi-part records, and errors with file and offset."""

from __future__ import annotations

import io
import json
import os
import struct

import numpy as np
import pytest
import scipy.sparse as sp

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
from sagemaker.amazon.common import (  # noqa: E402
    read_records,
    write_numpy_to_dense_tensor,
    write_spmatrix_to_sparse_tensor,
)
from sklearn.datasets import load_svmlight_file  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from fmkit.data import recordio  # noqa: E402
from fmkit.data.batch import concat  # noqa: E402
from fmkit.data.sources import FileSource  # noqa: E402

from .conftest import shared_file  # noqa: E402

# sagemaker_fm.md §4.4: write_spmatrix_to_sparse_tensor of a 3x4 matrix with labels [1, 0, 1]
GOLDEN = bytes.fromhex(
    "0a23d7ce33000000"
    "0a1d0a0676616c756573121312110a080000c03f00000040120201031a010412120a0676616c756573120812"
    "060a040000803f00"
    "0a23d7ce2e000000"
    "0a180a0676616c756573120e120c0a04000040401201001a010412120a0676616c7565731208120"
    "60a04000000000000"
    "0a23d7ce25000000"
    "0a0f0a0676616c756573120512031a010412120a0676616c756573120812060a040000803f000000"
)
GOLDEN_X = sp.csr_matrix(np.array([[0, 1.5, 0, 2.0], [3.0, 0, 0, 0], [0, 0, 0, 0]],
                                  dtype=np.float32))
GOLDEN_Y = np.array([1, 0, 1], dtype=np.float32)


def sdk_sparse(X, y=None) -> bytes:
    f = io.BytesIO()
    write_spmatrix_to_sparse_tensor(f, X, y)
    return f.getvalue()


def sdk_dense(X, y=None) -> bytes:
    f = io.BytesIO()
    write_numpy_to_dense_tensor(f, X, y)
    return f.getvalue()


def to_dense(batch, width):
    return sp.csr_matrix((batch.values, batch.indices, batch.indptr),
                         shape=(batch.n_rows, width)).toarray()


def test_golden_bytes_decode_exactly():
    assert len(GOLDEN) == 164 and GOLDEN == sdk_sparse(GOLDEN_X, GOLDEN_Y)
    batch = recordio.read_bytes(GOLDEN)
    np.testing.assert_array_equal(batch.indptr, [0, 2, 3, 3])
    np.testing.assert_array_equal(batch.indices, [1, 3, 0])
    np.testing.assert_array_equal(batch.values, [1.5, 2.0, 3.0])
    np.testing.assert_array_equal(batch.labels, [1, 0, 1])
    np.testing.assert_array_equal(batch.widths, [4, 4, 4])


def test_serializer_golden_bytes():
    body = bytes.fromhex("0a23d7ce180000000a160a0676616c756573120c120a0a080000803f00000040")
    batch = recordio.read_bytes(body)
    assert np.isnan(batch.labels[0])
    np.testing.assert_array_equal(to_dense(batch, 2), [[1.0, 2.0]])


@pytest.mark.parametrize("seed", range(3))
def test_writer_is_byte_identical_to_sdk(seed):
    rng = np.random.default_rng(seed)
    X = sp.random(300, 2000, density=0.01, random_state=seed, format="csr", dtype=np.float32)
    X.data = rng.normal(size=X.data.size).astype(np.float32)
    X = sp.vstack([X[:5], sp.csr_matrix((1, 2000), dtype=np.float32), X[6:]]).tocsr()
    y = rng.integers(0, 2, 300).astype(np.float32)
    ours = io.BytesIO()
    recordio.write_rows(ours, X, y)
    assert ours.getvalue() == sdk_sparse(X, y)
    unlabelled = io.BytesIO()
    recordio.write_rows(unlabelled, X)
    assert unlabelled.getvalue() == sdk_sparse(X)
    dense = rng.normal(size=(50, 7)).astype(np.float32)
    dense_out = io.BytesIO()
    recordio.write_rows(dense_out, dense, y[:50])
    assert dense_out.getvalue() == sdk_dense(dense, y[:50])
    # and the SDK reads what fmkit writes
    records = read_records(io.BytesIO(ours.getvalue()))
    row = records[7].features["values"].float32_tensor
    np.testing.assert_array_equal(row.keys, X[7].indices)
    np.testing.assert_allclose(row.values, X[7].data)
    assert list(row.shape) == [2000]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_reads_sdk_dense_tensors_of_every_type(dtype):
    rng = np.random.default_rng(1)
    X = (rng.normal(size=(20, 6)) * 10).astype(dtype)
    batch = recordio.read_bytes(sdk_dense(X, np.ones(20, dtype=dtype)))
    np.testing.assert_allclose(to_dense(batch, 6), X.astype(np.float32), rtol=1e-6)
    np.testing.assert_array_equal(batch.labels, 1.0)


def _frame(payload: bytes, cflag: int) -> bytes:
    pad = (-len(payload)) % 4
    return (recordio.MAGIC_BYTES + struct.pack("<I", cflag << 29 | len(payload)) + payload
            + b"\0" * pad)


def test_multipart_records_decode():
    magic_float = np.frombuffer(recordio.MAGIC_BYTES, "<f4")[0]
    X = np.array([[magic_float, 1.0, magic_float, 2.0]], dtype=np.float32)
    payload = sdk_dense(X)[8:8 + struct.unpack("<I", sdk_dense(X)[4:8])[0]]
    first = payload.find(recordio.MAGIC_BYTES)
    second = payload.find(recordio.MAGIC_BYTES, first + 4)
    assert first > 0 and second > first
    parts = (_frame(payload[:first], 1) + _frame(payload[first + 4:second], 2)
             + _frame(payload[second + 4:], 3))
    plain = sdk_dense(np.array([[5.0, 0, 0, 6.0]], dtype=np.float32))
    batch = recordio.read_bytes(plain + parts + plain)
    assert batch.n_rows == 3
    np.testing.assert_array_equal(to_dense(batch, 4)[1], X[0])
    np.testing.assert_array_equal(to_dense(batch, 4)[2], [5.0, 0, 0, 6.0])


def test_bad_magic_and_truncated_tail_name_file_and_offset(cli, tmp_path):
    good = sdk_sparse(GOLDEN_X, GOLDEN_Y)
    args = ["--format", "recordio", "feature_dim=4", "num_factors=2",
            "predictor_type=binary_classifier"]
    bad_magic = tmp_path / "bad_magic.rec"
    bad_magic.write_bytes(good[:60] + b"\xff" + good[61:])  # records start at 0, 60, 116
    code, _, err = cli("train", "--train", bad_magic, "--model-dir", tmp_path / "m", *args)
    assert code != 0 and f"{bad_magic}: bad RecordIO magic number at byte offset 60" in err
    truncated = tmp_path / "truncated.rec"
    truncated.write_bytes(good[:-10])
    code, _, err = cli("train", "--train", truncated, "--model-dir", tmp_path / "m", *args)
    assert code != 0 and f"{truncated}: truncated record at byte offset 116" in err
    assert not (tmp_path / "m").exists()


def test_bad_records_name_the_record(cli, tmp_path):
    X = sp.csr_matrix(np.array([[0, 1.0, 0, 0, 0, 2.0]], dtype=np.float32))
    wide = tmp_path / "wide.rec"
    wide.write_bytes(sdk_sparse(GOLDEN_X, GOLDEN_Y) + sdk_sparse(X, np.ones(1, np.float32)))
    code, _, err = cli("train", "--train", wide, "--model-dir", tmp_path / "m", "feature_dim=4",
                       "num_factors=2", "predictor_type=binary_classifier")
    assert code != 0
    assert f"{wide}: record 4: the features tensor has shape [6], expected [4]" in err
    unlabelled = tmp_path / "unlabelled.rec"
    unlabelled.write_bytes(sdk_sparse(GOLDEN_X))
    code, _, err = cli("train", "--train", unlabelled, "--model-dir", tmp_path / "m",
                       "feature_dim=4", "num_factors=2", "predictor_type=regressor")
    assert code != 0 and f"{unlabelled}: record 1: the record has no label" in err


@pytest.fixture(scope="module")
def a9a_recordio(tmp_path_factory):
    """a9a as the SageMaker SDK writes it: a train channel of two files, and a test file."""
    root = tmp_path_factory.mktemp("a9a_rec")
    X, y = load_svmlight_file(str(shared_file("a9a_libsvm", "a9a")), n_features=123)
    Xt, yt = load_svmlight_file(str(shared_file("a9a_libsvm", "a9a.t")), n_features=123)
    X, Xt = X.astype(np.float32), Xt.astype(np.float32)
    y, yt = (y == 1).astype(np.float32), (yt == 1).astype(np.float32)
    (root / "train").mkdir()
    half = X.shape[0] // 2
    (root / "train" / "matrix_0.pbr").write_bytes(sdk_sparse(X[:half], y[:half]))
    (root / "train" / "matrix_1.pbr").write_bytes(sdk_sparse(X[half:], y[half:]))
    (root / "train" / ".amazon.manifest").write_text("[]")
    (root / "test.pbr").write_bytes(sdk_sparse(Xt, yt))
    return root, Xt, yt


def test_sdk_written_sparse_channel_trains_fmkit(cli, a9a_recordio, tmp_path):
    root, Xt, yt = a9a_recordio
    code, _, err = cli("train", "--train", root / "train", "--test", root / "test.pbr",
                       "--model-dir", tmp_path / "m", "feature_dim=123", "num_factors=8",
                       "predictor_type=binary_classifier", "epochs=5", "mini_batch_size=100",
                       "bias_wd=0", "linear_lr=0.003", "factors_lr=0.003")
    assert code == 0, err
    assert "recordio" in FileSource(root / "train", "auto", 123).fmt
    code, out, _ = cli("predict", "--model-dir", tmp_path / "m", "--data", root / "test.pbr")
    scores = [json.loads(line)["score"] for line in out.splitlines()]
    assert roc_auc_score(yt, scores) >= 0.90


def test_sdk_written_dense_channel_trains_fmkit(cli, tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4000, 5)).astype(np.float32)
    y = (X @ np.array([1, -2, 0.5, 0, 3]) + X[:, 0] * X[:, 1] + 1).astype(np.float32)
    (tmp_path / "train.pbr").write_bytes(sdk_dense(X, y))
    code, _, err = cli("train", "--train", tmp_path / "train.pbr", "--test",
                       tmp_path / "train.pbr", "--model-dir", tmp_path / "m", "feature_dim=5",
                       "num_factors=4", "predictor_type=regressor", "epochs=20",
                       "mini_batch_size=50", "bias_lr=0.05", "linear_lr=0.05",
                       "factors_lr=0.05", "bias_wd=0", "linear_wd=0", "factors_wd=0",
                       "factors_init_sigma=0.1")
    assert code == 0, err
    rmse = json.loads((tmp_path / "m" / "metrics.json").read_text())["test"]["rmse"]
    assert rmse < 0.1 * float(np.std(y))


def test_convert_libsvm_to_recordio_matches_sdk_and_back(cli, tmp_path):
    source = shared_file("a9a_libsvm", "a9a.t")
    X, y = load_svmlight_file(str(source), n_features=123)
    rec = tmp_path / "a9a.t.rec"
    code, _, err = cli("convert", "--from", "libsvm", "--to", "recordio", source, rec,
                       "--feature-dim", "123")
    assert code == 0, err
    assert rec.read_bytes() == sdk_sparse(X.astype(np.float32), y.astype(np.float32))
    back = tmp_path / "back.libsvm"
    code, _, err = cli("convert", "--to", "libsvm", rec, back)
    assert code == 0, err
    X2, y2 = load_svmlight_file(str(back), n_features=123, zero_based=True)
    assert (X2 != X).nnz == 0 and (y2 == y).all()
    batch = concat(list(FileSource(rec, "auto", 123).blocks()))
    assert batch.n_rows == 16281


def test_validation_and_test_channels_in_another_format_than_training(cli, tmp_path):
    """Each channel's format is its own (auto: detected): a model trained on 1-based libsvm
    ids validates and tests on the SDK's recordIO of the same rows (0-based columns), with
    the metrics ``evaluate`` gives the libsvm file. The recordIO was parsed as libsvm text."""
    source = shared_file("a9a_libsvm", "a9a.t")
    X, y = load_svmlight_file(str(source), n_features=123)
    rec = tmp_path / "a9a.t.rec"
    rec.write_bytes(sdk_sparse(X.astype(np.float32), y.astype(np.float32)))
    code, _, err = cli("train", "--train", shared_file("a9a_libsvm", "a9a"), "--validation",
                       rec, "--test", rec, "--model-dir", tmp_path / "m", "--quiet",
                       "feature_dim=123", "num_factors=4", "predictor_type=binary_classifier",
                       "epochs=2", "mini_batch_size=200")
    assert code == 0, err
    tested = json.loads((tmp_path / "m" / "metrics.json").read_text())["test"]
    code, out, err = cli("evaluate", "--model-dir", tmp_path / "m", "--data", source)
    assert code == 0, err
    assert json.loads(out) == pytest.approx(tested, rel=1e-9)


def test_converting_libffm_says_its_fields_are_dropped(cli, tmp_path):
    """recordIO holds no fields: the rows convert (the libffm rows parsed here without their
    fields), with a warning, as an FM would read them."""
    import scipy.sparse as sp

    source = shared_file("criteo_xlearn_libffm", "small_test.txt")
    rows, columns, values, labels = [], [], [], []
    for row, line in enumerate(source.read_text().splitlines()):
        label, *tokens = line.split()
        labels.append(float(label))
        for token in tokens:
            _, index, value = token.split(":")
            rows.append(row)
            columns.append(int(index) - 1)  # (1-based ids, as detected)
            values.append(float(value))
    X = sp.csr_matrix((values, (rows, columns)), dtype=np.float32)
    rec = tmp_path / "small.rec"
    code, _, err = cli("convert", "--to", "recordio", source, rec, "--feature-dim",
                       str(X.shape[1]))
    assert code == 0 and "its fields are dropped" in err, err
    batch = concat(list(FileSource(rec, "auto", X.shape[1]).blocks()))
    read = sp.csr_matrix((batch.values, batch.indices, batch.indptr), shape=X.shape)
    assert (read != X).nnz == 0 and (batch.labels == np.array(labels)).all()


def test_a_channel_as_spark_writes_it_reads_as_its_parts(tmp_path):
    """A directory of SDK-written recordIO parts beside Spark's empty ``_SUCCESS`` (which
    sorts first) and a hidden checksum file: the format is the parts', the rows are theirs
    (scikit-learn's parse of a9a), in order. A DeepFM's Parquet parts beside ``_SUCCESS``
    too (pyarrow writes and reads them back)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fmkit.data import columns

    X, y = load_svmlight_file(str(shared_file("a9a_libsvm", "a9a")), n_features=123)
    X, y = X.astype(np.float32), (y == 1).astype(np.float32)
    channel = tmp_path / "recordio"
    channel.mkdir()
    half = X.shape[0] // 2
    (channel / "part-00000").write_bytes(sdk_sparse(X[:half], y[:half]))
    (channel / "part-00001").write_bytes(sdk_sparse(X[half:], y[half:]))
    (channel / "_SUCCESS").touch()
    (channel / ".part-00000.crc").write_bytes(b"crc\x00\x01")
    source = FileSource(channel, "auto", 123, labels="binary")
    assert source.fmt == "recordio"
    assert FileSource(str(channel / "*"), "auto", 123).fmt == "recordio"  # (a pattern too)
    rows = concat(list(source.blocks()))
    read = sp.csr_matrix((rows.values, rows.indices, rows.indptr), shape=X.shape)
    assert (read != X).nnz == 0 and np.array_equal(rows.labels, y)

    tables = tmp_path / "parquet"
    tables.mkdir()
    table = pa.table({"label": y[:300], "C1": [f"c{i % 7}" for i in range(300)]})
    pq.write_table(table.slice(0, 100), tables / "part-00000.parquet")
    pq.write_table(table.slice(100), tables / "part-00001.parquet")
    (tables / "_SUCCESS").touch()
    assert columns.is_parquet(tables)
    batches = list(columns.read_parquet(tables))
    assert sum(b.n_rows for b in batches) == 300
