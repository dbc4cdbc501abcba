"""Knob checking shared by the policies: defaults merged with the caller's params, bad values refused.

Every error is a :class:`sim.errors.ConfigError` (a ``ValueError``) whose message starts with
``<policy>: knob '<name>'`` so a sweep that passes a bad value learns which knob of which policy is
wrong. The context keys the engine adds for every policy (``_layer``, ``_num_layers``,
``_num_experts``) are accepted even by policies that do not read them.
No module-level NAME: the policy registry skips this helper.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from moesim.sim.errors import ConfigError
from moesim.sim.policies import CONTEXT_PARAMS


def resolve(policy: str, defaults: Mapping[str, Any], params: Mapping[str, Any] | None) -> dict[str, Any]:
    """``defaults`` updated with ``params``; an unknown knob is refused (typos must not pass silently)."""
    merged = dict(defaults)
    for key, value in dict(params or {}).items():
        if key not in defaults and key not in CONTEXT_PARAMS:
            known = ", ".join(sorted(defaults)) or "none"
            raise ConfigError(f"{policy}: unknown knob '{key}' (known knobs: {known})")
        merged[key] = value
    return merged


def _number(policy: str, name: str, value: Any) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value):
        raise ConfigError(f"{policy}: knob '{name}' must be a finite number, got {value!r}")
    return float(value)


def fraction(policy: str, name: str, value: Any, *, lo_open: bool = True, hi_open: bool = False,
             lo: float = 0.0, hi: float = 1.0) -> float:
    """A number in the interval (lo, hi] by default; the bracket kinds are chosen by the caller."""
    x = _number(policy, name, value)
    below = x <= lo if lo_open else x < lo
    above = x >= hi if hi_open else x > hi
    if below or above:
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise ConfigError(f"{policy}: knob '{name}' must lie in {interval}, got {value!r}")
    return x


def at_least(policy: str, name: str, value: Any, lo: float) -> float:
    x = _number(policy, name, value)
    if x < lo:
        raise ConfigError(f"{policy}: knob '{name}' must be >= {lo:g}, got {value!r}")
    return x


def integer(policy: str, name: str, value: Any, lo: int, hi: int | None = None) -> int:
    """An integer (numpy integers and integral floats such as 2.0 from a config file included)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{policy}: knob '{name}' must be an integer, got {value!r}")
    x = int(value)
    if x < lo or (hi is not None and x > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ConfigError(f"{policy}: knob '{name}' must be an integer {bound}, got {value!r}")
    return x


def flag(policy: str, name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ConfigError(f"{policy}: knob '{name}' must be a boolean, got {value!r}")


def choice(policy: str, name: str, value: Any, options: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in options:
        raise ConfigError(f"{policy}: knob '{name}' must be one of {list(options)}, got {value!r}")
    return value


def capacity_at_least(policy: str, capacity: Any, lo: int) -> int:
    """The cache capacity (not a knob, but refused the same way)."""
    return integer(policy, "capacity", capacity, lo)
