"""fmkit: factorization machines for sparse data, with SageMaker's hyperparameters and formats.

The public surface: the scikit-learn style estimators, ``load`` for model directories, and the
file-based jobs behind the CLI (:mod:`fmkit.jobs`).
"""

from fmkit._version import __version__
from fmkit.errors import ArtifactError, DataError, FMKitError, HyperparameterError
from fmkit.estimators import FMClassifier, FMRegressor, load

__all__ = [
    "ArtifactError",
    "DataError",
    "FMClassifier",
    "FMKitError",
    "FMRegressor",
    "HyperparameterError",
    "__version__",
    "load",
]
