"""The specialised row loops of LRU, ARC and 2Q, checked alike: each ``replay`` gives exactly what the
shared per-access loop over ``access`` (``replay_by_access``) gives and what the plain-Python
``reference`` gives, on rows of mixed widths (runs of one-key rows take a loop without row guards),
leaves a state that ``access`` reads the same way, and handles rows as wide as the cache or wider,
one-key streams and empty rows. The cases of one policy (LRU's ring compaction and stale entries,
victims skipped because the row guards them, a queue that holds only guarded keys) are in
test_loops_lru.py, test_loops_arc.py and test_loops_twoq.py."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moesim.sim.policies import arc, lru, replay_rows, twoq
from policy_support import csr, lru_order, new_policy_state, row_traces, serve_csr, three_ways

POLICIES = {"lru": lru, "arc": arc, "twoq": twoq}
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TWOQ_KNOBS = ({"kin_ratio": 0.25, "kout_ratio": 0.5}, {"kin_ratio": 0.5, "kout_ratio": 0.0},
              {"kin_ratio": 0.1, "kout_ratio": 2.0})



def same_cache(name: str, a: tuple, b: tuple) -> None:
    """Two states mean the same cache: LRU by recency order (its ring positions may differ, the
    fast loop skips stale entries eagerly); ARC and 2Q array for array (same list operations)."""
    if name == "lru":
        assert lru_order(a) == lru_order(b)
        return
    for x, y in zip(a, b, strict=True):
        assert x.tolist() == y.tolist()


@pytest.mark.parametrize("name", list(POLICIES))
@SETTINGS
@given(data=row_traces(), extra=st.integers(0, 6), knobs=st.sampled_from(TWOQ_KNOBS))
def test_replay_equals_per_access_and_reference(name: str, data, extra: int, knobs: dict[str, Any]) -> None:
    rows, num_keys = data
    three_ways(name, rows, max(len(r) for r in rows) + extra, num_keys, knobs if name == "twoq" else None)


@pytest.mark.parametrize("name", list(POLICIES))
@SETTINGS
@given(data=row_traces(max_rows=120), extra=st.integers(0, 4), cut=st.floats(0.0, 1.0))
def test_state_left_by_replay_reads_the_same_through_access(name: str, data, extra: int, cut: float) -> None:
    # Replay a prefix with the fast loop on one state and with the per-access loop on another, then
    # the rest with the other loop on each: both must mean the same cache after each part.
    rows, num_keys = data
    module = POLICIES[name]
    cap = max(len(r) for r in rows) + extra
    c = int(cut * len(rows))
    a = csr(rows[:c])
    b = csr(rows[c:])
    s1 = new_policy_state(module, cap, num_keys)
    s2 = new_policy_state(module, cap, num_keys)
    first = serve_csr(module.replay, s1, *a, num_keys), serve_csr(module.replay_by_access, s2, *a, num_keys)
    same_cache(name, s1, s2)
    second = serve_csr(module.replay_by_access, s1, *b, num_keys), serve_csr(module.replay, s2, *b, num_keys)
    same_cache(name, s1, s2)
    assert first[0] == first[1] and second[0] == second[1]
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
def test_one_key_stream_at_several_capacities(name: str) -> None:
    # A skewed stream of one-key rows (the flattened request stream): every miss inserts and all
    # but the first ``min(cap, distinct)`` evict; LRU's 64-entry ring compacts many times.
    rng = np.random.default_rng(11)
    skewed = np.minimum(rng.zipf(1.3, 5000), 300) - 1
    rows = [[int(k)] for k in skewed]
    distinct = len(set(skewed.tolist()))
    for cap in (1, 2, 17, 130):
        hits, evictions = three_ways(name, rows, cap, 300)
        assert evictions == len(rows) - sum(hits) - min(cap, distinct)
        assert 0 < sum(hits) < len(rows)


@pytest.mark.parametrize("name", list(POLICIES))
def test_capacity_below_the_row_width(name: str) -> None:
    # ARC and 2Q refuse a row wider than the cache in both loops; LRU's row loop lets the row
    # overflow (nothing outside it to evict) and keeps the same hits as its per-access loop.
    module = POLICIES[name]
    keys, row_ptr, row_time = csr([[0], [1], [2, 3, 4]])
    if name == "lru":
        hits, _ = serve_csr(module.replay, new_policy_state(module, 2, 5), keys, row_ptr, row_time, 5)
        assert hits == [0] * 5
        return
    for loop in (module.replay, module.replay_by_access):
        with pytest.raises(ValueError, match="every resident is guarded"):
            serve_csr(loop, new_policy_state(module, 2, 5), keys, row_ptr, row_time, 5)


@pytest.mark.parametrize("name", list(POLICIES))
def test_empty_rows_anywhere(name: str) -> None:
    # Empty rows (every key of a row pinned elsewhere, say) at the start, between rows and at the end
    # leave the cache alone; the row stamps still count them.
    rows = [[], [], [0], [], [1, 2], [], [], [3], [0, 3], [], [4], [1], []]
    with_empty = three_ways(name, rows, 3, 5)
    assert with_empty == three_ways(name, [r for r in rows if r], 3, 5)
