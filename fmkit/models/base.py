"""The declared model interface, and loading any model directory by its ``model_type``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from fmkit.errors import ArtifactError, HyperparameterError, excerpt
from fmkit.models import artifact
from fmkit.models.fm.model import MODEL_TYPE, FMModel


@runtime_checkable
class Model(Protocol):
    """What every fmkit model answers — :class:`fmkit.models.fm.model.FMModel` and
    :class:`fmkit.models.deepfm.model.DeepFMModel` — and all that the jobs, the server, ``fmkit
    report`` and the SageMaker entry point use of one."""

    predictor_type: str
    request_types: tuple[str, ...]  # the Content-Types its request decoder reads

    def read(self, path: str | Path, fmt: str = "auto", *, labelled: bool = True
             ) -> Iterator[Any]: ...

    def request_decoder(self) -> Any: ...

    def warm_up_requests(self) -> list[tuple[bytes, str]]: ...

    def predictions(self, batch: Any) -> dict[str, np.ndarray]: ...

    def predictions_of(self, blocks: Iterable[Any]) -> Iterator[dict[str, np.ndarray]]: ...

    @property
    def output_columns(self) -> tuple[str, ...]: ...  # the columns of its predictions' tables

    def outputs_of(self, blocks: Iterable[Any]) -> Iterator[dict[str, np.ndarray]]: ...

    def labelled_logits(self, blocks: Iterator[Any]
                        ) -> Iterator[tuple[np.ndarray, np.ndarray]]: ...  # per block

    def evaluate(self, blocks: Iterator[Any]) -> dict[str, float]: ...

    def save(self, path: str | Path, metrics: dict[str, Any] | None = None) -> Path: ...

    def to(self, device: str) -> Model: ...


def _sagemaker_artifact(module: Path) -> FMModel:
    """The FM of SageMaker's own artifact, where SageMaker's hosting unpacks a built-in FM
    training job's ``model.tar.gz``: ``model_algo-1`` is then the zip of MXNet's files, not an
    fmkit model directory. Read as ``fmkit import sagemaker`` reads it, without hyperparameters
    to add: its graph says whether it is a classifier."""
    from fmkit.models.fm.sagemaker_artifact import read_artifact

    try:
        return read_artifact(module, {})
    except HyperparameterError as e:
        raise ArtifactError(f"{e}; or convert it once with fmkit import sagemaker (which takes "
                            "them) and serve that directory") from None


def load_fm(path: str | Path) -> FMModel:
    """The FM in a model directory, or of SageMaker's artifact unpacked there
    (:func:`_sagemaker_artifact`)."""
    module = Path(path) / artifact.SAGEMAKER_SUBDIR
    return _sagemaker_artifact(module) if module.is_file() else FMModel.load(path)


def _load_deepfm(path: str | Path) -> Model:
    from fmkit.models.deepfm.model import DeepFMModel  # PyTorch: imported only for DeepFM models

    return DeepFMModel.load(path)


LOADERS: dict[str, Callable[[str | Path], Model]] = {MODEL_TYPE: load_fm,
                                                     "deepfm": _load_deepfm}


def load_model(path: str | Path, device: str = "cpu", data_config: Sequence[str] = ()
               ) -> Model:
    """The model in a model directory (by its ``model_type``, see :data:`LOADERS`; an FM may
    be SageMaker's artifact unpacked there, :func:`load_fm`), scoring on ``device``;
    ``data_config``: ``--set data_config.PATH=VALUE`` overrides of how a DeepFM reads files
    (``DeepFMModel.read_as``)."""
    kind = artifact.model_type(path) or MODEL_TYPE  # (None for SageMaker's artifact too)
    if data_config and kind != "deepfm":
        raise HyperparameterError(f"{excerpt(data_config[0])} (--set, or tzrec.predict's "
                                  "--batch_size, --dataset_type, --edit_config_json) changes how "
                                  "a DeepFM reads its files; an FM's are read by --format (and "
                                  "its index base)")
    model = LOADERS.get(kind, load_fm)(path)
    if data_config:
        model.read_as(data_config)
    return model.to(device)
