"""File-to-file jobs: train, evaluate and predict on channels on disk (predict:
:mod:`fmkit.jobs.predict`).

These are the Python API behind ``fmkit train|evaluate|predict`` (the CLI only parses arguments)
and the SageMaker entry point. Hyperparameters are validated before any data is read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fmkit import distributed, files
from fmkit.data.libsvm import largest_field
from fmkit.data.sources import (
    INDEXED_FORMATS,
    FileSource,
    detect_index_base,
    held_if_small,
    require_channels,
)
from fmkit.errors import (
    DataError,
    FMKitError,
    HyperparameterError,
    MissingHyperparameter,
    require_option,
)
from fmkit.jobs.predict import compile_scorer_ahead
from fmkit.jobs.predict import predict_files as predict_files  # (the documented API)
from fmkit.jobs.training import check_first_block, score_and_save, train
from fmkit.logs import DEFAULT_HOST, log
from fmkit.models import artifact
from fmkit.models.base import load_model
from fmkit.models.fm.hyperparameters import table_hyperparameters, validate
from fmkit.models.fm.model import FMModel, label_mode
from fmkit.models.metrics import require_rows
from fmkit.train.checkpoint import Checkpointer
from fmkit.train.engine import Callback
from fmkit.train.kernel_learner import check_device, compile_kernels
from fmkit.train.optimizers import check_memory


def resolve_index_base(source: FileSource, index_base: str | int) -> int:
    """The index base of ``source``'s indexed format (``auto``: detected); 0 for others."""
    if source.fmt not in INDEXED_FORMATS:
        return 0
    if str(index_base) == "auto":
        source.require_rereadable("give --index-base (0 or 1): detecting it reads the rows")
        base = detect_index_base(source)
        log.info("%s: %d-based feature indices (detected)", source.name, base)
        return base
    if str(index_base) not in ("0", "1"):
        raise ValueError(f"index base must be auto, 0 or 1, got {index_base!r}")
    return int(index_base)


ADVISED_BYTES = 256 << 20  # the largest channel read for the feature_dim it needs


def _needed_feature_dim(train_path: str | Path, fmt: str, index_base: str | int) -> str:
    """Advice for a training without ``feature_dim`` (SageMaker requires it; the tools users
    come from infer it): the value the training channel needs, where it is a libsvm or libffm
    channel of at most :data:`ADVISED_BYTES` (read once for it); else nothing."""
    try:
        source = FileSource(train_path, fmt, None)
        if (source.fmt not in INDEXED_FORMATS or not source.rereadable
                or sum(f.stat().st_size for f in source.files) > ADVISED_BYTES):
            return ""
        indices = [(int(b.indices.min()), int(b.indices.max()))
                   for b in source.raw_blocks() if b.indices.size]
    except (FMKitError, OSError):  # (the channel's own error comes when it is read)
        return ""
    if not indices:
        return ""
    largest = max(high for _, high in indices)
    detected = str(index_base) == "auto"
    base = (0 if min(low for low, _ in indices) == 0 else 1) if detected else int(index_base)
    return (f"; {source.name}'s largest feature index is {largest}, {base}-based"
            f"{' (no index 0)' if detected and base else ''}: feature_dim={largest + 1 - base}")


def train_files(hyperparameters: Mapping[str, Any], train_path: str | Path,
                model_dir: str | Path, *, test_path: str | Path | None = None,
                validation_path: str | Path | None = None, fmt: str = "auto",
                index_base: str | int = "auto", progress: bool | None = None,
                host: str = DEFAULT_HOST, cache: bool = False,
                checkpoints: Checkpointer | None = None, resume: bool = False,
                device: str = "cpu", init_model: str | Path | None = None,
                callbacks: Sequence[Callback] = ()) -> tuple[FMModel, dict[str, Any]]:
    """Train on a channel, score the optional test channel, write the model directory.

    An optional validation channel is scored after every epoch for early stopping. ``cache``
    keeps a binary copy of parsed text channels (see :mod:`fmkit.data.cache`). ``checkpoints``
    and ``resume``: see :mod:`fmkit.train.checkpoint`. ``device`` other than ``cpu`` trains
    with PyTorch on that device (see :mod:`fmkit.train.torch_learner`). ``callbacks``: more
    engine callbacks (:class:`fmkit.train.engine.Callback`), e.g. ``fmkit tune``'s pruning.

    Returns the model and the metrics written to ``metrics.json``.
    """
    try:
        hp = validate(hyperparameters)
    except MissingHyperparameter as e:
        if e.name != "feature_dim":
            raise
        advice = _needed_feature_dim(train_path, fmt, index_base)
        raise MissingHyperparameter(e.name, f"{e}{advice}") from None
    # before any data is read: never replace user files, never start what cannot fit
    artifact.check_destination(model_dir, checkpoints and checkpoints.directory)
    if device != "cpu":
        check_device(hp)
    if hp["model_type"] != "ffm" or hp["num_fields"]:
        check_memory(table_hyperparameters(hp))
    if device != "cpu":  # before any data is read
        from fmkit.models.fm.device import resolve_device

        resolve_device(device)
    source = FileSource(train_path, fmt, hp["feature_dim"], labels=label_mode(hp["predictor_type"]),
                        cache=cache, shard=distributed.shard())
    if hp["model_type"] == "ffm" and source.fmt != "libffm":
        raise DataError(source.name, None, "model_type=ffm needs each feature's field: libffm "
                        f"input (label field:index:value ...), not {source.fmt}")
    if device == "cpu" and distributed.rank_and_size()[1] == 1:
        _compile_on_two_cores(hp, source.fmt)
    source.index_base = resolve_index_base(source, index_base)
    training = source
    if hp["model_type"] == "ffm":
        hp, training = _with_fields(hp, source)
        source.num_fields = hp["num_fields"]
    channels = {}
    for name, path in (("test", test_path), ("validation", validation_path)):
        if path is not None:  # its own format (auto: detected), the training ids' index base
            channel = FileSource(path, fmt, hp["feature_dim"], 0, cache=cache,
                                 labels=label_mode(hp["predictor_type"]),
                                 num_fields=source.num_fields)
            if channel.fmt in INDEXED_FORMATS:
                channel.index_base = source.index_base
            channels[name] = channel
    if hp["epochs"] > 1:  # each epoch reads the training and validation rows again
        for channel in (source, channels.get("validation")):
            if channel is not None:
                channel.require_rereadable(f"epochs={hp['epochs']} reads it once per epoch; "
                                           "give a file, or epochs=1")
    if hp["validation_every_steps"] and "validation" in channels:
        channels["validation"].require_rereadable("validation_every_steps reads it several "
                                                  "times an epoch; give a file")
    return train_sources(hp, training, model_dir, channels, index_base=source.index_base,
                         progress=progress, host=host, checkpoints=checkpoints, resume=resume,
                         device=device, init_model=init_model, callbacks=callbacks)


def _compile_on_two_cores(hp: dict[str, Any], fmt: str) -> None:
    """Compile the trainer's kernels before any data is read; on a first run (the scorer not
    yet in numba's cache) a helper process compiles the reader and the scorer meanwhile, so
    the compiling a first run waits for is shared by two cores (docs/performance.md)."""
    compile_scorer_ahead(hp["model_type"] == "ffm", fmt, with_reader=True)
    compile_kernels({**hp, "num_fields": max(1, hp["num_fields"])})


def _with_fields(hp: dict[str, Any], source: FileSource) -> tuple[dict[str, Any], Any]:
    """An FFM's ``num_fields``: as given, or the training channel's largest field + 1 (one
    pass over the whole channel, the same on every process); checked to fit in memory. Returns
    it and what to train on: ``source``, or the channel's rows held in memory when a small
    channel read on one process is read several times (:func:`held_if_small`): the pass then
    parses and holds it, and neither the label moments nor the first epoch parse it again.
    With ``cache`` the pass parses the channel into its binary cache, which the epochs then
    read; otherwise it reads only the fields' digits (:func:`fmkit.data.libsvm.largest_field`)."""
    training = source
    if not hp["num_fields"]:
        source.require_rereadable("give num_fields: counting the fields reads the rows")
        held = held_if_small(source, hp["epochs"]) if source.shard[1] == 1 else source
        if held is not source:
            largest, training = _largest_field_read(held.blocks()), held
        elif source.cache:
            largest = _largest_field_read(FileSource(source.path, source.fmt, hp["feature_dim"],
                                                     cache=True).raw_blocks())
        else:
            largest = max((largest_field(file) for file in source.files), default=-1)
        hp = {**hp, "num_fields": largest + 1}
        log.info("%s: %d fields (num_fields, detected)", source.name, hp["num_fields"])
    check_memory(table_hyperparameters(hp))
    return hp, training


def _largest_field_read(batches: Iterable[Any]) -> int:
    """The largest field of parsed libffm ``batches`` (-1 if none)."""
    return max((int(b.fields.max()) for b in batches if b.fields is not None and b.fields.size),
               default=-1)


def train_sources(hp: dict[str, Any], source, model_dir: str | Path,
                  scored: Mapping[str, Any] | None = None, *, index_base: int = 0,
                  progress: bool | None = None, host: str = DEFAULT_HOST,
                  checkpoints: Checkpointer | None = None, resume: bool = False,
                  device: str = "cpu", init_model: str | Path | None = None,
                  callbacks: Sequence[Callback] = ()) -> tuple[FMModel, dict[str, Any]]:
    """Train on ``source``, score each channel of ``scored`` (``test``, ``validation``), save.

    A ``validation`` channel also drives early stopping (see :func:`fmkit.jobs.training.train`).
    ``init_model`` (a model directory) is continued: its weights for ``epochs`` more epochs.
    Each scored channel's metrics are logged as SageMaker metric lines and stored in
    ``metrics.json`` under the channel's name, with the training history under ``train``.
    """
    scored = scored or {}
    artifact.check_destination(model_dir, checkpoints and checkpoints.directory)
    if device != "cpu":
        from fmkit.models.fm.device import resolve_device

        device = resolve_device(distributed.local_device(device))
    params, trained = _initial_model(init_model, hp) if init_model else (None, [])
    for channel_source in scored.values():
        check_first_block(channel_source.blocks, channel_source.name,
                          getattr(channel_source, "rereadable", True))
    params, history = train(hp, source, params, validation=scored.get("validation"),
                            progress=progress, host=host, checkpoints=checkpoints, resume=resume,
                            device=device, trained_epochs=trained[-1]["epoch"] if trained else 0,
                            callbacks=callbacks)
    model = FMModel(hp, params, index_base)
    metrics: dict[str, Any] = {"train": trained + [vars(s) for s in history]}
    if not distributed.primary():
        return model, metrics  # the replicas are identical: rank 0 scores and writes
    score_and_save(model, model_dir, metrics, {
        channel: lambda source=source: require_rows(model.evaluate(source.blocks()), source.name)
        for channel, source in scored.items()}, host)
    return model, metrics


def _initial_model(path: str | Path, hp: dict[str, Any]) -> tuple[Any, list[dict]]:
    """``--init-model``: the weights and training history of the model a run continues; its
    shapes (an FFM's fields too) must be the run's."""
    kind = artifact.model_type(path)
    if kind not in (None, "fm"):
        raise HyperparameterError(f"--init-model {path}: not an FM model directory (a {kind} "
                                  "model)")
    model = FMModel.load(path)  # a missing or damaged directory: its error says which
    change = model.shape_change(hp)
    if change:
        raise HyperparameterError(f"--init-model {path}: {change}: a model continues with the "
                                  "same shapes")
    return model.params, artifact.continued_history(path)


def evaluate_files(model_dir: str | Path, data_path: str | Path, *,
                   fmt: str = "auto", device: str = "cpu", data_config: Sequence[str] = (),
                   eval_result: str | None = None) -> dict[str, float]:
    """SageMaker's metrics (plus AUC and ``rows``) of a model on a labelled channel
    (``data_config``: see :func:`fmkit.models.base.load_model`). ``eval_result``: also append
    them, as TorchEasyRec's ``tzrec.eval`` does, to this file of a DeepFM's model directory
    (:func:`fmkit.models.deepfm.eval_results.append_evaluation`)."""
    model = load_model(model_dir, device, data_config)
    if eval_result and isinstance(model, FMModel):
        raise HyperparameterError(f"{model_dir}: an FM has no TorchEasyRec metrics to write to "
                                  f"{eval_result}; it is a DeepFM's (--eval_result_filename)")
    if isinstance(model, FMModel):
        compile_scorer_ahead(model.field_aware, fmt)
    if eval_result:  # (checked before the evaluation's work)
        from fmkit.models.deepfm import eval_results

        record = eval_results.result_file(model_dir, eval_result)
    metrics = require_rows(model.evaluate(model.read(data_path, fmt, labelled=True)), data_path)
    if eval_result:
        eval_results.append_evaluation(record, model_dir, model.config, metrics)
    return metrics


CONVERT_TARGETS = ("recordio", "libsvm")


def convert_file(input_path: str | Path, output: str | Path, *, source_format: str = "auto",
                 target_format: str = "recordio", feature_dim: int | None = None,
                 index_base: str | int = "auto") -> int:
    """Convert a channel between formats; returns the row count.

    recordIO output is Float32 and byte-identical to the SageMaker SDK's writer (sparse
    tensors with ``shape=[feature_dim]``); libsvm output keeps the input's index base (the
    detected one, or ``index_base``; recordIO and CSV input are 0-based), so a model trained
    on the input scores the output alike. Without ``feature_dim`` it is the input's largest
    index + 1.
    """
    from fmkit.data import libsvm, recordio

    if target_format not in CONVERT_TARGETS:
        raise DataError(str(output), None, f"cannot write format {target_format!r}")
    require_option(feature_dim is None or feature_dim >= 1, "--feature-dim", ">= 1", feature_dim)
    probe = FileSource(input_path, source_format, feature_dim or 1)
    probe.index_base = resolve_index_base(probe, index_base)
    if feature_dim is None:
        feature_dim = 0
        for batch in probe.raw_blocks():
            widest = int(batch.indices.max()) + 1 - probe.index_base if batch.indices.size else 0
            if batch.widths is not None and batch.widths.size:
                widest = max(widest, int(batch.widths.max()))
            feature_dim = max(feature_dim, widest)
    source = FileSource(input_path, probe.fmt, max(feature_dim, 1), probe.index_base)
    if probe.fmt == "libffm":
        log.warning("%s: its fields are dropped: %s holds features and values only (a "
                    "field-aware FM trains from libffm)", source.name, target_format)
    rows = 0
    with files.output_stream(output, files.ONLY_EMPTY, compress=True) as f:
        for batch in source.blocks():
            X = batch.matrix(feature_dim)
            if np.isnan(batch.labels).any():
                row = int(np.flatnonzero(np.isnan(batch.labels))[0])
                raise DataError(*batch.where(row), "the record has no label")
            if target_format == "recordio":
                recordio.write_rows(f, X, batch.labels)
            else:
                libsvm.write_libsvm(f, X, batch.labels, index_base=probe.index_base)
            rows += batch.n_rows
    return rows


FM_CONFIG_FIELDS = {"train_input_path", "eval_input_path", "model_dir", "data_config",
                    "model_config"}
FM_DATA_FIELDS = {"format", "index_base", "cache"}


def _configuration(path: str | Path, expid: str | None
                   ) -> tuple[dict[str, Any], str | None, Any]:
    """The document ``fmkit train --config`` trains: the file's, or FuxiCTR's experiment; the
    validation channel it names beside its ``eval_input_path`` (FuxiCTR's ``valid_data``
    watched for early stopping while its ``test_data`` is scored after training, as
    ``run_expid.py`` does), else None; and the FuxiCTR conversion (else None)."""
    from fmkit.models.deepfm import config_files, fuxictr

    if expid is None:
        if Path(path).is_dir():
            raise HyperparameterError(f"{path}: a directory: for FuxiCTR's configuration "
                                      f"directory, name the experiment with --expid")
        return config_files.load_document(path), None, None
    converted = fuxictr.to_document(fuxictr.load_experiment(str(path), expid))
    for note in converted.notes:
        log.warning("FuxiCTR %s: %s", expid, note)
    document, validation = converted.document, None
    if converted.test:
        validation = document.get("eval_input_path")
        document["eval_input_path"] = converted.test
    return document, validation, converted


def train_config_file(path: str | Path, overrides: list[str] = (), *,
                      expid: str | None = None, progress: bool | None = None,
                      device: str = "cpu", checkpoints: Checkpointer | None = None,
                      resume: bool = False, validation_path: str | None = None,
                      init_model: str | None = None, command: str = "fmkit train"
                      ) -> tuple[Any, dict[str, Any]]:
    """``fmkit train --config FILE [--set path=value ...]``: a DeepFM configuration
    (TorchEasyRec's fields, see :mod:`fmkit.models.deepfm.config`), or an FM one — the same file
    layout with ``model_config: {fm: {SageMaker hyperparameters}}``. With ``expid``, ``path``
    is FuxiCTR's configuration directory and ``expid`` its experiment, converted first
    (:mod:`fmkit.models.deepfm.fuxictr`; each different reading logged as a warning), and its
    results added to run_expid.py's results file, under ``command``
    (:func:`fmkit.jobs.deepfm.record_fuxictr_results`)."""
    from fmkit.models.deepfm import config as configs
    from fmkit.models.deepfm import config_files

    document, validation, converted = _configuration(path, expid)
    validation_path = validation_path or validation
    document = config_files.apply_overrides(document, list(overrides))
    model_config = document.get("model_config")
    if not (isinstance(model_config, dict) and "fm" in model_config):
        from fmkit.jobs.deepfm import record_fuxictr_results, train_deepfm

        config = configs.parse(document, report_ignored=True)
        model, metrics = train_deepfm(config, progress=progress, device=device,
                                      checkpoints=checkpoints, resume=resume,
                                      validation_path=validation_path, init_model=init_model)
        if converted is not None:
            record_fuxictr_results(str(path), expid, converted, model, metrics,
                                   validation_path, command)
        return model, metrics
    for fields, found, where in ((FM_CONFIG_FIELDS, document, ""),
                                 ({"fm"}, model_config, "model_config."),
                                 (FM_DATA_FIELDS, document.get("data_config") or {},
                                  "data_config.")):
        if not isinstance(found, dict):
            raise configs.ConfigError(f"{where.rstrip('.')}: expected a mapping")
        unknown = sorted(set(found) - fields)
        if unknown:
            raise configs.ConfigError(f"{where}{unknown[0]}: unknown field in an FM "
                                      f"configuration (valid: {', '.join(sorted(fields))})")
    for name in ("train_input_path", "model_dir"):
        if not document.get(name):
            raise configs.ConfigError(f"{name}: required to train (in the file or by --set "
                                      f"{name}=...)")
    if not isinstance(model_config["fm"], dict):
        raise configs.ConfigError("model_config.fm: expected a mapping of hyperparameters")
    require_channels((("train_input_path", document["train_input_path"]),
                      ("eval_input_path", document.get("eval_input_path")),
                      ("--validation", validation_path)))
    data = document.get("data_config") or {}
    return train_files(model_config["fm"], document["train_input_path"], document["model_dir"],
                       test_path=document.get("eval_input_path"),
                       fmt=str(data.get("format", "auto")),
                       index_base=data.get("index_base", "auto"), progress=progress,
                       cache=bool(data.get("cache", False)), device=device,
                       checkpoints=checkpoints, resume=resume, validation_path=validation_path,
                       init_model=init_model)
