"""Shared pieces of the DeepFM tests: small configurations and an independent FNV-1a."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any


def fnv1a(text: str, buckets: int) -> int:
    """FNV-1a (64-bit) of the UTF-8 bytes, in plain Python (independent of the numba one)."""
    h = 14695981039346656037
    for byte in text.encode():
        h = ((h ^ byte) * 1099511628211) % 2**64
    return h % buckets


SMALL: dict[str, Any] = {
    "feature_configs": [
        {"id_feature": {"feature_name": "user", "hash_bucket_size": 50, "embedding_dim": 4}},
        {"id_feature": {"feature_name": "item", "num_buckets": 30, "embedding_dim": 4}},
        {"id_feature": {"feature_name": "tags", "vocab_list": ["a", "b", "c"],
                        "embedding_dim": 4, "separator": "|", "pooling": "mean"}},
        {"raw_feature": {"feature_name": "age", "boundaries": [18, 30, 50],
                         "embedding_dim": 4}},
        {"raw_feature": {"feature_name": "price", "normalizer": "log1p"}},
    ],
    "model_config": {
        "feature_groups": [
            {"group_name": "wide", "group_type": "WIDE", "feature_names": ["user", "item"]},
            {"group_name": "fm", "feature_names": ["user", "item", "tags", "age"]},
            {"group_name": "deep", "feature_names": ["user", "item", "tags", "age", "price"]},
        ],
        "deepfm": {"deep": {"hidden_units": [8, 4]}, "final": {"hidden_units": [3]},
                   "wide_embedding_dim": 2},
    },
    "data_config": {"label_fields": ["label"]},
}


# ``fmkit train --config examples/deepfm_criteo.yaml`` with tables of 1,000 rows (not 100,000)
# and a smaller network: the same kinds of state (tables, MLP, both optimizers' moments) in
# 2 MB instead of 400 MB, for tests about checkpoints, early stopping and warm starts
SMALL_CRITEO = [*(arg for i in range(13, 39) for arg in (
                    "--set", f"feature_configs[{i}].id_feature.hash_bucket_size=1000")),
                "--set", "model_config.deepfm.deep.hidden_units=[32,16]",
                "--set", "model_config.deepfm.final.hidden_units=[8]"]


def small(**changes: Any) -> dict[str, Any]:
    """A copy of SMALL with top-level sections replaced."""
    document = copy.deepcopy(SMALL)
    document.update(changes)
    return document


def small_deepfm_config(root: Path) -> Path:
    """300 generated rows and a SMALL configuration that trains on them, written under
    ``root``; the configuration's path (its model directory: ``root / "model"``)."""
    import numpy as np
    import yaml

    rng = np.random.default_rng(0)
    lines = ["user,item,tags,age,price,label"] + [
        f"u{rng.integers(20)},{rng.integers(30)},a|b,{rng.integers(10, 70)},"
        f"{rng.random() * 10:.2f},{rng.integers(2)}" for _ in range(300)]
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    config = root / "c.yaml"
    config.write_text(yaml.safe_dump(small(
        train_input_path=str(root / "train.csv"), model_dir=str(root / "model"),
        data_config={"label_fields": ["label"], "with_header": True})))
    return config


def train_small_deepfm(root: Path) -> Path:
    """A DeepFM of the SMALL configuration trained on 300 generated rows; its directory."""
    from .conftest import run_fmkit

    result = run_fmkit("train", "--config", small_deepfm_config(root), "--quiet")
    assert result.returncode == 0, result.stderr
    return root / "model"
