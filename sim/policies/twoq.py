"""2Q, the full version (Johnson & Shasha, VLDB'94): A1in FIFO, A1out ghost FIFO, Am LRU.

* Hit in Am: move to the MRU end of Am. Hit in A1in: nothing (a correlated re-reference).
* Miss found in A1out (the key was evicted from A1in not long ago): reclaim a slot, insert at the
  MRU end of Am (the promotion that makes 2Q resist scans).
* Other miss: reclaim a slot, insert at the back of A1in.
* Reclaim (only when the cache is full): if A1in holds more than ``Kin`` keys, its oldest entry is
  evicted and its key pushed onto A1out (whose oldest key is dropped beyond ``Kout`` entries);
  otherwise the LRU of Am is evicted (no ghost entry).

Knobs: ``kin_ratio`` (``Kin = floor(kin_ratio * C)``, default 0.25) and ``kout_ratio``
(``Kout = floor(kout_ratio * C)`` ghost keys, default 0.5, 0 disables A1out), the paper's
recommended sizes and libCacheSim's defaults; this module reproduces libCacheSim's ``TwoQ`` hit
counts request by request on traces with one expert per row.

Guarded keys (the current row's experts) are never evicted: each queue is searched from its old
end for the first unguarded entry, and when the queue the rule picks holds only guarded entries,
the other queue gives the victim (an A1in victim still goes to A1out).
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

NAME = "twoq"
PARAMS: dict[str, Any] = {"kin_ratio": 0.25, "kout_ratio": 0.5}

NONE, AIN, AOUT, AM = 0, 1, 2, 3  # where[] codes; list j has sentinel num_keys + j - 1
N_IN, N_OUT, N_M, CAP, KIN, KOUT = range(6)


def sizes(capacity: int, params: Mapping[str, Any] | None) -> dict[str, int]:
    """Validated ``Kin`` and ``Kout`` (in keys) for this capacity."""
    p = _knobs.resolve(NAME, PARAMS, params)
    capacity = _knobs.capacity_at_least(NAME, capacity, 1)
    kin = _knobs.fraction(NAME, "kin_ratio", p["kin_ratio"], hi_open=True)
    kout = _knobs.at_least(NAME, "kout_ratio", p["kout_ratio"], 0.0)
    return {"kin": int(capacity * kin), "kout": int(capacity * kout)}


def make_state(capacity: int, num_keys: int, params: Mapping[str, Any], seed: int) -> tuple:
    z = sizes(capacity, params)
    prv, nxt = new_lists(num_keys, 3)
    where = np.zeros(num_keys, np.int8)
    cnt = np.zeros(6, np.int64)
    cnt[CAP], cnt[KIN], cnt[KOUT] = capacity, z["kin"], z["kout"]
    return prv, nxt, where, cnt


@njit(cache=True, forceinline=True)
def _out_of_ain(prv, nxt, where, cnt, k):
    """Evict ``k`` from A1in and remember it in A1out."""
    n = where.shape[0]
    unlink(prv, nxt, k)
    cnt[N_IN] -= 1
    where[k] = NONE
    if cnt[KOUT] > 0:
        push_back(prv, nxt, n + AOUT - 1, k)
        where[k] = AOUT
        cnt[N_OUT] += 1
        if cnt[N_OUT] > cnt[KOUT]:
            g = nxt[n + AOUT - 1]
            unlink(prv, nxt, g)
            where[g] = NONE
            cnt[N_OUT] -= 1


@njit(cache=True, forceinline=True)
def _reclaim(prv, nxt, where, cnt, guard, stamp):
    n = where.shape[0]
    if cnt[N_IN] > cnt[KIN]:
        v = first_unguarded(nxt, n + AIN - 1, guard, stamp)
        if v >= 0:
            _out_of_ain(prv, nxt, where, cnt, v)
            return v
    v = first_unguarded(nxt, n + AM - 1, guard, stamp)
    if v >= 0:
        unlink(prv, nxt, v)
        cnt[N_M] -= 1
        where[v] = NONE
        return v
    v = first_unguarded(nxt, n + AIN - 1, guard, stamp)
    if v >= 0:
        _out_of_ain(prv, nxt, where, cnt, v)
    return v


@njit(cache=True, forceinline=True)
def access(state, key, now, next_use, guard, stamp):
    prv, nxt, where, cnt = state
    n = where.shape[0]
    w = where[key]
    if w == AM:
        unlink(prv, nxt, key)
        push_back(prv, nxt, n + AM - 1, key)
        return HIT
    if w == AIN:
        return HIT
    if w == AOUT:
        unlink(prv, nxt, key)
        cnt[N_OUT] -= 1
    victim = MISS
    if cnt[N_IN] + cnt[N_M] >= cnt[CAP]:
        victim = _reclaim(prv, nxt, where, cnt, guard, stamp)
        if victim < 0:
            raise ValueError("twoq: every resident is guarded (capacity smaller than the row width)")
    if w == AOUT:
        push_back(prv, nxt, n + AM - 1, key)
        where[key] = AM
        cnt[N_M] += 1
    else:
        push_back(prv, nxt, n + AIN - 1, key)
        where[key] = AIN
        cnt[N_IN] += 1
    return victim


@njit(cache=True, forceinline=True)
def replay(state, keys, row_ptr, row_time, next_use, num_keys, hits_out):
    return replay_kernel(access, state, keys, row_ptr, row_time, next_use, num_keys, hits_out)


def reference(keys: np.ndarray, row_ptr: np.ndarray, row_time: np.ndarray, next_use: np.ndarray,
              capacity: int, num_keys: int, params: Mapping[str, Any], seed: int) -> tuple[np.ndarray, int]:
    """Plain-Python 2Q with the same row semantics: (hit per access, evictions)."""
    z = sizes(capacity, params)
    a1in: OrderedDict[int, None] = OrderedDict()  # first item = oldest / LRU
    a1out: OrderedDict[int, None] = OrderedDict()
    am: OrderedDict[int, None] = OrderedDict()
    hits = np.zeros(len(keys), np.uint8)
    evictions = 0

    def evict_from_a1in(row: set[int]) -> bool:
        v = next((k for k in a1in if k not in row), None)
        if v is None:
            return False
        del a1in[v]
        if z["kout"] > 0:
            a1out[v] = None
            if len(a1out) > z["kout"]:
                a1out.popitem(last=False)
        return True

    def evict_from_am(row: set[int]) -> bool:
        v = next((k for k in am if k not in row), None)
        if v is not None:
            del am[v]
        return v is not None

    for r in range(len(row_ptr) - 1):
        row = {int(k) for k in keys[row_ptr[r]:row_ptr[r + 1]]}
        for i in range(int(row_ptr[r]), int(row_ptr[r + 1])):
            x = int(keys[i])
            if x in am:
                am.move_to_end(x)
                hits[i] = 1
                continue
            if x in a1in:
                hits[i] = 1
                continue
            ghost = x in a1out
            if ghost:
                del a1out[x]
            if len(a1in) + len(am) >= capacity:
                done = len(a1in) > z["kin"] and evict_from_a1in(row)
                done = done or evict_from_am(row) or evict_from_a1in(row)
                if not done:
                    raise ValueError("twoq: every resident is guarded (capacity smaller than the row width)")
                evictions += 1
            if ghost:
                am[x] = None
            else:
                a1in[x] = None
    return hits, evictions
