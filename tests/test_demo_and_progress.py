"""The embedded default (``fmkit demo``) and the progress bar's on/off rules."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios

from fmkit.demo import run_demo

from .conftest import fmkit_executable, run_fmkit, shared_file


def test_demo_fm_near_oracle_and_above_linear(capsys):
    results = run_demo(progress=False)  # exactly what `fmkit demo` runs
    out = capsys.readouterr().out
    with capsys.disabled():
        print("\n" + out)
    assert "oracle (planted model)" in out and "FM (k=8)" in out
    fm_auc, fm_loss = results["FM"]
    linear_auc, linear_loss = results["linear"]
    oracle_auc, oracle_loss = results["oracle"]
    assert fm_auc > oracle_auc - 0.015 and fm_loss < oracle_loss + 0.015
    assert fm_auc > linear_auc + 0.1 and fm_loss < linear_loss - 0.08


def test_the_demo_imports_neither_scikit_learn_nor_pytorch():
    """README's first command runs the demo: importing scikit-learn took 2 s of it (PyTorch,
    1.3 s, is for DeepFM and devices). What the demo runs is imported with it (its metrics are
    fmkit's own; test_demo_fm_near_oracle_and_above_linear runs it)."""
    program = ("import sys; import fmkit.cli, fmkit.demo, fmkit.jobs.training; "
               "print(sorted({'sklearn', 'torch'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=300)
    assert done.stdout.splitlines()[-1] == "[]", done.stdout + done.stderr


def test_demo_with_too_few_rows_is_one_line(cli):
    code, _, err = cli("demo", "--rows", "0")  # (a traceback from scikit-learn before)
    assert code == 1 and err == "fmkit: error: --rows must be >= 1,000 (the test AUC needs " \
        "rows of both labels), got 0\n"
    code, _, err = cli("demo", "--rows", "1000", "--seed", "-1")
    assert code == 1 and err == "fmkit: error: --seed must be in 0..2^63-1, got -1\n"


def _train_args(tmp_path):
    return ["train", "--train", str(shared_file("a9a_libsvm", "a9a.t")), "--model-dir",
            str(tmp_path / "m"), "feature_dim=123", "num_factors=4",
            "predictor_type=binary_classifier", "epochs=2"]


def test_progress_bar_only_on_a_terminal(tmp_path):
    piped = run_fmkit(*_train_args(tmp_path))
    assert piped.returncode == 0
    assert "loss=" not in piped.stderr and "\r" not in piped.stderr  # no tqdm bar
    assert "epoch 2/2: train loss" in piped.stderr

    def run_on_terminal(*extra: str) -> str:
        leader, follower = pty.openpty()
        # a real terminal has a size; tqdm draws nothing in a 0-column one
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
        proc = subprocess.Popen([fmkit_executable(), *_train_args(tmp_path), *extra],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=follower)
        os.close(follower)
        chunks = []
        while True:
            try:
                data = os.read(leader, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        proc.wait()
        os.close(leader)
        assert proc.returncode == 0
        return b"".join(chunks).decode("utf-8", "replace")

    terminal = run_on_terminal()
    assert " rows/s" in terminal and "loss=" in terminal and "\r" in terminal
    quiet = run_on_terminal("--quiet")
    assert "loss=" not in quiet and "epoch 2/2" not in quiet
