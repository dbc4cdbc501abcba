"""ARC: Adaptive Replacement Cache (Megiddo & Modha, FAST'03).

Four LRU lists: ``T1`` (residents seen once recently), ``T2`` (residents seen at least twice),
and their ghosts ``B1`` / ``B2`` (keys recently evicted from T1 / T2, no data). The target size
``p`` of T1 adapts: a hit in B1 means T1 was too small (``p += max(|B2| / |B1|, 1)``, at most
``C``), a hit in B2 means T2 was too small (``p -= max(|B1| / |B2|, 1)``, at least 0). ``p`` is a
real number, as in the paper and in libCacheSim's ARC (the ``libcachesim`` 0.3 package), whose hit
counts this module reproduces request by request on traces with one expert per row.

* Hit in T1 or T2: move to the MRU end of T2.
* Miss found in B1 / B2: adapt ``p``, REPLACE, then insert at the MRU end of T2.
* Other miss, cache full: if ``|T1| + |B1| >= C``: when ``|T1| < C`` drop the LRU of B1 and
  REPLACE, else evict the LRU of T1 without a ghost entry; otherwise drop the LRU of B2 when the
  four lists hold ``2C`` keys, then REPLACE. The miss goes to the MRU end of T1.
* REPLACE evicts the LRU of T1 into B1 if ``|T1| >= 1`` and (``|T1| > p``, or ``|T1| == p`` and the
  request was found in B2); otherwise the LRU of T2 into B2.

No knobs. Guarded keys (the current row's experts) are never chosen: the LRU end of the chosen
list is searched for its oldest unguarded entry, and if that list holds only guarded entries the
other resident list gives the victim (into its own ghost).

``replay`` is :func:`access` written out, the list sizes and ``p`` in locals (``replay_by_access``
is the shared per-access loop, kept for the tests, which check that both give the same hits,
evictions and state). A one-key row needs no guard: its key is not resident when a victim is
chosen, so the victim is a list front. A run of one-key rows (all of a flattened request stream)
goes through a loop that reads neither row bounds nor guard (measured ~1.2x faster than the loop
over rows of any width on a gpt-oss-20b-shaped stream), and once the lists are full (they then stay
full) through a leaner one that derives ``|T2|`` and ``|B2|`` from ``C``; wider rows go through the
general loop.
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

NAME = "arc"
PARAMS: dict[str, Any] = {}

NONE, T1, T2, B1, B2 = 0, 1, 2, 3, 4  # where[] codes; list j has sentinel num_keys + j - 1
N_T1, N_T2, N_B1, N_B2, CAP = range(5)


def make_state(capacity: int, num_keys: int, params: Mapping[str, Any], seed: int) -> tuple:
    _knobs.resolve(NAME, PARAMS, params)
    capacity = _knobs.capacity_at_least(NAME, capacity, 1)
    prv, nxt = new_lists(num_keys, 4)
    where = np.zeros(num_keys, np.int8)
    cnt = np.zeros(5, np.int64)
    cnt[CAP] = capacity
    p = np.zeros(1, np.float64)
    return prv, nxt, where, cnt, p


@njit(forceinline=True)
def _move(prv, nxt, where, cnt, k, dst):
    """Move key ``k`` from its list to the MRU end of list ``dst`` (counts follow)."""
    n = where.shape[0]
    unlink(prv, nxt, k)
    cnt[where[k] - 1] -= 1
    push_back(prv, nxt, n + dst - 1, k)
    where[k] = dst
    cnt[dst - 1] += 1


@njit(forceinline=True)
def _drop(prv, nxt, where, cnt, k):
    unlink(prv, nxt, k)
    cnt[where[k] - 1] -= 1
    where[k] = NONE


@njit(forceinline=True)
def _replace(prv, nxt, where, cnt, p, in_b2, guard, stamp):
    """The paper's REPLACE: move an unguarded LRU resident into its ghost; return it (or -1)."""
    n = where.shape[0]
    t1 = cnt[N_T1]
    from_t1 = t1 >= 1 and (t1 > p[0] or (t1 == p[0] and in_b2))
    first, second = (T1, T2) if from_t1 else (T2, T1)
    v = first_unguarded(nxt, n + first - 1, guard, stamp)
    src = first
    if v < 0:
        v = first_unguarded(nxt, n + second - 1, guard, stamp)
        src = second
    if v >= 0:
        _move(prv, nxt, where, cnt, v, B1 if src == T1 else B2)
    return v


@njit(forceinline=True)
def access(state, key, now, next_use, guard, stamp):
    prv, nxt, where, cnt, p = state
    n = where.shape[0]
    c = cnt[CAP]
    w = where[key]
    if w == T1 or w == T2:
        _move(prv, nxt, where, cnt, key, T2)
        return HIT
    victim = MISS
    if w == B1 or w == B2:
        b1 = cnt[N_B1]
        b2 = cnt[N_B2]
        if w == B1:
            p[0] = min(p[0] + max(b2 / b1, 1.0), float(c))
        else:
            p[0] = max(p[0] - max(b1 / b2, 1.0), 0.0)
        if cnt[N_T1] + cnt[N_T2] >= c:  # always true: ghosts exist only once the cache has filled
            victim = _replace(prv, nxt, where, cnt, p, w == B2, guard, stamp)
            if victim < 0:
                raise ValueError("arc: every resident is guarded (capacity smaller than the row width)")
        _move(prv, nxt, where, cnt, key, T2)
        return victim
    if cnt[N_T1] + cnt[N_T2] >= c:
        if cnt[N_T1] + cnt[N_B1] >= c:
            if cnt[N_T1] < c:
                _drop(prv, nxt, where, cnt, nxt[n + B1 - 1])
                victim = _replace(prv, nxt, where, cnt, p, False, guard, stamp)
            else:
                victim = first_unguarded(nxt, n + T1 - 1, guard, stamp)
                if victim >= 0:
                    _drop(prv, nxt, where, cnt, victim)
        else:
            if cnt[N_T1] + cnt[N_T2] + cnt[N_B1] + cnt[N_B2] >= 2 * c:
                _drop(prv, nxt, where, cnt, nxt[n + B2 - 1])
            victim = _replace(prv, nxt, where, cnt, p, False, guard, stamp)
        if victim < 0:
            raise ValueError("arc: every resident is guarded (capacity smaller than the row width)")
    push_back(prv, nxt, n + T1 - 1, key)
    where[key] = T1
    cnt[N_T1] += 1
    return victim


@njit(forceinline=True)
def _relink(prv, nxt, where, k, s, code):
    """Move ``k`` from its list to the MRU end of the list with sentinel ``s`` (code ``code``)."""
    unlink(prv, nxt, k)
    push_back(prv, nxt, s, k)
    where[k] = code


@njit(error_model="numpy")
def _serve_stream(prv, nxt, where, keys, hits, n, s1, sb1, c, t1, t2, b1, b2, p):
    """Serve ``n`` rows of one key each (``keys`` / ``hits`` sliced from the first one): (t1, t2, b1,
    b2, p, evictions). No guard and no row bounds: the key of a one-key row is not resident when a
    victim is chosen, so every victim is a list front. ``s1`` / ``sb1`` are the sentinels of T1 /
    B1 (T2's and B2's follow them).

    One test of ``where[key]`` picks among the five cases, each written out with its constants (the
    compiler makes it a jump table): which case comes next is close to random on a real stream, and a
    single indirect branch mispredicts once where the cascade hit / ghost / B1-or-B2 could mispredict
    up to three times (measured ~1.2x faster). The code of the next key is read one access ahead, so
    the dispatch does not wait behind this access's stores (a few percent more). ``error_model="numpy"``
    drops the division checks (a ghost's own list is never empty)."""
    s2 = s1 + 1
    sb2 = sb1 + 1
    fc = float(c)
    evictions = 0
    wn = where[keys[0] & NONNEG] if n > 0 else NONE
    for i in range(n):
        key = keys[i] & NONNEG
        w = wn
        # The next key's code, read before this access stores anything (the dispatch then waits on
        # no store of this access); read again below if this access re-coded that key.
        kn = (keys[i + 1] & NONNEG) if i + 1 < n else key
        wn = where[kn]
        v = key  # the keys this access re-codes: ``key``, a victim ``v``, a dropped ghost ``g``
        g = key
        if w == T2:
            hits[i] = 1
            unlink(prv, nxt, key)
            push_back(prv, nxt, s2, key)  # ``where`` already says T2
        elif w == B1:
            # REPLACE with ``f`` = 1: T1's LRU goes to B1, else T2's to B2 (picked by arithmetic on the
            # sentinels and codes, T1 = T2 - 1, B1 = B2 - 1). In B1, ``|T1| == p`` sends it to T2.
            hits[i] = 0
            # max(b2 / b1, 1.0) without the divide when b2 <= b1 (the ratio is then at most 1): the
            # divide's latency is on the path to the victim, and b1 / b2 change slowly, so the branch
            # predicts well.
            p = min(p + (b2 / b1 if b2 > b1 else 1.0), fc)
            f = (np.int64(t1 >= 1) & np.int64(t1 > p)) | np.int64(t2 == 0)
            v = nxt[(s2 - f) & NONNEG] & NONNEG
            _relink(prv, nxt, where, v, (sb2 - f) & NONNEG, B2 - f)
            t1 -= f
            t2 -= 1 - f
            b1 += f
            b2 += 1 - f
            evictions += 1
            unlink(prv, nxt, key)
            b1 -= 1
            push_back(prv, nxt, s2, key)
            where[key] = T2
            t2 += 1
        elif w == B2:
            hits[i] = 0
            p = max(p - (b1 / b2 if b1 > b2 else 1.0), 0.0)
            f = (np.int64(t1 >= 1) & np.int64(t1 >= p)) | np.int64(t2 == 0)  # in B2 a tie goes to T1
            v = nxt[(s2 - f) & NONNEG] & NONNEG
            _relink(prv, nxt, where, v, (sb2 - f) & NONNEG, B2 - f)
            t1 -= f
            t2 -= 1 - f
            b1 += f
            b2 += 1 - f
            evictions += 1
            unlink(prv, nxt, key)
            b2 -= 1
            push_back(prv, nxt, s2, key)
            where[key] = T2
            t2 += 1
        elif w == NONE:
            hits[i] = 0
            replace = t1 + t2 >= c
            if replace:
                if t1 + b1 >= c:
                    if t1 < c:
                        g = nxt[sb1] & NONNEG
                        unlink(prv, nxt, g)
                        where[g] = NONE
                        b1 -= 1
                    else:
                        replace = False
                        v = nxt[s1] & NONNEG  # T1 holds c >= 1 keys
                        unlink(prv, nxt, v)
                        where[v] = NONE
                        t1 -= 1
                        evictions += 1
                elif t1 + t2 + b1 + b2 >= 2 * c:
                    g = nxt[sb2] & NONNEG
                    unlink(prv, nxt, g)
                    where[g] = NONE
                    b2 -= 1
            if replace:
                # An empty T2 would send the choice to T1 (t1 + t2 >= c >= 1); ARC's bound
                # |T1| + |B1| <= C keeps that from happening here, the term is a safeguard.
                f = (np.int64(t1 >= 1) & np.int64(t1 > p)) | np.int64(t2 == 0)
                v = nxt[(s2 - f) & NONNEG] & NONNEG
                _relink(prv, nxt, where, v, (sb2 - f) & NONNEG, B2 - f)
                t1 -= f
                t2 -= 1 - f
                b1 += f
                b2 += 1 - f
                evictions += 1
            push_back(prv, nxt, s1, key)
            where[key] = T1
            t1 += 1
        else:  # T1
            hits[i] = 1
            _relink(prv, nxt, where, key, s2, T2)
            t1 -= 1
            t2 += 1
        if (kn == key) | (kn == v) | (kn == g):
            wn = where[kn]
    return t1, t2, b1, b2, p, evictions


@njit(forceinline=True)
def _unlink_u(prv, nxt, k):
    """:func:`unlink` on ``uint64`` views of the links (unsigned indices need no mask)."""
    a = prv[k]
    b = nxt[k]
    nxt[a] = b
    prv[b] = a


@njit(forceinline=True)
def _push_back_u(prv, nxt, s, k):
    """:func:`push_back` on ``uint64`` views of the links."""
    last = prv[s]
    nxt[last] = k
    prv[k] = last
    nxt[k] = s
    prv[s] = k


@njit(error_model="numpy")
def _serve_full(prv, nxt, where, keys, hits, row_ptr, n, s1, c, t1, b1, p):
    """Serve up to ``n`` rows from ``row_ptr[0]`` while they hold one key each, with the lists full:
    (rows served, t1, b1, p, evictions). ``keys`` / ``hits`` start at the first row's key and ``keys``
    holds one key past the ``n`` rows (the read-ahead below).

    Full means ``|T1| + |T2| == C`` and ``|B1| + |B2| == C``, and one-key rows keep it so: a miss
    evicts a resident exactly when the cache is full, and the four lists together never shrink and
    never pass ``2C``. So ``|T2| = C - |T1|`` and ``|B2| = C - |B1|`` are not kept, every miss is an
    eviction, a plain miss drops a ghost (from B1 when ``|T1| + |B1| >= C``, picked by arithmetic on
    the sentinels) unless T1 alone fills the cache, and ``|T2| == 0`` is ``|T1| == C``. What paid off
    is issuing fewer instructions (a mispredicted dispatch, ~43% of accesses, refetches a whole case;
    reading the next code two accesses ahead gained nothing): with fewer live values the compiler
    spills less (:func:`_serve_stream` reloads list sizes and array pointers from the stack on every
    access); the links are read through
    ``uint64`` views (unsigned indices need no ``& NONNEG`` mask); a T2 hit re-codes no key, so it
    skips the re-read check of the next key's code; the rows are checked as they are served, which
    saves a separate pass over ``row_ptr`` (~4%). Together ~1.2x faster than :func:`_serve_stream`
    after :func:`one_key_prefix` on a gpt-oss-20b-shaped stream. Same dispatch as
    :func:`_serve_stream`: one jump on the key's code, read one access ahead."""
    prv = prv.view(np.uint64)
    nxt = nxt.view(np.uint64)
    s1 = np.uint64(s1)
    s2 = s1 + np.uint64(1)  # T2's sentinel; B1's and B2's are s1 + 2 and s1 + 3
    sb2 = s1 + np.uint64(3)
    fc = float(c)
    evictions = 0
    wn = where[np.uint64(keys[0])]
    first = row_ptr[0] + 1
    i = 0
    while i < n and row_ptr[i + 1] - i == first:  # row i holds one key (the rows before it do)
        key = np.uint64(keys[i])
        w = wn
        kn = np.uint64(keys[i + 1])
        wn = where[kn]
        # Besides ``key``, a miss re-codes a victim ``v`` and may drop a ghost ``g`` (else ``g`` is
        # ``key`` or ``v``); each case sets both (measured faster than setting them before the cases).
        if w == T2:
            hits[i] = 1
            _unlink_u(prv, nxt, key)
            _push_back_u(prv, nxt, s2, key)
        elif w == B1:
            hits[i] = 0
            evictions += 1
            b2 = c - b1
            p = min(p + (b2 / b1 if b2 > b1 else 1.0), fc)
            f = np.uint64(t1 > p) | np.uint64(t1 == c)  # p >= 0: t1 > p implies |T1| >= 1
            v = nxt[s2 - f]
            _unlink_u(prv, nxt, v)
            _push_back_u(prv, nxt, sb2 - f, v)
            where[v] = B2 - np.int8(f)
            g = key
            t1 -= np.int64(f)
            b1 += np.int64(f) - 1
            _unlink_u(prv, nxt, key)
            _push_back_u(prv, nxt, s2, key)
            where[key] = T2
        elif w == B2:
            hits[i] = 0
            evictions += 1
            b2 = c - b1
            p = max(p - (b1 / b2 if b1 > b2 else 1.0), 0.0)
            f = (np.uint64(t1 >= 1) & np.uint64(t1 >= p)) | np.uint64(t1 == c)
            v = nxt[s2 - f]
            _unlink_u(prv, nxt, v)
            _push_back_u(prv, nxt, sb2 - f, v)
            where[v] = B2 - np.int8(f)
            g = key
            t1 -= np.int64(f)
            b1 += np.int64(f)
            _unlink_u(prv, nxt, key)
            _push_back_u(prv, nxt, s2, key)
            where[key] = T2
        elif w == NONE:
            hits[i] = 0
            evictions += 1
            if t1 < c:
                d = np.uint64(t1 + b1 >= c)  # 1: drop B1's LRU, 0: B2's (not empty: |B1| < C - |T1|)
                g = nxt[sb2 - d]
                _unlink_u(prv, nxt, g)
                where[g] = NONE
                b1 -= np.int64(d)
                f = np.uint64(t1 > p)  # |T2| = C - |T1| > 0
                v = nxt[s2 - f]
                _unlink_u(prv, nxt, v)
                _push_back_u(prv, nxt, sb2 - f, v)
                where[v] = B2 - np.int8(f)
                t1 -= np.int64(f)
                b1 += np.int64(f)
            else:  # T1 alone fills the cache: its LRU goes without a ghost entry
                v = nxt[s1]
                _unlink_u(prv, nxt, v)
                where[v] = NONE
                t1 -= 1
                g = v
            _push_back_u(prv, nxt, s1, key)
            where[key] = T1
            t1 += 1
        else:  # T1
            hits[i] = 1
            _unlink_u(prv, nxt, key)
            _push_back_u(prv, nxt, s2, key)
            where[key] = T2
            t1 -= 1
            v = key
            g = key
        if w != T2:  # a T2 hit re-codes no key
            if (kn == key) | (kn == v) | (kn == g):
                wn = where[kn]
        i += 1
    return i, t1, b1, p, evictions


@njit
def _serve_rows(prv, nxt, where, guard, keys, hits, row_ptr, r0, r1, c, t1, t2, b1, b2, p):
    """Serve rows ``r0`` up to ``r1`` (any widths, row ``r`` guarded with stamp ``r``): (t1, t2,
    b1, b2, p, evictions). :func:`access` written out in one loop over the accesses, the row bounds
    advanced as the index passes them (a single well-predicted branch per access, no inner loop to
    enter per row). A one-key row sets no guard and takes its victims from the list fronts (see
    :func:`_victim`); a wider row guards its keys as the shared loop does."""
    n = where.shape[0]
    s1 = (n + T1 - 1) & NONNEG
    s2 = (n + T2 - 1) & NONNEG
    sb1 = (n + B1 - 1) & NONNEG
    sb2 = (n + B2 - 1) & NONNEG
    fc = float(c)
    evictions = 0
    r = r0 - 1
    end = row_ptr[r0]
    wide = False
    for i in range(row_ptr[r0], row_ptr[r1]):
        while i == end:  # the next row (a loop: rows may be empty)
            r, end, wide = next_row(keys, row_ptr, guard, r, end)
        key = keys[i] & NONNEG
        w = where[key]
        if w == T1 or w == T2:
            hits[i] = 1
            _relink(prv, nxt, where, key, s2, T2)
            d = np.int64(w == T1)
            t1 -= d
            t2 += d
            continue
        hits[i] = 0
        ghost = w == B1 or w == B2
        # REPLACE runs on every miss once the cache is full, except when T1 alone fills it (its
        # LRU then goes without a ghost entry); a miss outside the ghosts first drops a ghost.
        replace = t1 + t2 >= c
        if ghost:
            if w == B1:
                p = min(p + max(b2 / b1, 1.0), fc)
            else:
                p = max(p - max(b1 / b2, 1.0), 0.0)
        elif replace:
            if t1 + b1 >= c:
                if t1 < c:
                    g = nxt[sb1]
                    unlink(prv, nxt, g & NONNEG)
                    where[g & NONNEG] = NONE
                    b1 -= 1
                else:
                    replace = False
                    v = victim_front(nxt, s1, guard, r, wide)
                    if v < 0:
                        raise ValueError("arc: every resident is guarded (capacity smaller than the row width)")
                    unlink(prv, nxt, v & NONNEG)
                    where[v & NONNEG] = NONE
                    t1 -= 1
                    evictions += 1
            elif t1 + t2 + b1 + b2 >= 2 * c:
                g = nxt[sb2]
                unlink(prv, nxt, g & NONNEG)
                where[g & NONNEG] = NONE
                b2 -= 1
        if replace:
            # ``f`` = 1: T1's LRU goes to B1, else T2's to B2. Lists are picked by arithmetic on
            # the sentinels and codes (T1 = T2 - 1, B1 = B2 - 1), not by a branch: the choice flips
            # unpredictably from miss to miss.
            f = np.int64(t1 >= 1) & (np.int64(t1 > p) | (np.int64(t1 == p) & np.int64(w == B2)))
            v = victim_front(nxt, s2 - f, guard, r, wide)
            if v < 0:
                f = 1 - f
                v = victim_front(nxt, s2 - f, guard, r, wide)
                if v < 0:
                    raise ValueError("arc: every resident is guarded (capacity smaller than the row width)")
            _relink(prv, nxt, where, v & NONNEG, sb2 - f, B2 - f)
            t1 -= f
            t2 -= 1 - f
            b1 += f
            b2 += 1 - f
            evictions += 1
        # The key enters T2 if it was a ghost (leaving its ghost list), else T1.
        g = np.int64(ghost)
        g1 = np.int64(w == B1)
        if ghost:
            unlink(prv, nxt, key)
        b1 -= g1
        b2 -= g - g1
        push_back(prv, nxt, s1 + g, key)
        where[key] = T1 + g
        t1 += 1 - g
        t2 += g
    return t1, t2, b1, b2, p, evictions


@njit
def replay(state, keys, row_ptr, row_time, next_use, num_keys, hits_out):
    """:func:`access` written out, the list sizes and ``p`` in locals: the same accesses in the same
    order, so exactly what ``row_loop(access, ...)`` gives (written out: the same steps as a
    helper serving one access and returning the sizes, called from the loop, measured three times
    slower). Runs of one-key rows (all of a flattened request stream) go through
    :func:`_serve_stream` (no guard, no row bounds) until the lists are full, then through
    :func:`_serve_full`; other rows through :func:`_serve_rows`."""
    prv, nxt, where, cnt, pa = state
    n = where.shape[0]
    s1 = (n + T1 - 1) & NONNEG
    sb1 = (n + B1 - 1) & NONNEG
    c = cnt[CAP]
    t1 = cnt[N_T1]
    t2 = cnt[N_T2]
    b1 = cnt[N_B1]
    b2 = cnt[N_B2]
    p = pa[0]
    guard = np.full(num_keys, -1, np.int64)
    evictions = 0
    nrows = row_ptr.shape[0] - 1
    r = 0
    while r < nrows:
        lo = row_ptr[r]
        if row_ptr[r + 1] - lo == 1:
            if t1 + t2 == c and b1 + b2 == c and lo + 1 < keys.shape[0]:
                # Full lists (they stay full): the loop that keeps fewer sizes and checks the rows as
                # it serves them. It leaves a last row with no key after it to the loop below.
                m, t1, b1, p, ev = _serve_full(prv, nxt, where, keys[lo:], hits_out[lo:], row_ptr[r:],
                                               min(nrows - r, keys.shape[0] - lo - 1), s1, c, t1, b1, p)
                t2 = c - t1
                b2 = c - b1
            else:
                # Until the lists fill (they are checked again every 256 rows).
                m = one_key_prefix(row_ptr[r:r + 257])
                t1, t2, b1, b2, p, ev = _serve_stream(prv, nxt, where, keys[lo:], hits_out[lo:], m, s1, sb1, c,
                                                      t1, t2, b1, b2, p)
            r += m
        else:
            # Up to the next one-key row (the rows between are served with the guard).
            r1 = r + 1
            while r1 < nrows and row_ptr[r1 + 1] - row_ptr[r1] != 1:
                r1 += 1
            t1, t2, b1, b2, p, ev = _serve_rows(prv, nxt, where, guard, keys, hits_out, row_ptr, r, r1, c,
                                                t1, t2, b1, b2, p)
            r = r1
        evictions += ev
    cnt[N_T1] = t1
    cnt[N_T2] = t2
    cnt[N_B1] = b1
    cnt[N_B2] = b2
    pa[0] = p
    return evictions


@njit
def replay_by_access(state, keys, row_ptr, row_time, next_use, num_keys, hits_out):
    """The shared per-access loop over :func:`access`; gives exactly what :func:`replay` gives."""
    return row_loop(access, state, keys, row_ptr, row_time, next_use, num_keys, hits_out)


def reference(keys: np.ndarray, row_ptr: np.ndarray, row_time: np.ndarray, next_use: np.ndarray,
              capacity: int, num_keys: int, params: Mapping[str, Any], seed: int) -> tuple[np.ndarray, int]:
    """Plain-Python ARC with the same row semantics: (hit per access, evictions)."""
    _knobs.resolve(NAME, PARAMS, params)
    c = _knobs.capacity_at_least(NAME, capacity, 1)
    # first item of each OrderedDict = LRU end
    t1: OrderedDict[int, None] = OrderedDict()
    t2: OrderedDict[int, None] = OrderedDict()
    b1: OrderedDict[int, None] = OrderedDict()
    b2: OrderedDict[int, None] = OrderedDict()
    p = 0.0
    hits = np.zeros(len(keys), np.uint8)
    evictions = 0

    def oldest(lst: OrderedDict[int, None], row: set[int]) -> int | None:
        return next((k for k in lst if k not in row), None)

    def replace(in_b2: bool, row: set[int]) -> int:
        order = [(t1, b1), (t2, b2)]
        if not (len(t1) >= 1 and (len(t1) > p or (len(t1) == p and in_b2))):
            order.reverse()
        for src, ghost in order:
            v = oldest(src, row)
            if v is not None:
                del src[v]
                ghost[v] = None
                return v
        raise ValueError("arc: every resident is guarded (capacity smaller than the row width)")

    for r in range(len(row_ptr) - 1):
        row = {int(k) for k in keys[row_ptr[r]:row_ptr[r + 1]]}
        for i in range(int(row_ptr[r]), int(row_ptr[r + 1])):
            x = int(keys[i])
            if x in t1 or x in t2:
                (t1 if x in t1 else t2).pop(x)
                t2[x] = None
                hits[i] = 1
                continue
            if x in b1 or x in b2:
                if x in b1:
                    p = min(p + max(len(b2) / len(b1), 1.0), float(c))
                else:
                    p = max(p - max(len(b1) / len(b2), 1.0), 0.0)
                replace(x in b2, row)
                evictions += 1
                (b1 if x in b1 else b2).pop(x)
                t2[x] = None
                continue
            if len(t1) + len(t2) >= c:
                if len(t1) + len(b1) >= c:
                    if len(t1) < c:
                        b1.popitem(last=False)
                        replace(False, row)
                    else:
                        v = oldest(t1, row)
                        if v is None:
                            raise ValueError("arc: every resident is guarded")
                        del t1[v]
                else:
                    if len(t1) + len(t2) + len(b1) + len(b2) >= 2 * c:
                        b2.popitem(last=False)
                    replace(False, row)
                evictions += 1
            t1[x] = None
    return hits, evictions
