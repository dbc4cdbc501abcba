"""LFU-DA: LFU with dynamic aging (Arlitt et al., 2000), for unit-size, unit-cost experts.

Each key's priority is ``K = L + F`` where ``F`` is its in-cache frequency and ``L`` the cache's
age: on insertion ``F = 1``; on a hit ``F += 1`` and ``K`` is recomputed with the current ``L``; the
key with the smallest ``K`` is evicted (least recent first among ties) and ``L`` becomes its ``K``.
Aging lets keys that were popular long ago leave, which plain LFU never does.

An indexed binary min-heap over ``(K, last access number)`` (:mod:`sim.policies._heap`); a miss
replaces the victim's slot with the new key (whose ``K = L + 1`` is near the smallest, but whose
access number is the largest, so it sinks below every key of that ``K``: about 5 of the 7 levels of
a 192-slot heap on the benchmark stream). ``L`` usually only grows, but not always: when a row's own keys hold the smallest
``K`` the victim is a larger one, and a later victim can be smaller again, so a hit re-places the
key in either direction. A long run of one-key rows (a flattened request stream) is served by its
own loop on one packed int64 per slot, without guards: its victim is always the root.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from moesim.kernels.jit import njit
from moesim.sim.policies._heap import make_heap, place, push, replace_at, victim_slot
from moesim.sim.policies._loops import one_key_prefix
from moesim.sim.policies._packed_heap import down, up
from moesim.sim.row_loop import HIT, MISS, NONNEG

NAME = "lfuda"
PARAMS: dict[str, Any] = {}
SHIFT = 1  # heap arity 2 ** SHIFT (see sim.policies._heap); the stream loop's packed steps are binary


def make_state(capacity: int, num_keys: int, params: Mapping[str, Any], seed: int) -> tuple:
    # ctr = [access sequence number, capacity, age L]
    return (*make_heap(capacity, num_keys, SHIFT), np.zeros(num_keys, np.int64),
            np.array([0, capacity, 0], np.int64))


@njit
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


@njit
def access(state, key, now, next_use, guard, stamp):
    hk, hp, hq, pos, hs, scratch, freq, ctr = state
    n = ctr[0]
    ctr[0] = n + 1
    return _serve(hk, hp, hq, pos, hs, scratch, freq, ctr, key, n, guard, stamp)


# The packed order: one int64 per slot, ``(K << 32) | seq``, orders slots exactly as ``(K, seq)`` does
# while every K lies in ``[0, K_MAX]`` and sequence numbers in ``[0, 2 ** 32)``; one comparison per
# heap step then. Each new K is checked as it comes: the first one out of range hands the rest of the
# run over to the pairs (on the benchmark stream K stays below 30,000 after 1.5 M accesses).
SEQ_BITS = 32
SEQ_MASK = (1 << SEQ_BITS) - 1
K_MAX = (1 << 31) - 1
STREAM_MIN = 64  # the fewest one-key rows worth packing the heap for (packing costs O(capacity))


@njit
def _packable(hp, hq, hs, n, count):
    """Whether the heap's pairs and ``count`` more sequence numbers from ``n`` have packed forms (the
    new K of each access is checked as it comes)."""
    if n < 0 or n + count > SEQ_MASK:
        return False
    for i in range(hs[0]):
        if np.uint64(hp[i]) > np.uint64(K_MAX) or np.uint64(hq[i]) > np.uint64(SEQ_MASK):
            return False
    return True


@njit
def _serve_stream(hk, hv, pos, freq, keys, hits, n, size, cap, age):
    """Serve a run of one-key rows (``keys[i]`` is row ``i``) from sequence number ``n`` on the packed
    heap of ``size`` keys, up to the first K above ``K_MAX``: (rows served, size, evictions, age). No
    row bounds and no guard: the key of a one-key row is not resident when a victim is chosen, so
    the victim is the root (``cap >= 1``, so a full heap has one). A hit usually leaves its key where
    it is (frequent keys have the largest K: on the benchmark stream 72% of the hits are on a leaf
    and 98% stay put): at a leaf only its priority changes."""
    evictions = 0
    for i in range(keys.shape[0]):
        key = np.int64(keys[i]) & NONNEG
        seq = n + i
        j = pos[key]
        if j >= 0:
            f = freq[key] + 1
            k = age + f
            if np.uint64(k) > np.uint64(K_MAX):  # checked before any change, so the pairs redo this access
                return i, size, evictions, age
            hits[i] = 1
            freq[key] = f
            v = (k << SEQ_BITS) | seq
            # K usually grows, but a smaller age left by an earlier guarded row can lower it
            if j > 0 and v < hv[((j - 1) >> 1) & NONNEG]:
                up(hk, hv, pos, j, key, v, SHIFT)
            elif 2 * j + 1 >= size:  # a leaf that stays: no move
                hv[j] = v
            else:
                down(hk, hv, pos, size, j, key, v, SHIFT)
        elif size < cap:
            if np.uint64(age + 1) > np.uint64(K_MAX):
                return i, size, evictions, age
            hits[i] = 0
            freq[key] = 1
            up(hk, hv, pos, size, key, ((age + 1) << SEQ_BITS) | seq, SHIFT)
            size += 1
        else:
            top = hv[0] >> SEQ_BITS
            if top + 1 > K_MAX:
                return i, size, evictions, age
            hits[i] = 0
            freq[key] = 1
            age = top
            pos[hk[0]] = -1
            down(hk, hv, pos, size, 0, key, ((age + 1) << SEQ_BITS) | seq, SHIFT)
            evictions += 1
    return keys.shape[0], size, evictions, age


@njit
def replay(state, keys, row_ptr, row_time, next_use, num_keys, hits_out):
    """The shared replay loop (:mod:`sim.row_loop`) with :func:`access` written out in it: the same
    accesses in the same order, so exactly what ``row_loop(access, ...)`` gives. Written out
    because numba's own inlining of a helper that takes arrays keeps reference counting in the loop
    (several times slower). A run of at least ``STREAM_MIN`` one-key rows goes to
    :func:`_serve_stream` on packed priorities (the heap's pairs are packed before and unpacked after,
    O(capacity)) while the values have packed forms; the other rows, on the heap's pairs."""
    hk, hp, hq, pos, hs, scratch, freq, ctr = state
    cap = ctr[1]
    age = ctr[2]
    n = ctr[0]
    guard = np.full(num_keys, -1, np.int64)
    evictions = 0
    n_rows = row_ptr.shape[0] - 1
    stream_from = 0  # the first row that may start a stream run (rows before it were looked at)
    hv = np.empty(0, np.int64)
    r = 0
    while r < n_rows:
        lo = row_ptr[r]
        hi = row_ptr[r + 1]
        # the first test is a cheap filter: a run of STREAM_MIN one-key rows holds STREAM_MIN keys
        if (r + STREAM_MIN <= n_rows and row_ptr[r + STREAM_MIN] - lo == STREAM_MIN and hi - lo == 1
                and r >= stream_from and cap >= 1):
            m = one_key_prefix(row_ptr[r:])
            stream_from = r + m
            if m >= STREAM_MIN and _packable(hp, hq, hs, n, m):
                size = hs[0]
                if hv.shape[0] == 0:
                    hv = np.empty(hk.shape[0], np.int64)
                for s in range(size):
                    hv[s] = (hp[s] << SEQ_BITS) | hq[s]
                done, size, ev, age = _serve_stream(hk, hv, pos, freq, keys[lo:lo + m], hits_out[lo:lo + m], n,
                                                    size, cap, age)
                for s in range(size):
                    v = hv[s]
                    hp[s] = v >> SEQ_BITS
                    hq[s] = v & SEQ_MASK
                hs[0] = size
                evictions += ev
                n += done
                r += done
                continue  # after a hand-over, the rest of the run on the pairs (stream_from is past it)
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
        r += 1
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
