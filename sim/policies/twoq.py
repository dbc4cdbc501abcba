"""2Q, the full version (Johnson & Shasha, VLDB'94): A1in FIFO, A1out ghost FIFO, Am LRU.

* Hit in Am: move to the MRU end of Am. Hit in A1in: nothing (a correlated re-reference).
* Miss found in A1out (the key was evicted from A1in not long ago): reclaim a slot, insert at the
  MRU end of Am (the promotion that makes 2Q resist scans).
* Other miss: reclaim a slot, insert at the back of A1in.
* Reclaim (only when the cache is full): if A1in holds more than ``Kin`` keys, its oldest entry is
  evicted and its key pushed onto A1out (whose oldest key is dropped beyond ``Kout`` entries);
  otherwise the LRU of Am is evicted (no ghost entry).

Knobs: ``kin_ratio`` (``Kin = floor(kin_ratio * C)``, default 0.25) and ``kout_ratio``
(``Kout = floor(kout_ratio * C)`` ghost keys, default 0.5, 0 disables A1out), the paper's
recommended sizes and libCacheSim's defaults; this module reproduces libCacheSim's ``TwoQ`` hit
counts request by request on traces with one expert per row.

Guarded keys (the current row's experts) are never evicted: each queue is searched from its old
end for the first unguarded entry, and when the queue the rule picks holds only guarded entries,
the other queue gives the victim (an A1in victim still goes to A1out).

``replay`` is :func:`access` written out in one loop over the accesses, the queue sizes in locals
(``replay_by_access`` is the shared per-access loop, kept for the tests, which check that both give
the same hits, evictions and state). A one-key row needs no guard: its key is not resident when a
victim is chosen, so the victim is a queue front.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np
from moesim.kernels.jit import njit
from moesim.sim.policies import _knobs
from moesim.sim.policies._lists import first_unguarded, new_lists, push_back, unlink, victim_front
from moesim.sim.policies._loops import next_row, one_key_prefix
from moesim.sim.row_loop import HIT, MISS, NONNEG, row_loop

NAME = "twoq"
PARAMS: dict[str, Any] = {"kin_ratio": 0.25, "kout_ratio": 0.5}

NONE, AIN, AOUT, AM = 0, 1, 2, 3  # where[] codes; list j has sentinel num_keys + j - 1
N_IN, N_OUT, N_M, CAP, KIN, KOUT = range(6)


def sizes(capacity: int, params: Mapping[str, Any] | None) -> dict[str, int]:
    """Validated ``Kin`` and ``Kout`` (in keys) for this capacity."""
    p = _knobs.resolve(NAME, PARAMS, params)
    capacity = _knobs.capacity_at_least(NAME, capacity, 1)
    kin = _knobs.fraction(NAME, "kin_ratio", p["kin_ratio"], hi_open=True)
    kout = _knobs.at_least(NAME, "kout_ratio", p["kout_ratio"], 0.0)
    return {"kin": int(capacity * kin), "kout": int(capacity * kout)}


def make_state(capacity: int, num_keys: int, params: Mapping[str, Any], seed: int) -> tuple:
    z = sizes(capacity, params)
    prv, nxt = new_lists(num_keys, 3)
    where = np.zeros(num_keys, np.int8)
    cnt = np.zeros(6, np.int64)
    cnt[CAP], cnt[KIN], cnt[KOUT] = capacity, z["kin"], z["kout"]
    return prv, nxt, where, cnt


@njit(forceinline=True)
def _out_of_ain(prv, nxt, where, cnt, k):
    """Evict ``k`` from A1in and remember it in A1out."""
    n = where.shape[0]
    unlink(prv, nxt, k)
    cnt[N_IN] -= 1
    where[k] = NONE
    if cnt[KOUT] > 0:
        push_back(prv, nxt, n + AOUT - 1, k)
        where[k] = AOUT
        cnt[N_OUT] += 1
        if cnt[N_OUT] > cnt[KOUT]:
            g = nxt[n + AOUT - 1]
            unlink(prv, nxt, g)
            where[g] = NONE
            cnt[N_OUT] -= 1


@njit(forceinline=True)
def _reclaim(prv, nxt, where, cnt, guard, stamp):
    n = where.shape[0]
    if cnt[N_IN] > cnt[KIN]:
        v = first_unguarded(nxt, n + AIN - 1, guard, stamp)
        if v >= 0:
            _out_of_ain(prv, nxt, where, cnt, v)
            return v
    v = first_unguarded(nxt, n + AM - 1, guard, stamp)
    if v >= 0:
        unlink(prv, nxt, v)
        cnt[N_M] -= 1
        where[v] = NONE
        return v
    v = first_unguarded(nxt, n + AIN - 1, guard, stamp)
    if v >= 0:
        _out_of_ain(prv, nxt, where, cnt, v)
    return v


@njit(forceinline=True)
def access(state, key, now, next_use, guard, stamp):
    prv, nxt, where, cnt = state
    n = where.shape[0]
    w = where[key]
    if w == AM:
        unlink(prv, nxt, key)
        push_back(prv, nxt, n + AM - 1, key)
        return HIT
    if w == AIN:
        return HIT
    if w == AOUT:
        unlink(prv, nxt, key)
        cnt[N_OUT] -= 1
    victim = MISS
    if cnt[N_IN] + cnt[N_M] >= cnt[CAP]:
        victim = _reclaim(prv, nxt, where, cnt, guard, stamp)
        if victim < 0:
            raise ValueError("twoq: every resident is guarded (capacity smaller than the row width)")
    if w == AOUT:
        push_back(prv, nxt, n + AM - 1, key)
        where[key] = AM
        cnt[N_M] += 1
    else:
        push_back(prv, nxt, n + AIN - 1, key)
        where[key] = AIN
        cnt[N_IN] += 1
    return victim


@njit
def _serve_stream(prv, nxt, where, keys, hits, s_in, s_out, s_m, n_in, n_out, n_m, cap, kin, kout):
    """Serve a run of one-key rows (``keys[i]`` is row ``i``): (n_in, n_out, n_m, evictions). No
    guard and no row bounds: the key of a one-key row is not resident when a victim is chosen, so
    every victim is a queue front (measured ~1.2x faster than the loop over rows). The queue code
    of the next key is read one access ahead, before this access stores anything, so the dispatch
    on it does not wait behind this access's stores; it is read again only when this access
    re-coded that key (the key itself, a victim ``v`` or a dropped ghost ``g``; measured ~1.15x)."""
    evictions = 0
    n = keys.shape[0]
    wn = where[keys[0] & NONNEG] if n > 0 else NONE
    for i in range(n):
        key = keys[i] & NONNEG
        w = wn
        kn = (keys[i + 1] & NONNEG) if i + 1 < n else key
        wn = where[kn]
        v = key
        g = key
        if w == AM:
            hits[i] = 1
            unlink(prv, nxt, key)
            push_back(prv, nxt, s_m, key)
        elif w == AIN:
            hits[i] = 1
        else:
            hits[i] = 0
            if w == AOUT:
                unlink(prv, nxt, key)
                n_out -= 1
            if n_in + n_m >= cap:
                # As in :func:`replay`; a front exists: A1in and Am hold ``cap >= 1`` keys between them.
                from_in = (n_in > kin) | (n_m == 0)
                v = nxt[s_in if from_in else s_m] & NONNEG
                unlink(prv, nxt, v)
                where[v] = NONE
                if from_in:
                    n_in -= 1
                    if kout > 0:
                        push_back(prv, nxt, s_out, v)
                        where[v] = AOUT
                        n_out += 1
                        if n_out > kout:
                            g = nxt[s_out] & NONNEG
                            unlink(prv, nxt, g)
                            where[g] = NONE
                            n_out -= 1
                else:
                    n_m -= 1
                evictions += 1
            if w == AOUT:
                push_back(prv, nxt, s_m, key)
                where[key] = AM
                n_m += 1
            else:
                push_back(prv, nxt, s_in, key)
                where[key] = AIN
                n_in += 1
            if (kn == key) | (kn == v) | (kn == g):
                wn = where[kn]
    return n_in, n_out, n_m, evictions


@njit
def replay(state, keys, row_ptr, row_time, next_use, num_keys, hits_out):
    """The shared replay loop (:mod:`sim.row_loop`) with :func:`access` written out in it, the queue
    sizes in locals: the same accesses in the same order, so exactly what
    ``row_loop(access, ...)`` gives (written out, not called: numba's calls to a helper that
    takes arrays keep reference counting in the loop).

    One loop over the accesses, with the row bounds advanced as the index passes them (a single
    well-predicted branch per access, no inner loop to enter per row). A one-key row sets no guard
    and takes its victims from the queue fronts (see :func:`_victim`); a wider row guards its keys
    as the shared loop does."""
    prv, nxt, where, cnt = state
    n = where.shape[0]
    s_in = (n + AIN - 1) & NONNEG
    s_out = (n + AOUT - 1) & NONNEG
    s_m = (n + AM - 1) & NONNEG
    n_in = cnt[N_IN]
    n_out = cnt[N_OUT]
    n_m = cnt[N_M]
    cap = cnt[CAP]
    kin = cnt[KIN]
    kout = cnt[KOUT]
    guard = np.full(num_keys, -1, np.int64)
    evictions = 0
    nrows = row_ptr.shape[0] - 1
    if nrows <= 0:
        return 0
    # A long run of one-key rows at the start (all of a flattened request stream): no row bounds.
    m = one_key_prefix(row_ptr)
    if m > 0:
        lo = row_ptr[0]
        n_in, n_out, n_m, evictions = _serve_stream(prv, nxt, where, keys[lo:lo + m], hits_out[lo:lo + m], s_in,
                                                    s_out, s_m, n_in, n_out, n_m, cap, kin, kout)
        if m == nrows:
            cnt[N_IN] = n_in
            cnt[N_OUT] = n_out
            cnt[N_M] = n_m
            return evictions
        row_ptr = row_ptr[m:]
        nrows -= m
    r = -1
    end = row_ptr[0]
    wide = False
    for i in range(row_ptr[0], row_ptr[nrows]):
        while i == end:  # the next row (a loop: rows may be empty)
            r, end, wide = next_row(keys, row_ptr, guard, r, end)
        key = keys[i] & NONNEG
        w = where[key]
        if w == AM:
            hits_out[i] = 1
            unlink(prv, nxt, key)
            push_back(prv, nxt, s_m, key)
            continue
        if w == AIN:
            hits_out[i] = 1
            continue
        hits_out[i] = 0
        if w == AOUT:
            unlink(prv, nxt, key)
            n_out -= 1
        if n_in + n_m >= cap:
            # Reclaim: A1in's oldest when A1in is over Kin, else Am's LRU, else A1in's oldest.
            v = -1
            if n_in > kin:
                v = victim_front(nxt, s_in, guard, r, wide)
            from_in = v >= 0
            if not from_in:
                v = victim_front(nxt, s_m, guard, r, wide)
                if v < 0:
                    v = victim_front(nxt, s_in, guard, r, wide)
                    from_in = v >= 0
            if v < 0:
                raise ValueError("twoq: every resident is guarded (capacity smaller than the row width)")
            v &= NONNEG
            unlink(prv, nxt, v)
            where[v] = NONE
            if from_in:
                n_in -= 1
                if kout > 0:
                    push_back(prv, nxt, s_out, v)
                    where[v] = AOUT
                    n_out += 1
                    if n_out > kout:
                        g = nxt[s_out] & NONNEG
                        unlink(prv, nxt, g)
                        where[g] = NONE
                        n_out -= 1
            else:
                n_m -= 1
            evictions += 1
        if w == AOUT:
            push_back(prv, nxt, s_m, key)
            where[key] = AM
            n_m += 1
        else:
            push_back(prv, nxt, s_in, key)
            where[key] = AIN
            n_in += 1
    cnt[N_IN] = n_in
    cnt[N_OUT] = n_out
    cnt[N_M] = n_m
    return evictions


@njit
def replay_by_access(state, keys, row_ptr, row_time, next_use, num_keys, hits_out):
    """The shared per-access loop over :func:`access`; gives exactly what :func:`replay` gives."""
    return row_loop(access, state, keys, row_ptr, row_time, next_use, num_keys, hits_out)


def reference(keys: np.ndarray, row_ptr: np.ndarray, row_time: np.ndarray, next_use: np.ndarray,
              capacity: int, num_keys: int, params: Mapping[str, Any], seed: int) -> tuple[np.ndarray, int]:
    """Plain-Python 2Q with the same row semantics: (hit per access, evictions)."""
    z = sizes(capacity, params)
    a1in: OrderedDict[int, None] = OrderedDict()  # first item = oldest / LRU
    a1out: OrderedDict[int, None] = OrderedDict()
    am: OrderedDict[int, None] = OrderedDict()
    hits = np.zeros(len(keys), np.uint8)
    evictions = 0

    def evict_from_a1in(row: set[int]) -> bool:
        v = next((k for k in a1in if k not in row), None)
        if v is None:
            return False
        del a1in[v]
        if z["kout"] > 0:
            a1out[v] = None
            if len(a1out) > z["kout"]:
                a1out.popitem(last=False)
        return True

    def evict_from_am(row: set[int]) -> bool:
        v = next((k for k in am if k not in row), None)
        if v is not None:
            del am[v]
        return v is not None

    for r in range(len(row_ptr) - 1):
        row = {int(k) for k in keys[row_ptr[r]:row_ptr[r + 1]]}
        for i in range(int(row_ptr[r]), int(row_ptr[r + 1])):
            x = int(keys[i])
            if x in am:
                am.move_to_end(x)
                hits[i] = 1
                continue
            if x in a1in:
                hits[i] = 1
                continue
            ghost = x in a1out
            if ghost:
                del a1out[x]
            if len(a1in) + len(am) >= capacity:
                done = len(a1in) > z["kin"] and evict_from_a1in(row)
                done = done or evict_from_am(row) or evict_from_a1in(row)
                if not done:
                    raise ValueError("twoq: every resident is guarded (capacity smaller than the row width)")
                evictions += 1
            if ghost:
                am[x] = None
            else:
                a1in[x] = None
    return hits, evictions
