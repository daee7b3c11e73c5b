"""``fmkit import xlearn``: models xLearn 0.40 trained and saved (tests/data/xlearn, written by
its ``make_fixtures.py``) score in fmkit as xLearn's own ``predict`` scored them (its ``.out``
files: raw scores, 6 significant digits)."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fmkit.errors import ArtifactError
from fmkit.models.fm import xlearn_format

DATA = Path(__file__).parent / "data" / "xlearn"


@pytest.mark.parametrize("name, form, given_hp", [
    ("ffm_adagrad_k5", "model", []),  # AdaGrad's state between the factors, k padded to 8
    ("ffm_adagrad_k5", "txt", ["predictor_type=binary_classifier"]),
    ("ffm_ftrl_k3_nonorm", "model", ["instance_norm=0"]),  # FTRL: the padding trained too
    ("fm_adagrad_k6_nonorm", "model", ["instance_norm=0"]),
    ("fm_adagrad_k6_nonorm", "txt", ["instance_norm=0", "predictor_type=binary_classifier"]),
    ("fm_reg_sgd_k4_nonorm", "model", ["instance_norm=0"]),
    ("linear_sgd", "model", []),
    ("linear_sgd", "txt", ["predictor_type=binary_classifier"]),
])
def test_an_imported_xlearn_model_predicts_as_xlearn_did(tmp_path, cli, name, form, given_hp):
    code, _, err = cli("import", "xlearn", DATA / f"{name}.{form}", "--model-dir",
                       tmp_path / "model", *given_hp)
    assert code == 0, err
    code, _, err = cli("predict", "--model-dir", tmp_path / "model", "--data",
                       DATA / "test.ffm", "--output", tmp_path / "p.jsonl")
    assert code == 0, err
    scores = np.array([json.loads(line)["score"]
                       for line in (tmp_path / "p.jsonl").read_text().splitlines()])
    theirs = np.loadtxt(DATA / f"{name}.out")
    if "reg" not in name:
        theirs = 1 / (1 + np.exp(-theirs))
    assert scores.shape == theirs.shape == (100,)
    np.testing.assert_allclose(scores, theirs, atol=5e-5)


@pytest.mark.parametrize("name, given_hp, refusal", [
    ("fm_adagrad_k6_nonorm.model", [], "if it was trained with disableNorm(), give "
                                       "instance_norm=0"),
    ("ffm_adagrad_k5.txt", [], "an xLearn text model does not say its task"),
    ("ffm_adagrad_k5.model", ["predictor_type=regressor"], "the model's loss makes it a "
                                                           "binary_classifier"),
    ("ffm_adagrad_k5.model", ["num_factors=3"], "takes predictor_type and instance_norm only"),
    ("train.ffm", [], "train.ffm:1: not an xLearn model"),
    ("missing.model", [], "missing.model: cannot read"),
])
def test_what_cannot_be_imported_is_one_line(tmp_path, cli, name, given_hp, refusal):
    code, _, err = cli("import", "xlearn", DATA / name, "--model-dir", tmp_path / "model",
                       *given_hp)
    assert code == 1 and refusal in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "model").exists()


def test_a_directory_that_is_not_a_model_is_not_replaced(tmp_path, cli):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    code, _, err = cli("import", "xlearn", DATA / "linear_sgd.model", "--model-dir",
                       tmp_path / "mine")
    assert code == 1 and (tmp_path / "mine" / "notes.txt").read_text() == "keep", err


def test_every_truncation_of_a_model_file_is_refused(tmp_path):
    raw = (DATA / "fm_reg_sgd_k4_nonorm.model").read_bytes()
    for end in range(len(raw)):
        (tmp_path / "m").write_bytes(raw[:end])
        with pytest.raises(ArtifactError, match="not an xLearn"):
            xlearn_format.read(tmp_path / "m")


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=st.lists(st.integers(0, 2 ** 32 - 1), min_size=6, max_size=6),
       body=st.binary(max_size=200), kind=st.sampled_from(["linear", "fm", "ffm"]))
def test_any_counts_and_bytes_are_a_model_or_one_error(tmp_path, header, body, kind):
    """Whatever the counts say (billions of features included), the reader reads no further
    than the file and allocates nothing the file does not hold."""
    raw = (struct.pack("<Q", len(kind)) + kind.encode() + struct.pack("<Q", 7) + b"squared"
           + struct.pack("<6I", *header) + body)
    (tmp_path / "m").write_bytes(raw)
    try:
        model = xlearn_format.read(tmp_path / "m")
    except ArtifactError:
        return
    assert model.w.size * 4 <= len(raw)


@pytest.mark.parametrize("text, refusal", [
    ("bias: 0.5\ni_0: 1\ni_999999999999: 2\n", "i_0 to i_999999999999 with 999999999998 "
                                                   "missing"),
    ("bias: 0.5\ni_0: 1\ni_1: 2\nv_0_0: 1 2\nv_1_7: 1 2\n", "2 factor lines where 2 "
                                                               "features and 8 fields make 16"),
    ("bias: 0.5\ni_0: 1\nv_0: 1 2\nv_0_1: 3 4\n", "factor lines of both v_j and v_j_f"),
    ("bias: 0.5\ni_0: x\n", ":2: not an xLearn model"),
])
def test_a_text_model_is_counted_before_it_is_believed(tmp_path, text, refusal):
    """A text model names its ids: a table is made only for ids the lines account for (a
    line i_999999999999 made a table of 10^12 weights)."""
    (tmp_path / "m.txt").write_text(text)
    with pytest.raises(ArtifactError, match=re.escape(refusal)):
        xlearn_format.read(tmp_path / "m.txt")
