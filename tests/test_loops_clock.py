"""CLOCK's one-key stream loop (``clock._serve_stream``): it works on a private word per slot that holds
the key and the hand's turn of its reference bit, copied from the state and back on every call. Each
call of ``replay`` on one-key rows must give what the per-access loop over ``access`` gives, hits,
evictions and the whole state, whatever the state it starts from: an empty or partly filled cache,
the hand anywhere, bits set before and behind it, calls of a few accesses, more than 256 turns of the
hand in one call, sweeps that pass every slot. Then rows of any width: protected slots are passed
untouched. The checks CLOCK shares with FIFO, SIEVE and Random are in
test_loops_fifo_clock_sieve_random.py."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from moesim.sim.policies import clock
from policy_support import three_ways

NO_NEXT = np.zeros(0, np.int64)


def one_key_rows(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    keys = np.asarray(keys, np.int32)
    return keys, np.arange(len(keys) + 1, dtype=np.int64), np.arange(len(keys), dtype=np.int64)


def run_blocks(keys: np.ndarray, cuts: list[int], cap: int, num_keys: int) -> None:
    """Serve ``keys`` in blocks split at ``cuts`` through ``replay`` and through the per-access loop,
    checking the hits, evictions and state after every block."""
    fast = clock.make_state(cap, num_keys, {}, 0)
    slow = clock.make_state(cap, num_keys, {}, 0)
    bounds = [0, *sorted(cuts), len(keys)]
    for lo, hi in itertools.pairwise(bounds):
        k, row_ptr, row_time = one_key_rows(keys[lo:hi])
        hits_fast = np.zeros(len(k), np.uint8)
        hits_slow = np.zeros(len(k), np.uint8)
        ev_fast = clock.replay(fast, k, row_ptr, row_time, NO_NEXT, num_keys, hits_fast)
        ev_slow = clock.replay_by_access(slow, k, row_ptr, row_time, NO_NEXT, num_keys, hits_slow)
        assert hits_fast.tolist() == hits_slow.tolist(), (lo, hi)
        assert int(ev_fast) == int(ev_slow), (lo, hi)
        for a, b in zip(fast, slow, strict=True):
            assert a.tolist() == b.tolist(), (lo, hi)


@pytest.mark.parametrize("cap", [1, 2, 3, 7, 8, 9, 10, 63, 64, 65, 130])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stream_in_blocks_equals_per_access(cap: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    num_keys = cap + int(rng.integers(1, 2 * cap + 3))
    # skewed keys: some are hit often (long runs of set bits), others come and go
    keys = np.minimum(rng.zipf(1.3, 3000) - 1, num_keys - 1)
    cuts = [*rng.integers(0, len(keys), 12).tolist(), 1, 2, 3, cap // 2, cap, cap + 1]
    run_blocks(keys, cuts, cap, num_keys)


@pytest.mark.parametrize("cap", [2, 5, 9])
def test_more_than_256_turns_in_one_call(cap: int) -> None:
    """The turn is kept mod 256 in the words; a cache that misses on almost every access turns the
    hand thousands of times in one call."""
    rng = np.random.default_rng(cap)
    num_keys = 4 * cap
    keys = rng.integers(0, num_keys, 20000)
    keys[::7] = 0  # one key hit again and again keeps its bit set across turns
    run_blocks(keys, [], cap, num_keys)


def test_sweep_passes_every_slot_and_wraps() -> None:
    """Every bit set: the hand passes all the slots (clearing them) and takes the one it started at."""
    cap = 20
    keys = np.array(list(range(cap)) * 2 + [cap] + list(range(cap)) + [cap + 1, cap + 2], np.int64)
    run_blocks(keys, [], cap, cap + 3)
    run_blocks(keys, [cap + 5, 2 * cap, 2 * cap + 1, 2 * cap + 3], cap, cap + 3)


def test_calls_of_one_access_and_empty_calls() -> None:
    rng = np.random.default_rng(5)
    keys = rng.integers(0, 12, 200)
    run_blocks(keys, list(range(0, 200, 1)), 8, 12)


def test_stream_then_wide_rows_then_stream() -> None:
    """A block that starts with one-key rows and goes on with wider ones hands the state from the
    stream loop to the row loop within one call."""
    rng = np.random.default_rng(9)
    cap, num_keys = 16, 40
    rows: list[list[int]] = []
    for part in range(6):
        if part % 2 == 0:
            rows += [[int(k)] for k in rng.integers(0, num_keys, 150)]
        else:
            rows += [rng.choice(num_keys, int(rng.integers(2, 5)), replace=False).tolist() for _ in range(40)]
    flat = np.array([k for r in rows for k in r], np.int32)
    row_ptr = np.cumsum([0] + [len(r) for r in rows]).astype(np.int64)
    row_time = np.arange(len(rows), dtype=np.int64)
    fast = clock.make_state(cap, num_keys, {}, 0)
    slow = clock.make_state(cap, num_keys, {}, 0)
    hits_fast = np.zeros(len(flat), np.uint8)
    hits_slow = np.zeros(len(flat), np.uint8)
    ev_fast = clock.replay(fast, flat, row_ptr, row_time, NO_NEXT, num_keys, hits_fast)
    ev_slow = clock.replay_by_access(slow, flat, row_ptr, row_time, NO_NEXT, num_keys, hits_slow)
    assert hits_fast.tolist() == hits_slow.tolist()
    assert int(ev_fast) == int(ev_slow)
    for a, b in zip(fast, slow, strict=True):
        assert a.tolist() == b.tolist()


# ---- rows of any width --------------------------------------------------------------------------

def test_clock_protected_slots_are_skipped_untouched() -> None:
    # Capacity 3: [0 1 2], bits 0:1 1:0 2:0. Row [3, 1, 2]: 1 and 2 are protected, 0's bit is set,
    # so the hand clears 0, passes 1 and 2 untouched and comes back to evict 0. Row [1, 2, 3] hits.
    hits, evictions = three_ways("clock", [[0], [1], [2], [0], [3, 1, 2], [1, 2, 3]], 3, 4)
    assert hits == [0, 0, 0, 1, 0, 1, 1, 1, 1, 1] and evictions == 1
