"""Index-linked doubly linked lists over the key space, shared by the multi-queue policies.

Several lists live in one pair of arrays ``prv`` / ``nxt`` of length ``num_keys + n_lists``: index
``num_keys + j`` is the sentinel of list ``j``; ``nxt[sentinel]`` is the list's *front* (oldest /
least recently used entry), ``prv[sentinel]`` its *back* (newest). A key is in at most one list of
a given pair at a time, which is what lets ARC, 2Q and S3-FIFO keep all their queues in one pair.
No module-level NAME: the policy registry skips this helper.
"""

from __future__ import annotations

import numpy as np
from moesim.kernels.jit import njit
from moesim.sim.row_loop import NONNEG


def new_lists(num_keys: int, n_lists: int) -> tuple[np.ndarray, np.ndarray]:
    """``prv``, ``nxt`` with every list empty (each sentinel points at itself)."""
    size = num_keys + n_lists
    idx = np.arange(size, dtype=np.int64)
    return idx.copy(), idx.copy()


@njit(forceinline=True)
def unlink(prv, nxt, k):
    # Links are masked non-negative: numba then emits no negative-index fix-ups in the loops.
    a = prv[k] & NONNEG
    b = nxt[k] & NONNEG
    nxt[a] = b
    prv[b] = a


@njit(forceinline=True)
def push_back(prv, nxt, sentinel, k):
    last = prv[sentinel] & NONNEG
    nxt[last] = k
    prv[k] = last
    nxt[k] = sentinel
    prv[sentinel] = k


@njit(forceinline=True)
def first_unguarded(nxt, sentinel, guard, stamp):
    """The front-most entry of the list that is not guarded, or -1."""
    k = nxt[sentinel]
    while k != sentinel:
        if guard[k] != stamp:
            return k
        k = nxt[k]
    return -1


@njit(forceinline=True)
def victim_front(nxt, sentinel, guard, stamp, wide):
    """The front-most unguarded entry, or -1. A one-key row (``wide`` false) never guards a resident
    (its key is not in the list when a victim is chosen), so its victim is the front, unchecked."""
    if wide:
        return first_unguarded(nxt, sentinel, guard, stamp)
    k = nxt[sentinel]
    return k if k != sentinel else -1
