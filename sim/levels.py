"""The cache levels a user describes: the GPU cache (L1) and the DRAM cache (L2) above the SSD."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from moesim.sim.errors import ConfigError
from moesim.sim.hierarchy import L2_POLICIES
from moesim.sim.rows import ORGANISATIONS


@dataclass(frozen=True)
class Level:
    """Size, organisation and policy of one cache level.

    experts: capacity in experts, in total (a per-layer L1 splits it equally over the layers, the
        remainder one slot each to the first layers: :mod:`sim.cache_setup`).
    gib: capacity in GiB instead (2**30 bytes; converted through the bytes per expert of the
        weight format, rounded down); give exactly one of ``experts`` and ``gib``.
    policy: eviction policy: any :mod:`sim.policies` name for L1; ``"lru"`` or ``"fifo"`` for L2.
    params: the policy's knobs (L1 only).
    organisation: ``"shared"`` (one cache, keys ``l * E + e``) or ``"per_layer"`` (L1 only).
    """

    experts: int | None = None
    gib: float | None = None
    policy: str = "lru"
    params: Mapping[str, Any] = field(default_factory=dict)
    organisation: str = "shared"

    def __post_init__(self) -> None:
        if (self.experts is None) == (self.gib is None):
            raise ConfigError(f"cache level: give exactly one of 'experts' and 'gib', got experts={self.experts!r}, "
                              f"gib={self.gib!r}")
        if self.experts is not None and (isinstance(self.experts, bool) or int(self.experts) != self.experts
                                         or self.experts < 1):
            raise ConfigError(f"cache level: 'experts' must be a positive integer, got {self.experts!r}")
        if self.gib is not None and not self.gib > 0:
            raise ConfigError(f"cache level: 'gib' must be positive, got {self.gib!r}")
        if self.organisation not in ORGANISATIONS:
            raise ConfigError(f"cache level: 'organisation' must be one of {ORGANISATIONS}, got "
                              f"{self.organisation!r}")

    def capacity(self, bytes_per_expert: int | None) -> int:
        """Capacity in experts, in total."""
        if self.experts is not None:
            return int(self.experts)
        if not bytes_per_expert:
            raise ConfigError("cache level given in GiB needs the bytes per expert (a weight format)")
        return int(float(self.gib) * (1 << 30) // int(bytes_per_expert))  # type: ignore[arg-type]


@dataclass(frozen=True)
class HierarchyConfig:
    """The two cache levels and how they relate.

    l1: the GPU cache (:class:`Level`).
    l2: the DRAM cache, or ``None`` when DRAM holds the whole model (no SSD traffic at all).
    inclusive: L2 keeps a copy of everything in L1 (``True``) or never does (``False``,
        exclusive: promotions move, L1 victims are demoted into L2).
    prefetch_budget: most prefetched experts in flight at once (issued, target row not reached
        yet); ``None`` = no limit beyond the room the caches have.
    l2_prefill: L2 starts holding the first keys in key order (the model is in DRAM before
        decoding); ``False`` starts it empty.
    """

    l1: Level
    l2: Level | None = None
    inclusive: bool = True
    prefetch_budget: int | None = None
    l2_prefill: bool = True

    def __post_init__(self) -> None:
        if self.l2 is not None:
            if self.l2.policy not in L2_POLICIES:
                raise ConfigError(f"L2 policy must be one of {sorted(L2_POLICIES)}, got {self.l2.policy!r}")
            if self.l2.organisation != "shared":
                raise ConfigError("L2 (DRAM) supports only organisation='shared'")
            if self.l2.params:
                raise ConfigError(f"L2 policies take no params, got {dict(self.l2.params)}")
        b = self.prefetch_budget
        if b is not None and (isinstance(b, bool) or int(b) != b or b < 0):
            raise ConfigError(f"prefetch_budget must be a non-negative integer or None, got {b!r}")

    def capacities(self, bytes_per_expert: int | None) -> tuple[int, int | None]:
        """(L1 experts in total, L2 experts or None), checked against each other."""
        l1 = self.l1.capacity(bytes_per_expert)
        l2 = None if self.l2 is None else self.l2.capacity(bytes_per_expert)
        if l2 is not None:
            if l2 < 1:
                raise ConfigError(f"L2 capacity must be >= 1 expert, got {l2}")
            if self.inclusive and l2 <= l1:
                raise ConfigError(f"inclusive hierarchy needs L2 capacity ({l2}) > L1 capacity ({l1} in all)")
        return l1, l2


def with_l1(config: HierarchyConfig, **changes: Any) -> HierarchyConfig:
    """``config`` with some L1 fields replaced."""
    return dataclasses.replace(config, l1=dataclasses.replace(config.l1, **changes))


__all__ = ["HierarchyConfig", "Level", "with_l1"]
