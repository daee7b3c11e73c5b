"""Request decoding: the vectorised path equals the per-instance path it short-cuts."""

from __future__ import annotations

import numpy as np
import pytest

from fmkit.data import codecs


def random_instances(rng: np.random.Generator, n: int, d: int) -> list:
    instances = []
    for _ in range(n):
        row = np.where(rng.random(d) < 0.3, rng.normal(size=d).round(3), 0.0)
        keys = np.flatnonzero(row)
        rng.shuffle(keys)  # keys in any order
        form = rng.integers(4)
        if form == 0:
            instances.append({"features": row.tolist()})
        elif form == 1:
            instances.append({"data": {"features": {"values": row.tolist()}}})
        elif form == 2:
            instances.append({"data": {"features": {"keys": keys.tolist(), "shape": [d],
                                                    "values": row[keys].tolist()}}})
        else:
            instances.append(row.tolist())
    return instances


def test_fast_path_equals_per_instance_path():
    rng = np.random.default_rng(0)
    for _ in range(20):
        instances = random_instances(rng, int(rng.integers(1, 30)), 12)
        fast, _ = codecs._fast_batch(instances, 12, "request")
        slow = codecs._batch([codecs._row(codecs._instance_features(i), 12) for i in instances],
                             "request")
        for name in ("indptr", "indices", "values"):
            np.testing.assert_array_equal(getattr(fast, name), getattr(slow, name))


def test_doubtful_requests_take_the_path_that_names_the_problem():
    for bad in ([{"features": [1, 2]}],
                [{"data": {"features": {"keys": [1, 1], "shape": [4], "values": [1, 2]}}}],
                [{"data": {"features": {"keys": [9], "shape": [4], "values": [1]}}}],
                [{"features": [1, "x", 3, 4]}], [{"nothing": 1}]):
        assert codecs._fast_batch(bad, 4, "request") is None


def test_repeated_keys_are_found_wherever_they_are():
    """parse_json builds objects in C and counts keys against the body's ':'s; a repeated
    key anywhere, or a ':' inside a string, sends it to the parse that checks every object."""
    row = '{"data": {"features": {"keys": [1, 3], "values": [1, 2], "shape": [12]}}}'
    good = codecs.parse_json('{"instances": [' + row + "]}", 12)
    for body in ['{"instances": [' + row[:-1] + ', "note": "a:b"}]}',
                 '{"instances": [' + row[:-1] + ', "n:te": {"x": 1}}]}']:
        batch = codecs.parse_json(body, 12)
        np.testing.assert_array_equal(batch.indices, good.indices)
    for body in ['{"instances": [' + row + '], "instances": []}',
                 '{"instances": [' + row[:-1] + ', "note": {"x": 1, "x": 2}}]}',
                 '{"instances": [{"data": {"features": {"keys": [1], "keys": [2], '
                 '"values": [1], "shape": [12]}}}]}']:
        with pytest.raises(codecs.RequestError, match="appears twice"):
            codecs.parse_json(body, 12)
