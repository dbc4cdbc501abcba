"""Prefetchers: exact plans on hand-made traces, the jitted plans against their references, and
prefetch accuracy / coverage counted by hand through the hierarchy and the timing model."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from moesim.sim.errors import ConfigError
from moesim.sim.levels import HierarchyConfig, Level
from moesim.sim.offload import simulate_hierarchy, simulate_offload
from moesim.sim.prefetch import (
    get_prefetcher,
    list_prefetchers,
    make_plan,
    plan_from_lists,
    resolve_prefetch_params,
)
from moesim.sim.prefetch.speculative import predictions
from moesim.sim.profiles import HardwareProfile, ModelProfile
from moesim.traces.trace import TraceMeta, make_trace
from strategies import trace_of


def model(num_layers: int, num_experts: int = 4) -> ModelProfile:
    return ModelProfile(name="toy", hf_id="none", hidden_size=64, expert_intermediate_size=32,
                        num_experts=num_experts, top_k=1, num_moe_layers=num_layers, matrices_per_expert=3,
                        dense_params_per_layer=4096, dense_format="bf16", other_params=640)


def hardware() -> HardwareProfile:
    return HardwareProfile(name="toy-hw", description="hand-made", gpu_name="toy", gpu_memory_gib=1.0,
                           gpu_bandwidth_gbps=1.0, gpu_tflops=1.0, h2d_bandwidth_gbps=0.1, h2d_latency_us=10.0,
                           nvme_bandwidth_gbps=0.05, nvme_latency_us=100.0, dram_gib=1.0)


def plan_rows(plan) -> list[list[tuple[int, int]]]:
    return [plan.row(r) for r in range(plan.num_rows)]


def test_registry_finds_the_shipped_prefetchers_and_refuses_unknown_knobs() -> None:
    # every registered prefetcher is checked against its config in test_registries.py
    assert {"affinity", "none", "oracle", "speculative"} <= set(list_prefetchers())
    with pytest.raises(ConfigError, match="unknown prefetcher"):
        get_prefetcher("psychic")
    with pytest.raises(ConfigError, match="lookahed"):
        resolve_prefetch_params(get_prefetcher("oracle"), {"lookahed": 2})


@pytest.mark.parametrize(("name", "params", "match"), [
    ("oracle", {"lookahead": 0}, "lookahead"), ("oracle", {"top_n": 0}, "top_n"),
    ("affinity", {"top_n": 0}, "top_n"), ("affinity", {"wrap": 1}, "wrap"),
    ("speculative", {"accuracy": 1.5}, "accuracy"), ("speculative", {"simulate": "yes"}, "simulate"),
])
def test_bad_knob_values_are_refused(name: str, params: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make_plan(name, trace_of([[[0], [1]]], 3), params)


# ---- affinity ------------------------------------------------------------------------------

# L = 2, E = 3 (keys: layer 0 -> 0..2, layer 1 -> 3..5). Rows r = 2t + l.
AFF = trace_of([[[0], [1]], [[0], [1]], [[2], [0]], [[2], [2]]], 3)


def test_affinity_learns_transitions_online() -> None:
    # r0: nothing learnt.  r1 (last layer): learns 0 -> 1, predicts nothing (no wrap).
    # r2 (expert 0): 0 -> 1 seen once: prefetch key 3 + 1 = 4 for row 3.  r3 learns 0 -> 1 again.
    # r4 (expert 2): nothing known about 2.  r5 learns 2 -> 0.  r6 (expert 2): prefetch key 3 for r7.
    plan = make_plan("affinity", AFF)
    assert plan_rows(plan) == [[], [], [(4, 3)], [], [], [], [(3, 7)], []]
    assert plan.equals(get_prefetcher("affinity").reference(AFF, resolve_prefetch_params(get_prefetcher("affinity"), {}), 0))


def test_affinity_wrap_predicts_the_next_steps_first_layer() -> None:
    # With wrap, row 1 (layer 1 -> next step's layer 0) learns pairs too: r3 predicts from 1 -> 0.
    plan = make_plan("affinity", AFF, {"wrap": True})
    assert plan_rows(plan) == [[], [], [(4, 3)], [(0, 4)], [], [], [(3, 7)], []]


def test_affinity_ranks_by_score_then_expert_id() -> None:
    # Layer 0 expert 0 is followed by {1, 2} then {2, 3}: scores 1:1, 2:2, 3:1. top_n=2 -> 2, then 1.
    tr = trace_of([[[0], [1, 2]], [[0], [2, 3]], [[0], [0, 1]]], 4, top_k=2)
    plan = make_plan("affinity", tr, {"top_n": 2})
    assert plan.row(4) == [(4 + 2, 5), (4 + 1, 5)]
    assert make_plan("affinity", tr, {"top_n": 1}).row(4) == [(6, 5)]


# ---- oracle --------------------------------------------------------------------------------

def test_oracle_prefetches_the_row_lookahead_ahead() -> None:
    tr = trace_of([[[0, 1], [2]], [[3], [0, 2]]], 4, top_k=2)  # keys: rows [0,1] [6] [3] [4,6]
    assert plan_rows(make_plan("oracle", tr)) == [[(6, 1)], [(3, 2)], [(4, 3), (6, 3)], []]
    assert plan_rows(make_plan("oracle", tr, {"lookahead": 2})) == [[(3, 2)], [(4, 3), (6, 3)], [], []]
    assert plan_rows(make_plan("oracle", tr, {"lookahead": 2, "top_n": 1})) == [[(3, 2)], [(4, 3)], [], []]
    assert plan_rows(make_plan("oracle", tr, {"lookahead": 9})) == [[], [], [], []]


# ---- speculative ---------------------------------------------------------------------------

def test_speculative_uses_the_traces_predictions() -> None:
    experts = [[[0], [1]], [[0], [2]]]
    predicted = np.array([[[3], [1]], [[3], [0]]])
    tr = trace_of(experts, 4, predicted=predicted)
    # Row (t, 0) prefetches predicted[t, 1] for row (t, 1); the last layer predicts nothing.
    assert plan_rows(make_plan("speculative", tr)) == [[(5, 1)], [], [(4, 3)], []]
    # simulate=True ignores them: accuracy 1 predicts exactly the trace.
    assert plan_rows(make_plan("speculative", tr, {"simulate": True, "accuracy": 1.0})) == [[(5, 1)], [], [(6, 3)], []]


def test_simulated_predictor_accuracy_extremes() -> None:
    rng = np.random.default_rng(0)
    arr = np.stack([np.stack([rng.choice(6, 2, replace=False) for _ in range(3)]) for _ in range(50)])
    tr = make_trace(arr, TraceMeta(model="hand", num_layers=3, num_experts=6, top_k=2))
    perfect = predictions(tr, {"accuracy": 1.0, "simulate": False, "top_n": None}, 0)
    np.testing.assert_array_equal(perfect, arr)
    wrong = predictions(tr, {"accuracy": 0.0, "simulate": False, "top_n": None}, 0)
    for t in range(50):
        for layer in range(3):
            guess = set(wrong[t, layer].tolist())
            assert len(guess) == 2 and not guess & set(arr[t, layer].tolist())
    half = predictions(tr, {"accuracy": 0.5, "simulate": False, "top_n": None}, 0)
    hits = int((half == arr).sum())
    assert 0 < hits < arr.size


@st.composite
def random_trace(draw):
    L = draw(st.integers(1, 4))
    E = draw(st.integers(2, 6))
    K = draw(st.integers(1, E))
    T = draw(st.integers(1, 8))
    rows = [[draw(st.lists(st.integers(0, E - 1), unique=True, min_size=1, max_size=K)) for _ in range(L)]
            for _ in range(T)]
    return trace_of(rows, E, top_k=max(len(ids) for step in rows for ids in step))


@settings(max_examples=60, deadline=None)
@given(random_trace(), st.sampled_from([
    ("affinity", {}), ("affinity", {"top_n": 2, "wrap": True}), ("oracle", {}), ("oracle", {"lookahead": 3}),
    ("oracle", {"top_n": 1}), ("speculative", {"accuracy": 0.6}), ("speculative", {"accuracy": 0.3, "top_n": 1}),
    ("none", {})]), st.integers(0, 3), st.one_of(st.none(), st.integers(1, 3)))
def test_plans_equal_their_references(trace, choice, seed: int, chunk_steps) -> None:
    # Planned piece by piece (what the engine does), the plan equals the whole-trace reference.
    name, params = choice
    module = get_prefetcher(name)
    plan = make_plan(name, trace, params, seed, chunk_steps=chunk_steps)
    assert plan.equals(module.reference(trace, resolve_prefetch_params(module, params), seed))
    plan.check(trace.num_steps * trace.num_layers, trace.num_layers * trace.num_experts)


# ---- accuracy, coverage and the budget, counted by hand ------------------------------------

# L = 2, E = 4 (layer-1 keys 4..7). Layer 1 uses 1, 2, 3, 1; the predictor says 1, 3, 3, 0.
SPEC = trace_of([[[0], [1]], [[0], [2]], [[0], [3]], [[0], [1]]], 4,
                predicted=np.array([[[0], [1]], [[0], [3]], [[0], [3]], [[0], [0]]]))


def test_speculative_accuracy_and_coverage_by_hand() -> None:
    # No prefetch, L1 of 8 (nothing is ever evicted): misses are the first uses of 0, 5, 6, 7 = 4.
    # With the predictions: t0 prefetches 5 (used at once: useful); t1 prefetches 7 (wrong for t1,
    # but used at t2: useful), demand-misses 6; t2's guess 7 is resident (skipped); t3 prefetches 4
    # (never used). Issued 3, useful 2, misses 0 and 6 = 2.
    cfg = HierarchyConfig(l1=Level(experts=8))
    base = simulate_hierarchy(SPEC, cfg).counts
    res = simulate_hierarchy(SPEC, cfg, prefetcher=make_plan("speculative", SPEC))
    c = res.counts
    assert base["l1_misses"] == 4
    assert (c["l1_misses"], c["prefetch_issued"], c["prefetch_useful"], c["prefetch_skipped_resident"]) == (2, 3, 2, 1)
    assert (c["prefetch_wasted"], c["l1_fills"]) == (0, 5)
    assert res.prefetch_accuracy == 2 / 3

    r = simulate_offload(SPEC, model(2), hardware(), "bf16", l1=8, prefetcher="speculative")
    # Coverage: useful prefetches over useful plus the demand misses left, 2 / (2 + 2).
    assert r.prefetch_accuracy == 2 / 3 and r.prefetch_coverage == 2 / (2 + 2)


def test_wasted_prefetches_are_counted_when_evicted_unused() -> None:
    # Layer-1 keys 5, 6, 7 on steps 0..2; the predictor says experts 0, 3, 2 (keys 4, 7, 6). LRU L1
    # of 3, recency listed oldest first.  r0: 0 misses; prefetch 4 -> [0 4].  r1: 5 misses ->
    # [0 4 5].  r2: 0 hits -> [4 5 0]; prefetch 7 evicts 4, unused: wasted -> [5 0 7].  r3: 6 misses,
    # evicting 5 -> [0 7 6].  r4: 0 hits; candidate 6 is resident: touched -> [7 0 6].  r5: 7 hits:
    # the prefetch from r2 was useful after all (late).
    tr = trace_of([[[0], [1]], [[0], [2]], [[0], [3]]], 4, predicted=np.array([[[0], [0]], [[0], [3]], [[0], [2]]]))
    r = simulate_hierarchy(tr, HierarchyConfig(l1=Level(experts=3)), prefetcher=make_plan("speculative", tr),
                           record=True)
    c = r.counts
    assert (c["prefetch_issued"], c["prefetch_useful"], c["prefetch_wasted"]) == (2, 1, 1)
    assert (c["prefetch_skipped_resident"], c["l1_misses"], c["l1_hits"], c["l1_evictions"]) == (1, 3, 3, 2)
    assert r.events["key"].tolist() == [0, 4, 5, 7, 6] and r.events["kind"].tolist() == [0, 1, 0, 1, 0]
    assert r.prefetch_accuracy == 0.5


def test_resident_candidates_are_touched_so_the_next_row_keeps_them() -> None:
    # One per-layer LRU cache of 2 per layer, rows of 2 experts. Layer 1 uses {0, 1}, then {0, 2}.
    # At step 1 the oracle asks for {0, 2} while layer 1 holds 0 and 1, 0 least recent: touching
    # 0 first makes 2's fetch evict 1, so step 1's layer 1 hits twice and nothing is fetched twice.
    tr = trace_of([[[0, 1], [0, 1]], [[0, 1], [0, 2]]], 3, top_k=2)
    cfg = HierarchyConfig(l1=Level(experts=4, organisation="per_layer"))  # 2 per layer
    r = simulate_hierarchy(tr, cfg, prefetcher=make_plan("oracle", tr))
    c = r.counts
    base = simulate_hierarchy(tr, cfg).counts
    assert base["l1_misses"] == 5 and base["l1_fills"] == 5
    # Oracle: rows 1 and 2 are prefetched in full (r0 -> 4 misses of rows 0/1 minus 2 prefetched),
    # row 3's 2 is prefetched at row 2 and 0 is touched there.
    assert (c["l1_misses"], c["l1_fills"], c["prefetch_issued"], c["prefetch_useful"]) == (2, 5, 3, 3)
    assert c["prefetch_dropped_room"] == 0 and c["prefetch_wasted"] == 0


def test_budget_limits_prefetches_in_flight() -> None:
    # One layer, keys 0..5 once each; oracle lookahead 2 issues at row r the key of row r + 2.
    tr = trace_of([[[k]] for k in range(6)], 8)
    cfg = HierarchyConfig(l1=Level(experts=8))
    plan = make_plan("oracle", tr, {"lookahead": 2})
    free = simulate_hierarchy(tr, cfg, prefetcher=plan).counts
    assert (free["prefetch_issued"], free["l1_misses"], free["prefetch_useful"]) == (4, 2, 4)
    # Budget 1: row 0 issues 2 (in flight until row 2), row 1's 3 is dropped, row 2 issues 4, row 3's
    # 5 is dropped: rows 0, 1, 3, 5 miss.
    one = simulate_hierarchy(tr, HierarchyConfig(l1=Level(experts=8), prefetch_budget=1), prefetcher=plan).counts
    assert (one["prefetch_issued"], one["prefetch_dropped_budget"], one["l1_misses"]) == (2, 2, 4)
    zero = simulate_hierarchy(tr, HierarchyConfig(l1=Level(experts=8), prefetch_budget=0), prefetcher=plan).counts
    assert (zero["prefetch_issued"], zero["prefetch_dropped_budget"], zero["l1_misses"]) == (0, 4, 6)
    # Coverage through the timing model with the budget of 1: 2 useful / (2 useful + 4 misses).
    r = simulate_offload(tr, model(1, num_experts=8), hardware(), "bf16", l1=8, prefetcher="oracle",
                         prefetch_params={"lookahead": 2}, prefetch_budget=1)
    assert r.prefetch_coverage == 2 / 6 and r.prefetch_accuracy == 1.0


def test_plan_check_refuses_a_plan_that_does_not_fit() -> None:
    with pytest.raises(ConfigError, match="covers"):
        plan_from_lists([[]]).check(2, 4)
    with pytest.raises(ConfigError, match="outside"):
        plan_from_lists([[(9, 1)], []]).check(2, 4)
    with pytest.raises(ConfigError, match="not ahead"):
        plan_from_lists([[(1, 0)], []]).check(2, 4)
