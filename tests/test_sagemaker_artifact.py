"""SageMaker Factorization Machines' model.tar.gz in and out, checked against MXNet itself:
MXNet writes artifacts that fmkit imports with MXNet's predictions, and MXNet loads and runs
what ``fmkit export sagemaker`` writes. MXNet 1.9.1 (retired, needing numpy < 1.24) lives in
a virtual environment of its own, made once per test session; a hand-written artifact checks
the tar/zip layout without it."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import dump_svmlight_file, load_svmlight_file

from fmkit.errors import ArtifactError
from fmkit.models.fm.mxnet_format import read_ndarrays

from .conftest import shared_file
from .mxnet_environment import MXNET

# MXNet builds SageMaker's FM graph (a logistic or linear regression output on top, as its
# training jobs do) with random weights, saves it as SageMaker's module files and runs it
WRITE_WITH_MXNET = r"""
import json, sys
import mxnet as mx, numpy as np
out, predictor, d, k = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
data = mx.sym.Variable("data")
w0 = mx.sym.Variable("w0_weight", shape=(1,))
w1, v = mx.sym.Variable("w1_weight", shape=(d, 1)), mx.sym.Variable("v", shape=(d, k))
linear = mx.sym.broadcast_add(mx.sym.dot(data, w1), w0)
pairs = 0.5 * mx.sym.sum(mx.sym.square(mx.sym.dot(data, v))
                         - mx.sym.dot(mx.sym.square(data), mx.sym.square(v)),
                         axis=1, keepdims=True)
output = (mx.sym.LogisticRegressionOutput if predictor == "binary_classifier"
          else mx.sym.LinearRegressionOutput)
symbol = output(linear + pairs, label=mx.sym.Variable("out_label"), name="out")
rng = np.random.default_rng(7)
params = {"w0_weight": mx.nd.array([0.3]),
          "w1_weight": mx.nd.array(rng.normal(scale=0.3, size=(d, 1))),
          "v": mx.nd.array(rng.normal(scale=0.2, size=(d, k)))}
symbol.save(out + "/symbol.json")
mx.nd.save(out + "/params", {"arg:" + name: value for name, value in params.items()})
X = np.load(out + "/X.npy")
module = mx.mod.Module(symbol, data_names=["data"], label_names=["out_label"])
module.bind(data_shapes=[("data", X.shape)], label_shapes=[("out_label", (len(X), 1))],
            for_training=False)
module.set_params(params, {})
module.forward(mx.io.DataBatch([mx.nd.array(X)], [mx.nd.zeros((len(X), 1))]), is_train=False)
np.save(out + "/mxnet_scores.npy", module.get_outputs()[0].asnumpy().ravel())
"""

# MXNet loads fmkit's params and symbol.json and scores dense rows with them
RUN_WITH_MXNET = r"""
import sys
import mxnet as mx, numpy as np
folder = sys.argv[1]
arrays = mx.nd.load(folder + "/params")
np.savez(folder + "/mxnet_arrays.npz", **{n: a.asnumpy() for n, a in arrays.items()})
X = np.load(folder + "/X.npy")
module = mx.mod.Module(mx.sym.load(folder + "/symbol.json"), data_names=["data"],
                       label_names=None)
module.bind(data_shapes=[("data", X.shape)], for_training=False)
module.set_params({n.split(":", 1)[1]: a for n, a in arrays.items()}, {})
module.forward(mx.io.DataBatch([mx.nd.array(X)]), is_train=False)
np.save(folder + "/mxnet_scores.npy", module.get_outputs()[0].asnumpy().ravel())
"""


@pytest.fixture(scope="session")
def mxnet_python(mxnet_environment) -> str:
    """The Python of the MXNet environment (started in the background by conftest)."""
    if not mxnet_environment.is_alive() and mxnet_environment.failure == "not started":
        mxnet_environment.start()  # (a session whose collection did not include these tests)
    mxnet_environment.join()
    if mxnet_environment.failure:
        pytest.skip(f"NOT CHECKED AGAINST MXNET: its environment could not be made "
                    f"({' '.join(MXNET)}): {mxnet_environment.failure}")
    return str(mxnet_environment.python)


def _mxnet(python: str, script: str, *args) -> None:
    done = subprocess.run([python, "-c", script, *map(str, args)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def _artifact(path: Path, files: dict[str, bytes]) -> Path:
    """``model.tar.gz`` holding ``model_algo-1``, a zip of ``files``, as SageMaker packs it."""
    module = io.BytesIO()
    with zipfile.ZipFile(module, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    with tarfile.open(path, "w:gz") as archive:
        info = tarfile.TarInfo("model_algo-1")
        info.size = len(module.getvalue())
        archive.addfile(info, io.BytesIO(module.getvalue()))
    return path


def _unpack(artifact: Path, where: Path) -> None:
    """``model.tar.gz`` unpacked as SageMaker's hosting unpacks it into ``/opt/ml/model``."""
    with tarfile.open(artifact) as archive:
        archive.extractall(where, filter="data")


def _a9a_rows(tmp_path: Path, n: int = 300) -> tuple[Path, np.ndarray]:
    """The first ``n`` a9a rows as a 0-based libsvm file, and as dense float32 rows."""
    X, y = load_svmlight_file(str(shared_file("a9a_libsvm", "a9a")), n_features=123,
                              zero_based=False)
    X, y = X[:n], (y[:n] > 0).astype(int)
    path = tmp_path / "rows.svm"
    dump_svmlight_file(X, y, str(path), zero_based=True)
    return path, X.toarray().astype(np.float32)


def _scores(cli, model_dir: Path, rows: Path) -> np.ndarray:
    code, out, err = cli("predict", "--model-dir", model_dir, "--data", rows, "--quiet")
    assert code == 0, err
    return np.array([json.loads(line)["score"] for line in out.splitlines()])


@pytest.mark.parametrize("predictor_type", ["binary_classifier", "regressor"])
def test_an_artifact_mxnet_wrote_predicts_as_mxnet_does(mxnet_python, predictor_type, tmp_path,
                                                        cli):
    """meta.json says feature_dim and num_factors only: predictor_type comes from the graph's
    output operator (LogisticRegressionOutput or LinearRegressionOutput)."""
    rows, X = _a9a_rows(tmp_path)
    np.save(tmp_path / "X.npy", X)
    _mxnet(mxnet_python, WRITE_WITH_MXNET, tmp_path, predictor_type, 123, 6)
    meta = {"training_parameters": {"feature_dim": "123", "num_factors": "6",
                                    "mini_batch_size": "1000", "_kvstore": "dist_async"}}
    artifact = _artifact(tmp_path / "model.tar.gz", {
        "symbol.json": (tmp_path / "symbol.json").read_bytes(),
        "params": (tmp_path / "params").read_bytes(), "meta.json": json.dumps(meta).encode()})
    code, _, err = cli("import", "sagemaker", artifact, "--model-dir", tmp_path / "model")
    assert code == 0, err
    assert f"predictor_type={predictor_type}" in err
    np.testing.assert_allclose(_scores(cli, tmp_path / "model", rows),
                               np.load(tmp_path / "mxnet_scores.npy"), rtol=1e-5, atol=1e-5)
    # unpacked where SageMaker's hosting unpacks it (/opt/ml/model), the artifact itself is
    # the model directory of predict, evaluate and serve (fmkit sagemaker serve)
    hosted = tmp_path / "opt_ml_model"
    _unpack(artifact, hosted)
    assert (hosted / "model_algo-1").is_file()
    np.testing.assert_allclose(_scores(cli, hosted, rows),
                               np.load(tmp_path / "mxnet_scores.npy"), rtol=1e-5, atol=1e-5)
    other = "regressor" if predictor_type == "binary_classifier" else "binary_classifier"
    code, _, err = cli("import", "sagemaker", artifact, "--model-dir", tmp_path / "other",
                       f"predictor_type={other}")  # (was taken: scores read the other way)
    assert code == 1 and f"predictor_type={other} given, but the output operator of " \
        f"symbol.json makes it a {predictor_type}" in err


def test_an_fmkit_export_loads_and_runs_in_mxnet(mxnet_python, tmp_path, cli):
    rows, X = _a9a_rows(tmp_path)
    code, _, err = cli("train", "--train", rows, "--model-dir", tmp_path / "model", "--quiet",
                       "feature_dim=123", "num_factors=5", "predictor_type=binary_classifier",
                       "epochs=2")
    assert code == 0, err
    code, _, err = cli("export", "sagemaker", "--model-dir", tmp_path / "model",
                       tmp_path / "model.tar.gz", "--quiet")
    assert code == 0, err
    with tarfile.open(tmp_path / "model.tar.gz") as archive:
        assert archive.getnames() == ["model_algo-1"]
        module = zipfile.ZipFile(io.BytesIO(archive.extractfile("model_algo-1").read()))
    for name in ("symbol.json", "params"):
        (tmp_path / name).write_bytes(module.read(name))
    meta = json.loads(module.read("meta.json"))["training_parameters"]
    assert (meta["feature_dim"], meta["num_factors"]) == ("123", "5")
    np.save(tmp_path / "X.npy", X)
    _mxnet(mxnet_python, RUN_WITH_MXNET, tmp_path)
    with np.load(tmp_path / "model" / "weights.npz") as ours, \
            np.load(tmp_path / "mxnet_arrays.npz") as theirs:
        assert sorted(theirs.files) == ["arg:v", "arg:w0_weight", "arg:w1_weight"]
        np.testing.assert_array_equal(theirs["arg:w0_weight"], ours["w0"].reshape(1))
        np.testing.assert_array_equal(theirs["arg:w1_weight"], ours["w"].reshape(-1, 1))
        np.testing.assert_array_equal(theirs["arg:v"], ours["V"])
    np.testing.assert_allclose(np.load(tmp_path / "mxnet_scores.npy"),
                               _scores(cli, tmp_path / "model", rows), rtol=1e-5, atol=1e-6)


def _params_by_hand(arrays: dict[str, np.ndarray]) -> bytes:
    """An NDArray list file written here from MXNet's layout (not with fmkit's writer)."""
    out = struct.pack("<QQQ", 0x112, 0, len(arrays))
    for array in arrays.values():
        out += struct.pack("<Iii", 0xF993FAC9, 0, array.ndim)
        out += b"".join(struct.pack("<q", n) for n in array.shape)
        out += struct.pack("<iii", 1, 0, 0) + array.astype("<f4").tobytes()
    out += struct.pack("<Q", len(arrays))
    for name in arrays:
        out += struct.pack("<Q", len(name)) + name.encode()
    return out


def _hand_written(rng) -> dict[str, np.ndarray]:
    return {"arg:w0_weight": np.array([-0.2], np.float32),
            "arg:w1_weight": rng.normal(size=(6, 1)).astype(np.float32),
            "arg:v": rng.normal(scale=0.5, size=(6, 3)).astype(np.float32)}


def test_a_hand_written_artifact_predicts_the_fm_formula(tmp_path, cli):
    rng = np.random.default_rng(0)
    arrays = _hand_written(rng)
    artifact = _artifact(tmp_path / "model.tar.gz", {"params": _params_by_hand(arrays)})
    odd_graph = _artifact(tmp_path / "odd.tar.gz", {  # a graph that says nothing usable
        "params": _params_by_hand(arrays),
        "symbol.json": b'{"nodes": [5, {"op": "Activation", "attrs": [1]}, {"op": null}]}'})
    for source in (artifact, odd_graph):
        code, _, err = cli("import", "sagemaker", source, "--model-dir", tmp_path / "m")
        assert code == 1 and err.count("\n") == 1
        assert "give predictor_type=binary_classifier|regressor" in err
    hosted = tmp_path / "hosted"  # unpacked as SageMaker's hosting does: nothing to give it
    _unpack(artifact, hosted)
    (tmp_path / "one.svm").write_text("0 0:1\n")
    code, _, err = cli("evaluate", "--model-dir", hosted, "--data", tmp_path / "one.svm")
    assert code == 1 and err.count("\n") == 1 and "or convert it once with fmkit import " \
        "sagemaker (which takes them) and serve that directory" in err, err
    (tmp_path / "hyperparameters.json").write_text(json.dumps(
        {"predictor_type": "regressor", "feature_dim": "6", "num_factors": "3"}))
    code, _, err = cli("import", "sagemaker", artifact, "--model-dir", tmp_path / "m",
                       "--hyperparameters", tmp_path / "hyperparameters.json")
    assert code == 0, err
    rows = [[(0, 1.0), (2, 0.5), (5, -2.0)], [(1, 3.0)], [], [(3, 1.0), (4, 1.0)]]
    (tmp_path / "rows.svm").write_text("".join(
        "0 " + " ".join(f"{j}:{x}" for j, x in row) + "\n" for row in rows))
    w0, w, V = (arrays[n].astype(np.float64) for n in ("arg:w0_weight", "arg:w1_weight",
                                                       "arg:v"))
    expected = []
    for row in rows:  # the FM by its definition, pair by pair
        total = w0[0] + sum(w[j, 0] * x for j, x in row)
        for a, (i, xi) in enumerate(row):
            for j, xj in row[a + 1:]:
                total += float(V[i] @ V[j]) * xi * xj
        expected.append(total)
    np.testing.assert_allclose(_scores(cli, tmp_path / "m", tmp_path / "rows.svm"), expected,
                               rtol=1e-6)
    code, _, err = cli("import", "sagemaker", artifact, "--model-dir", tmp_path / "m2",
                       "predictor_type=regressor", "num_factors=4")
    assert code == 1 and "num_factors=4 given, but the weights have num_factors 3" in err


def test_an_unpacked_artifact_exports_and_indexes_items_as_a_model_directory(tmp_path, cli):
    """SageMaker's artifact unpacked as its hosting unpacks it is a model directory for
    fmkit export (the npz holds the arrays written by hand into its params) and fmkit
    recommend index too, as for predict and serve."""
    rng = np.random.default_rng(1)
    arrays = _hand_written(rng)
    meta = {"training_parameters": {"predictor_type": "regressor"}}
    packed = _artifact(tmp_path / "model.tar.gz", {"params": _params_by_hand(arrays),
                                                   "meta.json": json.dumps(meta).encode()})
    hosted = tmp_path / "opt_ml_model"
    _unpack(packed, hosted)
    code, _, err = cli("export", "npz", "--model-dir", hosted, tmp_path / "w.npz", "--quiet")
    assert code == 0, err
    with np.load(tmp_path / "w.npz") as exported:
        np.testing.assert_array_equal(exported["w0"].reshape(1), arrays["arg:w0_weight"])
        np.testing.assert_array_equal(exported["w"].reshape(-1, 1), arrays["arg:w1_weight"])
        np.testing.assert_array_equal(exported["V"], arrays["arg:v"])
    (tmp_path / "items.jsonl").write_text('{"id": 7, "keys": [4]}\n{"id": 8, "keys": [5]}\n')
    code, _, err = cli("recommend", "index", "--model-dir", hosted, "--items",
                       tmp_path / "items.jsonl", "--quiet")
    assert code == 0, err


def test_damaged_artifacts_are_one_line_each(tmp_path, cli):
    arrays = _hand_written(np.random.default_rng(1))
    good = _params_by_hand(arrays)
    no_v = _params_by_hand({n: a for n, a in arrays.items() if n != "arg:v"})
    cases = {
        "truncated": _artifact(tmp_path / "a.tar.gz", {"params": good[:-30]}),
        "no v": _artifact(tmp_path / "b.tar.gz", {"params": no_v}),
        "not mxnet": _artifact(tmp_path / "c.tar.gz", {"params": b"PK" + good}),
        "no params": _artifact(tmp_path / "d.tar.gz", {"meta.json": b"{}"}),
    }
    (tmp_path / "e.tar.gz").write_bytes(b"\x1f\x8b\x08garbage")
    cases["not a tar"] = tmp_path / "e.tar.gz"
    (tmp_path / "g.tar.gz").write_text("x\n")  # (tarfile's message here has five lines)
    cases["text"] = tmp_path / "g.tar.gz"
    with tarfile.open(tmp_path / "f.tar.gz", "w:gz") as archive:
        archive.addfile(tarfile.TarInfo("other"), io.BytesIO(b""))
    cases["no model_algo-1"] = tmp_path / "f.tar.gz"
    with tarfile.open(tmp_path / "h.tar.gz", "w:gz") as archive:  # fmkit sagemaker train's
        folder = tarfile.TarInfo("model_algo-1")
        folder.type = tarfile.DIRTYPE
        archive.addfile(folder)
        meta = tarfile.TarInfo("model_algo-1/model.json")
        meta.size = 2
        archive.addfile(meta, io.BytesIO(b"{}"))
    cases["fmkit's own"] = tmp_path / "h.tar.gz"
    expected = {"truncated": "more bytes,", "no v": "has no v", "not mxnet":
                "not MXNet's list magic", "no params": "has no params file",
                "not a tar": "not a SageMaker model.tar.gz",
                "text": "not a SageMaker model.tar.gz", "no model_algo-1":
                "holds no model_algo-1", "fmkit's own": "its model_algo-1 is an fmkit model "
                "directory (fmkit sagemaker train wrote it), not SageMaker's FM: nothing to "
                "import; unpack it"}
    for name, artifact in cases.items():
        code, out, err = cli("import", "sagemaker", artifact, "--model-dir", tmp_path / name,
                             "predictor_type=regressor")
        assert code == 1 and err.count("\n") == 1 and expected[name] in err, (name, err)
        assert str(artifact) in err and not (tmp_path / name).exists()


@settings(max_examples=300, deadline=None)
@given(position=st.integers(0, 10_000), value=st.integers(0, 255), cut=st.integers(0, 400))
def test_any_corruption_of_a_params_file_is_an_artifact_error(position, value, cut):
    """A byte changed and the end cut anywhere: arrays of the declared shapes or
    ArtifactError, never another exception or a read past the end."""
    good = bytearray(_params_by_hand(_hand_written(np.random.default_rng(2))))
    good[position % len(good)] = value
    data = bytes(good[:len(good) - cut % len(good)])
    try:
        arrays = read_ndarrays(data, "params")
    except ArtifactError:
        return
    for array in arrays.values():
        assert array.nbytes <= len(data)
