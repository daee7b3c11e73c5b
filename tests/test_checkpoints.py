"""Checkpoints: a run killed with SIGKILL after a checkpoint and resumed ends with the model an
uninterrupted run ends with; a checkpoint is never left half-written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from fmkit.train.checkpoint import Checkpointer, TrainingState

from .conftest import REPO, fmkit_executable, shared_file
from .deepfm_helpers import SMALL_CRITEO

HP = ["feature_dim=124", "num_factors=4", "predictor_type=binary_classifier", "epochs=4",
      "mini_batch_size=8", "optimizer=adam", "seed=5"]


@pytest.fixture(scope="module")
def channel(tmp_path_factory):
    """a9a split into 8 files: 8 chunks per epoch, so checkpoints fall inside epochs."""
    lines = shared_file("a9a_libsvm", "a9a").read_text().splitlines(keepends=True)
    directory = tmp_path_factory.mktemp("a9a8")
    for i in range(8):
        (directory / f"part-{i}").write_text("".join(lines[i::8]))
    return directory


def _weights(model_dir) -> dict:
    with np.load(model_dir / "weights.npz") as npz:
        return {name: npz[name] for name in npz.files}


def _processes_using(path) -> list[int]:
    """The processes whose command line names ``path``."""
    import psutil

    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        if str(path) in " ".join(process.info["cmdline"] or []):
            found.append(process.info["pid"])
    return found


def kill_resume_and_compare(tmp_path, cli, common: list, period: int, rtol: float,
                            resume_extra: tuple = (), sig: int = signal.SIGKILL,
                            straight=None) -> tuple[TrainingState, str]:
    """Train ``fmkit COMMON`` uninterrupted; train it again with checkpoints every ``period``
    steps in a subprocess, send ``sig`` to its whole process group (torchrun and its ranks, if
    any) as soon as a checkpoint exists, resume (with ``resume_extra`` arguments, which must
    not change the training); assert the two final models are equal. SIGKILL leaves no model;
    SIGTERM ends the run after a step with a checkpoint there and the model trained so far
    written (exit 143). Returns the checkpoint the run resumed from and the uninterrupted
    run's stderr. The uninterrupted and resumed runs are in-process (``cli``): only the
    interrupted one needs a process of its own. ``straight``: the model directory of an
    uninterrupted run made already (its stderr is then not returned)."""
    straight_err = ""
    if straight is None:
        straight = tmp_path / "straight"
        code, _, straight_err = cli(*common, "--model-dir", straight)
        assert code == 0, straight_err
    checkpoints = tmp_path / "checkpoints"
    args = [*common, "--model-dir", tmp_path / "resumed", "--checkpoint-dir", checkpoints,
            "--checkpoint-steps", str(period)]
    log = tmp_path / "interrupted.err"
    with open(log, "w") as stderr:  # (a file: a pipe nobody reads could stall the run)
        proc = subprocess.Popen([fmkit_executable(), *map(str, args)], stderr=stderr,
                                start_new_session=True)
    deadline = time.monotonic() + 120
    while not Checkpointer(checkpoints).complete() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "training finished before it could be killed"
    first = Checkpointer(checkpoints).latest()
    # a launch's scratch directory (--nproc), named by its process: the next launch removes
    # it when this one is killed
    scratch = list(Path(tempfile.gettempdir()).glob(f".fmkit-launch.*-{proc.pid}-*"))
    assert bool(scratch) == ("--nproc" in args), scratch
    os.killpg(proc.pid, sig)
    proc.wait(timeout=120)
    err = log.read_text()
    # torchrun's ranks run in sessions of their own: they must die with it, not train on as
    # orphans (and write the model later)
    deadline = time.monotonic() + 10
    while _processes_using(checkpoints) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _processes_using(checkpoints)
    state = Checkpointer(checkpoints).latest()
    assert state is not None
    if sig == signal.SIGKILL:
        assert not (tmp_path / "resumed").exists()
    else:  # stopped after a step: the model of that step written, a checkpoint taken there
        assert proc.returncode == 128 + sig, err
        assert "SIGTERM: the model trained so far" in err, err
        stopped = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
        last = stopped["train"][-1]
        assert stopped["stopped"] == {"by": "SIGTERM", "epoch": last["epoch"],
                                      "epoch_rows": last["rows"], "step": last["steps"]}
        assert state.step == last["steps"] > first.step and state.epoch == last["epoch"]
        assert state.rows == last["rows"]
        assert "test" not in stopped  # no time is spent scoring
    code, _, err = cli(*args, *resume_extra, "--resume")
    assert code == 0, err
    assert not any(path.exists() for path in scratch), scratch
    a, b = _weights(straight), _weights(tmp_path / "resumed")
    assert set(a) == set(b)
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=rtol, atol=1e-6, err_msg=name)
    return state, straight_err


def test_sigkill_then_resume_equals_an_uninterrupted_run(channel, tmp_path, cli):
    common = ["train", "--train", channel, "--index-base", "1", "--quiet", *HP]
    state, _ = kill_resume_and_compare(tmp_path, cli, common, 5000, 1e-5)
    assert 1 < state.epoch < 4
    print(f"killed; resuming from epoch {state.epoch}, chunk {state.chunks_done}, "
          f"step {state.step}")


def test_resume_refuses_other_hyperparameters(channel, tmp_path, cli):
    checkpoints = tmp_path / "c"
    code, _, err = cli("train", "--train", channel, "--index-base", "1", "--quiet", *HP[:3],
                       "epochs=1", *HP[4:], "--model-dir", tmp_path / "m", "--checkpoint-dir",
                       checkpoints, "--checkpoint-steps", "500")
    assert code == 0, err
    code, _, err = cli("train", "--train", channel, "--index-base", "1", "--quiet", *HP[:3],
                       "epochs=2", "mini_batch_size=16", "optimizer=adam", "seed=5",
                       "--model-dir", tmp_path / "m", "--checkpoint-dir", checkpoints, "--resume")
    assert code == 1 and "other hyperparameters (mini_batch_size)" in err
    other = tmp_path / "other.libsvm"  # other rows: another label mean, the auto bias start
    other.write_text("".join(line for line in (channel / "part-0").read_text().splitlines(
        keepends=True) if line.startswith("+1")))
    code, _, err = cli("train", "--train", other, "--index-base", "1", "--quiet", *HP[:3],
                       "epochs=1", *HP[4:], "--model-dir", tmp_path / "m", "--checkpoint-dir",
                       checkpoints, "--resume")
    assert code == 1 and "(bias_init_value)" in err and "the same training data" in err, err
    # the same settings on fewer files: the resumed run would skip chunks it never trained
    fixed = ["bias_init_method=constant", "bias_init_value=0"]
    code, _, err = cli("train", "--train", channel, "--index-base", "1", "--quiet", *HP[:3],
                       "epochs=1", *HP[4:], *fixed, "--model-dir", tmp_path / "f",
                       "--checkpoint-dir", tmp_path / "fc", "--checkpoint-steps", "500")
    assert code == 0, err
    fewer = tmp_path / "fewer"
    fewer.mkdir()
    for part in sorted(channel.iterdir())[1:]:
        (fewer / part.name).write_bytes(part.read_bytes())
    sizes = [sum(p.stat().st_size for p in d.iterdir()) for d in (channel, fewer)]
    code, _, err = cli("train", "--train", fewer, "--index-base", "1", "--quiet", *HP[:3],
                       "epochs=1", *HP[4:], *fixed, "--model-dir", tmp_path / "f",
                       "--checkpoint-dir", tmp_path / "fc", "--resume")
    assert code == 1 and (f"taken on 8 training file(s) of {sizes[0]:,} bytes; this run's are 7 "
                          f"of {sizes[1]:,}: resume on the same training data") in err, err
    for flag, value in (("--checkpoint-steps", "-3"), ("--checkpoint-seconds", "-5")):
        code, _, err = cli("train", "--train", channel, "--quiet", *HP, "--model-dir",
                           tmp_path / "n", "--checkpoint-dir", tmp_path / "d", flag, value)
        assert code == 1 and "must be >= 0" in err and not (tmp_path / "d").exists(), err


def test_resume_without_a_checkpoint_says_so_and_trains_from_the_start(channel, tmp_path,
                                                                       cli):
    """--resume where no checkpoint was taken (a first run of a command that always says
    --resume, or a mistyped directory): a warning, even with --quiet, then the run an
    uninterrupted one is (same weights)."""
    common = ["train", "--train", channel, "--index-base", "1", "--quiet", *HP[:3], "epochs=1",
              *HP[4:]]
    code, _, err = cli(*common, "--model-dir", tmp_path / "plain")
    assert code == 0 and err == "", err
    missing = tmp_path / "no-such-checkpoints"
    code, _, err = cli(*common, "--model-dir", tmp_path / "m", "--checkpoint-dir", missing,
                       "--resume")
    assert code == 0, err
    assert f"--resume: {missing} holds no complete checkpoint; training from the start" in err
    assert err.count("\n") == 1, err
    for name, array in _weights(tmp_path / "plain").items():
        np.testing.assert_array_equal(_weights(tmp_path / "m")[name], array)


def test_a_half_written_checkpoint_is_ignored(tmp_path):
    saver = Checkpointer(tmp_path, every_steps=1)
    saver.save(TrainingState(3, 1, 1, 10, 1.0, [], {"x": 1}, {"t": np.ones(3)}))
    broken = tmp_path / "step-000000000009"
    broken.mkdir()
    (broken / "arrays.npz").write_bytes(b"partial")  # no state.json: never completed
    assert saver.latest().step == 3


def test_an_unreadable_newest_checkpoint_is_passed_over_for_the_one_before(tmp_path, caplog):
    """A copy cut short (SageMaker's S3 upload ends with the job): the checkpoint before it is
    resumed, with a warning naming the broken one; none readable is an error."""
    from fmkit.errors import ArtifactError

    saver = Checkpointer(tmp_path, every_steps=1, keep=3)
    for step in (3, 6):
        saver.save(TrainingState(step, 1, 1, 10, 1.0, [], {"x": 1}, {"t": np.full(3, step)}))
    newest = tmp_path / "step-000000000006" / "arrays.npz"
    newest.write_bytes(newest.read_bytes()[:20])
    with caplog.at_level("WARNING", logger="fmkit"):
        state = Checkpointer(tmp_path).latest()
    assert state.step == 3 and state.arrays["t"].tolist() == [3, 3, 3]
    assert "step-000000000006: unreadable checkpoint" in caplog.text
    (tmp_path / "step-000000000003" / "state.json").write_text("{")
    with pytest.raises(ArtifactError, match="step-000000000006: unreadable checkpoint"):
        Checkpointer(tmp_path).latest()


def test_deepfm_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path, cli):
    train = shared_file("criteo_kaggle_head1000", "train.txt")
    common = ["train", "--config", REPO / "examples" / "deepfm_criteo.yaml", "--quiet",
              *SMALL_CRITEO,
              "--set", f"train_input_path={train}", "--set", "eval_input_path=",
              "--set", "train_config.num_epochs=6", "--set", "data_config.batch_size=32",
              "--set", "data_config.shuffle=true",
              "--set", "model_config.deepfm.deep.dropout_ratio=[0.2]",
              # the dense parameters' average and the dense gradients summed so far (a
              # checkpoint every 40 steps lands within a run of 3) are part of the checkpoint
              "--set", "train_config.dense_optimizer.ema.decay=0.99",
              "--set", "train_config.gradient_accumulation_steps=3"]
    # how the model will score (export_config) is not part of the run: it may change
    state, _ = kill_resume_and_compare(tmp_path, cli, common, 40, 1e-4, resume_extra=(
        "--set", "export_config.mixed_precision=BF16"))
    print(f"DeepFM killed; resuming from epoch {state.epoch}, batch {state.chunks_done}, "
          f"step {state.step}")


def test_two_process_run_killed_or_stopped_and_resumed_equals_an_uninterrupted_one(
        channel, tmp_path, cli):
    """SIGKILL, and SIGTERM, which reaches each process (and torchrun, which passes it on) at
    its own moment: the processes agree on the step to stop after, and rank 0 writes the
    model. Both resumed runs end as the uninterrupted one, which is also held to one process:
    each epoch sees every a9a row once (the shards are disjoint: tests/test_distributed.py)
    and its test metrics are those of the 1-process run to a stated tolerance."""
    hp = ["feature_dim=124", "num_factors=4", "predictor_type=binary_classifier", "epochs=2",
          "mini_batch_size=200", "optimizer=adam", "seed=5"]
    data = ["--train", channel, "--test", shared_file("a9a_libsvm", "a9a.t"), "--index-base",
            "1", *hp]
    code, _, err = cli("train", *data, "--quiet", "--model-dir", tmp_path / "one")
    assert code == 0, err
    common = ["train", "--nproc", "2", *data]
    (tmp_path / "killed").mkdir()
    state, _ = kill_resume_and_compare(tmp_path / "killed", cli, common, 100, 1e-5)
    print(f"2 processes killed; resuming from epoch {state.epoch}, step {state.step}")
    straight = tmp_path / "killed" / "straight"
    (tmp_path / "stopped").mkdir()
    state, _ = kill_resume_and_compare(tmp_path / "stopped", cli, common, 100, 1e-5,
                                       sig=signal.SIGTERM, straight=straight)
    print(f"2 processes stopped by SIGTERM; resuming from epoch {state.epoch}, "
          f"step {state.step}")
    one, two = (json.loads((directory / "metrics.json").read_text())
                for directory in (tmp_path / "one", straight))
    assert [epoch["rows"] for epoch in two["train"]] == [32561] * 2  # every row, every epoch
    m1, m2 = one["test"], two["test"]
    print(f"a9a, 2 epochs, batch 200: test AUC 1 process {m1['auc']:.4f}, 2 processes "
          f"{m2['auc']:.4f}")
    assert abs(m1["auc"] - m2["auc"]) < 0.005
    assert abs(m1["binary_classification_cross_entropy"]
               - m2["binary_classification_cross_entropy"]) < 0.01


def test_deepfm_two_process_run_killed_and_resumed_equals_an_uninterrupted_one(tmp_path, cli):
    train = shared_file("criteo_kaggle_head1000", "train.txt")
    common = ["train", "--nproc", "2", "--config", REPO / "examples" / "deepfm_criteo.yaml",
              "--quiet", *SMALL_CRITEO,
              "--set", f"train_input_path={train}", "--set", "eval_input_path=",
              "--set", "train_config.num_epochs=6", "--set", "data_config.batch_size=64",
              "--set", "data_config.shuffle=true",
              "--set", "train_config.dense_optimizer.ema.decay=0.99",
              "--set", "train_config.gradient_accumulation_steps=3"]
    state, _ = kill_resume_and_compare(tmp_path, cli, common, 20, 1e-4)
    print(f"DeepFM on 2 processes killed; resuming from epoch {state.epoch}, step {state.step}")


def test_a_validation_run_killed_and_resumed_equals_an_uninterrupted_one(channel, tmp_path,
                                                                         cli):
    """Early stopping's best epoch and its weights are in the checkpoint, so the resumed run
    keeps the model the uninterrupted one keeps."""
    hp = ["feature_dim=124", "num_factors=4", "predictor_type=binary_classifier", "epochs=10",
          "mini_batch_size=100", "optimizer=adam", "factors_lr=0.05", "seed=5",
          "early_stopping_patience=3"]
    common = ["train", "--train", channel, "--validation", shared_file("a9a_libsvm", "a9a.t"),
              "--index-base", "1", "--quiet", *hp]
    state, _ = kill_resume_and_compare(tmp_path, cli, common, 400, 1e-5)
    assert "early_stopping/table" in state.arrays or state.epoch == 1
    straight, resumed = (json.loads((tmp_path / name / "metrics.json").read_text())["train"]
                         for name in ("straight", "resumed"))
    assert [h["validation"] for h in resumed] == [h["validation"] for h in straight]


def test_a_device_run_killed_and_resumed_equals_an_uninterrupted_one(channel, tmp_path, cli):
    """The PyTorch path (here on the CPU device) checkpoints its weights and moments too."""
    hp = ["feature_dim=124", "num_factors=4", "predictor_type=binary_classifier", "epochs=5",
          "mini_batch_size=200", "optimizer=adam", "seed=5"]
    common = ["train", "--device", "cpu:0", "--train", channel, "--index-base", "1", "--quiet",
              *hp]
    kill_resume_and_compare(tmp_path, cli, common, 100, 1e-5)


def test_sigterm_writes_the_model_trained_so_far_and_resume_ends_as_an_uninterrupted_run(
        channel, tmp_path, cli):
    """SIGTERM (SageMaker's StopTrainingJob, a scheduler's time limit) ends the run after the
    step in progress: a checkpoint there, the model trained so far written (the best
    validation measurement's weights), exit 143; resuming ends with the model the
    uninterrupted run ends with."""
    hp = ["feature_dim=124", "num_factors=4", "predictor_type=binary_classifier", "epochs=10",
          "mini_batch_size=100", "optimizer=adam", "factors_lr=0.05", "seed=5",
          "early_stopping_patience=3"]
    common = ["train", "--train", channel, "--validation", shared_file("a9a_libsvm", "a9a.t"),
              "--test", shared_file("a9a_libsvm", "a9a.t"), "--index-base", "1", *hp]
    state, _ = kill_resume_and_compare(tmp_path, cli, common, 400, 1e-5, sig=signal.SIGTERM)
    print(f"SIGTERM; resumed from epoch {state.epoch}, step {state.step}")


def test_deepfm_sigterm_writes_the_model_and_resume_ends_as_an_uninterrupted_run(tmp_path,
                                                                                 cli):
    train = shared_file("criteo_kaggle_head1000", "train.txt")
    common = ["train", "--config", REPO / "examples" / "deepfm_criteo.yaml", *SMALL_CRITEO,
              "--set", f"train_input_path={train}", "--set", f"eval_input_path={train}",
              "--set", "train_config.num_epochs=8", "--set", "data_config.batch_size=32"]
    kill_resume_and_compare(tmp_path, cli, common, 40, 1e-4, sig=signal.SIGTERM)


def _one_more_epoch_equals_two(tmp_path, cli, train, hp: list) -> None:
    """Train ``hp`` for two epochs ("two"), one ("one"), and one more from "one" with
    --init-model ("more"): "more" has "two"'s weights, which differ from "one"'s."""
    for name, more in (("two", ["epochs=2"]), ("one", ["epochs=1"]),
                       ("more", ["epochs=1", "--init-model", tmp_path / "one"])):
        code, _, err = cli("train", "--train", train, "--model-dir", tmp_path / name, "--quiet",
                           *hp, *more)
        assert code == 0, err
    two, more = _weights(tmp_path / "two"), _weights(tmp_path / "more")
    assert not np.allclose(_weights(tmp_path / "one")["V"], two["V"])
    for name in two:
        np.testing.assert_allclose(more[name], two[name], rtol=1e-6, atol=1e-7, err_msg=name)


def test_init_model_then_one_epoch_equals_two_epochs_in_one_run(tmp_path, cli):
    """A continued model is trained on the data order the longer run has (each epoch's order
    is seeded by its number); plain SGD keeps no optimizer state, so the two are equal."""
    a9a = shared_file("a9a_libsvm", "a9a")
    hp = ["feature_dim=124", "num_factors=4", "predictor_type=binary_classifier",
          "mini_batch_size=50", "optimizer=sgd", "seed=3"]
    _one_more_epoch_equals_two(tmp_path, cli, a9a, hp)
    history = json.loads((tmp_path / "more" / "metrics.json").read_text())["train"]
    assert [h["epoch"] for h in history] == [1, 2]
    code, _, err = cli("train", "--train", a9a, "--model-dir", tmp_path / "other", *hp[:1],
                       "num_factors=5", *hp[2:], "--init-model", tmp_path / "one")
    assert code == 1 and "the model has num_factors=4, this run num_factors=5" in err
    assert not (tmp_path / "other").exists()


def test_an_ffm_continues_as_an_ffm_with_its_fields_and_never_as_an_fm(tmp_path, cli):
    """An FFM's weights hold a vector per field: it continues only as an FFM of as many fields
    (then as two epochs in one run, with SGD), and an FM never continues it or is continued by
    one: each refusal is one line, before anything is written."""
    rows = shared_file("criteo_xlearn_libffm", "small_train.txt").read_text().splitlines(True)
    train = tmp_path / "train.libffm"
    train.write_text("".join(rows[:2000]))
    hp = ["feature_dim=10000", "num_factors=4", "predictor_type=binary_classifier",
          "mini_batch_size=1", "optimizer=sgd", "seed=3"]
    _one_more_epoch_equals_two(tmp_path, cli, train, [*hp, "model_type=ffm"])
    code, _, err = cli("train", "--train", train, "--model-dir", tmp_path / "fm", "--quiet",
                       *hp, "epochs=1")
    assert code == 0, err
    for init, more, expected in (
            ("one", [], "the model has model_type=ffm, this run model_type=fm"),
            ("fm", ["model_type=ffm"], "the model has model_type=fm, this run model_type=ffm"),
            ("one", ["model_type=ffm", "num_fields=40"],
             "has num_fields=18, this run num_fields=40"),
    ):
        code, _, err = cli("train", "--train", train, "--model-dir", tmp_path / "other",
                           "--quiet", *hp, *more, "--init-model", tmp_path / init)
        assert code == 1 and expected in err and err.count("\n") == 1, err
        assert not (tmp_path / "other").exists()


def test_deepfm_init_model_then_one_epoch_equals_two_epochs_and_validation(tmp_path, cli):
    """DeepFM continues the same way (plain SGD, no momentum, no dropout: nothing but the
    weights carries over), from --init-model or from the configuration's
    train_config.fine_tune_checkpoint (TorchEasyRec's name); --validation is scored after
    every epoch."""
    train = shared_file("criteo_kaggle_head1000", "train.txt")
    common = ["train", "--config", REPO / "examples" / "deepfm_criteo.yaml", "--quiet",
              *SMALL_CRITEO,
              "--set", f"train_input_path={train}", "--set", "eval_input_path=",
              "--set", "data_config.shuffle=true",
              "--set", "train_config.sparse_optimizer={sgd_optimizer: {lr: 0.05}}",
              "--set", "train_config.dense_optimizer={sgd_optimizer: {lr: 0.01, momentum: 0}}"]
    for name, more in (("two", ["--set", "train_config.num_epochs=2"]),
                       ("one", ["--set", "train_config.num_epochs=1"]),
                       ("more", ["--set", "train_config.num_epochs=1",
                                 "--init-model", tmp_path / "one", "--validation", train]),
                       ("tuned", ["--set", "train_config.num_epochs=1", "--set",
                                  f"train_config.fine_tune_checkpoint={tmp_path / 'one'}"])):
        code, _, err = cli(*common, "--set", f"model_dir={tmp_path / name}", *more)
        assert code == 0, err
    two = _weights(tmp_path / "two")
    assert not all(np.allclose(_weights(tmp_path / "one")[n], two[n]) for n in two)
    for run in ("more", "tuned"):
        more = _weights(tmp_path / run)
        for name in two:
            np.testing.assert_allclose(more[name], two[name], rtol=1e-4, atol=1e-6,
                                       err_msg=f"{run}: {name}")
    history = json.loads((tmp_path / "more" / "metrics.json").read_text())["train"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[0]["validation"] is None and history[1]["validation"]["rows"] == 1000


def test_init_model_of_a_run_sigterm_stopped_says_it_continues_with_the_next_epoch(tmp_path,
                                                                                  cli):
    """The stopped model's last epoch is partial: continuing it numbers the next epoch after
    it, and the warning says how to finish that epoch instead."""
    train = ["train", "--train", shared_file("a9a_libsvm", "a9a.t"), "--index-base", "1",
             "--quiet", *HP[:3], "epochs=1", *HP[4:]]
    code, _, err = cli(*train, "--model-dir", tmp_path / "m")
    assert code == 0, err
    path = tmp_path / "m" / "metrics.json"
    metrics = json.loads(path.read_text())  # as a SIGTERM after 800 rows of epoch 1 leaves it
    metrics["train"][-1]["rows"] = 800
    metrics["stopped"] = {"by": "SIGTERM", "epoch": 1, "epoch_rows": 800, "step": 100}
    path.write_text(json.dumps(metrics))
    code, _, err = cli(*train, "--model-dir", tmp_path / "n", "--init-model", tmp_path / "m")
    assert code == 0, err
    assert ("its training was stopped by SIGTERM in epoch 1, after 800 of its rows; this run "
            "continues from its weights with the next epoch") in err, err
    history = json.loads((tmp_path / "n" / "metrics.json").read_text())["train"]
    assert [h["epoch"] for h in history] == [1, 2] and "stopped" not in json.loads(
        (tmp_path / "n" / "metrics.json").read_text())
