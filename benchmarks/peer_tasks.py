"""One peer measurement per process, run with the peers' own interpreter (benchmarks/.peers).

    python peer_tasks.py TASK TRAIN TEST FEATURES K THREADS EPOCHS OUT ROWS

Prints one JSON object: rows, seconds, peak RSS, and writes the test-set probabilities to OUT
(one per line) so the caller scores every implementation with the same metric code. ``ROWS``
(0: all) limits the training rows for the slow peers. Nothing here imports fmkit.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np


def peak_rss_mib() -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


def count_lines(path: str) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def load(path: str, features: int, rows: int = 0):
    from sklearn.datasets import load_svmlight_file

    X, y = load_svmlight_file(path, n_features=features, zero_based=True, dtype=np.float32)
    if rows:
        X, y = X[:rows], y[:rows]
    return X.tocsr(), y


# xLearn writes a log of every run, by default /tmp/xlearn_log.HOST.USER.TIME.PID_train.*
# (three files a run, never removed): the benchmarks' cache holds it instead
XLEARN_LOG = str(Path(__file__).resolve().parent / ".cache" / "xlearn_log")


def _logged(param: dict) -> dict:
    """An xLearn ``fit`` parameter dictionary with its log in the benchmarks' cache."""
    Path(XLEARN_LOG).parent.mkdir(exist_ok=True)
    return {**param, "log": XLEARN_LOG}


def xlearn_fit(train: str, test: str, k: int, threads: int, epochs: int, out: str, *,
               cold: bool, opt: str = "sgd", ffm: bool = False):
    """xLearn's FM (or with ``ffm`` its FFM) on text files; cold: its binary cache is removed
    first (parse included)."""
    import xlearn as xl

    cache = Path(train + ".bin")
    if cold and cache.exists():
        cache.unlink()
    model = str(Path(out).with_suffix(".xlearn-model"))
    fm = xl.create_ffm() if ffm else xl.create_fm()
    fm.setTrain(train)
    fm.setQuiet()  # no per-epoch loss pass: xLearn's fastest training mode
    param = {"task": "binary", "lr": 0.2, "lambda": 0.00002, "k": k, "epoch": epochs,
             "opt": opt, "nthread": threads, "stop_window": epochs + 1}
    started = time.perf_counter()
    fm.fit(_logged(param), model)
    seconds = time.perf_counter() - started
    fm.setTest(test)
    fm.setSigmoid()
    fm.predict(model, out)
    return seconds


def _xlearn_quiet_fit(fm, param: dict, model: str) -> str:
    """``fm.fit`` with xLearn's C++ output (written to file descriptor 1) captured, without
    its colour codes."""
    import ctypes
    import tempfile

    with tempfile.TemporaryFile() as captured:
        sys.stdout.flush()
        saved = os.dup(1)
        os.dup2(captured.fileno(), 1)
        try:
            fm.fit(param, model)
        finally:
            ctypes.CDLL(None).fflush(None)  # the C library's buffer, before fd 1 goes back
            os.dup2(saved, 1)
            os.close(saved)
        captured.seek(0)
        return re.sub(r"\x1b\[[0-9;]*m", "", captured.read().decode("utf-8", "replace"))


def xlearn_protocol(train: str, test: str, out: str) -> dict:
    """xLearn's FM under issue 16's protocol: the last 10% of ``train``'s lines validate a
    32-cell grid (SGD or AdaGrad; lr 0.05 or 0.2; lambda 2e-5 or 2e-4; k 4 or 8; instance
    normalization on or off), each cell stopped early on validation AUC (stop window 3, at most
    50 epochs); the best cell is refit on all of ``train`` for its best epoch count, and its
    test probabilities are written to ``out``."""
    import itertools
    import tempfile

    import xlearn as xl

    lines = Path(train).read_text().splitlines(True)
    cut = int(len(lines) * 0.9)
    work = Path(tempfile.mkdtemp())
    head, tail = work / "train90", work / "validation10"
    head.write_text("".join(lines[:cut]))
    tail.write_text("".join(lines[cut:]))
    best = None
    for opt, lr, lam, k, norm in itertools.product(["sgd", "adagrad"], [0.05, 0.2], [2e-5, 2e-4],
                                                   [4, 8], [True, False]):
        fm = xl.create_fm()
        fm.setTrain(str(head))
        fm.setValidate(str(tail))
        if not norm:
            fm.disableNorm()
        log = _xlearn_quiet_fit(fm, _logged({"task": "binary", "opt": opt, "lr": lr,
                                             "lambda": lam, "k": k, "epoch": 50,
                                             "metric": "auc", "stop_window": 3,
                                             "nthread": 1}), str(work / "cell.model"))
        # each epoch's line: "[ pct ]  epoch  train-loss  valid-loss  valid-AUC  seconds"
        epochs = [(float(auc), int(epoch)) for epoch, auc in
                  re.findall(r"\]\s+(\d+)\s+\S+\s+\S+\s+(\S+)\s+\S+\s*\n", log)]
        epochs = [(auc, epoch) for auc, epoch in epochs if auc == auc]  # (nan: diverged)
        if not epochs:
            continue
        auc, epoch = max(epochs, key=lambda e: (e[0], -e[1]))  # the first best epoch
        if best is None or auc > best[0]:
            best = (auc, epoch, {"opt": opt, "lr": lr, "lambda": lam, "k": k, "norm": norm})
    auc, epoch, settings = best
    fm = xl.create_fm()
    fm.setTrain(train)
    if not settings["norm"]:
        fm.disableNorm()
    _xlearn_quiet_fit(fm, _logged({"task": "binary", "opt": settings["opt"],
                                   "lr": settings["lr"], "lambda": settings["lambda"],
                                   "k": settings["k"], "epoch": epoch, "nthread": 1,
                                   "stop_window": epoch + 1}), str(work / "refit.model"))
    fm.setTest(test)
    fm.setSigmoid()
    fm.predict(str(work / "refit.model"), out)
    return {"validation": auc, "epoch": epoch, "settings": settings}


def xlearn_predict(train: str, test: str, k: int, threads: int, out: str) -> tuple[int, float]:
    """xLearn's predict over the training file (text in, probabilities out)."""
    import xlearn as xl

    model = str(Path(out).with_suffix(".xlearn-model"))
    fm = xl.create_fm()
    fm.setTrain(test)
    fm.setQuiet()
    fm.fit(_logged({"task": "binary", "k": k, "epoch": 1, "nthread": threads}), model)
    fm = xl.create_fm()
    fm.setTest(train)
    fm.setSigmoid()
    Path(train + ".bin").unlink(missing_ok=True)  # predict from the text, as fmkit does
    started = time.perf_counter()
    fm.predict(model, out + ".train")
    seconds = time.perf_counter() - started
    rows = count_lines(out + ".train")
    os.unlink(out + ".train")
    Path(out).write_text("")
    return rows, seconds


def fastfm_fit(train, test, features, k, epochs, out, rows):
    from fastFM import sgd

    X, y = load(train, features, rows)
    fm = sgd.FMClassification(n_iter=epochs * X.shape[0], init_stdev=0.01, rank=k,
                              l2_reg_w=0.0, l2_reg_V=0.0, step_size=0.01, random_state=0)
    started = time.perf_counter()
    fm.fit(X.tocsc(), np.where(y > 0, 1, -1))
    seconds = time.perf_counter() - started
    Xt, _ = load(test, features)
    np.savetxt(out, fm.predict_proba(Xt.tocsc()), fmt="%.6f")
    return X.shape[0], seconds


def fastfm_mcmc(X_fit, y_fit, X_score, binary: bool, sweeps: int = 100) -> np.ndarray:
    """fastFM's MCMC (Gibbs sampling, k 8, ``sweeps`` iterations, init_stdev 0.1: settings
    nothing is chosen for) trained on ``X_fit``: the scores of ``X_score`` (probabilities when
    ``binary``). fastFM's MCMC predicts while it samples: the mean of every sample's
    predictions."""
    from fastFM import mcmc

    X_fit, X_score = X_fit.tocsc(), X_score.tocsc()
    if binary:
        fm = mcmc.FMClassification(n_iter=sweeps, rank=8, init_stdev=0.1, random_state=0)
        return fm.fit_predict_proba(X_fit, np.where(y_fit > 0, 1, -1), X_score)
    fm = mcmc.FMRegression(n_iter=sweeps, rank=8, init_stdev=0.1, random_state=0)
    return fm.fit_predict(X_fit, y_fit, X_score)


def fastfm_mcmc_protocol(train: str, test: str, out: str, kind: str, sweeps: int) -> dict:
    """:func:`fastfm_mcmc` under issue 16's protocol: trained on the first 90% of ``train``'s
    rows to score the last 10% (validation), then on all of it to score ``test`` (refit),
    whose predictions are written to ``out``; ``sweeps`` as many as fmkit's."""
    from sklearn.datasets import load_svmlight_files
    from sklearn.metrics import mean_squared_error, roc_auc_score

    X, y, Xt, _ = load_svmlight_files([train, test])
    X = X.tocsr()
    cut = int(X.shape[0] * 0.9)
    binary = kind == "binary"
    held = fastfm_mcmc(X[:cut], y[:cut], X[cut:], binary, sweeps)
    validation = (roc_auc_score(y[cut:] > 0, held) if binary
                  else float(np.sqrt(mean_squared_error(y[cut:], held))))
    np.savetxt(out, fastfm_mcmc(X, y, Xt, binary, sweeps), fmt="%.6f")
    return {"validation": float(validation)}


def fastfm_als(X_fit, y_fit, X_score, binary: bool, sweeps: int = 100) -> np.ndarray:
    """fastFM's ALS (k 8, ``sweeps`` iterations, init_stdev 0.1, fmkit's defaults for
    optimizer=als, libFM's '-regular 0,0,10': l2_reg_w 0, l2_reg_V 10) trained on ``X_fit``:
    the scores of ``X_score`` (probabilities when ``binary``)."""
    from fastFM import als

    # (l2_reg_w 0 stops fastFM on MovieLens, "w not finite": items ua.base never rates have
    # no rows and no prior, 0/0; fmkit leaves them at 0. A weight too small to matter instead)
    settings = {"n_iter": sweeps, "rank": 8, "init_stdev": 0.1, "l2_reg_w": 1e-9,
                "l2_reg_V": 10.0, "random_state": 0}
    X_fit, X_score = X_fit.tocsc(), X_score.tocsc()
    if binary:
        fm = als.FMClassification(**settings).fit(X_fit, np.where(y_fit > 0, 1, -1))
        return fm.predict_proba(X_score)
    return als.FMRegression(**settings).fit(X_fit, y_fit).predict(X_score)


def fastfm_timed(train: str, test: str, out: str, kind: str, sweeps: int,
                 method: str = "mcmc") -> dict:
    """:func:`fastfm_mcmc` (or :func:`fastfm_als`) on all of ``train``, ``test``'s scores to
    ``out``: its seconds and this process's peak RSS."""
    from sklearn.datasets import load_svmlight_files

    X, y, Xt, _ = load_svmlight_files([train, test])
    X, Xt = X.tocsc(), Xt.tocsc()  # (fastFM's layout, before the clock starts)
    started = time.perf_counter()
    scores = (fastfm_mcmc if method == "mcmc" else fastfm_als)(X, y, Xt, kind == "binary",
                                                                sweeps)
    seconds = time.perf_counter() - started
    np.savetxt(out, scores)
    return {"seconds": seconds, "peak_mib": peak_rss_mib()}


def _ids(X) -> np.ndarray:
    """The rows' feature ids as a dense (rows, fields) array (every row has the same count)."""
    per_row = np.diff(X.indptr)
    assert (per_row == per_row[0]).all(), "the torch peers need a fixed number of ids per row"
    return X.indices.reshape(X.shape[0], per_row[0]).astype(np.int64)


def _torch_epochs(model, opt, loss_fn, ids, labels, epochs: int, batch: int = 4096) -> float:
    """Seconds to train ``model`` for ``epochs`` over (ids, labels) in mini-batches."""
    started = time.perf_counter()
    for _ in range(epochs):
        for s in range(0, len(ids), batch):
            opt.zero_grad()
            loss_fn(model(ids[s:s + batch]), labels[s:s + batch]).backward()
            opt.step()
    return time.perf_counter() - started


def torch_sparse_fit(train, test, features, k, threads, epochs, out, rows):
    """A plain FM on nn.Embedding(sparse=True) with SGD: PyTorch's generic autograd path."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    X, y = load(train, features, rows)
    ids, labels = torch.from_numpy(_ids(X)), torch.from_numpy(y.astype(np.float32))

    class FM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Embedding(features, 1, sparse=True)
            self.V = torch.nn.Embedding(features, k, sparse=True)
            self.b = torch.nn.Parameter(torch.zeros(1))
            torch.nn.init.normal_(self.w.weight, std=0.01)
            torch.nn.init.normal_(self.V.weight, std=0.01)

        def forward(self, x):
            e = self.V(x)
            pair = 0.5 * (e.sum(1).pow(2) - e.pow(2).sum(1)).sum(1)
            return self.b + self.w(x).sum((1, 2)) + pair

    model = FM()
    seconds = _torch_epochs(model, torch.optim.SGD(model.parameters(), lr=0.05),
                            torch.nn.BCEWithLogitsLoss(), ids, labels, epochs)
    Xt, _ = load(test, features)
    with torch.no_grad():
        np.savetxt(out, torch.sigmoid(model(torch.from_numpy(_ids(Xt)))).numpy(), fmt="%.6f")
    return len(ids), seconds


def torchfm_fit(train, test, features, k, threads, epochs, out, rows):
    """torchfm's FactorizationMachineModel with Adam, as its examples train it."""
    import torch

    if not hasattr(np, "long"):  # torchfm 0.7.0 uses np.long (gone in numpy 1.24-1.26, which
        np.long = np.int64  # fastFM needs beside it here); alias it rather than patch torchfm
    from torchfm.model.fm import FactorizationMachineModel

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    X, y = load(train, features, rows)
    ids, labels = torch.from_numpy(_ids(X)), torch.from_numpy(y.astype(np.float32))
    model = FactorizationMachineModel(np.array([features]), embed_dim=k)  # one shared id space
    seconds = _torch_epochs(model, torch.optim.Adam(model.parameters(), lr=0.001),
                            torch.nn.BCELoss(), ids, labels, epochs)
    Xt, _ = load(test, features)
    with torch.no_grad():
        np.savetxt(out, model(torch.from_numpy(_ids(Xt))).numpy(), fmt="%.6f")
    return len(ids), seconds


def deepctr_fit(train, test, features, k, threads, epochs, out, rows):
    """DeepCTR-Torch's DeepFM without its DNN (linear + FM), the fields sharing one table."""
    import torch
    from deepctr_torch.inputs import SparseFeat
    from deepctr_torch.models import DeepFM

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    X, y = load(train, features, rows)
    ids = _ids(X)
    names = [f"f{j}" for j in range(ids.shape[1])]
    columns = [SparseFeat(name, features, embedding_dim=k, embedding_name="ids")
               for name in names]
    model = DeepFM(columns, columns, dnn_hidden_units=(), task="binary", device="cpu", seed=0)
    model.compile("adam", "binary_crossentropy")
    inputs = {name: ids[:, j] for j, name in enumerate(names)}
    started = time.perf_counter()
    model.fit(inputs, y, batch_size=4096, epochs=epochs, verbose=0)
    seconds = time.perf_counter() - started
    Xt, _ = load(test, features)
    test_ids = _ids(Xt)
    probs = model.predict({name: test_ids[:, j] for j, name in enumerate(names)}, 4096)
    np.savetxt(out, probs.ravel(), fmt="%.6f")
    return len(ids), seconds


def main() -> None:
    task, train, test = sys.argv[1:4]
    if task == "xlearn_protocol":  # peer_tasks.py xlearn_protocol TRAIN TEST OUT
        print(json.dumps(xlearn_protocol(train, test, sys.argv[4])))
        return
    if task == "fastfm_mcmc_protocol":  # ... fastfm_mcmc_protocol TRAIN TEST OUT KIND
        print(json.dumps(fastfm_mcmc_protocol(train, test, sys.argv[4], sys.argv[5],
                                              int(sys.argv[6]))))
        return
    if task in ("fastfm_mcmc", "fastfm_als"):  # ... fastfm_mcmc TRAIN TEST OUT KIND SWEEPS
        print(json.dumps(fastfm_timed(train, test, sys.argv[4], sys.argv[5], int(sys.argv[6]),
                                      task.split("_")[1])))
        return
    features, k, threads, epochs = (int(a) for a in sys.argv[4:8])
    out, rows = sys.argv[8], int(sys.argv[9])
    if task == "xlearn_predict":
        n, seconds = xlearn_predict(train, test, k, threads, out)
    elif task.startswith("xlearn_ffm"):  # xlearn_ffm[_cold]: its FFM, AdaGrad (its default)
        seconds = xlearn_fit(train, test, k, threads, epochs, out,
                             cold=task.endswith("_cold"), opt="adagrad", ffm=True)
        n = count_lines(train)
    elif task.startswith("xlearn_"):  # xlearn_<optimizer>[_cold]
        seconds = xlearn_fit(train, test, k, threads, epochs, out,
                             cold=task.endswith("_cold"), opt=task.split("_")[1])
        n = count_lines(train)
    elif task == "fastfm":
        n, seconds = fastfm_fit(train, test, features, k, epochs, out, rows)
    else:
        fit = {"torch_sparse": torch_sparse_fit, "torchfm": torchfm_fit,
               "deepctr": deepctr_fit}[task]
        n, seconds = fit(train, test, features, k, threads, epochs, out, rows)
    print(json.dumps({"rows": n * (epochs if "predict" not in task else 1), "seconds": seconds,
                      "peak_rss_mib": peak_rss_mib()}))


if __name__ == "__main__":
    main()
