"""LightFM on an implicit-feedback split, run in the peers' venv by bench_recommend_quality.py.

    peer_lightfm.py TRAIN TEST USERS ITEMS LOSS EPOCHS COMPONENTS K OUT

TRAIN and TEST are ``user item`` lines (0-based). Fits ``LightFM(loss=LOSS,
no_components=COMPONENTS)`` on TRAIN (identity features, one thread), then writes to OUT, as
JSON, each user's K best items among those it has no TRAIN interaction with, and the fit's
seconds; the benchmark scores the lists with fmkit's metric code, as it scores fmkit's. With a
TEST file (not ``-``), also LightFM's own ``auc_score`` of it (TRAIN's interactions left out),
the mean over the users TEST has.
"""

import json
import sys
import time

import numpy as np
import scipy.sparse as sp
from lightfm import LightFM
from lightfm.evaluation import auc_score


def interactions(path: str, users: int, items: int) -> sp.csr_matrix:
    pairs = np.loadtxt(path, dtype=np.int64, ndmin=2)
    return sp.coo_matrix((np.ones(len(pairs), np.float32), (pairs[:, 0], pairs[:, 1])),
                         shape=(users, items)).tocsr()


def main() -> None:
    train_path, test_path, users, items, loss, epochs, components, k, out = sys.argv[1:10]
    users, items, epochs, components, k = map(int, (users, items, epochs, components, k))
    train = interactions(train_path, users, items)
    model = LightFM(no_components=components, loss=loss, random_state=0)
    started = time.perf_counter()
    model.fit(train, epochs=epochs, num_threads=1)
    seconds = time.perf_counter() - started
    every = np.arange(items, dtype=np.int32)
    top = {}
    for user in range(users):
        scores = model.predict(user, every, num_threads=1)
        scores[train[user].indices] = -np.inf
        top[user] = [int(i) for i in np.argsort(-scores, kind="stable")[:k]]
    found = {"seconds": seconds, "top": top}
    if test_path != "-":
        test = interactions(test_path, users, items)
        found["auc"] = float(auc_score(model, test, train_interactions=train,
                                       num_threads=1).mean())
    with open(out, "w") as f:
        json.dump(found, f)


if __name__ == "__main__":
    main()
