"""The synthetic trace generator: determinism, the model presets and their derivation, the jitted row
sampler against its plain-Python reference, and the sampling law of every routing array checked
through the statistics it drives."""

from __future__ import annotations

import itertools
import math

import moesim.traces.synth as synth
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from moesim.traces import fitstats, stats
from moesim.traces.synth import (
    PRESET_NAMES,
    RequestPlan,
    RoutingArrays,
    SynthConfig,
    config_from_preset,
    derive_routing,
    gate_weights,
    generate,
    generate_preset,
    generate_steps,
    generate_with_plan,
    plan_requests,
    plan_steps,
    preset,
    recency_curve,
    resample_layers,
    routing_arrays,
)
from moesim.traces.synth_kernel import GAP_EDGES, NUM_GAP_BINS, gap_bin_table, sample_rows_reference
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
                                   num_domains=2, stickiness_spread=0.5, affinity_spread=1.0)
    base.update(kw)
    return SynthConfig(**base)  # type: ignore[arg-type]


def fixed_length(**kw: object) -> SynthConfig:
    """Requests of exactly 100 decode steps (no prefill), 4 layers of 16 experts, top-1, and every
    routing effect off unless ``kw`` turns one on."""
    base: dict[str, object] = dict(model="toy", num_layers=4, num_experts=16, top_k=1, num_requests=40,
                                   prompt_len_median=0.0, prompt_len_min=0, prompt_len_max=0,
                                   decode_len_median=100.0, decode_len_sigma=0.0, decode_len_min=100,
                                   decode_len_max=100, skew=0.0, reuse=0.0, reuse_decay=0.0, affinity_spread=0.0,
                                   domain_shift=0.0, num_domains=1)
    base.update(kw)
    return SynthConfig(**base)  # type: ignore[arg-type]


def with_arrays(c: SynthConfig, **arrays: np.ndarray) -> SynthConfig:
    """``c`` with some routing arrays replaced (the others as its knobs draw them)."""
    base = routing_arrays(c)
    fields = {n: arrays.get(n, getattr(base, n)) for n in synth.ROUTING_FIELDS}
    return c.replace(routing=RoutingArrays(**fields))


def assert_same_arrays(a: Trace, b: Trace) -> None:
    for name in ARRAYS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert x.tobytes() == y.tobytes(), name  # bit for bit, float32 gates included


# ---- determinism -----------------------------------------------------------------------------

def test_same_config_and_seed_give_identical_arrays() -> None:
    c = small(num_requests=8, reuse=1.5)
    a, b = generate(c, seed=7), generate(c, seed=7)
    assert_same_arrays(a, b)
    assert a.meta == b.meta
    assert a.meta.created_at == ""  # nothing time-dependent, so files are identical too
    assert a.meta.extra["seed"] == 7 and a.meta.extra["config"] == c.to_dict()


def test_different_seed_gives_different_trace_of_the_same_model() -> None:
    c = small(num_requests=8)
    a, b = generate(c, seed=1), generate(c, seed=2)
    same_shape = a.experts.shape == b.experts.shape
    assert not (same_shape and np.array_equal(a.experts, b.experts))
    assert not (same_shape and np.array_equal(a.gate_weights, b.gate_weights))
    # The model (the arrays drawn from the knobs) comes from model_seed, not from the trace seed.
    assert routing_arrays(c) == routing_arrays(c.replace(num_requests=3))
    assert routing_arrays(c) != routing_arrays(c.replace(model_seed=1))


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
    other_routing = generate(c.replace(skew=2.0, reuse=0.7, affinity_spread=0.5, model_seed=4), seed=3)
    np.testing.assert_array_equal(base.gate_weights, other_routing.gate_weights)
    np.testing.assert_array_equal(base.request_id, other_routing.request_id)
    np.testing.assert_array_equal(base.phase, other_routing.phase)
    assert not np.array_equal(base.experts, other_routing.experts)


def test_requests_are_sampled_independently_of_each_other() -> None:
    """Each request has its own stream and history: its rows do not depend on the requests before it."""
    c = small(num_requests=6, domain_order="random")
    whole = generate(c, seed=5)
    plan = plan_requests(c, 5)
    bounds = whole.request_bounds()
    seeds = np.random.default_rng(5).spawn(len(synth._STREAMS))[synth._STREAMS.index("seeds")]
    request_seeds = seeds.integers(0, np.iinfo(np.int64).max, size=6, dtype=np.int64).astype(np.uint64)
    arrays = routing_arrays(c)
    for r in (0, 3, 5):
        steps = int(plan.prompt_len[r] + plan.decode_len[r])
        out = np.empty((steps, c.num_layers, c.top_k), np.int16)
        sample_rows_reference(*(getattr(arrays, n) for n in synth.ROUTING_FIELDS), plan.domain[r:r + 1],
                              request_seeds[r:r + 1],
                              np.array([0, steps]), out)
        np.testing.assert_array_equal(out, whole.experts[bounds[r]:bounds[r + 1]])


# ---- the routing arrays ----------------------------------------------------------------------

def test_routing_arrays_are_immutable_and_compared_by_content() -> None:
    a = routing_arrays(small())
    b = RoutingArrays(*(np.array(getattr(a, n)) for n in synth.ROUTING_FIELDS))
    assert a == b and hash(a) == hash(b) and a.digest == b.digest
    assert a.shape == (2, 3, 8)
    with pytest.raises(ValueError):
        a.popularity[0, 0] = 1.0  # read-only
    with pytest.raises(AttributeError):
        a.popularity = np.zeros((3, 8))  # type: ignore[misc]
    changed = np.array(a.affinity)
    changed[2, 1, 3] += 1e-9
    fields = {n: getattr(a, n) for n in synth.ROUTING_FIELDS}
    assert RoutingArrays(**{**fields, "affinity": changed}) != a
    assert a.digest in repr(a) and "layers=3" in repr(a)


@pytest.mark.parametrize(("field", "shape"), [("popularity", (3, 7)), ("domain_offset", (2, 3, 7)),
                                              ("locality", (3, 3)), ("locality_spread", (2,)),
                                              ("recency", (3, 4)), ("stickiness", (2, 8)),
                                              ("affinity", (3, 8, 7))])
def test_routing_arrays_refuse_a_wrong_shape(field: str, shape: tuple[int, ...]) -> None:
    a = routing_arrays(small())
    fields = {n: getattr(a, n) for n in synth.ROUTING_FIELDS}
    if field == "popularity":  # the others follow popularity's shape; break one of them instead
        fields["stickiness"] = np.zeros(shape)
        field = "stickiness"
    else:
        fields[field] = np.zeros(shape)
    with pytest.raises(ValueError, match=rf"RoutingArrays\.{field}: shape"):
        RoutingArrays(**fields)


def test_routing_arrays_refuse_non_finite_values_and_a_mismatched_config() -> None:
    a = routing_arrays(small())
    bad = np.array(a.recency)
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"RoutingArrays\.recency: not every value is finite"):
        RoutingArrays(**{**{n: getattr(a, n) for n in synth.ROUTING_FIELDS}, "recency": bad})
    with pytest.raises(ValueError, match=r"^SynthConfig\.routing: "):
        small(num_experts=9, routing=a)
    with pytest.raises(ValueError, match=r"^SynthConfig\.routing: "):
        small(num_domains=3, routing=a)


def test_routing_arrays_json_round_trip() -> None:
    a = routing_arrays(small())
    b = RoutingArrays.from_json(a.to_json(digits=12))
    for n in synth.ROUTING_FIELDS:
        np.testing.assert_allclose(getattr(b, n), getattr(a, n), atol=1e-12)
    assert small(routing=a.to_json()).routing is not None  # a mapping is read as arrays
    with pytest.raises(ValueError, match="'affinity' is missing"):
        RoutingArrays.from_json({k: v for k, v in a.to_json().items() if k != "affinity"})


def test_knobs_draw_the_documented_arrays() -> None:
    c = small(num_layers=3, skew=(0.0, 1.0, 2.0), reuse=1.5, reuse_decay=0.5, stickiness_spread=0.0,
              affinity_spread=0.0, domain_shift=0.0)
    a = routing_arrays(c)
    # Zipf utilities over a permutation of the experts, per layer.
    for layer, s in enumerate((0.0, 1.0, 2.0)):
        np.testing.assert_allclose(np.sort(a.popularity[layer])[::-1], -s * np.log(np.arange(1, 9)), atol=1e-12)
    np.testing.assert_allclose(a.recency, recency_curve(np.full(3, 1.5), np.full(3, 0.5)))
    np.testing.assert_allclose(a.recency[:, 0], 1.5)
    np.testing.assert_allclose(a.recency[:, 2], 1.5 - 0.5 * math.log2(3))
    assert not a.stickiness.any() and not a.affinity.any() and not a.domain_offset.any()
    # No knob draws bursts or locality: only a fit sets them.
    assert not a.recency2.any() and not a.locality.any() and not a.locality_spread.any()
    spread = routing_arrays(small(num_layers=2, num_experts=64, affinity_spread=(0.0, 2.0)))
    assert not spread.affinity[0].any()  # layer 0 has no previous layer
    assert spread.affinity[1].std() == pytest.approx(2.0, rel=0.05)


def test_gap_bins() -> None:
    table = gap_bin_table()
    assert [int(table[g]) for g in (1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 13)] == [0, 1, 2, 3, 4, 4, 5, 5, 6, 6, 7]
    for i, lo in enumerate(GAP_EDGES):
        assert table[lo] == i and (lo == 1 or table[lo - 1] == i - 1)
    assert len(GAP_EDGES) == NUM_GAP_BINS and table[-1] == NUM_GAP_BINS - 1


# ---- presets ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", PRESET_NAMES)
def test_preset_has_the_model_shape_and_gives_a_valid_trace(name: str) -> None:
    L, E, K = PRESET_SHAPES[name]
    c = preset(name)
    assert (c.num_layers, c.num_experts, c.top_k) == (L, E, K)
    assert c.model == name and c.routing is not None
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


def test_default_preset_is_gpt_oss_20b_with_short_requests() -> None:
    d, g = preset("default"), preset("gpt-oss-20b")
    assert d.routing == g.routing and d.model == "default"
    tr = generate_preset("default", seed=0, num_requests=8)
    # The fitted decode lengths (OLMoE's 128 tokens) make 1,024 decode steps for 8 requests.
    assert int((tr.phase == DECODE).sum()) == 8 * int(d.decode_len_median)


def test_preset_document_round_trips() -> None:
    from moesim.traces.fit import preset_document

    c = small(num_domains=2, routing=routing_arrays(small()))
    doc = preset_document(c, name="toy", fitted_on="a test", note="")
    back = config_from_preset(doc, where="doc")
    assert (back.num_layers, back.num_experts, back.top_k, back.num_domains) == (3, 8, 2, 2)
    for n in synth.ROUTING_FIELDS:  # stored with 4 decimals
        np.testing.assert_allclose(getattr(back.routing, n), getattr(c.routing, n), atol=5e-5)
    for field, message in (("knobs", "field 'knobs' is missing"), ("routing", "needs a 'routing' or")):
        broken = {k: v for k, v in doc.items() if k != field}
        with pytest.raises(ValueError, match=message):
            config_from_preset(broken, where="doc")


# ---- deriving a model of another shape -----------------------------------------------------------

def test_derive_routing_keeps_the_popularity_curve_and_the_pull_of_a_row() -> None:
    src = routing_arrays(small(num_layers=4, num_experts=8, top_k=2, skew=1.3, affinity_spread=1.0))
    half = derive_routing(src, 2, 4, 4, 1, seed=0)
    assert half.shape == (2, 4, 4)
    # Every second expert by popularity rank: ranks 1, 3, 5, 7 of each source layer.
    for layer in range(4):
        want = np.sort(src.popularity[layer])[::-1][[1, 3, 5, 7]]
        np.testing.assert_allclose(np.sort(half.popularity[layer])[::-1], want)
    np.testing.assert_allclose(half.recency, src.recency)
    np.testing.assert_allclose(half.recency2, src.recency2)
    np.testing.assert_allclose(half.locality, src.locality)
    # One expert per row instead of two: the pairs are scaled by 2.
    assert np.abs(half.affinity[1:]).max() == pytest.approx(2 * np.abs(src.affinity[1:]).max(), rel=0.5)
    double = derive_routing(src, 2, 4, 16, 2, seed=0)
    for layer in range(4):
        # Two copies of each expert, together as popular as the original.
        copies = np.sort(double.popularity[layer])[::-1].reshape(8, 2)
        np.testing.assert_allclose(np.logaddexp(copies[:, 0], copies[:, 1]), np.sort(src.popularity[layer])[::-1])
    assert derive_routing(src, 2, 4, 16, 2, seed=0) == double
    assert derive_routing(src, 2, 4, 16, 2, seed=1) != double  # another shuffle of the ids


def test_derive_routing_maps_layers_by_relative_depth() -> None:
    src = routing_arrays(small(num_layers=3, num_experts=8, reuse=(1.0, 2.0, 3.0)))
    deep = derive_routing(src, 2, 5, 8, 2, seed=0)
    np.testing.assert_allclose(deep.recency[:, 0], [1.0, 2.0, 2.0, 3.0, 3.0])  # linspace(0, 2, 5) rounded half up
    one = derive_routing(src, 2, 1, 8, 2, seed=0)
    np.testing.assert_allclose(one.recency[:, 0], [2.0])


# ---- the jitted sampler against its reference ------------------------------------------------

def assert_kernel_matches_reference(c: SynthConfig, seed: int) -> Trace:
    plan = plan_requests(c, seed)
    jitted = generate_with_plan(c, plan, seed=seed)
    plain = generate_with_plan(c, plan, seed=seed, sampler=sample_rows_reference)
    assert_same_arrays(jitted, plain)
    return jitted


@settings(max_examples=40, deadline=None)
@given(L=st.integers(1, 3), E=st.integers(1, 12), k_frac=st.floats(0.0, 1.0), skew=st.floats(0.0, 3.0),
       reuse=st.floats(-3.0, 4.0), decay=st.floats(0.0, 1.5), stick=st.floats(0.0, 2.0),
       affinity=st.floats(0.0, 3.0), domain_shift=st.floats(0.0, 1.5), model_seed=st.integers(0, 100),
       seed=st.integers(0, 2**32))
def test_sampler_equals_reference(L: int, E: int, k_frac: float, skew: float, reuse: float, decay: float,
                                  stick: float, affinity: float, domain_shift: float, model_seed: int,
                                  seed: int) -> None:
    K = 1 + int(k_frac * (E - 1))
    c = small(num_layers=L, num_experts=E, top_k=K, skew=skew, reuse=reuse, reuse_decay=decay,
              stickiness_spread=stick, affinity_spread=affinity, domain_shift=domain_shift,
              model_seed=model_seed, num_requests=3)
    rng = np.random.default_rng(model_seed)
    fitted_only = {"recency2": rng.normal(0.0, 1.0, (L, NUM_GAP_BINS)), "locality": rng.normal(0.0, 1.0, (2, L)),
                   "locality_spread": rng.uniform(0.0, 1.0, L)}
    validate_trace(assert_kernel_matches_reference(with_arrays(c, **fitted_only), seed))


def test_sampler_equals_reference_on_long_gaps() -> None:
    """Requests longer than the last gap edge exercise the open-ended bin in both samplers: every
    recency bin repels except the last, so rare experts come back after more than 4096 tokens."""
    c = small(num_layers=1, num_experts=64, top_k=1, num_requests=1, prompt_len_max=0, prompt_len_median=0.0,
              decode_len_median=5000.0, decode_len_sigma=0.0, decode_len_min=5000, decode_len_max=5000, skew=3.0)
    recency = np.full((1, NUM_GAP_BINS), -4.0)
    recency[0, -1] = 4.0
    c = with_arrays(c, recency=recency)
    tr = assert_kernel_matches_reference(c, 1)
    e = tr.experts[:, 0, 0].tolist()
    last: dict[int, int] = {}
    long_gaps = 0
    for t, x in enumerate(e):
        long_gaps += int(x in last and t - last[x] >= GAP_EDGES[-1])
        last[x] = t
    assert tr.num_steps == 5000 and long_gaps > 0


def test_extreme_utilities_still_give_valid_rows() -> None:
    """Utilities in the hundreds (exp would overflow) only shift the Gumbel keys: rows stay valid."""
    c = small(num_layers=2, num_experts=64, top_k=8, affinity_spread=300.0, skew=50.0, reuse=500.0,
              num_requests=3)
    tr = assert_kernel_matches_reference(c, 0)
    validate_trace(tr)


def test_top_k_equal_to_num_experts_gives_permutations() -> None:
    c = small(num_experts=5, top_k=5, skew=1.0)
    tr = assert_kernel_matches_reference(c, 2)
    np.testing.assert_array_equal(np.sort(tr.experts, axis=-1), np.broadcast_to(np.arange(5), tr.experts.shape))


# ---- request structure -----------------------------------------------------------------------

@pytest.mark.parametrize("dist", ["lognormal", "uniform"])
def test_request_structure(dist: str) -> None:
    c = small(num_requests=12, length_dist=dist, prompt_len_min=2, prompt_len_max=9, decode_len_min=3,
              decode_len_max=15, num_domains=3, domain_order="random")
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


@pytest.mark.parametrize(("R", "D"), [(8, 4), (10, 4), (3, 4), (7, 1)])
def test_blocks_domain_order(R: int, D: int) -> None:
    dom = plan_requests(small(num_requests=R, num_domains=D, domain_order="blocks"), 0).domain
    np.testing.assert_array_equal(dom, np.arange(R) * D // R)
    assert (np.diff(dom) >= 0).all()
    counts = np.bincount(dom, minlength=D)
    assert counts.max() - counts[counts > 0].min() <= 1  # as even as R allows


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


@settings(max_examples=30, deadline=None)
@given(steps=st.integers(1, 400), prompt=st.integers(0, 6), seed=st.integers(0, 1000))
def test_plan_steps_gives_exactly_the_steps_asked(steps: int, prompt: int, seed: int) -> None:
    c = small(prompt_len_min=prompt, prompt_len_max=prompt, decode_len_min=3, decode_len_max=9)
    plan = plan_steps(c, steps, seed)
    lengths = plan.prompt_len + plan.decode_len
    assert int(lengths.sum()) == steps and (lengths >= 1).all() and (plan.decode_len >= 0).all()
    # Every request but the last is drawn whole from the length laws.
    assert (plan.decode_len[:-1] >= 3).all() and (plan.prompt_len[:-1] == prompt).all()


def test_generate_steps_extends_a_preset() -> None:
    c = preset("mixtral-8x7b")
    tr = generate_steps(c, 1000, seed=3)
    assert tr.num_steps == 1000
    validate_trace(tr)
    assert_same_arrays(tr, generate_steps(c, 1000, seed=3))
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        generate_steps(c, 0, seed=3)


def test_generate_with_plan_refuses_a_bad_plan() -> None:
    c = small(num_domains=2)
    one = np.array([1])
    with pytest.raises(ValueError, match="same non-zero length"):
        generate_with_plan(c, RequestPlan(one, np.array([1, 2]), np.array([0])), seed=0)
    with pytest.raises(ValueError, match="request 1 has no steps"):
        generate_with_plan(c, RequestPlan(np.array([1, 0]), np.array([1, 0]), np.array([0, 0])), seed=0)
    with pytest.raises(ValueError, match="domain 2 of request 0"):
        generate_with_plan(c, RequestPlan(one, one, np.array([2])), seed=0)


# ---- the sampling law of each array, checked through statistics ---------------------------------------

def softmax(u: np.ndarray) -> np.ndarray:
    w = np.exp(u - u.max())
    return w / w.sum()


def test_popularity_alone_gives_softmax_shares() -> None:
    """Top-1 rows with only popularity: each layer's shares are softmax(popularity), and the first
    slot of a top-k row follows the same law (Plackett-Luce)."""
    c = fixed_length(skew=1.2, num_requests=100)  # 10000 steps
    tr = generate(c, seed=1)
    want = np.stack([softmax(u) for u in routing_arrays(c).popularity])
    counts = stats.popularity(tr)
    # Standard error of a share is at most sqrt(0.25 / 10000) = 0.005.
    np.testing.assert_allclose(counts / counts.sum(axis=1, keepdims=True), want, atol=0.02)
    wide = generate(c.replace(top_k=4), seed=1)
    first = np.stack([np.bincount(wide.experts[:, layer, 0], minlength=16) for layer in range(4)])
    np.testing.assert_allclose(first / first.sum(axis=1, keepdims=True), want, atol=0.02)


@pytest.mark.parametrize("bin_index", [0, 3, 8])
def test_recency_of_one_bin_sets_the_return_probability(bin_index: int) -> None:
    """Uniform popularity, top-1, and a recency utility ``rho`` in one gap bin only: a token returns
    to an expert whose gap falls in that bin with probability ``n e^rho / (n e^rho + E - n)``, n the
    number of such experts. Checked at the gap of one bin where it is the only expert (gap 1, 4, 9
    and the previous token chose another expert each time)."""
    rho = 1.5
    E = 16
    recency = np.zeros((4, NUM_GAP_BINS))
    recency[:, bin_index] = rho
    c = with_arrays(fixed_length(num_requests=60), recency=recency)
    tr = generate(c, seed=2)
    e = np.asarray(tr.experts[:, :, 0], np.int64)
    rid = np.asarray(tr.request_id)
    table = gap_bin_table()
    hits = total = 0
    for s, t_end in itertools.pairwise(tr.request_bounds()):
        for layer in range(4):
            last: dict[int, int] = {}
            for t in range(s, t_end):
                in_bin = [x for x, lt in last.items() if table[min(t - lt, len(table) - 1)] == bin_index]
                if len(in_bin) == 1:
                    total += 1
                    hits += int(e[t, layer] == in_bin[0])
                last[int(e[t, layer])] = t
    assert rid is not None and total > 2000
    want = math.exp(rho) / (math.exp(rho) + E - 1)
    assert hits / total == pytest.approx(want, abs=4 * math.sqrt(want * (1 - want) / total) + 0.005)


def test_second_recency_favours_experts_in_a_burst() -> None:
    """With only ``recency2`` at gap 2 (bin 1): among experts last used on the previous token, one
    whose use before that was two tokens ago is e^rho times as likely as one used only once."""
    rho = 1.5
    recency2 = np.zeros((4, NUM_GAP_BINS))
    recency2[:, 1] = rho
    recency = np.zeros((4, NUM_GAP_BINS))
    recency[:, 0] = 3.0  # the previous token's expert is likely to return, so bursts happen
    tr = generate(with_arrays(fixed_length(num_requests=60), recency=recency, recency2=recency2), seed=7)
    e = np.asarray(tr.experts[:, :, 0], np.int64)
    rid = np.asarray(tr.request_id)
    hits = total = 0
    for t in range(2, len(e)):
        if rid[t] != rid[t - 2]:
            continue
        # Token t - 1's expert was also used at t - 2 (gap2 = 2 at t) or not (gap2 != 2).
        for layer in range(4):
            if e[t - 1, layer] == e[t - 2, layer]:
                total += 1
                hits += int(e[t, layer] == e[t - 1, layer])
    # The expert at t-1 has recency e^3 and, being in a burst, e^rho more; others have utility 0
    # (at most one other expert has a finite gap2 of 2, the same one: so 15 others at 0).
    want = math.exp(3 + rho) / (math.exp(3 + rho) + 15)
    assert total > 3000
    assert hits / total == pytest.approx(want, abs=4 * math.sqrt(want * (1 - want) / total) + 0.01)


def test_locality_makes_requests_more_or_less_repetitive() -> None:
    """``locality[d]`` adds to the recency of every used expert in domain d's requests;
    ``locality_spread`` makes requests of one domain differ from each other (per-request reuse)."""
    from moesim.traces.fiteval import per_request_stats

    recency = np.zeros((4, NUM_GAP_BINS))
    recency[:, 0] = 1.0
    c = with_arrays(fixed_length(num_domains=2, num_requests=40, top_k=2), recency=recency)
    locality = np.array([[2.0] * 4, [-2.0] * 4])
    tr = generate(with_arrays(c, recency=recency, locality=locality), seed=8)
    reuse = per_request_stats(tr)["reuse"]
    dom = np.asarray(tr.domain)[tr.request_bounds()[:-1]]
    assert reuse[dom == 0].mean() > reuse[dom == 1].mean() + 0.05  # measured: 0.36 against 0.26
    same = per_request_stats(generate(c, seed=8))["reuse"]
    spread = per_request_stats(generate(with_arrays(c, recency=recency, locality_spread=np.full(4, 2.0)),
                                        seed=8))["reuse"]
    assert spread.std() > 3 * same.std()


def test_stickiness_is_per_expert() -> None:
    """Expert 3 sticks (utility 2 when the previous token chose it), expert 5 avoids repeating (-2)."""
    stick = np.zeros((4, 16))
    stick[:, 3], stick[:, 5] = 2.0, -2.0
    c = with_arrays(fixed_length(num_requests=200), stickiness=stick)
    tr = generate(c, seed=3)
    e = np.asarray(tr.experts[:, :, 0], np.int64)
    same = np.asarray(tr.request_id)[1:] == np.asarray(tr.request_id)[:-1]
    for expert, utility in ((3, 2.0), (5, -2.0), (0, 0.0)):
        prev = (e[:-1] == expert) & same[:, None]
        repeat = float((e[1:][prev] == expert).mean())
        want = math.exp(utility) / (math.exp(utility) + 15)
        assert repeat == pytest.approx(want, abs=4 * math.sqrt(want * (1 - want) / prev.sum()) + 0.005)


def test_affinity_pulls_the_next_layer() -> None:
    """``affinity[1, a, (a + 1) % E] = A``: given expert a at layer 0, layer 1 picks a + 1 with
    probability e^A / (e^A + E - 1); without affinity the layers are independent (MI ~ 0)."""
    A, E = 2.0, 16
    affinity = np.zeros((4, E, E))
    affinity[1, np.arange(E), (np.arange(E) + 1) % E] = A
    c = fixed_length(num_requests=60)
    tr = generate(with_arrays(c, affinity=affinity), seed=4)
    e = np.asarray(tr.experts[:, :, 0], np.int64)
    follow = float(((e[:, 0] + 1) % E == e[:, 1]).mean())
    want = math.exp(A) / (math.exp(A) + E - 1)
    assert follow == pytest.approx(want, abs=4 * math.sqrt(want * (1 - want) / len(e)) + 0.005)
    mi = fitstats.interlayer_mi(tr)
    # Layers 1 -> 2 and 2 -> 3 carry no affinity: only the plug-in bias, (E - 1)^2 / (2 N) = 0.019 nats.
    assert mi[0] > 0.3 and (mi[1:] < 0.04).all()
    independent = fitstats.interlayer_mi(generate(c, seed=4))
    assert (independent < 0.04).all()


def test_domain_offsets_shift_each_domain() -> None:
    c = fixed_length(num_domains=2, num_requests=80, domain_shift=1.5)
    tr = generate(c, seed=5)
    a = routing_arrays(c)
    dom = np.asarray(tr.domain)
    for d in range(2):
        rows = np.asarray(tr.experts[dom == d, 0, 0], np.int64)
        shares = np.bincount(rows, minlength=16) / len(rows)
        np.testing.assert_allclose(shares, softmax(a.popularity[0] + a.domain_offset[d, 0]), atol=0.025)


def test_reuse_knob_raises_the_reuse_rate() -> None:
    def rate(reuse: float, decay: float) -> float:
        tr = generate(fixed_length(top_k=2, reuse=reuse, reuse_decay=decay), seed=6)
        return float(fitstats.trace_stats(tr, with_mi=False)["reuse"].mean())

    # Uniform top-2 of 16 without recency: 2 / 16 of the previous row returns (0.125); a recency
    # term equal at every gap changes nothing once a request has used every expert.
    assert rate(0.0, 0.0) == pytest.approx(0.125, abs=0.01)
    assert rate(2.0, 0.0) == pytest.approx(0.125, abs=0.06)
    # With a decay the last few tokens' experts win over older ones (measured: 0.335, 0.361, 0.487).
    rates = [rate(r, 0.5) for r in (0.0, 2.0, 4.0)]
    assert (np.diff(rates) > 0.015).all() and rates[0] > 0.2


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


# ---- config ------------------------------------------------------------------------------------

def test_config_round_trips_through_its_dict() -> None:
    c = small(skew=(0.5, 1.0, 1.5), reuse=0.25)
    assert SynthConfig(**c.to_dict()) == c
    assert c.to_dict()["skew"] == [0.5, 1.0, 1.5]
    np.testing.assert_array_equal(c.per_layer("reuse"), [0.25, 0.25, 0.25])
    fitted = c.replace(routing=routing_arrays(c))
    assert fitted.to_dict()["routing"] == {"digest": fitted.routing.digest}


def test_resample_layers() -> None:
    assert resample_layers([1.0, 2.0, 3.0], 3) == (1.0, 2.0, 3.0)
    assert resample_layers([1.0, 3.0], 5) == (1.0, 1.5, 2.0, 2.5, 3.0)
    assert resample_layers([4.0], 3) == (4.0, 4.0, 4.0)
    assert resample_layers([1.0, 2.0, 6.0], 1) == (3.0,)


@pytest.mark.parametrize(("changes", "field"), [
    ({"skew": -0.5}, "skew"),
    ({"skew": (1.0, -1.0, 1.0)}, "skew"),
    ({"skew": (1.0, 1.0)}, "skew"),
    ({"reuse": float("inf")}, "reuse"),
    ({"reuse_decay": -0.1}, "reuse_decay"),
    ({"stickiness_spread": -1.0}, "stickiness_spread"),
    ({"affinity_spread": float("nan")}, "affinity_spread"),
    ({"affinity_spread": -1.0}, "affinity_spread"),
    ({"domain_shift": -0.1}, "domain_shift"),
    ({"top_k": 9}, "top_k"),
    ({"top_k": 0}, "top_k"),
    ({"num_layers": 0}, "num_layers"),
    ({"num_experts": 40_000, "top_k": 2}, "num_experts"),
    ({"num_requests": 2.5}, "num_requests"),
    ({"model_seed": -1}, "model_seed"),
    ({"model_seed": True}, "model_seed"),
    ({"gate_logit_scale": -1.0}, "gate_logit_scale"),
    ({"gate_topk_mass": 0.0}, "gate_topk_mass"),
    ({"gate_topk_mass": 1.5}, "gate_topk_mass"),
    ({"length_dist": "zipf"}, "length_dist"),
    ({"domain_order": "sorted"}, "domain_order"),
    ({"decode_len_min": 0}, "decode_len_min"),
    ({"decode_len_min": 30, "decode_len_max": 20}, "decode_len_min"),
    ({"prompt_len_min": -1}, "prompt_len_min"),
    ({"prompt_len_median": float("nan")}, "prompt_len_median"),
    ({"decode_len_median": -3.0}, "decode_len_median"),
    ({"model": ""}, "model"),
    ({"routing": "fitted"}, "routing"),
])
def test_bad_knob_is_refused_with_its_name(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=rf"^SynthConfig\.{field}: "):
        small(**changes)


def test_integral_floats_are_taken_as_integers() -> None:
    c = small(num_requests=4.0, decode_len_max=20.0)
    assert c.num_requests == 4 and isinstance(c.num_requests, int)
    assert isinstance(c.decode_len_max, int)
