"""The one table of FM hyperparameters: SageMaker's names, defaults and ranges, plus fmkit's own.

Everything that accepts hyperparameters (the CLI, the Python estimators and the SageMaker entry
point) calls :func:`validate`, so a value is parsed and checked the same way everywhere.
Values may arrive as strings, as SageMaker passes them (``"10"``, ``"1e-05"``, ``"10.0"``).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fmkit.errors import HyperparameterError, MissingHyperparameter, did_you_mean, excerpt
from fmkit.models.fm.parameters import ADAM_SIGMA, ADAM_STEPS, AUTO_FACTORS_SIGMA, LABEL_ROWS
from fmkit.models.metrics import watched_metric

log = logging.getLogger(__name__)

INIT_METHODS = ("normal", "uniform", "constant")
# the setting each init method reads (the others leave it without effect, as on SageMaker)
INIT_SETTING = {"normal": "sigma", "uniform": "scale", "constant": "value"}
# fmkit's default for the bias and factors when a job names none of the group's init settings:
# see fmkit.models.fm.parameters.starting_point
AUTO = "auto"
PREDICTOR_TYPES = ("binary_classifier", "regressor")
MODEL_TYPES = ("fm", "ffm")
OPTIMIZERS = ("adam", "adagrad", "ftrl", "sgd", "rowwise_adagrad")  # the gradient rules
# Gibbs sampling of a Bayesian FM (libFM's MCMC): no learning rate or weight decay to set. A
# job that names it gets MCMC_DEFAULTS for what it does not name: MCMC_EPOCHS sweeps
# (SageMaker's 1 epoch would be one), and no early stop: the mean of more samples does not
# overfit as a model trained longer does (a validation channel reports on it: see
# fmkit.jobs.training.keeps_last).
MCMC = "mcmc"
MCMC_EPOCHS = 200
MCMC_DEFAULTS = {"epochs": MCMC_EPOCHS, "early_stopping_patience": 0}
# what a Gibbs sweep has no use for: it draws every weight from its conditional given all the
# rows (no step size, batch or data order) and samples the priors' precisions (no decay)
MCMC_UNUSED = ("mini_batch_size", "bias_lr", "bias_wd", "linear_lr", "linear_wd", "factors_lr",
               "factors_wd", "clip_gradient", "eps", "rescale_grad", "lock_free", "shuffle")
FTRL_ONLY = ("ftrl_beta", "ftrl_l1")
# Alternating least squares (libFM's and fastFM's ALS): the same sweep taking each weight's
# conditional mean, with L2 weights bias_wd, linear_wd and factors_wd on the sum of squared
# errors (of a probit latent target for a classifier). A job that names it gets, for what it
# does not name, libFM's ALS example (-iter 100 -regular '0,0,10' -init_stdev 0.1): SageMaker's
# decays, made for mini-batch steps, leave it all but unregularized, and so do fastFM's (0.1):
# MovieLens-100k RMSE 1.50 against 0.937 (docs/quality.md, "Session 62").
ALS = "als"
ALS_DEFAULTS = {"epochs": 100, "bias_wd": 0.0, "linear_wd": 0.0, "factors_wd": 10.0}
ALS_UNUSED = ("mini_batch_size", "bias_lr", "linear_lr", "factors_lr", "clip_gradient", "eps",
              "rescale_grad", "lock_free", "shuffle")
# the whole-data sweeps (rows held in memory, one process, the CPU only): their defaults for
# what a job does not name, and the settings they do not read
SWEEP_DEFAULTS = {MCMC: MCMC_DEFAULTS, ALS: ALS_DEFAULTS}
SWEEP_UNUSED = {MCMC: MCMC_UNUSED, ALS: ALS_UNUSED}
SWEEPS = tuple(SWEEP_DEFAULTS)


def sweeps_in_one_process(optimizer: str) -> str:
    """Why ``--nproc`` (a process group) is refused for a sweeping optimizer."""
    return (f"optimizer={optimizer} trains in one process: each of its sweeps updates every "
            "weight from all the training rows (use --nproc 1)")
# A field-aware FM's starting settings when its job names no optimizer: xLearn's FFM (AdaGrad, a
# row per step, rows scaled to unit length), as measured in docs/quality.md against xLearn.
FFM_DEFAULTS = {"optimizer": "adagrad", "mini_batch_size": 1, "bias_lr": 0.2, "linear_lr": 0.2,
                "factors_lr": 0.2, "bias_wd": 0.0, "linear_wd": 1e-6, "factors_wd": 1e-6,
                "instance_norm": 1, "initial_accumulator_value": 0.1}


@dataclass(frozen=True)
class Hyperparameter:
    """One row of the table.

    ``check`` is one of ``"gt0"`` (> 0), ``"ge0"`` (>= 0), ``"finite"`` (any finite number),
    ``"choice01"`` (0 or 1), ``"choice"`` (one of ``choices``) or ``"watched"`` (a metric name
    :func:`fmkit.models.metrics.watched_metric` knows for the predictor type). ``suggested`` is the
    value the Python estimators use for a parameter SageMaker requires but the estimator
    cannot infer (``num_factors``).
    """

    name: str
    kind: type
    default: Any
    check: str
    help: str
    required: bool = False
    choices: tuple[str, ...] = ()
    suggested: Any = None
    sagemaker: bool = True

    def describe_range(self) -> str:
        noun = {int: "an integer", float: "a number", str: "a string"}[self.kind]
        return {
            "gt0": f"{noun} > 0",
            "ge0": f"{noun} >= 0",
            "finite": f"{noun} (finite)",
            "choice01": "0 or 1 (or true/false)",
            "choice": "one of " + ", ".join(self.choices),
            "watched": "auto or a validation metric (auc, logloss, accuracy, f1, rmse)",
        }[self.check]


AUTO_HELP = {
    "bias": "auto (fmkit's default when no bias_init_* is set): the training labels' mean for "
            "regressors, the logit of their positive rate for classifiers, measured on the "
            f"first {LABEL_ROWS:,} training rows (0 when the channel is a pipe, read once: "
            "SageMaker's Pipe mode, a FIFO, <(zcat ...))",
    "factors": "auto (fmkit's default when no factors_init_* is set): normal with a standard "
               "deviation chosen per optimizer ("
               + ", ".join(f"{sigma} for {name}" for name, sigma in AUTO_FACTORS_SIGMA.items())
               + f"; for adam {ADAM_STEPS} x factors_lr within [{ADAM_SIGMA[0]}, "
               f"{ADAM_SIGMA[1]}])",
}


def _group(group: str, lr: float, wd: float, sigma: float) -> list[Hyperparameter]:
    """The parameters SageMaker defines identically for bias, linear and factors terms. The
    bias and factors init methods also take fmkit's ``auto``, their default."""
    what = {"bias": "the global bias w0", "linear": "the linear weights w",
            "factors": "the factor matrix V"}[group]
    method = f"{group}_init_method"
    auto = AUTO_HELP.get(group)
    return [
        Hyperparameter(f"{group}_init_method", str, AUTO if auto else "normal", "choice",
                       f"How {what} is initialized" + (f"; {auto}." if auto else "."),
                       choices=INIT_METHODS + ((AUTO,) if auto else ())),
        Hyperparameter(f"{group}_init_scale", float, None, "ge0",
                       f"Half-width of the uniform init of {what} (needs {method}=uniform)."),
        Hyperparameter(f"{group}_init_sigma", float, sigma, "ge0",
                       f"Standard deviation of the normal init of {what}."),
        Hyperparameter(f"{group}_init_value", float, None, "finite",
                       f"Constant init value of {what} (needs {method}=constant)."),
        Hyperparameter(f"{group}_lr", float, lr, "ge0", f"Learning rate of {what}."),
        Hyperparameter(f"{group}_wd", float, wd, "ge0",
                       f"L2 weight decay of {what}, applied to the rows a mini-batch touches "
                       f"(optimizer=als: the L2 weight on the sum of squared errors; unset, "
                       f"{ALS_DEFAULTS[f'{group}_wd']:g})."),
    ]


TABLE: tuple[Hyperparameter, ...] = tuple(
    [
        Hyperparameter("feature_dim", int, None, "gt0",
                       "Number of features (columns) of the input space.", required=True),
        Hyperparameter("num_factors", int, None, "gt0",
                       "Dimension k of the factor vectors.", required=True, suggested=64),
        Hyperparameter("predictor_type", str, None, "choice",
                       "binary_classifier (log loss) or regressor (squared loss).",
                       required=True, choices=PREDICTOR_TYPES),
        Hyperparameter("epochs", int, 1, "gt0", "Passes over the training data (unset: 1, or "
                       f"with optimizer=mcmc {MCMC_EPOCHS} sweeps, with als "
                       f"{ALS_DEFAULTS['epochs']})."),
        Hyperparameter("mini_batch_size", int, 1000, "gt0", "Rows per gradient step."),
        *_group("bias", lr=0.1, wd=0.01, sigma=0.01),
        *_group("linear", lr=0.001, wd=0.001, sigma=0.01),
        *_group("factors", lr=0.0001, wd=0.00001, sigma=0.001),
        Hyperparameter("clip_gradient", float, None, "finite",
                       "Clip each gradient coordinate to [-c, c]; unset or <= 0: no clipping."),
        Hyperparameter("eps", float, 1e-8, "gt0",
                       "Epsilon of the adaptive optimizers, avoids division by 0."),
        Hyperparameter("rescale_grad", float, 1.0, "gt0",
                       "Multiplies the mini-batch gradient before the update."),
        # fmkit's own additions: they never change what a job with only SageMaker's names does.
        Hyperparameter("model_type", str, "fm", "choice",
                       "fmkit: fm, or ffm (field-aware: a factor vector per feature and field; "
                       "libffm input). SageMaker has no FFM: an ffm job that names no "
                       "optimizer gets xLearn's FFM settings for each of "
                       + ", ".join(f"{k}={v}" for k, v in FFM_DEFAULTS.items())
                       + " it does not name.", choices=MODEL_TYPES, sagemaker=False),
        Hyperparameter("num_fields", int, 0, "ge0",
                       "fmkit: with model_type=ffm, the number of fields (0: the largest field "
                       "of the training channel + 1).", sagemaker=False),
        Hyperparameter("optimizer", str, "adam", "choice",
                       "fmkit: update rule (lazy: only the rows a mini-batch touches); "
                       "rowwise_adagrad keeps one AdaGrad sum per factor vector (fbgemm's and "
                       "TorchRec's rule): an FFM's training tables about half the size of "
                       "adagrad's; mini-batches at about adagrad's speed, an FFM's row-per-step "
                       "training about a fifth slower. mcmc samples a Bayesian FM by Gibbs "
                       "sweeps (libFM's MCMC): no learning rates, weight decays or "
                       "mini-batches; an epoch is a sweep (epochs default to "
                       f"{MCMC_EPOCHS}, early_stopping_patience to 0), the model is the mean "
                       "of the samples after the first tenth, and the training rows are "
                       "held in memory. als: alternating least squares (libFM's and fastFM's "
                       "ALS), the same sweeps without sampling, L2 weights bias_wd, linear_wd "
                       "and factors_wd on the sum of squared errors (unset: libFM's 0, 0, "
                       f"10; epochs {ALS_DEFAULTS['epochs']}).",
                       choices=(*OPTIMIZERS, *SWEEPS), sagemaker=False),
        Hyperparameter("initial_accumulator_value", float, 0.0, "ge0",
                       "fmkit: with optimizer=adagrad or rowwise_adagrad, the value every sum of "
                       "squared gradients starts from (TensorFlow's and PyTorch's name; 0 as in "
                       "MXNet). Above 0 it damps the first steps of rarely seen features.",
                       sagemaker=False),
        Hyperparameter("instance_norm", int, 0, "choice01",
                       "fmkit: 1 scales every row's values to unit length (L2) before training "
                       "and scoring, as xLearn's FFM does (xLearn's FM divides its pairs by "
                       "the squared length once more; its linear model scores rows as they "
                       "are); the model keeps the setting, so prediction and serving scale "
                       "rows the same way.",
                       sagemaker=False),
        Hyperparameter("ftrl_beta", float, 1.0, "ge0",
                       "fmkit: FTRL-proximal's beta (its alpha is each group's lr, its L2 the "
                       "group's wd).", sagemaker=False),
        Hyperparameter("ftrl_l1", float, 0.0, "ge0",
                       "fmkit: FTRL-proximal's L1 strength (weights with |z| <= l1 are 0).",
                       sagemaker=False),
        Hyperparameter("lock_free", int, 1, "choice01",
                       "fmkit: with mini_batch_size=1, 1 trains on all cores at once without "
                       "locks (Hogwild, like xLearn); 0 uses one core and is reproducible.",
                       sagemaker=False),
        Hyperparameter("seed", int, 0, "ge0",
                       "fmkit: seed of the weight initialization and shuffling.",
                       sagemaker=False),
        Hyperparameter("early_stopping_patience", int, 3, "ge0",
                       "fmkit: with a validation channel, stop after this many measurements "
                       "(epochs) without a better early_stopping_metric and keep the best "
                       "one's weights (0: never stop early).", sagemaker=False),
        Hyperparameter("early_stopping_metric", str, "auto", "watched",
                       "fmkit: the validation metric early stopping watches: auc, logloss, "
                       "accuracy or f1 for classifiers, rmse for regressors, or SageMaker's "
                       "name (validation:binary_classification_accuracy); auto: auc, or rmse "
                       "for regressors.", sagemaker=False),
        Hyperparameter("validation_every_steps", int, 0, "ge0",
                       "fmkit: with a validation channel, also measure it (for early "
                       "stopping, patience counted in measurements) after every this many "
                       "mini-batches (0: at epoch ends only).", sagemaker=False),
        Hyperparameter("shuffle", int, 1, "choice01",
                       "fmkit: 1 shuffles the rows of each chunk of about 16,384 rows every "
                       "epoch; 0 keeps file order.",
                       sagemaker=False),
    ]
)

BY_NAME: dict[str, Hyperparameter] = {h.name: h for h in TABLE}


def _fail(h: Hyperparameter, value: Any, why: str = "") -> HyperparameterError:
    detail = f" ({why})" if why else ""
    return HyperparameterError(
        f"hyperparameter {h.name}: invalid value {excerpt(repr(value), quote=False)}{detail}; "
        f"expected {h.describe_range()}"
    )


def _convert(h: Hyperparameter, value: Any) -> Any:
    """Turn a raw value (possibly a string) into the parameter's type, or raise."""
    if h.kind is str:
        if not isinstance(value, str):
            raise _fail(h, value)
        value = value.strip()  # a choice in any case: optimizer="Adam" is adam
        return value.lower() if h.check == "choice" and value.lower() in h.choices else value
    if h.check == "choice01":  # a switch: Python's True/False and "true"/"false" too
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return int(value.strip().lower() == "true")
    if isinstance(value, bool):  # (a count or a rate given as True is a mistake)
        raise _fail(h, value)
    number = value
    if isinstance(value, str):
        try:
            number = float(value.strip()) if h.kind is float else _parse_int(value)
        except ValueError:
            raise _fail(h, value, "not a number") from None
    if not isinstance(number, (int, float)):
        raise _fail(h, value)
    if h.kind is int:  # (an int is taken as it is: float() would round one above 2^53)
        if isinstance(number, float):
            if not (math.isfinite(number) and number.is_integer()):
                raise _fail(h, value, "not an integer")
            number = int(number)
        if not -(2**63) <= number < 2**63:
            raise _fail(h, value, "beyond 64 bits")
        return number
    try:
        number = float(number)
    except OverflowError:  # an int beyond float64
        number = math.inf
    if not math.isfinite(number):
        raise _fail(h, value)
    return number


def _parse_int(text: str) -> int:
    """Accept ``"10"`` and an integral ``"10.0"`` (SageMaker may send either)."""
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        number = float(text)
        if not math.isfinite(number) or number != int(number):
            raise
        return int(number)


def _check_range(h: Hyperparameter, value: Any, raw: Any) -> None:
    ok = {
        "gt0": lambda v: v > 0,
        "ge0": lambda v: v >= 0,
        "finite": lambda v: True,
        "choice01": lambda v: v in (0, 1),
        "choice": lambda v: v in h.choices,
        "watched": lambda v: True,  # needs predictor_type: checked in validate
    }[h.check](value)
    if not ok:
        raise _fail(h, raw)


def _sagemaker_init_methods(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    """A job that names any of a group's init settings but not its method gets SageMaker's
    default method (normal), as on SageMaker, instead of fmkit's ``auto``."""
    chosen = {}
    for group in AUTO_HELP:
        named = any(raw.get(f"{group}_init_{part}") is not None
                    for part in ("scale", "sigma", "value"))
        if named and raw.get(f"{group}_init_method") is None:
            chosen[f"{group}_init_method"] = "normal"
    return {**raw, **chosen} if chosen else raw


def validate(raw: Mapping[str, Any], *, require: bool = True, saved: bool = False
             ) -> dict[str, Any]:
    """Parse and check hyperparameters; return every table name with its effective value.

    Keys starting with ``_`` (SageMaker's ``_tuning_objective_metric``) are logged and ignored.
    Any other unknown key, a missing required key (when ``require``), a value of the wrong type
    or out of range, and an init method without its scale/value raise
    :class:`~fmkit.errors.HyperparameterError`. Settings a job changed that do nothing are
    said once, unless ``saved`` (a trained model's hyperparameters, loaded).
    """
    unknown = sorted(k for k in raw if k not in BY_NAME and not str(k).startswith("_"))
    if unknown:
        raise HyperparameterError(
            f"unknown hyperparameter(s) {', '.join(map(str, unknown))}"
            f"{did_you_mean(str(unknown[0]), BY_NAME)}; valid names are: "
            + ", ".join(sorted(BY_NAME))
        )
    for key in raw:
        if str(key).startswith("_"):
            log.info("ignoring hyperparameter %s=%r", key, raw[key])
    raw = _sagemaker_init_methods(raw)
    if str(raw.get("model_type", "")).strip().lower() == "ffm" and raw.get("optimizer") is None:
        raw = {**FFM_DEFAULTS, **{k: v for k, v in raw.items() if v is not None}}
    named = str(raw.get("optimizer", "")).strip().lower()
    if named in SWEEPS:
        raw = {**SWEEP_DEFAULTS[named], **{k: v for k, v in raw.items() if v is not None}}
    values: dict[str, Any] = {}
    for h in TABLE:
        value = raw.get(h.name)
        if value is None:
            if h.required and require:
                raise MissingHyperparameter(
                    h.name, f"hyperparameter {h.name} is required; expected {h.describe_range()}")
            values[h.name] = h.default
            continue
        converted = _convert(h, value)
        _check_range(h, converted, value)
        values[h.name] = converted
    for group in ("bias", "linear", "factors"):
        method = values[f"{group}_init_method"]
        needed = f"{group}_init_{INIT_SETTING[method]}" if method in INIT_SETTING else None
        if needed and values[needed] is None:  # (sigma has a default)
            raise HyperparameterError(
                f"hyperparameter {group}_init_method={method} needs {needed} to be set"
            )
    try:
        watched_metric(values["early_stopping_metric"], values["predictor_type"])
    except ValueError as e:
        raise HyperparameterError(f"hyperparameter early_stopping_metric: {e}") from None
    if values["initial_accumulator_value"] and "adagrad" not in values["optimizer"]:
        raise HyperparameterError(
            "hyperparameter initial_accumulator_value is AdaGrad's: it needs optimizer=adagrad "
            f"or rowwise_adagrad (got optimizer={values['optimizer']})")
    if values["optimizer"] in SWEEPS and values["model_type"] == "ffm":
        raise HyperparameterError(f"optimizer={values['optimizer']} trains an FM "
                                  "(model_type=fm); a field-aware FM trains with the gradient "
                                  "optimizers")
    if values["optimizer"] == "ftrl":
        for group in ("bias", "linear", "factors"):
            if values[f"{group}_lr"] <= 0:
                raise HyperparameterError(
                    f"hyperparameter {group}_lr must be > 0 with optimizer=ftrl (it is FTRL's "
                    f"alpha and divides its updates), got {values[f'{group}_lr']}")
    if saved:
        return values
    changed = {name for name in raw if name in BY_NAME and values[name] != BY_NAME[name].default}
    _say_unused(tuple(sorted(changed.intersection(_unused(values["optimizer"])))),
                values["optimizer"])
    _say_unread_starts(tuple(
        (f"{group}_init_{part}", f"{group}_init_method={method}", values[f"{group}_init_method"])
        for group in ("bias", "linear", "factors") for method, part in INIT_SETTING.items()
        if f"{group}_init_{part}" in changed and values[f"{group}_init_method"] != method))
    return values


def _unused(optimizer: str) -> tuple[str, ...]:
    """The settings ``optimizer`` does not read (eps: only the adaptive rules divide)."""
    if optimizer in SWEEPS:
        return (*SWEEP_UNUSED[optimizer], *FTRL_ONLY)
    if optimizer == "ftrl":
        return ("eps",)
    return (*FTRL_ONLY, "eps") if optimizer == "sgd" else FTRL_ONLY


@functools.cache
def _say_unread_starts(unread: tuple[tuple[str, str, str], ...]) -> None:
    """One warning per process for each init setting its group's method does not read
    (SageMaker ignores it silently: bias_init_value without bias_init_method=constant)."""
    for name, needs, method in unread:
        log.warning("%s has no effect: only %s reads it (the method is %s)", name, needs,
                    method)


@functools.cache
def _say_unused(names: tuple[str, ...], optimizer: str) -> None:
    """One warning per process for settings a job changed that its optimizer never reads (a
    job moved to ``optimizer=mcmc`` keeps its learning rates, which then do nothing)."""
    if names:
        log.warning("optimizer=%s does not use %s: %s", optimizer,
                    "this setting" if len(names) == 1 else "these settings", ", ".join(names))


def factor_width(hp: Mapping[str, Any]) -> int:
    """Factor columns per feature: ``num_factors``, or for a field-aware FM one vector per
    field (``num_fields * num_factors``)."""
    if hp.get("model_type", "fm") == "ffm":
        return hp["num_factors"] * hp["num_fields"]
    return hp["num_factors"]


def table_hyperparameters(hp: Mapping[str, Any]) -> dict[str, Any]:
    """``hp`` as the weight-table code sees it: ``num_factors`` the factor columns per feature
    (an FFM's table is an FM's with ``num_fields * num_factors`` of them), ``factor_group``
    the length of one factor vector (row-wise AdaGrad keeps one sum per vector)."""
    return {**hp, "num_factors": factor_width(hp), "factor_group": hp["num_factors"]}


def table_markdown() -> str:
    """The table as Markdown, for the README and ``--help``."""
    rows = ["| name | default | valid values | meaning |", "| --- | --- | --- | --- |"]
    for h in TABLE:
        default = "required" if h.required else ("unset" if h.default is None else h.default)
        rows.append(f"| `{h.name}` | {default} | {h.describe_range()} | {h.help} |")
    return "\n".join(rows)
