"""No prefetching: every L1 miss is fetched on demand."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from moesim.sim.prefetch._plan import PieceRouting, PrefetchPlan, empty_plan
from moesim.traces.trace import Trace

NAME = "none"
PARAMS: dict[str, Any] = {}


class Session:
    def plan_piece(self, piece: PieceRouting) -> PrefetchPlan:
        return empty_plan(piece.num_rows)


def start(num_layers: int, num_experts: int, top_k: int, params: Mapping[str, Any], seed: int) -> Session:
    return Session()


def reference(trace: Trace, params: Mapping[str, Any], seed: int) -> PrefetchPlan:
    return empty_plan(trace.num_steps * trace.num_layers)
