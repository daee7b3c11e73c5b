"""``fmkit train --config``: an FM configuration file trains the same model as the
command-line flags, and its mistakes are errors naming the field."""

from __future__ import annotations

import json

from .conftest import REPO, shared_file

FM_EXAMPLE = REPO / "examples" / "fm_a9a.yaml"


def test_fm_config_file_equals_the_flags(tmp_path, cli):
    train, test = shared_file("a9a_libsvm", "a9a"), shared_file("a9a_libsvm", "a9a.t")
    code, _, err = cli("train", "--config", FM_EXAMPLE, "--quiet", "--train", train,
                       "--test", test, "--model-dir", tmp_path / "from_file",
                       "--set", "model_config.fm.lock_free=0",
                       "--set", "model_config.fm.epochs=3")
    assert code == 0, err
    code, _, err = cli("train", "--quiet", "--train", train, "--test", test, "--model-dir",
                       tmp_path / "from_flags", "feature_dim=124", "num_factors=8",
                       "predictor_type=binary_classifier", "epochs=3", "mini_batch_size=1",
                       "optimizer=sgd", "linear_lr=0.01", "factors_lr=0.01",
                       "linear_wd=0.0001", "factors_wd=0.0001", "lock_free=0")
    assert code == 0, err
    metrics = [json.loads((tmp_path / name / "metrics.json").read_text())["test"]
               for name in ("from_file", "from_flags")]
    assert metrics[0] == metrics[1]
    assert metrics[0]["auc"] > 0.89
    # evaluated through the configuration (tzrec.eval's form): the same figures, and no
    # TorchEasyRec result file (an FM's configuration names no TorchEasyRec metrics)
    code, out, err = cli("evaluate", "--pipeline_config_path", FM_EXAMPLE, "--checkpoint_path",
                         tmp_path / "from_file", "--eval_input_path", test)
    assert code == 0 and json.loads(out) == metrics[0], err
    assert sorted(p.name for p in (tmp_path / "from_file").iterdir()) == [
        "metrics.json", "model.json", "weights.npz"]


def test_fm_config_mistakes_name_the_field(tmp_path, cli):
    bad = tmp_path / "bad.yaml"
    bad.write_text(FM_EXAMPLE.read_text().replace("data_config:", "data_config:\n  formt: x"))
    code, _, err = cli("train", "--config", bad, "--model-dir", tmp_path / "m")
    assert code == 1 and "data_config.formt: unknown field in an FM configuration" in err
    code, _, err = cli("train", "--config", FM_EXAMPLE, "--model-dir", tmp_path / "m",
                       "--set", "model_config.fm.num_factors=zero")
    assert code == 1 and "num_factors" in err
    code, _, err = cli("train", "--config", FM_EXAMPLE, "num_factors=8")
    assert code == 1 and "with --config, set fields with --set" in err
    assert not (tmp_path / "m").exists()
    code, out, err = cli("config", "convert", FM_EXAMPLE, "--to", "config")  # (DeepFM's only)
    assert code == 1 and out == "" and err == (
        f"fmkit: error: {FM_EXAMPLE}: model_config.fm: an FM's configuration, which fmkit "
        "train reads as written (YAML or JSON); fmkit config converts DeepFM's\n"), err


def test_a_deepfm_configurations_missing_input_names_its_field(tmp_path, cli):
    """A missing training, evaluation or validation file of a DeepFM (or FM) run is one line that
    says which setting named it (the example's eval_input_path is relative, so it is missing
    when run elsewhere), before anything is trained or written."""
    sample = shared_file("criteo_deepctr_sample", "criteo_sample.txt")
    missing = tmp_path / "missing.txt"
    for args, name in ((["--train", missing, "--test", sample], "train_input_path"),
                       (["--train", sample, "--test", missing], "eval_input_path"),
                       (["--train", sample, "--test", sample, "--validation", missing],
                        "--validation")):
        code, _, err = cli("train", "--quiet", "--config", REPO / "examples" / "deepfm_criteo.yaml",
                           *args, "--model-dir", tmp_path / "m")
        assert code == 1 and err == f"fmkit: error: {missing}: no such file or directory ({name})\n"
        assert not (tmp_path / "m").exists()
    # an FM configuration, the same
    code, _, err = cli("train", "--quiet", "--config", REPO / "examples" / "fm_a9a.yaml",
                       "--set", f"eval_input_path={missing}", "--model-dir", tmp_path / "m")
    assert code == 1 and err == (f"fmkit: error: {missing}: no such file or directory "
                                 "(eval_input_path)\n")
    assert not (tmp_path / "m").exists()
