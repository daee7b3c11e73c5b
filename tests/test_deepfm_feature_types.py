"""TorchEasyRec's other feature types — combo, lookup, expression, sequence id and raw,
vocab_dict and vocab_file — each against plain Python over the same raw rows, including
missing values; a server scoring JSON requests exactly as training read the file; and the
compiled splitting and hashing of hashed id features against Python's."""

from __future__ import annotations

import bisect
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fmkit.cpus import on_threads
from fmkit.data import codecs, columns
from fmkit.errors import DataError
from fmkit.jobs.deepfm import train_deepfm
from fmkit.models.deepfm import config as configs
from fmkit.models.deepfm import transforms
from fmkit.models.deepfm.features import FeatureSet, hash_strings, hash_value_lists
from fmkit.models.deepfm.model import DeepFMModel

from .deepfm_helpers import fnv1a

# raw rows: uid, tags (multi-value by |), a, b, kv (map "k:v" pairs split by \x1d),
# clicks (a sequence split by ;), prices (a number sequence), city, label; None = empty field
ROWS = [
    ("u1", "x|y", 3.0, 2.0, "x:1.5\x1dy:4\x1dz:9", "5;1;7;2", "1.5;2;10", "paris", 1),
    ("u2", "z", 0.5, 1.0, "y:2", "3", "4", "rome", 0),
    ("u3", None, None, 4.0, None, None, None, None, 1),
    ("u1", "y|q|x", 2.0, None, "q:0.5\x1dx:2", "9;9", "0.25;0.75;8", "oslo", 0),
    ("u4", "w", 7.0, 7.0, "x:3", "", "3", "paris", 1),
]
HEADER = ("uid", "tags", "a", "b", "kv", "clicks", "prices", "city", "label")


def _write_rows(path) -> str:
    lines = ["\t".join(HEADER)] + ["\t".join("" if v is None else (
        f"{v:g}" if isinstance(v, float) else str(v)) for v in row) for row in ROWS]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _column(name):
    return [row[HEADER.index(name)] for row in ROWS]


def _document(features: list[dict], names: list[str], **model) -> dict:
    embedded = [n for n, f in zip(names, features) if next(iter(f.values())).get("embedding_dim")]
    return {
        "feature_configs": features,
        "model_config": {
            "feature_groups": [
                {"group_name": "wide", "group_type": "WIDE", "feature_names": embedded},
                {"group_name": "fm", "feature_names": embedded},
                {"group_name": "deep", "feature_names": names}],
            "deepfm": {"deep": {"hidden_units": [4]}}, **model},
        "data_config": {"label_fields": ["label"], "with_header": True, "delimiter": "\t"},
    }


def _encode(tmp_path, feature: dict) -> tuple:
    name = next(iter(feature.values()))["feature_name"]
    uid = {"id_feature": {"feature_name": "uid", "hash_bucket_size": 10, "embedding_dim": 4}}
    config = configs.parse(_document([feature, uid], [name, "uid"]))
    features = FeatureSet.from_config(configs.read_vocabulary_files(config))
    batch = next(columns.read_delimited(_write_rows(tmp_path / "rows.tsv"), None, "\t", True))
    encoded = features.encode(batch, labelled=False, label_mode="binary")
    if name in encoded.sparse:
        ids, offsets = encoded.sparse[name]
        return [list(ids[offsets[i]:offsets[i + 1]]) for i in range(len(ROWS))]
    return list(encoded.dense[name].reshape(-1))


def _split(text, separator):
    return [] if text in (None, "") else [v for v in str(text).split(separator) if v]


def test_combo_feature_crosses_every_pair_of_values(tmp_path):
    found = _encode(tmp_path, {"combo_feature": {
        "feature_name": "uid_x_tags", "expression": ["user:uid", "item:tags"],
        "hash_bucket_size": 1000, "embedding_dim": 4, "separator": "|"}})
    expected = [[fnv1a(f"{u}_{t}", 1000) for t in _split(tags, "|")]
                for u, tags in zip(_column("uid"), _column("tags"))]
    assert found == expected
    assert found[2] == []  # a missing input: no id


@pytest.mark.parametrize("combiner", ["sum", "mean", "min", "max", "count"])
def test_numeric_lookup_combines_the_values_of_the_keys_found(tmp_path, combiner):
    found = _encode(tmp_path, {"lookup_feature": {
        "feature_name": "tag_value", "map": "user:kv", "key": "item:tags", "separator": "|",
        "combiner": combiner, "default_value": "-1"}})
    expected = []
    for kv, tags in zip(_column("kv"), _column("tags")):
        table = dict(pair.rsplit(":", 1) for pair in _split(kv, "\x1d"))
        values = [float(table[t]) for t in _split(tags, "|") if t in table]
        if combiner == "count":
            expected.append(float(len(values)))
        elif not values:
            expected.append(-1.0)  # nothing found: default_value
        else:
            expected.append({"sum": sum, "min": min, "max": max,
                             "mean": lambda v: sum(v) / len(v)}[combiner](values))
    assert found == pytest.approx(expected)


def test_lookup_with_boundaries_and_discrete_lookup_with_keys(tmp_path):
    found = _encode(tmp_path, {"lookup_feature": {
        "feature_name": "tag_bucket", "map": "user:kv", "key": "item:tags", "separator": "|",
        "boundaries": [1, 3, 5], "embedding_dim": 4}})
    expected = []
    for kv, tags in zip(_column("kv"), _column("tags")):
        table = dict(pair.rsplit(":", 1) for pair in _split(kv, "\x1d"))
        values = [float(table[t]) for t in _split(tags, "|") if t in table]
        expected.append([bisect.bisect_right([1, 3, 5], sum(values) if values else 0.0)])
    assert found == expected

    found = _encode(tmp_path, {"lookup_feature": {
        "feature_name": "tag_id", "map": "user:kv", "key": "item:tags", "separator": "|",
        "need_discrete": True, "need_key": True, "hash_bucket_size": 500, "embedding_dim": 4}})
    expected = []
    for kv, tags in zip(_column("kv"), _column("tags")):
        table = dict(pair.rsplit(":", 1) for pair in _split(kv, "\x1d"))
        expected.append([fnv1a(f"{t}_{table[t]}", 500) for t in _split(tags, "|")
                         if t in table])
    assert found == expected


def test_expression_feature_evaluates_like_python(tmp_path):
    text = "a > b ? log(a) + 1 : b ^ 2 - min(a, b) / 2"
    found = _encode(tmp_path, {"expr_feature": {
        "feature_name": "e", "variables": ["user:a", "item:b"], "expression": text,
        "default_value": "0.5"}})
    expected = []
    for a, b in zip(_column("a"), _column("b")):
        if a is None or b is None:
            expected.append(0.5)  # a missing input gives NaN, replaced by default_value
        else:
            expected.append(math.log(a) + 1 if a > b else b ** 2 - min(a, b) / 2)
    assert found == pytest.approx(expected, rel=1e-6)


def test_an_expression_that_overflows_takes_the_default_value(tmp_path):
    """exp(30 a) leaves float32 (the network's numbers) where a > 2.96: those rows take
    default_value, as missing inputs do, never an infinity into the network."""
    found = _encode(tmp_path, {"expr_feature": {
        "feature_name": "e", "variables": ["a"], "expression": "exp(a * 30)",
        "default_value": "-1"}})
    limit = float(np.finfo(np.float32).max)
    expected = [-1.0 if a is None or math.exp(a * 30) > limit else math.exp(a * 30)
                for a in _column("a")]
    assert found == pytest.approx(expected, rel=1e-6)
    assert -1.0 in found[:2] + found[3:] and max(found) > 1e25  # (one overflow, one large)


@pytest.mark.parametrize("default, problem", [
    ("inf", "is not a finite number"), ("-inf", "is not a finite number"),
    ("nan", "is not a finite number"), ("x", "is not a number")])
def test_a_numeric_features_default_value_is_a_finite_number(tmp_path, default, problem):
    with pytest.raises(configs.ConfigError) as e:
        _encode(tmp_path, {"raw_feature": {"feature_name": "a", "default_value": default}})
    assert str(e.value) == f"feature_configs[0].raw_feature.default_value: '{default}' {problem}"


@pytest.mark.parametrize("text, problem", [
    ("__import__('os')", "cannot read"), ("__import__(a)", "unknown function"),
    ("a.b", "cannot read"), ("a b", "unexpected"), ("open(a)", "unknown function"),
    ("c + 1", "not one of the variables"), ("(a + 1", "ends too early")])
def test_expressions_are_parsed_never_evaluated_as_python(text, problem):
    document = _document([{"expr_feature": {"feature_name": "e", "variables": ["a", "b"],
                                             "expression": text}}], ["e"])
    with pytest.raises(configs.ConfigError, match=problem):
        FeatureSet.from_config(configs.parse(document))


def test_sequence_id_feature_keeps_the_first_sequence_length_ids(tmp_path):
    found = _encode(tmp_path, {"sequence_id_feature": {
        "feature_name": "clicks", "sequence_length": 3, "num_buckets": 10,
        "embedding_dim": 4, "pooling": "mean"}})
    assert found == [[int(v) for v in _split(c, ";")[:3]] for c in _column("clicks")]


@pytest.mark.parametrize("pooling", ["sum", "mean"])
def test_sequence_raw_feature_pools_its_first_values(tmp_path, pooling):
    found = _encode(tmp_path, {"sequence_raw_feature": {
        "feature_name": "prices", "sequence_length": 2, "pooling": pooling,
        "default_value": "3", "normalizer": "log1p"}})
    expected = []
    for text in _column("prices"):
        values = [math.log1p(float(v)) for v in _split(text, ";")[:2]] or [math.log1p(3)]
        expected.append(sum(values) / (len(values) if pooling == "mean" else 1))
    assert found == pytest.approx(expected, rel=1e-6)

    found = _encode(tmp_path, {"sequence_raw_feature": {
        "feature_name": "prices", "sequence_length": 2, "boundaries": [1, 5],
        "embedding_dim": 4}})
    assert found == [[bisect.bisect_right([1, 5], float(v)) for v in _split(t, ";")[:2]]
                     or [bisect.bisect_right([1, 5], 0.0)] for t in _column("prices")]


@pytest.mark.parametrize("normalizer, formula", [
    ("log1p", lambda x: math.log1p(max(x, 0.0))),
    ("method=log10,threshold=1,default=-3", lambda x: math.log10(x) if x > 1 else -3.0),
    ("method=log10,threshold=0", lambda x: math.log10(x) if x > 0 else -10.0),
    ("method=zscore,mean=2,standard_deviation=4", lambda x: (x - 2) / 4),
    ("method=minmax,min=1,max=3", lambda x: (x - 1) / 2),
])
def test_raw_feature_normalizers_compute_torcheasyrecs_formulas(tmp_path, normalizer, formula):
    """Column a (missing in one row: default_value 0) through each normalizer, against the
    formula in plain Python; log10's threshold 0 meets a 0 without a numpy warning."""
    with np.errstate(all="raise"):
        found = _encode(tmp_path, {"raw_feature": {"feature_name": "a",
                                                   "normalizer": normalizer}})
    expected = [formula(0.0 if a is None else a) for a in _column("a")]
    assert found == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("feature, problem", [
    ({"raw_feature": {"feature_name": "a", "normalizer":
                      "method=zscore,mean=0,standard_deviation=1e-38"}},
     "rows.tsv:6: column 'a': 7 is 7e+38 after its normalizer (zscore), beyond float32"),
    ({"sequence_raw_feature": {"feature_name": "prices", "sequence_length": 3, "normalizer":
                               "method=minmax,min=0,max=1e-38"}},
     "rows.tsv:2: column 'prices': the sequence's values pool (sum) to 1.35e+39 after the "
     "normalizer, beyond float32"),
])
def test_a_value_the_normalizer_takes_beyond_float32_is_one_line(tmp_path, feature, problem):
    """A setting that turns a row's value into an infinity for the network (training then
    'diverged', with advice about learning rates) names the row and column instead: a = 3
    (row 1) is 3e38, within float32's 3.4e38, a = 7 (row 5) beyond; row 1's prices sum to
    (1.5 + 2 + 10) * 1e38."""
    with pytest.raises(DataError) as e:
        _encode(tmp_path, feature)
    assert str(e.value).endswith(problem), str(e.value)


def test_a_request_value_the_normalizer_takes_beyond_float32_names_its_instance():
    """The server's JSON instances (their fast path too) say the same as a file's rows."""
    config = configs.parse(_document([{"raw_feature": {
        "feature_name": "a", "normalizer": "method=zscore,mean=0,standard_deviation=1e-38"}},
        {"id_feature": {"feature_name": "uid", "hash_bucket_size": 10, "embedding_dim": 4}}],
        ["a", "uid"]))
    model = DeepFMModel.create(config)
    decode = model.request_decoder()
    body = json.dumps({"instances": [{"a": 3, "uid": "u"}, {"a": 7, "uid": "v"}]}).encode()
    with pytest.raises(Exception, match="instance 2: column 'a': 7 is 7e.38 after its "
                                        r"normalizer \(zscore\), beyond float32"):
        model.logits(decode(body, "application/json"))


def test_a_model_saved_with_settings_now_refused_loads_and_scores_as_it_trained(tmp_path):
    """Before, a misspelt normalizer option (std=4) trained with the default, and an integer
    id feature's default_value out of range was said only at a row missing the value: such
    models must still load, and score as they trained, though training with them is now
    refused."""
    from fmkit.models.deepfm.model import DeepFMModel

    from .deepfm_helpers import small

    document = small()
    price = document["feature_configs"][4]["raw_feature"]
    price["normalizer"] = "method=zscore,mean=2"
    trained = DeepFMModel.create(configs.parse(document))
    path = trained.save(tmp_path / "m")
    meta = json.loads((path / "model.json").read_text())
    features = meta["config"]["feature_configs"]
    features[4]["raw_feature"]["normalizer"] = "method=zscore,mean=2,std=4"
    features[1]["id_feature"]["default_value"] = "99"  # (num_buckets 30)
    (path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(configs.ConfigError, match="default_value: .99. is not an id"):
        DeepFMModel.create(configs.parse(meta["config"]))
    loaded = DeepFMModel.load(path)
    rows = [{"user": "u1", "item": 3, "tags": "a|b", "age": 25, "price": price}
            for price in (0.5, 2.0, 40.0)]
    batch = columns.from_instances(rows)
    np.testing.assert_array_equal(loaded.logits(batch), trained.logits(batch))


@pytest.mark.parametrize("normalizer, problem", [
    ("method=zscore,mean=2,std=4", "zscore reads mean and standard_deviation, not 'std'"),
    ("method=log1p,threshold=1", "log1p reads no option, not 'threshold'"),
    ("method=zscore,standard_deviation=0", "standard_deviation must be positive"),
    ("method=zscore,mean=nan", "mean='nan' is not a finite number"),
    ("method=minmax,min=0,max=inf", "max='inf' is not a finite number"),
    ("method=minmax,min=x", "min='x' is not a finite number"),
    ("method=log10,threshold=-1", "threshold must be >= 0 (the log of a value at or below 0 "
                                  "is not a number)"),
    ("method=expression,expr=x+1", "method=expression is not supported: compute the value "
                                   "with an expr_feature"),
    ("method=zscore,method=minmax", "method must be log1p, log10, zscore or minmax, got "
                                    "'zscore, minmax'"),
])
def test_normalizer_settings_that_would_train_something_else_are_refused(tmp_path, normalizer,
                                                                         problem):
    with pytest.raises(configs.ConfigError) as e:
        _encode(tmp_path, {"raw_feature": {"feature_name": "a", "normalizer": normalizer}})
    assert str(e.value) == f"feature_configs[0].raw_feature.normalizer: {problem}"


def test_an_integer_id_features_default_value_is_an_id_checked_with_the_configuration(
        tmp_path):
    """num_buckets: a missing value takes default_value's id; a default that is no id in
    range is the configuration's error (it was each missing row's, as bad data)."""
    feature = {"feature_name": "b", "num_buckets": 10, "embedding_dim": 4}
    found = _encode(tmp_path, {"id_feature": {**feature, "default_value": "3"}})
    assert found == [[3] if b is None else [int(b)] for b in _column("b")]
    for default in ("abc", "10", "-1", "2.5"):
        with pytest.raises(configs.ConfigError) as e:
            _encode(tmp_path, {"id_feature": {**feature, "default_value": default}})
        assert str(e.value) == (f"feature_configs[0].id_feature.default_value: '{default}' "
                                "is not an id in [0, num_buckets=10)")


def test_vocab_dict_and_vocab_file_number_rows_as_torcheasyrec(tmp_path):
    vocab = {"paris": 2, "rome": 3, "oslo": 2}
    found = _encode(tmp_path, {"id_feature": {
        "feature_name": "city", "vocab_dict": vocab, "embedding_dim": 4,
        "default_value": "nowhere"}})
    # 0: the default value (missing), 1: out of vocabulary, else the dictionary's row
    assert found == [[vocab.get(c, 1) if c else 0] for c in _column("city")]

    (tmp_path / "cities.txt").write_text("rome\nparis\n\nberlin\n")
    found = _encode(tmp_path, {"id_feature": {
        "feature_name": "city", "vocab_file": str(tmp_path / "cities.txt"),
        "default_bucketize_value": 7, "embedding_dim": 4}})
    rows = {"rome": 0, "paris": 1, "berlin": 3}  # a word's row is its line, from 0
    assert found == [[rows.get(c, 7)] if c else [] for c in _column("city")]

    found = _encode(tmp_path, {"id_feature": {
        "feature_name": "city", "vocab_list": ["rome", "paris"], "embedding_dim": 4,
        "default_bucketize_value": 0}})
    assert found == [[{"rome": 0, "paris": 1}.get(c, 0)] if c else [] for c in _column("city")]


def test_the_server_computes_every_feature_as_training_did(tmp_path):
    train = _write_rows(tmp_path / "rows.tsv")
    (tmp_path / "cities.txt").write_text("paris 4\nrome 5\n")
    features = [
        {"id_feature": {"feature_name": "uid", "hash_bucket_size": 50, "embedding_dim": 4}},
        {"combo_feature": {"feature_name": "uid_x_tags", "expression": ["uid", "tags"],
                           "hash_bucket_size": 100, "embedding_dim": 4, "separator": "|"}},
        {"lookup_feature": {"feature_name": "tag_value", "map": "kv", "key": "tags",
                            "separator": "|", "boundaries": [1, 3], "embedding_dim": 4}},
        {"lookup_feature": {"feature_name": "tag_sum", "map": "kv", "key": "tags",
                            "separator": "|"}},
        {"expr_feature": {"feature_name": "e", "variables": ["a", "b"],
                          "expression": "a * b + sqrt(a)"}},
        {"sequence_id_feature": {"feature_name": "clicks", "sequence_length": 3,
                                 "num_buckets": 10, "embedding_dim": 4}},
        {"sequence_raw_feature": {"feature_name": "prices", "sequence_length": 2,
                                  "pooling": "mean"}},
        {"id_feature": {"feature_name": "city", "vocab_file": str(tmp_path / "cities.txt"),
                        "default_bucketize_value": 1, "embedding_dim": 4}},
    ]
    names = [next(iter(f.values()))["feature_name"] for f in features]
    document = _document(features, names)
    document.update(train_input_path=train, model_dir=str(tmp_path / "model"),
                    train_config={"num_epochs": 3})
    trained, _ = train_deepfm(configs.parse(document), progress=False)
    (tmp_path / "cities.txt").unlink()  # the model directory holds its vocabulary
    model = DeepFMModel.load(tmp_path / "model")
    from_file = model.logits(next(model.read(train)))
    np.testing.assert_allclose(from_file, trained.logits(next(trained.read(train))), rtol=1e-6)
    instances = [{name: value for name, value in zip(HEADER[:-1], row) if value is not None}
                 for row in ROWS]
    decode = model.request_decoder()
    served = model.logits(decode(json.dumps({"instances": instances}).encode(), codecs.JSON))
    np.testing.assert_allclose(served, from_file, rtol=1e-6)
    assert np.std(from_file) > 0  # the features move the score


TEXTS = st.one_of(st.none(), st.sampled_from(["", "a", "a|b", "|a||", "é|ab", "abab", "ab",
                                             "x\x1dy", "||", "ba"]),
                  st.text(alphabet="ab|é\x1d", max_size=8))


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(texts=st.lists(TEXTS, max_size=6), separator=st.sampled_from(["|", "ab", "é", "\x1d"]),
       default=st.sampled_from(["", "d", "a|b", "ab|"]),
       limit=st.sampled_from([None, 0, 1, 2, 3]), large=st.booleans(), skip=st.integers(0, 2))
def test_hashed_value_lists_split_and_hash_as_python(texts, separator, default, limit, large,
                                                     skip):
    """The one-pass kernel of hashed id features: each row's text (``default`` if missing)
    split at every occurrence of ``separator``, its first ``limit`` parts kept, empty parts
    dropped, FNV-1a modulo the buckets — as Python's ``str.split`` and a plain FNV-1a, and as
    the general path (Arrow lists, then hashing), on sliced string and large_string arrays."""
    array = pa.array(["pad"] * skip + texts, pa.large_string() if large else pa.string())[skip:]
    ids, offsets = hash_value_lists(array, separator, default, limit, 97)
    expected = []
    for text in texts:
        text = default if text is None and default else text
        parts = [] if text is None else text.split(separator)[:limit]
        expected.append([fnv1a(p, 97) for p in parts if p])
    assert [ids[offsets[i]:offsets[i + 1]].tolist() for i in range(len(texts))] == expected
    flat, general_offsets = transforms.value_lists(array, separator, default, limit)
    np.testing.assert_array_equal(offsets, general_offsets)
    np.testing.assert_array_equal(ids, hash_strings(flat, 97))


def test_a_large_batch_encodes_its_features_on_threads_as_one_row_at_a_time(tmp_path,
                                                                          monkeypatch):
    """A batch of at least PARALLEL_ROWS rows encodes its features on two threads: each
    feature's inputs equal those of the same rows encoded a few at a time (the calling
    thread's path, which the tests above hold to plain Python)."""
    from fmkit.models.deepfm import features as feature_module

    features = [
        {"id_feature": {"feature_name": "uid", "hash_bucket_size": 10, "embedding_dim": 4}},
        {"id_feature": {"feature_name": "tags", "hash_bucket_size": 50, "embedding_dim": 4,
                        "separator": "|"}},
        {"combo_feature": {"feature_name": "uid_x_tags", "expression": ["user:uid", "item:tags"],
                           "hash_bucket_size": 1000, "embedding_dim": 4}},
        {"raw_feature": {"feature_name": "a", "default_value": "0"}},
        {"raw_feature": {"feature_name": "b", "boundaries": [1.5, 3], "embedding_dim": 4}}]
    config = configs.parse(_document(features, ["uid", "tags", "uid_x_tags", "a", "b"]))
    encoder = FeatureSet.from_config(config)
    few = encoder.encode(next(columns.read_delimited(_write_rows(tmp_path / "few.tsv"), None,
                                                     "\t", True)), False, "binary")
    copies = feature_module.PARALLEL_ROWS // len(ROWS) + 1
    header, body = Path(_write_rows(tmp_path / "rows.tsv")).read_text().split("\n", 1)
    path = tmp_path / "many.tsv"
    path.write_text(header + "\n" + body * copies)
    calls = []
    monkeypatch.setattr(feature_module, "thread_count", lambda: 2)  # (on a 1-core machine too)
    monkeypatch.setattr(feature_module, "on_threads", lambda function, arguments, threads: (
        calls.append(threads), on_threads(function, arguments, threads))[1])
    many = encoder.encode(next(columns.read_delimited(path, None, "\t", True)), False, "binary")
    assert calls == [2] and many.n_rows == copies * len(ROWS)
    for name, (ids, offsets) in few.sparse.items():
        got_ids, got_offsets = many.sparse[name]
        counts = np.diff(offsets)
        np.testing.assert_array_equal(np.diff(got_offsets), np.tile(counts, copies), name)
        np.testing.assert_array_equal(got_ids, np.tile(ids, copies), name)
    for name, values in few.dense.items():
        np.testing.assert_array_equal(many.dense[name], np.tile(values, (copies, 1)), name)
