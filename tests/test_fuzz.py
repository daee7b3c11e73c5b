"""Fuzzing every reader and codec with mutated real files and request bodies (Hypothesis).

Each case takes a real seed (a9a rows as libsvm, dense CSV, SDK-written recordIO and JSON /
JSON Lines requests; xLearn's Criteo libffm; raw Criteo TSV and DeepCTR's CSV sample; DeepFM
JSON instances; generated rows and instances of a DeepFM with a feature of every kind, whose
fields also take values of other kinds; the examples' DeepFM configurations as YAML and
protobuf text), mutates its
bytes (flips, deletions, duplications, truncation, and inserted tokens that broke fmkit
before: values beyond float32, huge integers, NaN, stray delimiters, other scripts' digits,
RecordIO magic, varint runs) and checks that the outcome is either a
success with finite scores or a clean error: a ``DataError`` (any ``FMKitError``) in-process,
exit code 1 with one line and no traceback in the CLI, a 4xx from the server. A crash of
compiled code kills the test process, which fails the run.

CI runs ``FMKIT_FUZZ_EXAMPLES`` cases per test (default 25, about 20 s in all) with a fixed
seed; a larger value also draws fresh random cases: ``FMKIT_FUZZ_EXAMPLES=3000 pytest
tests/test_fuzz.py``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
from sagemaker.amazon.common import (  # noqa: E402
    write_numpy_to_dense_tensor,
    write_spmatrix_to_sparse_tensor,
)
from sklearn.datasets import load_svmlight_file  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from fmkit import files  # noqa: E402
from fmkit.cli import main  # noqa: E402
from fmkit.data import codecs  # noqa: E402
from fmkit.data.sources import FileSource  # noqa: E402
from fmkit.errors import FMKitError  # noqa: E402
from fmkit.jobs.fm import predict_files, train_files  # noqa: E402
from fmkit.models.base import load_model  # noqa: E402
from fmkit.serve.app import create_app  # noqa: E402

from .conftest import REPO, shared_file  # noqa: E402

EXAMPLES = int(os.environ.get("FMKIT_FUZZ_EXAMPLES", "25"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                derandomize="FMKIT_FUZZ_EXAMPLES" not in os.environ,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

TOKENS = [b"1e39", b"-3.5e38", b"nan", b"-inf", b"Infinity", b"1" + b"0" * 400,
          b"9223372036854775808", b"18446744073709551616", b"2147483648", b"-1", b"0", b"1e20",
          b":", b"::", b"1:1:1", b"\n", b"\r\n", b"\t", b",", b" ", b"#", b"|", b"\x00",
          b"\xff\xfe", "\u0663\u0660".encode(), b"true", b'"7"', b"[1]", b"[", b"]", b"{", b"}",
          b'"keys"', b'"values"', b'"shape"', b'"features"', b"\xce\xd7\x23\x0a",
          b"\xff" * 10, b"\x80" * 9 + b"\x01", b"\x0a\x06values", b"null", b'"I1"',
          b'{"a": 1, "a": 2}', b"[" * 300]


@st.composite
def mutated(draw, seeds: list[bytes]) -> bytes:
    """One seed with 1-4 byte-level mutations."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.integers(0, 5))
        pos = draw(st.integers(0, len(data)))
        if op == 0 and data:
            data[min(pos, len(data) - 1)] = draw(st.integers(0, 255))
        elif op == 1:
            data[pos:pos] = draw(st.sampled_from(TOKENS))
        elif op == 2:
            del data[pos:pos + draw(st.integers(1, 64))]
        elif op == 3:
            data[pos:pos] = data[pos:pos + draw(st.integers(1, 512))]
        elif op == 4:
            data = data[:pos]
        else:
            data[pos:pos + draw(st.integers(1, 16))] = draw(st.sampled_from(TOKENS))
    return bytes(data)


# -- seeds and models ---------------------------------------------------------------------------
def head(path: Path, lines: int) -> bytes:
    return b"".join(path.read_bytes().splitlines(keepends=True)[:lines])


@pytest.fixture(scope="module")
def work():
    with tempfile.TemporaryDirectory(prefix="fmkit-fuzz-") as directory:
        yield Path(directory)


@pytest.fixture(scope="module")
def fm(work):
    """An FM on a9a and the seeds of every FM format, written from a9a's first rows."""
    a9a = shared_file("a9a_libsvm", "a9a")
    model = work / "fm"
    train_files({"feature_dim": 123, "num_factors": 4, "predictor_type": "binary_classifier",
                 "mini_batch_size": 100}, a9a, model, progress=False)
    X, y = load_svmlight_file(str(a9a), n_features=123)
    X, y = X[:40], y[:40]
    dense = io.BytesIO()
    write_numpy_to_dense_tensor(dense, X.toarray().astype(np.int64), y)  # Int32 tensors
    sparse = io.BytesIO()
    write_spmatrix_to_sparse_tensor(sparse, X, y)
    rows = [{"data": {"features": {"keys": X[r].indices.tolist(),
                                   "values": X[r].data.tolist(), "shape": [123]}}}
            for r in range(8)]
    return {
        "model": model,
        "libsvm": [head(a9a, 40)],
        "csv": ["\n".join(",".join(str(int(v)) for v in [max(y[r], 0), *X[r].toarray()[0]])
                          for r in range(20)).encode() + b"\n"],
        "recordio": [dense.getvalue(), sparse.getvalue()],
        "json": [json.dumps({"instances": rows}).encode(),
                 json.dumps({"instances": [{"features": X[0].toarray()[0].tolist()}]}).encode()],
        "jsonlines": ["\n".join(json.dumps(r) for r in rows).encode()],
    }


@pytest.fixture(scope="module")
def ffm(work):
    path = shared_file("criteo_xlearn_libffm", "small_train.txt")
    model = work / "ffm"
    train_files({"feature_dim": 10_000, "num_factors": 4, "predictor_type": "binary_classifier",
                 "mini_batch_size": 50}, path, model, fmt="libffm", index_base=0,
                progress=False)
    return {"model": model, "libffm": [head(path, 30)]}


@pytest.fixture(scope="module")
def deepfm(work):
    """The Criteo example DeepFM (raw TSV) and seeds: TSV, DeepCTR's CSV, JSON instances."""
    tsv = shared_file("criteo_kaggle_head1000", "train.txt")
    model = work / "deepfm"
    code = main(["train", "--config", str(REPO / "examples" / "deepfm_criteo.yaml"), "--quiet",
                 "--set", "train_config.num_epochs=1", "--set", f"train_input_path={tsv}",
                 "--set", f"eval_input_path={tsv}", "--set", f"model_dir={model}"])
    assert code == 0
    names = ["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
    instances = []
    for line in head(tsv, 6).decode().splitlines():
        fields = line.split("\t")
        instances.append({n: (int(v) if n.startswith("I") else v)
                          for n, v in zip(names, fields) if v and n != "label"})
    body = json.dumps({"instances": instances}).encode()
    return {"model": model, "tsv": [head(tsv, 12)],
            "csv": [head(shared_file("criteo_deepctr_sample", "criteo_sample.txt"), 12)],
            "json": [body], "jsonlines": ["\n".join(json.dumps(i) for i in instances).encode()]}


EVERY_KIND_COLUMNS = ("uid", "item", "tags", "age", "price", "kv", "clicks", "prices", "other")
JSON_VALUES = [None, -1, 0, 29, 30, 1.5, 1e38, -3.4e38, 2**63, -(2**63) - 1, True, "", "x", "nan",
               "inf", "1e400", "7", "a|b|zz", "a:1\x1db:nan", "a:1e39", "1;2;x", ";;", "9;9;9;9",
               "1e39;2", [], [1, 2], ["a", "b"], {}, {"a": 1}, "\u0663", "a" * 300]


@pytest.fixture(scope="module")
def every_kind(work):
    """A DeepFM with a feature of every kind (hashed, numbered and vocabulary ids, bucketized
    and normalized numbers, a cross, lookups, an expression, id and number sequences) trained
    on generated rows, and seeds: its TSV rows and their JSON instances."""
    from fmkit.jobs.deepfm import train_deepfm
    from fmkit.models.deepfm import config as configs

    rng = np.random.default_rng(4)
    header = ["uid", "item", "tags", "age", "price", "kv", "clicks", "prices", "label"]
    rows = []
    for _ in range(40):
        tags = "|".join(rng.choice(["a", "b", "c", "d"], rng.integers(0, 3)))
        kv = "\x1d".join(f"{t}:{rng.integers(1, 9)}" for t in "abc" if rng.random() < 0.5)
        rows.append([f"u{rng.integers(9)}", str(rng.integers(30)), tags,
                     f"{rng.uniform(10, 80):.1f}", f"{rng.lognormal(2, 1):.3f}", kv,
                     ";".join(str(c) for c in rng.integers(0, 10, rng.integers(0, 4))),
                     ";".join(f"{p:.2f}" for p in rng.uniform(0, 20, rng.integers(0, 3))),
                     str(rng.integers(2))])
    tsv = ("\t".join(header) + "\n" + "".join("\t".join(r) + "\n" for r in rows)).encode()
    (work / "kinds.tsv").write_bytes(tsv)
    dim = {"embedding_dim": 4}
    features = [
        {"id_feature": {"feature_name": "uid", "hash_bucket_size": 50, **dim}},
        {"id_feature": {"feature_name": "item", "num_buckets": 30, **dim}},
        {"id_feature": {"feature_name": "tags", "vocab_list": ["a", "b", "c"], "separator": "|",
                        "pooling": "mean", **dim}},
        {"raw_feature": {"feature_name": "age", "boundaries": [18, 30, 50], **dim}},
        {"raw_feature": {"feature_name": "price", "normalizer": "log1p"}},
        {"combo_feature": {"feature_name": "uid_x_tags", "expression": ["uid", "tags"],
                           "hash_bucket_size": 100, "separator": "|", **dim}},
        {"lookup_feature": {"feature_name": "tag_value", "map": "kv", "key": "tags",
                            "separator": "|", "boundaries": [1, 3], **dim}},
        {"lookup_feature": {"feature_name": "tag_sum", "map": "kv", "key": "tags",
                            "separator": "|"}},
        {"expr_feature": {"feature_name": "e", "variables": ["age", "price"],
                          "expression": "sqrt(age * price) + price"}},
        {"sequence_id_feature": {"feature_name": "clicks", "sequence_length": 3,
                                 "num_buckets": 10, **dim}},
        {"sequence_raw_feature": {"feature_name": "prices", "sequence_length": 2,
                                  "pooling": "mean", "normalizer":
                                  "method=zscore,mean=10,standard_deviation=5"}},
    ]
    names = [next(iter(f.values()))["feature_name"] for f in features]
    embedded = [n for n, f in zip(names, features) if "embedding_dim" in next(iter(f.values()))]
    document = {
        "train_input_path": str(work / "kinds.tsv"), "model_dir": str(work / "kinds"),
        "feature_configs": features,
        "model_config": {"feature_groups": [
            {"group_name": "wide", "group_type": "WIDE", "feature_names": embedded},
            {"group_name": "fm", "feature_names": embedded},
            {"group_name": "deep", "feature_names": names}],
            "deepfm": {"deep": {"hidden_units": [8]}}},
        "data_config": {"label_fields": ["label"], "with_header": True, "delimiter": "\t"},
        "train_config": {"num_epochs": 1}}
    train_deepfm(configs.parse(document), progress=False)
    instances = [{n: v for n, v in zip(header[:-1], row) if v} for row in rows[:6]]
    return {"model": work / "kinds", "tsv": [head(work / "kinds.tsv", 12)],
            "json": [json.dumps({"instances": instances}).encode()]}


@pytest.fixture(scope="module")
def every_kind_client(every_kind):
    yield from served(every_kind["model"])


# -- outcomes -----------------------------------------------------------------------------------
def predict_outcome(model, data: bytes, fmt: str, work: Path, table: str = "",
                    reserved: tuple[str, ...] = ()) -> None:
    """Predict a mutated file in-process (``model``: a model directory, or a loaded model):
    finite scores for every row, or an FMKitError. ``table``: ``parquet`` or ``csv`` writes a
    table of predictions instead (a model directory's only), with the ``reserved`` columns."""
    path, out = work / f"case.{fmt}", work / f"out.{table or 'jsonl'}"
    path.write_bytes(data)
    try:
        if isinstance(model, Path):
            predict_files(model, path, out, fmt=fmt, reserved_columns=reserved)
        else:
            with files.output_stream(out) as stream:
                for batch in model.read(path, fmt, labelled=False):
                    stream.write(codecs.encode_response(model.predictions(batch),
                                                        codecs.JSONLINES))
    except FMKitError:
        event("clean error")
        return
    event("scored")
    if table:
        import pyarrow.csv as pcsv
        import pyarrow.parquet as pq

        read = pq.read_table(out) if table == "parquet" else pcsv.read_csv(out)
        for name in read.column_names[:2]:  # (the outputs: logits, probs)
            assert np.isfinite(read.column(name).to_numpy().astype(np.float64)).all()
        return
    for line in out.read_text().splitlines():
        assert np.isfinite(json.loads(line)["score"])


def cli_outcome(args: list[str]) -> None:
    """The CLI in-process: exit 0, or exit 1 with one ``fmkit: error:`` line."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(args)
    assert code in (0, 1), err.getvalue()
    event(f"exit {code}")
    if code == 1:
        lines = err.getvalue().strip().splitlines()
        assert lines[-1].startswith("fmkit: error: ") and "Traceback" not in err.getvalue()


def cli_predict(model_dir: Path, body: bytes, path: Path, *options: str) -> None:
    """``fmkit predict`` of ``body`` written to ``path``: see :func:`cli_outcome`."""
    path.write_bytes(body)
    cli_outcome(["predict", "--model-dir", str(model_dir), "--data", str(path), *options,
                 "--output", str(path.with_suffix(".out"))])


def request_outcome(client: TestClient, body: bytes, content_type: str) -> None:
    response = client.post("/invocations", content=body,
                           headers={"Content-Type": content_type, "Accept": codecs.JSON})
    assert response.status_code in (200, 400, 413, 415), response.text
    event(f"status {response.status_code}")
    if response.status_code == 200:
        scores = [p["score"] for p in response.json()["predictions"]]
        assert all(isinstance(s, float) and np.isfinite(s) for s in scores)
    else:
        assert "error" in response.json()


# -- FM: files ----------------------------------------------------------------------------------
@FUZZ
@given(data=st.data())
def test_fm_files(fm, work, data):
    fmt = data.draw(st.sampled_from(["libsvm", "csv", "recordio"]))
    predict_outcome(fm["model"], data.draw(mutated(fm[fmt])), fmt, work)


@FUZZ
@given(data=st.data())
def test_libffm_files(ffm, work, data):
    predict_outcome(ffm["model"], data.draw(mutated(ffm["libffm"])), "libffm", work)


@FUZZ
@given(data=st.data())
def test_fm_training_and_evaluation_cli(fm, work, data):
    fmt = data.draw(st.sampled_from(["libsvm", "csv", "recordio"]))
    path = work / f"train.{fmt}"
    path.write_bytes(data.draw(mutated(fm[fmt])))
    if data.draw(st.booleans()):
        cli_outcome(["evaluate", "--model-dir", str(fm["model"]), "--data", str(path),
                     "--format", fmt])
    else:
        cli_outcome(["train", "--train", str(path), "--model-dir", str(work / "trained"),
                     "--format", fmt, "--quiet", "feature_dim=123", "num_factors=2",
                     "predictor_type=binary_classifier", "mini_batch_size=7", "epochs=2"])


# -- FM: request bodies -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fm_client(fm):
    with TestClient(create_app(load_model(fm["model"]))) as client:
        yield client


def served(model_dir: Path):
    """A test client of the server of ``model_dir``, its model as ``app_state["model"]``."""
    model = load_model(model_dir)
    with TestClient(create_app(model)) as client:
        client.app_state["model"] = model
        yield client


@pytest.fixture(scope="module")
def deepfm_client(deepfm):
    yield from served(deepfm["model"])


@FUZZ
@given(data=st.data())
def test_fm_request_bodies(fm, fm_client, work, data):
    kind = data.draw(st.sampled_from(["json", "jsonlines", "recordio"]))
    body = data.draw(mutated(fm[kind]))
    content_type = {"json": codecs.JSON, "jsonlines": codecs.JSONLINES,
                    "recordio": codecs.RECORDIO}[kind]
    request_outcome(fm_client, body, content_type)
    if kind != "recordio":
        cli_predict(fm["model"], body, work / f"request.{kind}", "--format", kind)


# -- DeepFM -------------------------------------------------------------------------------------
@FUZZ
@given(data=st.data())
def test_deepfm_files(deepfm, deepfm_client, work, data):
    kind = data.draw(st.sampled_from(["tsv", "csv"]))
    body = data.draw(mutated(deepfm[kind]))
    if data.draw(st.integers(0, 7)) == 0:  # the whole CLI path (loads the model: slower)
        cli_predict(deepfm["model"], body, work / f"deepfm.{kind}")
    else:
        predict_outcome(deepfm_client.app_state["model"], body, "auto", work)


@FUZZ
@given(data=st.data())
def test_deepfm_request_bodies(deepfm, deepfm_client, work, data):
    kind = data.draw(st.sampled_from(["json", "jsonlines"]))
    body = data.draw(mutated(deepfm[kind]))
    request_outcome(deepfm_client, body, codecs.JSON if kind == "json" else codecs.JSONLINES)
    if data.draw(st.integers(0, 7)) == 0:
        cli_predict(deepfm["model"], body, work / f"request.{kind}", "--format", kind)


@FUZZ
@given(data=st.data())
def test_every_feature_kind(every_kind, every_kind_client, work, data):
    """Mutated rows (a TSV file) and instances (a JSON request) of a model with a feature of
    every kind: finite scores, or a clean error (a 400 from the server)."""
    branch = data.draw(st.integers(0, 3))
    if branch == 0:
        predict_outcome(every_kind_client.app_state["model"],
                        data.draw(mutated(every_kind["tsv"])), "auto", work)
    elif branch == 3:  # to a table of predictions (TorchEasyRec's writers)
        predict_outcome(every_kind["model"], data.draw(mutated(every_kind["tsv"])), "auto",
                        work, data.draw(st.sampled_from(["parquet", "csv"])))
    elif branch == 1:
        request_outcome(every_kind_client, data.draw(mutated(every_kind["json"])), codecs.JSON)
    else:  # well-formed JSON, some fields' values of another kind
        instances = json.loads(every_kind["json"][0])["instances"]
        for _ in range(data.draw(st.integers(1, 4))):
            instance = data.draw(st.sampled_from(instances))
            name = data.draw(st.sampled_from(sorted(EVERY_KIND_COLUMNS)))
            instance[name] = data.draw(st.sampled_from(JSON_VALUES))
        request_outcome(every_kind_client, json.dumps({"instances": instances}).encode(),
                        codecs.JSON)


def _arrow_values(rows: int) -> list:
    """Arrow columns of every kind a Parquet file may hold, ``rows`` long (nulls mixed in):
    what a feature's column may be replaced with."""
    import datetime
    import decimal

    import pyarrow as pa

    def cycle(values: list, kind=None):
        return pa.array([values[i % len(values)] for i in range(rows)], kind)

    return [
        cycle([{"x": 1}, None]), cycle([[("k", 1)], None], pa.map_(pa.string(), pa.int64())),
        cycle([[("a", "3")], [("b", "x:y")]], pa.map_(pa.string(), pa.string())),
        cycle([b"u1", b"\xff\xfe", None]), cycle([b"ab", b"\x00\x01"], pa.binary(2)),
        cycle([b"a|b", b"c"], pa.large_binary()), cycle([[b"a"], [b"\xff"], None]),
        cycle([[{"x": 1}], None]), cycle([[["a"]], [[]], None]), cycle([[1, 2], None, []],
                                                                        pa.large_list(pa.int64())),
        cycle([True, False, None]), cycle([-128, 127], pa.int8()),
        cycle([2**64 - 1, 0], pa.uint64()), cycle([1.5, float("nan"), float("inf"), 1e300]),
        cycle([1.0, -65504.0], pa.float16()), cycle([decimal.Decimal("1e30"), None]),
        cycle([datetime.date(2020, 1, 1), None]),
        cycle([datetime.datetime(2262, 4, 11), None], pa.timestamp("ns")),
        cycle([datetime.timedelta(days=1)]), cycle([datetime.time(1, 2)]),
        cycle(["a", "b", None]).dictionary_encode(), pa.nulls(rows),
        cycle(["\u0663\u0660", "a\x1db:1", "", "1e39", " 7 "]), cycle(["x"], pa.large_string()),
        cycle([[1.5, None], [float("inf")]]),
    ]


@FUZZ
@given(data=st.data())
def test_parquet_columns_of_every_type(every_kind, work, data):
    """A Parquet file to score whose columns hold other Arrow types (structs, maps, bytes
    that are not UTF-8, dates, float16, huge decimals, nested lists...): finite scores, or
    a clean error naming the file."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    table = pcsv.read_csv(io.BytesIO(every_kind["tsv"][0]), parse_options=pcsv.ParseOptions(
        delimiter="\t"), convert_options=pcsv.ConvertOptions(
        column_types={n: pa.string() for n in EVERY_KIND_COLUMNS}))
    choices = _arrow_values(table.num_rows)
    for _ in range(data.draw(st.integers(1, 3))):
        name = data.draw(st.sampled_from([n for n in table.column_names if n != "label"]))
        table = table.set_column(table.schema.get_field_index(name), name,
                                 data.draw(st.sampled_from(choices)))
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    output = data.draw(st.sampled_from(["", "parquet", "csv"]))  # (responses, or a table)
    reserved = tuple(data.draw(st.lists(st.sampled_from(table.column_names), max_size=2)))
    predict_outcome(every_kind["model"], buffer.getvalue(), "auto", work, output, reserved)


@FUZZ
@given(data=st.data())
def test_readers_alone(fm, ffm, work, data):
    """The compiled readers on their own, with index bases and label checks varied."""
    fmt = data.draw(st.sampled_from(["libsvm", "csv", "recordio", "libffm"]))
    seeds = ffm["libffm"] if fmt == "libffm" else fm[fmt]
    path = work / f"read.{fmt}"
    path.write_bytes(data.draw(mutated(seeds)))
    labels = data.draw(st.sampled_from([None, "binary", "real"]))
    base = data.draw(st.sampled_from([0, 1])) if fmt in ("libsvm", "libffm") else 0
    try:
        for batch in FileSource(path, fmt, 10_000, index_base=base, labels=labels).blocks():
            assert np.isfinite(batch.values).all()
            assert batch.indices.size == 0 or (0 <= batch.indices.min()
                                               and batch.indices.max() < 10_000)
            if labels:
                assert np.isfinite(batch.labels).all()
        event("read")
    except FMKitError:
        event("clean error")


# -- DeepFM configuration files ------------------------------------------------------------------
CONFIG_VALUES = [b"-1", b"0", b"1e400", b".nan", b"nan", b"-.inf", b"inf", b"1.5", b"true",
                 b"null", b'""', b'"x"', b"[]", b"{}", b"[1, 2]", b"2147483648",
                 b"99999999999999999999", b'"method=zscore,std=0"', b'"nn.init.normal_,std=nan"']
NUMBER = re.compile(rb"(?<=[:\s\[,])-?\d+(\.\d+)?(?=[\s,\]}])")


@pytest.fixture(scope="module")
def configurations():
    """The examples' DeepFM configurations as YAML and as TorchEasyRec's protobuf text."""
    from fmkit.models.deepfm.config_files import convert_file

    paths = [REPO / "examples" / name for name in ("deepfm_criteo.yaml",
                                                   "deepfm_movielens.yaml")]
    return ([("yaml", p.read_bytes()) for p in paths]
            + [("config", convert_file(str(p), "config").encode()) for p in paths])


@FUZZ
@given(data=st.data())
def test_configuration_files(configurations, work, data):
    """A mutated configuration (a number replaced by another kind of value, bytes changed)
    converts, or is one line naming what is wrong: never a traceback (a seed of 10^20, a
    number protobuf text cannot hold and a NaN normalizer option each were one)."""
    form, text = data.draw(st.sampled_from(configurations))
    numbers = list(NUMBER.finditer(text))
    if numbers and data.draw(st.booleans()):
        found = data.draw(st.sampled_from(numbers))
        text = text[:found.start()] + data.draw(st.sampled_from(CONFIG_VALUES)) + text[
            found.end():]
    if data.draw(st.booleans()):
        text = data.draw(mutated([text]))
    path = work / f"fuzzed.{form}"
    path.write_bytes(text)
    to = data.draw(st.sampled_from(["config", "yaml", "json"]))
    out = work / f"out.{to}"
    out.unlink(missing_ok=True)
    cli_outcome(["config", "convert", str(path), "--to", to, "-o", str(out)])
