"""Results: one cache's hit counts (overall, per layer, per phase, warm-up apart), a hierarchy run's,
and a modelled offloading run's."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class HitCounts:
    accesses: int
    hits: int

    @property
    def misses(self) -> int:
        return self.accesses - self.hits

    @property
    def hit_rate(self) -> float:
        """Hits / accesses (0.0 when there were no accesses)."""
        return self.hits / self.accesses if self.accesses else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"accesses": self.accesses, "hits": self.hits, "misses": self.misses,
                "hit_rate": self.hit_rate}


@dataclass(frozen=True, eq=False)
class ReplayResult:
    """Counts cover the steps at or after ``warmup_steps``; the warm-up has its own counts.

    ``per_layer`` sums to the totals; so does ``per_phase`` when the trace has phases. Pinned
    experts' accesses are included (always hits; ``pinned_hits`` says how many). With
    ``record_steps``: ``step_hits[t, l]`` (uint16) hits of step ``t`` at layer ``l`` and
    ``hit_mask[t, l, k]`` (bool) for the entry ``trace.experts[t, l, k]`` (False at pads), over all
    steps, warm-up included.
    """

    policy: str
    organisation: str
    capacity: int  # expert slots in total, pinned ones included
    layer_capacity: tuple[int, ...] | None  # per-layer caches: slots of each layer
    num_pinned: int
    params: Mapping[str, Any]
    seed: int
    tie_break: str
    warmup_steps: int
    cold_start_per_request: bool
    num_steps: int
    accesses: int
    hits: int
    evictions: int
    pinned_hits: int
    per_layer: tuple[HitCounts, ...]
    per_phase: Mapping[str, HitCounts]
    warmup: HitCounts
    warmup_evictions: int
    step_hits: np.ndarray | None = field(default=None, repr=False)
    hit_mask: np.ndarray | None = field(default=None, repr=False)

    @property
    def misses(self) -> int:
        return self.accesses - self.hits

    @property
    def hit_rate(self) -> float:
        return self.hits / self.accesses if self.accesses else 0.0

    @property
    def counts(self) -> HitCounts:
        return HitCounts(self.accesses, self.hits)

    def to_dict(self, include_steps: bool = False) -> dict[str, Any]:
        """JSON-friendly (plain ints, floats, strings, lists); the per-step arrays only on request."""
        out: dict[str, Any] = {
            "policy": self.policy, "organisation": self.organisation, "capacity": self.capacity,
            "layer_capacity": None if self.layer_capacity is None else list(self.layer_capacity),
            "num_pinned": self.num_pinned, "params": _jsonable(self.params), "seed": self.seed,
            "tie_break": self.tie_break, "warmup_steps": self.warmup_steps,
            "cold_start_per_request": self.cold_start_per_request, "num_steps": self.num_steps,
            "accesses": self.accesses, "hits": self.hits, "misses": self.misses,
            "evictions": self.evictions, "hit_rate": self.hit_rate, "pinned_hits": self.pinned_hits,
            "per_layer": [c.to_dict() for c in self.per_layer],
            "per_phase": {name: c.to_dict() for name, c in self.per_phase.items()},
            "warmup": {**self.warmup.to_dict(), "evictions": self.warmup_evictions},
        }
        if include_steps:
            out["step_hits"] = None if self.step_hits is None else self.step_hits.tolist()
            out["hit_mask"] = None if self.hit_mask is None else self.hit_mask.astype(int).tolist()
        return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset, np.ndarray)):
        items = sorted(value) if isinstance(value, (set, frozenset)) else value
        return [_jsonable(v) for v in items]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


@dataclass(frozen=True, eq=False)
class HierarchyResult:
    """What a hierarchy run produced: the one L1 result and the hierarchy's counters
    (:data:`sim.hierarchy.COUNTERS`), both over the counted steps, and records if asked for."""

    l1: ReplayResult
    counts: dict[str, int]
    l1_capacity: int  # experts in total
    l2_capacity: int | None  # experts; None: the whole model in DRAM
    events: dict[str, np.ndarray] | None = field(default=None, repr=False)  # row, key, src, kind

    def bytes_per_link(self, bytes_per_expert: float) -> dict[str, float]:
        c = self.counts
        return {"ssd_to_dram": c["ssd_reads"] * bytes_per_expert,
                "dram_to_gpu": c["l1_fills"] * bytes_per_expert,
                "gpu_to_dram": c["demotions"] * bytes_per_expert}

    @property
    def prefetch_accuracy(self) -> float | None:
        issued = self.counts["prefetch_issued"]
        return self.counts["prefetch_useful"] / issued if issued else None

    @property
    def prefetch_coverage(self) -> float | None:
        """The share of would-be demand misses a prefetch turned into hits: useful prefetches over
        useful prefetches plus the demand misses left (the usual definition; never negative)."""
        denom = self.counts["prefetch_useful"] + self.counts["l1_misses"]
        return self.counts["prefetch_useful"] / denom if self.counts["prefetch_issued"] and denom else None

    @property
    def l1_hit_rate(self) -> float:
        return self.l1.hit_rate


@dataclass(frozen=True)
class OffloadResult:
    """What :func:`sim.offload.simulate_offload` modelled, over the counted steps (after the warm-up).

    tokens_per_s: generated tokens (all sequences of a batch) per second.
    latency_p50_s / latency_p90_s / latency_p99_s / latency_mean_s: seconds per decode step (per
        token of each sequence); percentiles exactly as ``numpy.percentile``.
    stall_fraction: share of the time the GPU waited for transfers.
    time_breakdown_s: mean seconds per step in attention/dense (incl. overhead), experts, LM head
        and stalls (they add up to the mean latency).
    bytes_per_token: bytes per generated token on each link (ssd_to_dram, dram_to_gpu, gpu_to_dram).
    link_utilisation: busy share of the PCIe (dram_to_gpu) and SSD links over the whole run.
    l1_hit_rate, l2_hit_rate: demand hit rate of the GPU cache (pinned experts included); hit rate
        of DRAM lookups (None without lookups).
    prefetch_accuracy: useful prefetches / prefetches issued (None without prefetches).
    prefetch_coverage: useful prefetches / (useful prefetches + demand misses left) (None without
        prefetches).
    l1: the GPU cache's result (hits, misses, evictions, per layer, per phase, warm-up apart), from
        this very run.
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
    l1_hit_rate: float
    l2_hit_rate: float | None
    prefetch_accuracy: float | None
    prefetch_coverage: float | None
    steps: int
    tokens: int
    expert_bytes: int
    l1_capacity: int
    l2_capacity: int | None
    l1: ReplayResult
    counts: dict[str, int]
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["l1"] = self.l1.to_dict()
        return _jsonable(out)
