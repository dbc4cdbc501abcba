"""The specialised row loops of ARC and LRU, checked alike: each ``replay`` gives exactly what the
shared per-access loop over ``access`` (``replay_by_access``) gives and what the plain-Python
``reference`` gives, and leaves a state that means the same (the same lists in the same order), on
random rows with empty ones, skewed one-key streams (the fast path without guards) and a cyclic
scan. The cases of one policy are in test_loops_arc.py and test_loops_lru.py."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moesim.sim.policies import arc, lru, replay_rows
from policy_support import (
    arc_meaning,
    csr,
    lru_meaning,
    new_policy_state,
    row_traces,
    serve_csr,
    three_ways,
)

POLICIES = {"arc": arc, "lru": lru}
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


MEANINGS = {"arc": arc_meaning, "lru": lru_meaning}


@pytest.mark.parametrize("name", list(POLICIES))
@SETTINGS
@given(data=row_traces(empty_rows=True), extra=st.integers(0, 6))
def test_replay_equals_per_access_and_reference(name: str, data, extra: int) -> None:
    rows, num_keys = data
    three_ways(POLICIES[name], rows, max(1, max(len(r) for r in rows) + extra), num_keys, meaning=MEANINGS[name])


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
    assert first[0] == first[1] and MEANINGS[name](s1) == MEANINGS[name](s2)
    second = serve_csr(module.replay_by_access, s1, *b, num_keys), serve_csr(module.replay, s2, *b, num_keys)
    assert second[0] == second[1] and MEANINGS[name](s1) == MEANINGS[name](s2)
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
        hits, evictions = three_ways(POLICIES[name], rows, cap, 300, meaning=MEANINGS[name])
        assert evictions == len(rows) - sum(hits) - min(cap, distinct)
        assert 0 < sum(hits) < len(rows)


# ---- a cyclic scan --------------------------------------------------------------------------------

def test_arc_cyclic_scan() -> None:
    # A cyclic scan over C + 1 keys: LRU misses on every request, and so does ARC (every key leaves
    # T1 before its next request and finds no ghost to adapt on); every miss after the first C evicts.
    rows = [[k % 7] for k in range(700)]
    assert three_ways(arc, rows, 6, 7, meaning=arc_meaning) == ([0] * 700, 694)
    assert three_ways(lru, rows, 6, 7, meaning=lru_meaning) == ([0] * 700, 694)
