"""SIEVE (Zhang et al., NSDI 2024): a FIFO queue with a visited bit and a hand that sieves it.

New keys enter at the newest end with the bit clear; a hit sets the bit. To evict, the hand walks
from where it stopped (the oldest key at first) toward newer keys, clearing set bits, and evicts
the first key whose bit is clear; it then rests on the evicted key's newer neighbour (wrapping to
the oldest key past the newest). Unlike CLOCK, survivors keep their place. Keys of the current row
are skipped untouched.

State: a linked list (front = oldest), residency and visited flags, ``[size, capacity, hand]``
(hand = the sentinel ``num_keys`` when it is to start from the oldest key).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numba import njit

from sim.kernel import HIT, MISS, replay_kernel
from sim.policies._dlist import make_list, push_back, unlink

NAME = "sieve"
PARAMS: dict[str, Any] = {}


def make_state(capacity: int, num_keys: int, params: Mapping[str, Any], seed: int) -> tuple:
    prv, nxt = make_list(num_keys)
    return (prv, nxt, np.zeros(num_keys, np.uint8), np.zeros(num_keys, np.uint8),
            np.array([0, capacity, num_keys], np.int64))


@njit(cache=True)
def access(state, key, now, next_use, guard, stamp):
    prv, nxt, resident, visited, ctr = state
    if resident[key]:
        visited[key] = 1
        return HIT
    victim = MISS
    if ctr[0] >= ctr[1]:
        s = prv.shape[0] - 1
        h = ctr[2]
        if h == s:
            h = nxt[s]
        while True:
            if guard[h] != stamp:
                if visited[h] == 0:
                    break
                visited[h] = 0
            h = nxt[h]
            if h == s:
                h = nxt[s]
        victim = h
        ctr[2] = nxt[h]  # the sentinel when the victim was the newest: restart from the oldest
        unlink(prv, nxt, victim)
        resident[victim] = 0
        ctr[0] -= 1
    resident[key] = 1
    visited[key] = 0
    ctr[0] += 1
    push_back(prv, nxt, key)
    return victim


@njit(cache=True)
def replay(state, keys, row_ptr, row_time, next_use, num_keys, hits_out):
    return replay_kernel(access, state, keys, row_ptr, row_time, next_use, num_keys, hits_out)


def reference(keys: np.ndarray, row_ptr: np.ndarray, row_time: np.ndarray, next_use: np.ndarray,
              capacity: int, num_keys: int, params: Mapping[str, Any], seed: int) -> tuple[np.ndarray, int]:
    queue: list[int] = []  # oldest first
    visited: dict[int, bool] = {}
    hand: int | None = None  # index into queue
    hits = np.zeros(len(keys), np.uint8)
    evictions = 0
    for r in range(len(row_ptr) - 1):
        row = [int(k) for k in keys[row_ptr[r]:row_ptr[r + 1]]]
        for i, k in enumerate(row, start=int(row_ptr[r])):
            if k in visited:
                visited[k] = True
                hits[i] = 1
                continue
            if len(queue) >= capacity:
                j = 0 if hand is None else hand
                while queue[j] in row or visited[queue[j]]:
                    if queue[j] not in row:
                        visited[queue[j]] = False
                    j = (j + 1) % len(queue)
                del visited[queue.pop(j)]
                hand = j if j < len(queue) else None
                evictions += 1
            queue.append(k)
            visited[k] = False
    return hits, evictions
