"""No prefetching: every L1 miss is fetched on demand (the baseline coverage is measured against)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from moesim.sim.prefetch._plan import PrefetchPlan, empty_plan
from moesim.traces.trace import Trace

NAME = "none"
PARAMS: dict[str, Any] = {}


def plan(trace: Trace, params: Mapping[str, Any], seed: int) -> PrefetchPlan:
    return empty_plan(trace.num_steps * trace.num_layers)


def reference(trace: Trace, params: Mapping[str, Any], seed: int) -> PrefetchPlan:
    return plan(trace, params, seed)
