"""FuxiCTR's experiments as fmkit DeepFM configurations (``fmkit config from-fuxictr``).

A FuxiCTR user runs ``python run_expid.py --config DIR --expid EXPID``: ``DIR`` holds
``model_config.yaml`` (a ``Base`` section and one section per experiment) and
``dataset_config.yaml`` (one section per ``dataset_id``), or directories ``model_config/`` and
``dataset_config/`` of such files. :func:`load_experiment` merges them as FuxiCTR's
``load_config`` does; :func:`to_document` writes the DeepFM they describe in TorchEasyRec's
fields, which fmkit trains.

FuxiCTR fits its feature encoders on the training data before it trains, and so does this
conversion, reading ``train_data`` once with the readers training uses:

* a ``categorical`` column becomes an ``id_feature`` whose ``vocab_list`` is the values seen at
  least ``min_categr_count`` times (FuxiCTR's tokenizer); others take the out-of-vocabulary
  row, and a missing value a learned row of its own (FuxiCTR's: the out-of-vocabulary row);
* a ``sequence`` column (ids joined by ``splitter``, ``^`` by default) becomes a
  ``sequence_id_feature`` of the same vocabulary, its first ``max_len`` ids (FuxiCTR's default
  ``padding: post`` keeps the first; unset: the longest sequence in the training data), pooled
  by mean (``MaskedAveragePooling``, FuxiCTR's default encoder) or sum;
* a ``numeric`` column becomes a ``raw_feature`` bucketized at the training values' deciles.
  FuxiCTR scales one embedding vector by the (normalized) value; fmkit's FM and wide groups
  take embeddings of one width, which a dense value is not, so the value is bucketized (its
  normalizer, monotone, then changes nothing and is left out);
* a ``categorical`` column with ``preprocess: convert_to_bucket`` (FuxiCTR's Criteo recipe,
  ``floor(ln(x)^2)`` above 2, else ``int(x)``) or its Avazu recipes ``convert_hour``,
  ``convert_weekday``, ``convert_weekend`` (of the ``hour`` column, ``YYMMDDHH``) becomes an
  ``expr_feature`` computing it (``fuxictr_encoders.RECIPES``), its ``boundaries`` the values
  seen at least ``min_categr_count`` times: each such value has its own row; a rarer one
  shares the row of the next smaller value kept (FuxiCTR's: the out-of-vocabulary row).

The encoders are fitted by :mod:`fmkit.models.deepfm.fuxictr_encoders`; every setting is read
with its type by :mod:`fmkit.models.deepfm.fuxictr_settings`.

Each other difference is said in one line of :class:`Converted`'s ``notes``; what fmkit has
no counterpart for (another model than DeepFM, pretrained embeddings, other ``preprocess``
functions, a ``category_processor``, H5 data) is a :class:`ConfigError`.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fmkit.errors import excerpt
from fmkit.models.deepfm.config import ConfigError
from fmkit.models.deepfm.config_files import apply_overrides, load_document, written
from fmkit.models.deepfm.fuxictr_encoders import (
    RECIPES,
    Statistics,
    recipe_of,
    source_column,
    training_blocks,
)
from fmkit.models.deepfm.fuxictr_settings import column_where, fill_value, setting, splitter

EMBEDDING_INIT = "nn.init.normal_,std=0.0001"  # FuxiCTR's embedding_initializer default
ACTIVATIONS = {"relu": "nn.ReLU", "leakyrelu": "nn.LeakyReLU", "prelu": "nn.PReLU",
               "elu": "nn.ELU", "gelu": "nn.GELU", "silu": "nn.SiLU", "sigmoid": "nn.Sigmoid",
               "tanh": "nn.Tanh", "linear": ""}
LOSSES = {"binary_crossentropy": "binary_cross_entropy", "bce": "binary_cross_entropy",
          "binary_cross_entropy": "binary_cross_entropy", "mse_loss": "l2_loss",
          "mse": "l2_loss"}
OPTIMIZERS = {"adam": ("adam_optimizer", "adam_optimizer"),
              "adagrad": ("adagrad_optimizer", "adagrad_optimizer"),
              "sgd": ("sgd_optimizer", "sgd_optimizer"),
              "adamw": ("adam_optimizer", "adamw_optimizer")}
MONITORS = {"auc": ("auc", "max"), "logloss": ("logloss", "min"),
            "binary_crossentropy": ("logloss", "min"), "accuracy": ("accuracy", "max"),
            "acc": ("accuracy", "max"), "mse": ("rmse", "min"), "rmse": ("rmse", "min")}
COLUMN_KINDS = {"preprocess": "text", "padding": "text", "feature_encoder": "text",
                "share_embedding": "text", "dtype": "text", "embedding_dim": "int",
                "min_categr_count": "int", "max_len": "int"}  # a column's typed settings
DEFAULT_ENCODER = "layers.MaskedAveragePooling()"  # FuxiCTR's sequence encoder by default
SPEC_KEYS = {"name", "embedding_dim", "feature_encoder"}  # feature_specs' settings read
GROUPED = ("gauc", "avgauc")  # FuxiCTR's group metrics: fmkit's grouped_auc
POOLINGS = {"layers.MaskedAveragePooling()": "mean", "MaskedAveragePooling": "mean",
            "layers.MaskedSumPooling()": "sum", "MaskedSumPooling": "sum"}


@dataclass
class Converted:
    """A FuxiCTR experiment in TorchEasyRec's fields: ``document`` (what ``fmkit train
    --config`` reads), and a line per setting fmkit reads differently (``notes``)."""

    document: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    test: str | None = None  # test_data, which run_expid.py scores after training
    # what run_expid.py's results line names: the experiment's metrics, dataset and groups
    metrics: list[str] = field(default_factory=list)
    dataset_id: str | None = None
    group_id: str | None = None


def _sections(config_dir: str, kind: str) -> list[str]:
    files = glob.glob(os.path.join(config_dir, f"{kind}.yaml"))
    return files or sorted(glob.glob(os.path.join(config_dir, kind, "*.yaml")))


def load_experiment(config_dir: str, expid: str) -> dict[str, Any]:
    """An experiment's settings as FuxiCTR's ``load_config`` merges them: ``Base``, then the
    experiment's section, then its ``dataset_id``'s dataset section."""
    if not os.path.isdir(config_dir):
        raise ConfigError(f"{config_dir}: not a directory (FuxiCTR's --config: the directory "
                          f"of model_config.yaml and dataset_config.yaml)")
    models = _sections(config_dir, "model_config")
    if not models:
        raise ConfigError(f"{config_dir}: holds no model_config.yaml nor model_config/*.yaml")
    found: dict[str, Any] = {}
    for path in models:
        document = load_document(path, aliases=True)
        for key in ("Base", expid):
            if key in document and key not in found:
                found[key] = _mapping(document[key], f"{path}: {key}")
    if expid not in found:
        raise ConfigError(f"{config_dir}: no experiment {excerpt(expid)} in "
                          f"{', '.join(os.path.basename(p) for p in models)}")
    params = {**found.get("Base", {}), **found[expid], "model_id": expid}
    dataset_id = params.get("dataset_id")
    for path in _sections(config_dir, "dataset_config"):
        document = load_document(path, aliases=True)
        if dataset_id in document:
            params.update(_mapping(document[dataset_id], f"{path}: {dataset_id}"))
            return _data_found(params, config_dir)
    raise ConfigError(f"{config_dir}: dataset_id {excerpt(str(dataset_id))} of experiment "
                      f"{excerpt(expid)} is in no dataset_config")


DATA_PATHS = ("train_data", "valid_data", "test_data", "infer_data")


def _data_found(params: dict[str, Any], config_dir: str) -> dict[str, Any]:
    """``params`` with each relative data path that names nothing from the working directory
    taken from the configuration directory's parent, where FuxiCTR's model-zoo ``run_expid.py``
    runs (it changes to its own directory, beside ``config/``)."""
    base = os.path.dirname(os.path.abspath(config_dir.rstrip("/")))
    for key in DATA_PATHS:
        path = params.get(key)
        if isinstance(path, str) and path and not os.path.isabs(path) and not glob.glob(path):
            moved = os.path.join(base, path)
            if glob.glob(moved):
                params = {**params, key: os.path.normpath(moved)}
    return params


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping of settings")
    return value


def feature_columns(params: dict[str, Any]) -> list[dict[str, Any]]:
    """``feature_cols`` with a list of names expanded into a column each (as FuxiCTR's
    ``_complete_feature_cols``), inactive ones and those ``use_features`` leaves out dropped."""
    columns = []
    given = params.get("feature_cols") or []
    if not isinstance(given, list):
        raise ConfigError(f"feature_cols: expected a list of columns, got {excerpt(str(given))}")
    for i, col in enumerate(given):
        col = _mapping(col, f"feature_cols[{i}]")
        names = col.get("name")
        for name in names if isinstance(names, list) else [names]:
            if not isinstance(name, str) or not name:
                raise ConfigError(f"feature_cols[{i}]: name must be a column name or a list "
                                  f"of them, got {excerpt(str(name))}")
            if setting(col, "active", "flag", True, f"feature_cols[{i}]."):
                columns.append({**col, "name": name})
    wanted = setting(params, "use_features", "texts")
    if wanted:
        columns = [col for col in columns if col["name"] in set(wanted)]
    specs = params.get("feature_specs") or []
    if not isinstance(specs, list):
        raise ConfigError(f"feature_specs: expected a list, got {excerpt(str(specs))}")
    for i, spec in enumerate(specs):  # (FuxiCTR's FeatureMap.update_feature_specs)
        spec = _mapping(spec, f"feature_specs[{i}]")
        names = setting(spec, "name", "texts", [], f"feature_specs[{i}].")
        unknown = sorted(set(spec) - SPEC_KEYS)
        if unknown:
            raise ConfigError(f"feature_specs[{i}]: {excerpt(unknown[0])} has no counterpart "
                              f"in fmkit (embedding_dim, feature_encoder)")
        for col in columns:
            if col["name"] in (names if isinstance(names, list) else [names]):
                col.update({k: v for k, v in spec.items() if k != "name"})
    if not columns:
        raise ConfigError("feature_cols: no active feature")
    return columns


def _l2(value: Any, name: str) -> float:
    """FuxiCTR's regularizer: a number, ``l2(x)``, or nothing (an L1 term has no
    counterpart)."""
    if value in (None, 0, "0", ""):
        return 0.0
    text = "" if isinstance(value, (list, dict, bool)) else str(value).replace(" ", "")
    if text.lower().startswith("l2(") and text.endswith(")"):
        text = text[3:-1]
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{name}: {excerpt(str(value))}: only an L2 weight (a number or "
                          f"l2(x)) has a counterpart in fmkit") from None


def _check_column(col: dict[str, Any]) -> None:
    where = column_where(col)[:-2]
    kind = setting(col, "type", "text", None, column_where(col))
    for key, typed in COLUMN_KINDS.items():
        setting(col, key, typed, None, column_where(col))
    if kind == "sequence":
        splitter(col)
    if kind not in ("categorical", "numeric", "sequence", "meta"):
        raise ConfigError(f"{where}: type {excerpt(str(kind))} has no counterpart in fmkit "
                          f"(categorical, numeric, sequence)")
    recipe = recipe_of(col)
    if kind == "numeric" or recipe:  # (a number; a categorical column's is its text)
        fill_value(col)
    else:
        setting(col, "fill_na", "text", None, column_where(col))
    if recipe:
        if not re.fullmatch(r"[A-Za-z_]\w*", recipe[0]):
            raise ConfigError(f"{where}: {col['preprocess']} reads the column in an "
                              f"expression, which needs a name of letters, digits and _")
        col = {**col, "preprocess": None}
    for key, why in (("pretrained_emb", "pretrained embeddings are not supported"),
                     ("preprocess", "FuxiCTR's preprocess functions are Python code: write "
                      "the column they make into the data (its Criteo and Avazu recipes, "
                      f"{', '.join(RECIPES)}, are read on categorical columns)"),
                     ("category_processor", "not supported: give the column as categorical "
                      "or numeric")):
        if col.get(key):
            raise ConfigError(f"{where}: {key} {excerpt(str(col[key]))}: {why}")
    if kind == "sequence" and col.get("padding", "post") != "post":
        raise ConfigError(f"{where}: padding {excerpt(str(col['padding']))} keeps a "
                          f"sequence's last ids; fmkit keeps the first (padding: post)")
    if kind == "sequence" and col.get("feature_encoder", DEFAULT_ENCODER) not in POOLINGS:
        raise ConfigError(f"{where}: feature_encoder {excerpt(str(col['feature_encoder']))}: "
                          f"fmkit pools sequences by mean (MaskedAveragePooling) or sum "
                          f"(MaskedSumPooling)")


def _feature(col: dict[str, Any], stats: Statistics, params: dict[str, Any],
             dim: int) -> dict[str, Any]:
    """A FuxiCTR feature column as a TorchEasyRec feature configuration."""
    name, kind = col["name"], col["type"]
    embedding = {"feature_name": name,
                 "embedding_dim": setting(col, "embedding_dim", "int", dim, column_where(col)),
                 "init_fn": EMBEDDING_INIT}
    if kind == "numeric":
        return {"raw_feature": {**embedding, "boundaries": stats.boundaries(col),
                                "default_value": str(fill_value(col))}}
    shared = setting(col, "share_embedding", "text", None, column_where(col))
    least = setting(col, "min_categr_count", "int",
                    setting(params, "min_categr_count", "int", 1), column_where(col))
    recipe = recipe_of(col)
    if recipe:
        source, expression, compute = recipe
        filled = float(compute(np.array([fill_value(col)]))[0]) if source == name else 0.0
        return {"expr_feature": {**embedding, "variables": [source], "expression": expression,
                                 "boundaries": stats.bucket_vocabulary(col, least) or [0.0],
                                 "default_value": str(filled)}}
    vocabulary = stats.vocabulary(col, least)
    ids = {**embedding, "vocab_list": vocabulary or [""], "embedding_name": shared or name}
    if kind == "categorical":
        # FuxiCTR fills a missing value with fill_na ("" by default) and looks it up: "" is
        # never in its vocabulary, so it takes the (learned) out-of-vocabulary row; here it
        # takes a learned row of its own, not fmkit's default of no id
        ids["default_value"] = setting(col, "fill_na", "text", "", column_where(col)) or "__OOV__"
        return {"id_feature": ids}
    return {"sequence_id_feature": {
        **ids, "sequence_delim": splitter(col),
        "sequence_length": setting(col, "max_len", "int", 0, column_where(col))
        or max(stats.longest.get(name, 1), 1),
        "pooling": POOLINGS[col.get("feature_encoder", DEFAULT_ENCODER)]}}


def _shared_vocabularies(features: list[dict[str, Any]]) -> None:
    """Features that ``share_embedding`` one table read one vocabulary: the union of theirs
    (FuxiCTR's ``merge_vocab``), in each feature."""
    owners: dict[str, list[dict[str, Any]]] = {}
    for feature in features:
        settings = next(iter(feature.values()))
        if "vocab_list" in settings:
            owners.setdefault(settings["embedding_name"], []).append(settings)
    for group in owners.values():
        if len(group) > 1:
            merged = list(dict.fromkeys(v for s in group for v in s["vocab_list"]))
            for settings in group:
                settings["vocab_list"] = merged


def _monitor(params: dict[str, Any], notes: list[str], task_loss: str) -> str:
    monitor = params.get("monitor")
    monitor = "AUC" if monitor is None else monitor  # (FuxiCTR's default)
    if isinstance(monitor, dict):
        named = [str(k).lower() for k in monitor if setting(monitor, k, "number", 0, "monitor.")]
        metric = "auc" if "auc" in named else (named[0] if named else "auc")
        notes.append(f"monitor {monitor}: fmkit stops early on one metric: {metric}")
        monitor = metric
    key = setting({"monitor": monitor}, "monitor", "text").lower()
    if key not in MONITORS:
        raise ConfigError(f"monitor {excerpt(str(monitor))}: fmkit stops early on AUC, "
                          f"logloss, accuracy or RMSE")
    metric, mode = MONITORS[key]
    if task_loss == "l2_loss" and metric in ("auc", "logloss", "accuracy"):
        metric, mode = "rmse", "min"
    given = setting(params, "monitor_mode", "text")
    if given and given != mode and not isinstance(params.get("monitor"), dict):
        raise ConfigError(f"monitor_mode {excerpt(str(given))} contradicts monitor "
                          f"{excerpt(str(monitor))}, which is better when {mode}imal")
    return metric


def _optimizers(params: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    name = setting(params, "optimizer", "text", "adam").lower()
    if name not in OPTIMIZERS:
        raise ConfigError(f"optimizer {excerpt(name)}: fmkit has adam, adagrad, sgd and adamw")
    sparse, dense = OPTIMIZERS[name]
    lr = setting(params, "learning_rate", "number", 1e-3)
    sparse_settings: dict[str, Any] = {"lr": lr}
    dense_settings: dict[str, Any] = {"lr": lr}
    if name == "sgd":
        dense_settings["momentum"] = 0.0  # (torch's SGD; TorchEasyRec's default is 0.9)
    if name == "adamw":
        notes.append("optimizer adamw: the embeddings train with Adam (fmkit's sparse "
                     "optimizers have no AdamW)")
    net = _l2(params.get("net_regularizer"), "net_regularizer")
    if net:
        dense_settings["weight_decay"] = net  # (torch's L2: the gradient of net/2 |w|^2)
    embedding = _l2(params.get("embedding_regularizer"), "embedding_regularizer")
    if embedding:
        if sparse != "adam_optimizer":
            raise ConfigError(f"embedding_regularizer with optimizer {name}: fmkit's sparse "
                              f"{name} has no weight decay")
        sparse_settings["weight_decay"] = embedding
        notes.append(f"embedding_regularizer {embedding:g}: a decoupled weight decay on the "
                     f"embedding rows each step touches (FuxiCTR adds an L2 term over whole "
                     f"tables to the loss)")
    return {"sparse_optimizer": {sparse: sparse_settings},
            "dense_optimizer": {dense: dense_settings}}


def _network(params: dict[str, Any]) -> dict[str, Any]:
    activation = setting(params, "hidden_activations", "texts", "relu")
    if isinstance(activation, list):
        if len(set(map(str, activation))) > 1:
            raise ConfigError(f"hidden_activations {excerpt(str(activation))}: fmkit's MLP "
                              f"has one activation for every layer")
        activation = activation[0] if activation else "relu"
    key = str(activation).lower()
    if key not in ACTIVATIONS:
        raise ConfigError(f"hidden_activations {excerpt(str(activation))}: fmkit has "
                          f"{', '.join(ACTIVATIONS)}")
    deep: dict[str, Any] = {"hidden_units": setting(params, "hidden_units", "ints", [64, 64, 64]),
                            "activation": ACTIVATIONS[key],
                            "use_bn": setting(params, "batch_norm", "flag", False)}
    dropout = setting(params, "net_dropout", "numbers", 0.0)
    if dropout:
        deep["dropout_ratio"] = dropout if isinstance(dropout, list) else [dropout]
    return deep


def to_document(params: dict[str, Any]) -> Converted:
    """The DeepFM of a FuxiCTR experiment (:func:`load_experiment`) in TorchEasyRec's fields,
    its encoders fitted on ``train_data`` as FuxiCTR fits them."""
    notes: list[str] = []
    model = setting(params, "model", "text", "DeepFM")
    if model != "DeepFM":
        raise ConfigError(f"model {excerpt(str(model))}: fmkit trains FuxiCTR's DeepFM (FM "
                          f"and FFM: fmkit train with model_type=fm or ffm)")
    data_format = setting(params, "data_format", "text", "csv").lower()
    if data_format not in ("csv", "parquet"):
        raise ConfigError(f"data_format {excerpt(data_format)}: FuxiCTR's {data_format} files "
                          f"are its own encoding; point train_data at the CSV or Parquet files")
    train = setting(params, "train_data", "text")
    valid = setting(params, "valid_data", "text")
    if not train:
        raise ConfigError("train_data: not set")
    labels = params.get("label_col")
    labels = labels if isinstance(labels, list) else [labels]
    if len(labels) != 1 or not isinstance(labels[0], dict) or not isinstance(
            labels[0].get("name"), str):
        raise ConfigError("label_col: expected one {name: ..., dtype: ...} (fmkit trains one "
                          "label)")
    columns = feature_columns(params)
    for col in columns:
        _check_column(col)
    meta = [c["name"] for c in columns if c["type"] == "meta"]
    if meta:
        notes.append(f"meta columns {', '.join(meta)}: not features; left out")
    columns = [c for c in columns if c["type"] != "meta"]
    test = setting(params, "test_data", "text")
    if setting(params, "infer_data", "text"):
        notes.append(f"infer_data {params['infer_data']}: give it to fmkit predict --data")
    if setting(params, "reduce_lr_on_plateau", "flag", True):
        notes.append("FuxiCTR divides the learning rate by 10 when the monitor stops "
                     "improving; fmkit keeps it")
    loss_name = setting(params, "loss", "text", "binary_crossentropy").lower()
    if loss_name not in LOSSES:
        raise ConfigError(f"loss {excerpt(loss_name)}: fmkit has binary_crossentropy and "
                          f"mse_loss")
    loss = LOSSES[loss_name]

    seed = setting(params, "seed", "int")
    sep = setting(params, "sep", "text", ",")
    if len(sep) != 1:
        raise ConfigError(f"sep: expected one character, got {excerpt(sep)}")
    dim = setting(params, "embedding_dim", "int", 10)
    setting(params, "min_categr_count", "int")  # (read per column after the scan)
    train_config: dict[str, Any] = {
        **_optimizers(params, notes), "num_epochs": setting(params, "epochs", "int", 10),
        "early_stopping_metric": _monitor(params, notes, loss)}
    if valid:
        train_config["early_stopping_patience"] = setting(
            params, "early_stop_patience", "int", setting(params, "patience", "int", 2))
    else:
        notes.append("no valid_data: every epoch trains, without early stopping (fmkit train "
                     "--validation gives one)")
    clip = setting(params, "max_gradient_norm", "number", 10.0)  # (FuxiCTR's fit() default)
    if clip > 0:
        train_config["grad_clipping"] = {"clipping_type": "norm", "max_gradient": clip}
        notes.append(f"max_gradient_norm {clip:g}: the network's gradients are clipped to it; "
                     f"the embeddings' are not (FuxiCTR clips all parameters' together)")
    if seed is not None:
        train_config["seed"] = seed
    every = setting(params, "eval_steps", "int")
    if every:
        train_config["validation_every_steps"] = every
    deep, grouped = _network(params), _grouped_auc(params, notes)
    features = _fitted_features(params, columns, train, labels[0]["name"], sep, seed, dim)
    names = [c["name"] for c in columns]
    document: dict[str, Any] = {
        "train_input_path": train,
        "model_dir": os.path.join(setting(params, "model_root", "text", "./checkpoints/"),
                                  setting(params, "dataset_id", "text", ""),
                                  str(params["model_id"])),
        "data_config": {"dataset_type": "ParquetDataset" if data_format == "parquet"
                        else "CsvDataset", "label_fields": [labels[0]["name"]],
                        "with_header": True, "delimiter": sep,
                        "batch_size": setting(params, "batch_size", "int", 10000),
                        "shuffle": setting(params, "shuffle", "flag", True)},
        "feature_configs": features,
        "model_config": {
            "feature_groups": [{"group_name": "wide", "group_type": "WIDE", "feature_names": names},
                               {"group_name": "fm", "group_type": "DEEP", "feature_names": names},
                               {"group_name": "deep", "group_type": "DEEP",
                                "feature_names": names}],
            "deepfm": {"deep": deep, "wide_embedding_dim": 1,
                       "wide_init_fn": EMBEDDING_INIT},
            "losses": [{loss: {}}]},
        "train_config": train_config}
    if valid:
        document["eval_input_path"] = valid
    if grouped:
        document["model_config"]["metrics"] = grouped
    metrics = setting(params, "metrics", "texts", [])
    return Converted(document, notes, test, metrics if isinstance(metrics, list) else [metrics],
                     str(params.get("dataset_id")), setting(params, "group_id", "text"))


def _fitted_features(params: dict[str, Any], columns: list[dict[str, Any]], train: str,
                     label: str, sep: str, seed: int | None, dim: int) -> list[dict[str, Any]]:
    """The features, their encoders fitted on ``train`` (one pass; every setting was checked
    before it, so that a mistyped one is said before a long read, not after)."""
    stats = Statistics(columns, (seed or 0) % 2 ** 32)
    for batch in training_blocks(train, [source_column(c) for c in columns], sep):
        missing = [source_column(c) for c in columns if source_column(c) not in batch.columns]
        if missing or label not in batch.columns:
            raise ConfigError(f"{batch.source}: no column {excerpt(missing[0])} (feature_cols)"
                              if missing else f"{batch.source}: no column {excerpt(label)} "
                              f"(label_col)")
        stats.add(batch)
    features = [_feature(col, stats, params, dim) for col in columns]
    _shared_vocabularies(features)
    return features


def _grouped_auc(params: dict[str, Any], notes: list[str]) -> list[dict[str, Any]]:
    """FuxiCTR's ``gAUC``/``avgAUC`` over ``group_id``'s groups as TorchEasyRec's
    ``grouped_auc`` (the unweighted mean: FuxiCTR's avgAUC; its gAUC weights each group by its
    rows); its other metrics beyond fmkit's set (MRR, NDCG@k) are said to be left out."""
    metrics = setting(params, "metrics", "texts", [])
    metrics = metrics if isinstance(metrics, list) else [metrics]
    known = {"logloss", "auc", "binary_crossentropy", "accuracy", "acc", "mse", "rmse",
             *GROUPED}
    left = [m for m in metrics if m.lower() not in known]
    if left:
        notes.append(f"metrics {', '.join(left)}: not reported (fmkit reports AUC, log loss, "
                     f"accuracy, F1, and grouped AUC)")
    if not any(m.lower() in GROUPED for m in metrics):
        return []
    group = setting(params, "group_id", "text")
    if not group:
        raise ConfigError("metrics gAUC/avgAUC need group_id (the column whose values group "
                          "the rows)")
    if "gauc" in {m.lower() for m in metrics}:
        notes.append("gAUC: fmkit's grouped_auc is the unweighted mean of the groups' AUCs "
                     "(FuxiCTR's avgAUC; its gAUC weights each group by its rows)")
    return [{"grouped_auc": {"grouping_key": group}}]


# FuxiCTR's metric names (lowered) as fmkit's metrics name their values
_METRIC_KEYS = {"logloss": "binary_classification_cross_entropy",
                "binary_crossentropy": "binary_classification_cross_entropy", "auc": "auc",
                "acc": "binary_classification_accuracy",
                "accuracy": "binary_classification_accuracy", "rmse": "rmse"}
RESULTS_LINE = re.compile(r" \d{8}-\d{6},\[command\] ")  # how run_expid.py's lines start


def results_file(config_dir: str) -> str:
    """The file ``run_expid.py`` appends its results to: named after its configuration
    directory, in the working directory."""
    return os.path.basename(os.path.normpath(config_dir)).replace(".yaml", "") + ".csv"


def results_line(converted: Converted, expid: str, command: str, valid: dict[str, Any],
                 test: dict[str, Any], when: Any) -> str:
    """``run_expid.py``'s line of results: the time, the command, the experiment, its
    dataset, then the validation and test metrics the experiment names, each ``name:
    value`` (FuxiCTR's ``print_to_list``); those fmkit does not measure (MRR, NDCG) left out,
    as the conversion's notes say."""
    def listed(metrics: dict[str, Any]) -> str:
        named = []
        for name in converted.metrics:
            key = name.lower()
            if key in GROUPED:
                value = metrics.get(f"grouped_auc_{converted.group_id}")
            elif key == "mse":
                value = None if metrics.get("rmse") is None else metrics["rmse"] ** 2
            else:
                value = metrics.get(_METRIC_KEYS.get(key, ""))
            if value is not None:
                named.append(f"{name}: {value:.6f}")
        return " - ".join(named)

    return (f" {when:%Y%m%d-%H%M%S},[command] {command},[exp_id] {expid},[dataset_id] "
            f"{converted.dataset_id},[train] N.A.,[val] {listed(valid)},[test] "
            f"{listed(test)}\n")


def convert(config_dir: str, expid: str, to: str, overrides: list[str] = ()
            ) -> tuple[str, list[str]]:
    """``fmkit config from-fuxictr``: experiment ``expid`` of ``config_dir`` written as ``to``
    (``yaml``, ``json`` or ``config``) after ``--set`` ``overrides``, checked as training checks
    a configuration; and the notes on what fmkit reads differently."""
    converted = to_document(load_experiment(config_dir, expid))
    notes = list(converted.notes)
    if converted.test:
        valid = converted.document.get("eval_input_path")
        notes.append(f"test_data {converted.test}: to score it as run_expid.py does, train with "
                     + (f"--validation {valid} " if valid else "") + f"--test {converted.test}"
                     + (" (--test alone would make it the channel early stopping watches)"
                        if valid else "") + "; fmkit train --config DIR --expid does so")
    return written(apply_overrides(converted.document, list(overrides)), to), notes
