"""The routing statistics the fitter matches and reports (per layer unless said otherwise).

* ``entropy``        entropy of the expert popularity (share of accesses), divided by ``log E``;
* ``top_share``      share of accesses that go to the ``top_k`` most popular experts;
* ``reuse``          step-to-step reuse rate: ``|S(t) ∩ S(t-1)| / |S(t)|`` over consecutive steps of
                     the same request (S = the experts of one row);
* ``far_overlap``    the same overlap at lags 16 and 32 inside a request (what persists after
                     short-term reuse has faded: the request's topic);
* ``cross_overlap``  overlap between steps of *different* requests (step t against step t + T/2);
* ``domain_overlap`` overlap between steps of different requests of the *same* domain (None when the
                     trace has fewer than two requests in any domain);
* ``mi``             mutual information (nats) between an expert chosen at layer l and one chosen at
                     layer l + 1 by the same token (the pair distribution over all K x K pairs);
                     ``L - 1`` values;
* ``gate_top1``      mean share of the largest gate weight in its row's total; ``gate_mass`` mean row
                     total (scalars; None without gate weights).

Rows are handled as bit masks over experts, so the overlaps are popcounts and cost O(T L E / 64).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from moesim.traces.trace import PAD, Trace

FAR_LAGS = (16, 32)
_MI_CHUNK_STEPS = 1 << 12


def row_masks(experts: np.ndarray, num_experts: int) -> np.ndarray:
    """``[T, L, W]`` uint64 bit masks (``W = ceil(E / 64)``) of the experts in each row; pads ignored."""
    e = np.asarray(experts).astype(np.int64)
    T, L, K = e.shape
    words = (num_experts + 63) // 64
    masks = np.zeros((T, L, words), np.uint64)
    valid = e != PAD
    word = np.where(valid, e >> 6, -1)
    bit = np.left_shift(np.uint64(1), (np.where(valid, e, 0) & 63).astype(np.uint64))
    for w in range(words):
        for j in range(K):
            masks[..., w] |= np.where(word[..., j] == w, bit[..., j], np.uint64(0))
    return masks


def _popcount(x: np.ndarray) -> np.ndarray:
    return np.bitwise_count(x).sum(axis=-1, dtype=np.int64)


def pair_overlap(masks: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per layer ``sum |S(a) ∩ S(b)| / sum |S(b)|`` over the step pairs ``(a[i], b[i])``; NaN if none."""
    if len(a) == 0:
        return np.full(masks.shape[1], np.nan)
    inter = _popcount(masks[a] & masks[b]).sum(axis=0)
    size = _popcount(masks[b]).sum(axis=0)
    return inter / np.maximum(size, 1)


def _request_ids(trace: Trace) -> np.ndarray:
    if trace.request_id is None:
        return np.zeros(trace.num_steps, np.int64)
    return np.asarray(trace.request_id, np.int64)


def lag_pairs(request_id: np.ndarray, lag: int) -> tuple[np.ndarray, np.ndarray]:
    """Step pairs ``(t - lag, t)`` that lie in the same request."""
    if lag >= len(request_id):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    t = np.arange(lag, len(request_id))
    keep = request_id[t] == request_id[t - lag]
    return t[keep] - lag, t[keep]


def cross_pairs(request_id: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Step ``t`` against ``(t + T // 2) mod T``, kept when the requests differ (deterministic)."""
    T = len(request_id)
    if T < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    a = np.arange(T)
    b = (a + T // 2) % T
    keep = request_id[a] != request_id[b]
    return a[keep], b[keep]


def domain_pairs(request_id: np.ndarray, domain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`cross_pairs` but within each domain's steps."""
    out_a, out_b = [], []
    for d in np.unique(domain):
        idx = np.flatnonzero(domain == d)
        a, b = cross_pairs(request_id[idx])
        out_a.append(idx[a])
        out_b.append(idx[b])
    if not out_a:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(out_a), np.concatenate(out_b)


def popularity(trace: Trace) -> np.ndarray:
    """Access counts ``[L, E]``."""
    e = np.asarray(trace.experts).astype(np.int64)
    L, E = trace.num_layers, trace.num_experts
    keys = (np.arange(L)[None, :, None] * E + e)[e != PAD]
    return np.bincount(keys, minlength=L * E).reshape(L, E)


def normalised_entropy(counts: np.ndarray) -> np.ndarray:
    """Entropy of each row's shares divided by ``log(row length)``."""
    p = counts / np.maximum(counts.sum(axis=-1, keepdims=True), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=-1)
    return h / np.log(counts.shape[-1]) if counts.shape[-1] > 1 else np.zeros(counts.shape[0])


def top_share(counts: np.ndarray, n: int) -> np.ndarray:
    srt = -np.sort(-counts, axis=-1)
    return srt[..., :n].sum(axis=-1) / np.maximum(counts.sum(axis=-1), 1)


def interlayer_mi(trace: Trace) -> np.ndarray:
    """``[L - 1]`` mutual information (nats) of the (layer l expert, layer l + 1 expert) pair law."""
    e = np.asarray(trace.experts)
    T, L, _K = e.shape
    E = trace.num_experts
    if L < 2:
        return np.zeros(0)
    joint = np.zeros((L - 1) * E * E, np.int64)
    # key = (l * E + a) * E + b for every pair (a at layer l, b at layer l + 1) of one step; a pad
    # on either side sends the pair to a dropped overflow bin.
    layer_base = (np.arange(L - 1, dtype=np.int64) * E)[None, :, None, None]
    drop = (L - 1) * E * E
    for t0 in range(0, T, _MI_CHUNK_STEPS):
        chunk = e[t0:t0 + _MI_CHUNK_STEPS].astype(np.int64)
        a, b = chunk[:, :-1, :, None], chunk[:, 1:, None, :]
        keys = np.where((a != PAD) & (b != PAD), (layer_base + a) * E + b, drop)
        joint += np.bincount(keys.ravel(), minlength=drop + 1)[:drop]
    out = np.zeros(L - 1)
    for layer, block in enumerate(joint.reshape(L - 1, E, E).astype(np.float64)):
        j = block / max(block.sum(), 1.0)
        pa, pb = j.sum(axis=1, keepdims=True), j.sum(axis=0, keepdims=True)
        nz = j > 0
        out[layer] = float((j[nz] * np.log(j[nz] / (pa @ pb)[nz])).sum())
    return out


def request_lengths(trace: Trace) -> tuple[np.ndarray, np.ndarray]:
    """Prefill and decode steps per request (all steps count as decode without a phase field)."""
    bounds = trace.request_bounds()
    steps = np.diff(bounds)
    if trace.phase is None:
        return np.zeros(len(steps), np.int64), steps.astype(np.int64)
    prefill = np.add.reduceat((np.asarray(trace.phase) == 0).astype(np.int64), bounds[:-1]) \
        if trace.num_steps else np.zeros(0, np.int64)
    return prefill, (steps - prefill).astype(np.int64)


def trace_stats(trace: Trace, *, with_mi: bool = True) -> dict[str, Any]:
    """All the statistics above for one trace."""
    masks = row_masks(trace.experts, trace.num_experts)
    rid = _request_ids(trace)
    counts = popularity(trace)
    far = [pair_overlap(masks, *lag_pairs(rid, lag)) for lag in FAR_LAGS]
    far_valid = [f for f in far if not np.all(np.isnan(f))]
    dom = None
    if trace.domain is not None:
        a, b = domain_pairs(rid, np.asarray(trace.domain))
        dom = pair_overlap(masks, a, b) if len(a) else None
    prefill, decode = request_lengths(trace)
    stats: dict[str, Any] = {
        "entropy": normalised_entropy(counts),
        "top_share": top_share(counts, trace.meta.top_k),
        "reuse": pair_overlap(masks, *lag_pairs(rid, 1)),
        "far_overlap": np.mean(far_valid, axis=0) if far_valid else np.full(trace.num_layers, np.nan),
        "cross_overlap": pair_overlap(masks, *cross_pairs(rid)),
        "domain_overlap": dom,
        "mi": interlayer_mi(trace) if with_mi else None,
        "gate_top1": None,
        "gate_mass": None,
        "num_requests": len(decode),
        "prompt_len_mean": float(prefill.mean()) if len(prefill) else 0.0,
        "decode_len_mean": float(decode.mean()) if len(decode) else 0.0,
    }
    if trace.gate_weights is not None:
        g = np.asarray(trace.gate_weights, np.float64)
        total = g.sum(axis=-1)
        ok = total > 0
        stats["gate_top1"] = float((g.max(axis=-1)[ok] / total[ok]).mean()) if ok.any() else None
        stats["gate_mass"] = float(total[ok].mean()) if ok.any() else None
    return stats
