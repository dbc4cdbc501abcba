"""The fast path's shortcuts (a policy's fused ``replay_steps`` reading the trace itself, pieces of
full rows served without gathering) give exactly what the plain CSR path gives
(``engine.run(..., path="rows")``: :func:`sim.rows.build_rows`, the policy's ``replay``, the scatter)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moesim.sim import engine
from moesim.sim.cache_setup import setup_cache
from moesim.sim.policies import get_policy, list_policies
from moesim.sim.rows import Layout, build_rows, dense_rows
from moesim.traces.trace import TraceMeta, make_trace

FUSED = [n for n in list_policies() if hasattr(get_policy(n), "replay_steps")]
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def traces(draw):
    """Traces whose rows are mostly full (so whole pieces take the dense shortcut), with pads
    anywhere in the others; rows of one key are frequent (the one-key stream loops)."""
    L, E = draw(st.integers(1, 4)), draw(st.integers(2, 9))
    K = draw(st.sampled_from([1, 1, 2, 3, 4]))
    K = min(K, E)
    T = draw(st.integers(1, 60))
    full = draw(st.floats(0.5, 1.0))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    experts = np.full((T, L, K), -1, np.int16)
    for t in range(T):
        for layer in range(L):
            n = K if rng.random() < full else int(rng.integers(0, K + 1))
            ids = rng.permutation(E)[:n]
            slots = np.sort(rng.permutation(K)[:n])  # pads anywhere in the row
            experts[t, layer, slots] = ids
    rid = np.cumsum(rng.random(T) < 0.1).astype(np.int64)
    phase = (rng.random(T) < 0.8).astype(np.int8)
    return make_trace(experts, TraceMeta("h", L, E, K), request_id=rid, phase=phase)


def test_lru_has_a_fused_path() -> None:
    assert "lru" in FUSED


@pytest.mark.parametrize("policy", list_policies())
@SETTINGS
@given(trace=traces(), extra=st.integers(0, 8), warmup=st.integers(0, 5), cold=st.booleans(),
       chunk=st.integers(1, 9), record=st.booleans(), seed=st.integers(0, 50))
def test_shortcuts_equal_the_plain_rows_path(policy: str, trace, extra: int, warmup: int, cold: bool, chunk: int,
                                             record: bool, seed: int) -> None:
    L, E = trace.num_layers, trace.num_experts
    cap = trace.width + extra + 1
    params = {"keys": list(range(min(cap, L * E)))} if policy == "static" else None
    setup = setup_cache(L, E, policy, cap, params=params, seed=seed, warmup_steps=warmup,
                        cold_start_per_request=cold)
    fast = engine.run(trace, setup, record=record, chunk_steps=chunk)
    plain = engine.run(trace, setup, record=record, chunk_steps=chunk, path="rows")
    assert fast.l1.to_dict() == plain.l1.to_dict()
    if record:
        assert np.array_equal(fast.l1.hit_mask, plain.l1.hit_mask)
        assert np.array_equal(fast.l1.step_hits, plain.l1.step_hits)


@settings(max_examples=60, deadline=None)
@given(trace=traces(), step0=st.integers(0, 1000), tie=st.sampled_from(["row", "reverse", "expert_id"]))
def test_dense_rows_are_build_rows(trace, step0: int, tie: str) -> None:
    """Where the dense form applies it is exactly what build_rows gives; it applies to every shared,
    unpinned piece without padding (in recorded order, or any order for rows of one key)."""
    ex = np.asarray(trace.experts)
    L, E, K = trace.num_layers, trace.num_experts, trace.width
    layout = Layout("shared", L, E, np.zeros(L * E, np.uint8), tie)
    dense = dense_rows(ex, step0, layout)
    assert (dense is not None) == (ex.size > 0 and bool((ex >= 0).all()) and (tie == "row" or K == 1))
    if dense is None:
        return
    block = build_rows(ex, step0, layout)
    keys, row_ptr, row_time, _ = block.instance(0)
    assert np.array_equal(dense[0], keys) and dense[0].dtype == keys.dtype
    assert np.array_equal(dense[1], row_ptr) and np.array_equal(dense[2], row_time)
    assert dense_rows(ex, step0, Layout("per_layer", L, E, np.zeros(L * E, np.uint8), tie)) is None
    pinned = np.zeros(L * E, np.uint8)
    pinned[0] = 1
    assert dense_rows(ex, step0, Layout("shared", L, E, pinned, tie)) is None
