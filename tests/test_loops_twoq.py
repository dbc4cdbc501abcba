"""2Q's specialised row loop, its own cases: A1in's oldest unguarded key going to A1out when the row
guards the older ones, and a fully guarded Am falling back to A1in. The checks 2Q shares with LRU
and ARC are in test_loops_lru_arc_twoq_guards.py."""

from __future__ import annotations

from moesim.sim.policies import twoq
from policy_support import csr, new_policy_state, serve_csr, three_ways


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
