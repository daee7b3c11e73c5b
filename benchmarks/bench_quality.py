"""Quality without hand-tuning: fmkit's defaults and ``fmkit tune`` against the best tuned peers.

    python benchmarks/bench_quality.py [--trials 50] [--jobs 2] [--only a9a]

The protocol of issue 16, on a9a, MovieLens-100k ``ua`` as regression (RMSE) and as binary
classification (rating >= 4, AUC):

* validation = the last 10% of each training file's rows; every choice is made on it;
* test (a9a.t, ua.test) is never used for a choice;
* refit = the chosen settings (with the chosen epoch count) retrained on the whole training file;
* metrics are computed here with scikit-learn from the predictions ``fmkit predict`` writes.

Rows: "defaults" are SageMaker's defaults plus the required hyperparameters (``num_factors`` 8
for a9a, 16 for MovieLens, the values a user first tries), with 1 epoch (SageMaker's default) and
with up to 50 epochs stopped early on validation; "tune" is ``fmkit tune --trials N``; "mcmc"
is ``optimizer=mcmc`` (Gibbs sampling, libFM's MCMC) with k=8 and nothing else set, and "tune
mcmc" the same search with ``optimizer=mcmc`` fixed (it searches k and the factors' start). The
peers' figures are the best tuned peer's refit of the issue's run of the same protocol (a
30-cell grid per peer), quoted. The peers are also re-run here under the protocol, beside
fmkit's rows (``--no-peers`` skips them): xLearn's FM on a9a and MovieLens binary
(``peer_tasks.xlearn_protocol``, in the peers' environment of ``bench_fm.py``) and the
MovieLens regression peer, "PyTorch FM, Adam + L2", as a plain PyTorch loop.

MovieLens files are built from ``../shared/data/movielens_100k`` into ``benchmarks/.cache``
(one-hot user and item, libsvm).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import mean_squared_error, roc_auc_score

from fmkit.models.fm.hyperparameters import MCMC_EPOCHS

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
CACHE = HERE / ".cache" / "quality"
FMKIT = str(Path(sys.executable).parent / "fmkit")

MCMC_TRIALS = 20  # optimizer=mcmc searches two settings (num_factors, factors_init_sigma)

# issue 16's table: the best tuned peer's refit figure on each split
PEERS = {"a9a": (0.9041, "xLearn FM, instance norm on"),
         "ml_rmse": (0.9361, "PyTorch FM, Adam + L2"),
         "ml_binary": (0.7699, "xLearn FM")}


def _movielens(split: str, out: Path, binary: bool) -> Path:
    if not out.exists():
        rows = np.loadtxt(SHARED / "movielens_100k" / split, dtype=np.int64)
        labels = (rows[:, 2] >= 4).astype(int) if binary else rows[:, 2]
        out.write_text("".join(f"{y} {u - 1}:1 {943 + i - 1}:1\n"
                               for y, u, i in zip(labels, rows[:, 0], rows[:, 1])))
    return out


def splits() -> dict[str, dict]:
    if not SHARED.is_dir():
        sys.exit(f"bench_quality: {SHARED} is missing (the shared datasets)")
    CACHE.mkdir(parents=True, exist_ok=True)
    ml = {binary: (_movielens("ua.base", CACHE / f"ua.base.{binary}.libsvm", binary),
                   _movielens("ua.test", CACHE / f"ua.test.{binary}.libsvm", binary))
          for binary in (False, True)}
    return {
        "a9a": dict(train=SHARED / "a9a_libsvm" / "a9a", test=SHARED / "a9a_libsvm" / "a9a.t",
                    hp=["feature_dim=123", "predictor_type=binary_classifier"], k=8,
                    objective="validation:auc", key="auc"),
        "ml_rmse": dict(train=ml[False][0], test=ml[False][1],
                        hp=["feature_dim=2625", "predictor_type=regressor"], k=16,
                        objective="validation:rmse", key="rmse"),
        "ml_binary": dict(train=ml[True][0], test=ml[True][1],
                          hp=["feature_dim=2625", "predictor_type=binary_classifier"], k=16,
                          objective="validation:auc", key="auc"),
    }


def torch_fm_peer(split: dict, epochs: int = 20) -> dict:
    """The MovieLens regression peer re-run under the protocol: a PyTorch FM (bias, linear
    and factor embeddings; the bias started at the mean rating, factors N(0, 0.01)) trained by
    Adam with coupled L2 (``weight_decay``) at batch 256, a 30-cell grid (rates 1e-3, 3e-3,
    1e-2; decay 0, 1e-5, 1e-4, 1e-3, 1e-2; 8 or 16 factors), each cell's epoch and the cell
    chosen on validation RMSE, the choice refit on the whole training file."""
    import itertools

    import torch

    torch.set_num_threads(1)

    def read(path: Path) -> tuple[np.ndarray, np.ndarray]:
        rows = [line.split() for line in path.read_text().splitlines()]
        ids = np.array([[int(t.split(":")[0]) for t in row[1:]] for row in rows], np.int64)
        return ids, np.array([float(row[0]) for row in rows], np.float32)

    X, y = read(split["train"])
    X_test, y_test = read(split["test"])
    cut = int(len(y) * 0.9)

    def fit(X_fit, y_fit, X_eval, y_eval, lr, decay, k, epochs) -> list[float]:
        torch.manual_seed(0)
        w, V = torch.nn.Embedding(2625, 1), torch.nn.Embedding(2625, k)
        torch.nn.init.zeros_(w.weight)
        torch.nn.init.normal_(V.weight, std=0.01)
        b = torch.nn.Parameter(torch.full((1,), float(y_fit.mean())))
        optimizer = torch.optim.Adam([b, w.weight, V.weight], lr=lr, weight_decay=decay)

        def forward(ids):
            v = V(ids)
            return b + w(ids).sum((1, 2)) + 0.5 * (v.sum(1) ** 2 - (v ** 2).sum(1)).sum(1)

        ids, labels = torch.from_numpy(X_fit), torch.from_numpy(y_fit)
        order, history = np.random.default_rng(0), []
        for _ in range(epochs):
            perm = torch.from_numpy(order.permutation(len(labels)))
            for start in range(0, len(perm), 256):
                rows = perm[start:start + 256]
                optimizer.zero_grad()
                ((forward(ids[rows]) - labels[rows]) ** 2).mean().backward()
                optimizer.step()
            with torch.no_grad():
                scored = forward(torch.from_numpy(X_eval)).numpy()
            history.append(float(np.sqrt(mean_squared_error(y_eval, scored))))
        return history

    best = None
    for lr, decay, k in itertools.product([1e-3, 3e-3, 1e-2], [0, 1e-5, 1e-4, 1e-3, 1e-2],
                                          [8, 16]):
        history = fit(X[:cut], y[:cut], X[cut:], y[cut:], lr, decay, k, epochs)
        epoch = int(np.argmin(history)) + 1
        if best is None or history[epoch - 1] < best[0]:
            best = (history[epoch - 1], lr, decay, k, epoch)
    validation, lr, decay, k, epoch = best
    refit = fit(X, y, X_test, y_test, lr, decay, k, epoch)
    chosen = fit(X[:cut], y[:cut], X_test, y_test, lr, decay, k, epoch)
    return {"validation": validation, "test": chosen[-1], "refit": refit[-1], "epoch": epoch,
            "settings": {"lr": lr, "weight_decay": decay, "k": k}}


def xlearn_peer(split: dict, work: Path) -> dict:
    """xLearn's FM under the protocol (:func:`peer_tasks.xlearn_protocol`: a 32-cell grid
    chosen on the last 10% of the training file, refit on all of it), its test AUC computed
    here."""
    from bench_fm import PEER_PYTHON, ensure_peers

    ensure_peers()
    out = work / "xlearn.out"
    done = subprocess.run([str(PEER_PYTHON), str(HERE / "peer_tasks.py"), "xlearn_protocol",
                           str(split["train"]), str(split["test"]), str(out)],
                          capture_output=True, text=True,
                          env={**os.environ, "USER": os.environ.get("USER") or "bench"})
    if done.returncode != 0:
        raise SystemExit(f"xlearn_protocol failed:\n{done.stderr[-3000:]}")
    chosen = json.loads(done.stdout.strip().splitlines()[-1])
    refit = roc_auc_score(_labels(split["test"]) > 0, np.loadtxt(out))
    return {"validation": chosen["validation"], "test": float("nan"), "refit": refit,
            "epoch": chosen["epoch"], "settings": chosen["settings"]}


def fastfm_mcmc_peer(split: dict, work: Path) -> dict:
    """fastFM's MCMC under the protocol (:func:`peer_tasks.fastfm_mcmc_protocol`), the peer
    that samples as ``optimizer=mcmc`` does; its test metric computed here."""
    from bench_fm import PEER_PYTHON, ensure_peers

    ensure_peers()
    out = work / "fastfm.out"
    kind = "binary" if split["key"] == "auc" else "regression"
    done = subprocess.run([str(PEER_PYTHON), str(HERE / "peer_tasks.py"),
                           "fastfm_mcmc_protocol", str(split["train"]), str(split["test"]),
                           str(out), kind, str(MCMC_EPOCHS)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"fastfm_mcmc_protocol failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"validation": result["validation"], "test": float("nan"),
            "refit": metric(split["test"], np.loadtxt(out), split["key"]), "epoch": MCMC_EPOCHS}


def _run(*args) -> None:
    done = subprocess.run([FMKIT, *map(str, args)], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"bench_quality: fmkit {' '.join(map(str, args[:3]))} failed:\n{done.stderr}")


def _labels(path: Path) -> np.ndarray:
    return np.array([float(line.split(None, 1)[0]) for line in path.read_text().splitlines()])


def metric(data: Path, scores: np.ndarray, key: str) -> float:
    """``key`` (``auc`` or ``rmse``) of ``scores`` against ``data``'s labels, by
    scikit-learn."""
    y = _labels(data)
    if key == "auc":
        return float(roc_auc_score(y > 0, scores))
    return float(np.sqrt(mean_squared_error(y, scores)))


def _score(model_dir: Path, data: Path, key: str) -> float:
    """The model's ``key`` on ``data``, from ``fmkit predict``'s output."""
    out = model_dir.parent / f"{model_dir.name}.predictions.jsonl"
    _run("predict", "--quiet", "--model-dir", model_dir, "--data", data, "--output", out)
    scores = np.array([json.loads(line)["score"] for line in out.read_text().splitlines()])
    return metric(data, scores, key)


def _holdout(train: Path, work: Path) -> tuple[Path, Path]:
    """The training file's first 90% and last 10% of rows."""
    lines = Path(train).read_text().splitlines(True)
    cut = len(lines) - len(lines) // 10
    head, tail = work / "train90.libsvm", work / "validation10.libsvm"
    head.write_text("".join(lines[:cut]))
    tail.write_text("".join(lines[cut:]))
    return head, tail


def defaults(name: str, split: dict, work: Path, epochs: int) -> dict:
    head, tail = _holdout(split["train"], work)
    hp = [*split["hp"], f"num_factors={split['k']}", f"epochs={epochs}"]
    chosen = work / f"defaults{epochs}"
    _run("train", "--quiet", "--train", head, "--validation", tail, "--model-dir", chosen, *hp)
    metrics = json.loads((chosen / "metrics.json").read_text())
    best = metrics["validation"]  # the kept epoch's, as early stopping restored it
    history = metrics["train"]
    better = max if split["key"] == "auc" else min
    epoch = better(history, key=lambda h: h["validation"][split["key"]])["epoch"]
    refit = work / f"defaults{epochs}-refit"
    _run("train", "--quiet", "--train", split["train"], "--model-dir", refit, *split["hp"],
         f"num_factors={split['k']}", f"epochs={epoch}")
    return {"validation": best[split["key"]], "test": _score(chosen, split["test"], split["key"]),
            "refit": _score(refit, split["test"], split["key"]), "epoch": epoch}


def mcmc(name: str, split: dict, work: Path) -> dict:
    """``optimizer=mcmc`` with k=8 and nothing else set (MCMC_EPOCHS sweeps): no choice is made, so
    validation is only reported (the model trained on the first 90% scores the last 10%) and
    the refit is the same settings on the whole file."""
    head, tail = _holdout(split["train"], work)
    hp = [*split["hp"], "num_factors=8", "optimizer=mcmc"]
    chosen, refit = work / "mcmc", work / "mcmc-refit"
    _run("train", "--quiet", "--train", head, "--model-dir", chosen, *hp)
    _run("train", "--quiet", "--train", split["train"], "--model-dir", refit, *hp)
    return {"validation": _score(chosen, tail, split["key"]),
            "test": _score(chosen, split["test"], split["key"]),
            "refit": _score(refit, split["test"], split["key"]), "epoch": MCMC_EPOCHS}


def tuned(name: str, split: dict, work: Path, trials: int, jobs: int,
          fixed: tuple[str, ...] = ()) -> dict:
    model = work / f"tuned{len(fixed)}"
    started = time.perf_counter()
    _run("tune", "--quiet", "--train", split["train"], "--validation-fraction", "0.1",
         "--objective", split["objective"], "--trials", trials, "--jobs", jobs,
         "--model-dir", model, *split["hp"], *fixed)
    seconds = time.perf_counter() - started
    best = json.loads((model / "tune" / "best.json").read_text())
    refit = work / f"tuned{len(fixed)}-refit"
    _run("tune", "--quiet", "--train", split["train"], "--validation-fraction", "0.1",
         "--objective", split["objective"], "--trials", trials, "--jobs", jobs,
         "--model-dir", refit, "--refit", *split["hp"], *fixed)
    return {"validation": best["value"], "test": _score(model, split["test"], split["key"]),
            "refit": _score(refit, split["test"], split["key"]), "epoch": best["epoch"],
            "seconds": seconds, "settings": best["settings"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", help="run only the splits whose name contains this")
    parser.add_argument("--no-peers", action="store_true",
                        help="skip re-running the peers (about 3 minutes)")
    args = parser.parse_args()
    import tempfile

    rows = []
    for name, split in splits().items():
        if args.only and args.only not in name:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            results = {"defaults, 1 epoch": defaults(name, split, work, 1),
                       "defaults, <=50 epochs": defaults(name, split, work, 50),
                       f"tune, {args.trials} trials": tuned(name, split, work, args.trials,
                                                           args.jobs),
                       "mcmc, k 8, untuned": mcmc(name, split, work),
                       f"tune mcmc, {MCMC_TRIALS} trials": tuned(
                           name, split, work, min(args.trials, MCMC_TRIALS), args.jobs,
                           ("optimizer=mcmc",))}
            if not args.no_peers and name == "ml_rmse":
                results["peer re-run: PyTorch FM"] = torch_fm_peer(split)
            elif not args.no_peers:
                results["peer re-run: xLearn FM"] = xlearn_peer(split, work)
            if not args.no_peers:
                results[f"peer: fastFM MCMC, {MCMC_EPOCHS} sweeps"] = fastfm_mcmc_peer(split, work)
        target, peer = PEERS[name]
        for label, r in results.items():
            met = r["refit"] >= target if split["key"] == "auc" else r["refit"] <= target
            rows.append((name, split["key"], label, r, target, peer, met))
            print(f"{name:<10} {label:<23} validation {r['validation']:.4f}  test "
                  f"{r['test']:.4f}  refit {r['refit']:.4f}  (epoch {r['epoch']}"
                  + (f", tune {r['seconds']:.0f} s" if "seconds" in r else "") + ")  "
                  f"best peer refit {target:.4f} ({peer}): "
                  f"{'beaten' if met else 'not beaten'}", flush=True)
            if "settings" in r:
                print(f"{'':<10} chosen: {json.dumps(r['settings'])}", flush=True)


if __name__ == "__main__":
    main()
