"""The two-level hierarchy: hand-computed counts, every policy through it, and the jitted loop against
its plain-Python twin (tests/hierarchy_reference.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hierarchy_reference import prefetch_next_use, reference_hierarchy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moesim.sim.errors import ConfigError
from moesim.sim.levels import HierarchyConfig, Level
from moesim.sim.offload import simulate_hierarchy
from moesim.sim.prefetch import plan_from_lists, routing_rows
from moesim.sim.replay import replay
from moesim.sim.row_loop import NEVER
from strategies import trace_of

# Keys 0 1 0 1 2 0 on one layer: the worked example in the comments below.
HAND = trace_of([[[0]], [[1]], [[0]], [[1]], [[2]], [[0]]], num_experts=4)


def test_inclusive_counts_on_a_hand_made_trace() -> None:
    # L1 holds 1 expert, DRAM 2 (starting empty). Inclusive LRU in DRAM:
    # 0: miss, SSD -> DRAM {0}.  1: miss, SSD -> DRAM {0,1}; L1 victim 0 re-enters DRAM's queue.
    # 0: DRAM hit.  1: DRAM hit.  2: SSD, DRAM evicts 0 (least recent outside L1).  0: SSD, evicts 1.
    cfg = HierarchyConfig(l1=Level(experts=1), l2=Level(experts=2), inclusive=True, l2_prefill=False)
    c = simulate_hierarchy(HAND, cfg).counts
    assert (c["l1_hits"], c["l1_misses"]) == (0, 6)
    assert (c["l2_hits"], c["l2_misses"], c["ssd_reads"], c["l2_fills"]) == (2, 4, 4, 4)
    assert (c["l2_evictions"], c["demotions"], c["l1_evictions"], c["l1_fills"]) == (2, 0, 5, 6)


def test_exclusive_counts_on_the_same_trace() -> None:
    # Exclusive: an L2 hit moves the expert up, every L1 victim is demoted (GPU -> DRAM).
    # 0: SSD.  1: SSD, demote 0 -> {0}.  0: DRAM hit (moves), demote 1 -> {1}.  1: DRAM hit, demote 0.
    # 2: SSD, demote 1 -> {0,1}.  0: DRAM hit, demote 2 -> {1,2}.  Together the levels hold 3 experts.
    cfg = HierarchyConfig(l1=Level(experts=1), l2=Level(experts=2), inclusive=False, l2_prefill=False)
    r = simulate_hierarchy(HAND, cfg, record=True)
    c = r.counts
    assert (c["l2_hits"], c["l2_misses"], c["ssd_reads"], c["l2_fills"]) == (3, 3, 3, 0)
    assert (c["demotions"], c["l2_evictions"], c["l1_misses"]) == (5, 0, 6)
    assert r.bytes_per_link(1000) == {"ssd_to_dram": 3000, "dram_to_gpu": 6000, "gpu_to_dram": 5000}
    assert r.events["src"].tolist() == [2, 2, 1, 1, 2, 1]


def test_prefilled_dram_serves_the_first_accesses() -> None:
    # DRAM starts with keys 0 and 1 (key order): the four accesses to them hit DRAM; then 2 comes
    # from the SSD (evicting 0), and 0 comes back from the SSD (evicting 1).
    cfg = HierarchyConfig(l1=Level(experts=1), l2=Level(experts=2), inclusive=True)
    c = simulate_hierarchy(HAND, cfg).counts
    assert (c["ssd_reads"], c["l2_hits"], c["l2_evictions"]) == (2, 4, 2)
    # With room for all three, nothing but the prefill ever reaches DRAM.
    big = HierarchyConfig(l1=Level(experts=1), l2=Level(experts=3), inclusive=True)
    assert simulate_hierarchy(HAND, big).counts["ssd_reads"] == 0


def test_everything_in_dram_means_no_ssd_traffic_and_bytes_equal_misses() -> None:
    rng = np.random.default_rng(0)
    trace = trace_of([[list(rng.choice(6, 2, replace=False)) for _ in range(3)] for _ in range(40)], 6)
    r = simulate_hierarchy(trace, HierarchyConfig(l1=Level(experts=5)))
    c = r.counts
    assert c["ssd_reads"] == 0 and c["l2_misses"] == 0
    assert c["l2_hits"] == c["l1_misses"] == c["l1_fills"] > 0
    assert c["l1_hits"] + c["l1_misses"] == r.l1.accesses == 240
    assert r.bytes_per_link(13_219_200)["dram_to_gpu"] == c["l1_misses"] * 13_219_200


@pytest.mark.parametrize("policy", ["lru", "fifo", "opt", "watermark", "arc"])
@pytest.mark.parametrize("organisation", ["shared", "per_layer"])
def test_l1_without_prefetch_matches_the_single_level_engine(policy: str, organisation: str) -> None:
    rng = np.random.default_rng(1)
    L, E = 3, 6
    trace = trace_of([[list(rng.choice(E, 2, replace=False)) for _ in range(L)] for _ in range(60)], E)
    cap = 10 if organisation == "per_layer" else 7  # per layer: 4, 3, 3
    r = simulate_hierarchy(trace, HierarchyConfig(l1=Level(experts=cap, policy=policy, organisation=organisation)),
                           record=True)
    one = replay(trace, policy, cap, organisation=organisation, record_steps=True)
    assert r.l1.to_dict() == one.to_dict()
    assert np.array_equal(r.l1.hit_mask, one.hit_mask)
    assert r.counts["l1_evictions"] == one.evictions and r.counts["l1_fills"] == one.misses


def test_warmup_leaves_the_first_steps_out_of_the_counts() -> None:
    cfg = HierarchyConfig(l1=Level(experts=1))
    full = simulate_hierarchy(HAND, cfg, record=True)
    warm = simulate_hierarchy(HAND, cfg, warmup_steps=2, record=True)
    assert warm.counts["l1_hits"] + warm.counts["l1_misses"] == 4
    assert warm.counts["l1_evictions"] + warm.counts["l1_evictions_warmup"] == full.counts["l1_evictions"]
    assert np.array_equal(warm.l1.hit_mask, full.l1.hit_mask)  # the caches still saw the warm-up


def test_capacity_in_gib_goes_through_the_bytes_per_expert() -> None:
    assert Level(gib=1.0).capacity(1 << 28) == 4
    assert Level(gib=1.0).capacity(300_000_000) == 3
    with pytest.raises(ConfigError, match="bytes per expert"):
        Level(gib=1.0).capacity(None)


@pytest.mark.parametrize(("cfg", "match"), [
    (HierarchyConfig(l1=Level(experts=1)), "widest row"),
    (HierarchyConfig(l1=Level(experts=2), l2=Level(experts=2)), "L2 capacity"),
])
def test_impossible_configurations_are_refused(cfg: HierarchyConfig, match: str) -> None:
    trace = trace_of([[[0, 1]], [[2, 3]]], 4)
    with pytest.raises(ConfigError, match=match):
        simulate_hierarchy(trace, cfg)


def test_bad_levels_are_refused() -> None:
    with pytest.raises(ConfigError, match="exactly one"):
        Level()
    with pytest.raises(ConfigError, match="L2 policy"):
        HierarchyConfig(l1=Level(experts=2), l2=Level(experts=4, policy="opt"))
    with pytest.raises(ConfigError, match="organisation"):
        Level(experts=2, organisation="sideways")


def test_reference_prefetch_next_use_finds_the_first_later_request() -> None:
    trace = trace_of([[[0]], [[1]], [[0]], [[2]]], 3)
    plan = plan_from_lists([[(0, 1), (2, 2)], [(0, 2)], [(1, 3)], []])
    assert prefetch_next_use(routing_rows(trace), plan).tolist() == [2, 3, 2, NEVER]


def test_static_pinning_streams_its_misses_through_without_caching_them() -> None:
    # The static cache holds expert 0; 1 and 2 are streamed from DRAM at every use (a bypass: a
    # transfer for that row, nothing kept, nothing evicted).
    cfg = HierarchyConfig(l1=Level(experts=2, policy="static", params={"keys": [0]}))
    r = simulate_hierarchy(HAND, cfg, record=True)  # 0 1 0 1 2 0
    c = r.counts
    assert (c["l1_hits"], c["l1_misses"], c["l1_bypass"], c["l1_evictions"], c["l1_fills"]) == (3, 3, 3, 0, 3)
    assert r.events["key"].tolist() == [1, 1, 2] and r.events["kind"].tolist() == [2, 2, 2]
    # A prefetch of an expert the policy will not keep is dropped.
    pf = simulate_hierarchy(HAND, cfg, prefetcher=plan_from_lists([[(1, 1)], [], [], [], [], []])).counts
    assert pf["prefetch_dropped_policy"] == 1 and pf["prefetch_issued"] == 0


def test_watermark_batches_leave_the_gpu_all_at_once() -> None:
    # Watermark of 4 slots, high = 1, low = 0.5: the miss that finds 4 residents evicts 2 (down to
    # 2, the least recent ticks first), then inserts. All of a batch leave L1, and DRAM sees them.
    trace = trace_of([[[k]] for k in (0, 1, 2, 3, 4, 0, 1)], 5)
    cfg = HierarchyConfig(l1=Level(experts=4, policy="watermark", params={"low": 0.5}), l2=Level(experts=5))
    c = simulate_hierarchy(trace, cfg).counts
    # 0 1 2 3 fill; 4 evicts 0 and 1; 0 misses (3 residents: no batch), 1 misses, evicting 2 and 3.
    assert (c["l1_misses"], c["l1_hits"], c["l1_evictions"]) == (7, 0, 4)
    assert replay(trace, "watermark", 4, params={"low": 0.5}).evictions == 4


@st.composite
def scenarios(draw):
    L = draw(st.integers(1, 3))
    E = draw(st.integers(2, 6))
    K = draw(st.integers(1, min(3, E)))
    T = draw(st.integers(1, 10))
    steps = [[draw(st.lists(st.integers(0, E - 1), min_size=0, max_size=K, unique=True)) for _ in range(L)]
             for _ in range(T)]
    if all(not row for step in steps for row in step):
        steps[0][0] = [0]
    trace = trace_of(steps, E)
    R, width = T * L, max(len(r) for s in steps for r in s)
    plan = plan_from_lists([draw(st.lists(st.tuples(st.integers(0, L * E - 1), st.integers(r + 1, r + 3)),
                                          max_size=3)) for r in range(R)])
    per_layer = draw(st.booleans())
    cap1 = draw(st.integers(width, width + 4))
    l1_total = cap1 * (L if per_layer else 1)
    l2 = draw(st.one_of(st.none(), st.builds(Level, experts=st.integers(l1_total + 1, l1_total + 5),
                                               policy=st.sampled_from(["lru", "fifo"]))))
    cfg = HierarchyConfig(l1=Level(experts=l1_total, policy=draw(st.sampled_from(["lru", "fifo", "opt"])),
                                   organisation="per_layer" if per_layer else "shared"),
                          l2=l2, inclusive=draw(st.booleans()), l2_prefill=draw(st.booleans()),
                          prefetch_budget=draw(st.one_of(st.none(), st.integers(0, 3))))
    return trace, cfg, plan, draw(st.integers(0, 2))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(), st.one_of(st.none(), st.integers(1, 4)))
def test_jitted_hierarchy_equals_the_reference(scenario, chunk_steps) -> None:
    trace, cfg, plan, warmup = scenario
    a = simulate_hierarchy(trace, cfg, prefetcher=plan, warmup_steps=warmup, record=True, chunk_steps=chunk_steps)
    b = reference_hierarchy(trace, cfg, plan=plan, warmup_steps=warmup)
    assert a.counts == b["counts"]
    mask = np.asarray(trace.experts) >= 0
    assert np.array_equal(a.l1.hit_mask[mask], b["hit"].astype(bool))
    for name in ("row", "key", "src", "kind"):
        assert np.array_equal(a.events[name], b["events"][name]), name


@pytest.mark.parametrize("impl", ["engine", "reference"])
def test_a_guarded_prefetch_keeps_its_lru_position(impl: str) -> None:
    # One layer, shared LRU of 3. r0 prefetches 0 (for r2) and 1 (for r1); r1 prefetches 2 and 3
    # (for r2): 3 needs a victim while 0 (least recent) is still guarded, so 1 goes and 0 keeps
    # its place at the front. r2 demands 4: now 0 is the least recent and goes (wasted); r3
    # demands 0 again: a miss, evicting 2. Recency lost for 0 would keep it forever instead.
    trace = trace_of([[[]], [[]], [[4]], [[0]]], 6)
    plan = plan_from_lists([[(0, 2), (1, 1)], [(2, 2), (3, 2)], [], []])
    cfg = HierarchyConfig(l1=Level(experts=3))
    if impl == "engine":
        r = simulate_hierarchy(trace, cfg, prefetcher=plan, record=True)
        c, keys = r.counts, r.events["key"]
    else:
        ref = reference_hierarchy(trace, cfg, plan=plan)
        c, keys = ref["counts"], ref["events"]["key"]
    assert (c["l1_misses"], c["prefetch_issued"], c["prefetch_wasted"], c["l1_evictions"]) == (2, 4, 3, 3)
    assert keys.tolist() == [0, 1, 2, 3, 4, 0]
