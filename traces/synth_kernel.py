"""The sampling loop of the synthetic generator: one top-k row per (token, layer), jitted and plain.

Every request is sampled independently from its own pseudo-random stream (splitmix64 seeded per
request), so the jitted kernel and the plain-Python reference draw exactly the same numbers in the
same order and produce identical rows. The popularity weights are computed once in numpy by the
caller; the only floating-point work inside (Vose's alias tables, the rare exact draw) is plain
IEEE arithmetic done in the same order by both paths.

Each token first draws its *type* ``c`` (uniform over the ``C`` types; one uniform) and keeps it
at every layer. Row ``(t, l)`` is then filled in this order:

1. *reuse*: each expert of the previous token's row at the same layer (same request) is kept with
   probability ``reuse[l]`` (one uniform per slot, in slot order);
2. *fresh draws* until the row holds ``K`` distinct experts, each in proportion to
   ``popularity[r, l] * type_weight[l, c]`` (the request's popularity times the type's factor; one
   uniform per draw through an alias table). A duplicate is rejected and redrawn, which is exactly
   sampling without replacement in proportion to the weights (the Plackett-Luce order); after
   ``MAX_REJECTIONS`` rejections in a row the slot is drawn directly from the weights restricted to
   the unused experts, the same distribution computed exactly. If every unused expert's weight has
   underflowed to 0 (only with extreme knobs, e.g. ``affinity`` in the hundreds), the slot is drawn
   uniformly from the unused experts instead, so a row never holds an invalid id.

Because a token keeps its type at every layer, its choices at different layers are dependent: the
experts chosen at layer ``l`` make the type's experts at layer ``l + 1`` more likely.
"""

from __future__ import annotations

import numpy as np
from moesim.kernels.jit import njit

MAX_REJECTIONS = 64
_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
_TO_UNIT = 1.0 / 9007199254740992.0  # 2**-53

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
    """splitmix64: the next state and a double in [0, 1) from the output's top 53 bits."""
    s = s + _U_GOLDEN
    z = (s ^ (s >> _U30)) * _U_MIX1
    z = (z ^ (z >> _U27)) * _U_MIX2
    z = z ^ (z >> _U31)
    return s, float(z >> _U11) * _TO_UNIT


@njit(inline="always")
def _build_alias(weights, prob, alias, scaled, small, large):
    """Vose's alias table of ``weights`` (1-D) into ``prob`` / ``alias`` (1-D views).

    A draw then costs one uniform and one comparison; an inverse-CDF search spent most of the
    kernel's time in mispredicted branches."""
    n = weights.shape[0]
    total = 0.0
    for e in range(n):
        total += weights[e]
    if not total > 0.0:
        # Every weight underflowed (only with extreme knobs): draw uniformly.
        for e in range(n):
            prob[e] = 1.0
            alias[e] = e
        return
    ns = 0
    nl = 0
    for e in range(n):
        scaled[e] = weights[e] * n / total
        if scaled[e] < 1.0:
            small[ns] = e
            ns += 1
        else:
            large[nl] = e
            nl += 1
    while ns > 0 and nl > 0:
        ns -= 1
        sm = small[ns]
        nl -= 1
        lg = large[nl]
        prob[sm] = scaled[sm]
        alias[sm] = lg
        scaled[lg] = (scaled[lg] + scaled[sm]) - 1.0
        if scaled[lg] < 1.0:
            small[ns] = lg
            ns += 1
        else:
            large[nl] = lg
            nl += 1
    # Leftovers are 1 up to rounding.
    while nl > 0:
        nl -= 1
        prob[large[nl]] = 1.0
        alias[large[nl]] = large[nl]
    while ns > 0:
        ns -= 1
        prob[small[ns]] = 1.0
        alias[small[ns]] = small[ns]


@njit
def _exact_draw(weights, row, n, u):
    """Draw in proportion to ``weights`` restricted to experts not in ``row[:n]`` (a linear scan)."""
    num_experts = weights.shape[0]
    masked = weights.copy()
    for j in range(n):
        masked[row[j]] = 0.0
    mass = 0.0
    for e in range(num_experts):
        mass += masked[e]
    if not mass > 0.0:
        return _uniform_unused(row, n, num_experts, u)
    x = u * mass
    acc = 0.0
    last = -1
    for e in range(num_experts):
        if masked[e] > 0.0:
            last = e
            acc += masked[e]
            if acc > x:
                return e
    return last


@njit
def _uniform_unused(row, n, num_experts, u):
    """The ``int(u * (E - n))``-th expert (ascending) not in ``row[:n]``: the draw when every unused
    expert's weight underflowed to 0."""
    target = min(int(u * (num_experts - n)), num_experts - n - 1)
    seen = 0
    for e in range(num_experts):
        used = False
        for j in range(n):
            if row[j] == e:
                used = True
        if not used:
            if seen == target:
                return e
            seen += 1
    return -1


@njit
def sample_rows(popularity, type_weight, reuse, seeds, offsets, out):
    """Fill ``out[offsets[r]:offsets[r + 1]]`` for every request ``r`` of the chunk.

    popularity   float64 [R, L, E]  unnormalised, positive popularity of request r at layer l
    type_weight  float64 [L, C, E]  positive factor of token type c on that popularity at layer l
    reuse        float64 [L]        keep probability of each of the previous token's experts
    seeds        uint64  [R]        stream seed of each request
    offsets      int64   [R + 1]    first row of each request in ``out``
    out          int16   [T, L, K]  the rows (written)
    """
    num_req = seeds.shape[0]
    num_layers = out.shape[1]
    k = out.shape[2]
    num_types = type_weight.shape[1]
    num_experts = popularity.shape[2]
    row = np.zeros(k, np.int64)
    weights = np.zeros(num_experts)
    scaled = np.zeros(num_experts)
    small = np.zeros(num_experts, np.int64)
    large = np.zeros(num_experts, np.int64)
    prob = np.zeros((num_layers, num_types, num_experts))
    alias = np.zeros((num_layers, num_types, num_experts), np.int64)
    # Tables are built on first use in each request: a short request touches few types.
    built = np.full((num_layers, num_types), -1, np.int64)
    for r in range(num_req):
        s = seeds[r]
        for t in range(offsets[r], offsets[r + 1]):
            first = t == offsets[r]
            s, u = _next(s)
            c = min(int(u * num_types), num_types - 1)
            for layer in range(num_layers):
                n = 0
                if not first:
                    keep = reuse[layer]
                    for j in range(k):
                        s, u = _next(s)
                        if u < keep:
                            row[n] = out[t - 1, layer, j]
                            n += 1
                if n < k and built[layer, c] != r:
                    for e in range(num_experts):
                        weights[e] = popularity[r, layer, e] * type_weight[layer, c, e]
                    _build_alias(weights, prob[layer, c], alias[layer, c], scaled, small, large)
                    built[layer, c] = r
                while n < k:
                    e = -1
                    tries = 0
                    while True:
                        s, u = _next(s)
                        if tries >= MAX_REJECTIONS:
                            for j in range(num_experts):
                                weights[j] = popularity[r, layer, j] * type_weight[layer, c, j]
                            e = _exact_draw(weights, row, n, u)
                            break
                        x = u * num_experts
                        i = min(int(x), num_experts - 1)
                        e = i if x - i < prob[layer, c, i] else alias[layer, c, i]
                        dup = False
                        for j in range(n):
                            if row[j] == e:
                                dup = True
                        if not dup:
                            break
                        tries += 1
                    row[n] = e
                    n += 1
                for j in range(k):
                    out[t, layer, j] = row[j]


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
        return float(z >> 11) * _TO_UNIT


def _alias_ref(weights: list[float]) -> tuple[list[float], list[int]]:
    """Vose's alias table, the same operations in the same order as the kernel's."""
    n = len(weights)
    total = 0.0
    for w in weights:
        total += w
    if not total > 0.0:
        return [1.0] * n, list(range(n))
    scaled = [w * n / total for w in weights]
    prob = [0.0] * n
    alias = [0] * n
    small = [e for e in range(n) if scaled[e] < 1.0]
    large = [e for e in range(n) if not scaled[e] < 1.0]
    while small and large:
        sm = small.pop()
        lg = large.pop()
        prob[sm] = scaled[sm]
        alias[sm] = lg
        scaled[lg] = (scaled[lg] + scaled[sm]) - 1.0
        (small if scaled[lg] < 1.0 else large).append(lg)
    for e in large[::-1] + small[::-1]:
        prob[e] = 1.0
        alias[e] = e
    return prob, alias


def _exact_draw_ref(weights: list[float], row: list[int], u: float) -> int:
    masked = list(weights)
    for e in row:
        masked[e] = 0.0
    mass = 0.0
    for w in masked:
        mass += w
    if not mass > 0.0:
        unused = [e for e in range(len(weights)) if e not in row]
        return unused[min(int(u * len(unused)), len(unused) - 1)]
    x = u * mass
    acc = 0.0
    last = -1
    for e, w in enumerate(masked):
        if w > 0.0:
            last = e
            acc += w
            if acc > x:
                return e
    return last


def sample_rows_reference(popularity: np.ndarray, type_weight: np.ndarray, reuse: np.ndarray,
                          seeds: np.ndarray, offsets: np.ndarray, out: np.ndarray) -> None:
    """Plain-Python twin of :func:`sample_rows` (same arguments, same result)."""
    num_layers, k = out.shape[1], out.shape[2]
    num_types, num_experts = type_weight.shape[1], popularity.shape[2]
    type_w = type_weight.tolist()
    for r in range(len(seeds)):
        stream = _Stream(int(seeds[r]))
        pop = popularity[r].tolist()
        weights = [[[p * q for p, q in zip(pop[layer], type_w[layer][c], strict=True)]
                    for c in range(num_types)] for layer in range(num_layers)]
        tables = [[_alias_ref(weights[layer][c]) for c in range(num_types)] for layer in range(num_layers)]
        for t in range(int(offsets[r]), int(offsets[r + 1])):
            first = t == int(offsets[r])
            c = min(int(stream.uniform() * num_types), num_types - 1)
            for layer in range(num_layers):
                row: list[int] = []
                if not first:
                    for j in range(k):
                        if stream.uniform() < reuse[layer]:
                            row.append(int(out[t - 1, layer, j]))
                prob, alias = tables[layer][c]
                while len(row) < k:
                    tries = 0
                    while True:
                        u = stream.uniform()
                        if tries >= MAX_REJECTIONS:
                            e = _exact_draw_ref(weights[layer][c], row, u)
                            break
                        x = u * num_experts
                        i = min(int(x), num_experts - 1)
                        e = i if x - i < prob[i] else alias[i]
                        if e not in row:
                            break
                        tries += 1
                    row.append(e)
                out[t, layer] = row
