"""One engine: the fast path (each policy's own replay loop) and the hierarchy path (the policy's
``access`` for every key, as the hierarchy serves L1) give the same L1 result and the same timeline,
for every registered policy and every cache option; the policy contract of sim/policies holds for
every registered policy; the row source streams in bounded pieces."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moesim.sim import engine
from moesim.sim.cache_setup import setup_cache
from moesim.sim.errors import ConfigError
from moesim.sim.policies import get_policy, list_policies, resolve_policy_params
from moesim.sim.prefetch import FixedPlan, plan_from_lists
from moesim.sim.profiles import HardwareProfile, ModelProfile
from moesim.sim.row_loop import BYPASS, HIT, MISS
from moesim.sim.rows import plan_stream
from moesim.sim.stepstats import StepSeries
from moesim.sim.timing import ComputeModel, Links
from moesim.traces.trace import TraceMeta, make_trace
from strategies import traces

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def toy_timing(num_layers: int, num_experts: int) -> engine.Timing:
    model = ModelProfile(name="toy", hf_id="none", hidden_size=64, expert_intermediate_size=32,
                         num_experts=num_experts, top_k=1, num_moe_layers=num_layers, matrices_per_expert=3,
                         dense_params_per_layer=4096, dense_format="bf16", other_params=640)
    hw = HardwareProfile(name="toy-hw", description="hand-made", gpu_name="toy", gpu_memory_gib=1.0,
                         gpu_bandwidth_gbps=1.0, gpu_tflops=1.0, h2d_bandwidth_gbps=0.1, h2d_latency_us=10.0,
                         nvme_bandwidth_gbps=0.05, nvme_latency_us=100.0, dram_gib=1.0, layer_overhead_us=3.0)
    return engine.Timing(ComputeModel.from_profiles(model, hw, "bf16"), Links.from_hardware(hw, need_ssd=False),
                         float(model.expert_bytes("bf16")))


def policy_params(policy: str, L: int, E: int, organisation: str, per_instance: int) -> dict | None:
    """Knobs a policy cannot run without (static: its set, at most ``per_instance`` per cache)."""
    if policy != "static":
        return None
    if organisation == "per_layer":
        return {"keys": [layer * E + e for layer in range(L) for e in range(min(per_instance, E))]}
    return {"keys": list(range(min(per_instance, L * E)))}


@pytest.mark.parametrize("policy", list_policies())
@SETTINGS
@given(trace=traces(), organisation=st.sampled_from(["shared", "per_layer"]), extra=st.integers(0, 4),
       warmup=st.integers(0, 4), cold=st.booleans(), tie=st.sampled_from(["row", "reverse", "expert_id"]),
       n_pinned=st.integers(0, 2), chunk=st.integers(1, 5), seed=st.integers(0, 100),
       decode_only=st.booleans())
def test_fast_path_equals_the_hierarchy_path(policy, trace, organisation, extra, warmup, cold, tie, n_pinned, chunk,
                                             seed, decode_only) -> None:
    L, E, K = trace.num_layers, trace.num_experts, trace.width
    pinned = tuple(sorted({(i * 7 + 3) % (L * E) for i in range(n_pinned)}))
    # At least two policy slots per cache (LIRS and S3-FIFO need two) and room for the widest row.
    capacity = L * (K + n_pinned + 1) + extra if organisation == "per_layer" else K + len(pinned) + 1 + extra
    per_instance = (capacity // L - n_pinned) if organisation == "per_layer" else capacity - len(pinned)
    params = policy_params(policy, L, E, organisation, per_instance)
    setup = setup_cache(L, E, policy, capacity, organisation=organisation, pinned=pinned, params=params, seed=seed,
                        warmup_steps=warmup, cold_start_per_request=cold, tie_break=tie)
    timing = toy_timing(L, E)
    fast = engine.run(trace, setup, decode_only=decode_only, timing=timing, record=True, chunk_steps=chunk)
    slow = engine.run(trace, setup, decode_only=decode_only, timing=timing, record=True, chunk_steps=chunk,
                      path="hierarchy")
    assert fast.l1.to_dict() == slow.l1.to_dict()
    assert np.array_equal(fast.l1.hit_mask, slow.l1.hit_mask)
    assert {k: v for k, v in fast.counts.items() if k != "l1_bypass"} == \
        {k: v for k, v in slow.counts.items() if k != "l1_bypass"}
    assert np.array_equal(fast.records.step_time, slow.records.step_time)
    assert fast.timing == slow.timing or (fast.timing.steps == slow.timing.steps == 0)
    # Whatever the path: every kept entry is counted once, pinned experts always hit.
    kept = np.asarray(trace.experts)
    if decode_only:
        kept = kept[np.asarray(trace.phase) == 1]
    assert fast.l1.accesses + fast.l1.warmup.accesses == int((kept >= 0).sum())
    assert fast.l1.pinned_hits <= fast.l1.hits


@pytest.mark.parametrize("policy", [n for n in list_policies() if getattr(get_policy(n), "PRELOADS", False)])
@SETTINGS
@given(trace=traces(), organisation=st.sampled_from(["shared", "per_layer"]), extra=st.integers(0, 4),
       chunk=st.integers(1, 5))
def test_a_policy_that_starts_full_replays_on_the_fast_path_as_in_the_hierarchy(policy, trace, organisation, extra,
                                                                               chunk) -> None:
    """Without the timing model a preloading policy takes its own ``replay`` (the hierarchy is only
    needed to charge its streamed-through misses); the hits are the hierarchy's, entry by entry."""
    L, E, K = trace.num_layers, trace.num_experts, trace.width
    capacity = L * (K + 1) + extra if organisation == "per_layer" else K + 1 + extra
    per_instance = capacity // L if organisation == "per_layer" else capacity
    params = policy_params(policy, L, E, organisation, per_instance)
    setup = setup_cache(L, E, policy, capacity, organisation=organisation, params=params)
    fast = engine.run(trace, setup, record=True, chunk_steps=chunk)
    slow = engine.run(trace, setup, record=True, chunk_steps=chunk, path="hierarchy")
    assert fast.l1.to_dict() == slow.l1.to_dict()
    assert np.array_equal(fast.l1.hit_mask, slow.l1.hit_mask)
    assert {k: v for k, v in fast.counts.items() if k != "l1_bypass"} == \
        {k: v for k, v in slow.counts.items() if k != "l1_bypass"}
    # Only the hierarchy tells a bypass from a miss: a count of 0 beside misses shows the fast path ran.
    assert fast.counts["l1_bypass"] == 0 and slow.counts["l1_bypass"] == slow.counts["l1_misses"]


# ---- the policy contract, for every registered policy -------------------------------------------

@pytest.mark.parametrize("policy", list_policies())
def test_every_policy_meets_the_hierarchy_contract(policy: str) -> None:
    # A guarded key that is not requested again in the row (a prefetch in flight) is never a victim
    # and keeps its place: random prefetch plans on a random trace, through the hierarchy, must
    # never make the policy and the hierarchy disagree on what L1 holds (checked on every access),
    # and every victim a policy reports (batches included) must have been resident.
    module = get_policy(policy)
    rng = np.random.default_rng(7)
    L, E, K, T = 2, 6, 2, 60
    experts = np.stack([np.stack([rng.choice(E, K, replace=False) for _ in range(L)]) for _ in range(T)])
    trace = make_trace(experts, TraceMeta("contract", L, E, K))
    plan = plan_from_lists([[(int(rng.integers(L * E)), r + int(rng.integers(1, 4))) for _ in range(2)]
                            for r in range(T * L)])
    for organisation in ("shared", "per_layer"):
        cap = 8 if organisation == "per_layer" else 6
        params = policy_params(policy, L, E, organisation, cap // (L if organisation == "per_layer" else 1))
        setup = setup_cache(L, E, policy, cap, organisation=organisation, params=params)
        run = engine.run(trace, setup, prefetcher=FixedPlan(plan))
        c = run.counts
        assert c["l1_hits"] + c["l1_misses"] == run.l1.accesses == T * L * K
        if getattr(module, "PRELOADS", False):
            assert c["l1_evictions"] == 0 and c["l1_bypass"] == c["l1_misses"]
        else:
            assert c["l1_bypass"] == 0 and c["prefetch_issued"] > 0
    # access() speaks the contract's codes: a fresh cache misses (or declines) a key, then hits it.
    state = module.make_state(4, L * E, resolve_policy_params(module, policy_params(policy, L, E, "shared", 4),
                                                               num_layers=L, num_experts=E), 0)
    guard = np.full(L * E, -1, np.int64)
    first = module.access(state, 5, 0, 10, guard, 0)
    assert first in (MISS, BYPASS, HIT)
    if first == MISS:
        assert module.access(state, 5, 1, 10, guard, 1) == HIT


# ---- the row source ----------------------------------------------------------------------------

@settings(max_examples=50, deadline=None)
@given(trace=traces(max_steps=30, min_steps=1), chunk=st.integers(1, 7), warmup=st.integers(0, 6),
       cold=st.booleans(), decode_only=st.booleans())
def test_pieces_cover_the_stream_once_and_cut_where_they_must(trace, chunk, warmup, cold, decode_only) -> None:
    stream = plan_stream(trace, chunk, warmup_steps=warmup, cold_start=cold, decode_only=decode_only)
    T = trace.num_steps
    phase = np.asarray(trace.phase)
    kept = (phase == 1) if decode_only else np.ones(T, bool)
    assert stream.num_steps == int(kept.sum())
    bounds = [(p.start, p.stop) for p in stream.pieces]
    assert bounds[0][0] == 0 and bounds[-1][1] == T
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    assert all(p.stop - p.start <= chunk for p in stream.pieces)
    rid = np.asarray(trace.request_id)
    starts = {int(s) for s in np.flatnonzero(np.r_[False, rid[1:] != rid[:-1]])}
    assert {p.start for p in stream.pieces if p.reset} == (starts if cold else set())
    step0 = 0
    for p in stream.pieces:
        assert p.step0 == step0 and p.kept == int(kept[p.start:p.stop].sum())
        # A piece is wholly warm-up or wholly counted: counted iff its first kept step is past the warm-up.
        assert p.counted == (step0 >= warmup) or p.kept == 0
        assert np.array_equal(stream.read(p), np.asarray(trace.experts)[p.start:p.stop][kept[p.start:p.stop]])
        step0 += p.kept


def test_a_cold_start_needs_request_ids() -> None:
    trace = make_trace(np.zeros((3, 1, 1), np.int16), TraceMeta("x", 1, 2, 1))
    with pytest.raises(ConfigError, match="request_id"):
        plan_stream(trace, 2, cold_start=True)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0, 1e3, allow_nan=False), min_size=1, max_size=300), st.integers(1, 40))
def test_step_series_percentiles_equal_numpy_in_and_out_of_memory(tmp_path_factory, values, in_memory) -> None:
    path = tmp_path_factory.mktemp("series") / "s.f64"
    series = StepSeries(path, in_memory=in_memory)
    for a in range(0, len(values), 7):
        series.append(np.array(values[a:a + 7]))
    qs = [0, 1, 50, 90, 99, 99.9, 100]
    assert series.percentiles(qs) == [float(np.percentile(values, q)) for q in qs]
    assert series.count == len(values)
