"""The specialised row loops of FIFO, CLOCK, SIEVE and Random: each ``replay`` gives exactly what the
shared per-access loop over ``access`` gives and what the plain-Python ``reference`` gives, leaves a
state that ``access`` reads the same way, and handles the cases its data structure makes special
(ring wrap-around and compaction, holes behind a guarded key, bit words, one-key streams)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moesim.sim.policies import clock, fifo, replay_rows, sieve
from moesim.sim.policies import random as random_policy
from policy_support import csr, row_traces, serve_csr, three_ways

POLICIES = {"fifo": fifo, "clock": clock, "sieve": sieve, "random": random_policy}
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NO_NEXT = np.zeros(0, np.int64)


@pytest.mark.parametrize("name", list(POLICIES))
@SETTINGS
@given(data=row_traces(), extra=st.integers(0, 6), seed=st.integers(0, 2**32))
def test_replay_equals_per_access_and_reference(name: str, data, extra: int, seed: int) -> None:
    rows, num_keys = data
    three_ways(POLICIES[name], rows, max(len(r) for r in rows) + extra, num_keys, seed=seed)


@pytest.mark.parametrize("name", list(POLICIES))
@SETTINGS
@given(data=row_traces(max_rows=120), extra=st.integers(0, 4), cut=st.floats(0.0, 1.0), seed=st.integers(0, 99))
def test_state_left_by_replay_reads_the_same_through_access(name: str, data, extra: int, cut: float,
                                                            seed: int) -> None:
    # Replay a prefix with the fast loop on one state and with the per-access loop on another, then
    # the rest with the other loop on each: the state each leaves must mean the same cache.
    rows, num_keys = data
    module = POLICIES[name]
    cap = max(len(r) for r in rows) + extra
    c = int(cut * len(rows))
    a_keys, a_ptr, a_time = csr(rows[:c])
    b_keys, b_ptr, b_time = csr(rows[c:])
    s1 = module.make_state(cap, num_keys, {}, seed)
    s2 = module.make_state(cap, num_keys, {}, seed)
    first = (serve_csr(module.replay, s1, a_keys, a_ptr, a_time, num_keys),
             serve_csr(module.replay_by_access, s2, a_keys, a_ptr, a_time, num_keys))
    second = (serve_csr(module.replay_by_access, s1, b_keys, b_ptr, b_time, num_keys),
              serve_csr(module.replay, s2, b_keys, b_ptr, b_time, num_keys))
    assert first[0] == first[1] and second[0] == second[1]
    whole, ev = replay_rows(module, *csr(rows), cap, num_keys, seed=seed)
    assert first[0][0] + second[0][0] == whole.tolist() and first[0][1] + second[0][1] == ev


@pytest.mark.parametrize("name", list(POLICIES))
def test_rows_as_wide_as_the_cache(name: str) -> None:
    # Capacity 4, rows of 4 fresh keys: each row evicts the whole previous row (nothing else is
    # there), and a repeated row hits in full.
    rows = [[0, 1, 2, 3], [4, 5, 6, 7], [4, 5, 6, 7], [3, 2, 1, 0], [8, 9, 10, 11], [11, 10, 9, 8]]
    hits, evictions = three_ways(POLICIES[name], rows, 4, 12, seed=1)
    assert hits == [0] * 8 + [1] * 4 + [0] * 8 + [1] * 4
    assert evictions == 12


@pytest.mark.parametrize("name", list(POLICIES))
def test_one_key_stream_over_many_bit_words(name: str) -> None:
    # Capacities over 64 slots spread CLOCK's and SIEVE's bits over several words (the last one
    # partly used) and make FIFO's and SIEVE's rings wrap many times.
    rng = np.random.default_rng(11)
    skewed = np.minimum(rng.zipf(1.3, 6000), 300) - 1
    rows = [[int(k)] for k in skewed]
    distinct = len(set(skewed.tolist()))
    for cap in (65, 130, 200):
        hits, evictions = three_ways(POLICIES[name], rows, cap, 300, seed=2)
        # every miss inserts; all but the first ``min(cap, distinct)`` evict
        assert evictions == len(rows) - sum(hits) - min(cap, distinct)
        assert 0 < sum(hits) < len(rows)


def test_fifo_keeps_a_guarded_head_and_leaves_holes_behind_it() -> None:
    # Key 0 is in every row, so it stays the oldest entry (guarded, a hit) while each new key evicts
    # the one before it from behind it: hole after hole, until the 64-entry ring compacts.
    rows = [[0, 1 + k % 20] for k in range(600)]
    hits, evictions = three_ways("fifo", rows, 2, 21)
    assert hits == [0, 0] + [1, 0] * 599 and evictions == 599
    state = fifo.make_state(2, 21, {}, 0)
    serve_csr(fifo.replay, state, *csr(rows), 21)
    ring, resident, counters = state
    # 601 insertions into 64 entries: the ring compacted (0 never left the head); the window holds
    # 0 and the last new key (20), holes between them dropped at the last compaction or not yet.
    assert counters[0] == 0 and counters[1] < len(ring)
    window = [int(ring[q % len(ring)]) for q in range(counters[0], counters[1])]
    assert [k for k in window if k >= 0] == [0, 20]
    assert resident.tolist() == [1] + [0] * 19 + [1]


def test_fifo_ring_wraps_on_a_stream() -> None:
    # Capacity 3 over a cyclic stream of 5 keys: FIFO misses every request; 1000 requests go round
    # the smallest ring (64 entries) many times.
    rows = [[k % 5] for k in range(1000)]
    hits, evictions = three_ways("fifo", rows, 3, 5)
    assert sum(hits) == 0 and evictions == 997


def test_sieve_hand_restarts_from_the_oldest_after_evicting_the_newest() -> None:
    # Capacity 2. [0 1]; 0 hit (0 visited); 2: clear 0, evict 1 (the newest): the hand restarts from
    # the oldest; [0 2]; 3: 0 is unvisited now, evict it (a hand left past the newest, where 2 was
    # appended, would have evicted 2). Then 2 hits.
    hits, evictions = three_ways("sieve", [[0], [1], [0], [2], [3], [2]], 2, 4)
    assert hits == [0, 0, 1, 0, 0, 1] and evictions == 2


def test_clock_protected_slots_are_skipped_untouched() -> None:
    # Capacity 3: [0 1 2], bits 0:1 1:0 2:0. Row [3, 1, 2]: 1 and 2 are protected, 0's bit is set,
    # so the hand clears 0, passes 1 and 2 untouched and comes back to evict 0. Row [1, 2, 3] hits.
    hits, evictions = three_ways("clock", [[0], [1], [2], [0], [3, 1, 2], [1, 2, 3]], 3, 4)
    assert hits == [0, 0, 0, 1, 0, 1, 1, 1, 1, 1] and evictions == 1


def test_random_leaves_the_generator_where_access_leaves_it() -> None:
    rng = np.random.default_rng(4)
    rows = [[int(k)] for k in rng.integers(0, 30, 500)] + [rng.choice(30, 3, replace=False).tolist()
                                                          for _ in range(100)]
    keys, row_ptr, row_time = csr(rows)
    s1 = random_policy.make_state(6, 30, {}, 9)
    s2 = random_policy.make_state(6, 30, {}, 9)
    assert (serve_csr(random_policy.replay, s1, keys, row_ptr, row_time, 30)
            == serve_csr(random_policy.replay_by_access, s2, keys, row_ptr, row_time, 30))
    assert s1[3][0] == s2[3][0] and s1[0].tolist() == s2[0].tolist()


@pytest.mark.parametrize("name", ["clock", "sieve", "random", "fifo"])
def test_fused_steps_equal_rows(name: str) -> None:
    # replay_steps on a [T, L, K] chunk (pads anywhere) equals replay on the same rows.
    module = POLICIES[name]
    rng = np.random.default_rng(8)
    T, L, K, E = 40, 3, 4, 7
    chunk = np.full((T, L, K), -1, np.int16)
    for t in range(T):
        for layer in range(L):
            n = int(rng.integers(0, K + 1))
            chunk[t, layer, np.sort(rng.choice(K, n, replace=False))] = rng.choice(E, n, replace=False)
    rows = [[layer * E + int(e) for e in chunk[t, layer] if e >= 0] for t in range(T) for layer in range(L)]
    keys, row_ptr, row_time = csr(rows)
    hits, ev = replay_rows(module, keys, row_ptr, row_time, 6, L * E, seed=5)
    step_hits = np.zeros((T, L), np.int64)
    step_acc = np.zeros((T, L), np.int64)
    ev2 = module.replay_steps(module.make_state(6, L * E, {}, 5), chunk, E, step_hits, step_acc)
    widths = np.diff(row_ptr)
    assert step_acc.reshape(-1).tolist() == widths.tolist()
    assert step_hits.reshape(-1).tolist() == [int(hits[a:b].sum()) for a, b in itertools.pairwise(row_ptr)]
    assert int(ev2) == ev


def test_one_key_prefix_counts_leading_one_key_rows() -> None:
    # Rows of 0 and 2 keys inside a block of 64 keep the block's total at 64: each width counts.
    cases = (([1] * 200, 200), ([1] * 64 + [2] + [1] * 10, 64), ([1] * 130 + [0] + [2], 130),
             ([1] * 63 + [0, 2] + [1] * 100, 63), ([], 0), ([2], 0), ([0, 1], 0), ([1] * 127 + [0], 127))
    for widths, want in cases:
        row_ptr = np.r_[0, np.cumsum(widths)].astype(np.int64) + 5  # a block need not start at key 0
        assert clock.one_key_prefix(row_ptr) == want, widths
