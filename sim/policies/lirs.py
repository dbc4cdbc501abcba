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
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np
from numba import njit

from sim.kernel import HIT, MISS, replay_kernel
from sim.policies import _knobs
from sim.policies._lists import first_unguarded, new_lists, push_back, unlink

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


@njit(cache=True, forceinline=True)
def _s_remove(sprv, snxt, flags, cnt, k):
    unlink(sprv, snxt, k)
    flags[2, k] = 0
    cnt[N_S] -= 1


@njit(cache=True, forceinline=True)
def _s_push_top(sprv, snxt, flags, cnt, k):
    n = flags.shape[1]
    if flags[2, k]:
        unlink(sprv, snxt, k)
    else:
        flags[2, k] = 1
        cnt[N_S] += 1
    push_back(sprv, snxt, n, k)


@njit(cache=True, forceinline=True)
def _q_remove(qprv, qnxt, qwhere, k):
    unlink(qprv, qnxt, k)
    qwhere[k] = Q_NONE


@njit(cache=True, forceinline=True)
def _prune(sprv, snxt, qprv, qnxt, flags, qwhere, cnt):
    n = flags.shape[1]
    b = snxt[n]
    while b != n and flags[1, b] == 0:
        _s_remove(sprv, snxt, flags, cnt, b)
        if qwhere[b] == Q_NONRES:  # a non-resident block that leaves S is forgotten
            _q_remove(qprv, qnxt, qwhere, b)
        b = snxt[n]


@njit(cache=True, forceinline=True)
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


@njit(cache=True, forceinline=True)
def _make_lir(sprv, snxt, qprv, qnxt, flags, qwhere, cnt, k):
    flags[1, k] = 1
    cnt[N_LIR] += 1
    if cnt[N_LIR] > cnt[LLIRS]:
        _demote_bottom(sprv, snxt, qprv, qnxt, flags, qwhere, cnt)


@njit(cache=True, forceinline=True)
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


@njit(cache=True, forceinline=True)
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


@njit(cache=True, forceinline=True)
def replay(state, keys, row_ptr, row_time, next_use, num_keys, hits_out):
    return replay_kernel(access, state, keys, row_ptr, row_time, next_use, num_keys, hits_out)


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
