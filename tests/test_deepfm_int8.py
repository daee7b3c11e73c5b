"""Int8 scoring of a DeepFM's MLPs (``export_config.dense_quantization: INT8``): the quantizer
and the int8 linear layer against plain float64 numpy arithmetic, the model's scoring paths
against each other and against its float32 network, the exactness check (7-bit weights on
CPUs whose oneDNN sums 16-bit pairs, float32 where neither is exact), and the setting's
rules. Tests of int8 products skip on a CPU whose products are not exact, and they tell the
model the CPU has int8 instructions, so that the int8 arithmetic is tested on CPUs without
them too, where PyTorch's exact but slow loop computes it (a model scores in float32 there:
tested here too)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

from fmkit.data.columns import from_instances
from fmkit.models.base import load_model
from fmkit.models.deepfm import config as configs
from fmkit.models.deepfm import model as model_module
from fmkit.models.deepfm import quantized
from fmkit.models.deepfm.instances import encode_instances
from fmkit.models.deepfm.model import DeepFMModel
from fmkit.models.deepfm.quantized import Int8Linear, quantize_rows, weight_levels
from tests.test_deepfm_small_batches import FIELDS, ROWS, document, float32_fallback_messages

EXACT = pytest.mark.skipif(not weight_levels(),
                           reason="this CPU's int8 products are not exact: the model scores "
                                  "in float32 here")


@pytest.fixture(autouse=True)
def int8_instructions(monkeypatch):
    """The model scores with int8 products as on a CPU with VNNI, whatever this one has."""
    monkeypatch.setattr(model_module, "multiplies_int8", lambda: True)


def reference_quantize(x: np.ndarray, kept: np.ndarray, levels: int = 127
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row quantization in float64 of the ``kept`` columns (the others 0) to
    [-levels, levels]: scale = max |x| / levels, or zeros with scale 1 where that maximum is
    below 2**-100."""
    peak = np.abs(np.where(kept, x, 0)).max(axis=1)
    small = peak < 2.0 ** -100
    scale = np.where(small, 1.0, peak / levels)
    q = np.clip(np.round(x / scale[:, None]), -levels, levels)
    return np.where(kept & ~small[:, None], q, 0), scale


def _kept(mask: np.ndarray) -> np.ndarray:
    return np.where(mask, np.uint32(0x7FFFFFFF), np.uint32(0)).astype(np.uint32)


@settings(max_examples=200, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(1, 40)),
              elements=st.floats(-1e6, 1e6, width=32)), st.data())
def test_quantize_rows_rounds_each_row_on_its_own_scale(x, data):
    kept = np.array(data.draw(st.lists(st.booleans(), min_size=x.shape[1],
                                       max_size=x.shape[1])), bool)
    levels = data.draw(st.sampled_from([127, 63]))
    q, scale = quantize_rows(x, _kept(kept), levels)
    expected_q, expected_scale = reference_quantize(x.astype(np.float64), kept, levels)
    assert q.dtype == np.int8 and np.abs(q.astype(int)).max() <= levels
    np.testing.assert_allclose(scale, expected_scale, rtol=1e-6)
    # the same integers, except where x / scale lies within float32 rounding of a half
    ratio = np.abs(x / expected_scale[:, None])
    near_half = np.abs(ratio - np.floor(ratio) - 0.5) < 1e-4
    assert np.all((q == expected_q) | (near_half & (np.abs(q - expected_q) == 1)))


def test_a_row_with_a_nan_or_an_infinity_quantizes_to_nan_scores():
    x = np.array([[1.0, np.nan, 2.0], [np.inf, 0.0, 1.0], [0.0, 0.0, 0.0], [-3.0, 1.5, 0.0]],
                 np.float32)
    q, scale = quantize_rows(x, _kept(np.ones(3, bool)))
    assert np.isnan(scale[:2]).all() and (q[:3] == 0).all()
    assert scale[2] == 1 and list(q[3]) == [-127, 64, 0]  # 1.5 * 127 / 3 = 63.5: to even
    out = Int8Linear(nn.Linear(3, 2))(x)
    assert np.isnan(out[:2]).all() and np.isfinite(out[2:]).all()


@EXACT
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_int8_linear_is_the_float64_product_of_its_quantized_operands(relu, bias):
    """``Int8Linear`` equals sx·sw·(qx·qwᵀ) + b computed in float64 from the quantized
    values (the integer sums are exact, the float32 steps within rounding), and stays within
    1% of the float32 layer (what quantization costs on normal inputs)."""
    torch.manual_seed(0)
    linear = nn.Linear(57, 23, bias=bias)
    x = np.random.default_rng(0).normal(size=(300, 57)).astype(np.float32)
    x[:, [3, 40]] *= 1000  # raw values far larger than the rest: multiplied in float32
    exact = np.array([3, 40])
    got = Int8Linear(linear, relu, exact)(x)
    kept = _kept(~np.isin(np.arange(57), exact))
    qx, sx = quantize_rows(x, kept)
    weight = linear.weight.detach().numpy()
    qw, sw = quantize_rows(weight, kept, weight_levels())
    assert (qx[:, exact] == 0).all() and (qw[:, exact] == 0).all()
    expected = ((qx.astype(np.float64) @ qw.astype(np.float64).T) * np.outer(sx, sw)
                + x[:, exact].astype(np.float64) @ weight[:, exact].T.astype(np.float64))
    if bias:
        expected += linear.bias.detach().numpy()
    if relu:
        expected = np.maximum(expected, 0)
    # float32 sums of terms up to ~100: within a few float32 roundings of the largest
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
    with torch.no_grad():
        float32 = linear(torch.from_numpy(x))
        float32 = (torch.relu(float32) if relu else float32).numpy()
    error = np.abs(got - float32).max()
    assert 0 < error < 0.01 * np.abs(float32).max()


def _int8_model(**deepfm) -> DeepFMModel:
    doc = document(final={"hidden_units": [3]})
    doc["model_config"]["deepfm"].update(deepfm)
    doc["export_config"] = {"dense_quantization": "INT8"}
    return DeepFMModel.create(configs.parse(doc))


@EXACT
def test_an_int8_model_scores_alike_in_batches_and_alone_and_near_its_float32_network():
    """Every batch size runs the same int8 arithmetic (a row alone equals the row in a
    batch); the scores differ from the float32 network's, but by little (on ordinary
    rows); an in-place weight
    change (an optimizer step) reaches the next scores, as a model built fresh from the
    changed weights scores them."""
    model = _int8_model()
    assert model.scores_in_int8
    rows = (ROWS * 10)[:40]
    for _ in range(2):  # before and after an in-place change
        whole = model.logits(from_instances(rows))
        for i in range(4):
            alone = model.logits(encode_instances(model.features, rows[i:i + 1], FIELDS))
            np.testing.assert_allclose(alone, whole[i:i + 1], rtol=1e-6, atol=1e-7)
        model.net.eval()
        with torch.no_grad():
            float32 = model.net(model.encode(from_instances(rows))).double().numpy()
        # (ROWS[3]'s score is 334 standard deviations out: the first hidden layer's large
        # value sets its row's scale, and the rest of that row round coarsely: left out)
        ordinary = np.arange(len(rows)) % 4 != 3
        error = np.abs(whole - float32)[ordinary].max()
        assert 0 < error < 0.002 * np.abs(float32).max()
        fresh = _int8_model()
        fresh.net.load_state_dict(model.net.state_dict())
        np.testing.assert_array_equal(fresh.logits(from_instances(rows)), whole)
        with torch.no_grad():  # as an optimizer step: in place
            model.net.deep[0].weight.mul_(1.7)
            model.net.final[0].bias.add_(0.3)


@EXACT
def test_an_int8_model_keeps_the_setting_when_saved_and_loaded(tmp_path):
    model = _int8_model()
    rows = (ROWS * 10)[:40]
    scores = model.logits(from_instances(rows))
    model.save(tmp_path / "model")
    loaded = load_model(tmp_path / "model")
    assert loaded.config.export_config.dense_quantization == "INT8" and loaded.scores_in_int8
    np.testing.assert_array_equal(loaded.logits(from_instances(rows)), scores)


def _multiclass_int8_model() -> DeepFMModel:
    doc = document(final={"hidden_units": [3]})
    doc["model_config"]["num_class"] = 3
    doc["model_config"]["losses"] = [{"softmax_cross_entropy": {}}]
    doc["export_config"] = {"dense_quantization": "INT8"}
    return DeepFMModel.create(configs.parse(doc))


def test_a_model_int8_cannot_cover_scores_in_float32_and_says_so_once(caplog):
    """Several classes (the numpy forward scores one output) score in float32 with the
    setting, and the log says so once, naming it."""
    said = float32_fallback_messages(_multiclass_int8_model, caplog)
    assert len(said) == 1 and "dense_quantization: INT8" in said[0]


@pytest.mark.parametrize("export, message", [
    ({"dense_quantization": "INT4"}, "export_config.dense_quantization: expected INT8"),
    ({"dense_quantization": "INT8", "mixed_precision": "BF16"},
     "set mixed_precision or dense_quantization, not both"),
])
def test_the_setting_is_checked(export, message):
    doc = document()
    doc["export_config"] = export
    with pytest.raises(configs.ConfigError, match=message):
        configs.parse(doc)


@EXACT
def test_raw_values_larger_than_the_embeddings_do_not_coarsen_them():
    """A first layer multiplies the raw numeric features in float32 (and a final MLP its
    wide and FM inputs): a raw value some ten times larger than the embeddings would
    otherwise set the row's int8 scale and round its embedding values to a few levels (the
    error below was 0.0027 with every column quantized, 0.0015 without the raw ones)."""
    model = _int8_model()
    # the deep group [price, user, item, tags, score, age, city]: raw price and score (1
    # column each) between embeddings of 4; the final MLP's input: wide (1), FM (4), deep
    deep, final = model.numpy_forward.deep[0], model.numpy_forward.final[0]
    assert list(deep.exact) == [0, 13] and list(final.exact) == [0, 1, 2, 3, 4]
    rows = [{**row, "score": 40 + i, "price": 1e4} for i, row in enumerate(ROWS[:3] * 5)]
    got = model.logits(from_instances(rows))
    model.net.eval()
    with torch.no_grad():
        float32 = model.net(model.encode(from_instances(rows))).double().numpy()
    assert np.abs(got - float32).max() < 0.005 * np.abs(float32).max()


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="oneDNN's x86 ISAs")
def test_the_weights_take_the_bits_whose_products_sum_exactly_on_each_isa():
    """Whether int8 products of full-range operands sum exactly depends on the CPU and on what
    oneDNN may use: limited to AVX2 on an AVX-512 Zen 4, oneDNN adds pairs of byte products
    in saturating 16-bit sums (wrong at ±127, exact at ±63); a Zen 3 with AVX2 only sums them
    exactly. Under each ISA limit the test itself multiplies extreme operands (every value
    ±127) and expects 8-bit weights where that product is exact, 7-bit ones where it is not,
    and an int8 layer equal to the float64 product of its quantized operands either way."""
    code = textwrap.dedent("""
        import numpy as np, torch
        from torch import nn
        from fmkit.models.deepfm.quantized import Int8Linear, quantize_rows, weight_levels, KEEP
        peak = torch.full((64, 432), 127, dtype=torch.int8)
        full_range_exact = all(
            torch.equal(torch._int_mm(a, b).long(), a.long() @ b.long())
            for a, b in ((peak, peak.T.contiguous()), (-peak, peak.T.contiguous())))
        torch.manual_seed(0)
        linear = nn.Linear(429, 64)
        x = np.random.default_rng(0).normal(size=(300, 429)).astype(np.float32)
        x[:5] = np.abs(x[:5]) * 1e3  # rows whose every value quantizes near 127
        got = Int8Linear(linear)(x)
        kept = np.full(429, KEEP, np.uint32)
        qx, sx = quantize_rows(x, kept)
        qw, sw = quantize_rows(linear.weight.detach().numpy(), kept, weight_levels())
        expected = ((qx.astype(np.float64) @ qw.astype(np.float64).T) * np.outer(sx, sw)
                    + linear.bias.detach().numpy())
        close = np.allclose(got, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
        print(127 if full_range_exact else 63, weight_levels(), int(np.abs(qw).max()), close)
    """)
    for isa in ("AVX2", ""):
        env = {**os.environ, "ONEDNN_MAX_CPU_ISA": isa}
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, check=True)
        levels, *said = done.stdout.split()
        assert said == [levels, levels, "True"], (isa, done.stdout)


def test_without_exact_int8_products_the_model_scores_in_float32(monkeypatch, caplog):
    monkeypatch.setattr(quantized, "weight_levels", lambda: 0)
    said = float32_fallback_messages(_int8_model, caplog)
    assert len(said) == 1 and "not exact" in said[0]


def test_without_int8_instructions_the_model_scores_in_float32(monkeypatch, caplog):
    """Without VNNI PyTorch's int8 product is a plain loop, slower than float32's: the model
    scores in float32 and says why, once."""
    monkeypatch.setattr(model_module, "multiplies_int8", lambda: False)
    said = float32_fallback_messages(_int8_model, caplog)
    assert len(said) == 1 and "no int8 instructions" in said[0]
