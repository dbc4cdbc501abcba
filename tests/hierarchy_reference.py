"""Plain-Python twin of the hierarchy (:func:`moesim.sim.offload.simulate_hierarchy`), for the tests.

It re-implements the L1 policies it supports (``lru``, ``fifo``, ``opt``) as small step-by-step
classes, and L2 with ordered dicts, following the rules in :mod:`moesim.sim.hierarchy`'s docstring
rather than its code, over a whole in-memory trace (no pieces, no pinned experts, no cold restart).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
from moesim.sim.cache_setup import resolve_capacity
from moesim.sim.errors import ConfigError
from moesim.sim.hierarchy import COUNTERS, KIND_DEMAND, KIND_PREFETCH, SRC_DRAM, SRC_L1, SRC_SSD
from moesim.sim.levels import HierarchyConfig
from moesim.sim.prefetch import PrefetchPlan, RoutingRows, empty_plan, routing_rows
from moesim.sim.row_loop import NEVER
from moesim.sim.rows import next_use_reference
from moesim.traces.trace import Trace

HIT = "hit"


class _Lru:
    def __init__(self, capacity: int) -> None:
        self.cap = capacity
        self.d: OrderedDict[int, None] = OrderedDict()  # first = least recent

    def access(self, key: int, now: int, next_use: int, guard: set[int]) -> Any:
        if key in self.d:
            self.d.move_to_end(key)
            return HIT
        victim = None
        if len(self.d) >= self.cap:
            victim = next(k for k in self.d if k not in guard)
            del self.d[victim]
        self.d[key] = None
        return victim


class _Fifo(_Lru):
    def access(self, key: int, now: int, next_use: int, guard: set[int]) -> Any:
        if key in self.d:
            return HIT
        return super().access(key, now, next_use, guard)


class _Opt:
    def __init__(self, capacity: int) -> None:
        self.cap = capacity
        self.next: dict[int, int] = {}
        self.last: dict[int, int] = {}
        self.n = 0

    def access(self, key: int, now: int, next_use: int, guard: set[int]) -> Any:
        n = self.n
        self.n += 1
        victim = None
        if key in self.next:
            self.next[key] = next_use
            self.last[key] = n
            return HIT
        if len(self.next) >= self.cap:
            victim = max((k for k in self.next if k not in guard), key=lambda k: (self.next[k], -self.last[k]))
            del self.next[victim]
            del self.last[victim]
        self.next[key] = next_use
        self.last[key] = n
        return victim


_POLICIES = {"lru": _Lru, "fifo": _Fifo, "opt": _Opt}


def prefetch_next_use(rows: RoutingRows, plan: PrefetchPlan) -> np.ndarray:
    """For each plan entry, the first row after its issuing row that requests its key (``NEVER`` if none)."""
    out = np.full(len(plan), NEVER, np.int64)
    for j in range(len(plan)):
        issue = int(np.searchsorted(plan.row_ptr, j, side="right")) - 1
        k = int(plan.keys[j])
        for s in range(issue + 1, rows.num_rows):
            if k in rows.keys[rows.row_ptr[s]:rows.row_ptr[s + 1]].tolist():
                out[j] = s
                break
    return out


def reference_hierarchy(trace: Trace, config: HierarchyConfig, *, plan: PrefetchPlan | None = None,
                        bytes_per_expert: int | None = None, warmup_steps: int = 0) -> dict[str, Any]:
    """The counters, the hit of every demand access (time-major), the events (row, key, src, kind),
    for L1 policy lru, fifo or opt: what the engine's hierarchy path gives."""
    if config.l1.policy not in _POLICIES:
        raise ConfigError(f"the reference hierarchy supports L1 policies {sorted(_POLICIES)}, not "
                          f"{config.l1.policy!r}")
    rows = routing_rows(trace)
    L, E = rows.num_layers, rows.num_experts
    per_layer = config.l1.organisation == "per_layer"
    l1_total, l2_cap = config.capacities(bytes_per_expert)
    _, layer_caps = resolve_capacity(L, l1_total, None, None, config.l1.organisation, None)
    caps = list(layer_caps) if per_layer else [l1_total]
    plan = empty_plan(rows.num_rows) if plan is None else plan
    plan.check(rows.num_rows, rows.num_keys)
    next_use = next_use_reference(rows.keys, rows.row_ptr, np.arange(rows.num_rows))
    pf_next = prefetch_next_use(rows, plan) if len(plan) else np.zeros(0, np.int64)
    if config.l1.policy != "opt":
        next_use = np.full(len(rows.keys), NEVER, np.int64)
        pf_next = np.full(len(plan), NEVER, np.int64)
    caches = [_POLICIES[config.l1.policy](c) for c in caps]
    part = (lambda k: k // E) if per_layer else (lambda k: 0)
    budget = float("inf") if config.prefetch_budget is None else config.prefetch_budget
    count_from = min(warmup_steps * L, rows.num_rows)
    cnt = dict.fromkeys(COUNTERS, 0)

    l1: set[int] = set()
    l2_on = config.l2 is not None
    l2_lru = l2_on and config.l2.policy == "lru"  # type: ignore[union-attr]
    l2: set[int] = set()  # every expert DRAM holds
    queue: OrderedDict[int, None] = OrderedDict()  # DRAM's eviction order, front first
    if l2_on and config.l2_prefill:
        for k in range(min(l2_cap, rows.num_keys)):  # type: ignore[type-var]
            l2.add(k)
            queue[k] = None
    unused_pf: dict[int, int] = {}  # key -> event index of a prefetch not yet used
    outstanding: dict[int, int] = {}  # key -> target row
    hit = np.zeros(len(rows.keys), np.uint8)
    src = np.zeros(len(rows.keys), np.int8)
    events: list[tuple[int, int, int, int]] = []
    useful: list[int] = []

    def bump(name: str, counted: bool) -> None:
        if counted:
            cnt[name] += 1
        elif name == "l1_evictions":
            cnt["l1_evictions_warmup"] += 1

    def evict_l2(counted: bool) -> None:
        victim = next(k for k in queue if not (config.inclusive and k in l1))
        del queue[victim]
        l2.discard(victim)
        bump("l2_evictions", counted)

    def fetch(k: int, counted: bool) -> int:
        if not l2_on:
            bump("l2_hits", counted)
            return SRC_DRAM
        if k in l2:
            bump("l2_hits", counted)
            if not config.inclusive:
                l2.discard(k)
                del queue[k]
            elif l2_lru:
                del queue[k]
            return SRC_DRAM
        bump("l2_misses", counted)
        bump("ssd_reads", counted)
        if config.inclusive:
            if len(l2) >= l2_cap:  # type: ignore[operator]
                evict_l2(counted)
            l2.add(k)
            if not l2_lru:
                queue[k] = None
            bump("l2_fills", counted)
        return SRC_SSD

    def evict_l1(v: int, counted: bool) -> None:
        l1.discard(v)
        bump("l1_evictions", counted)
        ev = unused_pf.pop(v, None)
        if ev is not None:
            bump("prefetch_wasted", events[ev][0] >= count_from)
        if not l2_on:
            return
        if config.inclusive:
            if l2_lru:
                queue[v] = None
            return
        if len(l2) >= l2_cap:  # type: ignore[operator]
            evict_l2(counted)
        l2.add(v)
        queue[v] = None
        bump("demotions", counted)

    def has_room(p: int, r: int, target: int, guard: set[int]) -> bool:
        # A victim must exist now outside the guarded keys; and if a row of cache p comes before
        # the target, that row must fit beside every prefetch in flight in p.
        if sum(1 for g in guard if part(g) == p) + 1 > caps[p]:
            return False
        next_row = (r + ((p - r % L) % L or L)) if per_layer else r + 1
        in_flight = sum(1 for o in outstanding if part(o) == p)
        return target <= next_row or in_flight + 1 + rows.width <= caps[p]

    for r in range(rows.num_rows):
        counted = r >= count_from
        for k in [k for k, t in outstanding.items() if t <= r]:
            del outstanding[k]
        lo, hi = int(rows.row_ptr[r]), int(rows.row_ptr[r + 1])
        row = [int(k) for k in rows.keys[lo:hi]]
        guard = set(row) | set(outstanding)
        for i, k in enumerate(row, start=lo):
            p = part(k)
            local = k - p * E if per_layer else k
            lguard = {g - p * E for g in guard if part(g) == p} if per_layer else guard
            res = caches[p].access(local, r, int(next_use[i]), lguard)
            if res == HIT:
                hit[i], src[i] = 1, SRC_L1
                bump("l1_hits", counted)
                ev = unused_pf.pop(k, None)
                if ev is not None:
                    useful[ev] = 1
                    bump("prefetch_useful", events[ev][0] >= count_from)
                continue
            l1.add(k)
            s = fetch(k, counted)
            src[i] = s
            bump("l1_misses", counted)
            bump("l1_fills", counted)
            if s == SRC_SSD:
                bump("demand_from_ssd", counted)
            events.append((r, k, s, KIND_DEMAND))
            useful.append(0)
            if res is not None:
                evict_l1(res + p * E if per_layer else res, counted)
        # Resident candidates are touched first (a policy hit), so fetching the others cannot evict them.
        for j in range(int(plan.row_ptr[r]), int(plan.row_ptr[r + 1])):
            k = int(plan.keys[j])
            if k in l1:
                bump("prefetch_skipped_resident", counted)
                p = part(k)
                local = k - p * E if per_layer else k
                lguard = {g - p * E for g in guard if part(g) == p} if per_layer else guard
                if caches[p].access(local, r, int(pf_next[j]), lguard) != HIT:
                    raise RuntimeError(f"prefetch candidate {k} is resident but its cache missed")
        for j in range(int(plan.row_ptr[r]), int(plan.row_ptr[r + 1])):
            k, target = int(plan.keys[j]), int(plan.target[j])
            if k in l1:
                continue
            if len(outstanding) >= budget:
                bump("prefetch_dropped_budget", counted)
                continue
            p = part(k)
            if not has_room(p, r, target, guard):
                bump("prefetch_dropped_room", counted)
                continue
            guard.add(k)
            local = k - p * E if per_layer else k
            lguard = {g - p * E for g in guard if part(g) == p} if per_layer else guard
            res = caches[p].access(local, r, int(pf_next[j]), lguard)
            l1.add(k)
            s = fetch(k, counted)
            bump("prefetch_issued", counted)
            bump("l1_fills", counted)
            unused_pf[k] = len(events)
            events.append((r, k, s, KIND_PREFETCH))
            useful.append(0)
            outstanding[k] = target
            if res is not None:
                evict_l1(res + p * E if per_layer else res, counted)

    counts = {k: v for k, v in cnt.items() if k != "inconsistent"}
    ev = np.array(events, np.int64).reshape(-1, 4)
    return {"counts": counts, "hit": hit, "src": src,
            "events": {"row": ev[:, 0], "key": ev[:, 1], "src": ev[:, 2], "kind": ev[:, 3]}}


__all__ = ["prefetch_next_use", "reference_hierarchy"]
