"""Seeded synthetic routing traces that behave like recorded ones, and the model presets.

:func:`generate` turns a :class:`SynthConfig` and a seed into a :class:`~traces.trace.Trace`; the same
seed and config give identical arrays (and identical files: ``created_at`` is left empty).

Routing follows the choice model of :mod:`traces.synth_kernel`: every row draws its experts in
proportion to ``exp(utility)``, the utility adding the expert's popularity, its request's domain
offset, recency terms for experts the request used a given number of tokens ago (by the last use
and the one before it, with a per-expert extra for the previous token's experts) and the pull of
the previous layer's experts
(affinity). Those six arrays (:class:`RoutingArrays`) are either *fitted* to a recorded trace by
:mod:`traces.fit`, which reproduces its cache hit rates and next-layer predictability, or drawn
from a few scalar knobs (``skew``, ``reuse``, ...) seeded by ``model_seed``.

Randomness: ``numpy.random.default_rng(seed)``'s seed sequence is spawned into one child stream per
purpose (request lengths, domains, per-request sampling seeds, gate weights), so changing one knob
does not reshuffle the randomness of unrelated parts; the model arrays drawn from knobs come from
``model_seed`` alone, so one config is one model whatever the trace seed.

:func:`preset` / :func:`generate_preset` give traces shaped like known models from
``traces/presets/*.json`` (written by :mod:`traces.fit`): fitted arrays for the models with a real
trace, arrays derived from the closest fitted model (:func:`derive_routing`) for the others.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from moesim.traces.synth_kernel import GAP_EDGES, NUM_GAP_BINS, sample_rows
from moesim.traces.trace import DECODE, EXPERT_DTYPE, GATE_DTYPE, PREFILL, Trace, TraceMeta, make_trace

SYNTH_VERSION = "2"
PerLayer = float | tuple[float, ...]
_PER_LAYER = ("skew", "reuse", "reuse_decay", "stickiness_spread", "affinity_spread", "domain_shift")
_NON_NEGATIVE = ("skew", "reuse_decay", "stickiness_spread", "affinity_spread", "domain_shift")
_LENGTH_DISTS = ("lognormal", "uniform")
_DOMAIN_ORDERS = ("blocks", "random")
_INT_FIELDS = ("num_layers", "num_experts", "top_k", "num_domains", "num_requests", "model_seed",
               "prompt_len_min", "prompt_len_max", "decode_len_min", "decode_len_max")
_GATE_CHUNK_STEPS = 1 << 15
_STREAMS = ("lengths", "domains", "seeds", "gates")
_MODEL_STREAMS = ("popularity", "domain_offset", "stickiness", "affinity")
ROUTING_FIELDS = ("popularity", "domain_offset", "locality", "locality_spread", "recency", "recency2", "stickiness",
                  "affinity")


class RoutingArrays:
    """The choice model's arrays for one shape (read-only float64):

    popularity     ``[L, E]``     base utility of each expert
    domain_offset  ``[D, L, E]``  added for a request of domain d
    locality       ``[D, L]``     added to the recency of every expert a request of domain d used before
    locality_spread ``[L]``       times one standard normal per request, added likewise (requests differ
                                  in how repetitive they are)
    recency        ``[L, B]``     added for an expert the request used ``gap`` tokens ago at this layer,
                                  by bin of :data:`traces.synth_kernel.GAP_EDGES`
    recency2       ``[L, B]``     added by the bin of the gap since the use before that (bursts)
    stickiness     ``[L, E]``     added for an expert the previous token chose at this layer
    affinity       ``[L, E, E]``  ``[l, a, e]`` added to e at layer l for each a chosen at layer l - 1
                                  (``affinity[0]`` is zero)

    Compared and hashed by content (:attr:`digest`), and printed as the digest, so a config holding
    one stays cheap to echo and to use as a cache key."""

    __slots__ = ("affinity", "digest", "domain_offset", "locality", "locality_spread", "popularity", "recency",
                 "recency2", "stickiness")

    def __init__(self, popularity: Any, domain_offset: Any, locality: Any, locality_spread: Any, recency: Any,
                 recency2: Any, stickiness: Any, affinity: Any) -> None:
        arrays = {}
        values = (popularity, domain_offset, locality, locality_spread, recency, recency2, stickiness, affinity)
        for name, value in zip(ROUTING_FIELDS, values, strict=True):
            a = np.array(value, np.float64)  # a copy: the caller's array may change later
            if not np.isfinite(a).all():
                raise ValueError(f"RoutingArrays.{name}: not every value is finite")
            a.setflags(write=False)
            arrays[name] = a
        L, E = arrays["popularity"].shape if arrays["popularity"].ndim == 2 else (-1, -1)
        D = arrays["domain_offset"].shape[0] if arrays["domain_offset"].ndim == 3 else -1
        want = {"popularity": (L, E), "domain_offset": (D, L, E), "locality": (D, L), "locality_spread": (L,),
                "recency": (L, NUM_GAP_BINS), "recency2": (L, NUM_GAP_BINS), "stickiness": (L, E),
                "affinity": (L, E, E)}
        for name, shape in want.items():
            if L < 1 or arrays[name].shape != shape:
                raise ValueError(f"RoutingArrays.{name}: shape {arrays[name].shape}, expected {shape} "
                                 f"(from popularity {arrays['popularity'].shape})")
        if arrays["locality_spread"].min() < 0:
            raise ValueError("RoutingArrays.locality_spread: must not be negative")
        if arrays["domain_offset"].shape[0] < 1:
            raise ValueError("RoutingArrays.domain_offset: needs at least one domain")
        h = hashlib.sha1()
        for name in ROUTING_FIELDS:
            h.update(name.encode())
            h.update(np.ascontiguousarray(arrays[name]).tobytes())
        for name, a in arrays.items():
            object.__setattr__(self, name, a)
        object.__setattr__(self, "digest", h.hexdigest()[:16])

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("RoutingArrays is immutable")

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(num_domains, num_layers, num_experts)``."""
        return self.domain_offset.shape  # type: ignore[return-value]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RoutingArrays) and other.digest == self.digest

    def __hash__(self) -> int:
        return hash(self.digest)

    def __repr__(self) -> str:
        D, L, E = self.shape
        return f"RoutingArrays(domains={D}, layers={L}, experts={E}, digest={self.digest})"

    def __deepcopy__(self, memo: dict[int, Any]) -> RoutingArrays:
        return self  # immutable

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled as its arrays (configs travel to worker processes); __init__ checks them again.
        return (RoutingArrays, tuple(getattr(self, n) for n in ROUTING_FIELDS))

    def to_json(self, digits: int = 4) -> dict[str, Any]:
        """Nested lists rounded to ``digits`` decimals (what a preset file stores)."""
        return {name: np.round(getattr(self, name), digits).tolist() for name in ROUTING_FIELDS}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RoutingArrays:
        missing = [n for n in ROUTING_FIELDS if n not in data]
        if missing:
            raise ValueError(f"routing arrays: field {missing[0]!r} is missing")
        return cls(*(data[n] for n in ROUTING_FIELDS))


@dataclass(frozen=True)
class SynthConfig:
    """Knobs of the synthetic routing generator.

    Shape
        model, num_layers, num_experts, top_k: the MoE model the trace pretends to come from.

    Routing
        routing: fitted :class:`RoutingArrays` of this shape (and ``num_domains``); when given, the
            knobs below that draw the arrays are not used.
        skew: Zipf exponent of each layer's popularity (one value or one per layer): the expert of rank
            ``i`` (0-based, a random permutation per layer) has utility ``-skew * log(i + 1)``.
        reuse: utility added to an expert the request chose at this layer on the previous token; it
            falls by ``reuse_decay`` per doubling of the gap (``reuse - reuse_decay * log2(gap)``).
        stickiness_spread: standard deviation of each expert's own extra utility when the previous
            token chose it (some experts stay on for runs of tokens, others rarely repeat).
        affinity_spread: standard deviation of ``affinity[l, a, e]``, the pull of expert ``a`` at
            layer ``l - 1`` on expert ``e`` at layer ``l`` (0: layers independent given the history).
        num_domains: number of topics; ``domain_shift`` is the standard deviation of each domain's
            utility offset per layer and expert.
        model_seed: seeds the arrays drawn from the knobs above.

    Requests
        num_requests: each is a prefill burst (``phase`` PREFILL) then its decode steps (DECODE), with
            ``position`` counting tokens from 0 over both; the recency history runs across both.
        domain_order: "blocks" (request r of R has domain ``r * D // R``: requests of one topic in a
            row, as in a recording per data set) or "random" (uniform draws).
        length_dist: "lognormal" (``round(median * exp(sigma * N(0, 1)))``) or "uniform" (integers in
            ``[min, max]``); both clipped to ``[min, max]``.
        prompt_len_*: prefill length (0 = no prefill steps); decode_len_*: decode length (>= 1).

    Gate weights
        gate_logit_scale: spread of the chosen experts' router logits: the gap between the i-th and
            (i+1)-th largest logit is exponential with mean ``gate_logit_scale / i``; the weights are
            the softmax of those logits, descending. 0 gives equal weights.
        gate_topk_mass: total weight of the chosen experts (1 for routers that renormalise over the
            top-k; below 1 for a softmax over all experts, e.g. OLMoE).
    """

    model: str = "synthetic"
    num_layers: int = 24
    num_experts: int = 32
    top_k: int = 4
    routing: RoutingArrays | None = None
    skew: PerLayer = 1.0
    reuse: PerLayer = 2.0
    reuse_decay: PerLayer = 0.4
    stickiness_spread: PerLayer = 0.0
    affinity_spread: PerLayer = 0.5
    num_domains: int = 4
    domain_shift: PerLayer = 0.3
    model_seed: int = 0
    num_requests: int = 40
    domain_order: str = "blocks"
    length_dist: str = "lognormal"
    prompt_len_median: float = 64.0
    prompt_len_sigma: float = 0.5
    prompt_len_min: int = 0
    prompt_len_max: int = 1024
    decode_len_median: float = 128.0
    decode_len_sigma: float = 0.5
    decode_len_min: int = 1
    decode_len_max: int = 2048
    gate_logit_scale: float = 1.0
    gate_topk_mass: float = 1.0

    def __post_init__(self) -> None:
        for name in _PER_LAYER:
            value = getattr(self, name)
            if isinstance(value, (list, tuple, np.ndarray)):
                object.__setattr__(self, name, tuple(float(v) for v in value))
            else:
                object.__setattr__(self, name, float(value))
        for name in _INT_FIELDS:
            # Integral floats (a YAML ``16.0``, a JSON round trip) are taken as the integer.
            value = getattr(self, name)
            if isinstance(value, (float, np.floating)) and float(value).is_integer():
                object.__setattr__(self, name, int(value))
        if isinstance(self.routing, Mapping):
            object.__setattr__(self, "routing", RoutingArrays.from_json(self.routing))
        _check(self)

    def per_layer(self, name: str) -> np.ndarray:
        """A per-layer knob (``skew``, ``reuse``, ...) as float64 ``[L]``."""
        value = getattr(self, name)
        return (np.full(self.num_layers, value) if isinstance(value, float)
                else np.asarray(value)).astype(np.float64)

    def replace(self, **changes: Any) -> SynthConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The knobs as plain values; fitted arrays are named by their digest (a trace's metadata
        echoes the config, and the arrays themselves live in the preset file)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["routing"] = None if self.routing is None else {"digest": self.routing.digest}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def _check(c: SynthConfig) -> None:
    def bad(field: str, why: str) -> ValueError:
        return ValueError(f"SynthConfig.{field}: {why}")

    for name in _INT_FIELDS:
        v = getattr(c, name)
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise bad(name, f"must be an integer, got {v!r}")
    for name in ("num_layers", "num_experts", "top_k", "num_requests", "num_domains"):
        if getattr(c, name) < 1:
            raise bad(name, f"must be >= 1, got {getattr(c, name)}")
    if c.model_seed < 0:
        raise bad("model_seed", f"must be >= 0, got {c.model_seed}")
    if c.top_k > c.num_experts:
        raise bad("top_k", f"{c.top_k} exceeds num_experts={c.num_experts}")
    if c.num_experts > np.iinfo(EXPERT_DTYPE).max:
        raise bad("num_experts", f"{c.num_experts} exceeds the int16 id range")
    for name in _PER_LAYER:
        value = getattr(c, name)
        values = value if isinstance(value, tuple) else (value,)
        if isinstance(value, tuple) and len(value) != c.num_layers:
            raise bad(name, f"has {len(value)} per-layer values, expected {c.num_layers}")
        for i, v in enumerate(values):
            if not np.isfinite(v):
                raise bad(name, f"value {v} at [{i}] is not finite")
            if name in _NON_NEGATIVE and v < 0:
                raise bad(name, f"value {v} at [{i}] is negative")
    if c.routing is not None:
        if not isinstance(c.routing, RoutingArrays):
            raise bad("routing", f"must be RoutingArrays or None, got {type(c.routing).__name__}")
        want = (c.num_domains, c.num_layers, c.num_experts)
        if c.routing.shape != want:
            raise bad("routing", f"arrays are for (domains, layers, experts) = {c.routing.shape}, the config "
                                 f"is {want}")
    for name in ("gate_logit_scale", "prompt_len_sigma", "decode_len_sigma"):
        v = getattr(c, name)
        if not (np.isfinite(v) and v >= 0):
            raise bad(name, f"must be finite and >= 0, got {v}")
    if not (0.0 < c.gate_topk_mass <= 1.0):
        raise bad("gate_topk_mass", f"must be in (0, 1], got {c.gate_topk_mass}")
    if c.length_dist not in _LENGTH_DISTS:
        raise bad("length_dist", f"{c.length_dist!r} is not one of {_LENGTH_DISTS}")
    if c.domain_order not in _DOMAIN_ORDERS:
        raise bad("domain_order", f"{c.domain_order!r} is not one of {_DOMAIN_ORDERS}")
    for kind, lo_min in (("prompt", 0), ("decode", 1)):
        lo, hi = getattr(c, f"{kind}_len_min"), getattr(c, f"{kind}_len_max")
        if lo < lo_min or hi < lo:
            raise bad(f"{kind}_len_min", f"need {lo_min} <= min <= max, got min={lo}, max={hi}")
        median = getattr(c, f"{kind}_len_median")
        if not (np.isfinite(median) and median >= 0):
            raise bad(f"{kind}_len_median", f"must be finite and >= 0, got {median}")
    if not c.model:
        raise bad("model", "must not be empty")


# ---- the model arrays ------------------------------------------------------------------------

def recency_curve(reuse: np.ndarray, decay: np.ndarray) -> np.ndarray:
    """``[L, B]`` recency utilities ``reuse - decay * log2(gap)`` at each bin's lower edge."""
    return reuse[:, None] - decay[:, None] * np.log2(np.asarray(GAP_EDGES, np.float64))[None, :]


def routing_arrays(config: SynthConfig) -> RoutingArrays:
    """The arrays :func:`generate` samples from: the fitted ones, or those the knobs draw from
    ``model_seed`` (one child stream per array)."""
    if config.routing is not None:
        return config.routing
    c = config
    L, E, D = c.num_layers, c.num_experts, c.num_domains
    rngs = dict(zip(_MODEL_STREAMS, np.random.default_rng(c.model_seed).spawn(len(_MODEL_STREAMS)),
                    strict=True))
    rank_u = -c.per_layer("skew")[:, None] * np.log(np.arange(1, E + 1, dtype=np.float64))[None, :]
    perms = np.argsort(rngs["popularity"].random((L, E)), axis=1)
    popularity = np.empty((L, E))
    np.put_along_axis(popularity, perms, rank_u, axis=1)
    domain_offset = c.per_layer("domain_shift")[None, :, None] * rngs["domain_offset"].standard_normal((D, L, E))
    stickiness = c.per_layer("stickiness_spread")[:, None] * rngs["stickiness"].standard_normal((L, E))
    affinity = c.per_layer("affinity_spread")[:, None, None] * rngs["affinity"].standard_normal((L, E, E))
    affinity[0] = 0.0
    recency = recency_curve(c.per_layer("reuse"), c.per_layer("reuse_decay"))
    return RoutingArrays(popularity, domain_offset, np.zeros((D, L)), np.zeros(L), recency, np.zeros_like(recency),
                         stickiness, affinity)


# ---- generation ------------------------------------------------------------------------------

@dataclass(frozen=True)
class RequestPlan:
    """The request structure of a trace: prefill and decode length and domain of every request."""

    prompt_len: np.ndarray  # int64 [R]
    decode_len: np.ndarray  # int64 [R]
    domain: np.ndarray  # int64 [R]


def _lengths(rng: np.random.Generator, n: int, dist: str, median: float, sigma: float, lo: int,
             hi: int) -> np.ndarray:
    if dist == "uniform":
        return rng.integers(lo, hi + 1, size=n).astype(np.int64)
    draws = rng.standard_normal(n)
    raw = np.rint(median * np.exp(sigma * draws)) if median > 0 else np.zeros(n)
    return np.clip(raw, lo, hi).astype(np.int64)


def _domains(c: SynthConfig, rng: np.random.Generator, n: int) -> np.ndarray:
    if c.domain_order == "blocks":
        return (np.arange(n, dtype=np.int64) * c.num_domains) // n
    return rng.integers(0, c.num_domains, size=n).astype(np.int64)


def plan_requests(config: SynthConfig, seed: int) -> RequestPlan:
    """The request lengths and domains :func:`generate` uses for ``(config, seed)``."""
    streams = _streams(seed)
    c = config
    prompt = _lengths(streams["lengths"], c.num_requests, c.length_dist, c.prompt_len_median,
                      c.prompt_len_sigma, c.prompt_len_min, c.prompt_len_max)
    decode = _lengths(streams["lengths"], c.num_requests, c.length_dist, c.decode_len_median,
                      c.decode_len_sigma, c.decode_len_min, c.decode_len_max)
    return RequestPlan(prompt, decode, _domains(c, streams["domains"], c.num_requests))


def plan_steps(config: SynthConfig, steps: int, seed: int) -> RequestPlan:
    """Requests drawn from the config's length laws until they hold ``steps`` steps; the last one is
    cut short (its decode first, then its prefill) so the total is exactly ``steps``."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    c = config
    mean = max(1.0, (c.prompt_len_median + c.decode_len_median))
    n = max(1, int(steps / mean * 1.2) + 1)
    while True:
        plan = plan_requests(c.replace(num_requests=n), seed)
        total = np.cumsum(plan.prompt_len + plan.decode_len)
        if total[-1] >= steps:
            break
        n *= 2
    r = int(np.searchsorted(total, steps))  # the request that reaches ``steps``
    prompt, decode = plan.prompt_len[:r + 1].copy(), plan.decode_len[:r + 1].copy()
    excess = int(total[r]) - steps
    cut = min(excess, int(decode[r]) - (0 if prompt[r] > 0 else 1))
    decode[r] -= cut
    prompt[r] -= excess - cut
    return RequestPlan(prompt, decode, _domains(c, _streams(seed)["domains"], r + 1))


def _streams(seed: int) -> dict[str, np.random.Generator]:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    children = np.random.default_rng(int(seed)).spawn(len(_STREAMS))
    return dict(zip(_STREAMS, children, strict=True))


Sampler = Callable[..., None]


def generate(config: SynthConfig, *, seed: int) -> Trace:
    """A synthetic trace for ``config``; the same ``(config, seed)`` gives identical arrays."""
    return generate_with_plan(config, plan_requests(config, seed), seed=seed)


def generate_steps(config: SynthConfig, steps: int, *, seed: int) -> Trace:
    """A synthetic trace of exactly ``steps`` steps (whole requests, the last one cut short)."""
    return generate_with_plan(config, plan_steps(config, steps, seed), seed=seed)


def generate_with_plan(config: SynthConfig, plan: RequestPlan, *, seed: int,
                       sampler: Sampler = sample_rows) -> Trace:
    """:func:`generate` with a given request structure (the fitter replays a real trace's lengths and
    domains); ``sampler`` is the jitted kernel or its plain-Python reference."""
    c = config
    streams = _streams(seed)
    L, K = c.num_layers, c.top_k
    prompt, decode, domain = (np.asarray(a, np.int64) for a in (plan.prompt_len, plan.decode_len,
                                                                plan.domain))
    R = len(prompt)
    if not (len(decode) == len(domain) == R) or R == 0:
        raise ValueError(f"request plan: prompt_len, decode_len and domain must have the same non-zero "
                         f"length, got {len(prompt)}, {len(decode)}, {len(domain)}")
    if np.any(prompt < 0) or np.any(prompt + decode < 1):
        first = int(np.flatnonzero((prompt < 0) | (prompt + decode < 1))[0])
        raise ValueError(f"request plan: request {first} has no steps or a negative length")
    if np.any((domain < 0) | (domain >= c.num_domains)):
        first = int(np.flatnonzero((domain < 0) | (domain >= c.num_domains))[0])
        raise ValueError(f"request plan: domain {domain[first]} of request {first} is outside "
                         f"[0, {c.num_domains})")
    arrays = routing_arrays(c)
    seeds = streams["seeds"].integers(0, np.iinfo(np.int64).max, size=R, dtype=np.int64).astype(np.uint64)
    steps = prompt + decode
    offsets = np.r_[0, np.cumsum(steps)].astype(np.int64)
    T = int(offsets[-1])
    experts = np.empty((T, L, K), EXPERT_DTYPE)
    sampler(*(getattr(arrays, n) for n in ROUTING_FIELDS), domain, seeds, offsets, experts)
    gates = gate_weights(streams["gates"], T, L, K, c.gate_logit_scale, c.gate_topk_mass)
    request_id = np.repeat(np.arange(R, dtype=np.int64), steps)
    position = (np.arange(T, dtype=np.int64) - np.repeat(offsets[:-1], steps)).astype(np.int32)
    phase = np.where(position < np.repeat(prompt, steps), PREFILL, DECODE).astype(np.int8)
    meta = TraceMeta(
        model=c.model, num_layers=L, num_experts=c.num_experts, top_k=K, source="synthetic",
        generator="traces.synth.generate", generator_version=SYNTH_VERSION,
        notes="synthetic routing (choice model: popularity, domains, recency, stickiness, inter-layer affinity)",
        extra={"seed": int(seed), "config": c.to_dict(),
               "domains": [f"topic-{d}" for d in range(c.num_domains)]})
    # Valid by construction (distinct in-range ids, finite positive gates; the tests validate every
    # preset), and validating a 1e6-step trace would cost as much as generating it.
    return make_trace(experts, meta, gate_weights=gates, request_id=request_id, position=position,
                      phase=phase, domain=np.repeat(domain, steps).astype(np.int16), validate=False)


def gate_weights(rng: np.random.Generator, T: int, L: int, K: int, scale: float, mass: float) -> np.ndarray:
    """Router weights ``[T, L, K]`` sorted descending, summing to ``mass`` in every row.

    The chosen experts' logits are the top order statistics of an exponential tail (the tail of a
    router's logits over many experts): the gap between the i-th and (i+1)-th largest is exponential
    with mean ``scale / i``. Built directly in descending order, so nothing is sorted."""
    out = np.empty((T, L, K), GATE_DTYPE)
    if K == 1:
        out[:] = mass
        return out
    for t0 in range(0, T, _GATE_CHUNK_STEPS):
        t1 = min(T, t0 + _GATE_CHUNK_STEPS)
        # Slot-major [K - 1, n, L] so every operation runs on contiguous planes (reductions over a
        # short last axis are several times slower).
        gaps = rng.standard_exponential((K - 1, t1 - t0, L), dtype=np.float32)
        logit = np.zeros((t1 - t0, L), np.float32)
        planes = [np.ones((t1 - t0, L), np.float32)]
        total = planes[0].copy()
        for i in range(1, K):
            logit -= gaps[i - 1] * np.float32(scale / i)
            planes.append(np.exp(logit))
            total += planes[-1]
        norm = np.float32(mass) / total
        for i in range(K):
            out[t0:t1, :, i] = planes[i] * norm
    return out


# ---- deriving a model of another shape ---------------------------------------------------------

def derive_routing(source: RoutingArrays, source_top_k: int, num_layers: int, num_experts: int, top_k: int,
                   *, seed: int) -> RoutingArrays:
    """Arrays for a model that has no recording, built from the fitted arrays of another.

    Layer ``l`` of ``num_layers`` takes the source layer at the same relative depth. Its experts are
    the source layer's ranked by popularity and taken at evenly spaced ranks (every second one for
    half as many experts, each one twice for twice as many; a repeated expert's popularity is
    lowered by the log of its copies so the copies together are as popular as the original), so the
    popularity curve, the domain offsets, the recency and stickiness of that layer carry over. The
    affinity of layer ``l`` is the source's pairs at that depth between the experts layers ``l - 1``
    and ``l`` took (exact when those are consecutive source layers), scaled by
    ``source_top_k / top_k`` so the pull of a whole previous row stays the same with fewer or more
    experts per row. Expert ids are then
    shuffled per layer (``seed``), so expert 0 is not always the most popular."""
    _, Ls, Es = source.shape
    rng = np.random.default_rng(seed)
    layer_map = np.floor(np.linspace(0, Ls - 1, num_layers) + 0.5).astype(np.int64) if num_layers > 1 else \
        np.array([Ls // 2], np.int64)
    picks = np.empty((num_layers, num_experts), np.int64)
    for new, old in enumerate(layer_map):
        ranked = np.argsort(-source.popularity[old], kind="stable")
        chosen = ranked[np.floor((np.arange(num_experts) + 0.5) * Es / num_experts).astype(np.int64)]
        picks[new] = chosen[rng.permutation(num_experts)]
    copies = np.stack([np.bincount(p, minlength=Es)[p] for p in picks]).astype(np.float64)
    rows = layer_map[:, None]
    popularity = source.popularity[rows, picks] - np.log(copies)
    domain_offset = source.domain_offset[:, rows, picks]
    stickiness = source.stickiness[rows, picks]
    recency, recency2 = source.recency[layer_map], source.recency2[layer_map]
    locality, spread = source.locality[:, layer_map], source.locality_spread[layer_map]
    affinity = np.zeros((num_layers, num_experts, num_experts))
    scale = source_top_k / top_k
    for new in range(1, num_layers):
        # The source pairs of the layer at this depth (layer 1's when that is the first layer),
        # between the experts the two neighbouring layers took.
        old = max(int(layer_map[new]), 1) if Ls > 1 else 0
        affinity[new] = scale * source.affinity[old][np.ix_(picks[new - 1], picks[new])]
    return RoutingArrays(popularity, domain_offset, locality, spread, recency, recency2, stickiness, affinity)


# ---- presets ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelShape:
    name: str
    num_layers: int
    num_experts: int
    top_k: int
    fitted_on: str  # the real trace whose fit the preset uses
    gate_topk_mass: float | None  # None: the fitted value (routers that do not renormalise)
    note: str = ""


# Shapes from the models' published configs (MoE layers, routed experts, experts per token).
MODEL_SHAPES: dict[str, ModelShape] = {s.name: s for s in (
    ModelShape("gpt-oss-20b", 24, 32, 4, "olmoe-1b-7b", 1.0, "softmax over the top-4"),
    ModelShape("gpt-oss-120b", 36, 128, 4, "olmoe-1b-7b", 1.0, "softmax over the top-4"),
    ModelShape("mixtral-8x7b", 32, 8, 2, "mixtral-8x7b", 1.0, "softmax over the top-2"),
    ModelShape("qwen3-30b-a3b", 48, 128, 8, "olmoe-1b-7b", 1.0, "top-k probabilities renormalised"),
    ModelShape("deepseek-v3", 58, 256, 8, "olmoe-1b-7b", 1.0,
               "routed experts only (plus 1 shared expert, always active, not in the trace); "
               "sigmoid gates renormalised over the top-8"),
    ModelShape("olmoe-1b-7b", 16, 64, 8, "olmoe-1b-7b", None, "softmax over all 64 experts"),
)}
# Request structure of the presets (prompt lengths are not fitted: the real traces hold no prefill).
PRESET_REQUESTS: dict[str, Any] = {"num_requests": 64, "length_dist": "lognormal", "prompt_len_median": 96.0,
                                   "prompt_len_sigma": 0.6, "prompt_len_min": 8, "prompt_len_max": 1024}
# The embedded default: gpt-oss-20b-shaped, short prompts; with the fitted decode lengths
# (OLMoE: 128 tokens) 8 requests make 1,024 decode steps, and a policy x size sweep stays fast.
DEFAULT_PRESET: dict[str, Any] = {"num_requests": 40, "length_dist": "lognormal", "prompt_len_median": 32.0,
                                  "prompt_len_sigma": 0.5, "prompt_len_min": 4, "prompt_len_max": 256}
PRESET_NAMES = (*MODEL_SHAPES, "default")
# Knobs a preset file stores beside its routing arrays (request structure and gates).
PRESET_KNOBS = ("num_domains", "domain_order", "gate_logit_scale", "gate_topk_mass", "decode_len_median",
                "decode_len_sigma", "decode_len_min", "decode_len_max")


def preset_file(name: str) -> str:
    return f"{name}.json"


def _presets_dir() -> Path:
    # Beside this file in the repository and in an installed wheel alike (package data).
    return Path(__file__).resolve().parent / "presets"


def load_preset_json(name: str) -> dict[str, Any]:
    """The stored preset ``name`` (``traces/presets/<name>.json``)."""
    return read_preset_file(_presets_dir() / preset_file(name))


def read_preset_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    ref = Path(path)
    try:
        return json.loads(ref.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{ref}: preset file is missing; regenerate the presets with "
                                "`python -m moesim.traces.fit --write-presets`") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{ref}: not valid JSON ({exc})") from None


def config_from_preset(data: Mapping[str, Any], *, where: str = "preset",
                       source: Callable[[str], Mapping[str, Any]] | None = None) -> SynthConfig:
    """The :class:`SynthConfig` a preset document describes: its shape, knobs and routing arrays
    (its own ``routing``, or derived from the preset named by ``derived_from``)."""
    def field(name: str) -> Any:
        if name not in data:
            raise ValueError(f"{where}: field {name!r} is missing")
        return data[name]

    shape, knobs = field("shape"), field("knobs")
    if not isinstance(knobs, Mapping) or not isinstance(shape, Mapping):
        raise ValueError(f"{where}: fields 'shape' and 'knobs' must be objects")
    missing = [k for k in PRESET_KNOBS if k not in knobs]
    if missing:
        raise ValueError(f"{where}: field 'knobs.{missing[0]}' is missing")
    try:
        L, E, K = int(shape["num_layers"]), int(shape["num_experts"]), int(shape["top_k"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{where}: field 'shape' needs integer num_layers, num_experts, top_k") from None
    if data.get("routing") is not None:
        routing = RoutingArrays.from_json(data["routing"])
    elif "derived_from" in data:
        origin = (source or load_preset_json)(str(data["derived_from"]))
        base = RoutingArrays.from_json(origin["routing"])
        routing = derive_routing(base, int(origin["shape"]["top_k"]), L, E, K, seed=int(field("derive_seed")))
    else:
        raise ValueError(f"{where}: needs a 'routing' or a 'derived_from' field")
    fields = {k: (tuple(v) if isinstance(v, list) else v) for k, v in knobs.items() if k in PRESET_KNOBS}
    return SynthConfig(model=str(data.get("model", data.get("preset", "synthetic"))), num_layers=L,
                       num_experts=E, top_k=K, routing=routing, **fields)


@functools.lru_cache(maxsize=16)
def _stored_preset(name: str) -> SynthConfig:
    data = load_preset_json(name)
    return config_from_preset(data, where=f"traces/presets/{preset_file(name)}")


def preset(name: str) -> SynthConfig:
    """The :class:`SynthConfig` of a model preset (see ``PRESET_NAMES``; case-insensitive)."""
    key = name.strip().lower()
    if key not in PRESET_NAMES:
        raise ValueError(f"unknown preset {name!r}; choose one of {list(PRESET_NAMES)}")
    shape = MODEL_SHAPES["gpt-oss-20b" if key == "default" else key]
    config = _stored_preset(shape.name)
    return config.replace(model=key if key == "default" else shape.name,
                          **(PRESET_REQUESTS if key != "default" else DEFAULT_PRESET))


def generate_preset(name: str, *, seed: int = 0, num_requests: int | None = None, **overrides: Any) -> Trace:
    """A trace from :func:`preset` with optional knob overrides (e.g. ``decode_len_median=32``)."""
    config = preset(name)
    if num_requests is not None:
        overrides["num_requests"] = num_requests
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(SynthConfig)})
    if unknown:
        raise ValueError(f"generate_preset: unknown knob {unknown[0]!r}")
    return generate(config.replace(**overrides), seed=seed)


def resample_layers(values: Sequence[float], num_layers: int) -> tuple[float, ...]:
    """Per-layer values mapped to another depth by linear interpolation over relative depth."""
    src = np.asarray(values, np.float64)
    if len(src) == num_layers:
        return tuple(float(v) for v in src)
    if len(src) == 1 or num_layers == 1:
        return tuple(float(src.mean()) for _ in range(num_layers))
    x_src = np.linspace(0.0, 1.0, len(src))
    x_dst = np.linspace(0.0, 1.0, num_layers)
    return tuple(float(v) for v in np.interp(x_dst, x_src, src))
