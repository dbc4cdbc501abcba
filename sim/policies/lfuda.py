"""LFU-DA: LFU with dynamic aging (Arlitt et al., 2000), for unit-size, unit-cost experts.

Each key's priority is ``K = L + F`` where ``F`` is its in-cache frequency and ``L`` the cache's
age: on insertion ``F = 1``; on a hit ``F += 1`` and ``K`` is recomputed with the current ``L``; the
key with the smallest ``K`` is evicted (least recent first among ties) and ``L`` becomes its ``K``.
Aging lets keys that were popular long ago leave, which plain LFU never does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numba import njit

from sim.kernel import HIT, MISS, replay_kernel
from sim.policies._heap import make_heap, min_unguarded, push, remove, sift_down

NAME = "lfuda"
PARAMS: dict[str, Any] = {}


def make_state(capacity: int, num_keys: int, params: Mapping[str, Any], seed: int) -> tuple:
    # ctr = [access sequence number, capacity, age L]
    return (*make_heap(capacity, num_keys), np.zeros(num_keys, np.int64), np.array([0, capacity, 0], np.int64))


@njit(cache=True)
def access(state, key, now, next_use, guard, stamp):
    heap, pos, prio, seq, hs, scratch, freq, ctr = state
    n = ctr[0]
    ctr[0] = n + 1
    if pos[key] >= 0:
        freq[key] += 1
        prio[key] = ctr[2] + freq[key]
        seq[key] = n
        sift_down(heap, pos, prio, seq, hs[0], pos[key])  # L never falls, so K only grows
        return HIT
    victim = MISS
    if hs[0] >= ctr[1]:
        victim = min_unguarded(heap, prio, seq, hs, guard, stamp, scratch)
        ctr[2] = prio[victim]
        remove(heap, pos, prio, seq, hs, victim)
    freq[key] = 1
    prio[key] = ctr[2] + 1
    seq[key] = n
    push(heap, pos, prio, seq, hs, key)
    return victim


@njit(cache=True)
def replay(state, keys, row_ptr, row_time, next_use, num_keys, hits_out):
    return replay_kernel(access, state, keys, row_ptr, row_time, next_use, num_keys, hits_out)


def reference(keys: np.ndarray, row_ptr: np.ndarray, row_time: np.ndarray, next_use: np.ndarray,
              capacity: int, num_keys: int, params: Mapping[str, Any], seed: int) -> tuple[np.ndarray, int]:
    freq: dict[int, int] = {}
    prio: dict[int, int] = {}
    last: dict[int, int] = {}
    age = 0
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
                    victim = min((v for v in freq if v not in row), key=lambda v: (prio[v], last[v]))
                    age = prio[victim]
                    del freq[victim], prio[victim]
                    evictions += 1
                freq[k] = 1
            prio[k] = age + freq[k]
            last[k] = n
            n += 1
    return hits, evictions
