"""Hypothesis strategies shared by the engine's tests (random traces with requests and phases)."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from moesim.traces.trace import DECODE, PREFILL, TraceMeta, make_trace


@st.composite
def traces(draw, max_steps: int = 14, min_steps: int = 0):
    """A trace of 1-3 layers, 2-6 experts, rows of 0..K experts, random request boundaries and a
    prefill prefix."""
    L = draw(st.integers(1, 3))
    E = draw(st.integers(2, 6))
    K = draw(st.integers(1, min(3, E)))
    T = draw(st.integers(min_steps, max_steps))
    experts = np.full((T, L, K), -1, np.int16)
    for t in range(T):
        for layer in range(L):
            n = draw(st.integers(0, K))
            experts[t, layer, :n] = draw(st.permutations(range(E)))[:n]
    rid = np.cumsum(draw(st.lists(st.booleans(), min_size=T, max_size=T))).astype(np.int64)
    phase = np.where(np.arange(T) < draw(st.integers(0, max(T, 0))), PREFILL, DECODE).astype(np.int8)
    return make_trace(experts, TraceMeta("h", L, E, K), request_id=rid, phase=phase)
