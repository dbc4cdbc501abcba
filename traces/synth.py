"""Seeded synthetic routing traces with the structure real MoE routers show, and model presets.

:func:`generate` turns a :class:`SynthConfig` and a seed into a :class:`~traces.trace.Trace`; the same
seed and config give identical arrays (and identical files: ``created_at`` is left empty). All
randomness comes from ``numpy.random.default_rng(seed)``'s seed sequence, spawned into one
independent child stream per purpose (expert rankings, successor lists, request lengths, domains,
topic shifts, per-request sampling seeds, gate weights), so changing one knob does not reshuffle
the randomness of unrelated parts. The per-row sampling runs in a jitted kernel
(:mod:`traces.synth_kernel`) with a plain-Python twin.

:func:`preset` / :func:`generate_preset` give traces shaped like known models, with locality knobs
fitted to real traces (``traces/presets/*.json``, written by :mod:`traces.fit`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from moesim.traces.synth_kernel import sample_rows
from moesim.traces.trace import DECODE, EXPERT_DTYPE, GATE_DTYPE, PREFILL, Trace, TraceMeta, make_trace

SYNTH_VERSION = "1"
PerLayer = float | tuple[float, ...]
_PER_LAYER = ("skew", "reuse")
_LENGTH_DISTS = ("lognormal", "uniform")
_INT_FIELDS = ("num_layers", "num_experts", "top_k", "num_domains", "num_token_types", "num_requests",
               "prompt_len_min", "prompt_len_max", "decode_len_min", "decode_len_max")
# Requests whose [L, E] popularity tables are built at once (bounds memory for 1e6-step traces).
_CDF_CHUNK_FLOATS = 1 << 22
_GATE_CHUNK_STEPS = 1 << 15
_STREAMS = ("ranking", "types", "lengths", "domains", "domain_shift", "request_shift", "seeds",
            "gates")


@dataclass(frozen=True)
class SynthConfig:
    """Knobs of the synthetic routing generator.

    Shape
        model, num_layers, num_experts, top_k: the MoE model the trace pretends to come from.

    Expert popularity
        skew: Zipf exponent of each layer's expert popularity (one value, or one per layer): the
            expert of rank ``i`` (0-based) has weight ``(i + 1) ** -skew``; every layer ranks the
            experts by its own random permutation. 0 is uniform.
        num_domains: number of topics (domains); each request belongs to one, drawn uniformly, and
            the step's ``domain`` field and ``meta.extra['domains']`` name it.
        domain_shift: standard deviation of the log-popularity perturbation shared by all requests of
            one domain (per layer and expert); 0 means domains do not change routing.
        request_shift: standard deviation of each request's own log-popularity perturbation (the topic
            shift from one request to the next); 0 means every request of a domain routes alike.

    Locality
        reuse: probability that a token keeps each expert the previous token of the same request
            chose at the same layer (one value, or one per layer); kept experts come first in the row.
        affinity: inter-layer affinity strength (one value >= 0, or one per layer). Every token has a
            latent type, uniform over ``num_token_types`` and kept at all layers (what a token's
            hidden state does in a real model); at layer l the type multiplies the popularity by
            ``exp(affinity[l] * z[l, type, expert])`` with ``z`` standard normal, drawn once per trace.
            So the experts a token chose at layer l make its type's experts at layer l + 1 more
            likely; the layer l -> l + 1 mutual information grows with the affinity of both layers.
            0 makes layers independent given the request.
        num_token_types: number of latent token types.

    Requests
        num_requests: number of requests; each is a prefill burst (``phase`` PREFILL) followed by its
            decode steps (``phase`` DECODE), with ``position`` counting tokens from 0 over both.
        length_dist: "lognormal" (``round(median * exp(sigma * N(0, 1)))``) or "uniform" (integers in
            ``[min, max]``, median and sigma unused); both clipped to ``[min, max]``.
        prompt_len_median, prompt_len_sigma, prompt_len_min, prompt_len_max: prefill length (0 = no
            prefill steps).
        decode_len_median, decode_len_sigma, decode_len_min, decode_len_max: decode length (at least 1).

    Gate weights
        gate_logit_scale: spread of the chosen experts' router logits: the gap between the i-th and
            (i+1)-th largest logit is exponential with mean ``gate_logit_scale / i`` (the top order
            statistics of an exponential-tailed logit distribution); the weights are the softmax of
            those logits, descending, so slot 0 carries the largest weight. 0 gives equal weights.
        gate_topk_mass: total weight of the chosen experts (1 for routers that renormalise over the
            top-k; below 1 for a softmax over all experts, e.g. OLMoE).
    """

    model: str = "synthetic"
    num_layers: int = 24
    num_experts: int = 32
    top_k: int = 4
    skew: PerLayer = 1.0
    num_domains: int = 4
    domain_shift: float = 0.3
    request_shift: float = 0.5
    reuse: PerLayer = 0.2
    affinity: PerLayer = 2.0
    num_token_types: int = 16
    num_requests: int = 40
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
        for name in ("skew", "reuse", "affinity"):
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
        _check(self)

    def per_layer(self, name: str) -> np.ndarray:
        """A per-layer knob (``skew``, ``reuse``, ``affinity``) as float64 ``[L]``."""
        value = getattr(self, name)
        return (np.full(self.num_layers, value) if isinstance(value, float)
                else np.asarray(value)).astype(np.float64)

    def replace(self, **changes: Any) -> SynthConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def _check(c: SynthConfig) -> None:
    def bad(field: str, why: str) -> ValueError:
        return ValueError(f"SynthConfig.{field}: {why}")

    for name in _INT_FIELDS:
        v = getattr(c, name)
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise bad(name, f"must be an integer, got {v!r}")
    for name in ("num_layers", "num_experts", "top_k", "num_requests", "num_domains", "num_token_types"):
        if getattr(c, name) < 1:
            raise bad(name, f"must be >= 1, got {getattr(c, name)}")
    if c.top_k > c.num_experts:
        raise bad("top_k", f"{c.top_k} exceeds num_experts={c.num_experts}")
    if c.num_experts > np.iinfo(EXPERT_DTYPE).max:
        raise bad("num_experts", f"{c.num_experts} exceeds the int16 id range")
    for name in ("skew", "reuse", "affinity"):
        want = c.num_layers
        value = getattr(c, name)
        values = value if isinstance(value, tuple) else (value,)
        if isinstance(value, tuple) and len(value) != want:
            raise bad(name, f"has {len(value)} per-layer values, expected {want}")
        for i, v in enumerate(values):
            if not np.isfinite(v):
                raise bad(name, f"value {v} at [{i}] is not finite")
            if name in ("skew", "affinity") and v < 0:
                raise bad(name, f"value {v} at [{i}] is negative")
            if name == "reuse" and not 0.0 <= v <= 1.0:
                raise bad(name, f"value {v} at [{i}] is outside [0, 1]")
    for name in ("domain_shift", "request_shift", "gate_logit_scale", "prompt_len_sigma", "decode_len_sigma"):
        v = getattr(c, name)
        if not (np.isfinite(v) and v >= 0):
            raise bad(name, f"must be finite and >= 0, got {v}")
    if not (0.0 < c.gate_topk_mass <= 1.0):
        raise bad("gate_topk_mass", f"must be in (0, 1], got {c.gate_topk_mass}")
    if c.length_dist not in _LENGTH_DISTS:
        raise bad("length_dist", f"{c.length_dist!r} is not one of {_LENGTH_DISTS}")
    for kind, lo_min in (("prompt", 0), ("decode", 1)):
        lo, hi = getattr(c, f"{kind}_len_min"), getattr(c, f"{kind}_len_max")
        if lo < lo_min or hi < lo:
            raise bad(f"{kind}_len_min", f"need {lo_min} <= min <= max, got min={lo}, max={hi}")
        median = getattr(c, f"{kind}_len_median")
        if not (np.isfinite(median) and median >= 0):
            raise bad(f"{kind}_len_median", f"must be finite and >= 0, got {median}")
    if not c.model:
        raise bad("model", "must not be empty")


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


def plan_requests(config: SynthConfig, seed: int) -> RequestPlan:
    """The request lengths and domains :func:`generate` uses for ``(config, seed)``."""
    streams = _streams(seed)
    c = config
    prompt = _lengths(streams["lengths"], c.num_requests, c.length_dist, c.prompt_len_median,
                      c.prompt_len_sigma, c.prompt_len_min, c.prompt_len_max)
    decode = _lengths(streams["lengths"], c.num_requests, c.length_dist, c.decode_len_median,
                      c.decode_len_sigma, c.decode_len_min, c.decode_len_max)
    domain = streams["domains"].integers(0, c.num_domains, size=c.num_requests).astype(np.int64)
    return RequestPlan(prompt, decode, domain)


def _streams(seed: int) -> dict[str, np.random.Generator]:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    children = np.random.default_rng(int(seed)).spawn(len(_STREAMS))
    return dict(zip(_STREAMS, children, strict=True))


def base_log_popularity(config: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    """Zipf log-weights ``[L, E]``: layer l gives rank i the log-weight ``-skew[l] * log(i + 1)``,
    ranks assigned by a random permutation per layer."""
    L, E = config.num_layers, config.num_experts
    rank_logw = -config.per_layer("skew")[:, None] * np.log(np.arange(1, E + 1, dtype=np.float64))[None, :]
    perms = np.argsort(rng.random((L, E)), axis=1)
    out = np.empty((L, E))
    np.put_along_axis(out, perms, rank_logw, axis=1)
    return out


def type_weights(config: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    """``[L, C, E]`` factor of each token type on the popularity: ``exp(affinity[l] * z)``, z ~ N(0, 1)
    (scaled so each row's largest factor is 1)."""
    L, E, C = config.num_layers, config.num_experts, config.num_token_types
    logw = config.per_layer("affinity")[:, None, None] * rng.standard_normal((L, C, E))
    return np.exp(logw - logw.max(axis=-1, keepdims=True))


def request_popularity(base_logw: np.ndarray, dom_shift: np.ndarray, req_rng: np.random.Generator,
                       domains: np.ndarray, request_shift: float) -> np.ndarray:
    """Unnormalised popularity ``[R, L, E]`` of each request: the base Zipf weights times its domain's
    and its own log-normal perturbation (scaled so each row's largest weight is 1)."""
    logw = base_logw[None] + dom_shift[domains]
    if request_shift > 0:
        logw = logw + request_shift * req_rng.standard_normal(logw.shape)
    return np.exp(logw - logw.max(axis=-1, keepdims=True))


Sampler = Callable[..., None]


def generate(config: SynthConfig, *, seed: int) -> Trace:
    """A synthetic trace for ``config``; the same ``(config, seed)`` gives identical arrays."""
    return generate_with_plan(config, plan_requests(config, seed), seed=seed)


def generate_with_plan(config: SynthConfig, plan: RequestPlan, *, seed: int,
                       sampler: Sampler = sample_rows) -> Trace:
    """:func:`generate` with a given request structure (the fitter replays a real trace's lengths and
    domains); ``sampler`` is the jitted kernel or its plain-Python reference."""
    c = config
    streams = _streams(seed)
    L, E, K = c.num_layers, c.num_experts, c.top_k
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
    base_logw = base_log_popularity(c, streams["ranking"])
    type_w = type_weights(c, streams["types"])
    dom_shift = c.domain_shift * streams["domain_shift"].standard_normal((c.num_domains, L, E))
    seeds = streams["seeds"].integers(0, np.iinfo(np.int64).max, size=R, dtype=np.int64).astype(np.uint64)
    steps = prompt + decode
    offsets = np.r_[0, np.cumsum(steps)].astype(np.int64)
    T = int(offsets[-1])
    experts = np.empty((T, L, K), EXPERT_DTYPE)
    reuse = c.per_layer("reuse")
    chunk = max(1, _CDF_CHUNK_FLOATS // (L * E))
    for r0 in range(0, R, chunk):
        r1 = min(R, r0 + chunk)
        pop = request_popularity(base_logw, dom_shift, streams["request_shift"], domain[r0:r1],
                                 c.request_shift)
        sampler(pop, type_w, reuse, seeds[r0:r1], offsets[r0:r1 + 1] - offsets[r0],
                experts[offsets[r0]:offsets[r1]])
    gates = gate_weights(streams["gates"], T, L, K, c.gate_logit_scale, c.gate_topk_mass)
    request_id = np.repeat(np.arange(R, dtype=np.int64), steps)
    position = (np.arange(T, dtype=np.int64) - np.repeat(offsets[:-1], steps)).astype(np.int32)
    phase = np.where(position < np.repeat(prompt, steps), PREFILL, DECODE).astype(np.int8)
    meta = TraceMeta(
        model=c.model, num_layers=L, num_experts=E, top_k=K, source="synthetic",
        generator="traces.synth.generate", generator_version=SYNTH_VERSION,
        notes="synthetic routing (Zipf popularity, topic shifts, token reuse, token types across layers)",
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


# ---- presets ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelShape:
    name: str
    num_layers: int
    num_experts: int
    top_k: int
    fitted_on: str  # the real trace whose knobs the preset uses
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
# The embedded default: gpt-oss-20b-shaped, about 40 requests and 4000 decode tokens, so a
# policy x cache-size sweep over it stays well under a minute.
DEFAULT_PRESET: dict[str, Any] = {"num_requests": 40, "length_dist": "lognormal", "prompt_len_median": 32.0,
                                  "prompt_len_sigma": 0.5, "prompt_len_min": 4, "prompt_len_max": 256,
                                  "decode_len_median": 96.0, "decode_len_sigma": 0.35, "decode_len_min": 16,
                                  "decode_len_max": 256}
PRESET_NAMES = (*MODEL_SHAPES, "default")
PRESET_KNOBS = ("skew", "reuse", "affinity", "num_token_types", "num_domains", "domain_shift", "request_shift",
                "gate_logit_scale", "gate_topk_mass", "decode_len_median", "decode_len_sigma", "decode_len_min",
                "decode_len_max")


def preset_file(name: str) -> str:
    return f"{name}.json"


def load_preset_json(name: str) -> dict[str, Any]:
    """The stored knobs of model preset ``name`` (``traces/presets/<name>.json``)."""
    # Beside this file in the repository and in an installed wheel alike (package data).
    ref = Path(__file__).resolve().parent / "presets" / preset_file(name)
    try:
        return json.loads(ref.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{ref}: preset knobs are missing; regenerate them with "
                                "`python -m moesim.traces.fit --write-presets`") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{ref}: not valid JSON ({exc})") from None


def preset(name: str) -> SynthConfig:
    """The :class:`SynthConfig` of a model preset (see ``PRESET_NAMES``; case-insensitive)."""
    key = name.strip().lower()
    if key not in PRESET_NAMES:
        raise ValueError(f"unknown preset {name!r}; choose one of {list(PRESET_NAMES)}")
    shape = MODEL_SHAPES["gpt-oss-20b" if key == "default" else key]
    data = load_preset_json(shape.name)
    knobs = data.get("knobs")
    if not isinstance(knobs, dict):
        raise ValueError(f"traces/presets/{preset_file(shape.name)}: field 'knobs' is missing")
    missing = [k for k in PRESET_KNOBS if k not in knobs]
    if missing:
        raise ValueError(f"traces/presets/{preset_file(shape.name)}: field 'knobs.{missing[0]}' is missing")
    fields = {k: (tuple(v) if isinstance(v, list) else v) for k, v in knobs.items() if k in PRESET_KNOBS}
    fields.update(PRESET_REQUESTS if key != "default" else DEFAULT_PRESET)
    return SynthConfig(model=key if key == "default" else shape.name, num_layers=shape.num_layers,
                       num_experts=shape.num_experts, top_k=shape.top_k, **fields)


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
