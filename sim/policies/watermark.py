"""Watermark: batch eviction between a high and a low occupancy mark, scored in the layer clock.

The policy of the two-level expert-caching design this project grew from. Occupancy grows freely up
to the *high* watermark ``H = floor(high * C)`` slots (the floor forgives float rounding:
``high = 0.29`` of 100 slots is 29). A miss that finds ``H`` residents first runs
one batch eviction that removes the lowest-score unguarded residents until ``T = min(floor(low *
C), H - 1)`` remain (``T < H`` so the newcomer always fits), then inserts. With ``low == high ==
1`` it degenerates to one eviction per miss.

Scores are counted in the *layer-local clock* of the design map: with ``L`` MoE layers (the
engine's ``_num_layers``), a request at global step ``now`` happens at layer-local tick
``k = now // L`` (the token index). Each resident keeps ``last`` (the tick of its last access) and
``freq``; at tick ``k_now`` its score is

* ``recency``:   ``last``;
* ``frequency``: ``freq * decay ** (k_now - last)``, where ``freq`` is 1 on insertion and becomes
  ``freq * decay ** (k_now - last) + 1`` on every hit (``decay = 1``: a plain count of accesses
  since insertion; counts are forgotten on eviction);
* ``mix``:       ``weight * (last - k_now) + (1 - weight) * frequency`` (the recency term is minus
  the age in ticks, so ``weight = 1`` orders like ``recency`` and ``weight = 0`` like ``frequency``).

The tick is the same for every layer's keys (the layer-local clock ``t div L`` of the design map),
so in a cache shared by all layers the experts of one token all carry the same ``last``: recency
does not order layers within a token, only tokens. Per-layer caches (``organisation="per_layer"``)
see one row per tick, so there ``recency`` is LRU with the experts of one row tied.

Victims are taken in increasing score; ties go to the lower key first (deterministic; in a shared
cache the lower key is the earlier layer, or the lower expert id within a layer). Powers of
``decay`` are computed by repeated squaring in both the jitted and the plain-Python code, so the
two agree bit for bit.

Knobs: ``high`` (default 1.0) and ``low`` (default 0.75), both in ``(0, 1]`` with ``low <= high``;
``score`` (``recency``, ``frequency`` or ``mix``; default ``recency``); ``decay`` in ``(0, 1]``
(default 1.0); ``weight`` in ``[0, 1]`` (default 0.5). Bad values raise a ``ConfigError`` (a
``ValueError``) from ``make_state`` naming the knob.

Guarded keys (the current row's experts) are never victims; when too few unguarded residents
exist to reach ``T`` the batch evicts all of them and the next miss tries again.

One miss may evict many keys, but ``access`` returns a single key: it returns the first victim
(lowest score) and records the whole batch in the state (``batch[:cnt[BATCH_LEN]]``); ``replay``
returns the true number of evictions (not the number of misses that evicted).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from moesim.kernels.jit import njit
from moesim.sim.policies import _knobs
from moesim.sim.row_loop import HIT, MISS, row_loop

NAME = "watermark"
LAYER_CLOCK = True  # counts in the layer clock: make_state reads _num_layers
PARAMS: dict[str, Any] = {"high": 1.0, "low": 0.75, "score": "recency", "decay": 1.0, "weight": 0.5}

SCORES = ("recency", "frequency", "mix")
SIZE, CAP, HIGH, TARGET, LAYERS, SCORE, EVICTED, BATCH_LEN = range(8)
DECAY, WEIGHT = range(2)


def slots(fraction: float, capacity: int) -> int:
    """``floor(fraction * capacity)``, forgiving the last-bit rounding of a product that is an integer in
    exact arithmetic (``0.29 * 100`` is ``28.999999999999996`` in floating point, but means 29 slots)."""
    return math.floor(fraction * capacity * (1 + 1e-12))


def settings(capacity: int, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validated knobs plus the derived slot counts ``high_slots`` and ``target`` and ``num_layers``."""
    p = _knobs.resolve(NAME, PARAMS, params)
    capacity = _knobs.capacity_at_least(NAME, capacity, 1)
    high = _knobs.fraction(NAME, "high", p["high"])
    low = _knobs.fraction(NAME, "low", p["low"])
    if low > high:
        raise _knobs.ConfigError(f"{NAME}: knob 'low' ({low:g}) must not exceed knob 'high' ({high:g})")
    high_slots = slots(high, capacity)
    if high_slots < 1:
        raise _knobs.ConfigError(f"{NAME}: knob 'high' ({high:g}) leaves no slot in a cache of {capacity}")
    num_layers = _knobs.integer(NAME, "_num_layers", p.get("_num_layers", 1), 1)
    return {
        "high_slots": high_slots,
        "target": min(slots(low, capacity), high_slots - 1),
        "score": SCORES.index(_knobs.choice(NAME, "score", p["score"], SCORES)),
        "decay": _knobs.fraction(NAME, "decay", p["decay"]),
        "weight": _knobs.fraction(NAME, "weight", p["weight"], lo_open=False),
        "num_layers": num_layers,
    }


def make_state(capacity: int, num_keys: int, params: Mapping[str, Any], seed: int) -> tuple:
    z = settings(capacity, params)
    resident = np.zeros(num_keys, np.uint8)
    last = np.zeros(num_keys, np.int64)
    freq = np.zeros(num_keys, np.float64)
    batch = np.zeros(num_keys, np.int64)  # the victims of the last batch, in eviction order
    scratch = np.zeros(num_keys, np.float64)
    cnt = np.zeros(8, np.int64)
    cnt[CAP], cnt[HIGH], cnt[TARGET] = capacity, z["high_slots"], z["target"]
    cnt[LAYERS], cnt[SCORE] = z["num_layers"], z["score"]
    fp = np.array([z["decay"], z["weight"]], np.float64)
    return resident, last, freq, batch, scratch, cnt, fp


def powi(x: float, n: int) -> float:
    """``x ** n`` for ``n >= 0`` by repeated squaring (the same float operations jitted or not)."""
    result = 1.0
    base = x
    while n > 0:
        if n & 1:
            result *= base
        base *= base
        n >>= 1
    return result


_powi = njit(powi)


@njit(forceinline=True)
def _score(code, last, freq, k_now, decay, weight):
    if code == 0:
        return float(last)
    f = freq * _powi(decay, k_now - last)
    if code == 1:
        return f
    return weight * float(last - k_now) + (1.0 - weight) * f


@njit(forceinline=True)
def _batch_evict(state, k_now, guard, stamp):
    resident, last, freq, batch, scratch, cnt, fp = state
    m = 0
    for k in range(resident.shape[0]):  # ascending keys + a stable sort = lower key first on ties
        if resident[k] and guard[k] != stamp:
            batch[m] = k
            scratch[m] = _score(cnt[SCORE], last[k], freq[k], k_now, fp[DECAY], fp[WEIGHT])
            m += 1
    order = np.argsort(scratch[:m], kind="mergesort")
    n_out = min(cnt[SIZE] - cnt[TARGET], m)
    victims = batch[order[:n_out]]  # a copy: batch is overwritten next
    for j in range(n_out):
        v = victims[j]
        batch[j] = v
        resident[v] = 0
    cnt[SIZE] -= n_out
    cnt[EVICTED] += n_out
    cnt[BATCH_LEN] = n_out
    return victims[0] if n_out > 0 else MISS


@njit(forceinline=True)
def access(state, key, now, next_use, guard, stamp):
    resident, last, freq, _batch, _scratch, cnt, fp = state
    k_now = now // cnt[LAYERS]
    if resident[key]:
        freq[key] = freq[key] * _powi(fp[DECAY], k_now - last[key]) + 1.0
        last[key] = k_now
        return HIT
    first = MISS
    cnt[BATCH_LEN] = 0
    if cnt[SIZE] >= cnt[HIGH]:
        first = _batch_evict(state, k_now, guard, stamp)
        if cnt[SIZE] >= cnt[CAP]:
            raise ValueError("watermark: every resident is guarded (capacity smaller than the row width)")
    resident[key] = 1
    cnt[SIZE] += 1
    last[key] = k_now
    freq[key] = 1.0
    return first


@njit
def more_victims(state, out):
    """The victims of the last :func:`access` after the first one it returned (the rest of its batch):
    written into ``out``, their number returned."""
    batch, cnt = state[3], state[5]
    n = max(cnt[BATCH_LEN] - 1, 0)
    for j in range(n):
        out[j] = batch[j + 1]
    cnt[BATCH_LEN] = 0  # reported once
    return n


@njit
def replay(state, keys, row_ptr, row_time, next_use, num_keys, hits_out):
    """:func:`access` and :func:`_batch_evict` written out in the shared row loop (:mod:`sim.row_loop`),
    the counters in locals: the same operations in the same order, so the same hits, evictions and
    state as ``replay_by_access`` (measured ~3x faster on 4-key rows: a call per access that takes the state's
    arrays keeps numba's reference counting in the loop). A hit skips the power when ``decay`` is 1
    (``1.0 ** n`` is exactly 1). Returns every key evicted (a batch counts each)."""
    resident, last, freq, batch, scratch, cnt, fp = state
    size = cnt[SIZE]
    cap = cnt[CAP]
    high = cnt[HIGH]
    target = cnt[TARGET]
    num_layers = cnt[LAYERS]
    code = cnt[SCORE]
    batch_len = cnt[BATCH_LEN]
    decay = fp[DECAY]
    weight = fp[WEIGHT]
    guard = np.full(num_keys, -1, np.int64)
    evicted = 0
    for r in range(row_ptr.shape[0] - 1):
        lo = row_ptr[r]
        hi = row_ptr[r + 1]
        for i in range(lo, hi):
            guard[keys[i]] = r
        k_now = row_time[r] // num_layers
        for i in range(lo, hi):
            key = keys[i]
            if resident[key]:
                hits_out[i] = 1
                d = 1.0 if decay == 1.0 else _powi(decay, k_now - last[key])
                freq[key] = freq[key] * d + 1.0
                last[key] = k_now
                continue
            hits_out[i] = 0
            batch_len = 0
            if size >= high:
                m = 0
                for k in range(resident.shape[0]):  # ascending keys + a stable sort: lower key first on ties
                    if resident[k] and guard[k] != r:
                        batch[m] = k
                        scratch[m] = _score(code, last[k], freq[k], k_now, decay, weight)
                        m += 1
                order = np.argsort(scratch[:m], kind="mergesort")
                n_out = min(size - target, m)
                victims = batch[order[:n_out]]  # a copy: batch is overwritten next
                for j in range(n_out):
                    v = victims[j]
                    batch[j] = v
                    resident[v] = 0
                size -= n_out
                evicted += n_out
                batch_len = n_out
                if size >= cap:
                    raise ValueError("watermark: every resident is guarded (capacity smaller than the row width)")
            resident[key] = 1
            size += 1
            last[key] = k_now
            freq[key] = 1.0
    cnt[SIZE] = size
    cnt[EVICTED] += evicted
    cnt[BATCH_LEN] = batch_len
    return evicted


@njit
def replay_by_access(state, keys, row_ptr, row_time, next_use, num_keys, hits_out):
    """The shared per-access loop over :func:`access`: (evictions, every key of a batch counted)."""
    cnt = state[5]
    before = cnt[EVICTED]
    row_loop(access, state, keys, row_ptr, row_time, next_use, num_keys, hits_out)
    return cnt[EVICTED] - before


def reference(keys: np.ndarray, row_ptr: np.ndarray, row_time: np.ndarray, next_use: np.ndarray,
              capacity: int, num_keys: int, params: Mapping[str, Any], seed: int) -> tuple[np.ndarray, int]:
    """Plain-Python watermark policy with the same row semantics: (hit per access, evictions)."""
    z = settings(capacity, params)
    decay, weight, code = z["decay"], z["weight"], z["score"]
    last: dict[int, int] = {}  # residents only
    freq: dict[int, float] = {}
    hits = np.zeros(len(keys), np.uint8)
    evictions = 0

    def score(k: int, k_now: int) -> float:
        if code == 0:
            return float(last[k])
        f = freq[k] * powi(decay, k_now - last[k])
        return f if code == 1 else weight * float(last[k] - k_now) + (1.0 - weight) * f

    for r in range(len(row_ptr) - 1):
        row = {int(k) for k in keys[row_ptr[r]:row_ptr[r + 1]]}
        k_now = int(row_time[r]) // z["num_layers"]
        for i in range(int(row_ptr[r]), int(row_ptr[r + 1])):
            x = int(keys[i])
            if x in last:
                freq[x] = freq[x] * powi(decay, k_now - last[x]) + 1.0
                last[x] = k_now
                hits[i] = 1
                continue
            if len(last) >= z["high_slots"]:
                ranked = sorted((k for k in last if k not in row), key=lambda k: (score(k, k_now), k))
                for v in ranked[:len(last) - z["target"]]:
                    del last[v], freq[v]
                    evictions += 1
                if len(last) >= capacity:
                    raise ValueError("watermark: every resident is guarded")
            last[x] = k_now
            freq[x] = 1.0
    return hits, evictions
