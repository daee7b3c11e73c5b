"""``fmkit export onnx|npz|parquet|sagemaker`` and ``fmkit import sagemaker|xlearn``: models
moved to and from other runtimes.

An FM goes to ONNX (scored by onnxruntime as ``fmkit predict`` scores it), to a numpy
``.npz`` of w0, w and V, to a Parquet table of one row per feature
(:mod:`fmkit.models.fm.export`), or to SageMaker's ``model.tar.gz``
(:mod:`fmkit.models.fm.sagemaker_artifact`), which is also read back. A DeepFM goes to
``.npz``: each embedding table under its name (``embedding/<name>``, ``wide/<name>``) and the
MLPs' weights under PyTorch's names. The output must be a new file. TorchEasyRec's
``tzrec.export --pipeline_config_path --export_dir`` copies a model directory
(:func:`copy_model`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fmkit.errors import ArtifactError
from fmkit.files import OutputError, output_stream, require_new
from fmkit.models import artifact
from fmkit.models.base import load_fm, load_model
from fmkit.models.fm.model import FMModel

FORMATS = ("onnx", "npz", "parquet", "sagemaker")


def export_model(fmt: str, model_dir: str | Path, output: str | Path) -> None:
    require_new(output, "fmkit export")
    if artifact.model_type(model_dir) == "deepfm":
        if fmt == "onnx":
            _deepfm_onnx(model_dir, output)
        elif fmt == "npz":
            _deepfm_npz(model_dir, output)
        else:
            raise ArtifactError(f"{model_dir}: a DeepFM exports as onnx or npz (Parquet and "
                                "SageMaker export cover the FM)")
        return
    from fmkit.models.fm import export
    from fmkit.models.fm.sagemaker_artifact import artifact_bytes

    model = load_fm(model_dir)  # (SageMaker's own artifact too: fmkit export onnx of it)
    if fmt in ("npz", "parquet"):
        export.write_weights(model, output, fmt)
        return
    data = export.onnx_model(model).SerializeToString() if fmt == "onnx" else artifact_bytes(model)
    with output_stream(output) as out:
        out.write(data)


def copy_model(model_dir: str | Path, export_dir: str | Path) -> None:
    """TorchEasyRec's ``tzrec.export``: the model of ``model_dir`` (loaded, so checked) written
    as a new model directory ``export_dir`` (which, as tzrec.export's, must not exist), for
    ``fmkit predict --scripted_model_path`` and ``fmkit serve`` to load: fmkit's model
    directory is what they read, vocabularies included."""
    if Path(export_dir).exists() or Path(export_dir).is_symlink():
        raise OutputError(export_dir, "exists; --export_dir is a new directory (as "
                          "tzrec.export's)")
    load_model(model_dir).save(export_dir, artifact.read_metrics(model_dir))


def import_sagemaker(artifact: str | Path, model_dir: str | Path,
                     hyperparameters: dict[str, object], index_base: str = "auto") -> FMModel:
    """``fmkit import sagemaker``: a SageMaker FM ``model.tar.gz`` as an fmkit model
    directory (``hyperparameters`` fill in or override what the artifact carries;
    ``index_base`` 0/1 is the first feature id of its libsvm input, ``auto``: what an fmkit
    export recorded, else SageMaker's 0)."""
    from fmkit.models.fm.sagemaker_artifact import read_artifact

    model = read_artifact(artifact, hyperparameters,
                          None if index_base == "auto" else int(index_base))
    model.save(model_dir)
    return model


def import_xlearn(path: str | Path, model_dir: str | Path,
                  hyperparameters: dict[str, object]) -> FMModel:
    """``fmkit import xlearn``: an xLearn model (binary checkpoint or text model) as an fmkit
    model directory; ``hyperparameters``: what the file does not say (see
    :func:`fmkit.models.fm.xlearn_format.to_fm_model`)."""
    from fmkit.models.fm import xlearn_format

    model = xlearn_format.to_fm_model(xlearn_format.read(path), hyperparameters, str(path))
    model.save(model_dir)
    return model


def encoding_path(output: str | Path) -> Path:
    """Where a DeepFM's ONNX export writes its feature encoding: ``OUT.encoding.json``."""
    output = Path(output)
    return output.with_name(output.stem + ".encoding.json")


def _deepfm_onnx(model_dir: str | Path, output: str | Path) -> None:
    """The network as ONNX at ``output`` and its input encoding beside it (both new files)."""
    from fmkit.files import write_text
    from fmkit.models.artifact import strict_json
    from fmkit.models.deepfm import export
    from fmkit.models.deepfm.features import Encoded
    from fmkit.models.deepfm.model import DeepFMModel

    require_new(encoding_path(output), "fmkit export onnx")
    model = DeepFMModel.load(model_dir)
    body, content_type = model.warm_up_requests()[-1]  # rows enough for every input
    example = model.request_decoder()(body, content_type)
    if not isinstance(example, Encoded):
        example = model.encode(example)
    data = export.onnx_bytes(model, example)
    with output_stream(output) as out:
        out.write(data)
    write_text(encoding_path(output), strict_json(export.encoding(model), indent=1) + "\n")


def _deepfm_npz(model_dir: str | Path, output: str | Path) -> None:
    from fmkit.models.deepfm.model import DeepFMModel

    net = DeepFMModel.load(model_dir).net
    arrays = {}
    for prefix, banks in (("embedding", net.tables), ("wide", net.wide_tables)):
        for name in banks.slots:
            arrays[f"{prefix}/{name}"] = banks.table(name).detach().numpy()
    for name, value in net.state_dict().items():
        if "tables." not in name:
            arrays[name] = value.detach().numpy()
    with output_stream(output) as out:
        np.savez(out, **arrays)
