"""Shared inputs and checks of the policy tests: CSR rows, the hand-made key sequence, random row
traces, linked-list reading, and the three-way agreement of ``replay``, the per-access loop and the
plain-Python reference."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from hypothesis import strategies as st
from moesim.sim.errors import ConfigError
from moesim.sim.policies import get_policy, reference_rows, replay_rows, resolve_policy_params

NO_NEXT = np.zeros(0, np.int64)

# The policies whose exact counts are worked out by hand, by test file (test_policies_core.py,
# test_policies_advanced.py); together they are every registered policy (tests/test_registries.py).
CORE = ["clock", "fifo", "lfu", "lfuda", "lru", "opt", "random", "sieve", "static"]
ADVANCED = ["arc", "layeraware", "lirs", "s3fifo", "twoq", "watermark"]

# One key per row, capacity 3 in the by-hand tests. Position: key
#   0:4 1:2 2:0 3:1 4:0 5:3 6:0 7:3 8:4 9:1 10:0 11:4 12:2 13:3 14:1
SEQ = [4, 2, 0, 1, 0, 3, 0, 3, 4, 1, 0, 4, 2, 3, 1]


def hits_at(*positions: int) -> list[int]:
    """The hit vector over :data:`SEQ` with hits exactly at ``positions``."""
    return [1 if i in positions else 0 for i in range(len(SEQ))]


def csr(rows: list[list[int]], step: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``rows`` as CSR ``(keys, row_ptr, row_time)``; row ``r`` at time ``r * step``."""
    keys = np.array([k for r in rows for k in r], np.int32)
    row_ptr = np.r_[0, np.cumsum([len(r) for r in rows])].astype(np.int64)
    return keys, row_ptr, np.arange(len(rows), dtype=np.int64) * step


def run(policy: str, rows: list[list[int]], capacity: int, num_keys: int, **kw) -> tuple[list[int], int]:
    """Jitted and reference runs must agree; returns (hit vector, evictions)."""
    keys, row_ptr, row_time = csr(rows)
    h1, e1 = replay_rows(policy, keys, row_ptr, row_time, capacity, num_keys, **kw)
    h2, e2 = reference_rows(policy, keys, row_ptr, row_time, capacity, num_keys, **kw)
    assert h1.tolist() == h2.tolist() and e1 == e2, (policy, h1, h2, e1, e2)
    return h1.tolist(), e1


def try_run(policy: str, keys, row_ptr, row_time, capacity, num_keys, seed=0):
    """(hits, evictions), or None when the policy refuses this capacity (e.g. it needs >= 2 slots)."""
    try:
        return replay_rows(policy, keys, row_ptr, row_time, capacity, num_keys, seed=seed)
    except ConfigError:
        return None


def random_rows(seed: int, n_rows: int, num_keys: int, width: int, skew: float = 1.2) -> list[list[int]]:
    """Rows of distinct keys drawn with a Zipf-like skew (so frequencies spread out)."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, num_keys + 1) ** skew
    p /= p.sum()
    return [rng.choice(num_keys, int(rng.integers(1, width + 1)), replace=False, p=p).tolist()
            for _ in range(n_rows)]


@st.composite
def short_row_traces(draw, max_keys: int = 10, max_rows: int = 40, max_width: int = 4):
    """Short traces of rows of distinct keys (the by-hand policies' random checks)."""
    num_keys = draw(st.integers(2, max_keys))
    width = draw(st.integers(1, min(max_width, num_keys)))
    n_rows = draw(st.integers(1, max_rows))
    rows = [draw(st.lists(st.integers(0, num_keys - 1), min_size=1, max_size=width, unique=True))
            for _ in range(n_rows)]
    return rows, num_keys


@st.composite
def row_traces(draw, max_keys: int = 24, max_rows: int = 160, max_width: int = 5, empty_rows: bool = False):
    """Long traces over few keys (so rings wrap and compact and ghosts fill), rows of mixed widths
    (empty ones too with ``empty_rows``), often runs of one-key rows (the fast paths) before and
    after wider rows."""
    num_keys = draw(st.integers(2, max_keys))
    width = draw(st.integers(1, min(max_width, num_keys)))
    n_rows = draw(st.integers(1, max_rows))
    one_key = draw(st.floats(0.0, 1.0))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    low = 0 if empty_rows else 1
    rows = []
    for _ in range(n_rows):
        w = 1 if rng.random() < one_key else int(rng.integers(low, width + 1))
        rows.append(rng.choice(num_keys, w, replace=False).tolist())
    return rows, num_keys


def queue(prv: np.ndarray, nxt: np.ndarray, sentinel: int) -> list[int]:
    """The keys of one linked list, front first (checking that the back links agree)."""
    out = []
    k = int(nxt[sentinel])
    while k != sentinel:
        assert int(nxt[prv[k]]) == k
        out.append(k)
        k = int(nxt[k])
    assert int(prv[sentinel]) == (out[-1] if out else sentinel)
    return out


def serve_csr(fn: Callable, state: tuple, keys: np.ndarray, row_ptr: np.ndarray, row_time: np.ndarray,
              num_keys: int, next_use: np.ndarray = NO_NEXT) -> tuple[list[int], int]:
    """One call of a policy loop (``replay`` or ``replay_by_access``) on CSR rows: (hits, evictions)."""
    hits = np.zeros(len(keys), np.uint8)
    evictions = fn(state, keys, row_ptr, row_time, next_use, num_keys, hits)
    return hits.tolist(), int(evictions)


def serve(fn: Callable, state: tuple, rows: list[list[int]], num_keys: int) -> tuple[list[int], int]:
    """One call of a policy loop (``replay`` or ``replay_by_access``) on ``rows``: (hits, evictions)."""
    return serve_csr(fn, state, *csr(rows), num_keys)


def serve_in_parts(fns: Sequence[Callable], state: tuple, rows: list[list[int]], cuts: Sequence[int],
                   num_keys: int) -> tuple[list[int], int]:
    """``rows[cuts[j]:cuts[j + 1]]`` served by ``fns[j % len(fns)]`` on one state: (hits, evictions)."""
    hits: list[int] = []
    evictions = 0
    for j, (a, b) in enumerate(itertools.pairwise(cuts)):
        h, e = serve(fns[j % len(fns)], state, rows[a:b], num_keys)
        hits += h
        evictions += e
    return hits, evictions


@st.composite
def wide_rows(draw: Any) -> tuple[list[list[int]], int]:
    """Rows of widths 1-4 over few keys (so guards often cover much of the cache), sometimes with
    one-key runs long enough for a policy's stream path."""
    num_keys = draw(st.integers(4, 20))
    n_rows = draw(st.integers(1, 200))
    one_key = draw(st.sampled_from([0.0, 0.3, 0.7]))
    long_runs = draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rows = []
    for _ in range(n_rows):
        if long_runs and rng.random() < 0.02:
            rows += [[int(k)] for k in rng.integers(0, num_keys, int(rng.integers(60, 160)))]
        w = 1 if rng.random() < one_key else int(rng.integers(1, 5))
        rows.append(rng.choice(num_keys, w, replace=False).tolist())
    return rows, num_keys


def new_policy_state(module: Any, cap: int, num_keys: int, params: dict[str, Any] | None = None,
                     seed: int = 0) -> tuple:
    return module.make_state(cap, num_keys, resolve_policy_params(module, params), seed)


def _three_ways(policy: str | ModuleType, rows: list[list[int]], cap: int, num_keys: int,
                params: dict[str, Any] | None, seed: int,
                meaning: Callable[[tuple], list] | None) -> tuple[list[int], int, tuple]:
    module = get_policy(policy) if isinstance(policy, str) else policy
    s1 = new_policy_state(module, cap, num_keys, params, seed)
    s2 = new_policy_state(module, cap, num_keys, params, seed)
    got = serve(module.replay, s1, rows, num_keys)
    slow = serve(module.replay_by_access, s2, rows, num_keys)
    ref_hits, ref_ev = reference_rows(module, *csr(rows), cap, num_keys, params, seed=seed)
    assert got == slow == (ref_hits.tolist(), ref_ev), module.NAME
    if meaning is not None:
        assert meaning(s1) == meaning(s2)
    return got[0], got[1], s1


def three_ways(policy: str | ModuleType, rows: list[list[int]], cap: int, num_keys: int,
               params: dict[str, Any] | None = None, *, seed: int = 0,
               meaning: Callable[[tuple], list] | None = None) -> tuple[list[int], int]:
    """``replay``, the per-access loop (``replay_by_access``) and the plain-Python reference agree on
    fresh states; with ``meaning``, both loops also leave states that mean the same. (hits, evictions)."""
    hits, evictions, _ = _three_ways(policy, rows, cap, num_keys, params, seed, meaning)
    return hits, evictions


def three_ways_state(module: Any, meaning: Callable[[tuple], list], rows: list[list[int]], cap: int,
                     num_keys: int, params: dict[str, Any] | None = None) -> tuple[list[int], int, list]:
    """:func:`three_ways` with the state check: (hits, evictions, the state as ``meaning`` reads it)."""
    hits, evictions, state = _three_ways(module, rows, cap, num_keys, params, 0, meaning)
    return hits, evictions, meaning(state)


def s3fifo_meaning(state: tuple) -> list:
    """What an S3-FIFO state says: the queues front first (links of keys on no list are leftovers
    nothing reads), then where, freq and the counters."""
    prv, nxt, where, freq, cnt = state
    n = len(where)
    return [queue(prv, nxt, n + j) for j in range(3)] + [where.tolist(), freq.tolist(), cnt.tolist()]


def lirs_meaning(state: tuple) -> list:
    """What a LIRS state says: S bottom first, Q front first and the non-resident list oldest first
    (links of keys on no list are leftovers nothing reads), then the LIR blocks, the residents, the
    flags, the list codes and the counters."""
    sprv, snxt, qprv, qnxt, flags, qwhere, cnt = state
    n = flags.shape[1]
    lir = [k for k in range(n) if flags[1, k]]
    resident = [k for k in range(n) if flags[0, k]]
    return [queue(sprv, snxt, n), queue(qprv, qnxt, n), queue(qprv, qnxt, n + 1), lir, resident,
            flags.tolist(), qwhere.tolist(), cnt.tolist()]


def check_rows_and_cut(module: Any, meaning: Callable[[tuple], list], rows: list[list[int]], cap: int,
                       num_keys: int, params: dict[str, Any] | None, cut: float) -> None:
    """:func:`three_ways_state`, then the rows cut at ``cut`` and served half by each loop (both
    orders) to the same hits, evictions and state; a row that finds every resident guarded is
    refused by both loops, which then leave the same state."""
    try:
        reference_rows(module, *csr(rows), cap, num_keys, params)
    except ValueError:
        states = []
        for fn in (module.replay, module.replay_by_access):
            state = new_policy_state(module, cap, num_keys, params)
            with pytest.raises(ValueError, match="every resident is guarded"):
                serve(fn, state, rows, num_keys)
            states.append(meaning(state))
        assert states[0] == states[1]
        return
    hits, evictions, final = three_ways_state(module, meaning, rows, cap, num_keys, params)
    c = int(cut * len(rows))
    for first, second in ((module.replay, module.replay_by_access), (module.replay_by_access, module.replay)):
        state = new_policy_state(module, cap, num_keys, params)
        assert serve_in_parts([first, second], state, rows, [0, c, len(rows)], num_keys) == (hits, evictions)
        assert meaning(state) == final


def arc_meaning(state: tuple) -> list:
    """What an ARC state says: its four lists in order (links of keys on no list are leftovers
    nothing reads), where each key is, the list sizes and ``p``."""
    prv, nxt, where, cnt, p = state
    n = len(where)
    return [queue(prv, nxt, n + j) for j in range(4)] + [where.tolist(), cnt.tolist(), p.tolist()]


def lru_meaning(state: tuple) -> list:
    """What an LRU state says: the resident keys from least to most recently used (the current
    entries of the recency log), the resident flags and the size (where the log window lies depends
    on when it was compacted)."""
    ring, last, resident, st_ = state
    mask = len(ring) - 1
    order = [int(ring[q & mask]) for q in range(int(st_[0]), int(st_[1])) if last[ring[q & mask]] == q]
    return [[k for k in order if resident[k]], resident.tolist(), st_[2:].tolist()]


def lru_order(state: tuple) -> list[int]:
    """The resident keys of an LRU state, least recently used first (its current ring entries)."""
    ring, last, resident, st_ = state
    order = [int(ring[q % len(ring)]) for q in range(int(st_[0]), int(st_[1]))
             if last[ring[q % len(ring)]] == q]
    assert sorted(order) == np.flatnonzero(resident).tolist() and len(order) == st_[2]
    return order
