"""DeepFM: the FM part against a brute-force pairwise sum, the whole forward pass against an
independent numpy re-computation from the same weights, TorchEasyRec's rules, each with its
message, and encoded blocks cut into mini-batches as plain Python cuts them."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fmkit.data.columns import ColumnBatch, from_instances
from fmkit.errors import DataError
from fmkit.models.deepfm import config as configs
from fmkit.models.deepfm import config_files
from fmkit.models.deepfm.batches import mini_batches
from fmkit.models.deepfm.features import Encoded
from fmkit.models.deepfm.model import DeepFMModel
from fmkit.models.deepfm.network import factorization_machine
from tests.deepfm_helpers import ROWS, fnv1a, numpy_forward, small, tables_of


def test_fm_part_equals_the_pairwise_sum():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 7, 3))
    expected = np.zeros((5, 3))
    for b in range(5):
        for i in range(7):
            for j in range(i + 1, 7):
                expected[b] += x[b, i] * x[b, j]
    got = factorization_machine(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-12)


def test_forward_pass_equals_an_independent_recomputation():
    model = DeepFMModel.create(configs.parse(small()))
    state = {k: v.double().numpy() for k, v in model.net.state_dict().items()}
    expected = numpy_forward(state, tables_of(model), ROWS)
    # a few rows: fmkit's numpy twin of the network; PyTorch itself, as training runs it
    np.testing.assert_allclose(model.logits(from_instances(ROWS)), expected, rtol=1e-5,
                               atol=1e-5)
    with torch.no_grad():
        by_torch = model.net(model.encode(from_instances(ROWS))).double().numpy()
    np.testing.assert_allclose(by_torch, expected, rtol=1e-5, atol=1e-5)


def test_without_final_the_parts_are_added():
    document = small()
    del document["model_config"]["deepfm"]["final"]
    model = DeepFMModel.create(configs.parse(document))
    state = {k: v.double().numpy() for k, v in model.net.state_dict().items()}
    batch = from_instances(ROWS[:1])
    row = ROWS[0]
    tables = tables_of(model)
    e = {name: tables[f"{name}_emb"] for name in ("user", "item", "tags", "age")}
    user, item = fnv1a("alice", 50), 3
    vectors = np.stack([e["user"][user], e["item"][item], (e["tags"][2] + e["tags"][4]) / 2,
                        e["age"][1]])
    fm = 0.5 * ((vectors.sum(0) ** 2) - (vectors ** 2).sum(0))
    wide = tables["user_emb_wide"][user].sum() + tables["item_emb_wide"][item].sum()
    h = np.concatenate([*vectors, [math.log1p(row["price"])]])
    for layer in (0, 2):
        h = np.maximum(state[f"deep.{layer}.weight"] @ h + state[f"deep.{layer}.bias"], 0)
    expected = wide + fm.sum() + (state["output.weight"] @ h + state["output.bias"])[0]
    np.testing.assert_allclose(model.logits(batch), [expected], rtol=1e-5, atol=1e-5)


def test_shared_embedding_names_share_one_table():
    document = small()
    document["feature_configs"][0]["id_feature"].update(embedding_name="ids",
                                                        num_buckets=30)
    del document["feature_configs"][0]["id_feature"]["hash_bucket_size"]
    document["feature_configs"][1]["id_feature"]["embedding_name"] = "ids"
    model = DeepFMModel.create(configs.parse(document))
    tables = model.net.tables
    assert set(tables.slots) == {"ids", "tags_emb", "age_emb"}
    assert tables.feature_table["user"] == tables.feature_table["item"] == "ids"
    assert set(model.net.wide_tables.slots) == {"ids_wide"}
    # stored once: the bank holds 30 "ids" rows, not 30 per feature (+ 5 tags, 4 age buckets)
    assert tables.banks["dim4_sum"].weight.shape[0] + tables.banks["dim4_mean"].weight.shape[0] \
        == 30 + 5 + 4


def _rule_error(document: dict) -> str:
    with pytest.raises(configs.ConfigError) as error:
        DeepFMModel.create(configs.parse(document))
    return str(error.value)


def test_rules_each_with_its_message():
    # FM features must share one embedding dimension
    d = small()
    d["feature_configs"][2]["id_feature"]["embedding_dim"] = 8
    assert "embedding dimension of fm features must be same" in _rule_error(d)
    # ... also when the deep group stands in for a missing fm group (a dense feature has dim 1)
    d = small()
    d["model_config"]["feature_groups"] = [g for g in d["model_config"]["feature_groups"]
                                           if g["group_name"] != "fm"]
    assert "embedding dimension of fm features must be same" in _rule_error(d)
    # a dense feature in the wide group
    d = small()
    d["model_config"]["feature_groups"][0]["feature_names"].append("price")
    assert "dense feature [price] should not be configured in wide group." in _rule_error(d)
    # an unknown feature name
    d = small()
    d["model_config"]["feature_groups"][2]["feature_names"].append("nope")
    assert "unknown feature 'nope'" in _rule_error(d)
    # the wide and deep groups are required; group types are fixed
    d = small()
    d["model_config"]["feature_groups"] = d["model_config"]["feature_groups"][1:]
    assert "needs a group named 'wide'" in _rule_error(d)
    d = small()
    d["model_config"]["feature_groups"][0]["group_type"] = "DEEP"
    assert "group 'wide' must be WIDE" in _rule_error(d)
    # one way of sizing an id feature
    d = small()
    d["feature_configs"][0]["id_feature"]["num_buckets"] = 10
    assert "exactly one of hash_bucket_size, num_buckets, vocab_list" in _rule_error(d)
    # shared tables must agree
    d = small()
    for i in (0, 1):
        d["feature_configs"][i]["id_feature"]["embedding_name"] = "ids"
    assert "share embedding 'ids' but differ in num_embeddings" in _rule_error(d)
    # MLP options
    d = small()
    d["model_config"]["deepfm"]["deep"].update(use_bn=True, use_ln=True)
    assert "use_bn and use_ln cannot both be set" in _rule_error(d)
    d = small()
    d["model_config"]["deepfm"]["deep"]["activation"] = "os.system('x')"
    assert "model_config.deepfm.deep.activation: activation must be nn." in _rule_error(d)
    d = small()
    d["model_config"]["deepfm"]["deep"]["dropout_ratio"] = [0.1, 0.2, 0.3]
    assert "dropout_ratio: expected 1 or 2 values" in _rule_error(d)


def test_config_errors_name_the_field_path():
    d = small()
    d["model_config"]["deepfm"]["deep"]["hidden_units"] = [8, "x"]
    assert "model_config.deepfm.deep.hidden_units[1]: expected an integer, got 'x'" in \
        _rule_error(d)
    d = small()
    d["model_config"]["deepfm"]["deep"]["hiden_units"] = [8]
    assert "model_config.deepfm.deep.hiden_units: unknown field" in _rule_error(d)
    d = small(train_config={"num_epochs": 1, "num_steps": 5})
    assert "set num_epochs or num_steps, not both" in _rule_error(d)
    d = small(train_config={"sparse_optimizer": {"adagrad_optimizer": {}, "adam_optimizer": {}}})
    assert "train_config.sparse_optimizer: expected exactly one of" in _rule_error(d)
    d = small()
    d["feature_configs"][0] = {"id_feature": {"feature_name": "user"}}
    assert "feature_configs[0].id_feature.embedding_dim: required field is missing" in \
        _rule_error(d)


def test_set_overrides_reach_nested_fields_and_lists():
    document = config_files.apply_overrides(small(), [
        "model_config.deepfm.deep.hidden_units=[16, 8]",
        "feature_configs[0].id_feature.embedding_dim=4",
        "train_config.num_epochs=3",
    ])
    config = configs.parse(document)
    assert config.model_config.deepfm.deep.hidden_units == [16, 8]
    assert config.train_config.num_epochs == 3
    with pytest.raises(configs.ConfigError, match=r"no element \[9\]"):
        config_files.apply_overrides(small(), ["feature_configs[9].id_feature.embedding_dim=4"])


def test_bad_values_name_the_row():
    model = DeepFMModel.create(configs.parse(small()))
    batch = ColumnBatch({"user": pa.array(["a", "b"]), "item": pa.array(["1", "31"]),
                         "tags": pa.array(["a", "b"]), "age": pa.array(["1", "2"]),
                         "price": pa.array(["1", "2"])}, 2, "f.csv", first_line=5)
    with pytest.raises(DataError, match=r"f.csv:6: column 'item': id '31' is not an integer"):
        model.logits(batch)
    batch.columns["item"] = pa.array(["1", "2"])
    batch.columns["price"] = pa.array(["1", "cheap"])
    with pytest.raises(DataError, match=r"f.csv:6: column 'price': 'cheap' is not a number"):
        model.logits(batch)


def test_outputs_are_named_as_torcheasyrec_names_them():
    classifier = DeepFMModel.create(configs.parse(small()))
    out = classifier.outputs(from_instances(ROWS))
    assert set(out) == {"logits", "probs"} and out["logits"].shape == (len(ROWS),)
    np.testing.assert_allclose(out["probs"], 1 / (1 + np.exp(-out["logits"])))
    with torch.no_grad():  # a logit far below 0: probs 0, without numpy's overflow warning
        classifier.net.output.bias.fill_(-1000.0)  # (it printed to fmkit predict's stderr)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert (classifier.outputs(from_instances(ROWS))["probs"] == 0).all()
    regressor = DeepFMModel.create(configs.parse(small(model_config={
        **small()["model_config"], "losses": [{"l2_loss": {}}]})))
    assert set(regressor.outputs(from_instances(ROWS))) == {"y"}
    assert regressor.predictor_type == "regressor"


@settings(max_examples=200, deadline=None, database=None, derandomize=True)
@given(sizes=st.lists(st.integers(0, 9), min_size=1, max_size=5), batch_size=st.integers(1, 7),
       shuffle=st.booleans(), seed=st.integers(0, 3))
def test_mini_batches_cut_blocks_into_batches_of_their_rows(sizes, batch_size, shuffle, seed):
    """Blocks of encoded rows (rows of 0-3 ids) cut into batches of ``batch_size`` across
    block boundaries, each block's rows permuted first when shuffling: the rows, in plain
    Python, come out in that order, batch after batch, every batch full but the last."""
    rng = np.random.default_rng(seed)
    blocks, rows = [], []
    for n in sizes:
        lists = [list(rng.integers(0, 100, rng.integers(0, 4))) for _ in range(n)]
        offsets = np.concatenate([[0], np.cumsum([len(ids) for ids in lists])]).astype(np.int64)
        ids = np.array([i for ids in lists for i in ids], np.int64)
        values = rng.normal(size=(n, 1)).astype(np.float32)
        blocks.append(Encoded(n, {"f": (ids, offsets)}, {"d": values},
                              labels=values[:, 0].copy()))
        rows.append([(ids, float(value)) for ids, value in zip(lists, values[:, 0])])
    expected = []
    order_rng = np.random.default_rng(seed + 10)
    for block_rows in rows:
        order = order_rng.permutation(len(block_rows)) if shuffle else range(len(block_rows))
        expected += [block_rows[i] for i in order]
    got, sizes_out = [], []
    for batch in mini_batches(iter(blocks), batch_size, shuffle, np.random.default_rng(seed + 10)):
        ids, offsets = batch.sparse["f"]
        assert offsets[0] == 0 and offsets[-1] == ids.size
        got += [(list(ids[offsets[i]:offsets[i + 1]]), float(batch.dense["d"][i, 0]))
                for i in range(batch.n_rows)]
        np.testing.assert_array_equal(batch.labels, batch.dense["d"][:, 0])
        sizes_out.append(batch.n_rows)
    assert got == expected
    assert all(size == batch_size for size in sizes_out[:-1]) and all(sizes_out)


def test_blocks_scored_at_once_equal_blocks_scored_one_by_one():
    """``predictions_of`` scores blocks on several threads with one PyTorch thread each: the
    same scores, in the blocks' order, as ``predictions`` block by block; a bad value's error
    names its block's row; PyTorch's thread count is restored."""
    torch.set_num_threads(2)
    model = DeepFMModel.create(configs.parse(small()))
    rng = np.random.default_rng(3)
    blocks = [ColumnBatch({
        "user": pa.array([f"u{rng.integers(20)}" for _ in range(n)]),
        "item": pa.array([str(rng.integers(30)) for _ in range(n)]),
        "tags": pa.array(["a|b"] * n), "age": pa.array([str(rng.integers(10, 70))] * n),
        "price": pa.array([f"{rng.random() * 10:.2f}" for _ in range(n)])}, n, "f.csv")
        for n in (3000, 17, 2500, 1, 4000)]
    expected = [model.predictions(block)["score"] for block in blocks]
    found = [p["score"] for p in model.predictions_of(iter(blocks))]
    assert [len(f) for f in found] == [len(e) for e in expected]
    for f, e in zip(found, expected):
        np.testing.assert_allclose(f, e, rtol=1e-5, atol=1e-7)
    assert torch.get_num_threads() == 2
    blocks[2].columns["price"] = pa.array(["1"] * 2499 + ["cheap"])
    blocks[2].first_line = 100
    with pytest.raises(DataError, match=r"f.csv:2599: column 'price': 'cheap' is not a number"):
        list(model.predictions_of(iter(blocks)))
    assert torch.get_num_threads() == 2
