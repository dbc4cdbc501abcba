"""LFU: evict the expert with the fewest hits since it entered the cache, least recent first.

The frequency is *in-cache*: it starts at 1 on insertion, grows by 1 per hit and is forgotten on
eviction (as in libCacheSim's LFU). Ties between equal frequencies go to the least recently
accessed key, so with all frequencies equal LFU behaves as LRU.

O(1) per access with *frequency buckets* (the constant-time LFU of Shah, Mitra and Matani, 2010)
instead of a heap: one bucket per frequency that some resident key has, the buckets in a list in
increasing frequency, and in each bucket a list of its keys from least to most recently accessed.
Frequencies grow by exactly 1, so a hit moves the key from its bucket to the *next* bucket (made
if that bucket is not ``f + 1``) and appends it there: the newest access is always at the back,
which keeps each bucket in recency order without sequence numbers. The victim is the front key of
the first bucket (skipping the row's guarded keys). At most ``capacity + 1`` buckets ever exist
at once, so they come from a fixed pool.

``state = (kprv, knxt, knode, nprv, nnxt, nfreq, free, ctr)``: key lists are intrusive doubly
linked lists in ``kprv`` / ``knxt`` (bucket ``b``'s sentinel is index ``num_keys + b``);
``knode[key]`` is the key's bucket or -1 (not resident); the bucket list is ``nprv`` / ``nnxt``
with sentinel ``P`` (the pool size); ``nfreq[b]`` is bucket ``b``'s frequency; ``free[:ctr[2]]``
are the unused buckets; ``ctr = [size, capacity, free count]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from moesim.kernels.jit import njit
from moesim.sim.row_loop import HIT, MISS

NAME = "lfu"
PARAMS: dict[str, Any] = {}


def make_state(capacity: int, num_keys: int, params: Mapping[str, Any], seed: int) -> tuple:
    pool = max(capacity, 1) + 2
    kprv = np.empty(num_keys + pool, np.int64)
    knxt = np.empty(num_keys + pool, np.int64)
    kprv[num_keys:] = knxt[num_keys:] = np.arange(num_keys, num_keys + pool)  # every bucket empty
    knode = np.full(num_keys, -1, np.int64)
    nprv = np.full(pool + 1, pool, np.int64)  # the bucket list: only its sentinel ``pool``
    nnxt = np.full(pool + 1, pool, np.int64)
    nfreq = np.zeros(pool + 1, np.int64)  # the sentinel's 0 matches no frequency
    free = np.arange(pool - 1, -1, -1, dtype=np.int64)
    ctr = np.array([0, capacity, pool], np.int64)
    return kprv, knxt, knode, nprv, nnxt, nfreq, free, ctr


@njit(forceinline=True)
def _new_bucket_after(nprv, nnxt, nfreq, free, ctr, a, f):
    """A fresh bucket of frequency ``f`` linked right after bucket ``a`` (or the sentinel)."""
    top = ctr[2] - 1
    ctr[2] = top
    b = free[top]
    nfreq[b] = f
    c = nnxt[a]
    nnxt[a] = b
    nprv[b] = a
    nnxt[b] = c
    nprv[c] = b
    return b


@njit(forceinline=True)
def _append(kprv, knxt, k, s):
    last = kprv[s]
    knxt[last] = k
    kprv[k] = last
    knxt[k] = s
    kprv[s] = k


@njit(forceinline=True)
def _unlink(kprv, knxt, k):
    p = kprv[k]
    q = knxt[k]
    knxt[p] = q
    kprv[q] = p


@njit(forceinline=True)
def _drop_if_empty(knxt, nprv, nnxt, free, ctr, b, s):
    """Return bucket ``b`` (key-list sentinel ``s``) to the pool if it has no key left."""
    if knxt[s] == s:
        p = nprv[b]
        q = nnxt[b]
        nnxt[p] = q
        nprv[q] = p
        free[ctr[2]] = b
        ctr[2] += 1


@njit
def _first_unguarded(knxt, nnxt, pool, num_keys, guard, stamp):
    """The front key of the first bucket that is not guarded (-1 if none): the row's keys are skipped."""
    b = nnxt[pool]
    while b != pool:
        sb = num_keys + b
        v = knxt[sb]
        while v != sb:
            if guard[v] != stamp:
                return v
            v = knxt[v]
        b = nnxt[b]
    return -1


@njit
def _serve(kprv, knxt, knode, nprv, nnxt, nfreq, free, ctr, key, guard, stamp):
    num_keys = knode.shape[0]
    pool = nprv.shape[0] - 1
    a = knode[key]
    if a >= 0:
        sa = num_keys + a
        f = nfreq[a] + 1
        b = nnxt[a]
        if nfreq[b] != f:
            if knxt[sa] == key and kprv[sa] == key:  # alone in its bucket: the bucket moves up
                nfreq[a] = f
                return HIT
            b = _new_bucket_after(nprv, nnxt, nfreq, free, ctr, a, f)
        _unlink(kprv, knxt, key)
        _drop_if_empty(knxt, nprv, nnxt, free, ctr, a, sa)
        _append(kprv, knxt, key, num_keys + b)
        knode[key] = b
        return HIT
    victim = MISS
    if ctr[0] >= ctr[1]:
        victim = _first_unguarded(knxt, nnxt, pool, num_keys, guard, stamp)
        if victim < 0:  # every resident key is guarded (capacity below the row width)
            return MISS
        b = knode[victim]
        _unlink(kprv, knxt, victim)
        _drop_if_empty(knxt, nprv, nnxt, free, ctr, b, num_keys + b)
        knode[victim] = -1
    else:
        ctr[0] += 1
    b = nnxt[pool]
    if nfreq[b] != 1:
        b = _new_bucket_after(nprv, nnxt, nfreq, free, ctr, pool, 1)
    _append(kprv, knxt, key, num_keys + b)
    knode[key] = b
    return victim


@njit
def access(state, key, now, next_use, guard, stamp):
    kprv, knxt, knode, nprv, nnxt, nfreq, free, ctr = state
    return _serve(kprv, knxt, knode, nprv, nnxt, nfreq, free, ctr, key, guard, stamp)


@njit
def replay(state, keys, row_ptr, row_time, next_use, num_keys, hits_out):
    """The shared replay loop (:mod:`sim.row_loop`) with :func:`access` written out in it: the same
    accesses in the same order, so exactly what ``row_loop(access, ...)`` gives. Written out
    because numba's own inlining of a helper that takes arrays keeps reference counting in the loop
    (four times slower)."""
    kprv, knxt, knode, nprv, nnxt, nfreq, free, ctr = state
    pool = nprv.shape[0] - 1
    guard = np.full(num_keys, -1, np.int64)
    evictions = 0
    for r in range(row_ptr.shape[0] - 1):
        lo = row_ptr[r]
        hi = row_ptr[r + 1]
        for i in range(lo, hi):
            guard[keys[i]] = r
        for i in range(lo, hi):
            key = np.int64(keys[i])
            a = knode[key]
            if a >= 0:
                hits_out[i] = 1
                sa = num_keys + a
                f = nfreq[a] + 1
                b = nnxt[a]
                if nfreq[b] != f:
                    if knxt[sa] == key and kprv[sa] == key:  # alone in its bucket: the bucket moves up
                        nfreq[a] = f
                        continue
                    b = _new_bucket_after(nprv, nnxt, nfreq, free, ctr, a, f)
                _unlink(kprv, knxt, key)
                _drop_if_empty(knxt, nprv, nnxt, free, ctr, a, sa)
                _append(kprv, knxt, key, num_keys + b)
                knode[key] = b
                continue
            hits_out[i] = 0
            if ctr[0] >= ctr[1]:
                victim = _first_unguarded(knxt, nnxt, pool, num_keys, guard, r)
                if victim < 0:  # every resident key is guarded (capacity below the row width)
                    continue
                b = knode[victim]
                _unlink(kprv, knxt, victim)
                _drop_if_empty(knxt, nprv, nnxt, free, ctr, b, num_keys + b)
                knode[victim] = -1
                evictions += 1
            else:
                ctr[0] += 1
            b = nnxt[pool]
            if nfreq[b] != 1:
                b = _new_bucket_after(nprv, nnxt, nfreq, free, ctr, pool, 1)
            _append(kprv, knxt, key, num_keys + b)
            knode[key] = b
    return evictions


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
