"""FIFO: evict the expert that entered the cache first; hits change nothing.

State: an *insertion log* instead of a linked list. Every insertion appends its key to a ring buffer
(``ring``) at the tail; the oldest entry sits at the head, so a victim is normally popped from the
head in O(1) with no pointer chasing. A guarded key (one of the current row's) keeps its place: the
victim is then the oldest unguarded entry further in, and its slot becomes a *hole* (``-1``) that
the head skips later. Holes only come from guarded evictions; when the live window ``[head, tail)``
fills the ring (``M >= capacity + num_keys`` entries) it is compacted to its keys (at most
``capacity``), amortised O(1).

Row semantics (as for every policy: the experts of a row never evict each other). ``replay``
serves a row in two steps: insert every missing key (hit = resident before the row, since a row's
keys are distinct and never evict each other), then evict the oldest keys outside the row until the
cache fits. This equals serving the keys one by one with the row guard (``access``): each miss there
evicts the oldest unguarded key, and the row's own new keys (guarded, newest) are never reached, so
both evict the same oldest keys outside the row and append the same new keys in row order. A row
of one key needs no guard at all: its key is either a hit (nothing evicted) or newer than every
victim; ``replay`` serves it without branching on hit or miss (hits and misses alternate
unpredictably), which needs the head to be a key, never a hole, between rows.

``state = (ring int32[M], resident uint8[num_keys], st int64[4])`` with
``st = [head, tail, size, capacity]`` (positions are absolute; ``q & (M - 1)`` is the ring slot).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from moesim.kernels.jit import njit
from moesim.sim.policies._loops import pow2_at_least
from moesim.sim.row_loop import HIT, MISS, NONNEG, row_loop

NAME = "fifo"
PARAMS: dict[str, Any] = {}

# ``mask & NONNEG`` tells the compiler that a slot ``q & mask`` is never negative, so numba's
# negative-index fix-ups drop out of the loops.


def ring_size(capacity: int, num_keys: int) -> int:
    """The smallest power of two (at least 64) holding the live keys plus one row of new keys.

    At most ``min(capacity, num_keys)`` keys are live and a row adds at most ``num_keys`` (distinct)
    entries, so after a compaction every row fits.
    """
    return pow2_at_least(min(max(capacity, 1), num_keys) + num_keys)


def make_state(capacity: int, num_keys: int, params: Mapping[str, Any], seed: int) -> tuple:
    ring = np.full(ring_size(capacity, num_keys), -1, np.int32)
    return ring, np.zeros(num_keys, np.uint8), np.array([0, 0, 0, capacity], np.int64)


@njit
def _compact(ring, st):
    """Drop the holes of the live window, keeping the keys in insertion order."""
    mask = (ring.shape[0] - 1) & NONNEG
    out = st[0]
    for q in range(st[0], st[1]):
        k = ring[q & mask]
        if k >= 0:
            ring[out & mask] = k
            out += 1
    st[1] = out


@njit
def access(state, key, now, next_use, guard, stamp):
    ring, resident, st = state
    if resident[key]:
        return HIT
    mask = (ring.shape[0] - 1) & NONNEG
    victim = MISS
    if st[2] >= st[3]:
        head = st[0]
        while ring[head & mask] < 0:  # holes left by earlier guarded evictions
            head += 1
        q = head
        victim = ring[q & mask]
        while victim < 0 or guard[victim] == stamp:
            q += 1
            victim = ring[q & mask]
        if q == head:
            head += 1
        else:
            ring[q & mask] = -1
        st[0] = head
        resident[victim] = 0
        st[2] -= 1
    if st[1] - st[0] >= ring.shape[0]:
        _compact(ring, st)
    ring[st[1] & mask] = key
    st[1] += 1
    resident[key] = 1
    st[2] += 1
    return victim


@njit
def _evict_outside_row(ring, resident, guard, stamp, head, size, cap):
    """Evict the oldest keys not guarded by ``stamp`` until ``size <= cap``: (head, size, evictions).

    A guarded key keeps its entry; entries evicted behind it become holes."""
    mask = (ring.shape[0] - 1) & NONNEG
    q = head
    evictions = 0
    while size > cap:
        v = ring[q & mask]
        if v >= 0:
            if guard[v] == stamp:
                q += 1
                continue
            resident[v] = 0
            size -= 1
            evictions += 1
            if q != head:
                ring[q & mask] = -1
        if q == head:
            head += 1
        q += 1
    return head, size, evictions


@njit
def replay(state, keys, row_ptr, row_time, next_use, num_keys, hits_out):
    ring, resident, st = state
    mask = (ring.shape[0] - 1) & NONNEG
    head = st[0]
    tail = st[1]
    size = st[2]
    cap = st[3]
    guard = np.full(num_keys, -1, np.int64)
    evictions = 0
    while head < tail and ring[head & mask] < 0:  # the branch-free pop below wants a key at the head
        head += 1
    for r in range(row_ptr.shape[0] - 1):
        lo = row_ptr[r]
        hi = row_ptr[r + 1]
        if tail - head + (hi - lo) > ring.shape[0]:
            st[0] = head
            st[1] = tail
            _compact(ring, st)
            tail = st[1]
        if hi - lo == 1:
            # One key: a hit evicts nothing, a miss evicts the oldest key (never the new one). Branch
            # free, since hits and misses alternate unpredictably: a hit writes its key past the tail
            # (a free slot) without advancing it, and the "pop" of a cache that still fits rewrites
            # the head's flag with its own value.
            k = keys[lo]
            h = resident[k]
            hits_out[lo] = h
            resident[k] = 1
            ring[tail & mask] = k
            tail += 1 - h
            size += 1 - h
            ev = np.int64(size > cap)
            v = ring[head & mask]
            resident[v] = resident[v] & np.uint8(1 - ev)
            head += ev
            size -= ev
            evictions += ev
            while head < tail and ring[head & mask] < 0:
                head += 1
            continue
        # Branch-free inserts: the slot at ``tail`` is free (checked above), so writing a hit's key
        # there is harmless; only a miss advances the tail.
        hit = 0
        for i in range(lo, hi):
            k = keys[i]
            h = resident[k]
            hits_out[i] = h
            hit += h
            resident[k] = 1
            guard[k] = r
            ring[tail & mask] = k
            tail += 1 - h
        size += (hi - lo) - hit
        if size > cap:
            head, size, ev = _evict_outside_row(ring, resident, guard, r, head, size, cap)
            evictions += ev
            while head < tail and ring[head & mask] < 0:
                head += 1
    st[0] = head
    st[1] = tail
    st[2] = size
    return evictions


@njit
def replay_steps(state, chunk, num_experts, step_hits, step_acc):
    """Fused fast path of :func:`replay` (one shared cache, nothing pinned, row order as recorded):
    reads the rows straight from ``chunk`` ``[T, L, K]`` (keys ``l * E + e``, pads skipped) and
    writes each (step, layer)'s hits and accesses. Same arithmetic, same order as :func:`replay`;
    returns the evictions."""
    ring, resident, st = state
    mask = (ring.shape[0] - 1) & NONNEG
    head = st[0]
    tail = st[1]
    size = st[2]
    cap = st[3]
    T, L, K = chunk.shape
    guard = np.full(resident.shape[0], -1, np.int64)
    evictions = 0
    stamp = 0
    for t in range(T):
        for layer in range(L):
            base = layer * num_experts
            stamp += 1
            if tail - head + K > ring.shape[0]:
                st[0] = head
                st[1] = tail
                _compact(ring, st)
                tail = st[1]
            hit = 0
            n = 0
            for j in range(K):
                e = chunk[t, layer, j]
                if e < 0:
                    continue
                k = base + e
                h = resident[k]
                hit += h
                n += 1
                resident[k] = 1
                guard[k] = stamp
                ring[tail & mask] = k
                tail += 1 - h
            step_hits[t, layer] = hit
            step_acc[t, layer] = n
            size += n - hit
            if size > cap:
                head, size, ev = _evict_outside_row(ring, resident, guard, stamp, head, size, cap)
                evictions += ev
    st[0] = head
    st[1] = tail
    st[2] = size
    return evictions


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


@njit
def replay_by_access(state, keys, row_ptr, row_time, next_use, num_keys, hits_out):
    """The shared per-access loop over :func:`access`; gives exactly what :func:`replay` gives."""
    return row_loop(access, state, keys, row_ptr, row_time, next_use, num_keys, hits_out)
