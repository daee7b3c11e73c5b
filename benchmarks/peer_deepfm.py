"""DeepCTR-Torch's DeepFM on a Criteo-layout TSV, run with the peers' interpreter.

    python peer_deepfm.py TRAIN TEST THREADS BATCH OUT

Prepares the columns as DeepCTR-Torch's own Criteo example does (missing categories -> "-1",
missing counts -> 0, LabelEncoder per categorical column fitted on train + test, MinMaxScaler
on the counts), then times ``fit`` (1 epoch) and ``predict``. Prints one JSON object and
writes the test probabilities to OUT. Nothing here imports fmkit.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import numpy as np

INTS = [f"I{i}" for i in range(1, 14)]
CATS = [f"C{i}" for i in range(1, 27)]


def read_tsv(path: str) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
    labels, dense, cats = [], [], [[] for _ in CATS]
    with open(path) as f:
        for line in f:
            fields = line.rstrip("\n").split("\t")
            fields += [""] * (40 - len(fields))
            labels.append(float(fields[0]))
            dense.append([float(v) if v else 0.0 for v in fields[1:14]])
            for j, value in enumerate(fields[14:40]):
                cats[j].append(value or "-1")
    return np.array(labels, np.float32), np.array(dense, np.float32), cats


def main() -> None:
    import torch
    from deepctr_torch.inputs import DenseFeat, SparseFeat
    from deepctr_torch.models import DeepFM
    from sklearn.preprocessing import LabelEncoder, MinMaxScaler

    train, test, threads, batch, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), \
        int(sys.argv[4]), sys.argv[5]
    if threads:  # 0: PyTorch's default
        torch.set_num_threads(threads)
    y, dense, cats = read_tsv(train)
    y_test, dense_test, cats_test = read_tsv(test)
    scaler = MinMaxScaler((0, 1)).fit(np.vstack([dense, dense_test]))
    inputs, test_inputs, columns = {}, {}, []
    for j, name in enumerate(INTS):
        inputs[name] = scaler.transform(dense)[:, j]
        test_inputs[name] = scaler.transform(dense_test)[:, j]
    for j, name in enumerate(CATS):
        encoder = LabelEncoder().fit(cats[j] + cats_test[j])
        inputs[name] = encoder.transform(cats[j])
        test_inputs[name] = encoder.transform(cats_test[j])
        columns.append(SparseFeat(name, len(encoder.classes_), embedding_dim=16))
    columns += [DenseFeat(name, 1) for name in INTS]
    model = DeepFM(columns, columns, dnn_hidden_units=(512, 256, 128), task="binary",
                   device="cpu", seed=0)
    model.compile("adam", "binary_crossentropy")
    started = time.perf_counter()
    model.fit(inputs, y, batch_size=batch, epochs=1, verbose=0)
    train_seconds = time.perf_counter() - started
    started = time.perf_counter()
    probabilities = model.predict(test_inputs, batch_size=batch).ravel()
    predict_seconds = time.perf_counter() - started
    np.savetxt(out, probabilities, fmt="%.6f")
    status = Path("/proc/self/status").read_text()
    peak = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024
    print(json.dumps({"rows": len(y), "train_seconds": train_seconds, "test_rows": len(y_test),
                      "predict_seconds": predict_seconds, "peak_rss_mib": peak}))


if __name__ == "__main__":
    main()
