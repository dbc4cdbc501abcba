"""From cache hits to seconds: a timeline per decode step, and :func:`simulate_offload`.

The timeline (one decode step = one token for each active sequence):

* For each MoE layer (row ``r``), the attention / dense part runs first: ``attn[r]`` seconds.
  When it ends the router has chosen the row's experts: the row's demand misses are issued to the
  links, followed by the prefetches the prefetcher issues at this row.
* Transfers: an expert from DRAM crosses the host-to-device link (PCIe); one from the SSD first
  crosses the SSD -> DRAM link, then the PCIe link. Each link serves one transfer at a time in
  issue order (FIFO) and a transfer takes ``latency + bytes / bandwidth``; the two links run in
  parallel with each other and with compute, so a prefetch issued at an earlier layer overlaps
  that layer's compute.
* The layer's expert computation starts when the attention part has ended and every expert of
  the row is resident (an L1 hit whose prefetch is still in flight waits for it); it takes
  ``expert[r]`` seconds. The wait, if any, is the row's *stall*.
* After the last layer the step spends ``head[t]`` seconds in the LM head; the next step starts.

Compute times come from the profiles (decode is memory-bound at small batch): a part reading
``b`` bytes of weights and doing ``f`` FLOPs takes ``max(b / GPU bandwidth, f / GPU FLOP/s)``.
Per row: ``attn = layer_overhead + max(dense bytes / bw, B * dense FLOPs / F)`` and
``expert = max(n_r * expert bytes / bw, B * top_k * 2 * expert params / F)`` with ``n_r`` the
row's distinct experts and ``B`` the step's active sequences (a batch of ``B`` also widens the
row to the union of the sequences' experts). KV-cache reads, dequantisation cost and transfers
of demoted experts (GPU -> DRAM, the other PCIe direction) are not modelled.

The timeline loop is jitted (:func:`timeline`) with a plain-Python twin
(:func:`timeline_reference`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from moesim.kernels.jit import njit
from moesim.sim.errors import ConfigError
from moesim.sim.hierarchy import (
    DemandRows,
    HierarchyConfig,
    HierarchyResult,
    Level,
    demand_rows,
    simulate_hierarchy,
)
from moesim.sim.prefetch import get_prefetcher, resolve_params
from moesim.sim.profiles import (
    GB,
    GIB,
    HardwareProfile,
    ModelProfile,
    load_hardware_profile,
    load_model_profile,
)
from moesim.traces.trace import Trace
from moesim.traces.transforms import batch_decode, decode_only


@dataclass(frozen=True)
class Links:
    """Transfer costs of one expert: seconds per byte and fixed seconds per transfer, per link."""

    h2d_s_per_byte: float
    h2d_latency_s: float
    ssd_s_per_byte: float
    ssd_latency_s: float

    @classmethod
    def from_hardware(cls, hw: HardwareProfile, *, need_ssd: bool) -> Links:
        hw.require("h2d_bandwidth_gbps", "h2d_latency_us")
        if need_ssd:
            hw.require("nvme_bandwidth_gbps", "nvme_latency_us")
        ssd_bw = hw.nvme_bandwidth_gbps or math.inf
        return cls(1.0 / (float(hw.h2d_bandwidth_gbps) * GB), float(hw.h2d_latency_us) * 1e-6,  # type: ignore[arg-type]
                   1.0 / (float(ssd_bw) * GB), float(hw.nvme_latency_us or 0.0) * 1e-6)


@dataclass(frozen=True)
class ComputeTimes:
    """Seconds per row for the attention/dense part and the experts, and per step for the LM head."""

    attn: np.ndarray  # float64 [R]
    expert: np.ndarray  # float64 [R]
    head: np.ndarray  # float64 [T]


def compute_times(rows: DemandRows, active: np.ndarray, model: ModelProfile, hw: HardwareProfile,
                  weight_format: str, compute_format: str | None = None) -> ComputeTimes:
    """Per-row compute times from the profiles (see the module docstring for the formulas);
    the expert GEMMs read ``compute_format``'s bytes (default: ``weight_format``'s)."""
    hw.require("gpu_bandwidth_gbps", "gpu_tflops")
    bw, flops = hw.gpu_bandwidth_bps, hw.gpu_flops
    L = rows.num_layers
    B = np.repeat(np.asarray(active, np.float64), L)
    n = np.diff(rows.row_ptr).astype(np.float64)
    dense_bytes = float(model.dense_bytes_per_layer())
    attn = hw.layer_overhead_us * 1e-6 + np.maximum(dense_bytes / bw, B * model.dense_flops_per_token_layer() / flops)
    eb = float(model.expert_bytes(compute_format or weight_format))
    expert = np.maximum(n * eb / bw, B * model.top_k * 2.0 * model.expert_params / flops)
    expert[n == 0] = 0.0
    steps = np.asarray(active, np.float64)
    head = np.maximum(model.other_bytes() / bw, steps * 2.0 * model.other_params / flops)
    return ComputeTimes(attn, expert, head)


@njit
def timeline(row_ptr, keys, num_layers, num_keys, attn, expert, head, ev_row, ev_key, ev_src, bytes_per_expert,
             h2d_s_per_byte, h2d_lat, ssd_s_per_byte, ssd_lat, step_time, stall, link_busy):
    """Fill ``step_time[t]`` (seconds per step) and ``stall[r]``; ``link_busy`` = [PCIe, SSD] busy seconds."""
    ready = np.zeros(num_keys, np.float64)
    h2d_cost = h2d_lat + bytes_per_expert * h2d_s_per_byte
    ssd_cost = ssd_lat + bytes_per_expert * ssd_s_per_byte
    h2d_free = 0.0
    ssd_free = 0.0
    now = 0.0
    e = 0
    n_ev = ev_row.shape[0]
    R = row_ptr.shape[0] - 1
    T = R // num_layers
    for t in range(T):
        start = now
        for layer in range(num_layers):
            r = t * num_layers + layer
            routed = now + attn[r]
            while e < n_ev and ev_row[e] == r:
                at = routed
                if ev_src[e] == 2:
                    at = max(at, ssd_free) + ssd_cost
                    ssd_free = at
                    link_busy[1] += ssd_cost
                done = max(at, h2d_free) + h2d_cost
                h2d_free = done
                link_busy[0] += h2d_cost
                ready[ev_key[e]] = done
                e += 1
            go = routed
            for i in range(row_ptr[r], row_ptr[r + 1]):
                if ready[keys[i]] > go:
                    go = ready[keys[i]]
            stall[r] = go - routed
            now = go + expert[r]
        now += head[t]
        step_time[t] = now - start
    return now


def timeline_reference(rows: DemandRows, times: ComputeTimes, events: Any, bytes_per_expert: int,
                       links: Links) -> tuple[np.ndarray, np.ndarray]:
    """Plain-Python :func:`timeline`: (seconds per step, stall per row)."""
    L = rows.num_layers
    T = rows.num_rows // L
    h2d_cost = links.h2d_latency_s + bytes_per_expert * links.h2d_s_per_byte
    ssd_cost = links.ssd_latency_s + bytes_per_expert * links.ssd_s_per_byte
    ready: dict[int, float] = {}
    free = {"h2d": 0.0, "ssd": 0.0}
    by_row: dict[int, list[tuple[int, int]]] = {}
    for r, k, s in zip(events.row.tolist(), events.key.tolist(), events.src.tolist(), strict=True):
        by_row.setdefault(r, []).append((k, s))
    now = 0.0
    step_time = np.zeros(T)
    stall = np.zeros(rows.num_rows)
    for t in range(T):
        start = now
        for layer in range(L):
            r = t * L + layer
            routed = now + float(times.attn[r])
            for k, s in by_row.get(r, []):
                at = routed
                if s == 2:
                    at = max(at, free["ssd"]) + ssd_cost
                    free["ssd"] = at
                free["h2d"] = max(at, free["h2d"]) + h2d_cost
                ready[k] = free["h2d"]
            row = rows.keys[rows.row_ptr[r]:rows.row_ptr[r + 1]].tolist()
            go = max([routed] + [ready.get(k, 0.0) for k in row])
            stall[r] = go - routed
            now = go + float(times.expert[r])
        now += float(times.head[t])
        step_time[t] = now - start
    return step_time, stall


# ---- the top-level API ----------------------------------------------------------------------

@dataclass(frozen=True)
class OffloadResult:
    """What :func:`simulate_offload` measured, over the counted steps (after the warm-up).

    tokens_per_s: generated tokens (all sequences of a batch) per second.
    latency_p50_s / latency_p90_s / latency_p99_s / latency_mean_s: seconds per decode step (per
        token of each sequence).
    stall_fraction: share of the time the GPU waited for transfers.
    time_breakdown_s: mean seconds per step in attention/dense (incl. overhead), experts, LM head
        and stalls (they add up to the mean latency).
    bytes_per_token: bytes per generated token on each link (ssd_to_dram, dram_to_gpu, gpu_to_dram).
    link_utilisation: busy share of the PCIe (dram_to_gpu) and SSD links over the whole run.
    l1_hit_rate, l2_hit_rate: demand hit rate of the GPU cache; hit rate of DRAM lookups.
    prefetch_accuracy: useful prefetches / prefetches issued (None without prefetches).
    prefetch_coverage: (L1 misses without prefetch - with) / L1 misses without prefetch (None
        without prefetcher or without misses).
    counts: the hierarchy's counters (:mod:`sim.hierarchy`).
    config: the run's settings (model, hardware, format, capacities, policy, prefetcher, ...).
    """

    tokens_per_s: float
    latency_p50_s: float
    latency_p90_s: float
    latency_p99_s: float
    latency_mean_s: float
    stall_fraction: float
    time_breakdown_s: dict[str, float]
    bytes_per_token: dict[str, float]
    link_utilisation: dict[str, float]
    l1_hit_rate: float | None
    l2_hit_rate: float | None
    prefetch_accuracy: float | None
    prefetch_coverage: float | None
    steps: int
    tokens: int
    expert_bytes: int
    l1_capacity: int
    l2_capacity: int | None
    counts: dict[str, int]
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def auto_l1_experts(model: ModelProfile, hw: HardwareProfile, weight_format: str, reserve_gib: float) -> int:
    """Experts that fit in GPU memory after the resident weights and ``reserve_gib`` (KV cache, activations)."""
    free = hw.gpu_memory_bytes - model.resident_bytes() - int(reserve_gib * GIB)
    n = int(free // model.expert_bytes(weight_format))
    return min(n, model.num_expert_keys)


def prepare_trace(trace: Trace, batch_size: int) -> tuple[Trace, np.ndarray]:
    """The decode steps to simulate and the active sequences per step (1 without batching)."""
    if batch_size == 1:
        dec = decode_only(trace)
        return dec, np.ones(dec.num_steps, np.int64)
    batched = batch_decode(trace, batch_size)
    return batched, np.asarray(batched.position, np.int64)


def simulate_offload(trace: Trace, model: ModelProfile | str, hardware: HardwareProfile | str, weight_format: str,
                     *, l1: Level | int | None = None, l2: Level | int | None = None, inclusive: bool = True,
                     policy: str | None = None, policy_params: Mapping[str, Any] | None = None,
                     prefetcher: str = "none", prefetch_params: Mapping[str, Any] | None = None,
                     prefetch_budget: int | None = None, batch_size: int = 1, seed: int = 0,
                     warmup_steps: int = 0, gpu_reserve_gib: float = 1.0, l2_prefill: bool = True,
                     compute_format: str | None = None) -> OffloadResult:
    """Model decoding ``trace`` on ``hardware`` with the experts offloaded; see the module docstring.

    model, hardware: profiles, or names / paths for :func:`sim.profiles.load_model_profile` and
        :func:`sim.profiles.load_hardware_profile`.
    weight_format: the experts' format (a ``kernels`` registry name); fixes bytes per expert.
    l1: the GPU cache: a :class:`sim.hierarchy.Level`, a number of experts, or ``None`` for every
        expert that fits beside the resident weights and ``gpu_reserve_gib``.
    l2: the DRAM cache (a Level or a number of experts), or ``None``: the whole model in DRAM.
    inclusive, prefetch_budget, l2_prefill: see :class:`sim.hierarchy.HierarchyConfig`.
    policy, policy_params: the GPU cache's eviction policy and knobs (override ``l1``'s).
    prefetcher, prefetch_params: a :mod:`sim.prefetch` name and its knobs.
    batch_size: concurrent sequences (``traces.transforms.batch_decode``); 1 = the trace's decode
        steps as they are.
    seed: seeds the policies and randomised prefetchers.
    warmup_steps: first (batched) decode steps left out of every statistic (the caches see them).
    gpu_reserve_gib: GPU memory kept for KV cache, activations and the CUDA context when ``l1`` is
        ``None``.
    compute_format: the format whose bytes the expert GEMMs read, when it differs from the stored
        one (e.g. ``"fp16"`` for kernels that dequantize a whole expert before multiplying);
        ``None``: fused kernels that read ``weight_format`` directly.
    """
    model = model if isinstance(model, ModelProfile) else load_model_profile(model)
    hw = hardware if isinstance(hardware, HardwareProfile) else load_hardware_profile(hardware)
    if trace.num_layers != model.num_moe_layers or trace.num_experts != model.num_experts:
        raise ConfigError(f"trace {trace.file or '<memory>'} has {trace.num_layers} layers x {trace.num_experts} "
                          f"experts but model profile '{model.name}' has {model.num_moe_layers} x {model.num_experts}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
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

    dec, active = prepare_trace(trace, batch_size)
    if dec.num_steps == 0:
        raise ConfigError(f"trace {trace.file or '<memory>'} has no decode steps to simulate")
    if not 0 <= warmup_steps < dec.num_steps:
        raise ConfigError(f"warmup_steps={warmup_steps} must lie in [0, {dec.num_steps}) (decode steps after batching)")
    rows = demand_rows(dec)
    pf_module = get_prefetcher(prefetcher)
    plan = pf_module.plan(dec, resolve_params(pf_module, prefetch_params), seed)
    hier = simulate_hierarchy(dec, config, plan=plan, bytes_per_expert=expert_bytes, seed=seed,
                              warmup_steps=warmup_steps, rows=rows)
    baseline = None
    if prefetcher != "none":
        baseline = simulate_hierarchy(dec, config, plan=None, bytes_per_expert=expert_bytes, seed=seed,
                                      warmup_steps=warmup_steps, rows=rows)
    links = Links.from_hardware(hw, need_ssd=l2 is not None)
    times = compute_times(rows, active, model, hw, weight_format, compute_format)
    step_time, stall, busy, _ = run_timeline(rows, times, hier, expert_bytes, links)
    return _summarise(dec, active, rows, times, hier, baseline, step_time, stall, busy, expert_bytes, warmup_steps,
                      {"model": model.name, "hardware": hw.name, "weight_format": weight_format,
                       "l1_policy": l1.policy, "l1_organisation": l1.organisation, "l2_policy": None if l2 is None
                       else l2.policy, "inclusive": inclusive, "prefetcher": prefetcher,
                       "prefetch_params": dict(prefetch_params or {}), "prefetch_budget": prefetch_budget,
                       "batch_size": batch_size, "seed": seed, "warmup_steps": warmup_steps,
                       "compute_format": compute_format or weight_format,
                       "trace_model": trace.meta.model, "trace_steps": trace.num_steps})


def run_timeline(rows: DemandRows, times: ComputeTimes, hier: HierarchyResult, expert_bytes: int,
                 links: Links) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Jitted timeline: (seconds per step, stall per row, [PCIe, SSD] busy seconds, total seconds)."""
    T = rows.num_rows // rows.num_layers
    step_time = np.zeros(T)
    stall = np.zeros(rows.num_rows)
    busy = np.zeros(2)
    ev = hier.events
    total = timeline(rows.row_ptr, rows.keys, rows.num_layers, rows.num_keys, times.attn, times.expert, times.head,
                     ev.row, ev.key, ev.src, float(expert_bytes), links.h2d_s_per_byte, links.h2d_latency_s,
                     links.ssd_s_per_byte, links.ssd_latency_s, step_time, stall, busy)
    return step_time, stall, busy, float(total)


def _summarise(dec: Trace, active: np.ndarray, rows: DemandRows, times: ComputeTimes, hier: HierarchyResult,
               baseline: HierarchyResult | None, step_time: np.ndarray, stall: np.ndarray, busy: np.ndarray,
               expert_bytes: int, warmup: int, config: dict[str, Any]) -> OffloadResult:
    L = rows.num_layers
    lat = step_time[warmup:]
    total = float(lat.sum())
    tokens = int(active[warmup:].sum())
    per_step = lambda a: float(a.reshape(-1, L)[warmup:].sum() / len(lat))  # noqa: E731
    breakdown = {"attention": per_step(times.attn), "experts": per_step(times.expert),
                 "head": float(times.head[warmup:].mean()), "stall": per_step(stall)}
    c = hier.counts
    l2_lookups = c["l2_hits"] + c["l2_misses"]
    coverage = None
    if baseline is not None and baseline.counts["l1_misses"]:
        base = baseline.counts["l1_misses"]
        coverage = (base - c["l1_misses"]) / base
    # Link busy time is accumulated over the whole run (warm-up included), so it is divided by the whole run.
    whole = float(step_time.sum())
    return OffloadResult(
        tokens_per_s=tokens / total if total > 0 else math.inf,
        latency_p50_s=float(np.percentile(lat, 50)), latency_p90_s=float(np.percentile(lat, 90)),
        latency_p99_s=float(np.percentile(lat, 99)), latency_mean_s=float(lat.mean()),
        stall_fraction=float(stall[warmup * L:].sum()) / total if total > 0 else 0.0,
        time_breakdown_s=breakdown,
        bytes_per_token={k: v / tokens for k, v in hier.bytes_per_link(expert_bytes).items()},
        link_utilisation={"dram_to_gpu": float(busy[0]) / whole if whole else 0.0,
                          "ssd_to_dram": float(busy[1]) / whole if whole else 0.0},
        l1_hit_rate=hier.l1_hit_rate, l2_hit_rate=c["l2_hits"] / l2_lookups if l2_lookups else None,
        prefetch_accuracy=hier.prefetch_accuracy, prefetch_coverage=coverage,
        steps=len(lat), tokens=tokens, expert_bytes=int(expert_bytes), l1_capacity=hier.l1_capacity,
        l2_capacity=hier.l2_capacity, counts=dict(c), config=config)


__all__ = ["ComputeTimes", "Links", "OffloadResult", "auto_l1_experts", "compute_times", "prepare_trace",
           "run_timeline", "simulate_offload", "timeline", "timeline_reference"]
