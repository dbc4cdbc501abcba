"""The specialised row loops of S3-FIFO and LIRS: each ``replay`` gives exactly what the shared
per-access loop over ``access`` (``replay_by_access``) gives and what the plain-Python ``reference``
gives, leaves the very same state arrays behind, and handles the cases its one-key fast path makes
special (no guard: small promoting everything, an empty main, ghost hits, the bound on S)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moesim.sim.policies import lirs, replay_rows, s3fifo
from policy_support import csr, lirs_meaning, new_policy_state, row_traces, s3fifo_meaning, serve_csr
from policy_support import three_ways as check_three_ways

POLICIES = {"s3fifo": s3fifo, "lirs": lirs}
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KNOBS = {
    "s3fifo": st.fixed_dictionaries({"small_ratio": st.sampled_from([0.1, 0.3, 0.5]),
                                     "ghost_ratio": st.sampled_from([0.0, 0.9, 2.0]),
                                     "move_threshold": st.integers(1, 3), "prefill_main": st.booleans()}),
    "lirs": st.fixed_dictionaries({"hir_ratio": st.sampled_from([0.01, 0.3, 0.6]),
                                   "stack_ratio": st.sampled_from([0.0, 1.0, 2.0])}),
}


MEANINGS = {"s3fifo": s3fifo_meaning, "lirs": lirs_meaning}


def three_ways(name: str, rows: list[list[int]], cap: int, num_keys: int,
               params: dict[str, Any] | None = None) -> tuple[list[int], int]:
    """replay, the per-access loop and the reference agree, and both loops leave the same state."""
    return check_three_ways(name, rows, cap, num_keys, params, meaning=MEANINGS[name])


@pytest.mark.parametrize("name", list(POLICIES))
@SETTINGS
@given(data=row_traces(), extra=st.integers(0, 6), knobs=st.data())
def test_replay_equals_per_access_and_reference(name: str, data, extra: int, knobs) -> None:
    rows, num_keys = data
    params = knobs.draw(KNOBS[name])
    three_ways(name, rows, max(2, max(len(r) for r in rows) + extra), num_keys, params)


@pytest.mark.parametrize("name", list(POLICIES))
@SETTINGS
@given(data=row_traces(max_rows=120), extra=st.integers(0, 4), cut=st.floats(0.0, 1.0))
def test_state_left_by_replay_reads_the_same_through_access(name: str, data, extra: int, cut: float) -> None:
    # A prefix with the fast loop on one state and with the per-access loop on another, then the
    # rest with the other loop on each: the same hits, the same state arrays, and the whole in one call.
    rows, num_keys = data
    module = POLICIES[name]
    cap = max(2, max(len(r) for r in rows) + extra)
    c = int(cut * len(rows))
    a, b = csr(rows[:c]), csr(rows[c:])
    s1, s2 = new_policy_state(module, cap, num_keys, None), new_policy_state(module, cap, num_keys, None)
    first = serve_csr(module.replay, s1, *a, num_keys), serve_csr(module.replay_by_access, s2, *a, num_keys)
    assert first[0] == first[1] and MEANINGS[name](s1) == MEANINGS[name](s2)
    second = serve_csr(module.replay_by_access, s1, *b, num_keys), serve_csr(module.replay, s2, *b, num_keys)
    assert second[0] == second[1] and MEANINGS[name](s1) == MEANINGS[name](s2)
    whole, ev = replay_rows(module, *csr(rows), cap, num_keys)
    assert first[0][0] + second[0][0] == whole.tolist() and first[0][1] + second[0][1] == ev


@pytest.mark.parametrize("name", list(POLICIES))
def test_rows_as_wide_as_the_cache(name: str) -> None:
    # Capacity 4, rows of 4 fresh keys: each row evicts the whole previous row (nothing else is
    # there), and a repeated row hits in full.
    rows = [[0, 1, 2, 3], [4, 5, 6, 7], [4, 5, 6, 7], [3, 2, 1, 0], [8, 9, 10, 11], [11, 10, 9, 8]]
    hits, evictions = three_ways(name, rows, 4, 12)
    assert hits == [0] * 8 + [1] * 4 + [0] * 8 + [1] * 4
    assert evictions == 12


@pytest.mark.parametrize("name", list(POLICIES))
def test_skewed_one_key_stream(name: str) -> None:
    # A long Zipf stream at several capacities: every miss inserts, all but the first ``min(cap,
    # distinct)`` evict; the three loops agree request by request.
    rng = np.random.default_rng(11)
    skewed = np.minimum(rng.zipf(1.3, 4000), 300) - 1
    rows = [[int(k)] for k in skewed]
    distinct = len(set(skewed.tolist()))
    for cap in (2, 17, 65, 130):
        hits, evictions = three_ways(name, rows, cap, 300)
        assert evictions == len(rows) - sum(hits) - min(cap, distinct)
        assert 0 < sum(hits) < len(rows)


def test_s3fifo_small_promotes_everything_then_main_evicts() -> None:
    # C=4, small 2 (ratio 0.5), main 2, threshold 1, no prefill, no ghost. Every miss goes to small:
    # [0 1 2 3]; 0 1 2 3 hit (freq 1 each). 4: main (empty) is not over its share and small is not
    # empty, so small walks: 0 1 2 3 all reach the threshold and move to main (freq 0); small is
    # empty, so main evicts its oldest, 0; small [4]. 0: main [1 2 3] is over its share, it evicts 1;
    # small [4 0]. 1: main [2 3] is not over its share, small evicts 4; small [0 1].
    rows = [[k] for k in [0, 1, 2, 3, 0, 1, 2, 3, 4, 0, 1]]
    params = {"small_ratio": 0.5, "move_threshold": 1, "prefill_main": False, "ghost_ratio": 0.0}
    hits, evictions = three_ways("s3fifo", rows, 4, 5, params)
    assert hits == [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0] and evictions == 3
    state = new_policy_state(s3fifo, 4, 5, params)
    serve_csr(s3fifo.replay, state, *csr(rows), 5)
    where = state[2]
    assert where.tolist() == [s3fifo.SMALL, s3fifo.SMALL, s3fifo.MAIN, s3fifo.MAIN, s3fifo.NONE]


def test_s3fifo_ghost_hit_goes_to_main() -> None:
    # C=4, small 1 (ratio 0.1), ghost 3 (0.9 * 4 -> 3), no prefill: 0 1 2 3 fill small. 4: main is
    # empty and small is not, so small evicts 0 (freq 0) into the ghost. 0: a ghost hit (ghost []),
    # small evicts 1 (ghost [1]) and 0 goes to main. 1: a ghost hit too (ghost []), small evicts 2
    # (ghost [2]); main [0 1], small [3 4].
    rows = [[k] for k in [0, 1, 2, 3, 4, 0, 1]]
    params = {"prefill_main": False}
    hits, evictions = three_ways("s3fifo", rows, 4, 5, params)
    assert hits == [0] * 7 and evictions == 3
    state = new_policy_state(s3fifo, 4, 5, params)
    serve_csr(s3fifo.replay, state, *csr(rows), 5)
    where = state[2]
    assert where.tolist() == [s3fifo.MAIN, s3fifo.MAIN, s3fifo.GHOST, s3fifo.SMALL, s3fifo.SMALL]


def test_lirs_stack_bound_drops_the_oldest_non_resident_entries() -> None:
    # stack_ratio 1 bounds S at C entries; a scan over many keys fills S with non-resident HIR
    # entries that the bound must drop, with the fast loop exactly as with the per-access loop.
    rows = [[k % 3] for k in range(30)] + [[k] for k in range(3, 40)] + [[k % 3] for k in range(30)]
    hits, _ = three_ways("lirs", rows, 4, 40, {"stack_ratio": 1.0})
    # the three LIR keys 0 1 2 (Llirs = 3) survive the scan: all their later requests hit
    assert hits[-30:] == [1] * 30
    state = new_policy_state(lirs, 4, 40, {"stack_ratio": 1.0})
    serve_csr(lirs.replay, state, *csr(rows), 40)
    assert state[-1][lirs.N_S] <= 4


def test_lirs_miss_in_stack_becomes_lir() -> None:
    # C=3 (Llirs 2, Lhirs 1). 0 1 are LIR; 2 is HIR in S and Q; 3 evicts 2 (non-resident, still in
    # S); 2 again: a miss found in S, so it becomes LIR on top and the bottom LIR (0) is demoted to Q.
    rows = [[k] for k in [0, 1, 2, 3, 2]]
    hits, evictions = three_ways("lirs", rows, 3, 4)
    assert hits == [0] * 5 and evictions == 2
    state = new_policy_state(lirs, 3, 4, None)
    serve_csr(lirs.replay, state, *csr(rows), 4)
    flags = state[4]
    assert flags[0].tolist() == [1, 1, 1, 0]  # resident: 0 1 2 (3 was evicted by 2's miss)
    assert flags[1].tolist() == [0, 1, 1, 0]  # LIR: 1 2


def test_s3fifo_runs_around_the_ring_threshold() -> None:
    # C=8, ghost 7: a run of one-key rows of at least C + ghost + 64 = 79 rows goes to the ring
    # buffers, a shorter one stays on the lists. Runs of 78, 79 and 80 rows and single rows, each
    # followed by a wide row, switch between the three loops with the state carried through.
    rng = np.random.default_rng(3)
    rows: list[list[int]] = []
    for length in (78, 79, 80, 1, 0, 200, 5):
        rows += [[int(k)] for k in rng.integers(0, 30, length)]
        rows.append(rng.choice(30, 3, replace=False).tolist())
    hits, evictions = three_ways("s3fifo", rows, 8, 30)
    assert evictions == len(hits) - sum(hits) - 8


@pytest.mark.parametrize("ghost", [0.0, 0.9, 3.0])
def test_s3fifo_ghost_hits_on_a_long_stream(ghost: float) -> None:
    # A loop over 11 keys with C=8 misses again and again; with a ghost, most misses are ghost hits
    # that leave stale entries in the ring, which is compacted many times over 3000 requests.
    rows = [[k % 11] for k in range(3000)] + [[k % 5] for k in range(500)]
    hits, _ = three_ways("s3fifo", rows, 8, 11, {"ghost_ratio": ghost})
    assert sum(hits[-400:]) == 400  # 5 keys fit in the cache: the tail of the second loop hits


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
    hits, evictions = three_ways("lirs", rows, 6, 30, params)
    assert evictions == len(hits) - sum(hits) - 6


@pytest.mark.parametrize("params", [{"stack_ratio": 1.0}, {"stack_ratio": 0.0}, {"hir_ratio": 0.3}])
def test_lirs_long_skewed_stream_with_knobs(params: dict[str, float]) -> None:
    # 6000 requests over 300 keys: the logs of S, Q and the non-resident list fill and compact many
    # times; the bound on S (or its absence) and a large Q change which entries go stale.
    rng = np.random.default_rng(12)
    rows = [[int(k)] for k in np.minimum(rng.zipf(1.2, 6000), 300) - 1]
    hits, _ = three_ways("lirs", rows, 20, 300, params)
    assert 0 < sum(hits) < len(rows)
