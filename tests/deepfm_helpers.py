"""Shared pieces of the DeepFM tests: small configurations and an independent FNV-1a."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from fmkit.models.deepfm.model import DeepFMModel


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


ROWS = [
    {"user": "alice", "item": 3, "tags": "a|c", "age": 25, "price": 10.0},
    {"user": "bob", "item": 29, "tags": "b|zzz|", "age": 60, "price": 0.0},
    {"user": 7, "item": 0, "tags": None, "age": None, "price": None},
    {"user": "alice", "item": 3, "tags": "c", "age": 18, "price": 3.5},
]


def tables_of(model: DeepFMModel) -> dict[str, np.ndarray]:
    """Each embedding table's rows (tables share banks: this reads the layout, not the math)."""
    net = model.net
    out = {name: net.tables.table(name).detach().double().numpy() for name in net.tables.slots}
    out.update({name: net.wide_tables.table(name).detach().double().numpy()
                for name in net.wide_tables.slots})
    return out


def numpy_forward(state: dict[str, np.ndarray], tables: dict[str, np.ndarray],
                   rows: list[dict]) -> np.ndarray:
    """DeepFM of §1.3 (the SMALL configuration) written out in numpy from the weights, with
    ids computed here."""
    vocab = {"a": 2, "b": 3, "c": 4}
    out = []
    for row in rows:
        user = [fnv1a(str(row["user"]), 50)]
        item = [int(row["item"])]
        tags = [vocab.get(t, 1) for t in (row["tags"] or "").split("|") if t]
        age = 0.0 if row["age"] is None else float(row["age"])
        bucket = [sum(age >= b for b in (18, 30, 50))]
        price = math.log1p(0.0 if row["price"] is None else row["price"])

        def bag(table: str, ids: list[int], mean: bool = False) -> np.ndarray:
            w = tables[table]
            if not ids:
                return np.zeros(w.shape[1])
            total = w[ids].sum(axis=0)
            return total / len(ids) if mean else total

        e = {"user": bag("user_emb", user), "item": bag("item_emb", item),
             "tags": bag("tags_emb", tags, mean=True), "age": bag("age_emb", bucket)}
        wide = bag("user_emb_wide", user).sum() + bag("item_emb_wide", item).sum()
        fm_in = np.stack([e["user"], e["item"], e["tags"], e["age"]])
        fm = np.array([sum(fm_in[i, d] * fm_in[j, d] for i in range(4) for j in range(i + 1, 4))
                       for d in range(4)])
        h = np.concatenate([e["user"], e["item"], e["tags"], e["age"], [price]])
        for layer in (0, 2):
            h = np.maximum(state[f"deep.{layer}.weight"] @ h + state[f"deep.{layer}.bias"], 0)
        z = np.concatenate([[wide], fm, h])
        z = np.maximum(state["final.0.weight"] @ z + state["final.0.bias"], 0)
        out.append((state["output.weight"] @ z + state["output.bias"])[0])
    return np.array(out)
