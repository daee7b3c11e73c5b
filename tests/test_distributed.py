"""Training on several processes with torch.distributed (Gloo): the shards cover every row
exactly once, and 2 processes train the model 1 process trains, to a stated tolerance."""

from __future__ import annotations

import json
import re
from collections import Counter

from fmkit.data.sources import FileSource

from .conftest import run_fmkit, shared_file

HP = ["feature_dim=124", "num_factors=8", "predictor_type=binary_classifier", "epochs=3",
      "mini_batch_size=200", "seed=3"]


def _rows(source: FileSource) -> Counter:
    """Each row as (label, indices, values), counted."""
    out = Counter()
    for batch in source.blocks():
        for r in range(batch.n_rows):
            lo, hi = batch.indptr[r], batch.indptr[r + 1]
            out[(float(batch.labels[r]), tuple(batch.indices[lo:hi]),
                 tuple(batch.values[lo:hi]))] += 1
    return out


def test_shards_cover_every_row_exactly_once(tmp_path):
    a9a = shared_file("a9a_libsvm", "a9a")
    whole = _rows(FileSource(a9a, "libsvm", 124, labels="binary"))
    shards = [_rows(FileSource(a9a, "libsvm", 124, labels="binary", shard=(r, 2)))
              for r in range(2)]
    assert all(sum(s.values()) > 10_000 for s in shards)  # both processes get a real share
    assert shards[0] + shards[1] == whole
    # a channel of several files is shared out by file
    lines = a9a.read_text().splitlines(keepends=True)
    channel = tmp_path / "channel"
    channel.mkdir()
    for i in range(3):
        (channel / f"part-{i}").write_text("".join(lines[i::3]))
    parts = [_rows(FileSource(channel, "libsvm", 124, labels="binary", shard=(r, 2)))
             for r in range(2)]
    assert parts[0] + parts[1] == whole


def _test_metrics(model_dir) -> dict:
    return json.loads((model_dir / "metrics.json").read_text())["test"]


def test_two_processes_train_what_one_trains(tmp_path):
    a9a, a9a_t = shared_file("a9a_libsvm", "a9a"), shared_file("a9a_libsvm", "a9a.t")
    one = run_fmkit("train", "--train", a9a, "--test", a9a_t, "--model-dir", tmp_path / "one",
                    *HP)
    assert one.returncode == 0, one.stderr
    two = run_fmkit("train", "--nproc", "2", "--train", a9a, "--test", a9a_t, "--model-dir",
                    tmp_path / "two", *HP)
    assert two.returncode == 0, two.stderr
    # every epoch of the 2-process run saw all 32,561 rows (the shards are disjoint, above)
    epochs = re.findall(r"epoch (\d)/3: train loss [0-9.]+ over (\d+) rows", two.stderr)
    assert epochs == [("1", "32561"), ("2", "32561"), ("3", "32561")]
    assert two.stderr.count("model written to") == 1  # rank 0 alone writes
    m1, m2 = _test_metrics(tmp_path / "one"), _test_metrics(tmp_path / "two")
    print(f"a9a, 3 epochs, batch 200: test AUC 1 process {m1['auc']:.4f}, 2 processes "
          f"{m2['auc']:.4f}; log loss {m1['binary_classification_cross_entropy']:.4f} vs "
          f"{m2['binary_classification_cross_entropy']:.4f}")
    assert abs(m1["auc"] - m2["auc"]) < 0.005
    assert abs(m1["binary_classification_cross_entropy"]
               - m2["binary_classification_cross_entropy"]) < 0.01
