"""Writes the xLearn models ``tests/test_xlearn_import.py`` imports, and xLearn's own
predictions of a test file with each: run with xLearn 0.40a1 installed (the benchmarks' peers
venv: ``USER=root benchmarks/.peers/venv/bin/python tests/data/xlearn/make_fixtures.py``).

The data is planted: 300 training and 100 test rows of libffm, 4 fields of 10 features each
(ids 0..39), values drawn from (0.5, 2) so that a row's length matters."""

import os
from pathlib import Path

import numpy as np
import xlearn as xl

HERE = Path(__file__).resolve().parent
FIELDS, PER_FIELD = 4, 10


def write_rows(path: Path, rows: int, rng: np.random.Generator) -> None:
    truth = rng.normal(0, 1, FIELDS * PER_FIELD)
    lines = []
    for _ in range(rows):
        ids = [f * PER_FIELD + rng.integers(PER_FIELD) for f in range(FIELDS)]
        values = rng.uniform(0.5, 2.0, FIELDS)
        label = int(truth[ids] @ values + rng.normal() > 0)
        lines.append(f"{label} " + " ".join(f"{i // PER_FIELD}:{i}:{v:.4f}"
                                            for i, v in zip(ids, values)))
    path.write_text("\n".join(lines) + "\n")


MODELS = {  # name: (create, parameters, norm, also a text model)
    "ffm_adagrad_k5": ("ffm", {"task": "binary", "lr": 0.2, "lambda": 0.002, "k": 5}, True, True),
    "ffm_ftrl_k3_nonorm": ("ffm", {"task": "binary", "opt": "ftrl", "k": 3}, False, False),
    "fm_adagrad_k6_nonorm": ("fm", {"task": "binary", "lr": 0.2, "k": 6}, False, True),
    "fm_reg_sgd_k4_nonorm": ("fm", {"task": "reg", "opt": "sgd", "lr": 0.05, "k": 4}, False,
                             False),
    "linear_sgd": ("linear", {"task": "binary", "opt": "sgd", "lr": 0.2}, True, True),
}


def main() -> None:
    rng = np.random.default_rng(11)
    write_rows(HERE / "train.ffm", 300, rng)
    write_rows(HERE / "test.ffm", 100, rng)
    for name, (kind, param, norm, text) in MODELS.items():
        model = getattr(xl, f"create_{kind}")()
        model.setTrain(str(HERE / "train.ffm"))
        if not norm:
            model.disableNorm()
        if text:
            model.setTXTModel(str(HERE / f"{name}.txt"))
        model.fit({**param, "epoch": 5, "nthread": 1}, str(HERE / f"{name}.model"))
        model.setTest(str(HERE / "test.ffm"))
        model.predict(str(HERE / f"{name}.model"), str(HERE / f"{name}.out"))
    for cache in HERE.glob("*.bin"):
        os.remove(cache)


if __name__ == "__main__":
    main()
