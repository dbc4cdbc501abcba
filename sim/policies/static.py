"""Static pinning: a fixed set of experts held from the start; everything else misses.

The set is chosen offline, normally the hottest experts of a *profiling* trace
(:func:`sim.pinning.choose_pinned`), and passed as ``params["keys"]``: shared-cache keys
``layer * E + e``. A per-layer cache keeps the keys of its own layer. The cache never changes: no
insertion, no eviction, so a miss is served without caching (the expert streams through). The
set is loaded before the first access (``PRELOADS``), so unlike the demand-fetching policies its
first accesses hit; that is the point of pinning, and why it is not bounded by OPT.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from moesim.kernels.jit import njit
from moesim.sim.errors import ConfigError
from moesim.sim.row_loop import BYPASS, HIT, row_loop

NAME = "static"
PARAMS: dict[str, Any] = {"keys": None}
PRELOADS = True


def member_keys(num_keys: int, params: Mapping[str, Any]) -> list[int]:
    """The set's keys in this cache's key space (a per-layer cache keeps its layer's, as ``e``)."""
    keys = params.get("keys")
    if keys is None:
        raise ConfigError("policy 'static' needs params['keys']: the experts to hold (keys layer*E+e), "
                          "e.g. sim.pinning.choose_pinned(profile_trace, capacity)")
    keys = sorted({int(k) for k in keys})
    layer = int(params.get("_layer", -1))
    if layer >= 0:
        E = int(params["_num_experts"])
        keys = [k - layer * E for k in keys if k // E == layer]
    bad = [k for k in keys if not 0 <= k < num_keys]
    if bad:
        raise ConfigError(f"policy 'static': params['keys'] holds key {bad[0]} outside [0, {num_keys})")
    return keys


def make_state(capacity: int, num_keys: int, params: Mapping[str, Any], seed: int) -> tuple:
    keys = member_keys(num_keys, params)
    if len(keys) > capacity:
        where = f" of layer {params['_layer']}" if int(params.get("_layer", -1)) >= 0 else ""
        raise ConfigError(f"policy 'static': {len(keys)} keys{where} do not fit a capacity of {capacity}")
    member = np.zeros(num_keys, np.uint8)
    member[keys] = 1
    return (member,)


def preloaded(state: tuple) -> np.ndarray:
    """The keys the cache holds from the start (this cache's key space)."""
    return np.flatnonzero(state[0])


@njit
def access(state, key, now, next_use, guard, stamp):
    return HIT if state[0][key] else BYPASS


@njit
def replay(state, keys, row_ptr, row_time, next_use, num_keys, hits_out):
    return row_loop(access, state, keys, row_ptr, row_time, next_use, num_keys, hits_out)


def reference(keys: np.ndarray, row_ptr: np.ndarray, row_time: np.ndarray, next_use: np.ndarray,
              capacity: int, num_keys: int, params: Mapping[str, Any], seed: int) -> tuple[np.ndarray, int]:
    member = set(member_keys(num_keys, params))
    return np.array([int(k) in member for k in keys], np.uint8), 0
