"""LRU's specialised row loop, its own cases: stale entries left by hits and the compaction of its
recency ring on a long stream, and a wide row that keeps its own keys. The checks LRU shares with
ARC and 2Q are in test_loops_lru_arc_twoq_guards.py and test_loops_arc_lru_streams.py."""

from __future__ import annotations

from moesim.sim.policies import lru
from policy_support import csr, lru_order, new_policy_state, serve_csr, three_ways


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
