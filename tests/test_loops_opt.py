"""OPT's specialised ``replay`` loop: packed priorities, a guard-free path for one-key rows and a
fallback on the heap's pairs. It gives exactly what the shared per-access loop
(``replay_by_access``) and the plain-Python ``reference`` give, leaves the very same heap behind,
and carries state across blocks, including blocks that switch between the packed and the pair
representation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moesim.sim.policies import opt, reference_rows
from moesim.sim.row_loop import NEVER
from moesim.sim.rows import next_use_times
from policy_support import csr

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def run(fn, state: tuple, keys, row_ptr, row_time, nu, num_keys: int) -> tuple[list[int], int]:
    hits = np.zeros(len(keys), np.uint8)
    evictions = fn(state, keys, row_ptr, row_time, nu, num_keys, hits)
    return hits.tolist(), int(evictions)


def heap_of(state: tuple) -> list[list[int]]:
    """The whole heap state: slots (key, prio, seq) in use, positions, size and access counter."""
    hk, hp, hq, pos, hs, _, ctr = state
    n = int(hs[0])
    return [hk[:n].tolist(), hp[:n].tolist(), hq[:n].tolist(), pos.tolist(), [n], ctr.tolist()]


def both_loops(rows: list[list[int]], cap: int, num_keys: int, step: int = 1,
               start_seq: int = 0) -> tuple[list[int], int]:
    """``replay`` and ``replay_by_access`` on fresh states: same hits, evictions and heap."""
    keys, row_ptr, row_time = csr(rows, step)
    nu = next_use_times(keys, row_ptr, row_time, num_keys)
    out = []
    for fn in (opt.replay, opt.replay_by_access):
        state = opt.make_state(cap, num_keys, {}, 0)
        state[6][0] = start_seq
        out.append((*run(fn, state, keys, row_ptr, row_time, nu, num_keys), heap_of(state)))
    assert out[0] == out[1]
    return out[0][0], out[0][1]


def three_ways(rows: list[list[int]], cap: int, num_keys: int, step: int = 1) -> tuple[list[int], int]:
    hits, evictions = both_loops(rows, cap, num_keys, step)
    keys, row_ptr, row_time = csr(rows, step)
    ref, ev_ref = reference_rows("opt", keys, row_ptr, row_time, cap, num_keys)
    assert hits == ref.tolist() and evictions == ev_ref
    return hits, evictions


@st.composite
def mixed_rows(draw, max_keys: int = 30, max_rows: int = 160, max_width: int = 4):
    """Mostly one-key rows (the fast path) with wider rows mixed in, over a few hot keys."""
    num_keys = draw(st.integers(2, max_keys))
    width = draw(st.integers(1, min(max_width, num_keys)))
    hot = draw(st.integers(1, num_keys))
    rows = []
    for _ in range(draw(st.integers(1, max_rows))):
        n = 1 if draw(st.integers(0, 3)) else draw(st.integers(1, width))
        pool = st.integers(0, num_keys - 1) if draw(st.booleans()) else st.integers(0, hot - 1)
        rows.append(draw(st.lists(pool, min_size=1, max_size=n, unique=True)))
    return rows, num_keys


@SETTINGS
@given(data=mixed_rows(), extra=st.integers(0, 10))
def test_fast_loop_equals_per_access_loop_and_reference(data, extra: int) -> None:
    rows, num_keys = data
    three_ways(rows, max(len(r) for r in rows) + extra, num_keys)


@SETTINGS
@given(data=mixed_rows(), extra=st.integers(0, 10))
def test_pair_fallback_equals_per_access_loop(data, extra: int) -> None:
    # Row times beyond 2 ** 31 (next uses too large to pack), or a counter near 2 ** 32: the pairs.
    rows, num_keys = data
    cap = max(len(r) for r in rows) + extra
    assert both_loops(rows, cap, num_keys, step=1 << 40) == both_loops(rows, cap, num_keys)
    assert both_loops(rows, cap, num_keys, start_seq=(1 << 32) - 3) == both_loops(rows, cap, num_keys)


@pytest.mark.parametrize(("seed", "cap", "width"), [(0, 1, 1), (1, 5, 1), (2, 12, 3), (3, 40, 4)])
def test_long_skewed_streams(seed: int, cap: int, width: int) -> None:
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, 61) ** 1.1
    p /= p.sum()
    rows = [rng.choice(60, int(rng.integers(1, width + 1)) if rng.random() < 0.3 else 1, replace=False,
                       p=p).tolist() for _ in range(1200)]
    hits, evictions = three_ways(rows, cap, 60)
    assert 0 < sum(hits) < len(hits) and evictions > 0


def test_state_carries_across_blocks_and_representations() -> None:
    # Four blocks on one state, each loop against the per-access loop on its own state: packed,
    # per-access, packed then pairs from the first next use of 2 ** 40 (no packed form), then pairs
    # again while such a next use stays in the heap.
    rng = np.random.default_rng(7)
    rows = [rng.choice(25, int(rng.integers(1, 4)) if rng.random() < 0.3 else 1, replace=False).tolist()
            for _ in range(800)]
    keys, row_ptr, row_time = csr(rows)
    nu = next_use_times(keys, row_ptr, row_time, 25)
    state, ref_state = opt.make_state(6, 25, {}, 0), opt.make_state(6, 25, {}, 0)
    cuts = [0, 200, 350, 600, len(rows)]
    packable = []
    for b, fn in enumerate([opt.replay, opt.replay_by_access, opt.replay, opt.replay]):
        lo, hi = int(row_ptr[cuts[b]]), int(row_ptr[cuts[b + 1]])
        block_nu = nu[lo:hi].copy()
        if b == 2:  # far next uses from the middle of the block on stay in the heap for the next one
            block_nu[-40:] = 1 << 40
        packable.append(bool(opt._packable(state[1], state[4], state[6][0], hi - lo)))
        args = (keys[lo:hi], row_ptr[cuts[b]:cuts[b + 1] + 1] - lo, row_time[cuts[b]:cuts[b + 1]], block_nu, 25)
        assert run(fn, state, *args) == run(opt.replay_by_access, ref_state, *args)
        assert heap_of(state) == heap_of(ref_state)
    assert packable[0] and packable[2] and not packable[3]


def test_packable_bounds() -> None:
    hp = np.zeros(4, np.int64)
    hs = np.zeros(1, np.int64)
    edge = opt.PACK_BIG - 2
    assert [bool(opt._fits(x)) for x in (0, edge, NEVER, edge + 1, -1)] == [True, True, True, False, False]
    assert opt._packable(hp, hs, (1 << 32) - 3, 2)
    assert not opt._packable(hp, hs, (1 << 32) - 2, 2)
    hp[0], hs[0] = -(edge + 1), 1
    assert not opt._packable(hp, hs, 0, 0)
    hp[0] = -NEVER
    assert opt._packable(hp, hs, 0, 0)


@pytest.mark.parametrize(("row", "width"), [(0, 1), (37, 1), (37, 3), (299, 2)])
def test_switch_to_pairs_mid_block(row: int, width: int) -> None:
    # One next use without a packed form in row ``row`` (one key or a wider row): the rows before
    # it run packed, the rest on the pairs; the per-access loop on the same inputs agrees.
    rng = np.random.default_rng(row)
    rows = [rng.choice(20, int(rng.integers(1, 4)) if rng.random() < 0.3 else 1, replace=False).tolist()
            for _ in range(300)]
    rows[row] = list(range(width))
    keys, row_ptr, row_time = csr(rows)
    nu = next_use_times(keys, row_ptr, row_time, 20)
    nu[int(row_ptr[row + 1]) - 1] = 1 << 40
    s1, s2 = opt.make_state(5, 20, {}, 0), opt.make_state(5, 20, {}, 0)
    assert run(opt.replay, s1, keys, row_ptr, row_time, nu, 20) == run(opt.replay_by_access, s2, keys, row_ptr,
                                                                         row_time, nu, 20)
    assert heap_of(s1) == heap_of(s2)


# ---- by hand ---------------------------------------------------------------------------------------

def test_one_key_rows_evict_the_farthest() -> None:
    # Capacity 2: 0 and 1 fill it; 2 evicts 1 (next used at row 6, after 0 at row 4); 2 and 0 hit;
    # 3 evicts 2 (2 and 0 are never used again: the tie goes to the least recent, 2); 1 evicts 0.
    rows = [[0], [1], [2], [2], [0], [3], [1]]
    assert three_ways(rows, 2, 4) == ([0, 0, 0, 1, 1, 0, 0], 3)
    state = opt.make_state(2, 4, {}, 0)
    keys, row_ptr, row_time = csr(rows)
    run(opt.replay, state, keys, row_ptr, row_time, next_use_times(keys, row_ptr, row_time, 4), 4)
    assert [int(p) >= 0 for p in state[3]] == [False, True, False, True]


def test_never_used_again_ties_go_to_the_least_recent() -> None:
    # 0, 1, 3 and 4 are never used again: 3 evicts 0 and 4 evicts 1 (the least recent), 2 hits.
    rows = [[0], [1], [2], [3], [4], [2]]
    keys, row_ptr, row_time = csr(rows)
    state = opt.make_state(3, 5, {}, 0)
    hits, evictions = run(opt.replay, state, keys, row_ptr, row_time,
                          next_use_times(keys, row_ptr, row_time, 5), 5)
    assert (hits, evictions) == three_ways(rows, 3, 5) == ([0, 0, 0, 0, 0, 1], 2)
    assert [int(state[3][k]) >= 0 for k in range(5)] == [False, False, True, True, True]


def test_capacity_below_row_width_evicts_nothing_it_cannot() -> None:
    # Capacity 1 and a row of two: 1 evicts 0, then 2 finds only the guarded 1 and is served without
    # an insert; the loops agree (the reference has no meaning here).
    rows = [[0], [1, 2], [2], [1]]
    assert both_loops(rows, 1, 3) == ([0, 0, 0, 0, 0], 3)


def test_wide_row_guards_the_farthest() -> None:
    # Capacity 2 holding 0 and 1; row [0, 2]: 0 hits and is never used again (the farthest, the
    # root), but the row guards it, so 2 evicts 1 and the last request, 1, misses (unguarded, 2
    # would evict 0 and 1 would hit).
    rows = [[0], [1], [0, 2], [1]]
    assert three_ways(rows, 2, 3) == ([0, 0, 1, 0, 0], 2)
