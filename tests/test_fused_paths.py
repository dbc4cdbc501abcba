"""A policy's fused loop (reading the trace directly) gives exactly what the generic CSR path gives."""

from __future__ import annotations

import moesim.sim.replay as engine
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from moesim.sim.policies import get_policy, list_policies
from moesim.traces.trace import TraceMeta, make_trace

FUSED = [n for n in list_policies() if hasattr(get_policy(n), "replay_steps")]


@st.composite
def traces(draw):
    L, E = draw(st.integers(1, 4)), draw(st.integers(2, 9))
    K = draw(st.integers(1, min(4, E)))
    T = draw(st.integers(1, 60))
    experts = np.full((T, L, K), -1, np.int16)
    for t in range(T):
        for layer in range(L):
            n = draw(st.integers(0, K))
            ids = draw(st.permutations(range(E)))[:n]
            slots = sorted(draw(st.permutations(range(K)))[:n])  # pads anywhere in the row
            experts[t, layer, slots] = ids
    rid = np.cumsum(draw(st.lists(st.booleans(), min_size=T, max_size=T))).astype(np.int64)
    phase = np.asarray(draw(st.lists(st.integers(0, 1), min_size=T, max_size=T)), np.int8)
    return make_trace(experts, TraceMeta("h", L, E, K), request_id=rid, phase=phase)


def test_lru_has_a_fused_path() -> None:
    assert "lru" in FUSED


@pytest.mark.parametrize("policy", FUSED)
@settings(max_examples=60, deadline=None)
@given(trace=traces(), extra=st.integers(0, 8), warmup=st.integers(0, 5), cold=st.booleans(),
       chunk=st.integers(1, 7))
def test_fused_equals_generic(policy: str, trace, extra: int, warmup: int, cold: bool, chunk: int) -> None:
    cap = trace.width + extra
    kw = {"warmup_steps": warmup, "cold_start_per_request": cold, "chunk_steps": chunk}
    fused = engine.replay(trace, policy, cap, **kw)
    engine.FUSED_PATHS = False
    try:
        generic = engine.replay(trace, policy, cap, **kw)
    finally:
        engine.FUSED_PATHS = True
    assert fused.to_dict() == generic.to_dict()
