"""Prefetchers: which experts to start loading before the router asks for them.

One module per prefetcher, found automatically (modules starting with ``_`` are helpers). Each
defines

``NAME: str`` and ``PARAMS: dict[str, Any]`` (knobs with defaults; unknown knobs are refused);
``plan(trace, params, seed) -> PrefetchPlan``: the prefetches issued at every row (jitted where the
    work is per row);
``reference(trace, params, seed) -> PrefetchPlan``: a plain-Python twin the tests compare against.

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

from moesim.sim.errors import ConfigError
from moesim.sim.prefetch._plan import PrefetchPlan, empty_plan, plan_from_lists

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


def resolve_params(module: ModuleType, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """``PARAMS`` updated with ``params``; an unknown knob is refused naming the known ones."""
    params = dict(params or {})
    unknown = sorted(k for k in params if k not in module.PARAMS)
    if unknown:
        known = ", ".join(sorted(module.PARAMS)) or "none"
        raise ConfigError(f"prefetcher {module.NAME!r} has no knob(s) {unknown}; its knobs: {known}")
    return {**module.PARAMS, **params}


def make_plan(name: str, trace: Any, params: Mapping[str, Any] | None = None, seed: int = 0) -> PrefetchPlan:
    """The plan of prefetcher ``name`` for ``trace``."""
    module = get_prefetcher(name)
    return module.plan(trace, resolve_params(module, params), seed)


__all__ = ["PrefetchPlan", "empty_plan", "get_prefetcher", "list_prefetchers", "make_plan", "plan_from_lists",
           "resolve_params"]
