"""``fmkit export onnx|npz|parquet``: a model's weights for other runtimes.

An FM goes to ONNX (scored by onnxruntime as ``fmkit predict`` scores it), to a numpy
``.npz`` of w0, w and V, or to a Parquet table of one row per feature
(:mod:`fmkit.models.fm.export`). A DeepFM goes to ``.npz``: each embedding table under its
name (``embedding/<name>``, ``wide/<name>``) and the MLPs' weights under PyTorch's names.
The output must be a new file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fmkit.errors import ArtifactError
from fmkit.files import output_stream, require_new
from fmkit.models import artifact

FORMATS = ("onnx", "npz", "parquet")


def export_model(fmt: str, model_dir: str | Path, output: str | Path) -> None:
    require_new(output, "fmkit export")
    if artifact.model_type(model_dir) == "deepfm":
        if fmt != "npz":
            raise ArtifactError(f"{model_dir}: a DeepFM exports its weights as npz (ONNX and "
                                "Parquet export cover the FM)")
        _deepfm_npz(model_dir, output)
        return
    from fmkit.models.fm import export
    from fmkit.models.fm.model import FMModel

    model = FMModel.load(model_dir)
    if fmt == "onnx":
        graph = export.onnx_model(model)
        with output_stream(output) as out:
            out.write(graph.SerializeToString())
    else:
        export.write_weights(model, output, fmt)


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
