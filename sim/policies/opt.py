"""Belady's OPT: evict the expert whose next use is farthest in the future.

The engine gives each access the time of the next row requesting the same key (``next_use``,
``NEVER`` if none), computed in one backward pass; with rows, a key's next use is the time of its
next *row*, so several keys can share one next use (ties go to the least recently used). Every
miss inserts (an expert must be in memory to run), the forced-insert variant that libCacheSim's
Belady also implements; the experts of a row never evict each other. With a cold start this is
the fewest misses any demand-fetching cache of this size can have (the tests check it against an
exhaustive search on small traces). A min-heap over ``(-next_use, last access number)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numba import njit

from sim.kernel import HIT, MISS, replay_kernel
from sim.policies._heap import make_heap, min_unguarded, push, remove, update

NAME = "opt"
PARAMS: dict[str, Any] = {}
NEEDS_NEXT_USE = True


def make_state(capacity: int, num_keys: int, params: Mapping[str, Any], seed: int) -> tuple:
    # ctr = [access sequence number, capacity]
    return (*make_heap(capacity, num_keys), np.array([0, capacity], np.int64))


@njit(cache=True)
def access(state, key, now, next_use, guard, stamp):
    heap, pos, neg_next, seq, hs, scratch, ctr = state
    n = ctr[0]
    ctr[0] = n + 1
    if pos[key] >= 0:
        neg_next[key] = -next_use
        seq[key] = n
        update(heap, pos, neg_next, seq, hs, key)
        return HIT
    victim = MISS
    if hs[0] >= ctr[1]:
        victim = min_unguarded(heap, neg_next, seq, hs, guard, stamp, scratch)
        remove(heap, pos, neg_next, seq, hs, victim)
    neg_next[key] = -next_use
    seq[key] = n
    push(heap, pos, neg_next, seq, hs, key)
    return victim


@njit(cache=True)
def replay(state, keys, row_ptr, row_time, next_use, num_keys, hits_out):
    return replay_kernel(access, state, keys, row_ptr, row_time, next_use, num_keys, hits_out)


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
