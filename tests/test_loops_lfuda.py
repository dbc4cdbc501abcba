"""LFU-DA's stream loop (runs of one-key rows on packed priorities): the same hits, evictions and final
state (heap arrays, positions, frequencies, counters) as the shared per-access loop, also where it
hands over to the pairs (a K or a sequence number without a packed form), between blocks, after
guarded rows that left the age high, and next to runs too short to pack for."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from moesim.sim.policies import lfuda as lfuda_mod
from moesim.sim.policies import reference_rows
from moesim.sim.row_loop import row_loop
from numba import njit
from policy_support import csr, random_rows

CAP = 5


@njit
def _by_access(state, keys, row_ptr, row_time, next_use, num_keys, hits_out):
    return row_loop(lfuda_mod.access, state, keys, row_ptr, row_time, next_use, num_keys, hits_out)


def mixed_rows(seed: int, run: int) -> list[list[int]]:
    """Blocks of rows up to 4 keys wide (guarded victims) alternating with runs of one-key rows."""
    rows: list[list[int]] = []
    for b in range(4):
        rows += random_rows(seed * 10 + b, 60, 30, 4) + random_rows(seed * 10 + b + 5, run, 30, 1)
    return rows


def k_drops_in_one_key_rows(rows: list[list[int]], cap: int) -> int:
    """How many hits in one-key rows get a smaller K than they had (the age fell since the key's
    last access), as the reference counts K."""
    freq: dict[int, int] = {}
    prio: dict[int, int] = {}
    last: dict[int, int] = {}
    age = n = drops = 0
    for row in rows:
        for k in row:
            if k in freq:
                freq[k] += 1
                drops += len(row) == 1 and age + freq[k] < prio[k]
            else:
                if len(freq) >= cap:
                    victim = min((v for v in freq if v not in row), key=lambda v: (prio[v], last[v]))
                    age = prio[victim]
                    del freq[victim], prio[victim]
                freq[k] = 1
            prio[k] = age + freq[k]
            last[k] = n
            n += 1
    return drops


def both_loops(rows: list[list[int]], cap: int, num_keys: int, age: int = 0, seq: int = 0,
               cuts: tuple[int, ...] = ()) -> tuple[list[int], int, tuple]:
    """``replay`` (in blocks split at ``cuts``) and the per-access loop from the same start (age
    ``age``, next sequence number ``seq``) must leave equal hits, evictions and state."""
    keys, row_ptr, row_time = csr(rows)
    empty = np.zeros(0, np.int64)
    states = []
    for loop in ("replay", "by_access"):
        state = lfuda_mod.make_state(cap, num_keys, {}, 0)
        state[-1][0] = seq
        state[-1][2] = age
        hits = np.zeros(len(keys), np.uint8)
        if loop == "by_access":
            evictions = _by_access(state, keys, row_ptr, row_time, empty, num_keys, hits)
        else:
            evictions = 0
            bounds = [0, *cuts, len(rows)]
            for r0, r1 in itertools.pairwise(bounds):
                lo, hi = int(row_ptr[r0]), int(row_ptr[r1])
                evictions += lfuda_mod.replay(state, keys[lo:hi], row_ptr[r0:r1 + 1] - lo, row_time[r0:r1], empty,
                                              num_keys, hits[lo:hi])
        states.append((hits.tolist(), int(evictions), state))
    (h1, e1, s1), (h2, e2, s2) = states
    assert h1 == h2 and e1 == e2
    for a, b in zip(s1, s2, strict=True):
        assert a.tolist() == b.tolist()
    return h1, e1, s1


@pytest.mark.parametrize(("seed", "cap"), [(0, 4), (3, 5), (5, 4), (7, 31)])
def test_one_key_stream_equals_per_access_loop_and_reference(seed: int, cap: int) -> None:
    rows = random_rows(seed, 3000, 60, 1)
    hits, evictions, state = both_loops(rows, cap, 60)
    ref, ev_ref = reference_rows("lfuda", *csr(rows), cap, 60)
    assert hits == ref.tolist() and evictions == ev_ref
    assert 0 < sum(hits) < len(hits) and evictions == len(hits) - sum(hits) - cap
    hk, hp, hq, pos = state[:4]
    for i in range(1, cap):  # still a binary heap
        assert (hp[(i - 1) >> lfuda_mod.SHIFT], hq[(i - 1) >> lfuda_mod.SHIFT]) < (hp[i], hq[i])
    assert [int(pos[hk[i]]) for i in range(cap)] == list(range(cap))


@pytest.mark.parametrize(("seed", "cap"), [(0, 5), (3, 4), (5, 4), (2, 8)])
def test_stream_after_guarded_rows_where_k_falls(seed: int, cap: int) -> None:
    # Wide rows evict above the smallest K (their own keys are guarded), so the age can fall again
    # inside a one-key run: hits there lower their K, and the stream loop must move them up.
    rows = mixed_rows(seed, 150)
    assert k_drops_in_one_key_rows(rows, cap) > 0
    hits, evictions, _ = both_loops(rows, cap, 30)
    ref, ev_ref = reference_rows("lfuda", *csr(rows), cap, 30)
    assert hits == ref.tolist() and evictions == ev_ref


@pytest.mark.parametrize("run", [1, lfuda_mod.STREAM_MIN - 1, lfuda_mod.STREAM_MIN, lfuda_mod.STREAM_MIN + 1])
def test_runs_around_the_stream_threshold(run: int) -> None:
    # Runs too short to pack for go through the row loop, longer ones through the stream loop.
    both_loops(mixed_rows(1, run), 6, 30)


def test_state_carries_between_blocks_cut_inside_runs() -> None:
    rows = mixed_rows(4, 200)  # runs of 200 one-key rows start at rows 60, 320, 580, 840
    whole, ev_whole, s_whole = both_loops(rows, 5, 30)
    cut, ev_cut, s_cut = both_loops(rows, 5, 30, cuts=(100, 170, 300, 700, 1039))
    assert cut == whole and ev_cut == ev_whole
    assert all(a.tolist() == b.tolist() for a, b in zip(s_cut, s_whole, strict=True))


def test_stream_hands_over_to_pairs_when_k_outgrows_the_packed_form() -> None:
    # An age just below K_MAX: the stream loop starts (everything packs), then the first K above
    # K_MAX stops it before that access changes anything, and the rest runs on the pairs.
    rows = random_rows(14, 600, 30, 1)
    _, _, state = both_loops(rows, 6, 30, age=lfuda_mod.K_MAX - 40)
    assert int(state[1][:6].max()) > lfuda_mod.K_MAX and int(state[-1][2]) > lfuda_mod.K_MAX - 40
    # A first insertion whose K would be K_MAX + 1, and (one slot) an eviction of a root at K_MAX.
    both_loops(rows, 6, 30, age=lfuda_mod.K_MAX)
    _, _, state = both_loops(rows, 1, 30, age=lfuda_mod.K_MAX - 1)
    assert int(state[-1][2]) > lfuda_mod.K_MAX  # the age passed K_MAX: a root at K_MAX was evicted


def test_unpackable_start_runs_on_pairs() -> None:
    # An age above K_MAX, or sequence numbers that would pass 2 ** 32: no packing at all.
    rows = random_rows(15, 500, 30, 1)
    both_loops(rows, 6, 30, age=1 << 40)
    both_loops(rows, 6, 30, seq=(1 << 32) - 300)
    both_loops(rows, 6, 30, seq=(1 << 32) - 1 - 500)  # the last sequence number that packs


def test_capacity_zero_stream_only_misses() -> None:
    rows = random_rows(16, 200, 10, 1)
    hits, evictions, state = both_loops(rows, 0, 10)
    assert sum(hits) == 0 and evictions == 0 and int(state[4][0]) == 0
