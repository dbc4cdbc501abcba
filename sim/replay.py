"""Replay a routing trace through an expert cache and count the hits.

``replay(trace, "lru", 64)`` is the one call behind notebooks, tests, the Hydra app and the
benchmarks for the hit counts of one cache; it is the engine (:mod:`sim.engine`) with no level
below L1, no prefetcher and no timing. The replay follows the layer clock: step ``t`` of the trace
serves layers ``0..L-1`` in order, row ``(t, l)`` at time ``t * L + l``; a row's experts are all
needed at once, so they never evict each other. A cache is shared by all layers (keys
``l * E + e``) or split into one cache per layer (independent policy instances, each with its own
capacity: an exact model, since the layers' caches do not interact).

Memory: the trace is read in pieces of ``chunk_steps`` steps (policy state carries across them), so
a memory-mapped trace larger than RAM replays in the memory of one piece (~3 MB by default) plus
the policy state. OPT needs every access's next use, found in a backward pass over the pieces
before the forward replay: 8 bytes per (non-pinned) access, kept in RAM for an in-memory trace and
spilled to a scratch folder for a memory-mapped one.

Pinned experts always hit and take none of the policy's slots: the policy manages
``capacity - len(pinned)`` (per layer: that layer's capacity minus its pinned experts). Choose
them from a *profiling* trace with :func:`sim.pinning.choose_pinned`, not from the replayed one.

Cold start per request: the caches restart empty at every request boundary (each request alone on
the machine); the default keeps them warm across requests (a server). Warm-up: steps before
``warmup_steps`` are replayed but counted apart. All of these are resolved once, in
:mod:`sim.cache_setup`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from moesim.sim import engine
from moesim.sim.cache_setup import instance_seed, pinned_table, resolve_capacity, setup_cache
from moesim.sim.pinning import choose_pinned
from moesim.sim.result import ReplayResult
from moesim.traces.trace import Trace

__all__ = ["ReplayResult", "choose_pinned", "instance_seed", "pinned_table", "replay", "resolve_capacity"]


def replay(trace: Trace, policy: str, capacity: int | None = None, *, capacity_bytes: float | None = None,
           bytes_per_expert: float | None = None, organisation: str = "shared",
           per_layer_capacity: Sequence[int] | None = None, pinned: Collection[int] | None = None,
           params: Mapping[str, Any] | None = None, seed: int = 0, warmup_steps: int = 0,
           cold_start_per_request: bool = False, tie_break: str = "row", record_steps: bool = False,
           chunk_steps: int | None = None, progress: bool = False, decode_only: bool = False) -> ReplayResult:
    """Replay ``trace`` through ``policy`` and count hits (see the module docstring).

    ``capacity`` in experts, or ``capacity_bytes`` / ``bytes_per_expert`` (floored to whole
    experts), or ``per_layer_capacity`` (one entry per layer); with ``organisation="per_layer"``
    a total ``capacity`` is split equally (the remainder to the first layers). ``pinned``: keys
    ``l * E + e``. ``tie_break``: order of a row's experts (``row`` as recorded, ``reverse``,
    ``expert_id``); it never changes whether they hit, only the recency / insertion order they
    leave (see :mod:`sim.rows`). ``seed`` seeds randomized policies (per cache instance and
    restart, :func:`instance_seed`). ``chunk_steps`` sets the piece size (default ~256 k entries).
    ``progress``: a progress bar over the trace (stderr). ``decode_only``: the prefill steps are
    left out (as the timing model sees the trace). ``record_steps``: per-step hit counts and a
    per-entry hit mask in the result (memory grows with the trace).
    """
    setup = setup_cache(trace.num_layers, trace.num_experts, policy, capacity, capacity_bytes=capacity_bytes,
                        bytes_per_expert=bytes_per_expert, organisation=organisation,
                        per_layer_capacity=per_layer_capacity, pinned=pinned, params=params, seed=seed,
                        warmup_steps=warmup_steps, cold_start_per_request=cold_start_per_request,
                        tie_break=tie_break)
    return engine.run(trace, setup, decode_only=decode_only, record=record_steps, chunk_steps=chunk_steps,
                      progress=progress).l1
