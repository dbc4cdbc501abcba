"""Traces shared by the engine's tests: hand-made ones from nested lists, and a hypothesis strategy
for random traces with requests and phases."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from moesim.traces.trace import DECODE, PREFILL, TraceMeta, make_trace


def trace_of(rows: list[list[list[int]]], num_experts: int = 4, top_k: int = 1, **kw):
    """A hand-made trace: ``rows[t][l]`` are the experts of step ``t`` at layer ``l`` (padded with -1
    to a common width); ``kw`` are the optional per-step fields of :func:`make_trace`."""
    L = len(rows[0])
    K = max(len(x) for step in rows for x in step)
    arr = np.full((len(rows), L, K), -1, np.int16)
    for t, step in enumerate(rows):
        for layer, ids in enumerate(step):
            arr[t, layer, :len(ids)] = ids
    return make_trace(arr, TraceMeta(model="hand", num_layers=L, num_experts=num_experts, top_k=top_k), **kw)


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
