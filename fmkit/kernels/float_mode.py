"""Denormal floats flushed to zero inside the training and scoring kernels.

A float32 below 1.2e-38 in magnitude (a denormal) makes every x86 instruction that reads or
writes one take a slow microcoded path. Training produces them: AdaGrad from SageMaker's small
starting factors (sigma 0.001) decays an FFM's unused field vectors towards 0, and the epochs
after that ran much slower (docs/performance.md, session 53). The kernels therefore run with the
processor's flush-to-zero and denormals-are-zero modes on (MXCSR bits FTZ and DAZ, as
TensorFlow's CPU kernels do): a result below 1.2e-38 becomes 0, and such an input reads as 0 —
a difference far below any rounding the models see. The mode is the calling thread's, set at a
kernel's start and restored as it was at its end, so Python and numpy code around the kernels
keep IEEE semantics. Elsewhere than on x86-64 both calls do nothing.
"""

from __future__ import annotations

import llvmlite.binding as ll
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

FLUSH_BITS = 0x8040  # MXCSR's flush-to-zero (bit 15) and denormals-are-zero (bit 6)
_X86 = ll.get_process_triple().startswith("x86_64")


def _mxcsr(builder, name: str, slot) -> None:
    pointer = builder.bitcast(slot, ir.IntType(8).as_pointer())
    function = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [pointer.type]), f"llvm.x86.sse.{name}")
    builder.call(function, [pointer])


@intrinsic
def flush_denormals(typingctx):
    """Turn flush-to-zero and denormals-are-zero on for this thread; returns the mode to give
    back to :func:`restore_float_mode` (0 where there is none)."""

    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        if not _X86:
            return ir.Constant(ir.IntType(64), 0)
        slot = cgutils.alloca_once(builder, i32)
        _mxcsr(builder, "stmxcsr", slot)
        saved = builder.load(slot)
        builder.store(builder.or_(saved, i32(FLUSH_BITS)), slot)
        _mxcsr(builder, "ldmxcsr", slot)
        return builder.zext(saved, ir.IntType(64))

    return types.int64(), codegen


@intrinsic
def restore_float_mode(typingctx, saved):
    """Give this thread back the mode :func:`flush_denormals` returned."""
    if not isinstance(saved, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        if _X86:
            i32 = ir.IntType(32)
            slot = cgutils.alloca_once(builder, i32)
            builder.store(builder.trunc(args[0], i32), slot)
            _mxcsr(builder, "ldmxcsr", slot)
        return context.get_dummy_value()

    return types.void(saved), codegen
