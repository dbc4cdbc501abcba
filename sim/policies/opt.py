"""Belady's OPT: evict the expert whose next use is farthest in the future.

The engine gives each access the time of the next row requesting the same key (``next_use``,
``NEVER`` if none), computed in one backward pass; with rows, a key's next use is the time of its
next *row*, so several keys can share one next use (ties go to the least recently used). Every
miss inserts (an expert must be in memory to run), the forced-insert variant that libCacheSim's
Belady also implements; the experts of a row never evict each other. With a cold start this is
the fewest misses any demand-fetching cache of this size can have (the tests check it against an
exhaustive search on small traces). An indexed 4-ary min-heap over ``(-next_use, last access
number)`` (:mod:`sim.policies._heap`): a hit moves the key toward the root (its old next use, the
current row, is the nearest of all, so it starts at the bottom), a miss puts the new key in the
victim's slot (the root unless the row guards it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numba import njit

from sim.kernel import HIT, MISS, NEVER
from sim.policies._heap import make_heap, place, push, replace_at, victim_slot

NAME = "opt"
PARAMS: dict[str, Any] = {}
SHIFT = 2  # heap arity 2 ** SHIFT (see sim.policies._heap)
NEEDS_NEXT_USE = True


def make_state(capacity: int, num_keys: int, params: Mapping[str, Any], seed: int) -> tuple:
    # ctr = [access sequence number, capacity]
    return (*make_heap(capacity, num_keys, SHIFT), np.array([0, capacity], np.int64))


@njit(cache=True)
def _serve(hk, hp, hq, pos, hs, scratch, cap, key, next_use, n, guard, stamp):
    """One access with sequence number ``n``; the heap orders keys by ``(-next_use, n)``."""
    i = pos[key]
    if i >= 0:
        place(hk, hp, hq, pos, hs[0], i, key, -next_use, n, SHIFT)
        return HIT
    if hs[0] < cap:
        push(hk, hp, hq, pos, hs, key, -next_use, n, SHIFT)
        return MISS
    s = victim_slot(hk, hp, hq, hs, guard, stamp, scratch, SHIFT)
    if s < 0:  # every resident key is guarded (capacity below the row width): nothing to evict
        return MISS
    victim = hk[s]
    replace_at(hk, hp, hq, pos, hs, s, key, -next_use, n, SHIFT)
    return victim


@njit(cache=True)
def access(state, key, now, next_use, guard, stamp):
    hk, hp, hq, pos, hs, scratch, ctr = state
    n = ctr[0]
    ctr[0] = n + 1
    return _serve(hk, hp, hq, pos, hs, scratch, ctr[1], key, next_use, n, guard, stamp)


@njit(cache=True)
def replay(state, keys, row_ptr, row_time, next_use, num_keys, hits_out):
    """The shared replay loop (:mod:`sim.kernel`) with :func:`access` written out in it: the same
    accesses in the same order, so exactly what ``replay_kernel(access, ...)`` gives. Written out
    because numba's own inlining of a helper that takes arrays keeps reference counting in the loop
    (several times slower)."""
    hk, hp, hq, pos, hs, scratch, ctr = state
    cap = ctr[1]
    n = ctr[0]
    guard = np.full(num_keys, -1, np.int64)
    has_next = next_use.shape[0] > 0
    evictions = 0
    for r in range(row_ptr.shape[0] - 1):
        lo = row_ptr[r]
        hi = row_ptr[r + 1]
        for i in range(lo, hi):
            guard[keys[i]] = r
        for i in range(lo, hi):
            key = np.int64(keys[i])
            p = -(next_use[i] if has_next else NEVER)
            seq = n
            n += 1
            j = pos[key]
            if j >= 0:
                hits_out[i] = 1
                place(hk, hp, hq, pos, hs[0], j, key, p, seq, SHIFT)
                continue
            hits_out[i] = 0
            if hs[0] < cap:
                push(hk, hp, hq, pos, hs, key, p, seq, SHIFT)
                continue
            s = victim_slot(hk, hp, hq, hs, guard, r, scratch, SHIFT)
            if s < 0:  # every resident key is guarded (capacity below the row width): nothing to evict
                continue
            replace_at(hk, hp, hq, pos, hs, s, key, p, seq, SHIFT)
            evictions += 1
    ctr[0] = n
    return evictions


def reference(keys: np.ndarray, row_ptr: np.ndarray, row_time: np.ndarray, next_use: np.ndarray,
              capacity: int, num_keys: int, params: Mapping[str, Any], seed: int) -> tuple[np.ndarray, int]:
    nxt: dict[int, int] = {}  # resident key -> its next use
    last: dict[int, int] = {}
    hits = np.zeros(len(keys), np.uint8)
    evictions = 0
    n = 0
    for r in range(len(row_ptr) - 1):
        row = [int(k) for k in keys[row_ptr[r]:row_ptr[r + 1]]]
        for i, k in enumerate(row, start=int(row_ptr[r])):
            if k in nxt:
                hits[i] = 1
            elif len(nxt) >= capacity:
                victim = max((v for v in nxt if v not in row), key=lambda v: (nxt[v], -last[v]))
                del nxt[victim]
                evictions += 1
            nxt[k] = int(next_use[i])
            last[k] = n
            n += 1
    return hits, evictions
