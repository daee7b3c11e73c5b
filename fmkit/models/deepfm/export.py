"""A DeepFM as ONNX: the network over encoded inputs, and the encoding as JSON beside it.

The graph is :meth:`DeepFMNet.score` traced by PyTorch's ONNX exporter. Its inputs are what
the feature encoding produces, one pair per embedding bank (tables of one width and pooling
stored side by side, see :class:`~fmkit.models.deepfm.network.Banks`):

- ``<bank>.ids`` (int64): the bank's members' ids, member after member, each id already moved
  to its table's rows (plus the member's ``base``), and ``<bank>.offsets`` (int64): where each
  (member, row) bag starts — ``members * n`` of them; the same for the wide tables
  (``wide.<bank>.ids``/``.offsets``);
- ``dense`` (float32, [dense features, n]) when the model has raw dense features.

Outputs: ``y`` (the logits, [n], or [n, num_class]) and ``score`` (sigmoid of y for a binary
classifier, softmax over classes for several, y for a regressor).

The encoding JSON lists those inputs with their member features and bases, the dense
features' order, the hash function of ``hash_bucket_size`` features and the model's feature
configuration (TorchEasyRec's fields: vocabularies, boundaries; docs/deepfm.md says how each
becomes an id), so that another runtime can turn raw columns into the inputs;
``fmkit`` itself does so with :meth:`Banks.lookups`.
"""

from __future__ import annotations

import io
import logging
import warnings
from typing import Any

from fmkit.models.deepfm import torch_required  # noqa: F401  (before PyTorch, an extra)

# isort: split
import torch
from torch import nn

from fmkit.errors import MissingDependency
from fmkit.models.deepfm import config as configs
from fmkit.models.deepfm.model import DeepFMModel

OPSET = 17
FNV_OFFSET, FNV_PRIME = 14695981039346656037, 1099511628211  # features.hash_strings' hash


class _Graph(nn.Module):
    """:meth:`DeepFMNet.score` with flat tensor inputs, in :func:`input_names` order."""

    def __init__(self, model: DeepFMModel):
        super().__init__()
        self.net = model.net
        self.banks = list(self.net.tables.members)
        self.wide_banks = list(self.net.wide_tables.members)
        self.predictor_type = model.predictor_type

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        it = iter(tensors)
        lookups = {bank: (next(it), next(it)) for bank in self.banks}
        wide = {bank: (next(it), next(it)) for bank in self.wide_banks}
        y = self.net.score(lookups, wide, next(it, None))
        if self.predictor_type == "binary_classifier":
            return y, torch.sigmoid(y)
        if self.predictor_type == "multiclass_classifier":
            return y, torch.softmax(y, dim=1)
        return y, y.clone()


def input_names(model: DeepFMModel) -> list[str]:
    net = model.net
    names = [f"{bank}.{part}" for bank in net.tables.members for part in ("ids", "offsets")]
    names += [f"wide.{bank}.{part}" for bank in net.wide_tables.members
              for part in ("ids", "offsets")]
    return names + (["dense"] if net.dense_names else [])


def example_inputs(model: DeepFMModel, encoded) -> list[torch.Tensor]:
    """The graph's inputs for encoded rows (:class:`~fmkit.models.deepfm.features.Encoded`),
    in :func:`input_names` order."""
    import numpy as np

    net = model.net
    tensors = []
    for banks in (net.tables, net.wide_tables):
        for ids, offsets in banks.lookups(encoded.sparse).values():
            tensors += [torch.from_numpy(ids), torch.from_numpy(offsets)]
    if net.dense_names:
        tensors.append(torch.from_numpy(np.stack([encoded.dense[name].reshape(-1)
                                                  for name in net.dense_names])))
    return tensors


def encoding(model: DeepFMModel) -> dict[str, Any]:
    """How raw columns become the graph's inputs (see the module docstring)."""
    net = model.net

    def banks(tables, prefix: str) -> list[dict]:
        return [{"ids": f"{prefix}{bank}.ids", "offsets": f"{prefix}{bank}.offsets",
                 "pooling": bank.split("_")[1], "dim": tables.widths[bank],
                 "members": [{"feature": name, "table": tables.feature_table[name],
                              "base": int(base)}
                             for name, base in zip(members, tables.bases[bank])]}
                for bank, members in tables.members.items()]

    return {"format": "fmkit DeepFM ONNX inputs", "opset": OPSET,
            "predictor_type": model.predictor_type,
            "banks": banks(net.tables, ""), "wide_banks": banks(net.wide_tables, "wide."),
            "dense": {"input": "dense", "features": list(net.dense_names)}
            if net.dense_names else None,
            "outputs": ["y", "score"],
            "hashing": {"function": "FNV-1a, 64-bit", "offset_basis": FNV_OFFSET,
                        "prime": FNV_PRIME, "input": "the value's text, UTF-8",
                        "id": "hash modulo hash_bucket_size"},
            "id_rules": "docs/deepfm.md, section Features",
            "feature_configs": configs.to_document(model.config)["feature_configs"]}


def onnx_bytes(model: DeepFMModel, example) -> bytes:
    """The serialized ONNX graph, traced on ``example`` (encoded rows, at least two)."""
    try:
        import onnx  # noqa: F401 - the exporter writes through it
    except ImportError:
        raise MissingDependency("ONNX export needs the onnx package: pip install "
                                "'fmkit[export]'") from None
    names = input_names(model)
    axes = {name: {0: "nnz" if name.endswith(".ids") else "bags"} for name in names}
    if "dense" in axes:
        axes["dense"] = {1: "n"}
    axes.update({"y": {0: "n"}, "score": {0: "n"}})
    graph = _Graph(model).eval()
    out = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on tracing and deprecation
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        torch.onnx.export(graph, tuple(example_inputs(model, example)), out,
                          input_names=names, output_names=["y", "score"],
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    return out.getvalue()
