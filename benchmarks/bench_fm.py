"""FM training and prediction: fmkit against xLearn, fastFM and PyTorch peers, in one run.

    python benchmarks/bench_fm.py [--rows 1000000] [--features 1000000] [-k 8] [--no-peers]
                                  [--repeat 3] [--only TEXT] [--memory]

Generates (once, cached in benchmarks/.cache/) a planted-FM CTR dataset: ``--rows`` training
rows and a tenth as many test rows, 39 one-hot fields with Zipf-distributed ids hashed into a
``--features``-wide space, labels drawn from a known FM (its probabilities give the oracle AUC).
Installs the peers on first use into their own environment, benchmarks/.peers (see
``PEER_STEPS``; xLearn builds from PyPI with $USER set). Every measurement runs in its own
process, so its peak RSS (VmHWM) is its own; every trained model scores the same test rows
with the same metric code. Ratios compare each fmkit row with the peer row it names.

This machine's rates vary by up to 2x from one run to the next (shared cores), so every fmkit
and xLearn row is run ``--repeat`` times, one process after the other, and reports its fastest
run (as ``timeit`` does: noise only ever slows a run down); the slow peers run once.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fmkit.models.fm.hyperparameters import FFM_DEFAULTS

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
PEERS = HERE / ".peers"
PEER_PYTHON = PEERS / "venv" / "bin" / "python"
PEER_CONSTRAINTS = HERE / "peers-constraints.txt"
# Each step is a pip install into the peers' venv (fastFM needs Cython and numpy<2 at hand).
PEER_STEPS = [
    ["pip", "install", "numpy", "scipy", "scikit-learn", "cython", "wheel", "setuptools",
     "requests"],
    ["pip", "install", "xlearn"],
    ["pip", "install", "--no-build-isolation", "fastFM"],
    ["pip", "install", "torch==2.13.0", "torchfm", "deepctr-torch"],
    ["pip", "install", "lightfm"],  # (bench_recommend_quality.py)
]

# fmkit tasks: each runs in a fresh interpreter and prints one JSON object.
FMKIT_PRELUDE = """
import json, re, sys, time
from pathlib import Path
import numpy as np
import numba
TRAIN, TEST, D, K, OUT = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
OPTIONS = json.loads(sys.argv[6])
numba.set_num_threads(OPTIONS.get("threads", numba.config.NUMBA_NUM_THREADS))
from fmkit.data.sources import FileSource
from fmkit.models.fm.hyperparameters import validate
from fmkit.models.fm.model import FMModel
from fmkit.jobs.training import train
def blocks(path):
    return list(FileSource(path, "auto", D, index_base=0, labels="binary").blocks())
def hyperparameters():
    return validate({"feature_dim": D, "num_factors": K, "epochs": OPTIONS.get("epochs", 1),
                     "mini_batch_size": 1,
                     "predictor_type": "binary_classifier", **OPTIONS.get("hp", {})})
def score_test(hp, params):
    model = FMModel(hp, params)
    scores = [model.scores(model.logits(b)) for b in blocks(TEST)]
    np.save(Path(OUT).with_suffix(".npy"), np.concatenate(scores))
def compile_kernels(hp):
    import tempfile
    import scipy.sparse as sp
    from fmkit.data.sources import ArraySource
    if hp["model_type"] == "ffm":  # fields come from libffm text only
        from fmkit.jobs.fm import train_files
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "w.ffm").write_text("".join(f"{i % 2} 0:{i}:1 1:{i + 1}:1\\n"
                                                  for i in range(8)))
            train_files({**hp, "feature_dim": 10, "num_fields": 0}, Path(tmp, "w.ffm"),
                        Path(tmp, "m"), index_base=0, progress=False)
        return
    small = ArraySource(sp.eye(10, format="csr"), np.ones(10), feature_dim=10, labels="binary")
    train(validate({**hp, "feature_dim": 10}), small, progress=False)
class Parsed:
    name = "parsed"
    def __init__(self, blocks): self._blocks = blocks
    def blocks(self): return iter(self._blocks)
"""
FMKIT_TASKS = {
    "parse": """
src = FileSource(TRAIN, "auto", D, index_base=0, labels="binary", cache=OPTIONS["cache"])
for _ in src.blocks(): pass                     # warm-up: compile, and write the cache if asked
t = time.perf_counter(); rows = sum(b.n_rows for b in src.blocks())
result = dict(rows=rows, seconds=time.perf_counter() - t)
""",
    "train_parsed": """
hp = hyperparameters()
data = Parsed(blocks(TRAIN))
compile_kernels(hp)
t = time.perf_counter(); params, history = train(hp, data, progress=False)
result = dict(rows=sum(h.rows for h in history), seconds=time.perf_counter() - t)
score_test(hp, params)
""",
    "train_file": """
from fmkit.jobs import fm as jobs
hp = hyperparameters()
if not OPTIONS.get("cold"):  # cold: the clock includes compiling (an empty numba cache)
    compile_kernels(hp)
t = time.perf_counter()
model, _ = jobs.train_files(hp, TRAIN, Path(OUT).with_suffix(".model"), index_base=0,
                            progress=False)
result = dict(rows=sum(1 for _ in open(TRAIN, "rb")) * hp["epochs"],
              seconds=time.perf_counter() - t)
score_test(model.hyperparameters, model.params)
""",
    "predict_parsed": """
from fmkit.models.fm.parameters import init_parameters
hp = hyperparameters()
model = FMModel(hp, init_parameters(hp))
data = blocks(TRAIN)
model.logits(data[0])
t = time.perf_counter(); rows = sum(model.logits(b).size for b in data)
result = dict(rows=rows, seconds=time.perf_counter() - t)
""",
    "predict_file": """
from fmkit.jobs import fm as jobs
from fmkit.models.fm.parameters import init_parameters
hp = hyperparameters()
model_dir = FMModel(hp, init_parameters(hp)).save(Path(OUT).with_suffix(".model"))
suffix = OPTIONS.get("suffix", ".jsonl")  # (.parquet, .csv: a table of predictions)
jobs.predict_files(model_dir, TEST, OUT + ".warm" + suffix)   # compile
t = time.perf_counter()
rows = jobs.predict_files(model_dir, TRAIN, OUT + suffix)
result = dict(rows=rows, seconds=time.perf_counter() - t)
""",
}
FMKIT_EPILOGUE = """
status = open("/proc/self/status").read()
result["peak_rss_mib"] = int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) / 1024
print(json.dumps(result))
"""
# the CLI in-process, then its own peak RSS (VmHWM) as the last line
CLI_WITH_PEAK = """
import json, re, sys
from fmkit.cli import main
code = main(sys.argv[1:])
result = {}
""" + FMKIT_EPILOGUE + """
sys.exit(code)
"""

SGD = {"optimizer": "sgd", "bias_lr": 0.01, "linear_lr": 0.01, "factors_lr": 0.01,
       "bias_wd": 0.0, "linear_wd": 1e-6, "factors_wd": 1e-6}


DEFAULTS = {"optimizer": "adam", "mini_batch_size": 1000}  # SageMaker's; its rates untouched


def adaptive(name: str, lr: float) -> dict:
    return {**SGD, "optimizer": name, "bias_lr": lr, "linear_lr": lr, "factors_lr": lr}


# (label, runner, task, options, compare-to label or None)
ROWS = [
    ("fmkit parse libsvm, 2 threads", "fmkit", "parse", {"cache": False}, None),
    ("fmkit parse, binary cache", "fmkit", "parse", {"cache": True}, None),
    ("fmkit parse libffm (same rows, 39 fields), 2 threads", "fmkit", "parse",
     {"cache": False, "data": "libffm"}, None),
    ("xLearn sgd 1 thread, cold (text->bin + train)", "peer", "xlearn_sgd_cold",
     {"threads": 1}, None),
    ("xLearn sgd 1 thread, cached bin", "peer", "xlearn_sgd", {"threads": 1}, None),
    ("xLearn sgd 2 threads, cold", "peer", "xlearn_sgd_cold", {"threads": 2}, None),
    ("xLearn sgd 2 threads, cached bin", "peer", "xlearn_sgd", {"threads": 2}, None),
    ("xLearn adagrad 1 thread, cached bin", "peer", "xlearn_adagrad", {"threads": 1}, None),
    ("xLearn predict file, 2 threads", "peer", "xlearn_predict", {"threads": 2}, None),
    ("fastFM sgd (200k rows)", "peer", "fastfm", {"threads": 1, "rows": 200_000}, None),
    ("PyTorch sparse Embedding+SGD b4096, 1 thread (200k)", "peer", "torch_sparse",
     {"threads": 1, "rows": 200_000}, None),
    ("torchfm FM, Adam b4096, 1 thread (100k)", "peer", "torchfm",
     {"threads": 1, "rows": 100_000}, None),
    ("DeepCTR-Torch DeepFM w/o DNN, 1 thread (100k)", "peer", "deepctr",
     {"threads": 1, "rows": 100_000}, None),
    ("fmkit sgd 1 thread, parsed", "fmkit", "train_parsed", {"threads": 1, "hp": SGD},
     "xLearn sgd 1 thread, cached bin"),
    ("fmkit sgd 2 threads (Hogwild), parsed", "fmkit", "train_parsed",
     {"threads": 2, "hp": SGD}, "fmkit sgd 1 thread, parsed"),
    ("fmkit sgd 2 threads, from text file (cold)", "fmkit", "train_file",
     {"threads": 2, "hp": SGD}, "xLearn sgd 2 threads, cold"),
    ("fmkit adagrad 1 thread, parsed", "fmkit", "train_parsed",
     {"threads": 1, "hp": adaptive("adagrad", 0.05)}, "fmkit sgd 1 thread, parsed"),
    ("fmkit adam 1 thread, parsed", "fmkit", "train_parsed",
     {"threads": 1, "hp": adaptive("adam", 0.002)}, "fmkit sgd 1 thread, parsed"),
    ("fmkit ftrl 1 thread, parsed", "fmkit", "train_parsed",
     {"threads": 1, "hp": {**adaptive("ftrl", 0.05), "ftrl_beta": 1.0}},
     "fmkit sgd 1 thread, parsed"),
    ("fmkit adagrad 2 threads, parsed", "fmkit", "train_parsed",
     {"threads": 2, "hp": adaptive("adagrad", 0.05)}, "fmkit sgd 2 threads (Hogwild), parsed"),
    ("fmkit adam 2 threads, parsed", "fmkit", "train_parsed",
     {"threads": 2, "hp": adaptive("adam", 0.002)}, "fmkit sgd 2 threads (Hogwild), parsed"),
    ("fmkit ftrl 2 threads, parsed", "fmkit", "train_parsed",
     {"threads": 2, "hp": {**adaptive("ftrl", 0.05), "ftrl_beta": 1.0}},
     "fmkit sgd 2 threads (Hogwild), parsed"),
    ("fmkit adam b1000 2 threads (SageMaker's batch)", "fmkit", "train_parsed",
     {"threads": 2, "hp": {**adaptive("adam", 0.002), "mini_batch_size": 1000}}, None),
    # SageMaker's defaults as users keep them (untuned rates), from the text file
    ("fmkit defaults (adam b1000), text file, 2 threads", "fmkit", "train_file",
     {"hp": DEFAULTS}, "xLearn sgd 2 threads, cold"),
    ("fmkit adagrad b1000 (default rates), text file", "fmkit", "train_file",
     {"hp": {**DEFAULTS, "optimizer": "adagrad"}}, "xLearn sgd 2 threads, cold"),
    ("fmkit ftrl b1000 (default rates), text file", "fmkit", "train_file",
     {"hp": {**DEFAULTS, "optimizer": "ftrl"}}, "xLearn sgd 2 threads, cold"),
    ("fmkit rowwise_adagrad b1000 (default rates), text file", "fmkit", "train_file",
     {"hp": {**DEFAULTS, "optimizer": "rowwise_adagrad"}}, "xLearn sgd 2 threads, cold"),
    ("fmkit defaults, text file, first run (cold cache)", "fmkit", "train_file",
     {"hp": DEFAULTS, "cold": True}, "fmkit defaults (adam b1000), text file, 2 threads"),
    ("fmkit sgd per row, text file, first run (cold cache)", "fmkit", "train_file",
     {"threads": 2, "hp": SGD, "cold": True}, "fmkit sgd 2 threads, from text file (cold)"),
    ("fmkit predict parsed, 2 threads", "fmkit", "predict_parsed", {"threads": 2},
     "xLearn predict file, 2 threads"),
    ("fmkit predict file -> JSON Lines, 2 threads", "fmkit", "predict_file", {"threads": 2},
     "xLearn predict file, 2 threads"),
    ("fmkit predict file -> Parquet, 2 threads", "fmkit", "predict_file",
     {"threads": 2, "suffix": ".parquet"}, "xLearn predict file, 2 threads"),
    # quality on real data: a9a (32,561 training rows, 123 binary features), same epochs
    ("a9a: xLearn sgd 1 thread, 10 epochs", "peer", "xlearn_sgd_cold",
     {"threads": 1, "epochs": 10, "data": "a9a"}, None),
    ("a9a: fmkit sgd 1 thread, 10 epochs", "fmkit", "train_parsed",
     {"threads": 1, "epochs": 10, "data": "a9a", "hp": {**SGD, "linear_wd": 1e-4,
                                                        "factors_wd": 1e-4}},
     "a9a: xLearn sgd 1 thread, 10 epochs"),
    ("a9a: fmkit defaults, 5 epochs, text file", "fmkit", "train_file",
     {"epochs": 5, "data": "a9a", "hp": DEFAULTS}, None),
    ("a9a: fmkit defaults, 5 epochs, first run (cold cache)", "fmkit", "train_file",
     {"epochs": 5, "data": "a9a", "hp": DEFAULTS, "cold": True},
     "a9a: fmkit defaults, 5 epochs, text file"),
    # field-aware FM on planted field-aware data (FFM_ROWS rows, 10 fields), 2 epochs
    ("ffm: xLearn FFM adagrad 1 thread, cold", "peer", "xlearn_ffm_cold",
     {"threads": 1, "epochs": 2, "data": "ffm"}, None),
    ("ffm: xLearn FM adagrad 1 thread, cold", "peer", "xlearn_adagrad_cold",
     {"threads": 1, "epochs": 2, "data": "ffm"}, None),
    ("ffm: fmkit FFM adagrad b100, 1 thread", "fmkit", "train_file",
     {"threads": 1, "epochs": 2, "data": "ffm",
      "hp": {**adaptive("adagrad", 0.05), "model_type": "ffm", "mini_batch_size": 100}},
     "ffm: xLearn FFM adagrad 1 thread, cold"),
    ("ffm: fmkit FFM adagrad per row, 1 thread", "fmkit", "train_file",
     {"threads": 1, "epochs": 2, "data": "ffm",
      "hp": {**adaptive("adagrad", 0.05), "model_type": "ffm", "mini_batch_size": 1}},
     "ffm: xLearn FFM adagrad 1 thread, cold"),
    # an FFM's defaults are xLearn's own settings in fmkit's names (AdaGrad a row per step,
    # lr 0.2, rows scaled to unit length as xLearn's norm, AdaGrad's sums starting above 0)
    ("ffm: fmkit FFM defaults (xLearn's settings), 1 thread", "fmkit", "train_file",
     {"threads": 1, "epochs": 2, "data": "ffm", "hp": {"model_type": "ffm"}},
     "ffm: xLearn FFM adagrad 1 thread, cold"),
    ("ffm: xLearn FFM adagrad, one core", "peer", "xlearn_ffm_cold",
     {"threads": 1, "epochs": 2, "data": "ffm", "one_core": True}, None),
    ("ffm: fmkit FFM defaults, one core", "fmkit", "train_file",
     {"threads": 1, "epochs": 2, "data": "ffm", "hp": {"model_type": "ffm"}, "one_core": True},
     "ffm: xLearn FFM adagrad, one core"),
    ("ffm: fmkit FFM defaults but rowwise_adagrad, 1 thread", "fmkit", "train_file",
     {"threads": 1, "epochs": 2, "data": "ffm",
      "hp": {"model_type": "ffm", "optimizer": "rowwise_adagrad", "mini_batch_size": 1,
             **{name: value for name, value in FFM_DEFAULTS.items() if name != "optimizer"}}},
     "ffm: xLearn FFM adagrad 1 thread, cold"),
    ("ffm: fmkit FFM, SageMaker's FM defaults (adam b1000)", "fmkit", "train_file",
     {"threads": 1, "epochs": 2, "data": "ffm", "hp": {**DEFAULTS, "model_type": "ffm"}},
     "ffm: xLearn FFM adagrad 1 thread, cold"),
    ("ffm: fmkit FM adagrad b100, 1 thread", "fmkit", "train_file",
     {"threads": 1, "epochs": 2, "data": "ffm",
      "hp": {**adaptive("adagrad", 0.05), "mini_batch_size": 100}},
     "ffm: xLearn FM adagrad 1 thread, cold"),
]
FFM_ROWS, FFM_FIELDS, FFM_FIELD_SIZE = 200_000, 10, 2000
A9A = Path(os.environ.get("FMKIT_SHARED_DATA", HERE.parents[1] / "shared" / "data")) / "a9a_libsvm"


def make_data(rows: int, fields: int, features: int, seed: int = 0) -> tuple[Path, Path]:
    """Train and test files from one planted FM (generated once per shape, cached); the test
    rows' true probabilities are saved beside them for the oracle's scores."""
    import numpy as np

    from fmkit.models.fm.parameters import FMParameters, sigmoid

    stem = CACHE / f"ctr-{rows}x{fields}-{features}"
    paths = stem.with_suffix(".libsvm"), stem.with_suffix(".test.libsvm")
    oracle = stem.with_suffix(".oracle.npy")
    if all(p.exists() for p in (*paths, oracle)):
        return paths
    CACHE.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    per_field = features // fields
    # Zipf-like ids per field, hashed into the shared space by a fixed random permutation
    weights = np.arange(1, per_field + 1) ** -1.1
    cdf = np.cumsum(weights) / weights.sum()
    hashing = rng.permutation(features)
    truth = FMParameters(np.array([-1.5]), rng.normal(0, 0.3, features),
                         rng.normal(0, 0.15, (features, 4)))
    for path, n_rows in zip(paths, (rows, rows // 10)):
        tmp = path.with_suffix(".partial")
        probabilities = []
        with open(tmp, "w") as f:
            for start in range(0, n_rows, 100_000):
                n = min(100_000, n_rows - start)
                ranks = np.minimum(np.searchsorted(cdf, rng.random((n, fields))), per_field - 1)
                ids = np.sort(hashing[ranks + np.arange(fields) * per_field], axis=1)
                s = truth.V[ids].sum(1)
                pair = 0.5 * ((s * s).sum(1) - (truth.V[ids] ** 2).sum((1, 2)))
                p = sigmoid(truth.w0[0] + truth.w[ids].sum(1) + pair)
                probabilities.append(p)
                y = rng.random(n) < p
                lines = [f"{int(label)} " + " ".join(f"{i}:1" for i in row)
                         for label, row in zip(y, ids)]
                f.write("\n".join(lines) + "\n")
        tmp.rename(path)
    np.save(oracle, np.concatenate(probabilities))
    return paths


def ensure_peers() -> None:
    """Create benchmarks/.peers/venv and install the peers (pinned), once."""
    marker = PEERS / "installed"
    if marker.exists() and marker.read_text() == PEER_CONSTRAINTS.read_text():
        return
    print("installing peers into benchmarks/.peers (once; xLearn compiles, ~3 minutes)",
          flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(PEERS / "venv")], check=True)
    env = {**os.environ, "USER": os.environ.get("USER") or "bench"}  # xLearn's build needs it
    for step in PEER_STEPS:
        subprocess.run([str(PEERS / "venv" / "bin" / step[0]), *step[1:], "-q", "-c",
                        str(PEER_CONSTRAINTS)], check=True, env=env)
    marker.write_text(PEER_CONSTRAINTS.read_text())


def run(runner: str, task: str, options: dict, train: Path, test: Path, features: int,
        k: int, out: Path) -> dict:
    if runner == "fmkit":
        code = FMKIT_PRELUDE + FMKIT_TASKS[task] + FMKIT_EPILOGUE
        command = [sys.executable, "-c", code, str(train), str(test), str(features), str(k),
                   str(out), json.dumps(options)]
    else:
        command = [str(PEER_PYTHON), str(HERE / "peer_tasks.py"), task, str(train), str(test),
                   str(features), str(k), str(options.get("threads", 1)),
                   str(options.get("epochs", 1)), str(out),
                   str(options.get("rows", 0))]
    env = {**os.environ, "USER": os.environ.get("USER") or "bench"}  # xLearn reads it
    with tempfile.TemporaryDirectory(prefix="numba-cold-") as cold_cache:
        if options.get("cold"):  # a first run: nothing compiled yet
            env["NUMBA_CACHE_DIR"] = cold_cache
        # one_core: the process and every thread it starts on one CPU (the reading thread
        # too): a per-core comparison, where "1 thread" rows leave a reader the other core
        pin = (lambda: os.sched_setaffinity(0, [min(os.sched_getaffinity(0))])
               ) if options.get("one_core") else None
        done = subprocess.run(command, capture_output=True, text=True, env=env,
                              preexec_fn=pin)
    if done.returncode != 0:
        raise SystemExit(f"{task} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def libffm_copy(train: Path) -> Path:
    """The training rows as libffm (field = the id's position in its row), cached."""
    path = train.with_suffix(".libffm")
    if not path.exists():
        tmp = path.with_suffix(".partial")
        with open(train) as f, open(tmp, "w") as out:
            for line in f:
                label, *tokens = line.split()
                out.write(" ".join([label, *(f"{n}:{t}" for n, t in enumerate(tokens))]) + "\n")
        tmp.rename(path)
    return path


def ffm_data() -> tuple[Path, Path, int]:
    """Train and test libffm files sampled from a planted field-aware FM (FFM_ROWS rows and a
    tenth as many, FFM_FIELDS one-hot fields of FFM_FIELD_SIZE Zipf ids), cached."""
    from fmkit.models.fm.planted import planted_ctr

    stem = CACHE / f"ffm-{FFM_ROWS}x{FFM_FIELDS}"
    paths = stem.with_suffix(".libffm"), stem.with_suffix(".test.libffm")
    if not all(p.exists() for p in paths):
        CACHE.mkdir(exist_ok=True)
        data = planted_ctr(FFM_ROWS * 11 // 10, [FFM_FIELD_SIZE] * FFM_FIELDS, num_factors=4,
                           factor_sigma=0.3, field_aware=True, seed=5)
        for path, part in zip(paths, data.split(FFM_ROWS)):
            tmp = path.with_suffix(".partial")
            tmp.write_text("\n".join(part.libffm_lines()) + "\n")
            tmp.rename(path)
    return paths[0], paths[1], FFM_FIELDS * FFM_FIELD_SIZE


def a9a_copy() -> tuple[Path, Path, int]:
    """a9a's train and test files copied under benchmarks/.cache (xLearn writes its binary
    cache beside its input, which must not land in ../shared/data), and its feature count."""
    import shutil

    paths = []
    for name in ("a9a", "a9a.t"):
        if not (A9A / name).is_file():
            raise SystemExit(f"{A9A / name} is missing: the a9a rows need ../shared/data")
        copy = CACHE / name
        if not copy.exists():
            shutil.copyfile(A9A / name, copy)
        paths.append(copy)
    return paths[0], paths[1], 124


def repeated(train: Path, times: int) -> Path:
    """The training file written ``times`` over (10 x 1M rows = 10M rows), cached."""
    path = train.with_name(f"{train.stem}-x{times}.libsvm")
    if not path.exists():
        tmp = path.with_suffix(".partial")
        with open(tmp, "wb") as out:
            for _ in range(times):
                with open(train, "rb") as f:
                    while chunk := f.read(1 << 24):
                        out.write(chunk)
        tmp.rename(path)
    return path


def memory_rows(train: Path, features: int, k: int) -> None:
    """Peak RSS of ``fmkit train`` (the CLI, streaming the file) on 1M and 10M rows, against
    the bound 1.5 x (model + optimizer state) + 200 MB."""
    print("\nmemory: fmkit train --train FILE (streamed, 1 epoch), peak RSS of the process")
    print(f"{'optimizer, rows':<40}{'rows/s':>11}{'peak RSS MiB':>13}{'model+state MiB':>16}"
          f"{'bound MiB':>10}")
    for optimizer, batch, state_blocks in (("sgd", 1, 1), ("adam", 1000, 3)):
        # the training table pads Adam's 3 x (k+1) columns to whole cache lines
        columns = (k + 1) * state_blocks
        columns = -(-columns // 16) * 16 if -(-columns // 16) * 16 <= 1.25 * columns else columns
        model_mib = features * columns * 4 / 2**20
        runs = (("warm-up", train.with_suffix(".test.libsvm")), ("1M", train),
                ("10M", repeated(train, 10)))
        for label, path in runs:  # the warm-up loads (or compiles) the cached kernels
            command = [sys.executable, "-c", CLI_WITH_PEAK, "train", "--train", str(path),
                       "--model-dir", str(CACHE / "memory-model"), "--index-base", "0",
                       "--quiet", f"feature_dim={features}", f"num_factors={k}",
                       "predictor_type=binary_classifier", f"optimizer={optimizer}",
                       f"mini_batch_size={batch}", "linear_lr=0.01", "factors_lr=0.01"]
            started = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True)
            seconds = time.perf_counter() - started
            if done.returncode != 0:
                raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
            peak = json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_mib"]
            if label == "warm-up":
                continue
            rows = 10_000_000 if label == "10M" else 1_000_000
            print(f"{optimizer + ' batch ' + str(batch) + ', ' + label + ' rows':<40}"
                  f"{rows / seconds:>11,.0f}{peak:>13,.0f}{model_mib:>16,.0f}"
                  f"{1.5 * model_mib + 200:>10,.0f}", flush=True)


def quality(out: Path, test: Path, features: int) -> tuple[float, float] | None:
    """Test AUC and log loss of the probabilities a task wrote (None if it wrote none)."""
    import numpy as np

    from fmkit.data.sources import FileSource
    from fmkit.models import metrics

    path = out if out.exists() else out.with_suffix(".npy")
    if not path.exists() or path.stat().st_size == 0:
        return None
    p = np.load(path) if path.suffix == ".npy" else np.loadtxt(path)
    labels = np.concatenate([b.labels for b in
                             FileSource(test, "auto", features, 0, labels="binary").blocks()])
    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    return metrics.auc(labels, p), metrics.log_loss_from_logits(labels, np.log(p / (1 - p)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=1_000_000)
    parser.add_argument("-k", type=int, default=8)
    parser.add_argument("--no-peers", action="store_true", help="fmkit rows only")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of each fmkit and xLearn row; the fastest is reported")
    parser.add_argument("--only", help="run only the rows whose label contains this text")
    parser.add_argument("--memory", action="store_true",
                        help="also train from 1M- and 10M-row files and report peak RSS")
    args = parser.parse_args()
    started = time.perf_counter()
    train, test = make_data(args.rows, 39, args.features)
    print(f"data: {train.name} ({train.stat().st_size / 2**20:.0f} MiB, {args.rows} rows; "
          f"test {args.rows // 10} rows), 39 fields, {args.features} features, k={args.k}, "
          f"1 epoch; prepared in {time.perf_counter() - started:.1f} s; fmkit and xLearn rows: "
          f"fastest of {args.repeat} runs")
    rows = [r for r in ROWS if not (args.no_peers and r[1] == "peer")
            and (not args.only or args.only in r[0])]
    if any(r[1] == "peer" for r in rows):
        ensure_peers()
    results: dict[str, dict] = {}
    oracle = quality(train.with_suffix(".oracle.npy"), test, args.features)
    print(f"oracle (true probabilities): test AUC {oracle[0]:.4f}, log loss {oracle[1]:.4f}\n")
    header = (f"{'implementation':<52}{'rows/s':>11}{'seconds':>9}{'peak RSS MiB':>13}"
              f"{'test AUC':>9}{'logloss':>8}  ratio")
    print(header)
    print("-" * len(header))
    for label, runner, task, options, compare in rows:
        out = CACHE / f"out-{len(results)}.txt"
        for stale in (out, out.with_suffix(".npy")):
            stale.unlink(missing_ok=True)
        data = {"a9a": a9a_copy, "ffm": ffm_data,
                "libffm": lambda: (libffm_copy(train), test, args.features)}.get(
            options.get("data"), lambda: (train, test, args.features))()
        repeats = args.repeat if runner == "fmkit" or task.startswith("xlearn") else 1
        r = min((run(runner, task, options, *data, args.k, out) for _ in range(repeats)),
                key=lambda done: done["seconds"] / done["rows"])
        r["rate"] = r["rows"] / r["seconds"]
        results[label] = r
        scored = quality(out, data[1], data[2])
        auc, loss = (f"{scored[0]:.4f}", f"{scored[1]:.4f}") if scored else ("", "")
        ratio = ""
        if compare in results:
            ratio = f"{r['rate'] / results[compare]['rate']:.2f}x {compare}"
        print(f"{label:<52}{r['rate']:>11,.0f}{r['seconds']:>9.2f}{r['peak_rss_mib']:>13,.0f}"
              f"{auc:>9}{loss:>8}  {ratio}", flush=True)
    if args.memory:
        memory_rows(train, args.features, args.k)


if __name__ == "__main__":
    main()
