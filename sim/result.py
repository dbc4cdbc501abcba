"""The result of one replay: hit counts overall, per layer, per phase and for the warm-up."""

from __future__ import annotations

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
