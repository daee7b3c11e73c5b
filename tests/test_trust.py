"""The audit of issue 13, item by item: each test reproduces a failure the audit found (data
loss, memory safety, 500s, silently wrong scores, hangs) and checks the behaviour that replaced
it: a clear message, exit code 1 or a 4xx status, and files left untouched."""

from __future__ import annotations

import errno
import io
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import scipy.sparse as sp

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
from sagemaker.amazon.common import (  # noqa: E402
    _write_recordio,
    write_numpy_to_dense_tensor,
    write_spmatrix_to_sparse_tensor,
)
from sagemaker.amazon.record_pb2 import Record  # noqa: E402
from sklearn.datasets import load_svmlight_file  # noqa: E402

from fmkit import files  # noqa: E402
from fmkit.data import codecs  # noqa: E402
from fmkit.errors import DataError  # noqa: E402
from fmkit.jobs.fm import predict_files, train_files  # noqa: E402
from fmkit.models.fm.model import FMModel  # noqa: E402
from fmkit.models.fm.parameters import reference_logits, sigmoid  # noqa: E402

from .conftest import run_fmkit, shared_file  # noqa: E402
from .deepfm_helpers import small  # noqa: E402

HP = ["feature_dim=123", "num_factors=4", "predictor_type=binary_classifier",
      "mini_batch_size=100"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A small FM trained on a9a (1-based indices in the file)."""
    out = tmp_path_factory.mktemp("trust") / "model"
    train_files({"feature_dim": 123, "num_factors": 4, "predictor_type": "binary_classifier",
                 "mini_batch_size": 100, "epochs": 1}, shared_file("a9a_libsvm", "a9a"), out,
                progress=False)
    return out


def brute_scores(model_dir, X) -> np.ndarray:
    """sigmoid of the FM function computed by the plain reference on 0-based columns."""
    return sigmoid(reference_logits(FMModel.load(model_dir).params, sp.csr_matrix(X)))


def snapshot(directory) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file()}


# -- 1. data loss --------------------------------------------------------------------------------
def test_a_symbolic_link_is_written_through_not_replaced(cli, tmp_path, model_dir):
    """An output file, model directory or checkpoint directory named by a symbolic link is
    written where the link points, and the link stays: renaming onto the link replaced it
    (``/dev/stdout`` itself, as root, when output was redirected to a file) and left its
    target stale."""
    data = shared_file("a9a_libsvm", "a9a.t")
    real = tmp_path / "real"
    real.mkdir()
    (real / "p.jsonl").write_text("")
    (tmp_path / "p.jsonl").symlink_to(real / "p.jsonl")
    code, _, err = cli("predict", "--model-dir", model_dir, "--data", data,
                       "--output", tmp_path / "p.jsonl")
    assert code == 0, err
    assert (tmp_path / "p.jsonl").is_symlink()
    lines = (real / "p.jsonl").read_text().splitlines()
    assert len(lines) == 16281 and json.loads(lines[0])["predicted_label"] in (0.0, 1.0)

    (tmp_path / "m").symlink_to(real / "m")
    (tmp_path / "ckpt").symlink_to(real / "ckpt")
    for epochs in (1, 2):
        code, _, err = cli("train", "--train", data, "--model-dir", tmp_path / "m",
                           "--checkpoint-dir", tmp_path / "ckpt", *HP, f"epochs={epochs}")
        assert code == 0, err
        assert (tmp_path / "m").is_symlink() and (tmp_path / "ckpt").is_symlink()
        metrics = json.loads((real / "m" / "metrics.json").read_text())
        assert len(metrics["train"]) == epochs  # (the second run replaced the first model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "m", "p.jsonl", "real"]
    assert sorted(p.name for p in real.iterdir()) == ["m", "p.jsonl"]  # (checkpoints: done)


@pytest.mark.parametrize("checkpoints, where", [("m", "is"), ("m/ck", "lies within"),
                                                 (".", "holds")])
def test_checkpoints_and_the_model_need_directories_of_their_own(cli, tmp_path, monkeypatch,
                                                                 checkpoints, where):
    """The same directory for both trained to the end and then could not write the model
    over its checkpoints (the training was lost); one inside the other could not be resumed.
    Now refused before any work, nothing created."""
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("train", "--train", shared_file("a9a_libsvm", "a9a.t"), "--model-dir",
                       "m", "--checkpoint-dir", checkpoints, *HP)
    assert code == 1 and err.count("\n") == 1, err
    assert f"--checkpoint-dir {where} the model directory: they need directories of their own" \
        in err
    assert os.listdir(tmp_path) == []


def test_standard_output_by_name_is_standard_output(tmp_path, model_dir):
    """``--output /proc/self/fd/1`` (or ``/dev/stdout``) with output redirected to a file
    appends to it as ``>>`` asks (it was refused: a temporary file cannot be made in
    /proc/self/fd)."""
    out = tmp_path / "log"
    out.write_text("before\n")
    with open(out, "a") as f:
        result = subprocess.run([sys.executable, "-m", "fmkit", "predict", "--model-dir",
                                 str(model_dir), "--data", str(shared_file("a9a_libsvm", "a9a.t")),
                                 "--output", "/proc/self/fd/1", "--quiet"],
                                stdout=f, stderr=subprocess.PIPE, text=True)
    assert result.returncode == 0, result.stderr
    lines = out.read_text().splitlines()
    assert lines[0] == "before" and len(lines) == 1 + 16281
    assert json.loads(lines[1])["score"] >= 0


def test_model_dir_holding_user_files_is_refused_and_untouched(cli, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(shared_file("a9a_libsvm", "a9a"), data / "a9a")
    before = snapshot(data)
    code, _, err = cli("train", "--train", data / "a9a", "--model-dir", data, *HP)
    assert code == 1
    assert f"{data}: is not empty and does not hold an fmkit model directory" in err
    assert "a9a" in err and "Traceback" not in err
    assert snapshot(data) == before and sorted(os.listdir(data)) == ["a9a"]


def test_model_dir_dot_is_refused(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.txt").write_text("mine")
    shutil.copy(shared_file("a9a_libsvm", "a9a"), project / "a9a")
    before = snapshot(project)
    result = run_fmkit("train", "--train", "a9a", "--model-dir", ".", *HP, cwd=project)
    assert result.returncode == 1 and "does not hold an fmkit model" in result.stderr
    assert snapshot(project) == before


def test_existing_model_dir_and_empty_dir_are_replaced(cli, tmp_path, model_dir):
    target = tmp_path / "m"
    shutil.copytree(model_dir, target)
    empty = tmp_path / "empty"
    empty.mkdir()
    for destination in (target, empty):
        code, _, err = cli("train", "--train", shared_file("a9a_libsvm", "a9a.t"),
                           "--model-dir", destination, *HP, "seed=5")
        assert code == 0, err
        assert FMModel.load(destination).hyperparameters["seed"] == 5


def test_deepfm_model_dir_and_checkpoint_dir_are_guarded(cli, tmp_path):
    import yaml

    data = tmp_path / "data"
    data.mkdir()
    (data / "mine.csv").write_text("user,item,tags,age,price,label\n")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(small(train_input_path=str(data / "mine.csv"),
                                           model_dir=str(data))))
    code, _, err = cli("train", "--config", config)
    assert code == 1 and "does not hold an fmkit model directory" in err
    code, _, err = cli("train", "--train", shared_file("a9a_libsvm", "a9a.t"), "--model-dir",
                       tmp_path / "m", "--checkpoint-dir", data, *HP)
    assert code == 1 and "does not hold an fmkit checkpoint directory" in err
    assert sorted(os.listdir(data)) == ["mine.csv"]


# -- 2. recordIO: dense Int32 values of one byte -------------------------------------------------
def test_sdk_dense_int32_records_score_correctly(tmp_path, model_dir):
    rng = np.random.default_rng(0)
    X = (rng.random((300, 123)) < 0.9).astype(np.int64)  # ones: one byte per packed value
    path = tmp_path / "ones.rec"
    with open(path, "wb") as f:
        write_numpy_to_dense_tensor(f, X, np.ones(300))
    result = run_fmkit("predict", "--model-dir", model_dir, "--data", path)
    assert result.returncode == 0, result.stderr
    scores = [json.loads(line)["score"] for line in result.stdout.splitlines()]
    np.testing.assert_allclose(scores, brute_scores(model_dir, X), rtol=1e-5, atol=1e-6)
    result = run_fmkit("evaluate", "--model-dir", model_dir, "--data", path)
    assert result.returncode == 0 and json.loads(result.stdout)["rows"] == 300


# -- 3. output paths -----------------------------------------------------------------------------
def test_devices_and_fifos_are_written_not_replaced(tmp_path, model_dir):
    result = run_fmkit("predict", "--model-dir", model_dir, "--data",
                       shared_file("a9a_libsvm", "a9a.t"), "--output", "/dev/null")
    assert result.returncode == 0, result.stderr
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    result = run_fmkit("predict", "--model-dir", model_dir, "--data",
                       shared_file("a9a_libsvm", "a9a.t"), "--output", fifo)
    reader.join(60)
    assert result.returncode == 0 and stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert received[0].count(b"\n") == 16281


def test_named_output_files_replace_only_what_the_command_wrote(cli, tmp_path, model_dir):
    """predict, convert, recommend and report replace a file the user names only when it is
    empty or holds what that command writes; anything else is refused and left as it was."""
    data = shared_file("a9a_libsvm", "a9a.t")
    mine = tmp_path / "mine.libsvm"
    mine.write_bytes(b"1 1:1 5:1\n0 2:1\n")
    items, contexts = tmp_path / "items.jsonl", tmp_path / "contexts.jsonl"
    items.write_text("".join(json.dumps({"id": i, "keys": [100 + i]}) + "\n" for i in range(20)))
    contexts.write_text(json.dumps({"id": "u", "keys": [0, 5]}) + "\n")
    commands = {
        "predict json": ["predict", "--model-dir", model_dir, "--data", data, "--accept",
                         "application/json", "--output"],
        "predict jsonlines": ["predict", "--model-dir", model_dir, "--data", data, "--output"],
        "predict recordio": ["predict", "--model-dir", model_dir, "--data", data, "--accept",
                             "application/x-recordio-protobuf", "--output"],
        "recommend": ["recommend", "--model-dir", model_dir, "--items", items, "--context",
                      contexts, "--output"],
        "report": ["report", "--model-dir", model_dir, "--output"],
    }
    for name, command in commands.items():
        code, _, err = cli(*command, mine)
        assert code == 1, name
        assert f"{mine}: exists and is not" in err and "'1 1:1 5:1\\n0 2:1\\n'" in err, name
        assert len(err.strip().splitlines()) == 1, name
        assert mine.read_bytes() == b"1 1:1 5:1\n0 2:1\n", name
        out = tmp_path / name.replace(" ", ".")
        out.write_bytes(b"")  # an empty file holds nothing to lose
        for _ in range(2):  # then its own output is replaced by the same command
            code, _, err = cli(*command, out)
            assert code == 0, (name, err)
        assert out.stat().st_size > 0
    code, _, err = cli("convert", "--to", "recordio", data, mine)
    assert code == 1 and "exists and is not empty" in err
    assert mine.read_bytes() == b"1 1:1 5:1\n0 2:1\n"
    converted = tmp_path / "converted.rec"
    assert cli("convert", "--to", "recordio", data, converted)[0] == 0
    code, _, err = cli("convert", "--to", "recordio", data, converted)
    assert code == 1  # cannot tell it is ours; a binary file is quoted as bytes
    assert "(it starts '\\n#\\xd7\\xce" in err and "\ufffd" not in err, err


def test_output_mode_follows_the_umask(tmp_path, model_dir):
    out = tmp_path / "p.jsonl"
    subprocess.run(f"umask 027 && {sys.executable} -m fmkit predict --model-dir {model_dir} "
                   f"--data {shared_file('a9a_libsvm', 'a9a.t')} --output {out}", shell=True,
                   check=True)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o640


def test_filesystem_errors_are_one_line_and_leave_nothing(cli, tmp_path, model_dir,
                                                          monkeypatch):
    data = shared_file("a9a_libsvm", "a9a.t")
    code, _, err = cli("predict", "--model-dir", model_dir, "--data", data, "--output",
                       tmp_path / "missing" / "p.jsonl")
    assert code == 1 and "no such directory" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli("predict", "--model-dir", model_dir, "--data", data, "--output",
                       "/dev/full")
    assert code == 1 and "/dev/full: cannot write: No space left on device" in err
    code, _, err = cli("predict", "--model-dir", model_dir, "--data", data, "--output",
                       "/proc/fmkit.jsonl")
    assert code == 1 and "/proc/fmkit.jsonl" in err and "Traceback" not in err

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full_disk)
    code, _, err = cli("predict", "--model-dir", model_dir, "--data", data, "--output",
                       tmp_path / "p.jsonl")
    assert code == 1 and "p.jsonl: cannot write: No space left on device" in err
    assert os.listdir(tmp_path) == []  # no partial file


# -- 4, 5. requests: 4xx with a message, never a wrong score -------------------------------------
def sparse(keys, values, shape=123) -> str:
    return json.dumps({"instances": [{"data": {"features": {
        "keys": keys, "values": values, "shape": [shape]}}}]})


BAD_BODIES = [
    ('{"instances": [{"features": [1' + "0" * 400 + "]}]}", "features"),
    ("[" * 5000 + "]" * 5000, "nested too deeply"),
    (sparse([2**63], [1]), "keys[0]: key 9223372036854775808 is out of range"),
    (sparse([1e20], [1]), "keys[0]: key 1e+20 is out of range"),
    (sparse([True], [1]), "keys[0]: expected a number, got true"),
    (sparse(["7"], [1]), 'keys[0]: expected a number, got "7"'),
    (sparse([[1]], [1]), "keys[0]: expected a number, got [1]"),
    (sparse([3], [1e39]), "values[0]: 1e+39 is not a finite float32"),
    ('{"instances": [{"features": [1], "features": [2]}]}', "appears twice"),
    ('{"instances": [{"data": {"features": {"keys": [1], "values": [NaN]}}}]}',
     "NaN is not a JSON number"),
]


@pytest.mark.parametrize("body,message", BAD_BODIES)
def test_bad_json_bodies_are_request_errors(model_dir, body, message):
    decode = FMModel.load(model_dir).request_decoder()
    with pytest.raises(codecs.RequestError, match=None) as raised:
        decode(body.encode(), codecs.JSON)
    assert message in str(raised.value) and raised.value.status == 400


def test_bad_bodies_in_predict_files_are_clean_errors(cli, tmp_path, model_dir):
    for n, (body, message) in enumerate(BAD_BODIES):
        path = tmp_path / f"{n}.json"
        path.write_text(body)
        code, out, err = cli("predict", "--model-dir", model_dir, "--data", path, "--format",
                             "json")
        assert code == 1 and f"{path}: " in err and message in err, err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
        lines = tmp_path / f"{n}.jsonl"
        lines.write_text(json.dumps(json.loads(body)["instances"][0]) if n > 1 else body)
        code, _, err = cli("predict", "--model-dir", model_dir, "--data", lines, "--format",
                           "jsonlines")
        assert code == 1 and "Traceback" not in err


def test_a_bad_line_of_a_jsonlines_file_is_named_by_its_line(cli, tmp_path, model_dir):
    """Blank lines are skipped, and still counted: the error names the file's line, not the
    instance's number among the non-blank lines."""
    good = json.dumps({"features": {"keys": [1], "values": [1.0]}})
    path = tmp_path / "requests.jsonl"
    path.write_text(f"{good}\n\n{good}\n\n" + '{"features": {"keys": [1], "values": ["x"]}}\n')
    code, _, err = cli("predict", "--model-dir", model_dir, "--data", path, "--format",
                       "jsonlines")
    assert code == 1 and f'{path}: line 5: values[0]: expected a number, got "x"' in err, err


def test_malformed_accept_is_400_and_q_zero_is_not_acceptable():
    with pytest.raises(codecs.RequestError) as raised:
        codecs.response_type("application/json;q=abc")
    assert raised.value.status == 400 and "q-value" in str(raised.value)
    with pytest.raises(codecs.RequestError) as raised:
        codecs.response_type("application/json;q=0")
    assert raised.value.status == 406
    assert codecs.response_type("text/html;q=1, application/jsonlines;q=0.5") == codecs.JSONLINES


def test_non_finite_score_is_never_returned(model_dir):
    model = FMModel.load(model_dir)
    batch = model.request_decoder()(sparse([3, 5], [3e38, -3e38]).encode(), codecs.JSON)
    scores = model.predictions(batch)["score"]
    if np.isfinite(scores).all():  # this model's weights keep it finite: force an overflow
        model.params.w[:] = 1e30
    with pytest.raises(codecs.RequestError, match="instance 1: the score is not a finite"):
        codecs.encode_response(model.predictions(batch), codecs.JSON)


def record(features: dict, label: float | None = None) -> bytes:
    r = Record()
    for name, spec in features.items():
        tensor = getattr(r.features[name], spec.pop("kind", "float32_tensor"))
        for field, values in spec.items():
            getattr(tensor, field).extend(values)
    if label is not None:
        r.label["values"].float32_tensor.values.extend([label])
    return r.SerializeToString()


def framed(*payloads: bytes) -> bytes:
    out = io.BytesIO()
    for payload in payloads:
        _write_recordio(out, payload)
    return out.getvalue()


def test_recordio_lies_are_400s_and_the_last_map_entry_wins(model_dir):
    decode = FMModel.load(model_dir).request_decoder()
    for body, message in [
        (framed(record({"values": {"keys": [1], "values": [1.0], "shape": [2**63]}})),
         "shape is 2^31 or more"),
        (framed(record({"values": {"kind": "float64_tensor", "keys": [1], "values": [1e39],
                                   "shape": [123]}})), "not a finite float32"),
        (framed(record({"values": {"values": [1.0] * 123}}, label=float("inf"))),
         "the label is not a finite float32"),
    ]:
        with pytest.raises(codecs.RequestError, match="record 1") as raised:
            decode(body, codecs.RECORDIO)
        assert message in str(raised.value)
    # two features["values"] entries: protobuf's own parser keeps the last; so must fmkit
    first = record({"values": {"keys": [0, 1, 2], "values": [1, 1, 1], "shape": [123]}})
    last = record({"values": {"keys": [7], "values": [2.0], "shape": [123]}})
    parsed = Record()
    parsed.ParseFromString(first + last)
    assert list(parsed.features["values"].float32_tensor.keys) == [7]
    batch = decode(framed(first + last), codecs.RECORDIO)
    X = sp.csr_matrix(([2.0], ([0], [7])), shape=(1, 123))
    np.testing.assert_allclose(FMModel.load(model_dir).predictions(batch)["score"],
                               brute_scores(model_dir, X), rtol=1e-6)


def test_deepfm_request_errors(deepfm_model):
    decode = deepfm_model.request_decoder()
    for instance, message in [
        ({"user": "u1", "item": 2**63}, "instance 1: feature 'item': 9223372036854775808 is "
         "beyond 64-bit integers"),
        ({"user": "u1", "Item": 3, "colour": "x"}, "unknown feature 'Item', 'colour': this "
         "model's features are user, item, tags, age, price"),
        ({"user": {"a": 1}}, """feature 'user': cannot use an object ('{"a": 1}')"""),
        ({"user": [[1]]}, "feature 'user': cannot use a list in a list ('[1]')"),
    ]:
        with pytest.raises(codecs.RequestError) as raised:
            decode(json.dumps({"instances": [instance]}).encode(), codecs.JSON)
        assert message in str(raised.value)
        assert "label" not in str(raised.value)  # sent along, accepted, but not a feature
    with pytest.raises(codecs.RequestError, match="Infinity is not a JSON number"):
        decode(b'{"instances": [{"price": Infinity}]}', codecs.JSON)
    # an unknown name is the first instance's that gives it a value (the request's, if none)
    for body, where in [(b'[{"user": "u1"}, {"Item": null}, {"Item": 3}]', "instance 3: "),
                        (b'[{"user": "u1"}, {"Item": null}]', "request: "),
                        (b'{"user": "u1"}\n\n{"Item": 3}', "instance 2: ")]:
        with pytest.raises(codecs.RequestError) as raised:
            decode(body, codecs.JSON if body.startswith(b"[") else codecs.JSONLINES)
        assert f"{where}unknown feature 'Item'" in str(raised.value)
    good = decode(b'{"instances": [{"user": "u1", "item": 3, "price": 2.5, "label": 1}]}',
                  codecs.JSON)
    assert np.isfinite(deepfm_model.predictions(good)["score"]).all()
    with pytest.raises(DataError, match="column 'price': 'true' is not a number"):
        deepfm_model.predictions(decode(b'{"instances": [{"price": true}]}', codecs.JSON))
    with pytest.raises(DataError, match="instance 3: column 'price': expected a number, got a "
                                        "list"):  # (was "row 1: ... got list<item: string>")
        deepfm_model.predictions(decode(b'{"instances": [{"price": 1}, {}, {"price": [1, 2]}]}',
                                        codecs.JSON))
    # JSON's true is the id a CSV file's text true is (it was "True")
    scores = [deepfm_model.predictions(decode(json.dumps({"instances": [{"user": user}]})
                                              .encode(), codecs.JSON))["score"][0]
              for user in (True, "true", "True")]
    assert scores[0] == scores[1] != scores[2]


@pytest.fixture(scope="module")
def deepfm_model(small_deepfm_dir):
    from fmkit.models.base import load_model

    return load_model(small_deepfm_dir)


# -- 6. values beyond float32, diverging training ------------------------------------------------
def test_value_beyond_float32_is_a_file_line_error(cli, tmp_path):
    path = tmp_path / "big.libsvm"
    path.write_text("1 1:1 2:1\n0 3:1e39\n")
    code, _, err = cli("train", "--train", path, "--model-dir", tmp_path / "m", *HP)
    assert code == 1 and f"{path}:2: value '3:1e39' is not a finite float32" in err
    assert not (tmp_path / "m").exists()


def test_diverging_training_stops_and_writes_no_model(cli, tmp_path):
    code, _, err = cli("train", "--train", shared_file("a9a_libsvm", "a9a.t"), "--model-dir",
                       tmp_path / "m", *HP, "optimizer=sgd", "linear_lr=1e30",
                       "factors_lr=1e30", "bias_lr=1e30", "--quiet")
    assert code == 1 and "training diverged in epoch 1" in err and "lower the learning" in \
        err.lower()
    assert not (tmp_path / "m").exists()


# -- 7. long last line without a newline ---------------------------------------------------------
def test_long_last_line_without_newline_is_one_row(cli, tmp_path):
    path = tmp_path / "long.libsvm"
    long_row = " ".join(f"{i}:0.5" for i in range(1, 200_001))  # ~1.6 MB
    path.write_text(f"1 3:1 5:2\n0 {long_row}")
    assert path.stat().st_size > 1 << 20
    code, _, err = cli("convert", "--to", "libsvm", "--index-base", "1", path, tmp_path / "o")
    assert code == 0, err
    X, y = load_svmlight_file(str(tmp_path / "o"), n_features=200_001, zero_based=False)
    Xr, yr = load_svmlight_file(str(path), n_features=200_001, zero_based=False)
    assert X.shape[0] == 2 and (X != Xr).nnz == 0 and list(y) == list(yr)


# -- 8. absurd sizes -----------------------------------------------------------------------------
def test_absurd_sizes_are_refused_with_an_estimate(cli, tmp_path):
    started = time.perf_counter()
    code, _, err = cli("train", "--train", shared_file("a9a_libsvm", "a9a"), "--model-dir",
                       tmp_path / "m", "feature_dim=1000000000000", "num_factors=8",
                       "predictor_type=binary_classifier")
    assert code == 1 and "needs about" in err and "TiB" in err and "Lower feature_dim" in err
    assert time.perf_counter() - started < 5
    import yaml

    document = small(train_input_path=str(shared_file("a9a_libsvm", "a9a")),
                     model_dir=str(tmp_path / "d"))
    document["feature_configs"][0]["id_feature"]["hash_bucket_size"] = 200_000_000_000
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(document))
    code, _, err = cli("train", "--config", config)
    assert code == 1 and "embedding 'user_emb' (200000000000 rows" in err and "hash_bucket_size" \
        in err


# -- 9. configurations ---------------------------------------------------------------------------
def test_yaml_alias_bomb_is_refused_quickly(cli, tmp_path):
    bomb = tmp_path / "bomb.yaml"
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    bomb.write_text("\n".join(levels) + "\n")
    started = time.perf_counter()
    code, _, err = cli("train", "--config", bomb)
    assert code == 1 and "YAML aliases (*a0) are not supported" in err
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize("section,field,value", [("train_config", "num_epochs", -1),
                                                 ("data_config", "batch_size", 0)])
def test_non_positive_counts_are_refused(cli, tmp_path, section, field, value):
    import yaml

    document = small(train_input_path="x.csv", model_dir=str(tmp_path / "m"))
    document.setdefault(section, {})[field] = value
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(document))
    code, _, err = cli("train", "--config", config)
    assert code == 1 and f"{section}.{field}: must be a positive integer, got {value}" in err


@pytest.mark.parametrize("path,value,message", [
    ("train_config.sparse_optimizer", {"adagrad_optimizer": {"lr": -1}},
     "train_config.sparse_optimizer.adagrad_optimizer.lr: must be a finite number >= 0, got "
     "-1"),
    ("train_config.sparse_optimizer", {"adagrad_optimizer": {"lr": float("inf")}},
     "adagrad_optimizer.lr: must be a finite number >= 0, got inf"),  # (diverged at step 2)
    ("train_config.dense_optimizer", {"adam_optimizer": {"beta1": 1.0}},
     "train_config.dense_optimizer.adam_optimizer.beta1: must be in [0, 1), got 1.0"),
    ("train_config.dense_optimizer", {"adam_optimizer": {"weight_decay": float("nan")}},
     "adam_optimizer.weight_decay: expected a number, got nan"),
    ("train_config.dense_optimizer", {"adam_optimizer": {}, "manual_step_learning_rate": {
        "schedule_sizes": [10], "learning_rates": [-0.1]}},
     "manual_step_learning_rate.learning_rates: must be finite numbers >= 0"),
    ("train_config.dense_optimizer", {"adam_optimizer": {}, "exponential_decay_learning_rate": {
        "decay_size": 10, "min_learning_rate": float("inf")}},
     "exponential_decay_learning_rate.min_learning_rate: must be a finite number >= 0"),
    ("feature_configs", [{"raw_feature": {"feature_name": "price", "boundaries": [
        float("nan"), 1.0]}}], "feature_configs[0].raw_feature.boundaries[0]: expected a "
                               "number, got nan"),  # (trained, bucketized against NaN)
    ("train_config.dense_optimizer", {"adam_optimizer": {},
                                      "cosine_annealing_warm_restarts_learning_rate": {
                                          "T_0": 5, "T_mult": 0}},
     "cosine_annealing_warm_restarts_learning_rate.T_mult: must be >= 1"),
    ("train_config.seed", -3, "train_config.seed: must be >= 0, got -3"),  # (numpy traceback)
    ("train_config.seed", 10 ** 20, "train_config.seed: 100000000000000000000 is out of range "
     "(a 64-bit integer)"),  # (PyTorch's seeding raised an OverflowError)
    ("train_config.num_epochs", list(range(40)), "train_config.num_epochs: expected an "
     "integer, got [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 1... (150 characters)"),
    ("data_config.delimiter", "ab", "data_config.delimiter: expected one character, got 'ab'"),
    ("train_config.sparse_optimizer", {"sgd_optimizer": {"weight_decay": 0.01}},
     "train_config.sparse_optimizer.sgd_optimizer.weight_decay: not a setting of this "
     "optimizer (it reads lr, gradient_clipping, max_gradient)"),
    ("train_config.sparse_optimizer", {"adagrad_optimizer": {"lr": 0.1, "weight_decay": 0.1}},
     "sparse_optimizer.adagrad_optimizer.weight_decay: not a setting of this optimizer"),
    ("train_config.sparse_optimizer", {"adam_optimizer": {"momentum": 0.5}},
     "sparse_optimizer.adam_optimizer.momentum: not a setting of this optimizer (it reads lr, "
     "beta1, beta2, weight_decay, gradient_clipping, max_gradient)"),
    ("train_config.dense_optimizer", {"adam_optimizer": {"gradient_clipping": True}},
     "dense_optimizer.adam_optimizer.gradient_clipping: not a setting of this optimizer"),
    ("train_config.sparse_optimizer", {"adagrad_optimizer": {"max_gradient": 0}},
     "sparse_optimizer.adagrad_optimizer.max_gradient: must be a positive number, got 0"),
    ("train_config.dense_optimizer", {"adam_optimizer": {"initial_accumulator_value": 0.1}},
     "dense_optimizer.adam_optimizer.initial_accumulator_value: not a setting"),
    ("train_config.sparse_optimizer", {"rowwise_adagrad_optimizer": {
        "weight_decay_mode": "L1"}}, "weight_decay_mode: expected one of NONE, L2, DECOUPLE"),
])
def test_settings_out_of_range_are_refused_before_training(path, value, message):
    """Each trained silently before (a negative learning rate, a two-character delimiter
    that the reader's delimiter detection replaced, a weight decay or momentum the optimizer
    never read) or failed with a traceback."""
    from fmkit.models.deepfm import config as configs

    document = small()
    section, _, name = path.partition(".")
    if name:
        document.setdefault(section, {})[name] = value
    else:
        document[section] = value
    with pytest.raises(configs.ConfigError) as raised:
        configs.parse(document)
    assert message in str(raised.value)


def test_a_tab_written_as_backslash_t_is_a_tab():
    """``--set data_config.delimiter=\\t`` in a shell, or ``'\\t'`` in YAML, is two characters."""
    from fmkit.models.deepfm import config as configs

    document = small()
    document.setdefault("data_config", {})["delimiter"] = "\\t"
    assert configs.parse(document).data_config.delimiter == "\t"


def test_empty_training_file_and_unicode_digits(cli, tmp_path):
    import yaml

    empty = tmp_path / "empty.csv"
    empty.write_text("")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(small(train_input_path=str(empty),
                                           model_dir=str(tmp_path / "m"))))
    code, _, err = cli("train", "--config", config)
    assert code == 1 and "holds no data rows" in err and not (tmp_path / "m").exists()
    digits = tmp_path / "digits.csv"
    digits.write_text("u1,3,a,30,2.5,1\nu2,4,b,\u0663\u0660,1.0,0\n")
    names = ("user", "item", "tags", "age", "price", "label")
    data_config = {"label_fields": ["label"], "input_fields": [{"input_name": n} for n in names]}
    config.write_text(yaml.safe_dump(small(train_input_path=str(digits),
                                           model_dir=str(tmp_path / "m"),
                                           data_config=data_config)))
    code, _, err = cli("train", "--config", config)
    assert code == 1 and f"{digits}:2: column 'age': '٣٠' is not a number" in err


def test_misspelt_names_get_a_suggestion(cli, tmp_path):
    import yaml

    code, _, err = cli("train", "--train", "x", "--model-dir", tmp_path / "m",
                       "num_factor=4", "feature_dim=3", "predictor_type=regressor")
    assert code == 1 and "did you mean 'num_factors'?" in err
    document = small(train_input_path="x.csv", model_dir=str(tmp_path / "m"))
    document["train_config"] = {"num_epoch": 2}
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(document))
    code, _, err = cli("train", "--config", config)
    assert code == 1 and "train_config.num_epoch: unknown field (did you mean 'num_epochs'?)" \
        in err
    result = run_fmkit("train", "--train", "x", "--epochs", "5")
    assert result.returncode == 2 and "write epochs=5, not --epochs" in result.stderr


# -- 11. hostile model directories ---------------------------------------------------------------
def test_hostile_model_directories_fail_fast(tmp_path, model_dir):
    from fmkit.errors import ArtifactError
    from fmkit.models.base import load_model

    zero = tmp_path / "zero"
    shutil.copytree(model_dir, zero)
    (zero / "weights.npz").unlink()
    (zero / "weights.npz").symlink_to("/dev/zero")
    fifo = tmp_path / "fifo"
    shutil.copytree(model_dir, fifo)
    (fifo / "weights.npz").unlink()
    os.mkfifo(fifo / "weights.npz")
    huge = tmp_path / "huge"
    shutil.copytree(model_dir, huge)
    with open(huge / "weights.npz", "wb") as f:  # a header declaring 10^12 rows, 9 bytes of data
        arrays = dict(np.load(model_dir / "weights.npz"))
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
    raw = buffer.getvalue().replace(b"(123, 4)", b"(10000000000000, 4)".ljust(8))
    with open(huge / "weights.npz", "wb") as f:
        f.write(raw)
    for directory, message in [(zero, "not a regular file"), (fifo, "not a regular file"),
                               (huge, "weights")]:
        started = time.perf_counter()
        with pytest.raises(ArtifactError, match=message):
            load_model(directory)
        assert time.perf_counter() - started < 2
    (huge / "model.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ArtifactError, match="unreadable model metadata"):
        load_model(huge)


# -- 12. leftovers of killed writers -------------------------------------------------------------
def test_dead_writers_leftovers_are_swept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname().replace("-", "_")
    stale = tmp_path / f".model.partial-{host}-{dead.pid}-abc"
    stale.mkdir()
    (stale / "weights.npz").write_bytes(b"x" * 1000)
    alive = tmp_path / f".model.partial-{host}-{os.getpid()}-def"
    alive.mkdir()
    other_host = tmp_path / f".model.partial-elsewhere-{dead.pid}-ghi"
    other_host.mkdir()
    train_files({"feature_dim": 123, "num_factors": 2, "predictor_type": "binary_classifier"},
                shared_file("a9a_libsvm", "a9a.t"), tmp_path / "model", progress=False)
    assert not stale.exists() and alive.exists() and other_host.exists()
    assert (tmp_path / "model" / "model.json").is_file()


def _signal_a_prediction_from_a_silent_pipe(tmp_path, model_dir, sig: int, program: list
                                            ) -> tuple[int, str, float]:
    """Run ``program predict ...`` on a pipe, write 5,000 rows and keep the pipe open, silent;
    once the output is begun, send ``sig``. Returns the exit status, stderr and the seconds
    from the signal to the exit (60 at most: then it is killed)."""
    fifo, out = tmp_path / "rows", tmp_path / "out"
    os.mkfifo(fifo)
    out.mkdir()
    proc = subprocess.Popen([*program, "predict", "--model-dir", model_dir, "--data", fifo,
                             "--format", "libsvm", "--output", out / "p.jsonl"],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while True:  # the pipe's writing end, once predict opens its reading end (a plain open
        try:     # would wait forever for a predict that stopped first)
            descriptor = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError as e:
            if e.errno != errno.ENXIO or proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"predict never read the pipe: {proc.stderr.read()}") from e
            time.sleep(0.01)
    os.set_blocking(descriptor, True)
    with open(descriptor, "w") as writer:  # stays open, silent, until the end
        writer.write("".join(shared_file("a9a_libsvm", "a9a.t").read_text()
                             .splitlines(keepends=True)[:5000]))
        writer.flush()
        deadline = time.monotonic() + 60
        while not os.listdir(out) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert os.listdir(out), "predict never started writing"
        time.sleep(0.5)
        proc.send_signal(sig)
        signalled = time.monotonic()
        try:
            code = proc.wait(timeout=60)
        finally:
            proc.kill()
    return code, proc.stderr.read(), time.monotonic() - signalled


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_predicting_from_a_silent_pipe_leaves_nothing(tmp_path, model_dir, sig):
    """``producer | fmkit predict`` stopped (SIGTERM from a scheduler, Ctrl-C) while the
    producer is silent: the command ends in seconds, one line, the conventional exit code,
    and no partial output. (The reader thread blocked on the pipe held the exit forever.)"""
    from .conftest import fmkit_executable

    code, err, _ = _signal_a_prediction_from_a_silent_pipe(tmp_path, model_dir, sig,
                                                            [fmkit_executable()])
    assert code == 128 + sig, err
    assert os.listdir(tmp_path / "out") == []
    assert "Traceback" not in err and err.strip().splitlines()[-1] in (
        "fmkit: SIGTERM: stopped", "fmkit: interrupted"), err


# what holds the way out after the signal, in a `python -c` that then runs the command line
HOLDS = {
    "the interpreter's exit": "threading.Thread(target=threading.Event().wait).start(); ",
    "the clean-up": "pathlib.Path.unlink = lambda *a, **k: threading.Event().wait(); ",
}


@pytest.mark.parametrize(("sig", "held"), [(signal.SIGINT, "the interpreter's exit"),
                                           (signal.SIGTERM, "the clean-up")])
def test_a_command_whose_way_out_is_held_after_a_signal_still_ends(tmp_path, model_dir, sig,
                                                                   held):
    """Whatever holds the way out after SIGTERM or Ctrl-C (here a thread nobody ends, which
    the interpreter's exit waits for, or a removal that never returns), the command ends
    within ``END_WITHIN_SECONDS`` (4 s here; its reader thread is left after 2), every
    thread's stack on stderr, status 1: never a hang. (The test above once waited 20 s for
    a command in a full suite's run.)"""
    program = ("import pathlib, threading, fmkit.cli, fmkit.train.interruption as stop; "
               f"stop.END_WITHIN_SECONDS = 4; {HOLDS[held]}fmkit.cli.run()")
    code, err, seconds = _signal_a_prediction_from_a_silent_pipe(
        tmp_path, model_dir, sig, [sys.executable, "-c", program])
    assert code == 1 and 4 <= seconds < 12, (code, seconds, err)
    assert ("fmkit: interrupted" if sig == signal.SIGINT else "fmkit: SIGTERM: stopped") in err
    assert "Timeout (0:00:04)!" in err and "threading.py" in err, err


def test_the_command_line_in_process_leaves_the_signal_handlers_as_it_found_them(
        cli, tmp_path, model_dir):
    """``fmkit.cli.main`` called from a program (as these tests do) hands SIGTERM back."""
    before = signal.getsignal(signal.SIGTERM)
    code, _, err = cli("predict", "--model-dir", model_dir, "--data",
                       shared_file("a9a_libsvm", "a9a.t"), "--output", tmp_path / "p.jsonl")
    assert code == 0, err
    assert signal.getsignal(signal.SIGTERM) is before


def test_the_command_line_in_process_leaves_a_programs_own_watchdog_armed(tmp_path, model_dir):
    """``fmkit.cli.main`` cancels only the watchdog a signal made it arm: a program's own
    ``faulthandler.dump_traceback_later`` still fires after a command it ran."""
    program = ("import faulthandler, sys, time; from fmkit.cli import main; "
               "faulthandler.dump_traceback_later(2); "
               f"code = main(['evaluate', '--model-dir', {str(model_dir)!r}, '--data', "
               f"{str(shared_file('a9a_libsvm', 'a9a.t'))!r}]); time.sleep(2.5); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Timeout (0:00:02)!" in done.stderr, done.stderr[-2000:]


# -- 13. index bases -----------------------------------------------------------------------------
def test_convert_to_libsvm_keeps_the_index_base(cli, tmp_path, model_dir):
    a9a_t = shared_file("a9a_libsvm", "a9a.t")
    code, _, err = cli("convert", "--to", "libsvm", a9a_t, tmp_path / "copy")
    assert code == 0, err
    X, y = load_svmlight_file(str(tmp_path / "copy"), n_features=123, zero_based=False)
    Xr, yr = load_svmlight_file(str(a9a_t), n_features=123, zero_based=False)
    assert (X != Xr).nnz == 0 and list(y) == list(yr)
    _, original, _ = cli("evaluate", "--model-dir", model_dir, "--data", a9a_t)
    _, converted, _ = cli("evaluate", "--model-dir", model_dir, "--data", tmp_path / "copy")
    assert json.loads(original) == json.loads(converted)
    code, _, err = cli("convert", "--to", "recordio", a9a_t, tmp_path / "c.rec",
                       "--feature-dim", "0")  # (read as feature_dim=1 before)
    assert code == 1 and err == "fmkit: error: --feature-dim must be >= 1, got 0\n"


def test_index_zero_in_a_file_for_a_one_based_model_says_how_to_train_it(cli, tmp_path,
                                                                          model_dir):
    """a9a has no index 0, so its model is 1-based; a file that uses 0 is refused in one line
    that names the row and the way out."""
    data = tmp_path / "zero.libsvm"
    data.write_text("1 1:1 5:1\n0 0:1 3:1\n")
    code, _, err = cli("predict", "--model-dir", model_dir, "--data", data)
    assert code == 1 and err.count("\n") == 1, err
    assert f"{data}:2: feature index 0 is below the index base 1" in err
    assert "train with --index-base 0" in err


def test_request_keys_are_zero_based_whatever_the_training_base(model_dir):
    """a9a is 1-based; its row "1:1 5:1" is columns 0 and 4 in a request."""
    model = FMModel.load(model_dir)
    assert model.index_base == 1
    batch = model.request_decoder()(sparse([0, 4], [1, 1]).encode(), codecs.JSON)
    X = sp.csr_matrix(([1.0, 1.0], ([0, 0], [0, 4])), shape=(1, 123))
    np.testing.assert_allclose(model.predictions(batch)["score"], brute_scores(model_dir, X),
                               rtol=1e-6)


# -- 14. first-time frictions ---------------------------------------------------------------------
def test_port_in_use_is_one_line(model_dir):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_fmkit("serve", "--model-dir", model_dir, "--host", "127.0.0.1", "--port",
                           port, timeout=60)
    assert result.returncode == 1
    assert f"cannot serve on 127.0.0.1:{port}: Address already in use" in result.stderr


def test_a_port_taken_while_the_server_starts_ends_in_fmkits_error(model_dir, monkeypatch):
    """Two servers started at once on one port both find it free (the check runs before the
    model loads); the one that binds second ends with fmkit's line, not uvicorn's exit 3."""
    from fmkit.errors import FMKitError
    from fmkit.serve import app

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        monkeypatch.setattr(app, "check_port", lambda host, port: busy.listen())  # taken now
        with pytest.raises(FMKitError, match=f"cannot serve on 127.0.0.1:{port}: the server "
                                             "did not start"):
            app.serve(str(model_dir), host="127.0.0.1", port=port)


@pytest.mark.parametrize("args, environment, message", [
    (["--workers", "0"], {}, "--workers must be >= 1, got 0"),
    (["--port", "70000"], {}, "--port must be in 1..65535, got 70000"),
    (["--max-payload-mb", "0"], {}, "--max-payload-mb must be > 0, got 0.0"),
    (["--body-timeout", "-1"], {}, "--body-timeout must be > 0 seconds, got -1.0"),
    ([], {"SAGEMAKER_BIND_TO_PORT": "http"}, "SAGEMAKER_BIND_TO_PORT='http' is not an integer"),
])
def test_server_settings_out_of_range_are_one_line(model_dir, args, environment, message):
    """(--port 70000 served on another port; the others started a server that could not
    answer as asked, or a traceback)"""
    result = run_fmkit("serve", "--model-dir", model_dir, *args, timeout=60,
                       env={**os.environ, **environment})
    assert result.returncode == 1 and result.stderr == f"fmkit: error: {message}\n"


def test_a_one_class_validation_channel_cannot_watch_auc(cli, tmp_path):
    validation = tmp_path / "negatives.libsvm"
    validation.write_text("".join(line for line in shared_file("a9a_libsvm", "a9a.t")
                                  .read_text().splitlines(keepends=True)[:500]
                                  if line.startswith("-1")))
    code, _, err = cli("train", "--train", shared_file("a9a_libsvm", "a9a.t"), "--validation",
                       validation, "--model-dir", tmp_path / "m", "feature_dim=123",
                       "num_factors=4", "predictor_type=binary_classifier", "epochs=3")
    assert code == 1 and err.endswith(f"fmkit: error: {validation}: auc is undefined on these "
                                      "validation rows (one class only): early stopping cannot "
                                      "watch it; give rows of both classes, or watch another "
                                      "metric (early_stopping_metric)\n"), err
    assert not (tmp_path / "m").exists()


def test_quiet_is_quiet(tmp_path):
    result = run_fmkit("train", "--train", shared_file("a9a_libsvm", "a9a.t"), "--test",
                       shared_file("a9a_libsvm", "a9a.t"), "--model-dir", tmp_path / "m", *HP,
                       "--quiet")
    assert result.returncode == 0 and result.stderr == "" and result.stdout == ""
    result = run_fmkit("predict", "--model-dir", tmp_path / "m", "--data",
                       shared_file("a9a_libsvm", "a9a.t"), "--output", tmp_path / "p", "--quiet")
    assert result.returncode == 0 and result.stderr == ""


def test_data_error_excerpt_is_short(tmp_path):
    from fmkit.data.sources import FileSource

    path = tmp_path / "long.libsvm"
    path.write_text("1 1:" + "x" * 100_000 + "\n")
    with pytest.raises(DataError) as raised:
        list(FileSource(path, "libsvm", 10, index_base=1).blocks())
    assert str(raised.value).startswith(f"{path}:1: non-numeric value in '1:xxx")
    assert len(str(raised.value)) < 200
    # bytes that are not UTF-8 (a UTF-16 file's byte-order mark) are quoted as such
    for name, data, message in (("bom.libsvm", b"\xff\xfe1 1:1\n", "non-numeric value in "
                                 "'\\xff\\xfe1'"),
                                ("bom.csv", b"1,\xff\xfe,0\n", "column 2: non-numeric value "
                                 "'\\xff\\xfe'")):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError, match=re.escape(f"{tmp_path / name}:1: {message}")):
            list(FileSource(tmp_path / name, name.split(".")[1], 10).blocks())


def test_sparse_sdk_records_still_round_trip(tmp_path, model_dir):
    X, _ = load_svmlight_file(str(shared_file("a9a_libsvm", "a9a.t")), n_features=123)
    buffer = io.BytesIO()
    write_spmatrix_to_sparse_tensor(buffer, X[:50])
    path = tmp_path / "s.rec"
    path.write_bytes(buffer.getvalue())
    predict_files(model_dir, path, tmp_path / "out.jsonl")
    scores = [json.loads(line)["score"] for line in (tmp_path / "out.jsonl").read_text()
              .splitlines()]
    np.testing.assert_allclose(scores, brute_scores(model_dir, X[:50]), rtol=1e-5, atol=1e-6)


def test_readme_tour_runs_as_written_and_prints_what_it_shows(tmp_path):
    """The tour's commands (a9a fetched: copied from ../shared/data instead of curl) exit 0
    and print the metric lines and the served score the README shows."""
    import re

    from .conftest import REPO, fmkit_executable

    readme = (REPO / "README.md").read_text()
    tour = readme.split("### Train, evaluate and predict on a libsvm file", 1)[1]
    commands = tour.split("```sh\n", 1)[1].split("```", 1)[0].replace("\\\n", " ")
    shown = tour.split("```\n#quality_metric", 1)[1].split("```", 1)[0]
    for name in ("a9a", "a9a.t"):
        shutil.copy(shared_file("a9a_libsvm", name), tmp_path / name)
    printed = ""
    for line in commands.splitlines():
        command = line.split("#", 1)[0].strip()
        if not command or command.startswith("curl"):
            continue
        result = subprocess.run(command.replace("fmkit", fmkit_executable(), 1), shell=True,
                                cwd=tmp_path, capture_output=True, text=True)
        assert result.returncode == 0, (command, result.stderr)
        printed += result.stderr
    expected_values = re.findall(r"<\w+>=([0-9.]+)", shown)
    assert len(expected_values) == 4
    for expected in expected_values:
        found = re.findall(r"#quality_metric: .*<\w+>=([0-9.]+)", printed)
        assert any(abs(float(f) - float(expected)) < 2e-3 for f in found), (expected, found)
    serve = readme.split("### Serve it", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    request = re.search(r"-d '(.*)'", serve).group(1)
    score = float(re.search(r'"score": ([0-9.]+)', serve).group(1))
    model = FMModel.load(tmp_path / "model")
    batch = model.request_decoder()(request.encode(), codecs.JSON)
    assert abs(model.predictions(batch)["score"][0] - score) < 2e-3


def test_evaluating_no_rows_is_an_error(cli, tmp_path, model_dir):
    empty = tmp_path / "empty.libsvm"
    empty.write_text("# only a comment\n")
    code, out, err = cli("evaluate", "--model-dir", model_dir, "--data", empty)
    assert code == 1 and out == ""
    assert err.strip() == f"fmkit: error: {empty}: holds no data rows: nothing to evaluate"
    code, _, err = cli("train", "--train", shared_file("a9a_libsvm", "a9a.t"), "--test", empty,
                       "--model-dir", tmp_path / "m", *HP, "--quiet")
    assert code == 1 and "holds no data rows" in err and not (tmp_path / "m").exists()


@pytest.mark.parametrize("mode", ["NONE", "L2", "DECOUPLE"])
def test_row_wise_adagrads_weight_decay_without_a_mode_is_said_to_do_nothing(mode, caplog):
    """TorchEasyRec's weight_decay_mode defaults to NONE, which leaves weight_decay without
    effect (fbgemm's rule; fmkit trains the same): said, not silent."""
    from fmkit.models.deepfm import config as configs

    document = small()
    document.setdefault("train_config", {})["sparse_optimizer"] = {
        "rowwise_adagrad_optimizer": {"lr": 0.05, "weight_decay": 1e-4, "weight_decay_mode": mode}}
    with caplog.at_level("WARNING", logger="fmkit"):
        parsed = configs.parse(document)
    assert parsed.train_config.sparse_optimizer.rowwise_adagrad_optimizer.weight_decay_mode == mode
    said = "weight_decay: without effect under weight_decay_mode NONE" in caplog.text
    assert said == (mode == "NONE")


def test_embedding_settings_of_a_dense_numeric_feature_are_said_to_do_nothing(caplog):
    """``price`` has no boundaries: one dense value, in TorchEasyRec as here, so its
    embedding_dim and init_fn do nothing; said when training, not when a model loads."""
    from fmkit.models.deepfm import config as configs

    document = small()
    document["feature_configs"][4]["raw_feature"].update(embedding_dim=8, init_fn="nn.init.zeros_")
    with caplog.at_level("WARNING", logger="fmkit"):
        configs.parse(document, saved=True)
        assert caplog.text == ""
        configs.parse(document)
    assert caplog.text.count("feature_configs[4] (price): embedding_dim, init_fn without "
                             "effect: without boundaries the feature is one dense value") == 1
    caplog.clear()
    with caplog.at_level("WARNING", logger="fmkit"):
        configs.parse(small())
    assert caplog.text == ""


def test_torcheasyrec_settings_fmkit_does_not_apply_are_reported_as_ignored(caplog):
    """Each was accepted and silently unread: a shuffle buffer (fmkit shuffles within each
    block read), step-count logging (fmkit logs every 30 s), approximate AUC buckets (fmkit's
    AUC is exact) and an accuracy threshold or top k (fmkit's is at 0.5, or the top class)."""
    from fmkit.models.deepfm import config as configs

    document = small()
    document["data_config"]["shuffle_buffer_size"] = 64
    document["train_config"] = {"log_step_count_steps": 10}
    document["model_config"]["metrics"] = [{"accuracy": {"threshold": 0.3, "top_k": 2}},
                                           {"auc": {"thresholds": 1000}}]
    with caplog.at_level("WARNING", logger="fmkit"):
        configs.parse(document, report_ignored=True)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ignored")]
    assert len(said) == 1
    assert sorted(said[0].split(": ", 1)[1].split(", ")) == [
        "data_config.shuffle_buffer_size", "model_config.metrics[0].accuracy.threshold",
        "model_config.metrics[0].accuracy.top_k", "model_config.metrics[1].auc.thresholds",
        "train_config.log_step_count_steps"]


def test_column_names_with_control_characters_stay_on_the_errors_one_line(tmp_path):
    """A header's names are the file's text: a vertical tab or a file separator in one was
    quoted raw into the error ('... (l\\x0bbel, I1, ...)'), which terminals and
    ``str.splitlines`` break in two (found by fuzzing: FMKIT_FUZZ_EXAMPLES=3000)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fmkit.models.base import load_model

    from .deepfm_helpers import train_small_deepfm

    model = load_model(train_small_deepfm(tmp_path))
    too_many = tmp_path / "wide.csv"
    too_many.write_bytes(b"us\x0ber,item,tags,age,price,label\n1,2,a,3,4.0,1,9\n")
    parquet = tmp_path / "names.parquet"
    pq.write_table(pa.table({"us\x1cer": ["u1"], "item": [2], "tags": ["a"], "age": [30],
                             "price": [1.0]}), parquet)
    for path, shown in ((too_many, "us\\x0ber, item, tags, ..."), (parquet, "us\\x1cer, item")):
        with pytest.raises(DataError) as raised:
            for batch in model.read(path):
                model.predictions(batch)
        assert len(str(raised.value).splitlines()) == 1 and shown in str(raised.value)
