"""ARC: Adaptive Replacement Cache (Megiddo & Modha, FAST'03).

Four LRU lists: ``T1`` (residents seen once recently), ``T2`` (residents seen at least twice),
and their ghosts ``B1`` / ``B2`` (keys recently evicted from T1 / T2, no data). The target size
``p`` of T1 adapts: a hit in B1 means T1 was too small (``p += max(|B2| / |B1|, 1)``, at most
``C``), a hit in B2 means T2 was too small (``p -= max(|B1| / |B2|, 1)``, at least 0). ``p`` is a
real number, as in the paper and in libCacheSim's ARC (the ``libcachesim`` 0.3 package), whose hit
counts this module reproduces request by request on traces with one expert per row.

* Hit in T1 or T2: move to the MRU end of T2.
* Miss found in B1 / B2: adapt ``p``, REPLACE, then insert at the MRU end of T2.
* Other miss, cache full: if ``|T1| + |B1| >= C``: when ``|T1| < C`` drop the LRU of B1 and
  REPLACE, else evict the LRU of T1 without a ghost entry; otherwise drop the LRU of B2 when the
  four lists hold ``2C`` keys, then REPLACE. The miss goes to the MRU end of T1.
* REPLACE evicts the LRU of T1 into B1 if ``|T1| >= 1`` and (``|T1| > p``, or ``|T1| == p`` and the
  request was found in B2); otherwise the LRU of T2 into B2.

No knobs. Guarded keys (the current row's experts) are never chosen: the LRU end of the chosen
list is searched for its oldest unguarded entry, and if that list holds only guarded entries the
other resident list gives the victim (into its own ghost).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np
from numba import njit

from sim.kernel import HIT, MISS, replay_kernel
from sim.policies import _knobs
from sim.policies._lists import first_unguarded, new_lists, push_back, unlink

NAME = "arc"
PARAMS: dict[str, Any] = {}

NONE, T1, T2, B1, B2 = 0, 1, 2, 3, 4  # where[] codes; list j has sentinel num_keys + j - 1
N_T1, N_T2, N_B1, N_B2, CAP = range(5)


def make_state(capacity: int, num_keys: int, params: Mapping[str, Any], seed: int) -> tuple:
    _knobs.resolve(NAME, PARAMS, params)
    capacity = _knobs.capacity_at_least(NAME, capacity, 1)
    prv, nxt = new_lists(num_keys, 4)
    where = np.zeros(num_keys, np.int8)
    cnt = np.zeros(5, np.int64)
    cnt[CAP] = capacity
    p = np.zeros(1, np.float64)
    return prv, nxt, where, cnt, p


@njit(cache=True, forceinline=True)
def _move(prv, nxt, where, cnt, k, dst):
    """Move key ``k`` from its list to the MRU end of list ``dst`` (counts follow)."""
    n = where.shape[0]
    unlink(prv, nxt, k)
    cnt[where[k] - 1] -= 1
    push_back(prv, nxt, n + dst - 1, k)
    where[k] = dst
    cnt[dst - 1] += 1


@njit(cache=True, forceinline=True)
def _drop(prv, nxt, where, cnt, k):
    unlink(prv, nxt, k)
    cnt[where[k] - 1] -= 1
    where[k] = NONE


@njit(cache=True, forceinline=True)
def _replace(prv, nxt, where, cnt, p, in_b2, guard, stamp):
    """The paper's REPLACE: move an unguarded LRU resident into its ghost; return it (or -1)."""
    n = where.shape[0]
    t1 = cnt[N_T1]
    from_t1 = t1 >= 1 and (t1 > p[0] or (t1 == p[0] and in_b2))
    first, second = (T1, T2) if from_t1 else (T2, T1)
    v = first_unguarded(nxt, n + first - 1, guard, stamp)
    src = first
    if v < 0:
        v = first_unguarded(nxt, n + second - 1, guard, stamp)
        src = second
    if v >= 0:
        _move(prv, nxt, where, cnt, v, B1 if src == T1 else B2)
    return v


@njit(cache=True, forceinline=True)
def access(state, key, now, next_use, guard, stamp):
    prv, nxt, where, cnt, p = state
    n = where.shape[0]
    c = cnt[CAP]
    w = where[key]
    if w == T1 or w == T2:
        _move(prv, nxt, where, cnt, key, T2)
        return HIT
    victim = MISS
    if w == B1 or w == B2:
        b1 = cnt[N_B1]
        b2 = cnt[N_B2]
        if w == B1:
            p[0] = min(p[0] + max(b2 / b1, 1.0), float(c))
        else:
            p[0] = max(p[0] - max(b1 / b2, 1.0), 0.0)
        if cnt[N_T1] + cnt[N_T2] >= c:  # always true: ghosts exist only once the cache has filled
            victim = _replace(prv, nxt, where, cnt, p, w == B2, guard, stamp)
            if victim < 0:
                raise ValueError("arc: every resident is guarded (capacity smaller than the row width)")
        _move(prv, nxt, where, cnt, key, T2)
        return victim
    if cnt[N_T1] + cnt[N_T2] >= c:
        if cnt[N_T1] + cnt[N_B1] >= c:
            if cnt[N_T1] < c:
                _drop(prv, nxt, where, cnt, nxt[n + B1 - 1])
                victim = _replace(prv, nxt, where, cnt, p, False, guard, stamp)
            else:
                victim = first_unguarded(nxt, n + T1 - 1, guard, stamp)
                if victim >= 0:
                    _drop(prv, nxt, where, cnt, victim)
        else:
            if cnt[N_T1] + cnt[N_T2] + cnt[N_B1] + cnt[N_B2] >= 2 * c:
                _drop(prv, nxt, where, cnt, nxt[n + B2 - 1])
            victim = _replace(prv, nxt, where, cnt, p, False, guard, stamp)
        if victim < 0:
            raise ValueError("arc: every resident is guarded (capacity smaller than the row width)")
    push_back(prv, nxt, n + T1 - 1, key)
    where[key] = T1
    cnt[N_T1] += 1
    return victim


@njit(cache=True, forceinline=True)
def replay(state, keys, row_ptr, row_time, next_use, num_keys, hits_out):
    return replay_kernel(access, state, keys, row_ptr, row_time, next_use, num_keys, hits_out)


def reference(keys: np.ndarray, row_ptr: np.ndarray, row_time: np.ndarray, next_use: np.ndarray,
              capacity: int, num_keys: int, params: Mapping[str, Any], seed: int) -> tuple[np.ndarray, int]:
    """Plain-Python ARC with the same row semantics: (hit per access, evictions)."""
    _knobs.resolve(NAME, PARAMS, params)
    c = _knobs.capacity_at_least(NAME, capacity, 1)
    # first item of each OrderedDict = LRU end
    t1: OrderedDict[int, None] = OrderedDict()
    t2: OrderedDict[int, None] = OrderedDict()
    b1: OrderedDict[int, None] = OrderedDict()
    b2: OrderedDict[int, None] = OrderedDict()
    p = 0.0
    hits = np.zeros(len(keys), np.uint8)
    evictions = 0

    def oldest(lst: OrderedDict[int, None], row: set[int]) -> int | None:
        return next((k for k in lst if k not in row), None)

    def replace(in_b2: bool, row: set[int]) -> int:
        order = [(t1, b1), (t2, b2)]
        if not (len(t1) >= 1 and (len(t1) > p or (len(t1) == p and in_b2))):
            order.reverse()
        for src, ghost in order:
            v = oldest(src, row)
            if v is not None:
                del src[v]
                ghost[v] = None
                return v
        raise ValueError("arc: every resident is guarded (capacity smaller than the row width)")

    for r in range(len(row_ptr) - 1):
        row = {int(k) for k in keys[row_ptr[r]:row_ptr[r + 1]]}
        for i in range(int(row_ptr[r]), int(row_ptr[r + 1])):
            x = int(keys[i])
            if x in t1 or x in t2:
                (t1 if x in t1 else t2).pop(x)
                t2[x] = None
                hits[i] = 1
                continue
            if x in b1 or x in b2:
                if x in b1:
                    p = min(p + max(len(b2) / len(b1), 1.0), float(c))
                else:
                    p = max(p - max(len(b1) / len(b2), 1.0), 0.0)
                replace(x in b2, row)
                evictions += 1
                (b1 if x in b1 else b2).pop(x)
                t2[x] = None
                continue
            if len(t1) + len(t2) >= c:
                if len(t1) + len(b1) >= c:
                    if len(t1) < c:
                        b1.popitem(last=False)
                        replace(False, row)
                    else:
                        v = oldest(t1, row)
                        if v is None:
                            raise ValueError("arc: every resident is guarded")
                        del t1[v]
                else:
                    if len(t1) + len(t2) + len(b1) + len(b2) >= 2 * c:
                        b2.popitem(last=False)
                    replace(False, row)
                evictions += 1
            t1[x] = None
    return hits, evictions
