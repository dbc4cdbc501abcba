"""FIFO: evict the expert that entered the cache first; hits change nothing.

State: a linked list in insertion order (front = oldest), a residency flag, ``[size, capacity]``.
A guarded front key (the current row's) is skipped and keeps its place.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numba import njit

from sim.kernel import HIT, MISS, replay_kernel
from sim.policies._dlist import make_list, push_back, unlink

NAME = "fifo"
PARAMS: dict[str, Any] = {}


def make_state(capacity: int, num_keys: int, params: Mapping[str, Any], seed: int) -> tuple:
    prv, nxt = make_list(num_keys)
    return prv, nxt, np.zeros(num_keys, np.uint8), np.array([0, capacity], np.int64)


@njit(cache=True)
def access(state, key, now, next_use, guard, stamp):
    prv, nxt, resident, counters = state
    if resident[key]:
        return HIT
    victim = MISS
    if counters[0] >= counters[1]:
        victim = nxt[prv.shape[0] - 1]
        while guard[victim] == stamp:
            victim = nxt[victim]
        unlink(prv, nxt, victim)
        resident[victim] = 0
        counters[0] -= 1
    resident[key] = 1
    counters[0] += 1
    push_back(prv, nxt, key)
    return victim


@njit(cache=True)
def replay(state, keys, row_ptr, row_time, next_use, num_keys, hits_out):
    return replay_kernel(access, state, keys, row_ptr, row_time, next_use, num_keys, hits_out)


def reference(keys: np.ndarray, row_ptr: np.ndarray, row_time: np.ndarray, next_use: np.ndarray,
              capacity: int, num_keys: int, params: Mapping[str, Any], seed: int) -> tuple[np.ndarray, int]:
    queue: list[int] = []  # oldest first
    hits = np.zeros(len(keys), np.uint8)
    evictions = 0
    for r in range(len(row_ptr) - 1):
        row = [int(k) for k in keys[row_ptr[r]:row_ptr[r + 1]]]
        for i, k in enumerate(row, start=int(row_ptr[r])):
            if k in queue:
                hits[i] = 1
                continue
            if len(queue) >= capacity:
                queue.remove(next(v for v in queue if v not in row))
                evictions += 1
            queue.append(k)
    return hits, evictions
