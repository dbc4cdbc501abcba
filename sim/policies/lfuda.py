"""LFU-DA: LFU with dynamic aging (Arlitt et al., 2000), for unit-size, unit-cost experts.

Each key's priority is ``K = L + F`` where ``F`` is its in-cache frequency and ``L`` the cache's
age: on insertion ``F = 1``; on a hit ``F += 1`` and ``K`` is recomputed with the current ``L``; the
key with the smallest ``K`` is evicted (least recent first among ties) and ``L`` becomes its ``K``.
Aging lets keys that were popular long ago leave, which plain LFU never does.

An indexed binary min-heap over ``(K, last access number)`` (:mod:`sim.policies._heap`); a miss
replaces the victim's slot with the new key (whose ``K = L + 1`` is near the top, so it rarely
moves far). ``L`` usually only grows, but not always: when a row's own keys hold the smallest
``K`` the victim is a larger one, and a later victim can be smaller again, so a hit re-places the
key in either direction.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numba import njit

from sim.kernel import HIT, MISS
from sim.policies._heap import make_heap, place, push, replace_at, victim_slot

NAME = "lfuda"
PARAMS: dict[str, Any] = {}
SHIFT = 1  # heap arity 2 ** SHIFT (see sim.policies._heap)


def make_state(capacity: int, num_keys: int, params: Mapping[str, Any], seed: int) -> tuple:
    # ctr = [access sequence number, capacity, age L]
    return (*make_heap(capacity, num_keys, SHIFT), np.zeros(num_keys, np.int64),
            np.array([0, capacity, 0], np.int64))


@njit(cache=True)
def _serve(hk, hp, hq, pos, hs, scratch, freq, ctr, key, n, guard, stamp):
    """One access with sequence number ``n``; the heap orders keys by ``(K, n)``."""
    i = pos[key]
    if i >= 0:
        f = freq[key] + 1
        freq[key] = f
        # K usually grows, but not always: a guarded row key can be the smallest, so the victim (and
        # the new L) may be larger than a key that stays; a later, smaller victim lowers L again.
        place(hk, hp, hq, pos, hs[0], i, key, ctr[2] + f, n, SHIFT)
        return HIT
    freq[key] = 1
    if hs[0] < ctr[1]:
        push(hk, hp, hq, pos, hs, key, ctr[2] + 1, n, SHIFT)
        return MISS
    s = victim_slot(hk, hp, hq, hs, guard, stamp, scratch, SHIFT)
    if s < 0:  # every resident key is guarded (capacity below the row width): nothing to evict
        return MISS
    victim = hk[s]
    ctr[2] = hp[s]
    replace_at(hk, hp, hq, pos, hs, s, key, ctr[2] + 1, n, SHIFT)
    return victim


@njit(cache=True)
def access(state, key, now, next_use, guard, stamp):
    hk, hp, hq, pos, hs, scratch, freq, ctr = state
    n = ctr[0]
    ctr[0] = n + 1
    return _serve(hk, hp, hq, pos, hs, scratch, freq, ctr, key, n, guard, stamp)


@njit(cache=True)
def replay(state, keys, row_ptr, row_time, next_use, num_keys, hits_out):
    """The shared replay loop (:mod:`sim.kernel`) with :func:`access` written out in it: the same
    accesses in the same order, so exactly what ``replay_kernel(access, ...)`` gives. Written out
    because numba's own inlining of a helper that takes arrays keeps reference counting in the loop
    (several times slower)."""
    hk, hp, hq, pos, hs, scratch, freq, ctr = state
    cap = ctr[1]
    age = ctr[2]
    n = ctr[0]
    guard = np.full(num_keys, -1, np.int64)
    evictions = 0
    for r in range(row_ptr.shape[0] - 1):
        lo = row_ptr[r]
        hi = row_ptr[r + 1]
        for i in range(lo, hi):
            guard[keys[i]] = r
        for i in range(lo, hi):
            key = np.int64(keys[i])
            seq = n
            n += 1
            j = pos[key]
            if j >= 0:
                hits_out[i] = 1
                f = freq[key] + 1
                freq[key] = f
                place(hk, hp, hq, pos, hs[0], j, key, age + f, seq, SHIFT)  # either way, as in access
                continue
            hits_out[i] = 0
            freq[key] = 1
            if hs[0] < cap:
                push(hk, hp, hq, pos, hs, key, age + 1, seq, SHIFT)
                continue
            s = victim_slot(hk, hp, hq, hs, guard, r, scratch, SHIFT)
            if s < 0:  # every resident key is guarded (capacity below the row width): nothing to evict
                continue
            age = hp[s]
            replace_at(hk, hp, hq, pos, hs, s, key, age + 1, seq, SHIFT)
            evictions += 1
    ctr[0] = n
    ctr[2] = age
    return evictions


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
