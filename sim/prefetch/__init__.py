"""Prefetchers: which experts to start loading before the router asks for them.

One module per prefetcher, found automatically (modules starting with ``_`` are helpers). Each
defines

``NAME: str`` and ``PARAMS: dict[str, Any]`` (knobs with defaults; unknown knobs are refused);
``start(num_layers, num_experts, top_k, params, seed) -> session``: a prefetcher for one run; the
    session's ``plan_piece(piece: PieceRouting) -> PrefetchPlan`` gives the prefetches issued at
    every row of one piece of the row source (jitted where the work is per row), carrying what it
    learned to the next piece, so a trace of any length is planned in the memory of one piece;
``reference(trace, params, seed) -> PrefetchPlan``: a plain-Python twin over a whole trace, which
    :func:`make_plan` (the sessions over pieces) must equal.

A *row* is one (step, MoE layer) of the trace in layer-clock order, ``r = t * L + l``. A prefetch
issued at row ``r`` starts when the router of row ``r`` has run (the same moment the demand misses
of row ``r`` are issued, after them) and names its *target* row: the row it is meant for. Keys are
shared-cache keys ``l * E + e``. Plans depend only on the trace (and the seed), never on what the
cache holds: the hierarchy touches candidates that are already resident (a policy hit, so that
fetching the others cannot evict them), fetches the rest, and applies the in-flight budget and
the room rule (:mod:`sim.hierarchy`, :class:`sim.hierarchy.HierarchyConfig`).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import numpy as np
from moesim.sim.errors import ConfigError
from moesim.sim.prefetch._plan import (
    PieceRouting,
    PrefetchPlan,
    RoutingRows,
    concat_plans,
    empty_plan,
    plan_from_lists,
    routing_rows,
    routing_rows_of,
)

_REGISTRY: dict[str, ModuleType] | None = None


def _discover() -> dict[str, ModuleType]:
    global _REGISTRY
    if _REGISTRY is None:
        found: dict[str, ModuleType] = {}
        for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
            if info.name.startswith("_"):
                continue
            module = importlib.import_module(f"{__name__}.{info.name}")
            name = getattr(module, "NAME", None)
            if name is not None:
                found[name] = module
        _REGISTRY = found
    return _REGISTRY


def list_prefetchers() -> list[str]:
    return sorted(_discover())


def get_prefetcher(name: str) -> ModuleType:
    registry = _discover()
    if name not in registry:
        raise ConfigError(f"unknown prefetcher {name!r}; known prefetchers: {', '.join(sorted(registry))}")
    return registry[name]


def resolve_prefetch_params(module: ModuleType, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """``PARAMS`` updated with ``params``; an unknown knob is refused naming the known ones."""
    params = dict(params or {})
    unknown = sorted(k for k in params if k not in module.PARAMS)
    if unknown:
        known = ", ".join(sorted(module.PARAMS)) or "none"
        raise ConfigError(f"prefetcher {module.NAME!r} has no knob(s) {unknown}; its knobs: {known}")
    return {**module.PARAMS, **params}


def start(name: str, num_layers: int, num_experts: int, top_k: int, params: Mapping[str, Any] | None = None,
          seed: int = 0) -> Any:
    """A session of prefetcher ``name`` (its knobs checked)."""
    module = get_prefetcher(name)
    return module.start(num_layers, num_experts, top_k, resolve_prefetch_params(module, params), seed)


class FixedPlan:
    """A session that replays a plan made beforehand for the whole stream (tests, notebooks)."""

    def __init__(self, plan: PrefetchPlan) -> None:
        self.plan = plan

    def plan_piece(self, piece: PieceRouting) -> PrefetchPlan:
        a, b = piece.row0, piece.row0 + piece.num_rows
        if b > self.plan.num_rows:
            raise ConfigError(f"prefetch plan covers {self.plan.num_rows} rows, the trace has more")
        lo, hi = int(self.plan.row_ptr[a]), int(self.plan.row_ptr[b])
        return PrefetchPlan(self.plan.row_ptr[a:b + 1] - lo, self.plan.keys[lo:hi], self.plan.target[lo:hi])


def make_plan(name: str, trace: Any, params: Mapping[str, Any] | None = None, seed: int = 0, *,
              chunk_steps: int | None = None) -> PrefetchPlan:
    """The plan of prefetcher ``name`` for the whole of ``trace`` (every step, no cold restart),
    made piece by piece as the engine makes it (``chunk_steps`` steps per piece; default: one piece)."""
    session = start(name, trace.num_layers, trace.num_experts, trace.meta.top_k, params, seed)
    T, L = trace.num_steps, trace.num_layers
    step = max(1, T if chunk_steps is None else int(chunk_steps))
    experts = np.asarray(trace.experts)
    pred = None if trace.predicted is None else np.asarray(trace.predicted)

    def rows_after(stop: int) -> Any:
        def ahead(n: int) -> tuple[np.ndarray, np.ndarray]:
            more = routing_rows_of(experts[stop:stop + -(-n // L)], trace.num_experts)
            ptr = more.row_ptr[:n + 1]
            return more.keys[:ptr[-1]], ptr
        return ahead

    plans = []
    for a in range(0, T, step):
        b = min(a + step, T)
        rows = routing_rows_of(experts[a:b], trace.num_experts)
        plans.append(session.plan_piece(PieceRouting(
            experts[a:b], rows.keys, rows.row_ptr, a * L, T * L, T * L, None if pred is None else pred[a:b],
            rows_after(b))))
    return concat_plans(plans) if plans else empty_plan(0)


__all__ = ["FixedPlan", "PieceRouting", "PrefetchPlan", "RoutingRows", "empty_plan", "get_prefetcher",
           "list_prefetchers", "make_plan", "plan_from_lists", "resolve_prefetch_params", "routing_rows",
           "start"]
