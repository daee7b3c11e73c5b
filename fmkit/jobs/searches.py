"""What ``fmkit tune`` searches, and how it trains one setting: :class:`FMSearch` (SageMaker's
hyperparameters, through :func:`fmkit.jobs.fm.train_files`) and :class:`DeepFMSearch`
(TorchEasyRec configuration fields, through :func:`fmkit.jobs.deepfm.train_deepfm`).

A search owns its space (:class:`Dimension`), the split of a training channel into training
and validation rows (``--validation-fraction``), and one training run of a trial's settings:
with validation and early stopping (a trial, or the final model), or for a fixed number of
epochs on every row (a refit). :mod:`fmkit.jobs.tune` runs the study around it.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fmkit import files
from fmkit.errors import HyperparameterError
from fmkit.jobs.training import keeps_last
from fmkit.logs import log
from fmkit.models.fm.hyperparameters import ALS, FFM_DEFAULTS, MCMC, OPTIMIZERS, validate
from fmkit.train.engine import Callback

FM_MAX_EPOCHS = 50  # a trial's epochs unless fixed: early stopping ends it sooner
DEEPFM_MAX_EPOCHS = 10
DEEPFM_PATIENCE = 2
UNSEEN_WARNING = 0.25  # share of validation rows with a feature unseen in training: warn


@dataclass(frozen=True)
class Dimension:
    """One searched setting: a log-uniform (or uniform) range, or a choice."""

    name: str
    low: float = 0.0
    high: float = 0.0
    integer: bool = False
    choices: tuple[Any, ...] = ()
    log: bool = True

    def suggest(self, trial: Any) -> Any:
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)


@dataclass
class TuneSettings:
    """What defines a study: a work directory's study continues only with the same. ``fixed``
    holds FM hyperparameters, or for a DeepFM ``config`` its ``--set`` overrides."""

    train: str
    validation: str | None
    validation_fraction: float | None
    objective: str
    fixed: dict[str, Any]
    fmt: str = "auto"
    index_base: str = "auto"
    seed: int = 0
    config: str | None = None


def _refit_channel(work: Path, settings: TuneSettings) -> str:
    """Training and validation rows as one channel: the training file itself when the
    validation rows were split from it, else a directory linking both files."""
    if settings.validation is None:
        return settings.train
    both = work / "refit"
    both.mkdir(exist_ok=True)
    for name, path in (("0-train", settings.train), ("1-validation", settings.validation)):
        link = both / name
        if not link.is_symlink():
            link.symlink_to(Path(path).absolute())
    return str(both)


def require_both_labels(settings: TuneSettings, predictor_type: str, labels: set) -> None:
    """A classifier's validation rows of one label (the last rows of a file sorted by
    label) are refused before any trial: AUC, and so the search, cannot judge them."""
    if predictor_type == "binary_classifier" and len(labels) == 1:
        where = (f"--validation {settings.validation}" if settings.validation_fraction is None
                 else f"the last {settings.validation_fraction:g} of {settings.train}'s rows "
                 "(--validation-fraction)")
        raise HyperparameterError(
            f"tune: every validation row has the label {labels.pop():g} ({where}): a "
            "classifier's search needs both labels there; if the file is sorted by label, "
            "shuffle it first (shuf), or give --validation")


def _validation_rows(rows: int, fraction: float) -> int:
    tail = int(math.floor(rows * fraction))
    if tail <= 0 or tail >= rows:
        raise HyperparameterError(f"--validation-fraction {fraction}: leaves no training or no "
                                  f"validation rows of {rows}")
    return tail


# -- FM ----------------------------------------------------------------------------------------

# One learning rate and one weight decay for the bias, linear and factor groups, as the peers'
# single-optimizer setups have them: with separate rates, a validation channel that cannot
# reward the factors (new users, as in MovieLens' last rows) lets the search switch them off
# for free (docs/quality.md). SageMaker documents 1e-8..512 for every rate and decay and
# 100..10000 for mini_batch_size; rates below 1e-4 and decays above 1 never trained a usable
# model in those measurements, so the search spends no trials there.
COUPLED = {"learning_rate": ("bias_lr", "linear_lr", "factors_lr"),
           "weight_decay": ("bias_wd", "linear_wd", "factors_wd")}
FM_SPACE: tuple[Dimension, ...] = (
    Dimension("optimizer", choices=OPTIMIZERS),
    Dimension("num_factors", choices=(4, 8, 16, 32, 64)),
    Dimension("mini_batch_size", 100, 10_000, integer=True),
    Dimension("learning_rate", 1e-4, 1.0),
    Dimension("weight_decay", 1e-8, 1.0),
)
# A field-aware FM learns best a row per step with its rows scaled (docs/quality.md): its
# batches start at 1, and its trials keep the row scaling and AdaGrad's starting sums of its
# defaults (FFM_DEFAULTS) unless fixed.
FFM_SPACE = tuple(Dimension("mini_batch_size", 1, 10_000, integer=True)
                  if d.name == "mini_batch_size" else d for d in FM_SPACE)
# Gibbs sampling (optimizer=mcmc, fixed) has no rates, decays or batches: the factor count and
# the factors' starting spread are what libFM's MCMC users set. Its trials sample its own
# epochs (MCMC_DEFAULTS: MCMC_EPOCHS sweeps, not stopped early).
MCMC_SPACE: tuple[Dimension, ...] = (
    Dimension("num_factors", choices=(4, 8, 16, 32, 64)),
    Dimension("factors_init_sigma", 0.01, 1.0),
)
# ALS (optimizer=als, fixed) has no rates or batches: its L2 weights on the sum of squared
# errors (libFM's -regular, fastFM's l2_reg_w and l2_reg_V), the factor count and the start;
# its sweeps are stopped early.
ALS_SPACE: tuple[Dimension, ...] = (
    *MCMC_SPACE,
    Dimension("linear_wd", 1e-3, 100.0),
    Dimension("factors_wd", 1e-3, 100.0),
)
SWEEP_SPACES = {MCMC: MCMC_SPACE, ALS: ALS_SPACE}  # a trial's space with that optimizer fixed


class FMSearch:
    """FM hyperparameters; ``settings.fixed`` holds the ones not searched."""

    def __init__(self, settings: TuneSettings):
        for name in ("feature_dim", "predictor_type"):
            if name not in settings.fixed:
                raise HyperparameterError(f"tune needs {name}=VALUE (it is not searched)")
        checked = validate({"num_factors": 8, **settings.fixed})
        # typed: strings as SageMaker passes them
        settings.fixed = {name: checked[name] for name in settings.fixed}
        self.settings = settings
        self.predictor_type = checked["predictor_type"]

    def dimensions(self) -> list[Dimension]:
        """The dimensions the fixed values leave open (a coupled one while any of its names
        is)."""
        fixed = self.settings.fixed
        space = FFM_SPACE if fixed.get("model_type") == "ffm" else FM_SPACE
        space = SWEEP_SPACES.get(fixed.get("optimizer"), space)
        return [d for d in space
                if any(name not in fixed for name in COUPLED.get(d.name, (d.name,)))]

    def first_trial(self) -> dict[str, Any]:
        """What the study tries first: an FFM's defaults (xLearn's settings, which a search
        of a few tens of trials does not find by chance: docs/quality.md), so the tune never
        ends below them on validation; nothing for an FM."""
        if self.settings.fixed.get("model_type") != "ffm":
            return {}
        start = {"optimizer": FFM_DEFAULTS["optimizer"], "num_factors": 8,
                 "mini_batch_size": FFM_DEFAULTS["mini_batch_size"],
                 "learning_rate": FFM_DEFAULTS["factors_lr"],
                 "weight_decay": FFM_DEFAULTS["factors_wd"]}
        return {d.name: start[d.name] for d in self.dimensions()}

    def chosen(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """A trial's ``params`` as FM hyperparameters (coupled ones spread over their names),
        the fixed values taking precedence."""
        hp: dict[str, Any] = {}
        for name, value in params.items():
            for target in COUPLED.get(name, (name,)):
                hp[target] = value
        hp.update(self.settings.fixed)
        if hp.get("model_type") == "ffm":
            kept = ["instance_norm"] + (["initial_accumulator_value"]
                                        if "adagrad" in hp.get("optimizer", "") else [])
            hp = {**{name: FFM_DEFAULTS[name] for name in kept}, **hp}
        return hp

    def keeps_last(self, params: Mapping[str, Any]) -> bool:
        """Whether a trial's model is its last epoch's, not its best measurement's
        (:func:`fmkit.jobs.training.keeps_last`)."""
        return keeps_last(validate({"num_factors": 8, **self.chosen(params)}))

    def _channels(self, work: Path) -> tuple[str, str, str, str | int]:
        """(training, validation, format, index base) of the trials."""
        s = self.settings
        if s.validation is not None:
            return s.train, s.validation, s.fmt, s.index_base
        split = work / "split"  # see split(): the format and index base it wrote
        return (str(split / "train.data"), str(split / "validation.data"),
                (split / "format").read_text(), int((split / "index_base").read_text()))

    def check_split(self, work: Path) -> None:
        """Warn when many validation rows hold a feature no training row has: the last rows
        of a file sorted by user, say, are users training never saw. The search then judges
        what a model does with those features' starting values, not what it learned, and
        favours settings that ignore them (docs/quality.md, "What the search space is")."""
        import numpy as np

        from fmkit.data.sources import FileSource
        from fmkit.jobs.fm import resolve_index_base

        train, validation, fmt, base = self._channels(work)
        d = self.settings.fixed["feature_dim"]
        source = FileSource(train, fmt, d)
        source.index_base = base = resolve_index_base(source, base)
        seen = np.zeros(d, bool)
        for batch in source.blocks():
            seen[batch.indices] = True
        rows = cold = 0
        example = None
        labels: set[float] = set()
        for batch in FileSource(validation, fmt, d, base).blocks():
            labels.update(np.unique(batch.labels).tolist()[:2])
            unseen = ~seen[batch.indices]
            row_of = np.repeat(np.arange(batch.n_rows), np.diff(batch.indptr))
            cold += np.unique(row_of[unseen]).size
            rows += batch.n_rows
            if example is None and unseen.any():
                example = int(batch.indices[unseen][0]) + base
        require_both_labels(self.settings, self.predictor_type, labels)
        if rows and cold / rows >= UNSEEN_WARNING:
            log.warning("tune: %d of %d validation rows (%.0f%%) hold a feature no training row "
                        "has (e.g. feature %d): the search will favour settings that ignore "
                        "such features. If the validation rows should be like the training "
                        "rows (a file sorted by user, say), shuffle the file or give "
                        "--validation", cold, rows, 100 * cold / rows, example)

    def split(self, work: Path) -> None:
        """``--validation-fraction F``: the training channel's last F of rows become the
        validation channel. A text file is cut between its lines, as written (fields, index
        base, comments kept); other channels (recordIO, directories) are written as libsvm in
        the channel's index base (an FFM's fields need a libffm file)."""
        from fmkit.data.sources import FileSource
        from fmkit.jobs.fm import resolve_index_base
        from fmkit.models.fm.model import label_mode

        s, split = self.settings, work / "split"
        if s.validation_fraction is None or (split / "validation.data").exists():
            return
        source = FileSource(s.train, s.fmt, s.fixed["feature_dim"],
                            labels=label_mode(self.predictor_type))
        source.require_rereadable("--validation-fraction reads it twice; give a file")
        source.index_base = base = resolve_index_base(source, s.index_base)
        rows = sum(batch.n_rows for batch in source.blocks())
        first = rows - _validation_rows(rows, s.validation_fraction)
        split.mkdir(exist_ok=True)
        if len(source.files) == 1 and source.fmt in ("libsvm", "libffm", "csv"):
            self._split_lines(source, first, split)
            fmt = source.fmt
        else:
            if s.fixed.get("model_type") == "ffm":
                raise HyperparameterError("--validation-fraction keeps an FFM's fields from "
                                          "one libffm file; give --validation for this channel")
            self._split_rows(source, first, split, base)
            fmt = "libsvm"
        files.write_text(split / "index_base", str(base))
        files.write_text(split / "format", fmt)
        os.replace(split / "validation.part", split / "validation.data")

    @staticmethod
    def _split_lines(source: Any, first: int, split: Path) -> None:
        """Lines before row ``first``'s line to the training part, the rest to validation."""
        from fmkit.data.blocks import open_input

        seen, cut = 0, None
        for batch in source.blocks():
            if first < seen + batch.n_rows:
                cut = int(batch.lines[first - seen])
                break
            seen += batch.n_rows
        with open_input(source.files[0]) as f, \
                files.output_stream(split / "train.data") as head, \
                files.output_stream(split / "validation.part") as tail:
            for number, line in enumerate(f, start=1):
                (head if number < cut else tail).write(line)

    def _split_rows(self, source: Any, first: int, split: Path, base: int) -> None:
        """Rows before ``first`` to the training part, the rest to validation, as libsvm."""
        import numpy as np

        from fmkit.data import libsvm

        d, seen = self.settings.fixed["feature_dim"], 0
        with files.output_stream(split / "train.data") as head, \
                files.output_stream(split / "validation.part") as tail:
            for batch in source.blocks():
                X = batch.matrix(d)
                cut = int(np.clip(first - seen, 0, batch.n_rows))
                if cut:
                    libsvm.write_libsvm(head, X[:cut], batch.labels[:cut], index_base=base)
                if cut < batch.n_rows:
                    libsvm.write_libsvm(tail, X[cut:], batch.labels[cut:], index_base=base)
                seen += batch.n_rows

    def train(self, params: Mapping[str, Any], work: Path, model_dir: Path, *,
              refit_epochs: int | None = None, callbacks: Sequence[Callback] = (),
              test: str | None = None) -> dict[str, Any]:
        """Train ``params`` into ``model_dir``: with validation and early stopping, or (with
        ``refit_epochs``) for that many epochs on training + validation rows."""
        from fmkit.jobs.fm import train_files

        s = self.settings
        hp = self.chosen(params)
        train, validation, fmt, index_base = self._channels(work)
        if refit_epochs:
            hp["epochs"] = refit_epochs
            fmt, validation, train = s.fmt, None, _refit_channel(work, s)
        else:
            hp.setdefault("early_stopping_metric", s.objective)
            if hp.get("optimizer") != MCMC:  # (mcmc: its sweeps, not stopped early)
                hp.setdefault("epochs", FM_MAX_EPOCHS)
        _, metrics = train_files(hp, train, model_dir, validation_path=validation,
                                 test_path=test, fmt=fmt, index_base=index_base,
                                 progress=False, cache=True, callbacks=callbacks)
        return metrics


# -- DeepFM ------------------------------------------------------------------------------------

HIDDEN_UNITS = ("64-32", "128-64", "256-128", "256-128-64", "512-256-128")
DEEPFM_SPACE: tuple[Dimension, ...] = (
    Dimension("sparse_lr", 1e-3, 0.5),
    Dimension("dense_lr", 1e-4, 1e-2),
    Dimension("embedding_dim", choices=(4, 8, 16, 32)),
    Dimension("hidden_units", choices=HIDDEN_UNITS),
    Dimension("dropout", 0.0, 0.5, log=False),
)


# the configuration fields each DeepFM dimension sets ("*": any name, "[*]": any index); a
# --set of one of them, or of a section holding them, fixes the dimension
DEEPFM_FIELDS = {"sparse_lr": "train_config.sparse_optimizer.*.lr",
                 "dense_lr": "train_config.dense_optimizer.*.lr",
                 "embedding_dim": "feature_configs[*].*.embedding_dim",
                 "hidden_units": "model_config.deepfm.deep.hidden_units",
                 "dropout": "model_config.deepfm.deep.dropout_ratio"}


def _path_parts(path: str) -> list[str]:
    return [part for part in re.split(r"\.|(?=\[)", path) if part]


def _sets(path: str, pattern: str) -> bool:
    """Whether a ``--set`` of ``path`` sets the fields ``pattern`` names (or a section
    holding them)."""
    parts, wanted = _path_parts(path), _path_parts(pattern)
    return len(parts) <= len(wanted) and all(
        part == want or (want == "*" and not part.startswith("["))
        or (want == "[*]" and part.startswith("[")) for part, want in zip(parts, wanted))


class DeepFMSearch:
    """A DeepFM configuration's learning rates, embedding width, deep layers and dropout,
    those the fixed ``--set`` overrides (``settings.fixed``, applied first) leave open."""

    def __init__(self, settings: TuneSettings):
        from fmkit.data import columns
        from fmkit.models.deepfm import config as configs
        from fmkit.models.deepfm import config_files
        from fmkit.models.deepfm.model import predictor_type

        self.settings = settings
        # the file with the fixed --set overrides applied, read once; trials copy it
        self.base = config_files.apply_overrides(config_files.load_document(settings.config),
                                                 [f"{k}={v}" for k, v in settings.fixed.items()])
        self.config = configs.parse(self._document({}))
        config_files.check_features(self.config)  # before the study starts (a trial's
        # training checks it again, as every training does)
        self.predictor_type = predictor_type(self.config)
        if settings.validation_fraction is not None and (
                self.config.data_config.dataset_type != "CsvDataset"
                or columns.is_parquet(settings.train)):
            raise HyperparameterError("--validation-fraction splits CSV/TSV files; give a "
                                      "Parquet channel's validation rows with --validation")

    def dimensions(self) -> list[Dimension]:
        """The space less what the user fixed with ``--set`` (it was searched over them), and
        less the network's shape when trials start from ``fine_tune_checkpoint``'s weights
        (which have one)."""
        shaped = (("embedding_dim", "hidden_units")
                  if self.config.train_config.fine_tune_checkpoint else ())
        return [d for d in DEEPFM_SPACE if d.name not in shaped
                and not any(_sets(path, DEEPFM_FIELDS[d.name]) for path in self.settings.fixed)]

    def first_trial(self) -> dict[str, Any]:
        """Nothing in particular: the configuration's own values are not one of the space's
        points."""
        return {}

    def chosen(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The configuration fields a trial's ``params`` set (``path: value``), applied after
        the fixed ``--set`` overrides."""
        sparse = _optimizer_name(self.base, "sparse_optimizer", "adagrad_optimizer")
        dense = _optimizer_name(self.base, "dense_optimizer", "adam_optimizer")
        fields: dict[str, Any] = {}
        if "sparse_lr" in params:
            fields[f"train_config.sparse_optimizer.{sparse}.lr"] = params["sparse_lr"]
        if "dense_lr" in params:
            fields[f"train_config.dense_optimizer.{dense}.lr"] = params["dense_lr"]
        if "embedding_dim" in params:
            for i, feature in enumerate(self.base.get("feature_configs") or []):
                for kind, body in feature.items():
                    if isinstance(body, dict) and "embedding_dim" in body:
                        fields[f"feature_configs[{i}].{kind}.embedding_dim"] = \
                            params["embedding_dim"]
        units = self.config.model_config.deepfm.deep.hidden_units
        if "hidden_units" in params:
            units = [int(u) for u in str(params["hidden_units"]).split("-")]
            fields["model_config.deepfm.deep.hidden_units"] = units
        if "dropout" in params:
            fields["model_config.deepfm.deep.dropout_ratio"] = \
                [round(float(params["dropout"]), 4)] * len(units)
        return fields

    def _document(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of the base document with ``fields`` set (``--set`` reads JSON values)."""
        from fmkit.models.deepfm import config_files

        return config_files.apply_overrides(copy.deepcopy(self.base),
                                            [f"{k}={json.dumps(v)}" for k, v in fields.items()])

    def _channels(self, work: Path) -> tuple[str, str]:
        s = self.settings
        if s.validation is not None:
            return s.train, s.validation
        return str(work / "split" / "train.csv"), str(work / "split" / "validation.csv")

    def check_split(self, work: Path) -> None:
        """A classifier's validation rows of one label are refused (see
        :func:`require_both_labels`); they are read until a second label shows (a
        configuration's hashed values have no feature ids to compare with training's)."""
        import numpy as np

        from fmkit.models.deepfm.model import DeepFMModel

        if self.predictor_type != "binary_classifier":
            return
        model = DeepFMModel.create(self.config, initialise=False)  # (tables left unset)
        labels: set[float] = set()
        for batch in model.read(self._channels(work)[1]):
            labels.update(np.unique(model.encode(batch, labelled=True).labels).tolist()[:2])
            if len(labels) > 1:
                return
        require_both_labels(self.settings, self.predictor_type, labels)

    def split(self, work: Path) -> None:
        """``--validation-fraction F``: the last F of the CSV file's data lines (the header,
        if the configuration says there is one, kept on both parts)."""
        s, split = self.settings, work / "split"
        if s.validation_fraction is None or (split / "validation.csv").exists():
            return
        from fmkit.data.blocks import open_input
        from fmkit.data.sources import channel_files, refuse_pipe

        refuse_pipe(s.train, "--validation-fraction reads it twice; give a file")

        def lines():  # each file's lines, a last one without "\n" too, streamed
            for path in channel_files(s.train):
                with open_input(path) as f:
                    for line in f:
                        yield line if line.endswith(b"\n") else line + b"\n"

        headers = 1 if self.config.data_config.with_header else 0
        rows = sum(1 for _ in lines()) - headers
        first = headers + rows - _validation_rows(rows, s.validation_fraction)
        split.mkdir(exist_ok=True)
        with files.output_stream(split / "train.csv") as head, \
                files.output_stream(split / "validation.csv") as tail:
            for number, line in enumerate(lines()):
                if number < headers:
                    tail.write(line)
                (head if number < first else tail).write(line)

    def keeps_last(self, params: Mapping[str, Any]) -> bool:
        """A DeepFM keeps its best measurement's weights."""
        return False

    def train(self, params: Mapping[str, Any], work: Path, model_dir: Path, *,
              refit_epochs: int | None = None, callbacks: Sequence[Callback] = (),
              test: str | None = None) -> dict[str, Any]:
        from fmkit.jobs.deepfm import train_deepfm
        from fmkit.models.deepfm import config as configs

        s = self.settings
        document = self._document(self.chosen(params))
        train, validation = self._channels(work)
        settings = document.setdefault("train_config", {})
        settings.pop("num_steps", None)
        if refit_epochs:
            settings["num_epochs"] = refit_epochs
            settings["early_stopping_patience"] = 0
            train, validation = _refit_channel(work, s), None
        else:
            settings["num_epochs"] = int(settings.get("num_epochs") or DEEPFM_MAX_EPOCHS)
            settings.setdefault("early_stopping_patience", DEEPFM_PATIENCE)
            settings["early_stopping_metric"] = s.objective
        export = document.get("export_config") or {}
        for name in ("exporter_type", "best_exporter_metric", "metric_larger_is_better"):
            export.pop(name, None)  # (the search keeps each trial's best epoch itself, by its
            # objective; the refit trains that many epochs)
        document.update(train_input_path=train, model_dir=str(model_dir))
        document["eval_input_path"] = test
        _, metrics = train_deepfm(configs.parse(document), progress=False,
                                  validation_path=validation, callbacks=callbacks)
        return metrics


def _optimizer_name(document: dict[str, Any], section: str, default: str) -> str:
    chosen = (document.get("train_config") or {}).get(section) or {}
    names = [name for name in chosen if name.endswith("_optimizer")]
    return names[0] if names else default


def search_for(settings: TuneSettings) -> FMSearch | DeepFMSearch:
    return (DeepFMSearch if settings.config else FMSearch)(settings)
