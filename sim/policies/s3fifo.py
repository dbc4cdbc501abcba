"""S3-FIFO: a small probationary FIFO, a main FIFO with 2-bit reinsertion, and a ghost FIFO.

Yang et al., "FIFO queues are all you need for cache eviction" (SOSP'23), as implemented by
libCacheSim (``S3FIFO.c``, the version shipped in the ``libcachesim`` 0.3 package), whose hit
counts this module reproduces request by request on traces with one expert per row:

* Every resident has a frequency counter, set to 0 on insertion and incremented on each hit,
  capped at 3 (two bits).
* A miss that is in the ghost FIFO is inserted into the main FIFO; any other miss goes to the
  small FIFO, except that until the first eviction ever, a miss that finds the small FIFO full
  goes to main (libCacheSim's refinement over the paper's pseudo-code; ``prefill_main=False``
  gives the paper's behaviour).
* When the cache is full, one resident is evicted: from main if main holds more than its share
  (``capacity - small``) or small is empty, otherwise from small.
* Evicting from small walks it oldest first: an entry with ``freq >= move_threshold`` (paper:
  ``freq > 1``) moves to the back of main with its counter reset to 0; the first one below the
  threshold is evicted and its key recorded in the ghost FIFO (the oldest ghost entry is dropped
  when the ghost holds more than ``ghost_ratio * capacity`` keys). If the walk promotes every
  entry, main evicts instead.
* Evicting from main walks it oldest first: an entry with ``freq >= 1`` is reinserted at the back
  with ``freq - 1``; the first with ``freq == 0`` is evicted (no ghost entry).

Knobs: ``small_ratio`` (small FIFO share, default 0.1; its size is ``max(1, floor(ratio * C))``),
``ghost_ratio`` (ghost entries as a multiple of the capacity, default 0.9, 0 disables the ghost),
``move_threshold`` (hits in small needed to reach main, default 2), ``prefill_main`` (default True).

Guarded keys (the current row's experts) are skipped *in place*: the walks pass over them without
touching their position or counter, so a row never evicts its own experts; if one queue holds
only guarded entries the other queue evicts. libCacheSim differences: it refuses to build a small
FIFO of 0 slots and, with 1 slot (capacities 10-19), admits nothing at all; here the small FIFO
always has at least one slot and admission is never refused (capacity must be >= 2).

``replay`` is a specialised loop. A row of one key needs no guard (its key is not resident while a
victim is chosen), so a long run of such rows (a flattened request stream) is served with the
three queues as ring buffers (:func:`_serve_stream`; about 6x the per-access loop); all other rows,
of any widths, go through :func:`_serve_rows`, ``access`` and its walks written out in one loop on
the lists (about 7x the per-access loop on rows of four keys). ``replay_by_access`` is the shared
per-access loop; the tests check that both leave the same hits, evictions and queues.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np
from moesim.kernels.jit import njit
from moesim.sim.policies import _knobs
from moesim.sim.policies._lists import new_lists, push_back, unlink
from moesim.sim.policies._loops import next_row, one_key_prefix, pow2_at_least
from moesim.sim.row_loop import HIT, MISS, NONNEG, row_loop

NAME = "s3fifo"
PARAMS: dict[str, Any] = {"small_ratio": 0.1, "ghost_ratio": 0.9, "move_threshold": 2, "prefill_main": True}

MAX_FREQ = 3
# where[] codes and counter slots of the state.
NONE, SMALL, MAIN, GHOST = 0, 1, 2, 3
N_SMALL, N_MAIN, N_GHOST, CAP, SMALL_CAP, MAIN_CAP, GHOST_CAP, THRESHOLD, HAS_EVICTED, PREFILL = range(10)


def sizes(capacity: int, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validated knobs plus the derived queue sizes ``small``, ``main`` and ``ghost`` (in keys)."""
    p = _knobs.resolve(NAME, PARAMS, params)
    capacity = _knobs.capacity_at_least(NAME, capacity, 2)
    small_ratio = _knobs.fraction(NAME, "small_ratio", p["small_ratio"], hi_open=True)
    ghost_ratio = _knobs.at_least(NAME, "ghost_ratio", p["ghost_ratio"], 0.0)
    threshold = _knobs.integer(NAME, "move_threshold", p["move_threshold"], 1, MAX_FREQ)
    prefill = _knobs.flag(NAME, "prefill_main", p["prefill_main"])
    # int() truncates like libCacheSim's double -> int64 cast.
    small = min(max(1, int(capacity * small_ratio)), capacity - 1)
    return {"small": small, "main": capacity - small, "ghost": int(capacity * ghost_ratio),
            "move_threshold": threshold, "prefill_main": prefill}


def make_state(capacity: int, num_keys: int, params: Mapping[str, Any], seed: int) -> tuple:
    z = sizes(capacity, params)
    prv, nxt = new_lists(num_keys, 3)  # sentinels: small, main, ghost
    where = np.zeros(num_keys, np.int8)
    freq = np.zeros(num_keys, np.int8)
    cnt = np.zeros(10, np.int64)
    cnt[CAP], cnt[SMALL_CAP], cnt[MAIN_CAP], cnt[GHOST_CAP] = capacity, z["small"], z["main"], z["ghost"]
    cnt[THRESHOLD], cnt[PREFILL] = z["move_threshold"], int(z["prefill_main"])
    return prv, nxt, where, freq, cnt


@njit(forceinline=True)
def _evict_small(prv, nxt, where, freq, cnt, guard, stamp):
    """Walk small oldest first; promote or evict (to the ghost); return the victim or -1."""
    n = where.shape[0]
    s_small, s_main, s_ghost = n, n + 1, n + 2
    k = nxt[s_small]
    while k != s_small:
        following = nxt[k]
        if guard[k] != stamp:
            unlink(prv, nxt, k)
            cnt[N_SMALL] -= 1
            if freq[k] >= cnt[THRESHOLD]:
                push_back(prv, nxt, s_main, k)
                where[k] = MAIN
                freq[k] = 0
                cnt[N_MAIN] += 1
            else:
                where[k] = NONE
                if cnt[GHOST_CAP] > 0:
                    push_back(prv, nxt, s_ghost, k)
                    where[k] = GHOST
                    cnt[N_GHOST] += 1
                    if cnt[N_GHOST] > cnt[GHOST_CAP]:
                        g = nxt[s_ghost]
                        unlink(prv, nxt, g)
                        where[g] = NONE
                        cnt[N_GHOST] -= 1
                return k
        k = following
    return -1


@njit(forceinline=True)
def _evict_main(prv, nxt, where, freq, cnt, guard, stamp):
    """Walk main oldest first, reinserting entries with freq >= 1 (freq - 1); return the victim or -1."""
    s_main = where.shape[0] + 1
    progressed = True
    while progressed:  # every pass lowers the counter of each unguarded entry, so at most 4 passes
        progressed = False
        k = nxt[s_main]
        while k != s_main:
            following = nxt[k]
            if guard[k] != stamp:
                progressed = True
                unlink(prv, nxt, k)
                if freq[k] >= 1:
                    freq[k] -= 1
                    push_back(prv, nxt, s_main, k)
                else:
                    where[k] = NONE
                    cnt[N_MAIN] -= 1
                    return k
            k = following
    return -1


@njit(forceinline=True)
def _evict(prv, nxt, where, freq, cnt, guard, stamp):
    for _ in range(2):  # a second round only matters when guards blocked the first queue
        if cnt[N_MAIN] > cnt[MAIN_CAP] or cnt[N_SMALL] == 0:
            v = _evict_main(prv, nxt, where, freq, cnt, guard, stamp)
            if v < 0:
                v = _evict_small(prv, nxt, where, freq, cnt, guard, stamp)
        else:
            v = _evict_small(prv, nxt, where, freq, cnt, guard, stamp)
            if v < 0:  # every unguarded small entry was promoted
                v = _evict_main(prv, nxt, where, freq, cnt, guard, stamp)
        if v >= 0:
            return v
    return -1


@njit(forceinline=True)
def access(state, key, now, next_use, guard, stamp):
    prv, nxt, where, freq, cnt = state
    n = where.shape[0]
    w = where[key]
    if w == SMALL or w == MAIN:
        if freq[key] < MAX_FREQ:
            freq[key] += 1
        return HIT
    ghost_hit = w == GHOST
    if ghost_hit:
        unlink(prv, nxt, key)
        where[key] = NONE
        cnt[N_GHOST] -= 1
    victim = MISS
    if cnt[N_SMALL] + cnt[N_MAIN] >= cnt[CAP]:
        victim = _evict(prv, nxt, where, freq, cnt, guard, stamp)
        if victim < 0:
            raise ValueError("s3fifo: every resident is guarded (capacity smaller than the row width)")
        cnt[HAS_EVICTED] = 1
    if ghost_hit or (cnt[PREFILL] != 0 and cnt[HAS_EVICTED] == 0 and cnt[N_SMALL] >= cnt[SMALL_CAP]):
        push_back(prv, nxt, n + 1, key)
        where[key] = MAIN
        cnt[N_MAIN] += 1
    else:
        push_back(prv, nxt, n, key)
        where[key] = SMALL
        cnt[N_SMALL] += 1
    freq[key] = 0
    return victim


@njit(forceinline=True)
def _list_to_ring(nxt, sentinel, ring):
    """The keys of one list, front first, into ``ring[0:size]``; returns the size."""
    size = 0
    k = nxt[sentinel]
    while k != sentinel:
        ring[size] = k
        size += 1
        k = nxt[k]
    return size


@njit(forceinline=True)
def _ring_to_list(prv, nxt, sentinel, ring, head, tail, mask):
    """Rebuild one list from the keys of ``ring[head:tail]``, oldest first."""
    prv[sentinel] = sentinel
    nxt[sentinel] = sentinel
    for q in range(head, tail):
        push_back(prv, nxt, sentinel, ring[q & mask])


@njit
def _serve_stream(prv, nxt, where, freq, cnt, keys, hits):
    """Serve a run of one-key rows (one key each: ``keys[i]`` is row ``i``) with the three queues as
    ring buffers instead of linked lists; returns the evictions.

    Nothing is guarded in a one-key row, so small and main only ever lose their front entry and
    gain entries at the back: plain FIFO rings, with no pointer chasing. The ghost also loses an
    entry on a ghost hit, anywhere in it: that entry is left in place and is *stale* from then on
    (``where`` no longer says GHOST, or ``gpos`` points at a newer entry of the same key); the
    oldest-first pop skips stale entries, and a full ghost ring is compacted (it holds at least
    twice the ghost's size, so amortised O(1)). The lists are read into the rings first and written
    back at the end: ``O(capacity + ghost)`` per call, which is why the caller only takes this path
    for long runs."""
    n = where.shape[0]
    s_small, s_main, s_ghost = n, n + 1, n + 2
    cap = cnt[CAP]
    main_cap = cnt[MAIN_CAP]
    small_cap = cnt[SMALL_CAP]
    ghost_cap = cnt[GHOST_CAP]
    threshold = cnt[THRESHOLD]
    prefill = cnt[PREFILL] != 0
    has_evicted = cnt[HAS_EVICTED] != 0
    m = pow2_at_least(cap + 1)
    mask = (m - 1) & NONNEG
    sring = np.empty(m, np.int64)
    mring = np.empty(m, np.int64)
    gm = pow2_at_least(2 * (ghost_cap + 1))
    gmask = (gm - 1) & NONNEG
    gring = np.empty(gm, np.int64)
    gpos = np.empty(n, np.int64)
    sh = 0
    st = _list_to_ring(nxt, s_small, sring)
    mh = 0
    mt = _list_to_ring(nxt, s_main, mring)
    gh = 0
    gt = _list_to_ring(nxt, s_ghost, gring)
    for q in range(gt):
        gpos[gring[q]] = q
    n_ghost = gt
    evictions = 0
    for i in range(keys.shape[0]):
        key = keys[i] & NONNEG
        w = where[key]
        if w == SMALL or w == MAIN:
            hits[i] = 1
            f = freq[key]
            freq[key] = f + np.int8(f < MAX_FREQ)
            continue
        hits[i] = 0
        ghost_hit = w == GHOST
        if ghost_hit:  # its ghost entry goes stale
            where[key] = NONE
            n_ghost -= 1
        if (st - sh) + (mt - mh) >= cap:
            v = -1
            if (mt - mh) <= main_cap and st > sh:
                while sh < st:  # small, oldest first: promote or evict
                    k = sring[sh & mask]
                    sh += 1
                    if freq[k] >= threshold:
                        mring[mt & mask] = k
                        mt += 1
                        where[k] = MAIN
                        freq[k] = 0
                    else:
                        v = k
                        where[k] = NONE
                        if ghost_cap > 0:
                            if gt - gh == gm:  # full of entries, many of them stale: compact
                                out = gh
                                for q in range(gh, gt):
                                    g = gring[q & gmask]
                                    if where[g] == GHOST and gpos[g] == q:
                                        gring[out & gmask] = g
                                        gpos[g] = out
                                        out += 1
                                gt = out
                            gring[gt & gmask] = k
                            gpos[k] = gt
                            gt += 1
                            where[k] = GHOST
                            n_ghost += 1
                            if n_ghost > ghost_cap:
                                while True:  # drop the oldest live ghost entry
                                    g = gring[gh & gmask]
                                    q = gh
                                    gh += 1
                                    if where[g] == GHOST and gpos[g] == q:
                                        where[g] = NONE
                                        n_ghost -= 1
                                        break
                        break
            if v < 0:  # main evicts (also when the walk promoted every small entry)
                while True:
                    k = mring[mh & mask]
                    mh += 1
                    f = freq[k]
                    if f == 0:
                        where[k] = NONE
                        break
                    freq[k] = f - 1
                    mring[mt & mask] = k
                    mt += 1
            evictions += 1
            has_evicted = True
        if ghost_hit or (prefill and not has_evicted and st - sh >= small_cap):
            mring[mt & mask] = key
            mt += 1
            where[key] = MAIN
        else:
            sring[st & mask] = key
            st += 1
            where[key] = SMALL
        freq[key] = 0
    _ring_to_list(prv, nxt, s_small, sring, sh, st, mask)
    _ring_to_list(prv, nxt, s_main, mring, mh, mt, mask)
    prv[s_ghost] = s_ghost
    nxt[s_ghost] = s_ghost
    for q in range(gh, gt):
        g = gring[q & gmask]
        if where[g] == GHOST and gpos[g] == q:
            push_back(prv, nxt, s_ghost, g)
    cnt[N_SMALL] = st - sh
    cnt[N_MAIN] = mt - mh
    cnt[N_GHOST] = n_ghost
    cnt[HAS_EVICTED] = np.int64(has_evicted)
    return evictions


@njit
def _serve_rows(prv, nxt, where, freq, cnt, guard, keys, hits, row_ptr, r0, r1, n_small, n_main, n_ghost,
                has_evicted):
    """Serve rows ``r0`` up to ``r1`` (any widths, row ``r`` guarded with stamp ``r``) on the lists:
    (n_small, n_main, n_ghost, has_evicted, evictions). :func:`access` and :func:`_evict` written out
    in one loop, the counters in locals: with the walks left in the helpers (inlined, but taking the
    arrays) numba keeps reference counting in the loop, measured 3x slower on rows of four keys.
    The row bounds are advanced as the index passes them. A one-key row sets no guard (its key is
    not resident while a victim is chosen): no key then carries its stamp, and the walks take the
    queue fronts."""
    n = where.shape[0]
    s_small, s_main, s_ghost = n, n + 1, n + 2
    cap = cnt[CAP]
    small_cap = cnt[SMALL_CAP]
    main_cap = cnt[MAIN_CAP]
    ghost_cap = cnt[GHOST_CAP]
    threshold = cnt[THRESHOLD]
    prefill = cnt[PREFILL] != 0
    evictions = 0
    r = r0 - 1
    end = row_ptr[r0]
    for i in range(row_ptr[r0], row_ptr[r1]):
        while i == end:  # the next row (a loop: rows may be empty)
            r, end, _ = next_row(keys, row_ptr, guard, r, end)
        key = keys[i] & NONNEG
        w = where[key]
        if w == SMALL or w == MAIN:
            hits[i] = 1
            f = freq[key]
            freq[key] = f + np.int8(f < MAX_FREQ)
            continue
        hits[i] = 0
        ghost_hit = w == GHOST
        if ghost_hit:
            unlink(prv, nxt, key)
            where[key] = NONE
            n_ghost -= 1
        if n_small + n_main >= cap:
            # _evict: per round the queue the sizes pick, then the other one; a second round only
            # matters when guards blocked the first (its pick is made again on the new sizes).
            v = -1
            use_main = False
            for phase in range(4):
                if phase & 1 == 0:
                    use_main = n_main > main_cap or n_small == 0
                else:
                    use_main = not use_main
                if use_main:  # _evict_main: reinsert with freq - 1 until an unguarded freq 0
                    progressed = True
                    while progressed and v < 0:
                        progressed = False
                        k = nxt[s_main] & NONNEG
                        while k != s_main:
                            following = nxt[k] & NONNEG
                            if guard[k] != r:
                                progressed = True
                                unlink(prv, nxt, k)
                                f = freq[k]
                                if f >= 1:
                                    freq[k] = f - 1
                                    push_back(prv, nxt, s_main, k)
                                else:
                                    where[k] = NONE
                                    n_main -= 1
                                    v = k
                                    break
                            k = following
                else:  # _evict_small: promote to main or evict into the ghost
                    k = nxt[s_small] & NONNEG
                    while k != s_small:
                        following = nxt[k] & NONNEG
                        if guard[k] != r:
                            unlink(prv, nxt, k)
                            n_small -= 1
                            if freq[k] >= threshold:
                                push_back(prv, nxt, s_main, k)
                                where[k] = MAIN
                                freq[k] = 0
                                n_main += 1
                            else:
                                where[k] = NONE
                                if ghost_cap > 0:
                                    push_back(prv, nxt, s_ghost, k)
                                    where[k] = GHOST
                                    n_ghost += 1
                                    if n_ghost > ghost_cap:
                                        g = nxt[s_ghost] & NONNEG
                                        unlink(prv, nxt, g)
                                        where[g] = NONE
                                        n_ghost -= 1
                                v = k
                                break
                        k = following
                if v >= 0:
                    break
            if v < 0:  # the counters go back first: the state is left as access leaves it
                cnt[N_SMALL] = n_small
                cnt[N_MAIN] = n_main
                cnt[N_GHOST] = n_ghost
                cnt[HAS_EVICTED] = np.int64(has_evicted)
                raise ValueError("s3fifo: every resident is guarded (capacity smaller than the row width)")
            evictions += 1
            has_evicted = True
        if ghost_hit or (prefill and not has_evicted and n_small >= small_cap):
            push_back(prv, nxt, s_main, key)
            where[key] = MAIN
            n_main += 1
        else:
            push_back(prv, nxt, s_small, key)
            where[key] = SMALL
            n_small += 1
        freq[key] = 0
    return n_small, n_main, n_ghost, has_evicted, evictions


@njit
def replay(state, keys, row_ptr, row_time, next_use, num_keys, hits_out):
    """The shared replay loop (:mod:`sim.row_loop`) with :func:`access` written out in it: the same
    accesses in the same order, so exactly what :func:`replay_by_access` gives.

    A long run of one-key rows (a flattened request stream) goes to :func:`_serve_stream`; the rows
    between such runs, of any widths, go to :func:`_serve_rows`. The queue counters travel in local
    variables and are written back at the end."""
    prv, nxt, where, freq, cnt = state
    long_run = cnt[CAP] + cnt[GHOST_CAP] + 64  # the rings' set-up costs O(capacity + ghost)
    n_small = cnt[N_SMALL]
    n_main = cnt[N_MAIN]
    n_ghost = cnt[N_GHOST]
    has_evicted = cnt[HAS_EVICTED] != 0
    guard = np.full(num_keys, -1, np.int64)
    evictions = 0
    n_rows = row_ptr.shape[0] - 1
    r = 0
    while r < n_rows:
        # Rows r .. r1 - 1 go to _serve_rows: up to the next run of one-key rows long enough for
        # the rings (``run`` keeps its length, 0 if none follows).
        r1 = r
        run = 0
        while r1 < n_rows:
            if row_ptr[r1 + 1] - row_ptr[r1] != 1:
                r1 += 1
                continue
            run = one_key_prefix(row_ptr[r1:])
            if run >= long_run:
                break
            r1 += run
            run = 0
        if r1 > r:
            n_small, n_main, n_ghost, has_evicted, ev = _serve_rows(
                prv, nxt, where, freq, cnt, guard, keys, hits_out, row_ptr, r, r1, n_small, n_main, n_ghost,
                has_evicted)
            evictions += ev
        if run > 0:
            lo = row_ptr[r1]
            cnt[N_SMALL] = n_small
            cnt[N_MAIN] = n_main
            cnt[N_GHOST] = n_ghost
            cnt[HAS_EVICTED] = np.int64(has_evicted)
            evictions += _serve_stream(prv, nxt, where, freq, cnt, keys[lo:lo + run], hits_out[lo:lo + run])
            n_small = cnt[N_SMALL]
            n_main = cnt[N_MAIN]
            n_ghost = cnt[N_GHOST]
            has_evicted = cnt[HAS_EVICTED] != 0
            r1 += run
        r = r1
    cnt[N_SMALL] = n_small
    cnt[N_MAIN] = n_main
    cnt[N_GHOST] = n_ghost
    cnt[HAS_EVICTED] = np.int64(has_evicted)
    return evictions


@njit
def replay_by_access(state, keys, row_ptr, row_time, next_use, num_keys, hits_out):
    """The shared per-access loop over :func:`access`; gives exactly what :func:`replay` gives."""
    return row_loop(access, state, keys, row_ptr, row_time, next_use, num_keys, hits_out)


def reference(keys: np.ndarray, row_ptr: np.ndarray, row_time: np.ndarray, next_use: np.ndarray,
              capacity: int, num_keys: int, params: Mapping[str, Any], seed: int) -> tuple[np.ndarray, int]:
    """Plain-Python S3-FIFO with the same row semantics: (hit per access, evictions)."""
    z = sizes(capacity, params)
    small: OrderedDict[int, None] = OrderedDict()  # first item = oldest
    main: OrderedDict[int, None] = OrderedDict()
    ghost: OrderedDict[int, None] = OrderedDict()
    freq: dict[int, int] = {}
    has_evicted = False
    hits = np.zeros(len(keys), np.uint8)
    evictions = 0

    def from_small(row: set[int]) -> int | None:
        for k in [k for k in small if k not in row]:
            del small[k]
            if freq[k] >= z["move_threshold"]:
                main[k] = None
                freq[k] = 0
                continue
            if z["ghost"] > 0:
                ghost[k] = None
                if len(ghost) > z["ghost"]:
                    ghost.popitem(last=False)
            return k
        return None

    def from_main(row: set[int]) -> int | None:
        while True:
            k = next((k for k in main if k not in row), None)
            if k is None:
                return None
            if freq[k] >= 1:
                freq[k] -= 1
                main.move_to_end(k)
            else:
                del main[k]
                return k

    for r in range(len(row_ptr) - 1):
        row = {int(k) for k in keys[row_ptr[r]:row_ptr[r + 1]]}
        for i in range(int(row_ptr[r]), int(row_ptr[r + 1])):
            k = int(keys[i])
            if k in small or k in main:
                freq[k] = min(freq[k] + 1, MAX_FREQ)
                hits[i] = 1
                continue
            ghost_hit = k in ghost
            if ghost_hit:
                del ghost[k]
            if len(small) + len(main) >= capacity:
                victim = None
                for _ in range(2):
                    if len(main) > z["main"] or not small:
                        victim = from_main(row)
                        victim = from_small(row) if victim is None else victim
                    else:
                        victim = from_small(row)
                        victim = from_main(row) if victim is None else victim
                    if victim is not None:
                        break
                if victim is None:
                    raise ValueError("s3fifo: every resident is guarded (capacity smaller than the row width)")
                evictions += 1
                has_evicted = True
            if ghost_hit or (z["prefill_main"] and not has_evicted and len(small) >= z["small"]):
                main[k] = None
            else:
                small[k] = None
            freq[k] = 0
    return hits, evictions
