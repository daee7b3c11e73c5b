"""``fmkit demo``: the embedded default job, needing no files.

It plants an FM, samples click data from it (categorical fields, Zipf ids, one-hot), trains a
linear model (factors fixed at zero) and an FM with the same trainer, and prints test AUC and log
loss for both next to the oracle, the planted model's own probabilities. It trains through the
engine (what ``FMClassifier.fit`` calls), not the estimator: importing scikit-learn took 2 s,
a third of the demo's run (docs/performance.md, session 50).
"""

from __future__ import annotations

import time

import numpy as np

from fmkit.data.sources import ArraySource
from fmkit.errors import require_option
from fmkit.jobs import training
from fmkit.logs import log
from fmkit.models.fm.hyperparameters import validate
from fmkit.models.fm.model import FMModel
from fmkit.models.fm.parameters import sigmoid
from fmkit.models.fm.planted import planted_ctr
from fmkit.models.metrics import auc, log_loss_from_logits

FIELD_SIZES = [1000, 500, 200, 100, 50, 20, 10, 5]
MIN_ROWS = 1000  # a fifth of them the test rows

# Shared by both models; the linear model differs only in its factors (constant 0, never move:
# their gradient is x_i * sum_j v_j x_j = 0), which makes it exactly w0 + sum_i w_i x_i.
COMMON = dict(epochs=4, mini_batch_size=256, bias_lr=0.01, linear_lr=0.002, linear_wd=1e-5,
              bias_wd=0.0)
FM_PARAMS = dict(num_factors=8, factors_lr=0.002, factors_wd=1e-5, factors_init_sigma=0.01)
LINEAR_PARAMS = dict(num_factors=1, factors_init_method="constant", factors_init_value=0.0,
                     factors_lr=0.0)


def run_demo(rows: int = 1_000_000, seed: int = 7, progress: bool | None = None) -> dict:
    """Run the demo, print its table, and return the figures."""
    require_option(rows >= MIN_ROWS, "--rows",
                   f">= {MIN_ROWS:,} (the test AUC needs rows of both labels)", rows)
    require_option(0 <= seed < 2**63, "--seed", "in 0..2^63-1", seed)
    started = time.perf_counter()
    data = planted_ctr(rows, FIELD_SIZES, seed=seed)
    n_train = int(rows * 0.8)
    train, test = data.split(n_train)
    log.info("planted-FM click data: %d fields, %d features, %d train / %d test rows, "
             "%.1f%% clicks", len(FIELD_SIZES), sum(FIELD_SIZES), n_train, rows - n_train,
             100 * float(data.y.mean()))
    results = {}
    width = train.X.shape[1]
    for name, params in (("linear", LINEAR_PARAMS), ("FM", FM_PARAMS)):
        hp = validate({**COMMON, **params, "seed": seed, "feature_dim": width,
                       "predictor_type": "binary_classifier"})
        weights, _ = training.train(hp, ArraySource(train.X, train.y, width, "binary"),
                                    progress=progress)
        model = FMModel(hp, weights)
        logits = np.concatenate([model.logits(batch)
                                 for batch in ArraySource(test.X, None, width).blocks()])
        results[name] = (auc(test.y, sigmoid(logits)), log_loss_from_logits(test.y, logits))
    p = test.probability
    results["oracle"] = (auc(test.y, p), log_loss_from_logits(test.y, _logit(p)))
    print(f"fmkit demo: planted-FM click data, {len(FIELD_SIZES)} categorical fields, "
          f"{sum(FIELD_SIZES)} one-hot features, {n_train} train / {rows - n_train} test rows")
    print(f"{'model':<26}{'test AUC':>10}{'test log loss':>16}")
    labels = {"linear": "linear (no factors)", "FM": f"FM (k={FM_PARAMS['num_factors']})",
              "oracle": "oracle (planted model)"}
    for name, (a, ll) in results.items():
        print(f"{labels[name]:<26}{a:>10.4f}{ll:>16.4f}")
    print(f"({time.perf_counter() - started:.1f} s)")
    return results


def _logit(p):
    import numpy as np

    p = np.clip(p, 1e-15, 1 - 1e-15)
    return np.log(p) - np.log1p(-p)
