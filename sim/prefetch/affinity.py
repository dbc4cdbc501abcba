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
from moesim.sim.prefetch._plan import PieceRouting, PrefetchPlan, plan_from_lists, routing_rows
from moesim.traces.trace import Trace

NAME = "affinity"
PARAMS: dict[str, Any] = {"top_n": None, "wrap": False}


def _knobs(num_experts: int, top_k: int, params: Mapping[str, Any]) -> tuple[int, bool]:
    n, wrap = params["top_n"], params["wrap"]
    if n is None:
        n = top_k
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"prefetcher 'affinity': knob 'top_n' must be an integer >= 1 or None, got {n!r}")
    if not isinstance(wrap, bool):
        raise ConfigError(f"prefetcher 'affinity': knob 'wrap' must be a boolean, got {wrap!r}")
    return int(min(n, num_experts)), wrap


@njit
def _affinity_piece(keys, row_ptr, row0, num_layers, num_experts, top_n, wrap, total_rows, epoch_end, counts,
                    prev, prev_n, out_ptr, out_keys, out_tgt):
    """The plan of one piece; ``counts`` and the row before the piece (``prev[:prev_n[0]]``, shared
    keys; ``prev_n[0] < 0`` before the first row) carry over to the next piece."""
    L = num_layers
    E = num_experts
    R = row_ptr.shape[0] - 1
    score = np.zeros(E, np.int64)
    n = 0
    out_ptr[0] = 0
    for rl in range(R):
        r = row0 + rl
        layer = r % L
        if r >= 1 and (layer > 0 or wrap) and (rl > 0 or prev_n[0] >= 0):
            p_layer = (r - 1) % L
            if rl > 0:
                a_keys = keys[row_ptr[rl - 1]:row_ptr[rl]]
            else:
                a_keys = prev[:prev_n[0]]
            for a in a_keys:
                for j in range(row_ptr[rl], row_ptr[rl + 1]):
                    counts[p_layer, a - p_layer * E, keys[j] - layer * E] += 1
        if r + 1 < total_rows and r + 1 < epoch_end and (layer < L - 1 or wrap):
            nxt_layer = (r + 1) % L
            score[:] = 0
            for i in range(row_ptr[rl], row_ptr[rl + 1]):
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
        out_ptr[rl + 1] = n
    if R > 0:
        m = row_ptr[R] - row_ptr[R - 1]
        prev[:m] = keys[row_ptr[R - 1]:row_ptr[R]]
        prev_n[0] = m
    return n


class Session:
    """The learned transition counts and the last row seen, from one piece to the next."""

    def __init__(self, num_layers: int, num_experts: int, top_k: int, params: Mapping[str, Any]) -> None:
        self.top_n, self.wrap = _knobs(num_experts, top_k, params)
        self.L, self.E = num_layers, num_experts
        self.counts = np.zeros((num_layers, num_experts, num_experts), np.int64)
        self.prev = np.zeros(num_experts, np.int32)
        self.prev_n = np.array([-1], np.int64)

    def plan_piece(self, piece: PieceRouting) -> PrefetchPlan:
        R = piece.num_rows
        out_ptr = np.zeros(R + 1, np.int64)
        out_keys = np.zeros(R * self.top_n, np.int32)
        out_tgt = np.zeros(R * self.top_n, np.int64)
        n = _affinity_piece(piece.keys, piece.row_ptr, piece.row0, self.L, self.E, self.top_n, self.wrap,
                            piece.total_rows, piece.epoch_end, self.counts, self.prev, self.prev_n, out_ptr,
                            out_keys, out_tgt)
        return PrefetchPlan(out_ptr, out_keys[:n].copy(), out_tgt[:n].copy())


def start(num_layers: int, num_experts: int, top_k: int, params: Mapping[str, Any], seed: int) -> Session:
    return Session(num_layers, num_experts, top_k, params)


def reference(trace: Trace, params: Mapping[str, Any], seed: int) -> PrefetchPlan:
    top_n, wrap = _knobs(trace.num_experts, trace.meta.top_k, params)
    rows = routing_rows(trace)
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
