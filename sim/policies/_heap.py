"""An indexed d-ary min-heap of keys ordered by ``(prio, seq)`` (lexicographic), priorities inline.

Used by the priority policies (LFU-DA, OPT). ``seq`` is a unique access sequence number, so the
order is total and the victim is deterministic. The heap stores, per *slot* ``i``, the key
``hk[i]`` and its priority pair ``hp[i]``, ``hq[i]``; ``pos[key]`` is the key's slot or -1 (so
``pos[key] >= 0`` doubles as the residency flag); ``hs[0]`` is the heap size. Slot ``i``'s
children are slots ``(i << shift) + 1 ...`` (``2 ** shift`` of them): every function takes
``shift``, and a policy passes a module constant, so the loops are compiled for that arity. Which
arity is faster depends on the policy: OPT's hits move keys up (fewer levels help: 8-ary), LFU-DA's
hits move keys down (fewer comparisons per level help: binary).

Every helper but the rare guarded search is compiled with ``forceinline`` (LLVM inlines it into
the caller's loop): a plain call passes each array as several scalars and cost half of a replay's
time; numba's own ``inline="always"`` would instead keep reference counting on the arrays inside
the loop.

Why the priorities live in the slots rather than in per-key arrays: a sift compares a slot with
its parent or children, and reading ``hp[i]`` is one load from a small contiguous array instead
of a dependent load through ``hk[i]`` into a per-key array.

:func:`victim_slot` finds the smallest key that is not guarded without popping anything: every
ancestor of that key is smaller, hence guarded, so it lies just below the guarded part of the heap
around the root, and at most ``(2 ** shift - 1) * guarded + 1`` slots are looked at. The common
case (the root is not guarded) costs one load.
"""

from __future__ import annotations

import numpy as np
from moesim.kernels.jit import njit


def make_heap(capacity: int, num_keys: int, shift: int) -> tuple[np.ndarray, ...]:
    """(hk, hp, hq, pos, hs, scratch) for at most ``capacity`` keys out of ``num_keys``, arity
    ``2 ** shift``."""
    size = max(capacity, 1)
    hk = np.zeros(size, np.int64)
    hp = np.zeros(size, np.int64)
    hq = np.zeros(size, np.int64)
    pos = np.full(num_keys, -1, np.int64)
    hs = np.zeros(1, np.int64)
    # The guarded search's stack: 2 ** shift - 1 entries per guarded slot, plus 1.
    scratch = np.zeros((1 << shift) * size, np.int64)
    return hk, hp, hq, pos, hs, scratch


@njit(forceinline=True)
def _less(pa, qa, pb, qb):
    return pa < pb or (pa == pb and qa < qb)


@njit(forceinline=True)
def _min2(a, ap, aq, b, bp, bq):
    """The smaller of slots ``a`` and ``b`` with their priorities (``a`` on ties), branch-free."""
    better = (bp < ap) | ((bp == ap) & (bq < aq))
    return (b if better else a), (bp if better else ap), (bq if better else aq)


@njit(forceinline=True)
def sift_up(hk, hp, hq, pos, i, k, p, q, shift):
    """Put key ``k`` with priority ``(p, q)`` into the hole at slot ``i``, moving it toward the root."""
    while i > 0:
        parent = (i - 1) >> shift
        pp = hp[parent]
        if not _less(p, q, pp, hq[parent]):
            break
        c = hk[parent]
        hk[i] = c
        hp[i] = pp
        hq[i] = hq[parent]
        pos[c] = i
        i = parent
    hk[i] = k
    hp[i] = p
    hq[i] = q
    pos[k] = i


@njit(forceinline=True)
def _sift_down_binary(hk, hp, hq, pos, n, i, k, p, q):
    while True:
        c = 2 * i + 1
        if c >= n:
            break
        cp = hp[c]
        cq = hq[c]
        if c + 1 < n:  # the smaller child without a branch (which child wins is unpredictable)
            dp = hp[c + 1]
            dq = hq[c + 1]
            right = (dp < cp) | ((dp == cp) & (dq < cq))
            c += np.int64(right)
            cp = dp if right else cp
            cq = dq if right else cq
        if not _less(cp, cq, p, q):
            break
        m = hk[c]
        hk[i] = m
        hp[i] = cp
        hq[i] = cq
        pos[m] = i
        i = c
    hk[i] = k
    hp[i] = p
    hq[i] = q
    pos[k] = i


@njit(forceinline=True)
def _sift_down_wide(hk, hp, hq, pos, n, i, k, p, q, shift):
    width = 1 << shift
    while True:
        c = (i << shift) + 1
        if c >= n:
            break
        cp = hp[c]
        cq = hq[c]
        # The smallest child without branches (which child wins is unpredictable); the loop over a
        # full set of children has a constant length and is unrolled.
        if c + width <= n:
            for d in range(c + 1, c + width):
                c, cp, cq = _min2(c, cp, cq, d, hp[d], hq[d])
        else:
            for d in range(c + 1, n):
                c, cp, cq = _min2(c, cp, cq, d, hp[d], hq[d])
        if not _less(cp, cq, p, q):
            break
        m = hk[c]
        hk[i] = m
        hp[i] = cp
        hq[i] = cq
        pos[m] = i
        i = c
    hk[i] = k
    hp[i] = p
    hq[i] = q
    pos[k] = i


@njit(forceinline=True)
def sift_down(hk, hp, hq, pos, n, i, k, p, q, shift):
    """Put key ``k`` with priority ``(p, q)`` into the hole at slot ``i`` of a heap of ``n`` slots,
    moving it away from the root."""
    if shift == 1:  # its own loop: measured faster than the general one with a binary arity
        _sift_down_binary(hk, hp, hq, pos, n, i, k, p, q)
    else:
        _sift_down_wide(hk, hp, hq, pos, n, i, k, p, q, shift)


@njit(forceinline=True)
def place(hk, hp, hq, pos, n, i, k, p, q, shift):
    """Put key ``k`` with priority ``(p, q)`` into the hole at slot ``i`` (anywhere in the heap)."""
    if i > 0:
        parent = (i - 1) >> shift
        if _less(p, q, hp[parent], hq[parent]):
            sift_up(hk, hp, hq, pos, i, k, p, q, shift)
            return
    sift_down(hk, hp, hq, pos, n, i, k, p, q, shift)


@njit(forceinline=True)
def push(hk, hp, hq, pos, hs, k, p, q, shift):
    i = hs[0]
    hs[0] = i + 1
    sift_up(hk, hp, hq, pos, i, k, p, q, shift)


@njit(forceinline=True)
def replace_at(hk, hp, hq, pos, hs, i, k, p, q, shift):
    """Drop the key at slot ``i`` and put ``k`` with priority ``(p, q)`` in its place."""
    pos[hk[i]] = -1
    place(hk, hp, hq, pos, hs[0], i, k, p, q, shift)


@njit
def _victim_slot_search(hk, hp, hq, n, guard, stamp, scratch, shift):
    best = -1
    top = 1
    scratch[0] = 0
    while top > 0:
        top -= 1
        i = scratch[top]
        if guard[hk[i]] != stamp:
            if best < 0 or _less(hp[i], hq[i], hp[best], hq[best]):
                best = i
            continue
        first = (i << shift) + 1
        for c in range(first, min(first + (1 << shift), n)):
            scratch[top] = c
            top += 1
    return best


@njit(forceinline=True)
def victim_slot(hk, hp, hq, hs, guard, stamp, scratch, shift):
    """The slot of the smallest key with ``guard[key] != stamp`` (-1 if every key is guarded)."""
    n = hs[0]
    if n == 0:
        return -1
    if guard[hk[0]] != stamp:
        return 0
    return _victim_slot_search(hk, hp, hq, n, guard, stamp, scratch, shift)
