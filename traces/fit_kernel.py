"""The likelihood of a recorded trace under the generator's choice model, and its gradient (jitted).

The model is the one :mod:`traces.synth_kernel` samples from: row ``(t, l)`` draws its experts in
order, without replacement, in proportion to ``exp(u(e))`` (Plackett-Luce), with ``u`` built from the
popularity, the request's domain offset, the recency bin of the expert's last use at this layer in
this request, and the affinity of the previous layer's experts of the same token. Conditioned on the
recorded history, that likelihood is a conditional logit: convex in the parameters, so
:func:`traces.fit` maximises it with L-BFGS and finds the one optimum. Rows are read in their
recorded order (slot 0 = the router's first choice); pads (``-1``) are skipped.
"""

from __future__ import annotations

import math

import numpy as np
from moesim.kernels.jit import njit
from moesim.traces.synth_kernel import _GAP_BIN, _GAP_TOP, NEVER, gap_bin

# Below this share of the previous normaliser, the remaining mass is summed afresh rather than by
# subtraction (which would lose the digits of a row whose first choices hold nearly all the mass).
_RESUM = 1e-6


@njit
def nll_and_grad(experts, offsets, domains, popularity, domain_offset, locality, recency, recency2, stickiness,
                 affinity, g_pop, g_dom, g_loc, g_rec, g_rec2, g_stick, g_aff, rec_count):
    """Negative log-likelihood of ``experts`` summed over rows; adds its gradient into ``g_*`` (which
    the caller zeroes) and, into ``rec_count[l, b]``, how many candidate experts sat in recency bin
    ``b`` (the data behind each recency parameter). Arguments as in :func:`traces.synth_kernel.sample_rows`
    (``experts`` [T, L, K] int16 read, not written); the per-request part of the
    locality (a random effect) is left to the calibration."""
    num_layers = experts.shape[1]
    k = experts.shape[2]
    num_experts = popularity.shape[1]
    table = _GAP_BIN
    top = _GAP_TOP
    last = np.empty((num_layers, num_experts), np.int64)
    last2 = np.empty((num_layers, num_experts), np.int64)
    u = np.empty(num_experts)
    w = np.empty(num_experts)
    grad = np.empty(num_experts)
    taken = np.zeros(num_experts, np.bool_)
    bins = np.empty(num_experts, np.int64)
    bins2 = np.empty(num_experts, np.int64)
    total = 0.0
    for r in range(offsets.shape[0] - 1):
        d = domains[r]
        last[:] = NEVER
        last2[:] = NEVER
        start = offsets[r]
        for t in range(start, offsets[r + 1]):
            tl = t - start
            for layer in range(num_layers):
                for e in range(num_experts):
                    v = popularity[layer, e] + domain_offset[d, layer, e]
                    b2 = -1
                    if last2[layer, e] != NEVER:
                        b2 = gap_bin(tl - last2[layer, e], table, top)
                        v += recency2[layer, b2]
                    bins2[e] = b2
                    b = -1
                    if last[layer, e] != NEVER:
                        b = gap_bin(tl - last[layer, e], table, top)
                        v += locality[d, layer]
                        v += recency[layer, b]
                        if last[layer, e] == tl - 1:
                            v += stickiness[layer, e]
                    bins[e] = b
                    u[e] = v
                if layer > 0:
                    for j in range(k):
                        a = experts[t, layer - 1, j]
                        if a >= 0:
                            for e in range(num_experts):
                                u[e] += affinity[layer, a, e]
                m = u[0]
                for e in range(1, num_experts):
                    m = max(m, u[e])
                z = 0.0
                for e in range(num_experts):
                    w[e] = math.exp(u[e] - m)
                    z += w[e]
                    grad[e] = 0.0
                    taken[e] = False
                # Plackett-Luce over the recorded order; c = sum of 1 / Z_i over the draws so far.
                c = 0.0
                for j in range(k):
                    e = experts[t, layer, j]
                    if e < 0:
                        continue
                    c += 1.0 / z
                    total -= u[e] - m - math.log(z)
                    grad[e] = w[e] * c - 1.0
                    taken[e] = True
                    z_next = z - w[e]
                    if z_next < _RESUM * z:
                        z_next = 0.0
                        for f in range(num_experts):
                            if not taken[f]:
                                z_next += w[f]
                    z = z_next
                for e in range(num_experts):
                    if not taken[e]:
                        grad[e] = w[e] * c
                    g_pop[layer, e] += grad[e]
                    g_dom[d, layer, e] += grad[e]
                    if bins[e] >= 0:
                        g_loc[d, layer] += grad[e]
                        g_rec[layer, bins[e]] += grad[e]
                        rec_count[layer, bins[e]] += 1
                        if last[layer, e] == tl - 1:
                            g_stick[layer, e] += grad[e]
                    if bins2[e] >= 0:
                        g_rec2[layer, bins2[e]] += grad[e]
                if layer > 0:
                    for j in range(k):
                        a = experts[t, layer - 1, j]
                        if a >= 0:
                            for e in range(num_experts):
                                g_aff[layer, a, e] += grad[e]
                for j in range(k):
                    e = experts[t, layer, j]
                    if e >= 0:
                        last2[layer, e] = last[layer, e]
                        last[layer, e] = tl
    return total


def nll_reference(experts: np.ndarray, offsets: np.ndarray, domains: np.ndarray, popularity: np.ndarray,
                  domain_offset: np.ndarray, locality: np.ndarray, recency: np.ndarray, recency2: np.ndarray, stickiness: np.ndarray,
                  affinity: np.ndarray) -> float:
    """Plain-Python negative log-likelihood (the same sum, written out; no gradient)."""
    from moesim.traces.synth_kernel import _bin_ref

    num_layers = experts.shape[1]
    num_experts = popularity.shape[1]
    total = 0.0
    for r in range(len(offsets) - 1):
        d = int(domains[r])
        last: list[dict[int, int]] = [{} for _ in range(num_layers)]
        last2: list[dict[int, int]] = [{} for _ in range(num_layers)]
        for t in range(int(offsets[r]), int(offsets[r + 1])):
            tl = t - int(offsets[r])
            for layer in range(num_layers):
                u = []
                for e in range(num_experts):
                    v = float(popularity[layer, e] + domain_offset[d, layer, e])
                    if e in last[layer]:
                        v += float(locality[d, layer])
                        v += float(recency[layer, _bin_ref(tl - last[layer][e])])
                        if last[layer][e] == tl - 1:
                            v += float(stickiness[layer, e])
                    if e in last2[layer]:
                        v += float(recency2[layer, _bin_ref(tl - last2[layer][e])])
                    if layer > 0:
                        v += sum(float(affinity[layer, a, e]) for a in experts[t, layer - 1] if a >= 0)
                    u.append(v)
                left = set(range(num_experts))
                for e in (int(x) for x in experts[t, layer] if x >= 0):
                    total -= u[e] - math.log(sum(math.exp(u[f]) for f in left))
                    left.discard(e)
                    if e in last[layer]:
                        last2[layer][e] = last[layer][e]
                    last[layer][e] = tl
    return total


@njit
def routing_moments(experts, offsets, domains, gap_count, gap2_count, pop_count, stick_count, pair_count,
                    reuse_count, first_count):
    """Add into the counts what the calibration matches (pads skipped):

    gap_count    [L, B + 1]   chosen experts by recency bin of their gap; column B: first use in the request
    gap2_count   [L, B + 1]   the same for the gap since the use before the last; column B: fewer than 2 uses
    pop_count    [D, L, E]    chosen experts by the request's domain
    stick_count  [L, E]       chosen experts the previous token also chose (gap 1)
    pair_count   [L, E, E]    ``[l, a, e]``: a chosen at layer l - 1 and e at layer l by the same token
    reuse_count  [D, L]       chosen experts the request had used before, by the request's domain
    first_count  [R, L]       first uses (distinct experts) of each request at each layer
    """
    num_layers = experts.shape[1]
    k = experts.shape[2]
    num_experts = pop_count.shape[2]
    never = gap_count.shape[1] - 1
    table = _GAP_BIN
    top = _GAP_TOP
    last = np.empty((num_layers, num_experts), np.int64)
    last2 = np.empty((num_layers, num_experts), np.int64)
    for r in range(offsets.shape[0] - 1):
        d = domains[r]
        last[:] = NEVER
        last2[:] = NEVER
        start = offsets[r]
        for t in range(start, offsets[r + 1]):
            tl = t - start
            for layer in range(num_layers):
                for j in range(k):
                    e = experts[t, layer, j]
                    if e < 0:
                        continue
                    if last[layer, e] == NEVER:
                        gap_count[layer, never] += 1
                        first_count[r, layer] += 1
                    else:
                        gap_count[layer, gap_bin(tl - last[layer, e], table, top)] += 1
                        reuse_count[d, layer] += 1
                        if last[layer, e] == tl - 1:
                            stick_count[layer, e] += 1
                    if last2[layer, e] == NEVER:
                        gap2_count[layer, never] += 1
                    else:
                        gap2_count[layer, gap_bin(tl - last2[layer, e], table, top)] += 1
                    pop_count[d, layer, e] += 1
                    if layer > 0:
                        for i in range(k):
                            a = experts[t, layer - 1, i]
                            if a >= 0:
                                pair_count[layer, a, e] += 1
                for j in range(k):
                    e = experts[t, layer, j]
                    if e >= 0:
                        last2[layer, e] = last[layer, e]
                        last[layer, e] = tl
