"""Modelling expert offloading: the hierarchy and the timeline of a decode run, in one engine pass.

:func:`simulate_hierarchy` answers the cache questions (hits, fills, bytes per link, prefetch
accuracy) of a GPU <- DRAM <- SSD hierarchy; :func:`simulate_offload` adds the model and hardware
profiles and the timing model (:mod:`sim.timing`) and returns tokens/s, latency percentiles, the
time breakdown and link utilisation. Both are one :func:`sim.engine.run`: the L1 result they report
is the one the timeline was computed from.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Any

from moesim.sim import engine
from moesim.sim.cache_setup import setup_cache
from moesim.sim.errors import ConfigError
from moesim.sim.levels import HierarchyConfig, Level
from moesim.sim.prefetch import FixedPlan, PrefetchPlan, start
from moesim.sim.profiles import GIB, HardwareProfile, ModelProfile, load_hardware_profile, load_model_profile
from moesim.sim.result import HierarchyResult, OffloadResult
from moesim.sim.timing import ComputeModel, Links
from moesim.traces.trace import Trace
from moesim.traces.transforms import batch_decode


def _lower(config: HierarchyConfig, l2_capacity: int | None) -> engine.LowerLevels:
    return engine.LowerLevels(l2_capacity=l2_capacity, l2_policy="lru" if config.l2 is None else config.l2.policy,
                              inclusive=config.inclusive, l2_prefill=config.l2_prefill,
                              prefetch_budget=config.prefetch_budget)


def _session(trace: Trace, prefetcher: str | PrefetchPlan | None, params: Mapping[str, Any] | None,
             seed: int) -> Any:
    if prefetcher is None or (isinstance(prefetcher, str) and prefetcher == "none"):
        if params:
            raise ConfigError(f"prefetcher 'none' has no knobs, got {dict(params)}")
        return None
    if isinstance(prefetcher, PrefetchPlan):
        return FixedPlan(prefetcher)
    return start(prefetcher, trace.num_layers, trace.num_experts, trace.meta.top_k, params, seed)


def simulate_hierarchy(trace: Trace, config: HierarchyConfig, *, prefetcher: str | PrefetchPlan | None = None,
                       prefetch_params: Mapping[str, Any] | None = None, bytes_per_expert: int | None = None,
                       seed: int = 0, warmup_steps: int = 0, pinned: Collection[int] | None = None,
                       tie_break: str = "row", cold_start_per_request: bool = False, decode_only: bool = False,
                       record: bool = False, chunk_steps: int | None = None) -> HierarchyResult:
    """Serve ``trace`` through the hierarchy ``config`` (see :mod:`sim.hierarchy` for the rules).

    ``prefetcher``: a :mod:`sim.prefetch` name (with ``prefetch_params``) or a plan made beforehand.
    ``bytes_per_expert`` converts capacities given in GiB. ``record``: keep the transfer events.
    """
    l1_cap, l2_cap = config.capacities(bytes_per_expert)
    setup = setup_cache(trace.num_layers, trace.num_experts, config.l1.policy, l1_cap,
                        organisation=config.l1.organisation, pinned=pinned, params=config.l1.params, seed=seed,
                        warmup_steps=warmup_steps, cold_start_per_request=cold_start_per_request, tie_break=tie_break)
    session = _session(trace, prefetcher, prefetch_params, seed)
    run = engine.run(trace, setup, decode_only=decode_only, lower=_lower(config, l2_cap), prefetcher=session,
                     record=record, chunk_steps=chunk_steps, path="hierarchy")
    return HierarchyResult(run.l1, run.counts, l1_cap, l2_cap,
                           run.records.events if run.records is not None else None)


def auto_l1_experts(model: ModelProfile, hw: HardwareProfile, weight_format: str, reserve_gib: float) -> int:
    """Experts that fit in GPU memory after the resident weights and ``reserve_gib`` (KV cache, activations)."""
    free = hw.gpu_memory_bytes - model.resident_bytes() - int(reserve_gib * GIB)
    n = int(free // model.expert_bytes(weight_format))
    return min(n, model.num_expert_keys)


def simulate_offload(trace: Trace, model: ModelProfile | str, hardware: HardwareProfile | str, weight_format: str,
                     *, l1: Level | int | None = None, l2: Level | int | None = None, inclusive: bool = True,
                     policy: str | None = None, policy_params: Mapping[str, Any] | None = None,
                     prefetcher: str = "none", prefetch_params: Mapping[str, Any] | None = None,
                     prefetch_budget: int | None = None, batch_size: int = 1, seed: int = 0,
                     warmup_steps: int = 0, gpu_reserve_gib: float = 1.0, l2_prefill: bool = True,
                     compute_format: str | None = None, pinned: Collection[int] | None = None,
                     tie_break: str = "row", cold_start_per_request: bool = False,
                     chunk_steps: int | None = None, progress: bool = False, scratch: str | None = None,
                     ) -> OffloadResult:
    """Model decoding ``trace`` on ``hardware`` with the experts offloaded; see the module docstring.

    model, hardware: profiles, or names / paths for :func:`sim.profiles.load_model_profile` and
        :func:`sim.profiles.load_hardware_profile`.
    weight_format: the experts' format (a ``kernels`` registry name); fixes bytes per expert.
    l1: the GPU cache: a :class:`sim.levels.Level` (its ``experts`` in total, also when per layer),
        a number of experts, or ``None`` for every expert that fits beside the resident weights and
        ``gpu_reserve_gib``.
    l2: the DRAM cache (a Level or a number of experts), or ``None``: the whole model in DRAM.
    inclusive, prefetch_budget, l2_prefill: see :class:`sim.levels.HierarchyConfig`.
    policy, policy_params: the GPU cache's eviction policy and knobs (override ``l1``'s).
    prefetcher, prefetch_params: a :mod:`sim.prefetch` name and its knobs.
    batch_size: concurrent sequences (``traces.transforms.batch_decode``, built in memory); 1 = the
        trace's decode steps as they are, streamed.
    seed: seeds the policies and randomised prefetchers.
    warmup_steps: first (batched) decode steps left out of every statistic (the caches see them).
    gpu_reserve_gib: GPU memory kept for KV cache, activations and the CUDA context when ``l1`` is
        ``None``.
    compute_format: the format whose bytes the expert GEMMs read, when it differs from the stored
        one (e.g. ``"fp16"`` for kernels that dequantize a whole expert before multiplying);
        ``None``: fused kernels that read ``weight_format`` directly.
    pinned, tie_break, cold_start_per_request: as for :func:`sim.replay.replay`.
    """
    model = model if isinstance(model, ModelProfile) else load_model_profile(model)
    hw = hardware if isinstance(hardware, HardwareProfile) else load_hardware_profile(hardware)
    if trace.num_layers != model.num_moe_layers or trace.num_experts != model.num_experts:
        raise ConfigError(f"trace {trace.file or '<memory>'} has {trace.num_layers} layers x {trace.num_experts} "
                          f"experts but model profile '{model.name}' has {model.num_moe_layers} x {model.num_experts}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if batch_size > 1 and cold_start_per_request:
        raise ConfigError("cold_start_per_request needs batch_size=1 (a batched step mixes requests)")
    expert_bytes = model.expert_bytes(weight_format)
    if l1 is None:
        l1 = Level(experts=auto_l1_experts(model, hw, weight_format, gpu_reserve_gib))
    elif not isinstance(l1, Level):
        l1 = Level(experts=int(l1))
    if policy is not None or policy_params is not None:
        l1 = Level(experts=l1.experts, gib=l1.gib, organisation=l1.organisation,
                   policy=policy if policy is not None else l1.policy,
                   params=dict(policy_params) if policy_params is not None else l1.params)
    if l2 is not None and not isinstance(l2, Level):
        l2 = Level(experts=int(l2))
    config = HierarchyConfig(l1=l1, l2=l2, inclusive=inclusive, prefetch_budget=prefetch_budget, l2_prefill=l2_prefill)
    l1_cap, l2_cap = config.capacities(expert_bytes)

    if batch_size == 1:
        served, decode_only, active = trace, True, None
    else:
        served, decode_only, active = batch_decode(trace, batch_size), False, "position"
    setup = setup_cache(trace.num_layers, trace.num_experts, l1.policy, l1_cap, organisation=l1.organisation,
                        pinned=pinned, params=l1.params, seed=seed, warmup_steps=warmup_steps,
                        cold_start_per_request=cold_start_per_request, tie_break=tie_break)
    timing = engine.Timing(ComputeModel.from_profiles(model, hw, compute_format or weight_format),
                           Links.from_hardware(hw, need_ssd=l2 is not None, weight_format=weight_format),
                           float(expert_bytes))
    run = engine.run(served, setup, decode_only=decode_only, lower=_lower(config, l2_cap),
                     prefetcher=_session(served, prefetcher, prefetch_params, seed), timing=timing,
                     active_field=active, chunk_steps=chunk_steps, progress=progress, scratch=scratch)
    if run.stream_steps == 0:
        raise ConfigError(f"trace {trace.file or '<memory>'} has no decode steps to simulate")
    if not 0 <= warmup_steps < run.stream_steps:
        raise ConfigError(f"warmup_steps={warmup_steps} must lie in [0, {run.stream_steps}) (decode steps after "
                          "batching)")
    hier = HierarchyResult(run.l1, run.counts, l1_cap, l2_cap)
    t = run.timing
    assert t is not None
    c = run.counts
    l2_lookups = c["l2_hits"] + c["l2_misses"]
    links = hier.bytes_per_link(expert_bytes)
    return OffloadResult(
        tokens_per_s=t.tokens / t.seconds if t.seconds > 0 else math.inf,
        latency_p50_s=t.latency_p50_s, latency_p90_s=t.latency_p90_s, latency_p99_s=t.latency_p99_s,
        latency_mean_s=t.seconds / t.steps,
        stall_fraction=t.stall_s / t.seconds if t.seconds > 0 else 0.0,
        time_breakdown_s={"attention": t.attention_s / t.steps, "experts": t.experts_s / t.steps,
                          "head": t.head_s / t.steps, "stall": t.stall_s / t.steps},
        bytes_per_token={k: v / t.tokens for k, v in links.items()},
        link_utilisation={"dram_to_gpu": t.h2d_busy_s / t.whole_run_s if t.whole_run_s > 0 else 0.0,
                          "ssd_to_dram": t.ssd_busy_s / t.whole_run_s if t.whole_run_s > 0 else 0.0},
        l1_hit_rate=run.l1.hit_rate, l2_hit_rate=c["l2_hits"] / l2_lookups if l2_lookups else None,
        prefetch_accuracy=hier.prefetch_accuracy, prefetch_coverage=hier.prefetch_coverage,
        steps=t.steps, tokens=t.tokens, expert_bytes=int(expert_bytes), l1_capacity=l1_cap, l2_capacity=l2_cap,
        l1=run.l1, counts=c,
        config={"model": model.name, "hardware": hw.name, "weight_format": weight_format,
                "l1_policy": l1.policy, "l1_organisation": l1.organisation,
                "l2_policy": None if l2 is None else l2.policy, "inclusive": inclusive,
                "prefetcher": prefetcher if isinstance(prefetcher, str) else "plan",
                "prefetch_params": dict(prefetch_params or {}), "prefetch_budget": prefetch_budget,
                "batch_size": batch_size, "seed": seed, "warmup_steps": warmup_steps,
                "compute_format": compute_format or weight_format, "num_pinned": setup.num_pinned,
                "tie_break": tie_break, "cold_start_per_request": cold_start_per_request,
                "trace_model": trace.meta.model, "trace_steps": trace.num_steps})


__all__ = ["auto_l1_experts", "simulate_hierarchy", "simulate_offload"]
