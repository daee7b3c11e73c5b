"""Training on a PyTorch device: on the CPU device it computes what the compiled kernels
compute (every optimizer); on a GPU it runs when one is present, and is skipped otherwise."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from fmkit.data.sources import ArraySource
from fmkit.jobs.training import train
from fmkit.models.fm.hyperparameters import OPTIMIZERS, validate
from fmkit.models.fm.parameters import init_parameters

from .conftest import shared_file


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    X = sp.random(600, 40, density=0.15, format="csr", random_state=seed, dtype=np.float64)
    X.data = rng.normal(size=X.data.size)
    y = (rng.random(600) < 0.4).astype(np.float64)
    return X, y


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_cpu_device_equals_the_compiled_kernels(optimizer):
    X, y = _problem()
    hp = validate({"feature_dim": 40, "num_factors": 3, "predictor_type": "binary_classifier",
                   "epochs": 2, "mini_batch_size": 50, "optimizer": optimizer, "shuffle": 0,
                   "linear_lr": 0.05, "factors_lr": 0.05, "bias_lr": 0.05, "linear_wd": 0.01,
                   "factors_wd": 0.01, "factors_init_sigma": 0.1, "seed": 1})
    # float32, the dtype both paths train in for users (and whose kernels are compiled once
    # for the whole suite)
    start = init_parameters(hp, dtype=np.float32)
    source = ArraySource(X, y, feature_dim=40, labels="binary")
    kernels, _ = train(hp, source, start, progress=False)
    on_device, _ = train(hp, source, start, progress=False, device=torch.device("cpu"))
    assert not np.allclose(kernels.V, start.V)
    for name in ("w0", "w", "V"):
        np.testing.assert_allclose(getattr(on_device, name), getattr(kernels, name),
                                   rtol=1e-5, atol=1e-6, err_msg=f"{optimizer} {name}")


def test_cuda_without_a_gpu_is_a_clear_error(tmp_path, cli):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the GPU test below covers --device cuda")
    code, _, err = cli("train", "--train", shared_file("a9a_libsvm", "a9a"), "--model-dir",
                       tmp_path / "m", "--device", "cuda", "feature_dim=124", "num_factors=4",
                       "predictor_type=binary_classifier")
    assert code == 1 and "PyTorch sees no CUDA device" in err


def test_a_device_pytorch_names_but_cannot_compute_on_is_one_line(tmp_path, cli):
    """``meta`` (tensors without data) was a traceback; it and a backend this PyTorch was
    not built with are one line, exit 1, nothing written."""
    for device in ("meta", "mps"):
        code, out, err = cli("train", "--train", shared_file("a9a_libsvm", "a9a.t"),
                             "--model-dir", tmp_path / "m", "--device", device,
                             "feature_dim=124", "num_factors=4",
                             "predictor_type=binary_classifier")
        assert code == 1 and err.startswith(f"fmkit: error: --device {device}: PyTorch cannot "
                                            "compute there: ") and err.count("\n") == 1, err
        assert not (tmp_path / "m").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_training_equals_cpu():
    X, y = _problem(1)
    hp = validate({"feature_dim": 40, "num_factors": 3, "predictor_type": "binary_classifier",
                   "epochs": 2, "mini_batch_size": 50, "optimizer": "adam", "shuffle": 0})
    start = init_parameters(hp, dtype=np.float64)
    source = ArraySource(X, y, feature_dim=40, labels="binary")
    on_cpu, _ = train(hp, source, start, progress=False, dtype=np.float64)
    on_gpu, _ = train(hp, source, start, progress=False, dtype=np.float64,
                      device=torch.device("cuda"))
    np.testing.assert_allclose(on_gpu.V, on_cpu.V, rtol=1e-5, atol=1e-6)


def _deepfm_auc(tmp_path, device: str) -> float:
    import json

    from fmkit.cli import main

    from .conftest import REPO

    train = shared_file("criteo_kaggle_head1000", "train.txt")
    model_dir = tmp_path / device
    code = main(["train", "--config", str(REPO / "examples" / "deepfm_criteo.yaml"), "--quiet",
                 "--device", device, "--set", f"train_input_path={train}",
                 "--set", f"eval_input_path={train}", "--set", f"model_dir={model_dir}"])
    assert code == 0
    return json.loads((model_dir / "metrics.json").read_text())["test"]["auc"]


def test_deepfm_cuda_without_a_gpu_is_a_clear_error(tmp_path, cli):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the GPU test below covers DeepFM on cuda")
    from .conftest import REPO

    code, _, err = cli("train", "--config", REPO / "examples" / "deepfm_criteo.yaml",
                       "--device", "cuda", "--model-dir", tmp_path / "m")
    assert code == 1 and "PyTorch sees no CUDA device" in err
    assert not (tmp_path / "m").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_deepfm_on_cuda_learns_as_on_cpu(tmp_path):
    assert abs(_deepfm_auc(tmp_path, "cuda") - _deepfm_auc(tmp_path, "cpu")) < 0.03


def test_scoring_on_the_cpu_device_equals_the_brute_force_fm():
    from fmkit.data.batch import SparseBatch
    from fmkit.models.fm.device import DeviceScorer
    from fmkit.models.fm.parameters import FMParameters

    X, _ = _problem(2)
    rng = np.random.default_rng(3)
    params = FMParameters(rng.normal(size=1), rng.normal(size=40), rng.normal(size=(40, 3)))
    batch = SparseBatch(X.indptr.astype(np.int64), X.indices.astype(np.int32),
                        X.data.astype(np.float64), np.zeros(X.shape[0]))
    expected = np.empty(X.shape[0])
    dense = X.toarray()
    for r in range(X.shape[0]):  # w0 + sum w_i x_i + sum_{i<j} <v_i, v_j> x_i x_j
        x = dense[r]
        pairs = sum(params.V[i] @ params.V[j] * x[i] * x[j]
                    for i in np.flatnonzero(x) for j in np.flatnonzero(x) if i < j)
        expected[r] = params.w0[0] + params.w @ x + pairs
    got = DeviceScorer(params, torch.device("cpu")).logits(batch)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_predict_on_cuda_equals_cpu(tmp_path, cli):
    a9a = shared_file("a9a_libsvm", "a9a")
    code, _, _ = cli("train", "--quiet", "--train", a9a, "--model-dir", tmp_path / "m",
                     "feature_dim=124", "num_factors=4", "predictor_type=binary_classifier")
    outputs = []
    for device in ("cpu", "cuda"):
        code, out, err = cli("predict", "--model-dir", tmp_path / "m", "--data", a9a,
                             "--device", device)
        assert code == 0, err
        outputs.append([json.loads(line)["score"] for line in out.splitlines()])
    np.testing.assert_allclose(outputs[1], outputs[0], rtol=1e-5)


DEVICE_RANK_SCRIPT = """
import sys, numpy as np, torch
from fmkit import distributed
from fmkit.data.sources import FileSource
from fmkit.models.fm.hyperparameters import validate
from fmkit.jobs.training import train
distributed.init_from_environment()
hp = validate({"feature_dim": 124, "num_factors": 4, "predictor_type": "binary_classifier",
               "epochs": 3, "mini_batch_size": 200, "optimizer": "adam", "seed": 2})
source = FileSource(sys.argv[1], "libsvm", 124, 1, labels="binary",
                    shard=distributed.rank_and_size())
params, history = train(hp, source, progress=False, device=torch.device("cpu"))
if distributed.rank_and_size()[0] == 0:
    np.savez(sys.argv[2], w0=params.w0, w=params.w, V=params.V,
             rows=[h.rows for h in history])
distributed.shutdown()
"""


def test_device_training_on_two_processes_matches_one(tmp_path):
    """The device path's gradient combining, run on the CPU device with 2 Gloo processes."""
    import subprocess
    import sys

    from sklearn.datasets import load_svmlight_file
    from sklearn.metrics import roc_auc_score

    from fmkit.models.fm.parameters import FMParameters, reference_logits

    a9a, a9a_t = shared_file("a9a_libsvm", "a9a"), shared_file("a9a_libsvm", "a9a.t")
    script = tmp_path / "rank.py"
    script.write_text(DEVICE_RANK_SCRIPT)
    aucs = []
    Xt, yt = load_svmlight_file(str(a9a_t), n_features=124, zero_based=False)
    for nproc in (1, 2):
        out = tmp_path / f"model{nproc}.npz"
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                               f"--nproc-per-node={nproc}", f"--log-dir={tmp_path / 'logs'}",
                               str(script), str(a9a), str(out)],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        saved = np.load(out)
        assert list(saved["rows"]) == [32561] * 3  # every row once per epoch, both shards
        params = FMParameters(saved["w0"], saved["w"], saved["V"])
        aucs.append(roc_auc_score(yt, reference_logits(params, Xt)))
    print(f"device path, a9a: test AUC 1 process {aucs[0]:.4f}, 2 processes {aucs[1]:.4f}")
    assert abs(aucs[0] - aucs[1]) < 0.005
