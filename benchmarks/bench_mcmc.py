"""Gibbs sampling (``optimizer=mcmc``) against fastFM's MCMC (C), and alternating least
squares (``optimizer=als``) against fastFM's ALS, one core each.

    python benchmarks/bench_mcmc.py [--sweeps 100] [--repeat 3] [--method mcmc|als|both]

On a9a (classification, 32,561 rows) and MovieLens-100k ``ua`` (regression, 90,570 rows), k 8:
each implementation samples ``--sweeps`` sweeps on the training file and scores the test file
(fastFM's MCMC predicts while it samples; fmkit trains, then predicts with the samples' mean;
ALS: both with fmkit's defaults for it, libFM's '-regular 0,0,10', init_stdev 0.1; fastFM's
linear weight 1e-9, not 0, on which it stops).
Prints rows x sweeps per second of the sampling, the whole fit's seconds, peak RSS of the
process, and the test metric computed here with scikit-learn, with fmkit's ratios to fastFM.
Each run is a process of its own; the fastest of ``--repeat`` is kept (noise only slows).
fmkit's first call compiles its sweep: it is made once before the timed one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_fm import PEER_PYTHON, ensure_peers  # noqa: E402
from bench_quality import SHARED, metric, splits  # noqa: E402

# prints {"seconds", "peak_mib"} and writes the test predictions to argv[3], as
# peer_tasks.fastfm_timed does for fastFM
FMKIT = """
import json, re, sys, time
from pathlib import Path
import numpy as np
from sklearn.datasets import load_svmlight_files
from fmkit import FMClassifier, FMRegressor
X, y, Xt, yt = load_svmlight_files([sys.argv[1], sys.argv[2]])
binary, sweeps, method = sys.argv[4] == "binary", int(sys.argv[5]), sys.argv[6]
kind = FMClassifier if binary else FMRegressor
y = (y > 0).astype(int) if binary else y
kind(num_factors=8, optimizer=method, epochs=2).fit(X[:100], y[:100])  # compiles the sweep
started = time.perf_counter()
model = kind(num_factors=8, optimizer=method, epochs=sweeps, early_stopping_patience=0).fit(X, y)
seconds = time.perf_counter() - started
np.savetxt(sys.argv[3], model.predict_proba(Xt)[:, 1] if binary else model.predict(Xt))
status = Path("/proc/self/status").read_text()
peak = int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) / 1024
print(json.dumps({"seconds": seconds, "peak_mib": peak}))
"""


def measure(command: list[str], split: dict, kind: str, sweeps: int, repeat: int,
            *extra: str) -> dict:
    """The fastest of ``repeat`` runs of ``command TRAIN TEST OUT KIND SWEEPS [METHOD]``, with
    the test metric of its scores."""
    best = None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "scores"
        for _ in range(repeat):
            done = subprocess.run([*command, str(split["train"]), str(split["test"]), str(out),
                                   kind, str(sweeps), *extra], capture_output=True, text=True,
                                  env={**os.environ, "NUMBA_NUM_THREADS": "1",
                                       "OMP_NUM_THREADS": "1"})
            if done.returncode:
                raise SystemExit(done.stderr[-3000:])
            run = json.loads(done.stdout.strip().splitlines()[-1])
            if best is None or run["seconds"] < best["seconds"]:
                best = run
        best["metric"] = metric(split["test"], np.loadtxt(out), split["key"])
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweeps", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--method", choices=("mcmc", "als", "both"), default="both")
    args = parser.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"bench_mcmc: {SHARED} is missing (the shared datasets)")
    ensure_peers()
    print(f"k 8, {args.sweeps} sweeps, 1 thread, fastest of {args.repeat}")
    print(f"{'data':<18}{'run':<18}{'rows x sweeps/s':>16}{'fit s':>8}{'peak MiB':>10}"
          f"{'test':>16}   ratio to fastFM (speed, memory)")
    methods = ("mcmc", "als") if args.method == "both" else (args.method,)
    for method in methods:
        for name, kind in (("a9a", "binary"), ("ml_rmse", "regression")):
            split = splits()[name]
            rows = len(Path(split["train"]).read_bytes().splitlines())
            peer = measure([str(PEER_PYTHON), str(HERE / "peer_tasks.py"), f"fastfm_{method}"],
                           split, kind, args.sweeps, args.repeat)
            mine = measure([sys.executable, "-c", FMKIT], split, kind, args.sweeps, args.repeat,
                           method)
            for label, r in ((f"fastFM {method}", peer), (f"fmkit {method}", mine)):
                rate = rows * args.sweeps / r["seconds"]
                ratio = (f"{peer['seconds'] / r['seconds']:.2f}x, "
                         f"{r['peak_mib'] / peer['peak_mib']:.2f}x") if r is mine else ""
                metric = f"{'AUC' if kind == 'binary' else 'RMSE'} {r['metric']:.4f}"
                print(f"{name:<18}{label:<18}{rate:>16,.0f}{r['seconds']:>8.2f}"
                      f"{r['peak_mib']:>10.0f}{metric:>16}   {ratio}", flush=True)


if __name__ == "__main__":
    main()
