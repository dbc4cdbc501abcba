"""The sampling loop of the synthetic generator: one top-k row per (token, layer), jitted and plain.

The routing model is a *choice model*: at row ``(t, l)`` of request ``r`` every expert ``e`` has a
utility

    u(e) = popularity[l, e] + domain_offset[domain(r), l, e]
           + shift(r, l) + recency[l, bin(gap)]       (0 if e was not used at layer l in this request)
           + recency2[l, bin(gap2)]                   (0 if e was used fewer than twice)
           + stickiness[l, e]                         (only if e was chosen by the previous token)
           + sum over a in row (t, l - 1) of affinity[l, a, e]          (l >= 1)

where ``gap`` counts the tokens since ``e`` was last chosen at layer ``l`` in this request (1 = the
previous token), ``gap2`` those since the use before that, and ``bin`` is :data:`GAP_EDGES`'
half-octave bin. ``shift(r, l) = locality[domain(r), l] + locality_spread[l] * z_r`` (``z_r``
standard normal, one per request) makes whole requests more or less repetitive (greedy decoding
loops in some, wanders in others). The ``K`` experts of the row are
drawn without replacement in proportion to ``exp(u)``, in order (Plackett-Luce): the ``K`` largest of
``u(e) + Gumbel`` (the Gumbel-top-k draw, exact for that law), so slot 0 is the first choice.

So the recency term reproduces how often an expert comes back after a given number of tokens (the
reuse-distance law that LRU curves are made of); the second recency term makes an expert used twice
lately likelier than one used once (bursts: an expert's gaps come in runs, which is what a policy
that predicts each expert's next use from its past gaps exploits); and the affinity term how the
experts of one layer pull those of the next (the inter-layer mutual information that next-layer
prefetching feeds on).

Every request is sampled from its own pseudo-random stream (splitmix64 seeded per request), so the
jitted kernel and the plain-Python reference draw the same numbers in the same order and produce
identical rows.
"""

from __future__ import annotations

import math

import numpy as np
from moesim.kernels.jit import njit

# Lower edges of the gap bins (tokens since the last use): 1, 2, 3, 4, then half-octaves. Bin i holds
# GAP_EDGES[i] <= gap < GAP_EDGES[i + 1]; the last bin is open-ended.
GAP_EDGES = (1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049,
             3073, 4097)
NUM_GAP_BINS = len(GAP_EDGES)
NEVER = -1  # "not used at this layer in this request yet": no recency term


def gap_bin_table() -> np.ndarray:
    """``table[g]`` = the bin of gap ``g`` for ``1 <= g <= GAP_EDGES[-1]`` (larger gaps: the last bin)."""
    table = np.zeros(GAP_EDGES[-1] + 1, np.int64)
    for i, lo in enumerate(GAP_EDGES):
        table[lo:] = i
    return table


_GAP_BIN = gap_bin_table()
_GAP_TOP = GAP_EDGES[-1]

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
_TO_UNIT = 1.0 / 9007199254740992.0  # 2**-53
_HALF = 0.5
_TWO_PI = 2.0 * math.pi

_U_GOLDEN = np.uint64(_GOLDEN)
_U_MIX1 = np.uint64(_MIX1)
_U_MIX2 = np.uint64(_MIX2)
_U30 = np.uint64(30)
_U27 = np.uint64(27)
_U31 = np.uint64(31)
_U11 = np.uint64(11)


# ---- jitted ----------------------------------------------------------------------------------

@njit(inline="always")
def _next(s):
    """splitmix64: the next state and a double in (0, 1) (the output's top 53 bits, centred)."""
    s = s + _U_GOLDEN
    z = (s ^ (s >> _U30)) * _U_MIX1
    z = (z ^ (z >> _U27)) * _U_MIX2
    z = z ^ (z >> _U31)
    return s, (float(z >> _U11) + _HALF) * _TO_UNIT


@njit(inline="always")
def gap_bin(gap, table, top):
    return table[gap] if gap <= top else table[top]


@njit
def sample_rows(popularity, domain_offset, locality, locality_spread, recency, recency2, stickiness, affinity, domains,
                seeds, offsets, out):
    """Fill ``out[offsets[r]:offsets[r + 1]]`` for every request ``r``.

    popularity     float64 [L, E]       base utility of each expert
    domain_offset  float64 [D, L, E]    added for the request's domain
    locality       float64 [D, L]       added to every used expert's recency, by the request's domain
    locality_spread float64 [L]         spread of the request's own addition (times one normal per request)
    recency        float64 [L, B]       utility of an expert last used ``gap`` tokens ago (bin of gap)
    recency2       float64 [L, B]       utility of an expert used before that ``gap2`` tokens ago
    stickiness     float64 [L, E]       extra utility of an expert the previous token chose
    affinity       float64 [L, E, E]    ``affinity[l, a, e]``: pull of expert a at layer l - 1 on e at l
                                        (``affinity[0]`` unused)
    domains        int64   [R]          domain of each request
    seeds          uint64  [R]          stream seed of each request
    offsets        int64   [R + 1]      first row of each request in ``out``
    out            int16   [T, L, K]    the rows (written; slot order = draw order)
    """
    num_layers = out.shape[1]
    k = out.shape[2]
    num_experts = popularity.shape[1]
    table = _GAP_BIN
    top = _GAP_TOP
    last = np.empty((num_layers, num_experts), np.int64)
    last2 = np.empty((num_layers, num_experts), np.int64)
    base = np.empty((num_layers, num_experts))
    shift = np.empty(num_layers)
    key = np.empty(num_experts)
    best = np.empty(k, np.int64)
    for r in range(seeds.shape[0]):
        s = seeds[r]
        d = domains[r]
        s, u1 = _next(s)
        s, u2 = _next(s)
        z = math.sqrt(-2.0 * math.log(u1)) * math.cos(_TWO_PI * u2)
        for layer in range(num_layers):
            shift[layer] = locality[d, layer] + locality_spread[layer] * z
            for e in range(num_experts):
                last[layer, e] = NEVER
                last2[layer, e] = NEVER
                base[layer, e] = popularity[layer, e] + domain_offset[d, layer, e]
        start = offsets[r]
        for t in range(start, offsets[r + 1]):
            tl = t - start
            for layer in range(num_layers):
                for e in range(num_experts):
                    u = base[layer, e]
                    if last[layer, e] != NEVER:
                        u += shift[layer]
                        u += recency[layer, gap_bin(tl - last[layer, e], table, top)]
                        if last[layer, e] == tl - 1:
                            u += stickiness[layer, e]
                        if last2[layer, e] != NEVER:
                            u += recency2[layer, gap_bin(tl - last2[layer, e], table, top)]
                    key[e] = u
                if layer > 0:
                    for j in range(k):
                        a = out[t, layer - 1, j]
                        for e in range(num_experts):
                            key[e] += affinity[layer, a, e]
                for e in range(num_experts):
                    s, x = _next(s)
                    key[e] -= math.log(-math.log(x))
                # The k largest keys, descending (ties: the lower expert id first).
                n = 0
                for e in range(num_experts):
                    v = key[e]
                    if n == k and not v > key[best[k - 1]]:
                        continue
                    j = n if n < k else k - 1
                    while j > 0 and v > key[best[j - 1]]:
                        best[j] = best[j - 1]
                        j -= 1
                    best[j] = e
                    if n < k:
                        n += 1
                for j in range(k):
                    out[t, layer, j] = best[j]
                    last2[layer, best[j]] = last[layer, best[j]]
                    last[layer, best[j]] = tl


# ---- plain-Python reference ------------------------------------------------------------------

class _Stream:
    """The same splitmix64 stream with Python integers."""

    def __init__(self, seed: int) -> None:
        self.state = int(seed) & _MASK

    def uniform(self) -> float:
        self.state = (self.state + _GOLDEN) & _MASK
        z = self.state
        z = ((z ^ (z >> 30)) * _MIX1) & _MASK
        z = ((z ^ (z >> 27)) * _MIX2) & _MASK
        z ^= z >> 31
        return (float(z >> 11) + _HALF) * _TO_UNIT


def _bin_ref(gap: int) -> int:
    return max(i for i, lo in enumerate(GAP_EDGES) if gap >= lo)


def sample_rows_reference(popularity: np.ndarray, domain_offset: np.ndarray, locality: np.ndarray,
                          locality_spread: np.ndarray, recency: np.ndarray, recency2: np.ndarray, stickiness: np.ndarray, affinity: np.ndarray, domains: np.ndarray, seeds: np.ndarray, offsets: np.ndarray,
                          out: np.ndarray) -> None:
    """Plain-Python twin of :func:`sample_rows` (same arguments, same result)."""
    num_layers, k = out.shape[1], out.shape[2]
    num_experts = popularity.shape[1]
    pop, dom, rec, aff = popularity.tolist(), domain_offset.tolist(), recency.tolist(), affinity.tolist()
    stick, rec2 = stickiness.tolist(), recency2.tolist()
    for r in range(len(seeds)):
        stream = _Stream(int(seeds[r]))
        d = int(domains[r])
        u1 = stream.uniform()
        u2 = stream.uniform()
        z = math.sqrt(-2.0 * math.log(u1)) * math.cos(_TWO_PI * u2)
        shift = [float(locality[d, layer]) + float(locality_spread[layer]) * z for layer in range(num_layers)]
        base = [[pop[layer][e] + dom[d][layer][e] for e in range(num_experts)] for layer in range(num_layers)]
        last: list[dict[int, int]] = [{} for _ in range(num_layers)]
        last2: list[dict[int, int]] = [{} for _ in range(num_layers)]
        start = int(offsets[r])
        for t in range(start, int(offsets[r + 1])):
            tl = t - start
            for layer in range(num_layers):
                key = []
                for e in range(num_experts):
                    u = base[layer][e]
                    if e in last[layer]:
                        u += shift[layer]
                        u += rec[layer][_bin_ref(tl - last[layer][e])]
                        if last[layer][e] == tl - 1:
                            u += stick[layer][e]
                        if e in last2[layer]:
                            u += rec2[layer][_bin_ref(tl - last2[layer][e])]
                    key.append(u)
                if layer > 0:
                    for a in out[t, layer - 1].tolist():
                        for e in range(num_experts):
                            key[e] += aff[layer][a][e]
                for e in range(num_experts):
                    key[e] -= math.log(-math.log(stream.uniform()))
                order = sorted(range(num_experts), key=lambda e: (-key[e], e))[:k]
                out[t, layer] = order
                for e in order:
                    if e in last[layer]:
                        last2[layer][e] = last[layer][e]
                    last[layer][e] = tl
