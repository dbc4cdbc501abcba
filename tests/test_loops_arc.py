"""ARC's specialised row loop, its own cases: REPLACE around guarded keys (a victim skipped because the
row guards it, the fall-back to the other list), T1 alone filling the cache, ghost hits that move
``p``, and the full-lists loop on long streams and at wide rows and cuts. The checks ARC shares
with LRU and 2Q are in test_loops_lru_arc_twoq_guards.py and test_loops_arc_lru_streams.py."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from moesim.sim.policies import arc
from policy_support import arc_meaning, csr, new_policy_state, queue, serve_csr, three_ways


def arc_lists(state: tuple) -> tuple[list[list[int]], float]:
    prv, nxt, where, _, p = state
    n = len(where)
    return [queue(prv, nxt, n + j) for j in range(4)], float(p[0])


# ---- guarded rows ---------------------------------------------------------------------------------

def test_arc_by_hand_with_guards() -> None:
    # Capacity 2. [0], [1]: T1 = 0 1. Row [2, 0]: |T1| = C, so T1's LRU goes without a ghost, but 0
    # is guarded: 1 goes; T1 = 0 2, then 0 hits (T2 = 0). [1]: a plain miss, |T1| + |B1| < C, so
    # REPLACE takes T1's LRU (|T1| = 1 > p = 0): 2 to B1. [2]: a B1 hit, p = 1, REPLACE with
    # |T1| = p takes T2's LRU: 0 to B2; 2 into T2. [0]: a B2 hit, p = 0, REPLACE: 1 to B1.
    hits, evictions = three_ways("arc", [[0], [1], [2, 0], [1], [2], [0]], 2, 3)
    assert hits == [0, 0, 0, 1, 0, 0, 0] and evictions == 4
    state = new_policy_state(arc, 2, 3)
    serve_csr(arc.replay, state, *csr([[0], [1], [2, 0], [1], [2], [0]]), 3)
    where, cnt, p = state[2], state[3], state[4]
    assert where.tolist() == [arc.T2, arc.B1, arc.T2] and cnt[:4].tolist() == [0, 2, 1, 0] and p[0] == 0.0


def test_arc_replace_falls_back_to_the_other_list() -> None:
    # Capacity 2: [0], [0] puts 0 in T2; [1] into T1. Row [2, 1]: REPLACE would take T1's LRU
    # (|T1| = 1 > p = 0) but 1 is guarded, so T2's LRU (0) goes to B2; 1 then hits. [0]: a B2 hit,
    # REPLACE takes T1's LRU, 2.
    rows = [[0], [0], [1], [2, 1], [0]]
    hits, evictions = three_ways("arc", rows, 2, 3)
    assert hits == [0, 1, 0, 0, 1, 0] and evictions == 2


# ---- the one-key fast path --------------------------------------------------------------------------

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
    assert three_ways(arc, [*rows, [0]], 2, 4, meaning=arc_meaning) == ([0, 1, 0, 0, 0, 0], 3)


def test_arc_wide_row_guard_protects_the_list_front() -> None:
    # C = 2, T1 = [0, 1]; the row [2, 0] needs a victim for 2 while 0 (T1's front) is guarded, so
    # 1 goes; 0 then hits and moves to T2.
    rows = [[0], [1], [2, 0]]
    assert three_ways(arc, rows, 2, 4, meaning=arc_meaning) == ([0, 0, 0, 1], 1)
    state = new_policy_state(arc, 2, 4)
    serve_csr(arc.replay, state, *csr(rows), 4)
    assert arc_lists(state) == ([[2], [0], [], []], 0.0)


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
    hits, evictions = three_ways(arc, rows, cap, 60, meaning=arc_meaning)
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
    assert expected == three_ways(arc, rows, 6, 40, meaning=arc_meaning)
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
            assert (got, total) == expected and arc_meaning(state) == arc_meaning(whole)
