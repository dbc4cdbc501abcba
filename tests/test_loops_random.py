"""Random's specialised row loop, its own case: it leaves the generator where the per-access loop
leaves it. The checks Random shares with FIFO, CLOCK and SIEVE are in
test_loops_fifo_clock_sieve_random.py."""

from __future__ import annotations

import numpy as np
from moesim.sim.policies import random as random_policy
from policy_support import csr, serve_csr


def test_random_leaves_the_generator_where_access_leaves_it() -> None:
    rng = np.random.default_rng(4)
    rows = [[int(k)] for k in rng.integers(0, 30, 500)] + [rng.choice(30, 3, replace=False).tolist()
                                                          for _ in range(100)]
    keys, row_ptr, row_time = csr(rows)
    s1 = random_policy.make_state(6, 30, {}, 9)
    s2 = random_policy.make_state(6, 30, {}, 9)
    assert (serve_csr(random_policy.replay, s1, keys, row_ptr, row_time, 30)
            == serve_csr(random_policy.replay_by_access, s2, keys, row_ptr, row_time, 30))
    assert s1[3][0] == s2[3][0] and s1[0].tolist() == s2[0].tolist()
