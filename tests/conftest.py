"""Shared fixtures: the real datasets in ../shared/data and helpers to run the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from fmkit.cli import main

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FMKIT_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_file(*parts: str) -> Path:
    """A file under ../shared/data; fails the test loudly (never skips) when it is missing."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.is_file():
        pytest.fail(f"required dataset {path} is missing: tests need ../shared/data "
                    "(or FMKIT_SHARED_DATA pointing at it)")
    return path


@pytest.fixture
def cli(capsys):
    """Run ``fmkit ARGS`` in-process: returns (exit code, stdout, stderr)."""

    def run(*args: str):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def fmkit_executable() -> str:
    return str(Path(sys.executable).parent / "fmkit")


def run_fmkit(*args: str, **kwargs) -> subprocess.CompletedProcess:
    """Run the installed ``fmkit`` console script in a subprocess."""
    return subprocess.run([fmkit_executable(), *map(str, args)], capture_output=True, text=True,
                          **kwargs)


def movielens_onehot(name: str) -> tuple[sp.csr_matrix, np.ndarray]:
    """MovieLens 100k ratings as one-hot user + item rows (943 users, then 1682 items)."""
    ratings = np.loadtxt(shared_file("movielens_100k", name), dtype=np.int64)
    n = len(ratings)
    columns = np.column_stack([ratings[:, 0] - 1, 943 + ratings[:, 1] - 1]).ravel()
    X = sp.csr_matrix((np.ones(2 * n), columns, np.arange(0, 2 * n + 1, 2)), shape=(n, 943 + 1682))
    return X, ratings[:, 2].astype(np.float64)


@pytest.fixture(scope="session")
def small_deepfm_dir(tmp_path_factory):
    """A DeepFM of ``deepfm_helpers.SMALL`` trained once per session (its model directory)."""
    from .deepfm_helpers import train_small_deepfm

    return train_small_deepfm(tmp_path_factory.mktemp("small_deepfm"))


@pytest.fixture(scope="session", autouse=True)
def _parsed_file_cache(tmp_path_factory):
    """Parsed files cached by the tests (``--cache``) go to a directory of the session, not to
    the machine's ``~/.cache/fmkit``, which would keep an entry of every temporary file."""
    if "FMKIT_CACHE_DIR" not in os.environ:
        os.environ["FMKIT_CACHE_DIR"] = str(tmp_path_factory.mktemp("fmkit-cache"))


@pytest.fixture(scope="session", autouse=True)
def mxnet_environment(request, tmp_path_factory):
    """The MXNet environment of the SageMaker artifact tests, made in the background from the
    session's start when any of them is to run (see tests/mxnet_environment.py)."""
    from .mxnet_environment import MXNetEnvironment

    environment = MXNetEnvironment(tmp_path_factory.getbasetemp().parent)
    if any("mxnet_python" in item.fixturenames for item in request.session.items):
        environment.start()
    return environment


# the training kernels each of two xdist workers compiles before its tests (one per update
# rule and mini-batch path, ~6 to 9 s each on a cold cache): split, so that neither compiles
# what the other does
WARM_UP = [
    [("adam", "1", "binary_classifier"), ("adam", "1000", "binary_classifier"),
     ("adagrad", "1000", "regressor"), ("adagrad", "1", "binary_classifier")],
    [("sgd", "1000", "binary_classifier"), ("sgd", "1", "regressor"),
     ("ftrl", "1000", "binary_classifier"), ("ftrl", "1", "binary_classifier")],
]
WARM_UP_WAIT_SECONDS = 600


@pytest.fixture(scope="session", autouse=True)
def _compiled_kernels(tmp_path_factory):
    """Compile the training and scoring kernels before any test runs, and cache them.

    With a cold numba cache (a fresh clone, as in CI) the first run of each kernel compiles it
    for seconds; the tests that start ``fmkit`` subprocesses (two ranks at once, or a run
    killed mid-way) would otherwise each compile it again, on both cores at once, and a killed
    process never writes the cache. Under xdist the two workers split :data:`WARM_UP` and
    wait for each other, so each kernel is compiled once and loaded from the cache after."""
    import time

    worker = os.environ.get("PYTEST_XDIST_WORKER")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) if worker else 1
    index = int(worker[2:]) if worker else 0
    jobs = ([job for part in WARM_UP for job in part] if workers == 1
            else WARM_UP[index] if index < len(WARM_UP) else [])
    root = tmp_path_factory.mktemp("warm")
    rng = np.random.default_rng(0)
    rows = [f"{rng.integers(0, 2)} " + " ".join(f"{j}:1" for j in sorted(rng.choice(50, 4, False)))
            for _ in range(200)]
    (root / "train.svm").write_text("\n".join(rows) + "\n")
    try:
        for optimizer, batch, predictor in jobs:
            code = main(["train", "--quiet", "--train", str(root / "train.svm"), "--test",
                         str(root / "train.svm"), "--model-dir",
                         str(root / f"model-{optimizer}-{batch}"), "feature_dim=50",
                         "num_factors=4", f"predictor_type={predictor}",
                         f"mini_batch_size={batch}", f"optimizer={optimizer}"])
            assert code == 0
    finally:
        if workers > 1:  # the other workers' kernels are being compiled: wait for the cache
            barrier = tmp_path_factory.getbasetemp().parent / "warm-up-done"
            barrier.mkdir(exist_ok=True)
            (barrier / str(index)).touch()
            deadline = time.monotonic() + WARM_UP_WAIT_SECONDS
            while (len(list(barrier.iterdir())) < min(workers, len(WARM_UP))
                   and time.monotonic() < deadline):
                time.sleep(0.2)


# The files whose tests start processes (torchrun and its ranks, the CLI, compile helpers) or
# train on real datasets hold most of the suite's time. Collected first, they are spread over
# xdist's workers while the many short tests are left to even out the end, instead of one
# worker finishing a long test alone (docs/performance.md, session 44).
SLOW_FILES = ("test_checkpoints.py", "test_distributed.py", "test_readers.py", "test_trust.py",
              "test_tune.py", "test_deepfm_quality.py", "test_compile_cache.py",
              "test_artifact.py", "test_device.py", "test_deepfm_end_to_end.py",
              "test_sagemaker_container.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.path.name not in SLOW_FILES)  # stable: else as collected
