"""Training checkpoints: the weights, the optimizer state and the position in the data.

A checkpoint is a directory ``step-<N>`` under the checkpoint directory holding ``arrays.npz``
(the training tables: weights and optimizer moments; numpy, read without pickle) and
``state.json`` (step, epoch, steps done in that epoch, the epoch's partial loss, the history,
the hyperparameters, what else the learner and the callbacks keep). It is written under a
temporary name and renamed, ``state.json`` last, so a run killed at any moment leaves the
previous checkpoint intact; the newest complete one is resumed. Resuming replays the same data
order (each epoch's order is seeded by the epoch, see :mod:`fmkit.train.engine`; the steps
already trained are read again but skipped), so a resumed run of a deterministic configuration
(mini-batches, or ``lock_free=0``) ends with the model an uninterrupted run ends with.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fmkit import files
from fmkit.errors import ArtifactError
from fmkit.logs import log

STATE_FILE = "state.json"
ARRAYS_FILE = "arrays.npz"


@dataclass
class TrainingState:
    """Everything a resumed run needs besides the data."""

    step: int
    epoch: int  # the epoch in progress (1-based)
    chunks_done: int  # steps of that epoch already trained
    rows: int  # rows of that epoch already trained
    loss_sum: float
    history: list[dict]
    hyperparameters: dict
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # what else the learner and callbacks keep (JSON)


def holds_checkpoints(path: Path) -> bool:
    """True if ``path`` holds only fmkit checkpoints (and their temporary siblings)."""
    return all(name.startswith(("step-", ".step.partial-", ".partial-"))
               for name in os.listdir(path))


@dataclass
class Checkpointer:
    """Writes a checkpoint every ``every_steps`` optimizer steps and/or ``every_seconds``
    seconds (checked between chunks), keeping the newest ``keep``."""

    directory: Path
    every_steps: int = 0
    every_seconds: float = 0.0
    keep: int = 2
    _last_step: int = 0
    _last_time: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.directory = files.guard_directory(self.directory, holds_checkpoints,
                                               "checkpoint directory")

    def due(self, step: int) -> bool:
        if self.every_steps and step - self._last_step >= self.every_steps:
            return True
        return bool(self.every_seconds) and time.monotonic() - self._last_time >= \
            self.every_seconds

    def save(self, state: TrainingState) -> Path:
        final = self.directory / f"step-{state.step:012d}"
        tmp = files.temporary_dir(self.directory / "step")
        try:
            with open(tmp / ARRAYS_FILE, "wb") as f:
                np.savez(f, **state.arrays)
                f.flush()
                os.fsync(f.fileno())
            meta = {k: v for k, v in vars(state).items() if k != "arrays"}
            with open(tmp / STATE_FILE, "w") as f:
                json.dump(meta, f)
                f.flush()
                os.fsync(f.fileno())
            if final.exists():
                shutil.rmtree(final)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._last_step, self._last_time = state.step, time.monotonic()
        for old in self.complete()[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def complete(self) -> list[Path]:
        """Finished checkpoints, oldest first."""
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.glob("step-*") if (p / STATE_FILE).is_file())

    def latest(self) -> TrainingState | None:
        """The newest complete checkpoint that reads, or None if there is none. An unreadable
        one (a copy cut short: SageMaker's upload of a checkpoint directory to S3 ends where
        the job did) is passed over for the one before, with a warning; if none reads, the
        newest's error is raised."""
        errors = []
        for path in reversed(self.complete()):
            try:
                meta = json.loads((path / STATE_FILE).read_text())
                with np.load(path / ARRAYS_FILE, allow_pickle=False) as npz:
                    arrays = {name: npz[name] for name in npz.files}
                state = TrainingState(**meta, arrays=arrays)
            except (OSError, ValueError, TypeError, EOFError, zipfile.BadZipFile) as e:
                errors.append(f"{path}: unreadable checkpoint: {e}")
                continue
            for error in errors:
                log.warning("%s; continuing from the one before", error)
            self._last_step = state.step
            return state
        if errors:
            raise ArtifactError(errors[0])
        return None


def channel_size(source: Any) -> dict[str, int] | None:
    """How many files and bytes a training source reads (through wrappers that keep the
    source they wrap as ``source``): what a resumed run must find again, since it skips the
    chunks the checkpoint had trained. None for rows not in files (arrays, pipes)."""
    while not hasattr(source, "files") and hasattr(source, "source"):
        source = source.source
    files = list(getattr(source, "files", None) or ())
    if not files or any(f.is_fifo() for f in files):
        return None
    return {"files": len(files), "bytes": sum(f.stat().st_size for f in files)}


def check_same_data(saved: dict[str, int] | None, now: dict[str, int] | None,
                    path: Path) -> None:
    """A checkpoint continues only on the training data it was taken on (by file count and
    size)."""
    if saved and now and saved != now:
        raise ArtifactError(
            f"{path}: the checkpoint was taken on {saved['files']} training file(s) of "
            f"{saved['bytes']:,} bytes; this run's are {now['files']} of {now['bytes']:,}: "
            "resume on the same training data")


def check_resumable(state: TrainingState, hp: dict[str, Any], path: Path) -> None:
    """A checkpoint continues only the training it was taken from."""
    keys = set(hp) | set(state.hyperparameters)
    changed = sorted(k for k in keys if k != "epochs"
                     and hp.get(k) != state.hyperparameters.get(k))
    if changed:
        data = (" (unless set, bias_init_value is fmkit's auto start, measured on the training "
                "labels: resume on the same training data)" if "bias_init_value" in changed
                else "")
        raise ArtifactError(f"{path}: the checkpoint was taken with other hyperparameters "
                            f"({', '.join(changed)}): resume with the same ones{data}")
