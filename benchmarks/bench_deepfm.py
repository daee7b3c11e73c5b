"""DeepFM training and prediction: fmkit against DeepCTR-Torch, same data and settings.

    python benchmarks/bench_deepfm.py [--rows 1000000] [--batch 1024] [--threads 2] [--repeat 2]

Generates (once, cached in benchmarks/.cache/) a Criteo-layout TSV — label, I1..I13 counts,
C1..C26 8-hex-digit categories with Zipf-distributed values of 3 to 200,000 distinct values
per column, 10% missing counts, 5% missing categories — with labels drawn from a planted
model, plus a test file a tenth as large. Both implementations train DeepFM with embedding 16,
deep 512-256-128, no final MLP, batch ``--batch``, one epoch, on ``--threads`` threads, each in
its own process (peak RSS = its VmHWM), and score the same test rows with the same AUC code.
Each implementation runs ``--repeat`` times, the three taking turns; the fastest training
and prediction of each are reported (as ``timeit``: this machine's noise only slows a run).

fmkit runs ``examples/deepfm_criteo.yaml`` (hash buckets of 100,000 per column) from the TSV
file: its training and prediction times include reading and encoding the text, and its
prediction scores the saved model loaded from its directory, reading the file a block ahead
as ``fmkit predict`` does, into memory as DeepCTR-Torch's ``predict`` (writing JSON Lines,
``fmkit predict`` takes some 0.9 s more per million rows) (the
model left in the training process scored 69,000 rows/s where the same model loaded scored
82,000 to 87,000; the cause was not found), three times: as the example is (float32), with
TorchEasyRec's ``train_config.mixed_precision: BF16`` (the forward pass in bfloat16; faster
only on CPUs with bfloat16 instructions), trained in float32 but scored in bfloat16
(TorchEasyRec's ``export_config.mixed_precision: BF16``), and trained in float32 but scored
with int8 products in its MLP (fmkit's ``export_config.dense_quantization: INT8``; its
weights in 8 bits on CPUs with VNNI instructions, in 7 elsewhere). DeepCTR-Torch
(installed by bench_fm.py's ``ensure_peers`` into benchmarks/.peers) gets its inputs prepared
as its own Criteo example does (LabelEncoder, MinMaxScaler) before the clock starts.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_fm import CACHE, PEER_PYTHON, ensure_peers  # noqa: E402

EXAMPLE = HERE.parent / "examples" / "deepfm_criteo.yaml"
DEEPCTR = "DeepCTR-Torch 0.3.0 DeepFM (prepared arrays)"
CARDINALITIES = [1000, 500, 200_000, 50_000, 200, 20, 10_000, 500, 3, 30_000, 5000, 100_000,
                 3000, 25, 10_000, 150_000, 10, 5000, 2000, 4, 100_000, 15, 15, 50_000, 80,
                 40_000]

FMKIT_TASK = """
import json, re, sys, time
from pathlib import Path
import numpy as np
from fmkit.models.deepfm import config as configs  # fmkit first, as the CLI: its OpenMP settings
from fmkit.models.deepfm import config_files
from fmkit.data.background import background
from fmkit.jobs.deepfm import train_deepfm
from fmkit.models.base import load_model
import torch
train, test, threads, batch, out, example = sys.argv[1:7]
extra = json.loads(sys.argv[7]) if len(sys.argv) > 7 else []  # more --set overrides
if int(threads):  # 0: fmkit's default
    torch.set_num_threads(int(threads))
config = config_files.load(example, [
    f"train_input_path={json.dumps(train)}", "eval_input_path=",
    f"model_dir={json.dumps(out + '.model')}", "train_config.num_epochs=1",
    f"data_config.batch_size={batch}", "model_config.deepfm.final=null", *extra])
started = time.perf_counter()
model, metrics = train_deepfm(config, progress=False)
train_seconds = time.perf_counter() - started
started = time.perf_counter()
model = load_model(out + ".model")  # as fmkit predict scores: the saved model, loaded,
scores = np.concatenate([p["score"]  # its file read a block ahead, blocks scored at once
                         for p in model.predictions_of(background(model.read(test)))])
predict_seconds = time.perf_counter() - started
np.savetxt(out, scores, fmt="%.6f")
status = open("/proc/self/status").read()
peak = int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) / 1024
print(json.dumps({"rows": metrics["train"][0]["rows"], "train_seconds": train_seconds,
                  "test_rows": len(scores), "predict_seconds": predict_seconds,
                  "peak_rss_mib": peak}))
"""


def make_criteo(rows: int, seed: int = 0) -> tuple[Path, Path]:
    """Train and test TSV files in Criteo's raw layout from one planted model, cached."""
    paths = CACHE / f"criteo-{rows}.tsv", CACHE / f"criteo-{rows}.test.tsv"
    if all(p.exists() for p in paths):
        return paths
    CACHE.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    weights = [rng.normal(0, 0.4, n) for n in CARDINALITIES]
    pair = rng.normal(0, 0.6, (CARDINALITIES[0], CARDINALITIES[4]))
    cdfs = []
    for n in CARDINALITIES:
        w = np.arange(1, n + 1) ** -1.05
        cdfs.append(np.cumsum(w) / w.sum())
    for path, n_rows in zip(paths, (rows, rows // 10)):
        tmp = path.with_suffix(".partial")
        with open(tmp, "w") as f:
            for start in range(0, n_rows, 100_000):
                n = min(100_000, n_rows - start)
                ids = np.column_stack([np.minimum(np.searchsorted(cdf, rng.random(n)), len(cdf) - 1)
                                       for cdf in cdfs])
                counts = rng.geometric(0.05, (n, 13)) - 1
                logit = (-1.2 + sum(weights[j][ids[:, j]] for j in range(26))
                         + pair[ids[:, 0], ids[:, 4]] + 0.2 * (np.log1p(counts[:, 0]) - 2.5))
                labels = rng.random(n) < 1 / (1 + np.exp(-logit))
                count_missing = rng.random((n, 13)) < 0.10
                cat_missing = rng.random((n, 26)) < 0.05
                hexes = (ids * 2654435761 + np.arange(26) * 40503) % (1 << 32)
                lines = []
                for r in range(n):
                    fields = [str(int(labels[r]))]
                    fields += ["" if count_missing[r, j] else str(counts[r, j]) for j in range(13)]
                    fields += ["" if cat_missing[r, j] else f"{hexes[r, j]:08x}"
                               for j in range(26)]
                    lines.append("\t".join(fields))
                f.write("\n".join(lines) + "\n")
        tmp.rename(path)
    return paths


def auc_of(scores_path: Path, test: Path) -> float:
    from fmkit.models import metrics

    with open(test) as f:
        labels = np.array([int(line.split("\t", 1)[0]) for line in f])
    return metrics.auc(labels, np.loadtxt(scores_path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2, help="0: each tool's default")
    parser.add_argument("--no-peers", action="store_true", help="fmkit only")
    parser.add_argument("--repeat", type=int, default=2,
                        help="runs of each implementation, in turns; the fastest training and "
                             "the fastest prediction are reported")
    args = parser.parse_args()
    started = time.perf_counter()
    train, test = make_criteo(args.rows)
    print(f"data: {train.name} ({train.stat().st_size / 2**20:.0f} MiB, {args.rows} rows; test "
          f"{args.rows // 10} rows), 13 counts + 26 categories; prepared in "
          f"{time.perf_counter() - started:.1f} s")
    print(f"DeepFM: embedding 16, deep 512-256-128, batch {args.batch}, 1 epoch, "
          f"{args.threads} threads\n")
    runs = [(label, [sys.executable, "-c", FMKIT_TASK, str(train), str(test), str(args.threads),
                     str(args.batch), str(CACHE / f"deepfm-{name}.txt"), str(EXAMPLE),
                     json.dumps(extra)], CACHE / f"deepfm-{name}.txt")
            for label, name, extra in (
                ("fmkit DeepFM (from the TSV file)", "fmkit", []),
                # TorchEasyRec's train_config.mixed_precision: the forward pass in bfloat16
                ("fmkit DeepFM, mixed_precision: BF16", "fmkit-bf16",
                 ["train_config.mixed_precision=BF16"]),
                # trained in float32, scored in bfloat16 (TorchEasyRec's export_config field)
                ("fmkit DeepFM float32, export BF16", "fmkit-export-bf16",
                 ["export_config.mixed_precision=BF16"]),
                # trained in float32, its MLP scored with int8 products (fmkit's field)
                ("fmkit DeepFM float32, export INT8", "fmkit-export-int8",
                 ["export_config.dense_quantization=INT8"]))]
    if not args.no_peers:
        ensure_peers()
        runs.append((DEEPCTR,
                     [str(PEER_PYTHON), str(HERE / "peer_deepfm.py"), str(train), str(test),
                      str(args.threads), str(args.batch), str(CACHE / "deepfm-deepctr.txt")],
                     CACHE / "deepfm-deepctr.txt"))
    header = (f"{'implementation':<46}{'train rows/s':>13}{'predict rows/s':>15}"
              f"{'peak RSS MiB':>13}{'test AUC':>9}")
    print(header)
    print("-" * len(header))
    results: dict[str, dict] = {}
    for turn in range(args.repeat):  # in turns: the machine's drift reaches every row alike
        for label, command, out in runs:
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"{label} failed:\n{done.stdout[-2000:]}\n"
                                 f"{done.stderr[-4000:]}")
            r = json.loads(done.stdout.strip().splitlines()[-1])
            best = results.setdefault(label, {**r, "train_rate": 0.0, "predict_rate": 0.0})
            best["train_rate"] = max(best["train_rate"], r["rows"] / r["train_seconds"])
            best["predict_rate"] = max(best["predict_rate"],
                                       r["test_rows"] / r["predict_seconds"])
            best["peak_rss_mib"] = max(best["peak_rss_mib"], r["peak_rss_mib"])
            if turn == args.repeat - 1:
                print(f"{label:<46}{best['train_rate']:>13,.0f}{best['predict_rate']:>15,.0f}"
                      f"{best['peak_rss_mib']:>13,.0f}{auc_of(out, test):>9.4f}", flush=True)
    peer = results.pop(DEEPCTR, None)
    if peer is not None:
        print()
        for label, r in results.items():
            print(f"{label} / DeepCTR-Torch: training "
                  f"{r['train_rate'] / peer['train_rate']:.2f}x, prediction "
                  f"{r['predict_rate'] / peer['predict_rate']:.2f}x, peak memory "
                  f"{r['peak_rss_mib'] / peer['peak_rss_mib']:.2f}x")


if __name__ == "__main__":
    main()
