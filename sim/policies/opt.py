"""Belady's OPT: evict the expert whose next use is farthest in the future.

The engine gives each access the time of the next row requesting the same key (``next_use``,
``NEVER`` if none), computed in one backward pass; with rows, a key's next use is the time of its
next *row*, so several keys can share one next use (ties go to the least recently used). Every
miss inserts (an expert must be in memory to run), the forced-insert variant that libCacheSim's
Belady also implements; the experts of a row never evict each other. With a cold start this is
the fewest misses any demand-fetching cache of this size can have (the tests check it against an
exhaustive search on small traces). An indexed 8-ary min-heap over ``(-next_use, last access
number)`` (:mod:`sim.policies._heap`): a hit moves the key toward the root (its old next use, the
current row, is the nearest of all, so it starts at the bottom), a miss puts the new key in the
victim's slot (the root unless the row guards it). ``replay`` packs each pair into one int64 while
the values allow it (one comparison per heap step) and serves one-key rows without a guard (their
key is not resident when a victim is chosen, so the victim is the root); ``replay_by_access`` is
the shared per-access loop over ``access``, and the tests check that both give the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from moesim.kernels.jit import njit
from moesim.sim.policies._heap import make_heap, place, push, replace_at, victim_slot
from moesim.sim.policies._loops import one_key_prefix
from moesim.sim.policies._packed_heap import down, put, up
from moesim.sim.row_loop import HIT, MISS, NEVER, NONNEG, row_loop

NAME = "opt"
PARAMS: dict[str, Any] = {}
SHIFT = 3  # heap arity 2 ** SHIFT (see sim.policies._heap; 8-ary measured fastest from 48 to 600 slots)
NEEDS_NEXT_USE = True


def make_state(capacity: int, num_keys: int, params: Mapping[str, Any], seed: int) -> tuple:
    # ctr = [access sequence number, capacity]
    return (*make_heap(capacity, num_keys, SHIFT), np.array([0, capacity], np.int64))


@njit
def _serve(hk, hp, hq, pos, hs, scratch, cap, key, next_use, n, guard, stamp):
    """One access with sequence number ``n``; the heap orders keys by ``(-next_use, n)``."""
    i = pos[key]
    if i >= 0:
        place(hk, hp, hq, pos, hs[0], i, key, -next_use, n, SHIFT)
        return HIT
    if hs[0] < cap:
        push(hk, hp, hq, pos, hs, key, -next_use, n, SHIFT)
        return MISS
    s = victim_slot(hk, hp, hq, hs, guard, stamp, scratch, SHIFT)
    if s < 0:  # every resident key is guarded (capacity below the row width): nothing to evict
        return MISS
    victim = hk[s]
    replace_at(hk, hp, hq, pos, hs, s, key, -next_use, n, SHIFT)
    return victim


@njit
def access(state, key, now, next_use, guard, stamp):
    hk, hp, hq, pos, hs, scratch, ctr = state
    n = ctr[0]
    ctr[0] = n + 1
    return _serve(hk, hp, hq, pos, hs, scratch, ctr[1], key, next_use, n, guard, stamp)


# The packed order: one int64 per slot, ``(hi << 32) | seq`` with ``hi = 0`` for ``NEVER`` and
# ``PACK_BIG - next_use`` otherwise, orders slots exactly as ``(-next_use, seq)`` does while next uses
# lie in ``[0, PACK_BIG - 2]`` and sequence numbers below ``2 ** 32``; one comparison per step then.
PACK_BIG = 1 << 31
SEQ_BITS = 32
SEQ_MASK = (1 << SEQ_BITS) - 1


@njit(forceinline=True)
def _fits(nu):
    """Whether a next use has a packed form."""
    return nu == NEVER or (nu >= 0 and nu <= PACK_BIG - 2)


@njit
def _packable(hp, hs, n, count):
    """Whether the heap's keys and ``count`` more sequence numbers from ``n`` have packed forms (the
    next uses of the accesses are checked as they come)."""
    if n < 0 or n + count >= (1 << SEQ_BITS):
        return False
    for i in range(hs[0]):
        if not _fits(-hp[i]):
            return False
    return True


@njit(forceinline=True)
def _pack(nu, seq):
    hi = 0 if nu == NEVER else PACK_BIG - nu
    return (hi << SEQ_BITS) | seq


@njit
def _packed_victim(hk, hv, size, guard, stamp, scratch):
    """The slot of the smallest unguarded key (-1 if all are guarded); as ``victim_slot``."""
    if size == 0:
        return -1
    if guard[hk[0]] != stamp:
        return 0
    best = -1
    top = 1
    scratch[0] = 0
    while top > 0:
        top -= 1
        i = scratch[top]
        if guard[hk[i]] != stamp:
            if best < 0 or hv[i] < hv[best]:
                best = i
            continue
        first = (i << SHIFT) + 1
        for c in range(first, min(first + (1 << SHIFT), size)):
            scratch[top] = c
            top += 1
    return best


@njit
def _serve_stream(hk, hv, pos, keys, next_use, hits, n, size, cap):
    """Serve a run of one-key rows (``keys[i]`` is row ``i``) from sequence number ``n``, up to the
    first next use without a packed form: (rows served, size, evictions). No row bounds and no
    guard: the key of a one-key row is not resident when a victim is chosen, so the victim is the
    root (measured ~20% faster than the loop over rows). A hit usually leaves its key where it is
    (its old next use, the current row, was the nearest of all, so the key sits on the bottom
    level, and the new one is rarely farther than its parent's): then only its priority changes."""
    evictions = 0
    for i in range(keys.shape[0]):
        nu = next_use[i]
        # ``_fits`` as one unsigned comparison in the common case (a well-predicted branch)
        if np.uint64(nu) > np.uint64(PACK_BIG - 2) and nu != NEVER:
            return i, size, evictions
        key = np.int64(keys[i]) & NONNEG
        v = _pack(nu, n + i)
        j = pos[key]
        if j >= 0:
            hits[i] = 1
            if j > 0 and v < hv[((j - 1) >> SHIFT) & NONNEG]:
                up(hk, hv, pos, j, key, v, SHIFT)
            elif (j << SHIFT) + 1 >= size:  # a leaf that stays: no move
                hv[j] = v
            else:
                down(hk, hv, pos, size, j, key, v, SHIFT)
        elif size < cap:
            hits[i] = 0
            up(hk, hv, pos, size, key, v, SHIFT)
            size += 1
        else:
            hits[i] = 0
            pos[hk[0]] = -1
            down(hk, hv, pos, size, 0, key, v, SHIFT)
            evictions += 1
    return keys.shape[0], size, evictions


@njit
def _replay_packed(hk, hp, hq, pos, hs, scratch, ctr, keys, row_ptr, next_use, num_keys, hits_out):
    """The replay with one packed priority per slot (the heap's pairs are packed on entry and
    unpacked on exit, O(capacity)), up to the first row with a next use that has no packed form;
    returns (evictions, rows served). A one-key row needs no guard: its key is not resident when a
    victim is chosen, so the victim is the root."""
    cap = ctr[1]
    n = ctr[0]
    size = hs[0]
    hv = np.empty(hk.shape[0], np.int64)
    for i in range(size):
        hv[i] = _pack(-hp[i], hq[i])
    guard = np.full(num_keys, -1, np.int64)
    has_next = next_use.shape[0] > 0
    evictions = 0
    n_rows = row_ptr.shape[0] - 1
    r = 0
    while r < n_rows:
        lo = row_ptr[r]
        hi = row_ptr[r + 1]
        if hi - lo == 1 and has_next:
            m = one_key_prefix(row_ptr[r:])
            if m > 1:
                done, size, ev = _serve_stream(hk, hv, pos, keys[lo:lo + m], next_use[lo:lo + m],
                                               hits_out[lo:lo + m], n, size, cap)
                evictions += ev
                n += done
                r += done
                if done < m:  # a next use without a packed form: the rest on the pairs
                    break
                continue
        if hi - lo == 1:
            key = np.int64(keys[lo]) & NONNEG
            nu = next_use[lo] if has_next else NEVER
            if not _fits(nu):
                break
            v = _pack(nu, n)
            n += 1
            j = pos[key]
            if j >= 0:
                hits_out[lo] = 1
                put(hk, hv, pos, size, j, key, v, SHIFT)
            elif size < cap:
                hits_out[lo] = 0
                up(hk, hv, pos, size, key, v, SHIFT)
                size += 1
            else:
                hits_out[lo] = 0
                if size > 0:
                    pos[hk[0]] = -1
                    down(hk, hv, pos, size, 0, key, v, SHIFT)
                    evictions += 1
            r += 1
            continue
        fits = True
        if has_next:
            for i in range(lo, hi):
                fits &= _fits(next_use[i])
        if not fits:
            break
        for i in range(lo, hi):
            guard[keys[i]] = r
        for i in range(lo, hi):
            key = np.int64(keys[i])
            v = _pack(next_use[i] if has_next else NEVER, n)
            n += 1
            j = pos[key]
            if j >= 0:
                hits_out[i] = 1
                put(hk, hv, pos, size, j, key, v, SHIFT)
                continue
            hits_out[i] = 0
            if size < cap:
                up(hk, hv, pos, size, key, v, SHIFT)
                size += 1
                continue
            s = _packed_victim(hk, hv, size, guard, r, scratch)
            if s < 0:  # every resident key is guarded (capacity below the row width): nothing to evict
                continue
            pos[hk[s]] = -1
            put(hk, hv, pos, size, s, key, v, SHIFT)
            evictions += 1
        r += 1
    for i in range(size):
        v = hv[i]
        h = v >> SEQ_BITS
        hp[i] = -NEVER if h == 0 else h - PACK_BIG
        hq[i] = v & SEQ_MASK
    hs[0] = size
    ctr[0] = n
    return evictions, r


@njit
def _replay_pairs(hk, hp, hq, pos, hs, scratch, ctr, keys, row_ptr, next_use, num_keys, hits_out):
    """The replay on the heap's ``(prio, seq)`` pairs: any next-use times and sequence numbers."""
    cap = ctr[1]
    n = ctr[0]
    guard = np.full(num_keys, -1, np.int64)
    has_next = next_use.shape[0] > 0
    evictions = 0
    for r in range(row_ptr.shape[0] - 1):
        lo = row_ptr[r]
        hi = row_ptr[r + 1]
        for i in range(lo, hi):
            guard[keys[i]] = r
        for i in range(lo, hi):
            key = np.int64(keys[i])
            p = -(next_use[i] if has_next else NEVER)
            seq = n
            n += 1
            j = pos[key]
            if j >= 0:
                hits_out[i] = 1
                place(hk, hp, hq, pos, hs[0], j, key, p, seq, SHIFT)
                continue
            hits_out[i] = 0
            if hs[0] < cap:
                push(hk, hp, hq, pos, hs, key, p, seq, SHIFT)
                continue
            s = victim_slot(hk, hp, hq, hs, guard, r, scratch, SHIFT)
            if s < 0:  # every resident key is guarded (capacity below the row width): nothing to evict
                continue
            replace_at(hk, hp, hq, pos, hs, s, key, p, seq, SHIFT)
            evictions += 1
    ctr[0] = n
    return evictions


@njit
def replay(state, keys, row_ptr, row_time, next_use, num_keys, hits_out):
    """The shared replay loop (:mod:`sim.row_loop`) with :func:`access` written out in it: the same
    accesses in the same order, so exactly what :func:`replay_by_access` gives. Written out
    because numba's own inlining of a helper that takes arrays keeps reference counting in the loop
    (several times slower). Runs on packed priorities while every next use has a packed form (any
    trace shorter than 2 ** 31 layer-clock steps), and from the first one that has none on the
    heap's pairs."""
    hk, hp, hq, pos, hs, scratch, ctr = state
    if not _packable(hp, hs, ctr[0], keys.shape[0]):
        return _replay_pairs(hk, hp, hq, pos, hs, scratch, ctr, keys, row_ptr, next_use, num_keys, hits_out)
    evictions, r = _replay_packed(hk, hp, hq, pos, hs, scratch, ctr, keys, row_ptr, next_use, num_keys, hits_out)
    if r == row_ptr.shape[0] - 1:
        return evictions
    # A next use without a packed form: the rest of the rows on the pairs.
    lo = row_ptr[r]
    rest_next = next_use[lo:] if next_use.shape[0] > 0 else next_use
    return evictions + _replay_pairs(hk, hp, hq, pos, hs, scratch, ctr, keys[lo:], row_ptr[r:] - lo, rest_next,
                                     num_keys, hits_out[lo:])


@njit
def replay_by_access(state, keys, row_ptr, row_time, next_use, num_keys, hits_out):
    """The shared per-access loop over :func:`access`; gives exactly what :func:`replay` gives."""
    return row_loop(access, state, keys, row_ptr, row_time, next_use, num_keys, hits_out)


def reference(keys: np.ndarray, row_ptr: np.ndarray, row_time: np.ndarray, next_use: np.ndarray,
              capacity: int, num_keys: int, params: Mapping[str, Any], seed: int) -> tuple[np.ndarray, int]:
    nxt: dict[int, int] = {}  # resident key -> its next use
    last: dict[int, int] = {}
    hits = np.zeros(len(keys), np.uint8)
    evictions = 0
    n = 0
    for r in range(len(row_ptr) - 1):
        row = [int(k) for k in keys[row_ptr[r]:row_ptr[r + 1]]]
        for i, k in enumerate(row, start=int(row_ptr[r])):
            if k in nxt:
                hits[i] = 1
            elif len(nxt) >= capacity:
                victim = max((v for v in nxt if v not in row), key=lambda v: (nxt[v], -last[v]))
                del nxt[victim]
                evictions += 1
            nxt[k] = int(next_use[i])
            last[k] = n
            n += 1
    return hits, evictions
