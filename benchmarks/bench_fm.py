"""FM training and prediction speed and peak memory on synthetic CTR data.

    python benchmarks/bench_fm.py [--rows 1000000] [--fields 39] [--features 1000000] [-k 8]

Generates (once, cached in benchmarks/.cache/) a libsvm file from a planted FM: ``--rows`` rows,
``--fields`` one-hot categorical fields with Zipf-distributed ids hashed into a
``--features``-wide space. Each measurement runs in its own process so its peak RSS is its own.
Rows are timed end to end (parsing included) unless the row says "parsed"; the first, untimed
run of each process compiles or loads the cached kernels.

Peer in the same run: scikit-learn's SGDClassifier (log loss), a compiled linear model, not an FM:
it shows what a well-tuned compiled Python-stack learner does on the same rows. The speed issue
adds xLearn, libFM, fastFM and PyTorch peers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"

# Each task runs in a fresh interpreter and prints one JSON object: {"rows", "seconds", ...}.
TASKS = {
    "parse": """
from fmkit.data.sources import FileSource
src = FileSource(PATH, "libsvm", D, index_base=0, labels="binary")
for _ in src.blocks(): pass                       # warm-up (compile / load cache)
t = time.perf_counter(); rows = sum(b.n_rows for b in src.blocks())
result = dict(rows=rows, seconds=time.perf_counter() - t)
""",
    "train_file": """
from fmkit.data.sources import FileSource
from fmkit.hyperparameters import validate
from fmkit.train.trainer import train
hp = validate(dict(feature_dim=D, num_factors=K, predictor_type="binary_classifier", epochs=1,
                   mini_batch_size=1000, linear_lr=0.001, factors_lr=0.001))
warm = validate({**hp, "feature_dim": 10})
from fmkit.data.sources import ArraySource
import scipy.sparse as sp
train(warm, ArraySource(sp.eye(10, format="csr"), np.ones(10), labels="binary"), progress=False)
src = FileSource(PATH, "libsvm", D, index_base=0, labels="binary")
t = time.perf_counter(); params, history = train(hp, src, progress=False)
result = dict(rows=history[0].rows, seconds=time.perf_counter() - t)
""",
    "train_parsed": """
from fmkit.data.sources import FileSource
from fmkit.hyperparameters import validate
from fmkit.train.trainer import train
hp = validate(dict(feature_dim=D, num_factors=K, predictor_type="binary_classifier", epochs=1,
                   mini_batch_size=BATCH, optimizer=OPTIMIZER, linear_lr=0.001,
                   factors_lr=0.001))
blocks = list(FileSource(PATH, "libsvm", D, index_base=0, labels="binary").blocks())
class Parsed:
    name = "parsed"
    def blocks(self): return iter(blocks)
train({**hp, "epochs": 1}, Parsed(), progress=False)   # warm-up epoch (not timed)
t = time.perf_counter(); params, history = train(hp, Parsed(), progress=False)
result = dict(rows=history[0].rows, seconds=time.perf_counter() - t)
""",
    "predict_parsed": """
from fmkit.data.sources import FileSource
from fmkit.hyperparameters import validate
from fmkit.model import FMModel
from fmkit.models.fm import init_parameters
hp = validate(dict(feature_dim=D, num_factors=K, predictor_type="binary_classifier"))
model = FMModel(hp, init_parameters(hp))
blocks = list(FileSource(PATH, "libsvm", D, index_base=0).blocks())
for b in blocks[:1]: model.logits(b)
t = time.perf_counter(); rows = 0
for b in blocks:
    model.logits(b); rows += b.n_rows
result = dict(rows=rows, seconds=time.perf_counter() - t)
""",
    "predict_cli": """
from fmkit.data.sources import FileSource
from fmkit.hyperparameters import validate
from fmkit.model import FMModel
from fmkit.models.fm import init_parameters
from fmkit import jobs
hp = validate(dict(feature_dim=D, num_factors=K, predictor_type="binary_classifier"))
FMModel(hp, init_parameters(hp)).save(CACHE / "bench-model")
t = time.perf_counter()
rows = jobs.predict_files(CACHE / "bench-model", PATH, CACHE / "bench-predictions.jsonl")
result = dict(rows=rows, seconds=time.perf_counter() - t)
""",
    "sklearn_sgd_parsed": """
from fmkit.data.sources import FileSource
from fmkit.data.batch import concat
import scipy.sparse as sp
from sklearn.linear_model import SGDClassifier
b = concat(list(FileSource(PATH, "libsvm", D, index_base=0, labels="binary").blocks()))
X = sp.csr_matrix((b.values, b.indices, b.indptr), shape=(b.n_rows, D))
t = time.perf_counter()
SGDClassifier(loss="log_loss", max_iter=1, tol=None, learning_rate="constant", eta0=0.01,
              shuffle=False).fit(X, b.labels)
result = dict(rows=b.n_rows, seconds=time.perf_counter() - t)
""",
}

PRELUDE = """
import json, sys, time
from pathlib import Path
import numpy as np
PATH, D, K, CACHE = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
BATCH, OPTIMIZER = int(sys.argv[5]), sys.argv[6]
"""
EPILOGUE = """
import re  # VmHWM: unlike ru_maxrss it does not carry the parent's size across exec
status = open("/proc/self/status").read()
result["peak_rss_mib"] = int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) / 1024
print(json.dumps(result))
"""


def make_data(rows: int, fields: int, features: int, seed: int = 0) -> Path:
    """The benchmark file, generated once per shape and cached."""
    import numpy as np

    from fmkit.models.fm import FMParameters, sigmoid

    path = CACHE / f"ctr-{rows}x{fields}-{features}.libsvm"
    if path.exists():
        return path
    CACHE.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    per_field = features // fields
    # Zipf-like ids per field, hashed into the shared space by a fixed random permutation
    weights = np.arange(1, per_field + 1) ** -1.1
    cdf = np.cumsum(weights) / weights.sum()
    hashing = rng.permutation(features)
    truth = FMParameters(np.array([-1.5]), rng.normal(0, 0.3, features),
                         rng.normal(0, 0.15, (features, 4)))
    tmp = path.with_suffix(".partial")
    with open(tmp, "w") as f:
        for start in range(0, rows, 100_000):
            n = min(100_000, rows - start)
            ranks = np.minimum(np.searchsorted(cdf, rng.random((n, fields))), per_field - 1)
            ids = np.sort(hashing[ranks + np.arange(fields) * per_field], axis=1)
            lin = truth.w[ids].sum(1)
            s = truth.V[ids].sum(1)
            pair = 0.5 * ((s * s).sum(1) - (truth.V[ids] ** 2).sum((1, 2)))
            y = rng.random(n) < sigmoid(truth.w0[0] + lin + pair)
            lines = [f"{int(label)} " + " ".join(f"{i}:1" for i in row)
                     for label, row in zip(y, ids)]
            f.write("\n".join(lines) + "\n")
    tmp.rename(path)
    return path


def run_task(name: str, path: Path, features: int, k: int, batch: int = 1000,
             optimizer: str = "adam") -> dict:
    code = PRELUDE + TASKS[name] + EPILOGUE
    out = subprocess.run([sys.executable, "-c", code, str(path), str(features), str(k),
                          str(CACHE), str(batch), optimizer], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{name} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--fields", type=int, default=39)
    parser.add_argument("--features", type=int, default=1_000_000)
    parser.add_argument("-k", type=int, default=8)
    args = parser.parse_args()
    started = time.perf_counter()
    path = make_data(args.rows, args.fields, args.features)
    print(f"data: {path.name} ({path.stat().st_size / 2**20:.0f} MiB, {args.rows} rows, "
          f"{args.fields} fields, {args.features} features), k={args.k}, "
          f"prepared in {time.perf_counter() - started:.1f} s")
    model_mib = args.features * (args.k + 1) * 4 / 2**20
    print(f"model: {model_mib:.0f} MiB float32 weights; Adam state: {2 * model_mib:.0f} MiB")
    # (label, task, mini_batch_size, optimizer)
    rows = [
        ("parse libsvm (2 threads)", "parse", 0, ""),
        ("train from file, adam, batch 1000", "train_file", 1000, "adam"),
        ("train parsed, adam, batch 1000", "train_parsed", 1000, "adam"),
        ("train parsed, adagrad, batch 1000", "train_parsed", 1000, "adagrad"),
        ("train parsed, sgd, batch 1000", "train_parsed", 1000, "sgd"),
        ("train parsed, adam, batch 1 (fused)", "train_parsed", 1, "adam"),
        ("train parsed, sgd, batch 1 (fused)", "train_parsed", 1, "sgd"),
        ("predict parsed (2 threads)", "predict_parsed", 0, ""),
        ("predict file -> JSON Lines", "predict_cli", 0, ""),
        ("peer: sklearn SGDClassifier (linear)", "sklearn_sgd_parsed", 0, ""),
    ]
    results = [run_task(task, path, args.features, args.k, batch or 1000, opt or "adam")
               for _, task, batch, opt in rows]
    reference = results[2]["rows"] / results[2]["seconds"]
    title = f"fmkit task (k={args.k}, 1 epoch)"
    print(f"\n{title:<40}{'rows/s':>12}{'seconds':>9}"
          f"{'peak RSS MiB':>14}{'vs train parsed adam 1000':>27}")
    for (label, *_), r in zip(rows, results):
        rate = r["rows"] / r["seconds"]
        print(f"{label:<40}{rate:>12,.0f}{r['seconds']:>9.2f}{r['peak_rss_mib']:>14.0f}"
              f"{rate / reference:>26.2f}x")


if __name__ == "__main__":
    main()
