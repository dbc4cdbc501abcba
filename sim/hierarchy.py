"""Two cache levels above the SSD: GPU memory (L1) and host DRAM (L2), with prefetching.

Every (step, MoE layer) of a trace is a *row* ``r = t * L + l`` of shared keys ``l * E + e``. Each
row's experts must be in L1 before the layer's experts run. A demand access that misses L1 is
fetched from L2 (DRAM -> GPU) or, if L2 lacks it too, from the SSD (SSD -> DRAM -> GPU). After the
row's demand accesses, the prefetch plan's candidates for that row are issued the same way.

L1 (GPU): any eviction policy of :mod:`sim.policies` (``access`` inserts on every miss), one cache
over all layers (``organisation="shared"``) or one per layer (``"per_layer"``, capacity per layer).
While row ``r`` is served, its own experts and every prefetched expert whose target row has not
come yet are *guarded*: no policy may evict them.

Prefetch candidates of row ``r`` are handled in two passes. Those already in L1 are *touched*
first (a policy access that hits, as the demand access of the target row will; counted as
``prefetch_skipped_resident``), so that fetching the other candidates cannot evict an expert the
same prediction needs. The others are then fetched in plan order unless the in-flight budget is
spent or the cache lacks room: a victim must exist outside the keys guarded now, and when a row of
the same cache is served before the target row (the prefetch stays guarded through it), that row
must still fit beside every prefetch in flight (``prefetch_dropped_room`` otherwise). A per-layer
cache is served only at its own layer, so a prefetch for the next layer needs only the first
condition: a cache of ``k`` experts per layer can take ``k`` prefetches for its next row.

L2 (DRAM): either the whole model (``HierarchyConfig.l2 = None``, the common case: every L1 miss
is a DRAM hit) or a cache of its own with a small set of policies that support removal:

* ``lru``: a recency queue. *Inclusive*: every expert in L1 is also in L2; while an expert sits
  in L1 it is out of L2's queue (it cannot be evicted from DRAM, which keeps inclusion), and it
  re-enters at the back when L1 evicts it. An L2 miss reads the SSD and inserts into L2.
  *Exclusive*: L1 and L2 never hold the same expert; an L2 hit *moves* the expert up (removed
  from L2), an L1 victim is *demoted* into L2 (a GPU -> DRAM copy, counted), and an L2 miss reads
  the SSD straight through DRAM without keeping it there.
* ``fifo``: the same, but the queue is kept in insertion order (inclusive: an expert stays in
  place while in L1 and eviction skips L1-resident ones).

L2 starts holding the first ``l2`` keys in key order (``l2_prefill``; the model is loaded into
DRAM before decoding starts), L1 starts empty.

Counters (``HierarchyResult.counts``, over the counted rows, i.e. after the warm-up):
``l1_hits``/``l1_misses`` (demand), ``l2_hits``/``l2_misses`` (lookups by L1 demand misses and by
prefetches), ``demand_from_ssd``, ``ssd_reads``, ``l1_fills`` (promotions into L1, demand and
prefetch), ``l2_fills`` (SSD -> DRAM insertions), ``demotions`` (L1 -> L2, exclusive only),
``l1_evictions``, ``l2_evictions``, ``prefetch_issued``, ``prefetch_useful`` (hit by a demand
access before eviction), ``prefetch_wasted`` (evicted unused; these two are counted for the
prefetches issued in the counted rows, whenever their fate is decided), ``prefetch_skipped_resident``,
``prefetch_dropped_budget``, ``prefetch_dropped_room``. Bytes per link: SSD -> DRAM =
``ssd_reads``, DRAM -> GPU = ``l1_fills``, GPU -> DRAM = ``demotions``, each times the bytes per
expert.

The loop is jitted (one cached specialisation per L1 policy, :mod:`sim.specialize`; LRU uses
:func:`lru_access`, which keeps a guarded key's place in the recency order even when the key is
not accessed in the row); :mod:`sim.hierarchy_ref` is its plain-Python twin.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np
from moesim.kernels.jit import njit
from moesim.sim.errors import ConfigError
from moesim.sim.kernel import HIT, MISS
from moesim.sim.policies import get_policy, needs_next_use, resolve_params
from moesim.sim.policies.lru import _compact as _lru_compact
from moesim.sim.prefetch import PrefetchPlan, empty_plan
from moesim.sim.rows import next_use_times
from moesim.traces.trace import Trace
from numba.typed import List

ORGANISATIONS = ("shared", "per_layer")
L2_POLICIES = {"lru": 0, "fifo": 1}
# The in-flight budget used for "no limit".
UNLIMITED = np.iinfo(np.int64).max

COUNTERS = ("l1_hits", "l1_misses", "l2_hits", "l2_misses", "demand_from_ssd", "ssd_reads", "l1_fills",
            "l2_fills", "demotions", "l1_evictions", "l2_evictions", "prefetch_issued", "prefetch_useful",
            "prefetch_wasted", "prefetch_skipped_resident", "prefetch_dropped_budget",
            "prefetch_dropped_room", "inconsistent")
(C_L1_HITS, C_L1_MISSES, C_L2_HITS, C_L2_MISSES, C_DEMAND_SSD, C_SSD_READS, C_L1_FILLS, C_L2_FILLS,
 C_DEMOTIONS, C_L1_EVICT, C_L2_EVICT, C_PF_ISSUED, C_PF_USEFUL, C_PF_WASTED, C_PF_SKIP_RES, C_PF_DROP_BUDGET,
 C_PF_DROP_ROOM, C_INCONSISTENT) = range(len(COUNTERS))

SRC_L1, SRC_DRAM, SRC_SSD = 0, 1, 2
KIND_DEMAND, KIND_PREFETCH = 0, 1


@dataclass(frozen=True)
class Level:
    """Size, organisation and policy of one cache level.

    experts: capacity in experts (per layer when ``organisation == "per_layer"``).
    gib: capacity in GiB instead (2**30 bytes; converted through the bytes per expert of the
        weight format, rounded down); give exactly one of ``experts`` and ``gib``.
    policy: eviction policy: any :mod:`sim.policies` name for L1; ``"lru"`` or ``"fifo"`` for L2.
    params: the policy's knobs (L1 only).
    organisation: ``"shared"`` (one cache, keys ``l * E + e``) or ``"per_layer"`` (one cache of
        ``experts`` per layer; L1 only).
    """

    experts: int | None = None
    gib: float | None = None
    policy: str = "lru"
    params: Mapping[str, Any] = field(default_factory=dict)
    organisation: str = "shared"

    def __post_init__(self) -> None:
        if (self.experts is None) == (self.gib is None):
            raise ConfigError(f"cache level: give exactly one of 'experts' and 'gib', got experts={self.experts!r}, "
                              f"gib={self.gib!r}")
        if self.experts is not None and (isinstance(self.experts, bool) or int(self.experts) != self.experts
                                         or self.experts < 1):
            raise ConfigError(f"cache level: 'experts' must be a positive integer, got {self.experts!r}")
        if self.gib is not None and not self.gib > 0:
            raise ConfigError(f"cache level: 'gib' must be positive, got {self.gib!r}")
        if self.organisation not in ORGANISATIONS:
            raise ConfigError(f"cache level: 'organisation' must be one of {ORGANISATIONS}, got "
                              f"{self.organisation!r}")

    def capacity(self, bytes_per_expert: int | None) -> int:
        """Capacity in experts (per layer for a per-layer level)."""
        if self.experts is not None:
            return int(self.experts)
        if not bytes_per_expert:
            raise ConfigError("cache level given in GiB needs the bytes per expert (a weight format)")
        return int(float(self.gib) * (1 << 30) // int(bytes_per_expert))  # type: ignore[arg-type]


@dataclass(frozen=True)
class HierarchyConfig:
    """The two cache levels and how they relate.

    l1: the GPU cache (:class:`Level`).
    l2: the DRAM cache, or ``None`` when DRAM holds the whole model (no SSD traffic at all).
    inclusive: L2 keeps a copy of everything in L1 (``True``) or never does (``False``,
        exclusive: promotions move, L1 victims are demoted into L2).
    prefetch_budget: most prefetched experts in flight at once (issued, target row not reached
        yet); ``None`` = no limit beyond the room the caches have.
    l2_prefill: L2 starts holding the first keys in key order (the model is in DRAM before
        decoding); ``False`` starts it empty.
    """

    l1: Level
    l2: Level | None = None
    inclusive: bool = True
    prefetch_budget: int | None = None
    l2_prefill: bool = True

    def __post_init__(self) -> None:
        if self.l2 is not None:
            if self.l2.policy not in L2_POLICIES:
                raise ConfigError(f"L2 policy must be one of {sorted(L2_POLICIES)}, got {self.l2.policy!r}")
            if self.l2.organisation != "shared":
                raise ConfigError("L2 (DRAM) supports only organisation='shared'")
            if self.l2.params:
                raise ConfigError(f"L2 policies take no params, got {dict(self.l2.params)}")
        if self.prefetch_budget is not None and (isinstance(self.prefetch_budget, bool)
                                                 or int(self.prefetch_budget) != self.prefetch_budget
                                                 or self.prefetch_budget < 0):
            raise ConfigError(f"prefetch_budget must be a non-negative integer or None, got {self.prefetch_budget!r}")


@dataclass(frozen=True)
class DemandRows:
    """The demand accesses of a trace as CSR rows in layer-clock order (pads dropped, empty rows kept)."""

    keys: np.ndarray  # int32 shared keys l * E + e
    row_ptr: np.ndarray  # int64 [T * L + 1]
    num_layers: int
    num_experts: int
    width: int  # the widest row

    @property
    def num_rows(self) -> int:
        return int(self.row_ptr.shape[0]) - 1

    @property
    def num_keys(self) -> int:
        return self.num_layers * self.num_experts


def demand_rows(trace: Trace) -> DemandRows:
    """The rows of ``trace``: row ``t * L + l`` holds layer ``l``'s experts of step ``t`` in recorded order."""
    e = np.asarray(trace.experts)
    T, L, _ = e.shape
    E = trace.num_experts
    mask = e >= 0
    base = (np.arange(L, dtype=np.int64) * E)[None, :, None]
    keys = (e.astype(np.int64) + base)[mask].astype(np.int32)
    counts = mask.sum(axis=2).reshape(-1)
    row_ptr = np.zeros(T * L + 1, np.int64)
    np.cumsum(counts, out=row_ptr[1:])
    width = int(counts.max()) if counts.size else 0
    return DemandRows(keys, row_ptr, L, E, width)


def prefetch_next_use(rows: DemandRows, plan: PrefetchPlan) -> np.ndarray:
    """For each plan entry, the first row after its issuing row that requests its key (``NEVER`` if none)."""
    from moesim.sim.kernel import NEVER

    n = len(plan)
    out = np.full(n, NEVER, np.int64)
    if n == 0 or len(rows.keys) == 0:
        return out
    R = rows.num_rows
    acc_row = np.repeat(np.arange(R, dtype=np.int64), np.diff(rows.row_ptr))
    code = rows.keys.astype(np.int64) * (R + 1) + acc_row
    code.sort()
    issue = np.repeat(np.arange(R, dtype=np.int64), np.diff(plan.row_ptr))
    q = plan.keys.astype(np.int64) * (R + 1) + issue + 1
    idx = np.searchsorted(code, q, side="left")
    ok = idx < len(code)
    found = np.zeros(n, bool)
    found[ok] = code[idx[ok]] // (R + 1) == plan.keys[ok]
    out[found] = code[idx[found]] % (R + 1)
    return out


# ---- the jitted loop ------------------------------------------------------------------------

@njit
def _l2_unlink(prv, nxt, k):
    nxt[prv[k]] = nxt[k]
    prv[nxt[k]] = prv[k]


@njit
def _l2_push_back(prv, nxt, k):
    s = prv.shape[0] - 1
    last = prv[s]
    nxt[last] = k
    prv[k] = last
    nxt[k] = s
    prv[s] = k


@njit
def _l2_evict(prv, nxt, res1, res2, l2, l2_policy, inclusive, cnt, counted):
    """Drop one expert from L2 (to the SSD: weights are read-only, nothing is written)."""
    s = prv.shape[0] - 1
    v = nxt[s]
    if inclusive and l2_policy == 1:
        while res1[v]:  # fifo keeps L1-resident experts in place; they cannot leave DRAM
            v = nxt[v]
    _l2_unlink(prv, nxt, v)
    res2[v] = 0
    l2[0] -= 1
    if counted:
        cnt[C_L2_EVICT] += 1


@njit
def _fetch(k, prv, nxt, res1, res2, l2, l2_on, l2_policy, inclusive, cnt, counted):
    """Bring ``k`` towards L1 from the closest level that has it; return its source level."""
    if not l2_on:
        if counted:
            cnt[C_L2_HITS] += 1
        return SRC_DRAM
    if res2[k]:
        if counted:
            cnt[C_L2_HITS] += 1
        if inclusive:
            if l2_policy == 0:
                _l2_unlink(prv, nxt, k)  # lru: out of the queue while on the GPU
        else:
            _l2_unlink(prv, nxt, k)  # exclusive: moves up
            res2[k] = 0
            l2[0] -= 1
        return SRC_DRAM
    if counted:
        cnt[C_L2_MISSES] += 1
        cnt[C_SSD_READS] += 1
    if inclusive:
        if l2[0] >= l2[1]:
            _l2_evict(prv, nxt, res1, res2, l2, l2_policy, inclusive, cnt, counted)
        res2[k] = 1
        l2[0] += 1
        if l2_policy == 1:
            _l2_push_back(prv, nxt, k)
        if counted:
            cnt[C_L2_FILLS] += 1
    return SRC_SSD


@njit
def _evict_l1(v, pf_ev, ev_row, count_from, prv, nxt, res1, res2, l2, l2_on, l2_policy, inclusive, cnt,
              counted):
    res1[v] = 0
    if counted:
        cnt[C_L1_EVICT] += 1
    if pf_ev[v] >= 0:
        if ev_row[pf_ev[v]] >= count_from:  # a prefetch counts where it was issued
            cnt[C_PF_WASTED] += 1
        pf_ev[v] = -1
    if not l2_on:
        return
    if inclusive:
        if l2_policy == 0:
            _l2_push_back(prv, nxt, v)  # back into DRAM's recency queue as the most recent
        return
    if l2[0] >= l2[1]:
        _l2_evict(prv, nxt, res1, res2, l2, l2_policy, inclusive, cnt, counted)
    _l2_push_back(prv, nxt, v)
    res2[v] = 1
    l2[0] += 1
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
def hierarchy_loop(access, states, per_layer, num_layers, num_experts, cap_part, width, keys, row_ptr,
                   next_use, pf_ptr, pf_keys, pf_target, pf_next, l2_on, l2_policy, l2_cap, l2_prefill,
                   inclusive, budget, count_from, hit_out, src_out, ev_row, ev_key, ev_src, ev_kind,
                   ev_useful, cnt):
    """Serve every row; return the number of transfer events written."""
    n_keys = num_layers * num_experts
    span = num_experts if per_layer else n_keys
    n_parts = num_layers if per_layer else 1
    res1 = np.zeros(n_keys, np.uint8)
    res2 = np.zeros(n_keys, np.uint8)
    pf_ev = np.full(n_keys, -1, np.int64)
    guard = np.full(n_keys, -1, np.int64)
    out_keys = np.empty(n_keys, np.int64)
    out_tgt = np.empty(n_keys, np.int64)
    out_part = np.zeros(n_parts, np.int64)
    # gcount[p]: keys of cache p guarded in row gstamp[p] (a victim exists while gcount[p] < capacity).
    gcount = np.zeros(n_parts, np.int64)
    gstamp = np.full(n_parts, -1, np.int64)
    n_out = 0
    prv = np.empty(n_keys + 1, np.int64)
    nxt = np.empty(n_keys + 1, np.int64)
    prv[n_keys] = n_keys
    nxt[n_keys] = n_keys
    l2 = np.array([0, l2_cap], np.int64)
    if l2_on and l2_prefill:
        for k in range(min(l2_cap, n_keys)):
            _l2_push_back(prv, nxt, k)
            res2[k] = 1
            l2[0] += 1
    n_ev = 0
    R = row_ptr.shape[0] - 1
    for r in range(R):
        counted = r >= count_from
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
        lo = row_ptr[r]
        hi = row_ptr[r + 1]
        for i in range(lo, hi):
            _guard(keys[i], r, guard, gcount, gstamp, per_layer, num_experts)
        for j in range(n_out):
            _guard(out_keys[j], r, guard, gcount, gstamp, per_layer, num_experts)
        # demand accesses
        for i in range(lo, hi):
            k = np.int64(keys[i])
            p = k // num_experts if per_layer else 0
            base = p * num_experts if per_layer else 0
            res = access(states[p], k - base, r, next_use[i], guard[base:base + span], r)
            if res == HIT:
                if res1[k] == 0:
                    cnt[C_INCONSISTENT] += 1
                hit_out[i] = 1
                src_out[i] = SRC_L1
                if counted:
                    cnt[C_L1_HITS] += 1
                if pf_ev[k] >= 0:
                    ev_useful[pf_ev[k]] = 1
                    if ev_row[pf_ev[k]] >= count_from:
                        cnt[C_PF_USEFUL] += 1
                    pf_ev[k] = -1
                continue
            if res1[k] == 1:
                cnt[C_INCONSISTENT] += 1
            hit_out[i] = 0
            res1[k] = 1
            s = _fetch(k, prv, nxt, res1, res2, l2, l2_on, l2_policy, inclusive, cnt, counted)
            src_out[i] = s
            if counted:
                cnt[C_L1_MISSES] += 1
                cnt[C_L1_FILLS] += 1
                if s == SRC_SSD:
                    cnt[C_DEMAND_SSD] += 1
            ev_row[n_ev] = r
            ev_key[n_ev] = k
            ev_src[n_ev] = s
            ev_kind[n_ev] = KIND_DEMAND
            n_ev += 1
            if res >= 0:
                _evict_l1(base + res, pf_ev, ev_row, count_from, prv, nxt, res1, res2, l2, l2_on, l2_policy,
                          inclusive, cnt, counted)
        # prefetches issued at this row. First the candidates already resident are touched (a
        # policy hit, as the demand access will be), so that fetching the others cannot evict them.
        for j in range(pf_ptr[r], pf_ptr[r + 1]):
            k = np.int64(pf_keys[j])
            if res1[k]:
                if counted:
                    cnt[C_PF_SKIP_RES] += 1
                p = k // num_experts if per_layer else 0
                base = p * num_experts if per_layer else 0
                if access(states[p], k - base, r, pf_next[j], guard[base:base + span], r) != HIT:
                    cnt[C_INCONSISTENT] += 1
        for j in range(pf_ptr[r], pf_ptr[r + 1]):
            k = np.int64(pf_keys[j])
            if res1[k]:
                continue
            if n_out >= budget:
                if counted:
                    cnt[C_PF_DROP_BUDGET] += 1
                continue
            p = k // num_experts if per_layer else 0
            if not _room(p, r, pf_target[j], gcount, gstamp, out_part[p], cap_part, width, per_layer, num_layers):
                if counted:
                    cnt[C_PF_DROP_ROOM] += 1
                continue
            base = p * num_experts if per_layer else 0
            _guard(k, r, guard, gcount, gstamp, per_layer, num_experts)
            res = access(states[p], k - base, r, pf_next[j], guard[base:base + span], r)
            if res == HIT:
                cnt[C_INCONSISTENT] += 1
                continue
            res1[k] = 1
            s = _fetch(k, prv, nxt, res1, res2, l2, l2_on, l2_policy, inclusive, cnt, counted)
            if counted:
                cnt[C_PF_ISSUED] += 1
                cnt[C_L1_FILLS] += 1
            ev_row[n_ev] = r
            ev_key[n_ev] = k
            ev_src[n_ev] = s
            ev_kind[n_ev] = KIND_PREFETCH
            pf_ev[k] = n_ev
            n_ev += 1
            out_keys[n_out] = k
            out_tgt[n_out] = pf_target[j]
            n_out += 1
            out_part[p] += 1
            if res >= 0:
                _evict_l1(base + res, pf_ev, ev_row, count_from, prv, nxt, res1, res2, l2, l2_on, l2_policy,
                          inclusive, cnt, counted)
    return n_ev


_LOOP_ARGS = ["states", "per_layer", "num_layers", "num_experts", "cap_part", "width", "keys", "row_ptr",
              "next_use", "pf_ptr", "pf_keys", "pf_target", "pf_next", "l2_on", "l2_policy", "l2_cap",
              "l2_prefill", "inclusive", "budget", "count_from", "hit_out", "src_out", "ev_row", "ev_key",
              "ev_src", "ev_kind", "ev_useful", "cnt"]


@njit
def lru_access(state, key, now, next_use, guard, stamp):
    """:func:`sim.policies.lru.access` (same state) for the hierarchy, where a guarded key need not
    be accessed again in the row: a prefetched expert stays guarded, untouched, until its target
    row. ``lru.access`` drops a guarded entry met while looking for a victim (the single-level
    replay re-accesses every guarded key later in the row), which here would leave a resident key
    without an entry, never to be evicted. This version moves the guarded entries it passes to
    just before the new head, in their order, so recency is kept exactly.
    """
    ring, last, resident, st = state
    mask = ring.shape[0] - 1
    if st[1] - st[0] >= ring.shape[0]:
        _lru_compact(ring, last, st)
    p = st[1]
    last[key] = p
    ring[p & mask] = key
    st[1] = p + 1
    if resident[key]:
        return HIT
    resident[key] = 1
    st[2] += 1
    if st[2] <= st[3]:
        return MISS
    q = st[0]
    while True:
        if q >= st[1]:
            raise ValueError("lru: every resident is guarded (the hierarchy's room check failed)")
        v = ring[q & mask]
        if last[v] == q and guard[v] != stamp:
            break
        q += 1
    # Slide the guarded current entries in [head, q) up against q (never past an unread entry).
    w = q
    for s in range(q - 1, st[0] - 1, -1):
        k = ring[s & mask]
        if last[k] == s:
            ring[w & mask] = k
            last[k] = w
            w -= 1
    st[0] = w + 1
    resident[v] = 0
    st[2] -= 1
    return v


# The name sim.specialize imports from a policy module.
access = lru_access


def _jitted_loop(policy: ModuleType) -> Any:
    from moesim.sim.specialize import specialize

    # LRU runs with the order-keeping access above (same state as sim.policies.lru).
    source = "moesim.sim.hierarchy" if policy.NAME == "lru" else policy
    return specialize("moesim.sim.hierarchy", "hierarchy_loop", source, _LOOP_ARGS)


# ---- results --------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class TransferEvents:
    """Every fill of L1, in issue order: the row it was issued at, the key, where it came from
    (1 DRAM, 2 SSD), whether it was a demand miss (0) or a prefetch (1), and for prefetches
    whether a demand access used it before eviction."""

    row: np.ndarray  # int64
    key: np.ndarray  # int32
    src: np.ndarray  # int8
    kind: np.ndarray  # int8
    useful: np.ndarray  # uint8

    def __len__(self) -> int:
        return int(self.row.shape[0])


@dataclass(frozen=True, eq=False)
class HierarchyResult:
    """What a hierarchy replay produced (see the module docstring for the counters)."""

    config: HierarchyConfig
    l1_capacity: int  # experts (per layer for a per-layer L1)
    l2_capacity: int | None  # experts; None: the whole model in DRAM
    counts: dict[str, int]
    hit: np.ndarray  # uint8 per demand access: 1 = L1 hit
    src: np.ndarray  # int8 per demand access: 0 L1, 1 DRAM, 2 SSD
    events: TransferEvents
    rows: DemandRows
    count_from_row: int

    def bytes_per_link(self, bytes_per_expert: int) -> dict[str, int]:
        c = self.counts
        return {"ssd_to_dram": c["ssd_reads"] * bytes_per_expert,
                "dram_to_gpu": c["l1_fills"] * bytes_per_expert,
                "gpu_to_dram": c["demotions"] * bytes_per_expert}

    @property
    def prefetch_accuracy(self) -> float | None:
        issued = self.counts["prefetch_issued"]
        return self.counts["prefetch_useful"] / issued if issued else None

    @property
    def l1_hit_rate(self) -> float | None:
        n = self.counts["l1_hits"] + self.counts["l1_misses"]
        return self.counts["l1_hits"] / n if n else None


def check_capacities(config: HierarchyConfig, rows: DemandRows, l1_cap: int, l2_cap: int | None) -> None:
    """Refuse sizes that cannot serve a row or keep inclusion."""
    per_layer = config.l1.organisation == "per_layer"
    if l1_cap < max(rows.width, 1):
        where = "per layer " if per_layer else ""
        raise ConfigError(f"L1 capacity {l1_cap} {where}is smaller than the widest row ({rows.width} experts): "
                          "a layer's experts must all be on the GPU at once")
    if l2_cap is not None:
        l1_total = l1_cap * (rows.num_layers if per_layer else 1)
        if config.inclusive and l2_cap <= l1_total:
            raise ConfigError(f"inclusive hierarchy needs L2 capacity ({l2_cap}) > L1 capacity ({l1_total} in all)")
        if l2_cap < 1:
            raise ConfigError(f"L2 capacity must be >= 1 expert, got {l2_cap}")


def simulate_hierarchy(trace: Trace, config: HierarchyConfig, *, plan: PrefetchPlan | None = None,
                       bytes_per_expert: int | None = None, seed: int = 0, warmup_steps: int = 0,
                       rows: DemandRows | None = None) -> HierarchyResult:
    """Replay ``trace`` through the hierarchy (jitted); ``plan`` adds prefetches.

    ``bytes_per_expert`` converts capacities given in GiB; ``warmup_steps`` leaves the first steps
    out of the counters (the caches still see them); ``rows`` reuses :func:`demand_rows` output.
    """
    rows = demand_rows(trace) if rows is None else rows
    prep = _prepare(config, rows, plan, bytes_per_expert, seed, warmup_steps)
    policy, states = prep["policy"], prep["states"]
    n_acc = len(rows.keys)
    n_ev_max = n_acc + len(prep["plan"])
    hit = np.zeros(n_acc, np.uint8)
    src = np.zeros(n_acc, np.int8)
    ev_row = np.zeros(n_ev_max, np.int64)
    ev_key = np.zeros(n_ev_max, np.int32)
    ev_src = np.zeros(n_ev_max, np.int8)
    ev_kind = np.zeros(n_ev_max, np.int8)
    ev_useful = np.zeros(n_ev_max, np.uint8)
    cnt = np.zeros(len(COUNTERS), np.int64)
    pl = prep["plan"]
    run = _jitted_loop(policy)
    n_ev = run(states, prep["per_layer"], rows.num_layers, rows.num_experts, prep["l1_cap"], rows.width,
               rows.keys, rows.row_ptr, prep["next_use"], pl.row_ptr, pl.keys, pl.target, prep["pf_next"],
               prep["l2_on"], prep["l2_policy"], prep["l2_cap_i"], config.l2_prefill, config.inclusive,
               prep["budget"], prep["count_from"], hit, src, ev_row, ev_key, ev_src, ev_kind, ev_useful, cnt)
    return _result(config, prep, rows, cnt, hit, src,
                   TransferEvents(ev_row[:n_ev], ev_key[:n_ev], ev_src[:n_ev], ev_kind[:n_ev], ev_useful[:n_ev]))


def _prepare(config: HierarchyConfig, rows: DemandRows, plan: PrefetchPlan | None, bytes_per_expert: int | None,
             seed: int, warmup_steps: int) -> dict[str, Any]:
    policy = get_policy(config.l1.policy)
    if getattr(policy, "PRELOADS", False):
        raise ConfigError(f"policy {policy.NAME!r} starts full and does not insert on a miss; the hierarchy "
                          "needs a demand-fetching L1 policy")
    per_layer = config.l1.organisation == "per_layer"
    l1_cap = config.l1.capacity(bytes_per_expert)
    l2_cap = None if config.l2 is None else config.l2.capacity(bytes_per_expert)
    check_capacities(config, rows, l1_cap, l2_cap)
    L, E = rows.num_layers, rows.num_experts
    plan = empty_plan(rows.num_rows) if plan is None else plan
    plan.check(rows.num_rows, rows.num_keys)
    if needs_next_use(policy):
        row_time = np.arange(rows.num_rows, dtype=np.int64)
        next_use = next_use_times(rows.keys, rows.row_ptr, row_time, rows.num_keys)
        pf_next = prefetch_next_use(rows, plan)
    else:
        from moesim.sim.kernel import NEVER

        next_use = np.full(len(rows.keys), NEVER, np.int64)
        pf_next = np.full(len(plan), NEVER, np.int64)
    states = List()
    for p in range(L if per_layer else 1):
        params = resolve_params(policy, config.l1.params, layer=p if per_layer else -1, num_layers=L,
                                num_experts=E)
        states.append(policy.make_state(l1_cap, E if per_layer else L * E, params, seed + p))
    if warmup_steps < 0:
        raise ConfigError(f"warmup_steps must be >= 0, got {warmup_steps}")
    return {"policy": policy, "states": states, "per_layer": per_layer, "l1_cap": l1_cap, "l2_cap": l2_cap,
            "l2_on": config.l2 is not None, "l2_cap_i": 0 if l2_cap is None else l2_cap,
            "l2_policy": 0 if config.l2 is None else L2_POLICIES[config.l2.policy], "plan": plan,
            "next_use": next_use, "pf_next": pf_next,
            "budget": UNLIMITED if config.prefetch_budget is None else int(config.prefetch_budget),
            "count_from": min(int(warmup_steps) * L, rows.num_rows)}


def _result(config: HierarchyConfig, prep: dict[str, Any], rows: DemandRows, cnt: np.ndarray, hit: np.ndarray,
            src: np.ndarray, events: TransferEvents) -> HierarchyResult:
    if cnt[C_INCONSISTENT]:
        raise ConfigError(f"policy {config.l1.policy!r} disagreed {int(cnt[C_INCONSISTENT])} times with the "
                          "hierarchy about what it holds (it must insert on every miss and report every eviction)")
    counts = {name: int(cnt[i]) for i, name in enumerate(COUNTERS) if name != "inconsistent"}
    return HierarchyResult(config, prep["l1_cap"], prep["l2_cap"], counts, hit, src, events, rows,
                           prep["count_from"])


def with_l1(config: HierarchyConfig, **changes: Any) -> HierarchyConfig:
    """``config`` with some L1 fields replaced."""
    return dataclasses.replace(config, l1=dataclasses.replace(config.l1, **changes))


__all__ = ["COUNTERS", "DemandRows", "HierarchyConfig", "HierarchyResult", "Level", "TransferEvents",
           "demand_rows", "prefetch_next_use", "simulate_hierarchy", "with_l1"]
