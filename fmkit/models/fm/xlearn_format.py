"""xLearn's model files, read into an fmkit FM or FFM (``fmkit import xlearn``).

xLearn writes two forms. The binary checkpoint (``fit(param, "model.out")``) holds, little
endian: the score function (``linear``, ``fm``, ``ffm``) and the loss (``cross-entropy``,
``squared``), each as a 64-bit length and its bytes; then 32-bit counts — features, fields,
``k``, the optimizer's values per weight (``aux``: 1 for SGD, 2 for AdaGrad, 3 for FTRL), the
linear table's length and (not for ``linear``) the factor table's — then float32 tables: the
linear weights (``aux`` values each, the weight first), the bias (``aux`` values), and the
factors. A factor vector is padded to ``k`` rounded up to 4 (SSE's width): an FM's feature
holds its padded vector then ``aux - 1`` more of optimizer state; an FFM's (feature, field)
vector comes in blocks of 4 weights, each followed by ``aux - 1`` blocks of state. xLearn
scores with the padding, which FTRL trains (its weights start from its state, not from 0): a
padding that is not all zeros is kept as more factors. The text
model (``setTXTModel``) has a line per weight — ``bias: b``, ``i_j: w``, ``v_j: ...`` (FM) or
``v_j_f: ...`` (FFM) — with 6 significant digits, and no loss: the caller names the
predictor type.

Every count is checked against the file's length before a table is read, so a damaged or
foreign file is one line (:class:`ArtifactError`), never a read past its end. Feature ids are
xLearn's as they are (index 0 is column 0): the imported model reads libsvm and libffm with
``index_base`` 0.

Scoring (measured against xLearn 0.40's predictions): its normalization (on unless
``disableNorm()``) scales a row to unit length for its FFM, which fmkit's ``instance_norm=1``
does; its FM divides the pairwise terms by the squared length once more, which fmkit does not,
so an FM imports only as trained with ``disableNorm()`` (``instance_norm=0``); its linear model
scores rows as they are, normalized or not in training. xLearn's linear model becomes an FM
with one factor of zeros. A libffm row repeating a feature id in several fields scores
differently: fmkit reads one feature (:func:`fmkit.data.sources.merged_repeats`), xLearn two.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fmkit.errors import ArtifactError, HyperparameterError, excerpt
from fmkit.models.fm.hyperparameters import validate
from fmkit.models.fm.model import FMModel
from fmkit.models.fm.parameters import FMParameters

ALIGN = 4  # xLearn pads factor vectors to a multiple of SSE's 4 floats
KINDS = ("linear", "fm", "ffm")
LOSSES = {"cross-entropy": "binary_classifier", "squared": "regressor"}
TEXT_LINE = re.compile(r"(bias|i_(\d+)|v_(\d+)(?:_(\d+))?):(.*)")


@dataclass
class XLearnModel:
    """An xLearn model's weights: ``kind`` (linear, fm, ffm), the predictor type its loss
    means (None for a text model, which does not say), bias, linear weights ``w`` (d,), and
    factors ``V``: (d, k) for an FM, (d, fields, k) for an FFM, None for a linear model."""

    kind: str
    predictor_type: str | None
    w0: float
    w: np.ndarray
    V: np.ndarray | None


def read(path: str | Path) -> XLearnModel:
    """The model in an xLearn binary checkpoint or text model, told apart by content."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ArtifactError(f"{path}: cannot read: {e.strerror or e}") from None
    if raw[:8] in {struct.pack("<Q", len(kind)) for kind in KINDS}:
        return _binary(raw, str(path))
    return _text(raw, str(path))


class _Cursor:
    """Reads fixed-size values from the front of a file's bytes, each read checked against
    what is left; tables are views of the bytes, not copies (a model's tables are most of its
    file)."""

    def __init__(self, raw: bytes, source: str):
        self.raw, self.source, self.at = memoryview(raw), source, 0

    def take(self, size: int, what: str) -> memoryview:
        if size < 0 or self.at + size > len(self.raw):
            raise ArtifactError(f"{self.source}: not an xLearn model: the file ends inside "
                                f"{what} (byte {self.at} of {len(self.raw)})")
        self.at += size
        return self.raw[self.at - size:self.at]

    def text(self, what: str) -> str:
        (size,) = struct.unpack("<Q", self.take(8, what))
        if size > 64:
            raise ArtifactError(f"{self.source}: not an xLearn model: {what} of {size} bytes")
        return bytes(self.take(size, what)).decode("ascii", "replace")

    def floats(self, count: int, what: str) -> np.ndarray:
        return np.frombuffer(self.take(4 * count, what), dtype="<f4")


def _binary(raw: bytes, source: str) -> XLearnModel:
    cursor = _Cursor(raw, source)
    kind, loss = cursor.text("the score function"), cursor.text("the loss")
    if kind not in KINDS or loss not in LOSSES:
        raise ArtifactError(f"{source}: not an xLearn model: score function "
                            f"{excerpt(kind)}, loss {excerpt(loss)}")
    counts = 5 if kind == "linear" else 6
    features, fields, k, aux, n_w, *n_v = struct.unpack(
        f"<{counts}I", cursor.take(4 * counts, "the header"))
    padded = -(-k // ALIGN) * ALIGN
    expected_v = {"linear": [], "fm": [features * padded * aux],
                  "ffm": [features * fields * padded * aux]}[kind]
    if not 1 <= aux <= 3 or n_w != features * aux or n_v != expected_v or (
            kind != "linear" and k == 0) or (kind == "ffm" and fields == 0):
        raise ArtifactError(f"{source}: not an xLearn model: its counts disagree (features "
                            f"{features}, fields {fields}, k {k}, values per weight {aux}, "
                            f"tables {n_w} and {n_v})")
    if len(raw) != cursor.at + 4 * (n_w + aux + sum(n_v)):
        raise ArtifactError(f"{source}: not an xLearn model: {len(raw)} bytes where its "
                            f"counts make {cursor.at + 4 * (n_w + aux + sum(n_v))}")
    w = cursor.floats(n_w, "the linear weights")[::aux]
    w0 = float(cursor.floats(aux, "the bias")[0])
    V = None
    if kind == "fm":
        V = cursor.floats(n_v[0], "the factors").reshape(features, aux, padded)[:, 0]
    elif kind == "ffm":
        blocks = cursor.floats(n_v[0], "the factors").reshape(
            features, fields, padded // ALIGN, aux, ALIGN)
        V = blocks[:, :, :, 0, :].reshape(features, fields, padded)
    if V is not None and not V[..., k:].any():  # (FTRL trains the padding too, and xLearn
        V = V[..., :k]  # scores with it: it is kept where it is not zero)
    return XLearnModel(kind, LOSSES[loss], w0, w, V)


def _text(raw: bytes, source: str) -> XLearnModel:
    bias, linear, factors = None, {}, {}
    for number, line in enumerate(raw.decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        match = TEXT_LINE.fullmatch(line.strip())
        try:
            values = [float(v) for v in match.group(5).split()] if match else None
        except ValueError:
            values = None
        if not values:
            raise ArtifactError(f"{source}:{number}: not an xLearn model (binary, or text "
                                f"lines 'bias: b', 'i_j: w', 'v_j: ...'): "
                                f"{excerpt(line, 60)}")
        if match.group(1) == "bias":
            bias = values[0]
        elif match.group(2) is not None:
            linear[int(match.group(2))] = values[0]
        else:
            factors[(int(match.group(3)), match.group(4))] = values
    if bias is None or not linear:
        raise ArtifactError(f"{source}: not an xLearn text model: no bias or linear weights")
    features = max(linear) + 1
    if len(linear) != features:  # (xLearn writes i_0 .. i_{d-1}: the ids are counted, not
        # trusted, before a table of that size is made)
        raise ArtifactError(f"{source}: not an xLearn text model: linear weights i_0 to "
                            f"i_{features - 1} with {features - len(linear)} missing")
    w = np.zeros(features, np.float32)
    w[list(linear)] = list(linear.values())
    if not factors:
        return XLearnModel("linear", None, bias, w, None)
    ffm = next(iter(factors))[1] is not None
    if any((f is not None) != ffm for _, f in factors) or max(j for j, _ in factors) >= features:
        raise ArtifactError(f"{source}: not an xLearn text model: factor lines of both v_j "
                            f"and v_j_f, or of a feature without a linear weight")
    k = len(next(iter(factors.values())))
    fields = max(int(f) for _, f in factors) + 1 if ffm else 1
    if len(factors) != features * fields:
        raise ArtifactError(f"{source}: not an xLearn text model: {len(factors)} factor lines "
                            f"where {features} features and {fields} fields make "
                            f"{features * fields}")
    V = np.zeros((features, fields, k), np.float32)
    for (j, f), values in factors.items():
        if len(values) != k:
            raise ArtifactError(f"{source}: not an xLearn text model: v_{j}"
                                f"{'' if f is None else '_' + f} has {len(values)} values, "
                                f"others {k}")
        V[j, int(f or 0)] = values
    return XLearnModel("ffm" if ffm else "fm", None, bias, w, V if ffm else V[:, 0])


def to_fm_model(model: XLearnModel, given: Mapping[str, Any], source: str) -> FMModel:
    """The imported model as an fmkit FM or FFM. ``given`` hyperparameters name what the file
    does not say: ``predictor_type`` for a text model, ``instance_norm`` (an FFM's: xLearn's
    norm, on by default; an FM imports only without it); scoring settings only, not the
    weights' shape."""
    said = model.predictor_type
    wanted = str(given.get("predictor_type", "")).strip() or said
    if said and wanted != said:
        raise HyperparameterError(f"{source}: predictor_type={wanted} given, but the model's "
                                  f"loss makes it a {said}")
    if not wanted:
        raise HyperparameterError(f"{source}: an xLearn text model does not say its task: give "
                                  f"predictor_type=binary_classifier|regressor")
    unknown = set(given) - {"predictor_type", "instance_norm"}
    if unknown:
        raise HyperparameterError(f"{source}: an imported model takes predictor_type and "
                                  f"instance_norm only, not {', '.join(sorted(unknown))}")
    features = model.w.size
    if model.kind == "ffm":
        _, fields, k = model.V.shape
        table = model.V.reshape(features, fields * k)
    else:
        fields, k = 0, 1 if model.V is None else model.V.shape[1]
        table = np.zeros((features, 1), np.float32) if model.V is None else model.V
    hp = {"feature_dim": features, "num_factors": k, "predictor_type": wanted,
          "instance_norm": given.get("instance_norm", int(model.kind == "ffm")),
          "model_type": "ffm" if fields else "fm"}
    if fields:
        hp["num_fields"] = fields
    hp = validate(hp, saved=True)  # (instance_norm read by the one rule of 0/1 settings)
    if model.kind == "fm" and ("instance_norm" not in given or hp["instance_norm"]):
        raise HyperparameterError(
            f"{source}: an xLearn FM trained with its normalization (xLearn's default) divides "
            f"its pairwise terms by the row's squared length once more than fmkit's "
            f"instance_norm does, so fmkit would score it differently; if it was trained with "
            f"disableNorm(), give instance_norm=0")
    return FMModel(hp, FMParameters(np.array([model.w0], np.float32), model.w, table), 0)
