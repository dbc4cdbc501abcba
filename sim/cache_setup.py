"""One cache configuration, resolved once: capacities, pinned experts, policy knobs, seeds.

Every consumer of the engine (:func:`sim.replay.replay`, :func:`sim.offload.simulate_offload`, the
Hydra app, the miss-ratio curves) builds its L1 cache here and nowhere else, so organisation,
per-layer capacities (with the remainder split), pinned experts, tie-break, cold start per request,
warm-up and per-instance seeds mean the same thing everywhere.

An *instance* is one independent cache: the one shared cache (keys ``l * E + e``), or layer ``l``'s
cache of a per-layer organisation (keys ``e``). Pinned experts always hit and take none of the
policy's slots: the policy of an instance manages its capacity minus the pinned experts it holds.
Seeds: instance ``j`` after ``epoch`` cold restarts draws from :func:`instance_seed`.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np
from moesim.sim.errors import ConfigError
from moesim.sim.policies import get_policy, resolve_policy_params
from moesim.sim.rows import ORGANISATIONS, TIE_BREAKS, Layout


def instance_seed(seed: int, instance: int, epoch: int) -> int:
    """The seed of cache instance ``instance`` (0 if shared, else the layer) after ``epoch`` resets."""
    return int(np.random.SeedSequence([seed, instance, epoch]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def as_int(value: Any, name: str) -> int:
    """``value`` as an int; a bool, a fractional float or anything else is refused naming ``name``."""
    if isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        return int(value)
    raise ConfigError(f"{name} must be an integer, got {value!r}")


def resolve_capacity(num_layers: int, capacity: int | None, capacity_bytes: float | None,
                     bytes_per_expert: float | None, organisation: str,
                     per_layer_capacity: Sequence[int] | None) -> tuple[int, tuple[int, ...] | None]:
    """(total slots, slots per layer or None) from the ways a capacity can be given.

    A per-layer organisation splits a total capacity equally; the remainder goes one slot each to
    the first layers, so no slot is wasted.
    """
    if organisation not in ORGANISATIONS:
        raise ConfigError(f"organisation must be one of {ORGANISATIONS}, got {organisation!r}")
    L = num_layers
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
        caps = tuple(as_int(c, "per_layer_capacity") for c in per_layer_capacity)
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
        quotient = capacity_bytes / bytes_per_expert
        if not math.isfinite(quotient) or quotient >= 2**62:
            raise ConfigError(f"capacity_bytes={capacity_bytes:g} / bytes_per_expert={bytes_per_expert:g} is not "
                              "a usable number of experts")
        # floor, forgiving the last-bit rounding of a quotient that is an integer in exact arithmetic
        capacity = math.floor(quotient * (1 + 1e-12))
        if capacity < 1:
            raise ConfigError(f"capacity_bytes={capacity_bytes:g} holds no expert of {bytes_per_expert:g} bytes")
    capacity = as_int(capacity, "capacity")
    if capacity < 1:
        raise ConfigError(f"capacity must be >= 1 expert, got {capacity}")
    if capacity >= 1 << 62:  # the jitted loops count slots in int64
        raise ConfigError(f"capacity {capacity:.3g} experts is beyond any cache")
    if organisation == "shared":
        return capacity, None
    if capacity < L:
        raise ConfigError(f"capacity {capacity} cannot give each of the {L} per-layer caches an expert")
    base, extra = divmod(capacity, L)
    return capacity, tuple(base + (1 if i < extra else 0) for i in range(L))


def pinned_table(num_layers: int, num_experts: int, pinned: Collection[int] | None) -> np.ndarray:
    """uint8 ``[L * E]``: 1 at each pinned key (checked: in range, no duplicates)."""
    L, E = num_layers, num_experts
    table = np.zeros(L * E, np.uint8)
    for k in pinned or ():
        key = as_int(k, "pinned key")
        if not 0 <= key < L * E:
            raise ConfigError(f"pinned key {key} is outside [0, {L * E}) (keys are layer * {E} + expert)")
        if table[key]:
            raise ConfigError(f"pinned key {key} is given twice")
        table[key] = 1
    return table


@dataclass(frozen=True, eq=False)
class CacheSetup:
    """An L1 cache resolved against a trace's shape (see the module docstring)."""

    policy: ModuleType
    layout: Layout
    capacity: int  # expert slots in total, pinned ones included
    layer_capacity: tuple[int, ...] | None  # per-layer caches: slots of each layer
    policy_slots: tuple[int, ...]  # per instance: slots the policy manages (pinned excluded)
    instance_params: tuple[dict[str, Any], ...]  # per instance: PARAMS + the user's + context
    params: Mapping[str, Any] = field(default_factory=dict)  # the user's knobs, as given
    seed: int = 0
    warmup_steps: int = 0
    cold_start: bool = False

    @property
    def num_instances(self) -> int:
        return self.layout.num_instances

    @property
    def num_pinned(self) -> int:
        return int(self.layout.pinned.sum())

    def new_states(self, epoch: int) -> list[tuple | None]:
        """Fresh, empty policy states of every instance (``None`` for an instance with no policy slot:
        every key it would see is pinned)."""
        n_keys = self.layout.keys_per_instance
        return [self.policy.make_state(cap, n_keys, self.instance_params[j], instance_seed(self.seed, j, epoch))
                if cap >= 1 else None for j, cap in enumerate(self.policy_slots)]


def setup_cache(num_layers: int, num_experts: int, policy: str, capacity: int | None = None, *,
                capacity_bytes: float | None = None, bytes_per_expert: float | None = None,
                organisation: str = "shared", per_layer_capacity: Sequence[int] | None = None,
                pinned: Collection[int] | None = None, params: Mapping[str, Any] | None = None,
                seed: int = 0, warmup_steps: int = 0, cold_start_per_request: bool = False,
                tie_break: str = "row") -> CacheSetup:
    """Validate and resolve an L1 cache for a trace of ``num_layers`` x ``num_experts``.

    ``capacity`` in experts, or ``capacity_bytes`` / ``bytes_per_expert`` (floored to whole
    experts), or ``per_layer_capacity`` (one entry per layer); with ``organisation="per_layer"`` a
    total ``capacity`` is split equally (the remainder to the first layers). ``pinned``: keys
    ``l * E + e``. ``tie_break``: the order of a row's experts (``row`` as recorded, ``reverse``,
    ``expert_id``); it never changes whether they hit, only the recency / insertion order they
    leave (see :mod:`sim.rows`).
    """
    module = get_policy(policy)
    if tie_break not in TIE_BREAKS:
        raise ConfigError(f"tie_break must be one of {tuple(TIE_BREAKS)}, got {tie_break!r}")
    seed = as_int(seed, "seed")
    if seed < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}")
    warmup_steps = as_int(warmup_steps, "warmup_steps")
    if warmup_steps < 0:
        raise ConfigError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if not isinstance(cold_start_per_request, (bool, np.bool_)):
        raise ConfigError(f"cold_start_per_request must be true or false, got {cold_start_per_request!r}")
    L, E = num_layers, num_experts
    total, layer_caps = resolve_capacity(L, capacity, capacity_bytes, bytes_per_expert, organisation,
                                         per_layer_capacity)
    table = pinned_table(L, E, pinned)
    layout = Layout(organisation, L, E, table, tie_break)
    if layout.per_layer:
        pinned_per = table.reshape(L, E).sum(axis=1)
        for layer, (c, p) in enumerate(zip(layer_caps or (), pinned_per, strict=True)):
            if p > c:
                raise ConfigError(f"{int(p)} experts pinned in layer {layer} exceed its capacity of {c}")
        slots = tuple(c - int(p) for c, p in zip(layer_caps or (), pinned_per, strict=True))
    else:
        if int(table.sum()) > total:
            raise ConfigError(f"{int(table.sum())} pinned experts exceed the capacity of {total}")
        slots = (total - int(table.sum()),)
    inst_params = tuple(resolve_policy_params(module, params, layer=j if layout.per_layer else -1, num_layers=L,
                                              num_experts=E) for j in range(layout.num_instances))
    setup = CacheSetup(module, layout, total, layer_caps, slots, inst_params, dict(params or {}), seed,
                       warmup_steps, bool(cold_start_per_request))
    setup.new_states(0)  # validates the policy's knobs before any work is done
    return setup


__all__ = ["CacheSetup", "as_int", "instance_seed", "pinned_table", "resolve_capacity", "setup_cache"]
