"""The replay engine: layer clock, organisations, pinning, warm-up, cold starts, tie-breaks,
streaming, the result object, the CLI and configuration errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moesim.sim.errors import ConfigError
from moesim.sim.pinning import choose_pinned, expert_counts
from moesim.sim.policies import get_policy, resolve_policy_params
from moesim.sim.replay import instance_seed, replay, resolve_capacity
from moesim.sim.replay_cli import main as cli_main
from moesim.sim.rows import next_use_reference
from moesim.traces.importers import shared_data_dir
from moesim.traces.io import load, save
from moesim.traces.trace import DECODE, PREFILL, Trace, TraceMeta, make_trace
from strategies import traces

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def trace_of(experts: list, num_experts: int, **kw) -> Trace:
    arr = np.asarray(experts, np.int16)
    return make_trace(arr, TraceMeta("test", arr.shape[1], num_experts, arr.shape[2]), **kw)


# ---- an independent plain-Python engine --------------------------------------------------------

def naive_replay(trace: Trace, policy: str, capacity: int, *, organisation: str = "shared",
                 pinned: tuple[int, ...] = (), warmup_steps: int = 0, cold_start: bool = False,
                 tie_break: str = "row", seed: int = 0, params: dict | None = None) -> dict:
    """Rows per cache instance in layer-clock order, one policy ``reference`` run per segment
    between cold restarts, hits mapped back to (step, layer)."""
    module = get_policy(policy)
    ex = np.asarray(trace.experts)
    T, L, _ = ex.shape
    E = trace.num_experts
    per_layer = organisation == "per_layer"
    n_inst = L if per_layer else 1
    if per_layer:
        base, extra = divmod(capacity, L)
        caps = [base + (1 if i < extra else 0) - sum(1 for k in pinned if k // E == i) for i in range(L)]
    else:
        caps = [capacity - len(pinned)]
    starts = (list(trace.request_bounds()[:-1]) if cold_start else [0]) if T else []
    segments = [(int(a), int(b)) for a, b in zip(starts, [*starts[1:], T], strict=False)]
    step_hits = np.zeros((T, L), np.int64)
    for epoch, (a, b) in enumerate(segments):
        for j in range(n_inst):
            rows, times, where = [], [], []
            for t in range(a, b):
                for layer in range(L):
                    if per_layer and layer != j:
                        continue
                    row = [int(e) for e in ex[t, layer] if e >= 0 and layer * E + int(e) not in pinned]
                    if tie_break == "reverse":
                        row = row[::-1]
                    elif tie_break == "expert_id":
                        row = sorted(row)
                    if row:
                        rows.append(row if per_layer else [layer * E + e for e in row])
                        times.append(t * L + layer)
                        where.append((t, layer))
            if not rows:
                continue
            keys = np.array([k for r in rows for k in r], np.int64)
            row_ptr = np.r_[0, np.cumsum([len(r) for r in rows])].astype(np.int64)
            row_time = np.array(times, np.int64)
            nu = next_use_reference(keys, row_ptr, row_time)
            p = resolve_policy_params(module, params, layer=j if per_layer else -1, num_layers=L, num_experts=E)
            hits, _ = module.reference(keys, row_ptr, row_time, nu, caps[j], E if per_layer else L * E, p,
                                       instance_seed(seed, j, epoch if cold_start else 0))
            for r, (t, layer) in enumerate(where):
                step_hits[t, layer] += int(hits[row_ptr[r]:row_ptr[r + 1]].sum())
    for t in range(T):
        for layer in range(L):
            step_hits[t, layer] += sum(1 for e in ex[t, layer] if e >= 0 and layer * E + int(e) in pinned)
    acc = (ex >= 0).sum(axis=2)
    counted = np.arange(T) >= warmup_steps
    return {"hits": int(step_hits[counted].sum()), "accesses": int(acc[counted].sum()),
            "layer_hits": step_hits[counted].sum(axis=0).tolist(), "step_hits": step_hits,
            "warmup_hits": int(step_hits[~counted].sum())}


@pytest.mark.parametrize("policy", ["lru", "opt", "fifo", "random", "lfu"])
@SETTINGS
@given(trace=traces(), organisation=st.sampled_from(["shared", "per_layer"]), extra=st.integers(0, 4),
       warmup=st.integers(0, 4), cold=st.booleans(), tie=st.sampled_from(["row", "reverse", "expert_id"]),
       n_pinned=st.integers(0, 2), chunk=st.integers(1, 5), seed=st.integers(0, 100))
def test_engine_equals_naive_engine(policy, trace, organisation, extra, warmup, cold, tie, n_pinned, chunk,
                                    seed) -> None:
    L, E, K = trace.num_layers, trace.num_experts, trace.width
    pinned = tuple(sorted({(i * 7 + 3) % (L * E) for i in range(n_pinned)}))
    if organisation == "per_layer":
        capacity = L * (K + n_pinned) + extra
    else:
        capacity = K + len(pinned) + extra
    res = replay(trace, policy, capacity, organisation=organisation, pinned=pinned, warmup_steps=warmup,
                 cold_start_per_request=cold, tie_break=tie, seed=seed, chunk_steps=chunk, record_steps=True)
    want = naive_replay(trace, policy, capacity, organisation=organisation, pinned=pinned, warmup_steps=warmup,
                        cold_start=cold, tie_break=tie, seed=seed)
    assert (res.hits, res.accesses) == (want["hits"], want["accesses"])
    assert [c.hits for c in res.per_layer] == want["layer_hits"]
    assert res.warmup.hits == want["warmup_hits"]
    assert res.step_hits.tolist() == want["step_hits"].tolist()
    # Invariants of the result itself.
    assert sum(c.accesses for c in res.per_layer) == res.accesses
    assert sum(c.hits for c in res.per_layer) == res.hits
    assert sum(c.accesses for c in res.per_phase.values()) == res.accesses
    assert sum(c.hits for c in res.per_phase.values()) == res.hits
    assert res.accesses + res.warmup.accesses == int((np.asarray(trace.experts) >= 0).sum())
    assert res.step_hits.tolist() == res.hit_mask.sum(axis=2).tolist()
    assert not res.hit_mask[np.asarray(trace.experts) < 0].any()


# ---- hand-made traces --------------------------------------------------------------------------

# Two layers, two experts, one expert per row. Steps (layer 0, layer 1): (0, 0), (1, 0), (0, 1).
CLOCK_TRACE = [[[0], [0]], [[1], [0]], [[0], [1]]]


def test_layer_clock_and_shared_keys_by_hand() -> None:
    # Shared keys l*2+e in layer-clock order: 0, 2, 1, 2, 0, 3. LRU with 2 slots:
    # 0 m [0]; 2 m [0 2]; 1 m evict 0 [2 1]; 2 HIT [1 2]; 0 m evict 1 [2 0]; 3 m evict 2 [0 3].
    res = replay(trace_of(CLOCK_TRACE, 2), "lru", 2, record_steps=True)
    assert (res.accesses, res.hits, res.misses, res.evictions) == (6, 1, 5, 3)
    assert [(c.accesses, c.hits) for c in res.per_layer] == [(3, 0), (3, 1)]
    assert res.step_hits.tolist() == [[0, 0], [0, 1], [0, 0]]
    assert res.hit_mask[:, :, 0].tolist() == [[False, False], [False, True], [False, False]]


def test_per_layer_caches_by_hand() -> None:
    # 2 slots split into 1 per layer. Layer 0 sees 0, 1, 0: all miss (2 evictions); layer 1 sees
    # 0, 0, 1: the second 0 hits, 1 evicts 0 (1 eviction).
    per = replay(trace_of(CLOCK_TRACE, 2), "lru", 2, organisation="per_layer")
    assert per.layer_capacity == (1, 1)
    assert [(c.accesses, c.hits) for c in per.per_layer] == [(3, 0), (3, 1)]
    assert per.evictions == 3
    # Shared with 3 slots: 0 2 1 fill; 2 hits; 0 hits; 3 evicts 1: one hit per layer.
    shared3 = replay(trace_of(CLOCK_TRACE, 2), "lru", 3)
    assert [c.hits for c in shared3.per_layer] == [1, 1]
    # Layer 0 with 2 slots keeps 0 (hit at step 2); layer 1 with 1 slot as before.
    listed = replay(trace_of(CLOCK_TRACE, 2), "lru", per_layer_capacity=[2, 1], organisation="per_layer")
    assert listed.capacity == 3 and [c.hits for c in listed.per_layer] == [1, 1]


def test_equal_split_gives_the_remainder_to_the_first_layers() -> None:
    tr = trace_of(np.zeros((1, 3, 1)), 4)
    assert resolve_capacity(tr.num_layers, 8, None, None, "per_layer", None) == (8, (3, 3, 2))
    assert resolve_capacity(tr.num_layers, 8, None, None, "shared", None) == (8, None)


def test_tie_break_changes_what_a_row_leaves_behind() -> None:
    # One layer, 2 slots. Step 0 needs experts recorded as [1, 0]; step 1 needs 2; step 2 needs 0.
    # "row": 1 then 0, so 1 is least recent and 2 evicts it; 0 hits at step 2.
    # "reverse" / "expert_id": 0 then 1, so 2 evicts 0, which misses at step 2.
    tr = trace_of([[[1, 0]], [[2, -1]], [[0, -1]]], 3)
    assert replay(tr, "lru", 2, tie_break="row").hits == 1
    assert replay(tr, "lru", 2, tie_break="reverse").hits == 0
    assert replay(tr, "lru", 2, tie_break="expert_id").hits == 0
    # Whether a row's own experts hit never depends on the order: OPT and FIFO on a repeated row.
    rep = trace_of([[[1, 0]], [[1, 0]]], 3)
    for tie in ("row", "reverse", "expert_id"):
        assert replay(rep, "fifo", 2, tie_break=tie).hits == 2


def test_cold_start_per_request_by_hand() -> None:
    # One layer; requests [0, 1] and [0, 1] (experts); 2 slots. Warm: the second request hits twice.
    # Cold: each request starts empty, so nothing hits.
    tr = trace_of([[[0]], [[1]], [[0]], [[1]]], 3, request_id=[5, 5, 9, 9])
    assert replay(tr, "lru", 2).hits == 2
    cold = replay(tr, "lru", 2, cold_start_per_request=True)
    assert (cold.hits, cold.evictions, cold.cold_start_per_request) == (0, 0, True)


def test_opt_with_cold_restarts_by_hand() -> None:
    # Requests [0, 1, 2] and [0, 1] (one layer), 2 slots.
    tr = trace_of([[[0]], [[1]], [[2]], [[0]], [[1]]], 3, request_id=[0, 0, 0, 1, 1])
    # Warm: 0 1 fill; 2 evicts the one used later, 1 (next use 4; 0's is 3); 0 hits; 1 misses.
    warm = replay(tr, "opt", 2)
    assert (warm.hits, warm.evictions) == (1, 2)
    # Cold: the second request starts empty, so 0 and 1 miss again; 2 still evicts one key.
    cold = replay(tr, "opt", 2, cold_start_per_request=True)
    assert (cold.hits, cold.evictions) == (0, 1)


def test_warmup_steps_are_replayed_but_counted_apart() -> None:
    tr = trace_of([[[0]], [[1]], [[0]], [[1]]], 3)
    res = replay(tr, "lru", 2, warmup_steps=2)
    assert (res.accesses, res.hits) == (2, 2)  # the warm-up filled the cache
    assert (res.warmup.accesses, res.warmup.hits, res.warmup_evictions) == (2, 0, 0)


def test_pinned_experts_always_hit_and_take_no_policy_slot() -> None:
    # One layer; 0 1 2 0 1 2 with 2 slots: LRU hits nothing. Pin 0: it hits twice; the policy keeps
    # 1 slot for 1 2 1 2 and misses all.
    tr = trace_of([[[e]] for e in [0, 1, 2, 0, 1, 2]], 3)
    assert replay(tr, "lru", 2).hits == 0
    res = replay(tr, "lru", 2, pinned=[0])
    assert (res.hits, res.pinned_hits, res.num_pinned, res.evictions) == (2, 2, 1, 3)
    # With 3 slots and 0 pinned, the policy holds 1 and 2: the second 1 and 2 hit too.
    assert replay(tr, "lru", 3, pinned=[0]).hits == 4


def test_capacity_in_bytes_is_floored() -> None:
    tr = trace_of(np.zeros((1, 1, 1)), 40)
    assert resolve_capacity(tr.num_layers, None, 3.0, 0.1, "shared", None)[0] == 30  # 29.999... in floats
    assert resolve_capacity(tr.num_layers, None, 2.9, 1.0, "shared", None)[0] == 2
    res = replay(trace_of(CLOCK_TRACE, 2), "lru", capacity_bytes=2.5e9, bytes_per_expert=1e9)
    assert res.capacity == 2 and res.hits == 1


def test_phases_are_counted_separately() -> None:
    tr = trace_of([[[0]], [[0]], [[1]], [[0]]], 2, phase=[PREFILL, PREFILL, DECODE, DECODE])
    res = replay(tr, "lru", 2)
    assert {n: (c.accesses, c.hits) for n, c in res.per_phase.items()} == {"prefill": (2, 1), "decode": (2, 1)}
    assert replay(trace_of([[[0]]], 2), "lru", 1).per_phase == {}


def test_result_to_dict_is_json() -> None:
    res = replay(trace_of(CLOCK_TRACE, 2), "lru", 2, pinned=[3], record_steps=True)
    d = json.loads(json.dumps(res.to_dict(include_steps=True)))
    assert d["hits"] == res.hits and d["misses"] == res.misses and d["hit_rate"] == pytest.approx(res.hit_rate)
    assert [x["hits"] for x in d["per_layer"]] == [c.hits for c in res.per_layer]
    assert d["step_hits"] == res.step_hits.tolist()
    assert "step_hits" not in res.to_dict()
    with pytest.raises(AttributeError):
        res.hits = 0  # type: ignore[misc]


# ---- streaming ---------------------------------------------------------------------------------

@pytest.mark.parametrize("policy", ["lru", "opt"])
def test_memory_mapped_trace_in_small_chunks_matches_in_memory(tmp_path: Path, policy: str) -> None:
    rng = np.random.default_rng(0)
    T, L, K, E = 300, 4, 2, 8
    ex = np.stack([np.stack([rng.choice(E, K, replace=False) for _ in range(L)]) for _ in range(T)])
    tr = trace_of(ex, E, request_id=np.arange(T) // 37)
    save(tr, tmp_path / "t.safetensors")
    mm = load(tmp_path / "t.safetensors")
    assert isinstance(mm.experts, np.memmap)
    for kw in ({}, {"organisation": "per_layer"}, {"cold_start_per_request": True, "warmup_steps": 50}):
        whole = replay(tr, policy, 12, **kw)
        streamed = replay(mm, policy, 12, chunk_steps=7, **kw)
        assert (streamed.hits, streamed.evictions, streamed.warmup.hits) == \
            (whole.hits, whole.evictions, whole.warmup.hits), kw
        assert [c.hits for c in streamed.per_layer] == [c.hits for c in whole.per_layer]


# ---- pinning -----------------------------------------------------------------------------------

def test_choose_pinned_takes_the_hottest_of_the_profile() -> None:
    # Layer 0: expert 1 x3, 0 x1; layer 1: expert 0 x2, 1 x2 (tie: lower key first).
    profile = trace_of([[[1], [0]], [[1], [1]], [[1], [0]], [[0], [1]]], 2)
    assert expert_counts(profile).tolist() == [1, 3, 2, 2]
    assert choose_pinned(profile, 1) == [1]
    assert choose_pinned(profile, 2) == [1, 2]
    assert choose_pinned(profile, 1, "per_layer") == [1, 2]
    with pytest.raises(ConfigError, match=r"cannot pin 3 experts per layer: must lie in \[0, 2\]"):
        choose_pinned(profile, 3, "per_layer")


# ---- configuration errors ----------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"capacity": 0}, "capacity must be >= 1 expert, got 0"),
    ({"capacity": 1, "capacity_bytes": 5.0}, "give only one of capacity, capacity_bytes"),
    ({}, "no cache size"),
    ({"capacity_bytes": 5.0}, "capacity_bytes needs a positive bytes_per_expert"),
    ({"capacity_bytes": 0.5, "bytes_per_expert": 1.0}, "holds no expert of 1 bytes"),
    ({"capacity": 3, "bytes_per_expert": 1.0}, "bytes_per_expert is only used with capacity_bytes"),
    ({"capacity": 1}, "a row needs 2 experts at once"),
    ({"capacity": 2, "organisation": "per_layer"}, "layer 0's cache has 1 policy slot"),
    ({"capacity": 1, "organisation": "per_layer"}, "cannot give each of the 2 per-layer caches an expert"),
    ({"per_layer_capacity": [2]}, "needs organisation='per_layer'"),
    ({"per_layer_capacity": [2], "organisation": "per_layer"}, "has 1 entries but the trace has 2 layers"),
    ({"per_layer_capacity": [2, 0], "organisation": "per_layer"}, r"per_layer_capacity\[1\] = 0"),
    ({"capacity": 4, "organisation": "ring"}, "organisation must be one of"),
    ({"capacity": 4, "tie_break": "random"}, "tie_break must be one of"),
    ({"capacity": 2, "pinned": [0, 1, 2]}, "3 pinned experts exceed the capacity of 2"),
    ({"capacity": 3, "pinned": [0, 1]}, r"1 policy slot\(s\) \(after the pinned experts\) but a row needs 2"),
    ({"capacity": 4, "pinned": [0, 0]}, "pinned key 0 is given twice"),
    ({"capacity": 4, "pinned": [9]}, r"pinned key 9 is outside \[0, 6\)"),
    ({"capacity": 4, "organisation": "per_layer", "pinned": [0, 1, 2]},
     "3 experts pinned in layer 0 exceed its capacity of 2"),
    ({"capacity": 4, "cold_start_per_request": True}, "cold_start_per_request needs a trace with request_id"),
    ({"capacity": 4, "warmup_steps": -1}, "warmup_steps must be >= 0"),
    ({"capacity": 4, "seed": -3}, "seed must be >= 0"),
    ({"capacity": 4, "params": {"x": 1}}, r"policy 'lru' has no parameter\(s\) \['x'\]"),
    ({"capacity": 2.5}, "capacity must be an integer, got 2.5"),
])
def test_bad_configuration_is_refused_with_a_clear_message(kwargs: dict, message: str) -> None:
    tr = trace_of([[[0, 1], [2, -1]], [[1, 2], [0, 1]]], 3)  # 2 layers, 3 experts, rows up to 2 wide
    with pytest.raises(ConfigError, match=message):
        replay(tr, "lru", **kwargs)


def test_unknown_policy_is_refused_listing_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown policy 'lur'; known policies: .*lru"):
        replay(trace_of(CLOCK_TRACE, 2), "lur", 2)


def test_width_check_counts_real_rows_not_the_padded_width() -> None:
    # Width 3 but no row has more than one expert: one slot is enough.
    tr = trace_of([[[0, -1, -1]], [[1, -1, -1]], [[1, -1, -1]]], 3)
    assert replay(tr, "lru", 1).hits == 1


# ---- CLI ---------------------------------------------------------------------------------------

def test_cli_prints_the_result_as_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save(trace_of(CLOCK_TRACE, 2), tmp_path / "t.safetensors")
    # Profile counts per key l*2+e: key 1 x3, key 3 x2, key 2 x1.
    save(trace_of([[[1], [1]], [[1], [1]], [[1], [0]]], 2), tmp_path / "profile.safetensors")
    out = tmp_path / "r.json"
    assert cli_main([str(tmp_path / "t.safetensors"), "--policy", "lru", "--capacity", "2",
                     "--output", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["hits"] == 1 and json.loads(out.read_text()) == printed
    # Pin the profile's hottest key, 1 (layer 0, expert 1): requested once, at step 1.
    assert cli_main([str(tmp_path / "t.safetensors"), "--policy", "fifo", "--capacity", "3", "--pin", "1",
                     "--profile", str(tmp_path / "profile.safetensors")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["num_pinned"] == 1 and printed["pinned_hits"] == 1
    # Static: holds the profile's 2 hottest keys (1 and 3): hits at (t1, l0) and (t2, l1).
    assert cli_main([str(tmp_path / "t.safetensors"), "--policy", "static", "--capacity", "2",
                     "--profile", str(tmp_path / "profile.safetensors")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["params"]["keys"] == [1, 3] and printed["hits"] == 2


def test_cli_reports_errors_without_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save(trace_of(CLOCK_TRACE, 2), tmp_path / "t.safetensors")
    assert cli_main([str(tmp_path / "t.safetensors"), "--policy", "nope", "--capacity", "2"]) == 2
    assert "unknown policy 'nope'" in capsys.readouterr().err
    assert cli_main([str(tmp_path / "t.safetensors"), "--policy", "lru", "--capacity", "2",
                     "--param", "foo=1"]) == 2
    assert "has no parameter(s) ['foo']" in capsys.readouterr().err
    assert cli_main([str(tmp_path / "missing.safetensors"), "--policy", "lru", "--capacity", "2"]) == 1
    assert "missing.safetensors" in capsys.readouterr().err


# ---- real traces -------------------------------------------------------------------------------

@pytest.mark.realdata
def test_real_olmoe_trace_opt_bounds_the_online_policies() -> None:
    data = shared_data_dir()
    if data is None or not (data / "olmoe-1b-7b" / "olmoe_decode_all.npz").exists():
        pytest.skip("shared routing traces are not available")
    from moesim.traces.importers import import_olmoe_npz
    from moesim.traces.transforms import slice_requests

    tr = slice_requests(import_olmoe_npz(data / "olmoe-1b-7b" / "olmoe_decode_all.npz"), slice(0, 6))
    results = {p: replay(tr, p, 256) for p in ("lru", "fifo", "lfu", "sieve", "opt")}
    total = int((np.asarray(tr.experts) >= 0).sum())
    for p, r in results.items():
        assert r.accesses == total and sum(c.hits for c in r.per_layer) == r.hits, p
        assert r.hits <= results["opt"].hits, p
    # 16 layers x top-8 over 64 experts each: 256 slots hold 1/4 of the experts; OPT hits more than LRU.
    assert results["opt"].hits > results["lru"].hits
