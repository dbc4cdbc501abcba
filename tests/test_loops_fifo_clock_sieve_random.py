"""The specialised row loops of FIFO, CLOCK, SIEVE and Random, checked alike: each ``replay`` gives
exactly what the shared per-access loop over ``access`` gives and what the plain-Python
``reference`` gives, leaves a state that ``access`` reads the same way, and handles rows as wide as
the cache, one-key streams over many bit words and fused steps. The cases of one policy (ring
wrap-around and compaction, holes behind a guarded key, the hand, the generator) are in
test_loops_fifo.py, test_loops_clock.py, test_loops_sieve.py and test_loops_random.py."""

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
