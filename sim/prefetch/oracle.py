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
from moesim.sim.prefetch._plan import PieceRouting, PrefetchPlan, plan_from_lists, routing_rows
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


class Session:
    def __init__(self, params: Mapping[str, Any]) -> None:
        self.lookahead, self.top_n = _knobs(params)

    def plan_piece(self, piece: PieceRouting) -> PrefetchPlan:
        d, top_n = self.lookahead, self.top_n
        R = piece.num_rows
        # The piece's rows, then the d rows after it (from the next pieces of the same epoch).
        more_keys, more_ptr = piece.ahead(d)
        keys = np.concatenate([piece.keys, more_keys]).astype(np.int32)
        row_ptr = np.concatenate([piece.row_ptr, more_ptr[1:] + piece.row_ptr[-1]])
        n_rows = row_ptr.shape[0] - 1
        counts = np.diff(row_ptr)
        acc_row = np.repeat(np.arange(n_rows, dtype=np.int64), counts)
        slot = np.arange(len(keys), dtype=np.int64) - row_ptr[acc_row]
        limit = min(piece.total_rows, piece.epoch_end) - piece.row0  # no target at or past it
        keep = (acc_row >= d) & (acc_row - d < R) & (acc_row < limit)
        if top_n is not None:
            keep &= slot < top_n
        issued = np.bincount(acc_row[keep] - d, minlength=R).astype(np.int64) if R else np.zeros(0, np.int64)
        out_ptr = np.zeros(R + 1, np.int64)
        np.cumsum(issued, out=out_ptr[1:])
        return PrefetchPlan(out_ptr, keys[keep].astype(np.int32), acc_row[keep] + piece.row0)


def start(num_layers: int, num_experts: int, top_k: int, params: Mapping[str, Any], seed: int) -> Session:
    return Session(params)


def reference(trace: Trace, params: Mapping[str, Any], seed: int) -> PrefetchPlan:
    d, top_n = _knobs(params)
    rows = routing_rows(trace)
    out = []
    for r in range(rows.num_rows):
        t = r + d
        if t >= rows.num_rows:
            out.append([])
            continue
        row = [int(k) for k in rows.keys[rows.row_ptr[t]:rows.row_ptr[t + 1]]]
        out.append([(k, t) for k in (row if top_n is None else row[:top_n])])
    return plan_from_lists(out)
