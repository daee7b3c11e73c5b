"""An FM's weights for other runtimes: an ONNX graph, a numpy ``.npz`` or a Parquet table.

The ONNX graph scores sparse rows given as flat inputs — ``indices`` (int64 feature ids),
``values`` (float32) and ``rows`` (int64, the row of each nonzero), and for a field-aware FM
``fields`` (int64, each nonzero's field) — plus ``batch_size`` (int64, shape [1]), and computes
exactly what :mod:`fmkit.models.fm.parameters` (and :mod:`fmkit.models.fm.ffm`) write down
(an FFM fitted on a matrix takes no ``fields``: the graph looks each id's column field up)::

    y = w0 + sum w_i x_i + 1/2 sum_f [ (sum_i v_if x_i)^2 - sum_i v_if^2 x_i^2 ]          (FM)
    y = w0 + sum w_i x_i + sum_{a<b} <v_{i_a, f_b}, v_{i_b, f_a}> x_a x_b                (FFM)

with the row sums as ``ScatterElements(reduction="add")`` (opset 18). The FFM's pairs are
summed per row and field pair first: ``A[r, f, g] = sum over the row's nonzeros a of field f of
v_{i_a, g} x_a``, so that the sum over all ordered pairs is ``sum_{f,g} <A[r,f,g], A[r,g,f]>``,
of which the pairs of a nonzero with itself (``|v_{i_a, f_a}|^2 x_a^2``) are taken out and the
rest halved: O(rows * fields^2 * k), never a pair list. Each key appears once per row (as the
server asks). A model trained with ``instance_norm=1`` scales each row to unit length first,
in the graph. Outputs: ``y`` and ``score`` (sigmoid(y) for a binary classifier, y for a
regressor), one per row. A row with no nonzero scores w0.

The ``.npz`` holds ``w0`` (1,), ``w`` (d,), ``V`` (d, k) — (d, num_fields, k) for a
field-aware FM — as float32; the Parquet table one row per feature: ``feature``, ``w`` and
``v`` (a list of k floats; of num_fields * k for an FFM, field after field).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fmkit.errors import MissingDependency
from fmkit.models.fm.model import FMModel

OPSET = 18


def onnx_model(model: FMModel):
    """The FM or FFM as an ``onnx.ModelProto`` (see the module docstring)."""
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        raise MissingDependency("ONNX export needs the onnx package: pip install "
                                "'fmkit[export]'") from None

    params, fields = model.params, model.num_fields
    constants = {"w0": np.asarray(params.w0, np.float32).reshape(1),
                 "w": np.ascontiguousarray(params.w, np.float32),
                 "V": np.ascontiguousarray(params.V, np.float32),
                 "width": np.array([params.num_factors], np.int64),
                 "one_axis": np.array([1], np.int64), "half": np.array(0.5, np.float32)}
    node = helper.make_node
    zeros = {"value": helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0])}
    nodes = [
        node("Gather", ["w", "indices"], ["w_nz"], axis=0),
        node("Mul", ["w_nz", "x"], ["wx"]),
        node("ConstantOfShape", ["batch_size"], ["zeros_n"], **zeros),
        node("ScatterElements", ["zeros_n", "rows", "wx"], ["linear"], axis=0,
             reduction="add"),
        node("Gather", ["V", "indices"], ["v_nz"], axis=0),
        node("Unsqueeze", ["x", "one_axis"], ["x_col"]),
        node("Mul", ["v_nz", "x_col"], ["vx"]),  # each nonzero's factors times its value
        node("Shape", ["vx"], ["shape_like"]),
        node("Add", ["linear", "pairs"], ["without_bias"]),
        node("Add", ["without_bias", "w0"], ["y"]),
        node("Sigmoid" if model.predictor_type == "binary_classifier" else "Identity", ["y"],
             ["score"]),
    ]
    if model.hyperparameters.get("instance_norm"):
        nodes += _unit_rows(node, constants)
    else:
        nodes.append(node("Identity", ["values"], ["x"]))
    if fields:
        nodes += _ffm_pairs(node, zeros, constants, fields, params.num_factors // fields)
    else:
        nodes += _fm_pairs(node, zeros)
    given_fields = fields and model.column_fields is None
    if fields and not given_fields:  # fitted on a matrix: each id's field is its column's
        constants["column_fields"] = model.column_fields.astype(np.int64)
        nodes.append(node("Gather", ["column_fields", "indices"], ["fields"], axis=0))
    inputs = [helper.make_tensor_value_info(name, TensorProto.INT64, ["nnz"])
              for name in ("indices", "rows", *(["fields"] if given_fields else []))]
    inputs += [helper.make_tensor_value_info("values", TensorProto.FLOAT, ["nnz"]),
               helper.make_tensor_value_info("batch_size", TensorProto.INT64, [1])]
    graph = helper.make_graph(
        _ordered(nodes, {*constants, *(i.name for i in inputs)}),
        "fmkit_ffm" if fields else "fmkit_fm", inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"]),
         helper.make_tensor_value_info("score", TensorProto.FLOAT, ["n"])],
        [numpy_helper.from_array(value, name) for name, value in constants.items()])
    result = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                               producer_name="fmkit")
    onnx.checker.check_model(result)
    return result


def _unit_rows(node, constants: dict) -> list:
    """``x``: the values divided by their row's L2 length (a row of zeros kept), as
    :func:`fmkit.data.batch.unit_rows` scales a model's rows (``instance_norm=1``)."""
    constants.update(zero=np.array(0.0, np.float32), one=np.array(1.0, np.float32))
    return [
        node("Mul", ["values", "values"], ["squares"]),
        node("ScatterElements", ["zeros_n", "rows", "squares"], ["row_squares"], axis=0,
             reduction="add"),
        node("Sqrt", ["row_squares"], ["row_lengths"]),
        node("Gather", ["row_lengths", "rows"], ["lengths"], axis=0),
        node("Greater", ["lengths", "zero"], ["nonzero_row"]),
        node("Div", ["one", "lengths"], ["inverse_lengths"]),
        node("Where", ["nonzero_row", "inverse_lengths", "one"], ["scales"]),
        node("Mul", ["values", "scales"], ["x"]),
    ]


def _summed_by(node, zeros, index: str, count: str, sums: dict[str, str]) -> list:
    """Each nonzero's row (``width`` long) of every input of ``sums`` added into row
    ``index`` of a zero ``(count, width)`` table, named by ``sums``' values: the per-row (or
    per row and field) sums both graphs take."""
    return [
        node("Concat", [count, "width"], [f"shape_by_{index}"], axis=0),
        node("ConstantOfShape", [f"shape_by_{index}"], [f"zeros_by_{index}"], **zeros),
        node("Unsqueeze", [index, "one_axis"], [f"{index}_col"]),
        node("Expand", [f"{index}_col", "shape_like"], [f"{index}_wide"]),
        *(node("ScatterElements", [f"zeros_by_{index}", f"{index}_wide", value], [total],
               axis=0, reduction="add") for value, total in sums.items()),
    ]


def _fm_pairs(node, zeros) -> list:
    """``pairs``: 1/2 sum_f [(sum_i v_if x_i)^2 - sum_i v_if^2 x_i^2] per row."""
    return [
        node("Mul", ["vx", "vx"], ["vx2"]),
        *_summed_by(node, zeros, "rows", "batch_size", {"vx": "sum_vx", "vx2": "sum_vx2"}),
        node("Mul", ["sum_vx", "sum_vx"], ["square_of_sum"]),
        node("Sub", ["square_of_sum", "sum_vx2"], ["pairs_f"]),
        node("ReduceSum", ["pairs_f", "one_axis"], ["pairs_sum"], keepdims=0),
        node("Mul", ["pairs_sum", "half"], ["pairs"]),
    ]


def _ffm_pairs(node, zeros, constants: dict, fields: int, k: int) -> list:
    """``pairs``: sum_{a<b} <v_{i_a, f_b}, v_{i_b, f_a}> x_a x_b per row, through the sums
    ``A[r, f, g]`` of the module docstring (adds its constants to ``constants``)."""
    constants.update(
        fields_count=np.array([fields], np.int64),
        shape_rffk=np.array([-1, fields, fields, k], np.int64),
        shape_nfk=np.array([-1, fields, k], np.int64),
        shape_11k=np.array([1, 1, k], np.int64),
        axes_12=np.array([1, 2], np.int64), axes_123=np.array([1, 2, 3], np.int64))
    return [
        node("Mul", ["rows", "fields_count"], ["row_start"]),
        node("Add", ["row_start", "fields"], ["slot"]),  # (row, own field) of each nonzero
        node("Mul", ["batch_size", "fields_count"], ["slots"]),
        *_summed_by(node, zeros, "slot", "slots", {"vx": "sums"}),
        node("Reshape", ["sums", "shape_rffk"], ["A"]),
        node("Transpose", ["A"], ["A_swapped"], perm=[0, 2, 1, 3]),
        node("Mul", ["A", "A_swapped"], ["products"]),
        node("ReduceSum", ["products", "axes_123"], ["ordered_pairs"], keepdims=0),
        node("Reshape", ["vx", "shape_nfk"], ["vx_fields"]),
        node("Unsqueeze", ["fields", "axes_12"], ["own_field"]),
        node("Expand", ["own_field", "shape_11k"], ["own_field_k"]),
        node("GatherElements", ["vx_fields", "own_field_k"], ["own"], axis=1),
        node("Mul", ["own", "own"], ["own2"]),
        node("ReduceSum", ["own2", "axes_12"], ["self_pairs_nz"], keepdims=0),
        node("ScatterElements", ["zeros_n", "rows", "self_pairs_nz"], ["self_pairs"], axis=0,
             reduction="add"),
        node("Sub", ["ordered_pairs", "self_pairs"], ["twice_pairs"]),
        node("Mul", ["twice_pairs", "half"], ["pairs"]),
    ]


def _ordered(nodes: list, made: set[str]) -> list:
    """The nodes in an order where every input is made before it is used (ONNX requires a
    topological order); ``made``: the graph's inputs and constants."""
    made = set(made)
    ordered, waiting = [], list(nodes)
    while waiting:
        ready = [n for n in waiting if all(i in made for i in n.input)]
        if not ready:
            raise AssertionError(f"ONNX graph: no node can run next of {waiting}")
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
    and renamed into place). Parquet: a row per feature (``feature``, ``w``, ``v``: its k
    factors, or an FFM's list of a k-list per field), ``w0``, ``predictor_type`` and
    ``model_type`` in the schema's metadata."""
    from fmkit.files import output_stream

    arrays = weights(model)
    with output_stream(path) as out:
        if fmt == "npz":
            np.savez(out, **arrays)
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        V = arrays["V"]  # (features, k), or an FFM's (features, fields, k): lists of lists
        v = pa.array(V.reshape(-1))
        for width in reversed(V.shape[1:]):
            v = pa.FixedSizeListArray.from_arrays(v, width)
        table = pa.table({"feature": np.arange(model.feature_dim, dtype=np.int64),
                          "w": arrays["w"], "v": v})
        metadata = {"w0": repr(float(arrays["w0"][0])), "predictor_type": model.predictor_type,
                    "model_type": "ffm" if model.field_aware else "fm"}
        pq.write_table(table.replace_schema_metadata(metadata), out)
