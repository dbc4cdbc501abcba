"""The cache hierarchy's jitted loop: GPU memory (L1) over host DRAM (L2) over the SSD, with prefetch.

The engine (:mod:`sim.engine`) calls :func:`serve_piece` once per piece of the row source, in
layer-clock order over all layers (row ``(s, l)`` at time ``s * L + l``, shared keys ``l * E + e``);
every array of :class:`HierarchyState` carries over from piece to piece, so a trace of any length is
served in the memory of one piece. The rules:

* **Demand.** Each row's experts must be in L1 before the layer's experts run. The L1 policy
  (any of :mod:`sim.policies`, one instance shared by all layers or one per layer) is asked for
  every key through its ``access``; a miss is fetched from L2 (DRAM -> GPU) or, if L2 lacks it,
  from the SSD (SSD -> DRAM -> GPU). A policy that declines to cache a key (``BYPASS``, the static
  policy) still has it streamed to the GPU for this row; it is not kept. A policy may evict several
  keys for one miss (the watermark policy's batches): every victim leaves L1.
* **Guard.** While row ``r`` is served its own experts and every prefetched expert whose target
  row has not come yet are guarded: no policy may evict them.
* **Prefetch.** After the row's demand accesses, the plan's candidates for that row are handled in
  two passes. Those already in L1 are *touched* first (a policy access that hits, as the demand
  access of the target row will; ``prefetch_skipped_resident``), so that fetching the others cannot
  evict an expert the same prediction needs; pinned candidates are resident and skipped. The
  others are fetched in plan order unless the in-flight budget is spent, or the cache lacks room
  (a victim must exist outside the keys guarded now, and when a row of the same cache is served
  before the target row, that row must still fit beside every prefetch in flight:
  ``prefetch_dropped_room``), or the policy declines the key (``prefetch_dropped_policy``).
* **L2** is the whole model (no SSD traffic), or a cache of its own: ``lru`` or ``fifo``,
  inclusive (an expert in L1 is also in L2; while in L1 it cannot leave DRAM; LRU takes it out of
  its queue while on the GPU and puts it back as the most recent when L1 evicts it) or exclusive
  (an L2 hit moves the expert up; an L1 victim is demoted into L2, a GPU -> DRAM copy; an SSD read
  goes straight through DRAM). It starts holding the first keys in key order (``l2_prefill``) or
  empty. A streamed (bypass) expert that DRAM holds stays there as the most recent.
* **Cold restart** (per request): L1 and L2 restart as at the beginning, and prefetches in flight
  are dropped (counted as wasted).

Counters (over the counted rows, i.e. after the warm-up; :data:`COUNTERS`): ``l1_hits`` /
``l1_misses`` (demand; bypasses are misses), ``l1_bypass``, ``l1_evictions``, ``l1_fills`` (GPU
fills: demand misses, bypasses and prefetches), ``l2_hits`` / ``l2_misses`` (lookups by L1 misses
and prefetches), ``demand_from_ssd``, ``ssd_reads``, ``l2_fills`` (SSD -> DRAM insertions),
``demotions`` (GPU -> DRAM), ``l2_evictions``, ``l1_evictions_warmup`` (the one counter of the warm-up), ``prefetch_issued``, ``prefetch_useful`` (hit by a
demand access before eviction) and ``prefetch_wasted`` (evicted or dropped unused; these two count
the prefetches issued in counted rows, whenever their fate is decided),
``prefetch_skipped_resident``, ``prefetch_dropped_budget``, ``prefetch_dropped_room``,
``prefetch_dropped_policy``.

Every transfer is also written as an *event* (row, key, source, kind) for the timeline
(:mod:`sim.timing`): a row's demand transfers first, then its prefetches, in issue order.

The loop takes the policy's ``access`` (and ``more_victims``) as globals of a generated wrapper
(:mod:`sim.specialize` explains why), so each policy gets its own cached machine code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from moesim.kernels.jit import njit
from moesim.sim.row_loop import BYPASS, HIT, NEVER

COUNTERS = ("l1_hits", "l1_misses", "l1_bypass", "l1_evictions", "l1_evictions_warmup", "l1_fills", "l2_hits", "l2_misses",
            "demand_from_ssd", "ssd_reads", "l2_fills", "demotions", "l2_evictions", "prefetch_issued",
            "prefetch_useful", "prefetch_wasted", "prefetch_skipped_resident", "prefetch_dropped_budget",
            "prefetch_dropped_room", "prefetch_dropped_policy", "inconsistent")
(C_L1_HITS, C_L1_MISSES, C_L1_BYPASS, C_L1_EVICT, C_L1_EVICT_WARM, C_L1_FILLS, C_L2_HITS, C_L2_MISSES, C_DEMAND_SSD,
 C_SSD_READS, C_L2_FILLS, C_DEMOTIONS, C_L2_EVICT, C_PF_ISSUED, C_PF_USEFUL, C_PF_WASTED, C_PF_SKIP_RES,
 C_PF_DROP_BUDGET, C_PF_DROP_ROOM, C_PF_DROP_POLICY, C_INCONSISTENT) = range(len(COUNTERS))

# Where a transfer comes from, and why it happens.
SRC_L1, SRC_DRAM, SRC_SSD = 0, 1, 2
KIND_DEMAND, KIND_PREFETCH, KIND_BYPASS = 0, 1, 2
L2_POLICIES = {"lru": 0, "fifo": 1}
L2_LRU, L2_FIFO = 0, 1
# The in-flight budget used for "no limit".
UNLIMITED = np.iinfo(np.int64).max
# The operations of a row, in order.
OP_DEMAND, OP_TOUCH, OP_FETCH = 0, 1, 2
# misc[] slots of the state
M_N_OUT, M_L2_SIZE, M_L2_CAP = range(3)


@dataclass(eq=False)
class HierarchyState:
    """Everything the loop carries from one piece to the next (see :func:`new_state`)."""

    res1: np.ndarray  # uint8 [L*E]: in L1 (pinned experts excluded: they never leave)
    res2: np.ndarray  # uint8 [L*E]: in L2
    prv: np.ndarray  # int64 [L*E + 1]: L2's queue (a doubly linked list, sentinel last)
    nxt: np.ndarray
    guard: np.ndarray  # int64 [L*E]: the row time a key is guarded in
    pf_row: np.ndarray  # int64 [L*E]: issue row of a key's unused prefetch (-1: none)
    next_req: np.ndarray  # int64 [L*E]: next request time after the latest one (OPT's prefetches)
    out_keys: np.ndarray  # int64 [L*E]: prefetches in flight and their target rows
    out_tgt: np.ndarray
    out_part: np.ndarray  # int64 [instances]: prefetches in flight per cache instance
    gcount: np.ndarray  # int64 [instances]: keys guarded in row gstamp[p] in instance p
    gstamp: np.ndarray
    victims: np.ndarray  # int64 [L*E]: scratch for a batch of victims
    misc: np.ndarray  # int64 [3]: in-flight count, L2 size, L2 capacity
    cnt: np.ndarray  # int64 [len(COUNTERS)]


def new_state(num_keys: int, num_instances: int, l2_capacity: int | None, l2_prefill: bool,
              l2_policy: int) -> HierarchyState:
    st = HierarchyState(
        res1=np.zeros(num_keys, np.uint8), res2=np.zeros(num_keys, np.uint8),
        prv=np.empty(num_keys + 1, np.int64), nxt=np.empty(num_keys + 1, np.int64),
        guard=np.full(num_keys, -1, np.int64), pf_row=np.full(num_keys, -1, np.int64),
        next_req=np.full(num_keys, NEVER, np.int64), out_keys=np.zeros(num_keys, np.int64),
        out_tgt=np.zeros(num_keys, np.int64), out_part=np.zeros(num_instances, np.int64),
        gcount=np.zeros(num_instances, np.int64), gstamp=np.full(num_instances, -1, np.int64),
        victims=np.zeros(num_keys, np.int64), misc=np.zeros(3, np.int64), cnt=np.zeros(len(COUNTERS), np.int64))
    restart(st, l2_capacity, l2_prefill, l2_policy, counted=False, count_from=0)
    return st


def restart(st: HierarchyState, l2_capacity: int | None, l2_prefill: bool, l2_policy: int, *, counted: bool,
            count_from: int) -> None:
    """Empty L1, restart L2 as at the beginning, drop the prefetches in flight (they are wasted)."""
    if counted:
        st.cnt[C_PF_WASTED] += int(np.count_nonzero(st.pf_row >= count_from))
    st.res1[:] = 0
    st.res2[:] = 0
    st.pf_row[:] = -1
    st.out_part[:] = 0
    st.misc[M_N_OUT] = 0
    n = len(st.res1)
    st.prv[n] = n
    st.nxt[n] = n
    st.misc[M_L2_SIZE] = 0
    st.misc[M_L2_CAP] = 0 if l2_capacity is None else int(l2_capacity)
    if l2_capacity is not None and l2_prefill:
        _l2_prefill(st.prv, st.nxt, st.res2, st.misc, min(int(l2_capacity), n))


@njit
def _l2_prefill(prv, nxt, res2, misc, n):
    for k in range(n):
        _l2_push_back(prv, nxt, k)
        res2[k] = 1
    misc[M_L2_SIZE] = n


@njit(inline="always")
def _l2_unlink(prv, nxt, k):
    nxt[prv[k]] = nxt[k]
    prv[nxt[k]] = prv[k]


@njit(inline="always")
def _l2_push_back(prv, nxt, k):
    s = prv.shape[0] - 1
    last = prv[s]
    nxt[last] = k
    prv[k] = last
    nxt[k] = s
    prv[s] = k


@njit
def _l2_evict(prv, nxt, res1, res2, misc, l2_policy, inclusive, cnt, counted):
    """Drop one expert from L2 (to the SSD: weights are read-only, nothing is written)."""
    s = prv.shape[0] - 1
    v = nxt[s]
    if inclusive and l2_policy == L2_FIFO:
        while res1[v]:  # fifo keeps L1-resident experts in place; they cannot leave DRAM
            v = nxt[v]
    _l2_unlink(prv, nxt, v)
    res2[v] = 0
    misc[M_L2_SIZE] -= 1
    if counted:
        cnt[C_L2_EVICT] += 1


@njit
def _fetch(k, keep, prv, nxt, res1, res2, misc, l2_on, l2_policy, inclusive, cnt, counted):
    """Bring ``k`` to the GPU from the closest level that has it; return where it came from.

    ``keep``: L1 keeps it (a demand miss or a prefetch); otherwise it is streamed through (bypass)
    and DRAM's copy, if any, stays where it is, touched as the most recent.
    """
    if not l2_on:
        if counted:
            cnt[C_L2_HITS] += 1
        return SRC_DRAM
    if res2[k]:
        if counted:
            cnt[C_L2_HITS] += 1
        if not keep:
            if l2_policy == L2_LRU:
                _l2_unlink(prv, nxt, k)
                _l2_push_back(prv, nxt, k)
        elif inclusive:
            if l2_policy == L2_LRU:
                _l2_unlink(prv, nxt, k)  # lru: out of the queue while on the GPU
        else:
            _l2_unlink(prv, nxt, k)  # exclusive: moves up
            res2[k] = 0
            misc[M_L2_SIZE] -= 1
        return SRC_DRAM
    if counted:
        cnt[C_L2_MISSES] += 1
        cnt[C_SSD_READS] += 1
    if inclusive:
        if misc[M_L2_SIZE] >= misc[M_L2_CAP]:
            _l2_evict(prv, nxt, res1, res2, misc, l2_policy, inclusive, cnt, counted)
        res2[k] = 1
        misc[M_L2_SIZE] += 1
        if l2_policy == L2_FIFO or not keep:
            _l2_push_back(prv, nxt, k)
        if counted:
            cnt[C_L2_FILLS] += 1
    return SRC_SSD


@njit
def _evict_l1(v, pf_row, count_from, prv, nxt, res1, res2, misc, l2_on, l2_policy, inclusive, cnt, counted):
    res1[v] = 0
    if counted:
        cnt[C_L1_EVICT] += 1
    else:
        cnt[C_L1_EVICT_WARM] += 1
    if pf_row[v] >= 0:
        if pf_row[v] >= count_from:  # a prefetch counts where it was issued
            cnt[C_PF_WASTED] += 1
        pf_row[v] = -1
    if not l2_on:
        return
    if inclusive:
        if l2_policy == L2_LRU:
            _l2_push_back(prv, nxt, v)  # back into DRAM's recency queue as the most recent
        return
    if misc[M_L2_SIZE] >= misc[M_L2_CAP]:
        _l2_evict(prv, nxt, res1, res2, misc, l2_policy, inclusive, cnt, counted)
    _l2_push_back(prv, nxt, v)
    res2[v] = 1
    misc[M_L2_SIZE] += 1
    if counted:
        cnt[C_DEMOTIONS] += 1


@njit(inline="always")
def _guard(k, r, guard, gcount, gstamp, per_layer, num_experts):
    """Guard key ``k`` during row ``r`` and count it in its cache's guarded keys."""
    if guard[k] == r:
        return
    guard[k] = r
    p = k // num_experts if per_layer else 0
    if gstamp[p] != r:
        gstamp[p] = r
        gcount[p] = 0
    gcount[p] += 1


@njit(inline="always")
def _room(p, r, target, gcount, gstamp, out_p, cap, width, per_layer, num_layers):
    """Whether cache ``p`` can take one more prefetch issued at row ``r`` for row ``target``.

    Now: a victim must exist outside the keys guarded in this row. Later: if a row of cache ``p``
    is served before ``target`` (the prefetch stays guarded there), that row must still fit
    beside every prefetch in flight in ``p``.
    """
    guarded = gcount[p] if gstamp[p] == r else 0
    if guarded + 1 > cap:
        return False
    if per_layer:
        d = (p - r % num_layers) % num_layers
        next_row = r + d if d > 0 else r + num_layers
    else:
        next_row = r + 1
    return target <= next_row or out_p + 1 + width <= cap


@njit(inline="always")
def serve_piece(access, more_victims, states, cfg, caps, pinned, rows, plan, hs, out):
    """Serve the rows of one piece (one row per (step, layer), empty rows included; the first at time
    ``row0``); write 1/0 per access into ``hit_out`` and the transfers into ``ev_*`` (rows relative
    to the piece). Returns the number of events.

    Arguments come in tuples (:func:`pack`): a call with more than 30 arguments compiles, on Python
    3.11, to a star-args call, which numba cannot inline.
    """
    per_layer, num_layers, num_experts, width, row0, l2_on, l2_policy, inclusive, budget, counted, count_from = cfg
    keys, row_ptr, next_use = rows
    pf_ptr, pf_keys, pf_target = plan
    res1, res2, prv, nxt, guard, pf_row, next_req, out_keys, out_tgt, out_part, gcount, gstamp, victims, misc, cnt = hs
    hit_out, ev_row, ev_key, ev_src, ev_kind = out
    n_keys = num_layers * num_experts
    span = num_experts if per_layer else n_keys
    has_next = next_use.shape[0] > 0
    n_out = misc[M_N_OUT]
    n_ev = 0
    for rl in range(row_ptr.shape[0] - 1):
        r = row0 + rl
        j = 0
        while j < n_out:  # prefetches whose target row has come are no longer protected
            if out_tgt[j] <= r:
                p = out_keys[j] // num_experts if per_layer else 0
                out_part[p] -= 1
                n_out -= 1
                out_keys[j] = out_keys[n_out]
                out_tgt[j] = out_tgt[n_out]
            else:
                j += 1
        lo = row_ptr[rl]
        hi = row_ptr[rl + 1]
        for i in range(lo, hi):
            _guard(keys[i], r, guard, gcount, gstamp, per_layer, num_experts)
        for j in range(n_out):
            _guard(out_keys[j], r, guard, gcount, gstamp, per_layer, num_experts)
        # One pass over the row's operations, so that the policy's access is compiled in at one call
        # site (three sites tripled the loop's compile time): the demand accesses, then the
        # prefetch candidates already resident (touched: a policy hit, as the demand access of the
        # target row will be, so that fetching the others cannot evict them), then the others.
        n_pf = pf_ptr[rl + 1] - pf_ptr[rl]
        for op in range(hi - lo + 2 * n_pf):
            if op < hi - lo:
                kind = OP_DEMAND
                i = lo + op
                k = np.int64(keys[i])
            else:
                kind = OP_TOUCH if op < hi - lo + n_pf else OP_FETCH
                j = pf_ptr[rl] + (op - (hi - lo)) % n_pf
                k = np.int64(pf_keys[j])
                if pinned[k]:
                    if kind == OP_TOUCH and counted:
                        cnt[C_PF_SKIP_RES] += 1
                    continue
                if (res1[k] != 0) != (kind == OP_TOUCH):
                    continue
            p = k // num_experts if per_layer else 0
            base = p * num_experts if per_layer else 0
            nu = next_req[k]
            fresh = False
            if kind == OP_DEMAND:
                if has_next:
                    nu = next_use[i]
                    next_req[k] = nu
            elif kind == OP_TOUCH:
                if counted:
                    cnt[C_PF_SKIP_RES] += 1
            else:
                if n_out >= budget:
                    if counted:
                        cnt[C_PF_DROP_BUDGET] += 1
                    continue
                if not _room(p, r, pf_target[j], gcount, gstamp, out_part[p], caps[p], width, per_layer,
                             num_layers):
                    if counted:
                        cnt[C_PF_DROP_ROOM] += 1
                    continue
                fresh = guard[k] != r
                _guard(k, r, guard, gcount, gstamp, per_layer, num_experts)
            res = access(states[p], k - base, r, nu, guard[base:base + span], r)
            if kind == OP_TOUCH:
                if res != HIT:
                    cnt[C_INCONSISTENT] += 1
                continue
            if res == HIT:
                if res1[k] == 0 or kind == OP_FETCH:
                    cnt[C_INCONSISTENT] += 1
                    continue
                hit_out[i] = 1
                if counted:
                    cnt[C_L1_HITS] += 1
                if pf_row[k] >= 0:
                    if pf_row[k] >= count_from:
                        cnt[C_PF_USEFUL] += 1
                    pf_row[k] = -1
                continue
            if res1[k] == 1:
                cnt[C_INCONSISTENT] += 1
            keep = res != BYPASS
            if kind == OP_FETCH and not keep:
                if fresh:  # not guarded after all: it is neither in flight nor in this row
                    guard[k] = -1
                    gcount[p] -= 1
                if counted:
                    cnt[C_PF_DROP_POLICY] += 1
                continue
            s = _fetch(k, keep, prv, nxt, res1, res2, misc, l2_on, l2_policy, inclusive, cnt, counted)
            ev_row[n_ev] = rl
            ev_key[n_ev] = k
            ev_src[n_ev] = s
            n_ev += 1
            if counted:
                cnt[C_L1_FILLS] += 1
            if kind == OP_DEMAND:
                hit_out[i] = 0
                ev_kind[n_ev - 1] = KIND_DEMAND if keep else KIND_BYPASS
                if counted:
                    cnt[C_L1_MISSES] += 1
                    if s == SRC_SSD:
                        cnt[C_DEMAND_SSD] += 1
                    if not keep:
                        cnt[C_L1_BYPASS] += 1
                if not keep:
                    continue
            else:
                ev_kind[n_ev - 1] = KIND_PREFETCH
                if counted:
                    cnt[C_PF_ISSUED] += 1
                pf_row[k] = r
                out_keys[n_out] = k
                out_tgt[n_out] = pf_target[j]
                n_out += 1
                out_part[p] += 1
            res1[k] = 1
            if res >= 0:
                _evict_l1(base + res, pf_row, count_from, prv, nxt, res1, res2, misc, l2_on, l2_policy, inclusive,
                          cnt, counted)
                for m in range(more_victims(states[p], victims)):
                    _evict_l1(base + victims[m], pf_row, count_from, prv, nxt, res1, res2, misc, l2_on,
                              l2_policy, inclusive, cnt, counted)
    misc[M_N_OUT] = n_out
    return n_ev


# The parameters of serve_piece after (access, more_victims): the generated wrapper's.
SERVE_ARGS = ["states", "cfg", "caps", "pinned", "rows", "plan", "hs", "out"]


def pack(st: HierarchyState) -> tuple[np.ndarray, ...]:
    """The state's arrays in :func:`serve_piece`'s order."""
    return (st.res1, st.res2, st.prv, st.nxt, st.guard, st.pf_row, st.next_req, st.out_keys, st.out_tgt,
            st.out_part, st.gcount, st.gstamp, st.victims, st.misc, st.cnt)


def jitted_server(policy: Any) -> Any:
    """The cached ``serve_piece`` specialised for ``policy`` (a policy module)."""
    from moesim.sim.specialize import specialize

    return specialize("moesim.sim.hierarchy", "serve_piece", policy, SERVE_ARGS)


__all__ = ["COUNTERS", "KIND_BYPASS", "KIND_DEMAND", "KIND_PREFETCH", "L2_POLICIES", "SRC_DRAM", "SRC_L1",
           "SRC_SSD", "UNLIMITED", "HierarchyState", "jitted_server", "new_state", "pack", "restart", "serve_piece"]
