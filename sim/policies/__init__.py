"""Expert-cache eviction policies: one module per policy, found automatically.

Adding a policy is adding one file here that defines ``NAME``; modules whose name starts with ``_``
are helpers and are skipped. Every policy module provides:

``NAME: str``
    The registry name (``get_policy(NAME)``).
``PARAMS: dict[str, Any]``
    Its tunable parameters with defaults; a user may override only these keys. A default of
    ``None`` means "required" (the policy's ``make_state`` explains what to pass).
``make_state(capacity, num_keys, params, seed) -> tuple``
    A fresh, empty cache (a tuple of numpy arrays) holding ``capacity`` keys from ``[0, num_keys)``.
    ``params`` is ``PARAMS`` updated with the user's values plus context added by the engine:
    ``_layer`` (the layer a per-layer cache serves, ``-1`` for a cache shared by all layers),
    ``_num_layers`` and ``_num_experts`` (a shared cache's key is ``layer * _num_experts + e``).
    The engine calls it again at every request boundary when the cache starts cold per request.
``access(state, key, now, next_use, guard, stamp) -> int`` (``@njit``)
    Serve one request; see the contract below.
``replay(state, keys, row_ptr, row_time, next_use, num_keys, hits_out) -> int`` (``@njit``)
    Serve a block of rows (usually ``row_loop(access, ...)``), write 1/0 per access into
    ``hits_out`` and return the evictions. The state carries over between calls, so a trace is
    replayed in chunks. It must give exactly what ``access`` gives key by key (a property test
    runs the engine both ways for every registered policy).
``reference(keys, row_ptr, row_time, next_use, capacity, num_keys, params, seed) -> (hits, evictions)``
    A plain-Python implementation with the same semantics, used by the tests.

Optional attributes: ``NEEDS_NEXT_USE = True`` if ``access`` reads ``next_use`` (the engine then
computes it; otherwise ``replay`` gets an empty array and the loop passes ``NEVER``);
``LAYER_CLOCK = True`` if ``make_state`` reads ``_num_layers`` (the policy counts in the layer clock,
so a replay outside the engine must pass the trace's layer context);
``PRELOADS = True`` if the cache starts full (then it may beat OPT, which starts empty), with
``preloaded(state) -> keys`` saying what it holds; ``more_victims(state, out) -> int`` (``@njit``)
for a policy that may evict several keys for one request (see below).

**The contract of** ``access`` (what the engine's hierarchy relies on, :mod:`sim.hierarchy`):

* It returns ``HIT`` (the key was resident and stays), ``MISS`` (the key is now resident, nothing
  left), the key it evicted (``>= 0``; the key is now resident), or ``BYPASS`` (the key is served
  without being cached and nothing changes: a policy that never inserts, such as ``static``).
  Whether it hits depends only on what the cache holds; a policy inserts on every miss unless it
  returns ``BYPASS``.
* A policy that evicts more than one key for one request (``watermark``'s batches) returns the
  first and hands the others to ``more_victims``, which the engine calls right after; every key
  reported left the cache, and nothing leaves it unreported.
* Keys with ``guard[key] == stamp`` are *guarded*: never a victim. Before a row is served its keys
  are guarded; in the hierarchy, so is every prefetched key whose target row has not come yet,
  and such a key is **not** requested again in the row. So a guarded key passed over while
  looking for a victim must keep its place and its state exactly (LRU slides it, it does not drop
  it), and the policy must still find a victim among the unguarded residents if one exists.
* ``now`` is the row's time in the layer clock (``t * L + l``) and grows from call to call;
  ``next_use`` is the time the key is requested next (``NEVER`` when unknown or never).

The engine checks the first point on every access it makes in the hierarchy (a disagreement about
what the cache holds is an error naming the policy), and a parametrised test runs every registered
policy through the hierarchy with random prefetches.

Array dtypes the engine passes (numba compiles one version per dtype combination): ``keys``
int32, ``row_ptr`` / ``row_time`` / ``next_use`` int64, ``hits_out`` uint8.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import numpy as np
from moesim.sim.errors import ConfigError

REQUIRED_ATTRS = ("NAME", "PARAMS", "make_state", "access", "replay", "reference")
CONTEXT_PARAMS = ("_layer", "_num_layers", "_num_experts")

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
            if name is None:
                continue
            missing = [a for a in REQUIRED_ATTRS if not hasattr(module, a)]
            if missing:
                raise ConfigError(f"policy module {module.__name__} (NAME={name!r}) lacks {missing}")
            if name in found:
                raise ConfigError(f"policy name {name!r} is defined by both {found[name].__name__} and "
                                  f"{module.__name__}")
            found[name] = module
        _REGISTRY = found
    return _REGISTRY


def list_policies() -> list[str]:
    """Names of every registered policy, sorted."""
    return sorted(_discover())


def get_policy(name: str) -> ModuleType:
    """The policy module called ``name``; an unknown name raises an error listing the known ones."""
    registry = _discover()
    if name not in registry:
        raise ConfigError(f"unknown policy {name!r}; known policies: {', '.join(sorted(registry))}")
    return registry[name]


def resolve_policy_params(policy: ModuleType, params: Mapping[str, Any] | None, *, layer: int = -1,
                          num_layers: int = 1, num_experts: int = 0) -> dict[str, Any]:
    """``PARAMS`` updated with ``params`` (unknown keys refused) plus the engine's context keys."""
    params = dict(params or {})
    unknown = sorted(k for k in params if k not in policy.PARAMS)
    if unknown:
        known = ", ".join(sorted(policy.PARAMS)) or "none"
        raise ConfigError(f"policy {policy.NAME!r} has no parameter(s) {unknown}; its parameters: {known}")
    return {**policy.PARAMS, **params, "_layer": layer, "_num_layers": num_layers,
            "_num_experts": num_experts}


def needs_next_use(policy: ModuleType) -> bool:
    return bool(getattr(policy, "NEEDS_NEXT_USE", False))


def replay_rows(policy: str | ModuleType, keys: np.ndarray, row_ptr: np.ndarray, row_time: np.ndarray,
                capacity: int, num_keys: int, params: Mapping[str, Any] | None = None, seed: int = 0,
                next_use: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Replay CSR rows through a fresh jitted cache: (hit per access as uint8, evictions).

    The building block for tests and notebooks that work on keys directly (no trace); ``next_use``
    is computed when the policy needs it and not given.
    """
    from moesim.sim.rows import next_use_times

    module = get_policy(policy) if isinstance(policy, str) else policy
    keys = np.ascontiguousarray(keys, np.int32)
    row_ptr = np.ascontiguousarray(row_ptr, np.int64)
    row_time = np.ascontiguousarray(row_time, np.int64)
    if next_use is None:
        next_use = (next_use_times(keys, row_ptr, row_time, num_keys) if needs_next_use(module)
                    else np.zeros(0, np.int64))
    state = module.make_state(capacity, num_keys, resolve_policy_params(module, params), seed)
    widths = np.diff(row_ptr)
    if len(widths) and int(widths.max()) > capacity:  # as the engine refuses it (sim.replay)
        r = int(widths.argmax())
        raise ConfigError(f"{module.NAME}: row {r} needs {int(widths[r])} experts at once but the cache has "
                          f"{capacity} slot(s): the capacity must be at least the widest row")
    hits = np.zeros(len(keys), np.uint8)
    evictions = module.replay(state, keys, row_ptr, row_time, np.ascontiguousarray(next_use, np.int64),
                              num_keys, hits)
    return hits, int(evictions)


def reference_rows(policy: str | ModuleType, keys: np.ndarray, row_ptr: np.ndarray, row_time: np.ndarray,
                   capacity: int, num_keys: int, params: Mapping[str, Any] | None = None, seed: int = 0,
                   next_use: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """:func:`replay_rows` through the policy's plain-Python ``reference``."""
    from moesim.sim.rows import next_use_reference

    module = get_policy(policy) if isinstance(policy, str) else policy
    if next_use is None:
        next_use = next_use_reference(keys, row_ptr, row_time)
    hits, evictions = module.reference(np.asarray(keys), np.asarray(row_ptr), np.asarray(row_time),
                                       np.asarray(next_use), capacity, num_keys,
                                       resolve_policy_params(module, params), seed)
    return np.asarray(hits, np.uint8), int(evictions)


__all__ = ["CONTEXT_PARAMS", "get_policy", "list_policies", "needs_next_use", "reference_rows",
           "replay_rows", "resolve_policy_params"]
