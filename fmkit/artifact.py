"""The model directory: weights that load without executing code, plus JSON metadata.

    MODEL_DIR/
      model.json     format, format_version, fmkit_version, model_type, hyperparameters, ...
      weights.npz    named arrays (numpy .npz, read with allow_pickle=False)
      metrics.json   training history and test-channel metrics

A directory is written under a temporary name beside its destination and moved into place in one
step, so a crash (even ``kill -9``) leaves either no model directory, or the complete previous one.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from fmkit._version import __version__
from fmkit.errors import ArtifactError

FORMAT = "fmkit-model"
FORMAT_VERSION = 1
META_FILE, WEIGHTS_FILE, METRICS_FILE = "model.json", "weights.npz", "metrics.json"
# Where the SageMaker entry point puts the model directory inside /opt/ml/model (SageMaker FM's
# own artifact has this name); loading /opt/ml/model finds it there.
SAGEMAKER_SUBDIR = "model_algo-1"


def resolve(path: str | Path) -> Path:
    """A model directory, or the directory holding one as ``model_algo-1`` (SageMaker layout)."""
    path = Path(path)
    nested = path / SAGEMAKER_SUBDIR
    if not (path / META_FILE).exists() and (nested / META_FILE).exists():
        return nested
    return path


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _finite_or_null(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v) for v in value]
    return value


def strict_json(data: Any, **options: Any) -> str:
    """JSON that any parser reads: an undefined number (AUC of one class) becomes null."""
    return json.dumps(_finite_or_null(data), allow_nan=False, sort_keys=True, **options)


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w") as f:
        f.write(strict_json(data, indent=2))
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    return result == 0


def save_directory(path: str | Path, meta: dict[str, Any], weights: dict[str, np.ndarray],
                   metrics: dict[str, Any]) -> Path:
    """Write a model directory atomically; replaces an existing model directory at ``path``."""
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not path.is_dir():
        raise ArtifactError(f"{path}: exists and is not a directory")
    full_meta = {"format": FORMAT, "format_version": FORMAT_VERSION,
                 "fmkit_version": __version__, **meta}
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
    try:
        with open(tmp / WEIGHTS_FILE, "wb") as f:
            np.savez(f, **weights)
            f.flush()
            os.fsync(f.fileno())
        _write_json(tmp / METRICS_FILE, metrics)
        _write_json(tmp / META_FILE, full_meta)  # written last: its presence marks completeness
        os.chmod(tmp, 0o755)
        _fsync_dir(tmp)
        if path.exists():
            if _exchange(tmp, path):
                shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the previous model
            else:
                old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
                os.rename(path, old / "model")
                os.rename(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load_directory(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray], dict]:
    """Read ``(meta, weights, metrics)`` from a model directory, checking format and version."""
    path = resolve(path)
    meta_path = path / META_FILE
    if not path.is_dir():
        raise ArtifactError(f"{path}: no such model directory")
    if not meta_path.is_file():
        raise ArtifactError(f"{path}: not an fmkit model directory (no {META_FILE})")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{meta_path}: unreadable model metadata: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ArtifactError(f"{meta_path}: not an fmkit model (format is not {FORMAT!r})")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ArtifactError(
            f"{meta_path}: model format version {version!r} was written by fmkit "
            f"{meta.get('fmkit_version')}; this fmkit {__version__} reads versions up to "
            f"{FORMAT_VERSION}: upgrade fmkit"
        )
    try:
        with np.load(path / WEIGHTS_FILE, allow_pickle=False) as npz:
            weights = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise ArtifactError(f"{path / WEIGHTS_FILE}: unreadable weights: {e}") from None
    metrics_path = path / METRICS_FILE
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    return meta, weights, metrics


def check_shape(path: str | Path, weights: dict[str, np.ndarray], name: str,
                shape: tuple[int, ...]) -> np.ndarray:
    """The named array, or an :class:`ArtifactError` saying what is missing or mis-shaped."""
    if name not in weights:
        raise ArtifactError(f"{path}: weights file has no array {name!r}")
    array = weights[name]
    if tuple(array.shape) != tuple(shape):
        raise ArtifactError(
            f"{path}: array {name!r} has shape {tuple(array.shape)}, expected {tuple(shape)} "
            "from model.json"
        )
    if not np.issubdtype(array.dtype, np.floating):
        raise ArtifactError(f"{path}: array {name!r} has dtype {array.dtype}, expected floats")
    return array
