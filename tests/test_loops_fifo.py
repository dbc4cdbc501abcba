"""FIFO's specialised row loop, its own cases: a guarded head with holes left behind it until the
ring compacts, and the ring wrapping round on a stream. The checks FIFO shares with CLOCK, SIEVE
and Random are in test_loops_fifo_clock_sieve_random.py."""

from __future__ import annotations

from moesim.sim.policies import fifo
from policy_support import csr, serve_csr, three_ways


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
