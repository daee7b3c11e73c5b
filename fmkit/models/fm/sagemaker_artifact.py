"""SageMaker Factorization Machines' ``model.tar.gz``, read and written without MXNet.

SageMaker's training job leaves ``model.tar.gz`` holding one file, ``model_algo-1``: a zip of
an MXNet module — ``symbol.json`` (the graph), ``params`` (an NDArray list file, see
:mod:`fmkit.models.fm.mxnet_format`, with ``arg:w0_weight`` (1,), ``arg:w1_weight`` (d, 1) and
``arg:v`` (d, k)) and ``meta.json`` (``training_parameters``, the job's hyperparameters).

:func:`read_artifact` turns one into an :class:`FMModel`; what it does not carry is asked for:
the hyperparameters come, most binding first, from the caller (``NAME=VALUE``, a
``hyperparameters.json``), from ``meta.json``, and for ``predictor_type`` last from the
graph's output operator (a logistic output or sigmoid: ``binary_classifier``; a linear
regression output: ``regressor``). What fixes the weights' meaning cannot be overridden: a
given ``feature_dim``, ``num_factors`` or ``predictor_type`` that the artifact contradicts is
an error. :func:`write_artifact` writes the same layout for an fmkit
FM, with a ``symbol.json`` MXNet binds and runs (input ``data``, dense (n, d); output: the score).

Archives are read in memory, member by member, with every declared size checked against the
memory available first; nothing is extracted to disk.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fmkit.errors import ArtifactError, HyperparameterError, excerpt
from fmkit.memory import available_bytes
from fmkit.models.fm.hyperparameters import BY_NAME, validate
from fmkit.models.fm.model import FMModel
from fmkit.models.fm.mxnet_format import read_ndarrays, write_ndarrays
from fmkit.models.fm.parameters import FMParameters

log = logging.getLogger(__name__)

MEMBER = "model_algo-1"
MODULE_FILES = ("symbol.json", "params", "meta.json")
CLASSIFIER_OPS = {"LogisticRegressionOutput", "sigmoid"}
REGRESSOR_OPS = {"LinearRegressionOutput"}


def _check_size(source: str, name: str, size: int) -> None:
    available = available_bytes()
    if available is not None and size > available // 2:
        raise ArtifactError(f"{source}: {name} declares {size} bytes, more than half the "
                            f"{available} bytes of memory available")


def _module_zip(path: Path) -> tuple[bytes, str]:
    """The bytes of ``model_algo-1`` (from a ``model.tar.gz``, or given directly) and the name
    to use for it in messages."""
    if zipfile.is_zipfile(path):
        _check_size(str(path), MEMBER, path.stat().st_size)
        return path.read_bytes(), str(path)
    try:
        with tarfile.open(path, "r:*") as archive:
            members = [m for m in archive.getmembers() if Path(m.name).name == MEMBER]
            if not members:
                names = ", ".join(m.name for m in archive.getmembers()[:5]) or "nothing"
                raise ArtifactError(f"{path}: holds no {MEMBER} (it holds {names}); is it "
                                    "a SageMaker Factorization Machines model.tar.gz?")
            member = members[0]
            if member.isdir() and any(m.name == f"{member.name}/model.json"
                                      for m in archive.getmembers()):
                raise ArtifactError(f"{path}: its {member.name} is an fmkit model directory "
                                    "(fmkit sagemaker train wrote it), not SageMaker's FM: "
                                    f"nothing to import; unpack it (tar -xzf {path}) and use "
                                    "the directory it holds (or the folder above it)")
            if not member.isfile():
                raise ArtifactError(f"{path}: {member.name} is not a regular file")
            _check_size(str(path), member.name, member.size)
            stream = archive.extractfile(member)
            assert stream is not None  # a regular file
            return stream.read(), f"{path}:{member.name}"
    except (tarfile.TarError, EOFError, OSError) as e:
        if isinstance(e, OSError) and e.filename:
            raise
        why = (str(e).splitlines() or [type(e).__name__])[0].rstrip(":")  # (tarfile's
        # message lists every compression it tried, a line each)
        raise ArtifactError(f"{path}: not a SageMaker model.tar.gz (a gzipped tar holding "
                            f"{MEMBER}) nor a {MEMBER} zip: {why}") from None


def _module_files(path: Path) -> tuple[dict[str, bytes], str]:
    data, source = _module_zip(path)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            found = {}
            for info in archive.infolist():
                name = Path(info.filename).name
                if name in MODULE_FILES and not info.is_dir():
                    _check_size(source, info.filename, info.file_size)
                    found[name] = archive.read(info)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError) as e:
        raise ArtifactError(f"{source}: not a zip of an MXNet module: {e}") from None
    if "params" not in found:
        raise ArtifactError(f"{source}: has no params file (it should hold symbol.json, "
                            "params and meta.json)")
    return found, source


def _json(found: dict[str, bytes], name: str, source: str) -> dict:
    if name not in found:
        return {}
    try:
        value = json.loads(found[name])
    except ValueError as e:
        raise ArtifactError(f"{source}/{name}: not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise ArtifactError(f"{source}/{name}: expected a JSON object")
    return value


def _predictor_from_symbol(symbol: dict) -> str | None:
    """``binary_classifier``/``regressor`` when the graph's operators say so unambiguously."""
    nodes = symbol.get("nodes")
    ops = set()
    for node in nodes if isinstance(nodes, list) else []:
        if not isinstance(node, dict):
            continue
        attrs = node.get("attrs") or node.get("param")
        sigmoid = isinstance(attrs, dict) and attrs.get("act_type") == "sigmoid"
        ops.add("sigmoid" if node.get("op") == "Activation" and sigmoid else str(node.get("op")))
    classifier, regressor = bool(ops & CLASSIFIER_OPS), bool(ops & REGRESSOR_OPS)
    if classifier != regressor:
        return "binary_classifier" if classifier else "regressor"
    return None


def _weights(arrays: dict[str, np.ndarray], source: str) -> FMParameters:
    named = {name.removeprefix("arg:"): array for name, array in arrays.items()
             if not name.startswith("aux:")}
    missing = [name for name in ("w0_weight", "w1_weight", "v") if name not in named]
    if missing:
        shown = ", ".join(excerpt(name) for name in list(named)[:6])
        raise ArtifactError(f"{source}/params: has no {', '.join(missing)} (it has {shown}); "
                            "is it a Factorization Machines model?")
    w0, w, V = named["w0_weight"], named["w1_weight"], named["v"]
    if V.ndim != 2 or w.size != V.shape[0] or w.ndim > 2 or w0.size != 1:
        raise ArtifactError(f"{source}/params: shapes w0_weight {w0.shape}, w1_weight "
                            f"{w.shape}, v {V.shape} are not (1,), (d, 1), (d, k)")
    if V.shape[0] == 0 or V.shape[1] == 0:
        raise ArtifactError(f"{source}/params: v has shape {V.shape}: no features or factors")
    for name, array in (("w0_weight", w0), ("w1_weight", w), ("v", V)):
        if not np.issubdtype(array.dtype, np.floating) or not np.isfinite(array).all():
            raise ArtifactError(f"{source}/params: {name} holds values that are not finite "
                                "floating-point numbers")
    return FMParameters(w0.astype(np.float32).reshape(1), w.astype(np.float32).reshape(-1),
                        V.astype(np.float32))


def read_artifact(path: str | Path, given: Mapping[str, Any], index_base: int | None = None
                  ) -> FMModel:
    """The FM of a SageMaker ``model.tar.gz`` (or its ``model_algo-1`` zip); ``given``
    hyperparameters override those the artifact carries (see the module docstring).
    ``index_base``: the first feature id of the model's libsvm input; by default what an
    fmkit export recorded, else 0 (SageMaker's feature ids start at 0)."""
    path = Path(path)
    found, source = _module_files(path)
    params = _weights(read_ndarrays(found["params"], f"{source}/params"), source)
    document = _json(found, "meta.json", source)
    if index_base is None:
        index_base = 1 if (document.get("fmkit") or {}).get("index_base") == 1 else 0
    meta = document.get("training_parameters") or {}
    if not isinstance(meta, dict):
        raise ArtifactError(f"{source}/meta.json: training_parameters is not an object")
    kept = {name: value for name, value in meta.items() if name in BY_NAME}
    if len(kept) < len(meta):
        log.info("meta.json: not fmkit hyperparameters, ignored: %s",
                 ", ".join(sorted(set(meta) - set(kept))))
    hp = {**kept, **given}
    shapes = {"feature_dim": params.feature_dim, "num_factors": params.num_factors}
    for name, value in shapes.items():
        if name in hp and str(hp[name]).strip() != str(value):
            where = "given" if name in given else "in meta.json"
            raise HyperparameterError(f"{source}: {name}={hp[name]} {where}, but the weights "
                                      f"have {name} {value}")
    hp.update(shapes)
    guessed = _predictor_from_symbol(_json(found, "symbol.json", source))
    wanted = str(given.get("predictor_type", "")).strip()
    for said, where in ((kept.get("predictor_type"), "meta.json says"),
                        (guessed, "the output operator of symbol.json makes it")):
        if wanted and said and wanted != str(said).strip():  # (its scores would be misread)
            raise HyperparameterError(f"{source}: predictor_type={wanted} given, but {where} "
                                      f"a {said}")
    if "predictor_type" not in hp:
        if guessed is None:
            raise HyperparameterError(
                f"{source}: the artifact does not say whether it is a binary_classifier or a "
                "regressor: give predictor_type=binary_classifier|regressor (or "
                "--hyperparameters with the training job's hyperparameters.json)")
        log.info("predictor_type=%s, from the output operator of symbol.json", guessed)
        hp["predictor_type"] = guessed
    hp = validate(hp, saved=True)
    if hp["model_type"] != "fm":
        raise HyperparameterError(f"{source}: SageMaker's models are FMs: model_type="
                                  f"{hp['model_type']} does not apply")
    return FMModel(hp, params, index_base)


def _symbol(predictor_type: str, d: int, k: int) -> dict:
    """The FM as an MXNet symbol graph over dense input ``data`` (n, d)::

        y = data . w1 + w0 + 1/2 sum_f [ (data . v)^2 - data^2 . v^2 ]

    with a sigmoid on top for a binary classifier."""
    nodes: list[dict] = []

    def add(op: str, name: str, inputs: tuple[int, ...] = (), **attrs: str) -> int:
        node = {"op": op, "name": name, "inputs": [[i, 0, 0] for i in inputs]}
        if attrs:
            node["attrs"] = attrs
        nodes.append(node)
        return len(nodes) - 1

    data = add("null", "data")
    w1 = add("null", "w1_weight", __shape__=f"({d}, 1)")
    w0 = add("null", "w0_weight", __shape__="(1,)")
    v = add("null", "v", __shape__=f"({d}, {k})")
    linear = add("broadcast_add", "linear", (add("dot", "xw", (data, w1)), w0))
    xv_squared = add("square", "xv_squared", (add("dot", "xv", (data, v)),))
    x2v2 = add("dot", "x2v2", (add("square", "x_squared", (data,)),
                               add("square", "v_squared", (v,))))
    pairs = add("_mul_scalar", "pairs", (add("sum", "pairs_sum", (
        add("elemwise_sub", "pairs_f", (xv_squared, x2v2)),), axis="1", keepdims="True"),),
        scalar="0.5")
    head = add("elemwise_add", "y", (linear, pairs))
    if predictor_type == "binary_classifier":
        head = add("sigmoid", "score", (head,))
    return {"nodes": nodes, "arg_nodes": [data, w1, w0, v],
            "node_row_ptr": list(range(len(nodes) + 1)), "heads": [[head, 0, 0]],
            "attrs": {"mxnet_version": ["int", 10901]}}


def artifact_bytes(model: FMModel) -> bytes:
    """``model.tar.gz`` of an FM (see the module docstring)."""
    if model.field_aware:
        raise ArtifactError("SageMaker's Factorization Machines has no field-aware FM: "
                            "export an FFM's weights with fmkit export npz")
    if model.hyperparameters.get("instance_norm"):
        raise ArtifactError("SageMaker's Factorization Machines scores rows as they come; this "
                            "model scales each row to unit length first (instance_norm=1)")
    p = model.params
    params = write_ndarrays({"arg:w0_weight": p.w0.astype(np.float32).reshape(1),
                             "arg:w1_weight": p.w.astype(np.float32).reshape(-1, 1),
                             "arg:v": np.ascontiguousarray(p.V, np.float32)})
    meta = {"training_parameters": {name: str(value) for name, value
                                    in model.hyperparameters.items() if value is not None},
            "fmkit": {"index_base": model.index_base}}
    module = io.BytesIO()
    with zipfile.ZipFile(module, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("symbol.json", json.dumps(
            _symbol(model.predictor_type, p.feature_dim, p.num_factors), indent=1))
        archive.writestr("params", params)
        archive.writestr("meta.json", json.dumps(meta, indent=1))
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        info = tarfile.TarInfo(MEMBER)
        info.size, info.mode, info.mtime = len(module.getvalue()), 0o644, int(time.time())
        archive.addfile(info, io.BytesIO(module.getvalue()))
    return out.getvalue()
