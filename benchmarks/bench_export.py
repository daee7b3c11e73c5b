"""Scoring an FM and a DeepFM: fmkit against onnxruntime running ``fmkit export onnx``.

    python benchmarks/bench_export.py [--rows 1000000] [--factors 16 64] [--batch 1 1000 100000]

A planted FM over 1,000,000 features (rows of 20 nonzeros, Zipf-distributed ids) is scored
both ways in the same process, in batches of ``--batch`` rows: fmkit's ``FMModel.logits``
(what ``fmkit predict`` and the server run) and an onnxruntime ``InferenceSession`` of the
exported graph (inputs prepared before the clock starts, as a caller holding CSR arrays
would). Prints rows/s of each, their ratio, the largest difference of the scores, and the
process's peak RSS.

Then the DeepFM of ``examples/deepfm_criteo.yaml`` (trained for one epoch on the 1,000 rows of
``../shared/data/criteo_kaggle_head1000``) scores those rows, encoded before the clock starts,
in batches of 1 and 1,000: ``DeepFMModel.logits`` against onnxruntime fed from the encoding
JSON's layout.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from fmkit.data.batch import SparseBatch
from fmkit.models.fm.export import onnx_model
from fmkit.models.fm.hyperparameters import validate
from fmkit.models.fm.model import FMModel
from fmkit.models.fm.parameters import FMParameters
from fmkit.models.fm.planted import zipf_ids

FEATURES, NNZ = 1_000_000, 20


def _best_rate(run, rows: int, repeats: int = 3) -> float:
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - started)
    return rows / min(seconds)


def main() -> None:
    import onnxruntime

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--factors", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 1000, 100_000])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    ids = zipf_ids(rng, args.rows * NNZ, FEATURES, 1.1).astype(np.int32)
    values = rng.random(args.rows * NNZ).astype(np.float32)
    print(f"{'k':>3} {'batch':>7} {'fmkit rows/s':>13} {'onnxruntime rows/s':>19} "
          f"{'ratio':>6} {'max |diff|':>11} {'peak RSS MB':>12}")
    for k in args.factors:
        hp = validate({"feature_dim": FEATURES, "num_factors": k,
                       "predictor_type": "binary_classifier"})
        model = FMModel(hp, FMParameters(np.zeros(1, np.float32),
                                         rng.normal(0, 0.01, FEATURES).astype(np.float32),
                                         rng.normal(0, 0.01, (FEATURES, k)).astype(np.float32)))
        options = onnxruntime.SessionOptions()
        session = onnxruntime.InferenceSession(onnx_model(model).SerializeToString(), options)
        for batch in args.batch:
            n = min(batch, args.rows)
            scored = args.rows if n >= 1000 else min(args.rows, 200_000)  # (one-row calls)
            count = max(1, scored // n)
            batches, feeds = [], []
            for b in range(count):
                lo, hi = b * n * NNZ, (b + 1) * n * NNZ
                batches.append(SparseBatch(np.arange(0, n * NNZ + 1, NNZ, dtype=np.int64),
                                           ids[lo:hi], values[lo:hi], np.zeros(n, np.float32)))
                feeds.append({"indices": ids[lo:hi].astype(np.int64), "values": values[lo:hi],
                              "rows": np.repeat(np.arange(n, dtype=np.int64), NNZ),
                              "batch_size": np.array([n], np.int64)})
            model.logits(batches[0])
            session.run(["y"], feeds[0])
            fmkit_rate = _best_rate(
                lambda model=model, batches=batches: [model.logits(x) for x in batches],
                n * count)
            onnx_rate = _best_rate(
                lambda session=session, feeds=feeds: [session.run(["y"], f) for f in feeds],
                n * count)
            diff = float(np.max(np.abs(model.logits(batches[0])
                                       - session.run(["y"], feeds[0])[0])))
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"{k:>3} {n:>7} {fmkit_rate:>13,.0f} {onnx_rate:>19,.0f} "
                  f"{fmkit_rate / onnx_rate:>5.1f}x {diff:>11.2e} {peak:>12.0f}")


def deepfm_rows(batch_sizes: list[int]) -> None:
    import onnxruntime

    from fmkit.jobs.deepfm import train_deepfm
    from fmkit.jobs.export import export_model
    from fmkit.models.deepfm import config_files
    from fmkit.models.deepfm.batches import take_rows
    from fmkit.models.deepfm.export import example_inputs, input_names
    from fmkit.models.deepfm.model import DeepFMModel

    onnxruntime.set_default_logger_severity(3)  # (its notes on the embedding bags' loops)
    repo = Path(__file__).resolve().parents[1]
    data = repo.parent / "shared" / "data" / "criteo_kaggle_head1000" / "train.txt"
    with tempfile.TemporaryDirectory() as root:
        config = config_files.load(repo / "examples" / "deepfm_criteo.yaml", [
            f"train_input_path={data}", "eval_input_path=", "train_config.num_epochs=1",
            f"model_dir={root}/model"])
        train_deepfm(config, progress=False)
        export_model("onnx", f"{root}/model", f"{root}/criteo.onnx")
        model = DeepFMModel.load(f"{root}/model")
        session = onnxruntime.InferenceSession(f"{root}/criteo.onnx",
                                               providers=["CPUExecutionProvider"])
    encoded = model.encode(next(model.read(data, labelled=False)))
    names = input_names(model)
    print(f"\nDeepFM (examples/deepfm_criteo.yaml), {encoded.n_rows} Criteo rows")
    print(f"{'batch':>7} {'fmkit rows/s':>13} {'onnxruntime rows/s':>19} {'ratio':>6} "
          f"{'max |diff|':>11} {'peak RSS MB':>12}")
    for n in batch_sizes:
        n = min(n, encoded.n_rows)
        parts = [take_rows(encoded, np.arange(lo, lo + n))
                 for lo in range(0, encoded.n_rows - n + 1, n)]
        feeds = [dict(zip(names, (t.numpy() for t in example_inputs(model, part))))
                 for part in parts]
        rows = n * len(parts)
        fmkit_rate = _best_rate(lambda parts=parts: [model.logits(p) for p in parts], rows)
        onnx_rate = _best_rate(lambda feeds=feeds: [session.run(["y"], f) for f in feeds], rows)
        diff = float(np.max(np.abs(model.logits(parts[0]) - session.run(["y"], feeds[0])[0])))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{n:>7} {fmkit_rate:>13,.0f} {onnx_rate:>19,.0f} {fmkit_rate / onnx_rate:>5.1f}x "
              f"{diff:>11.2e} {peak:>12.0f}")


if __name__ == "__main__":
    main()
    deepfm_rows([1, 1000])
