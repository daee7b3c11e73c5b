"""The DeepFM configuration file: TorchEasyRec's ``EasyRecConfig`` fields, in YAML or JSON.

A TorchEasyRec user finds the same nesting and names (``feature_configs``,
``model_config.feature_groups``, ``model_config.deepfm.deep.hidden_units``,
``train_config.sparse_optimizer``, ``data_config.batch_size`` ...), written as YAML (or JSON)
instead of protobuf text. Every section is a dataclass below; :func:`parse` checks a loaded
document against them, so an unknown field or a value of the wrong type is an error naming its
path (``model_config.deepfm.deep.hidden_units[1]: expected an integer, got 'x'``). A
``oneof`` of TorchEasyRec (``id_feature``/``raw_feature``, the optimizers, the losses) is a
mapping with exactly one of its keys.

The same dataclasses define the messages of TorchEasyRec's protobuf text form (``.config``
files, :mod:`fmkit.models.deepfm.prototext`): a field with ``metadata["enum"]`` is an enum
there. Fields that only tune TorchEasyRec's own machinery (``num_workers``, ODPS options,
TensorBoard) are declared :func:`ignored`: accepted, reported once, unused. Other TorchEasyRec
fields are not accepted rather than silently ignored; :data:`INSTEAD` says what to use instead
of the ones users meet most.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from fmkit.errors import FMKitError, did_you_mean, excerpt
from fmkit.logs import log


class ConfigError(FMKitError, ValueError):
    """A DeepFM configuration is unreadable, has an unknown field, or breaks a rule."""


def ignored(default: Any = None) -> Any:
    """A TorchEasyRec field that only tunes TorchEasyRec's own machinery: accepted, reported
    once as ignored, never used."""
    return field(default=default, metadata={"ignored": True})


def enum(name: str, values: tuple[str, ...], default: str | None) -> Any:
    """A field TorchEasyRec declares as an enum (unquoted in protobuf text)."""
    return field(default=default, metadata={"enum": values, "enum_name": name})


# ---- feature configs (TorchEasyRec's feature.proto) ------------------------------------------
@dataclass
class ParameterConstraints:
    """torchrec's sharding types and compute kernels for a table (fmkit replicates every table
    on each process: accepted and ignored)."""

    sharding_types: list[str] = field(default_factory=list)
    compute_kernels: list[str] = field(default_factory=list)


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
    vocab_dict: dict[str, int] | None = None
    vocab_file: str | None = None  # a word per line, or "word index" per line
    default_bucketize_value: int | None = None  # the row of out-of-vocabulary values
    pooling: str = "sum"  # multi-value ids: sum | mean
    separator: str = "\x1d"  # between the values of a multi-value column
    default_value: str = ""  # for a missing value ("" = no id)
    init_fn: str | None = None
    value_dim: int | None = None  # 0 = multi-value (fmkit: any id feature may be)
    data_type: str | None = ignored()
    embedding_constraints: ParameterConstraints | None = ignored()
    stub_type: bool | None = ignored()
    fg_value_type: str | None = ignored()  # (a speed hint to TorchEasyRec's feature generation)


@dataclass
class SequenceIdFeature(IdFeature):
    """An id sequence in one column (``"a;b;c"``), its first ``sequence_length`` ids pooled
    into the groups (fmkit pools; attention encoders are not supported)."""

    sequence_length: int | None = None
    sequence_delim: str = ";"


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
    pooling: str = "sum"
    separator: str = "\x1d"
    data_type: str | None = ignored()
    embedding_constraints: ParameterConstraints | None = ignored()
    stub_type: bool | None = ignored()


@dataclass
class SequenceRawFeature(RawFeature):
    """A number sequence in one column (``"1.5;2;0"``), its first ``sequence_length`` values
    pooled (``pooling`` sum or mean) into one dense value, or their buckets' embeddings."""

    sequence_length: int | None = None
    sequence_delim: str = ";"


@dataclass
class ComboFeature:
    """The cross of several categorical columns: every combination of their values in a row
    is one id, hashed or looked up in a vocabulary."""

    feature_name: str
    embedding_dim: int
    expression: list[str] = field(default_factory=list)  # two or more inputs
    embedding_name: str | None = None
    hash_bucket_size: int | None = None
    vocab_list: list[str] | None = None
    vocab_dict: dict[str, int] | None = None
    vocab_file: str | None = None
    default_bucketize_value: int | None = None
    pooling: str = "sum"
    separator: str = "\x1d"
    default_value: str = ""
    init_fn: str | None = None
    value_dim: int | None = None
    data_type: str | None = ignored()
    embedding_constraints: ParameterConstraints | None = ignored()


@dataclass
class LookupFeature:
    """The value a row's ``key`` has in the row's ``map`` column (``"k1:v1\\x1dk2:v2"``),
    combined over multi-value keys; numeric (dense or bucketized) or, with ``need_discrete``,
    an id."""

    feature_name: str
    map: str
    key: str
    embedding_dim: int | None = None
    embedding_name: str | None = None
    boundaries: list[float] | None = None
    hash_bucket_size: int | None = None
    num_buckets: int | None = None
    vocab_list: list[str] | None = None
    vocab_dict: dict[str, int] | None = None
    vocab_file: str | None = None
    default_bucketize_value: int | None = None
    combiner: str = "sum"  # sum | mean | min | max | count
    need_discrete: bool = False
    need_key: bool = False
    normalizer: str | None = None
    value_dim: int | None = None
    pooling: str = "sum"
    separator: str = "\x1d"  # between a multi-value key's values
    default_value: str = "0"
    init_fn: str | None = None
    data_type: str | None = ignored()
    embedding_constraints: ParameterConstraints | None = ignored()


@dataclass
class ExprFeature:
    """An arithmetic expression over numeric columns (``"u_age == i_age ? 1 : 0"``), parsed
    by :mod:`fmkit.models.deepfm.expressions`, never evaluated as code."""

    feature_name: str
    expression: str
    variables: list[str] = field(default_factory=list)
    embedding_dim: int | None = None
    embedding_name: str | None = None
    boundaries: list[float] | None = None
    normalizer: str | None = None
    default_value: str = "0"
    init_fn: str | None = None
    value_dim: int | None = None
    data_type: str | None = ignored()
    embedding_constraints: ParameterConstraints | None = ignored()


FEATURE_KINDS = ("id_feature", "raw_feature", "combo_feature", "lookup_feature", "expr_feature",
                 "sequence_id_feature", "sequence_raw_feature")


@dataclass
class FeatureConfig:
    id_feature: IdFeature | None = None
    raw_feature: RawFeature | None = None
    combo_feature: ComboFeature | None = None
    lookup_feature: LookupFeature | None = None
    expr_feature: ExprFeature | None = None
    sequence_id_feature: SequenceIdFeature | None = None
    sequence_raw_feature: SequenceRawFeature | None = None

    ONEOF: typing.ClassVar = FEATURE_KINDS

    @property
    def kind(self) -> str:
        return next(name for name in self.ONEOF if getattr(self, name) is not None)

    @property
    def feature(self) -> Any:
        return getattr(self, self.kind)


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


GROUP_TYPES = ("DEEP", "WIDE", "SEQUENCE", "JAGGED_SEQUENCE")


@dataclass
class FeatureGroup:
    group_name: str
    feature_names: list[str]
    group_type: str = enum("FeatureGroupType", GROUP_TYPES, "DEEP")


@dataclass
class Empty:
    """A message without fields (``l2_loss {}``, ``constant_learning_rate {}``)."""


@dataclass
class LabelSmoothing:
    label_smoothing: float = 0.0


@dataclass
class FocalLoss:
    """TorchEasyRec's ``binary_focal_loss``: each row's cross entropy weighted by
    ``alpha (1 - p)^gamma`` (a positive) or ``(1 - alpha) p^gamma`` (a negative), the weight
    held constant in the gradient, as its ``BinaryFocalLoss`` detaches it."""
    gamma: float = 2.0
    alpha: float = 0.5


@dataclass
class Loss:
    binary_cross_entropy: LabelSmoothing | None = None
    softmax_cross_entropy: LabelSmoothing | None = None
    l2_loss: Empty | None = None
    binary_focal_loss: FocalLoss | None = None

    ONEOF: typing.ClassVar = ("binary_cross_entropy", "softmax_cross_entropy", "l2_loss",
                              "binary_focal_loss")
    BINARY: typing.ClassVar = ("binary_cross_entropy", "binary_focal_loss")

    @property
    def binary(self) -> bool:
        """Whether the loss scores one probability (a binary classifier's)."""
        return any(getattr(self, name) is not None for name in self.BINARY)


@dataclass
class AUC:
    thresholds: int | None = ignored()  # fmkit's AUC is exact, not over threshold buckets


@dataclass
class Accuracy:
    threshold: float | None = ignored()  # fmkit's accuracy: at 0.5 (binary), top 1 (classes)
    top_k: int | None = ignored()


@dataclass
class GroupedAUC:
    grouping_key: str


@dataclass
class NormalizedEntropy:
    eta: float | None = ignored()  # (torchrec's clamp of predictions; fmkit's log loss is
    # computed from the logits, exactly)


@dataclass
class Metric:
    """The metrics TorchEasyRec users name; fmkit always reports its full metric set
    (:mod:`fmkit.models.metrics`), plus ``grouped_auc`` when one is configured."""

    auc: AUC | None = None
    multiclass_auc: AUC | None = None
    accuracy: Accuracy | None = None
    mean_squared_error: Empty | None = None
    mean_absolute_error: Empty | None = None
    grouped_auc: GroupedAUC | None = None
    normalized_entropy: NormalizedEntropy | None = None

    ONEOF: typing.ClassVar = ("auc", "multiclass_auc", "accuracy", "mean_squared_error",
                              "mean_absolute_error", "grouped_auc", "normalized_entropy")


@dataclass
class ModelConfig:
    feature_groups: list[FeatureGroup]
    deepfm: DeepFM
    num_class: int = 1
    losses: list[Loss] = field(default_factory=lambda: [Loss(LabelSmoothing())])
    metrics: list[Metric] = field(default_factory=list)
    train_metrics: list[Metric] = ignored()
    kernel: str | None = field(default=None, metadata={
        "ignored": True, "enum": ("TRITON", "PYTORCH", "CUTLASS"), "enum_name": "Kernel"})


# ---- training (train.proto, optimizer.proto) -------------------------------------------------
@dataclass
class OptimizerSettings:
    lr: float = 0.002
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0
    # sparse row-wise AdaGrad: how weight_decay acts (fbgemm's modes); TorchEasyRec's default
    # NONE leaves it without effect
    weight_decay_mode: str = enum("WeightDecayMode", ("NONE", "L2", "DECOUPLE"), "NONE")
    initial_accumulator_value: float = 0.0
    momentum: float | None = None  # dense SGD: TorchEasyRec's default is 0.9
    rho: float = 0.9  # dense adadelta
    alpha: float = 0.99  # dense rmsprop
    centered: bool = False  # dense rmsprop
    # the sparse (fbgemm's fused) optimizers: each element of the gradient reaching the
    # embedding bags' outputs clipped into [-max_gradient, max_gradient] (unset: false and
    # 1.0, TorchEasyRec's defaults; None keeps older models' stored configurations, and the
    # checkpoints of runs without them, as they were)
    gradient_clipping: bool | None = None
    max_gradient: float | None = None


@dataclass
class ExponentialDecay:
    decay_size: int
    decay_factor: float = 0.95
    staircase: bool = True
    warmup_learning_rate: float = 0.0
    warmup_size: int = 0
    min_learning_rate: float = 0.0
    by_epoch: bool = False


@dataclass
class ManualStep:
    schedule_sizes: list[int] = field(default_factory=list)
    learning_rates: list[float] = field(default_factory=list)
    warmup: bool = False
    by_epoch: bool = False


@dataclass
class Constant:
    by_epoch: bool = False


@dataclass
class CosineAnnealing:
    T_max: int
    min_learning_rate: float = 0.0
    warmup_learning_rate: float = 0.0
    warmup_size: int = 0
    by_epoch: bool = False


@dataclass
class CosineAnnealingWarmRestarts:
    T_0: int
    T_mult: int = 1
    min_learning_rate: float = 0.0
    warmup_learning_rate: float = 0.0
    warmup_size: int = 0
    by_epoch: bool = False


SCHEDULES = ("constant_learning_rate", "exponential_decay_learning_rate",
             "manual_step_learning_rate", "cosine_annealing_learning_rate",
             "cosine_annealing_warm_restarts_learning_rate")


@dataclass
class SparseOptimizer:
    sgd_optimizer: OptimizerSettings | None = None
    adagrad_optimizer: OptimizerSettings | None = None
    rowwise_adagrad_optimizer: OptimizerSettings | None = None
    adam_optimizer: OptimizerSettings | None = None
    constant_learning_rate: Constant | None = None
    exponential_decay_learning_rate: ExponentialDecay | None = None
    manual_step_learning_rate: ManualStep | None = None
    cosine_annealing_learning_rate: CosineAnnealing | None = None
    cosine_annealing_warm_restarts_learning_rate: CosineAnnealingWarmRestarts | None = None

    ONEOF: typing.ClassVar = ("sgd_optimizer", "adagrad_optimizer", "rowwise_adagrad_optimizer",
                              "adam_optimizer")


@dataclass
class DenseEMA:
    """TorchEasyRec's ``dense_optimizer.ema``: an exponential moving average of the dense
    parameters, taken after every optimizer step (the first takes them as they are, then
    ``average += (1 - decay) * (parameter - average)``); the embedding tables are not
    averaged. Validation and the written model use it as ``eval_config`` and
    ``export_config``'s ``use_dense_ema`` say (both default to on)."""
    decay: float = 0.999


@dataclass
class DenseOptimizer:
    sgd_optimizer: OptimizerSettings | None = None
    adagrad_optimizer: OptimizerSettings | None = None
    adam_optimizer: OptimizerSettings | None = None
    adamw_optimizer: OptimizerSettings | None = None
    adadelta_optimizer: OptimizerSettings | None = None
    rmsprop_optimizer: OptimizerSettings | None = None
    constant_learning_rate: Constant | None = None
    exponential_decay_learning_rate: ExponentialDecay | None = None
    manual_step_learning_rate: ManualStep | None = None
    cosine_annealing_learning_rate: CosineAnnealing | None = None
    cosine_annealing_warm_restarts_learning_rate: CosineAnnealingWarmRestarts | None = None
    ema: DenseEMA | None = None

    ONEOF: typing.ClassVar = ("sgd_optimizer", "adagrad_optimizer", "adam_optimizer",
                              "adamw_optimizer", "adadelta_optimizer", "rmsprop_optimizer")


@dataclass
class GradClipping:
    """TorchEasyRec's ``grad_clipping``: the dense parameters' gradients clipped before each
    step (torchrec's ``GradientClippingOptimizer``); the sparse tables', updated by their own
    optimizer, are not (TorchEasyRec's fused optimizers update them inside backward)."""
    clipping_type: str = "none"  # none | norm | value (any case, as TorchEasyRec reads it)
    max_gradient: float = 1.0
    norm_type: float = 2.0  # the p of the norm; inf for the largest magnitude
    # fmkit's dense parameters are copies on every process, their gradients combined before
    # the step: the global norm is the local one
    enable_global_grad_clip: bool = False

    @property
    def kind(self) -> str:
        return self.clipping_type.lower()


@dataclass
class TrainConfig:
    sparse_optimizer: SparseOptimizer = field(
        default_factory=lambda: SparseOptimizer(adagrad_optimizer=OptimizerSettings()))
    dense_optimizer: DenseOptimizer = field(
        default_factory=lambda: DenseOptimizer(adam_optimizer=OptimizerSettings()))
    num_epochs: int | None = None
    num_steps: int | None = None
    log_step_count_steps: int | None = ignored()  # fmkit logs progress every 30 s
    seed: int = 0  # fmkit's own: parameter init, dropout and shuffling
    # fmkit's own: > 0 scores eval_input_path after every epoch (and every
    # validation_every_steps mini-batches when set), keeps the best measurement's weights and
    # stops after this many measurements without a better early_stopping_metric
    early_stopping_patience: int = 0
    early_stopping_metric: str = "auto"
    validation_every_steps: int = 0
    # "" (float32) or "BF16": the network's forward pass under torch.autocast in bfloat16
    # (its weights, optimizers and the loss stay float32); TorchEasyRec's FP16 is refused
    mixed_precision: str = ""
    grad_clipping: GradClipping | None = None
    # > 1: the dense optimizer steps once every this many mini-batches, on their gradients
    # summed (each a mini-batch's mean), as TorchEasyRec's TZRecOptimizer does; the embedding
    # tables' optimizer, fused into backward there, steps every mini-batch (unset: 0)
    gradient_accumulation_steps: int | None = None
    # a DeepFM model directory of the same features and network whose weights training starts
    # from (as --init-model; fmkit train --init-model DIR overrides it). TorchEasyRec names a
    # checkpoint of its own here: fmkit reads fmkit's models, parameter for parameter
    fine_tune_checkpoint: str | None = None
    save_checkpoints_steps: int | None = ignored()
    save_checkpoints_epochs: int | None = ignored()
    is_profiling: bool | None = ignored()
    use_tensorboard: bool | None = ignored()
    tensorboard_summaries: list[str] = ignored()
    cudnn_allow_tf32: bool | None = ignored()
    cuda_matmul_allow_tf32: bool | None = ignored()
    global_embedding_constraints: ParameterConstraints | None = ignored()
    keep_checkpoint_max: int | None = ignored()

    @property
    def bfloat16(self) -> bool:
        """Whether the network computes in bfloat16 (``mixed_precision: BF16``): its forward
        passes in training and in scoring alike (evaluate, predict, serve), so that a model
        scores as it was validated."""
        return self.mixed_precision == "BF16"


@dataclass
class EvalConfig:
    num_steps: int | None = None
    # validation (and early stopping) scores with the dense parameters' average; unset: on
    # when train_config.dense_optimizer.ema is set (TorchEasyRec's rule)
    use_dense_ema: bool | None = None
    log_step_count_steps: int | None = ignored()


@dataclass
class ExportConfig:
    # "" (as trained) or "BF16": the model scores (evaluate, predict, serve) with its forward
    # pass in bfloat16 where the CPU computes it natively, whatever precision it trained in
    mixed_precision: str = ""
    # fmkit's: "" (float32) or "INT8": the MLPs' linear layers score with int8 products on
    # the CPU (evaluate, predict, serve; fmkit.models.deepfm.quantized)
    dense_quantization: str = ""
    # the model written holds the dense parameters' average; unset: on when
    # train_config.dense_optimizer.ema is set (TorchEasyRec's rule)
    use_dense_ema: bool | None = None
    # "latest" (the model as training ends) or "best": eval_input_path (or --validation) is
    # scored after every epoch, and the model written is the best measurement's by
    # best_exporter_metric (TorchEasyRec's exporters score at each checkpoint instead); unset:
    # latest, auc, true (TorchEasyRec's defaults)
    exporter_type: str | None = None
    best_exporter_metric: str | None = None
    metric_larger_is_better: bool | None = None
    cudnn_allow_tf32: bool | None = ignored()
    cuda_matmul_allow_tf32: bool | None = ignored()


FIELD_TYPES = ("INT32", "INT64", "STRING", "FLOAT", "DOUBLE", "BOOLEAN", "ARRAY_INT32",
               "ARRAY_INT64", "ARRAY_STRING", "ARRAY_FLOAT", "ARRAY_DOUBLE", "MAP_STRING_INT32",
               "MAP_STRING_INT64", "MAP_STRING_STRING", "MAP_STRING_FLOAT",
               "MAP_STRING_DOUBLE", "MAP_INT64_INT32", "MAP_INT64_INT64", "MAP_INT64_STRING",
               "MAP_INT64_FLOAT", "MAP_INT64_DOUBLE")


@dataclass
class InputField:
    input_name: str
    input_type: str | None = enum("FieldType", FIELD_TYPES, None)


DATASET_TYPES = ("OdpsDataset", "ParquetDataset", "CsvDataset", "OdpsDatasetV1", "KafkaDataset")
FG_MODES = ("FG_NONE", "FG_NORMAL", "FG_DAG", "FG_BUCKETIZE")


@dataclass
class DataConfig:
    batch_size: int = 1024
    eval_batch_size: int | None = None
    dataset_type: str = enum("DatasetType", DATASET_TYPES, "CsvDataset")
    label_fields: list[str] = field(default_factory=lambda: ["label"])
    input_fields: list[InputField] = field(default_factory=list)
    # TorchEasyRec's other way to write them, "name:TYPE;..." (types as ODPS writes them too:
    # BIGINT, ARRAY<INT>, MAP<STRING,BIGINT>): read into input_fields, which it replaces
    input_fields_str: str | None = None
    sample_weight_fields: list[str] = field(default_factory=list)
    delimiter: str = ","
    with_header: bool = False
    fg_mode: str = enum("FgMode", FG_MODES, "FG_NONE")
    shuffle: bool = False  # within each block read (4 MB), not a buffer of batches
    shuffle_buffer_size: int | None = ignored()
    drop_remainder: bool = False
    num_workers: int | None = ignored()
    pin_memory: bool | None = ignored()
    fg_encoded: bool | None = ignored()
    fg_threads: int | None = ignored()
    is_orderby_partition: bool | None = ignored()
    odps_data_quota_name: str | None = ignored()
    odps_data_compression: str | None = ignored()
    in_order: bool | None = ignored()


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
    export_config: ExportConfig = field(default_factory=ExportConfig)

    def uses_dense_ema(self, part: str) -> bool:
        """Whether ``part`` (``eval_config`` or ``export_config``) uses the dense parameters'
        average: its ``use_dense_ema`` when set, else whether training keeps one."""
        chosen = getattr(self, part).use_dense_ema
        return self.train_config.dense_optimizer.ema is not None if chosen is None else chosen


# TorchEasyRec fields fmkit refuses, and what to do instead (the answer to "unknown field")
_FEATURE_TYPES = "fmkit's feature types are " + ", ".join(FEATURE_KINDS)
_MODELS = ("fmkit trains DeepFM: write the model as model_config.deepfm {deep {...} final "
           "{...}} with the groups wide, fm and deep")
INSTEAD = {
    "zch": "zero-collision hashing is not supported: use hash_bucket_size",
    "dynamicemb": "dynamic embeddings are not supported: use hash_bucket_size",
    "weighted": "weighted ids are not supported: use a lookup_feature for per-id values",
    "autodis": "AutoDis embeddings of raw features are not supported: use boundaries",
    "mlp": "MLP embeddings of raw features are not supported: use boundaries",
    "fg_encoded_default_value": "use default_value",
    "trainable": "frozen embedding tables are not supported: remove it",
    "use_mask": "masking a feature's values in training is not supported: remove it",
    **{name: "fmkit does not compute this metric: remove it (it reports AUC, log loss, "
             "accuracy, F1 or RMSE, grouped_auc and normalized_entropy when configured)"
       for name in ("recall_at_k", "xauc", "grouped_xauc")},
    "fg_encoded_multival_sep": "fmkit reads the features' own inputs in every fg_mode and "
                               "splits multi-value ones at each feature's separator: set "
                               "separator on those features",
    "asset_dir": "give vocab_file's own path (relative to the working directory)",
    "sequence_groups": "attention over sequences is not supported: put sequence_id_feature / "
                       "sequence_raw_feature features (pooled) in the group's feature_names",
    "sequence_encoders": "attention over sequences is not supported: put sequence_id_feature "
                         "/ sequence_raw_feature features (pooled) in the group's "
                         "feature_names",
    "variational_dropout": "variational dropout is not supported: use the MLPs' dropout_ratio",
    "grad_scaler": "fmkit trains in float32 or bfloat16 (mixed_precision: BF16), which needs no "
                   "loss scaling: remove it",
    "fine_tune_ckpt_param_map": "fine_tune_checkpoint names a model of the same features and "
                                "network, whose parameters are read by their own names",
    "part_optimizers": "one dense optimizer applies to all dense parameters",
    "negative_sampler": "samplers are for matching models, not DeepFM",
    **{name: "PyTorch has no sparse-gradient version of it: use adagrad_optimizer, "
             "rowwise_adagrad_optimizer, adam_optimizer (lazy) or sgd_optimizer" for name in (
        "lars_sgd_optimizer", "lamb_optimizer", "partial_rowwise_lamb_optimizer",
        "partial_rowwise_adam_optimizer", "adadelta_optimizer", "rmsprop_optimizer")},
    "jrc_loss": "use binary_cross_entropy or softmax_cross_entropy",
    **{name: _FEATURE_TYPES for name in (
        "match_feature", "overlap_feature", "tokenize_feature", "custom_feature",
        "kv_dot_product", "bool_mask_feature", "combine_feature", "sequence_feature",
        "sequence_combo_feature", "sequence_lookup_feature", "sequence_match_feature",
        "sequence_expr_feature", "sequence_custom_feature")},
    **{name: _MODELS for name in (
        "dlrm", "multi_tower", "multi_tower_din", "mask_net", "wide_and_deep", "dcn_v1",
        "dcn_v2", "xdeepfm", "wukong", "simple_multi_task", "mmoe", "dbmtl", "ple", "dssm",
        "dssm_v2", "mind", "tdm", "rocket_launching", "dlrm_hstu", "rank_backbone",
        "multi_task_rank_backbone", "match_backbone")},
}


def unknown_field_help(name: str, where: str, valid: Any = ()) -> str:
    """What to say about a field fmkit does not accept: what to use instead for the
    TorchEasyRec fields it refuses, else a spelling hint and the valid names."""
    if name in INSTEAD:
        return f"not supported by fmkit: {INSTEAD[name]}"
    listed = f" (valid in {where}: {', '.join(valid)})" if valid else f" in {where}"
    return f"unknown field{did_you_mean(name, valid)}{listed}"


# ---- reading and checking --------------------------------------------------------------------
def _type_name(kind: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
             dict: "a mapping"}
    if dataclasses.is_dataclass(kind):
        return "a mapping"
    if typing.get_origin(kind) is list:
        return "a list"
    return names.get(kind, str(kind))


def _convert(value: Any, kind: Any, path: str, ignored: list[str]) -> Any:
    """``value`` checked (and converted) against the type hint ``kind``."""
    origin = typing.get_origin(kind)
    if origin in (Union, types.UnionType):
        options = [k for k in typing.get_args(kind) if k is not type(None)]
        if value is None:
            return None
        return _convert(value, options[0], path, ignored)
    if origin is list:
        if not isinstance(value, list):
            value = [value]  # a repeated field given once, as protobuf text allows
        (item,) = typing.get_args(kind)
        return [_convert(v, item, f"{path}[{i}]", ignored) for i, v in enumerate(value)]
    if typing.get_origin(kind) is dict:  # a protobuf map: vocab_dict {key: "a" value: 2}
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got "
                              f"{excerpt(repr(value), quote=False)}")
        key_kind, value_kind = typing.get_args(kind)
        return {_convert(k, key_kind, f"{path}[{k!r}]", ignored):
                _convert(v, value_kind, f"{path}[{k!r}]", ignored) for k, v in value.items()}
    if dataclasses.is_dataclass(kind):
        return _from_mapping(kind, {} if value is None else value, path, ignored)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif kind is int:
        number = _integer(value)
        if number is not None and abs(number) >= 2 ** 63:
            raise ConfigError(f"{path}: {excerpt(str(number), quote=False)} is out of range "
                              "(a 64-bit integer)")
        if number is not None:
            return number
    elif kind is float:
        number = _number(value)
        if number is not None and not math.isnan(number):  # (inf is one: norm_type)
            return number
    elif kind is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif kind is dict and (isinstance(value, dict) or value is None):
        return value or {}
    raise ConfigError(f"{path}: expected {_type_name(kind)}, got "
                      f"{excerpt(repr(value), quote=False)}")


def _integer(value: Any) -> int | None:
    """An integer, a whole float or an integer's text as an int (None if it is neither)."""
    if isinstance(value, bool):
        return None
    whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    text = isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip())
    return int(value) if whole or text else None


def _number(value: Any) -> float | None:
    """A number, or its text, as a float (None if it is neither)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    try:
        return float(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _from_mapping(cls: type, data: Any, path: str, ignored: list[str]) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'the configuration'}: expected a mapping, got "
                          f"{excerpt(repr(data), quote=False)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        name = str(unknown[0])
        raise ConfigError(f"{_join(path, name)}: {unknown_field_help(name, cls.__name__, fields)}")
    values = {}
    for name, f in fields.items():
        if name in data:
            if f.metadata.get("ignored"):
                ignored.append(_join(path, name))
                continue
            values[name] = _convert(data[name], hints[name], _join(path, name), ignored)
            if "enum" in f.metadata and values[name] not in f.metadata["enum"]:
                raise ConfigError(f"{_join(path, name)}: expected one of "
                                  f"{', '.join(f.metadata['enum'])}, got {values[name]!r}")
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


def parse(document: dict[str, Any], *, report_ignored: bool = False,
          saved: bool = False) -> EasyRecConfig:
    """The configuration in ``document`` (a loaded YAML/JSON/protobuf-text mapping), checked
    field by field; the model-level rules (groups, dimensions) are checked by
    :mod:`fmkit.models.deepfm.features`. ``report_ignored`` logs, once, the TorchEasyRec
    fields that were set but do nothing in fmkit. ``saved``: a trained model's configuration,
    whose optimizers are not checked for settings they do not read (an older fmkit accepted
    them: the model must still load)."""
    ignored: list[str] = []
    config = _from_mapping(EasyRecConfig, document, "", ignored)
    if report_ignored and ignored:
        log.warning("ignored (TorchEasyRec settings without effect in fmkit): %s",
                    ", ".join(ignored))
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
    if train.mixed_precision not in ("", "BF16"):
        raise ConfigError(f"train_config.mixed_precision: expected BF16 (or unset for float32), "
                          f"got {excerpt(train.mixed_precision)}; FP16 needs loss scaling, "
                          "which fmkit does not do")
    if train.grad_clipping is not None:
        _check_grad_clipping(train.grad_clipping)
    if (train.gradient_accumulation_steps or 0) < 0:
        raise ConfigError(f"train_config.gradient_accumulation_steps: must be >= 0, got "
                          f"{train.gradient_accumulation_steps}")
    _check_dense_ema(config)
    export = config.export_config
    if export.mixed_precision not in ("", "BF16"):
        raise ConfigError(f"export_config.mixed_precision: expected BF16 (or unset: as "
                          f"trained), got {excerpt(export.mixed_precision)}")
    if export.dense_quantization not in ("", "INT8"):
        raise ConfigError(f"export_config.dense_quantization: expected INT8 (or unset for "
                          f"float32), got {excerpt(export.dense_quantization)}")
    if export.exporter_type not in (None, "latest", "best"):
        raise ConfigError(f"export_config.exporter_type: expected latest or best, got "
                          f"{excerpt(export.exporter_type)}")
    if export.dense_quantization and export.mixed_precision:
        raise ConfigError("export_config: set mixed_precision or dense_quantization, not both "
                          "(with INT8 the layers between the int8 products score in float32)")
    _check_model(config.model_config)
    _check_data(config)
    if not saved:
        _say_dense_embedding_settings(config.feature_configs)
    if train.seed < 0:
        raise ConfigError(f"train_config.seed: must be >= 0, got {train.seed}")
    for kind in ("sparse_optimizer", "dense_optimizer"):
        optimizer = getattr(train, kind)
        name = next((n for n in optimizer.ONEOF if getattr(optimizer, n) is not None), None)
        if name:
            _check_optimizer(getattr(optimizer, name), f"train_config.{kind}.{name}",
                             () if saved else OPTIMIZER_SETTINGS[kind][name])
        chosen = [n for n in SCHEDULES if getattr(optimizer, n) is not None]
        if len(chosen) > 1:
            raise ConfigError(f"train_config.{kind}: expected one learning rate schedule, got "
                              f"{', '.join(chosen)}")
        if chosen:
            _check_schedule(getattr(optimizer, chosen[0]), f"train_config.{kind}.{chosen[0]}")
    return config


def _check_grad_clipping(clipping: GradClipping) -> None:
    where = "train_config.grad_clipping"
    if clipping.kind not in ("none", "norm", "value"):
        raise ConfigError(f"{where}.clipping_type: expected norm, value or none, got "
                          f"{excerpt(clipping.clipping_type)}")
    if not (math.isfinite(clipping.max_gradient) and clipping.max_gradient > 0):
        raise ConfigError(f"{where}.max_gradient: must be a positive number, got "
                          f"{clipping.max_gradient}")
    if not clipping.norm_type > 0:  # (inf: the largest magnitude)
        raise ConfigError(f"{where}.norm_type: must be a positive number or inf, got "
                          f"{clipping.norm_type}")


def _check_dense_ema(config: EasyRecConfig) -> None:
    ema = config.train_config.dense_optimizer.ema
    if ema is not None and not 0 <= ema.decay <= 1:
        raise ConfigError(f"train_config.dense_optimizer.ema.decay: must be in [0, 1], got "
                          f"{ema.decay}")
    for part in ("eval_config", "export_config"):
        if ema is None and getattr(config, part).use_dense_ema:
            raise ConfigError(f"{part}.use_dense_ema: training keeps no average of the dense "
                              "parameters: set train_config.dense_optimizer.ema {decay: ...}")


def _say_dense_embedding_settings(features: list[FeatureConfig]) -> None:
    """A numeric feature without ``boundaries`` is one dense value, as in TorchEasyRec: its
    embedding settings do nothing, which is said once per feature rather than left silent."""
    for i, feature_config in enumerate(features):
        if feature_config.kind not in ("raw_feature", "sequence_raw_feature", "expr_feature"):
            continue
        feature = feature_config.feature
        named = [name for name in ("embedding_dim", "embedding_name", "init_fn")
                 if getattr(feature, name) and not feature.boundaries]
        if named:
            log.warning("feature_configs[%d] (%s): %s without effect: without boundaries the "
                        "feature is one dense value (set boundaries to bucketize it into an "
                        "embedding)", i, feature.feature_name, ", ".join(named))


def schedule_of(optimizer: SparseOptimizer | DenseOptimizer) -> Any:
    """The learning rate schedule an optimizer message names (None: constant)."""
    return next((getattr(optimizer, n) for n in SCHEDULES[1:] if getattr(optimizer, n)), None)


# The settings each optimizer reads: its TorchEasyRec message's fields (the sparse ones are
# fbgemm's fused optimizers: no weight decay for SGD and AdaGrad), and fmkit's
# initial_accumulator_value for the AdaGrads. Another setting is refused, not ignored.
_ADAGRAD = ("lr", "initial_accumulator_value")
_ADAM = ("lr", "beta1", "beta2", "weight_decay")
_CLIPPED = ("gradient_clipping", "max_gradient")
OPTIMIZER_SETTINGS = {
    "sparse_optimizer": {"sgd_optimizer": ("lr", *_CLIPPED),
                         "adagrad_optimizer": (*_ADAGRAD, *_CLIPPED),
                         "rowwise_adagrad_optimizer": (*_ADAGRAD, "weight_decay",
                                                       "weight_decay_mode", *_CLIPPED),
                         "adam_optimizer": (*_ADAM, *_CLIPPED)},
    "dense_optimizer": {"sgd_optimizer": ("lr", "momentum", "weight_decay"),
                        "adagrad_optimizer": (*_ADAGRAD, "weight_decay"),
                        "adam_optimizer": _ADAM, "adamw_optimizer": _ADAM,
                        "adadelta_optimizer": ("lr", "rho", "weight_decay"),
                        "rmsprop_optimizer": ("lr", "alpha", "momentum", "centered",
                                              "weight_decay")},
}


def _check_optimizer(settings: OptimizerSettings, where: str, reads: tuple[str, ...]) -> None:
    """An optimizer's settings: only those it ``reads`` set (no check when empty), each
    within its range (PyTorch checks some of them only when a step runs; the compiled sparse
    optimizers, none)."""
    for f in dataclasses.fields(settings) if reads else ():
        if (f.name not in reads and not f.metadata.get("ignored")
                and getattr(settings, f.name) != f.default):
            raise ConfigError(f"{where}.{f.name}: not a setting of this optimizer (it reads "
                              f"{', '.join(reads)}), so it would have no effect")
    if settings.weight_decay and "weight_decay_mode" in reads and (
            settings.weight_decay_mode == "NONE"):
        log.warning("%s.weight_decay: without effect under weight_decay_mode NONE "
                    "(TorchEasyRec's default); set weight_decay_mode: L2 or DECOUPLE to decay "
                    "the embeddings", where)
    for name in ("lr", "weight_decay", "initial_accumulator_value", "momentum"):
        value = getattr(settings, name)
        if value is not None and not 0 <= value < math.inf:
            raise ConfigError(f"{where}.{name}: must be a finite number >= 0, got {value}")
    for name in ("beta1", "beta2", "rho", "alpha"):
        value = getattr(settings, name)
        if not 0 <= value < 1:
            raise ConfigError(f"{where}.{name}: must be in [0, 1), got {value}")
    if settings.max_gradient is not None and not 0 < settings.max_gradient < math.inf:
        raise ConfigError(f"{where}.max_gradient: must be a positive number, got "
                          f"{settings.max_gradient}")


def _check_schedule(schedule: Any, where: str) -> None:
    """A schedule's own rules (sizes positive and ascending, one rate per boundary)."""
    if isinstance(schedule, ExponentialDecay) and schedule.decay_size <= 0:
        raise ConfigError(f"{where}.decay_size: must be positive")
    if isinstance(schedule, CosineAnnealingWarmRestarts) and schedule.T_0 <= 0:
        raise ConfigError(f"{where}.T_0: must be positive")
    if isinstance(schedule, CosineAnnealingWarmRestarts) and schedule.T_mult < 1:
        raise ConfigError(f"{where}.T_mult: must be >= 1")
    if isinstance(schedule, CosineAnnealing) and schedule.T_max <= 0:
        raise ConfigError(f"{where}.T_max: must be positive")
    if getattr(schedule, "warmup_size", 0) < 0:  # (the schedules with a linear warm-up)
        raise ConfigError(f"{where}.warmup_size: must be >= 0")
    if isinstance(schedule, ManualStep):
        sizes = schedule.schedule_sizes
        if not sizes or len(sizes) != len(schedule.learning_rates):
            raise ConfigError(f"{where}: expected as many learning_rates as schedule_sizes "
                              f"(and at least one), got {len(schedule.learning_rates)} and "
                              f"{len(sizes)}")
        if sorted(sizes) != list(sizes) or sizes[0] <= 0:
            raise ConfigError(f"{where}.schedule_sizes: must be positive and ascending")
        if not all(0 <= rate < math.inf for rate in schedule.learning_rates):
            raise ConfigError(f"{where}.learning_rates: must be finite numbers >= 0")
    for name in ("min_learning_rate", "warmup_learning_rate"):
        value = getattr(schedule, name, 0.0)
        if not 0 <= value < math.inf:
            raise ConfigError(f"{where}.{name}: must be a finite number >= 0, got {value}")


def check_mlp(mlp: MLP, where: str) -> list[float]:
    """An MLP's rules (TorchEasyRec's ``MLP``): positive layer sizes, one dropout ratio for
    every layer or one per layer, each in [0, 1), not both normalizations. Returns the
    dropout ratio of each layer (empty: none)."""
    units = mlp.hidden_units
    if not units or min(units) <= 0:
        raise ConfigError(f"{where}.hidden_units: expected positive layer sizes")
    dropout = list(mlp.dropout_ratio)
    if len(dropout) == 1:
        dropout *= len(units)
    if dropout and len(dropout) != len(units):
        raise ConfigError(f"{where}.dropout_ratio: expected 1 or {len(units)} values, got "
                          f"{len(dropout)}")
    if any(not 0 <= p < 1 for p in dropout):
        raise ConfigError(f"{where}.dropout_ratio: each value must be in [0, 1)")
    if mlp.use_bn and mlp.use_ln:
        raise ConfigError(f"{where}: use_bn and use_ln cannot both be set")
    return dropout


def _check_model(model: ModelConfig) -> None:
    check_mlp(model.deepfm.deep, "model_config.deepfm.deep")
    if model.deepfm.final is not None:
        check_mlp(model.deepfm.final, "model_config.deepfm.final")
    if len(model.losses) != 1:
        raise ConfigError("model_config.losses: expected one loss")
    loss = model.losses[0]
    if model.num_class < 1:
        raise ConfigError(f"model_config.num_class: must be >= 1, got {model.num_class}")
    if loss.softmax_cross_entropy is not None and model.num_class < 2:
        raise ConfigError("model_config.losses: softmax_cross_entropy needs num_class >= 2")
    if loss.softmax_cross_entropy is None and model.num_class != 1:
        raise ConfigError(f"model_config.num_class: {model.num_class} classes need the loss "
                          "softmax_cross_entropy (binary_cross_entropy, binary_focal_loss "
                          "and l2_loss score one value)")
    if any(m.normalized_entropy is not None for m in model.metrics) and not loss.binary:
        raise ConfigError("model_config.metrics.normalized_entropy: needs a binary classifier "
                          "(the loss binary_cross_entropy or binary_focal_loss)")
    focal = loss.binary_focal_loss
    if focal is not None and not (0 <= focal.gamma < math.inf and 0 < focal.alpha < 1):
        raise ConfigError(f"model_config.losses.binary_focal_loss: gamma must be >= 0 and "
                          f"alpha in (0, 1), got gamma {focal.gamma} and alpha {focal.alpha}")


_LOCAL_FILES = ("export the table to CSV or Parquet files and point the configuration at them: "
                "fmkit train --config ... --train FILE --test FILE (or --set "
                "train_input_path=FILE --set eval_input_path=FILE) --set "
                "data_config.dataset_type=CsvDataset (or ParquetDataset)")


def _check_data(config: EasyRecConfig) -> None:
    data = config.data_config
    for name in ("train_input_path", "eval_input_path"):
        path = getattr(config, name) or ""
        if path.startswith(("odps://", "kafka://")):
            raise ConfigError(f"{name}: {excerpt(path)} is a MaxCompute/Kafka table, which "
                              f"fmkit cannot read: {_LOCAL_FILES}")
    if data.dataset_type not in ("CsvDataset", "ParquetDataset"):
        raise ConfigError(f"data_config.dataset_type: {data.dataset_type} reads MaxCompute or "
                          f"Kafka, which fmkit cannot: {_LOCAL_FILES}")
    if data.fg_mode == "FG_BUCKETIZE":
        raise ConfigError("data_config.fg_mode: FG_BUCKETIZE (inputs already bucketized by "
                          "pyfg) is not supported: use FG_NONE or FG_DAG with raw columns")
    if len(data.label_fields) != 1:
        raise ConfigError("data_config.label_fields: expected one label column")
    if data.delimiter == "\\t":  # a tab as a shell's --set or single-quoted YAML write it
        data.delimiter = "\t"
    if len(data.delimiter) != 1:
        raise ConfigError(f"data_config.delimiter: expected one character, got "
                          f"{excerpt(data.delimiter)}")
    if len(data.sample_weight_fields) > 1:
        raise ConfigError("data_config.sample_weight_fields: expected at most one column")
    if data.input_fields_str:
        data.input_fields = _input_fields_of(data.input_fields_str)
    data.input_fields_str = None


_TYPE_ALIASES = {"BIGINT": "INT64", "INT": "INT32"}


def _input_fields_of(text: str) -> list[InputField]:
    """``input_fields_str`` (``"user_id:BIGINT;tags:ARRAY<STRING>;"``) as input fields, each
    type a FieldType once upper-cased, stripped of spaces and its ODPS aliases resolved
    (``ARRAY<INT>``: ``ARRAY_INT32``), as TorchEasyRec reads it."""
    where, fields = "data_config.input_fields_str", []
    for entry in filter(None, (part.strip() for part in text.split(";"))):
        name, colon, kind = entry.partition(":")
        if not colon or not name.strip():
            raise ConfigError(f"{where}: {excerpt(entry)} is not name:TYPE")
        parts = re.split(r"[<>,]", re.sub(r"\s+", "", kind).upper())
        normal = "_".join(_TYPE_ALIASES.get(part, part) for part in parts if part)
        if normal not in FIELD_TYPES:
            raise ConfigError(f"{where}: {excerpt(name.strip())} has type {excerpt(kind)}, "
                              f"expected one of {', '.join(FIELD_TYPES)} (or BIGINT, INT, "
                              "ARRAY<...>, MAP<...,...>)")
        fields.append(InputField(name.strip(), normal))
    return fields


def read_vocabulary_files(config: EasyRecConfig) -> EasyRecConfig:
    """``config`` with every ``vocab_file`` read into a ``vocab_dict``, so that a model
    directory holds its vocabularies (serving needs no file beside it). A file has one word
    per line (its row: the line's position from 0) or ``word row`` per line, as TorchEasyRec
    reads them; ``default_bucketize_value`` is required with it."""
    config = dataclasses.replace(config, feature_configs=[
        dataclasses.replace(entry) for entry in config.feature_configs])
    for i, entry in enumerate(config.feature_configs):
        feature = entry.feature
        path = getattr(feature, "vocab_file", None)
        if not path:
            continue
        where = f"feature_configs[{i}].{entry.kind}"
        if feature.default_bucketize_value is None:
            raise ConfigError(f"{where}.vocab_file: needs default_bucketize_value (the row of "
                              f"words not in the file)")
        try:
            lines = Path(path).read_text().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{where}.vocab_file: cannot read {path}: "
                              f"{getattr(e, 'strerror', None) or e}") from None
        vocabulary: dict[str, int] = {}
        for number, line in enumerate(lines, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
                raise ConfigError(f"{path}:{number}: expected 'word' or 'word row', got "
                                  f"{excerpt(line)}")
            vocabulary.setdefault(parts[0], int(parts[1]) if len(parts) == 2 else number - 1)
        setattr(entry, entry.kind, dataclasses.replace(feature, vocab_file=None,
                                                       vocab_dict=vocabulary))
    return config


def to_document(config: EasyRecConfig, minimal: bool = False) -> dict[str, Any]:
    """The configuration as plain data (what the model directory stores), without unset
    optional fields; ``minimal`` also leaves out every field equal to its default (what
    ``fmkit config convert`` writes). A number that is not finite (``norm_type: inf``) is
    written as its text, which strict JSON can hold and :func:`parse` reads back."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            out = {}
            for f in dataclasses.fields(value):
                item = getattr(value, f.name)
                if item is None:
                    continue
                if minimal and f.default_factory is not dataclasses.MISSING:
                    if item == f.default_factory():
                        continue
                elif minimal and item == f.default:
                    continue
                out[f.name] = plain(item)
            return out
        if isinstance(value, list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)  # "inf", "-inf", "nan"
        return value

    return plain(config)
