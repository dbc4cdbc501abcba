"""Replay a routing trace through an expert cache and count the hits.

``replay(trace, "lru", 64)`` is the one call behind notebooks, tests, the Hydra app and the
benchmarks. The replay follows the layer clock: step ``t`` of the trace serves layers ``0..L-1`` in
order, row ``(t, l)`` at time ``t * L + l``; a row's experts are all needed at once, so they never
evict each other. A cache is shared by all layers (keys ``l * E + e``) or split into one cache per
layer (independent policy instances, each with its own capacity: an exact model, since the
layers' caches do not interact).

Memory: the trace is read in pieces of ``chunk_steps`` steps (policy state carries across them), so
a memory-mapped trace larger than RAM replays in the memory of one piece (~50 MB by default) plus
the policy state. OPT needs every access's next use, found in a backward pass over the pieces
before the forward replay: 8 bytes per (non-pinned) access, kept in RAM for an in-memory trace and
spilled to a temporary folder (one ``.npy`` per piece, memory-mapped back) for a memory-mapped one.

Pinned experts always hit and take none of the policy's slots: the policy manages
``capacity - len(pinned)`` (per layer: that layer's capacity minus its pinned experts). Choose
them from a *profiling* trace with :func:`sim.pinning.choose_pinned`, not from the replayed one.

Cold start per request: the caches restart empty at every request boundary (each request alone on
the machine); the default keeps them warm across requests (a server). Warm-up: steps before
``warmup_steps`` are replayed but counted apart.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
from moesim.kernels.jit import njit
from moesim.sim.errors import ConfigError
from moesim.sim.kernel import NEVER
from moesim.sim.pinning import choose_pinned
from moesim.sim.policies import get_policy, needs_next_use, resolve_params
from moesim.sim.result import HitCounts, ReplayResult
from moesim.sim.rows import (
    ORGANISATIONS,
    TIE_BREAKS,
    Layout,
    Piece,
    default_chunk_steps,
    iter_row_blocks,
    next_use_backward,
    pinned_hits,
    plan_pieces,
    scatter_hits,
    widest_rows,
)
from moesim.traces.trace import PHASE_NAMES, Trace
from tqdm import tqdm

__all__ = ["ReplayResult", "choose_pinned", "instance_seed", "pinned_table", "replay", "resolve_capacity"]


def instance_seed(seed: int, instance: int, epoch: int) -> int:
    """The seed of cache instance ``instance`` (0 if shared, else the layer) after ``epoch`` resets."""
    return int(np.random.SeedSequence([seed, instance, epoch]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def resolve_capacity(trace: Trace, capacity: int | None, capacity_bytes: float | None,
                     bytes_per_expert: float | None, organisation: str,
                     per_layer_capacity: Sequence[int] | None) -> tuple[int, tuple[int, ...] | None]:
    """(total slots, slots per layer or None) from the ways a capacity can be given."""
    if organisation not in ORGANISATIONS:
        raise ConfigError(f"organisation must be one of {ORGANISATIONS}, got {organisation!r}")
    L = trace.num_layers
    given = [name for name, v in (("capacity", capacity), ("capacity_bytes", capacity_bytes),
                                  ("per_layer_capacity", per_layer_capacity)) if v is not None]
    if len(given) > 1:
        raise ConfigError(f"give only one of capacity, capacity_bytes, per_layer_capacity (got {given})")
    if not given:
        raise ConfigError("no cache size: give capacity (experts), capacity_bytes with bytes_per_expert, "
                          "or per_layer_capacity")
    if bytes_per_expert is not None and capacity_bytes is None:
        raise ConfigError("bytes_per_expert is only used with capacity_bytes")
    if per_layer_capacity is not None:
        if organisation != "per_layer":
            raise ConfigError("per_layer_capacity needs organisation='per_layer'")
        caps = tuple(_as_int(c, "per_layer_capacity") for c in per_layer_capacity)
        if len(caps) != L:
            raise ConfigError(f"per_layer_capacity has {len(caps)} entries but the trace has {L} layers")
        bad = [i for i, c in enumerate(caps) if c < 1]
        if bad:
            raise ConfigError(f"per_layer_capacity[{bad[0]}] = {caps[bad[0]]}: every layer needs >= 1 expert")
        return sum(caps), caps
    if capacity_bytes is not None:
        if bytes_per_expert is None or not bytes_per_expert > 0 or not math.isfinite(bytes_per_expert):
            raise ConfigError(f"capacity_bytes needs a positive bytes_per_expert, got {bytes_per_expert!r}")
        if not capacity_bytes >= 0 or not math.isfinite(capacity_bytes):
            raise ConfigError(f"capacity_bytes must be a finite number >= 0, got {capacity_bytes!r}")
        # floor, forgiving the last-bit rounding of a quotient that is an integer in exact arithmetic
        experts = capacity_bytes / bytes_per_expert * (1 + 1e-12)
        if not math.isfinite(experts):  # 1e300 / 1e-300: math.floor would raise OverflowError
            raise ConfigError(f"capacity_bytes={capacity_bytes:g} / bytes_per_expert={bytes_per_expert:g} is "
                              "not a finite number of experts")
        capacity = math.floor(experts)
        if capacity < 1:
            raise ConfigError(f"capacity_bytes={capacity_bytes:g} holds no expert of {bytes_per_expert:g} bytes")
    capacity = _as_int(capacity, "capacity")
    if capacity < 1:
        raise ConfigError(f"capacity must be >= 1 expert, got {capacity}")
    if capacity >= 1 << 62:  # the jitted loops count slots in int64
        raise ConfigError(f"capacity {capacity:.3g} experts is beyond any cache (the trace has "
                          f"{L * trace.num_experts} keys)")
    if organisation == "shared":
        return capacity, None
    if capacity < L:
        raise ConfigError(f"capacity {capacity} cannot give each of the {L} per-layer caches an expert")
    # An equal split; the remainder goes one slot each to the first layers so no slot is wasted.
    base, extra = divmod(capacity, L)
    return capacity, tuple(base + (1 if i < extra else 0) for i in range(L))


def _as_int(value: Any, name: str) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    raise ConfigError(f"{name} must be an integer, got {value!r}")


def pinned_table(trace: Trace, pinned: Collection[int] | None) -> np.ndarray:
    """uint8 ``[L * E]``: 1 at each pinned key (checked: in range, no duplicates)."""
    L, E = trace.num_layers, trace.num_experts
    table = np.zeros(L * E, np.uint8)
    for k in pinned or ():
        key = _as_int(k, "pinned key")
        if not 0 <= key < L * E:
            raise ConfigError(f"pinned key {key} is outside [0, {L * E}) (keys are layer * {E} + expert)")
        if table[key]:
            raise ConfigError(f"pinned key {key} is given twice")
        table[key] = 1
    return table


@dataclass
class _Instance:
    """One independent cache: which policy slots it has and its current state."""

    index: int
    capacity: int  # slots the policy manages (pinned excluded)
    num_keys: int
    params: dict[str, Any]
    state: tuple | None = None  # None: nothing to serve (every request it would see is pinned)


def _check_widths(trace: Trace, layout: Layout, policy_caps: list[int], chunk_steps: int) -> None:
    """Refuse a cache smaller than a row it must hold at once (pinned experts aside)."""
    if min(policy_caps) >= trace.width:
        return  # no row can be wider than the trace's width
    widest = np.zeros(trace.num_layers, np.int64)
    for start in range(0, trace.num_steps, chunk_steps):
        chunk = np.ascontiguousarray(trace.experts[start:start + chunk_steps])
        widest_rows(chunk, trace.num_experts, layout.pinned, widest)
    for j, cap in enumerate(policy_caps):
        w = int(widest[j] if layout.per_layer else widest.max(initial=0))
        if cap < w:
            where = f"layer {j}'s cache" if layout.per_layer else "the cache"
            pinned = "" if not layout.pinned.any() else " (after the pinned experts)"
            raise ConfigError(f"{where} has {cap} policy slot(s){pinned} but a row needs {w} experts at "
                              "once: the capacity must be at least the widest row")


def replay(trace: Trace, policy: str, capacity: int | None = None, *, capacity_bytes: float | None = None,
           bytes_per_expert: float | None = None, organisation: str = "shared",
           per_layer_capacity: Sequence[int] | None = None, pinned: Collection[int] | None = None,
           params: Mapping[str, Any] | None = None, seed: int = 0, warmup_steps: int = 0,
           cold_start_per_request: bool = False, tie_break: str = "row", record_steps: bool = False,
           chunk_steps: int | None = None, progress: bool = False) -> ReplayResult:
    """Replay ``trace`` through ``policy`` and count hits (see the module docstring).

    ``capacity`` in experts, or ``capacity_bytes`` / ``bytes_per_expert`` (floored to whole
    experts), or ``per_layer_capacity`` (one entry per layer); with ``organisation="per_layer"``
    a total ``capacity`` is split equally (the remainder to the first layers). ``pinned``: keys
    ``l * E + e``. ``tie_break``: order of a row's experts (``row`` as recorded, ``reverse``,
    ``expert_id``); it never changes whether they hit, only the recency / insertion order they
    leave (see :mod:`sim.rows`). ``progress``: a progress bar over the trace's pieces (stderr). ``seed`` seeds randomized policies (per cache instance and
    restart, :func:`instance_seed`). ``chunk_steps`` sets the piece size (default ~4 M entries).
    """
    module = get_policy(policy)
    if tie_break not in TIE_BREAKS:
        raise ConfigError(f"tie_break must be one of {tuple(TIE_BREAKS)}, got {tie_break!r}")
    seed = _as_int(seed, "seed")
    if seed < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}")
    warmup_steps = _as_int(warmup_steps, "warmup_steps")
    if warmup_steps < 0:
        raise ConfigError(f"warmup_steps must be >= 0, got {warmup_steps}")
    total, layer_caps = resolve_capacity(trace, capacity, capacity_bytes, bytes_per_expert, organisation,
                                         per_layer_capacity)
    table = pinned_table(trace, pinned)
    layout = Layout(organisation, trace.num_layers, trace.num_experts, table, tie_break)
    L, E, K = trace.num_layers, trace.num_experts, trace.width
    if layout.per_layer:
        pinned_per = table.reshape(L, E).sum(axis=1)
        caps = [c - int(p) for c, p in zip(layer_caps or (), pinned_per, strict=True)]
        for layer, (c, p) in enumerate(zip(layer_caps or (), pinned_per, strict=True)):
            if p > c:
                raise ConfigError(f"{int(p)} experts pinned in layer {layer} exceed its capacity of {c}")
    else:
        if int(table.sum()) > total:
            raise ConfigError(f"{int(table.sum())} pinned experts exceed the capacity of {total}")
        caps = [total - int(table.sum())]
    chunk_steps = _as_int(chunk_steps, "chunk_steps") if chunk_steps is not None else default_chunk_steps(L, K)
    _check_widths(trace, layout, caps, chunk_steps)
    request_starts = None
    if cold_start_per_request:
        if trace.request_id is None:
            raise ConfigError("cold_start_per_request needs a trace with request_id")
        request_starts = trace.request_bounds()[:-1]
    pieces = plan_pieces(trace.num_steps, chunk_steps, warmup_steps, request_starts)

    instances = [
        _Instance(j, cap, layout.keys_per_instance,
                  resolve_params(module, params, layer=j if layout.per_layer else -1, num_layers=L,
                                 num_experts=E))
        for j, cap in enumerate(caps)]

    def restart(epoch: int) -> None:
        for inst in instances:
            inst.state = (module.make_state(inst.capacity, inst.num_keys, inst.params,
                                            instance_seed(seed, inst.index, epoch))
                          if inst.capacity >= 1 else None)

    restart(0)  # also validates the policy's parameters before any work is done
    with tempfile.TemporaryDirectory(prefix="moesim-nextuse-") as scratch:
        next_use = (_next_use_pass(trace, pieces, layout, instances, scratch) if needs_next_use(module)
                    else None)
        return _forward(trace, module, pieces, layout, instances, next_use, restart, record_steps,
                        total=total, layer_caps=layer_caps, params=dict(params or {}), seed=seed,
                        warmup_steps=warmup_steps, cold_start=cold_start_per_request, progress=progress)


def _next_use_pass(trace: Trace, pieces: list[Piece], layout: Layout, instances: list[_Instance],
                   scratch: str) -> dict[tuple[int, int], np.ndarray]:
    """Next-use times of every access, per (piece, instance), from one backward pass."""
    spill = isinstance(trace.experts, np.memmap)
    nxt = [np.full(inst.num_keys, NEVER, np.int64) for inst in instances]
    out: dict[tuple[int, int], np.ndarray] = {}
    index = {p: i for i, p in enumerate(pieces)}
    for piece, _, block in iter_row_blocks(trace.experts, pieces, layout, reverse=True):
        p = index[piece]
        for inst in instances:
            keys, row_ptr, row_time, _ = block.instance(inst.index)
            nu = np.empty(len(keys), np.int64)
            next_use_backward(keys, row_ptr, row_time, nxt[inst.index], nu)
            if spill:
                path = os.path.join(scratch, f"{p}_{inst.index}.npy")
                np.save(path, nu)
                nu = np.load(path, mmap_mode="r")
            out[p, inst.index] = nu
        if piece.reset:  # nothing before a cold restart is seen from after it
            for a in nxt:
                a.fill(NEVER)
    return out


@njit
def _row_widths(chunk):
    """int64 ``[T, L]``: the experts (non-padding entries) of each row; numpy's boolean sum over the
    short last axis was a fifth of a replay's time."""
    T, L, K = chunk.shape
    out = np.zeros((T, L), np.int64)
    for t in range(T):
        for layer in range(L):
            n = 0
            for k in range(K):
                n += chunk[t, layer, k] >= 0
            out[t, layer] = n
    return out


FUSED_PATHS = True  # the tests switch it off to compare the fused loops with the generic path


def _plain_chunks(experts: np.ndarray, pieces: list[Piece]) -> Any:
    for piece in pieces:
        yield piece, np.ascontiguousarray(experts[piece.start:piece.stop]), None


def _count_phases(trace: Trace, piece: Piece, step_acc: np.ndarray, step_hits: np.ndarray,
                  phases: dict[int, np.ndarray]) -> None:
    if trace.phase is None:
        return
    ph = np.asarray(trace.phase[piece.start:piece.stop])
    for value in np.unique(ph):
        sel = ph == value
        phases.setdefault(int(value), np.zeros(2, np.int64))
        phases[int(value)] += (int(step_acc[sel].sum()), int(step_hits[sel].sum()))


def _forward(trace: Trace, module: ModuleType, pieces: list[Piece], layout: Layout,
             instances: list[_Instance], next_use: dict[tuple[int, int], np.ndarray] | None, restart: Any,
             record_steps: bool, *, total: int, layer_caps: tuple[int, ...] | None, params: dict[str, Any],
             seed: int, warmup_steps: int, cold_start: bool, progress: bool = False) -> ReplayResult:
    L, K, T = trace.num_layers, trace.width, trace.num_steps
    layer_acc = np.zeros(L, np.int64)
    layer_hit = np.zeros(L, np.int64)
    warm = np.zeros(2, np.int64)  # accesses, hits
    evictions = np.zeros(2, np.int64)  # warm-up, counted
    pinned_total = 0
    phases: dict[int, np.ndarray] = {}
    all_step_hits = np.zeros((T, L), np.uint16) if record_steps else None
    all_mask = np.zeros((T, L, K), np.bool_) if record_steps else None
    no_next = np.zeros(0, np.int64)
    any_pinned = bool(layout.pinned.any())
    bar = tqdm(total=trace.num_steps, unit="step", desc=f"replay {module.NAME}", disable=not progress, leave=False)
    # A policy may offer a fused loop reading the trace directly (no CSR rows, no scatter) for the
    # plain case; it must give exactly what the generic path gives (tests compare the two).
    fused = (FUSED_PATHS and hasattr(module, "replay_steps") and not layout.per_layer and not any_pinned
             and layout.tie_break == "row" and not record_steps and next_use is None)
    blocks = _plain_chunks(trace.experts, pieces) if fused else iter_row_blocks(trace.experts, pieces, layout)
    for p, (piece, chunk, block) in enumerate(blocks):
        bar.update(piece.stop - piece.start)
        if piece.reset:
            restart(piece.epoch)
        Tc = piece.stop - piece.start
        step_hits = np.zeros((Tc, L), np.int64)
        if fused:
            step_acc = np.zeros((Tc, L), np.int64)
            ev = module.replay_steps(instances[0].state, chunk, trace.num_experts, step_hits, step_acc)
            evictions[int(piece.counted)] += int(ev)
            if not piece.counted:
                warm += (int(step_acc.sum()), int(step_hits.sum()))
                continue
            layer_acc += step_acc.sum(axis=0)
            layer_hit += step_hits.sum(axis=0)
            _count_phases(trace, piece, step_acc, step_hits, phases)
            continue
        mask = all_mask[piece.start:piece.stop] if all_mask is not None else np.zeros((0, 0, 0), np.bool_)
        piece_pinned = 0
        if any_pinned:  # a scan of the whole piece, skipped when nothing is pinned
            pinned_hits(chunk, trace.num_experts, layout.pinned, step_hits, mask, record_steps)
            piece_pinned = int(step_hits.sum())
        for inst in instances:
            keys, row_ptr, row_time, src = block.instance(inst.index)
            if len(keys) == 0:
                continue
            hits = np.empty(len(keys), np.uint8)
            nu = next_use[p, inst.index] if next_use is not None else no_next
            ev = module.replay(inst.state, keys, row_ptr, row_time, np.asarray(nu), inst.num_keys, hits)
            evictions[int(piece.counted)] += int(ev)
            scatter_hits(hits, src, K, step_hits.reshape(-1), mask.reshape(-1), record_steps)
        step_acc = _row_widths(chunk)
        if all_step_hits is not None:
            all_step_hits[piece.start:piece.stop] = step_hits
        if not piece.counted:
            warm += (int(step_acc.sum()), int(step_hits.sum()))
            continue
        pinned_total += piece_pinned
        layer_acc += step_acc.sum(axis=0)
        layer_hit += step_hits.sum(axis=0)
        _count_phases(trace, piece, step_acc, step_hits, phases)
    bar.close()
    return ReplayResult(
        policy=module.NAME, organisation=layout.organisation, capacity=total, layer_capacity=layer_caps,
        num_pinned=int(layout.pinned.sum()), params=params, seed=seed, tie_break=layout.tie_break,
        warmup_steps=warmup_steps, cold_start_per_request=cold_start, num_steps=T,
        accesses=int(layer_acc.sum()), hits=int(layer_hit.sum()), evictions=int(evictions[1]),
        pinned_hits=pinned_total,
        per_layer=tuple(HitCounts(int(a), int(h)) for a, h in zip(layer_acc, layer_hit, strict=True)),
        per_phase={PHASE_NAMES[v]: HitCounts(int(c[0]), int(c[1])) for v, c in sorted(phases.items())},
        warmup=HitCounts(int(warm[0]), int(warm[1])), warmup_evictions=int(evictions[0]),
        step_hits=all_step_hits, hit_mask=all_mask)
