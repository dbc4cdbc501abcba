"""Random: evict a uniformly random resident expert (not one of the current row).

Seeded and reproducible bit for bit: a SplitMix64 generator whose 64-bit state starts at the seed;
a draw picks slot ``x mod size`` and is repeated while the slot holds a key of the current row
(uniform over the others). The new key takes the victim's slot. ``reference`` runs the same
generator in plain Python integers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numba import njit

from sim.kernel import HIT, MISS, replay_kernel

NAME = "random"
PARAMS: dict[str, Any] = {}

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB


def make_state(capacity: int, num_keys: int, params: Mapping[str, Any], seed: int) -> tuple:
    slots = np.full(max(capacity, 1), -1, np.int64)
    rng = np.array([int(seed) & _MASK], np.uint64)
    return slots, np.full(num_keys, -1, np.int64), np.array([0, capacity], np.int64), rng


@njit(cache=True)
def _next(rng):
    z = rng[0] + np.uint64(_GOLDEN)
    rng[0] = z
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_M1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_M2)
    return z ^ (z >> np.uint64(31))


@njit(cache=True)
def access(state, key, now, next_use, guard, stamp):
    slots, slot_of, ctr, rng = state
    if slot_of[key] >= 0:
        return HIT
    size = ctr[0]
    if size < ctr[1]:
        slots[size] = key
        slot_of[key] = size
        ctr[0] = size + 1
        return MISS
    while True:
        j = np.int64(_next(rng) % np.uint64(size))
        victim = slots[j]
        if guard[victim] != stamp:
            break
    slot_of[victim] = -1
    slots[j] = key
    slot_of[key] = j
    return victim


@njit(cache=True)
def replay(state, keys, row_ptr, row_time, next_use, num_keys, hits_out):
    return replay_kernel(access, state, keys, row_ptr, row_time, next_use, num_keys, hits_out)


def _next_ref(state: list[int]) -> int:
    state[0] = (state[0] + _GOLDEN) & _MASK
    z = state[0]
    z = ((z ^ (z >> 30)) * _M1) & _MASK
    z = ((z ^ (z >> 27)) * _M2) & _MASK
    return z ^ (z >> 31)


def reference(keys: np.ndarray, row_ptr: np.ndarray, row_time: np.ndarray, next_use: np.ndarray,
              capacity: int, num_keys: int, params: Mapping[str, Any], seed: int) -> tuple[np.ndarray, int]:
    slots: list[int] = []
    rng = [int(seed) & _MASK]
    hits = np.zeros(len(keys), np.uint8)
    evictions = 0
    for r in range(len(row_ptr) - 1):
        row = [int(k) for k in keys[row_ptr[r]:row_ptr[r + 1]]]
        for i, k in enumerate(row, start=int(row_ptr[r])):
            if k in slots:
                hits[i] = 1
            elif len(slots) < capacity:
                slots.append(k)
            else:
                while True:
                    j = _next_ref(rng) % len(slots)
                    if slots[j] not in row:
                        break
                slots[j] = k
                evictions += 1
    return hits, evictions
