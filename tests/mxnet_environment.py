"""A virtual environment holding MXNet 1.9.1, the independent side of the SageMaker artifact
tests (tests/test_sagemaker_artifact.py). MXNet is retired and needs numpy < 1.24, so it
stays out of fmkit's own environment. It is made once for all xdist workers (the first under
a lock, the others wait and reuse it), on a thread started when the session starts: mostly a
download, it hardly competes with the tests for the CPU."""

from __future__ import annotations

import fcntl
import subprocess
import sys
import threading
from pathlib import Path

MXNET = ["mxnet==1.9.1", "numpy==1.23.5"]  # the last MXNet; its numpy must be older than 1.24


def _make_mxnet_venv(shared: Path) -> str | None:
    """Make (once for all xdist workers: the first under a lock, the others wait and reuse
    it) a virtual environment holding MXNet; None when it is ready, else why it failed."""
    venv = shared / "mxnet-venv"
    with open(shared / "mxnet-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (venv / "ready").exists():
            return None
        made = subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)],
                              capture_output=True, text=True)
        if made.returncode == 0:
            made = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                                   "--disable-pip-version-check", *MXNET],
                                  capture_output=True, text=True, timeout=900)
        if made.returncode != 0:
            return (made.stderr.strip().splitlines() or ["no message"])[-1]
        (venv / "ready").touch()
        return None


class MXNetEnvironment(threading.Thread):
    """:func:`_make_mxnet_venv` on a thread; ``failure`` says why it could not be made."""

    def __init__(self, shared: Path):
        super().__init__(daemon=True)
        self.shared, self.failure = shared, "not started"
        self.python = shared / "mxnet-venv" / "bin" / "python"

    def run(self) -> None:
        try:
            self.failure = _make_mxnet_venv(self.shared)
        except Exception as e:  # reported by the fixture, with the tests that need it
            self.failure = f"{type(e).__name__}: {e}"
