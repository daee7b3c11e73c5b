"""Train a DeepFM from its configuration: read, encode, train, evaluate, save.

The Python API behind ``fmkit train --config FILE`` for DeepFM configurations (FM
configurations go to :func:`fmkit.jobs.fm.train_files`, see
:func:`fmkit.jobs.fm.train_config_file`).
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fmkit import distributed, files
from fmkit.data.blocks import PassMeter
from fmkit.data.sources import (
    LabelOrderWatched,
    channel_files,
    refuse_pipe,
    require_channels,
    shard_files,
)
from fmkit.errors import ArtifactError, HyperparameterError, excerpt
from fmkit.jobs.training import check_first_block, run, score_and_save
from fmkit.logs import DEFAULT_HOST, log
from fmkit.models import artifact
from fmkit.models.deepfm import fuxictr
from fmkit.models.deepfm.config import ConfigError, EasyRecConfig, to_document
from fmkit.models.deepfm.features import Encoded
from fmkit.models.deepfm.model import DeepFMModel
from fmkit.models.metrics import require_rows, watched_metric
from fmkit.train.callbacks import EarlyStopping
from fmkit.train.checkpoint import Checkpointer
from fmkit.train.deepfm_learner import DeepFMLearner
from fmkit.train.engine import Callback
from fmkit.train.schedules import schedules_of


@dataclass
class Channel:
    """A DeepFM training channel: its name (for messages), its encoded blocks, the files they
    come from (none for rows in memory) and the meter of what this process reads of them."""

    name: str
    blocks: Callable[[], Iterator[Encoded]]
    files: Sequence[Path] = ()
    meter: PassMeter | None = None  # counts what ``blocks`` reads of this process's files

    def estimated_rows(self) -> int | None:
        """The rows of the pass in progress, guessed (see
        :class:`fmkit.data.blocks.PassMeter`)."""
        return self.meter.estimated_rows() if self.meter else None


@dataclass
class Rows:
    """Labelled rows held in memory (an estimator's ``eval_set``): a name for messages and
    their column batches, as :meth:`DeepFMModel.read` gives a file's."""

    name: str
    batches: Callable[[], Iterator[Any]]


def evaluated_rows(config: EasyRecConfig) -> int | None:
    """The rows an evaluation reads, as TorchEasyRec's ``eval_config.num_steps`` batches of
    ``eval_batch_size`` (else ``batch_size``): validation after each epoch and the test after
    training alike; None (unset) for all of them."""
    data = config.data_config
    steps = config.eval_config.num_steps
    return steps * (data.eval_batch_size or data.batch_size) if steps else None


def _scorer(model: DeepFMModel) -> Callable[[Any], dict[str, float]]:
    """Every metric of a validation channel: a file path, or :class:`Rows`."""
    rows = evaluated_rows(model.config)

    def score(source: Any) -> dict[str, float]:
        if isinstance(source, Rows):
            return require_rows(model.evaluate(source.batches(), max_rows=rows), source.name)
        return require_rows(model.evaluate(model.read(source), max_rows=rows), source)
    return score


def train_deepfm(config: EasyRecConfig, *, progress: bool | None = None,
                 host: str = DEFAULT_HOST, device: str = "cpu",
                 checkpoints: Checkpointer | None = None, resume: bool = False,
                 validation_path: str | None = None, init_model: str | None = None,
                 callbacks: Sequence[Callback] = ()) -> tuple[DeepFMModel, dict[str, Any]]:
    """Train on ``train_input_path`` (on ``device``, a PyTorch device name), score
    ``eval_input_path`` (if set) with the FM metrics, write ``model_dir``; returns the model
    and the metrics stored in ``metrics.json``. ``checkpoints``/``resume``: see
    :func:`fmkit.jobs.training.run`. ``validation_path`` is scored after every
    epoch for early stopping (else ``eval_input_path``, when ``early_stopping_patience`` > 0).
    ``init_model`` (a DeepFM model directory of the same features and network; else
    ``train_config.fine_tune_checkpoint``) is continued: its weights, for ``num_epochs`` more
    epochs numbered after its own. ``callbacks``: more engine callbacks (``fmkit tune``'s
    pruning)."""
    from fmkit.models.fm.device import resolve_device

    target = resolve_device(distributed.local_device(device))
    for name in ("train_input_path", "model_dir"):
        if not getattr(config, name):
            raise ConfigError(f"{name}: required to train (in the file or by --set {name}=...)")
    artifact.check_destination(config.model_dir,  # never replace what is not a model
                               checkpoints and checkpoints.directory)
    require_channels((("train_input_path", config.train_input_path),  # (a missing input
                      ("eval_input_path", config.eval_input_path),  # fails before training)
                      ("--validation", validation_path)))
    train = config.train_config
    if train.num_steps or train.num_epochs != 1:  # the channels are read once per epoch
        validation = validation_path or (train.early_stopping_patience
                                         and config.eval_input_path)
        for path in (config.train_input_path, validation):
            if path:
                refuse_pipe(path, "training reads it once per epoch; give a file, or "
                            "train_config.num_epochs=1")
    start = starting_model(config, init_model)
    before = _initial_model(*start) if start else None  # (before any allocation)
    model = DeepFMModel.create(config)
    if config.eval_input_path and distributed.primary():
        check_first_block(lambda: (model.encode(batch, labelled=True)
                                   for batch in model.read(config.eval_input_path)),
                          config.eval_input_path,
                          not channel_files(config.eval_input_path)[0].is_fifo())
    trained = _continue_from(start, before, model) if start else []
    model.net.to(target)
    shard = distributed.shard()
    files = channel_files(config.train_input_path)
    meter = PassMeter(shard_files(files, shard)[0])
    channel = Channel(str(config.train_input_path), lambda: meter.counted(
        model.encode(batch, labelled=True)
        for batch in model.read(config.train_input_path, shard=shard)), files, meter)
    run_id = to_document(config)
    for name in ("train_input_path", "eval_input_path", "model_dir", "export_config"):
        run_id.pop(name, None)
    if config.export_config.exporter_type == "best":  # (it validates and keeps the best)
        run_id["exporter"] = [config.export_config.best_exporter_metric or "auc"]
    run_id["train_config"].pop("num_epochs", None)
    if config.train_config.dense_optimizer.ema is not None:  # (the best weights a checkpoint
        # keeps are in the written form)
        run_id["export_dense_ema"] = config.uses_dense_ema("export_config")
    history = fit_deepfm(model, channel, progress=progress, host=host,
                         trained_epochs=trained[-1]["epoch"] if trained else 0,
                         early_stopping=early_stopping_of(config, model, host, validation_path),
                         checkpoints=checkpoints, run_id={"deepfm": run_id}, resume=resume,
                         callbacks=callbacks)
    metrics: dict[str, Any] = {"train": trained + [vars(h) for h in history]}
    if not distributed.primary():
        return model, metrics  # the replicas are identical: rank 0 scores and writes
    score_and_save(model, config.model_dir, metrics, {"test": lambda: require_rows(
        model.evaluate(model.read(config.eval_input_path), max_rows=evaluated_rows(config)),
        config.eval_input_path)} if config.eval_input_path else {}, host)
    return model, metrics


# the file run_expid.py appends its results to, told from someone's file of the same name
RESULTS = files.Recognise("a results file of run_expid.py's", lambda head: bool(
    fuxictr.RESULTS_LINE.match(head.decode("utf-8", "replace"))))


def record_fuxictr_results(config_dir: str, expid: str, converted: Any, model: DeepFMModel,
                           metrics: dict[str, Any], validation_path: str | None,
                           command: str) -> None:
    """What ``run_expid.py`` does last: score ``valid_data`` with the kept weights and append a
    line of its validation and test metrics to the results file named after the configuration
    directory, in the working directory (:func:`fmkit.models.deepfm.fuxictr.results_line`).
    A file of that name that is not such a results file is left as it is, and a warning says
    so; a run stopped on request writes none, as run_expid.py's would not."""
    if not distributed.primary() or artifact.STOPPED in metrics:
        return
    path = Path(fuxictr.results_file(config_dir))
    try:
        files.appendable(path, RESULTS)  # (an empty file, or none, takes the line)
    except files.OutputError as e:
        log.warning("%s; this run's results were not added to it", e)
        return
    if validation_path:  # (the test is eval_input_path; else eval_input_path is valid_data)
        valid = model.evaluate(model.read(validation_path))
        test = metrics.get("test", {})
    else:
        valid, test = metrics.get("test", {}), {}
    line = fuxictr.results_line(converted, expid, command, valid, test,
                                datetime.datetime.now())
    try:
        files.append_text(path, line, RESULTS)
    except files.OutputError as e:
        log.warning("%s; this run's results were not added to it", e)
        return
    log.info("results added to %s", path)


def fit_deepfm(model: DeepFMModel, channel: Channel, *, progress: bool | None = None,
               host: str = DEFAULT_HOST, trained_epochs: int = 0,
               early_stopping: EarlyStopping | None = None,
               checkpoints: Checkpointer | None = None, run_id: dict | None = None,
               resume: bool = False, callbacks: Sequence[Callback] = (),
               learner: DeepFMLearner | None = None) -> list:
    """Train ``model``'s network on ``channel`` as its configuration says (optimizers,
    learning-rate schedules, epochs or steps), its rows watched for an order by label
    (:class:`~fmkit.data.sources.LabelOrder`): the one loop behind ``fmkit train --config``
    and the DeepFM estimators. ``learner`` (:func:`deepfm_learner` of ``model``) continues
    its optimizers' state (``partial_fit``). Returns the engine's per-epoch history."""
    config = model.config
    learner = learner or deepfm_learner(model)
    schedule = schedules_of(learner.optimizers, [config.train_config.sparse_optimizer,
                                                 config.train_config.dense_optimizer])
    if schedule is not None:
        callbacks = [*callbacks, schedule]
    try:
        return run(learner, LabelOrderWatched(channel), batch_size=config.data_config.batch_size,
                   epochs=config.train_config.num_epochs, seed=config.train_config.seed,
                   max_steps=config.train_config.num_steps, trained_epochs=trained_epochs,
                   progress=progress, host=host, early_stopping=early_stopping,
                   checkpoints=checkpoints, run_id=run_id, resume=resume, callbacks=callbacks)
    finally:
        model.net.eval()


def deepfm_learner(model: DeepFMModel) -> DeepFMLearner:
    """The learner of ``model``'s network with its configuration's optimizers, fresh."""
    config = model.config
    loss = config.model_config.losses[0]
    smoothing = next((l.label_smoothing for l in (loss.binary_cross_entropy,
                                                   loss.softmax_cross_entropy) if l), 0.0)
    return DeepFMLearner(model.net, config.train_config, config.data_config.batch_size,
                         model.label_mode, smoothing, config.data_config.shuffle,
                         scorer=_scorer(model), focal=loss.binary_focal_loss,
                         drop_remainder=config.data_config.drop_remainder,
                         eval_average=config.uses_dense_ema("eval_config"),
                         export_average=config.uses_dense_ema("export_config"))


def network_change(model: DeepFMModel, before: DeepFMModel) -> str | None:
    """What keeps ``model`` from continuing ``before``'s weights, else None: the rule of
    ``--init-model``, ``fine_tune_checkpoint`` and the estimators' ``warm_start``. The
    features and their groups must be the same, and every layer of the same shape; what
    only trains or scores differently (dropout, the loss, activations, metrics) may change."""
    mine, theirs = to_document(model.config), to_document(before.config)
    if mine.get("feature_configs") != theirs.get("feature_configs"):
        return ("the model's feature_configs differ from this configuration's: a model "
                "continues with the same features")
    if (mine.get("model_config", {}).get("feature_groups")
            != theirs.get("model_config", {}).get("feature_groups")):
        return ("the model's model_config.feature_groups differ from this configuration's: a "
                "model continues with the same groups")
    # (in order, by name less the layers' numbers: a dropout layer shifts the numbers of the
    # layers after it; a layer moved from deep to final is another network)
    shapes, theirs = ([(name, _unnumbered(name), tuple(t.shape))
                       for name, t in m.net.state_dict().items()] for m in (model, before))
    for (name, part, shape), (_, their_part, their_shape) in zip(shapes, theirs):
        if part != their_part:
            return (f"the model's model_config differ from this configuration's in the "
                    f"network's layers: {name} here, where the model has a {their_part} layer")
        if shape != their_shape:
            return (f"the model's model_config differ from this configuration's in the "
                    f"network's layers: {name} is {_dims(their_shape)} there, "
                    f"{_dims(shape)} here")
    if len(shapes) != len(theirs):
        return (f"the model's model_config differ from this configuration's in the network's "
                f"layers: {len(theirs)} weight tensors there, {len(shapes)} here")
    return None


def _unnumbered(name: str) -> str:
    """A parameter's name without its layers' numbers (``deep.2.weight``: ``deep.weight``)."""
    return re.sub(r"\.\d+(?=\.|$)", "", name)


def _dims(shape: tuple) -> str:
    return "x".join(map(str, shape))


def continue_weights(model: DeepFMModel, before: DeepFMModel) -> None:
    """``before``'s weights into ``model``, whose network :func:`network_change` found the
    same (layer by layer, in order)."""
    model.net.load_state_dict(dict(zip(model.net.state_dict(),
                                       before.net.state_dict().values())))


def starting_model(config: EasyRecConfig, init_model: str | None = None
                   ) -> tuple[str, str] | None:
    """The model directory a run starts from, and what named it (for messages):
    ``--init-model``, else ``train_config.fine_tune_checkpoint``; None for fresh weights."""
    if init_model:
        return init_model, "--init-model"
    path = config.train_config.fine_tune_checkpoint
    return (path, "train_config.fine_tune_checkpoint") if path else None


def _initial_model(path: str, named_by: str) -> DeepFMModel:
    """The DeepFM a run continues (a missing directory, or an FM's, is a clear error)."""
    if artifact.model_type(path) != "deepfm":
        if not (artifact.resolve(path) / artifact.META_FILE).exists():
            try:
                artifact.load_directory(path)  # missing, or no model: it says which
            except ArtifactError as e:
                raise ArtifactError(f"{named_by}: {e}") from None
        raise HyperparameterError(f"{named_by} {path}: not a DeepFM model directory (an FM "
                                  "model)")
    return DeepFMModel.load(path)


def _continue_from(start: tuple[str, str], before: DeepFMModel, model: DeepFMModel
                   ) -> list[dict]:
    """``before``'s weights into ``model`` (same features and network, else a clear error);
    returns its training history."""
    path, named_by = start
    change = network_change(model, before)
    if change:
        raise HyperparameterError(f"{named_by} {path}: {change}")
    continue_weights(model, before)
    return artifact.continued_history(path)


def start_from(config: EasyRecConfig, model: DeepFMModel) -> list[dict]:
    """``train_config.fine_tune_checkpoint``'s weights into ``model`` when it names one (the
    estimators' fresh fits); returns that model's history (none without)."""
    start = starting_model(config)
    return _continue_from(start, _initial_model(*start), model) if start else []


def early_stopping_of(config: EasyRecConfig, model: DeepFMModel, host: str = DEFAULT_HOST,
                      validation: str | Rows | None = None) -> EarlyStopping | None:
    """Validation after every epoch on ``validation`` (a file, or :class:`Rows`), or the
    early stopping ``train_config`` asks for (``early_stopping_patience`` > 0) on
    ``eval_input_path``; None when neither is asked for."""
    settings = config.train_config
    for name in ("early_stopping_patience", "validation_every_steps"):
        if getattr(settings, name) < 0:
            raise ConfigError(f"train_config.{name}: must be >= 0")
    best = config.export_config.exporter_type == "best"
    if not validation:
        if not settings.early_stopping_patience and not best:
            return None
        if not config.eval_input_path:
            asked = ("export_config.exporter_type: best keeps the best measurement of"
                     if best else "train_config.early_stopping_patience: early stopping scores")
            raise ConfigError(f"{asked} eval_input_path (or --validation) after every epoch; "
                              "set it")
    metric, where = settings.early_stopping_metric, "train_config.early_stopping_metric"
    if best:
        metric, where = _exporter_metric(config, model.predictor_type)
    try:
        return EarlyStopping(validation or config.eval_input_path, metric,
                             model.predictor_type, settings.early_stopping_patience, host,
                             settings.validation_every_steps)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


# TorchEasyRec's metric names a best exporter may watch, as early_stopping_metric names (the
# mean squared error ranks models as its root does)
EXPORTER_METRICS = {"auc": "auc", "accuracy": "accuracy", "mean_squared_error": "rmse"}


def _exporter_metric(config: EasyRecConfig, predictor_type: str) -> tuple[str, str]:
    """The early_stopping_metric name ``export_config.best_exporter_metric`` watches, and the
    field to name in messages: one of :data:`EXPORTER_METRICS`, in its own direction, and not
    another than an early_stopping_metric set too."""
    export, where = config.export_config, "export_config.best_exporter_metric"
    metric = export.best_exporter_metric or "auc"
    name = EXPORTER_METRICS.get(metric)
    if name is None:
        raise ConfigError(f"{where}: {excerpt(metric)} is not one fmkit "
                          f"keeps the best model by; expected one of "
                          f"{', '.join(EXPORTER_METRICS)}")
    try:
        key, higher = watched_metric(name, predictor_type)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None
    if export.metric_larger_is_better is not None and higher != export.metric_larger_is_better:
        raise ConfigError(f"export_config.metric_larger_is_better: {name} is better "
                          f"{'larger' if higher else 'smaller'}")
    chosen = config.train_config.early_stopping_metric
    try:
        other = (watched_metric(chosen, predictor_type)[0]
                 if chosen.strip().lower() not in ("", "auto") else key)
    except ValueError as e:
        raise ConfigError(f"train_config.early_stopping_metric: {e}") from None
    if other != key:
        raise ConfigError(f"train_config.early_stopping_metric: {excerpt(chosen)} differs from "
                          f"{where} {excerpt(metric)}: set one")
    return name, where
