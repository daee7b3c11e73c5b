"""DeepFM's quality against FM and logistic regression: on data planted with a three-way
interaction that neither FM nor LR can express, and on MovieLens 100k with side features."""

from __future__ import annotations

import bisect
import csv

import numpy as np
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

import fmkit
from fmkit import FMClassifier
from fmkit.data.movielens import join_ratings
from fmkit.jobs.deepfm import train_deepfm
from fmkit.models.deepfm import config as configs
from fmkit.models.deepfm import config_files

from .conftest import REPO, shared_file

FIELDS, VALUES, RANK = 6, 8, 4


def planted(n_train: int, n_test: int, seed: int = 0):
    """Six categorical fields of 8 values; the logit has linear terms, rank-4 pairwise
    interactions of all fields and a random three-way table over fields 0, 1 and 2 (std 1.5).
    Returns train/test ids and labels and the test rows' true probabilities."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.5, (FIELDS, VALUES))
    V = rng.normal(0, 0.5, (FIELDS, VALUES, RANK))
    three_way = rng.normal(0, 1.5, (VALUES, VALUES, VALUES))
    X = rng.integers(0, VALUES, (n_train + n_test, FIELDS))
    e = V[np.arange(FIELDS), X]
    s = e.sum(1)
    logit = (-0.5 + w[np.arange(FIELDS), X].sum(1) + 0.5 * ((s * s).sum(1) - (e * e).sum((1, 2)))
             + three_way[X[:, 0], X[:, 1], X[:, 2]])
    p = 1 / (1 + np.exp(-logit))
    y = (rng.random(p.size) < p).astype(int)
    return X[:n_train], y[:n_train], X[n_train:], y[n_train:], p[n_train:]


def one_hot(X: np.ndarray) -> sp.csr_matrix:
    n = len(X)
    columns = (X + np.arange(FIELDS) * VALUES).ravel()
    return sp.csr_matrix((np.ones(n * FIELDS), columns, np.arange(0, n * FIELDS + 1, FIELDS)),
                         shape=(n, FIELDS * VALUES))


def write_csv(path, X, y) -> None:
    with open(path, "w") as f:
        f.write("label," + ",".join(f"f{i}" for i in range(FIELDS)) + "\n")
        for row, label in zip(X, y):
            f.write(f"{label}," + ",".join(map(str, row)) + "\n")


def test_deepfm_beats_fm_beats_logistic_regression_on_higher_order_data(tmp_path):
    Xtr, ytr, Xte, yte, truth = planted(40_000, 10_000)
    lr = LogisticRegression(max_iter=1000).fit(one_hot(Xtr), ytr)
    auc_lr = roc_auc_score(yte, lr.predict_proba(one_hot(Xte))[:, 1])
    fm = FMClassifier(num_factors=8, epochs=20, mini_batch_size=32, factors_lr=0.01,
                      linear_lr=0.01, factors_init_sigma=0.1, factors_wd=1e-5, linear_wd=1e-5,
                      seed=0).fit(one_hot(Xtr), ytr, progress=False)
    auc_fm = roc_auc_score(yte, fm.predict_proba(one_hot(Xte))[:, 1])
    write_csv(tmp_path / "train.csv", Xtr, ytr)
    write_csv(tmp_path / "test.csv", Xte, yte)
    names = [f"f{i}" for i in range(FIELDS)]
    document = {
        "train_input_path": str(tmp_path / "train.csv"),
        "eval_input_path": str(tmp_path / "test.csv"), "model_dir": str(tmp_path / "model"),
        "data_config": {"with_header": True, "batch_size": 256, "shuffle": True},
        "train_config": {"num_epochs": 8,
                         "sparse_optimizer": {"adagrad_optimizer": {"lr": 0.05}},
                         "dense_optimizer": {"adam_optimizer": {"lr": 0.003}}},
        "feature_configs": [{"id_feature": {"feature_name": n, "num_buckets": VALUES,
                                            "embedding_dim": 8}} for n in names],
        "model_config": {
            "feature_groups": [{"group_name": "wide", "group_type": "WIDE",
                                "feature_names": names},
                               {"group_name": "deep", "feature_names": names}],
            "deepfm": {"deep": {"hidden_units": [64, 32]}}},
    }
    _, metrics = train_deepfm(configs.parse(document), progress=False)
    auc_deepfm = metrics["test"]["auc"]
    print(f"planted three-way data, test AUC: oracle {roc_auc_score(yte, truth):.4f}, "
          f"DeepFM {auc_deepfm:.4f}, FM {auc_fm:.4f}, LR {auc_lr:.4f}")
    assert auc_deepfm >= auc_fm + 0.02  # measured: 0.873 vs 0.832
    assert auc_fm >= auc_lr + 0.05  # measured: 0.832 vs 0.710


def _movielens_one_hot(train_rows: list[dict], test_rows: list[dict]):
    """The DeepFM example's features as one-hot FM input: user, item, age and release-year
    buckets (the example's boundaries), gender, occupation, zip prefix, genres weighted 1/n
    (the example mean-pools them)."""
    vocabulary: dict[tuple, int] = {}

    def column(key: tuple) -> int:
        return vocabulary.setdefault(key, len(vocabulary))

    def encode(rows):
        indptr, indices, values = [0], [], []
        for r in rows:
            features = {
                column(("user", r["user_id"])): 1.0, column(("item", r["item_id"])): 1.0,
                column(("age", bisect.bisect_right([18, 25, 35, 45, 50, 56],
                                                   float(r["age"])))): 1.0,
                column(("gender", r["gender"])): 1.0,
                column(("occupation", r["occupation"])): 1.0, column(("zip", r["zip"])): 1.0,
                column(("year", bisect.bisect_right([1950, 1970, 1980, 1990, 1995, 1997],
                                                    float(r["year"] or 0)))): 1.0,
            }
            genres = [g for g in r["genres"].split("|") if g]
            for genre in genres:
                features[column(("genre", genre))] = 1.0 / len(genres)
            indices.extend(features)
            values.extend(features.values())
            indptr.append(len(indices))
        return indptr, indices, values

    encoded = [encode(train_rows), encode(test_rows)]
    return [sp.csr_matrix((v, i, p), shape=(len(p) - 1, len(vocabulary)))
            for p, i, v in encoded]


def test_deepfm_at_least_matches_fm_on_movielens_100k(tmp_path):
    directory = shared_file("movielens_100k", "u.data").parent
    for split in ("ua.base", "ua.test"):
        join_ratings(directory, split, tmp_path / f"{split}.csv")
    rows = []
    for split in ("ua.base", "ua.test"):
        with open(tmp_path / f"{split}.csv") as f:
            rows.append(list(csv.DictReader(f)))
    X_train, X_test = _movielens_one_hot(*rows)
    y_train = np.array([int(r["rating"]) >= 4 for r in rows[0]], dtype=int)
    y_test = np.array([int(r["rating"]) >= 4 for r in rows[1]], dtype=int)
    # the best of a small sweep (optimizers sgd/adagrad/adam/ftrl, lr, wd, epochs) on this split
    fm = FMClassifier(num_factors=16, optimizer="ftrl", factors_lr=0.05, linear_lr=0.05,
                      factors_wd=1e-4, linear_wd=1e-4, epochs=10, mini_batch_size=1,
                      factors_init_sigma=0.05, lock_free=0, seed=0)
    auc_fm = roc_auc_score(y_test, fm.fit(X_train, y_train, progress=False)
                           .predict_proba(X_test)[:, 1])
    config = config_files.load(REPO / "examples" / "deepfm_movielens.yaml", [
        f"train_input_path={tmp_path / 'ua.base.csv'}",
        f"eval_input_path={tmp_path / 'ua.test.csv'}", f"model_dir={tmp_path / 'model'}"])
    _, metrics = train_deepfm(config, progress=False)
    auc_deepfm = metrics["test"]["auc"]
    print(f"MovieLens 100k ua.test (rating >= 4), same features: DeepFM AUC {auc_deepfm:.4f}, "
          f"FM AUC {auc_fm:.4f}")
    assert metrics["test"]["rows"] == len(y_test) == 9430
    assert auc_deepfm >= auc_fm
    # the same configuration through the estimator, on DataFrames of the same columns (as a
    # user reads them with pandas: zip codes kept as text)
    import pandas as pd

    from fmkit import DeepFMClassifier

    frames = [pd.read_csv(tmp_path / f"{split}.csv", dtype={"zip": str})
              for split in ("ua.base", "ua.test")]
    columns = ["user_id", "item_id", "age", "gender", "occupation", "zip", "year", "genres"]
    estimator = DeepFMClassifier(config=REPO / "examples" / "deepfm_movielens.yaml")
    estimator.fit(frames[0][columns], frames[0]["label"])
    auc_estimator = roc_auc_score(frames[1]["label"],
                                  estimator.predict_proba(frames[1][columns])[:, 1])
    print(f"DeepFMClassifier on DataFrames: AUC {auc_estimator:.4f}")
    assert auc_estimator >= auc_deepfm - 0.002
    estimator.save(tmp_path / "estimator")
    again = fmkit.load(tmp_path / "estimator")
    np.testing.assert_allclose(again.predict_proba(frames[1][columns]),
                               estimator.predict_proba(frames[1][columns]), rtol=1e-6)
    assert list(again.classes_) == [0, 1] and list(again.feature_names_in_) == columns
