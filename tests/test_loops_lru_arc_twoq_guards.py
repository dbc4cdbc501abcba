"""The specialised row loops of LRU, ARC and 2Q: each ``replay`` gives exactly what the shared
per-access loop over ``access`` (``replay_by_access``) gives and what the plain-Python ``reference``
gives, on rows of mixed widths (runs of one-key rows take a loop without row guards), leaves a state
that ``access`` reads the same way, and handles the cases its data structure makes special (LRU's
ring compaction and stale entries, victims skipped because the row guards them, a queue that holds
only guarded keys)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moesim.sim.policies import arc, lru, replay_rows, twoq
from policy_support import csr, new_policy_state, row_traces, serve_csr, three_ways

POLICIES = {"lru": lru, "arc": arc, "twoq": twoq}
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TWOQ_KNOBS = ({"kin_ratio": 0.25, "kout_ratio": 0.5}, {"kin_ratio": 0.5, "kout_ratio": 0.0},
              {"kin_ratio": 0.1, "kout_ratio": 2.0})


def lru_order(state: tuple) -> list[int]:
    """The resident keys of an LRU state, least recently used first (its current ring entries)."""
    ring, last, resident, st_ = state
    order = [int(ring[q % len(ring)]) for q in range(int(st_[0]), int(st_[1]))
             if last[ring[q % len(ring)]] == q]
    assert sorted(order) == np.flatnonzero(resident).tolist() and len(order) == st_[2]
    return order


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


def test_lru_stale_entries_and_compaction_on_a_stream() -> None:
    # Capacity 3: 0, 1, 2, then 1 and 2 alternate 1000 times. 0 stays the least recent (current)
    # entry at the head, so the stale entries the hits leave behind it pile up and the 64-entry ring
    # must compact. [3] then evicts 0, and [0] evicts 1 (1 < 2 < 3 in recency).
    rows = [[0], [1], [2]] + [[1 + k % 2] for k in range(1000)] + [[3], [0]]
    hits, evictions = three_ways("lru", rows, 3, 4)
    assert hits == [0, 0, 0] + [1] * 1000 + [0, 0] and evictions == 2
    state = new_policy_state(lru, 3, 4)
    serve_csr(lru.replay, state, *csr(rows), 4)
    # 1005 entries were appended; a tail position below that shows the ring was compacted
    assert lru_order(state) == [2, 3, 0] and state[3][1] < 1005


def test_lru_wide_row_keeps_its_own_keys() -> None:
    # Capacity 3, recency 0 < 1 < 2. Row [3, 0]: 0 is guarded, so 3 evicts 1, not 0; then 1 misses
    # and evicts 2 (recency 3 < 0 after the row).
    hits, evictions = three_ways("lru", [[0], [1], [2], [3, 0], [1]], 3, 4)
    assert hits == [0, 0, 0, 0, 1, 0] and evictions == 2


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


def test_twoq_by_hand_with_guards() -> None:
    # Capacity 4: Kin = 1, Kout = 2. [0] [1] [2] [3]: A1in = 0 1 2 3. Row [4, 0, 1]: A1in is over
    # Kin, its oldest unguarded key is 2 (0 and 1 are guarded): 2 to A1out; 0 and 1 hit. [2]: an
    # A1out hit, A1in over Kin: 0 goes to A1out, 2 into Am. [5]: 1 to A1out, which drops its
    # oldest (2 left it already, so 0 is the oldest and stays: A1out = 0 1).
    rows = [[0], [1], [2], [3], [4, 0, 1], [2], [5]]
    hits, evictions = three_ways("twoq", rows, 4, 6)
    assert hits == [0, 0, 0, 0, 0, 1, 1, 0, 0] and evictions == 3
    state = new_policy_state(twoq, 4, 6)
    serve_csr(twoq.replay, state, *csr(rows), 6)
    where, cnt = state[2], state[3]
    assert where.tolist() == [twoq.AOUT, twoq.AOUT, twoq.AM, twoq.AIN, twoq.AIN, twoq.AIN]
    assert cnt[:3].tolist() == [3, 2, 1]


def test_twoq_am_fully_guarded_falls_back_to_a1in() -> None:
    # Capacity 2, Kin = 1, Kout = 2. [0] [1]: A1in = 0 1. [2]: A1in over Kin, 0 to A1out. [0]: an
    # A1out hit, A1in over Kin: 1 to A1out, 0 into Am. [1]: an A1out hit, A1in = 2 is not over Kin:
    # Am's 0 goes (no ghost), 1 into Am. Row [1, 3]: 1 hits; for 3, A1in is not over Kin and Am holds
    # only the guarded 1, so A1in's 2 goes (to A1out).
    rows = [[0], [1], [2], [0], [1], [1, 3]]
    knobs = {"kin_ratio": 0.5, "kout_ratio": 1.0}
    hits, evictions = three_ways("twoq", rows, 2, 4, knobs)
    assert hits == [0, 0, 0, 0, 0, 1, 0] and evictions == 4
    state = new_policy_state(twoq, 2, 4, knobs)
    serve_csr(twoq.replay, state, *csr(rows), 4)
    assert state[2].tolist() == [twoq.NONE, twoq.AM, twoq.AOUT, twoq.AIN]


@pytest.mark.parametrize("name", list(POLICIES))
def test_empty_rows_anywhere(name: str) -> None:
    # Empty rows (every key of a row pinned elsewhere, say) at the start, between rows and at the end
    # leave the cache alone; the row stamps still count them.
    rows = [[], [], [0], [], [1, 2], [], [], [3], [0, 3], [], [4], [1], []]
    with_empty = three_ways(name, rows, 3, 5)
    assert with_empty == three_ways(name, [r for r in rows if r], 3, 5)
