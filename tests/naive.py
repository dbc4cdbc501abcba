"""Plain-Python references that exist only to check the jitted code: each is the definition
written out, as slowly as it reads, next to the tests that hold the fast code to it. (The policies'
``reference`` functions stay in their modules: they are part of the policy interface.)"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from moesim.sim.hierarchy import SRC_SSD

# ---- trace statistics (traces/stats_kernel.py) -----------------------------------------------------

def stack_distances_reference(rows: Iterable[np.ndarray], num_layers: int, num_experts: int
                              ) -> list[tuple[int, int, int | None, int | None]]:
    """Plain-Python definition: ``(layer, key, distance, gap)`` per access, in replay order.

    ``rows`` yields ``[L, K]`` arrays, one per token; distance and gap are None for a first access.
    The distance counts, by brute force, the keys whose last access lies strictly after ``x``'s.
    """
    last: dict[int, int] = {}
    out: list[tuple[int, int, int | None, int | None]] = []
    t = 0
    for token in rows:
        for layer in range(num_layers):
            step = t * num_layers + layer
            keys = [layer * num_experts + int(e) for e in token[layer] if e >= 0]
            for x in keys:
                if x in last:
                    d = sum(1 for y, s in last.items() if y != x and s > last[x])
                    out.append((layer, x, d, step - last[x]))
                else:
                    out.append((layer, x, None, None))
            for x in keys:
                last[x] = step
        t += 1
    return out


def reuse_chunk_reference(experts: np.ndarray, prev_row: np.ndarray, has_prev: np.ndarray, hits: np.ndarray,
                          total: np.ndarray) -> None:
    """numpy twin of :func:`reuse_chunk` (a K x K comparison per row)."""
    if experts.shape[0] == 0:
        return
    prev = np.concatenate([prev_row[None], experts[:-1]])[has_prev]
    cur = experts[has_prev]
    same = (cur[..., :, None] == prev[..., None, :]) & (prev >= 0)[..., None, :]
    hits += (same.any(axis=-1) & (cur >= 0)).sum(axis=(0, 2))
    total += (cur >= 0).sum(axis=(0, 2))


def transitions_chunk_reference(experts: np.ndarray, counts: np.ndarray) -> None:
    """numpy twin of :func:`transitions_chunk` (one bincount over (pair, i, j) codes)."""
    n, num_layers, _ = experts.shape
    if num_layers < 2 or n == 0:
        return
    E = counts.shape[1]
    e = experts.astype(np.int64)
    a, c = e[:, :-1, :, None], e[:, 1:, None, :]
    ok = (a >= 0) & (c >= 0)
    base = (np.arange(num_layers - 1, dtype=np.int64) * E * E)[None, :, None, None]
    counts += np.bincount((base + a * E + c)[ok], minlength=(num_layers - 1) * E * E).reshape(counts.shape)


# ---- the timeline (sim/timing.py) ---------------------------------------------------------------

def timeline_reference(widths_steps: list[list[list[int]]], attn: np.ndarray, expert: np.ndarray,
                       head: np.ndarray, events: list[tuple[int, int, int]], h2d_cost: float,
                       ssd_cost: float, handoff: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Plain-Python timeline over a whole run: ``widths_steps[t][l]`` are the row's keys (pinned
    excluded), ``events`` (row, key, source) in issue order. Returns (seconds per step, stall per row)."""
    T = len(widths_steps)
    L = len(widths_steps[0]) if T else 0
    ready: dict[int, float] = {}
    free = {"h2d": 0.0, "ssd": 0.0}
    by_row: dict[int, list[tuple[int, int]]] = {}
    for r, k, s in events:
        by_row.setdefault(r, []).append((k, s))

    def start(at: float, link: str) -> float:  # a worker that is idle when the input comes must be woken
        return at + handoff if free[link] <= at else free[link]

    now = 0.0
    step_time = np.zeros(T)
    stall = np.zeros((T, L))
    for t in range(T):
        begin = now
        for layer in range(L):
            r = t * L + layer
            routed = now + float(attn[t, layer])
            for k, s in by_row.get(r, []):
                at = routed
                if s == SRC_SSD:
                    at = start(at, "ssd") + ssd_cost
                    free["ssd"] = at
                free["h2d"] = start(at, "h2d") + h2d_cost
                ready[k] = free["h2d"]
            go = max([routed] + [ready.get(k, 0.0) for k in widths_steps[t][layer]])
            if go > routed:
                go += handoff
            stall[t, layer] = go - routed
            now = go + float(expert[t, layer])
        now += float(head[t])
        step_time[t] = now - begin
    return step_time, stall
