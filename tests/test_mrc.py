"""Hit-ratio curves: LRU stack distances with rows (one pass) against separate replays."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moesim.sim.errors import ConfigError
from moesim.sim.mrc import (
    hit_ratio_curve,
    hit_ratio_curves,
    lru_hit_curve,
    make_stack_state,
    opt_hit_curve,
    stack_distances,
    stack_distances_reference,
)
from moesim.sim.replay import replay
from moesim.traces.trace import Trace, TraceMeta, make_trace

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def trace_of(experts, num_experts: int, **kw) -> Trace:
    arr = np.asarray(experts, np.int16)
    return make_trace(arr, TraceMeta("test", arr.shape[1], num_experts, arr.shape[2]), **kw)


def depths(rows: list[list[int]], num_keys: int) -> list[int]:
    keys = np.array([k for r in rows for k in r], np.int32)
    row_ptr = np.r_[0, np.cumsum([len(r) for r in rows])].astype(np.int64)
    out = np.empty(len(keys), np.int64)
    stack_distances(make_stack_state(num_keys), keys, row_ptr, out)
    assert out.tolist() == stack_distances_reference(keys, row_ptr).tolist()
    return out.tolist()


def test_stack_distances_by_hand() -> None:
    # Rows [0, 1], [2], [1, 0], [2]. Distances are read at the start of the row:
    # row 2: stack (most recent first) 2 1 0 -> 1 at 2, 0 at 3; the row leaves 0 1 2 (0 last, on top);
    # row 3: 2 is third.
    assert depths([[0, 1], [2], [1, 0], [2]], 3) == [0, 0, 0, 2, 3, 3]


@SETTINGS
@given(rows=st.lists(st.lists(st.integers(0, 9), min_size=1, max_size=4, unique=True), min_size=1, max_size=150))
def test_stack_distances_match_the_reference(rows: list[list[int]]) -> None:
    # 10 keys use a 256-entry log (one block), so traces over 256 accesses exercise its compaction.
    depths(rows, 10)


@SETTINGS
@given(rows=st.lists(st.lists(st.integers(0, 99), min_size=1, max_size=8, unique=True), min_size=1, max_size=200))
def test_stack_distances_across_words_match_the_reference(rows: list[list[int]]) -> None:
    # 100 keys: a 512-entry log of two blocks of four words, distances counted across words and blocks.
    depths(rows, 100)


@st.composite
def traces(draw):
    L = draw(st.integers(1, 3))
    E = draw(st.integers(2, 6))
    K = draw(st.integers(1, min(3, E)))
    T = draw(st.integers(1, 16))
    experts = np.full((T, L, K), -1, np.int16)
    for t in range(T):
        for layer in range(L):
            n = draw(st.integers(0, K))
            experts[t, layer, :n] = draw(st.permutations(range(E)))[:n]
    rid = np.cumsum(draw(st.lists(st.booleans(), min_size=T, max_size=T))).astype(np.int64)
    return make_trace(experts, TraceMeta("h", L, E, K), request_id=rid)


@pytest.mark.parametrize("policy", ["lru", "opt"])
@SETTINGS
@given(trace=traces(), organisation=st.sampled_from(["shared", "per_layer"]),
       tie=st.sampled_from(["row", "reverse", "expert_id"]), warmup=st.integers(0, 3), cold=st.booleans(),
       n_pinned=st.integers(0, 2), chunk=st.integers(1, 6))
def test_one_pass_curve_equals_separate_replays(policy, trace, organisation, tie, warmup, cold, n_pinned,
                                                chunk) -> None:
    L, E = trace.num_layers, trace.num_experts
    pinned = sorted({(i * 5 + 1) % (L * E) for i in range(n_pinned)})
    kw = {"organisation": organisation, "tie_break": tie, "warmup_steps": warmup,
          "cold_start_per_request": cold, "pinned": pinned}
    curve = (lru_hit_curve if policy == "lru" else opt_hit_curve)(trace, chunk_steps=chunk, **kw)
    assert curve.sizes[-1] == L * E and curve.method == "stack" and curve.policy == policy
    for n, size in enumerate(curve.sizes):
        res = replay(trace, policy, int(size), **kw)
        assert curve.hits[n] == res.hits, size
        assert curve.layer_hits[n].tolist() == [c.hits for c in res.per_layer]
        assert curve.accesses == res.accesses
    assert np.all(np.diff(curve.hits) >= 0)  # a stack algorithm: never worse when bigger
    # The smallest size is the smallest one a replay accepts.
    if curve.sizes[0] > 1:
        with pytest.raises(ConfigError):
            replay(trace, policy, int(curve.sizes[0]) - 1, **kw)


@SETTINGS
@given(T=st.integers(1, 400), E=st.integers(2, 40), K=st.integers(1, 4), seed=st.integers(0, 10_000))
def test_opt_curve_equals_replays_on_longer_rows(T: int, E: int, K: int, seed: int) -> None:
    """Longer random traces of one layer: many keys tie on their next row, stacks grow deep."""
    K = min(K, E)
    rng = np.random.default_rng(seed)
    ex = np.stack([rng.choice(E, K, replace=False) for _ in range(T)])[:, None, :]
    tr = trace_of(ex, E)
    sizes = sorted({K, (K + E) // 2, E})
    curve = opt_hit_curve(tr, sizes)
    assert curve.hits.tolist() == [replay(tr, "opt", s).hits for s in sizes]


def test_curve_starts_at_the_widest_row_by_hand() -> None:
    # One layer, 4 experts; rows [0, 1], [2, 3], [0, 1]: no cache below 2 can serve a row.
    # Size 2: the third row misses (2 3 evicted 0 1). Size 3: 3 evicts 0, so in the last row 1 is
    # still there (stack distance 3) and hits, 0 (distance 4) misses. Size 4 keeps everything.
    tr = trace_of([[[0, 1]], [[2, 3]], [[0, 1]]], 4)
    curve = lru_hit_curve(tr)
    assert curve.sizes.tolist() == [2, 3, 4]
    assert curve.hits.tolist() == [0, 1, 2]
    assert curve.hit_ratio.tolist() == [0.0, 1 / 6, 2 / 6]
    assert [replay(tr, "lru", s).hits for s in (2, 3, 4)] == [0, 1, 2]
    with pytest.raises(ConfigError, match="size 1: 1 policy slot"):
        lru_hit_curve(tr, [1])
    # the first bad size in the order given is the one named, as replay names it
    with pytest.raises(ConfigError, match="size 1: 1 policy slot"):
        lru_hit_curve(tr, [3, 1, 0])
    with pytest.raises(ConfigError) as zero:
        lru_hit_curve(tr, [3, 0, 1])
    with pytest.raises(ConfigError) as replayed:
        replay(tr, "lru", 0)
    assert str(zero.value) == str(replayed.value)
    assert lru_hit_curve(tr, [4, 2]).hits.tolist() == [2, 0]  # sizes in any order


def test_hit_ratio_curve_uses_one_pass_for_lru_and_opt() -> None:
    tr = trace_of([[[0, 1]], [[2, 3]], [[0, 1]]], 4)
    curve = hit_ratio_curve(tr, "lru", [2, 4])
    assert curve.method == "stack" and curve.hits.tolist() == [0, 2]
    # OPT at 3 slots keeps one of 0 and 1 through the second row (both are needed next at the same
    # time, so either): one hit.
    opt = hit_ratio_curve(tr, "opt", [2, 3, 4])
    assert opt.method == "stack" and opt.hits.tolist() == [0, 1, 2]
    d = curve.to_dict()
    assert d["sizes"] == [2, 4] and d["hits"] == [0, 2] and d["hit_ratio"][1] == 2 / 6


@pytest.mark.parametrize("processes", [1, 2])
def test_hit_ratio_curve_replays_other_policies(processes: int) -> None:
    rng = np.random.default_rng(2)
    T, L, E = 120, 2, 6
    ex = np.stack([np.stack([rng.choice(E, 2, replace=False) for _ in range(L)]) for _ in range(T)])
    tr = trace_of(ex, E)
    sizes = [2, 5, 9]
    curve = hit_ratio_curve(tr, "fifo", sizes, processes=processes, warmup_steps=10)
    assert curve.method == "replay"
    for n, s in enumerate(sizes):
        res = replay(tr, "fifo", s, warmup_steps=10)
        assert curve.hits[n] == res.hits
        assert curve.layer_hits[n].tolist() == [c.hits for c in res.per_layer]
    fifo = hit_ratio_curve(tr, "fifo", sizes, processes=1)
    opt = hit_ratio_curve(tr, "opt", sizes, processes=1)
    assert np.all(opt.hits >= fifo.hits) and np.all(np.diff(opt.hits) >= 0)


def test_hit_ratio_curve_refuses_bad_arguments() -> None:
    tr = trace_of([[[0]]], 2)
    with pytest.raises(ConfigError, match=r"does not take \['capacity'\]"):
        hit_ratio_curve(tr, "lru", [1], capacity=3)
    with pytest.raises(ConfigError, match="unknown policy 'nope'"):
        hit_ratio_curve(tr, "nope", [1])
    with pytest.raises(ConfigError, match="sizes is empty"):
        hit_ratio_curve(tr, "fifo", [])


@pytest.mark.parametrize("policy", ["fifo", "clock", "arc", "lfu", "s3fifo", "random"])
@SETTINGS
@given(trace=traces(), organisation=st.sampled_from(["shared", "per_layer"]),
       tie=st.sampled_from(["row", "reverse", "expert_id"]), warmup=st.integers(0, 3), cold=st.booleans(),
       n_pinned=st.integers(0, 1), chunk=st.integers(1, 6), seed=st.integers(0, 9))
def test_sizes_in_lock_step_equal_separate_replays(policy, trace, organisation, tie, warmup, cold, n_pinned, chunk,
                                                   seed) -> None:
    """run_sizes (one read of each piece for every size) gives what one replay per size gives."""
    from moesim.sim import engine
    from moesim.sim.cache_setup import setup_cache

    L, E, K = trace.num_layers, trace.num_experts, trace.width
    pinned = sorted({(i * 5 + 1) % (L * E) for i in range(n_pinned)})
    per = L if organisation == "per_layer" else 1
    sizes = sorted({per * (K + n_pinned + 1), per * (K + n_pinned + 2), L * E + per})
    kw = {"organisation": organisation, "tie_break": tie, "warmup_steps": warmup, "cold_start_per_request": cold,
          "pinned": pinned, "seed": seed}
    setups = [setup_cache(L, E, policy, s, **kw) for s in sizes]
    runs = engine.run_sizes(trace, setups, chunk_steps=chunk)
    for run, size in zip(runs, sizes, strict=True):
        assert run.l1.to_dict() == replay(trace, policy, size, chunk_steps=chunk, **kw).to_dict()


def test_run_sizes_refuses_caches_that_differ_beyond_size() -> None:
    from moesim.sim import engine
    from moesim.sim.cache_setup import setup_cache

    tr = trace_of([[[0, 1]], [[2, 3]]], 4)
    with pytest.raises(ConfigError, match="differ only in capacity and seed"):
        engine.run_sizes(tr, [setup_cache(1, 4, "fifo", 2), setup_cache(1, 4, "fifo", 3, warmup_steps=1)])
    with pytest.raises(ConfigError, match="differ only in capacity and seed"):
        engine.run_sizes(tr, [setup_cache(1, 4, "fifo", 2), setup_cache(1, 4, "lru", 3)])
    assert engine.run_sizes(tr, []) == []


@pytest.mark.parametrize("processes", [1, 2])
def test_hit_ratio_curves_sweep_several_policies(processes: int, tmp_path) -> None:
    rng = np.random.default_rng(5)
    T, L, E = 150, 3, 6
    ex = np.stack([np.stack([rng.choice(E, 2, replace=False) for _ in range(L)]) for _ in range(T)])
    tr = trace_of(ex, E)
    sizes = [2, 5, 9, 18]
    policies = ["lru", "fifo", "opt", "arc", "s3fifo"]
    curves = hit_ratio_curves(tr, policies, sizes, processes=processes, warmup_steps=7, params={"s3fifo": {}})
    assert list(curves) == policies
    for policy in policies:
        c = curves[policy]
        assert c.method == ("stack" if policy in ("lru", "opt") else "replay")
        for n, s in enumerate(sizes):
            res = replay(tr, policy, s, warmup_steps=7)
            assert c.hits[n] == res.hits and c.accesses == res.accesses
            assert c.layer_hits[n].tolist() == [x.hits for x in res.per_layer]
    # A memory-mapped trace is reopened by its path in the workers.
    from moesim.traces.io import load, save

    mapped = load(save(tr, tmp_path / "t.safetensors"))
    again = hit_ratio_curves(mapped, ["fifo", "lru"], sizes, processes=processes, warmup_steps=7)
    assert again["fifo"].hits.tolist() == curves["fifo"].hits.tolist()
    with pytest.raises(ConfigError, match="params given for"):
        hit_ratio_curves(tr, ["lru"], sizes, params={"arc": {}})
