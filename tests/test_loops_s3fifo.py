"""S3-FIFO's loop over rows of any width (``_serve_rows``): guarded keys skipped in place by both
walks, the second eviction round, the every-resident-guarded error, one-key and wide rows mixed,
the state carried between calls; exact hits on hand-made rows, and on random row traces ``replay``
== ``replay_by_access`` == ``reference`` with the same state left behind. Then the one-key fast
path (no guard: small promoting everything, an empty main, ghost hits) and its ring buffers. The
checks S3-FIFO shares with LIRS are in test_loops_s3fifo_lirs.py."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moesim.sim.policies import s3fifo
from policy_support import (
    check_rows_and_cut,
    new_policy_state,
    serve,
    serve_in_parts,
    three_ways_state,
    wide_rows,
)
from policy_support import (
    s3fifo_meaning as meaning,
)

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LOOPS = {"replay": s3fifo.replay, "replay_by_access": s3fifo.replay_by_access}


def new_state(cap: int, num_keys: int, params: dict[str, Any] | None) -> tuple:
    return new_policy_state(s3fifo, cap, num_keys, params)


def three_ways(rows: list[list[int]], cap: int, num_keys: int,
               params: dict[str, Any] | None = None) -> tuple[list[int], int, list]:
    return three_ways_state(s3fifo, meaning, rows, cap, num_keys, params)


# ---- hand-made rows ------------------------------------------------------------------------------

def test_small_full_of_guarded_keys_lets_main_evict() -> None:
    # C=4: small 2, main 2, promotion at freq 2. [0] [1] fill small; [2] [3] find it full before
    # any eviction and go to main. Row [0 1 4]: 0 and 1 hit (freq 1); 4 misses with main at its
    # share, so small walks, but both its entries are guarded: main evicts 2 (freq 0) instead, and
    # 4 joins small behind 0 1. [2]: small walks again, 0 (freq 1) goes into the ghost.
    rows = [[0], [1], [2], [3], [0, 1, 4], [2]]
    hits, evictions, (small, main, ghost, _, freq, cnt) = three_ways(rows, 4, 5, {"small_ratio": 0.5})
    assert hits == [0, 0, 0, 0, 1, 1, 0, 0] and evictions == 2
    assert (small, main, ghost) == ([1, 4, 2], [3], [0])
    assert freq[1] == 1 and cnt[s3fifo.N_SMALL] == 3 and cnt[s3fifo.N_MAIN] == 1


def test_small_walk_passes_a_guarded_front_in_place() -> None:
    # Same start. Row [0 4]: 0 hits; 4's small walk passes the guarded 0 and evicts 1 (freq 0) into
    # the ghost, so 0 stays the front of small. [5]: now 0 (freq 1 < 2) is evicted.
    rows = [[0], [1], [2], [3], [0, 4], [5]]
    hits, evictions, (small, main, ghost, *_) = three_ways(rows, 4, 6, {"small_ratio": 0.5})
    assert hits == [0, 0, 0, 0, 1, 0, 0] and evictions == 2
    assert (small, main, ghost) == ([4, 5], [2, 3], [1, 0])


def test_main_walk_passes_guarded_keys_in_place() -> None:
    # C=3: small 1, main 2, ghost 2. [0] small; [1] [2] main. [3]: small evicts 0 into the ghost.
    # [0]: a ghost hit; small evicts 3 (ghost [3]); 0 enters main [1 2 0], over its share. [0] hits
    # (freq 1). Row [1 2 4]: 1 and 2 hit (freq 1); 4 makes main walk: 1 and 2 are guarded and keep
    # their places and counters; 0 (freq 1) is reinserted with 0, the walk comes round and evicts it.
    rows = [[0], [1], [2], [3], [0], [0], [1, 2, 4]]
    hits, evictions, (small, main, ghost, where, freq, _) = three_ways(rows, 3, 5)
    assert hits == [0, 0, 0, 0, 0, 1, 1, 1, 0] and evictions == 3
    assert (small, main, ghost) == ([4], [1, 2], [3])
    assert freq[1] == freq[2] == 1 and where[0] == s3fifo.NONE


def test_second_round_evicts_what_small_promoted() -> None:
    # C=4: small 2, main 2, ghost 3, promotion at freq 1. [0] [1] small; [2] [3] main. [4]: small
    # evicts 0 (ghost [0]). [0]: a ghost hit; small evicts 1 (ghost [1]); main [2 3 0], over its
    # share. [4] hits (freq 1). Row [2 3 0 5]: hits, then 5 misses: main goes first but is all
    # guarded; small promotes 4 to main and is empty; the second round walks main again and
    # evicts 4 (freq 0 after the promotion). 5 joins small.
    rows = [[0], [1], [2], [3], [4], [0], [4], [2, 3, 0, 5]]
    params = {"small_ratio": 0.5, "move_threshold": 1}
    hits, evictions, (small, main, ghost, where, *_) = three_ways(rows, 4, 6, params)
    assert hits == [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0] and evictions == 3
    assert (small, main, ghost) == ([5], [2, 3, 0], [1])
    assert where[4] == s3fifo.NONE


@pytest.mark.parametrize("loop", list(LOOPS))
def test_every_resident_guarded_raises_and_keeps_the_counters(loop: str) -> None:
    # C=2: 0 small, 1 main; row [0 1 2] guards both, so 2 finds no victim. Both loops stop there
    # with the same state (the counters written back).
    rows = [[0], [1], [0, 1, 2]]
    state = new_state(2, 3, None)
    with pytest.raises(ValueError, match="every resident is guarded"):
        serve(LOOPS[loop], state, rows, 3)
    small, main, ghost, _, freq, cnt = meaning(state)
    assert (small, main, ghost) == ([0], [1], [])
    assert freq[:2] == [1, 1] and cnt[s3fifo.N_SMALL] == 1 and cnt[s3fifo.N_MAIN] == 1


def test_error_after_a_ghost_hit_leaves_the_same_state() -> None:
    # C=2, ghost 1: [0] small, [1] main; [2] evicts 0 into the ghost. Row [1 2 0]: 1 and 2 hit, 0 is
    # a ghost hit (taken off the ghost) and then finds 1 and 2 guarded.
    rows = [[0], [1], [2], [1, 2, 0]]
    states = []
    for fn in LOOPS.values():
        state = new_state(2, 3, None)
        with pytest.raises(ValueError, match="every resident is guarded"):
            serve(fn, state, rows, 3)
        states.append(meaning(state))
    assert states[0] == states[1]
    assert states[0][2] == [] and states[0][5][s3fifo.N_GHOST] == 0


def test_one_key_and_wide_rows_mixed_with_long_runs_and_cuts() -> None:
    # C=8, ghost 7: one-key runs of at least 8 + 7 + 64 = 79 rows go to the rings, shorter ones
    # and wide rows to the row loop. Served in one call and cut into several calls (the state
    # carried across), with the same hits, evictions and state as the per-access loop.
    rng = np.random.default_rng(7)
    rows: list[list[int]] = []
    for length in (3, 0, 78, 79, 120, 1, 0, 5):
        rows += [[int(k)] for k in rng.integers(0, 30, length)]
        for _ in range(int(rng.integers(1, 6))):
            rows.append(rng.choice(30, int(rng.integers(2, 5)), replace=False).tolist())
    hits, evictions, final = three_ways(rows, 8, 30)
    assert evictions == len(hits) - sum(hits) - 8
    for cuts in ([0, 1, 4, 90, 91, 200, len(rows)], [0, 85, 170, 250, len(rows)]):
        state = new_state(8, 30, None)
        assert serve_in_parts([s3fifo.replay], state, rows, cuts, 30) == (hits, evictions)
        assert meaning(state) == final


# ---- random rows ---------------------------------------------------------------------------------

KNOBS = st.fixed_dictionaries({"small_ratio": st.sampled_from([0.1, 0.3, 0.5]),
                               "ghost_ratio": st.sampled_from([0.0, 0.9, 2.0]),
                               "move_threshold": st.integers(1, 3), "prefill_main": st.booleans()})


@SETTINGS
@given(data=wide_rows(), cap=st.integers(2, 12), params=KNOBS, cut=st.floats(0.0, 1.0))
def test_row_loop_equals_per_access_and_reference(data, cap: int, params: dict[str, Any], cut: float) -> None:
    rows, num_keys = data
    check_rows_and_cut(s3fifo, meaning, rows, cap, num_keys, params, cut)


# ---- the one-key fast path: hand-made rows, runs around the ring threshold -------------------

def test_s3fifo_small_promotes_everything_then_main_evicts() -> None:
    # C=4, small 2 (ratio 0.5), main 2, threshold 1, no prefill, no ghost. Every miss goes to small:
    # [0 1 2 3]; 0 1 2 3 hit (freq 1 each). 4: main (empty) is not over its share and small is not
    # empty, so small walks: 0 1 2 3 all reach the threshold and move to main (freq 0); small is
    # empty, so main evicts its oldest, 0; small [4]. 0: main [1 2 3] is over its share, it evicts 1;
    # small [4 0]. 1: main [2 3] is not over its share, small evicts 4; small [0 1].
    rows = [[k] for k in [0, 1, 2, 3, 0, 1, 2, 3, 4, 0, 1]]
    params = {"small_ratio": 0.5, "move_threshold": 1, "prefill_main": False, "ghost_ratio": 0.0}
    hits, evictions = three_ways(rows, 4, 5, params)[:2]
    assert hits == [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0] and evictions == 3
    state = new_state(4, 5, params)
    serve(s3fifo.replay, state, rows, 5)
    where = state[2]
    assert where.tolist() == [s3fifo.SMALL, s3fifo.SMALL, s3fifo.MAIN, s3fifo.MAIN, s3fifo.NONE]


def test_s3fifo_ghost_hit_goes_to_main() -> None:
    # C=4, small 1 (ratio 0.1), ghost 3 (0.9 * 4 -> 3), no prefill: 0 1 2 3 fill small. 4: main is
    # empty and small is not, so small evicts 0 (freq 0) into the ghost. 0: a ghost hit (ghost []),
    # small evicts 1 (ghost [1]) and 0 goes to main. 1: a ghost hit too (ghost []), small evicts 2
    # (ghost [2]); main [0 1], small [3 4].
    rows = [[k] for k in [0, 1, 2, 3, 4, 0, 1]]
    params = {"prefill_main": False}
    hits, evictions = three_ways(rows, 4, 5, params)[:2]
    assert hits == [0] * 7 and evictions == 3
    state = new_state(4, 5, params)
    serve(s3fifo.replay, state, rows, 5)
    where = state[2]
    assert where.tolist() == [s3fifo.MAIN, s3fifo.MAIN, s3fifo.GHOST, s3fifo.SMALL, s3fifo.SMALL]


def test_s3fifo_runs_around_the_ring_threshold() -> None:
    # C=8, ghost 7: a run of one-key rows of at least C + ghost + 64 = 79 rows goes to the ring
    # buffers, a shorter one stays on the lists. Runs of 78, 79 and 80 rows and single rows, each
    # followed by a wide row, switch between the three loops with the state carried through.
    rng = np.random.default_rng(3)
    rows: list[list[int]] = []
    for length in (78, 79, 80, 1, 0, 200, 5):
        rows += [[int(k)] for k in rng.integers(0, 30, length)]
        rows.append(rng.choice(30, 3, replace=False).tolist())
    hits, evictions = three_ways(rows, 8, 30)[:2]
    assert evictions == len(hits) - sum(hits) - 8


@pytest.mark.parametrize("ghost", [0.0, 0.9, 3.0])
def test_s3fifo_ghost_hits_on_a_long_stream(ghost: float) -> None:
    # A loop over 11 keys with C=8 misses again and again; with a ghost, most misses are ghost hits
    # that leave stale entries in the ring, which is compacted many times over 3000 requests.
    rows = [[k % 11] for k in range(3000)] + [[k % 5] for k in range(500)]
    hits, _ = three_ways(rows, 8, 11, {"ghost_ratio": ghost})[:2]
    assert sum(hits[-400:]) == 400  # 5 keys fit in the cache: the tail of the second loop hits
