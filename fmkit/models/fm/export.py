"""An FM's weights for other runtimes: an ONNX graph, a numpy ``.npz`` or a Parquet table.

The ONNX graph scores sparse rows given as three flat inputs — ``indices`` (int64 feature
ids), ``values`` (float32) and ``rows`` (int64, the row of each nonzero) — plus
``batch_size`` (int64, shape [1]), and computes exactly what :mod:`fmkit.models.fm.parameters`
writes down::

    y = w0 + sum w_i x_i + 1/2 sum_f [ (sum_i v_if x_i)^2 - sum_i v_if^2 x_i^2 ]

with the row sums as ``ScatterElements(reduction="add")`` (opset 18). Outputs: ``y`` and
``score`` (sigmoid(y) for a binary classifier, y for a regressor), one per row. A row with no
nonzero scores w0.

The ``.npz`` holds ``w0`` (1,), ``w`` (d,), ``V`` (d, k) — (d, num_fields, k) for a
field-aware FM — as float32; the Parquet table one row per feature: ``feature``, ``w`` and
``v`` (a list of k floats; of num_fields * k for an FFM, field after field).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fmkit.errors import ArtifactError, MissingDependency
from fmkit.models.fm.model import FMModel

OPSET = 18


def onnx_model(model: FMModel):
    """The FM as an ``onnx.ModelProto`` (see the module docstring)."""
    if model.field_aware:
        raise ArtifactError("ONNX export covers the FM (model_type=fm); a field-aware FM's "
                            "pairs depend on both features' fields: export its weights with "
                            "fmkit export npz")
    if model.hyperparameters.get("instance_norm"):
        raise ArtifactError("ONNX export covers rows scored as they come; this model scales "
                            "each row to unit length first (instance_norm=1): export its "
                            "weights with fmkit export npz")
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        raise MissingDependency("ONNX export needs the onnx package: pip install "
                                "'fmkit[export]'") from None

    params = model.params
    k = params.num_factors
    w0 = np.asarray(params.w0, np.float32).reshape(1)
    initializers = [numpy_helper.from_array(w0, "w0"),
                    numpy_helper.from_array(np.ascontiguousarray(params.w, np.float32), "w"),
                    numpy_helper.from_array(np.ascontiguousarray(params.V, np.float32), "V"),
                    numpy_helper.from_array(np.array([k], np.int64), "k"),
                    numpy_helper.from_array(np.array([1], np.int64), "one_axis"),
                    numpy_helper.from_array(np.array(0.5, np.float32), "half")]
    node = helper.make_node
    nodes = [
        node("Gather", ["w", "indices"], ["w_nz"], axis=0),
        node("Mul", ["w_nz", "values"], ["wx"]),
        node("ConstantOfShape", ["batch_size"], ["zeros_n"],
             value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0])),
        node("ScatterElements", ["zeros_n", "rows", "wx"], ["linear"], axis=0,
             reduction="add"),
        node("Gather", ["V", "indices"], ["v_nz"], axis=0),
        node("Unsqueeze", ["values", "one_axis"], ["x_col"]),
        node("Mul", ["v_nz", "x_col"], ["vx"]),
        node("Mul", ["vx", "vx"], ["vx2"]),
        node("Concat", ["batch_size", "k"], ["shape_nk"], axis=0),
        node("ConstantOfShape", ["shape_nk"], ["zeros_nk"],
             value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0])),
        node("Unsqueeze", ["rows", "one_axis"], ["rows_col"]),
        node("Expand", ["rows_col", "shape_like"], ["rows_nk"]),
        node("ScatterElements", ["zeros_nk", "rows_nk", "vx"], ["sum_vx"], axis=0,
             reduction="add"),
        node("ScatterElements", ["zeros_nk", "rows_nk", "vx2"], ["sum_vx2"], axis=0,
             reduction="add"),
        node("Mul", ["sum_vx", "sum_vx"], ["square_of_sum"]),
        node("Sub", ["square_of_sum", "sum_vx2"], ["pairs_f"]),
        node("ReduceSum", ["pairs_f", "one_axis"], ["pairs_sum"], keepdims=0),
        node("Mul", ["pairs_sum", "half"], ["pairs"]),
        node("Add", ["linear", "pairs"], ["without_bias"]),
        node("Add", ["without_bias", "w0"], ["y"]),
        node("Shape", ["vx"], ["shape_like"]),
    ]
    classifier = model.predictor_type == "binary_classifier"
    nodes.append(node("Sigmoid" if classifier else "Identity", ["y"], ["score"]))
    graph = helper.make_graph(
        _ordered(nodes), "fmkit_fm",
        [helper.make_tensor_value_info("indices", TensorProto.INT64, ["nnz"]),
         helper.make_tensor_value_info("values", TensorProto.FLOAT, ["nnz"]),
         helper.make_tensor_value_info("rows", TensorProto.INT64, ["nnz"]),
         helper.make_tensor_value_info("batch_size", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"]),
         helper.make_tensor_value_info("score", TensorProto.FLOAT, ["n"])],
        initializers)
    result = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                               producer_name="fmkit")
    onnx.checker.check_model(result)
    return result


def _ordered(nodes: list) -> list:
    """The nodes in an order where every input is made before it is used (ONNX requires a
    topological order)."""
    made = {"w", "V", "w0", "k", "one_axis", "half", "indices", "values", "rows", "batch_size"}
    ordered, waiting = [], list(nodes)
    while waiting:
        ready = [n for n in waiting if all(i in made for i in n.input)]
        for n in ready:
            ordered.append(n)
            made.update(n.output)
            waiting.remove(n)
    return ordered


def weights(model: FMModel) -> dict[str, np.ndarray]:
    """``w0``, ``w`` and ``V`` (an FFM's as (d, num_fields, k)) as float32 arrays."""
    params = model.params
    V = np.asarray(params.V, np.float32)
    if model.field_aware:
        V = V.reshape(params.feature_dim, model.num_fields, -1)
    return {"w0": np.asarray(params.w0, np.float32).reshape(1),
            "w": np.asarray(params.w, np.float32), "V": V}


def write_weights(model: FMModel, path: str | Path, fmt: str) -> None:
    """``fmkit export npz|parquet``: the weights to ``path`` (written under a temporary name
    and renamed into place)."""
    from fmkit.files import output_stream

    arrays = weights(model)
    with output_stream(path) as out:
        if fmt == "npz":
            np.savez(out, **arrays)
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        V = arrays["V"].reshape(model.feature_dim, -1)
        table = pa.table({"feature": np.arange(model.feature_dim, dtype=np.int64),
                          "w": arrays["w"],
                          "v": pa.FixedSizeListArray.from_arrays(pa.array(V.reshape(-1)),
                                                                 V.shape[1])})
        metadata = {"w0": repr(float(arrays["w0"][0])), "predictor_type": model.predictor_type}
        pq.write_table(table.replace_schema_metadata(metadata), out)
