"""Statistics of a routing trace, per layer and overall, computed in one streaming pass.

Every statistic walks ``trace.iter_chunks`` so a memory-mapped trace is paged in a chunk at a time;
pads (``-1``) are never counted. Definitions (``S(t, l)`` is the set of experts of row ``(t, l)``):

popularity
    ``counts[l, e]``: how many rows of layer ``l`` hold expert ``e``. Its *entropy* (bits) is that
    of ``counts[l] / counts[l].sum()``; the *normalised* entropy divides it by ``log2(E)`` (1 means
    uniform routing).
hot fraction
    for ``n`` experts (an int, or a float in (0, 1) meaning ``ceil(n * E)``): the share of layer
    ``l``'s accesses that go to its ``n`` most-requested experts.
reuse rate
    the previous token of step ``t`` is step ``t - 1`` when both carry the same ``request_id``
    (requests are contiguous runs of steps, as in :meth:`Trace.request_bounds`; a trace without
    request ids is one request). Over every step that has a previous token, the reuse rate of
    layer ``l`` is ``sum |S(t, l) & S(t - 1, l)| / sum |S(t, l)|`` (a micro-average; NaN without
    such steps); the overall rate pools the sums of all layers.
reuse distance
    in the layer clock (global step ``t * L + l``) over keys ``l * E + e`` shared by all requests:
    the LRU stack distance of an access is the number of distinct other keys requested at steps
    strictly between the previous access of the same key and this one; the *gap* is the difference
    of the two steps. First accesses (infinite distance) are counted apart. Histograms: exact per
    distance value (``[L, L * E]``) and, for gaps, power-of-two bins (bin ``b`` holds
    ``2**b <= gap < 2**(b + 1)``). With row-level recency, an access of distance ``d`` hits in a
    shared LRU cache of ``C`` experts if ``d <= C - K`` and misses if ``d >= C``.
transitions
    ``transitions[l, i, j]``: tokens whose row at layer ``l`` holds ``i`` and whose row at ``l + 1``
    holds ``j`` (every pair of the two rows); its mutual information (bits) treats the normalised
    matrix as a joint distribution of (expert at ``l``, expert at ``l + 1``).
working set
    steps are cut into consecutive windows of ``W`` tokens (``[kW, (k + 1)W)``; a trailing partial
    window is dropped unless the trace is shorter than ``W``, when the whole trace is one window);
    the working set of a window is its number of distinct keys (per layer: distinct experts).

:func:`compute_stats` runs everything in one pass; the single-statistic functions below use the
same accumulators. :func:`summary_table` turns the result into rows (one per layer plus "all").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from moesim.traces.stats_kernel import (
    GAP_BINS,
    new_state,
    reuse_chunk,
    stack_distance_chunk,
    transitions_chunk,
)
from moesim.traces.trace import PAD, PHASE_NAMES, Trace

HOT_DEFAULT: tuple[float, ...] = (1, 4, 8, 0.25)
WINDOW_DEFAULT = 32
STATS_CHUNK_STEPS = 1 << 13
# Temporary arrays of one sub-block stay below this many elements (bounds memory on wide rows).
_BLOCK_ELEMENTS = 1 << 22


# ---- results ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ReuseDistance:
    """Per-layer histograms of LRU stack distances and layer-clock gaps (see the module doc)."""

    hist: np.ndarray  # int64 [L, L * E]: accesses per finite stack distance
    first: np.ndarray  # int64 [L]: first accesses (infinite distance)
    gap_hist: np.ndarray  # int64 [L, GAP_BINS]: power-of-two bins of the gap in layer-clock steps
    gap_sum: np.ndarray  # int64 [L]: sum of the finite gaps (for the exact mean)


@dataclass(frozen=True)
class WorkingSet:
    """Distinct keys per window of ``window`` tokens: per layer ``[n, L]`` and over all layers ``[n]``."""

    window: int
    per_layer: np.ndarray
    overall: np.ndarray


@dataclass(frozen=True)
class TraceStats:
    """Everything :func:`compute_stats` measures; plots and tables read only this."""

    model: str
    num_steps: int
    num_layers: int
    num_experts: int
    popularity: np.ndarray  # int64 [L, E]
    reuse_hits: np.ndarray  # int64 [L]: sum |S(t,l) & S(t-1,l)| over steps with a previous token
    reuse_total: np.ndarray  # int64 [L]: sum |S(t,l)| over the same steps
    reuse_distance: ReuseDistance
    transitions: np.ndarray  # int64 [max(L - 1, 0), E, E]
    working_set: WorkingSet
    hot: tuple[float, ...]


# ---- small pure functions on counts ------------------------------------------------------------

def entropy_bits(counts: np.ndarray) -> np.ndarray:
    """Shannon entropy (bits) of each row of ``counts`` (NaN for an all-zero row)."""
    c = np.asarray(counts, np.float64)
    total = c.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = c / total
        terms = np.where(p > 0, -p * np.log2(np.where(p > 0, p, 1.0)), 0.0)
    out = terms.sum(axis=-1)
    return np.where(total[..., 0] > 0, out, np.nan)


def normalised_entropy(counts: np.ndarray) -> np.ndarray:
    """Entropy divided by ``log2(E)`` (``E`` = the last axis); NaN when ``E == 1``."""
    num = np.asarray(counts).shape[-1]
    h = entropy_bits(counts)
    return h / math.log2(num) if num > 1 else np.full_like(h, np.nan)


def hot_count(n: float, num_experts: int) -> int:
    """Experts meant by ``n``: an int ``>= 1`` (capped at E), or a float in (0, 1) as ``ceil(n * E)``."""
    if isinstance(n, (int, np.integer)) and not isinstance(n, bool):
        if n < 1:
            raise ValueError(f"hot expert count must be >= 1, got {n}")
        return min(int(n), num_experts)
    if not 0 < float(n) < 1:
        raise ValueError(f"hot expert fraction must lie in (0, 1), got {n}")
    return max(1, math.ceil(float(n) * num_experts - 1e-9))


def hot_name(n: float) -> str:
    """Table column for a hot-set size: ``hot_4`` for 4 experts, ``hot_25pct`` for 0.25."""
    if isinstance(n, (int, np.integer)):
        return f"hot_{int(n)}"
    return f"hot_{round(float(n) * 100)}pct"


def hot_fraction(counts: np.ndarray, n: float) -> np.ndarray:
    """Per layer: share of the accesses that go to the ``n`` most-requested experts (NaN if none)."""
    c = np.asarray(counts, np.int64)
    top = np.sort(c, axis=-1)[..., ::-1][..., :hot_count(n, c.shape[-1])].sum(axis=-1)
    total = c.sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, top / np.maximum(total, 1), np.nan)


def mutual_information(matrix: np.ndarray) -> np.ndarray:
    """Mutual information (bits) of each ``[..., E, E]`` count matrix read as a joint distribution."""
    m = np.asarray(matrix, np.float64)
    total = m.sum(axis=(-2, -1), keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = m / total
        pi = p.sum(axis=-1, keepdims=True)
        pj = p.sum(axis=-2, keepdims=True)
        ratio = np.where(p > 0, p / (pi * pj), 1.0)
        terms = np.where(p > 0, p * np.log2(ratio), 0.0)
    out = terms.sum(axis=(-2, -1))
    return np.where(total[..., 0, 0] > 0, out, np.nan)


def hist_quantile(hist: np.ndarray, q: float) -> float:
    """Smallest value ``v`` with ``hist[:v + 1].sum() >= q * hist.sum()`` (NaN for an empty hist);
    the same as ``np.quantile(values, q, method="inverted_cdf")`` on the values themselves."""
    h = np.asarray(hist, np.int64)
    total = int(h.sum())
    if total == 0:
        return math.nan
    need = max(1, math.ceil(q * total - 1e-9))
    return float(np.searchsorted(np.cumsum(h), need))


def hist_mean(hist: np.ndarray) -> float:
    h = np.asarray(hist, np.float64)
    total = h.sum()
    return float((h * np.arange(h.shape[-1])).sum() / total) if total else math.nan


# ---- accumulators (one per statistic; compute_stats runs them side by side) --------------------

def _block_steps(per_item: int) -> int:
    """Items (steps, windows) per block so that ``items * per_item`` stays under the element budget."""
    return max(1, _BLOCK_ELEMENTS // max(per_item, 1))


class _Popularity:
    def __init__(self, L: int, E: int) -> None:
        self.L, self.E = L, E
        self.counts = np.zeros(L * E, np.int64)

    def update(self, e: np.ndarray, rid: np.ndarray | None, start: int) -> None:
        keys = e.astype(np.int64) + (np.arange(self.L, dtype=np.int64) * self.E)[None, :, None]
        self.counts += np.bincount(keys[e >= 0], minlength=self.L * self.E)

    def result(self) -> np.ndarray:
        return self.counts.reshape(self.L, self.E)


class _Reuse:
    """Carries the last row (and its request id) across chunk boundaries."""

    def __init__(self, L: int, E: int) -> None:
        self.L, self.E = L, E
        self.hits = np.zeros(L, np.int64)
        self.total = np.zeros(L, np.int64)
        self.prev_row: np.ndarray | None = None
        self.prev_rid: int | None = None

    def update(self, e: np.ndarray, rid: np.ndarray | None, start: int) -> None:
        n = e.shape[0]
        if n == 0:
            return
        r = np.zeros(n, np.int64) if rid is None else np.asarray(rid, np.int64)
        has_prev = np.empty(n, np.bool_)
        has_prev[1:] = r[1:] == r[:-1]
        has_prev[0] = self.prev_row is not None and r[0] == self.prev_rid
        prev_row = self.prev_row if self.prev_row is not None else np.full(e.shape[1:], PAD, e.dtype)
        reuse_chunk(np.ascontiguousarray(e), prev_row, has_prev, self.hits, self.total)
        self.prev_row, self.prev_rid = e[-1].copy(), int(r[-1])


class _Distance:
    def __init__(self, L: int, E: int, capacity: int | None = None) -> None:
        self.L, self.E = L, E
        self.state = new_state(L, E, capacity)
        self.hist = np.zeros((L, L * E), np.int64)
        self.first = np.zeros(L, np.int64)
        self.gap_hist = np.zeros((L, GAP_BINS), np.int64)
        self.gap_sum = np.zeros(L, np.int64)

    def update(self, e: np.ndarray, rid: np.ndarray | None, start: int) -> None:
        stack_distance_chunk(np.ascontiguousarray(e, np.int16), start, self.E, *self.state, self.hist,
                             self.first, self.gap_hist, self.gap_sum)

    def result(self) -> ReuseDistance:
        return ReuseDistance(self.hist, self.first, self.gap_hist, self.gap_sum)


class _Transitions:
    def __init__(self, L: int, E: int) -> None:
        self.L, self.E = L, E
        self.counts = np.zeros((max(L - 1, 0), E, E), np.int64)

    def update(self, e: np.ndarray, rid: np.ndarray | None, start: int) -> None:
        if self.L > 1:
            transitions_chunk(np.ascontiguousarray(e), self.counts)

    def result(self) -> np.ndarray:
        return self.counts


class _WorkingSet:
    """Expects chunks that start on a window boundary (compute_stats aligns the chunk size)."""

    def __init__(self, L: int, E: int, window: int, num_steps: int) -> None:
        if window < 1:
            raise ValueError(f"working-set window must be >= 1 token, got {window}")
        self.L, self.E, self.window, self.num_steps = L, E, window, num_steps
        self.per_layer: list[np.ndarray] = []
        self.overall: list[np.ndarray] = []

    def update(self, e: np.ndarray, rid: np.ndarray | None, start: int) -> None:
        W, L, E = self.window, self.L, self.E
        n = e.shape[0] if self.num_steps < W else (e.shape[0] // W) * W
        nw = n // W if self.num_steps >= W else (1 if n else 0)
        if nw == 0:
            return
        nkeys = L * E
        keys = e[:n].astype(np.int64) + (np.arange(L, dtype=np.int64) * E)[None, :, None]
        ok = e[:n] >= 0
        per_window = W if self.num_steps >= W else n
        # A [windows, keys] mask per block of windows (np.unique's sort is far slower).
        wins = _block_steps(nkeys)
        for w0 in range(0, nw, wins):
            w1 = min(nw, w0 + wins)
            blk, blk_ok = keys[w0 * per_window:w1 * per_window], ok[w0 * per_window:w1 * per_window]
            mask = np.zeros((w1 - w0, nkeys), bool)
            win = np.repeat(np.arange(w1 - w0), per_window * L * e.shape[2]).reshape(blk.shape)
            mask[win[blk_ok], blk[blk_ok]] = True
            self.overall.append(mask.sum(axis=1))
            self.per_layer.append(mask.reshape(w1 - w0, L, E).sum(axis=2))

    def result(self) -> WorkingSet:
        per = np.concatenate(self.per_layer) if self.per_layer else np.zeros((0, self.L), np.int64)
        tot = np.concatenate(self.overall) if self.overall else np.zeros(0, np.int64)
        return WorkingSet(self.window, per, tot)


def _run(trace: Trace, accs: Sequence[Any], chunk_steps: int) -> None:
    start = 0
    for chunk in trace.iter_chunks(chunk_steps):
        e = np.asarray(chunk.experts)
        rid = None if chunk.request_id is None else np.asarray(chunk.request_id)
        for acc in accs:
            acc.update(e, rid, start)
        start += chunk.num_steps


# ---- public statistics -----------------------------------------------------------------------

def popularity(trace: Trace, *, chunk_steps: int = STATS_CHUNK_STEPS) -> np.ndarray:
    """Expert counts per layer, int64 ``[L, E]``."""
    acc = _Popularity(trace.num_layers, trace.num_experts)
    _run(trace, [acc], chunk_steps)
    return acc.result()


def reuse_counts(trace: Trace, *, chunk_steps: int = STATS_CHUNK_STEPS) -> tuple[np.ndarray, np.ndarray]:
    """``(hits [L], total [L])`` of the step-to-step reuse rate (see the module doc)."""
    acc = _Reuse(trace.num_layers, trace.num_experts)
    _run(trace, [acc], chunk_steps)
    return acc.hits, acc.total


def reuse_rate(trace: Trace, *, chunk_steps: int = STATS_CHUNK_STEPS) -> tuple[np.ndarray, float]:
    """Step-to-step reuse rate per layer ``[L]`` and pooled over all layers (NaN where undefined)."""
    hits, total = reuse_counts(trace, chunk_steps=chunk_steps)
    return _ratio(hits, total), _ratio(hits.sum(), total.sum())


def reuse_distance(trace: Trace, *, chunk_steps: int = STATS_CHUNK_STEPS,
                   slot_capacity: int | None = None) -> ReuseDistance:
    """LRU stack-distance and gap histograms in the layer clock (see the module doc)."""
    acc = _Distance(trace.num_layers, trace.num_experts, slot_capacity)
    _run(trace, [acc], chunk_steps)
    return acc.result()


def transition_matrix(trace: Trace, *, chunk_steps: int = STATS_CHUNK_STEPS) -> np.ndarray:
    """Counts of expert ``i`` at layer ``l`` followed by ``j`` at ``l + 1`` in one token, ``[L-1, E, E]``."""
    acc = _Transitions(trace.num_layers, trace.num_experts)
    _run(trace, [acc], chunk_steps)
    return acc.result()


def working_set(trace: Trace, window: int = WINDOW_DEFAULT, *,
                chunk_steps: int = STATS_CHUNK_STEPS) -> WorkingSet:
    """Distinct keys per window of ``window`` tokens, per layer and overall."""
    acc = _WorkingSet(trace.num_layers, trace.num_experts, window, trace.num_steps)
    _run(trace, [acc], _aligned(chunk_steps, window))
    return acc.result()


def _aligned(chunk_steps: int, window: int) -> int:
    return max(1, chunk_steps // window) * window


def compute_stats(trace: Trace, *, hot: Sequence[float] = HOT_DEFAULT, window: int = WINDOW_DEFAULT,
                  chunk_steps: int = STATS_CHUNK_STEPS, slot_capacity: int | None = None) -> TraceStats:
    """All statistics in one streaming pass over the trace."""
    L, E = trace.num_layers, trace.num_experts
    for n in hot:
        hot_count(n, E)  # refuse a bad size before the pass
    pop, reuse, dist = _Popularity(L, E), _Reuse(L, E), _Distance(L, E, slot_capacity)
    trans, ws = _Transitions(L, E), _WorkingSet(L, E, window, trace.num_steps)
    _run(trace, [pop, reuse, dist, trans, ws], _aligned(chunk_steps, window))
    return TraceStats(model=trace.meta.model, num_steps=trace.num_steps, num_layers=L, num_experts=E,
                      popularity=pop.result(), reuse_hits=reuse.hits, reuse_total=reuse.total,
                      reuse_distance=dist.result(), transitions=trans.result(), working_set=ws.result(),
                      hot=tuple(hot))


def _ratio(num: Any, den: Any) -> Any:
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return float(out) if out.ndim == 0 else out


# ---- the table -------------------------------------------------------------------------------

BASE_COLUMNS = (
    "layer",  # "0" .. "L-1", or "all"
    "accesses",  # non-pad expert requests
    "experts_used",  # experts with at least one access (keys, in the "all" row)
    "entropy_bits", "entropy_norm",  # popularity entropy; "all": access-weighted mean over layers
)
TAIL_COLUMNS = (
    "reuse_rate",  # step-to-step reuse; "all": pooled over layers
    "rd_first",  # first accesses (infinite stack distance)
    "rd_mean", "rd_p50", "rd_p90",  # finite LRU stack distances, in distinct keys
    "gap_mean",  # mean finite gap, in layer-clock steps
    "mi_bits",  # mutual information of layer l -> l + 1 (NaN on the last layer); "all": weighted mean
    "ws_window", "ws_mean", "ws_max",  # working set: distinct experts (keys, "all") per window
)


def table_columns(hot: Sequence[float] = HOT_DEFAULT) -> list[str]:
    """The columns of :func:`summary_table`, in order (the hot_* ones follow ``hot``)."""
    return [*BASE_COLUMNS, *(hot_name(n) for n in hot), *TAIL_COLUMNS]


def summary_table(trace_or_stats: Trace | TraceStats, **kwargs: Any) -> list[dict[str, Any]]:
    """One row per layer plus an ``"all"`` row; columns from :func:`table_columns` (see their notes).

    Takes a trace (``kwargs`` go to :func:`compute_stats`) or already computed stats.
    """
    s = trace_or_stats if isinstance(trace_or_stats, TraceStats) else compute_stats(trace_or_stats, **kwargs)
    L = s.num_layers
    pop, rd = s.popularity, s.reuse_distance
    acc = pop.sum(axis=1)
    ent, ent_n = entropy_bits(pop), normalised_entropy(pop)
    hot = {hot_name(n): hot_fraction(pop, n) for n in s.hot}
    mi = mutual_information(s.transitions) if L > 1 else np.zeros(0)
    pair_weight = s.transitions.sum(axis=(1, 2)) if L > 1 else np.zeros(0)
    rows: list[dict[str, Any]] = []
    for layer in range(L):
        rows.append({
            "layer": str(layer), "accesses": int(acc[layer]), "experts_used": int(np.count_nonzero(pop[layer])),
            "entropy_bits": float(ent[layer]), "entropy_norm": float(ent_n[layer]),
            **{k: float(v[layer]) for k, v in hot.items()},
            **_tail(s, rd.hist[layer], rd.first[layer], rd.gap_sum[layer], s.reuse_hits[layer],
                    s.reuse_total[layer], float(mi[layer]) if layer < L - 1 else math.nan,
                    s.working_set.per_layer[:, layer]),
        })
    rows.append({
        "layer": "all", "accesses": int(acc.sum()), "experts_used": int(np.count_nonzero(pop)),
        "entropy_bits": _weighted(ent, acc), "entropy_norm": _weighted(ent_n, acc),
        **{k: _weighted(v, acc) for k, v in hot.items()},
        **_tail(s, rd.hist.sum(axis=0), rd.first.sum(), rd.gap_sum.sum(), s.reuse_hits.sum(),
                s.reuse_total.sum(), _weighted(mi, pair_weight), s.working_set.overall),
    })
    return rows


def _tail(s: TraceStats, hist: np.ndarray, first: Any, gap_sum: Any, hits: Any, total: Any, mi: float,
          ws: np.ndarray) -> dict[str, Any]:
    finite = int(hist.sum())
    return {
        "reuse_rate": _ratio(hits, total), "rd_first": int(first), "rd_mean": hist_mean(hist),
        "rd_p50": hist_quantile(hist, 0.5), "rd_p90": hist_quantile(hist, 0.9),
        "gap_mean": float(gap_sum) / finite if finite else math.nan, "mi_bits": mi,
        "ws_window": int(s.working_set.window),
        "ws_mean": float(ws.mean()) if ws.size else math.nan,
        "ws_max": int(ws.max()) if ws.size else 0,
    }


def _weighted(values: np.ndarray, weights: np.ndarray) -> float:
    v, w = np.asarray(values, np.float64), np.asarray(weights, np.float64)
    ok = np.isfinite(v) & (w > 0)
    return float((v[ok] * w[ok]).sum() / w[ok].sum()) if ok.any() else math.nan


# ---- a printable summary ---------------------------------------------------------------------

def describe(trace: Trace, stats: TraceStats | None = None) -> dict[str, Any]:
    """Metadata, shape and the overall ("all") statistics of a trace, as a flat-ish dict."""
    s = stats if stats is not None else compute_stats(trace)
    phases: dict[str, int] = {}
    if trace.phase is not None:
        vals, cnt = np.unique(np.asarray(trace.phase), return_counts=True)
        phases = {PHASE_NAMES[int(v)]: int(c) for v, c in zip(vals, cnt, strict=True)}
    m = trace.meta
    overall = summary_table(s)[-1]
    return {
        "model": m.model, "source": m.source, "generator": m.generator, "file": trace.file,
        "steps": trace.num_steps, "layers": trace.num_layers, "experts": trace.num_experts,
        "top_k": m.top_k, "width": trace.width,
        "requests": int(len(trace.request_bounds()) - 1) if trace.num_steps else 0,
        "phases": phases, "domains": list(m.extra.get("domains", [])),
        "optional_fields": sorted(trace.optional_fields()),
        **{k: v for k, v in overall.items() if k != "layer"},
    }
