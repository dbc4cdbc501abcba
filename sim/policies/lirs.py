"""LIRS: Low Inter-reference Recency Set (Jiang & Zhang, SIGMETRICS'02).

Residents are split into LIR blocks (small inter-reference recency; at most ``Llirs = C - Lhirs``
of them, never evicted directly) and resident HIR blocks (at most ``Lhirs``; the eviction pool).

* Stack S orders blocks by recency (top = most recent). It holds every LIR block plus HIR blocks,
  resident or not, more recent than the oldest LIR block. *Pruning* pops HIR blocks off the bottom
  of S until the bottom is an LIR block.
* List Q holds the resident HIR blocks; its front is the next victim.
* Hit on an LIR block: move it to the top of S, prune.
* Hit on a resident HIR block in S: move it to the top of S, make it LIR, take it out of Q;
  demote the bottom LIR block of S to the end of Q (resident HIR) and prune.
* Hit on a resident HIR block not in S: push it on top of S and move it to the end of Q.
* Miss (cache full): evict the front of Q (it stays in S, non-resident, if it is there). Then, if
  the missed block was in S (a non-resident HIR: its reuse distance beats the oldest LIR), it
  becomes LIR on top of S and the bottom LIR is demoted as above; otherwise it becomes a resident
  HIR block on top of S and at the end of Q. While fewer than ``Llirs`` blocks are LIR (warm-up),
  a block that was not in S becomes LIR directly.
* S is bounded as in libCacheSim: once it holds more than ``stack_ratio * C`` entries, the
  non-resident HIR entries that became non-resident earliest are dropped from it.

Knobs: ``hir_ratio`` (``Lhirs = max(1, floor(hir_ratio * C))``, default 0.01) and
``stack_ratio`` (default 2.0; 0 keeps S unbounded, as in the paper).

Guarded keys (the current row's experts): the victim is the front-most *unguarded* block of Q;
when every block in Q is guarded (Q is tiny: ``Lhirs`` is 1% of the capacity), the lowest
unguarded LIR block of S is evicted instead: it becomes a non-resident HIR entry in place (then S
is pruned), and the next miss that was not in S refills the LIR set. Demotions move a block to Q
without evicting it, so they ignore guards.

libCacheSim's ``LIRS`` differs slightly (it demotes an LIR block, and may evict, on a hit to a
resident HIR block outside S); its hit counts are within a fraction of a percent of these.

``replay`` is a specialised loop. A row of one key needs no guard (its key is not resident while a
victim is chosen), so a long run of such rows (a flattened request stream) is served with S, Q and
the non-resident list as logs with lazy deletion (:func:`_serve_stream`; about 14x the per-access
loop). The rows between such runs, of any widths, go through :func:`_serve_rows`: ``access`` and
``_evict`` written out in one loop on the lists, guarded blocks passed over in place (about 12x the
per-access loop on rows of four keys). ``replay_by_access`` is the shared per-access loop; the tests
check that both leave the same hits, evictions and lists.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np
from moesim.kernels.jit import njit
from moesim.sim.policies import _knobs
from moesim.sim.policies._lists import first_unguarded, new_lists, push_back, unlink
from moesim.sim.policies._loops import (
    ONE,
    clear_bit,
    get_bit,
    next_row,
    one_key_prefix,
    pow2_at_least,
    set_bit,
)
from moesim.sim.row_loop import HIT, MISS, NONNEG, row_loop
from numba.cpython.unsafe.numbers import trailing_zeros  # LLVM's cttz (numba's own RNG uses it)

NAME = "lirs"
PARAMS: dict[str, Any] = {"hir_ratio": 0.01, "stack_ratio": 2.0}

Q_NONE, Q_RES, Q_NONRES = 0, 1, 2  # qwhere[] codes: in Q, or in the non-resident list NH
N_RES, N_LIR, N_S, CAP, LLIRS, S_LIMIT = range(6)


def sizes(capacity: int, params: Mapping[str, Any] | None) -> dict[str, int]:
    """Validated ``lhirs``, ``llirs`` and the bound on S (``s_limit``, 0 = none), in keys."""
    p = _knobs.resolve(NAME, PARAMS, params)
    capacity = _knobs.capacity_at_least(NAME, capacity, 2)
    hir = _knobs.fraction(NAME, "hir_ratio", p["hir_ratio"], hi_open=True)
    stack = _knobs.at_least(NAME, "stack_ratio", p["stack_ratio"], 0.0)
    if 0.0 < stack < 1.0:
        raise _knobs.ConfigError(f"{NAME}: knob 'stack_ratio' must be 0 (unbounded) or >= 1, got {p['stack_ratio']!r}")
    lhirs = min(max(1, int(capacity * hir)), capacity - 1)
    return {"lhirs": lhirs, "llirs": capacity - lhirs, "s_limit": int(stack * capacity)}


def make_state(capacity: int, num_keys: int, params: Mapping[str, Any], seed: int) -> tuple:
    z = sizes(capacity, params)
    sprv, snxt = new_lists(num_keys, 1)  # stack S: front = bottom, back = top
    qprv, qnxt = new_lists(num_keys, 2)  # list Q (sentinel n) and non-resident HIR in S (n + 1)
    flags = np.zeros((3, num_keys), np.uint8)  # resident, lir, in_s
    qwhere = np.zeros(num_keys, np.int8)
    cnt = np.zeros(6, np.int64)
    cnt[CAP], cnt[LLIRS], cnt[S_LIMIT] = capacity, z["llirs"], z["s_limit"]
    return sprv, snxt, qprv, qnxt, flags, qwhere, cnt


@njit(forceinline=True)
def _s_remove(sprv, snxt, flags, cnt, k):
    unlink(sprv, snxt, k)
    flags[2, k] = 0
    cnt[N_S] -= 1


@njit(forceinline=True)
def _s_push_top(sprv, snxt, flags, cnt, k):
    n = flags.shape[1]
    if flags[2, k]:
        unlink(sprv, snxt, k)
    else:
        flags[2, k] = 1
        cnt[N_S] += 1
    push_back(sprv, snxt, n, k)


@njit(forceinline=True)
def _q_remove(qprv, qnxt, qwhere, k):
    unlink(qprv, qnxt, k)
    qwhere[k] = Q_NONE


@njit(forceinline=True)
def _prune(sprv, snxt, qprv, qnxt, flags, qwhere, cnt):
    n = flags.shape[1]
    b = snxt[n]
    while b != n and flags[1, b] == 0:
        _s_remove(sprv, snxt, flags, cnt, b)
        if qwhere[b] == Q_NONRES:  # a non-resident block that leaves S is forgotten
            _q_remove(qprv, qnxt, qwhere, b)
        b = snxt[n]


@njit(forceinline=True)
def _demote_bottom(sprv, snxt, qprv, qnxt, flags, qwhere, cnt):
    """The bottom LIR block of S becomes a resident HIR block at the end of Q."""
    n = flags.shape[1]
    b = snxt[n]
    flags[1, b] = 0
    cnt[N_LIR] -= 1
    _s_remove(sprv, snxt, flags, cnt, b)
    push_back(qprv, qnxt, n, b)
    qwhere[b] = Q_RES
    _prune(sprv, snxt, qprv, qnxt, flags, qwhere, cnt)


@njit(forceinline=True)
def _make_lir(sprv, snxt, qprv, qnxt, flags, qwhere, cnt, k):
    flags[1, k] = 1
    cnt[N_LIR] += 1
    if cnt[N_LIR] > cnt[LLIRS]:
        _demote_bottom(sprv, snxt, qprv, qnxt, flags, qwhere, cnt)


@njit(forceinline=True)
def _evict(sprv, snxt, qprv, qnxt, flags, qwhere, cnt, guard, stamp):
    n = flags.shape[1]
    v = first_unguarded(qnxt, n, guard, stamp)
    if v >= 0:
        _q_remove(qprv, qnxt, qwhere, v)
    else:  # Q holds only guarded blocks: evict the lowest unguarded LIR block instead
        v = snxt[n]
        while v != n and (flags[1, v] == 0 or guard[v] == stamp):
            v = snxt[v]
        if v == n:
            return -1
        flags[1, v] = 0
        cnt[N_LIR] -= 1
    flags[0, v] = 0
    cnt[N_RES] -= 1
    if flags[2, v]:
        push_back(qprv, qnxt, n + 1, v)
        qwhere[v] = Q_NONRES
        _prune(sprv, snxt, qprv, qnxt, flags, qwhere, cnt)
    return v


@njit(forceinline=True)
def access(state, key, now, next_use, guard, stamp):
    sprv, snxt, qprv, qnxt, flags, qwhere, cnt = state
    n = flags.shape[1]
    result = HIT
    if flags[0, key]:
        if flags[1, key]:
            _s_push_top(sprv, snxt, flags, cnt, key)
            _prune(sprv, snxt, qprv, qnxt, flags, qwhere, cnt)
        elif flags[2, key]:
            _s_push_top(sprv, snxt, flags, cnt, key)
            _q_remove(qprv, qnxt, qwhere, key)
            _make_lir(sprv, snxt, qprv, qnxt, flags, qwhere, cnt, key)
        else:
            _s_push_top(sprv, snxt, flags, cnt, key)
            unlink(qprv, qnxt, key)
            push_back(qprv, qnxt, n, key)
    else:
        result = MISS
        if cnt[N_RES] >= cnt[CAP]:
            result = _evict(sprv, snxt, qprv, qnxt, flags, qwhere, cnt, guard, stamp)
            if result < 0:
                raise ValueError("lirs: every resident is guarded (capacity smaller than the row width)")
        flags[0, key] = 1
        cnt[N_RES] += 1
        if flags[2, key]:
            _q_remove(qprv, qnxt, qwhere, key)
            _s_push_top(sprv, snxt, flags, cnt, key)
            _make_lir(sprv, snxt, qprv, qnxt, flags, qwhere, cnt, key)
        elif cnt[N_LIR] < cnt[LLIRS]:
            _s_push_top(sprv, snxt, flags, cnt, key)
            flags[1, key] = 1
            cnt[N_LIR] += 1
        else:
            _s_push_top(sprv, snxt, flags, cnt, key)
            push_back(qprv, qnxt, n, key)
            qwhere[key] = Q_RES
    if cnt[S_LIMIT] > 0:
        while cnt[N_S] > cnt[S_LIMIT] and qnxt[n + 1] != n + 1:
            g = qnxt[n + 1]
            _q_remove(qprv, qnxt, qwhere, g)
            _s_remove(sprv, snxt, flags, cnt, g)
    return result


@njit
def _log_compact(ring, pos, head, tail, mask):
    """Keep only the current entries of a log, in order, from ``head`` on; returns the new tail.
    An entry ``q`` is current while ``pos[key] == q`` (``pos`` is -1 for a key on no list). A log
    holds at least twice as many entries as can be current, so compacting it when full is amortised
    O(1); called rarely, so it stays a call (the loop below inlines everything it runs often)."""
    out = head
    for q in range(head, tail):
        g = ring[q & mask]
        if pos[g] == q:
            ring[out & mask] = g
            pos[g] = out
            out += 1
    return out


@njit(forceinline=True)
def _log_load(nxt, sentinel, ring, pos):
    """A linked list, front first, as the entries ``0..size-1`` of a log; returns the size."""
    size = 0
    k = nxt[sentinel]
    while k != sentinel:
        ring[size] = k
        pos[k] = size
        size += 1
        k = nxt[k]
    return size


@njit(forceinline=True)
def _log_store(prv, nxt, sentinel, ring, pos, head, tail, mask):
    """Rebuild a linked list from the current entries of a log, oldest first."""
    prv[sentinel] = sentinel
    nxt[sentinel] = sentinel
    for q in range(head, tail):
        g = ring[q & mask]
        if pos[g] == q:
            push_back(prv, nxt, sentinel, g)


@njit
def _log_compact_bits(ring, pos, bits, head, tail, mask):
    """:func:`_log_compact` for a log that also keeps a bit per slot, set while the entry in that
    slot is current: the bits move with the entries."""
    out = _log_compact(ring, pos, head, tail, mask)
    for q in range(head, tail):
        s = q & mask
        bits[s >> 6] &= ~(ONE << np.uint64(s & 63))
    for q in range(head, out):
        s = q & mask
        bits[s >> 6] |= ONE << np.uint64(s & 63)
    return out


@njit
def _serve_stream(state, keys, hits):
    """Serve a run of one-key rows (``keys[i]`` is row ``i``) with S, Q and the non-resident list
    as *logs* instead of linked lists; returns the evictions.

    Every operation on the three lists is an append at the back, a removal at the front or a removal
    anywhere, so each list becomes a ring buffer of entries with lazy deletion (as LRU's recency log):
    a key's position in a log (``spos`` / ``qpos`` / ``hpos``) is that of its current entry, -1 while
    it is not on that list, so an entry ``q`` is current exactly when its key's position is ``q``; a
    move to the back appends a new entry and the old one goes stale; the front skips stale entries.
    S, whose bottom is read after most requests, also keeps a bit per slot (``sbits``), set while
    the entry in that slot is current: that test is one load, not two dependent ones, and the prune
    skips a run of stale entries in one step (most of S's entries go stale before they reach its
    bottom: an LIR block that is hit moves to the top).
    The positions are then the list memberships too (``in_s``, ``qwhere``), and residency and the
    LIR flag share one code per key (0 absent, 1 resident HIR, 3 LIR): a request reads one byte for
    its key's status. No pointer chasing and no unlinking. The lists and flags are read in first and
    written back at the end, ``O(num_keys)`` per call, which is why the caller only takes this path
    for long runs. Operation for operation the same as :func:`access` (with a guard that protects
    nothing)."""
    sprv, snxt, qprv, qnxt, flags, qwhere, cnt = state
    n = flags.shape[1]
    big = pow2_at_least(2 * (n + 1))
    rings = np.empty((3, big), np.int64)
    pos = np.full((3, n), -1, np.int64)
    code = np.empty(n, np.uint8)
    sbits = np.zeros(big // 64, np.uint64)
    for k in range(n):
        code[k] = flags[0, k] | (flags[1, k] << 1)
    s_size = _log_load(snxt, n, rings[0], pos[0])
    for q in range(s_size):
        sbits[q >> 6] |= ONE << np.uint64(q & 63)
    q_size = _log_load(qnxt, n, rings[1], pos[1])
    h_size = _log_load(qnxt, n + 1, rings[2], pos[2])
    hs = np.array([0, s_size, 0, q_size, 0, h_size], np.int64)  # head and tail of S, Q, NH
    # The loop is a function of its own that gets every array as a plain argument. It appends at
    # most one entry to each log per request, so it runs in chunks that fit in every log's free
    # room: a log less than half free is compacted first (it then is at least half free, as it
    # holds at most ``n`` current entries), and the loop itself never checks for room.
    sring, qring, hring = rings[0], rings[1], rings[2]
    spos, qpos, hpos = pos[0], pos[1], pos[2]
    mask = (big - 1) & NONNEG
    half = big // 2
    evictions = 0
    i = 0
    m = keys.shape[0]
    while i < m:
        if hs[1] - hs[0] > half:
            hs[1] = _log_compact_bits(sring, spos, sbits, hs[0], hs[1], mask)
        if hs[3] - hs[2] > half:
            hs[3] = _log_compact(qring, qpos, hs[2], hs[3], mask)
        if hs[5] - hs[4] > half:
            hs[5] = _log_compact(hring, hpos, hs[4], hs[5], mask)
        j = min(m, i + big - max(hs[1] - hs[0], hs[3] - hs[2], hs[5] - hs[4]))
        evictions += _stream_loop(code, cnt, keys[i:j], hits[i:j], sring, spos, sbits, qring, qpos, hring, hpos, hs)
        i = j
    for k in range(n):
        flags[0, k] = code[k] & 1
        flags[1, k] = code[k] >> 1
        flags[2, k] = pos[0, k] >= 0
        qwhere[k] = Q_RES if pos[1, k] >= 0 else (Q_NONRES if pos[2, k] >= 0 else Q_NONE)
    _log_store(sprv, snxt, n, rings[0], pos[0], hs[0], hs[1], mask)
    _log_store(qprv, qnxt, n, rings[1], pos[1], hs[2], hs[3], mask)
    _log_store(qprv, qnxt, n + 1, rings[2], pos[2], hs[4], hs[5], mask)
    return evictions


@njit
def _stream_loop(code, cnt, keys, hits, sring, spos, sbits, qring, qpos, hring, hpos, hs):
    """The loop of :func:`_serve_stream`, with every log operation written out: a jitted helper that
    takes arrays and branches keeps numba's reference counting in the loop, which costs more than
    the work itself.

    S is pruned after every request, so ``sh`` then sits on its bottom entry: current, and an LIR
    block unless S is empty. Only requests that take that block away (an LIR hit on it, a demotion,
    an evicted LIR block) leave anything to prune; an evicted HIR block never does."""
    big = sring.shape[0]
    cap = cnt[CAP]
    llirs = cnt[LLIRS]
    s_limit = cnt[S_LIMIT]
    n_res = cnt[N_RES]
    n_lir = cnt[N_LIR]
    n_s = cnt[N_S]
    bmask = (big - 1) & NONNEG
    # Keys read from the logs are masked with NONNEG too: they index other arrays.
    sh, st, qh, qt, hh, ht = hs[0], hs[1], hs[2], hs[3], hs[4], hs[5]
    evictions = 0
    for i in range(keys.shape[0]):
        key = keys[i] & NONNEG
        c = code[key]
        hits[i] = c & 1
        p = spos[key]
        prune = False
        if c == 3:  # an LIR block goes to the top of S; only the bottom one leaves anything to prune
            prune = p == sh
            clear_bit(sbits, p & bmask)
            slot = st & bmask
            sring[slot] = key
            set_bit(sbits, slot)
            spos[key] = st
            st += 1
        elif c == 0:
            if n_res >= cap:
                while qh < qt:  # the front of Q, past stale entries
                    if qpos[qring[qh & bmask] & NONNEG] == qh:
                        break
                    qh += 1
                if qh < qt:
                    v = qring[qh & bmask] & NONNEG
                    qh += 1
                    qpos[v] = -1
                    code[v] = 0
                    n_res -= 1
                    # If it is in S it stays there as a non-resident HIR block: appended branch-free
                    # (whether it is, is random from miss to miss).
                    v_in_s = np.int64(spos[v] >= 0)
                    hring[ht & bmask] = v
                    hpos[v] = ht if v_in_s else -1
                    ht += v_in_s
                else:  # Q is empty: the lowest LIR block of S is evicted instead
                    q = sh
                    while q < st:
                        v = sring[q & bmask] & NONNEG
                        if get_bit(sbits, q & bmask) and code[v] == 3:
                            break
                        q += 1
                    if q == st:
                        raise ValueError("lirs: every resident is guarded (capacity smaller than the row width)")
                    v = sring[q & bmask] & NONNEG
                    n_lir -= 1
                    code[v] = 0
                    n_res -= 1
                    hring[ht & bmask] = v
                    hpos[v] = ht
                    ht += 1
                    while sh < st:  # prune, which may empty S
                        slot = sh & bmask
                        b = sring[slot] & NONNEG
                        if get_bit(sbits, slot):
                            if code[b] == 3:
                                break
                            spos[b] = -1
                            hpos[b] = -1
                            n_s -= 1
                            clear_bit(sbits, slot)
                        sh += 1
                evictions += 1
            n_res += 1
            p = spos[key]  # a prune after evicting an LIR block may have taken the key out of S
            in_s = np.int64(p >= 0)
            hpos[key] = -1  # a non-resident HIR block in S leaves that list (no-op for any other)
            sbits[(p & bmask) >> 6] &= ~(np.uint64(in_s) << np.uint64(p & 63))  # its old entry, if any, goes stale
            slot = st & bmask
            sring[slot] = key
            set_bit(sbits, slot)
            spos[key] = st
            st += 1
            if n_lir < llirs:  # warm-up: the key becomes LIR
                code[key] = 3
                n_lir += 1
                n_s += 1 - in_s
            else:
                if in_s:  # it becomes LIR; the bottom LIR block of S goes to the back of Q
                    code[key] = 3
                    slot = sh & bmask
                    g = sring[slot] & NONNEG
                    code[g] = 1
                    spos[g] = -1
                    clear_bit(sbits, slot)
                    sh += 1
                    n_s -= 1
                    prune = True
                else:  # it becomes a resident HIR block at the back of Q
                    code[key] = 1
                    n_s += 1
                    g = key
                qring[qt & bmask] = g
                qpos[g] = qt
                qt += 1
        else:  # a resident HIR block
            if p >= 0:  # in S: it leaves Q and becomes LIR
                qpos[key] = -1
                clear_bit(sbits, p & bmask)
            else:  # not in S: it goes to the back of Q
                n_s += 1
                qring[qt & bmask] = key
                qpos[key] = qt
                qt += 1
            slot = st & bmask
            sring[slot] = key
            set_bit(sbits, slot)
            spos[key] = st
            st += 1
            if p >= 0:
                code[key] = 3
                n_lir += 1
                if n_lir > llirs:  # demote the bottom block of S to the back of Q, then prune
                    slot = sh & bmask
                    b = sring[slot] & NONNEG
                    code[b] = 1
                    n_lir -= 1
                    spos[b] = -1
                    clear_bit(sbits, slot)
                    sh += 1
                    n_s -= 1
                    qring[qt & bmask] = b
                    qpos[b] = qt
                    qt += 1
                    prune = True
        if prune:
            # The key is an LIR block on top of S, so the loop stops at it at the latest. Runs of
            # stale entries are skipped a word of bits at a time.
            while True:
                w = sbits[(sh & bmask) >> 6] >> np.uint64(sh & 63)
                while w == 0:  # the rest of this word is stale
                    sh = (sh | 63) + 1
                    w = sbits[(sh & bmask) >> 6]
                sh += np.int64(trailing_zeros(w))
                slot = sh & bmask
                b = sring[slot] & NONNEG
                if code[b] == 3:
                    break
                spos[b] = -1
                hpos[b] = -1  # a non-resident block that leaves S is forgotten
                clear_bit(sbits, slot)
                n_s -= 1
                sh += 1
        if s_limit > 0:
            while n_s > s_limit:
                while hh < ht:  # the oldest non-resident entry, past stale entries
                    if hpos[hring[hh & bmask] & NONNEG] == hh:
                        break
                    hh += 1
                if hh == ht:
                    break
                g = hring[hh & bmask] & NONNEG
                hh += 1
                hpos[g] = -1
                clear_bit(sbits, spos[g] & bmask)
                spos[g] = -1
                n_s -= 1
    hs[0], hs[1], hs[2], hs[3], hs[4], hs[5] = sh, st, qh, qt, hh, ht
    cnt[N_RES] = n_res
    cnt[N_LIR] = n_lir
    cnt[N_S] = n_s
    return evictions


@njit
def _serve_rows(sprv, snxt, qprv, qnxt, flags, qwhere, cnt, guard, keys, hits, row_ptr, r0, r1, n_res, n_lir, n_s):
    """Serve rows ``r0`` up to ``r1`` (any widths, row ``r`` guarded with stamp ``r``) on the lists:
    (n_res, n_lir, n_s, evictions). :func:`access` and :func:`_evict` written out in one loop, step
    for step, the counters in locals: called with the arrays in a loop, the helpers keep numba's
    reference counting there, which costs more than the work itself. The row bounds are advanced
    as the index passes them. A one-key row sets no guard (its key is not resident while a victim
    is chosen): no key then carries its stamp, and the walks take the fronts of Q and S."""
    n = flags.shape[1]
    res, lir, in_s = flags[0], flags[1], flags[2]
    s0, q0, h0 = n, n, n + 1  # the sentinels of S (in sprv / snxt), Q and the non-resident list
    cap = cnt[CAP]
    llirs = cnt[LLIRS]
    s_limit = cnt[S_LIMIT]
    evictions = 0
    r = r0 - 1
    end = row_ptr[r0]
    for i in range(row_ptr[r0], row_ptr[r1]):
        while i == end:  # the next row (a loop: rows may be empty)
            r, end, _ = next_row(keys, row_ptr, guard, r, end)
        key = keys[i] & NONNEG
        prune = False  # S is pruned at the end (after an LIR hit or a demotion)
        lir_now = False  # the key becomes LIR, and the bottom LIR block of S may be demoted
        if res[key]:
            hits[i] = 1
            if lir[key]:
                unlink(sprv, snxt, key)
                push_back(sprv, snxt, s0, key)
                prune = True
            elif in_s[key]:
                unlink(sprv, snxt, key)
                push_back(sprv, snxt, s0, key)
                unlink(qprv, qnxt, key)
                qwhere[key] = Q_NONE
                lir_now = True
            else:
                in_s[key] = 1
                n_s += 1
                push_back(sprv, snxt, s0, key)
                unlink(qprv, qnxt, key)
                push_back(qprv, qnxt, q0, key)
        else:
            hits[i] = 0
            if n_res >= cap:
                # The victim: the front-most unguarded block of Q; if Q holds only guarded blocks,
                # the lowest unguarded LIR block of S (it stays in S, non-resident).
                v = qnxt[q0] & NONNEG
                while v != q0 and guard[v] == r:
                    v = qnxt[v] & NONNEG
                if v != q0:
                    unlink(qprv, qnxt, v)
                    qwhere[v] = Q_NONE
                else:
                    v = snxt[s0] & NONNEG
                    while v != s0 and (lir[v] == 0 or guard[v] == r):
                        v = snxt[v] & NONNEG
                    if v == s0:  # the counters go back first: the state is left as access leaves it
                        cnt[N_RES] = n_res
                        cnt[N_LIR] = n_lir
                        cnt[N_S] = n_s
                        raise ValueError("lirs: every resident is guarded (capacity smaller than the row width)")
                    lir[v] = 0
                    n_lir -= 1
                res[v] = 0
                n_res -= 1
                if in_s[v]:
                    push_back(qprv, qnxt, h0, v)
                    qwhere[v] = Q_NONRES
                    # Pruned here, before the key is placed: the prune may take the key out of S.
                    b = snxt[s0] & NONNEG
                    while b != s0 and lir[b] == 0:
                        unlink(sprv, snxt, b)
                        in_s[b] = 0
                        n_s -= 1
                        if qwhere[b] == Q_NONRES:
                            unlink(qprv, qnxt, b)
                            qwhere[b] = Q_NONE
                        b = snxt[s0] & NONNEG
                evictions += 1
            res[key] = 1
            n_res += 1
            if in_s[key]:  # a non-resident HIR block in S: it leaves that list and becomes LIR
                unlink(qprv, qnxt, key)
                qwhere[key] = Q_NONE
                unlink(sprv, snxt, key)
                push_back(sprv, snxt, s0, key)
                lir_now = True
            else:
                in_s[key] = 1
                n_s += 1
                push_back(sprv, snxt, s0, key)
                if n_lir < llirs:
                    lir[key] = 1
                    n_lir += 1
                else:
                    push_back(qprv, qnxt, q0, key)
                    qwhere[key] = Q_RES
        if lir_now:
            lir[key] = 1
            n_lir += 1
            if n_lir > llirs:  # the bottom LIR block of S becomes a resident HIR block at the back of Q
                b = snxt[s0] & NONNEG
                lir[b] = 0
                n_lir -= 1
                unlink(sprv, snxt, b)
                in_s[b] = 0
                n_s -= 1
                push_back(qprv, qnxt, q0, b)
                qwhere[b] = Q_RES
                prune = True
        if prune:
            b = snxt[s0] & NONNEG
            while b != s0 and lir[b] == 0:
                unlink(sprv, snxt, b)
                in_s[b] = 0
                n_s -= 1
                if qwhere[b] == Q_NONRES:  # a non-resident block that leaves S is forgotten
                    unlink(qprv, qnxt, b)
                    qwhere[b] = Q_NONE
                b = snxt[s0] & NONNEG
        if s_limit > 0:
            while n_s > s_limit and qnxt[h0] != h0:  # the earliest non-resident entries leave S
                g = qnxt[h0] & NONNEG
                unlink(qprv, qnxt, g)
                qwhere[g] = Q_NONE
                unlink(sprv, snxt, g)
                in_s[g] = 0
                n_s -= 1
    return n_res, n_lir, n_s, evictions


@njit
def replay(state, keys, row_ptr, row_time, next_use, num_keys, hits_out):
    """The shared replay loop (:mod:`sim.row_loop`) with :func:`access` written out in it: the same
    accesses in the same order, so exactly what :func:`replay_by_access` gives.

    A long run of one-key rows (a flattened request stream) goes to :func:`_serve_stream`; the rows
    between such runs, of any widths, go to :func:`_serve_rows`. The counters travel in local
    variables between the two and are written back at the end."""
    sprv, snxt, qprv, qnxt, flags, qwhere, cnt = state
    n = flags.shape[1]
    long_run = n + 64  # the logs' set-up costs O(num_keys)
    n_res = cnt[N_RES]
    n_lir = cnt[N_LIR]
    n_s = cnt[N_S]
    guard = np.full(num_keys, -1, np.int64)
    evictions = 0
    n_rows = row_ptr.shape[0] - 1
    r = 0
    while r < n_rows:
        # Rows r .. r1 - 1 go to _serve_rows: up to the next run of one-key rows long enough for
        # the logs (``run`` keeps its length, 0 if none follows; found 64 rows at a time). Such a
        # run holds exactly ``long_run`` keys in its first ``long_run`` rows: a row where that
        # fails starts none, and is passed over without a call (rows of mixed widths are common).
        r1 = r
        run = 0
        while r1 < n_rows:
            if (r1 + long_run > n_rows or row_ptr[r1 + long_run] - row_ptr[r1] != long_run
                    or row_ptr[r1 + 1] - row_ptr[r1] != 1):
                r1 += 1
                continue
            run = one_key_prefix(row_ptr[r1:])
            if run >= long_run:
                break
            r1 += run
            run = 0
        if r1 > r:
            n_res, n_lir, n_s, ev = _serve_rows(sprv, snxt, qprv, qnxt, flags, qwhere, cnt, guard, keys, hits_out,
                                                row_ptr, r, r1, n_res, n_lir, n_s)
            evictions += ev
        if run > 0:
            lo = row_ptr[r1]
            cnt[N_RES] = n_res
            cnt[N_LIR] = n_lir
            cnt[N_S] = n_s
            evictions += _serve_stream(state, keys[lo:lo + run], hits_out[lo:lo + run])
            n_res = cnt[N_RES]
            n_lir = cnt[N_LIR]
            n_s = cnt[N_S]
            r1 += run
        r = r1
    cnt[N_RES] = n_res
    cnt[N_LIR] = n_lir
    cnt[N_S] = n_s
    return evictions


@njit
def replay_by_access(state, keys, row_ptr, row_time, next_use, num_keys, hits_out):
    """The shared per-access loop over :func:`access`; gives exactly what :func:`replay` gives."""
    return row_loop(access, state, keys, row_ptr, row_time, next_use, num_keys, hits_out)


def reference(keys: np.ndarray, row_ptr: np.ndarray, row_time: np.ndarray, next_use: np.ndarray,
              capacity: int, num_keys: int, params: Mapping[str, Any], seed: int) -> tuple[np.ndarray, int]:
    """Plain-Python LIRS with the same row semantics: (hit per access, evictions)."""
    z = sizes(capacity, params)
    s: OrderedDict[int, None] = OrderedDict()  # first item = bottom of S
    q: OrderedDict[int, None] = OrderedDict()  # first item = front of Q
    nonres: OrderedDict[int, None] = OrderedDict()  # non-resident HIR blocks in S, oldest first
    lir: set[int] = set()
    resident: set[int] = set()
    hits = np.zeros(len(keys), np.uint8)
    evictions = 0

    def prune() -> None:
        while s and next(iter(s)) not in lir:
            b, _ = s.popitem(last=False)
            nonres.pop(b, None)

    def to_top(k: int) -> None:
        s.pop(k, None)
        s[k] = None

    def make_lir(k: int) -> None:
        lir.add(k)
        if len(lir) > z["llirs"]:
            b, _ = s.popitem(last=False)  # the bottom of S is LIR (S is kept pruned)
            lir.discard(b)
            q[b] = None
            prune()

    for r in range(len(row_ptr) - 1):
        row = {int(k) for k in keys[row_ptr[r]:row_ptr[r + 1]]}
        for i in range(int(row_ptr[r]), int(row_ptr[r + 1])):
            x = int(keys[i])
            if x in resident:
                hits[i] = 1
                if x in lir:
                    to_top(x)
                    prune()
                elif x in s:
                    to_top(x)
                    del q[x]
                    make_lir(x)
                else:
                    to_top(x)
                    q.move_to_end(x)
            else:
                if len(resident) >= capacity:
                    v = next((k for k in q if k not in row), None)
                    if v is not None:
                        del q[v]
                    else:
                        v = next((k for k in s if k in lir and k not in row), None)
                        if v is None:
                            raise ValueError("lirs: every resident is guarded")
                        lir.discard(v)
                    resident.discard(v)
                    evictions += 1
                    if v in s:
                        nonres[v] = None
                        prune()
                resident.add(x)
                if x in s:
                    del nonres[x]
                    to_top(x)
                    make_lir(x)
                elif len(lir) < z["llirs"]:
                    to_top(x)
                    lir.add(x)
                else:
                    to_top(x)
                    q[x] = None
            while z["s_limit"] and len(s) > z["s_limit"] and nonres:
                g, _ = nonres.popitem(last=False)
                del s[g]
    return hits, evictions
