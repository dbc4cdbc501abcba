"""A discrete-event twin of :func:`moesim.sim.timing.timeline_shared`, for the tests.

The jitted loop keeps a ring of transfers with running sequence numbers across pieces; this one
advances one clock from event to event over a whole run (a transfer ends, a transfer's input
arrives, a computation ends), with the rates the model gives: while the computation and a transfer
run at once, each progresses ``1 / slow`` times as fast. Floats are summed in another order, so the
tests compare with a relative tolerance.
"""

from __future__ import annotations

from collections import deque

import numpy as np
from moesim.sim.hierarchy import SRC_SSD


def shared_timeline(rows: list[list[list[int]]], attn: np.ndarray, expert: np.ndarray, head: np.ndarray,
                    events: list[tuple[int, int, int]], h2d: float, ssd: float, handoff: float, slow_compute: float,
                    slow_fetch: float) -> tuple[np.ndarray, np.ndarray]:
    T = len(rows)
    L = len(rows[0]) if T else 0
    by_row: dict[int, list[tuple[int, int]]] = {}
    for r, k, s in events:
        by_row.setdefault(r, []).append((k, s))
    queue: deque[list] = deque()  # [key, work left, input ready at]
    pending: dict[int, int] = {}  # key -> transfers of it not done
    ready: dict[int, float] = {}
    clock = {"now": 0.0, "ssd_free": 0.0, "link_free": 0.0}

    def finish_head() -> None:
        key, _, _ = queue.popleft()
        pending[key] -= 1
        ready[key] = clock["now"]
        clock["link_free"] = clock["now"]
        if queue and queue[0][2] >= clock["now"]:  # the worker went to sleep: it is woken
            queue[0][2] += handoff

    def compute(work: float) -> None:
        while work > 0.0:
            if not queue:
                clock["now"] += work
                return
            head_t = queue[0]
            if head_t[2] > clock["now"]:  # the link idles until the input arrives
                if clock["now"] + work <= head_t[2]:
                    clock["now"] += work
                    return
                work -= head_t[2] - clock["now"]
                clock["now"] = head_t[2]
                continue
            t_compute, t_fetch = work * slow_compute, head_t[1] * slow_fetch
            if t_compute < t_fetch:
                head_t[1] -= t_compute / slow_fetch
                clock["now"] += t_compute
                return
            work -= t_fetch / slow_compute
            clock["now"] += t_fetch
            finish_head()

    def link_alone(until: float) -> None:
        while queue:
            head_t = queue[0]
            begin = max(clock["now"], head_t[2])
            if begin >= until:
                break
            if begin + head_t[1] > until:
                head_t[1] -= until - begin
                break
            clock["now"] = begin + head_t[1]
            finish_head()
        clock["now"] = until

    def wait_for(keys: list[int]) -> None:
        while any(pending.get(k, 0) for k in keys):
            head_t = queue[0]
            clock["now"] = max(clock["now"], head_t[2]) + head_t[1]
            finish_head()

    step_time = np.zeros(T)
    stall = np.zeros((T, L))
    for t in range(T):
        begin = clock["now"]
        for layer in range(L):
            r = t * L + layer
            compute(float(attn[t, layer]))
            routed = clock["now"]
            for k, s in by_row.get(r, []):
                at = routed
                if s == SRC_SSD:
                    at = (at + handoff if clock["ssd_free"] <= at else clock["ssd_free"]) + ssd
                    clock["ssd_free"] = at
                if not queue and clock["link_free"] <= at:
                    at += handoff
                queue.append([k, h2d, at])
                pending[k] = pending.get(k, 0) + 1
            wait_for(rows[t][layer])
            go = max([routed] + [ready.get(k, 0.0) for k in rows[t][layer]])
            if go > routed:  # the computation is woken; the link works on meanwhile
                clock["now"] = go
                link_alone(go + handoff)
                go += handoff
            stall[t, layer] = go - routed
            clock["now"] = go
            compute(float(expert[t, layer]))
        compute(float(head[t]))
        step_time[t] = clock["now"] - begin
    return step_time, stall
