"""Oracle: at row ``r``, prefetch exactly the experts row ``r + lookahead`` will use (it reads the trace).

An upper bound for any predictor that issues ``lookahead`` rows ahead: every prefetch is right,
and only timing (link bandwidth, the in-flight budget) and cache room can still cause stalls.
Knobs: ``lookahead`` (rows, i.e. MoE layers, ahead; >= 1; default 1), ``top_n`` (prefetch at most
the first ``top_n`` experts of the target row in the router's order; ``None`` = all).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from moesim.sim.errors import ConfigError
from moesim.sim.hierarchy import demand_rows
from moesim.sim.prefetch._plan import PrefetchPlan, plan_from_lists
from moesim.traces.trace import Trace

NAME = "oracle"
PARAMS: dict[str, Any] = {"lookahead": 1, "top_n": None}


def _knobs(params: Mapping[str, Any]) -> tuple[int, int | None]:
    d, n = params["lookahead"], params["top_n"]
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
        raise ConfigError(f"prefetcher 'oracle': knob 'lookahead' must be an integer >= 1, got {d!r}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1):
        raise ConfigError(f"prefetcher 'oracle': knob 'top_n' must be an integer >= 1 or None, got {n!r}")
    return int(d), None if n is None else int(n)


def plan(trace: Trace, params: Mapping[str, Any], seed: int) -> PrefetchPlan:
    d, top_n = _knobs(params)
    rows = demand_rows(trace)
    R = rows.num_rows
    counts = np.diff(rows.row_ptr)
    # Position of every access inside its row, to apply top_n.
    acc_row = np.repeat(np.arange(R, dtype=np.int64), counts)
    slot = np.arange(len(rows.keys), dtype=np.int64) - rows.row_ptr[acc_row]
    keep = (acc_row >= d) & ((slot < top_n) if top_n is not None else True)
    issued = np.zeros(R, np.int64)
    if R > d:
        np.add.at(issued, acc_row[keep] - d, 1)
    row_ptr = np.zeros(R + 1, np.int64)
    np.cumsum(issued, out=row_ptr[1:])
    return PrefetchPlan(row_ptr, rows.keys[keep].astype(np.int32), acc_row[keep])


def reference(trace: Trace, params: Mapping[str, Any], seed: int) -> PrefetchPlan:
    d, top_n = _knobs(params)
    rows = demand_rows(trace)
    out = []
    for r in range(rows.num_rows):
        t = r + d
        if t >= rows.num_rows:
            out.append([])
            continue
        row = [int(k) for k in rows.keys[rows.row_ptr[t]:rows.row_ptr[t + 1]]]
        out.append([(k, t) for k in (row if top_n is None else row[:top_n])])
    return plan_from_lists(out)
