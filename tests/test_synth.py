"""The synthetic trace generator: determinism, the model presets, the jitted row sampler against its
plain-Python reference, and each knob checked against the statistic it is documented to drive."""

from __future__ import annotations

import itertools
import math

import moesim.traces.synth as synth
import moesim.traces.synth_kernel as synth_kernel
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from moesim.traces import fitstats, stats
from moesim.traces.synth import (
    PRESET_NAMES,
    RequestPlan,
    SynthConfig,
    gate_weights,
    generate,
    generate_preset,
    generate_with_plan,
    plan_requests,
    preset,
    resample_layers,
)
from moesim.traces.synth_kernel import sample_rows_reference
from moesim.traces.trace import DECODE, PREFILL, Trace, validate_trace

ARRAYS = ("experts", "gate_weights", "request_id", "position", "phase", "domain")
# (layers, experts, top-k) from the models' published configs.
PRESET_SHAPES = {
    "gpt-oss-20b": (24, 32, 4),
    "gpt-oss-120b": (36, 128, 4),
    "mixtral-8x7b": (32, 8, 2),
    "qwen3-30b-a3b": (48, 128, 8),
    "deepseek-v3": (58, 256, 8),
    "olmoe-1b-7b": (16, 64, 8),
    "default": (24, 32, 4),
}


def small(**kw: object) -> SynthConfig:
    """A few layers, short requests: fast enough for the plain-Python sampler."""
    base: dict[str, object] = dict(model="toy", num_layers=3, num_experts=8, top_k=2, num_requests=5,
                                   prompt_len_median=4.0, prompt_len_min=0, prompt_len_max=12,
                                   decode_len_median=6.0, decode_len_min=1, decode_len_max=20,
                                   num_token_types=4, num_domains=2)
    base.update(kw)
    return SynthConfig(**base)  # type: ignore[arg-type]


def isolated(**kw: object) -> SynthConfig:
    """Every routing effect off (uniform, independent rows) unless ``kw`` turns one on; 40 requests of
    exactly 100 decode steps, 4 layers of 16 experts, top-2."""
    base: dict[str, object] = dict(model="toy", num_layers=4, num_experts=16, top_k=2, num_requests=40,
                                   prompt_len_median=0.0, prompt_len_min=0, prompt_len_max=0,
                                   decode_len_median=100.0, decode_len_sigma=0.0, decode_len_min=100,
                                   decode_len_max=100, skew=0.0, reuse=0.0, affinity=0.0, domain_shift=0.0,
                                   request_shift=0.0)
    base.update(kw)
    return SynthConfig(**base)  # type: ignore[arg-type]


def assert_same_arrays(a: Trace, b: Trace) -> None:
    for name in ARRAYS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert x.tobytes() == y.tobytes(), name  # bit for bit, float32 gates included


# ---- determinism -----------------------------------------------------------------------------

def test_same_config_and_seed_give_identical_arrays() -> None:
    c = small(num_requests=8, reuse=0.4, affinity=1.5)
    a, b = generate(c, seed=7), generate(c, seed=7)
    assert_same_arrays(a, b)
    assert a.meta == b.meta
    assert a.meta.created_at == ""  # nothing time-dependent, so files are identical too
    assert a.meta.extra["seed"] == 7 and a.meta.extra["config"] == c.to_dict()


def test_different_seed_gives_different_trace() -> None:
    c = small(num_requests=8)
    a, b = generate(c, seed=1), generate(c, seed=2)
    same_shape = a.experts.shape == b.experts.shape
    assert not (same_shape and np.array_equal(a.experts, b.experts))
    assert not (same_shape and np.array_equal(a.gate_weights, b.gate_weights))


@pytest.mark.parametrize("seed", [-1, 1.5, True, "3"])
def test_seed_must_be_a_non_negative_integer(seed: object) -> None:
    with pytest.raises(ValueError, match="seed"):
        generate(small(), seed=seed)  # type: ignore[arg-type]


def test_streams_are_independent_per_purpose() -> None:
    """Changing the gates does not move the routing; changing the routing does not move the gates or
    the request structure."""
    c = small(num_requests=6)
    base = generate(c, seed=3)
    other_gates = generate(c.replace(gate_logit_scale=3.0, gate_topk_mass=0.5), seed=3)
    np.testing.assert_array_equal(base.experts, other_gates.experts)
    other_routing = generate(c.replace(skew=2.0, reuse=0.7, affinity=0.5, request_shift=0.1), seed=3)
    np.testing.assert_array_equal(base.gate_weights, other_routing.gate_weights)
    np.testing.assert_array_equal(base.request_id, other_routing.request_id)
    np.testing.assert_array_equal(base.phase, other_routing.phase)
    assert not np.array_equal(base.experts, other_routing.experts)


def test_chunked_popularity_tables_give_the_same_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests are sampled in chunks to bound memory; the chunk size must not change the result."""
    c = small(num_requests=7, request_shift=0.8, reuse=0.3)
    whole = generate(c, seed=11)
    # One request's [L, E] table per chunk.
    monkeypatch.setattr(synth, "_CDF_CHUNK_FLOATS", c.num_layers * c.num_experts)
    chunked = generate(c, seed=11)
    assert_same_arrays(whole, chunked)


# ---- presets ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", PRESET_NAMES)
def test_preset_has_the_model_shape_and_gives_a_valid_trace(name: str) -> None:
    L, E, K = PRESET_SHAPES[name]
    c = preset(name)
    assert (c.num_layers, c.num_experts, c.top_k) == (L, E, K)
    assert c.model == name
    tr = generate_preset(name, seed=5, num_requests=2)
    assert (tr.num_layers, tr.num_experts, tr.width, tr.meta.top_k) == (L, E, K, K)
    assert len(np.unique(tr.request_id)) == 2
    validate_trace(tr)  # in-range, distinct ids per row, positive finite gates, matching shapes
    assert_same_arrays(tr, generate_preset(name, seed=5, num_requests=2))


def test_preset_names_cover_the_shapes_and_are_case_insensitive() -> None:
    assert set(PRESET_NAMES) == set(PRESET_SHAPES)
    assert preset("  Mixtral-8x7B ") == preset("mixtral-8x7b")
    with pytest.raises(ValueError, match="unknown preset 'gpt-5'"):
        preset("gpt-5")


def test_generate_preset_overrides_and_refuses_unknown_knobs() -> None:
    tr = generate_preset("mixtral-8x7b", seed=0, num_requests=3, decode_len_min=2, decode_len_max=4,
                         prompt_len_min=0, prompt_len_max=0)
    assert len(tr.request_bounds()) - 1 == 3
    assert tr.num_steps <= 12 and (tr.phase == DECODE).all()
    with pytest.raises(ValueError, match="unknown knob 'skewness'"):
        generate_preset("mixtral-8x7b", skewness=1.0)


def test_config_round_trips_through_its_dict() -> None:
    c = small(skew=(0.5, 1.0, 1.5), reuse=0.25)
    assert SynthConfig(**c.to_dict()) == c
    assert c.to_dict()["skew"] == [0.5, 1.0, 1.5]
    np.testing.assert_array_equal(c.per_layer("reuse"), [0.25, 0.25, 0.25])


def test_resample_layers() -> None:
    assert resample_layers([1.0, 2.0, 3.0], 3) == (1.0, 2.0, 3.0)
    assert resample_layers([1.0, 3.0], 5) == (1.0, 1.5, 2.0, 2.5, 3.0)
    assert resample_layers([4.0], 3) == (4.0, 4.0, 4.0)
    assert resample_layers([1.0, 2.0, 6.0], 1) == (3.0,)


# ---- the jitted sampler against its reference ------------------------------------------------

def assert_kernel_matches_reference(c: SynthConfig, seed: int) -> Trace:
    plan = plan_requests(c, seed)
    jitted = generate_with_plan(c, plan, seed=seed)
    plain = generate_with_plan(c, plan, seed=seed, sampler=sample_rows_reference)
    assert_same_arrays(jitted, plain)
    return jitted


@settings(max_examples=40, deadline=None)
@given(L=st.integers(1, 3), E=st.integers(1, 12), k_frac=st.floats(0.0, 1.0), C=st.integers(1, 5),
       skew=st.floats(0.0, 3.0), reuse=st.floats(0.0, 1.0), affinity=st.floats(0.0, 4.0),
       request_shift=st.floats(0.0, 1.5), seed=st.integers(0, 2**32))
def test_sampler_equals_reference(L: int, E: int, k_frac: float, C: int, skew: float, reuse: float,
                                  affinity: float, request_shift: float, seed: int) -> None:
    K = 1 + int(k_frac * (E - 1))
    c = small(num_layers=L, num_experts=E, top_k=K, num_token_types=C, skew=skew, reuse=reuse,
              affinity=affinity, request_shift=request_shift, num_requests=3)
    validate_trace(assert_kernel_matches_reference(c, seed))


def test_sampler_equals_reference_on_the_exact_draw_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A steep popularity with top-k near E makes 64 rejections in a row common, so the direct draw
    from the unused experts runs; both paths must take it at the same draws."""
    calls = 0
    original = synth_kernel._exact_draw_ref

    def counting(*args: object) -> int:
        nonlocal calls
        calls += 1
        return original(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(synth_kernel, "_exact_draw_ref", counting)
    c = small(num_experts=16, top_k=8, skew=4.0, affinity=5.0, reuse=0.3, num_requests=4)
    validate_trace(assert_kernel_matches_reference(c, 0))
    assert calls > 100


def test_underflowing_weights_still_give_valid_rows() -> None:
    """Extreme knobs drive most products popularity x type factor to exactly 0; the samplers then
    draw the remaining slots uniformly from the unused experts instead of writing an invalid id."""
    c = small(num_layers=2, num_experts=64, top_k=8, affinity=300.0, request_shift=100.0, skew=50.0,
              num_requests=3)
    tr = assert_kernel_matches_reference(c, 0)
    validate_trace(tr)
    assert tr.experts.min() >= 0


def test_reference_rejects_nothing_it_should_not() -> None:
    """top_k = num_experts: every row is a permutation of all experts, in both samplers."""
    c = small(num_experts=5, top_k=5, skew=1.0)
    tr = assert_kernel_matches_reference(c, 2)
    np.testing.assert_array_equal(np.sort(tr.experts, axis=-1), np.broadcast_to(np.arange(5), tr.experts.shape))


# ---- request structure -----------------------------------------------------------------------

@pytest.mark.parametrize("dist", ["lognormal", "uniform"])
def test_request_structure(dist: str) -> None:
    c = small(num_requests=12, length_dist=dist, prompt_len_min=2, prompt_len_max=9, decode_len_min=3,
              decode_len_max=15, num_domains=3)
    tr = generate(c, seed=4)
    plan = plan_requests(c, 4)
    bounds = tr.request_bounds()
    assert len(bounds) - 1 == c.num_requests
    rid, pos, phase, dom = (np.asarray(a, np.int64) for a in (tr.request_id, tr.position, tr.phase, tr.domain))
    np.testing.assert_array_equal(rid[bounds[:-1]], np.arange(c.num_requests))  # contiguous, in order
    for r, (s, e) in enumerate(itertools.pairwise(bounds)):
        p, d = int(plan.prompt_len[r]), int(plan.decode_len[r])
        assert e - s == p + d
        assert c.prompt_len_min <= p <= c.prompt_len_max and c.decode_len_min <= d <= c.decode_len_max
        np.testing.assert_array_equal(pos[s:e], np.arange(p + d))
        np.testing.assert_array_equal(phase[s:e], [PREFILL] * p + [DECODE] * d)  # prefill first
        assert (dom[s:e] == plan.domain[r]).all() and 0 <= plan.domain[r] < c.num_domains
    assert tr.meta.extra["domains"] == ["topic-0", "topic-1", "topic-2"]


def test_lognormal_lengths_follow_median_and_sigma() -> None:
    c = small(num_requests=4000, decode_len_median=50.0, decode_len_sigma=0.4, decode_len_min=1,
              decode_len_max=100_000, prompt_len_median=0.0, prompt_len_min=0)
    plan = plan_requests(c, 0)
    assert (plan.prompt_len == 0).all()
    # Median of 4000 draws: standard error about 1.25 * 0.4 * 50 / sqrt(4000) = 0.4.
    assert abs(np.median(plan.decode_len) - 50.0) <= 2.0
    assert abs(np.std(np.log(plan.decode_len)) - 0.4) <= 0.02
    clipped = plan_requests(c.replace(decode_len_min=40, decode_len_max=60), 0).decode_len
    assert clipped.min() == 40 and clipped.max() == 60


def test_uniform_lengths_cover_the_range() -> None:
    c = small(num_requests=2000, length_dist="uniform", decode_len_min=3, decode_len_max=7)
    values, counts = np.unique(plan_requests(c, 1).decode_len, return_counts=True)
    np.testing.assert_array_equal(values, [3, 4, 5, 6, 7])
    assert counts.min() > 300  # 400 expected each


def test_generate_with_plan_refuses_a_bad_plan() -> None:
    c = small(num_domains=2)
    one = np.array([1])
    with pytest.raises(ValueError, match="same non-zero length"):
        generate_with_plan(c, RequestPlan(one, np.array([1, 2]), np.array([0])), seed=0)
    with pytest.raises(ValueError, match="request 1 has no steps"):
        generate_with_plan(c, RequestPlan(np.array([1, 0]), np.array([1, 0]), np.array([0, 0])), seed=0)
    with pytest.raises(ValueError, match="domain 2 of request 0"):
        generate_with_plan(c, RequestPlan(one, one, np.array([2])), seed=0)


# ---- routing knobs, checked through statistics ------------------------------------------------

def layer_entropy(tr: Trace) -> np.ndarray:
    h = fitstats.trace_stats(tr, with_mi=False)["entropy"]
    np.testing.assert_allclose(h, stats.normalised_entropy(stats.popularity(tr)), rtol=1e-12)
    return h


def test_skew_zero_is_uniform_and_skew_lowers_entropy() -> None:
    h0 = layer_entropy(generate(isolated(skew=0.0), seed=0))
    # 8000 accesses per layer over 16 experts: the plug-in entropy falls short of 1 by about 1e-3.
    assert (h0 > 0.995).all()
    means = [float(layer_entropy(generate(isolated(skew=s), seed=0)).mean()) for s in (0.0, 0.5, 1.0, 2.0)]
    assert (np.diff(means) < -0.02).all()


def test_skew_gives_zipf_popularity_with_top1() -> None:
    """With top-1 rows and nothing else on, each layer's popularity is exactly the Zipf law
    ``(i + 1) ** -skew`` (in the layer's own rank order)."""
    s, E = 1.2, 16
    tr = generate(isolated(skew=s, top_k=1, num_requests=100), seed=1)  # 10000 steps
    counts = stats.popularity(tr)
    zipf = np.arange(1, E + 1, dtype=np.float64) ** -s
    zipf /= zipf.sum()
    shares = -np.sort(-counts, axis=1) / counts.sum(axis=1, keepdims=True)
    # Standard error of a share is at most sqrt(0.25 / 10000) = 0.005.
    np.testing.assert_allclose(shares, np.broadcast_to(zipf, shares.shape), atol=0.02)
    # Every layer ranks the experts by its own permutation.
    assert len({tuple(np.argsort(-row)[:4]) for row in counts}) > 1


def expected_uniform_reuse(r: float, K: int, E: int) -> float:
    """Expected reuse rate under uniform popularity: n ~ Binomial(K, r) experts are kept, the other
    K - n are drawn uniformly from the E - n experts not in the row, and each of those is one of the
    previous row's K - n dropped experts with probability (K - n) / (E - n)."""
    total = 0.0
    for n in range(K + 1):
        weight = math.comb(K, n) * r**n * (1 - r) ** (K - n)
        total += weight * (n + (K - n) ** 2 / (E - n)) / K
    return total


def test_reuse_one_repeats_every_row_exactly() -> None:
    c = isolated(reuse=1.0, skew=0.7, request_shift=0.5, affinity=1.0, prompt_len_median=5.0,
                 prompt_len_max=10, num_requests=10)
    tr = generate(c, seed=2)
    e = np.asarray(tr.experts)
    rid = np.asarray(tr.request_id)
    same_request = rid[1:] == rid[:-1]
    # Exact: every step after a request's first (prefill and decode alike) repeats the previous
    # row in the same slot order, so each request routes like its first token.
    np.testing.assert_array_equal(e[1:][same_request], e[:-1][same_request])
    assert (fitstats.trace_stats(tr, with_mi=False)["reuse"] == 1.0).all()
    per_layer, pooled = stats.reuse_rate(tr)
    assert (per_layer == 1.0).all() and pooled == 1.0


def test_reuse_rate_matches_its_expectation() -> None:
    rates = {}
    for r in (0.0, 0.5):
        got = fitstats.trace_stats(generate(isolated(reuse=r), seed=3), with_mi=False)["reuse"]
        np.testing.assert_allclose(got, stats.reuse_rate(generate(isolated(reuse=r), seed=3))[0])
        want = expected_uniform_reuse(r, 2, 16)  # 0.125 and 0.5479
        # 7960 step pairs per layer: the standard error of the mean overlap is below 0.006.
        assert abs(got.mean() - want) < 0.015, (r, got, want)
        rates[r] = got
    assert (rates[0.5] > rates[0.0] + 0.3).all()


def test_affinity_zero_makes_layers_independent_and_affinity_raises_mi() -> None:
    mi = {}
    for a in (0.0, 1.0, 2.0, 4.0):
        tr = generate(isolated(affinity=a), seed=4)
        got = fitstats.trace_stats(tr)["mi"]
        # fitstats counts nats, traces.stats bits, over the same pair counts.
        np.testing.assert_allclose(got, stats.mutual_information(stats.transition_matrix(tr)) * math.log(2),
                                   atol=1e-12)
        mi[a] = float(got.mean())
    # Independent layers: only the plug-in bias, (E - 1)^2 / (2 N) = 0.007 nats for N = 16000 pairs.
    assert mi[0.0] < 0.03
    assert mi[0.0] < mi[1.0] < mi[2.0] < mi[4.0]
    assert mi[2.0] > 0.1


def test_request_and_domain_shift_raise_within_request_overlap() -> None:
    """``request_shift`` makes a request's far-apart steps overlap more than steps of different
    requests; ``domain_shift`` does the same for different requests of one domain."""
    none = fitstats.trace_stats(generate(isolated(num_domains=2), seed=5), with_mi=False)
    req = fitstats.trace_stats(generate(isolated(num_domains=2, request_shift=1.5), seed=5), with_mi=False)
    dom = fitstats.trace_stats(generate(isolated(num_domains=2, domain_shift=1.5), seed=5), with_mi=False)
    excess = {k: float(np.mean(s["far_overlap"] - s["cross_overlap"])) for k, s in
              (("none", none), ("req", req), ("dom", dom))}
    same_domain = {k: float(np.mean(s["domain_overlap"] - s["cross_overlap"])) for k, s in
                   (("none", none), ("req", req), ("dom", dom))}
    # Measured: none 0.00 / 0.00, req 0.22 / 0.00, dom 0.17 / 0.18.
    assert abs(excess["none"]) < 0.01 and abs(same_domain["none"]) < 0.01
    assert excess["req"] > 0.1 and abs(same_domain["req"]) < 0.01
    assert excess["dom"] > 0.1 and same_domain["dom"] > 0.1


# ---- gate weights ----------------------------------------------------------------------------

@pytest.mark.parametrize("K", [1, 2, 8])
@pytest.mark.parametrize("scale", [0.0, 0.5, 3.0])
@pytest.mark.parametrize("mass", [1.0, 0.4])
def test_gate_weights_descend_and_sum_to_mass(K: int, scale: float, mass: float) -> None:
    g = gate_weights(np.random.default_rng(0), 500, 3, K, scale, mass)
    assert g.shape == (500, 3, K) and g.dtype == np.float32
    assert (g > 0).all()
    assert (np.diff(g, axis=-1) <= 0).all()
    np.testing.assert_allclose(g.sum(axis=-1, dtype=np.float64), mass, rtol=1e-6)
    if scale == 0.0 or K == 1:
        assert (g == g[..., :1]).all()  # exactly equal
        np.testing.assert_allclose(g, np.float32(mass / K), rtol=1e-7)


def test_gate_top1_share_grows_with_scale() -> None:
    """Top-2: the logit gap is exponential with mean ``scale``, so the mean top-1 share is
    E[1 / (1 + exp(-scale * X))] with X ~ Exp(1), increasing in scale."""
    shares = [float(gate_weights(np.random.default_rng(1), 20000, 1, 2, s, 1.0)[:, 0, 0].mean())
              for s in (0.0, 0.5, 1.0, 3.0)]
    assert shares[0] == pytest.approx(0.5)
    assert (np.diff(shares) > 0).all()
    x = np.random.default_rng(2).standard_exponential(200_000)
    assert shares[2] == pytest.approx(float(np.mean(1 / (1 + np.exp(-x)))), abs=0.005)


def test_generated_gates_follow_the_config() -> None:
    tr = generate(small(top_k=3, gate_topk_mass=0.6, gate_logit_scale=0.0), seed=0)
    np.testing.assert_allclose(tr.gate_weights, np.float32(0.2), rtol=1e-7)
    tr = generate(small(top_k=3, gate_topk_mass=0.6, gate_logit_scale=1.0), seed=0)
    assert (np.diff(tr.gate_weights, axis=-1) <= 0).all()
    np.testing.assert_allclose(tr.gate_weights.sum(axis=-1, dtype=np.float64), 0.6, rtol=1e-6)


# ---- bad knobs ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("changes", "field"), [
    ({"skew": -0.5}, "skew"),
    ({"skew": (1.0, -1.0, 1.0)}, "skew"),
    ({"skew": (1.0, 1.0)}, "skew"),
    ({"reuse": 1.01}, "reuse"),
    ({"reuse": -0.1}, "reuse"),
    ({"affinity": float("nan")}, "affinity"),
    ({"affinity": -1.0}, "affinity"),
    ({"top_k": 9}, "top_k"),
    ({"top_k": 0}, "top_k"),
    ({"num_layers": 0}, "num_layers"),
    ({"num_experts": 40_000, "top_k": 2}, "num_experts"),
    ({"num_requests": 2.5}, "num_requests"),
    ({"num_token_types": True}, "num_token_types"),
    ({"domain_shift": -0.1}, "domain_shift"),
    ({"request_shift": math.inf}, "request_shift"),
    ({"gate_logit_scale": -1.0}, "gate_logit_scale"),
    ({"gate_topk_mass": 0.0}, "gate_topk_mass"),
    ({"gate_topk_mass": 1.5}, "gate_topk_mass"),
    ({"length_dist": "zipf"}, "length_dist"),
    ({"decode_len_min": 0}, "decode_len_min"),
    ({"decode_len_min": 30, "decode_len_max": 20}, "decode_len_min"),
    ({"prompt_len_min": -1}, "prompt_len_min"),
    ({"prompt_len_median": float("nan")}, "prompt_len_median"),
    ({"decode_len_median": -3.0}, "decode_len_median"),
    ({"model": ""}, "model"),
])
def test_bad_knob_is_refused_with_its_name(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=rf"^SynthConfig\.{field}: "):
        small(**changes)


def test_integral_floats_are_taken_as_integers() -> None:
    c = small(num_requests=4.0, decode_len_max=20.0)
    assert c.num_requests == 4 and isinstance(c.num_requests, int)
    assert isinstance(c.decode_len_max, int)
