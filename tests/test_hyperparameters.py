"""Hyperparameters: SageMaker's names, defaults and ranges; strings accepted; bad values refused
before any data is read, with the parameter, the value and the allowed range in the message."""

from __future__ import annotations

import re

import pytest

from fmkit.errors import HyperparameterError
from fmkit.models.fm import hyperparameters
from fmkit.models.fm.hyperparameters import validate

REQUIRED = {"feature_dim": "1000", "num_factors": "64", "predictor_type": "binary_classifier"}

# hyperparameters.json exactly as the SageMaker SDK 2.x writes it (spec §1.2)
SDK_JSON = {"bias_init_sigma": "0.01", "clip_gradient": "5.0", "epochs": "10",
            "factors_lr": "0.0001", "feature_dim": "1000", "mini_batch_size": "200",
            "num_factors": "64", "predictor_type": "binary_classifier",
            "_tuning_objective_metric": "test:binary_classification_accuracy"}


def test_sdk_strings_parse_to_types():
    hp = validate(SDK_JSON)
    assert hp["epochs"] == 10 and isinstance(hp["epochs"], int)
    assert hp["clip_gradient"] == 5.0 and hp["factors_lr"] == 1e-4
    assert hp["feature_dim"] == 1000 and hp["mini_batch_size"] == 200
    assert "_tuning_objective_metric" not in hp


def test_sagemaker_defaults():
    hp = validate(REQUIRED)
    assert (hp["epochs"], hp["mini_batch_size"]) == (1, 1000)
    assert (hp["bias_lr"], hp["bias_wd"], hp["bias_init_sigma"]) == (0.1, 0.01, 0.01)
    assert (hp["linear_lr"], hp["linear_wd"], hp["linear_init_sigma"]) == (0.001, 0.001, 0.01)
    assert (hp["factors_lr"], hp["factors_wd"], hp["factors_init_sigma"]) == (1e-4, 1e-5, 1e-3)
    # fmkit's starting points (tests/test_starting_points.py) unless the job names the group's
    # init settings; the linear weights keep SageMaker's
    assert hp["bias_init_method"] == hp["factors_init_method"] == "auto"
    assert hp["linear_init_method"] == "normal"
    assert hp["clip_gradient"] is None


def test_integral_float_strings_and_scientific_notation():
    hp = validate({**REQUIRED, "epochs": "10.0", "linear_lr": "1e-05", "num_factors": 8})
    assert hp["epochs"] == 10 and hp["linear_lr"] == 1e-5 and hp["num_factors"] == 8


def test_integers_are_taken_exactly_up_to_64_bits_and_long_values_quoted_short():
    """2^63 - 1 is an integer (float() rounded it, and it was refused as 'not an integer');
    a 400-digit value is refused in a short line (it was quoted whole, or raised an
    OverflowError for a float parameter)."""
    assert validate({**REQUIRED, "seed": 2**63 - 1})["seed"] == 2**63 - 1
    for name, value, fragment in (("seed", 2**63, "(beyond 64 bits)"),
                                  ("seed", 10**400, "(401 characters) (beyond 64 bits)"),
                                  ("bias_lr", 10**400, "(401 characters); expected a number")):
        with pytest.raises(HyperparameterError, match=re.escape(fragment)) as e:
            validate({**REQUIRED, name: value})
        assert len(str(e.value)) < 200


@pytest.mark.parametrize("name,value,fragment", [
    ("num_factors", "0", "an integer > 0"),
    ("feature_dim", "-5", "an integer > 0"),
    ("epochs", "2.5", "an integer > 0"),
    ("mini_batch_size", "ten", "an integer > 0"),
    ("bias_lr", "-1.0", "a number >= 0"),
    ("factors_wd", "nan", "a number >= 0"),
    ("predictor_type", "multiclass_classifier", "one of binary_classifier, regressor"),
    ("bias_init_method", "xavier", "one of normal, uniform, constant"),
    ("optimizer", "rmsprop", "one of adam, adagrad, ftrl, sgd"),
    ("eps", "0", "a number > 0"),
])
def test_out_of_range_names_parameter_value_and_range(name, value, fragment):
    with pytest.raises(HyperparameterError) as e:
        validate({**REQUIRED, name: value})
    message = str(e.value)
    assert f"hyperparameter {name}" in message and repr(value) in message and fragment in message


@pytest.mark.parametrize("value, expected", [(True, 1), (False, 0), ("true", 1),
                                             (" False ", 0), ("1", 1), (0, 0)])
def test_switches_take_true_and_false(value, expected):
    """A 0/1 switch (instance_norm, shuffle, lock_free) takes Python's booleans and
    "true"/"false" (FMClassifier(shuffle=False)); a count given as True stays an error."""
    for name in ("instance_norm", "shuffle", "lock_free"):
        assert validate({**REQUIRED, name: value})[name] == expected
    with pytest.raises(HyperparameterError, match="hyperparameter epochs: invalid value True"):
        validate({**REQUIRED, "epochs": True})
    with pytest.raises(HyperparameterError, match="expected 0 or 1 .or true/false."):
        validate({**REQUIRED, "shuffle": "yes"})


def test_choices_take_any_case():
    assert validate({**REQUIRED, "optimizer": "Adam", "model_type": " FFM",
                     "predictor_type": "Regressor"})["optimizer"] == "adam"
    assert validate({**REQUIRED, "bias_init_method": "Normal"})["bias_init_method"] == "normal"
    assert validate({**REQUIRED, "model_type": "FFM"})["optimizer"] == "adagrad"  # its defaults
    with pytest.raises(HyperparameterError, match="invalid value 'Adamw'"):
        validate({**REQUIRED, "optimizer": "Adamw"})


def test_unknown_name_lists_valid_names():
    with pytest.raises(HyperparameterError, match=r"unknown hyperparameter\(s\) learning_rate; "
                                                  r"valid names are: .*num_factors"):
        validate({**REQUIRED, "learning_rate": "0.1"})


@pytest.mark.parametrize("missing", sorted(REQUIRED))
def test_missing_required(missing):
    raw = {k: v for k, v in REQUIRED.items() if k != missing}
    with pytest.raises(HyperparameterError, match=f"hyperparameter {missing} is required"):
        validate(raw)


def test_a_missing_feature_dim_says_what_the_training_file_needs(cli, tmp_path):
    """SageMaker requires feature_dim; the tools users come from infer it. Its error says the
    value the training file needs: its largest index (counted here in plain Python) + 1 for a
    0-based file, the largest for a 1-based one (a9a), as the index base given or detected."""
    from .conftest import shared_file

    a9a = shared_file("a9a_libsvm", "a9a")
    largest = max(int(token.split(":")[0]) for line in a9a.read_text().splitlines()
                  for token in line.split()[1:])
    zero_based = tmp_path / "zero.libffm"
    zero_based.write_text("1 0:0:1 1:7:1\n0 2:41:0.5\n")
    hp = ["num_factors=2", "predictor_type=binary_classifier"]
    for path, options, advice in (
            (a9a, [], f"largest feature index is {largest}, 1-based (no index 0): "
                      f"feature_dim={largest}"),
            (zero_based, [], "largest feature index is 41, 0-based: feature_dim=42"),
            (zero_based, ["--index-base", "1"], "largest feature index is 41, 1-based: "
                                                "feature_dim=41")):
        code, _, err = cli("train", "--train", path, "--model-dir", tmp_path / "m", *options,
                           *hp)
        assert code == 1 and err == (f"fmkit: error: hyperparameter feature_dim is required; "
                                     f"expected an integer > 0; {path}'s {advice}\n"), err
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("method,needed", [("uniform", "init_scale"), ("constant", "init_value")])
@pytest.mark.parametrize("group", ["bias", "linear", "factors"])
def test_init_method_needs_its_parameter(group, method, needed):
    with pytest.raises(HyperparameterError,
                       match=f"{group}_init_method={method} needs {group}_{needed}"):
        validate({**REQUIRED, f"{group}_init_method": method})
    hp = validate({**REQUIRED, f"{group}_init_method": method, f"{group}_{needed}": "0.5"})
    assert hp[f"{group}_{needed}"] == 0.5


BAD_CLI_CASES = [
    (["num_factors=0"], "hyperparameter num_factors: invalid value '0'"),
    (["bogus=1"], "unknown hyperparameter(s) bogus"),
    (["predictor_type=classifier"], "expected one of binary_classifier, regressor"),
    (["factors_init_method=uniform"], "factors_init_method=uniform needs factors_init_scale"),
    (["epochs"], "expected NAME=VALUE, got 'epochs'"),
]


@pytest.mark.parametrize("extra,message", BAD_CLI_CASES)
def test_cli_refuses_bad_hyperparameters_before_reading_data(cli, tmp_path, extra, message):
    base = {"feature_dim": "10", "num_factors": "4", "predictor_type": "binary_classifier"}
    overridden = {e.split("=")[0] for e in extra}
    args = [f"{k}={v}" for k, v in base.items() if k not in overridden] + extra
    # the train file does not exist: the error must be about the hyperparameter, not the data
    code, out, err = cli("train", "--train", tmp_path / "missing.libsvm", "--model-dir",
                         tmp_path / "model", *args)
    assert code != 0
    assert message in err and "missing.libsvm" not in err
    assert not (tmp_path / "model").exists()


def test_cli_missing_required_from_json_file(cli, tmp_path):
    hp_file = tmp_path / "hp.json"
    hp_file.write_text('{"feature_dim": "10", "predictor_type": "regressor"}')
    code, _, err = cli("train", "--train", tmp_path / "missing", "--model-dir", tmp_path / "m",
                       "--hyperparameters", hp_file)
    assert code != 0 and "hyperparameter num_factors is required" in err


@pytest.mark.parametrize("group", ["bias", "linear", "factors"])
def test_ftrl_needs_positive_learning_rates(group):
    with pytest.raises(HyperparameterError, match=f"{group}_lr must be > 0 with optimizer=ftrl"):
        validate({**REQUIRED, "optimizer": "ftrl", f"{group}_lr": "0"})


@pytest.mark.parametrize("method", ["normal", "uniform", "constant"])
def test_initial_weights_follow_the_init_hyperparameters_whatever_the_threads(method):
    """Blocks of rows are drawn on several threads: same weights as on one, distributed as asked."""
    import numpy as np
    from scipy import stats

    from fmkit.models.fm.parameters import init_parameters

    hp = validate({"feature_dim": 200_000, "num_factors": 4,
                   "predictor_type": "binary_classifier", "factors_init_method": method,
                   "factors_init_sigma": 0.05, "factors_init_scale": 0.2,
                   "factors_init_value": 0.3})
    one, two = init_parameters(hp, threads=1), init_parameters(hp, threads=2)
    np.testing.assert_array_equal(one.table, two.table)
    V = one.V.ravel().astype(np.float64)
    reference = {"normal": stats.norm(scale=0.05), "uniform": stats.uniform(-0.2, 0.4)}
    if method == "constant":
        assert (V == np.float32(0.3)).all()
    else:  # a sample of 800,000 fits its distribution; rows far apart are not repeats
        assert stats.kstest(V, reference[method].cdf).pvalue > 1e-3
        assert not np.array_equal(one.V[:100], one.V[70_000:70_100])
    assert abs(one.w.std() - hp["linear_init_sigma"]) < 0.001


@pytest.mark.parametrize(("optimizer", "named", "unused"), [
    ("mcmc", {"factors_lr": "0.5", "linear_wd": 0.1, "mini_batch_size": 10, "bias_lr": 0.1,
              "num_factors": 4}, ["factors_lr", "linear_wd", "mini_batch_size"]),
    ("adam", {"ftrl_l1": 0.25, "factors_lr": 0.5}, ["ftrl_l1"]),
    ("ftrl", {"ftrl_l1": 0.5, "ftrl_beta": 2.0}, []),
    ("mcmc", {"num_factors": 4, "epochs": 3, "seed": 7}, []),
    ("sgd", {"eps": 0.1, "factors_lr": 0.5}, ["eps"]),  # (only the adaptive rules divide)
    ("ftrl", {"eps": 0.1}, ["eps"]),
    ("adagrad", {"eps": 0.1}, []),
])
def test_a_changed_setting_its_optimizer_does_not_read_is_named_once(caplog, optimizer, named,
                                                                    unused):
    # (a setting left at the table's default, as the estimators pass every one, is not named)
    hyperparameters._say_unused.cache_clear()
    raw = {"feature_dim": 7, "num_factors": 2, "predictor_type": "regressor",
           "optimizer": optimizer, **named}
    with caplog.at_level("WARNING", logger="fmkit"):
        validate(raw)
        validate(raw)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    if not unused:
        assert warnings == []
        return
    assert len(warnings) == 1
    assert warnings[0].startswith(f"optimizer={optimizer} does not use")
    assert warnings[0].split(": ")[1].split(", ") == unused


@pytest.mark.parametrize(("named", "unread"), [
    ({"bias_init_value": 0.7}, ["bias_init_value has no effect: only bias_init_method=constant "
                                "reads it (the method is normal)"]),
    ({"factors_init_method": "uniform", "factors_init_scale": 0.1, "factors_init_sigma": 0.2},
     ["factors_init_sigma has no effect: only factors_init_method=normal reads it (the method "
      "is uniform)"]),
    ({"linear_init_method": "constant", "linear_init_value": 0.0, "linear_init_scale": 1.0},
     ["linear_init_scale has no effect: only linear_init_method=uniform reads it (the method "
      "is constant)"]),
    ({"bias_init_method": "constant", "bias_init_value": 0.7, "factors_init_sigma": 0.2}, []),
])
def test_an_init_setting_its_method_does_not_read_is_named(caplog, named, unread):
    """SageMaker ignores such a setting silently (bias_init_value without
    bias_init_method=constant); fmkit trains the same and says so."""
    hyperparameters._say_unread_starts.cache_clear()
    raw = {"feature_dim": 7, "num_factors": 2, "predictor_type": "regressor", **named}
    with caplog.at_level("WARNING", logger="fmkit"):
        validate(raw)
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == unread
