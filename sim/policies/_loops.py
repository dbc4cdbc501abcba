"""Shared pieces of the specialised policy loops: the one-key-row check, trace <-> CSR rows for the
fused paths, bit sets over ``uint64`` words (with a popcount), and the size of rings and logs. No module-level NAME: the policy
registry skips it."""

from __future__ import annotations

import numpy as np
from moesim.kernels.jit import njit
from numba.core.extending import intrinsic

ONE = np.uint64(1)


@njit
def pow2_at_least(n):
    """The smallest power of two that is at least ``n`` and at least 64: the size of the rings and
    logs the loops index with ``position & (size - 1)``."""
    m = 64
    while m < n:
        m *= 2
    return m


@intrinsic
def popcount(typingctx, src):
    """The set bits of an integer: LLVM's ``ctpop`` (one ``popcnt`` instruction on x86-64)."""

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return src(src), codegen


@njit(inline="always")
def set_bit(bits, p):
    bits[p >> 6] |= ONE << np.uint64(p & 63)


@njit(inline="always")
def clear_bit(bits, p):
    bits[p >> 6] &= ~(ONE << np.uint64(p & 63))


@njit(inline="always")
def get_bit(bits, p):
    return (bits[p >> 6] >> np.uint64(p & 63)) & ONE


@njit(forceinline=True)
def next_row(keys, row_ptr, guard, r, end):
    """The row loops' step to the next row, as the access index reaches ``end`` (the end of row
    ``r``): (r + 1, its end, whether it is wide). A wide row guards its keys with stamp ``r + 1``; a
    one-key row needs no guard (its key is not resident while a victim is chosen)."""
    r += 1
    lo = end
    end = row_ptr[r + 1]
    wide = end - lo > 1
    if wide:
        for j in range(lo, end):
            guard[keys[j]] = r
    return r, end, wide


@njit
def one_key_prefix(row_ptr):
    """How many leading rows hold exactly one key; checked 64 rows at a time with a loop the
    compiler vectorises (no early exit inside a block)."""
    n = row_ptr.shape[0] - 1
    i = 0
    while i + 64 <= n:
        bad = 0
        for j in range(i, i + 64):
            bad |= (row_ptr[j + 1] - row_ptr[j]) ^ 1
        if bad != 0:
            break
        i += 64
    while i < n and row_ptr[i + 1] - row_ptr[i] == 1:
        i += 1
    return i


@njit
def steps_to_rows(chunk, num_experts):
    """``chunk`` ``[T, L, K]`` as CSR rows of shared-cache keys ``l * E + e`` (pads skipped), one row
    per (step, layer) in step-major order: (keys, row_ptr)."""
    T, L, K = chunk.shape
    keys = np.empty(T * L * K, np.int64)
    row_ptr = np.empty(T * L + 1, np.int64)
    n = 0
    for t in range(T):
        for layer in range(L):
            row_ptr[t * L + layer] = n
            for j in range(K):
                e = chunk[t, layer, j]
                if e >= 0:
                    keys[n] = layer * num_experts + e
                    n += 1
    row_ptr[T * L] = n
    return keys[:n], row_ptr


@njit
def rows_to_steps(hits, row_ptr, step_hits, step_acc):
    """Each (step, layer) row's hits and accesses into ``step_hits`` / ``step_acc`` ``[T, L]``."""
    T, L = step_hits.shape
    for t in range(T):
        for layer in range(L):
            r = t * L + layer
            h = 0
            for i in range(row_ptr[r], row_ptr[r + 1]):
                h += hits[i]
            step_hits[t, layer] = h
            step_acc[t, layer] = row_ptr[r + 1] - row_ptr[r]
