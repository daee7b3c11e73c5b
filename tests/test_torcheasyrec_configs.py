"""TorchEasyRec's own ``.config`` files (protobuf text of EasyRecConfig), read as they are.

The three configurations below copy the *structure* of TorchEasyRec's public rank-model
examples — ``examples/deepfm_criteo.config``, ``tzrec/benchmark/configs/criteo/deepfm.config``
and ``examples/component/deepfm_criteo_without_component.config`` — written here by a
generator (their files are not copied): the same messages, fields, table sizes and layout,
with only the data paths and ``dataset_type`` changed, as the issue's user would.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from fmkit.models.deepfm import config as configs
from fmkit.models.deepfm import config_files, prototext

from .conftest import REPO, shared_file

# TorchEasyRec's Criteo-Terabyte table sizes (cat_0 .. cat_25), 204 million rows in all
CRITEO_BUCKETS = [40000000, 39060, 17295, 7424, 20265, 3, 7122, 1543, 63, 40000000, 3067956,
                  405282, 10, 2209, 11938, 155, 4, 976, 14, 40000000, 40000000, 40000000,
                  590152, 12973, 108, 36]


def criteo_config(train: str, model_dir: str, variant: str) -> str:
    """A Criteo DeepFM ``.config`` laid out as TorchEasyRec's example ``variant`` is."""
    data_extra = {"example": "    fg_mode: FG_NONE\n",
                  "benchmark": '    odps_data_quota_name: ""\n',
                  "without_component": "    fg_encoded: true\n"}[variant]
    train_extra = "    save_checkpoints_steps: 50000\n" if variant == "benchmark" else ""
    eval_config = "eval_config {\n}\n" if variant == "benchmark" else (
        "eval_config {\n    num_steps: 100\n}\n")
    text = [f'train_input_path: "{train}"\n', f'eval_input_path: "{train}"\n',
            f'model_dir: "{model_dir}"\n',
            "train_config {\n"
            "    sparse_optimizer {\n        adagrad_optimizer {\n            lr: 0.001\n"
            "        }\n        constant_learning_rate {\n        }\n    }\n"
            "    dense_optimizer {\n        adam_optimizer {\n            lr: 0.001\n"
            "        }\n        constant_learning_rate {\n        }\n    }\n"
            f"    num_epochs: 1\n{train_extra}}}\n", eval_config,
            "data_config {\n    batch_size: 8192\n    dataset_type: CsvDataset\n"
            f'{data_extra}    label_fields: "label"\n    num_workers: 8\n}}\n']
    for i in range(13):
        text.append(f'feature_configs {{\n    raw_feature {{\n        feature_name: "int_{i}"\n'
                    "    }\n}\n")
    for i, buckets in enumerate(CRITEO_BUCKETS):
        text.append(f'feature_configs {{\n    id_feature {{\n        feature_name: "cat_{i}"\n'
                    f"        num_buckets: {buckets}\n        embedding_dim: 16\n    }}\n}}\n")

    def names(prefix: str, count: int) -> str:
        return "".join(f'        feature_names: "{prefix}_{i}"\n' for i in range(count))

    text.append("model_config {\n"
                f'    feature_groups {{\n        group_name: "wide"\n{names("cat", 26)}'
                "        group_type: WIDE\n    }\n"
                f'    feature_groups {{\n        group_name: "fm"\n{names("cat", 26)}'
                "        group_type: DEEP\n    }\n"
                f'    feature_groups {{\n        group_name: "deep"\n{names("int", 13)}'
                f'{names("cat", 26)}        group_type: DEEP\n    }}\n'
                "    deepfm {\n        deep {\n            hidden_units: [512, 256, 128]\n"
                "        }\n        final {\n            hidden_units: [64]\n        }\n    }\n"
                "    metrics {\n        auc {}\n    }\n"
                "    losses {\n        binary_cross_entropy {}\n    }\n}\n")
    return "".join(text)


VARIANTS = ("example", "benchmark", "without_component")

# the Kaggle sample's categories are hex text: ids are hashed into 1,000 rows instead
LOWERED = [arg for i in range(13, 39) for arg in (
    "--set", f"feature_configs[{i}].id_feature.num_buckets=null",
    "--set", f"feature_configs[{i}].id_feature.hash_bucket_size=1000")]


@pytest.mark.parametrize("variant", VARIANTS)
def test_torcheasyrec_criteo_configs_parse_field_by_field(tmp_path, variant):
    path = tmp_path / "deepfm_criteo.config"
    path.write_text(criteo_config("train.csv", "model", variant))
    config = configs.parse(config_files.load_document(path))
    assert [c.feature.feature_name for c in config.feature_configs] == (
        [f"int_{i}" for i in range(13)] + [f"cat_{i}" for i in range(26)])
    assert [c.id_feature.num_buckets for c in config.feature_configs[13:]] == CRITEO_BUCKETS
    assert all(c.raw_feature is not None and not c.raw_feature.boundaries
               for c in config.feature_configs[:13])
    groups = config.model_config.feature_groups
    assert [(g.group_name, g.group_type, len(g.feature_names)) for g in groups] == [
        ("wide", "WIDE", 26), ("fm", "DEEP", 26), ("deep", "DEEP", 39)]
    assert config.model_config.deepfm.deep.hidden_units == [512, 256, 128]
    assert config.model_config.deepfm.final.hidden_units == [64]
    assert config.model_config.deepfm.wide_embedding_dim == 4  # TorchEasyRec's default
    assert config.train_config.sparse_optimizer.adagrad_optimizer.lr == 0.001
    assert config.train_config.dense_optimizer.adam_optimizer.lr == 0.001
    assert config.data_config.batch_size == 8192
    assert config.data_config.label_fields == ["label"]
    assert config.model_config.losses[0].binary_cross_entropy is not None
    assert config.eval_config.num_steps == (None if variant == "benchmark" else 100)


def test_the_criteo_config_trains_with_lowered_tables_and_refuses_the_original_ones(
        tmp_path, cli):
    train = shared_file("criteo_kaggle_head1000", "train.txt")
    path = tmp_path / "deepfm_criteo.config"
    path.write_text(criteo_config(str(train), str(tmp_path / "model"), "example"))
    code, _, err = cli("train", "--config", path, "--quiet")
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("fmkit: error")]
    assert "Traceback" not in err and len(errors) == 1, err
    line = errors[0]
    for expected in ("GiB", "cat_0_emb", "40000000 rows", "num_buckets",
                     "feature_configs[13].id_feature.num_buckets"):
        assert expected in line, line
    assert not (tmp_path / "model").exists()

    code, _, err = cli("train", "--config", path, "--quiet", *LOWERED)
    assert code == 0, err
    metrics = json.loads((tmp_path / "model" / "metrics.json").read_text())
    assert metrics["test"]["rows"] == 1000  # 40 tab-separated columns read without input_fields
    assert "data_config.num_workers" in err  # reported as ignored


def test_dense_layers_beyond_memory_are_refused_before_any_is_made(tmp_path, cli):
    """A hidden_units of 10^8 (a typo) asks for 16 * 10^8 * 161 bytes of MLP: one line
    naming the dense layers and what to lower; it was PyTorch's allocator traceback."""
    train = shared_file("criteo_kaggle_head1000", "train.txt")
    path = tmp_path / "deepfm_criteo.config"
    path.write_text(criteo_config(str(train), str(tmp_path / "model"), "example"))
    code, _, err = cli("train", "--config", path, "--quiet", *LOWERED,
                       "--set", "model_config.deepfm.deep.hidden_units=[100000000, 64]")
    errors = [line for line in err.splitlines() if line.startswith("fmkit: error")]
    assert code == 1 and "Traceback" not in err and len(errors) == 1, err
    assert "largest: the dense layers (" in errors[0] and (
        "Lower model_config.deepfm's hidden_units (deep and final)") in errors[0], errors[0]
    assert not (tmp_path / "model").exists()


def test_odps_inputs_and_refused_fields_are_one_clear_line(tmp_path, cli):
    path = tmp_path / "c.config"
    odps = criteo_config("odps://{PROJECT}/tables/criteo_terabyte_train_hashed_v1", "m",
                         "example").replace("CsvDataset", "OdpsDataset")
    path.write_text(odps)
    code, _, err = cli("train", "--config", path)
    assert code == 1 and "Traceback" not in err
    assert "train_input_path" in err and "--set train_input_path=" in err

    path.write_text(odps.replace("odps://{PROJECT}/tables/criteo_terabyte_train_hashed_v1",
                                 "train.csv"))
    code, _, err = cli("train", "--config", path)
    assert code == 1 and "data_config.dataset_type: OdpsDataset" in err
    assert "ParquetDataset" in err

    zch = criteo_config("t.csv", "m", "example").replace(
        '        num_buckets: 40000000\n', '        zch {\n            zch_size: 100\n'
        '        }\n', 1)
    path.write_text(zch)
    code, _, err = cli("train", "--config", path)
    line_number = zch.splitlines().index("        zch {") + 1
    assert code == 1 and "Traceback" not in err, err
    assert err.startswith(f"fmkit: error: {path}:{line_number}: feature_configs[].id_feature."
                          "zch: ") and err.count(str(path)) == 1, err  # (named once)
    assert "hash_bucket_size" in err  # what to use instead

    path.write_text(criteo_config("t.csv", "m", "example").replace("deepfm {", "dlrm {"))
    code, _, err = cli("train", "--config", path)
    assert code == 1 and "model_config.dlrm" in err and "model_config.deepfm" in err

    path.write_text(criteo_config("t.csv", "m", "example").replace("batch_size:",
                                                                   "batch_sise:"))
    code, _, err = cli("train", "--config", path)
    assert code == 1 and "data_config.batch_sise" in err and "batch_size" in err


def test_sharding_hints_are_accepted_and_ignored_and_feature_masks_refused(tmp_path, cli,
                                                                          caplog):
    """torchrec's embedding_constraints (a feature's and train_config's global ones) and
    fg_value_type only tune TorchEasyRec's machinery: the configuration parses in protobuf
    text and says they are ignored. use_mask and asset_dir would change what trains: one line
    each, naming the field and what to do."""
    hinted = criteo_config("t.csv", "m", "example").replace(
        '        num_buckets: 40000000\n', '        num_buckets: 40000000\n'
        '        fg_value_type: "int64"\n        embedding_constraints {\n'
        '            sharding_types: "data_parallel"\n            compute_kernels: "fused"\n'
        '        }\n', 1).replace("train_config {", "train_config {\n"
                               "    global_embedding_constraints {\n"
                               '        sharding_types: "row_wise"\n    }', 1)
    path = tmp_path / "c.config"
    path.write_text(hinted)
    with caplog.at_level("WARNING", logger="fmkit"):
        configs.parse(config_files.load_document(path), report_ignored=True)
    for name in ("id_feature.fg_value_type", "id_feature.embedding_constraints",
                 "train_config.global_embedding_constraints"):
        assert name in caplog.text, caplog.text
    for field, value, instead in (("use_mask", "true", "not supported"),
                                  ("asset_dir", '"assets"', "vocab_file's own path")):
        path.write_text(criteo_config("t.csv", "m", "example").replace(
            '        num_buckets: 40000000\n',
            f'        num_buckets: 40000000\n        {field}: {value}\n', 1))
        code, _, err = cli("train", "--config", path)
        assert code == 1 and "Traceback" not in err, err
        assert f"id_feature.{field}: not supported by fmkit" in err and instead in err, err


def test_yaml_has_the_same_refusals_with_the_full_path():
    document = yaml.safe_load("""
feature_configs:
  - id_feature: {feature_name: a, embedding_dim: 4, hash_bucket_size: 10}
  - id_feature: {feature_name: b, embedding_dim: 4, dynamicemb: {max_capacity: 10}}
model_config:
  feature_groups: [{group_name: wide, feature_names: [a], group_type: WIDE},
                   {group_name: deep, feature_names: [a, b]}]
  deepfm: {deep: {hidden_units: [4]}}
""")
    with pytest.raises(configs.ConfigError, match=r"feature_configs\[1\]\.id_feature\."
                                                  r"dynamicemb: not supported.*hash_bucket"):
        configs.parse(document)


@pytest.mark.parametrize("variant", VARIANTS)
def test_convert_between_config_yaml_and_json_keeps_the_configuration(tmp_path, cli, variant):
    source = tmp_path / "deepfm_criteo.config"
    source.write_text(criteo_config("t.csv", "m", variant)
                      .replace('label_fields: "label"', 'label_fields: "label"\n'
                               '    sample_weight_fields: "w"')
                      .replace("embedding_dim: 16\n    }\n}\n", 'embedding_dim: 16\n'
                               '        vocab_dict {\n            key: "x"\n'
                               "            value: 5\n        }\n    }\n}\n", 0))
    original = configs.parse(config_files.load_document(source))
    forms = {}
    for form in ("yaml", "json", "config"):
        out = tmp_path / f"converted.{form}"
        code, _, err = cli("config", "convert", source, "--to", form, "-o", out)
        assert code == 0, err
        forms[form] = out
        again = configs.parse(config_files.load_document(out))
        assert again == original
    # and back: YAML -> .config -> the same configuration
    code, text, err = cli("config", "convert", forms["yaml"], "--to", "config")
    assert code == 0, err
    assert prototext.looks_like_prototext(text)
    assert configs.parse(prototext.parse_text(text, "stdout")) == original
    # an existing file is not replaced
    code, _, err = cli("config", "convert", source, "--to", "yaml", "-o", forms["yaml"])
    assert code == 1 and "exists" in err
    # without --to, the form is the -o file's suffix's
    for suffix, form in ((".yml", "yaml"), (".json", "json"), (".config", "config")):
        code, _, err = cli("config", "convert", source, "-o", tmp_path / f"again{suffix}")
        assert code == 0, err
        assert (tmp_path / f"again{suffix}").read_text() == forms[form].read_text()
    code, _, err = cli("config", "convert", source, "-o", tmp_path / "again.txt")
    assert code == 1 and "needs --to" in err


@pytest.mark.parametrize("setting, message", [
    ("model_config.deepfm.deep.hidden_units=[-3,2]",
     "model_config.deepfm.deep.hidden_units: expected positive layer sizes"),
    ("model_config.deepfm.final.dropout_ratio=[1.5]",
     "model_config.deepfm.final.dropout_ratio: each value must be in [0, 1)"),
    ("feature_configs[13].id_feature.embedding_dim=-4",
     "feature_configs[13].id_feature.embedding_dim: must be positive"),
    ("model_config.feature_groups[0].feature_names=[]",
     "model_config.feature_groups[0].feature_names: group 'wide' has no features"),
])
def test_convert_refuses_what_training_refuses(tmp_path, cli, setting, message):
    """``fmkit config convert`` checks a configuration as ``fmkit train --config`` does, the
    features, groups and layers included: the same one line, naming the file, and nothing
    written (it wrote each of these, which training then refused). ``fmkit tune`` refuses it
    before its first trial (a group's unknown feature failed each trial) and leaves nothing."""
    example = REPO / "examples" / "deepfm_criteo.yaml"
    code, _, err = cli("config", "convert", example, "--to", "yaml", "-o", tmp_path / "c.yaml",
                       "--set", setting)
    assert (code, err.strip()) == (1, f"fmkit: error: {example}: {message}")
    assert not (tmp_path / "c.yaml").exists()
    train = shared_file("criteo_kaggle_head1000", "train.txt")
    code, _, err = cli("train", "--config", example, "--quiet", "--set", setting,
                       "--set", f"train_input_path={train}", "--set", "eval_input_path=",
                       "--set", f"model_dir={tmp_path / 'm'}")
    assert (code, err.strip()) == (1, f"fmkit: error: {example}: {message}")
    code, _, err = cli("tune", "--config", example, "--train", train, "--validation-fraction",
                       "0.2", "--objective", "validation:auc", "--trials", "1", "--model-dir",
                       tmp_path / "t", "--quiet", "--set", setting)
    assert (code, err.strip()) == (1, f"fmkit: error: {example}: {message}")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("text, where", [
    ("model_config: [1,2\n", "line 2, column 1: while parsing a flow sequence, expected ','"),
    ("a: b\n c: d\n", "line 2, column 3: mapping values are not allowed here"),
    ('{"model_config": [1,\n', "line 2, column 1: Expecting value"),
])
def test_a_configuration_that_does_not_parse_is_one_line_with_its_place(tmp_path, cli, text,
                                                                        where):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    code, _, err = cli("train", "--config", path)
    assert code == 1 and err.count("\n") == 1 and f"{path}: not valid" in err, err
    assert where in err, err


def test_prototext_is_told_from_yaml_and_json_by_content():
    assert prototext.looks_like_prototext('model_config {\n  num_class: 1\n}\n')
    assert prototext.looks_like_prototext('# c\ntrain_config { num_epochs: 1 }')
    assert not prototext.looks_like_prototext("model_config:\n  deepfm: {deep: {}}\n")
    assert not prototext.looks_like_prototext('{"model_config": {"deepfm": {}}}')


def test_set_selects_as_torcheasyrecs_edit_config_json_does():
    """Indices, ranges, every element, and conditions on an element's field (a plain loop
    here says which elements each should reach); a range or condition passes over elements
    without the path; a path that reaches nothing is an error."""
    document = {"feature_configs": [{"raw_feature": {"feature_name": f"I{i}"}} for i in range(3)]
                + [{"id_feature": {"feature_name": f"C{i}", "embedding_dim": 16,
                                   "hash_bucket_size": 100 * (i + 1)}} for i in range(4)],
                "train_config": {"sparse_optimizer": {"adam_optimizer": {"lr": 0.1}}}}
    config_files.apply_overrides(document, [
        "feature_configs[:].id_feature.embedding_dim=4",
        "feature_configs[id_feature.hash_bucket_size>=300].id_feature.embedding_dim=8",
        "feature_configs[id_feature.feature_name=C0].id_feature.hash_bucket_size=7",
        "feature_configs[1:3].raw_feature.boundaries=[1, 2]",
        "feature_configs[0].raw_feature.feature_name=I9",
        "feature_configs[-1].id_feature.feature_name=C9",  # from the end, as Python's
        "train_config.sparse_optimizer={adagrad_optimizer: {lr: 0.01}}",
    ])
    features = document["feature_configs"]
    assert all("id_feature" not in f for f in features[:3])  # no id_feature made in their place
    expected_dims = [4 if f["id_feature"]["hash_bucket_size"] < 300 else 8 for f in features[3:]]
    assert [f["id_feature"]["embedding_dim"] for f in features[3:]] == [4, 4, 8, 8]
    assert expected_dims == [4, 4, 8, 8] and features[3]["id_feature"]["hash_bucket_size"] == 7
    assert [f["raw_feature"].get("boundaries") for f in features[:3]] == [None, [1, 2], [1, 2]]
    config_files.apply_overrides(document, ["feature_configs[1].raw_feature.boundaries[0]=0"])
    assert features[2]["raw_feature"]["boundaries"] == [1, 2]  # each element its own list
    assert features[0]["raw_feature"]["feature_name"] == "I9"
    assert features[6]["id_feature"]["feature_name"] == "C9"
    assert document["train_config"]["sparse_optimizer"] == {"adagrad_optimizer": {"lr": 0.01}}
    for assignment, message in (
            ("feature_configs[id_feature.feature_name=C99].id_feature.embedding_dim=3",
             "selects no field"),
            ("feature_configs[9].id_feature.embedding_dim=3", r"no element \[9\]"),
            ("train_config.absent[0]=3", r"no element \[0\]"),  # (made as an empty list)
            ("feature_configs[x~1].id_feature.embedding_dim=3", "cannot read"),
            ("train_config[0].num_epochs=3", "selects in a list")):
        with pytest.raises(configs.ConfigError, match=message):
            config_files.apply_overrides(document, [assignment])
    assert config_files.edit_config_json(
        '{"data_config.batch_size;train_config.num_epochs": "256;2", "a.b": [4, 5], '
        '"c": true}') == ["data_config.batch_size=256", "train_config.num_epochs=2",
                          "a.b=[4, 5]", "c=True"]


def test_torcheasyrecs_commands_run_with_their_own_options(tmp_path, cli):
    """tzrec.train_eval's, tzrec.eval's, tzrec.export's and tzrec.predict's options, as a
    TorchEasyRec script passes them: the edits reach the trained configuration, --continue_train
    says what to use, the evaluation of the configuration's model and data equals
    scikit-learn's AUC of the predictions written through tzrec.predict's options, and the
    result files TorchEasyRec leaves in the model directory hold those figures."""
    import pyarrow.parquet as pq
    from sklearn.metrics import roc_auc_score

    train = shared_file("criteo_kaggle_head1000", "train.txt")
    path = tmp_path / "deepfm_criteo.config"
    path.write_text(criteo_config(str(train), str(tmp_path / "unused"), "example"))
    model = tmp_path / "model"
    edits = {"train_config.num_epochs": 2, "feature_configs[:].id_feature.embedding_dim": 4,
             "model_config.deepfm.deep.hidden_units": [32, 16],
             "data_config.batch_size;train_config.sparse_optimizer.adagrad_optimizer.lr":
                 "256;0.01"}
    code, _, err = cli("train", "--pipeline_config_path", path, "--train_input_path", train,
                       "--eval_input_path", train, "--model_dir", model, "--quiet",
                       "--edit_config_json", json.dumps(edits), *LOWERED)
    assert code == 0, err
    trained = json.loads((model / "model.json").read_text())["config"]
    features = trained["feature_configs"]
    assert [f["id_feature"]["embedding_dim"] for f in features[13:]] == [4] * 26
    assert all(set(f) == {"raw_feature"} for f in features[:13])
    assert trained["model_config"]["deepfm"]["deep"]["hidden_units"] == [32, 16]
    assert trained["data_config"]["batch_size"] == 256
    assert trained["train_config"]["sparse_optimizer"]["adagrad_optimizer"]["lr"] == 0.01
    assert len(json.loads((model / "metrics.json").read_text())["train"]) == 2

    code, _, err = cli("train", "--pipeline_config_path", path, "--continue_train")
    assert code == 1 and err.count("\n") == 1 and "--checkpoint-dir DIR --resume" in err, err
    code, _, err = cli("train", "--train", train, "--model-dir", tmp_path / "fm",
                       "feature_dim=10", "num_factors=2", "--fine_tune_checkpoint", model)
    assert code == 1 and "edit a --config (an FM takes NAME=VALUE)" in err, err

    code, out, err = cli("evaluate", "--pipeline_config_path", path, "--checkpoint_path", model)
    assert code == 0, err
    metrics = json.loads(out)
    code, _, err = cli("predict", "--scripted_model_path", model, "--predict_input_path", train,
                       "--predict_output_path", tmp_path / "scores.parquet", "--quiet")
    assert code == 0, err
    labels = [int(line.split("\t", 1)[0]) for line in train.read_text().splitlines()]
    probs = pq.read_table(tmp_path / "scores.parquet").column("probs").to_numpy()
    assert metrics["rows"] == 1000
    assert metrics["auc"] == pytest.approx(roc_auc_score(labels, probs), abs=1e-6)

    # the files TorchEasyRec's commands leave in the model directory: the configuration as
    # trained (with the edits), the evaluation after training (2 epochs of 1,000 rows in
    # batches of 256: at step 8), and tzrec.eval's, one line per evaluation, its data named by
    # --eval_input_path or by the configuration the model directory now holds
    written = (model / "pipeline.config").read_text()
    assert written.count("embedding_dim: 4\n") == 26 and "hidden_units: 32\n" in written
    logits = pq.read_table(tmp_path / "scores.parquet").column("logits").to_numpy()

    def log_loss(y: list[int], z: np.ndarray) -> float:  # from the logits (probabilities of
        z = z.astype(np.float64)  # 1.0 in float32 lose a row's loss): log(1 + e^-z) or e^z
        return float(np.mean(np.logaddexp(0, np.where(np.array(y) == 1, -z, z))))

    expected = {"global_step": 8, "auc": pytest.approx(roc_auc_score(labels, probs), abs=1e-6),
                "binary_cross_entropy": pytest.approx(log_loss(labels, logits), rel=1e-5)}
    assert [json.loads(line) for line in
            (model / "train_eval_result.txt").read_text().splitlines()] == [expected]
    head = tmp_path / "head.txt"
    head.write_text("".join(train.read_text().splitlines(True)[:300]))
    for options in (["--pipeline_config_path", model / "pipeline.config"],
                    ["--pipeline_config_path", model / "pipeline.config", "--eval_input_path",
                     head, "--eval_type", "best"]):
        code, _, err = cli("evaluate", *options)
        assert code == 0, err
    evaluations = [json.loads(line) for line in
                   (model / "eval_result.txt").read_text().splitlines()]
    assert evaluations == [expected, expected, {
        "global_step": 8, "auc": pytest.approx(roc_auc_score(labels[:300], probs[:300]), abs=1e-6),
        "binary_cross_entropy": pytest.approx(log_loss(labels[:300], logits[:300]), rel=1e-5)}]
    # --eval_result_filename: another name in the model directory, which stays one (retrained
    # below); a file there that is not such a record (the model's own, someone's CSV) is
    # refused before the evaluation, byte for byte unchanged
    mine = tmp_path / "mine.csv"
    mine.write_text("x,y\n")
    meta = (model / "model.json").read_bytes()
    for name in ("custom_eval.txt", "model.json", mine):
        code, _, err = cli("evaluate", "--pipeline_config_path", model / "pipeline.config",
                           "--eval_result_filename", name)
        if name == "custom_eval.txt":
            assert code == 0, err
        else:
            target = model / name
            assert code == 1 and err.startswith(f"fmkit: error: {target}: exists and is not a "
                                                "TorchEasyRec evaluation result file") \
                and err.count("\n") == 1, err
    assert [json.loads(line) for line in
            (model / "custom_eval.txt").read_text().splitlines()] == [expected]
    assert (model / "model.json").read_bytes() == meta and mine.read_text() == "x,y\n"
    # tzrec.export, then tzrec.predict of what it wrote: the same scores; an existing
    # --export_dir is refused, as tzrec.export refuses it
    exported = tmp_path / "exported"
    for _ in range(2):
        code, _, err = cli("export", "--pipeline_config_path", model / "pipeline.config",
                           "--export_dir", exported)
    assert code == 1 and err == f"fmkit: error: {exported}: exists; --export_dir is a new " \
        "directory (as tzrec.export's)\n", err
    code, _, err = cli("export", "--export_dir", tmp_path / "nowhere")  # (no model named)
    assert code == 1 and err == "fmkit: error: fmkit export needs --checkpoint_path\n", err
    code, _, err = cli("predict", "--scripted_model_path", exported, "--predict_input_path",
                       train, "--predict_output_path", tmp_path / "again.parquet", "--quiet",
                       "--batch_size", "64", "--dataset_type", "CsvDataset", "--edit_config_json",
                       '{"data_config.batch_size": 32}', "--predict_threads", "2",
                       "--is_profiling", "--debug_level", "1")
    assert code == 0 and err.count("\n") == 1 and (
        "--debug_level, --is_profiling, --predict_threads: TorchEasyRec's tuning and debugging "
        "options, ignored") in err, err
    np.testing.assert_array_equal(
        pq.read_table(tmp_path / "again.parquet").column("probs").to_numpy(), probs)

    code, _, err = cli("train", "--pipeline_config_path", path, "--train_input_path", train,
                       "--model_dir", model, "--quiet", *LOWERED,  # (still a model directory)
                       "--edit_config_json", json.dumps(edits), "--fine_tune_checkpoint",
                       exported, "--ignore_restore_optimizer", "--ignore_restore_lr_scheduler")
    assert code == 0, err
    assert not (model / "eval_result.txt").exists()  # (it described the model replaced)
    assert not (model / "custom_eval.txt").exists()
