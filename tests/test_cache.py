"""The binary cache of parsed text files: same rows as parsing, keyed by size and mtime, never
left half-written."""

from __future__ import annotations

import os

import numpy as np
import pytest
from sklearn.datasets import load_svmlight_file

from fmkit.data import cache
from fmkit.data.sources import FileSource
from fmkit.errors import DataError


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FMKIT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _write(path, rows: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(rows):
        ids = np.sort(rng.choice(50, size=rng.integers(1, 6), replace=False))
        lines.append(f"{rng.integers(0, 2)} " + " ".join(f"{i}:{rng.normal():.4g}" for i in ids))
    path.write_text("\n".join(lines) + "\n")


def _read(path, **kw):
    src = FileSource(path, "libsvm", 50, labels="binary", block_bytes=1 << 12, **kw)
    blocks = list(src.blocks())
    indptr = np.concatenate([[0]] + [b.indptr[1:] - b.indptr[0] + sum(x.indices.size for x in
                                     blocks[:n]) for n, b in enumerate(blocks)])
    return (indptr, np.concatenate([b.indices for b in blocks]),
            np.concatenate([b.values for b in blocks]), np.concatenate([b.labels for b in blocks]))


def test_cached_rows_equal_scikit_learns_parse_on_first_and_later_reads(tmp_path, cache_dir):
    path = tmp_path / "data.libsvm"
    _write(path, 3000, seed=1)
    X, y = load_svmlight_file(str(path), n_features=50, zero_based=True)
    for read in range(3):
        indptr, indices, values, labels = _read(path, cache=True)
        assert len(list(cache_dir.glob("*.bin"))) == 1, f"read {read}: one complete entry"
        np.testing.assert_array_equal(indptr, X.indptr)
        np.testing.assert_array_equal(indices, X.indices)
        np.testing.assert_allclose(values, X.data, rtol=1e-6)
        np.testing.assert_array_equal(labels, y)


def test_a_changed_file_gets_a_new_entry_which_replaces_the_old_one(tmp_path, cache_dir):
    path, other = tmp_path / "data.libsvm", tmp_path / "other" / "data.libsvm"
    other.parent.mkdir()
    _write(path, 500, seed=2)
    _write(other, 300, seed=2)
    _read(path, cache=True)
    _read(other, cache=True)  # a file of the same name elsewhere: an entry of its own
    first = set(cache_dir.glob("*.bin"))
    assert len(first) == 2
    # a reader of the old entry, started before the file changes, reads it to its end
    old_reader = FileSource(path, "libsvm", 50, labels="binary", block_bytes=1 << 12,
                            cache=True).blocks()
    old_rows = next(old_reader).n_rows
    _write(path, 400, seed=3)
    os.utime(path, ns=(1, 1))  # a different mtime too
    X, _ = load_svmlight_file(str(path), n_features=50, zero_based=True)
    for _ in range(2):
        indptr, indices, _, _ = _read(path, cache=True)
        assert indptr.size - 1 == 400
        np.testing.assert_array_equal(indices, X.indices)
    now = set(cache_dir.glob("*.bin"))
    assert len(now) == 2, "the entry of the file's earlier content is gone"
    assert cache.cache_path(other, "libsvm") in now and cache.cache_path(path, "libsvm") in now
    assert old_rows + sum(b.n_rows for b in old_reader) == 500


def test_an_interrupted_read_leaves_no_cache_and_errors_read_the_same(tmp_path, cache_dir):
    path = tmp_path / "bad.libsvm"
    _write(path, 2000, seed=4)
    with open(path, "a") as f:
        f.write("1 3:1 oops\n")
    messages = []
    for _ in range(2):
        with pytest.raises(DataError) as e:
            _read(path, cache=True)
        messages.append(str(e.value))
    assert messages[0] == messages[1] == f"{path}:2001: expected INDEX:VALUE, got 'oops'"
    assert not any(cache_dir.iterdir()), "no partial or complete entry for a failed read"
    # a reader stopped early (not exhausted) leaves nothing either
    good = tmp_path / "good.libsvm"
    _write(good, 3000, seed=5)
    blocks = FileSource(good, "libsvm", 50, labels="binary", block_bytes=1 << 12,
                        cache=True).blocks()
    next(blocks)
    blocks.close()
    assert not any(cache_dir.iterdir())


def test_cache_checks_still_apply(tmp_path):
    path = tmp_path / "data.libsvm"
    _write(path, 300, seed=6)
    _read(path, cache=True)
    with pytest.raises(DataError, match="feature index 4[0-9] is out of range: feature_dim=40"):
        list(FileSource(path, "libsvm", 40, labels="binary", cache=True).blocks())


def test_cache_path_depends_on_size_and_mtime(tmp_path):
    path = tmp_path / "f.libsvm"
    path.write_text("1 1:1\n")
    first = cache.cache_path(path, "libsvm")
    os.utime(path, ns=(5, 5))
    assert cache.cache_path(path, "libsvm") != first
