"""Hit-ratio (miss-ratio) curves: hits at many cache sizes.

For LRU one pass gives every size (Mattson et al., 1970): an access hits a cache of ``C`` slots
iff its *stack distance* (the number of distinct keys used since its previous use, itself
included) is at most ``C``. With rows this still holds, measured at the start of the row: a row's
experts are never evicted while it is served, so whether each one hits depends only on the state
before the row, and by induction an LRU cache of ``C >= row width`` slots holds exactly the ``C``
most recent keys between rows. The recency order a row leaves behind is its (tie-broken) order,
so the stack is updated in that order after the row's distances are read. Sizes below the widest
row cannot serve that row at all; the curve starts at the widest row (plus the pinned experts).

Distances are counted with a Fenwick tree over access positions holding a 1 at each key's latest
position; the positions are renumbered whenever they run out, so memory is O(keys) however long
the trace (O(log keys) per access, amortised).

Any other policy is replayed once per size (in parallel processes; the numba cache is warmed in
the parent first, since processes compiling one cache at once can crash).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from moesim.kernels.jit import njit
from moesim.sim.errors import ConfigError
from moesim.sim.policies import get_policy
from moesim.sim.replay import pinned_table, replay, resolve_capacity
from moesim.sim.rows import Layout, default_chunk_steps, iter_row_blocks, plan_pieces, widest_rows
from moesim.traces.trace import Trace

__all__ = ["HitCurve", "hit_ratio_curve", "lru_hit_curve", "stack_distances", "stack_distances_reference"]

# replay() keywords a curve passes through (the size is the curve's own variable).
CURVE_KWARGS = ("organisation", "pinned", "params", "seed", "warmup_steps", "cold_start_per_request",
                "tie_break", "chunk_steps")
ONE_PASS_POLICIES = ("lru",)


@dataclass(frozen=True, eq=False)
class HitCurve:
    """Hits (counted steps, pinned experts included) at each total cache size in experts."""

    policy: str
    organisation: str
    method: str  # "stack" (one pass) or "replay" (one run per size)
    sizes: np.ndarray  # int64 [n]
    accesses: int
    hits: np.ndarray  # int64 [n]
    layer_hits: np.ndarray = field(repr=False)  # int64 [n, L]

    @property
    def hit_ratio(self) -> np.ndarray:
        return self.hits / self.accesses if self.accesses else np.zeros(len(self.sizes))

    @property
    def miss_ratio(self) -> np.ndarray:
        return 1.0 - self.hit_ratio

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, "organisation": self.organisation, "method": self.method,
                "accesses": self.accesses, "sizes": self.sizes.tolist(), "hits": self.hits.tolist(),
                "hit_ratio": self.hit_ratio.tolist(), "layer_hits": self.layer_hits.tolist()}


# ---- stack distances --------------------------------------------------------------------------

def make_stack_state(num_keys: int) -> tuple[np.ndarray, ...]:
    """(fenwick int32[M+1], last position per key, key at each position, [next position, live keys])."""
    m = 64
    while m < 2 * num_keys:
        m *= 2
    return (np.zeros(m + 1, np.int32), np.full(num_keys, -1, np.int64), np.full(m, -1, np.int32),
            np.zeros(2, np.int64))


@njit(inline="always")
def _fen_add(fen, i, d):
    i += 1
    n = fen.shape[0] - 1
    while i <= n:
        fen[i] += d
        i += i & -i


@njit(inline="always")
def _fen_prefix(fen, i):
    """Sum of positions ``0..i`` (0 for ``i < 0``)."""
    s = 0
    i += 1
    while i > 0:
        s += fen[i]
        i -= i & -i
    return s


@njit
def _renumber(fen, last, key_at, st):
    """Move the live keys to positions 0..live-1 (same order) and rebuild the tree."""
    out = 0
    for q in range(st[0]):
        k = key_at[q]
        key_at[q] = -1
        if k >= 0 and last[k] == q:
            key_at[out] = k
            last[k] = out
            out += 1
    fen[:] = 0
    for q in range(out):
        _fen_add(fen, q, 1)
    st[0] = out


@njit
def stack_distances(state, keys, row_ptr, depth_out):
    """LRU stack distance of every access at the start of its row (0 = first use, never a hit)."""
    fen, last, key_at, st = state
    m = key_at.shape[0]
    for r in range(row_ptr.shape[0] - 1):
        lo = row_ptr[r]
        hi = row_ptr[r + 1]
        if st[0] + (hi - lo) > m:
            _renumber(fen, last, key_at, st)
        live = st[1]
        for i in range(lo, hi):
            q = last[keys[i]]
            depth_out[i] = 0 if q < 0 else live - _fen_prefix(fen, q - 1)
        for i in range(lo, hi):
            k = keys[i]
            q = last[k]
            if q >= 0:
                _fen_add(fen, q, -1)
            else:
                st[1] += 1
            p = st[0]
            _fen_add(fen, p, 1)
            last[k] = p
            key_at[p] = k
            st[0] = p + 1


def stack_distances_reference(keys: np.ndarray, row_ptr: np.ndarray) -> np.ndarray:
    """Plain-Python :func:`stack_distances` on a fresh stack (an explicit list, most recent first)."""
    stack: list[int] = []
    out = np.zeros(len(keys), np.int64)
    for r in range(len(row_ptr) - 1):
        row = [int(k) for k in keys[row_ptr[r]:row_ptr[r + 1]]]
        for i, k in enumerate(row, start=int(row_ptr[r])):
            out[i] = stack.index(k) + 1 if k in stack else 0
        for k in row:
            if k in stack:
                stack.remove(k)
            stack.insert(0, k)
    return out


# ---- one-pass LRU curve -----------------------------------------------------------------------

def lru_hit_curve(trace: Trace, sizes: Sequence[int] | None = None, *, organisation: str = "shared",
                  pinned: Sequence[int] | None = None, warmup_steps: int = 0,
                  cold_start_per_request: bool = False, tie_break: str = "row",
                  chunk_steps: int | None = None) -> HitCurve:
    """LRU hits at every size from the smallest that can serve the trace up to ``L * E`` (or at
    ``sizes``), from one pass; the same numbers as :func:`sim.replay.replay` at each size."""
    L, E, K = trace.num_layers, trace.num_experts, trace.width
    table = pinned_table(trace.num_layers, trace.num_experts, pinned)
    layout = Layout(organisation, L, E, table, tie_break)
    D = layout.keys_per_instance
    chunk_steps = chunk_steps or default_chunk_steps(L, K)
    starts = None
    if cold_start_per_request:
        if trace.request_id is None:
            raise ConfigError("cold_start_per_request needs a trace with request_id")
        starts = trace.request_bounds()[:-1]
    pieces = plan_pieces(trace.num_steps, chunk_steps, warmup_steps, starts)
    states = [make_stack_state(D) for _ in range(layout.num_instances)]
    hist = np.zeros((L, D + 1), np.int64)  # [layer, stack distance]; distance 0 = first use
    widest = np.zeros(L, np.int64)
    accesses = 0
    for piece, chunk, block in iter_row_blocks(trace.experts, pieces, layout):
        widest_rows(chunk, E, table, widest)
        if piece.reset:
            states = [make_stack_state(D) for _ in range(layout.num_instances)]
        for j in range(layout.num_instances):
            keys, row_ptr, _, src = block.instance(j)
            depth = np.empty(len(keys), np.int64)
            stack_distances(states[j], keys, row_ptr, depth)
            if piece.counted:
                layer = (src.astype(np.int64) // K) % L
                hist += np.bincount(layer * (D + 1) + depth, minlength=L * (D + 1)).reshape(L, D + 1)
        if piece.counted:
            accesses += int(np.count_nonzero(chunk >= 0))
    per_pinned = table.reshape(L, E).sum(axis=1, dtype=np.int64)  # uint8 sums would wrap below 0
    if sizes is None:
        first = (int(table.sum()) + int(widest.max(initial=0)) if not layout.per_layer else
                 _smallest_per_layer(trace, widest, per_pinned))
        sizes = range(max(first, 1), L * E + 1)
    sizes = np.asarray(list(sizes), np.int64)
    cum = np.cumsum(hist[:, 1:], axis=1)  # cum[l, c-1] = hits of layer l's accesses at c slots
    layer_hits = np.zeros((len(sizes), L), np.int64)
    pinned_layer = _pinned_layer_hits(trace, table, pieces) if table.any() else np.zeros(L, np.int64)
    for n, size in enumerate(sizes):
        _, caps = resolve_capacity(trace.num_layers, int(size), None, None, organisation, None)
        if layout.per_layer:
            free = [c - int(p) for c, p in zip(caps or (), per_pinned, strict=True)]
            bad = [i for i in range(L) if free[i] < widest[i]]
            if bad:
                raise ConfigError(f"size {size}: layer {bad[0]} has {free[bad[0]]} policy slot(s) but a row "
                                  f"needs {widest[bad[0]]}")
            layer_hits[n] = [cum[i, min(free[i], D) - 1] if free[i] > 0 else 0 for i in range(L)]
        else:
            free = int(size) - int(table.sum())
            if free < int(widest.max(initial=0)):
                raise ConfigError(f"size {size}: {free} policy slot(s) after {int(table.sum())} pinned, but "
                                  f"a row needs {int(widest.max(initial=0))}")
            layer_hits[n] = cum[:, min(free, D) - 1] if free > 0 else 0
        layer_hits[n] += pinned_layer
    return HitCurve("lru", organisation, "stack", sizes, accesses, layer_hits.sum(axis=1), layer_hits)


def _smallest_per_layer(trace: Trace, widest: np.ndarray, per_pinned: np.ndarray) -> int:
    """The smallest total whose equal split gives every layer room for its pinned experts + widest row."""
    L = trace.num_layers
    for total in range(L, L * trace.num_experts + 1):
        _, caps = resolve_capacity(trace.num_layers, total, None, None, "per_layer", None)
        if all(c - p >= w for c, p, w in zip(caps or (), per_pinned, widest, strict=True)):
            return total
    return L * trace.num_experts


def _pinned_layer_hits(trace: Trace, table: np.ndarray, pieces: list) -> np.ndarray:
    L, E = trace.num_layers, trace.num_experts
    out = np.zeros(L, np.int64)
    pin = table.reshape(L, E).astype(bool)
    for piece in pieces:
        if not piece.counted:
            continue
        chunk = np.asarray(trace.experts[piece.start:piece.stop])
        hit = pin[np.arange(L)[None, :, None], np.maximum(chunk, 0)] & (chunk >= 0)
        out += hit.sum(axis=(0, 2))
    return out


# ---- any policy -------------------------------------------------------------------------------

def _replay_size(job: tuple[Any, str, int, dict[str, Any]]) -> tuple[int, int, list[int]]:
    source, policy, size, kwargs = job
    if isinstance(source, str):
        from moesim.traces.io import load

        source = load(source, validate=False)
    res = replay(source, policy, size, **kwargs)
    return res.accesses, res.hits, [c.hits for c in res.per_layer]


def hit_ratio_curve(trace: Trace, policy: str, sizes: Sequence[int], *, processes: int | None = None,
                    **kwargs: Any) -> HitCurve:
    """Hits of ``policy`` at each total size in ``sizes`` (experts), other settings as in ``replay``.

    LRU takes one pass (:func:`lru_hit_curve`); other policies one replay per size, over
    ``processes`` worker processes (default: one per CPU, at most one per size; ``1``: in this
    process). A memory-mapped trace is reopened by path in each worker instead of being copied.
    """
    unknown = sorted(set(kwargs) - set(CURVE_KWARGS))
    if unknown:
        raise ConfigError(f"hit_ratio_curve does not take {unknown}; it passes on {list(CURVE_KWARGS)}")
    get_policy(policy)  # unknown names fail here, listing the known ones
    sizes = [int(s) for s in sizes]
    if not sizes:
        raise ConfigError("sizes is empty")
    if policy in ONE_PASS_POLICIES:
        stack_kw = {k: v for k, v in kwargs.items() if k not in ("params", "seed")}
        return lru_hit_curve(trace, sizes, **stack_kw)
    # Warm (compile and cache) every kernel once in this process before workers start.
    replay(trace.slice_steps(0, min(trace.num_steps, 2)), policy, sizes[0], **{
        k: v for k, v in kwargs.items() if k not in ("warmup_steps", "cold_start_per_request")})
    results = _run_sizes(trace, policy, sizes, kwargs, processes)
    L = trace.num_layers
    return HitCurve(policy, kwargs.get("organisation", "shared"), "replay", np.asarray(sizes, np.int64),
                    results[0][0], np.array([r[1] for r in results], np.int64),
                    np.array([r[2] for r in results], np.int64).reshape(len(sizes), L))


def _run_sizes(trace: Trace, policy: str, sizes: list[int], kwargs: Mapping[str, Any],
               processes: int | None) -> list[tuple[int, int, list[int]]]:
    workers = min(len(sizes), processes if processes is not None else (os.cpu_count() or 1))
    if workers <= 1:
        return [_replay_size((trace, policy, s, dict(kwargs))) for s in sizes]
    source: Any = trace.file if (isinstance(trace.experts, np.memmap) and trace.file) else trace
    jobs = [(source, policy, s, dict(kwargs)) for s in sizes]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_replay_size, jobs))
