"""``fmkit tune``: hyperparameter search with Optuna over the FM training job.

Each trial is one :func:`fmkit.jobs.fm.train_files` run on the training channel with a
validation channel: early stopping (patience ``early_stopping_patience``, watching the
objective) picks its epoch, and :class:`Pruning`, an engine callback, reports every epoch's
validation value to Optuna, whose median pruner stops trials that trail the others at the same
epoch. The sampler is TPE. The space is SageMaker's tunable FM hyperparameters (learning
rates, weight decays, ``mini_batch_size``; their documented ranges narrowed to where training
moves at all) and fmkit's ``optimizer`` and ``num_factors``; ``NAME=VALUE`` fixes any of them.

The study lives in a SQLite file in a work directory beside the model directory
(``MODEL_DIR.tuning/``), so a killed tune run again with the same arguments continues it:
trials left running by the killed run are marked failed and do not count. ``jobs`` processes
run trials at once, each on ``cores / jobs`` threads. At the end the best trial's settings are
trained once more into the model directory (with ``refit``: on training + validation rows,
for the best trial's epoch count), the trials table (``tune/trials.csv``), the plots and the
study are copied into ``MODEL_DIR/tune/``, and the work directory is removed.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import logging
import math
import multiprocessing
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fmkit import files
from fmkit.cpus import available_cpus
from fmkit.errors import HyperparameterError, TrainingDiverged
from fmkit.files import OutputError
from fmkit.logs import log
from fmkit.models import artifact
from fmkit.models.fm.hyperparameters import OPTIMIZERS, validate
from fmkit.models.metrics import watched_metric
from fmkit.train.engine import Callback, EpochStats, Run

MAX_EPOCHS = 50  # a trial's epochs unless fixed: early stopping ends it sooner
WORK_SUFFIX = ".tuning"
MARKER = "fmkit-tune.json"  # the settings a work directory's study was started with


@dataclass(frozen=True)
class Dimension:
    """One searched hyperparameter: a log-uniform range, or a choice."""

    name: str
    low: float = 0.0
    high: float = 0.0
    integer: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=True)
        return trial.suggest_float(self.name, self.low, self.high, log=True)


# SageMaker documents 1e-8..512 for every learning rate and weight decay and 100..10000 for
# mini_batch_size; the rates below 1e-4 and decays above 1 never trained a usable model in
# the measurements of docs/quality.md, so the search spends no trials there.
FM_SPACE: tuple[Dimension, ...] = (
    Dimension("optimizer", choices=OPTIMIZERS),
    Dimension("num_factors", choices=(4, 8, 16, 32, 64)),
    Dimension("mini_batch_size", 100, 10_000, integer=True),
    Dimension("bias_lr", 1e-4, 1.0),
    Dimension("linear_lr", 1e-4, 1.0),
    Dimension("factors_lr", 1e-4, 1.0),
    Dimension("bias_wd", 1e-8, 1.0),
    Dimension("linear_wd", 1e-8, 1.0),
    Dimension("factors_wd", 1e-8, 1.0),
)


@dataclass
class TuneSettings:
    """What defines a study: a work directory's study continues only with the same."""

    train: str
    validation: str | None
    validation_fraction: float | None
    objective: str
    fixed: dict[str, Any]
    fmt: str = "auto"
    index_base: str = "auto"
    seed: int = 0


@dataclass
class TuneResult:
    """The outcome of :func:`tune`: the best trial and where its model was written."""

    model_dir: Path
    best_value: float
    best_params: dict[str, Any]
    best_epoch: int
    trials: int
    metrics: dict[str, Any] = field(default_factory=dict)


class Pruning(Callback):
    """Reports each epoch's validation ``key`` to an Optuna trial and raises
    ``optuna.TrialPruned`` when the pruner says the trial trails the others."""

    name = "pruning"

    def __init__(self, trial: Any, key: str):
        self.trial, self.key = trial, key

    def after_epoch(self, run: Run, stats: EpochStats) -> bool:
        import optuna

        if stats.validation is not None:
            self.trial.report(stats.validation[self.key], stats.epoch)
            if self.trial.should_prune():
                raise optuna.TrialPruned(f"epoch {stats.epoch}")
        return False


def _import_optuna():
    try:
        import optuna
    except ImportError:
        raise HyperparameterError("fmkit tune needs Optuna: pip install 'fmkit[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _storage(work: Path):
    """The study's SQLite storage; a generous lock timeout, as several processes write it."""
    optuna = _import_optuna()
    return optuna.storages.RDBStorage(f"sqlite:///{work / 'study.sqlite3'}",
                                      engine_kwargs={"connect_args": {"timeout": 60}})


def _objective_key(settings: TuneSettings) -> tuple[str, bool]:
    try:
        return watched_metric(settings.objective, settings.fixed["predictor_type"])
    except ValueError as e:
        raise HyperparameterError(f"--objective: {e}") from None


def _best_epoch(history: list[dict], key: str, higher: bool) -> int:
    """The epoch early stopping kept: the first of the best validation values."""
    best, epoch = None, history[-1]["epoch"]
    for h in history:
        value = (h.get("validation") or {}).get(key)
        if value is not None and (best is None or (value > best if higher else value < best)):
            best, epoch = value, h["epoch"]
    return epoch


def _trial_hyperparameters(trial: Any, settings: TuneSettings) -> dict[str, Any]:
    hp = {d.name: d.suggest(trial) for d in FM_SPACE if d.name not in settings.fixed}
    hp.update(settings.fixed)
    hp.setdefault("epochs", MAX_EPOCHS)
    hp.setdefault("early_stopping_metric", settings.objective)
    return hp


@dataclass
class Channels:
    """Where trials read: training and validation paths, their format and index base."""

    train: str
    validation: str
    fmt: str
    index_base: str | int


def _channels(work: Path, settings: TuneSettings) -> Channels:
    if settings.validation is not None:
        return Channels(settings.train, settings.validation, settings.fmt, settings.index_base)
    split = work / "split"  # libsvm in the training file's own index base (_split)
    return Channels(str(split / "train.libsvm"), str(split / "validation.libsvm"), "libsvm",
                    int((split / "index_base").read_text()))


def _run_trial(trial: Any, work: Path, settings: TuneSettings) -> float:
    import optuna

    from fmkit.jobs.fm import train_files

    key, _ = _objective_key(settings)
    hp = _trial_hyperparameters(trial, settings)
    channels = _channels(work, settings)
    scratch = work / "trials" / f"trial-{trial.number}"
    trial.set_user_attr("pid", os.getpid())
    started = time.perf_counter()
    try:
        _, metrics = train_files(hp, channels.train, scratch,
                                 validation_path=channels.validation, fmt=channels.fmt,
                                 index_base=channels.index_base, progress=False, cache=True,
                                 callbacks=[Pruning(trial, key)])
    except TrainingDiverged as e:  # settings that diverge are pruned, not retried
        trial.set_user_attr("diverged", str(e))
        raise optuna.TrialPruned(str(e)) from None
    finally:
        trial.set_user_attr("seconds", round(time.perf_counter() - started, 3))
        shutil.rmtree(scratch, ignore_errors=True)
    _, higher = _objective_key(settings)
    trial.set_user_attr("best_epoch", _best_epoch(metrics["train"], key, higher))
    return float(metrics["validation"][key])


@contextlib.contextmanager
def _trial_environment(work: Path, threads: int) -> Iterator[None]:
    """Trials parse each channel once (a binary cache in the work directory), run on
    ``threads`` threads and log only their summary line; all restored afterwards."""
    import numba

    saved = (os.environ.get("FMKIT_CACHE_DIR"), numba.get_num_threads(),
             logging.getLogger("fmkit").level)
    os.environ["FMKIT_CACHE_DIR"] = str(work / "cache")
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    logging.getLogger("fmkit").setLevel(logging.WARNING)
    try:
        yield
    finally:
        if saved[0] is None:
            os.environ.pop("FMKIT_CACHE_DIR", None)
        else:
            os.environ["FMKIT_CACHE_DIR"] = saved[0]
        numba.set_num_threads(saved[1])
        logging.getLogger("fmkit").setLevel(saved[2])


def _worker(work: str, trials: int, timeout: float | None, threads: int,
            child: bool = True) -> None:
    """One process's share of the search: trials until the study holds ``trials`` finished
    ones (or ``timeout`` seconds), on ``threads`` threads."""
    if child:
        _die_with_parent()
    optuna = _import_optuna()
    work_dir = Path(work)
    settings = TuneSettings(**json.loads((work_dir / MARKER).read_text()))
    study = optuna.load_study(study_name="fmkit", storage=_storage(work_dir),
                              sampler=_sampler(settings.seed + os.getpid()),
                              pruner=_pruner())
    done = optuna.study.MaxTrialsCallback(
        trials, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))
    if _finished(study) >= trials:
        return
    with _trial_environment(work_dir, threads):
        study.optimize(lambda trial: _run_trial(trial, work_dir, settings), timeout=timeout,
                       callbacks=[done, _log_trial], gc_after_trial=False)


def _die_with_parent() -> None:
    """Linux: this process gets SIGKILL when the tune that started it dies, so a killed tune
    leaves no worker behind to write the study while a restarted one runs."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _sampler(seed: int):
    optuna = _import_optuna()
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=10)


def _pruner():
    optuna = _import_optuna()
    return optuna.pruners.MedianPruner(n_startup_trials=8, n_warmup_steps=3)


def _finished(study: Any) -> int:
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def _log_trial(study: Any, trial: Any) -> None:
    seconds = trial.user_attrs.get("seconds", 0.0)
    if trial.value is None:
        log.warning("trial %d %s after %.1f s", trial.number, trial.state.name.lower(), seconds)
        return
    best = study.best_value if _finished(study) else trial.value
    log.info("trial %d: %s %.6f at epoch %s in %.1f s (best %.6f)", trial.number,
                study.user_attrs.get("objective", "value"), trial.value,
                trial.user_attrs.get("best_epoch"), seconds, best)


def _open_work_dir(model_dir: Path, settings: TuneSettings) -> tuple[Path, Any]:
    """The work directory of ``model_dir``'s study, locked for this run: created, or an
    unfinished one continued (its settings must be these), or restored from the study a
    finished tune left in ``MODEL_DIR/tune/``."""
    work = Path(str(model_dir) + WORK_SUFFIX)
    marker = work / MARKER
    if work.exists() and not marker.exists():  # ours only if a killed start left just a lock
        files.guard_directory(work, lambda p: set(os.listdir(p)) <= {"lock"},
                              "tune work directory")
    work.mkdir(parents=True, exist_ok=True)
    lock = open(work / "lock", "a")  # noqa: SIM115 (held until the tune ends)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise OutputError(work, "another fmkit tune is running on this study") from None
    wanted = asdict(settings)
    if marker.exists():
        started = json.loads(marker.read_text())
        if started != wanted:
            changed = sorted(k for k in wanted if started.get(k) != wanted[k])
            raise HyperparameterError(
                f"{work}: holds a study started with other settings ({', '.join(changed)}); "
                f"run with the same ones to continue it, or remove the directory")
    else:
        previous = model_dir / "tune"
        if ((previous / "study.sqlite3").exists() and (previous / MARKER).exists()
                and json.loads((previous / MARKER).read_text()) == wanted):
            shutil.copyfile(previous / "study.sqlite3", work / "study.sqlite3")
        _write_text(marker, json.dumps(wanted, indent=1))
    return work, lock


def _split(settings: TuneSettings, work: Path) -> None:
    """``--validation-fraction F``: the training channel's last F of rows become the
    validation channel (libsvm files in the work directory)."""
    import numpy as np
    import scipy.sparse as sp

    from fmkit.data import libsvm
    from fmkit.data.sources import FileSource
    from fmkit.jobs.fm import _index_base
    from fmkit.models.fm.model import label_mode

    split = work / "split"
    if (split / "validation.libsvm").exists():
        return
    hp = settings.fixed
    source = FileSource(settings.train, settings.fmt, hp["feature_dim"],
                        labels=label_mode(hp["predictor_type"]))
    source.index_base = base = _index_base(source, settings.index_base)
    rows = sum(batch.n_rows for batch in source.blocks())
    first = rows - int(math.floor(rows * settings.validation_fraction))
    if first <= 0 or first >= rows:
        raise HyperparameterError(f"--validation-fraction {settings.validation_fraction}: "
                                  f"leaves no training or no validation rows of {rows}")
    split.mkdir(exist_ok=True)
    seen = 0
    with files.output_stream(split / "train.libsvm") as head, \
            files.output_stream(split / "validation.libsvm.part") as tail:
        for batch in source.blocks():
            X = sp.csr_matrix((batch.values, batch.indices, batch.indptr),
                              shape=(batch.n_rows, hp["feature_dim"]))
            cut = int(np.clip(first - seen, 0, batch.n_rows))
            if cut:
                libsvm.write_libsvm(head, X[:cut], batch.labels[:cut], index_base=base)
            if cut < batch.n_rows:
                libsvm.write_libsvm(tail, X[cut:], batch.labels[cut:], index_base=base)
            seen += batch.n_rows
    (split / "index_base").write_text(str(base))
    os.replace(split / "validation.libsvm.part", split / "validation.libsvm")


def _run_workers(work: Path, trials: int, timeout: float | None, jobs: int) -> None:
    threads = max(1, available_cpus() // jobs)
    if jobs == 1:
        _worker(str(work), trials, timeout, threads, child=False)
        return
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_worker, args=(str(work), trials, timeout, threads),
                               daemon=True) for _ in range(jobs)]
    for process in workers:
        process.start()
    for process in workers:
        process.join()
    failed = [p.exitcode for p in workers if p.exitcode]
    if failed:
        raise OutputError(work, f"a tune worker stopped with exit code {failed[0]}")


def _write_text(path: Path, text: str) -> None:
    with files.output_stream(path) as out:
        out.write(text.encode())


def _write_trials_csv(study: Any, path: Path) -> None:
    trials = study.get_trials(deepcopy=False)
    names = [d.name for d in FM_SPACE if any(d.name in t.params for t in trials)]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["number", "state", "value", "best_epoch", "seconds", *names])
    for t in trials:
        writer.writerow([t.number, t.state.name, "" if t.value is None else t.value,
                         t.user_attrs.get("best_epoch", ""), t.user_attrs.get("seconds", ""),
                         *(t.params.get(name, "") for name in names)])
    _write_text(path, out.getvalue())


def _write_plots(study: Any, directory: Path, objective: str) -> list[str]:
    """The optimization history and the parameter importances as PNG files (needs
    matplotlib; without it, none)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: tune writes no plots ('fmkit[report]')")
        return []
    import optuna

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        return []
    higher = study.direction == optuna.study.StudyDirection.MAXIMIZE
    values = [t.value for t in complete]
    running = [max(values[: i + 1]) if higher else min(values[: i + 1])
               for i in range(len(values))]
    written = []
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.scatter([t.number for t in complete], values, s=12, label="trial")
    ax.step([t.number for t in complete], running, where="post", color="C1", label="best")
    ax.set(xlabel="trial", ylabel=objective, title="optimization history")
    ax.legend()
    fig.tight_layout()
    fig.savefig(directory / "optimization_history.png", dpi=100)
    plt.close(fig)
    written.append("optimization_history.png")
    if len(complete) >= 2:
        importances = optuna.importance.get_param_importances(study)
        fig, ax = plt.subplots(figsize=(6, 3.5))
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names])
        ax.set(xlabel="importance (fANOVA)", title="hyperparameter importance")
        fig.tight_layout()
        fig.savefig(directory / "param_importances.png", dpi=100)
        plt.close(fig)
        written.append("param_importances.png")
    return written


def _refit_channel(work: Path, settings: TuneSettings) -> str:
    """Training + validation rows as one channel: the training file itself after a
    ``--validation-fraction`` split, else a directory linking both files."""
    if settings.validation is None:
        return settings.train
    both = work / "refit"
    both.mkdir(exist_ok=True)
    for name, path in (("0-train", settings.train), ("1-validation", settings.validation)):
        link = both / name
        if not link.is_symlink():
            link.symlink_to(Path(path).absolute())
    return str(both)


def tune(train: str | Path, model_dir: str | Path, *, objective: str, trials: int,
         validation: str | Path | None = None, validation_fraction: float | None = None,
         fixed: Mapping[str, Any] | None = None, timeout: float | None = None,
         jobs: int | None = None, refit: bool = False, test: str | Path | None = None,
         fmt: str = "auto", index_base: str = "auto", seed: int = 0) -> TuneResult:
    """Search FM hyperparameters for ``objective`` (a validation metric: SageMaker's
    ``validation:rmse``, ``validation:binary_classification_accuracy``, ... or fmkit's
    ``validation:auc``) over ``trials`` finished trials; write the best model to
    ``model_dir`` (scoring ``test`` when given) with its trials table and plots in
    ``model_dir/tune/``. ``fixed``: hyperparameters not searched (``feature_dim`` and
    ``predictor_type`` are required). ``jobs``: processes running trials at once (default:
    the usable cores)."""
    optuna = _import_optuna()
    if (validation is None) == (validation_fraction is None):
        raise HyperparameterError("tune needs --validation FILE or --validation-fraction F")
    if validation_fraction is not None and not 0 < validation_fraction < 1:
        raise HyperparameterError(f"--validation-fraction must be in (0, 1), got "
                                  f"{validation_fraction}")
    if trials < 1:
        raise HyperparameterError(f"--trials must be >= 1, got {trials}")
    fixed = dict(fixed or {})
    for name in ("feature_dim", "predictor_type"):
        if name not in fixed:
            raise HyperparameterError(f"tune needs {name}=VALUE (it is not searched)")
    checked = validate({"num_factors": 8, **fixed})
    fixed = {name: checked[name] for name in fixed}  # typed: strings as SageMaker passes them
    settings = TuneSettings(str(Path(train).absolute()),
                            None if validation is None else str(Path(validation).absolute()),
                            validation_fraction, objective, fixed, fmt, str(index_base), seed)
    key, higher = _objective_key(settings)
    model_dir = artifact.check_destination(model_dir)
    jobs = jobs or available_cpus()
    work, lock = _open_work_dir(model_dir, settings)
    try:
        if validation_fraction is not None:
            _split(settings, work)
        study = optuna.create_study(
            study_name="fmkit", storage=_storage(work), load_if_exists=True,
            direction="maximize" if higher else "minimize", sampler=_sampler(seed),
            pruner=_pruner())
        study.set_user_attr("objective", objective)
        for stale in study.get_trials(deepcopy=False,
                                      states=(optuna.trial.TrialState.RUNNING,)):
            study._storage.set_trial_state_values(stale._trial_id,
                                                  optuna.trial.TrialState.FAIL)
            log.info("trial %d was left running by a stopped tune: marked failed",
                     stale.number)
        log.info("tune: %d of %d trials done; %d process(es)", _finished(study), trials, jobs)
        _run_workers(work, trials, timeout, jobs)
        if not [t for t in study.get_trials(deepcopy=False)
                if t.state == optuna.trial.TrialState.COMPLETE]:
            raise TrainingDiverged(0, "every trial (none completed: all diverged or pruned)")
        result = _finish(study, work, model_dir, settings, key, refit, test)
    finally:
        lock.close()
    shutil.rmtree(work, ignore_errors=True)
    return result


def _finish(study: Any, work: Path, model_dir: Path, settings: TuneSettings, key: str,
            refit: bool, test: str | Path | None) -> TuneResult:
    """The best trial's model in ``model_dir``; the trials, plots and study in its ``tune/``."""
    from fmkit.jobs.fm import train_files

    best = study.best_trial
    best_epoch = int(best.user_attrs["best_epoch"])
    hp = {**settings.fixed, **best.params}
    channels = _channels(work, settings)
    train, validation = channels.train, channels.validation
    if refit:
        hp["epochs"] = best_epoch
        train, validation = _refit_channel(work, settings), None
    else:
        hp.setdefault("epochs", MAX_EPOCHS)
        hp.setdefault("early_stopping_metric", settings.objective)
    log.info("tune: best trial %d (%s %.6f, epoch %d); training the model%s", best.number,
             settings.objective, best.value, best_epoch, " on all rows" if refit else "")
    _, metrics = train_files(hp, train, model_dir, validation_path=validation, test_path=test,
                             fmt=channels.fmt if validation else settings.fmt,
                             index_base=channels.index_base, progress=False)
    out = model_dir / "tune"
    out.mkdir(exist_ok=True)
    _write_trials_csv(study, out / "trials.csv")
    _write_plots(study, out, settings.objective)
    shutil.copyfile(work / "study.sqlite3", out / "study.sqlite3")
    shutil.copyfile(work / MARKER, out / MARKER)
    _write_text(out / "best.json", json.dumps(
        {"trial": best.number, "objective": settings.objective, "value": best.value,
         "higher_is_better": _objective_key(settings)[1], "epoch": best_epoch,
         "hyperparameters": hp, "refit": refit}, indent=1))
    return TuneResult(model_dir, float(best.value), dict(best.params), best_epoch,
                      len(study.trials), metrics)
