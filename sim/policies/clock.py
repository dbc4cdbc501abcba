"""CLOCK (second chance): a circular buffer of slots with one reference bit per expert.

A hit sets the bit. On a miss with a full cache the hand sweeps: a set bit is cleared and the
hand moves on; the first key with a clear bit is replaced by the new key (bit clear) and the hand
moves past it. Keys of the current row are skipped untouched. This is FIFO with reinsertion:
``reference`` uses that formulation (a queue whose head is re-queued while its bit is set).

State: ``slots[capacity]``, ``slot_of[key]`` (-1 if absent), ``ref[key]``, ``[size, capacity, hand]``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np
from numba import njit

from sim.kernel import HIT, MISS, replay_kernel

NAME = "clock"
PARAMS: dict[str, Any] = {}


def make_state(capacity: int, num_keys: int, params: Mapping[str, Any], seed: int) -> tuple:
    slots = np.full(max(capacity, 1), -1, np.int64)
    return slots, np.full(num_keys, -1, np.int64), np.zeros(num_keys, np.uint8), np.array([0, capacity, 0],
                                                                                            np.int64)


@njit(cache=True)
def access(state, key, now, next_use, guard, stamp):
    slots, slot_of, ref, ctr = state
    if slot_of[key] >= 0:
        ref[key] = 1
        return HIT
    cap = ctr[1]
    if ctr[0] < cap:
        slots[ctr[0]] = key
        slot_of[key] = ctr[0]
        ref[key] = 0
        ctr[0] += 1
        return MISS
    hand = ctr[2]
    while True:
        v = slots[hand]
        if guard[v] == stamp:
            hand = (hand + 1) % cap
        elif ref[v]:
            ref[v] = 0
            hand = (hand + 1) % cap
        else:
            break
    slot_of[v] = -1
    slots[hand] = key
    slot_of[key] = hand
    ref[key] = 0
    ctr[2] = (hand + 1) % cap
    return v


@njit(cache=True)
def replay(state, keys, row_ptr, row_time, next_use, num_keys, hits_out):
    return replay_kernel(access, state, keys, row_ptr, row_time, next_use, num_keys, hits_out)


def reference(keys: np.ndarray, row_ptr: np.ndarray, row_time: np.ndarray, next_use: np.ndarray,
              capacity: int, num_keys: int, params: Mapping[str, Any], seed: int) -> tuple[np.ndarray, int]:
    queue: deque[int] = deque()  # head = where the hand points
    bit: dict[int, int] = {}
    hits = np.zeros(len(keys), np.uint8)
    evictions = 0
    for r in range(len(row_ptr) - 1):
        row = [int(k) for k in keys[row_ptr[r]:row_ptr[r + 1]]]
        for i, k in enumerate(row, start=int(row_ptr[r])):
            if k in bit:
                bit[k] = 1
                hits[i] = 1
                continue
            if len(queue) >= capacity:
                while True:
                    v = queue.popleft()
                    if v in row:
                        queue.append(v)
                    elif bit[v]:
                        bit[v] = 0
                        queue.append(v)
                    else:
                        break
                del bit[v]
                evictions += 1
            queue.append(k)
            bit[k] = 0
    return hits, evictions
