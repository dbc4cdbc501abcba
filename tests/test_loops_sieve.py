"""SIEVE's specialised row loop, its own case: the hand restarting from the oldest entry after it
evicted the newest. The checks SIEVE shares with FIFO, CLOCK and Random are in
test_loops_fifo_clock_sieve_random.py."""

from __future__ import annotations

from policy_support import three_ways


def test_sieve_hand_restarts_from_the_oldest_after_evicting_the_newest() -> None:
    # Capacity 2. [0 1]; 0 hit (0 visited); 2: clear 0, evict 1 (the newest): the hand restarts from
    # the oldest; [0 2]; 3: 0 is unvisited now, evict it (a hand left past the newest, where 2 was
    # appended, would have evicted 2). Then 2 hits.
    hits, evictions = three_ways("sieve", [[0], [1], [0], [2], [3], [2]], 2, 4)
    assert hits == [0, 0, 1, 0, 0, 1] and evictions == 2
