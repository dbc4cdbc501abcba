"""Next-layer affinity: learn, online, which experts of layer ``l + 1`` follow those of layer ``l``.

The prefetcher keeps transition counts ``C[l, a, b]``: how often expert ``a`` at layer ``l`` was
followed by expert ``b`` at layer ``l + 1`` in the same step, over the rows replayed so far. At row
``r`` (layer ``l`` of step ``t``), once the router has chosen row ``r``'s experts, it scores every
expert ``b`` of layer ``l + 1`` by ``sum over a in row r of C[l, a, b]`` and prefetches the
``top_n`` best with a positive score (ties: lower expert id first) for row ``r + 1``; then, when
row ``r + 1`` is known, it adds that step's pairs to ``C``. Nothing is known before the first step
has been seen, so the first step prefetches nothing.

Knobs: ``top_n`` (experts prefetched per row; ``None`` = the trace's top-k), ``wrap`` (also
predict layer 0 of the next step from the last layer of this one, learning those pairs too;
default False).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from moesim.kernels.jit import njit
from moesim.sim.errors import ConfigError
from moesim.sim.hierarchy import demand_rows
from moesim.sim.prefetch._plan import PrefetchPlan, plan_from_lists
from moesim.traces.trace import Trace

NAME = "affinity"
PARAMS: dict[str, Any] = {"top_n": None, "wrap": False}


def _knobs(trace: Trace, params: Mapping[str, Any]) -> tuple[int, bool]:
    n, wrap = params["top_n"], params["wrap"]
    if n is None:
        n = trace.meta.top_k
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"prefetcher 'affinity': knob 'top_n' must be an integer >= 1 or None, got {n!r}")
    if not isinstance(wrap, bool):
        raise ConfigError(f"prefetcher 'affinity': knob 'wrap' must be a boolean, got {wrap!r}")
    return int(min(n, trace.num_experts)), wrap


@njit
def _affinity_plan(keys, row_ptr, num_layers, num_experts, top_n, wrap, out_ptr, out_keys, out_tgt):
    L = num_layers
    E = num_experts
    R = row_ptr.shape[0] - 1
    counts = np.zeros((L, E, E), np.int64)
    score = np.zeros(E, np.int64)
    n = 0
    out_ptr[0] = 0
    for r in range(R):
        layer = r % L
        if r >= 1 and (layer > 0 or wrap):
            prev = (r - 1) % L
            for i in range(row_ptr[r - 1], row_ptr[r]):
                a = keys[i] - prev * E
                for j in range(row_ptr[r], row_ptr[r + 1]):
                    counts[prev, a, keys[j] - layer * E] += 1
        if r + 1 < R and (layer < L - 1 or wrap):
            nxt_layer = (r + 1) % L
            score[:] = 0
            for i in range(row_ptr[r], row_ptr[r + 1]):
                a = keys[i] - layer * E
                for b in range(E):
                    score[b] += counts[layer, a, b]
            for _ in range(top_n):
                best = -1
                for b in range(E):
                    if score[b] > 0 and (best < 0 or score[b] > score[best]):
                        best = b
                if best < 0:
                    break
                out_keys[n] = nxt_layer * E + best
                out_tgt[n] = r + 1
                n += 1
                score[best] = 0
        out_ptr[r + 1] = n
    return n


def plan(trace: Trace, params: Mapping[str, Any], seed: int) -> PrefetchPlan:
    top_n, wrap = _knobs(trace, params)
    rows = demand_rows(trace)
    R = rows.num_rows
    out_ptr = np.zeros(R + 1, np.int64)
    out_keys = np.zeros(R * top_n, np.int32)
    out_tgt = np.zeros(R * top_n, np.int64)
    n = _affinity_plan(rows.keys, rows.row_ptr, rows.num_layers, rows.num_experts, top_n, wrap, out_ptr,
                       out_keys, out_tgt)
    return PrefetchPlan(out_ptr, out_keys[:n].copy(), out_tgt[:n].copy())


def reference(trace: Trace, params: Mapping[str, Any], seed: int) -> PrefetchPlan:
    top_n, wrap = _knobs(trace, params)
    rows = demand_rows(trace)
    L, E, R = rows.num_layers, rows.num_experts, rows.num_rows
    row = [[int(k) - (r % L) * E for k in rows.keys[rows.row_ptr[r]:rows.row_ptr[r + 1]]] for r in range(R)]
    counts: dict[tuple[int, int, int], int] = {}
    out: list[list[tuple[int, int]]] = []
    for r in range(R):
        layer = r % L
        if r >= 1 and (layer > 0 or wrap):
            for a in row[r - 1]:
                for b in row[r]:
                    key = ((r - 1) % L, a, b)
                    counts[key] = counts.get(key, 0) + 1
        issued: list[tuple[int, int]] = []
        if r + 1 < R and (layer < L - 1 or wrap):
            score = {b: sum(counts.get((layer, a, b), 0) for a in row[r]) for b in range(E)}
            ranked = sorted((b for b in range(E) if score[b] > 0), key=lambda b: (-score[b], b))
            issued = [(((r + 1) % L) * E + b, r + 1) for b in ranked[:top_n]]
        out.append(issued)
    return plan_from_lists(out)
