"""LRU: evict the least recently used expert.

State: a doubly linked list over keys with a sentinel at index ``num_keys`` (``nxt[S]`` is the
least recently used key, ``prv[S]`` the most recent), a residency flag, and ``[size, capacity]``.
Access, hit and insert are O(1); choosing a victim skips guarded keys (the current row's), at most
``width - 1`` steps.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np
from numba import njit

from sim.kernel import HIT, MISS, replay_kernel

NAME = "lru"
PARAMS: dict[str, Any] = {}


def make_state(capacity: int, num_keys: int, params: Mapping[str, Any], seed: int) -> tuple:
    s = num_keys
    prv = np.full(num_keys + 1, s, np.int64)
    nxt = np.full(num_keys + 1, s, np.int64)
    resident = np.zeros(num_keys, np.uint8)
    counters = np.array([0, capacity], np.int64)
    return prv, nxt, resident, counters


@njit(cache=True)
def _unlink(prv, nxt, k):
    nxt[prv[k]] = nxt[k]
    prv[nxt[k]] = prv[k]


@njit(cache=True)
def _push_mru(prv, nxt, k):
    s = prv.shape[0] - 1
    last = prv[s]
    nxt[last] = k
    prv[k] = last
    nxt[k] = s
    prv[s] = k


@njit(cache=True)
def access(state, key, now, next_use, guard, stamp):
    prv, nxt, resident, counters = state
    if resident[key]:
        _unlink(prv, nxt, key)
        _push_mru(prv, nxt, key)
        return HIT
    victim = MISS
    if counters[0] >= counters[1]:
        s = prv.shape[0] - 1
        victim = nxt[s]
        while guard[victim] == stamp:
            victim = nxt[victim]
        _unlink(prv, nxt, victim)
        resident[victim] = 0
        counters[0] -= 1
    resident[key] = 1
    counters[0] += 1
    _push_mru(prv, nxt, key)
    return victim


@njit(cache=True)
def replay(state, keys, row_ptr, row_time, next_use, num_keys, hits_out):
    return replay_kernel(access, state, keys, row_ptr, row_time, next_use, num_keys, hits_out)


def reference(keys: np.ndarray, row_ptr: np.ndarray, row_time: np.ndarray, next_use: np.ndarray,
              capacity: int, num_keys: int, params: Mapping[str, Any], seed: int) -> tuple[np.ndarray, int]:
    """Plain-Python LRU with the same row semantics: (hit per access, evictions)."""
    cache: OrderedDict[int, None] = OrderedDict()  # first item = least recently used
    hits = np.zeros(len(keys), np.uint8)
    evictions = 0
    for r in range(len(row_ptr) - 1):
        row = [int(k) for k in keys[row_ptr[r]:row_ptr[r + 1]]]
        for i, k in enumerate(row, start=int(row_ptr[r])):
            if k in cache:
                cache.move_to_end(k)
                hits[i] = 1
                continue
            if len(cache) >= capacity:
                victim = next(v for v in cache if v not in row)
                del cache[victim]
                evictions += 1
            cache[k] = None
    return hits, evictions
