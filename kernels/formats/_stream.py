"""Non-temporal ("streaming") stores for the decode kernels: write a decoded block past the caches.

A decode reads a few bytes per weight and writes four (float32) or two (bfloat16). An ordinary
store first reads the destination line into the cache (read for ownership), so a 64 MiB decode
moves 64 MiB in, 64 MiB out and the codes; a streaming store skips the read, and on a fresh
allocation it also skips re-reading the zeroed pages the kernel just handed over. Measured on the
project's 2-core x86 machine, 64 MiB of MXFP4 -> float32 on one thread: 8.1 ms with plain stores,
5.1 ms with streaming stores (``np.copyto`` of the same bytes: 7.8 ms); allocating the output
each call: 14.0 ms against 11.8 ms (``np.copy``: 11.7 ms).

:func:`stream_store` writes a tuple of values as one 16-byte vector store tagged ``!nontemporal``
(x86 ``movntps`` / ``movntdq``), :func:`stream_copy` 16 bytes loaded from a scratch row; the target
address must be 16-byte aligned (a misaligned one faults), so callers check the buffer's alignment
first (:func:`can_stream`). Streaming stores are weakly
ordered: each worker ends its part with :func:`store_fence` (``sfence``) before the parallel loop
joins. Only x86-64 gets these kernels (``sfence`` is an x86 instruction); elsewhere
:data:`AVAILABLE` is False and the callers keep their ordinary kernels.

Only outputs of at least :data:`MIN_BYTES` stream: a smaller one fits in the last-level cache,
where the caller's next read finds it; a streamed one would have to come back from memory.
"""

from __future__ import annotations

import platform

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

AVAILABLE = platform.machine().lower() in ("x86_64", "amd64")
VECTOR_BYTES = 16
# glibc's memcpy switches to streaming stores from about three quarters of the last-level cache;
# 16 MiB is that for a 24 MiB cache, a common size for the servers this runs on.
MIN_BYTES = 16 * 2**20


def can_stream(out: np.ndarray) -> bool:
    """Whether a C-contiguous decode output may be written with streaming stores."""
    return (AVAILABLE and out.nbytes >= MIN_BYTES and out.ctypes.data % VECTOR_BYTES == 0
            and out.flags.c_contiguous)


@intrinsic
def stream_store(typingctx, arr, index, values):
    """``arr[index : index + len(values)] = values`` as one non-temporal vector store.

    ``arr`` is a C-contiguous 1-d array, ``values`` a homogeneous tuple of its dtype whose size is
    ``VECTOR_BYTES``; ``arr``'s address at ``index`` must be ``VECTOR_BYTES``-aligned.
    """
    if not (isinstance(arr, types.Array) and arr.ndim == 1 and arr.layout == "C"
            and isinstance(values, types.UniTuple) and values.dtype == arr.dtype
            and isinstance(index, types.Integer)
            and values.count * arr.dtype.bitwidth == 8 * VECTOR_BYTES):
        return None
    count = values.count

    def codegen(context, builder, signature, args):
        arr_v, index_v, values_v = args
        array = context.make_array(signature.args[0])(context, builder, arr_v)
        element = context.get_data_type(signature.args[0].dtype)
        vector_type = ir.VectorType(element, count)
        vector = ir.Constant(vector_type, ir.Undefined)
        for i in range(count):
            vector = builder.insert_element(vector, builder.extract_value(values_v, i),
                                            ir.Constant(ir.IntType(32), i))
        address = builder.gep(array.data, [index_v])
        store = builder.store(vector, builder.bitcast(address, vector_type.as_pointer()), align=VECTOR_BYTES)
        store.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))
        return context.get_dummy_value()

    return types.void(arr, index, values), codegen


@intrinsic
def store_fence(typingctx):
    """``sfence``: every streaming store issued before it is visible before any store after it."""

    def codegen(context, builder, signature, args):
        fence = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                               "llvm.x86.sse.sfence")
        builder.call(fence, [])
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def stream_copy(typingctx, dst, dst_index, src, src_index):
    """``dst[dst_index : dst_index + n] = src[src_index : src_index + n]`` for the ``n`` elements of
    ``VECTOR_BYTES``: one vector load, one non-temporal store (``dst`` aligned as for
    :func:`stream_store`; ``src`` any alignment). Both C-contiguous 1-d arrays of one dtype."""
    if not (isinstance(dst, types.Array) and isinstance(src, types.Array) and dst.ndim == src.ndim == 1
            and dst.layout == src.layout == "C" and dst.dtype == src.dtype
            and isinstance(dst_index, types.Integer) and isinstance(src_index, types.Integer)
            and (8 * VECTOR_BYTES) % dst.dtype.bitwidth == 0):
        return None
    count = 8 * VECTOR_BYTES // dst.dtype.bitwidth

    def codegen(context, builder, signature, args):
        dst_v, di, src_v, si = args
        dst_a = context.make_array(signature.args[0])(context, builder, dst_v)
        src_a = context.make_array(signature.args[2])(context, builder, src_v)
        vector_type = ir.VectorType(context.get_data_type(signature.args[0].dtype), count)
        source = builder.bitcast(builder.gep(src_a.data, [si]), vector_type.as_pointer())
        vector = builder.load(source, align=1)
        target = builder.bitcast(builder.gep(dst_a.data, [di]), vector_type.as_pointer())
        store = builder.store(vector, target, align=VECTOR_BYTES)
        store.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))
        return context.get_dummy_value()

    return types.void(dst, dst_index, src, src_index), codegen
