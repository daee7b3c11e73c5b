"""A software prefetch for compiled kernels: asks the CPU to start loading memory that the kernel
will need soon, so that the per-row training loop overlaps the next rows' memory latency with the
current row's arithmetic (the rows of a large model are almost never in cache, nor are the rows
of a shuffled chunk)."""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def prefetch(typingctx, array, *index):
    """Hint that ``array[index]`` (one integer per dimension) will be used soon; no effect on
    results. Compiles to LLVM's ``llvm.prefetch`` (``prefetcht0`` on x86)."""
    index_types = index[0] if len(index) == 1 and isinstance(index[0], types.BaseTuple) else index
    signature = types.void(array, types.StarArgTuple(index_types))

    def codegen(context, builder, sig, args):
        array_type = sig.args[0]
        values = context.make_array(array_type)(context, builder, args[0])
        packed = cgutils.unpack_tuple(builder, args[1])
        positions = [context.cast(builder, value, kind, types.intp)
                     for value, kind in zip(packed, sig.args[1])]
        pointer = cgutils.get_item_pointer(context, builder, array_type, values, positions,
                                           wraparound=False)
        byte_pointer = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [byte_pointer, i32, i32, i32]),
            "llvm.prefetch.p0")
        # rw=0, locality=3 (keep in all cache levels), data cache
        builder.call(function, [builder.bitcast(pointer, byte_pointer), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return signature, codegen
