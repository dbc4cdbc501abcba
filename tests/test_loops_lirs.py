"""LIRS's loop over rows of any width (``_serve_rows``): guarded blocks of Q passed in place, the
lowest unguarded LIR block of S evicted when Q holds only guarded blocks, pruning and demotion
around guarded blocks, the stack bound, the every-resident-guarded error, one-key and wide rows
mixed, the state carried between calls; exact hits on hand-made rows, and on random row traces
``replay`` == ``replay_by_access`` == ``reference`` with the same state left behind. Then the stream
loop: long runs of one-key rows on logs whose positions double as list memberships, carried across
blocks and loops, the bound on S, and runs around the log threshold. The checks LIRS shares with
S3-FIFO are in test_loops_s3fifo_lirs.py."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moesim.sim.policies import lirs
from policy_support import (
    check_rows_and_cut,
    csr,
    new_policy_state,
    serve,
    serve_csr,
    serve_in_parts,
    three_ways_state,
    wide_rows,
)
from policy_support import (
    lirs_meaning as meaning,
)

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LOOPS = {"replay": lirs.replay, "replay_by_access": lirs.replay_by_access}


def new_state(cap: int, num_keys: int, params: dict[str, Any] | None) -> tuple:
    return new_policy_state(lirs, cap, num_keys, params)


def three_ways(rows: list[list[int]], cap: int, num_keys: int,
               params: dict[str, Any] | None = None) -> tuple[list[int], int, list]:
    return three_ways_state(lirs, meaning, rows, cap, num_keys, params)


# ---- hand-made rows ------------------------------------------------------------------------------

def test_victim_search_passes_a_guarded_front_of_q_in_place() -> None:
    # C=4, hir_ratio 0.5: Llirs 2, Lhirs 2. [0] [1] become LIR, [2] [3] resident HIR: S [0 1 2 3],
    # Q [2 3]. Row [4 2]: 4 misses first and the front of Q, 2, is guarded (served later in the
    # row): the search passes it and evicts 3 (non-resident, still in S); 4 becomes resident HIR.
    # Then 2 hits in S: LIR, and the bottom LIR block 0 is demoted to the back of Q. [5]: the front
    # of Q is now 4, evicted in turn: S [1 3 4 2 5], Q [0 5], non-resident [3 4]. Row [3 0]: 3 misses,
    # passes the guarded 0 and evicts 5; 3 was in S, so it becomes LIR on top and the bottom 1 is
    # demoted, and the prune drops the non-resident 4 (forgotten). 0 hits outside S.
    rows = [[0], [1], [2], [3], [4, 2], [5]]
    hits, evictions, (s, q, nonres, lir, resident, *_) = three_ways(rows, 4, 6, {"hir_ratio": 0.5})
    assert hits == [0, 0, 0, 0, 0, 1, 0] and evictions == 2
    assert (s, q, nonres) == ([1, 3, 4, 2, 5], [0, 5], [3, 4])
    assert lir == [1, 2] and resident == [0, 1, 2, 5]
    hits, evictions, (s, q, nonres, lir, resident, *_) = three_ways([*rows, [3, 0]], 4, 6, {"hir_ratio": 0.5})
    assert hits[-2:] == [0, 1] and evictions == 3
    assert (s, q, nonres) == ([2, 5, 3, 0], [1, 0], [5])
    assert lir == [2, 3] and resident == [0, 1, 2, 3]


def test_guarded_q_makes_the_lowest_unguarded_lir_block_go() -> None:
    # C=4: Llirs 3, Lhirs 1. [0] [1] [2] LIR, [3] resident HIR: S [0 1 2 3], Q [3]. Row [4 3 0]: 4
    # misses and Q holds only the guarded 3, so the lowest LIR block of S goes, passing the guarded
    # bottom 0: 1 is evicted in place (a non-resident entry above 0, nothing to prune). 4 refills
    # the LIR set (only 2 left). 3 hits in S: LIR, one too many, so the bottom 0 (guarded: a
    # demotion evicts nothing) goes to Q, and the prune drops the non-resident 1. 0 then hits as a
    # resident HIR block outside S: back on top of S, to the back of Q.
    rows = [[0], [1], [2], [3], [4, 3, 0]]
    hits, evictions, (s, q, nonres, lir, resident, *_) = three_ways(rows, 4, 5)
    assert hits == [0, 0, 0, 0, 0, 1, 1] and evictions == 1
    assert (s, q, nonres) == ([2, 4, 3, 0], [0], [])
    assert lir == [2, 3, 4] and resident == [0, 2, 3, 4]


def test_evicting_the_bottom_lir_block_prunes_the_missed_key_out_of_s() -> None:
    # C=4: [0] [1] [2] LIR, [3] HIR, [4] evicts 3 (non-resident in S) and is HIR in Q. [1] [2] hit:
    # S [0 3 4 1 2]. Row [3 4]: 3 misses with Q = [4] guarded, so the bottom LIR block 0 goes; the
    # prune then takes 0, the non-resident 3 (the key being served: forgotten, so it comes back as a
    # new block, LIR as the set has room) and the resident HIR 4 (it stays in Q) off S. 4 then hits
    # as a resident HIR block outside S.
    rows = [[0], [1], [2], [3], [4], [1], [2], [3, 4]]
    hits, evictions, (s, q, nonres, lir, resident, *_) = three_ways(rows, 4, 5)
    assert hits == [0, 0, 0, 0, 0, 1, 1, 0, 1] and evictions == 2
    assert (s, q, nonres) == ([1, 2, 3, 4], [4], [])
    assert lir == [1, 2, 3] and resident == [1, 2, 3, 4]


def test_stack_bound_with_wide_rows() -> None:
    # C=4, stack_ratio 1: S holds at most 4 entries. [0] [1] [2] LIR. Row [3 4]: 3 is HIR; 4 finds
    # Q = [3] guarded and evicts the bottom LIR 0 (pruned off S), then refills the LIR set. Row
    # [5 6]: 5 evicts 3 (non-resident in S), S would hold 5 entries, so 3 leaves it; 6 finds Q = [5]
    # guarded and evicts the LIR 1. [3] is a new block again: it evicts 5, and S drops 5 to stay
    # within the bound.
    rows = [[0], [1], [2], [3, 4], [5, 6], [3]]
    hits, evictions, (s, q, nonres, lir, resident, *_, cnt) = three_ways(rows, 4, 7, {"stack_ratio": 1.0})
    assert hits == [0] * 8 and evictions == 4
    assert (s, q, nonres) == ([2, 4, 6, 3], [3], [])
    assert lir == [2, 4, 6] and resident == [2, 3, 4, 6] and cnt[lirs.N_S] == 4


@pytest.mark.parametrize("loop", list(LOOPS))
def test_every_resident_guarded_raises_and_keeps_the_counters(loop: str) -> None:
    # C=2: Llirs 1, Lhirs 1. [0] LIR, [1] HIR: S [0 1], Q [1]. Row [0 1 2]: 0 hits and goes on top
    # of S, and the prune drops 1 (resident HIR, it stays in Q) off S; 1 hits outside S: back on
    # top of S. 2 then finds Q = [1] and the only LIR block 0 both guarded. Both loops stop there
    # with the same state (the counters, which this call changed, written back).
    rows = [[0], [1], [0, 1, 2]]
    state = new_state(2, 3, None)
    with pytest.raises(ValueError, match="every resident is guarded"):
        serve(LOOPS[loop], state, rows, 3)
    s, q, nonres, lir, resident, *_, cnt = meaning(state)
    assert (s, q, nonres) == ([0, 1], [1], [])
    assert lir == [0] and resident == [0, 1]
    assert cnt[lirs.N_RES] == 2 and cnt[lirs.N_LIR] == 1 and cnt[lirs.N_S] == 2


def test_one_key_and_wide_rows_mixed_with_long_runs_and_cuts() -> None:
    # 30 keys: one-key runs of at least 30 + 64 = 94 rows go to the logs, shorter ones and wide
    # rows to the row loop. Served in one call and cut into several calls (the state carried
    # across), with the same hits, evictions and state as the per-access loop.
    rng = np.random.default_rng(7)
    rows: list[list[int]] = []
    for length in (3, 0, 93, 94, 150, 1, 0, 5):
        rows += [[int(k)] for k in rng.integers(0, 30, length)]
        for _ in range(int(rng.integers(1, 6))):
            rows.append(rng.choice(30, int(rng.integers(2, 5)), replace=False).tolist())
    for params in (None, {"hir_ratio": 0.3, "stack_ratio": 1.0}, {"stack_ratio": 0.0}):
        hits, evictions, final = three_ways(rows, 8, 30, params)
        assert evictions == len(hits) - sum(hits) - 8
        for cuts in ([0, 1, 4, 100, 101, 250, len(rows)], [0, 97, 200, 300, len(rows)]):
            state = new_state(8, 30, params)
            assert serve_in_parts([lirs.replay], state, rows, cuts, 30) == (hits, evictions)
            assert meaning(state) == final


# ---- random rows ---------------------------------------------------------------------------------

KNOBS = st.fixed_dictionaries({"hir_ratio": st.sampled_from([0.01, 0.3, 0.6]),
                               "stack_ratio": st.sampled_from([0.0, 1.0, 2.0])})


@SETTINGS
@given(data=wide_rows(), cap=st.integers(2, 12), params=KNOBS, cut=st.floats(0.0, 1.0))
def test_row_loop_equals_per_access_and_reference(data, cap: int, params: dict[str, Any], cut: float) -> None:
    rows, num_keys = data
    check_rows_and_cut(lirs, meaning, rows, cap, num_keys, params, cut)


# ---- long runs of one-key rows (the stream loop) ---------------------------------------------

STREAM_KNOBS = st.fixed_dictionaries({"hir_ratio": st.sampled_from([0.01, 0.25, 0.6]),
                                      "stack_ratio": st.sampled_from([0.0, 1.0, 2.0])})


@st.composite
def runs_and_rows(draw, max_keys: int = 12):
    """Runs of one-key rows long enough for the logs (over ``num_keys + 64`` rows) between short
    runs and wider rows, over a few keys with a hot subset."""
    num_keys = draw(st.integers(3, max_keys))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    hot = int(rng.integers(1, num_keys + 1))
    rows: list[list[int]] = []
    for _ in range(draw(st.integers(1, 5))):
        n = int(rng.integers(1, 3 * (num_keys + 64)))
        pool = hot if rng.random() < 0.5 else num_keys
        rows += [[int(rng.integers(0, pool))] for _ in range(n)]
        for _ in range(int(rng.integers(0, 4))):
            rows.append(rng.choice(num_keys, int(rng.integers(1, 4)), replace=False).tolist())
    return rows, num_keys


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=runs_and_rows(), extra=st.integers(0, 5), params=STREAM_KNOBS)
def test_lirs_stream_loop_equals_per_access_loop_and_reference(data, extra: int, params: dict) -> None:
    rows, num_keys = data
    three_ways(rows, max(2, max(len(r) for r in rows) + extra), num_keys, params)


@pytest.mark.parametrize("params", [{}, {"hir_ratio": 0.3, "stack_ratio": 0.0}, {"stack_ratio": 1.0}])
def test_lirs_state_carries_across_blocks_and_loops(params: dict) -> None:
    # Long one-key runs split across blocks (each block's run starts on the state the last left),
    # alternating the stream loop and the per-access loop, equal one per-access pass.
    rng = np.random.default_rng(11)
    p = 1.0 / np.arange(1, 41) ** 0.9
    p /= p.sum()
    rows = [[int(k)] for k in rng.choice(40, 1500, p=p)]
    rows[700:700] = [[1, 2, 3], [4, 5]]
    keys, row_ptr, row_time = csr(rows)
    whole_state = new_state(12, 40, params)
    whole = serve_csr(lirs.replay_by_access, whole_state, keys, row_ptr, row_time, 40)
    state = new_state(12, 40, params)
    hits: list[int] = []
    evictions = 0
    cuts = [0, 400, 650, 1200, len(rows)]
    for b, fn in enumerate([lirs.replay, lirs.replay_by_access, lirs.replay, lirs.replay]):
        r0, r1 = cuts[b], cuts[b + 1]
        lo, hi = int(row_ptr[r0]), int(row_ptr[r1])
        h, e = serve_csr(fn, state, keys[lo:hi], row_ptr[r0:r1 + 1] - lo, row_time[r0:r1], 40)
        hits += h
        evictions += e
    assert (hits, evictions) == whole
    assert meaning(state) == meaning(whole_state)
    assert 0 < sum(hits) < len(hits)


@pytest.mark.parametrize("stack_ratio", [0.0, 2.0])
def test_lirs_loop_over_one_more_key_than_fits(stack_ratio: float) -> None:
    # Capacity 4 (3 LIR, 1 HIR) over a loop of 5 keys, 200 one-key rows (a long run): after the
    # first pass 0, 1 and 2 stay LIR and hit, 3 and 4 take turns in the one HIR slot and miss
    # (LRU would hit nothing). 117 hits = 3 per pass after the first; every miss after the first
    # four evicts.
    rows = [[k] for _ in range(40) for k in range(5)]
    hits, evictions = three_ways(rows, 4, 5, {"hir_ratio": 0.25, "stack_ratio": stack_ratio})[:2]
    assert sum(hits) == 117 and evictions == 200 - 117 - 4
    assert hits[5:10] == [1, 1, 1, 0, 0]


def test_lirs_log_compaction_keeps_order() -> None:
    # Two keys hit in turn for many rows: every hit appends a log entry and leaves a stale one, so
    # the logs fill and compact many times; the state must still read the same as the lists'.
    rows = [[k % 2] for k in range(5000)] + [[2], [3], [0], [4]]
    hits, _ = three_ways(rows, 3, 5, {"hir_ratio": 0.34})[:2]
    assert sum(hits) == 4998 + 1


# ---- the one-key fast path: hand-made rows, runs around the log threshold --------------------

def test_lirs_stack_bound_drops_the_oldest_non_resident_entries() -> None:
    # stack_ratio 1 bounds S at C entries; a scan over many keys fills S with non-resident HIR
    # entries that the bound must drop, with the fast loop exactly as with the per-access loop.
    rows = [[k % 3] for k in range(30)] + [[k] for k in range(3, 40)] + [[k % 3] for k in range(30)]
    hits, _ = three_ways(rows, 4, 40, {"stack_ratio": 1.0})[:2]
    # the three LIR keys 0 1 2 (Llirs = 3) survive the scan: all their later requests hit
    assert hits[-30:] == [1] * 30
    state = new_state(4, 40, {"stack_ratio": 1.0})
    serve(lirs.replay, state, rows, 40)
    assert state[-1][lirs.N_S] <= 4


def test_lirs_miss_in_stack_becomes_lir() -> None:
    # C=3 (Llirs 2, Lhirs 1). 0 1 are LIR; 2 is HIR in S and Q; 3 evicts 2 (non-resident, still in
    # S); 2 again: a miss found in S, so it becomes LIR on top and the bottom LIR (0) is demoted to Q.
    rows = [[k] for k in [0, 1, 2, 3, 2]]
    hits, evictions = three_ways(rows, 3, 4)[:2]
    assert hits == [0] * 5 and evictions == 2
    state = new_state(3, 4, None)
    serve(lirs.replay, state, rows, 4)
    flags = state[4]
    assert flags[0].tolist() == [1, 1, 1, 0]  # resident: 0 1 2 (3 was evicted by 2's miss)
    assert flags[1].tolist() == [0, 1, 1, 0]  # LIR: 1 2


@pytest.mark.parametrize("params", [{}, {"stack_ratio": 1.0}, {"stack_ratio": 0.0}, {"hir_ratio": 0.3}])
def test_lirs_runs_around_the_log_threshold(params: dict[str, float]) -> None:
    # 30 keys: a run of one-key rows of at least 30 + 64 = 94 rows goes to the logs, a shorter one
    # stays on the lists. Runs of 93, 94 and 95 rows and single rows, each followed by a wide row,
    # switch between the three loops with the state carried through.
    rng = np.random.default_rng(4)
    rows: list[list[int]] = []
    for length in (93, 94, 95, 1, 0, 300, 5):
        rows += [[int(k)] for k in np.minimum(rng.zipf(1.4, length), 30) - 1]
        rows.append(rng.choice(30, 3, replace=False).tolist())
    hits, evictions = three_ways(rows, 6, 30, params)[:2]
    assert evictions == len(hits) - sum(hits) - 6


@pytest.mark.parametrize("params", [{"stack_ratio": 1.0}, {"stack_ratio": 0.0}, {"hir_ratio": 0.3}])
def test_lirs_long_skewed_stream_with_knobs(params: dict[str, float]) -> None:
    # 6000 requests over 300 keys: the logs of S, Q and the non-resident list fill and compact many
    # times; the bound on S (or its absence) and a large Q change which entries go stale.
    rng = np.random.default_rng(12)
    rows = [[int(k)] for k in np.minimum(rng.zipf(1.2, 6000), 300) - 1]
    hits, _ = three_ways(rows, 20, 300, params)[:2]
    assert 0 < sum(hits) < len(rows)
