"""Training on several processes with torch.distributed (Gloo): the shards cover every row
exactly once, and 2 processes train the model 1 process trains, to a stated tolerance (for an
FM, tests/test_checkpoints.py checks it on the 2-process run it also kills and resumes)."""

from __future__ import annotations

import json
import os
import re
from collections import Counter

from fmkit.data.sources import FileSource

from .conftest import run_fmkit, shared_file


def _rows(source: FileSource) -> Counter:
    """Each row as (label, indices, values), counted."""
    out = Counter()
    for batch in source.blocks():
        for r in range(batch.n_rows):
            lo, hi = batch.indptr[r], batch.indptr[r + 1]
            out[(float(batch.labels[r]), tuple(batch.indices[lo:hi]),
                 tuple(batch.values[lo:hi]))] += 1
    return out


def test_shards_cover_every_row_exactly_once(tmp_path):
    a9a = shared_file("a9a_libsvm", "a9a")
    whole = _rows(FileSource(a9a, "libsvm", 124, labels="binary"))
    shards = [_rows(FileSource(a9a, "libsvm", 124, labels="binary", shard=(r, 2)))
              for r in range(2)]
    assert all(sum(s.values()) > 10_000 for s in shards)  # both processes get a real share
    assert shards[0] + shards[1] == whole
    # a channel of several files is shared out by file
    lines = a9a.read_text().splitlines(keepends=True)
    channel = tmp_path / "channel"
    channel.mkdir()
    for i in range(3):
        (channel / f"part-{i}").write_text("".join(lines[i::3]))
    parts = [_rows(FileSource(channel, "libsvm", 124, labels="binary", shard=(r, 2)))
             for r in range(2)]
    assert parts[0] + parts[1] == whole


def _test_metrics(model_dir) -> dict:
    return json.loads((model_dir / "metrics.json").read_text())["test"]


def _two_sagemaker_hosts(tmp_path, epochs: int) -> list:
    """Two `fmkit sagemaker train` processes, each with its own /opt/ml and
    resourceconfig.json (algo-1, algo-2), on loopback; their stderr in ROOT/job.log."""
    import os
    import socket
    import subprocess

    from .conftest import fmkit_executable

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    a9a = shared_file("a9a_libsvm", "a9a").read_bytes()
    a9a_t = shared_file("a9a_libsvm", "a9a.t").read_bytes()
    hp = {"feature_dim": "124", "num_factors": "8", "predictor_type": "binary_classifier",
          "epochs": str(epochs), "mini_batch_size": "200"}
    channel = {"ContentType": "text/libsvm", "TrainingInputMode": "File",
               "S3DistributionType": "FullyReplicated"}
    processes = []
    for host in ("algo-1", "algo-2"):
        root = tmp_path / host
        (root / "input" / "config").mkdir(parents=True)
        (root / "input" / "config" / "hyperparameters.json").write_text(json.dumps(hp))
        (root / "input" / "config" / "inputdataconfig.json").write_text(json.dumps(
            {"train": channel, "test": channel}))
        (root / "input" / "config" / "resourceconfig.json").write_text(json.dumps(
            {"current_host": host, "hosts": ["algo-1", "algo-2"]}))
        for name, data in (("train", a9a), ("test", a9a_t)):
            (root / "input" / "data" / name).mkdir(parents=True)
            (root / "input" / "data" / name / "part-0").write_bytes(data)
        env = {**os.environ, "FMKIT_OPT_ML": str(root), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "NUMBA_NUM_THREADS": "1"}
        with open(root / "job.log", "w") as log:
            processes.append(subprocess.Popen([fmkit_executable(), "sagemaker", "train"],
                                              env=env, stdout=log, stderr=subprocess.STDOUT))
    return processes


def test_sagemaker_train_on_two_hosts_makes_one_model(tmp_path):
    processes = _two_sagemaker_hosts(tmp_path, epochs=2)
    codes = [p.wait(timeout=300) for p in processes]
    logs = [(tmp_path / host / "job.log").read_text() for host in ("algo-1", "algo-2")]
    assert codes == [0, 0], logs
    first = logs[0]
    assert re.findall(r"over (\d+) rows", first) == ["32561", "32561"]  # both hosts' shards
    auc = float(re.search(r"test auc <score>=([0-9.]+)", first).group(1))
    assert auc > 0.88
    assert (tmp_path / "algo-1" / "model" / "model_algo-1" / "model.json").is_file()
    assert not (tmp_path / "algo-2" / "model" / "model_algo-1").exists()  # one model


def test_stop_training_job_reaching_one_host_stops_both_and_the_first_writes(tmp_path):
    """SIGTERM reaches the hosts at their own moments; here only the second host (which
    writes nothing) gets it: both stop after the same step, the first writes the model trained
    so far, neither writes a failure."""
    import signal
    import time

    processes = _two_sagemaker_hosts(tmp_path, epochs=1000)
    log = tmp_path / "algo-1" / "job.log"
    deadline = time.monotonic() + 120
    while "epoch 2/1000: train loss" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.01)
    processes[1].send_signal(signal.SIGTERM)
    codes = [p.wait(timeout=120) for p in processes]
    logs = [(tmp_path / host / "job.log").read_text() for host in ("algo-1", "algo-2")]
    assert codes == [128 + signal.SIGTERM] * 2, logs
    assert "SIGTERM: the model trained so far" in logs[0] and "Traceback" not in "".join(logs)
    metrics = json.loads((tmp_path / "algo-1" / "model" / "model_algo-1" / "metrics.json")
                         .read_text())
    assert metrics["stopped"]["by"] == "SIGTERM" and metrics["stopped"]["epoch"] >= 2
    assert not any((tmp_path / host / "output" / "failure").exists()
                   for host in ("algo-1", "algo-2"))
    assert not (tmp_path / "algo-2" / "model" / "model_algo-1").exists()


def test_deepfm_on_two_processes_matches_one(tmp_path):
    from fmkit.data.movielens import join_ratings
    from fmkit.jobs.deepfm import train_deepfm
    from fmkit.models.deepfm import config_files

    from .conftest import REPO

    directory = shared_file("movielens_100k", "u.data").parent
    for split in ("ua.base", "ua.test"):
        join_ratings(directory, split, tmp_path / f"{split}.csv")
    example = REPO / "examples" / "deepfm_movielens.yaml"
    sets = [f"train_input_path={tmp_path / 'ua.base.csv'}",
            f"eval_input_path={tmp_path / 'ua.test.csv'}", "train_config.num_epochs=1"]
    _, one = train_deepfm(config_files.load(example, [*sets, f"model_dir={tmp_path / 'one'}"]),
                          progress=False)
    two = run_fmkit("train", "--nproc", "2", "--config", example,
                    *(f"--set={s}" for s in [*sets, f"model_dir={tmp_path / 'two'}"]))
    assert two.returncode == 0, two.stderr
    assert re.findall(r"epoch (\d)/1: train loss [0-9.]+ over (\d+) rows", two.stderr) == [
        ("1", "90570")]
    assert two.stderr.count("--nproc 2 starts every process on this machine") == 1
    m2 = _test_metrics(tmp_path / "two")
    print(f"MovieLens 100k DeepFM, 1 epoch: test AUC 1 process {one['test']['auc']:.4f}, "
          f"2 processes {m2['auc']:.4f}")
    assert abs(one["test"]["auc"] - m2["auc"]) < 0.01


def _errors(stderr: str) -> list[str]:
    """The lines of a 2-process run's stderr after its one-machine advice."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "WARNING" in lines[0] and "every process on this machine" in lines[0], lines[0]
    return lines[1:]


def test_a_failing_process_ends_the_run_with_one_line(tmp_path):
    """A malformed row on one process's shard, or a training file no process finds: one line
    says so, no traceback (neither the peer's lost collective nor torchrun's report), exit 1,
    no model."""
    lines = shared_file("a9a_libsvm", "a9a").read_text().splitlines(keepends=True)[:3000]
    bad = tmp_path / "bad.libsvm"
    bad.write_text("".join(lines) + "1 3:x\n")
    hp = ["feature_dim=124", "num_factors=4", "predictor_type=binary_classifier"]
    result = run_fmkit("train", "--nproc", "2", "--train", bad, "--quiet", *hp,
                       "mini_batch_size=100", "--model-dir", tmp_path / "m")
    assert result.returncode == 1
    assert _errors(result.stderr) == [f"fmkit: error: {bad}:3001: non-numeric value in '3:x'"]
    assert not (tmp_path / "m").exists()
    missing = tmp_path / "missing.libsvm"  # (each process looks for it)
    result = run_fmkit("train", "--nproc", "2", "--train", missing, "--quiet", *hp,
                       "--model-dir", tmp_path / "m")
    assert result.returncode == 1
    assert _errors(result.stderr) == [f"fmkit: error: {missing}: no such file or directory"]
    assert not (tmp_path / "m").exists()
    for count in ("0", "-2"):  # (0 trained on one process before)
        result = run_fmkit("train", "--nproc", count, "--train", bad, *hp,
                           "--model-dir", tmp_path / "m")
        assert result.returncode == 1 and result.stderr == (
            f"fmkit: error: --nproc must be >= 1, got {count}\n")


def _wait_until_connected(a: int, b: int, timeout: float = 60.0) -> None:
    """Until processes ``a`` and ``b`` hold a TCP connection to each other (their collectives'
    mesh, which the processes join after their imports: a process killed before that leaves
    its peer retrying in Gloo's own log lines, a start-up failure rather than the death in
    training a test means; under load the imports took longer than a fixed sleep)."""
    import time

    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            ours = psutil.Process(a).net_connections("tcp")
            theirs = {c.laddr.port for c in psutil.Process(b).net_connections("tcp")
                      if c.status == psutil.CONN_ESTABLISHED}
        except psutil.Error:
            ours, theirs = [], set()
        if any(c.status == psutil.CONN_ESTABLISHED and c.raddr and c.raddr.port in theirs
               for c in ours):
            return
        time.sleep(0.2)
    raise AssertionError(f"processes {a} and {b} not connected within {timeout} s")


def _worker_of_rank(launcher: int, rank: int, timeout: float = 60.0) -> int:
    """The pid of the training process of ``rank`` that ``fmkit train --nproc`` (pid
    ``launcher``) started through torchrun: a descendant whose environment holds RANK."""
    import time

    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in psutil.Process(launcher).children(recursive=True):
            try:
                if process.environ().get("RANK") == str(rank):
                    return process.pid
            except psutil.Error:  # (gone, or not yet readable)
                continue
        time.sleep(0.2)
    raise AssertionError(f"no training process of rank {rank} within {timeout} s")


def test_a_process_killed_by_a_signal_is_named_once(tmp_path):
    """SIGKILL (as the out-of-memory killer sends) of one of two processes: it cannot say
    anything, so the launch names it, once; its peer, ended by torchrun or losing its
    collective first, adds at most one line. Exit 1, no model."""
    import signal
    import subprocess
    import time

    from .conftest import fmkit_executable

    data = tmp_path / "a9a"
    data.write_text(shared_file("a9a_libsvm", "a9a").read_text() * 4)
    run = subprocess.Popen(
        [fmkit_executable(), "train", "--nproc", "2", "--quiet", "--train", str(data),
         "--model-dir", str(tmp_path / "m"), "feature_dim=124", "num_factors=4",
         "predictor_type=binary_classifier", "mini_batch_size=10", "epochs=1000"],
        stderr=subprocess.PIPE, text=True)
    victim = _worker_of_rank(run.pid, 0)
    _wait_until_connected(victim, _worker_of_rank(run.pid, 1))
    time.sleep(1.0)  # (into training)
    os.kill(victim, signal.SIGKILL)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 1
    errors = _errors(stderr)
    killed = "fmkit: error: process 0 was killed by SIGKILL"
    others = [line for line in errors if line != killed]
    assert errors.count(killed) == 1 and len(others) <= 1, stderr
    # (the peer loses its collective and says so; or, still compiling its kernels on a cold
    # cache, outlasts torchrun's 30 s between SIGTERM and SIGKILL, and the launch names that)
    assert all(line.startswith("fmkit: error: process 1: another training process stopped: ")
               or line == "fmkit: error: process 1 was killed by SIGKILL"
               for line in others), stderr
    assert not (tmp_path / "m").exists()


def test_deepfm_with_sample_weights_on_two_processes_equals_one(tmp_path):
    """Sample weights across processes: each step's gradient is the weighted sum over both
    processes' rows divided by both processes' summed weights. With one mini-batch per epoch
    (the batch holds every row), 2 processes must train the model 1 process trains, to float
    rounding; dividing by each process's own weights, or by rows, would not."""
    import numpy as np
    import yaml

    from fmkit.jobs.deepfm import train_deepfm
    from fmkit.models.base import load_model
    from fmkit.models.deepfm import config_files

    rng = np.random.default_rng(7)
    rows = [(rng.integers(20), rng.integers(20), rng.integers(2), rng.choice([0.5, 1, 3, 8]))
            for _ in range(300)]
    train = tmp_path / "channel"  # two files: each process reads one
    train.mkdir()
    for part in range(2):
        (train / f"part-{part}.csv").write_text("user,item,label,w\n" + "".join(
            f"{u},{i},{y},{w}\n" for u, i, y, w in rows[part::2]))
    document = {
        "train_input_path": str(train),
        "feature_configs": [
            {"id_feature": {"feature_name": f, "num_buckets": 20, "embedding_dim": 4}}
            for f in ("user", "item")],
        "model_config": {
            "feature_groups": [
                {"group_name": "wide", "group_type": "WIDE", "feature_names": ["user", "item"]},
                {"group_name": "deep", "feature_names": ["user", "item"]}],
            "deepfm": {"deep": {"hidden_units": [8]}, "wide_embedding_dim": 1}},
        "data_config": {"label_fields": ["label"], "with_header": True, "batch_size": 1000,
                        "sample_weight_fields": ["w"]},
        # plain SGD: its step scales with the gradient (Adam's and AdaGrad's first steps
        # would hide a wrong divisor)
        "train_config": {"num_epochs": 3, "sparse_optimizer": {"sgd_optimizer": {"lr": 0.5}},
                         "dense_optimizer": {"sgd_optimizer": {"lr": 0.5, "momentum": 0}}},
    }
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(document))
    one = train_deepfm(config_files.load(config, [f"model_dir={tmp_path / 'one'}"]),
                       progress=False)[0]
    two = run_fmkit("train", "--nproc", "2", "--config", config,
                    f"--set=model_dir={tmp_path / 'two'}")
    assert two.returncode == 0, two.stderr
    assert "over 300 rows" in two.stderr  # both processes' rows, each epoch
    grid = tmp_path / "grid.csv"
    grid.write_text("user,item,label,w\n" + "".join(f"{u},{i},0,1\n" for u in range(20)
                                                    for i in range(20)))
    batch = next(one.read(grid))
    expected, found = one.logits(batch), load_model(tmp_path / "two").logits(batch)
    assert np.abs(expected).max() > 0.05  # it trained: not a comparison of two initial models
    np.testing.assert_allclose(found, expected, rtol=1e-4, atol=1e-6)


def test_ffm_on_two_processes_equals_one(tmp_path):
    """A field-aware FM on ``--nproc 2``: with one mini-batch per epoch (the batch holds every
    row), each step's gradient is the mean over both processes' rows, so the two processes
    train the model one process trains, to float rounding — the number of fields found alike
    on both, every row read once per epoch. Row-wise AdaGrad: the processes' step must keep
    one sum per field vector, as one process's does."""
    import numpy as np

    from fmkit.jobs.fm import train_files
    from fmkit.models.fm.model import FMModel
    from fmkit.models.fm.planted import planted_ctr

    data = planted_ctr(1200, [15, 10, 8], num_factors=2, field_aware=True, seed=3)
    lines = data.libffm_lines()
    channel = tmp_path / "channel"  # two files of 400 and 800 rows: each process reads one,
    channel.mkdir()  # so averaging the processes' means instead of the rows' would show
    for part, rows in enumerate((lines[:400], lines[400:])):
        (channel / f"part-{part}.ffm").write_text("\n".join(rows) + "\n")
    hp = {"feature_dim": 33, "num_factors": 2, "predictor_type": "binary_classifier",
          "model_type": "ffm", "optimizer": "rowwise_adagrad", "mini_batch_size": 5000,
          "epochs": 3,
          "bias_lr": 0.5, "linear_lr": 0.5, "factors_lr": 0.5, "factors_init_sigma": 0.1}
    one, _ = train_files(hp, channel, tmp_path / "one", index_base=0, progress=False)
    two = run_fmkit("train", "--nproc", "2", "--train", channel, "--model-dir",
                    tmp_path / "two", "--index-base", "0", *(f"{k}={v}" for k, v in hp.items()))
    assert two.returncode == 0, two.stderr
    assert "over 1200 rows" in two.stderr
    assert two.stderr.count("--nproc 2 starts every process on this machine") == 1
    found = FMModel.load(tmp_path / "two")
    assert found.field_aware and found.num_fields == 3
    assert np.abs(one.params.V).max() > 0.1 and np.abs(one.params.w).max() > 0.01  # trained
    # float rounding: each step's gradient rows are float32 sums (the table's precision, as
    # MXNet's), of 1200 rows' terms on one process and of 400 and 800 on two, so each may
    # differ by up to 1200 * 2^-24 (7e-5) of its terms' absolute sum; row-wise AdaGrad's steps
    # at lr 0.5 carry that into the weights: 1e-4 over three steps. Dividing by each process's
    # rows instead of all of them moved w0 by 0.21 (tried).
    for name in ("w0", "w", "V"):
        np.testing.assert_allclose(getattr(found.params, name), getattr(one.params, name),
                                   rtol=1e-4, atol=1e-4)


def test_advice_is_given_once_and_the_launch_leaves_no_temporary_files(tmp_path):
    """SageMaker's defaults on a9a learn little beyond the positive rate (every process
    measures the same run): one warning, from rank 0. The temporary directory (TMPDIR) is as
    empty afterwards as before: neither the launch's scratch nor torchrun's log tree stay."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    result = run_fmkit("train", "--nproc", "2", "--quiet", "--train",
                       shared_file("a9a_libsvm", "a9a"), "--model-dir", tmp_path / "m",
                       "feature_dim=124", "num_factors=4", "predictor_type=binary_classifier",
                       env={**os.environ, "TMPDIR": str(scratch)})
    assert result.returncode == 0, result.stderr
    said = [line for line in result.stderr.splitlines() if "beyond the positive rate" in line]
    assert len(said) == 1, result.stderr
    assert list(scratch.iterdir()) == []
