"""Eight coordinates of a table row as one value, so one update rule serves scalars and vectors.

The per-feature updates of the training kernels run over k (typically 8-64) coordinates of one
table row. Numba leaves such short loops to LLVM's loop vectorizer, which on AVX-512 machines
builds 16-lane loops that 8 coordinates never enter (they run through its 4-lane remainder,
after runtime overlap checks of every array involved), and numba keeps LLVM's straight-line
(SLP) vectorizer off. ``Lanes`` is an LLVM vector of eight floats: ``load_lanes`` and
``store_lanes`` move eight consecutive coordinates in one instruction, and the arithmetic
operators, unary minus, ``min``, ``max`` and ``np.sqrt`` work on it, mixing with scalars
(broadcast); ``lanes_sum`` adds the eight up, ``zero_lanes`` starts a vector sum. A rule
written for scalars with those operations therefore compiles for both: the kernels apply it to
a row's coordinates eight at a time, then to the rest one by one. Measured on this project's
AVX-512 machines (k=8, table in cache): Adam's per-row training 1.10 M -> 1.55 M rows/s, FTRL's
1.06 M -> 1.53 M; the forward pass +9%.
"""

from __future__ import annotations

import operator

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.imputils import lower_builtin
from numba.core.typing.templates import AbstractTemplate, infer_global, signature
from numba.extending import intrinsic, models, register_model

LANES = 8
# the kernels' floating-point freedoms (see fmkit.kernels.fm.FAST), on the vector instructions
FLAGS = ("nsz", "arcp", "contract", "reassoc")


class LanesType(types.Type):
    """Eight values of the float type ``dtype`` in one LLVM vector."""

    def __init__(self, dtype: types.Float):
        self.dtype = dtype
        super().__init__(name=f"Lanes({dtype})")


@register_model(LanesType)
class _LanesModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        element = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(element, LANES))


def _element_pointers(context, builder, array_type, array, start, start_type):
    """The address of ``array[start]`` as a vector pointer when the array is typed contiguous,
    else the addresses of ``array[start:start + 8]`` one by one (through its stride)."""
    values = context.make_array(array_type)(context, builder, array)
    first = context.cast(builder, start, start_type, types.intp)
    element = context.get_value_type(array_type.dtype)
    if array_type.layout == "C":
        pointer = builder.gep(values.data, [first])
        return builder.bitcast(pointer, ir.VectorType(element, LANES).as_pointer())
    stride = cgutils.unpack_tuple(builder, values.strides)[0]
    base = builder.ptrtoint(values.data, context.get_value_type(types.intp))
    return [builder.inttoptr(builder.add(base, builder.mul(builder.add(first, first.type(lane)),
                                                           stride)), element.as_pointer())
            for lane in range(LANES)]


def _convert(builder, vector, from_dtype, to_dtype):
    target = ir.VectorType(ir.DoubleType() if to_dtype.bitwidth == 64 else ir.FloatType(), LANES)
    if from_dtype.bitwidth < to_dtype.bitwidth:
        return builder.fpext(vector, target)
    if from_dtype.bitwidth > to_dtype.bitwidth:
        return builder.fptrunc(vector, target)
    return vector


def _is_float_vector(array) -> bool:
    return (isinstance(array, types.Array) and array.ndim == 1
            and isinstance(array.dtype, types.Float))


@intrinsic
def load_lanes(typingctx, array, start, like):
    """``array[start:start + 8]`` (a 1-D float array) as ``Lanes`` of the dtype of the array
    ``like``: one vector load where the array is typed contiguous. No bounds check: the caller
    keeps it in range."""
    if not _is_float_vector(array) or not isinstance(like, types.Array):
        return None
    result = LanesType(like.dtype)

    def codegen(context, builder, sig, args):
        array_type = sig.args[0]
        pointers = _element_pointers(context, builder, array_type, args[0], args[1],
                                     sig.args[1])
        align = array_type.dtype.bitwidth // 8
        if not isinstance(pointers, list):
            vector = builder.load(pointers, align=align)
        else:
            element = context.get_value_type(array_type.dtype)
            vector = ir.Constant(ir.VectorType(element, LANES), ir.Undefined)
            for lane, pointer in enumerate(pointers):
                vector = builder.insert_element(vector, builder.load(pointer, align=align),
                                                ir.IntType(32)(lane))
        return _convert(builder, vector, array_type.dtype, result.dtype)

    return result(array, start, like), codegen


@intrinsic
def store_lanes(typingctx, array, start, values):
    """``array[start:start + 8] = values``: one vector store where the array is typed
    contiguous (no bounds check)."""
    if not _is_float_vector(array) or not isinstance(values, LanesType):
        return None

    def codegen(context, builder, sig, args):
        array_type = sig.args[0]
        pointers = _element_pointers(context, builder, array_type, args[0], args[1],
                                     sig.args[1])
        vector = _convert(builder, args[2], sig.args[2].dtype, array_type.dtype)
        align = array_type.dtype.bitwidth // 8
        if not isinstance(pointers, list):
            builder.store(vector, pointers, align=align)
        else:
            for lane, pointer in enumerate(pointers):
                builder.store(builder.extract_element(vector, ir.IntType(32)(lane)), pointer,
                              align=align)
        return context.get_dummy_value()

    return types.void(array, start, values), codegen


@intrinsic
def lanes_sum(typingctx, values):
    """The sum of the eight values (in any order: the kernels' reassociation freedom)."""
    if not isinstance(values, LanesType):
        return None

    def codegen(context, builder, sig, args):
        vector_type = args[0].type
        element = vector_type.element
        bits = sig.args[0].dtype.bitwidth
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(element, [element, vector_type]),
            f"llvm.vector.reduce.fadd.v{LANES}f{bits}")
        # reassoc: the lanes may be added pairwise rather than strictly left to right
        return builder.call(function, [ir.Constant(element, -0.0), args[0]],
                            fastmath=("reassoc", "nsz"))

    return values.dtype(values), codegen


@intrinsic
def zero_lanes(typingctx, like):
    """Eight zeros as ``Lanes`` of the dtype of the array ``like``: a vector sum's start."""
    if not isinstance(like, types.Array) or not isinstance(like.dtype, types.Float):
        return None
    result = LanesType(like.dtype)

    def codegen(context, builder, sig, args):
        return ir.Constant(context.get_value_type(result), None)  # LLVM's zeroinitializer

    return result(like), codegen


def _operands(a, b):
    """The Lanes type of a binary operation on ``a`` and ``b`` (Lanes or numbers, at least one
    Lanes, Lanes of one dtype), or None."""
    kinds = [t for t in (a, b) if isinstance(t, LanesType)]
    if not kinds or any(not isinstance(t, (LanesType, types.Number)) for t in (a, b)):
        return None
    if len(kinds) == 2 and a.dtype != b.dtype:
        return None
    return kinds[0]


def _as_vector(context, builder, value, value_type, lanes_type):
    if isinstance(value_type, LanesType):
        return value
    scalar = context.cast(builder, value, value_type, lanes_type.dtype)
    vector_type = context.get_value_type(lanes_type)
    single = builder.insert_element(ir.Constant(vector_type, ir.Undefined), scalar,
                                    ir.IntType(32)(0))
    return builder.shuffle_vector(single, ir.Constant(vector_type, ir.Undefined),
                                  ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES))


def _register_binary(function, emit) -> None:
    """``function`` (an operator, ``min`` or ``max``) on Lanes and numbers: a typing template
    and a lowering that applies ``emit(builder, x, y)`` lane by lane, scalars broadcast, in
    place. (An ``overload`` would compile a small function for every pair of operand types,
    each a first run's cost: docs/performance.md, session 48.)"""

    @infer_global(function)
    class LanesBinary(AbstractTemplate):
        def generic(self, args, kws):
            if len(args) == 2 and not kws:
                result = _operands(*args)
                if result is not None:
                    return signature(result, *args)

    def lower(context, builder, sig, args):
        x, y = (_as_vector(context, builder, value, kind, sig.return_type)
                for value, kind in zip(args, sig.args))
        return emit(builder, x, y)

    for operands in ((LanesType, LanesType), (LanesType, types.Number),
                     (types.Number, LanesType)):
        lower_builtin(function, *operands)(lower)


def _register_unary(function, emit) -> None:
    """``function`` of Lanes, lane by lane (as :func:`_register_binary`)."""

    @infer_global(function)
    class LanesUnary(AbstractTemplate):
        def generic(self, args, kws):
            if len(args) == 1 and not kws and isinstance(args[0], LanesType):
                return signature(args[0], *args)

    @lower_builtin(function, LanesType)
    def lower(context, builder, sig, args):
        return emit(builder, args[0], sig.args[0])


def _sqrt(builder, value, _=None):
    """LLVM's square root of a float or of a vector of them (``np.sqrt`` of Lanes)."""
    kind = value.type
    element = kind.element if isinstance(kind, ir.VectorType) else kind
    suffix = f"f{32 if isinstance(element, ir.FloatType) else 64}"
    if isinstance(kind, ir.VectorType):
        suffix = f"v{kind.count}{suffix}"
    function = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(kind, [kind]), f"llvm.sqrt.{suffix}")
    return builder.call(function, [value])


for _function, _emit in (
        (operator.add, lambda b, x, y: b.fadd(x, y, flags=FLAGS)),
        (operator.sub, lambda b, x, y: b.fsub(x, y, flags=FLAGS)),
        (operator.mul, lambda b, x, y: b.fmul(x, y, flags=FLAGS)),
        (operator.truediv, lambda b, x, y: b.fdiv(x, y, flags=FLAGS)),
        # Python's min/max: the first argument unless the second is strictly smaller/larger
        (min, lambda b, x, y: b.select(b.fcmp_ordered("<", y, x), y, x)),
        (max, lambda b, x, y: b.select(b.fcmp_ordered(">", y, x), y, x))):
    _register_binary(_function, _emit)
_register_unary(operator.neg, lambda b, x, _: b.fneg(x, flags=FLAGS))
_register_unary(np.sqrt, _sqrt)


def _has_avx(context) -> bool:
    """Whether the code numba generates for ``context`` may use AVX instructions (numba
    compiles for the host's features, or for NUMBA_CPU_FEATURES)."""
    features = getattr(context.codegen(), "_tm_features", "") or ""
    return "+avx" in features.split(",")


def _constant(kind, value):
    """``value`` as a constant of LLVM type ``kind``: a float, or a vector of them."""
    if isinstance(kind, ir.VectorType):
        return ir.Constant(kind, [ir.Constant(kind.element, value)] * kind.count)
    return ir.Constant(kind, value)


def _estimated_inverse_root(builder, acc):
    """1 / sqrt(acc) of a positive float32, or of eight: the processor's estimate (12 bits,
    ``rsqrtss``/``vrsqrtps``) refined by one Newton step, r + r/2 (1 - acc r^2): within a few
    units in the last place."""
    if isinstance(acc.type, ir.VectorType):
        estimate = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(acc.type, [acc.type]), "llvm.x86.avx.rsqrt.ps.256")
        r = builder.call(estimate, [acc])
    else:  # the scalar instruction works on the first of four
        four = ir.VectorType(acc.type, 4)
        estimate = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(four, [four]), "llvm.x86.sse.rsqrt.ss")
        first = ir.IntType(32)(0)
        r = builder.extract_element(builder.call(estimate, [builder.insert_element(
            ir.Constant(four, ir.Undefined), acc, first)]), first)
    error = builder.fsub(_constant(acc.type, 1.0),
                         builder.fmul(builder.fmul(acc, r, flags=FLAGS), r, flags=FLAGS),
                         flags=FLAGS)
    half_r = builder.fmul(r, _constant(acc.type, 0.5), flags=FLAGS)
    return builder.fadd(r, builder.fmul(half_r, error, flags=FLAGS), flags=FLAGS)


@intrinsic
def inverse_root(typingctx, acc, eps):
    """1 / (sqrt(acc) + eps), of a number or of Lanes: the scale of an AdaGrad step.

    Where ``eps`` is 0 (the training configuration drops an eps that cannot change a step,
    :func:`fmkit.train.optimizers.kernel_eps`) and the values are float32 on a processor with
    AVX, ``acc`` > 0 is taken to 1 / sqrt by the processor's estimate and one Newton step (as
    xLearn's AdaGrad does, without the Newton step): a square root and a division share one
    slow unit of the processor and lie on the path from a row's update to the next row's
    forward pass (docs/performance.md, session 53). Otherwise the exact formula."""
    if not isinstance(acc, (LanesType, types.Float)) or not isinstance(eps, types.Number):
        return None

    def codegen(context, builder, sig, args):
        kind = sig.args[0]
        element = kind.dtype if isinstance(kind, LanesType) else kind
        value_type = context.get_value_type(kind)
        eps = context.cast(builder, args[1], sig.args[1], element)

        def exact():
            shift = _as_vector(context, builder, eps, element, kind) \
                if isinstance(kind, LanesType) else eps
            return builder.fdiv(_constant(value_type, 1.0),
                                builder.fadd(_sqrt(builder, args[0]), shift, flags=FLAGS),
                                flags=FLAGS)

        if element.bitwidth != 32 or not _has_avx(context):
            return exact()
        no_eps = builder.fcmp_ordered("==", eps, ir.Constant(eps.type, 0.0))
        with builder.if_else(no_eps, likely=True) as (estimated, exactly):
            with estimated:
                fast = _estimated_inverse_root(builder, args[0])
                block_estimated = builder.block
            with exactly:
                slow = exact()
                block_exact = builder.block
        result = builder.phi(value_type)
        result.add_incoming(fast, block_estimated)
        result.add_incoming(slow, block_exact)
        return result

    return acc(acc, eps), codegen
