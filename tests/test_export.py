"""Models for other runtimes: an FM's ONNX graph scored by onnxruntime equals ``fmkit
predict`` on a9a, an FFM's equals its brute-force double loop; the npz/Parquet weights equal
the model's, read back by numpy and pyarrow; a DeepFM's npz holds each table under its name,
and its ONNX graph scores the Criteo example as ``fmkit predict`` does, fed from the encoding
JSON written beside it."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from .conftest import REPO, shared_file
from .deepfm_helpers import SMALL_CRITEO


@pytest.fixture(scope="module")
def a9a_model(tmp_path_factory):
    from fmkit.jobs.fm import train_files

    root = tmp_path_factory.mktemp("export")
    train_files({"feature_dim": 124, "num_factors": 8, "predictor_type": "binary_classifier",
                 "epochs": 1}, str(shared_file("a9a_libsvm", "a9a")), str(root / "model"),
                progress=False)
    return root


def _libsvm_rows(path, limit):
    """(indices, values, rows) of the first ``limit`` rows, parsed in plain Python."""
    indices, values, rows = [], [], []
    with open(path) as f:
        for row, line in zip(range(limit), f):
            for token in line.split()[1:]:
                key, value = token.split(":")
                indices.append(int(key))
                values.append(float(value))
                rows.append(row)
    return (np.array(indices, np.int64), np.array(values, np.float32),
            np.array(rows, np.int64))


def test_onnxruntime_scores_what_fmkit_predict_scores_on_a9a(a9a_model, cli):
    import onnxruntime

    root, test = a9a_model, shared_file("a9a_libsvm", "a9a.t")
    code, _, err = cli("export", "onnx", "--model-dir", root / "model", root / "fm.onnx",
                       "--quiet")
    assert code == 0, err
    code, _, err = cli("predict", "--model-dir", root / "model", "--data", test, "--output",
                       root / "predictions.jsonl", "--quiet")
    assert code == 0, err
    with open(root / "predictions.jsonl") as f:
        expected = np.array([json.loads(line)["score"] for line in f])
    from fmkit.models.fm.model import FMModel

    indices, values, rows = _libsvm_rows(test, expected.size)
    indices -= FMModel.load(root / "model").index_base  # a9a's indices start at 1
    session = onnxruntime.InferenceSession(str(root / "fm.onnx"))
    y, score = session.run(None, {"indices": indices, "values": values, "rows": rows,
                                  "batch_size": np.array([expected.size], np.int64)})
    assert score.shape == expected.shape == (16281,)
    np.testing.assert_allclose(score, expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(1 / (1 + np.exp(-y)), score, rtol=1e-5)
    code, _, err = cli("export", "onnx", "--model-dir", root / "model", root / "fm.onnx")
    assert code == 1 and "exists" in err  # an existing file is not replaced


def test_onnxruntime_scores_an_ffm_as_its_brute_force_double_loop(tmp_path, cli):
    """A field-aware FM's ONNX graph (inputs indices, values, rows, fields, batch_size), fed
    from a libffm file parsed in plain Python, against the FFM written as a double loop over
    each row's pairs in float64 — and against ``fmkit predict``. The FFM's defaults scale
    rows to unit length (instance_norm=1): the graph does too."""
    import onnxruntime

    from fmkit.models.fm.planted import planted_ctr

    data = planted_ctr(2000, [20, 15, 10, 5], num_factors=3, field_aware=True, seed=2)
    train = tmp_path / "train.ffm"
    train.write_text("\n".join(data.libffm_lines()) + "\n")
    code, _, err = cli("train", "--train", train, "--model-dir", tmp_path / "model",
                       "--index-base", "0", "--quiet", "feature_dim=50", "num_factors=3",
                       "model_type=ffm", "predictor_type=binary_classifier", "epochs=2",
                       "mini_batch_size=100", "bias_lr=0.02", "linear_lr=0.02",
                       "factors_lr=0.02")
    assert code == 0, err
    assert cli("export", "onnx", "--model-dir", tmp_path / "model", tmp_path / "ffm.onnx",
               "--quiet")[0] == 0
    from fmkit.models.fm.model import FMModel

    assert FMModel.load(tmp_path / "model").hyperparameters["instance_norm"] == 1
    with np.load(tmp_path / "model" / "weights.npz") as weights:
        w0, w, V = (weights[name].astype(np.float64) for name in ("w0", "w", "V"))
    V = V.reshape(50, 4, 3)  # (feature, field, factor)
    feeds, expected = {"indices": [], "values": [], "rows": [], "fields": []}, []
    for row, line in enumerate(train.read_text().splitlines()[:500]):
        nonzeros = [tuple(token.split(":")) for token in line.split()[1:]]
        length = np.sqrt(sum(float(x) ** 2 for _, _, x in nonzeros))
        nonzeros = [(int(f), int(i), float(x) / length) for f, i, x in nonzeros]
        y = w0[0] + sum(w[i] * x for _, i, x in nonzeros)
        for a, (fa, ia, xa) in enumerate(nonzeros):
            for fb, ib, xb in nonzeros[a + 1:]:
                y += V[ia, fb] @ V[ib, fa] * xa * xb
        expected.append(y)
        for f, i, x in nonzeros:
            feeds["indices"].append(i)
            feeds["fields"].append(f)
            feeds["values"].append(x * length * 3)  # as written, times 3: the graph scales
            feeds["rows"].append(row)
    session = onnxruntime.InferenceSession(str(tmp_path / "ffm.onnx"))
    inputs = {name: np.array(values, np.float32 if name == "values" else np.int64)
              for name, values in feeds.items()}
    y, score = session.run(None, {**inputs, "batch_size": np.array([500], np.int64)})
    assert np.abs(expected).max() > 1  # the factors matter: not a bias-only model
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    head = tmp_path / "head.ffm"
    head.write_text("".join(train.read_text().splitlines(True)[:500]))
    code, out, _ = cli("predict", "--model-dir", tmp_path / "model", "--data", head)
    predicted = [json.loads(line)["score"] for line in out.splitlines()]
    np.testing.assert_allclose(score, predicted, rtol=0, atol=1e-5)
    # the weights as Parquet: a feature's v is its k-list per field, V[feature, field]
    assert cli("export", "parquet", "--model-dir", tmp_path / "model", tmp_path / "w.parquet",
               "--quiet")[0] == 0
    table = pq.read_table(tmp_path / "w.parquet")
    np.testing.assert_array_equal(np.array(table.column("v").to_pylist()), V)
    assert table.schema.metadata[b"model_type"] == b"ffm"


def test_npz_and_parquet_weights_are_the_models(a9a_model, cli):
    from fmkit.models.fm.model import FMModel

    root = a9a_model
    model = FMModel.load(root / "model")
    for fmt in ("npz", "parquet"):
        code, _, err = cli("export", fmt, "--model-dir", root / "model", root / f"w.{fmt}",
                           "--quiet")
        assert code == 0, err
    with np.load(root / "w.npz", allow_pickle=False) as arrays:
        np.testing.assert_array_equal(arrays["V"], model.params.V)
        np.testing.assert_array_equal(arrays["w"], model.params.w)
        assert arrays["w0"][0] == model.params.w0[0]
    table = pq.read_table(root / "w.parquet")
    assert table.column("feature").to_pylist() == list(range(124))
    np.testing.assert_array_equal(np.array(table.column("v").to_pylist()), model.params.V)
    assert float(table.schema.metadata[b"w0"]) == pytest.approx(float(model.params.w0[0]))


def test_deepfm_npz_holds_each_table_under_its_name(small_deepfm_dir, tmp_path, cli):
    from fmkit.models.deepfm.model import DeepFMModel

    code, _, err = cli("export", "npz", "--model-dir", small_deepfm_dir, tmp_path / "d.npz",
                       "--quiet")
    assert code == 0, err
    model = DeepFMModel.load(small_deepfm_dir)
    with np.load(tmp_path / "d.npz", allow_pickle=False) as arrays:
        for feature in model.features.features.values():
            if feature.sparse:
                table = arrays[f"embedding/{feature.embedding_name}"]
                assert table.shape == (feature.num_embeddings, feature.embedding_dim)
    code, _, err = cli("export", "parquet", "--model-dir", small_deepfm_dir,
                       tmp_path / "d.parquet")
    assert code == 1 and "onnx or npz" in err


def _inputs_from_encoding(encoding: dict, encoded) -> dict[str, np.ndarray]:
    """The ONNX inputs built from the encoding JSON alone, in plain numpy: each bank's
    member features' ids moved by their base, member after member, and their bags' offsets
    (the feature ids themselves are fmkit's encoding of the raw columns)."""
    feeds = {}
    for bank in encoding["banks"] + encoding["wide_banks"]:
        ids, offsets, start = [], [], 0
        for member in bank["members"]:
            member_ids, member_offsets = encoded.sparse[member["feature"]]
            ids.append(member_ids + member["base"])
            offsets.append(member_offsets[:-1] + start)
            start += member_ids.size
        feeds[bank["ids"]] = np.concatenate(ids).astype(np.int64)
        feeds[bank["offsets"]] = np.concatenate(offsets).astype(np.int64)
    if encoding["dense"]:
        feeds["dense"] = np.stack([encoded.dense[name].reshape(-1)
                                   for name in encoding["dense"]["features"]]).astype(np.float32)
    return feeds


def test_deepfm_onnx_scores_the_criteo_example_as_fmkit_predict(tmp_path, cli):
    ort = pytest.importorskip("onnxruntime")  # the test extra installs it: never skipped in CI
    from fmkit.models.deepfm.model import DeepFMModel

    data = shared_file("criteo_kaggle_head1000", "train.txt")
    code, _, err = cli("train", "--config", REPO / "examples" / "deepfm_criteo.yaml", "--quiet",
                       *SMALL_CRITEO, "--set", f"train_input_path={data}", "--set",
                       "eval_input_path=", "--set", "train_config.num_epochs=1",
                       "--model-dir", tmp_path / "model")
    assert code == 0, err
    code, _, err = cli("export", "onnx", "--model-dir", tmp_path / "model",
                       tmp_path / "criteo.onnx", "--quiet")
    assert code == 0, err
    encoding = json.loads((tmp_path / "criteo.encoding.json").read_text())
    code, out, err = cli("predict", "--model-dir", tmp_path / "model", "--data", data,
                         "--quiet")
    assert code == 0, err
    expected = np.array([json.loads(line)["score"] for line in out.splitlines()])
    model = DeepFMModel.load(tmp_path / "model")
    # the hash the JSON states, in plain Python, gives the first row's C1 id
    hashing = encoding["hashing"]
    value = data.read_text().split("\n", 1)[0].split("\t")[14]  # label, I1..I13, C1
    h = hashing["offset_basis"]
    for byte in value.encode():
        h = ((h ^ byte) * hashing["prime"]) % 2 ** 64
    first = model.encode(next(model.read(data, labelled=False)))
    assert first.sparse["C1"][0][0] == h % 1000  # SMALL_CRITEO's hash_bucket_size
    session = ort.InferenceSession(str(tmp_path / "criteo.onnx"),
                                   providers=["CPUExecutionProvider"])
    scores, start = [], 0
    for batch in model.read(data, labelled=False):
        encoded = model.encode(batch)
        y, score = session.run(["y", "score"], _inputs_from_encoding(encoding, encoded))
        np.testing.assert_allclose(score, 1 / (1 + np.exp(-y.astype(np.float64))), rtol=1e-6)
        scores.append(score)
        start += encoded.n_rows
    assert start == len(expected) == 1000
    np.testing.assert_allclose(np.concatenate(scores), expected, rtol=1e-5, atol=1e-6)
    # both outputs are new files, never replaced: the graph's, and then the encoding's alone
    for _ in range(2):
        code, _, err = cli("export", "onnx", "--model-dir", tmp_path / "model",
                           tmp_path / "criteo.onnx")
        assert code == 1 and "exists" in err
        (tmp_path / "criteo.onnx").unlink(missing_ok=True)
    assert not (tmp_path / "criteo.onnx").exists()
