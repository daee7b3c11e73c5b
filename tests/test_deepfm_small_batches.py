"""DeepFM's small-request path: JSON instances encoded directly equal the column path (fuzzed,
and taken for ordinary rows), and the numpy forward equals the PyTorch forward for every
layer kind it mirrors."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fmkit.data.columns import from_instances
from fmkit.errors import FMKitError
from fmkit.logs import log_once
from fmkit.models.deepfm import config as configs
from fmkit.models.deepfm import model as model_module
from fmkit.models.deepfm.instances import encode_instances
from fmkit.models.deepfm.model import DeepFMModel
from fmkit.models.deepfm.small_batches import NumpyForward
from tests.deepfm_helpers import small

# every id kind (hashed with a default, plain buckets, a vocabulary with a repeated entry),
# several values per row, mean pooling, bucketized and normalized raw values
FEATURES = [
    {"id_feature": {"feature_name": "user", "hash_bucket_size": 50, "embedding_dim": 4}},
    {"id_feature": {"feature_name": "item", "num_buckets": 30, "embedding_dim": 4}},
    {"id_feature": {"feature_name": "tags", "vocab_list": ["a", "b", "a", "c", "5"],
                    "embedding_dim": 4, "separator": "|", "pooling": "mean"}},
    {"id_feature": {"feature_name": "city", "hash_bucket_size": 7, "embedding_dim": 4,
                    "default_value": "nowhere|x", "separator": "|"}},
    {"raw_feature": {"feature_name": "age", "boundaries": [18, 30, 50], "embedding_dim": 4}},
    {"raw_feature": {"feature_name": "price", "normalizer": "log1p"}},
    {"raw_feature": {"feature_name": "score", "normalizer": "method=zscore,mean=2,"
                     "standard_deviation=3", "default_value": "1.5"}},
]
GROUPS = [
    {"group_name": "wide", "group_type": "WIDE", "feature_names": ["user", "item", "city"]},
    {"group_name": "fm", "feature_names": ["tags", "user", "age", "city", "item"]},
    {"group_name": "deep", "feature_names": ["price", "user", "item", "tags", "score", "age",
                                             "city"]},
]


def document(deep: dict | None = None, final: dict | None = None, fm: bool = True) -> dict:
    doc = small(feature_configs=copy.deepcopy(FEATURES))
    groups = copy.deepcopy(GROUPS)
    if not fm:  # the deep group is the FM's too: one embedding width
        groups = [groups[0], {"group_name": "deep",
                              "feature_names": ["item", "tags", "user", "age", "city"]}]
    doc["model_config"]["feature_groups"] = groups
    doc["model_config"]["deepfm"] = {"deep": deep or {"hidden_units": [8, 4]},
                                     "wide_embedding_dim": 2}
    if final:
        doc["model_config"]["deepfm"]["final"] = final
    return doc


MODEL = DeepFMModel.create(configs.parse(document(final={"hidden_units": [3]})))
FIELDS = frozenset(MODEL.request_columns())
ROWS = [
    {"user": "alice", "item": 3, "tags": "a|c", "city": "paris", "age": 25, "price": 10.0,
     "score": 4},
    {"user": "bob", "item": "29", "tags": "b|zzz|", "age": 60.5, "price": 0, "label": 1},
    {"user": 7, "item": 0, "tags": None, "city": "", "age": None, "price": None},
    {"user": 7.0, "tags": "5", "city": "a||b", "score": -1e3},
]


def column_path(instances: list) -> object:
    return MODEL.encode(MODEL.check_request(from_instances(instances)))


def assert_same_inputs(got, expected) -> None:
    assert got.n_rows == expected.n_rows
    assert set(got.sparse) == set(expected.sparse) and set(got.dense) == set(expected.dense)
    for name, (ids, offsets) in expected.sparse.items():
        np.testing.assert_array_equal(got.sparse[name][0], ids, err_msg=name)
        np.testing.assert_array_equal(got.sparse[name][1], offsets, err_msg=name)
    for name, values in expected.dense.items():
        assert got.dense[name].dtype == values.dtype
        np.testing.assert_array_equal(got.dense[name], values, err_msg=name)


def test_ordinary_rows_take_the_direct_path_and_encode_as_the_column_path():
    for rows in (ROWS, ROWS[:1], ROWS[2:3]):
        got = encode_instances(MODEL.features, rows, FIELDS)
        assert got is not None
        assert_same_inputs(got, column_path(rows))


@pytest.mark.parametrize("rows", [
    [{"item": 30}],  # beyond num_buckets: the column path's error
    [{"item": "3.0"}],  # not plain digits
    [{"user": 2.5}, {"user": 1}],  # a fractional float as an id: Arrow's formatting
    [{"user": True}],
    [{"tags": ["a", "b"]}],  # a list column
    [{"price": "7"}],  # text as a number
    [{"price": 1e39}],
    [{"unknown": 1}],
    [{"label": {"a": 1}}],  # a used-nowhere field is still checked
    [{"user": 2 ** 64}],
    [],
])
def test_values_that_need_the_column_path_are_left_to_it(rows):
    assert encode_instances(MODEL.features, rows, FIELDS) is None


TEXT = st.one_of(st.sampled_from(["a", "b", "c", "5", "a|c", "|", "", "b||", "007", "12",
                                  " 3", "zzz", "\u0663", "é|a", "nan", "1e3"]),
                 st.text(max_size=6))
VALUE = st.one_of(st.none(), st.booleans(), TEXT,
                  st.integers(min_value=-3, max_value=40),
                  st.integers(min_value=-2 ** 70, max_value=2 ** 70),
                  st.sampled_from([0.0, -0.0, 3.0, 29.0, 2.5, 1e30, 2.0 ** 60, float("nan"),
                                   float("inf"), 1e39]),
                  st.floats(allow_nan=True, allow_infinity=True),
                  st.lists(st.sampled_from(["a", "b", 3]), max_size=2))
INSTANCE = st.dictionaries(st.sampled_from(sorted(FIELDS)), VALUE, max_size=8)


@settings(max_examples=300, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(INSTANCE, min_size=1, max_size=4))
def test_direct_path_equals_the_column_path_or_declines(instances):
    got = encode_instances(MODEL.features, instances, FIELDS)
    if got is None:
        return
    try:
        expected = column_path(instances)
    except FMKitError as e:
        pytest.fail(f"the direct path encoded what the column path refuses: {e}")
    assert_same_inputs(got, expected)


ACTIVATIONS = ["nn.ReLU", "nn.LeakyReLU(negative_slope=0.1)", "nn.PReLU", "nn.ELU(alpha=0.5)",
               "nn.GELU", "nn.SiLU", "nn.Sigmoid", "nn.Tanh", "nn.Softplus(beta=2)",
               "nn.Identity"]


def _compare(model: DeepFMModel, rows: list, bf16: bool = False) -> None:
    """The twin equals PyTorch's forward (``bf16``: under ``torch.autocast`` in bfloat16, as
    a ``mixed_precision: BF16`` model scores; its float32 sums differ in order only, so a
    bfloat16 rounding could in principle flip: none does for these rows)."""
    model.net.eval()
    encoded = model.encode(from_instances(rows))
    twin = NumpyForward.of(model.net, bfloat16=bf16)
    assert twin is not None
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        expected = model.net(encoded).double().numpy()
    np.testing.assert_allclose(twin(encoded), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_numpy_forward_equals_pytorch_for_every_activation(activation, bf16):
    torch.manual_seed(1)
    model = DeepFMModel.create(configs.parse(document(
        deep={"hidden_units": [8, 4], "activation": activation},
        final={"hidden_units": [3], "activation": activation})))
    _compare(model, ROWS, bf16)


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("options", [
    {"use_bn": True}, {"use_ln": True}, {"dropout_ratio": [0.5]}, {"bias": False}])
@pytest.mark.parametrize("final", [True, False])
@pytest.mark.parametrize("fm", [True, False])
def test_numpy_forward_equals_pytorch_for_every_layer_and_layout(options, final, fm, bf16):
    model = DeepFMModel.create(configs.parse(document(
        deep={"hidden_units": [8, 4], **options},
        final={"hidden_units": [3], **options} if final else None, fm=fm)))
    if options.get("use_bn"):  # running statistics away from 0 and 1
        model.net.train()
        with torch.no_grad():
            for _ in range(3):
                model.net(model.encode(from_instances(ROWS * 4)))
    _compare(model, ROWS, bf16)


def test_small_requests_score_as_large_ones():
    """One row scored alone (the numpy twin) and inside a batch of 40 (PyTorch) agree."""
    rows = (ROWS * 10)[:40]
    whole = MODEL.logits(from_instances(rows))
    for i in range(4):
        alone = MODEL.logits(encode_instances(MODEL.features, rows[i:i + 1], FIELDS))
        np.testing.assert_allclose(alone, whole[i:i + 1], rtol=1e-5, atol=1e-6)


def _bf16_model(part: str) -> DeepFMModel:
    """A model whose ``part`` (train_config or export_config) says mixed_precision: BF16."""
    doc = document(final={"hidden_units": [3]})
    doc[part] = {**doc.get(part, {}), "mixed_precision": "BF16"}
    return DeepFMModel.create(configs.parse(doc))


BF16_PARTS = pytest.mark.parametrize("part", ["train_config", "export_config"])


@BF16_PARTS
def test_a_bf16_model_scores_under_autocast_on_either_path_and_sees_weight_updates(
        monkeypatch, part):
    """A ``mixed_precision: BF16`` model (trained so, or a float32 model exported so) scores
    in bfloat16, one row alone (the twin) as inside a batch (PyTorch), also after its weights
    change in place (on a CPU with bfloat16 instructions; this test says it has them, on any
    machine)."""
    monkeypatch.setattr(model_module, "computes_bfloat16", lambda device: True)
    model = _bf16_model(part)
    rows = (ROWS * 10)[:40]
    for _ in range(2):  # before and after an in-place change
        whole = model.logits(from_instances(rows))
        model.net.eval()
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
            expected = model.net(model.encode(from_instances(rows))).double().numpy()
        with torch.no_grad():
            float32 = model.net(model.encode(from_instances(rows))).double().numpy()
        assert np.abs(float32 - expected).max() > 1e-4  # (bfloat16 is told apart)
        np.testing.assert_allclose(whole, expected, rtol=1e-5, atol=1e-6)
        for i in range(4):
            alone = model.logits(encode_instances(model.features, rows[i:i + 1], FIELDS))
            np.testing.assert_allclose(alone, whole[i:i + 1], rtol=1e-5, atol=1e-6)
        with torch.no_grad():  # as an optimizer step: in place
            model.net.deep[0].weight.mul_(1.7)
            model.net.output.bias.add_(0.3)


@BF16_PARTS
def test_a_bf16_model_scores_in_float32_where_bfloat16_is_emulated(monkeypatch, caplog, part):
    """Without bfloat16 instructions (emulated, several times slower) a BF16 model scores in
    float32 on both paths, and the log says so once, naming the setting."""
    monkeypatch.setattr(model_module, "computes_bfloat16", lambda device: False)
    said = float32_fallback_messages(_bf16_model, caplog, part)
    assert len(said) == 1 and "no bfloat16 instructions" in said[0] and part in said[0]


def float32_fallback_messages(make_model, caplog, *args) -> list[str]:
    """The log's "scores in float32" lines while a model from ``make_model(*args)``, which
    cannot score as its configuration asks here, scores 40 rows and then one row alone:
    both as its float32 PyTorch network does."""
    log_once.cache_clear()  # (said once per process)
    model = make_model(*args)
    rows = (ROWS * 10)[:40]
    with caplog.at_level(logging.INFO, logger="fmkit"):
        whole = model.logits(from_instances(rows))
        alone = model.logits(encode_instances(model.features, rows[:1], FIELDS))
    model.net.eval()
    with torch.no_grad():
        expected = model.net(model.encode(from_instances(rows))).double().numpy()
    np.testing.assert_allclose(whole, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(alone, expected[:1], rtol=1e-5, atol=1e-6)
    return [r.getMessage() for r in caplog.records if "scores in float32" in r.getMessage()]


def test_a_new_deepfm_server_warms_both_forward_paths_before_it_answers():
    """The warm-up bodies hold a value for every feature and score through the direct
    encoding, the numpy twin (1 row) and PyTorch (17 rows) at the app's startup."""
    from starlette.testclient import TestClient

    from fmkit.serve.app import create_app

    calls = []
    model = copy.copy(MODEL)
    model.numpy_forward  # noqa: B018 (cached on the copy before it is wrapped)
    twin, network = model.numpy_forward, model.net.forward

    def counting_twin(encoded):
        calls.append(("numpy", encoded.n_rows, sorted(encoded.sparse), sorted(encoded.dense)))
        return twin(encoded)

    model.__dict__["numpy_forward"] = counting_twin
    model.net.forward = lambda encoded: (calls.append(("torch", encoded.n_rows)),
                                         network(encoded))[1]
    try:
        app = create_app(model)
        assert calls == []
        with TestClient(app):
            used = sorted(f.name for f in MODEL.features.used if f.sparse)
            dense = sorted(f.name for f in MODEL.features.used if not f.sparse)
            assert calls == [("numpy", 1, used, dense), ("torch", 17)]
    finally:
        del model.net.forward


def test_no_rows_score_as_no_predictions():
    """An empty request or block scores to nothing, on either forward path (the numpy twin's
    reshape of zero bags failed before)."""
    empty = MODEL.predictions(from_instances([]))
    assert {name: values.size for name, values in empty.items()} == {"score": 0,
                                                                     "predicted_label": 0}
    decode = MODEL.request_decoder()
    for body, content_type in ((b'{"instances": []}', "application/json"),
                               (b"\n", "application/jsonlines")):
        assert MODEL.predictions(decode(body, content_type))["score"].size == 0
