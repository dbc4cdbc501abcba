"""Sift steps of an indexed ``2 ** shift``-ary min-heap whose priorities are packed into one int64
per slot (``hk[i]`` the key, ``hv[i]`` its packed priority, ``pos[key]`` its slot), so that each step
compares once. OPT and LFU-DA pack their ``(priority, sequence number)`` pairs this way on their
stream paths (see their ``_pack``). ``shift`` is a module constant of the caller: the helpers are
inlined, so each loop is compiled for its arity. No module-level NAME: the policy registry skips it.
"""

from __future__ import annotations

from moesim.kernels.jit import njit
from moesim.sim.row_loop import NONNEG


@njit(forceinline=True)
def up(hk, hv, pos, i, k, v, shift):
    """Key ``k`` with packed priority ``v`` into the hole at slot ``i``, toward the root."""
    while i > 0:
        parent = ((i - 1) >> shift) & NONNEG
        pv = hv[parent]
        if v >= pv:
            break
        c = hk[parent]
        hk[i] = c
        hv[i] = pv
        pos[c] = i
        i = parent
    hk[i] = k
    hv[i] = v
    pos[k] = i


@njit(forceinline=True)
def down(hk, hv, pos, size, i, k, v, shift):
    """Key ``k`` with packed priority ``v`` into the hole at slot ``i``, away from the root."""
    width = 1 << shift
    while True:
        c = ((i << shift) + 1) & NONNEG
        if c >= size:
            break
        cv = hv[c]
        # The smallest child without branches (which one wins is unpredictable); a full set of
        # children is a loop of constant length, unrolled.
        if c + width <= size:
            for d in range(c + 1, c + width):
                dv = hv[d]
                better = dv < cv
                c = d if better else c
                cv = dv if better else cv
        else:
            for d in range(c + 1, size):
                dv = hv[d]
                better = dv < cv
                c = d if better else c
                cv = dv if better else cv
        if cv >= v:
            break
        m = hk[c]
        hk[i] = m
        hv[i] = cv
        pos[m] = i
        i = c
    hk[i] = k
    hv[i] = v
    pos[k] = i


@njit(forceinline=True)
def put(hk, hv, pos, size, i, k, v, shift):
    """Key ``k`` with packed priority ``v`` into the hole at slot ``i`` (anywhere in the heap)."""
    if i > 0 and v < hv[(i - 1) >> shift]:
        up(hk, hv, pos, i, k, v, shift)
    else:
        down(hk, hv, pos, size, i, k, v, shift)
