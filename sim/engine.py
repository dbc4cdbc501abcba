"""The one engine: every cache question is answered here, piece by piece of one row source.

:func:`run` serves a trace through an L1 cache (:class:`sim.cache_setup.CacheSetup`: organisation,
capacities, pinned experts, tie-break, cold start per request, warm-up and seeds, all resolved once)
and, when asked, the levels below it, a prefetcher and the timing model:

* The row source (:mod:`sim.rows`) reads the trace in pieces (a few MB each, also cut at request
  starts for a cold start per request and at the end of the warm-up), optionally keeping the decode
  steps only; memory stays that of one piece plus the state, whatever the trace's length.
* **Fast path** (no prefetcher, DRAM holds the whole model, a demand-fetching policy): each cache
  instance's rows go through the policy's own ``replay`` loop, the fastest code a policy has; a
  row's misses are then all the timeline needs (:func:`sim.timing.timeline_misses`).
* **Hierarchy path** (otherwise): the rows of all layers in layer-clock order go through
  :func:`sim.hierarchy.serve_piece`, which calls the same policy's ``access`` for every key and
  adds L2, the SSD and prefetches; every transfer becomes an event for
  :func:`sim.timing.timeline_events`.

Both paths give the same L1 hits, misses and evictions, and the same timeline, whenever both apply
(a property test holds them to each other for every policy and cache option). OPT's look-ahead
comes from one backward pass over the pieces (:class:`sim.rows.NextUse`), spilled to a scratch
folder (:mod:`sim.scratch`) for memory-mapped traces.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from moesim.kernels.jit import njit
from moesim.sim.cache_setup import CacheSetup
from moesim.sim.errors import ConfigError
from moesim.sim.hierarchy import (
    C_L1_HITS,
    COUNTERS,
    L2_POLICIES,
    UNLIMITED,
    jitted_server,
    new_state,
    pack,
    restart,
)
from moesim.sim.policies import needs_next_use
from moesim.sim.prefetch import PieceRouting, PrefetchPlan, empty_plan
from moesim.sim.result import HitCounts, ReplayResult
from moesim.sim.row_loop import NEVER
from moesim.sim.rows import (
    Layout,
    NextUse,
    Piece,
    StepStream,
    build_rows,
    default_chunk_steps,
    dense_row_hits,
    dense_rows,
    pinned_hits,
    plan_stream,
    scatter_hits,
    widest_rows,
)
from moesim.sim.scratch import scratch_dir
from moesim.sim.stepstats import StepSeries
from moesim.sim.timing import Clock, ComputeModel, Links, timeline_events, timeline_misses, timeline_shared
from moesim.traces.trace import PHASE_NAMES, Trace
from numba.typed import List
from tqdm import tqdm


@dataclass(frozen=True)
class LowerLevels:
    """What lies below the GPU cache.

    l2_capacity: DRAM's cache size in experts, or ``None`` when DRAM holds the whole model (every
        L1 miss is a DRAM hit, no SSD traffic).
    l2_policy: ``lru`` or ``fifo``; inclusive: L2 keeps a copy of everything in L1 (else exclusive);
    l2_prefill: L2 starts holding the first keys in key order (the model loaded before decoding).
    prefetch_budget: most prefetched experts in flight at once (``None``: no limit beyond room).
    """

    l2_capacity: int | None = None
    l2_policy: str = "lru"
    inclusive: bool = True
    l2_prefill: bool = True
    prefetch_budget: int | None = None

    def __post_init__(self) -> None:
        if self.l2_policy not in L2_POLICIES:
            raise ConfigError(f"L2 policy must be one of {sorted(L2_POLICIES)}, got {self.l2_policy!r}")
        if self.l2_capacity is not None and (isinstance(self.l2_capacity, bool) or self.l2_capacity < 1):
            raise ConfigError(f"L2 capacity must be >= 1 expert, got {self.l2_capacity!r}")
        b = self.prefetch_budget
        if b is not None and (isinstance(b, bool) or int(b) != b or b < 0):
            raise ConfigError(f"prefetch_budget must be a non-negative integer or None, got {b!r}")


@dataclass(frozen=True)
class Timing:
    """The timing model's inputs: compute seconds per row and step, link costs, expert size."""

    compute: ComputeModel
    links: Links
    bytes_per_expert: float


@dataclass
class TimingTotals:
    """Sums over the counted steps (after the warm-up), per-step latencies, link busy time."""

    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0
    attention_s: float = 0.0
    experts_s: float = 0.0
    head_s: float = 0.0
    stall_s: float = 0.0
    whole_run_s: float = 0.0  # warm-up included (link busy time is over the whole run)
    h2d_busy_s: float = 0.0
    ssd_busy_s: float = 0.0
    latency_p50_s: float = float("nan")
    latency_p90_s: float = float("nan")
    latency_p99_s: float = float("nan")


@dataclass
class Records:
    """Per-entry records of a run (only with ``record=True``: they grow with the trace)."""

    step_hits: np.ndarray  # uint16 [S, L]
    hit_mask: np.ndarray  # bool [S, L, K] for the stream's steps
    events: dict[str, np.ndarray] = field(default_factory=dict)  # row (global), key, src, kind
    step_time: np.ndarray | None = None  # float64 [S]


@dataclass
class EngineRun:
    """What :func:`run` produced: the one L1 result, the hierarchy's counters, the timing."""

    l1: ReplayResult
    counts: dict[str, int]
    timing: TimingTotals | None
    records: Records | None
    stream_steps: int
    widest_row: int


@njit
def row_widths(chunk):
    """int64 ``[T, L]``: the experts (non-padding entries) of each row."""
    T, L, K = chunk.shape
    out = np.zeros((T, L), np.int64)
    for t in range(T):
        for layer in range(L):
            n = 0
            for k in range(K):
                n += chunk[t, layer, k] >= 0
            out[t, layer] = n
    return out


def _widest(stream: StepStream, pinned: np.ndarray) -> np.ndarray:
    """The widest row of each layer, pinned experts not counted (one pass over the stream)."""
    widest = np.zeros(stream.trace.num_layers, np.int64)
    for piece in stream.pieces:
        widest_rows(stream.read(piece), stream.trace.num_experts, pinned, widest)
    return widest


def _check_widths(setup: CacheSetup, widest: np.ndarray) -> None:
    """Refuse a cache smaller than a row it must hold at once (pinned experts aside)."""
    layout = setup.layout
    for j, cap in enumerate(setup.policy_slots):
        w = int(widest[j] if layout.per_layer else widest.max(initial=0))
        if cap < w:
            where = f"layer {j}'s cache" if layout.per_layer else "the cache"
            pinned = "" if not layout.pinned.any() else " (after the pinned experts)"
            raise ConfigError(f"{where} has {cap} policy slot(s){pinned} but a row needs {w} experts at "
                              "once: the capacity must be at least the widest row")


class _Counts:
    """Hits and accesses per layer and phase, warm-up apart, accumulated piece by piece."""

    def __init__(self, L: int) -> None:
        self.layer_acc = np.zeros(L, np.int64)
        self.layer_hit = np.zeros(L, np.int64)
        self.warm = np.zeros(2, np.int64)
        self.evictions = np.zeros(2, np.int64)  # warm-up, counted
        self.pinned = 0
        self.phases: dict[int, np.ndarray] = {}

    def add(self, piece: Piece, step_acc: np.ndarray, step_hits: np.ndarray, phase: np.ndarray | None,
            pinned: int, evictions: int) -> None:
        self.evictions[int(piece.counted)] += evictions
        if not piece.counted:
            self.warm += (int(step_acc.sum()), int(step_hits.sum()))
            return
        self.pinned += pinned
        self.layer_acc += step_acc.sum(axis=0)
        self.layer_hit += step_hits.sum(axis=0)
        if phase is None:
            return
        for value in np.unique(phase):
            sel = phase == value
            self.phases.setdefault(int(value), np.zeros(2, np.int64))
            self.phases[int(value)] += (int(step_acc[sel].sum()), int(step_hits[sel].sum()))


def _uses_hierarchy(setup: CacheSetup, lower: LowerLevels | None, prefetcher: Any, timing: Any = None) -> bool:
    """Whether the rows need the hierarchy loop. A policy that starts full (``PRELOADS``) needs it
    only under the timing model, which charges each streamed-through miss (a bypass) as its own
    transfer; its hits and misses alone come from its ``replay`` like any other policy's."""
    return (prefetcher is not None or (lower is not None and lower.l2_capacity is not None)
            or (timing is not None and bool(getattr(setup.policy, "PRELOADS", False))))


def run(trace: Trace, setup: CacheSetup, *, decode_only: bool = False, lower: LowerLevels | None = None,
        prefetcher: Any = None, timing: Timing | None = None, active_field: str | None = None,
        record: bool = False, chunk_steps: int | None = None, progress: bool = False,
        scratch: str | os.PathLike[str] | None = None, path: str = "auto") -> EngineRun:
    """Serve ``trace`` through ``setup``'s L1 cache and, if given, the levels below, a prefetcher
    session (:func:`sim.prefetch.start`) and the timing model (see the module docstring).

    ``decode_only``: the caches see the decode steps only. ``active_field``: a per-step field of
    the trace holding the active sequences of each step (a batched trace's ``position``; default 1).
    ``record``: keep per-step and per-entry records (memory grows with the trace; for tests and
    small studies). ``scratch``: where spilled arrays go (default: the temporary folder).
    ``path``: ``"auto"``, or ``"hierarchy"`` to take the hierarchy path even when the fast one
    applies, or ``"rows"`` to take the fast path through :func:`sim.rows.build_rows` and the
    policy's ``replay`` only, never its shortcuts (a fused ``replay_steps``, dense rows); the tests
    compare them.
    """
    if (trace.num_layers, trace.num_experts) != (setup.layout.num_layers, setup.layout.num_experts):
        raise ConfigError(f"trace {trace.file or '<memory>'} has {trace.num_layers} layers x {trace.num_experts} "
                          f"experts but the cache was set up for {setup.layout.num_layers} x "
                          f"{setup.layout.num_experts}")
    if path not in ("auto", "hierarchy", "rows"):
        raise ConfigError(f"path must be 'auto', 'hierarchy' or 'rows', got {path!r}")
    L, K = trace.num_layers, trace.width
    chunk_steps = default_chunk_steps(L, K) if chunk_steps is None else int(chunk_steps)
    stream = plan_stream(trace, chunk_steps, warmup_steps=setup.warmup_steps, cold_start=setup.cold_start,
                         decode_only=decode_only)
    general = path == "hierarchy" or _uses_hierarchy(setup, lower, prefetcher, timing)
    # The widest row: to refuse a cache that cannot hold one, and for the hierarchy's room rule. A
    # pass over the trace, skipped when no row can be wider than the cache (most replays).
    if general or min(setup.policy_slots) < K:
        widest = _widest(stream, setup.layout.pinned)
        _check_widths(setup, widest)
    else:
        widest = np.full(L, K, np.int64)
    lower = lower or LowerLevels()
    with (scratch_dir(scratch) if needs_next_use(setup.policy) or timing is not None
          else contextlib.nullcontext("")) as tmp:
        runner = _Runner(trace, stream, setup, general, lower, prefetcher, timing, active_field, record, tmp,
                         int(widest.max(initial=0)), shortcuts=path == "auto")
        bar = tqdm(total=trace.num_steps, unit="step", desc=f"replay {setup.policy.NAME}", disable=not progress,
                   leave=False)
        for p, piece in enumerate(stream.pieces):
            runner.serve(p, piece)
            bar.update(piece.stop - piece.start)
        bar.close()
        return runner.finish()


def run_sizes(trace: Trace, setups: Sequence[CacheSetup], *, decode_only: bool = False,
              chunk_steps: int | None = None, scratch: str | os.PathLike[str] | None = None) -> list[EngineRun]:
    """:func:`run` of several L1 caches that differ only in capacity and seed (the sizes of a
    hit-ratio curve), served in lock-step: each piece of the trace is read and turned into rows
    (and, for OPT, its next-use times) once for all of them, then each cache serves it through the
    fast path. Without a level below, a prefetcher or timing; the same results as one :func:`run`
    per setup (the tests check it).
    """
    if not setups:
        return []
    first = setups[0]
    for s in setups[1:]:
        same = (s.policy is first.policy and s.layout.organisation == first.layout.organisation
                and s.layout.tie_break == first.layout.tie_break
                and np.array_equal(s.layout.pinned, first.layout.pinned)
                and (s.warmup_steps, s.cold_start) == (first.warmup_steps, first.cold_start))
        if not same:
            raise ConfigError("run_sizes: the caches must differ only in capacity and seed")
    if (trace.num_layers, trace.num_experts) != (first.layout.num_layers, first.layout.num_experts):
        return [run(trace, s, decode_only=decode_only, chunk_steps=chunk_steps) for s in setups]  # refuses it
    L, K = trace.num_layers, trace.width
    chunk_steps = default_chunk_steps(L, K) if chunk_steps is None else int(chunk_steps)
    stream = plan_stream(trace, chunk_steps, warmup_steps=first.warmup_steps, cold_start=first.cold_start,
                         decode_only=decode_only)
    if min(min(s.policy_slots) for s in setups) < K:
        widest = _widest(stream, first.layout.pinned)
        for s in setups:
            _check_widths(s, widest)
    with scratch_dir(scratch) if needs_next_use(first.policy) else contextlib.nullcontext("") as tmp:
        next_use = NextUse(stream, first.layout, tmp) if needs_next_use(first.policy) else None
        runners = [_Runner(trace, stream, s, False, LowerLevels(), None, None, None, False, tmp, K,
                           next_use=next_use) for s in setups]
        need_rows = any(not r.fused for r in runners)
        for p, piece in enumerate(stream.pieces):
            chunk = stream.read(piece)
            rows = dense_rows(chunk, piece.step0, first.layout) if need_rows else None
            for runner in runners:
                runner.serve(p, piece, chunk, rows)
        return [runner.finish() for runner in runners]


class _Runner:
    """The state of one :func:`run` between pieces."""

    def __init__(self, trace: Trace, stream: StepStream, setup: CacheSetup, general: bool, lower: LowerLevels,
                 prefetcher: Any, timing: Timing | None, active_field: str | None, record: bool, tmp: str,
                 widest: int, shortcuts: bool = True, next_use: NextUse | None = None) -> None:
        self.trace, self.stream, self.setup, self.general = trace, stream, setup, general
        self.lower, self.prefetcher, self.timing = lower, prefetcher, timing
        self.active_field, self.record, self.widest = active_field, record, widest
        L, E, K = trace.num_layers, trace.num_experts, trace.width
        self.L, self.E, self.K = L, E, K
        self.layout = setup.layout
        self.any_pinned = bool(self.layout.pinned.any())
        self.counts = _Counts(L)
        self.policy = setup.policy
        self.states: list[Any] = setup.new_states(0)
        self.count_from = -1  # first counted row time
        self.next_use = next_use
        if needs_next_use(self.policy) and next_use is None:
            layout = self.layout.time_major() if general else self.layout
            self.next_use = NextUse(stream, layout, tmp, keep_empty=general,
                                    first_use=general and prefetcher is not None)
        self.no_next = np.zeros(0, np.int64)
        if general:
            self.server = jitted_server(self.policy)
            self.l2_code = L2_POLICIES[lower.l2_policy]
            self.h = new_state(L * E, self.layout.num_instances, lower.l2_capacity, lower.l2_prefill, self.l2_code)
            self.caps = np.asarray(setup.policy_slots, np.int64)
            self.routing = Layout.routing(L, E)
            self._preload()
        # Shortcuts of the fast path, each held to the plain one (``path="rows"``) by the tests: a piece
        # of full rows goes to the policy's ``replay`` without gathering (:func:`sim.rows.dense_rows`);
        # otherwise rows wider than one key may go through the policy's fused ``replay_steps``, which
        # reads the trace itself. Rows of one key keep to ``replay``: its one-key stream loop is the
        # faster one (the fused loops serve any row width).
        self.shortcuts = shortcuts and not general
        self.fused = (self.shortcuts and hasattr(self.policy, "replay_steps") and not self.layout.per_layer
                      and not self.any_pinned and self.layout.tie_break == "row" and not record
                      and self.next_use is None and K > 1)
        self.clock = Clock.start(L * E) if timing is not None else None
        self.totals = TimingTotals() if timing is not None else None
        self.series = StepSeries(os.path.join(tmp, "step_time.f64")) if timing is not None else None
        if timing is not None:
            self.h2d_cost, self.ssd_cost = timing.links.costs(timing.bytes_per_expert)
        S = stream.num_steps
        self.rec = Records(np.zeros((S, L), np.uint16), np.zeros((S, L, K), np.bool_),
                           step_time=np.zeros(S) if timing is not None else None) if record else None
        self.events: list[tuple[np.ndarray, ...]] = []

    # ---- one piece ---------------------------------------------------------------------------

    def _preload(self) -> None:
        """A policy that starts full (``PRELOADS``) says which keys it holds: L1 holds them too."""
        if not hasattr(self.policy, "preloaded"):
            return
        for j, state in enumerate(self.states):
            if state is not None:
                base = j * self.E if self.layout.per_layer else 0
                self.h.res1[base + self.policy.preloaded(state)] = 1

    def serve(self, p: int, piece: Piece, chunk: np.ndarray | None = None, rows: Any = ()) -> None:
        """Serve piece ``p``: its experts (``chunk``) and dense rows (``rows``, see
        :func:`sim.rows.dense_rows`) are read here unless given (:func:`run_sizes` shares them)."""
        if piece.reset:
            self.states = self.setup.new_states(piece.epoch)
            if self.general:
                restart(self.h, self.lower.l2_capacity, self.lower.l2_prefill, self.l2_code, counted=True,
                        count_from=self.count_from if self.count_from >= 0 else NEVER)
                self._preload()
        if piece.counted and self.count_from < 0:
            self.count_from = piece.step0 * self.L
        if chunk is None:
            chunk = self.stream.read(piece)
        Tp = chunk.shape[0]
        step_hits = np.zeros((Tp, self.L), np.int64)
        mask = (self.rec.hit_mask[piece.step0:piece.step0 + Tp] if self.rec is not None
                else np.zeros((0, 0, 0), np.bool_))
        dense = None
        if self.shortcuts and not self.fused:
            dense = dense_rows(chunk, piece.step0, self.layout) if rows == () else rows
        if dense is not None:
            step_acc = np.full((Tp, self.L), self.K, np.int64)
        elif self.fused:
            step_acc = np.zeros_like(step_hits)  # the fused loop counts them
        else:
            step_acc = row_widths(chunk)
        pinned = 0
        if self.any_pinned:
            pinned_hits(chunk, self.E, self.layout.pinned, step_hits, mask, self.record)
            pinned = int(step_hits.sum())
        if self.general:
            n_ev, ev = self._serve_hierarchy(p, piece, chunk, step_hits, mask)
            evictions = 0  # the hierarchy counts its own
        elif dense is not None:
            evictions = self._serve_dense(p, dense, step_hits, mask)
            n_ev, ev = 0, None
        else:
            evictions = self._serve_fast(p, piece, chunk, step_hits, mask, step_acc)
            n_ev, ev = 0, None
        if self.rec is not None:
            self.rec.step_hits[piece.step0:piece.step0 + Tp] = step_hits
        self.counts.add(piece, step_acc, step_hits, self.stream.read_field("phase", piece), pinned, evictions)
        if self.timing is not None:
            self._time(piece, chunk, step_acc, step_hits, n_ev, ev)

    def _serve_dense(self, p: int, rows: tuple[np.ndarray, np.ndarray, np.ndarray], step_hits: np.ndarray,
                     mask: np.ndarray) -> int:
        """A piece of full rows (:func:`sim.rows.dense_rows`) through the policy's ``replay``; a row's
        hits are its ``K`` consecutive bytes of the hit vector."""
        keys, row_ptr, row_time = rows
        hits = np.empty(len(keys), np.uint8)
        nu = self.next_use.of(p, 0) if self.next_use is not None else self.no_next
        evictions = int(self.policy.replay(self.states[0], keys, row_ptr, row_time, nu,
                                           self.layout.keys_per_instance, hits))
        dense_row_hits(hits, self.K, step_hits.reshape(-1))
        if self.record:
            mask[...] = hits.reshape(mask.shape) != 0
        return evictions

    def _serve_fast(self, p: int, piece: Piece, chunk: np.ndarray, step_hits: np.ndarray, mask: np.ndarray,
                    step_acc: np.ndarray) -> int:
        if self.fused:  # also counts the accesses of each row into step_acc
            return int(self.policy.replay_steps(self.states[0], chunk, self.E, step_hits, step_acc))
        block = build_rows(chunk, piece.step0, self.layout)
        evictions = 0
        n_keys = self.layout.keys_per_instance
        for j, state in enumerate(self.states):
            keys, row_ptr, row_time, src = block.instance(j)
            if len(keys) == 0:
                continue
            hits = np.empty(len(keys), np.uint8)
            nu = self.next_use.of(p, j) if self.next_use is not None else self.no_next
            evictions += int(self.policy.replay(state, keys, row_ptr, row_time, nu, n_keys, hits))
            scatter_hits(hits, src, self.K, step_hits.reshape(-1), mask.reshape(-1), self.record)
        return evictions

    def _serve_hierarchy(self, p: int, piece: Piece, chunk: np.ndarray, step_hits: np.ndarray,
                         mask: np.ndarray) -> tuple[int, tuple[np.ndarray, ...]]:
        L, E = self.L, self.E
        block = build_rows(chunk, piece.step0, self.layout.time_major(), keep_empty=True)
        row0 = piece.step0 * L
        plan = self._plan(p, piece, chunk, row0) if self.prefetcher is not None else empty_plan(len(block.row_ptr) - 1)
        h = self.h
        if self.next_use is not None:
            if p == 0 or piece.reset:
                if self.prefetcher is not None:
                    h.next_req[:] = self.next_use.first_use(p)
            nu = self.next_use.of(p, 0)
        else:
            nu = self.no_next
        hits = np.empty(len(block.keys), np.uint8)
        n_max = len(block.keys) + len(plan)
        ev = (np.zeros(n_max, np.int64), np.zeros(n_max, np.int32), np.zeros(n_max, np.int8), np.zeros(n_max, np.int8))
        states = List()
        for j, s in enumerate(self.states):
            # An instance with no policy slot never serves a key (all of its keys are pinned).
            states.append(s if s is not None else self.policy.make_state(
                1, self.layout.keys_per_instance, self.setup.instance_params[j], 0))
        budget = UNLIMITED if self.lower.prefetch_budget is None else int(self.lower.prefetch_budget)
        count_from = self.count_from if self.count_from >= 0 else NEVER
        cfg = (self.layout.per_layer, L, E, self.widest, row0, self.lower.l2_capacity is not None, self.l2_code,
               self.lower.inclusive, budget, piece.counted, count_from)
        n_ev = self.server(states, cfg, self.caps, self.layout.pinned, (block.keys, block.row_ptr, np.asarray(nu)),
                           (plan.row_ptr, plan.keys, plan.target), pack(h), (hits, *ev))
        scatter_hits(hits, block.src, self.K, step_hits.reshape(-1), mask.reshape(-1), self.record)
        if self.record:
            self.events.append((ev[0][:n_ev] + row0, ev[1][:n_ev], ev[2][:n_ev], ev[3][:n_ev]))
        return n_ev, (block, ev)

    def _plan(self, p: int, piece: Piece, chunk: np.ndarray, row0: int) -> PrefetchPlan:
        routing = build_rows(chunk, piece.step0, self.routing, keep_empty=True)
        total_rows = self.stream.num_steps * self.L
        epoch_end = total_rows
        for q in range(p + 1, len(self.stream.pieces)):
            if self.stream.pieces[q].reset:
                epoch_end = self.stream.pieces[q].step0 * self.L
                break
        plan = self.prefetcher.plan_piece(PieceRouting(
            chunk, routing.keys, routing.row_ptr, row0, total_rows, epoch_end,
            self.stream.read_field("predicted", piece), lambda n: self._ahead(p, n)))
        return plan

    def _ahead(self, p: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Routing rows of up to ``n`` rows after piece ``p``, within its epoch."""
        keys: list[np.ndarray] = []
        ptrs = [np.zeros(1, np.int64)]
        rows = 0
        total = 0
        for q in range(p + 1, len(self.stream.pieces)):
            nxt = self.stream.pieces[q]
            if nxt.reset or rows >= n:
                break
            chunk = self.stream.read(nxt)[:-(-(n - rows) // self.L)]
            block = build_rows(chunk, nxt.step0, self.routing, keep_empty=True)
            take = min(n - rows, len(block.row_ptr) - 1)
            ptr = block.row_ptr[:take + 1]
            keys.append(block.keys[:ptr[-1]])
            ptrs.append(ptr[1:] + total)
            total += int(ptr[-1])
            rows += take
        return (np.concatenate(keys) if keys else np.zeros(0, np.int32)), np.concatenate(ptrs)

    def _time(self, piece: Piece, chunk: np.ndarray, step_acc: np.ndarray, step_hits: np.ndarray, n_ev: int,
              ev: Any) -> None:
        assert self.timing is not None and self.clock is not None and self.totals is not None
        Tp = chunk.shape[0]
        active = (self.stream.read_field(self.active_field, piece) if self.active_field is not None else None)
        active = np.ones(Tp, np.int64) if active is None else np.asarray(active, np.int64)
        attn, expert, head = self.timing.compute.times(step_acc, active)
        step_time = np.zeros(Tp)
        stall = np.zeros((Tp, self.L))
        c = self.clock
        links = self.timing.links
        if self.general and links.contended:  # fetches and compute share the machine (sim.timing)
            block, (ev_row, ev_key, ev_src, _) = ev
            c.reserve(n_ev)
            timeline_shared(block.row_ptr, block.keys, self.L, attn, expert, head, ev_row[:n_ev], ev_key[:n_ev],
                            ev_src[:n_ev], self.h2d_cost, self.ssd_cost, links.handoff_s, links.compute_slowdown,
                            links.fetch_slowdown, c.clock, c.ready, c.queue, c.queue_key, c.queue_pos, c.key_seq,
                            step_time, stall)
        elif self.general:
            block, (ev_row, ev_key, ev_src, _) = ev
            timeline_events(block.row_ptr, block.keys, self.L, attn, expert, head, ev_row[:n_ev], ev_key[:n_ev],
                            ev_src[:n_ev], self.h2d_cost, self.ssd_cost, links.handoff_s, c.clock, c.ready, step_time,
                            stall)
        else:  # demand misses only: a row's transfers never overlap compute, so contention is moot
            timeline_misses(step_acc - step_hits, attn, expert, head, self.h2d_cost, links.handoff_s, c.clock,
                            step_time, stall)
        t = self.totals
        t.whole_run_s += float(step_time.sum())
        if self.rec is not None and self.rec.step_time is not None:
            self.rec.step_time[piece.step0:piece.step0 + Tp] = step_time
        if not piece.counted:
            return
        self.series.append(step_time)  # type: ignore[union-attr]
        t.steps += Tp
        t.tokens += int(active.sum())
        t.seconds += float(step_time.sum())
        t.attention_s += float(attn.sum())
        t.experts_s += float(expert.sum())
        t.head_s += float(head.sum())
        t.stall_s += float(stall.sum())

    # ---- the result --------------------------------------------------------------------------

    def finish(self) -> EngineRun:
        c, s = self.counts, self.setup
        l1 = ReplayResult(
            policy=s.policy.NAME, organisation=self.layout.organisation, capacity=s.capacity,
            layer_capacity=s.layer_capacity, num_pinned=s.num_pinned, params=dict(s.params), seed=s.seed,
            tie_break=self.layout.tie_break, warmup_steps=s.warmup_steps, cold_start_per_request=s.cold_start,
            num_steps=self.stream.num_steps, accesses=int(c.layer_acc.sum()), hits=int(c.layer_hit.sum()),
            evictions=int(c.evictions[1]), pinned_hits=c.pinned,
            per_layer=tuple(HitCounts(int(a), int(h)) for a, h in zip(c.layer_acc, c.layer_hit, strict=True)),
            per_phase={PHASE_NAMES[v]: HitCounts(int(x[0]), int(x[1])) for v, x in sorted(c.phases.items())},
            warmup=HitCounts(int(c.warm[0]), int(c.warm[1])), warmup_evictions=int(c.evictions[0]),
            step_hits=self.rec.step_hits if self.rec is not None else None,
            hit_mask=self.rec.hit_mask if self.rec is not None else None)
        if self.general:
            cnt = self.h.cnt
            if cnt[COUNTERS.index("inconsistent")]:
                raise ConfigError(f"policy {s.policy.NAME!r} disagreed {int(cnt[-1])} times with the hierarchy "
                                  "about what it holds (see the policy contract in sim/policies/__init__.py)")
            counts = {name: int(cnt[i]) for i, name in enumerate(COUNTERS) if name != "inconsistent"}
            counts["l1_hits"] += c.pinned  # pinned experts are L1 hits the policy never sees
            l1 = dataclasses.replace(l1, evictions=counts["l1_evictions"],
                                     warmup_evictions=counts["l1_evictions_warmup"])
            assert counts["l1_hits"] == l1.hits and cnt[C_L1_HITS] + c.pinned == l1.hits
        else:
            misses = l1.accesses - l1.hits
            counts = dict.fromkeys((n for n in COUNTERS if n != "inconsistent"), 0)
            counts.update(l1_hits=l1.hits, l1_misses=misses, l1_evictions=l1.evictions,
                          l1_evictions_warmup=l1.warmup_evictions, l1_fills=misses, l2_hits=misses)
        totals = None
        if self.totals is not None:
            totals = self.totals
            totals.h2d_busy_s = float(self.clock.clock[3])  # type: ignore[union-attr]
            totals.ssd_busy_s = float(self.clock.clock[4])  # type: ignore[union-attr]
            p50, p90, p99 = self.series.percentiles([50, 90, 99])  # type: ignore[union-attr]
            totals.latency_p50_s, totals.latency_p90_s, totals.latency_p99_s = p50, p90, p99
        if self.rec is not None and self.events:
            self.rec.events = {name: np.concatenate([e[i] for e in self.events])
                               for i, name in enumerate(("row", "key", "src", "kind"))}
        return EngineRun(l1, counts, totals, self.rec, self.stream.num_steps, self.widest)


__all__ = ["EngineRun", "LowerLevels", "Records", "Timing", "TimingTotals", "row_widths", "run", "run_sizes"]
