"""fmkit: factorization machines for sparse data, with SageMaker's hyperparameters and formats.

The public surface: the scikit-learn style estimators, ``load`` for model directories, and the
file-based jobs behind the CLI (:mod:`fmkit.jobs.fm`).
"""

from typing import Any

from fmkit import compile_cache, cpus

compile_cache.configure()  # before any module that compiles kernels is imported
cpus.configure()  # before an OpenMP runtime (PyTorch's, numba's) is loaded

from fmkit._version import __version__  # noqa: E402
from fmkit.errors import ArtifactError, DataError, FMKitError, HyperparameterError  # noqa: E402

__all__ = [
    "ArtifactError",
    "DataError",
    "DeepFMClassifier",
    "DeepFMRegressor",
    "FFMClassifier",
    "FFMRegressor",
    "FMClassifier",
    "FMKitError",
    "FMRegressor",
    "HyperparameterError",
    "__version__",
    "load",
    "ranking_metrics",
    "tune",
]
_ESTIMATORS = ("FMClassifier", "FMRegressor", "FFMClassifier", "FFMRegressor", "load")
_DEEPFM_ESTIMATORS = ("DeepFMClassifier", "DeepFMRegressor")  # (PyTorch: 'fmkit[deepfm]')


def __getattr__(name: str) -> Any:
    # The estimators import scikit-learn (~100 MB and ~2 s): loaded on first use, so the CLI,
    # the trainer and the server do not pay for them.
    if name in _ESTIMATORS:
        from fmkit import estimators

        return getattr(estimators, name)
    if name in _DEEPFM_ESTIMATORS:
        from fmkit import deepfm_estimators

        return getattr(deepfm_estimators, name)
    if name == "ranking_metrics":  # the top k of recommend() against held-out items
        from fmkit.models.metrics import ranking_metrics

        return ranking_metrics
    if name == "tune":  # fmkit tune from Python (needs Optuna: 'fmkit[tune]')
        from fmkit.jobs.tune import tune

        return tune
    raise AttributeError(f"module 'fmkit' has no attribute {name!r}")
