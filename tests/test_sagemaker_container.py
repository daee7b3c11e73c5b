"""The SageMaker training-container contract on a temporary /opt/ml tree ($FMKIT_OPT_ML):
SDK-written hyperparameters and data, File and Pipe mode, metric lines, failure file."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time

import numpy as np
import pytest
import scipy.sparse as sp

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
from sagemaker.amazon.common import write_spmatrix_to_sparse_tensor  # noqa: E402
from sklearn.datasets import load_svmlight_file  # noqa: E402

from fmkit.models.fm.model import FMModel  # noqa: E402

from .conftest import fmkit_executable, shared_file  # noqa: E402
from .test_end_to_end import METRIC_REGEXES  # noqa: E402


def sdk_hyperparameters(**kwargs) -> dict[str, str]:
    """hyperparameters.json exactly as the SageMaker SDK 2.x builds it for a training job."""
    import boto3
    import sagemaker

    session = sagemaker.Session(boto_session=boto3.Session(region_name="us-east-1"))
    feature_dim = kwargs.pop("feature_dim")
    mini_batch_size = kwargs.pop("mini_batch_size")
    estimator = sagemaker.FactorizationMachines(
        role="arn:aws:iam::123456789012:role/fmkit-test", instance_count=1,
        instance_type="ml.m5.large", sagemaker_session=session,
        data_location="s3://fmkit-test-bucket/records/", **kwargs)
    estimator.feature_dim = feature_dim
    estimator.mini_batch_size = mini_batch_size
    hyperparameters = {k: str(v) for k, v in estimator.hyperparameters().items()}
    assert all(isinstance(v, str) for v in hyperparameters.values())
    return hyperparameters


def sdk_records(X, y) -> bytes:
    f = io.BytesIO()
    write_spmatrix_to_sparse_tensor(f, sp.csr_matrix(X, dtype=np.float32),
                                    np.asarray(y, dtype=np.float32))
    return f.getvalue()


def make_opt_ml(root, hyperparameters, channels: dict[str, dict]) -> None:
    config = root / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    (config / "inputdataconfig.json").write_text(json.dumps(channels))
    (config / "resourceconfig.json").write_text(json.dumps(
        {"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "eth1"}))
    (root / "input" / "data").mkdir(parents=True)


def run_container(root, *, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([fmkit_executable(), "sagemaker", "train"], capture_output=True,
                          text=True, env={**os.environ, "FMKIT_OPT_ML": str(root)},
                          timeout=timeout)


def stop_the_job_after(root, line: str, log) -> str:
    """Run the job of ``root`` until its log says ``line``, then send SIGTERM, as
    StopTrainingJob (or a spot interruption) does; it must end with 143. Returns its log."""
    with open(log, "w") as err:
        proc = subprocess.Popen([fmkit_executable(), "sagemaker", "train"], stderr=err,
                                env={**os.environ, "FMKIT_OPT_ML": str(root)})
    deadline = time.monotonic() + 120
    while line not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM, log.read_text()
    return log.read_text()


FILE_CHANNEL = {"ContentType": "application/x-recordio-protobuf", "TrainingInputMode": "File",
                "S3DistributionType": "FullyReplicated", "RecordWrapperType": "None"}


@pytest.fixture(scope="module")
def a9a():
    X, y = load_svmlight_file(str(shared_file("a9a_libsvm", "a9a")), n_features=123)
    Xt, yt = load_svmlight_file(str(shared_file("a9a_libsvm", "a9a.t")), n_features=123)
    return X, (y == 1).astype(np.float32), Xt, (yt == 1).astype(np.float32)


def test_file_mode_classifier_job(tmp_path, a9a):
    X, y, Xt, yt = a9a
    hp = sdk_hyperparameters(num_factors=8, predictor_type="binary_classifier", epochs=3,
                             bias_wd=0.0, linear_lr=0.003, factors_lr=0.003,
                             feature_dim=123, mini_batch_size=100)
    hp["_tuning_objective_metric"] = "test:binary_classification_accuracy"
    make_opt_ml(tmp_path, hp, {"train": FILE_CHANNEL, "test": FILE_CHANNEL})
    train, test = tmp_path / "input/data/train", tmp_path / "input/data/test"
    train.mkdir()
    test.mkdir()
    for part in range(3):  # a multi-file train channel, as record_set() shards it
        rows = slice(part * 11000, (part + 1) * 11000)
        (train / f"matrix_{part}.pbr").write_bytes(sdk_records(X[rows], y[rows]))
    (train / ".amazon.manifest").write_text("[]")
    (test / "matrix_0.pbr").write_bytes(sdk_records(Xt, yt))
    result = run_container(tmp_path)
    assert result.returncode == 0, result.stderr
    log = result.stdout + result.stderr
    values = {}
    for name, pattern in METRIC_REGEXES.items():
        if name != "test:rmse":
            values[name] = float(re.search(pattern, log).group(1))
    assert values["test:binary_classification_accuracy"] >= 0.84
    assert "over 32561 rows" in log  # all three files were read
    model = FMModel.load(tmp_path / "model")
    assert model.feature_dim == 123 and model.hyperparameters["epochs"] == 3
    assert not (tmp_path / "output" / "failure").exists()


def test_file_mode_regressor_job_logs_rmse(tmp_path):
    rng = np.random.default_rng(0)
    X = sp.random(3000, 50, density=0.1, random_state=0, format="csr")
    y = X @ rng.normal(size=50) + 3.0
    hp = sdk_hyperparameters(num_factors=4, predictor_type="regressor", epochs=5,
                             feature_dim=50, mini_batch_size=50)
    make_opt_ml(tmp_path, hp, {"train": {"TrainingInputMode": "File"},  # no ContentType
                               "test": FILE_CHANNEL})
    for channel in ("train", "test"):
        (tmp_path / "input/data" / channel).mkdir()
        (tmp_path / "input/data" / channel / "part.pbr").write_bytes(sdk_records(X, y))
    result = run_container(tmp_path)
    assert result.returncode == 0, result.stderr
    rmse = float(re.search(METRIC_REGEXES["test:rmse"], result.stderr).group(1))
    assert np.isfinite(rmse)


def test_missing_required_hyperparameter_writes_failure(tmp_path):
    make_opt_ml(tmp_path, {"num_factors": "8", "predictor_type": "binary_classifier"},
                {"train": FILE_CHANNEL})
    (tmp_path / "input/data/train").mkdir()
    result = run_container(tmp_path)
    assert result.returncode != 0
    failure = (tmp_path / "output" / "failure").read_text()
    assert "hyperparameter feature_dim is required" in failure
    assert not (tmp_path / "model").exists()


def test_unsupported_content_type_fails_clearly(tmp_path):
    make_opt_ml(tmp_path, {"feature_dim": "4", "num_factors": "2",
                           "predictor_type": "regressor"},
                {"train": {**FILE_CHANNEL, "ContentType": "image/png"}})
    (tmp_path / "input/data/train").mkdir()
    result = run_container(tmp_path)
    assert result.returncode != 0
    assert "ContentType 'image/png' is not supported" in (tmp_path / "output/failure").read_text()


def test_a_bad_record_fails_with_its_file_and_line_and_no_traceback(tmp_path):
    make_opt_ml(tmp_path, {"feature_dim": "10", "num_factors": "2",
                           "predictor_type": "binary_classifier"},
                {"train": {**FILE_CHANNEL, "ContentType": "text/libsvm"}})
    train = tmp_path / "input/data/train"
    train.mkdir()
    (train / "part-0.svm").write_text("1 1:1 2:1\n0 3:abc\n")
    result = run_container(tmp_path)
    assert result.returncode == 255
    reason = f"{train / 'part-0.svm'}:2: non-numeric value in '3:abc'"
    assert (tmp_path / "output/failure").read_text() == reason + "\n"
    assert reason in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "model").exists()


def test_pipe_mode_reads_one_fifo_per_epoch(tmp_path, a9a):
    X, y, Xt, yt = a9a
    hp = sdk_hyperparameters(num_factors=4, predictor_type="binary_classifier", epochs=2,
                             feature_dim=123, mini_batch_size=200)
    pipe = {**FILE_CHANNEL, "TrainingInputMode": "Pipe"}
    make_opt_ml(tmp_path, hp, {"train": pipe, "test": FILE_CHANNEL})
    data = tmp_path / "input/data"
    (data / "test").mkdir()
    (data / "test" / "part.pbr").write_bytes(sdk_records(Xt[:2000], yt[:2000]))
    payload = sdk_records(X[:5000], y[:5000])
    written = []

    def feed(epoch: int) -> None:
        fifo = data / f"train_{epoch}"
        os.mkfifo(fifo)
        with open(fifo, "wb") as f:  # blocks until the trainer opens the pipe
            for start in range(0, len(payload), 65536):  # in pieces, as a pipe delivers
                f.write(payload[start:start + 65536])
        written.append(epoch)

    feeders = [threading.Thread(target=feed, args=(e,), daemon=True) for e in (0, 1)]
    for t in feeders:
        t.start()
    result = run_container(tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert sorted(written) == [0, 1]
    assert result.stderr.count("over 5000 rows") == 2  # one full epoch from each pipe
    assert re.search(METRIC_REGEXES["test:binary_classification_accuracy"], result.stderr)


def test_stop_training_job_keeps_the_model_trained_so_far(tmp_path, a9a):
    """StopTrainingJob sends SIGTERM and kills the container 120 s later, a window "algorithms
    can use to save the model artifacts": the job ends after the step in progress and writes
    a model that scores (its test AUC by scikit-learn), no failure file."""
    from sklearn.metrics import roc_auc_score

    X, y, Xt, yt = a9a
    hp = sdk_hyperparameters(num_factors=8, predictor_type="binary_classifier", epochs=1000,
                             feature_dim=123, mini_batch_size=100)
    make_opt_ml(tmp_path, hp, {"train": FILE_CHANNEL, "test": FILE_CHANNEL})
    for channel, rows in (("train", (X, y)), ("test", (Xt, yt))):
        (tmp_path / "input/data" / channel).mkdir()
        (tmp_path / "input/data" / channel / "part.pbr").write_bytes(sdk_records(*rows))
    text = stop_the_job_after(tmp_path, "epoch 3/1000: train loss", tmp_path / "job.log")
    assert "SIGTERM: the model trained so far" in text and "Traceback" not in text, text
    assert not (tmp_path / "output" / "failure").exists()
    params = FMModel.load(tmp_path / "model").params
    # the FM by its sum-of-squares identity, in numpy
    XV = Xt @ params.V
    logits = (params.w0[0] + Xt @ params.w
              + 0.5 * ((XV**2).sum(1) - (Xt.multiply(Xt) @ params.V**2).sum(1)))
    auc = roc_auc_score(yt, np.asarray(logits).ravel())
    print(f"stopped after epoch 3: test AUC {auc:.4f}")
    assert auc > 0.88


def test_a_spot_job_restarted_continues_from_its_checkpoint(tmp_path, a9a):
    """Managed spot training: with ``checkpoint_s3_uri`` SageMaker gives the job
    ``/opt/ml/checkpoints`` and copies it back into the restarted job. Interrupted by SIGTERM
    (a checkpoint taken there), then restarted in a fresh container (no model directory), the
    job ends with the model an uninterrupted job ends with."""
    X, y, Xt, yt = a9a
    hp = sdk_hyperparameters(num_factors=4, predictor_type="binary_classifier", epochs=6,
                             feature_dim=123, mini_batch_size=100)
    roots = {"straight": tmp_path / "straight", "spot": tmp_path / "spot"}
    for root in roots.values():
        make_opt_ml(root, hp, {"train": FILE_CHANNEL})
        (root / "input/data/train").mkdir()
        (root / "input/data/train/part.pbr").write_bytes(sdk_records(X, y))
    straight = run_container(roots["straight"])
    assert straight.returncode == 0, straight.stderr
    spot = roots["spot"]
    (spot / "checkpoints").mkdir()
    stop_the_job_after(spot, "epoch 2/6: train loss", tmp_path / "spot.log")
    assert [p.name for p in (spot / "checkpoints").iterdir()][0].startswith("step-")
    shutil.rmtree(spot / "model")  # the restarted job's container is a new one
    restarted = run_container(spot)
    assert restarted.returncode == 0, restarted.stderr
    assert f"resuming from {spot / 'checkpoints'}: epoch " in restarted.stderr
    assert "no complete checkpoint" not in restarted.stderr
    a = FMModel.load(roots["straight"] / "model" / "model_algo-1")
    b = FMModel.load(spot / "model" / "model_algo-1")
    for name in ("w0", "w", "V"):
        np.testing.assert_allclose(getattr(b.params, name), getattr(a.params, name),
                                   rtol=1e-5, atol=1e-6, err_msg=name)


def test_serve_starts_a_worker_per_usable_core_by_default(tmp_path, monkeypatch):
    """SageMaker's serve without SAGEMAKER_MODEL_SERVER_WORKERS: a worker per core the process
    may use (a container's CPU quota: fmkit.cpus.available_cpus, tested against cgroup files
    in test_cpus), not os.cpu_count(), the host's, which started a worker per host core
    inside a one-CPU container; the variable, when set, decides."""
    import fmkit.sagemaker as entry
    import fmkit.serve.app as app

    started = []
    monkeypatch.setattr(app, "serve", lambda model, workers, **_: started.append(workers))
    monkeypatch.setattr(entry, "available_cpus", lambda: 1)
    monkeypatch.delenv("SAGEMAKER_MODEL_SERVER_WORKERS", raising=False)
    opt_ml = entry.OptML(tmp_path)
    entry.serve(opt_ml)
    monkeypatch.setenv("SAGEMAKER_MODEL_SERVER_WORKERS", "3")
    entry.serve(opt_ml)
    assert started == [1, 3] and (os.cpu_count() or 1) > 1
