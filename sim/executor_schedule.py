"""What the executor will do, decided before it runs: the hierarchy's decisions as a list of fetches
into numbered slots, from the project's own policy code.

The executor (:mod:`sim.executor`) replays a trace with real weights. Which expert hits, which is
fetched from where, which slot it lands in and which expert it evicts must be exactly what the
simulator decides (:func:`sim.offload.simulate_hierarchy`), so this module walks the rows the way
:func:`sim.hierarchy.serve_piece` does, with the same rules (guards, the prefetch touch / fetch
passes, the in-flight budget, the room rule, bypasses, batches of victims, an inclusive or
exclusive DRAM level over the SSD) and asks the L1 policy's own jitted ``access`` (and
``more_victims``) for every key: a Python loop around the policy code, not a second policy. The
tests hold its events to the simulator's and its hits to :func:`sim.replay.replay` for every
registered policy.

None of these decisions depends on time (a prefetch is issued when its row is reached, whether or
not earlier transfers are done), so they are all made before the timed run: the executor's clock
then only sees the work itself (reads, decodes, matmuls, waits), as a real engine's policy
bookkeeping costs microseconds.

On top of the decisions this module assigns storage:

* **Fast-tier slots** (compute-ready weights): a fetch that the policy keeps goes into the slot of
  the key it evicted, or a free slot while the cache fills; every further victim of a batch frees
  its slot. A bypass (a policy that declines to keep the key) streams into one of ``width`` scratch
  slots for its row only. Pinned experts and a preloading policy's keys have slots of their own,
  filled before the run.
* **Host-tier buffers** (the stored, encoded bytes): with no DRAM limit every expert has its own
  buffer, filled before the run; with one, a key holds a buffer while DRAM holds it (or, exclusive,
  while L1 does, so that a demotion costs nothing), an SSD read lands in a free buffer, and a
  buffer freed while an earlier decode still has to read it is refilled only after that decode
  (``reuse_after``).

Not supported (refused): cold restarts per request (a trace's requests run back to back).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from moesim.sim.cache_setup import CacheSetup
from moesim.sim.errors import ConfigError
from moesim.sim.hierarchy import (
    COUNTERS,
    KIND_BYPASS,
    KIND_DEMAND,
    KIND_PREFETCH,
    SRC_DRAM,
    SRC_SSD,
    UNLIMITED,
)
from moesim.sim.policies import needs_next_use
from moesim.sim.prefetch import PrefetchPlan, empty_plan, make_plan
from moesim.sim.row_loop import BYPASS, HIT, NEVER, no_more_victims
from moesim.sim.rows import build_rows, next_use_backward
from moesim.traces.trace import Trace

OP_DEMAND, OP_TOUCH, OP_FETCH = 0, 1, 2
NO_FETCH = -1


@dataclass(frozen=True, eq=False)
class Schedule:
    """Every decision of one run, in row order (row ``r = t * L + l``).

    Rows (CSR over ``row_ptr``, one row per (step, layer), pinned experts and pads dropped): the
    keys in the tie-break order, whether each hit, the fast-tier slot its computation reads, and
    the fetch it must wait for (the latest fetch of that key issued up to its row; ``NO_FETCH`` for
    a key resident since before the run). ``entry`` maps each access back to its trace entry
    (``(t * L + l) * K + k``), where the gate weight is.

    Fetches (in issue order, which is each link's service order): the issuing row, key, source
    (``SRC_DRAM`` / ``SRC_SSD``), kind (demand, prefetch, bypass), the fast-tier slot written,
    the host buffer read (and, from the SSD, written first), and for an SSD read the last fetch
    that decoded from that buffer before (``reuse_after``; -1 if none).
    """

    num_layers: int
    num_experts: int
    width: int
    row_ptr: np.ndarray
    keys: np.ndarray
    hit: np.ndarray
    slot: np.ndarray
    wait: np.ndarray
    entry: np.ndarray
    fetch_row: np.ndarray
    fetch_key: np.ndarray
    fetch_src: np.ndarray
    fetch_kind: np.ndarray
    fetch_slot: np.ndarray
    fetch_host: np.ndarray
    reuse_after: np.ndarray
    evict_row: np.ndarray
    evict_key: np.ndarray
    entry_slot: np.ndarray  # int64 [T * L * K]: the slot each trace entry computes from (-1: padding)
    entry_wait: np.ndarray  # int64 [T * L * K]: the fetch it waits for (NO_FETCH: none)
    counts: dict[str, int]
    preload: dict[int, int]  # key -> fast-tier slot filled before the run (pinned, preloaded)
    host_preload: np.ndarray  # int64 [n, 2]: (key, host buffer) filled before the run
    num_slots: int  # fast-tier slots in all: policy slots, scratch, pinned
    num_host: int  # host buffers
    host_is_key: bool  # True: every key has its own host buffer (no DRAM limit)
    counted_from_row: int

    @property
    def num_rows(self) -> int:
        return len(self.row_ptr) - 1

    @property
    def num_fetches(self) -> int:
        return len(self.fetch_key)

    def events(self) -> dict[str, np.ndarray]:
        """The transfers as :func:`sim.offload.simulate_hierarchy` records them (row, key, src, kind)."""
        return {"row": self.fetch_row.astype(np.int64), "key": self.fetch_key.astype(np.int32),
                "src": self.fetch_src.astype(np.int8), "kind": self.fetch_kind.astype(np.int8)}


class _L2:
    """DRAM over the SSD, as :mod:`sim.hierarchy` keeps it: the queue is an ordered dict (first =
    next to leave), ``inclusive`` / exclusive, ``lru`` / ``fifo``."""

    def __init__(self, capacity: int | None, policy: str, inclusive: bool, prefill: bool, num_keys: int) -> None:
        self.on = capacity is not None
        self.cap = int(capacity or 0)
        self.lru = policy == "lru"
        self.inclusive = inclusive
        self.res = np.zeros(num_keys, bool)
        self.queue: OrderedDict[int, None] = OrderedDict()
        self.size = 0
        if self.on and prefill:
            for k in range(min(self.cap, num_keys)):
                self.queue[k] = None
                self.res[k] = True
            self.size = min(self.cap, num_keys)

    def evict(self, res1: np.ndarray) -> int:
        v = next(iter(self.queue))
        if self.inclusive and not self.lru:
            v = next(k for k in self.queue if not res1[k])  # fifo keeps L1-resident experts in place
        del self.queue[v]
        self.res[v] = False
        self.size -= 1
        return v


class _Planner:
    """The row loop (a Python twin of :func:`sim.hierarchy.serve_piece`'s decisions) plus storage."""

    def __init__(self, trace: Trace, setup: CacheSetup, l2_capacity: int | None, l2_policy: str, inclusive: bool,
                 l2_prefill: bool, budget: int | None, plan: PrefetchPlan | None) -> None:
        layout = setup.layout
        self.L, self.E, self.K = trace.num_layers, trace.num_experts, trace.width
        self.n_keys = self.L * self.E
        self.per_layer = layout.per_layer
        self.span = self.E if self.per_layer else self.n_keys
        self.policy = setup.policy
        self.access = self.policy.access
        self.more = getattr(self.policy, "more_victims", no_more_victims)
        self.pinned = layout.pinned
        self.caps = list(setup.policy_slots)
        experts = np.ascontiguousarray(trace.experts, np.int16)
        self.experts = experts
        block = build_rows(experts, 0, layout.time_major(), keep_empty=True)
        self.block = block
        self.R = len(block.row_ptr) - 1
        self.widest = int(np.diff(block.row_ptr).max(initial=0))
        self.plan = plan if plan is not None else empty_plan(self.R)
        self.budget = UNLIMITED if budget is None else int(budget)
        self.next_use = np.zeros(0, np.int64)
        self.next_req = np.full(self.n_keys, NEVER, np.int64)
        if needs_next_use(self.policy):
            nxt = np.full(self.n_keys, NEVER, np.int64)
            self.next_use = np.empty(len(block.keys), np.int64)
            next_use_backward(block.keys, block.row_ptr, block.row_time, nxt, self.next_use)
            if plan is not None:
                self.next_req[:] = nxt  # every key's first request (a prefetch before it needs it)
        self.states = [s if s is not None else self.policy.make_state(1, layout.keys_per_instance,
                                                                      setup.instance_params[j], 0)
                       for j, s in enumerate(setup.new_states(0))]
        self.res1 = np.zeros(self.n_keys, np.uint8)
        self.guard = np.full(self.n_keys, -1, np.int64)
        self.gcount = [0] * len(self.states)
        self.gstamp = [-1] * len(self.states)
        self.pf_row = np.full(self.n_keys, -1, np.int64)
        self.out: list[tuple[int, int]] = []  # prefetches in flight: (key, target row)
        self.out_part = [0] * len(self.states)
        self.victims = np.zeros(self.n_keys, np.int64)
        self.cnt = dict.fromkeys(COUNTERS, 0)
        self.l2 = _L2(l2_capacity, l2_policy, inclusive, l2_prefill, self.n_keys)
        self.count_from = setup.warmup_steps * self.L
        self._storage(setup)

    # ---- storage -------------------------------------------------------------------------------

    def _storage(self, setup: CacheSetup) -> None:
        n_policy = sum(self.caps)
        self.free_slots = list(range(n_policy - 1, -1, -1))  # pop() hands out slot 0 first
        self.scratch0 = n_policy
        self.slot_of = np.full(self.n_keys, -1, np.int64)
        slot = n_policy + self.widest
        self.preload: dict[int, int] = {}
        for k in np.flatnonzero(self.pinned):
            self.preload[int(k)] = slot
            self.slot_of[k] = slot
            slot += 1
        if hasattr(self.policy, "preloaded"):  # a cache that starts full holds these keys
            for j, state in enumerate(self.states):
                base = j * self.E if self.per_layer else 0
                for k in self.policy.preloaded(state):
                    key = base + int(k)
                    self.res1[key] = 1
                    self.slot_of[key] = self.free_slots.pop()
                    self.preload[key] = int(self.slot_of[key])
        self.num_slots = slot
        self.host_is_key = not self.l2.on
        self.host_of = np.arange(self.n_keys) if self.host_is_key else np.full(self.n_keys, -1, np.int64)
        # Inclusive: DRAM's keys hold the buffers (L1's are among them). Exclusive: DRAM's and L1's,
        # plus one for the key fetched before its victim is demoted.
        n_host = self.n_keys if self.host_is_key else self.l2.cap + (0 if self.l2.inclusive else n_policy + 1)
        self.host_scratch = n_host  # a streamed (not kept) SSD read passes through this buffer
        self.num_host = n_host + (0 if self.host_is_key else self.widest)
        self.free_host = [] if self.host_is_key else list(range(n_host - 1, -1, -1))
        self.last_reader = np.full(self.num_host, -1, np.int64)
        if not self.host_is_key:
            for k in np.flatnonzero(self.l2.res):
                self.host_of[k] = self.free_host.pop()
        held = np.flatnonzero(self.host_of >= 0)
        self.host_preload = np.stack([held, self.host_of[held]], axis=1)
        self.fetches: list[tuple[int, int, int, int, int, int, int]] = []
        self.latest = np.full(self.n_keys, NO_FETCH, np.int64)
        self.evictions: list[tuple[int, int]] = []

    def _holds_host(self, k: int) -> bool:
        return bool(self.l2.res[k]) or (not self.l2.inclusive and bool(self.res1[k]))

    def _release_host(self, k: int) -> None:
        if not self.host_is_key and self.host_of[k] >= 0 and not self._holds_host(k):
            self.free_host.append(int(self.host_of[k]))
            self.host_of[k] = -1

    # ---- the hierarchy's rules -----------------------------------------------------------------

    def _fetch(self, k: int, keep: bool, counted: bool) -> int:
        """:func:`sim.hierarchy._fetch`: where ``k`` comes from; DRAM's queue and counters follow."""
        l2, c = self.l2, self.cnt
        if not l2.on:
            if counted:
                c["l2_hits"] += 1
            return SRC_DRAM
        if l2.res[k]:
            if counted:
                c["l2_hits"] += 1
            if not keep:
                if l2.lru:
                    l2.queue.move_to_end(k)
            elif l2.inclusive:
                if l2.lru:
                    del l2.queue[k]
            else:
                del l2.queue[k]
                l2.res[k] = False
                l2.size -= 1
            return SRC_DRAM
        if counted:
            c["l2_misses"] += 1
            c["ssd_reads"] += 1
        if l2.inclusive:
            if l2.size >= l2.cap:
                self._l2_evict(counted)
            l2.res[k] = True
            l2.size += 1
            if not l2.lru or not keep:
                l2.queue[k] = None
            if counted:
                c["l2_fills"] += 1
        return SRC_SSD

    def _l2_evict(self, counted: bool) -> None:
        v = self.l2.evict(self.res1)
        if counted:
            self.cnt["l2_evictions"] += 1
        self._release_host(v)

    def _evict_l1(self, v: int, r: int, counted: bool) -> None:
        c = self.cnt
        self.res1[v] = 0
        c["l1_evictions" if counted else "l1_evictions_warmup"] += 1
        self.evictions.append((r, v))
        if self.pf_row[v] >= 0:
            if self.pf_row[v] >= self.count_from:
                c["prefetch_wasted"] += 1
            self.pf_row[v] = -1
        l2 = self.l2
        if l2.on:
            if l2.inclusive:
                if l2.lru:
                    l2.queue[v] = None
            else:
                if l2.size >= l2.cap:
                    self._l2_evict(counted)
                if self.host_of[v] < 0 and not self.host_is_key:
                    raise ConfigError("an exclusive DRAM level cannot take back an expert that was loaded "
                                      "before the run (a preloading policy): not supported")
                l2.queue[v] = None
                l2.res[v] = True
                l2.size += 1
                if counted:
                    c["demotions"] += 1
        self._release_host(v)

    def _guard(self, k: int, r: int) -> None:
        if self.guard[k] == r:
            return
        self.guard[k] = r
        p = k // self.E if self.per_layer else 0
        if self.gstamp[p] != r:
            self.gstamp[p] = r
            self.gcount[p] = 0
        self.gcount[p] += 1

    def _room(self, p: int, r: int, target: int) -> bool:
        guarded = self.gcount[p] if self.gstamp[p] == r else 0
        if guarded + 1 > self.caps[p]:
            return False
        if self.per_layer:
            d = (p - r % self.L) % self.L
            next_row = r + d if d > 0 else r + self.L
        else:
            next_row = r + 1
        return target <= next_row or self.out_part[p] + 1 + self.widest <= self.caps[p]

    # ---- one row ---------------------------------------------------------------------------------

    def run(self) -> Schedule:
        n = len(self.block.keys)
        hit = np.zeros(n, bool)
        slot = np.full(n, -1, np.int64)
        wait = np.full(n, NO_FETCH, np.int64)
        for r in range(self.R):
            self._row(r, hit, slot, wait)
        return self._result(hit, slot, wait)

    def _row(self, r: int, hit: np.ndarray, slot: np.ndarray, wait: np.ndarray) -> None:
        c = self.cnt
        counted = r >= self.count_from
        for j in range(len(self.out) - 1, -1, -1):  # prefetches whose target row has come
            k, tgt = self.out[j]
            if tgt <= r:
                self.out_part[k // self.E if self.per_layer else 0] -= 1
                self.out.pop(j)
        keys, row_ptr = self.block.keys, self.block.row_ptr
        lo, hi = int(row_ptr[r]), int(row_ptr[r + 1])
        for i in range(lo, hi):
            self._guard(int(keys[i]), r)
        for k, _ in self.out:
            self._guard(k, r)
        plan = self.plan
        a, b = int(plan.row_ptr[r]), int(plan.row_ptr[r + 1])
        n_pf = b - a
        bypass_scratch = 0
        for op in range(hi - lo + 2 * n_pf):
            if op < hi - lo:
                kind = OP_DEMAND
                i = lo + op
                k = int(keys[i])
            else:
                kind = OP_TOUCH if op < hi - lo + n_pf else OP_FETCH
                j = a + (op - (hi - lo)) % n_pf
                k = int(plan.keys[j])
                if self.pinned[k]:
                    if kind == OP_TOUCH and counted:
                        c["prefetch_skipped_resident"] += 1
                    continue
                if (self.res1[k] != 0) != (kind == OP_TOUCH):
                    continue
            p = k // self.E if self.per_layer else 0
            base = p * self.E if self.per_layer else 0
            nu = int(self.next_req[k])
            fresh = False
            if kind == OP_DEMAND:
                if len(self.next_use):
                    nu = int(self.next_use[i])
                    self.next_req[k] = nu
            elif kind == OP_TOUCH:
                if counted:
                    c["prefetch_skipped_resident"] += 1
            else:
                if len(self.out) >= self.budget:
                    if counted:
                        c["prefetch_dropped_budget"] += 1
                    continue
                if not self._room(p, r, int(plan.target[j])):
                    if counted:
                        c["prefetch_dropped_room"] += 1
                    continue
                fresh = self.guard[k] != r
                self._guard(k, r)
            res = int(self.access(self.states[p], np.int64(k - base), np.int64(r), np.int64(nu),
                                  self.guard[base:base + self.span], np.int64(r)))
            if kind == OP_TOUCH:
                if res != HIT:
                    raise ConfigError(f"policy {self.policy.NAME!r} missed a key it holds (row {r}, key {k})")
                continue
            if res == HIT:
                if self.res1[k] == 0 or kind == OP_FETCH:
                    raise ConfigError(f"policy {self.policy.NAME!r} hit a key it does not hold (row {r}, key {k})")
                hit[i] = True
                slot[i] = self.slot_of[k]
                wait[i] = self.latest[k]
                if counted:
                    c["l1_hits"] += 1
                if self.pf_row[k] >= 0:
                    if self.pf_row[k] >= self.count_from:
                        c["prefetch_useful"] += 1
                    self.pf_row[k] = -1
                continue
            if self.res1[k] == 1:
                raise ConfigError(f"policy {self.policy.NAME!r} missed a key it holds (row {r}, key {k})")
            keep = res != BYPASS
            if kind == OP_FETCH and not keep:
                if fresh:
                    self.guard[k] = -1
                    self.gcount[p] -= 1
                if counted:
                    c["prefetch_dropped_policy"] += 1
                continue
            src = self._fetch(k, keep, counted)
            if counted:
                c["l1_fills"] += 1
            if kind == OP_DEMAND:
                ev_kind = KIND_DEMAND if keep else KIND_BYPASS
                if counted:
                    c["l1_misses"] += 1
                    if src == SRC_SSD:
                        c["demand_from_ssd"] += 1
                    if not keep:
                        c["l1_bypass"] += 1
            else:
                ev_kind = KIND_PREFETCH
                if counted:
                    c["prefetch_issued"] += 1
                self.pf_row[k] = r
                self.out.append((k, int(plan.target[j])))
                self.out_part[p] += 1
            victims: list[int] = []
            if keep:
                self.res1[k] = 1
                if res >= 0:
                    victims.append(base + res)
                    for m in range(int(self.more(self.states[p], self.victims))):
                        victims.append(base + int(self.victims[m]))
                if victims:  # the first victim's slot takes the new key; the others' are freed
                    target = int(self.slot_of[victims[0]])
                    self.free_slots.extend(int(self.slot_of[v]) for v in victims[1:])
                    self.slot_of[victims] = -1
                else:
                    target = self.free_slots.pop()
                self.slot_of[k] = target
            else:
                target = self.scratch0 + bypass_scratch
                bypass_scratch += 1
            host = self._host_for(k, src, keep)
            f = len(self.fetches)
            reuse = int(self.last_reader[host]) if src == SRC_SSD else -1
            self.last_reader[host] = f
            self.fetches.append((r, k, src, ev_kind, target, host, reuse))
            self.latest[k] = f
            if kind == OP_DEMAND:
                slot[i] = target
                wait[i] = f
            for v in victims:
                self._evict_l1(v, r, counted)
            self._release_host(k)

    def _host_for(self, k: int, src: int, keep: bool) -> int:
        """The host buffer the fetch of ``k`` decodes from (an SSD read lands there first)."""
        if self.host_is_key:
            return k
        if src == SRC_DRAM:
            return int(self.host_of[k])
        if self._holds_host(k) or keep:  # read into DRAM (inclusive) or held beside L1 (exclusive)
            if self.host_of[k] < 0:
                self.host_of[k] = self.free_host.pop()
            return int(self.host_of[k])
        return self.host_scratch + (len(self.fetches) % max(1, self.widest))

    def _result(self, hit: np.ndarray, slot: np.ndarray, wait: np.ndarray) -> Schedule:
        f = np.array(self.fetches, np.int64).reshape(-1, 7)
        ev = np.array(self.evictions, np.int64).reshape(-1, 2)
        counts = {k: v for k, v in self.cnt.items() if k != "inconsistent"}
        flat = self.experts.reshape(-1).astype(np.int64)
        layer = (np.arange(flat.size) // self.K) % self.L
        entry_slot = np.full(flat.size, -1, np.int64)
        entry_wait = np.full(flat.size, NO_FETCH, np.int64)
        pinned = np.flatnonzero(flat >= 0)
        pinned = pinned[self.pinned[layer[pinned] * self.E + flat[pinned]] != 0]
        entry_slot[pinned] = [self.preload[int(layer[i]) * self.E + int(flat[i])] for i in pinned]
        # Pinned experts are L1 hits the policy never sees (as the engine counts them).
        counts["l1_hits"] += int(np.count_nonzero(pinned // self.K >= self.count_from))
        entry_slot[self.block.src] = slot
        entry_wait[self.block.src] = wait
        return Schedule(
            num_layers=self.L, num_experts=self.E, width=self.K, row_ptr=self.block.row_ptr, keys=self.block.keys,
            hit=hit, slot=slot, wait=wait, entry=self.block.src.astype(np.int64),
            fetch_row=f[:, 0], fetch_key=f[:, 1], fetch_src=f[:, 2], fetch_kind=f[:, 3], fetch_slot=f[:, 4],
            fetch_host=f[:, 5], reuse_after=f[:, 6], evict_row=ev[:, 0], evict_key=ev[:, 1],
            entry_slot=entry_slot, entry_wait=entry_wait, counts=counts,
            preload=dict(self.preload), host_preload=self.host_preload.astype(np.int64),
            num_slots=self.num_slots, num_host=self.num_host, host_is_key=self.host_is_key,
            counted_from_row=self.count_from)


def build_schedule(trace: Trace, setup: CacheSetup, *, l2_capacity: int | None = None, l2_policy: str = "lru",
                   inclusive: bool = True, l2_prefill: bool = True, prefetch_budget: int | None = None,
                   prefetcher: str | PrefetchPlan | None = None, prefetch_params: Mapping[str, Any] | None = None,
                   seed: int = 0) -> Schedule:
    """Every decision of a run of ``trace`` (all of its steps, in order) through ``setup``'s L1 cache
    and the levels below, with ``prefetcher`` (a :mod:`sim.prefetch` name or a plan); the arguments
    mean what they mean for :func:`sim.offload.simulate_hierarchy`."""
    if setup.cold_start:
        raise ConfigError("the executor runs a trace's requests back to back: cold_start_per_request is not "
                          "supported")
    if (trace.num_layers, trace.num_experts) != (setup.layout.num_layers, setup.layout.num_experts):
        raise ConfigError(f"trace has {trace.num_layers} layers x {trace.num_experts} experts but the cache was "
                          f"set up for {setup.layout.num_layers} x {setup.layout.num_experts}")
    if l2_capacity is not None and inclusive and l2_capacity <= setup.capacity:
        raise ConfigError(f"inclusive hierarchy needs L2 capacity ({l2_capacity}) > L1 capacity ({setup.capacity})")
    plan: PrefetchPlan | None
    if prefetcher is None or (isinstance(prefetcher, str) and prefetcher == "none"):
        plan = None
    elif isinstance(prefetcher, PrefetchPlan):
        plan = prefetcher
    else:
        plan = make_plan(prefetcher, trace, prefetch_params, seed)
    planner = _Planner(trace, setup, l2_capacity, l2_policy, inclusive, l2_prefill, prefetch_budget, plan)
    for j, cap in enumerate(planner.caps):
        rows = np.diff(planner.block.row_ptr)
        if planner.per_layer:
            rows = rows.reshape(-1, planner.L)[:, j] if len(rows) else rows
        if len(rows) and int(rows.max()) > cap:
            raise ConfigError(f"cache instance {j} has {cap} policy slot(s) but a row needs {int(rows.max())} "
                              "experts at once: the capacity must be at least the widest row")
    return planner.run()


__all__ = ["NO_FETCH", "Schedule", "build_schedule"]
