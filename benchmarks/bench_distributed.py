"""The cost of scaling out: FM training with 1 and 2 processes (torchrun, Gloo) on this machine.

    python benchmarks/bench_distributed.py [--batch 1000] [--epochs 1]

Trains ``fmkit train`` on the planted 1,000,000-row CTR file of bench_fm.py (generated once in
benchmarks/.cache) with mini-batches of ``--batch`` rows (SageMaker's default 1000): once as
one process using both cores, once as one process on one core, and once as ``--nproc 2`` (two
processes of one core each, gradients combined every step over Gloo). Prints rows/s, the
test AUC of each model and the ratios, so the price of combining gradients through
collectives instead of shared memory is visible. Peak RSS is that of the largest process of
the run (GNU time's maximum resident set size).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_fm import CACHE, make_data  # noqa: E402


def run(label: str, train: Path, test: Path, extra: list[str], env: dict, batch: int,
        epochs: int) -> dict:
    model_dir = CACHE / f"distributed-{len(label)}"
    command = [sys.executable, "-m", "fmkit", "train", "--train", str(train), "--test",
               str(test), "--model-dir", str(model_dir), "--index-base", "0", *extra,
               "feature_dim=1000000", "num_factors=8", "predictor_type=binary_classifier",
               f"epochs={epochs}", f"mini_batch_size={batch}", "optimizer=adam",
               "linear_lr=0.002", "factors_lr=0.002", "bias_lr=0.002"]
    started = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-f", "%M", *command], capture_output=True,
                          text=True, env={**os.environ, **env})
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{label} failed:\n{done.stderr[-3000:]}")
    rates = [float(r) for r in re.findall(r"over \d+ rows \((\d+) rows/s\)", done.stderr)]
    metrics = json.loads((model_dir / "metrics.json").read_text())["test"]
    peak_kib = int(done.stderr.strip().splitlines()[-1])
    return {"label": label, "rate": sum(rates) / len(rates), "wall": wall,
            "auc": metrics["auc"], "peak_mib": peak_kib / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    train, test = make_data(1_000_000, 39, 1_000_000)
    print(f"data: {train.name}, 1,000,000 rows, 39 fields, 10^6 features; FM k=8, Adam, "
          f"batch {args.batch}, {args.epochs} epoch(s), {os.cpu_count()} cores\n")
    runs = [
        run("1 process, 2 threads", train, test, [], {"NUMBA_NUM_THREADS": "2"}, args.batch,
            args.epochs),
        run("1 process, 1 thread", train, test, [], {"NUMBA_NUM_THREADS": "1"}, args.batch,
            args.epochs),
        run("2 processes x 1 thread (--nproc 2, Gloo)", train, test, ["--nproc", "2"], {},
            args.batch, args.epochs),
    ]
    header = f"{'run':<44}{'train rows/s':>13}{'wall s':>8}{'peak MiB':>10}{'test AUC':>9}"
    print(header)
    print("-" * len(header))
    for r in runs:
        print(f"{r['label']:<44}{r['rate']:>13,.0f}{r['wall']:>8.1f}{r['peak_mib']:>10,.0f}"
              f"{r['auc']:>9.4f}")
    base, single, two = runs
    print(f"\n2 processes / 1 process on 1 thread: {two['rate'] / single['rate']:.2f}x; "
          f"2 processes / 1 process on 2 threads: {two['rate'] / base['rate']:.2f}x")


if __name__ == "__main__":
    main()
