"""``fmkit config from-fuxictr``: a FuxiCTR experiment (its ``--config`` directory and
``--expid``) as a DeepFM configuration fmkit trains. The encoders it fits are checked against
pandas' and numpy's reading of the same training file; the settings against the FuxiCTR files
written here as FuxiCTR's own model zoo writes them."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import run_fmkit, shared_file

CRITEO_NUMBERS = [f"I{i}" for i in range(1, 14)]
CRITEO_IDS = [f"C{i}" for i in range(1, 27)]

BASE = {"model_root": "./checkpoints/", "num_workers": 3, "verbose": 1, "early_stop_patience": 2,
        "pickle_feature_encoder": True, "save_best_only": True, "eval_steps": None,
        "debug_mode": False, "group_id": None, "use_features": None, "feature_specs": None,
        "feature_config": None}
DEEPFM = {"model": "DeepFM", "dataset_id": "criteo_sample", "loss": "binary_crossentropy",
          "metrics": ["logloss", "AUC"], "task": "binary_classification", "optimizer": "adam",
          "hidden_units": [64, 32], "hidden_activations": "relu", "net_regularizer": 0,
          "embedding_regularizer": 1e-8, "learning_rate": 1e-3, "batch_norm": False,
          "net_dropout": 0, "batch_size": 128, "embedding_dim": 4, "epochs": 1,
          "shuffle": True, "seed": 2019, "monitor": {"AUC": 1, "logloss": -1},
          "monitor_mode": "max"}


def _criteo_dataset(**changes) -> dict:
    path = str(shared_file("criteo_deepctr_sample", "criteo_sample.txt"))
    return {"data_root": "../data/", "data_format": "csv", "train_data": path,
            "valid_data": path, "test_data": path, "min_categr_count": 2,
            "feature_cols": [
                {"name": CRITEO_NUMBERS, "active": True, "dtype": "float", "type": "numeric",
                 "normalizer": "StandardScaler"},
                {"name": CRITEO_IDS, "active": True, "dtype": "str", "type": "categorical"}],
            "label_col": {"name": "label", "dtype": "float"}, **changes}


def _write(directory, dataset: dict, experiment: dict, dataset_id: str = "criteo_sample",
           expid: str = "DeepFM_test"):
    (directory / "config").mkdir(exist_ok=True)
    (directory / "config" / "dataset_config.yaml").write_text(
        yaml.safe_dump({dataset_id: dataset}))
    (directory / "config" / "model_config.yaml").write_text(
        yaml.safe_dump({"Base": BASE, expid: {**experiment, "dataset_id": dataset_id}}))
    return directory / "config"


def _features(document: dict) -> dict[str, tuple[str, dict]]:
    return {settings["feature_name"]: (kind, settings)
            for entry in document["feature_configs"] for kind, settings in entry.items()}


def test_a_fuxictr_deepfm_experiment_converts_and_trains(tmp_path, cli, monkeypatch):
    """FuxiCTR's model-zoo DeepFM on the Criteo sample: the vocabularies are the values pandas
    counts at least min_categr_count times, the numeric columns' boundaries numpy's deciles of
    the column (missing values filled with 0, as FuxiCTR fills them), the network and training
    settings FuxiCTR's; the result trains."""
    config = _write(tmp_path, _criteo_dataset(), DEEPFM)
    out = tmp_path / "deepfm.yaml"
    code, _, err = cli("config", "from-fuxictr", config, "--expid", "DeepFM_test", "-o", out)
    assert code == 0, err
    document = yaml.safe_load(out.read_text())
    frame = pd.read_csv(shared_file("criteo_deepctr_sample", "criteo_sample.txt"), dtype=str,
                        keep_default_na=False)
    features = _features(document)
    assert list(features) == CRITEO_NUMBERS + CRITEO_IDS
    for name in CRITEO_IDS:
        kind, settings = features[name]
        counts = frame[name].value_counts()
        expected = set(counts[(counts >= 2) & (counts.index != "")].index)
        assert kind == "id_feature" and set(settings["vocab_list"]) == (expected or {""}), name
        assert settings["embedding_dim"] == 4
    for name in CRITEO_NUMBERS:
        kind, settings = features[name]
        values = pd.to_numeric(frame[name].replace("", np.nan)).fillna(0.0).to_numpy()
        deciles = np.unique(np.quantile(values, np.linspace(0, 1, 11)[1:-1]))
        assert kind == "raw_feature"
        np.testing.assert_allclose(settings["boundaries"], deciles, rtol=1e-12)
    model, train = document["model_config"], document["train_config"]
    assert model["deepfm"]["deep"]["hidden_units"] == [64, 32]
    assert model["deepfm"]["wide_embedding_dim"] == 1
    assert [g["feature_names"] for g in model["feature_groups"]] == [list(features)] * 3
    assert train["sparse_optimizer"] == {"adam_optimizer": {"lr": 1e-3, "weight_decay": 1e-8}}
    assert train["dense_optimizer"] == {"adam_optimizer": {"lr": 1e-3}}
    assert (train["num_epochs"], train["seed"], train["early_stopping_patience"],
            train["early_stopping_metric"]) == (1, 2019, 2, "auc")
    assert train["grad_clipping"] == {"clipping_type": "norm", "max_gradient": 10.0}
    assert document["data_config"]["batch_size"] == 128
    assert document["model_dir"] == "./checkpoints/criteo_sample/DeepFM_test"
    # every setting read differently is said, one line each
    assert "fmkit stops early on one metric: auc" in err
    assert "FuxiCTR divides the learning rate by 10" in err
    assert "decoupled weight decay" in err
    code, _, err = cli("train", "--config", out, "--model-dir", tmp_path / "model")
    assert code == 0, err
    # run_expid.py's way: fmkit train --config DIR --expid trains the same model (and adds
    # its results to config.csv in the working directory)
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("train", "--config", config, "--expid", "DeepFM_test", "--model-dir",
                       tmp_path / "direct")
    assert code == 0, err
    for name in ("model", "direct"):
        code, _, err = cli("predict", "--model-dir", tmp_path / name, "--data",
                           shared_file("criteo_deepctr_sample", "criteo_sample.txt"),
                           "--output", tmp_path / f"{name}.jsonl")
        assert code == 0, err
    assert (tmp_path / "model.jsonl").read_text() == (tmp_path / "direct.jsonl").read_text()
    code, _, err = cli("train", "--config", config, "--model-dir", tmp_path / "none")
    assert code == 1 and "name the experiment with --expid" in err


def test_sequences_shared_tables_and_regression(tmp_path, cli):
    """MovieLens' genres as a FuxiCTR sequence ("|"-joined): its vocabulary is every genre,
    its length the longest list (FuxiCTR's max_len when unset), pooled by sum as
    MaskedSumPooling; two columns sharing an embedding read the union of their values; mse_loss
    is l2_loss and early stopping watches RMSE."""
    path = str(shared_file("movielens_1m_deepctr_sample", "movielens_sample.txt"))
    dataset = {"data_format": "csv", "train_data": path, "feature_cols": [
        {"name": ["user_id", "gender"], "dtype": "str", "type": "categorical"},
        {"name": "movie_id", "dtype": "str", "type": "categorical",
         "share_embedding": "user_id"},
        {"name": "genres", "dtype": "str", "type": "sequence", "splitter": "|",
         "feature_encoder": "layers.MaskedSumPooling()"},
        {"name": "title", "active": False, "dtype": "str", "type": "categorical"}],
        "label_col": {"name": "rating", "dtype": "float"}}
    experiment = {**DEEPFM, "loss": "mse_loss", "task": "regression", "monitor": "logloss",
                  "monitor_mode": "min", "net_dropout": 0.1, "batch_norm": True,
                  "embedding_regularizer": 0, "net_regularizer": "l2(1.e-5)"}
    config = _write(tmp_path, dataset, experiment, "ml")
    out = tmp_path / "ml.json"
    code, _, err = cli("config", "from-fuxictr", config, "--expid", "DeepFM_test", "-o", out)
    assert code == 0, err
    document = json.loads(out.read_text())
    frame = pd.read_csv(path, dtype=str)
    features = _features(document)
    assert list(features) == ["user_id", "gender", "movie_id", "genres"]
    kind, genres = features["genres"]
    split = frame["genres"].str.split("|")
    assert kind == "sequence_id_feature" and genres["sequence_delim"] == "|"
    assert set(genres["vocab_list"]) == set(split.explode())
    assert genres["sequence_length"] == split.str.len().max()
    assert genres.get("pooling", "sum") == "sum"
    users, movies = features["user_id"][1], features["movie_id"][1]
    assert users["embedding_name"] == movies["embedding_name"] == "user_id"
    assert set(users["vocab_list"]) == set(movies["vocab_list"]) == (
        set(frame["user_id"]) | set(frame["movie_id"]))
    deep = document["model_config"]["deepfm"]["deep"]
    assert (deep["dropout_ratio"], deep["use_bn"]) == ([0.1], True)
    assert document["model_config"]["losses"] == [{"l2_loss": {}}]
    assert document["train_config"]["early_stopping_metric"] == "rmse"
    assert document["train_config"]["dense_optimizer"]["adam_optimizer"]["weight_decay"] == 1e-5
    code, _, err = cli("train", "--config", out, "--model-dir", tmp_path / "model",
                       "--set", "train_config.num_epochs=1")
    assert code == 0, err


@pytest.mark.parametrize("dataset, experiment, expid, refusal", [
    ({}, {"model": "DCNv2"}, "DeepFM_test", "model 'DCNv2': fmkit trains FuxiCTR's DeepFM"),
    ({}, {}, "DeepFM_other", "no experiment 'DeepFM_other' in model_config.yaml"),
    ({"data_format": "h5"}, {}, "DeepFM_test", "data_format 'h5': FuxiCTR's h5 files"),
    ({"feature_cols": [{"name": "C1", "type": "categorical",
                        "preprocess": "convert_month"}]}, {}, "DeepFM_test",
     "feature_cols 'C1': preprocess 'convert_month'"),
    ({}, {"monitor": "AUC", "monitor_mode": "min"}, "DeepFM_test",
     "monitor_mode 'min' contradicts monitor 'AUC'"),
    ({}, {"embedding_regularizer": "l1(1.e-5)"}, "DeepFM_test",
     "embedding_regularizer: 'l1(1.e-5)': only an L2 weight"),
    ({"feature_cols": [{"name": "nope", "type": "categorical"}]}, {}, "DeepFM_test",
     "no column 'nope' (feature_cols)"),
    ({"label_col": {"name": "clicked", "dtype": "float"}}, {}, "DeepFM_test",
     "criteo_sample.txt: no column 'clicked' (label_col)"),
    ({}, {"hidden_units": "max"}, "DeepFM_test",
     "hidden_units: expected a list of integers, got 'max'"),
    ({"sep": ""}, {}, "DeepFM_test", "sep: expected one character, got ''"),
    ({"feature_cols": [{"name": "C1", "type": "categorical", "share_embedding": ["a"]}]}, {},
     "DeepFM_test", "feature_cols 'C1': share_embedding: expected text, got \"['a']\""),
    ({}, {"batch_size": 1.5}, "DeepFM_test", "batch_size: expected an integer, got '1.5'"),
    ({"feature_cols": [{"name": "C1", "type": "numeric"}]}, {}, "DeepFM_test",
     "criteo_sample.txt:2: column 'C1': '05db9164' is not a number"),
])
def test_what_has_no_counterpart_is_one_line(tmp_path, cli, dataset, experiment, expid,
                                             refusal):
    config = _write(tmp_path, _criteo_dataset(**dataset), {**DEEPFM, **experiment})
    out = tmp_path / "deepfm.yaml"
    code, stdout, err = cli("config", "from-fuxictr", config, "--expid", expid, "-o", out)
    assert code == 1 and refusal in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists() and stdout == ""


def test_the_expid_goes_with_from_fuxictr_only(tmp_path, cli):
    config = _write(tmp_path, _criteo_dataset(), DEEPFM)
    code, _, err = cli("config", "from-fuxictr", config, "--to", "yaml")
    assert code == 1 and "from-fuxictr needs --expid" in err
    code, _, err = cli("config", "convert", config, "--expid", "x", "--to", "yaml")
    assert code == 1 and "--expid goes with from-fuxictr" in err
    (config / "model_config.yaml").write_text("Base: [\n")
    code, _, err = cli("config", "from-fuxictr", config, "--expid", "DeepFM_test", "--to", "yaml")
    assert code == 1 and err.startswith(f"fmkit: error: {config}/model_config.yaml: not valid "
                                        f"YAML"), err
    code, _, err = cli("config", "from-fuxictr", tmp_path / "none", "--expid", "x", "--to", "yaml")
    assert code == 1 and "none: not a directory (FuxiCTR's --config" in err


def test_a_parquet_directory_with_list_sequences(tmp_path, cli):
    """FuxiCTR's Parquet input: a directory of files, a sequence as a list column (FuxiCTR
    joins it with "^" and splits it again), missing numbers filled with fill_na before the
    deciles; the vocabulary and longest sequence as Python counts them over both files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(3)
    tags = [[f"t{j}" for j in rng.integers(0, 12, rng.integers(0, 5))] for _ in range(600)]
    price = np.where(rng.random(600) < 0.2, np.nan, rng.gamma(2.0, 10.0, 600))
    table = pa.table({"tags": tags, "price": price, "y": rng.integers(0, 2, 600)})
    (tmp_path / "data").mkdir()
    pq.write_table(table.slice(0, 300), tmp_path / "data" / "part-0.parquet")
    pq.write_table(table.slice(300), tmp_path / "data" / "part-1.parquet")
    dataset = {"data_format": "parquet", "train_data": str(tmp_path / "data"),
               "valid_data": str(tmp_path / "data" / "part-1.parquet"), "min_categr_count": 40,
               "feature_cols": [{"name": "tags", "dtype": "str", "type": "sequence"},
                                {"name": "price", "dtype": "float", "type": "numeric",
                                 "fill_na": -1}],
               "label_col": {"name": "y", "dtype": "float"}}
    config = _write(tmp_path, dataset, DEEPFM, "pq")
    out = tmp_path / "pq.yaml"
    code, _, err = cli("config", "from-fuxictr", config, "--expid", "DeepFM_test", "-o", out)
    assert code == 0, err
    features = _features(yaml.safe_load(out.read_text()))
    counts: dict[str, int] = {}
    for row in tags:
        for tag in row:
            counts[tag] = counts.get(tag, 0) + 1
    kind, sequence = features["tags"]
    assert kind == "sequence_id_feature" and sequence["pooling"] == "mean"
    assert set(sequence["vocab_list"]) == {t for t, c in counts.items() if c >= 40}
    assert sequence["sequence_length"] == max(len(row) for row in tags)
    filled = np.where(np.isnan(price), -1.0, price)
    np.testing.assert_allclose(features["price"][1]["boundaries"],
                               np.quantile(filled, np.linspace(0, 1, 11)[1:-1]), rtol=1e-12)
    assert features["price"][1]["default_value"] == "-1.0"
    code, _, err = cli("train", "--config", out, "--model-dir", tmp_path / "model")
    assert code == 0, err


def test_criteo_counts_bucketed_as_fuxictr_buckets_them(tmp_path, cli):
    """BARS' Criteo recipe: I1..I13 categorical through convert_to_bucket (floor(ln(x)^2) above
    2, else int(x); missing filled with 0). Two rows share an embedding row exactly when
    FuxiCTR's function, written here in Python, gives them the same bucket; the result trains."""
    import math

    from fmkit.data import columns
    from fmkit.models.deepfm import config as configs
    from fmkit.models.deepfm.features import FeatureSet

    dataset = _criteo_dataset(min_categr_count=1, feature_cols=[
        {"name": CRITEO_NUMBERS, "active": True, "dtype": "float", "type": "categorical",
         "preprocess": "convert_to_bucket"},
        {"name": CRITEO_IDS, "active": True, "dtype": "str", "type": "categorical"}])
    config = _write(tmp_path, dataset, DEEPFM)
    out = tmp_path / "x4.yaml"
    code, _, err = cli("config", "from-fuxictr", config, "--expid", "DeepFM_test", "-o", out)
    assert code == 0, err
    features = FeatureSet.from_config(configs.parse(yaml.safe_load(out.read_text())))
    path = shared_file("criteo_deepctr_sample", "criteo_sample.txt")
    batch = next(columns.read_delimited(path, None, ",", True))
    encoded = features.encode(batch, labelled=True, label_mode="binary")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)

    def fuxictr_bucket(text: str) -> int:
        value = float(text) if text else 0.0
        return int(math.floor(math.log(value) ** 2)) if value > 2 else int(value)

    for name in CRITEO_NUMBERS:
        ids, offsets = encoded.sparse[name]
        assert (np.diff(offsets) == 1).all()
        theirs = [fuxictr_bucket(v) for v in frame[name]]
        pairs = set(zip(ids.tolist(), theirs))
        assert len(pairs) == len(set(ids.tolist())) == len(set(theirs)), name
    code, _, err = cli("train", "--config", out, "--model-dir", tmp_path / "model")
    assert code == 0, err


SETTINGS = ["metrics", "group_id", "feature_specs", "max_gradient_norm", "embedding_dim",
            "hidden_units", "hidden_activations",
            "net_dropout", "batch_norm", "learning_rate", "optimizer", "loss",
            "embedding_regularizer", "net_regularizer",
            "batch_size", "epochs", "shuffle", "seed", "monitor", "monitor_mode",
            "early_stop_patience", "eval_steps", "model_root", "min_categr_count",
            "data_format", "label_col", "feature_cols", "valid_data", "sep", "use_features"]
COLUMN_SETTINGS = ["name", "active", "dtype", "type", "fill_na", "min_categr_count",
                   "embedding_dim", "splitter", "max_len", "padding", "feature_encoder",
                   "share_embedding", "preprocess"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10 ** 20, 10 ** 20),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6),
                    st.sampled_from(["relu", "AUC", "max", "adam", "l2(1e-5)", "1e-3", "^",
                                     "sequence", "numeric", "meta", "C1", "I1",
                                     "convert_to_bucket", "MaskedSumPooling", "pre"]))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.sampled_from(["AUC", "name", "a"]), inner,
                                        max_size=2), max_leaves=4)


@settings(max_examples=int(os.environ.get("FMKIT_FUZZ_EXAMPLES", 200)), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(changes=st.dictionaries(st.sampled_from(SETTINGS), VALUES, max_size=3),
       column=st.dictionaries(st.sampled_from(COLUMN_SETTINGS), VALUES, max_size=2))
def test_any_settings_convert_or_are_one_config_error(changes, column):
    """Settings of any type (FuxiCTR's YAML takes whatever is written) convert, or are a
    ConfigError naming the setting: never a TypeError or ValueError from inside."""
    from fmkit.errors import FMKitError
    from fmkit.models.deepfm import fuxictr
    from fmkit.models.deepfm.config_files import written

    params = {"model": "DeepFM", "dataset_id": "d", "model_id": "e",
              "train_data": str(shared_file("criteo_deepctr_sample", "criteo_sample.txt")),
              "feature_cols": [{"name": ["C1", "C2"], "type": "categorical", **column},
                               {"name": "I1", "type": "numeric"}],
              "label_col": {"name": "label"}, **changes}
    try:
        written(fuxictr.to_document(params).document, "yaml")
    except FMKitError as e:
        assert "\n" not in str(e)


def test_yaml_anchors_and_merge_keys_are_read_and_bombs_refused(tmp_path, cli):
    """FuxiCTR's loader reads YAML anchors, aliases and merge keys (an experiment written as
    ``<<: *base`` plus changes): so does the conversion, the aliases counted as written out
    (a billion-value alias bomb is one line, not a hang)."""
    config = _write(tmp_path, _criteo_dataset(), DEEPFM)
    text = (config / "model_config.yaml").read_text()
    (config / "model_config.yaml").write_text(
        text.replace("DeepFM_test:", "DeepFM_test: &base", 1)
        + "DeepFM_small:\n  <<: *base\n  embedding_dim: 2\n")
    out = tmp_path / "small.yaml"
    code, _, err = cli("config", "from-fuxictr", config, "--expid", "DeepFM_small", "-o", out)
    assert code == 0, err
    features = _features(yaml.safe_load(out.read_text()))
    assert {settings["embedding_dim"] for _, settings in features.values()} == {2}
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n"
        for i in range(8))
    (config / "model_config.yaml").write_text(bomb + "DeepFM_test: {model: DeepFM}\n")
    code, _, err = cli("config", "from-fuxictr", config, "--expid", "DeepFM_test", "--to", "yaml")
    assert code == 1 and "its aliases expand to more than 1000000 values" in err, err


def test_feature_specs_and_group_metrics(tmp_path, cli):
    """Base's feature_specs override a feature's embedding_dim as FuxiCTR's FeatureMap does;
    metrics gAUC with group_id is TorchEasyRec's grouped_auc over that column (a note says it
    is unweighted), and a group metric without group_id, or a feature_specs key fmkit does not
    read, is one line."""
    experiment = {**DEEPFM, "metrics": ["logloss", "AUC", "gAUC", "MRR"], "group_id": "C1",
                  "feature_specs": [{"name": ["C2", "C3"], "embedding_dim": 4},
                                    {"name": "C4", "feature_encoder": None}]}
    config = _write(tmp_path, _criteo_dataset(), experiment)
    out = tmp_path / "g.yaml"
    code, _, err = cli("config", "from-fuxictr", config, "--expid", "DeepFM_test", "-o", out)
    assert code == 0, err
    document = yaml.safe_load(out.read_text())
    assert document["model_config"]["metrics"] == [{"grouped_auc": {"grouping_key": "C1"}}]
    assert "unweighted mean of the groups' AUCs" in err and "metrics MRR: not reported" in err
    code, _, err = cli("train", "--config", out, "--model-dir", tmp_path / "model")
    assert code == 0 and "grouped_auc_C1" in (tmp_path / "model" / "metrics.json").read_text()
    for changes, refusal in (({"group_id": None}, "metrics gAUC/avgAUC need group_id"),
                             ({"feature_specs": [{"name": "C2", "pretrained_emb": "x.h5"}]},
                              "feature_specs[0]: 'pretrained_emb' has no counterpart")):
        config = _write(tmp_path, _criteo_dataset(), {**experiment, **changes})
        code, _, err = cli("config", "from-fuxictr", config, "--expid", "DeepFM_test",
                           "--to", "yaml")
        assert code == 1 and refusal in err, err


def test_avazu_hours_weekdays_and_weekends_as_fuxictr_computes_them(tmp_path, cli):
    """BARS' Avazu recipe: hour (YYMMDDHH) read three ways - convert_hour, convert_weekday,
    convert_weekend, the last two as new features of the ``hour`` column. Over dates of every
    month of several years (leap days, January and February included), two rows share an
    embedding row exactly when FuxiCTR's functions, written here with Python's datetime,
    agree; the result trains."""
    import datetime

    from fmkit.data import columns
    from fmkit.models.deepfm import config as configs
    from fmkit.models.deepfm.features import FeatureSet

    rng = np.random.default_rng(8)
    start = datetime.datetime(2013, 12, 25)
    stamps = [start + datetime.timedelta(hours=int(h)) for h in rng.integers(0, 24 * 900, 600)]
    hours = [t.strftime("%y%m%d%H") for t in stamps]
    frame = pd.DataFrame({"label": rng.integers(0, 2, 600), "hour": hours,
                          "site": rng.integers(0, 9, 600)})
    frame.to_csv(tmp_path / "avazu.csv", index=False)
    path = str(tmp_path / "avazu.csv")
    dataset = {"data_format": "csv", "train_data": path, "valid_data": path,
               "min_categr_count": 1, "label_col": {"name": "label", "dtype": "float"},
               "feature_cols": [
                   {"name": "site", "dtype": "str", "type": "categorical"},
                   {"name": "hour", "dtype": "str", "type": "categorical",
                    "preprocess": "convert_hour"},
                   {"name": "weekday", "dtype": "str", "type": "categorical",
                    "preprocess": "convert_weekday"},
                   {"name": "weekend", "dtype": "str", "type": "categorical",
                    "preprocess": "convert_weekend"}]}
    config = _write(tmp_path, dataset, DEEPFM, "avazu")
    out = tmp_path / "avazu.yaml"
    code, _, err = cli("config", "from-fuxictr", config, "--expid", "DeepFM_test", "-o", out)
    assert code == 0, err
    features = FeatureSet.from_config(configs.parse(yaml.safe_load(out.read_text())))
    encoded = features.encode(next(columns.read_delimited(path, None, ",", True)),
                              labelled=True, label_mode="binary")

    def weekday(text: str) -> int:  # FuxiCTR's _convert_weekday
        return int(datetime.date(int("20" + text[0:2]), int(text[2:4]),
                                 int(text[4:6])).strftime("%w"))

    theirs = {"hour": [int(h[6:8]) for h in hours], "weekday": [weekday(h) for h in hours],
              "weekend": [int(weekday(h) in (0, 6)) for h in hours]}
    for name, values in theirs.items():
        ids, offsets = encoded.sparse[name]
        assert (np.diff(offsets) == 1).all()
        pairs = set(zip(ids.tolist(), values))
        assert len(pairs) == len(set(ids.tolist())) == len(set(values)), name
    assert len(set(theirs["weekday"])) == 7 and len(set(theirs["hour"])) == 24
    code, _, err = cli("train", "--config", out, "--model-dir", tmp_path / "model")
    assert code == 0, err


def test_relative_data_paths_are_found_where_run_expid_runs(tmp_path, cli, monkeypatch):
    """FuxiCTR's run_expid.py changes to its own directory, beside config/: a relative
    train_data that names nothing from the working directory is read from the configuration
    directory's parent (the model zoo's layout); one that names a file here is read here."""
    import shutil

    zoo = tmp_path / "zoo"
    (zoo / "data").mkdir(parents=True)
    shutil.copy(shared_file("criteo_deepctr_sample", "criteo_sample.txt"), zoo / "data" / "c.csv")
    config = _write(zoo, _criteo_dataset(train_data="./data/c.csv", valid_data="data/c.csv"),
                    DEEPFM)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, _, err = cli("config", "from-fuxictr", config, "--expid", "DeepFM_test", "-o", "x.yaml")
    assert code == 0, err
    document = yaml.safe_load((elsewhere / "x.yaml").read_text())
    assert document["train_input_path"] == str(zoo / "data" / "c.csv")
    assert document["eval_input_path"] == str(zoo / "data" / "c.csv")
    (elsewhere / "data").mkdir()
    shutil.copy(zoo / "data" / "c.csv", elsewhere / "data" / "c.csv")
    code, _, err = cli("config", "from-fuxictr", config, "--expid", "DeepFM_test", "-o", "y.yaml")
    assert code == 0, err
    assert yaml.safe_load((elsewhere / "y.yaml").read_text())["train_input_path"] == \
        "./data/c.csv"


def test_train_watches_valid_data_and_scores_test_data_as_run_expid_does(tmp_path, cli,
                                                                          monkeypatch):
    """run_expid.py stops early on valid_data and scores test_data after training: so does
    fmkit train --config DIR --expid (each epoch's validation counts valid_data's rows, the
    test test_data's), and it adds run_expid.py's line of results to the file named after the
    configuration directory, its figures scikit-learn's of the model's predictions; a file of
    that name that is not such a results file is left alone. A converted file keeps one
    evaluation channel, valid_data, and a note says how to score test_data without making it
    the channel early stopping watches."""
    from sklearn.metrics import log_loss, roc_auc_score

    monkeypatch.chdir(tmp_path)
    lines = shared_file("criteo_deepctr_sample", "criteo_sample.txt").read_text().splitlines()
    parts = {"train": lines[1:121], "valid": lines[121:151], "test": lines[151:]}
    for name, rows in parts.items():
        (tmp_path / f"{name}.csv").write_text("\n".join([lines[0], *rows]) + "\n")
    dataset = _criteo_dataset(**{f"{name}_data": str(tmp_path / f"{name}.csv")
                                 for name in parts})
    config = _write(tmp_path, dataset, {**DEEPFM, "epochs": 2})
    code, _, err = cli("train", "--config", config, "--expid", "DeepFM_test", "--model-dir",
                       tmp_path / "model")
    assert code == 0, err
    metrics = json.loads((tmp_path / "model" / "metrics.json").read_text())
    assert metrics["test"]["rows"] == len(parts["test"]) == 50
    assert {epoch["validation"]["rows"] for epoch in metrics["train"]} == {30}
    figures = []
    for name in ("valid", "test"):
        code, out, err = cli("predict", "--model-dir", tmp_path / "model", "--data",
                             tmp_path / f"{name}.csv")
        assert code == 0, err
        scores = [json.loads(line)["score"] for line in out.splitlines()]
        labels = [int(float(row.split(",")[0])) for row in parts[name]]
        figures.append(f"logloss: {log_loss(labels, scores):.6f} - AUC: "
                       f"{roc_auc_score(labels, scores):.6f}")
    results = (tmp_path / "config.csv").read_text().splitlines()
    assert len(results) == 1
    when, command, expid, dataset, train, valid, test = results[0].split(",")
    assert re.fullmatch(r" \d{8}-\d{6}", when) and command.startswith("[command] fmkit train")
    assert (expid, dataset, train) == ("[exp_id] DeepFM_test", "[dataset_id] criteo_sample",
                                       "[train] N.A.")
    assert (valid, test) == (f"[val] {figures[0]}", f"[test] {figures[1]}")
    (tmp_path / "config.csv").write_text("label,a\n1,2\n")  # (someone's data, not results)
    code, _, err = cli("train", "--config", config, "--expid", "DeepFM_test", "--model-dir",
                       tmp_path / "model")
    assert code == 0 and "config.csv: exists and is not a results file" in err, err
    assert (tmp_path / "config.csv").read_text() == "label,a\n1,2\n"
    # on two processes: one line (the first process's), naming the command the user ran
    (tmp_path / "config.csv").unlink()
    two = run_fmkit("train", "--nproc", "2", "--quiet", "--config", config, "--expid",
                    "DeepFM_test", "--model-dir", tmp_path / "model", cwd=tmp_path)
    assert two.returncode == 0, two.stderr
    results = (tmp_path / "config.csv").read_text().splitlines()
    assert len(results) == 1 and results[0].split(",")[1] == (
        f"[command] fmkit train --nproc 2 --quiet --config {config} --expid DeepFM_test "
        f"--model-dir {tmp_path / 'model'}"), results
    code, _, err = cli("config", "from-fuxictr", config, "--expid", "DeepFM_test", "--to",
                       "yaml")
    assert code == 0 and (f"train with --validation {tmp_path / 'valid.csv'} --test "
                          f"{tmp_path / 'test.csv'}") in err, err


def test_an_hour_that_is_no_date_is_one_line(tmp_path, cli):
    """Avazu's recipe on a 30 February: one line naming the file, the line and the column (it
    was numpy's ValueError traceback), as FuxiCTR's own date() refuses it."""
    (tmp_path / "a.csv").write_text("label,hour\n1,14102100\n0,14023012\n")
    path = str(tmp_path / "a.csv")
    dataset = {"data_format": "csv", "train_data": path,
               "label_col": {"name": "label", "dtype": "float"},
               "feature_cols": [{"name": "weekday", "dtype": "str", "type": "categorical",
                                 "preprocess": "convert_weekday"}]}
    config = _write(tmp_path, dataset, DEEPFM, "avazu")
    code, out, err = cli("config", "from-fuxictr", config, "--expid", "DeepFM_test", "--to",
                         "yaml")
    assert code == 1 and out == "", err
    assert "a.csv:3: column 'hour': 14023012 is not a date and hour YYMMDDHH" in err, err
    assert len(err.strip().splitlines()) == 1
