"""FuxiCTR's DeepFM beside fmkit's on one FuxiCTR experiment: test AUC, time and memory.

    python benchmarks/bench_fuxictr.py [--epochs 20]

MovieLens 100k as FuxiCTR data: ``u.data`` joined with ``u.user`` and ``u.item`` (user, item,
age, gender, occupation, zip, and the genres as a ``^``-joined sequence), label ``rating >=
4``; the first 90% of ``ua.base``'s rows train, its last 10% validate (early stopping on AUC,
patience 2), ``ua.test`` tests. One FuxiCTR configuration directory holds two experiments
(the model zoo's DeepFM settings, without and with an embedding regularizer); FuxiCTR 2.3.10,
in its own venv (``benchmarks/.peers/fuxictr``, pinned by ``fuxictr-constraints.txt``), runs
them as its ``run_expid.py`` does (``peer_fuxictr.py``), and fmkit as ``fmkit train --config
DIR --expid`` does. Both predict ``ua.test``; scikit-learn scores both.

Prints per run: test AUC and log loss, epochs run, wall seconds from start to the trained
model (FuxiCTR's preprocessing and fmkit's conversion included), training rows x epochs per
second of those, peak RSS; and fmkit's differences and ratios.
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

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "movielens_100k"
VENV = HERE / ".peers" / "fuxictr"
CONSTRAINTS = HERE / "fuxictr-constraints.txt"
GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
          "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
          "Romance", "Sci-Fi", "Thriller", "War", "Western")
COLUMNS = ("label", "user_id", "item_id", "age", "gender", "occupation", "zip", "genres")


def ensure_fuxictr() -> Path:
    """FuxiCTR's own venv (its numpy 2 and pandas 3 cannot share the other peers'), once;
    polars below 2, whose ``scan_csv`` still takes the ``dtypes`` FuxiCTR 2.3.10 passes."""
    python = VENV / "bin" / "python"
    marker = VENV / "installed"
    if not (marker.exists() and marker.read_text() == CONSTRAINTS.read_text()):
        print("installing FuxiCTR into benchmarks/.peers/fuxictr (once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", "-c", str(CONSTRAINTS),
                        "torch==2.13.0", "fuxictr", "polars"], check=True)
        marker.write_text(CONSTRAINTS.read_text())
    return python


def write_data(work: Path) -> None:
    """train.csv, valid.csv (the last 10% of ua.base's rows) and test.csv (ua.test)."""
    users = {}
    for line in (DATA / "u.user").read_text().splitlines():
        user, age, gender, occupation, zip_code = line.split("|")
        users[user] = (age, gender, occupation, zip_code)
    items = {}
    for line in (DATA / "u.item").read_text(encoding="latin-1").splitlines():
        fields = line.split("|")
        items[fields[0]] = "^".join(g for g, flag in zip(GENRES, fields[5:]) if flag == "1")

    def rows(name: str) -> list[str]:
        out = []
        for line in (DATA / name).read_text().splitlines():
            user, item, rating, _ = line.split("\t")
            out.append(",".join([str(int(int(rating) >= 4)), user, item, *users[user],
                                 items[item]]))
        return out

    base, header = rows("ua.base"), ",".join(COLUMNS)
    cut = len(base) - len(base) // 10
    for name, part in (("train", base[:cut]), ("valid", base[cut:]), ("test", rows("ua.test"))):
        (work / f"{name}.csv").write_text("\n".join([header, *part]) + "\n")


def write_config(work: Path, epochs: int) -> Path:
    config = work / "config"
    config.mkdir()
    dataset = {"ml100k": {
        "data_root": str(work / "fuxictr_data"), "data_format": "csv",
        "train_data": str(work / "train.csv"), "valid_data": str(work / "valid.csv"),
        "test_data": str(work / "test.csv"), "min_categr_count": 1,
        "feature_cols": [
            {"name": ["user_id", "item_id", "age", "gender", "occupation", "zip"],
             "active": True, "dtype": "str", "type": "categorical"},
            {"name": "genres", "active": True, "dtype": "str", "type": "sequence",
             "splitter": "^", "max_len": 6}],
        "label_col": {"name": "label", "dtype": "float"}}}
    deepfm = {"model": "DeepFM", "dataset_id": "ml100k", "loss": "binary_crossentropy",
              "metrics": ["logloss", "AUC"], "task": "binary_classification",
              "optimizer": "adam", "hidden_units": [64, 32], "hidden_activations": "relu",
              "net_regularizer": 0, "embedding_regularizer": 0, "learning_rate": 1.0e-3,
              "batch_norm": False, "net_dropout": 0, "batch_size": 256, "embedding_dim": 16,
              "epochs": epochs, "shuffle": True, "seed": 2019, "monitor": "AUC",
              "monitor_mode": "max"}
    models = {"Base": {"model_root": str(work / "checkpoints"), "num_workers": 1, "verbose": 0,
                       "early_stop_patience": 2, "pickle_feature_encoder": True,
                       "save_best_only": True, "eval_steps": None, "debug_mode": False},
              "DeepFM_ml": deepfm,
              "DeepFM_ml_reg": {**deepfm, "embedding_regularizer": 1.0e-5}}
    (config / "dataset_config.yaml").write_text(yaml.safe_dump(dataset))
    (config / "model_config.yaml").write_text(yaml.safe_dump(models))
    return config


def timed(command: list[str], cwd: Path) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB, GNU time) and standard output of a command run in ``cwd``
    (where run_expid.py, and fmkit train --expid, add their results file)."""
    started = time.perf_counter()
    run = subprocess.run(["/usr/bin/time", "-f", "%M", *command], capture_output=True,
                         text=True, check=False, cwd=cwd)
    if run.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{run.stderr[-3000:]}")
    return (time.perf_counter() - started, int(run.stderr.strip().splitlines()[-1]) / 1024,
            run.stdout)


def scored(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    from sklearn.metrics import log_loss, roc_auc_score

    return roc_auc_score(labels, scores), log_loss(labels, np.clip(scores, 1e-7, 1 - 1e-7))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    python = ensure_fuxictr()
    with tempfile.TemporaryDirectory(prefix="bench-fuxictr-") as tmp:
        work = Path(tmp)
        write_data(work)
        config = write_config(work, args.epochs)
        labels = np.loadtxt(work / "test.csv", delimiter=",", skiprows=1, usecols=0,
                            dtype=str).astype(int)
        counts = [(work / f"{name}.csv").read_text().count("\n") - 1
                  for name in ("train", "valid")]
        print(f"MovieLens 100k ua: {counts[0]} train, {counts[1]} validation, {labels.size} "
              f"test rows; {os.cpu_count()} CPUs\n")
        print(f"{'experiment':<16} {'run':<8} {'test AUC':>9} {'log loss':>9} {'epochs':>7} "
              f"{'seconds':>8} {'rows/s':>8} {'peak MB':>8}")
        for expid in ("DeepFM_ml", "DeepFM_ml_reg"):
            out = work / f"{expid}.npy"
            seconds, peak, stdout = timed([str(python), str(HERE / "peer_fuxictr.py"),
                                           str(config), expid, str(out)], work)
            theirs = json.loads(stdout.strip().splitlines()[-1])
            fuxi = (*scored(labels, np.load(out)), theirs["epochs"], theirs["seconds"], peak)
            model = work / f"fmkit-{expid}"
            seconds, peak, _ = timed([sys.executable, "-m", "fmkit", "train", "--quiet",
                                      "--config", str(config), "--expid", expid,
                                      "--model-dir", str(model)], work)
            history = json.loads((model / "metrics.json").read_text())["train"]
            subprocess.run([sys.executable, "-m", "fmkit", "predict", "--quiet", "--model-dir",
                            str(model), "--data", str(work / "test.csv"), "--output",
                            str(work / f"{expid}.jsonl")], check=True)
            scores = np.array([json.loads(line)["score"] for line in
                               (work / f"{expid}.jsonl").read_text().splitlines()])
            ours = (*scored(labels, scores), len(history), seconds, peak)
            speeds = [counts[0] * row[2] / row[3] for row in (fuxi, ours)]
            for name, row, speed in (("FuxiCTR", fuxi, speeds[0]), ("fmkit", ours, speeds[1])):
                print(f"{expid:<16} {name:<8} {row[0]:>9.4f} {row[1]:>9.4f} {row[2]:>7} "
                      f"{row[3]:>8.1f} {speed:>8.0f} {row[4]:>8.0f}")
            print(f"{expid:<16} {'ratio':<8} {ours[0] - fuxi[0]:>+9.4f} "
                  f"{ours[1] - fuxi[1]:>+9.4f} {'':>7} {fuxi[3] / ours[3]:>7.2f}x "
                  f"{speeds[1] / speeds[0]:>7.2f}x {ours[4] / fuxi[4]:>7.2f}x")


if __name__ == "__main__":
    main()
