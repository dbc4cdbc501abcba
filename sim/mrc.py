"""Hit-ratio (miss-ratio) curves: hits at many cache sizes.

For LRU one pass gives every size (Mattson et al., 1970): an access hits a cache of ``C`` slots
iff its *stack distance* (the number of distinct keys used since its previous use, itself
included) is at most ``C``. With rows this still holds, measured at the start of the row: a row's
experts are never evicted while it is served, so whether each one hits depends only on the state
before the row, and by induction an LRU cache of ``C >= row width`` slots holds exactly the ``C``
most recent keys between rows. The recency order a row leaves behind is its (tie-broken) order,
so the stack is updated in that order after the row's distances are read. Sizes below the widest
row cannot serve that row at all; the curve starts at the widest row (plus the pinned experts).

Distances are popcounts over a recency log with one mark per key (:func:`make_stack_state`), counted
straight into a histogram per layer; memory is O(keys) however long the trace.

OPT is a stack algorithm too (:func:`opt_hit_curve`). Any other policy serves its sizes in lock-step,
the trace read once per piece for all of them (:func:`sim.engine.run_sizes`), in parallel processes
(the numba cache is warmed in the parent first, since processes compiling one cache at once can
crash); :func:`hit_ratio_curves` sweeps several policies at once.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from moesim.kernels.jit import njit
from moesim.sim.errors import ConfigError
from moesim.sim.policies import get_policy
from moesim.sim.policies._loops import ONE, popcount
from moesim.sim.replay import pinned_table, resolve_capacity
from moesim.sim.rows import (
    Layout,
    NextUse,
    StepStream,
    build_rows,
    default_chunk_steps,
    dense_rows,
    plan_stream,
    widest_rows,
)
from moesim.sim.scratch import scratch_dir
from moesim.traces.trace import Trace

__all__ = ["HitCurve", "hit_ratio_curve", "hit_ratio_curves", "lru_hit_curve", "opt_hit_curve", "stack_distances",
           "stack_distances_reference"]

# replay() keywords a curve passes through (the size is the curve's own variable).
CURVE_KWARGS = ("organisation", "pinned", "params", "seed", "warmup_steps", "cold_start_per_request",
                "tie_break", "chunk_steps")
ONE_PASS_POLICIES = ("lru", "opt")


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

# The LRU stack's log is read in blocks of 4 words (256 positions): a distance is a popcount of the
# rest of its block plus a count kept per block (see make_stack_state).
BLOCK_SHIFT = 8
BLOCK_WORDS = (1 << BLOCK_SHIFT) // 64

def make_stack_state(num_keys: int) -> tuple[np.ndarray, ...]:
    """A fresh LRU stack over ``num_keys`` keys: ``(log int32[M], last int64[num_keys],
    bits uint64[M / 64], after int32[blocks], st int64[2])`` with ``st = [tail, live keys]``.

    The stack is a *recency log* (as in :mod:`sim.policies.lru`): every access appends its key at
    position ``tail`` and ``last[key]`` is its newest position; ``bits`` marks the positions holding a
    key's newest entry (none at or past the tail). The stack distance of the key at ``q`` is the
    number of marks from ``q`` on: the popcount of the rest of ``q``'s block of words plus
    ``after[block]``, the marks in the blocks after it (kept up to date with one masked add over the
    few blocks per access; no loop whose length depends on the distance). A Fenwick tree over the
    positions, renumbered when they ran out, cost ~3x one LRU replay; popcounts up to the tail ~2.5x
    (the loop's exit mispredicts); this ~1.9x (gpt-oss-20b trace, rows of 4). The masked add grows
    with the blocks (16 for up to 1024 keys). When the log is full it is compacted to its marked
    entries (at most ``num_keys``; it holds ``4 * num_keys``), amortised O(1).
    """
    m = 1 << BLOCK_SHIFT
    while m < 4 * num_keys:
        m *= 2
    return (np.full(m, -1, np.int32), np.full(num_keys, -1, np.int64), np.zeros(m // 64, np.uint64),
            np.zeros(m >> BLOCK_SHIFT, np.int32), np.zeros(2, np.int64))


@njit(inline="always")
def _depth(bits, after, q):
    """Stack distance of the key whose newest entry is at ``q`` (0: never seen)."""
    if q < 0:
        return 0
    w = q >> 6
    b = q >> BLOCK_SHIFT
    c = np.int64(popcount(bits[w] >> np.uint64(q & 63)))
    for x in range(b * BLOCK_WORDS, (b + 1) * BLOCK_WORDS):
        c += np.int64(popcount(bits[x])) & -np.int64(x > w)
    return c + after[b]


@njit(inline="always")
def _push(log, last, bits, after, key, tail, live):
    """Append ``key``'s new entry at ``tail`` (unmarking its old one): the new live count. The blocks
    from the old entry's up to (not including) the tail's gain one mark after them."""
    q = last[key]
    lo = 0
    if q >= 0:
        bits[q >> 6] &= ~(ONE << np.uint64(q & 63))
        lo = q >> BLOCK_SHIFT
    else:
        live += 1
    hi = tail >> BLOCK_SHIFT
    for x in range(after.shape[0]):
        after[x] += np.int32((x >= lo) & (x < hi))
    bits[tail >> 6] |= ONE << np.uint64(tail & 63)
    log[tail] = key
    last[key] = tail
    return live


@njit
def _compact_log(log, last, bits, after, tail):
    """Move the marked entries, in order, to the start of the log: the new tail."""
    out = 0
    for q in range(tail):
        if (bits[q >> 6] >> np.uint64(q & 63)) & ONE:
            k = log[q]
            log[out] = k
            last[k] = out
            out += 1
    bits[:] = 0
    for q in range(out):
        bits[q >> 6] |= ONE << np.uint64(q & 63)
    marks = 0
    for b in range(after.shape[0] - 1, -1, -1):
        after[b] = marks
        for x in range(b * BLOCK_WORDS, (b + 1) * BLOCK_WORDS):
            marks += np.int64(popcount(bits[x]))
    return out


@njit
def stack_distances(state, keys, row_ptr, depth_out):
    """LRU stack distance of every access at the start of its row (0 = first use, never a hit)."""
    log, last, bits, after, st = state
    m = log.shape[0]
    tail, live = st[0], st[1]
    for r in range(row_ptr.shape[0] - 1):
        lo = row_ptr[r]
        hi = row_ptr[r + 1]
        if tail + (hi - lo) > m:
            tail = _compact_log(log, last, bits, after, tail)
        for i in range(lo, hi):
            depth_out[i] = _depth(bits, after, last[keys[i]])
        for i in range(lo, hi):
            live = _push(log, last, bits, after, keys[i], tail, live)
            tail += 1
    st[0], st[1] = tail, live


@njit
def _stack_hist(state, keys, row_ptr, num_experts, layer, hist, count):
    """:func:`stack_distances` counted straight into ``hist[layer, distance]`` (``count``), the layer
    of a shared cache's key ``l * E + e`` being ``key // num_experts`` (``layer < 0``)."""
    log, last, bits, after, st = state
    m = log.shape[0]
    tail, live = st[0], st[1]
    for r in range(row_ptr.shape[0] - 1):
        lo = row_ptr[r]
        hi = row_ptr[r + 1]
        if tail + (hi - lo) > m:
            tail = _compact_log(log, last, bits, after, tail)
        if count:
            for i in range(lo, hi):
                k = keys[i]
                lay = k // num_experts if layer < 0 else layer
                hist[lay, _depth(bits, after, last[k])] += 1
        for i in range(lo, hi):
            live = _push(log, last, bits, after, keys[i], tail, live)
            tail += 1
    st[0], st[1] = tail, live


@njit
def _stack_hist_steps(state, chunk, num_experts, hist, count):
    """:func:`_stack_hist` for one shared cache with nothing pinned, reading the rows straight from
    ``chunk`` ``[T, L, K]`` (pads skipped, the recorded order) instead of a CSR block: the gathering
    cost as much as the distances (measured on the gpt-oss-20b bench trace)."""
    log, last, bits, after, st = state
    m = log.shape[0]
    tail, live = st[0], st[1]
    T, L, K = chunk.shape
    for t in range(T):
        for layer in range(L):
            base = layer * num_experts
            if tail + K > m:
                tail = _compact_log(log, last, bits, after, tail)
            if count:
                for j in range(K):
                    e = chunk[t, layer, j]
                    if e >= 0:
                        hist[layer, _depth(bits, after, last[base + e])] += 1
            for j in range(K):
                e = chunk[t, layer, j]
                if e >= 0:
                    live = _push(log, last, bits, after, base + e, tail, live)
                    tail += 1
    st[0], st[1] = tail, live


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


# ---- one-pass OPT stack -----------------------------------------------------------------------

def make_opt_stack(num_keys: int) -> tuple[np.ndarray, ...]:
    """A fresh OPT stack: ``(key at each depth, its priority, depth of each key, [size])``; a key's
    priority is the time of its next request (smaller is kept longer)."""
    return (np.zeros(num_keys, np.int64), np.zeros(num_keys, np.int64), np.full(num_keys, -1, np.int64),
            np.zeros(1, np.int64))


@njit
def _opt_hist(state, keys, row_ptr, row_time, next_use, num_experts, layer, hist, count):
    """OPT stack distances (1-based depth at the start of the row, 0 = first use) counted into
    ``hist[layer, depth]`` (see :func:`opt_hit_curve` for why one stack serves every size)."""
    stk, snu, pos, st = state
    size = st[0]
    for r in range(row_ptr.shape[0] - 1):
        lo = row_ptr[r]
        hi = row_ptr[r + 1]
        if count:
            for i in range(lo, hi):
                k = keys[i]
                hist[k // num_experts if layer < 0 else layer, pos[k] + 1] += 1
        now = row_time[r]
        for i in range(lo, hi):
            k = keys[i]
            d = pos[k]
            if d < 0:
                d = size
                size += 1
            if d > 0:
                # Mattson's update: at each depth the key with the farther next request moves on.
                carry = stk[0]
                cnu = snu[0]
                for j in range(1, d):
                    v = snu[j]
                    if v > cnu:
                        y = stk[j]
                        stk[j] = carry
                        snu[j] = cnu
                        pos[carry] = j
                        carry = y
                        cnu = v
                stk[d] = carry
                snu[d] = cnu
                pos[carry] = d
            stk[0] = k
            snu[0] = now
            pos[k] = 0
        for i in range(lo, hi):
            snu[pos[keys[i]]] = next_use[i]
    st[0] = size


# ---- one-pass curves --------------------------------------------------------------------------

def lru_hit_curve(trace: Trace, sizes: Sequence[int] | None = None, *, organisation: str = "shared",
                  pinned: Sequence[int] | None = None, warmup_steps: int = 0,
                  cold_start_per_request: bool = False, tie_break: str = "row",
                  chunk_steps: int | None = None) -> HitCurve:
    """LRU hits at every size from the smallest that can serve the trace up to ``L * E`` (or at
    ``sizes``), from one pass; the same numbers as :func:`sim.replay.replay` at each size."""
    return _one_pass(trace, "lru", sizes, organisation, pinned, warmup_steps, cold_start_per_request,
                     tie_break, chunk_steps)


def opt_hit_curve(trace: Trace, sizes: Sequence[int] | None = None, *, organisation: str = "shared",
                  pinned: Sequence[int] | None = None, warmup_steps: int = 0,
                  cold_start_per_request: bool = False, tie_break: str = "row",
                  chunk_steps: int | None = None) -> HitCurve:
    """OPT (Belady) hits at every size, or at ``sizes``, from one pass; the same numbers as
    :func:`sim.replay.replay` with ``"opt"`` at each size.

    OPT evicts by a priority that does not depend on the cache size (the next request's time), so
    it is a stack algorithm (Mattson et al., 1970): one stack ordered so that its top ``C`` keys are
    the cache of ``C`` slots, for every ``C`` at once. A request at depth ``d`` moves to the top and,
    down to ``d``, each depth keeps the nearer-needed of its key and the one carried down from above
    (Mattson's update for priority policies; a key's priority changes only when it is requested, so
    the carried key changes only at running maxima). Keys needed at the same time tie; which one
    OPT keeps never changes its hits. Rows: a row's keys already hold the row's own time as their
    priority (their next request), the nearest of all, so while the row is served no depth of
    ``C >= width`` carries one of them down (they are never evicted), and they take their next
    request's time once the row is done. Hits are read at the start of the row, as for LRU.
    O(depth) per access (the records are few); the next-use times come from the engine's one
    backward pass (:class:`sim.rows.NextUse`).
    """
    return _one_pass(trace, "opt", sizes, organisation, pinned, warmup_steps, cold_start_per_request,
                     tie_break, chunk_steps)


def _one_pass(trace: Trace, policy: str, sizes: Sequence[int] | None, organisation: str,
              pinned: Sequence[int] | None, warmup_steps: int, cold_start_per_request: bool, tie_break: str,
              chunk_steps: int | None) -> HitCurve:
    L, E, K = trace.num_layers, trace.num_experts, trace.width
    table = pinned_table(L, E, pinned)
    layout = Layout(organisation, L, E, table, tie_break)
    D = layout.keys_per_instance
    n_inst = layout.num_instances
    chunk_steps = chunk_steps or default_chunk_steps(L, K)
    stream = plan_stream(trace, chunk_steps, warmup_steps=warmup_steps, cold_start=cold_start_per_request)
    per_pinned = table.reshape(L, E).sum(axis=1, dtype=np.int64)  # uint8 sums would wrap below 0
    sizes = None if sizes is None else [int(x) for x in sizes]
    # The widest row only matters for a size that might not hold it (a pass over the trace, skipped
    # when every size holds K experts beside its pinned ones).
    need_widest = sizes is None or not sizes or (
        min(sizes) // L - int(per_pinned.max()) < K if layout.per_layer else min(sizes) - int(table.sum()) < K)
    widest = np.zeros(L, np.int64) if need_widest else np.full(L, K, np.int64)
    fused = policy == "lru" and not layout.per_layer and not table.any() and (tie_break == "row" or K == 1)
    make = make_stack_state if policy == "lru" else make_opt_stack
    hist = np.zeros((L, D + 1), np.int64)  # [layer, stack distance]; distance 0 = first use
    with scratch_dir(None) if policy == "opt" else contextlib.nullcontext("") as tmp:
        next_use = NextUse(stream, layout, tmp) if policy == "opt" else None
        states = [make(D) for _ in range(n_inst)]
        for p, piece in enumerate(stream.pieces):
            chunk = stream.read(piece)
            if need_widest:
                widest_rows(chunk, E, table, widest)
            if piece.reset:
                states = [make(D) for _ in range(n_inst)]
            if fused:
                _stack_hist_steps(states[0], chunk, E, hist, piece.counted)
                continue
            dense = dense_rows(chunk, piece.step0, layout)
            block = build_rows(chunk, piece.step0, layout) if dense is None else None
            for j in range(n_inst):
                keys, row_ptr, row_time = dense if block is None else block.instance(j)[:3]
                lay = j if layout.per_layer else -1
                if next_use is None:
                    _stack_hist(states[j], keys, row_ptr, E, lay, hist, piece.counted)
                else:
                    _opt_hist(states[j], keys, row_ptr, row_time, next_use.of(p, j), E, lay, hist, piece.counted)
    pinned_layer = _pinned_layer_hits(stream, table) if table.any() else np.zeros(L, np.int64)
    accesses = int(hist.sum()) + int(pinned_layer.sum())
    if sizes is None:
        first = (int(table.sum()) + int(widest.max(initial=0)) if not layout.per_layer else
                 _smallest_per_layer(trace, widest, per_pinned))
        sizes = list(range(max(first, 1), L * E + 1))
    sizes_arr = np.asarray(sizes, np.int64)
    cum = np.cumsum(hist[:, 1:], axis=1)  # cum[l, c-1] = hits of layer l's accesses at c slots
    if not layout.per_layer:
        # One shared cache: every size is a column of ``cum``, read for all sizes at once (a Python
        # loop over the ~L*E sizes of a full curve cost an eighth of the whole call).
        free = sizes_arr - int(table.sum())
        wide = int(widest.max(initial=0))
        bad = np.flatnonzero((sizes_arr < 1) | (free < wide))
        if bad.size:
            size = int(sizes_arr[bad[0]])
            resolve_capacity(L, size, None, None, organisation, None)  # refuses a size below 1
            raise ConfigError(f"size {size}: {int(free[bad[0]])} policy slot(s) after {int(table.sum())} "
                              f"pinned, but a row needs {wide}")
        layer_hits = np.where((free > 0)[:, None], cum[:, np.clip(free, 1, D) - 1].T, 0) + pinned_layer
        return HitCurve(policy, organisation, "stack", sizes_arr, accesses, layer_hits.sum(axis=1), layer_hits)
    layer_hits = np.zeros((len(sizes_arr), L), np.int64)
    for n, size in enumerate(sizes_arr):
        _, caps = resolve_capacity(L, int(size), None, None, organisation, None)
        free = [c - int(p) for c, p in zip(caps or (), per_pinned, strict=True)]
        bad = [i for i in range(L) if free[i] < widest[i]]
        if bad:
            raise ConfigError(f"size {size}: layer {bad[0]} has {free[bad[0]]} policy slot(s) but a row "
                              f"needs {widest[bad[0]]}")
        layer_hits[n] = [cum[i, min(free[i], D) - 1] if free[i] > 0 else 0 for i in range(L)]
        layer_hits[n] += pinned_layer
    return HitCurve(policy, organisation, "stack", sizes_arr, accesses, layer_hits.sum(axis=1), layer_hits)


def _smallest_per_layer(trace: Trace, widest: np.ndarray, per_pinned: np.ndarray) -> int:
    """The smallest total whose equal split gives every layer room for its pinned experts + widest row."""
    L = trace.num_layers
    for total in range(L, L * trace.num_experts + 1):
        _, caps = resolve_capacity(trace.num_layers, total, None, None, "per_layer", None)
        if all(c - p >= w for c, p, w in zip(caps or (), per_pinned, widest, strict=True)):
            return total
    return L * trace.num_experts


def _pinned_layer_hits(stream: StepStream, table: np.ndarray) -> np.ndarray:
    trace = stream.trace
    L, E = trace.num_layers, trace.num_experts
    out = np.zeros(L, np.int64)
    pin = table.reshape(L, E).astype(bool)
    for piece in stream.pieces:
        if not piece.counted:
            continue
        chunk = stream.read(piece)
        hit = pin[np.arange(L)[None, :, None], np.maximum(chunk, 0)] & (chunk >= 0)
        out += hit.sum(axis=(0, 2))
    return out


# ---- any policy, many policies ------------------------------------------------------------------

def _curve_job(job: tuple[Any, str, list[int], dict[str, Any]]) -> list[tuple[int, int, list[int]]]:
    """One job of a sweep: ``policy`` at ``sizes`` on the trace (or a path to reopen it):
    (accesses, hits, hits per layer) per size."""
    source, policy, sizes, kwargs = job
    if isinstance(source, str):
        from moesim.traces.io import load

        source = load(source, validate=False)
    if policy in ONE_PASS_POLICIES:
        stack_kw = {k: v for k, v in kwargs.items() if k not in ("params", "seed")}
        curve = _one_pass(source, policy, sizes, **{**_ONE_PASS_DEFAULTS, **stack_kw})
        return [(curve.accesses, int(h), row.tolist()) for h, row in zip(curve.hits, curve.layer_hits, strict=True)]
    from moesim.sim import engine
    from moesim.sim.cache_setup import setup_cache

    chunk_steps = kwargs.get("chunk_steps")
    setup_kw = {k: v for k, v in kwargs.items() if k != "chunk_steps"}
    setups = [setup_cache(source.num_layers, source.num_experts, policy, s, **setup_kw) for s in sizes]
    runs = engine.run_sizes(source, setups, chunk_steps=chunk_steps)
    return [(r.l1.accesses, r.l1.hits, [c.hits for c in r.l1.per_layer]) for r in runs]


_ONE_PASS_DEFAULTS = {"organisation": "shared", "pinned": None, "warmup_steps": 0, "cold_start_per_request": False,
                      "tie_break": "row", "chunk_steps": None}


def hit_ratio_curves(trace: Trace, policies: Sequence[str], sizes: Sequence[int], *,
                     processes: int | None = None, params: Mapping[str, Mapping[str, Any]] | None = None,
                     **kwargs: Any) -> dict[str, HitCurve]:
    """Hits of every policy in ``policies`` at every total size in ``sizes`` (experts): the sweep
    behind a miss-ratio plot, the same numbers as one :func:`sim.replay.replay` per policy and size.

    LRU and OPT take one pass each for all sizes (:func:`lru_hit_curve`, :func:`opt_hit_curve`).
    Every other policy serves its sizes in lock-step (:func:`sim.engine.run_sizes`: each piece of the
    trace is read and turned into rows once for all of them), its sizes split into a few jobs, and
    all jobs run over ``processes`` worker processes (default: one per CPU; ``1``: in this process). Workers reopen a memory-mapped trace by its path; an in-memory trace is
    written once to a scratch file for them. ``params``: knobs per policy name; the other keywords
    are :data:`CURVE_KWARGS`, as for ``replay``.
    """
    unknown = sorted(set(kwargs) - set(CURVE_KWARGS))
    if unknown:
        raise ConfigError(f"hit_ratio_curves does not take {unknown}; it passes on {list(CURVE_KWARGS)}")
    policies = list(dict.fromkeys(policies))
    for policy in policies:
        get_policy(policy)  # unknown names fail here, listing the known ones
    sizes = [int(s) for s in sizes]
    if not sizes:
        raise ConfigError("sizes is empty")
    if not policies:
        return {}
    params = dict(params or {})
    stray = sorted(set(params) - set(policies))
    if stray:
        raise ConfigError(f"params given for {stray}, which are not among the policies {policies}")
    workers = max(1, processes if processes is not None else (os.cpu_count() or 1))
    jobs: list[tuple[str, list[int]]] = []
    # OPT's one pass is the longest job: it goes first; LRU's one pass is short: it goes last.
    for policy in sorted(policies, key=lambda p: (p != "opt", p == "lru")):
        if policy in ONE_PASS_POLICIES:
            jobs.append((policy, sizes))
            continue
        # A few jobs per worker keep the workers busy to the end; sizes interleaved, so that each job
        # has small (dearer) and large caches.
        n = max(1, min(len(sizes), -(-4 * workers // len(policies)))) if workers > 1 else 1
        jobs += [(policy, sizes[i::n]) for i in range(n)]
    kw = {policy: {**kwargs, "params": params.get(policy)} for policy in policies}
    with scratch_dir(None) if workers > 1 and len(jobs) > 1 else contextlib.nullcontext("") as tmp:
        if not tmp:
            results = [_curve_job((trace, p, s, kw[p])) for p, s in jobs]
        else:
            source = _reopenable(trace, tmp)
            _warm(trace, policies, sizes, kw)
            with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
                results = list(pool.map(_curve_job, [(source, p, s, kw[p]) for p, s in jobs]))
    L = trace.num_layers
    by_policy: dict[str, dict[int, tuple[int, int, list[int]]]] = {p: {} for p in policies}
    for (policy, job_sizes), res in zip(jobs, results, strict=True):
        by_policy[policy].update(zip(job_sizes, res, strict=True))
    out = {}
    for policy in policies:
        got = [by_policy[policy][s] for s in sizes]
        out[policy] = HitCurve(policy, kwargs.get("organisation", "shared"),
                               "stack" if policy in ONE_PASS_POLICIES else "replay", np.asarray(sizes, np.int64),
                               got[0][0], np.array([g[1] for g in got], np.int64),
                               np.array([g[2] for g in got], np.int64).reshape(len(sizes), L))
    return out


def _reopenable(trace: Trace, tmp: str) -> Any:
    """The path workers reopen the trace from: its own file when memory-mapped, else a copy written
    once to the scratch folder (not the trace pickled into every job)."""
    if isinstance(trace.experts, np.memmap) and trace.file:
        return str(trace.file)
    from moesim.traces.io import save

    return str(save(trace, os.path.join(tmp, "trace.safetensors")))


def _warm(trace: Trace, policies: list[str], sizes: list[int], kw: Mapping[str, dict[str, Any]]) -> None:
    """Compile (and cache) every kernel the jobs use, once, in this process before workers start:
    several processes compiling one numba cache at once can crash."""
    head = trace.slice_steps(0, min(trace.num_steps, 2))
    for policy in policies:
        k = {key: v for key, v in kw[policy].items() if key not in ("warmup_steps", "cold_start_per_request")}
        with contextlib.suppress(ConfigError):  # a size too small for the head: the job will say so
            _curve_job((head, policy, [max(sizes)], k))


def hit_ratio_curve(trace: Trace, policy: str, sizes: Sequence[int], *, processes: int | None = None,
                    **kwargs: Any) -> HitCurve:
    """Hits of ``policy`` at each total size in ``sizes`` (experts), other settings as in ``replay``
    (:data:`CURVE_KWARGS`): :func:`hit_ratio_curves` for one policy."""
    unknown = sorted(set(kwargs) - set(CURVE_KWARGS))
    if unknown:
        raise ConfigError(f"hit_ratio_curve does not take {unknown}; it passes on {list(CURVE_KWARGS)}")
    params = kwargs.pop("params", None)
    return hit_ratio_curves(trace, [policy], sizes, processes=processes,
                            params={policy: params} if params else None, **kwargs)[policy]
