"""Model directories: round trip, clear errors for damaged ones, no code run on load, and
atomic replacement (kill -9 during training leaves no model or a complete previous one)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.datasets import dump_svmlight_file

from fmkit import FMClassifier, load
from fmkit.cli import main
from fmkit.errors import ArtifactError
from fmkit.files import OutputError
from fmkit.models.fm.model import FMModel

from .conftest import fmkit_executable


@pytest.fixture
def fitted(tmp_path):
    rng = np.random.default_rng(0)
    X = sp.random(200, 30, density=0.2, random_state=0, format="csr")
    y = (rng.random(200) < 0.4).astype(int)
    model = FMClassifier(num_factors=4, epochs=2, mini_batch_size=20).fit(X, y, progress=False)
    path = model.save(tmp_path / "model")
    return model, X, path


def test_round_trip_predicts_identically(fitted):
    model, X, path = fitted
    loaded = load(path)
    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))
    assert loaded.get_params() == model.get_params()
    assert sorted(os.listdir(path)) == ["metrics.json", "model.json", "weights.npz"]


def _edit_meta(path, **changes):
    meta = json.loads((path / "model.json").read_text())
    meta.update(changes)
    (path / "model.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("change,message", [
    ({"format_version": 99}, "model format version 99 was written by fmkit"),
    ({"format": "something"}, "not an fmkit model"),
    ({"feature_dim": 31}, "disagrees with its own hyperparameters"),
    ({"model_type": "deepfm"}, "model_type 'deepfm' is not 'fm'"),
])
def test_load_refuses_inconsistent_metadata(fitted, change, message):
    _, _, path = fitted
    _edit_meta(path, **change)
    with pytest.raises(ArtifactError, match=message):
        FMModel.load(path)


def test_load_refuses_wrong_shapes_and_missing_files(fitted, tmp_path):
    _, _, path = fitted
    with np.load(path / "weights.npz") as npz:
        arrays = dict(npz)
    arrays["V"] = arrays["V"][:, :3]
    np.savez(path / "weights.npz", **arrays)
    with pytest.raises(ArtifactError, match=r"array 'V' has shape \(30, 3\), expected \(30, 4\)"):
        FMModel.load(path)
    (path / "weights.npz").write_bytes(b"not a zip")
    with pytest.raises(ArtifactError, match="unreadable weights"):
        FMModel.load(path)
    with pytest.raises(ArtifactError, match="no such model directory"):
        FMModel.load(tmp_path / "nothing")


@pytest.mark.parametrize("name, at, value", [("V", (7, 2), np.nan), ("w", (29,), -np.inf),
                                              ("w0", (0,), np.inf)])
def test_load_refuses_weights_that_are_not_finite(fitted, name, at, value):
    """A NaN or an infinity in a model's weights (a damaged or edited file) is refused where
    it is, at load: it scored every row that used it as 'not a finite number', blaming the
    row's feature values. float64 weights near the largest double (their sum is not finite)
    still load."""
    _, _, path = fitted
    with np.load(path / "weights.npz") as npz:
        arrays = dict(npz)
    good = {key: array.copy() for key, array in arrays.items()}
    arrays[name][at] = value
    np.savez(path / "weights.npz", **arrays)
    with pytest.raises(ArtifactError, match=re.escape(f"array '{name}' holds {value} at {at}")):
        FMModel.load(path)
    good["w"] = np.full(good["w"].shape, 1e308)
    np.savez(path / "weights.npz", **good)
    assert np.all(FMModel.load(path).params.w == 1e308)


def test_a_deepfm_with_a_nan_in_its_layers_is_refused_at_load(small_deepfm_dir, tmp_path):
    """The DeepFM's dense layers are checked as the FM's weights are; its embedding tables,
    mapped from the file and most of its bytes, are left unread."""
    import shutil

    from fmkit.models.deepfm.model import DeepFMModel

    path = tmp_path / "deepfm"
    shutil.copytree(small_deepfm_dir, path)
    with np.load(path / "weights.npz") as npz:
        arrays = dict(npz)
    name = next(n for n in arrays if n.startswith("deep.") and n.endswith(".weight"))
    arrays[name][1, 2] = np.nan
    np.savez(path / "weights.npz", **arrays)
    with pytest.raises(ArtifactError, match=re.escape(f"array '{name}' holds nan at (1, 2)")):
        DeepFMModel.load(path)


def test_a_deepfm_whose_table_holds_nan_names_the_weights_as_a_cause(small_deepfm_dir,
                                                                      tmp_path, cli):
    """Loading maps a DeepFM's embedding tables unread (they are most of its bytes), so NaN
    written into one reaches prediction: the row is refused in one line that names the
    model's weights as a possible cause (it blamed the row's values alone), exit 1."""
    import shutil

    path = tmp_path / "deepfm"
    shutil.copytree(small_deepfm_dir, path)
    with np.load(path / "weights.npz") as npz:
        arrays = dict(npz)
    for name in arrays:
        if name.startswith("tables."):
            arrays[name][:] = np.nan
    np.savez(path / "weights.npz", **arrays)
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"user": "u1", "item": 3, "tags": "a|b", "age": 25,
                                "price": 2.0}) + "\n")
    code, _, err = cli("predict", "--model-dir", path, "--data", rows, "--format", "jsonlines",
                       "--output", tmp_path / "out.jsonl")
    assert code == 1 and "Traceback" not in err, err
    assert "the score is not a finite number" in err and (
        "or the model holds weights that are not" in err), err
    assert not (tmp_path / "out.jsonl").exists()


def test_a_deepfm_loads_to_score_where_it_could_not_train(small_deepfm_dir, monkeypatch):
    """Training needs the tables, their optimizer state and copies in memory; a loaded model
    maps its tables from the file. A machine too small to train it (the memory check refuses
    a new model of its configuration) still loads it, and it scores as on the machine that
    trained it."""
    from fmkit import memory
    from fmkit.data import columns
    from fmkit.models.deepfm.model import DeepFMModel

    scored = DeepFMModel.load(small_deepfm_dir)
    rows = [{"user": "u1", "item": 3, "tags": "a|b", "age": 25, "price": 2.0}]
    expected = scored.logits(columns.from_instances(rows))
    monkeypatch.setattr(memory, "available_bytes", lambda: 1000)
    with pytest.raises(memory.TooLarge):
        DeepFMModel.create(scored.config)
    loaded = DeepFMModel.load(small_deepfm_dir)
    np.testing.assert_array_equal(loaded.logits(columns.from_instances(rows)), expected)


def test_loading_never_unpickles(fitted, tmp_path):
    """An .npz whose array holds Python objects (a pickle) is refused, not executed."""
    _, _, path = fitted
    with np.load(path / "weights.npz") as npz:
        arrays = dict(npz)
    marker = tmp_path / "executed"
    arrays["V"] = np.array([_Exploit(str(marker))], dtype=object)
    np.savez(path / "weights.npz", **arrays)
    with pytest.raises(ArtifactError):
        FMModel.load(path)
    assert not marker.exists()


class _Exploit:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_cli_reports_bad_model_dir(cli, tmp_path):
    data = tmp_path / "d.libsvm"
    data.write_text("1 0:1\n")
    code, _, err = cli("evaluate", "--model-dir", tmp_path / "none", "--data", data)
    assert code != 0 and "no such model directory" in err
    # another tool's model where a model directory is expected: said what it is, one line
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "scripted_model.pt").write_bytes(b"")  # TorchEasyRec's export
    (tmp_path / "model.tar.gz").write_bytes(b"")  # SageMaker's artifact
    for given, said in (("export", "TorchEasyRec's export or checkpoints, which fmkit does not "
                                   "load"),
                        ("model.tar.gz", "a file, not a model directory (a SageMaker "
                                         "model.tar.gz or an xLearn model: fmkit import")):
        code, _, err = cli("predict", "--model-dir", tmp_path / given, "--data", data)
        assert code == 1 and err.count("\n") == 1 and said in err, err


def test_a_model_is_saved_over_only_what_fmkit_wrote(fitted, tmp_path):
    """A model directory with what ``fmkit tune`` and ``fmkit recommend index`` add is
    replaced; one with anything else in it, or a ``tune`` that is a link or holds a file fmkit
    does not write, is left alone."""
    model, _, path = fitted
    (path / "tune").mkdir()
    (path / "tune" / "trials.csv").write_text("number\n")
    (path / "items").mkdir()
    for name in ("catalogue.npz", "hnsw.faiss", "hnsw.json"):
        (path / "items" / name).write_text("")
    model.save(path)
    assert sorted(p.name for p in path.iterdir()) == ["metrics.json", "model.json",
                                                     "weights.npz"]
    for foreign in ("tune/notes.txt", "notes.txt"):
        (path / foreign).parent.mkdir(exist_ok=True)
        (path / foreign).write_text("keep")
        with pytest.raises(OutputError, match="nothing was changed"):
            model.save(path)
        assert (path / foreign).read_text() == "keep"
        (path / foreign).unlink()
    (tmp_path / "elsewhere").mkdir()
    (path / "tune").rmdir()
    (path / "tune").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OutputError, match="nothing was changed"):
        model.save(path)
    (path / "tune").unlink()
    # an evaluation's record under another name (tzrec.eval's --eval_result_filename) is
    # replaced with the model it describes; a FIFO of another name is refused, never read
    # (its reading would wait for a writer)
    (path / "my_eval.txt").write_text('{"global_step": 3, "auc": 0.5}\n')
    model.save(path)
    assert not (path / "my_eval.txt").exists()
    os.mkfifo(path / "pipe")
    with pytest.raises(OutputError, match="nothing was changed"):
        model.save(path)


def test_kill_9_during_training_leaves_previous_model_or_none(tmp_path):
    """Kill ``fmkit train`` at many moments, including while it writes its (large) model."""
    rng = np.random.default_rng(0)
    n, d = 20000, 1_000_000
    X = sp.csr_matrix((np.ones(n * 5), rng.integers(0, d, n * 5), np.arange(0, n * 5 + 1, 5)),
                      shape=(n, d))
    data = tmp_path / "train.libsvm"
    dump_svmlight_file(X, rng.integers(0, 2, n), str(data), zero_based=True)
    model_dir = tmp_path / "model"
    base = ["train", "--train", str(data), "--model-dir", str(model_dir), "--quiet",
            "--index-base", "0", f"feature_dim={d}", "num_factors=8",
            "predictor_type=binary_classifier"]

    # no model yet: a killed run leaves no model directory at all
    proc = subprocess.Popen([fmkit_executable(), *base, "epochs=1"])
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not model_dir.exists()

    subprocess.run([fmkit_executable(), *base, "epochs=1"], check=True)  # may compile kernels
    runs = []
    for _ in range(2):  # the faster of two: one timed while the other test worker was busy
        started = time.perf_counter()  # made the later kills land after every run finished
        subprocess.run([fmkit_executable(), *base, "epochs=1"], check=True)
        runs.append(time.perf_counter() - started)
    full_run = min(runs)
    first = FMModel.load(model_dir)
    assert first.hyperparameters["epochs"] == 1

    outcomes = set()
    # late kills fall into the model write; the last two, only when every kill so far came
    # after a run's end (its time measured while another process held a core)
    for attempt, fraction in enumerate([0.5, 0.83, 1.16, 1.49, 0.25, 0.1]):
        if attempt >= 4 and "old" in outcomes:
            break
        proc = subprocess.Popen([fmkit_executable(), *base, "epochs=2", f"seed={attempt + 1}"])
        time.sleep(full_run * fraction)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        model = FMModel.load(model_dir)  # always a complete model
        seed = model.hyperparameters["seed"]
        assert (model.hyperparameters["epochs"], seed) in {(1, 0), (2, attempt + 1)}, attempt
        assert model.params.V.shape == (d, 8) and np.isfinite(model.params.V).all()
        outcomes.add("new" if seed else "old")
        if seed:  # a finished run replaced the model: go back to the first one for the next try
            assert main([*base, "epochs=1"]) == 0
    visible = [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")]
    assert sorted(visible) == ["model", "train.libsvm"]
    assert "old" in outcomes


WEIGHTS = {"w0": np.array([0.5], np.float32), "V": np.arange(48, dtype=np.float32).reshape(16, 3),
           "ids": np.arange(5, dtype=np.int64), "none": np.zeros((0, 4), np.float32)}


@pytest.mark.parametrize("zip64", [False, True])
def test_weights_file_is_a_plain_npz_with_every_array_aligned(tmp_path, monkeypatch, zip64):
    """``np.load`` reads what ``write_npz`` writes, and every array's bytes start at a multiple
    of 64 in the file (found here from the zip's own member offsets and numpy's header
    reader), also with zip64 member headers (used from 2 GiB; forced here)."""
    import zipfile

    from fmkit.models import artifact

    if zip64:
        monkeypatch.setattr(artifact, "ZIP64_FROM", 0)
    path = tmp_path / "weights.npz"
    with open(path, "wb") as f:
        artifact.write_npz(f, WEIGHTS)
    with np.load(path, allow_pickle=False) as npz:
        assert sorted(npz.files) == sorted(WEIGHTS)
        for name, array in WEIGHTS.items():
            np.testing.assert_array_equal(npz[name], array)
            assert npz[name].dtype == array.dtype
    data = path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        for member in archive.infolist():
            assert member.compress_type == zipfile.ZIP_STORED
            name_length, extra_length = np.frombuffer(
                data[member.header_offset + 26: member.header_offset + 30], "<u2")
            start = member.header_offset + 30 + int(name_length) + int(extra_length)
            with archive.open(member) as stream:
                np.lib.format.read_magic(stream)
                np.lib.format.read_array_header_1_0(stream)
                assert (start + stream.tell()) % 64 == 0, member.filename


def test_mapped_weights_equal_the_read_ones_and_older_files_are_read(tmp_path):
    """Arrays mapped from the file (copy-on-write: writing one leaves the file as it was) equal
    ``np.load``'s; an ``np.savez`` file, whose arrays are not aligned, is read instead."""
    from fmkit.models import artifact

    ours, older = tmp_path / "ours.npz", tmp_path / "older.npz"
    with open(ours, "wb") as f:
        artifact.write_npz(f, WEIGHTS)
    np.savez(older, **WEIGHTS)
    before = ours.read_bytes()
    for path in (ours, older):
        arrays = artifact.mapped_arrays(path)
        for name, array in WEIGHTS.items():
            np.testing.assert_array_equal(arrays[name], array)
        kinds = {name: isinstance(arrays[name], np.memmap) for name in WEIGHTS}
        assert kinds == ({"w0": True, "V": True, "ids": True, "none": False} if path == ours
                         else dict.fromkeys(WEIGHTS, False)), path.name
        arrays["V"][0, 0] = -1.0
    assert ours.read_bytes() == before
