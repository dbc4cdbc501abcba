"""LFU: evict the expert with the fewest hits since it entered the cache, least recent first.

The frequency is *in-cache*: it starts at 1 on insertion, grows by 1 per hit and is forgotten on
eviction (as in libCacheSim's LFU). Ties between equal frequencies go to the least recently
accessed key, so with all frequencies equal LFU behaves as LRU. A min-heap ordered by
``(frequency, last access number)`` gives O(log capacity) per access.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numba import njit

from sim.kernel import HIT, MISS, replay_kernel
from sim.policies._heap import make_heap, min_unguarded, push, remove, sift_down

NAME = "lfu"
PARAMS: dict[str, Any] = {}


def make_state(capacity: int, num_keys: int, params: Mapping[str, Any], seed: int) -> tuple:
    # ctr = [access sequence number, capacity]
    return (*make_heap(capacity, num_keys), np.array([0, capacity], np.int64))


@njit(cache=True)
def access(state, key, now, next_use, guard, stamp):
    heap, pos, freq, seq, hs, scratch, ctr = state
    n = ctr[0]
    ctr[0] = n + 1
    if pos[key] >= 0:
        freq[key] += 1
        seq[key] = n
        sift_down(heap, pos, freq, seq, hs[0], pos[key])  # its priority only grew
        return HIT
    victim = MISS
    if hs[0] >= ctr[1]:
        victim = min_unguarded(heap, freq, seq, hs, guard, stamp, scratch)
        remove(heap, pos, freq, seq, hs, victim)
    freq[key] = 1
    seq[key] = n
    push(heap, pos, freq, seq, hs, key)
    return victim


@njit(cache=True)
def replay(state, keys, row_ptr, row_time, next_use, num_keys, hits_out):
    return replay_kernel(access, state, keys, row_ptr, row_time, next_use, num_keys, hits_out)


def reference(keys: np.ndarray, row_ptr: np.ndarray, row_time: np.ndarray, next_use: np.ndarray,
              capacity: int, num_keys: int, params: Mapping[str, Any], seed: int) -> tuple[np.ndarray, int]:
    freq: dict[int, int] = {}
    last: dict[int, int] = {}
    hits = np.zeros(len(keys), np.uint8)
    evictions = 0
    n = 0
    for r in range(len(row_ptr) - 1):
        row = [int(k) for k in keys[row_ptr[r]:row_ptr[r + 1]]]
        for i, k in enumerate(row, start=int(row_ptr[r])):
            if k in freq:
                freq[k] += 1
                hits[i] = 1
            else:
                if len(freq) >= capacity:
                    victim = min((v for v in freq if v not in row), key=lambda v: (freq[v], last[v]))
                    del freq[victim]
                    evictions += 1
                freq[k] = 1
            last[k] = n
            n += 1
    return hits, evictions
