"""Request decoding: the vectorised path equals the per-instance path it short-cuts."""

from __future__ import annotations

import numpy as np

from fmkit.serve import codecs


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
        fast = codecs._fast_batch(instances, 12, "request")
        assert fast is not None
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
