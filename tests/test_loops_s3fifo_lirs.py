"""The specialised row loops of S3-FIFO and LIRS, checked alike: each ``replay`` gives exactly what
the shared per-access loop over ``access`` (``replay_by_access``) gives and what the plain-Python
``reference`` gives, and leaves the very same state arrays behind, on random rows with knobs, rows
as wide as the cache and skewed one-key streams. The cases of one policy are in test_loops_s3fifo.py
and test_loops_lirs.py."""

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
