"""What every policy's ``replay`` owes the engine, which serves a trace in blocks on one state: no
rows change nothing, and a trace served in blocks (cut inside runs of one-key rows and of wide rows,
the keys passed as slices or at their absolute offsets) gives exactly what one call and the
plain-Python reference give."""

from __future__ import annotations

import itertools
from types import ModuleType

import numpy as np
import pytest
from moesim.sim.policies import (
    get_policy,
    list_policies,
    needs_next_use,
    reference_rows,
    replay_rows,
    resolve_policy_params,
)
from moesim.sim.rows import next_use_times
from policy_support import csr

NO_NEXT = np.zeros(0, np.int64)
SEED = 3  # Random draws from it; the other policies ignore it


def _knobs(module: ModuleType) -> dict | None:
    return {"keys": [0, 3]} if module.NAME == "static" else None


@pytest.mark.parametrize("name", list_policies())
def test_no_rows_is_nothing(name: str) -> None:
    module = get_policy(name)
    state = module.make_state(3, 5, resolve_policy_params(module, _knobs(module)), SEED)
    before = tuple(a.copy() for a in state)
    for row_ptr in (np.zeros(0, np.int64), np.zeros(1, np.int64), np.zeros(4, np.int64)):
        n = max(row_ptr.shape[0] - 1, 0)
        assert module.replay(state, np.zeros(0, np.int32), row_ptr, np.zeros(n, np.int64), NO_NEXT, 5,
                             np.zeros(0, np.uint8)) == 0
    assert all(np.array_equal(x, y) for x, y in zip(state, before, strict=True))


@pytest.mark.parametrize("name", list_policies())
def test_state_carries_across_blocks(name: str) -> None:
    # One-key rows, then rows of four, then one-key rows again (long runs: every stream path runs).
    rng = np.random.default_rng(5)
    rows = ([[int(k)] for k in rng.integers(0, 40, 300)]
            + [rng.choice(40, 4, replace=False).tolist() for _ in range(200)]
            + [[int(k)] for k in rng.integers(0, 40, 300)])
    keys, row_ptr, row_time = csr(rows)
    module = get_policy(name)
    knobs = _knobs(module)
    params = resolve_policy_params(module, knobs)
    nu = next_use_times(keys, row_ptr, row_time, 40) if needs_next_use(module) else NO_NEXT
    whole, ev = replay_rows(module, keys, row_ptr, row_time, 9, 40, params=knobs, seed=SEED, next_use=nu)
    ref, ref_ev = reference_rows(module, keys, row_ptr, row_time, 9, 40, params=knobs, seed=SEED, next_use=nu)
    assert whole.tolist() == ref.tolist() and ev == ref_ev
    assert 0 < whole.sum() < len(whole)
    # Blocks as slices (keys from 0 in each block), cut inside runs of both kinds.
    state = module.make_state(9, 40, params, SEED)
    out = np.zeros(len(keys), np.uint8)
    total = 0
    for a, b in itertools.pairwise([0, 150, 299, 301, 420, 500, 650, len(rows)]):
        lo, hi = int(row_ptr[a]), int(row_ptr[b])
        block_nu = nu[lo:hi] if len(nu) else NO_NEXT
        total += module.replay(state, keys[lo:hi], row_ptr[a:b + 1] - lo, row_time[a:b], block_nu, 40, out[lo:hi])
    assert out.tolist() == whole.tolist() and total == ev
    # Blocks at their absolute offsets in one CSR array (row_ptr not rebased).
    state = module.make_state(9, 40, params, SEED)
    out[:] = 0
    total = 0
    for a, b in itertools.pairwise([0, 299, 500, len(rows)]):
        total += module.replay(state, keys, row_ptr[a:b + 1], row_time[a:b], nu, 40, out)
    assert out.tolist() == whole.tolist() and total == ev
