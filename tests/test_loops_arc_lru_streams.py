"""The specialised row loops of ARC and LRU: each ``replay`` gives exactly what the shared per-access
loop over ``access`` (``replay_by_access``) gives and what the plain-Python ``reference`` gives,
leaves a state that means the same (the same lists in the same order), and handles the cases its
one-key fast path makes special (no guard: victims are list fronts; ghost hits; T1 alone filling
the cache) as well as wide rows whose guard protects a list front."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moesim.sim.policies import arc, lru, replay_rows
from policy_support import csr, new_policy_state, queue, row_traces, serve_csr, three_ways

POLICIES = {"arc": arc, "lru": lru}
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def meaning(state: tuple) -> list:
    """What a state says about the cache. ARC: its four lists in order (links of keys on no list
    are leftovers nothing reads), where each key is, the list sizes and ``p``. LRU: the resident
    keys from least to most recently used (the current entries of the recency log), the resident
    flags and the size (where the log window lies depends on when it was compacted)."""
    if len(state) == 5:
        prv, nxt, where, cnt, p = state
        n = len(where)
        return [queue(prv, nxt, n + j) for j in range(4)] + [where.tolist(), cnt.tolist(), p.tolist()]
    ring, last, resident, st_ = state
    mask = len(ring) - 1
    order = [int(ring[q & mask]) for q in range(int(st_[0]), int(st_[1])) if last[ring[q & mask]] == q]
    return [[k for k in order if resident[k]], resident.tolist(), st_[2:].tolist()]


@pytest.mark.parametrize("name", list(POLICIES))
@SETTINGS
@given(data=row_traces(empty_rows=True), extra=st.integers(0, 6))
def test_replay_equals_per_access_and_reference(name: str, data, extra: int) -> None:
    rows, num_keys = data
    three_ways(POLICIES[name], rows, max(1, max(len(r) for r in rows) + extra), num_keys, meaning=meaning)


@pytest.mark.parametrize("name", list(POLICIES))
@SETTINGS
@given(data=row_traces(empty_rows=True, max_rows=120), extra=st.integers(0, 4), cut=st.floats(0.0, 1.0))
def test_state_left_by_replay_reads_the_same_through_access(name: str, data, extra: int, cut: float) -> None:
    # A prefix with the fast loop on one state and with the per-access loop on another, then the
    # rest with the other loop on each: the same hits, the same state, and the whole in one call.
    rows, num_keys = data
    module = POLICIES[name]
    cap = max(1, max(len(r) for r in rows) + extra)
    c = int(cut * len(rows))
    a, b = csr(rows[:c]), csr(rows[c:])
    s1, s2 = new_policy_state(module, cap, num_keys), new_policy_state(module, cap, num_keys)
    first = serve_csr(module.replay, s1, *a, num_keys), serve_csr(module.replay_by_access, s2, *a, num_keys)
    assert first[0] == first[1] and meaning(s1) == meaning(s2)
    second = serve_csr(module.replay_by_access, s1, *b, num_keys), serve_csr(module.replay, s2, *b, num_keys)
    assert second[0] == second[1] and meaning(s1) == meaning(s2)
    whole, ev = replay_rows(module, *csr(rows), cap, num_keys)
    assert first[0][0] + second[0][0] == whole.tolist() and first[0][1] + second[0][1] == ev


@pytest.mark.parametrize("name", list(POLICIES))
def test_skewed_one_key_stream(name: str) -> None:
    # A long Zipf stream at several capacities: every miss inserts, all but the first
    # ``min(cap, distinct)`` evict (ARC: plus none, its ghosts are not residents); the three loops
    # agree request by request.
    rng = np.random.default_rng(11)
    skewed = np.minimum(rng.zipf(1.3, 4000), 300) - 1
    rows = [[int(k)] for k in skewed]
    distinct = len(set(skewed.tolist()))
    for cap in (1, 2, 17, 65, 130):
        hits, evictions = three_ways(POLICIES[name], rows, cap, 300, meaning=meaning)
        assert evictions == len(rows) - sum(hits) - min(cap, distinct)
        assert 0 < sum(hits) < len(rows)


# ---- ARC by hand ----------------------------------------------------------------------------------

def arc_lists(state: tuple) -> tuple[list[list[int]], float]:
    prv, nxt, where, _, p = state
    n = len(where)
    return [queue(prv, nxt, n + j) for j in range(4)], float(p[0])


def test_arc_t1_alone_fills_the_cache_its_lru_goes_without_a_ghost() -> None:
    # C = 2, 0 1 2 0: T1 = [0, 1] is full, so 2 evicts 0 with no ghost entry; 0 then misses as new.
    keys, row_ptr, row_time = csr([[0], [1], [2], [0]])
    state = new_policy_state(arc, 2, 4)
    assert serve_csr(arc.replay, state, keys, row_ptr, row_time, 4) == ([0, 0, 0, 0], 2)
    assert arc_lists(state) == ([[2, 0], [], [], []], 0.0)


def test_arc_ghost_hits_move_p_and_enter_t2() -> None:
    # C = 2. 0 0 1 2: T1 = [2], T2 = [0], B1 = [1] (1 left T1 as |T1| > p = 0). 1 is a B1 hit:
    # p = 1, REPLACE takes T2's LRU (|T1| = p, not from B2) into B2, 1 enters T2.
    rows = [[0], [0], [1], [2], [1]]
    state = new_policy_state(arc, 2, 4)
    assert serve_csr(arc.replay, state, *csr(rows), 4) == ([0, 1, 0, 0, 0], 2)
    assert arc_lists(state) == ([[2], [1], [], [0]], 1.0)
    # 0 is a B2 hit: p = 0, REPLACE takes T1's LRU (|T1| > p) into B1, 0 enters T2.
    assert serve_csr(arc.replay, state, *csr([[0]]), 4) == ([0], 1)
    assert arc_lists(state) == ([[], [1, 0], [2], []], 0.0)
    assert three_ways(arc, [*rows, [0]], 2, 4, meaning=meaning) == ([0, 1, 0, 0, 0, 0], 3)


def test_arc_wide_row_guard_protects_the_list_front() -> None:
    # C = 2, T1 = [0, 1]; the row [2, 0] needs a victim for 2 while 0 (T1's front) is guarded, so
    # 1 goes; 0 then hits and moves to T2.
    rows = [[0], [1], [2, 0]]
    assert three_ways(arc, rows, 2, 4, meaning=meaning) == ([0, 0, 0, 1], 1)
    state = new_policy_state(arc, 2, 4)
    serve_csr(arc.replay, state, *csr(rows), 4)
    assert arc_lists(state) == ([[2], [0], [], []], 0.0)


def test_arc_cyclic_scan() -> None:
    # A cyclic scan over C + 1 keys: LRU misses on every request, and so does ARC (every key leaves
    # T1 before its next request and finds no ghost to adapt on); every miss after the first C evicts.
    rows = [[k % 7] for k in range(700)]
    assert three_ways(arc, rows, 6, 7, meaning=meaning) == ([0] * 700, 694)
    assert three_ways(lru, rows, 6, 7, meaning=meaning) == ([0] * 700, 694)


def _reuse_and_scans(seed: int, n_rows: int, num_keys: int) -> list[list[int]]:
    """One-key rows alternating a skewed reuse phase and a scan, so both ghost lists see hits."""
    rng = np.random.default_rng(seed)
    rows: list[list[int]] = []
    while len(rows) < n_rows:
        hot = np.minimum(rng.zipf(1.4, int(rng.integers(50, 300))), num_keys) - 1
        rows += [[int(k)] for k in hot]
        start = int(rng.integers(0, num_keys))
        rows += [[(start + j) % num_keys] for j in range(int(rng.integers(5, 40)))]
    return rows[:n_rows]


@pytest.mark.parametrize(("seed", "cap"), [(20, 3), (21, 8), (22, 16), (23, 25)])
def test_arc_full_lists_loop_on_long_streams(seed: int, cap: int) -> None:
    # Long one-key streams fill ARC's four lists (|T1| + |T2| = |B1| + |B2| = C), after which replay
    # serves them with its full-lists loop (sizes derived from C, rows checked as they are served):
    # same hits, evictions and lists as the per-access loop and the reference, and still full.
    rows = _reuse_and_scans(seed, 4000, 60)
    hits, evictions = three_ways(arc, rows, cap, 60, meaning=meaning)
    assert evictions == len(hits) - sum(hits) - cap and 0 < sum(hits) < len(hits)
    state = new_policy_state(arc, cap, 60)
    serve_csr(arc.replay, state, *csr(rows), 60)
    t1, t2, b1, b2 = (int(x) for x in state[3][:4])
    assert t1 + t2 == cap and b1 + b2 == cap  # the full-lists loop served the tail of the stream


def test_arc_full_lists_loop_hands_over_at_wide_rows_and_cuts() -> None:
    # Full lists, then wide rows in the middle of the stream (the full-lists loop must stop at the
    # first one), served in one call and in parts alternating replay and the per-access loop.
    rng = np.random.default_rng(24)
    rows = _reuse_and_scans(25, 1500, 40)
    rows = rows[:700] + [rng.choice(40, 3, replace=False).tolist() for _ in range(30)] + rows[700:]
    keys, row_ptr, row_time = csr(rows)
    whole = new_policy_state(arc, 6, 40)
    expected = serve_csr(arc.replay, whole, keys, row_ptr, row_time, 40)
    assert expected == three_ways(arc, rows, 6, 40, meaning=meaning)
    for cuts in ([0, 650, 701, 760, len(rows)], [0, 699, 700, 731, 1200, len(rows)]):
        for fns in ((arc.replay,), (arc.replay, arc.replay_by_access), (arc.replay_by_access, arc.replay)):
            state = new_policy_state(arc, 6, 40)
            got: list[int] = []
            total = 0
            for j, (a, b) in enumerate(itertools.pairwise(cuts)):
                lo, hi = int(row_ptr[a]), int(row_ptr[b])
                h, e = serve_csr(fns[j % len(fns)], state, keys[lo:hi], row_ptr[a:b + 1] - lo, row_time[a:b], 40)
                got += h
                total += e
            assert (got, total) == expected and meaning(state) == meaning(whole)
