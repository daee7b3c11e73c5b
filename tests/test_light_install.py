"""The light install: FM training, evaluation, prediction and serving run without PyTorch, and
what needs PyTorch says which extra installs it.

Each check runs in a fresh interpreter whose import system refuses ``torch`` (and records
every attempt), so a lazy import anywhere on the FM path fails the run instead of hiding.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from .conftest import REPO, shared_file

# A meta-path finder that refuses torch and writes down who asked, then runs the script body.
BLOCKER = textwrap.dedent("""
    import sys, traceback
    asked = []
    class NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                asked.append("".join(traceback.format_stack(limit=8)))
                raise ImportError(f"No module named {name!r} (blocked by the test)")
            return None
    sys.meta_path.insert(0, NoTorch())
""")


def run_without_torch(body: str, cwd) -> subprocess.CompletedProcess:
    script = BLOCKER + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", script], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def test_fm_commands_and_configuration_files_never_import_torch(tmp_path):
    train = tmp_path / "train.libsvm"
    train.write_text("".join(shared_file("a9a_libsvm", "a9a").open().readlines()[:3000]))
    test = shared_file("a9a_libsvm", "a9a.t")
    result = run_without_torch(f"""
        import json
        from fmkit.cli import main
        codes = [
            main(["train", "--train", {str(train)!r}, "--model-dir", "model", "feature_dim=123",
                  "num_factors=4", "predictor_type=binary_classifier", "epochs=1"]),
            main(["evaluate", "--model-dir", "model", "--data", {str(test)!r}]),
            main(["predict", "--model-dir", "model", "--data", {str(test)!r},
                  "--output", "p.jsonl"]),
            main(["tune", "--train", {str(train)!r}, "--validation-fraction", "0.2",
                  "--trials", "2", "--jobs", "1", "--model-dir", "tuned", "feature_dim=123",
                  "predictor_type=binary_classifier", "epochs=1"]),
            # an FM's configuration file, and a DeepFM's converted (plain text, no network)
            main(["train", "--config", {str(REPO / "examples" / "fm_a9a.yaml")!r},
                  "--set", "train_input_path=" + {str(train)!r},
                  "--set", "eval_input_path=" + {str(test)!r}, "--set", "model_dir=configured",
                  "--set", "model_config.fm.epochs=1", "--quiet"]),
            main(["evaluate", "--pipeline_config_path", {str(REPO / "examples" / "fm_a9a.yaml")!r},
                  "--checkpoint_path", "configured", "--eval_input_path", {str(test)!r}]),
            main(["config", "convert", {str(REPO / "examples" / "deepfm_criteo.yaml")!r},
                  "-o", "criteo.config"]),
        ]
        from starlette.testclient import TestClient
        from fmkit.models.base import load_model
        from fmkit.serve.app import create_app
        with TestClient(create_app(load_model("model"))) as client:
            body = {{"instances": [{{"features": [1.0] * 123}}]}}
            reply = client.post("/invocations", json=body)
        print(json.dumps({{"codes": codes, "status": reply.status_code, "reply": reply.json(),
                          "asked": asked}}))
    """, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["asked"] == [], "torch was imported from:\n" + "\n".join(outcome["asked"])
    assert outcome["codes"] == [0] * 7
    assert (tmp_path / "criteo.config").read_text().count("feature_configs {") == 39
    assert len(json.loads((tmp_path / "tuned" / "tune" / "best.json").read_text())) > 0
    assert outcome["status"] == 200
    score = outcome["reply"]["predictions"][0]["score"]
    assert 0.0 < score < 1.0
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == len(test.open().readlines())


@pytest.mark.parametrize("argv, extra", [
    (["train", "--config", str(REPO / "examples" / "deepfm_movielens.yaml"),
      "--set", "train_config.num_epochs=1"], "deepfm"),
    (["train", "--nproc", "2", "--train", "x.libsvm", "--model-dir", "m", "feature_dim=4",
      "num_factors=2", "predictor_type=binary_classifier"],
     "distributed"),
    (["train", "--device", "cuda", "--train", "x.libsvm", "--model-dir", "m", "feature_dim=4",
      "num_factors=2", "predictor_type=binary_classifier"],
     "deepfm"),
], ids=["deepfm", "nproc", "device"])
def test_what_needs_torch_names_the_extra(tmp_path, argv, extra):
    (tmp_path / "x.libsvm").write_text("1 1:1\n0 2:1\n")
    result = run_without_torch(f"""
        import sys
        from fmkit.cli import main
        sys.exit(main({argv!r}))
    """, tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert f"pip install 'fmkit[{extra}]'" in lines[0]
    assert not (tmp_path / "m").exists()


def test_loading_a_deepfm_model_without_torch_names_the_extra(tmp_path, small_deepfm_dir):
    result = run_without_torch(f"""
        import sys
        from fmkit.cli import main
        sys.exit(main(["evaluate", "--model-dir", {str(small_deepfm_dir)!r},
                       "--data", "nothing.csv"]))
    """, tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "pip install 'fmkit[deepfm]'" in result.stderr
    assert "Traceback" not in result.stderr
