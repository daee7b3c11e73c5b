"""The DeepFM configuration file: TorchEasyRec's ``EasyRecConfig`` fields, in YAML or JSON.

A TorchEasyRec user finds the same nesting and names (``feature_configs``,
``model_config.feature_groups``, ``model_config.deepfm.deep.hidden_units``,
``train_config.sparse_optimizer``, ``data_config.batch_size`` ...), written as YAML (or JSON)
instead of protobuf text. Every section is a dataclass below; :func:`parse` checks a loaded
document against them, so an unknown field or a value of the wrong type is an error naming its
path (``model_config.deepfm.deep.hidden_units[1]: expected an integer, got 'x'``). A
``oneof`` of TorchEasyRec (``id_feature``/``raw_feature``, the optimizers, the losses) is a
mapping with exactly one of its keys.

Fields TorchEasyRec has but fmkit does not use (ODPS, FG modes, sequence features ...) are not
accepted rather than silently ignored, except the few listed in ``IGNORED`` that only tune
TorchEasyRec's own machinery (``num_workers``, ``pin_memory``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from fmkit.errors import FMKitError, did_you_mean


class ConfigError(FMKitError, ValueError):
    """A DeepFM configuration is unreadable, has an unknown field, or breaks a rule."""


# ---- feature configs (TorchEasyRec's feature.proto) ------------------------------------------
@dataclass
class IdFeature:
    """A categorical column: ids mapped to embedding rows by hashing, by value, or a vocabulary."""

    feature_name: str
    embedding_dim: int
    expression: str | None = None  # "user:uid" -> column "uid"; default: feature_name
    embedding_name: str | None = None  # same name = one shared table
    hash_bucket_size: int | None = None
    num_buckets: int | None = None
    vocab_list: list[str] | None = None
    pooling: str = "sum"  # multi-value ids: sum | mean
    separator: str = "\x1d"  # between the values of a multi-value column
    default_value: str = ""  # for a missing value ("" = no id)
    init_fn: str | None = None


@dataclass
class RawFeature:
    """A numeric column: a dense value, or bucketized by ``boundaries`` into an embedding."""

    feature_name: str
    expression: str | None = None
    embedding_name: str | None = None
    embedding_dim: int | None = None  # required with boundaries
    boundaries: list[float] | None = None
    value_dim: int = 1
    normalizer: str | None = None  # log1p | method=log10,... | method=zscore,... | minmax
    default_value: str = "0"
    init_fn: str | None = None


@dataclass
class FeatureConfig:
    id_feature: IdFeature | None = None
    raw_feature: RawFeature | None = None

    ONEOF: typing.ClassVar = ("id_feature", "raw_feature")

    @property
    def feature(self) -> IdFeature | RawFeature:
        return self.id_feature or self.raw_feature


# ---- model (model.proto, rank_model.proto, module.proto) -------------------------------------
@dataclass
class MLP:
    hidden_units: list[int]
    dropout_ratio: list[float] = field(default_factory=list)
    activation: str = "nn.ReLU"
    use_bn: bool = False
    bias: bool = True
    use_ln: bool = False


@dataclass
class DeepFM:
    deep: MLP
    final: MLP | None = None
    wide_embedding_dim: int = 4
    wide_init_fn: str | None = None


@dataclass
class FeatureGroup:
    group_name: str
    feature_names: list[str]
    group_type: str = "DEEP"  # DEEP | WIDE


@dataclass
class Empty:
    """A message without fields (``binary_cross_entropy {}``, ``auc {}``)."""


@dataclass
class BinaryCrossEntropy:
    label_smoothing: float = 0.0


@dataclass
class Loss:
    binary_cross_entropy: BinaryCrossEntropy | None = None
    l2_loss: Empty | None = None

    ONEOF: typing.ClassVar = ("binary_cross_entropy", "l2_loss")


@dataclass
class Metric:
    """Accepted for compatibility; fmkit always reports its full metric set
    (:mod:`fmkit.models.metrics`)."""

    auc: dict | None = None
    accuracy: dict | None = None
    mean_squared_error: dict | None = None
    mean_absolute_error: dict | None = None

    ONEOF: typing.ClassVar = ("auc", "accuracy", "mean_squared_error", "mean_absolute_error")


@dataclass
class ModelConfig:
    feature_groups: list[FeatureGroup]
    deepfm: DeepFM
    num_class: int = 1
    losses: list[Loss] = field(default_factory=lambda: [Loss(BinaryCrossEntropy())])
    metrics: list[Metric] = field(default_factory=list)


# ---- training (train.proto, optimizer.proto) -------------------------------------------------
@dataclass
class OptimizerSettings:
    lr: float = 0.002
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0
    initial_accumulator_value: float = 0.0
    momentum: float | None = None  # dense SGD: TorchEasyRec's default is 0.9


@dataclass
class SparseOptimizer:
    sgd_optimizer: OptimizerSettings | None = None
    adagrad_optimizer: OptimizerSettings | None = None
    rowwise_adagrad_optimizer: OptimizerSettings | None = None
    adam_optimizer: OptimizerSettings | None = None
    constant_learning_rate: Empty | None = None

    ONEOF: typing.ClassVar = ("sgd_optimizer", "adagrad_optimizer", "rowwise_adagrad_optimizer",
                              "adam_optimizer")


@dataclass
class DenseOptimizer:
    sgd_optimizer: OptimizerSettings | None = None
    adagrad_optimizer: OptimizerSettings | None = None
    adam_optimizer: OptimizerSettings | None = None
    adamw_optimizer: OptimizerSettings | None = None
    constant_learning_rate: Empty | None = None

    ONEOF: typing.ClassVar = ("sgd_optimizer", "adagrad_optimizer", "adam_optimizer",
                              "adamw_optimizer")


@dataclass
class TrainConfig:
    sparse_optimizer: SparseOptimizer = field(
        default_factory=lambda: SparseOptimizer(adagrad_optimizer=OptimizerSettings()))
    dense_optimizer: DenseOptimizer = field(
        default_factory=lambda: DenseOptimizer(adam_optimizer=OptimizerSettings()))
    num_epochs: int | None = None
    num_steps: int | None = None
    log_step_count_steps: int = 100
    seed: int = 0  # fmkit's own: parameter init, dropout and shuffling
    # fmkit's own: > 0 scores eval_input_path after every epoch (and every
    # validation_every_steps mini-batches when set), keeps the best measurement's weights and
    # stops after this many measurements without a better early_stopping_metric
    early_stopping_patience: int = 0
    early_stopping_metric: str = "auto"
    validation_every_steps: int = 0


@dataclass
class EvalConfig:
    num_steps: int | None = None


@dataclass
class InputField:
    input_name: str
    input_type: str | None = None


@dataclass
class DataConfig:
    batch_size: int = 1024
    eval_batch_size: int | None = None
    dataset_type: str = "CsvDataset"  # CsvDataset | ParquetDataset
    label_fields: list[str] = field(default_factory=lambda: ["label"])
    input_fields: list[InputField] = field(default_factory=list)
    delimiter: str = ","
    with_header: bool = False
    fg_mode: str = "FG_NONE"
    shuffle: bool = False
    shuffle_buffer_size: int = 32
    num_workers: int = 0
    pin_memory: bool = False
    drop_remainder: bool = False


@dataclass
class EasyRecConfig:
    feature_configs: list[FeatureConfig]
    model_config: ModelConfig
    train_input_path: str | None = None
    eval_input_path: str | None = None
    model_dir: str | None = None
    train_config: TrainConfig = field(default_factory=TrainConfig)
    eval_config: EvalConfig = field(default_factory=EvalConfig)
    data_config: DataConfig = field(default_factory=DataConfig)
    export_config: dict | None = None  # accepted, unused


# ---- reading and checking --------------------------------------------------------------------
def _type_name(kind: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
             dict: "a mapping"}
    if dataclasses.is_dataclass(kind):
        return "a mapping"
    if typing.get_origin(kind) is list:
        return "a list"
    return names.get(kind, str(kind))


def _convert(value: Any, kind: Any, path: str) -> Any:
    """``value`` checked (and converted) against the type hint ``kind``."""
    origin = typing.get_origin(kind)
    if origin in (Union, types.UnionType):
        options = [k for k in typing.get_args(kind) if k is not type(None)]
        if value is None:
            return None
        return _convert(value, options[0], path)
    if origin is list:
        if not isinstance(value, list):
            value = [value]  # a repeated field given once, as protobuf text allows
        (item,) = typing.get_args(kind)
        return [_convert(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(kind):
        return _from_mapping(kind, {} if value is None else value, path)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            return int(value)
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif kind is dict and (isinstance(value, dict) or value is None):
        return value or {}
    raise ConfigError(f"{path}: expected {_type_name(kind)}, got {value!r}")


def _from_mapping(cls: type, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'the configuration'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{_join(path, unknown[0])}: unknown field"
                          f"{did_you_mean(str(unknown[0]), fields)} (valid: "
                          f"{', '.join(fields)})")
    values = {}
    for name, f in fields.items():
        if name in data:
            values[name] = _convert(data[name], hints[name], _join(path, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{_join(path, name)}: required field is missing")
    oneof = getattr(cls, "ONEOF", None)
    if oneof is not None:
        chosen = [name for name in oneof if values.get(name) is not None]
        if len(chosen) != 1:
            raise ConfigError(f"{path}: expected exactly one of {', '.join(oneof)}, got "
                              f"{', '.join(chosen) or 'none'}")
    return cls(**values)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def parse(document: dict[str, Any]) -> EasyRecConfig:
    """The configuration in ``document`` (a loaded YAML/JSON mapping), checked field by field;
    the model-level rules (groups, dimensions) are checked by
    :mod:`fmkit.models.deepfm.features`."""
    config = _from_mapping(EasyRecConfig, document, "")
    train = config.train_config
    if (train.num_epochs is None) == (train.num_steps is None):
        if train.num_epochs is None and train.num_steps is None:
            train.num_epochs = 1
        else:
            raise ConfigError("train_config: set num_epochs or num_steps, not both")
    for where, value in (("train_config.num_epochs", train.num_epochs),
                         ("train_config.num_steps", train.num_steps),
                         ("eval_config.num_steps", config.eval_config.num_steps),
                         ("data_config.batch_size", config.data_config.batch_size),
                         ("data_config.eval_batch_size", config.data_config.eval_batch_size)):
        if value is not None and value <= 0:
            raise ConfigError(f"{where}: must be a positive integer, got {value}")
    if config.model_config.num_class != 1:
        raise ConfigError("model_config.num_class: fmkit's DeepFM supports num_class 1 "
                          "(binary cross entropy or l2_loss)")
    if len(config.model_config.losses) != 1:
        raise ConfigError("model_config.losses: expected one loss")
    if config.data_config.dataset_type not in ("CsvDataset", "ParquetDataset"):
        raise ConfigError(f"data_config.dataset_type: expected CsvDataset or ParquetDataset, "
                          f"got {config.data_config.dataset_type!r}")
    if config.data_config.fg_mode != "FG_NONE":
        raise ConfigError("data_config.fg_mode: only FG_NONE (columns named after features or "
                          "their expression) is supported")
    if len(config.data_config.label_fields) != 1:
        raise ConfigError("data_config.label_fields: expected one label column")
    return config


def to_document(config: EasyRecConfig) -> dict[str, Any]:
    """The configuration as plain data (what the model directory stores), without unset
    optional fields."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if v is not None}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip(dataclasses.asdict(config))


@functools.cache
def _yaml_loader() -> type:
    import yaml

    class Loader(yaml.SafeLoader):
        """YAML without aliases: ``*name`` can expand a few bytes into billions of nodes (an
        "alias bomb" hangs whatever walks the document), and configurations need none."""

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.composer.ComposerError(
                    None, None, f"YAML aliases (*{event.anchor}) are not supported in a "
                    "configuration: write the values out", event.start_mark)
            return super().compose_node(parent, index)

    return Loader


def load_document(path: str | Path) -> dict[str, Any]:
    """A configuration file as plain data: YAML (``.yaml``/``.yml``/anything else) or JSON."""
    import yaml

    loader = _yaml_loader()
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the configuration: {e.strerror}") from None
    try:
        document = json.loads(text) if path.suffix == ".json" else yaml.load(text, loader)
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply") from None
    except (ValueError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                          f"{e}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return document


def apply_overrides(document: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    """``--set path=value`` overrides: ``train_config.num_epochs=2``,
    ``feature_configs[0].id_feature.embedding_dim=8``; values are YAML scalars or lists, or
    else taken as text."""
    import yaml

    for assignment in assignments:
        path, sep, text = assignment.partition("=")
        if not sep or not path:
            raise ConfigError(f"--set: expected path=value, got {assignment!r}")
        keys: list[str | int] = []
        for part in path.strip().split("."):
            match = re.fullmatch(r"([A-Za-z_]\w*)((?:\[\d+\])*)", part)
            if not match:
                raise ConfigError(f"--set {path}: cannot read {part!r} as a field name")
            keys.append(match.group(1))
            keys.extend(int(i) for i in re.findall(r"\[(\d+)\]", match.group(2)))
        target: Any = document
        for key, next_key in zip(keys, keys[1:]):
            if isinstance(key, int):
                if not isinstance(target, list) or key >= len(target):
                    raise ConfigError(f"--set {path}: no element [{key}]")
                target = target[key]
            else:
                if not isinstance(target, dict):
                    raise ConfigError(f"--set {path}: {key} is not inside a mapping")
                target = target.setdefault(key, [] if isinstance(next_key, int) else {})
        last = keys[-1]
        try:
            value = yaml.load(text, _yaml_loader()) if text.strip() else ""
        except yaml.YAMLError:
            value = text  # not YAML (e.g. "," or "\t"): the text itself
        if isinstance(last, int):
            if not isinstance(target, list) or last >= len(target):
                raise ConfigError(f"--set {path}: no element [{last}]")
            target[last] = value
        elif isinstance(target, dict):
            target[last] = value
        else:
            raise ConfigError(f"--set {path}: {last} is not inside a mapping")
    return document


def load(path: str | Path, assignments: list[str] = ()) -> EasyRecConfig:
    """Read, override and check a configuration file."""
    return parse(apply_overrides(load_document(path), list(assignments)))
