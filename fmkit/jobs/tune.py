"""``fmkit tune``: hyperparameter search with Optuna over the training jobs.

Each trial is one training run (:mod:`fmkit.jobs.searches`: an FM's hyperparameters, or a
DeepFM configuration's fields) with a validation channel: early stopping, watching the
objective, picks its epoch, and :class:`Pruning`, an engine callback, reports every epoch's
validation value to Optuna, whose median pruner stops trials that trail the others at the same
epoch. The sampler is TPE.

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
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fmkit import files
from fmkit.cpus import available_cpus
from fmkit.distributed import die_with_parent
from fmkit.errors import FMKitError, HyperparameterError, TrainingDiverged, require_option
from fmkit.files import OutputError
from fmkit.jobs.searches import TuneSettings, search_for
from fmkit.logs import advice, log
from fmkit.models import artifact
from fmkit.models.metrics import watched_metric
from fmkit.train.engine import Callback, EpochStats, Run

WORK_SUFFIX = ".tuning"
MARKER = "fmkit-tune.json"  # the settings a work directory's study was started with


@dataclass
class TuneResult:
    """The outcome of :func:`tune`: the best trial and where its model was written."""

    model_dir: Path
    best_value: float
    best_params: dict[str, Any]
    best_epoch: int
    trials: int
    # the best model's metrics.json (every epoch's): left out of the repr, which it swamped
    metrics: dict[str, Any] = field(default_factory=dict, repr=False)


class Pruning(Callback):
    """Reports each epoch's validation ``key`` to an Optuna trial and raises
    ``optuna.TrialPruned`` when the study's pruner says the trial trails the others.

    The pruner is shown the study's completed trials as they were at the trial's first
    report, read once rather than every epoch: ``Trial.should_prune`` read them from the
    SQLite study at each epoch, 8 ms, about an a9a epoch's own time, 200 times a Gibbs trial
    (docs/performance.md, session 49). One job decides exactly as ``should_prune`` would (no
    other trial completes meanwhile); with several, a trial is compared with the trials
    completed when it started to report."""

    name = "pruning"

    def __init__(self, trial: Any, key: str):
        self.trial, self.key = trial, key
        self.reported: dict[int, float] = {}
        self.completed: list | None = None

    def after_epoch(self, run: Run, stats: EpochStats) -> bool:
        import optuna

        if stats.validation is None:
            return False
        value = stats.validation[self.key]
        self.trial.report(value, stats.epoch)
        self.reported.setdefault(stats.epoch, value)  # (report keeps a step's first value)
        study = self.trial.study
        if self.completed is None:
            self.completed = study.get_trials(deepcopy=False,
                                              states=(optuna.trial.TrialState.COMPLETE,))
        so_far = optuna.trial.FrozenTrial(
            number=self.trial.number, state=optuna.trial.TrialState.RUNNING, value=None,
            datetime_start=None, datetime_complete=None, params={}, distributions={},
            user_attrs={}, system_attrs={}, intermediate_values=dict(self.reported),
            trial_id=self.trial.number)  # (pruners read its intermediate values only)
        if study.pruner.prune(_CompletedTrials(study, self.completed), so_far):
            raise optuna.TrialPruned(f"epoch {stats.epoch}")
        return False


class _CompletedTrials:
    """What a pruner reads of a study (``get_trials`` of completed trials, ``direction``),
    with the completed trials given rather than read from its storage."""

    def __init__(self, study: Any, completed: list):
        self.study, self.completed = study, completed

    def get_trials(self, deepcopy: bool = True, states: Any = None) -> list:
        return [t for t in self.completed if states is None or t.state in states]

    @property
    def direction(self) -> Any:
        return self.study.direction

    @property
    def directions(self) -> Any:
        return self.study.directions


def _import_optuna():
    try:
        import optuna
    except ImportError:
        raise HyperparameterError("fmkit tune needs Optuna: pip install 'fmkit[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # fmkit logs each trial itself
    return optuna


def _storage(work: Path):
    """The study's SQLite storage; a generous lock timeout, as several processes write it. A
    database another program holds or damaged is one error line, not a traceback."""
    optuna = _import_optuna()
    import sqlalchemy

    path = work / "study.sqlite3"
    try:
        return optuna.storages.RDBStorage(f"sqlite:///{path}",
                                          engine_kwargs={"connect_args": {"timeout": 60}})
    except sqlalchemy.exc.OperationalError as e:  # locked, or not openable
        raise HyperparameterError(f"{path}: cannot open the study database "
                                  f"({_first_line(e)}); another program may be using "
                                  "it") from None
    except sqlalchemy.exc.SQLAlchemyError as e:
        raise HyperparameterError(f"{path}: the study database is damaged ({_first_line(e)}); "
                                  f"remove {work} to start the study anew") from None


def _first_line(error: Exception) -> str:
    return str(error).splitlines()[0][:120]


def _require_readable(study: Path) -> None:
    """Refuse a finished study that SQLite cannot read before it is restored to continue:
    its copy would fail in the work directory, run after run."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{study}?mode=ro", uri=True)) as db:
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as e:
        raise HyperparameterError(f"{study}: the finished study is damaged ({_first_line(e)}); "
                                  f"remove it to start a new study") from None


def _objective_key(objective: str, predictor_type: str) -> tuple[str, bool]:
    try:
        return watched_metric(objective, predictor_type)
    except ValueError as e:
        raise HyperparameterError(f"--objective: {e}") from None


def _best(history: list[dict], key: str, higher: bool, last: bool = False
          ) -> tuple[int, float]:
    """The epoch early stopping kept (the first of the best validation values, or with
    ``last`` the last one) and its value."""
    best, epoch = None, history[-1]["epoch"]
    for h in history[-1:] if last else history:
        value = (h.get("validation") or {}).get(key)
        if value is not None and (best is None or (value > best if higher else value < best)):
            best, epoch = value, h["epoch"]
    if best is None:
        raise HyperparameterError("a trial measured no validation metrics")
    return epoch, float(best)


def _run_trial(trial: Any, work: Path, search: Any) -> float:
    import optuna

    key, higher = _objective_key(search.settings.objective, search.predictor_type)
    params = {d.name: d.suggest(trial) for d in search.dimensions()}
    scratch = work / "trials" / f"trial-{trial.number}"
    trial.set_user_attr("pid", os.getpid())
    started = time.perf_counter()
    try:
        metrics = search.train(params, work, scratch, callbacks=[Pruning(trial, key)])
    except TrainingDiverged as e:  # settings that diverge are pruned, not retried
        trial.set_user_attr("diverged", str(e))
        raise optuna.TrialPruned(str(e)) from None
    finally:
        trial.set_user_attr("seconds", round(time.perf_counter() - started, 3))
        shutil.rmtree(scratch, ignore_errors=True)
    epoch, value = _best(metrics["train"], key, higher, search.keeps_last(params))
    trial.set_user_attr("best_epoch", epoch)
    return value


@contextlib.contextmanager
def _work_cache(work: Path) -> Iterator[None]:
    """Parsed channels cached in the work directory, removed with it: the split's files are
    gone after the search, and an entry of theirs in the user's cache would stay forever."""
    saved = os.environ.get("FMKIT_CACHE_DIR")
    os.environ["FMKIT_CACHE_DIR"] = str(work / "cache")
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("FMKIT_CACHE_DIR", None)
        else:
            os.environ["FMKIT_CACHE_DIR"] = saved


@contextlib.contextmanager
def _trial_environment(work: Path, threads: int) -> Iterator[None]:
    """Trials parse each channel once (a binary cache in the work directory), run on
    ``threads`` threads and log only their summary line; all restored afterwards."""
    import numba

    saved = (numba.get_num_threads(), logging.getLogger("fmkit").level, advice.level)
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    logging.getLogger("fmkit").setLevel(logging.WARNING)
    advice.setLevel(logging.ERROR)  # a poor trial's advice is the search's to act on
    try:
        with _work_cache(work):
            yield
    finally:
        numba.set_num_threads(saved[0])
        logging.getLogger("fmkit").setLevel(saved[1])
        advice.setLevel(saved[2])


def _worker(work: str, trials: int, timeout: float | None, threads: int,
            child: bool = True, index: int = 0) -> None:
    """One process's share of the search: trials until the study holds ``trials`` finished
    ones (or ``timeout`` seconds), on ``threads`` threads, its sampler seeded with ``seed +
    index`` (so one job repeats its trials for the same arguments)."""
    if child:
        die_with_parent()
        try:
            _worker(work, trials, timeout, threads, child=False, index=index)
        except FMKitError as e:  # the parent reports it: one line, as for one process
            files.write_text(Path(work) / f"error-{os.getpid()}", str(e))
            sys.exit(1)
        return
    optuna = _import_optuna()
    work_dir = Path(work)
    search = search_for(TuneSettings(**json.loads((work_dir / MARKER).read_text())))
    study = optuna.load_study(study_name="fmkit", storage=_storage(work_dir),
                              sampler=_sampler(search.settings.seed + index),
                              pruner=_pruner())
    deadline = None if timeout is None else time.monotonic() + timeout
    with _trial_environment(work_dir, threads), open(work_dir / "claim", "a") as claim:
        # a trial at a time, started only while finished and running ones fall short of
        # ``trials``: with several jobs, Optuna's MaxTrialsCallback let each finish the trial
        # it was running (--trials 4 --jobs 2 finished 5). Counting and starting are one step
        # under a lock the jobs share, released once the new trial is in the study as
        # running: two jobs that counted at once both started one (6 trials asked, 7 run).
        while deadline is None or time.monotonic() < deadline:
            with _claiming(claim) as release:
                if _finished(study, running=True) >= trials:
                    break

                def objective(trial: Any) -> float:
                    release()  # (the trial is running in the study: the others count it)
                    return _run_trial(trial, work_dir, search)

                study.optimize(objective, n_trials=1, callbacks=[_log_trial],
                               gc_after_trial=False)


@contextlib.contextmanager
def _claiming(claim: Any) -> Iterator[Callable[[], None]]:
    """``claim`` locked (between processes) until the block ends or it calls the release it
    is given, whichever comes first."""
    fcntl.flock(claim, fcntl.LOCK_EX)
    held = [True]

    def release() -> None:
        if held[0]:
            held[0] = False
            fcntl.flock(claim, fcntl.LOCK_UN)

    try:
        yield release
    finally:
        release()


def _sampler(seed: int):
    optuna = _import_optuna()
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=10)


def _pruner():
    optuna = _import_optuna()
    return optuna.pruners.MedianPruner(n_startup_trials=8, n_warmup_steps=3)


def _finished(study: Any, running: bool = False) -> int:
    """Trials finished (complete or pruned): the ones ``--trials`` counts; with ``running``,
    also those running, which will be."""
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
              *((optuna.trial.TrialState.RUNNING,) if running else ()))
    return len(study.get_trials(deepcopy=False, states=states))


def _complete(study: Any) -> list:
    """The study's complete trials (not copied): the only ones ``best_value`` looks at (a
    pruned trial has a value too, e.g. one that diverged after its first epoch)."""
    import optuna

    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def _log_trial(study: Any, trial: Any) -> None:
    seconds = trial.user_attrs.get("seconds", 0.0)
    if trial.value is None:
        log.warning("trial %d %s after %.1f s", trial.number, trial.state.name.lower(), seconds)
        return
    best = study.best_value if _complete(study) else trial.value
    log.info("trial %d: %s %.6f at epoch %s in %.1f s (best %.6f)", trial.number,
             study.user_attrs.get("objective", "value"), trial.value,
             trial.user_attrs.get("best_epoch"), seconds, best)


def _read_marker(path: Path) -> dict[str, Any]:
    """The settings a study was started with, or one line saying the file is not ours."""
    try:
        started = json.loads(path.read_text())
    except (OSError, ValueError):
        started = None
    if not isinstance(started, dict):
        raise OutputError(path, "is not a settings file fmkit tune wrote; nothing was changed: "
                          "remove it or choose another --model-dir")
    return started


def _open_work_dir(model_dir: Path, settings: TuneSettings) -> tuple[Path, Any]:
    """The work directory of ``model_dir``'s study, locked for this run: created, or an
    unfinished one continued (its settings must be these), or restored from the study a
    finished tune left in ``MODEL_DIR/tune/``."""
    work = Path(str(model_dir) + WORK_SUFFIX)
    marker = work / MARKER
    wanted = asdict(settings)
    previous = model_dir / artifact.TUNE_DIR
    restore = (not marker.exists() and (previous / "study.sqlite3").exists()
               and (previous / MARKER).exists() and _read_marker(previous / MARKER) == wanted)
    if restore:
        _require_readable(previous / "study.sqlite3")
    if work.exists() and not marker.exists():  # ours only if a killed start left just a lock
        files.guard_directory(work, lambda p: set(os.listdir(p)) <= {"lock"},
                              "tune work directory")
    work.mkdir(parents=True, exist_ok=True)
    lock = open(work / "lock", "a")  # noqa: SIM115 (held until the tune ends)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise OutputError(work, "another fmkit tune is running on this study") from None
    if marker.exists():
        started = _read_marker(marker)
        if started != wanted:
            changed = sorted(k for k in wanted if started.get(k) != wanted[k])
            raise HyperparameterError(
                f"{work}: holds a study started with other settings ({', '.join(changed)}); "
                f"run with the same ones to continue it, or remove the directory")
    else:
        if restore:
            files.copy_file(previous / "study.sqlite3", work / "study.sqlite3")
        files.write_text(marker, json.dumps(wanted, indent=1))
    return work, lock


def _run_workers(work: Path, trials: int, timeout: float | None, jobs: int) -> None:
    threads = max(1, available_cpus() // jobs)
    if jobs == 1:
        _worker(str(work), trials, timeout, threads, child=False)
        return
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_worker, args=(str(work), trials, timeout, threads),
                               kwargs={"index": index}, daemon=True) for index in range(jobs)]
    for process in workers:
        process.start()
    for process in workers:
        process.join()
    failed = [p for p in workers if p.exitcode]
    if failed:
        reported = work / f"error-{failed[0].pid}"
        if reported.exists():
            raise FMKitError(reported.read_text())
        raise OutputError(work, f"a tune worker stopped with exit code {failed[0].exitcode}")


def _write_trials_csv(study: Any, path: Path) -> None:
    trials = study.get_trials(deepcopy=False)
    names = sorted({name for t in trials for name in t.params})
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["number", "state", "value", "best_epoch", "seconds", *names])
    for t in trials:
        writer.writerow([t.number, t.state.name, "" if t.value is None else t.value,
                         t.user_attrs.get("best_epoch", ""), t.user_attrs.get("seconds", ""),
                         *(t.params.get(name, "") for name in names)])
    files.write_text(path, out.getvalue())


def _write_plots(study: Any, directory: Path, objective: str) -> None:
    """The optimization history and the parameter importances as PNG files (needs
    matplotlib; without it, none)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        log.warning("matplotlib is not installed: tune writes no plots ('fmkit[report]')")
        return
    import optuna

    complete = _complete(study)
    if not complete:
        return
    higher = study.direction == optuna.study.StudyDirection.MAXIMIZE
    values = [t.value for t in complete]
    running = [max(values[: i + 1]) if higher else min(values[: i + 1])
               for i in range(len(values))]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.scatter([t.number for t in complete], values, s=12, label="trial")
    ax.step([t.number for t in complete], running, where="post", color="C1", label="best")
    ax.set(xlabel="trial", ylabel=objective, title="optimization history")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # (trials are numbered)
    ax.legend()
    fig.tight_layout()
    fig.savefig(directory / "optimization_history.png", dpi=100)
    plt.close(fig)
    if len(complete) >= 2:
        importances = optuna.importance.get_param_importances(study)
        fig, ax = plt.subplots(figsize=(6, 3.5))
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names])
        ax.set(xlabel="importance (fANOVA)", title="hyperparameter importance")
        fig.tight_layout()
        fig.savefig(directory / "param_importances.png", dpi=100)
        plt.close(fig)


def _absolute(path: str | Path | None) -> str | None:
    return None if path is None else str(Path(path).absolute())


def tune(train: str | Path | None, model_dir: str | Path, *, objective: str = "auto",
         trials: int = 50, validation: str | Path | None = None,
         validation_fraction: float | None = None, fixed: Mapping[str, Any] | None = None,
         config: str | Path | None = None, timeout: float | None = None,
         jobs: int | None = None, refit: bool = False, test: str | Path | None = None,
         fmt: str = "auto", index_base: str = "auto", seed: int = 0) -> TuneResult:
    """Search settings for ``objective`` (a validation metric: SageMaker's ``validation:rmse``,
    ``validation:binary_classification_accuracy``, ... or fmkit's ``validation:auc``; ``auto``:
    AUC, or RMSE for regressors) over ``trials`` finished trials; write the best model to
    ``model_dir`` (scoring ``test`` when given) with its trials table and plots in
    ``model_dir/tune/``. An FM: ``fixed`` holds the hyperparameters not searched
    (``feature_dim`` and ``predictor_type`` are required). A DeepFM: ``config`` is its
    configuration file, ``fixed`` its ``--set`` overrides (``path: YAML text``), ``train``
    replaces its ``train_input_path`` and ``validation`` its ``eval_input_path`` (each the
    configuration's when not given). ``jobs``: processes running trials at once (default:
    the usable cores)."""
    optuna = _import_optuna()
    if config is not None and (train is None or (validation is None
                                                 and validation_fraction is None)):
        from fmkit.models.deepfm.config_files import apply_overrides, load_document

        # the configuration's paths, after the --set fields, where the command gave none
        document = apply_overrides(load_document(config), [f"{k}={v}" for k, v in
                                                           (fixed or {}).items()])
        train = train or document.get("train_input_path")
        if validation_fraction is None:
            validation = validation or document.get("eval_input_path") or None
    if validation is not None and validation_fraction is not None:
        raise HyperparameterError("tune takes --validation FILE or --validation-fraction F, "
                                  "not both")
    if validation is None and validation_fraction is None:
        raise HyperparameterError("tune needs --validation FILE or --validation-fraction F"
                                  + (" (or a configuration's eval_input_path)" if config else ""))
    require_option(validation_fraction is None or 0 < validation_fraction < 1,
                   "--validation-fraction", "in (0, 1)", validation_fraction)
    require_option(trials >= 1, "--trials", ">= 1", trials)
    require_option(jobs is None or jobs >= 1, "--jobs", ">= 1", jobs)
    require_option(timeout is None or timeout > 0, "--timeout", "> 0 seconds", timeout)
    # (each worker's sampler is seeded with seed + its index)
    require_option(0 <= seed < 2**32 - 1024, "--seed", f"in 0..{2**32 - 1025}", seed)
    if not train:
        raise HyperparameterError("tune needs --train (or a configuration's train_input_path)")
    search = search_for(TuneSettings(_absolute(train), _absolute(validation),
                                     validation_fraction, objective, dict(fixed or {}), fmt,
                                     str(index_base), seed, _absolute(config)))
    settings = search.settings
    key, higher = _objective_key(objective, search.predictor_type)
    model_dir = artifact.check_destination(model_dir)
    jobs = jobs or available_cpus()
    created = not Path(str(model_dir) + WORK_SUFFIX).exists()
    work, lock = _open_work_dir(model_dir, settings)
    try:
        search.split(work)
        if created:
            search.check_split(work)
        study = optuna.create_study(
            study_name="fmkit", storage=_storage(work), load_if_exists=True,
            direction="maximize" if higher else "minimize", sampler=_sampler(seed),
            pruner=_pruner())
        study.set_user_attr("objective", f"validation:{key}")  # "auto" resolved
        first = search.first_trial()
        if first and not study.trials:
            study.enqueue_trial(first)
        for stale in study.get_trials(deepcopy=False,
                                      states=(optuna.trial.TrialState.RUNNING,)):
            study._storage.set_trial_state_values(stale._trial_id,
                                                  optuna.trial.TrialState.FAIL)
            log.info("trial %d was left running by a stopped tune: marked failed",
                     stale.number)
        log.info("tune: %d of %d trials done; %d process(es)", _finished(study), trials, jobs)
        _run_workers(work, trials, timeout, jobs)
        if not _complete(study):
            raise FMKitError(f"tune: no trial completed: each diverged or was pruned (the "
                             f"study is in {work}); fix a setting the search should not vary "
                             "as NAME=VALUE (e.g. optimizer=adam), or check the data")
        with _work_cache(work):
            result = _finish(study, work, model_dir, search, higher, refit, test)
    except BaseException:
        if created and not (work / "study.sqlite3").exists():
            shutil.rmtree(work, ignore_errors=True)  # stopped before any trial: leave nothing
        raise
    finally:
        lock.close()
    shutil.rmtree(work, ignore_errors=True)
    return result


def _finish(study: Any, work: Path, model_dir: Path, search: Any, higher: bool, refit: bool,
            test: str | Path | None) -> TuneResult:
    """The best trial's model in ``model_dir``; the trials, plots and study in its ``tune/``."""
    best = study.best_trial
    best_epoch = int(best.user_attrs["best_epoch"])
    objective = study.user_attrs["objective"]
    log.info("tune: best trial %d (%s %.6f, epoch %d); training the model%s", best.number,
             objective, best.value, best_epoch, " on all rows" if refit else "")
    metrics = search.train(best.params, work, model_dir, test=None if test is None else str(test),
                           refit_epochs=best_epoch if refit else None)
    out = model_dir / artifact.TUNE_DIR
    out.mkdir(exist_ok=True)
    _write_trials_csv(study, out / "trials.csv")
    _write_plots(study, out, objective)
    files.copy_file(work / "study.sqlite3", out / "study.sqlite3")
    files.copy_file(work / MARKER, out / MARKER)
    files.write_text(out / "best.json", json.dumps(
        {"trial": best.number, "objective": objective, "value": best.value,
         "higher_is_better": higher, "epoch": best_epoch,
         "settings": search.chosen(best.params), "refit": refit}, indent=1))
    return TuneResult(model_dir, float(best.value), dict(best.params), best_epoch,
                      len(study.trials), metrics)
