"""The executor: its decisions equal the simulator's for every policy, its expert outputs equal a plain
torch FFN on the decoded weights, it moves the bytes the simulator counts, and its checkpoint layout
serves one aligned read per expert."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moesim.kernels.formats import get_format
from moesim.sim.cache_setup import setup_cache
from moesim.sim.errors import ConfigError
from moesim.sim.executor import run_executor
from moesim.sim.executor_schedule import NO_FETCH, build_schedule
from moesim.sim.executor_weights import (
    ALIGN,
    MODE_DIRECT,
    MODE_FADVISE,
    ExpertFile,
    expert_matrices,
    new_buffers,
    write_synthetic_checkpoint,
)
from moesim.sim.levels import HierarchyConfig, Level
from moesim.sim.offload import simulate_hierarchy
from moesim.sim.policies import list_policies
from moesim.sim.profiles import ModelProfile
from moesim.sim.replay import replay
from moesim.traces.io import read_header
from moesim.traces.synth import SynthConfig, generate
from moesim.traces.transforms import decode_only
from strategies import traces

L, E, K, H = 2, 6, 2, 64
STEPS = 40
WARMUP = 3


def tiny_model(name: str = "tiny") -> ModelProfile:
    return ModelProfile(name=name, hf_id="none", hidden_size=H, expert_intermediate_size=H, num_experts=E, top_k=K,
                        num_moe_layers=L, matrices_per_expert=3, dense_params_per_layer=2 * H * H,
                        dense_format="fp32", other_params=8 * H)


@pytest.fixture(scope="module")
def trace():
    cfg = SynthConfig(num_layers=L, num_experts=E, top_k=K, num_requests=4, decode_len_median=12, decode_len_min=10,
                      prompt_len_min=0, prompt_len_max=0, prompt_len_median=0)
    tr = decode_only(generate(cfg, seed=3))
    assert tr.num_steps >= STEPS
    return tr.slice_steps(0, STEPS)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("weights")
    return {f: write_synthetic_checkpoint(folder / f"{f}.safetensors", tiny_model(), f, seed=5)
            for f in ("bf16", "mxfp4", "int4-g64")}


def policy_params(policy: str) -> dict:
    return {"keys": [0, 7]} if policy == "static" else {}


# Each: organisation, L2 experts (None: all of DRAM), inclusive, prefetcher, budget, pinned.
CONFIGS = [
    ("shared", None, True, "none", None, None),
    ("per_layer", None, True, "affinity", None, None),
    ("shared", 8, True, "oracle", None, None),
    ("shared", 7, False, "affinity", 2, None),
    ("per_layer", 9, True, "oracle", 1, None),
    ("shared", 8, True, "oracle", None, [1, 8]),
]


def sim_events(trace, policy: str, cap: int, org: str, l2, incl: bool, pf: str, budget, pinned):
    cfg = HierarchyConfig(Level(experts=cap, policy=policy, organisation=org, params=policy_params(policy)),
                          None if l2 is None else Level(experts=l2), inclusive=incl, prefetch_budget=budget)
    return simulate_hierarchy(trace, cfg, prefetcher=None if pf == "none" else pf, warmup_steps=WARMUP, record=True,
                              pinned=pinned)


def schedule_of(trace, policy: str, cap: int, org: str, l2, incl: bool, pf: str, budget, pinned):
    setup = setup_cache(trace.num_layers, trace.num_experts, policy, cap, organisation=org, pinned=pinned,
                        params=policy_params(policy), warmup_steps=WARMUP)
    return build_schedule(trace, setup, l2_capacity=l2, inclusive=incl, prefetcher=pf, prefetch_budget=budget)


def assert_same_events(sched, sim) -> None:
    mine = sched.events()
    ev = sim.events or {n: np.zeros(0) for n in ("row", "key", "src", "kind")}
    for name in ("row", "key", "src", "kind"):
        np.testing.assert_array_equal(mine[name], np.asarray(ev[name]), err_msg=name)
    assert sched.counts == sim.counts


# ---- the decisions ---------------------------------------------------------------------------

@pytest.mark.parametrize("policy", list_policies())
def test_the_schedule_makes_the_hierarchys_decisions_for_every_policy(trace, policy: str) -> None:
    for org, l2, incl, pf, budget, pinned in CONFIGS:
        cap = 4 if org == "shared" else 2 * L
        args = (trace, policy, cap, org, l2, incl, pf, budget, pinned)
        assert_same_events(schedule_of(*args), sim_events(*args))


@pytest.mark.parametrize("policy", list_policies())
def test_the_schedule_hits_what_replay_hits_for_every_policy(trace, policy: str) -> None:
    for org in ("shared", "per_layer"):
        cap = 5 if org == "shared" else 3 * L  # layer 0 holds the pinned expert beside a row of 2
        sched = schedule_of(trace, policy, cap, org, None, True, "none", None, [2])
        want = replay(trace, policy, cap, organisation=org, params=policy_params(policy), pinned=[2],
                      warmup_steps=WARMUP, record_steps=True)
        hit = np.zeros(trace.experts.size, bool)
        hit[sched.entry] = sched.hit
        flat = np.asarray(trace.experts).reshape(-1)
        layer = (np.arange(flat.size) // trace.width) % trace.num_layers
        hit[(flat >= 0) & (layer * E + flat == 2)] = True  # the pinned expert always hits
        np.testing.assert_array_equal(hit.reshape(trace.experts.shape), want.hit_mask)
        assert sched.counts["l1_hits"] == want.hits


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(traces(max_steps=12, min_steps=1), st.sampled_from(["lru", "fifo", "opt", "s3fifo", "arc", "watermark"]),
       st.integers(0, 3), st.sampled_from([None, "inclusive", "exclusive"]),
       st.sampled_from(["none", "affinity", "oracle"]), st.sampled_from([None, 0, 1, 3]))
def test_the_schedule_equals_the_hierarchy_on_random_traces(tr, policy: str, extra: int, l2: str | None, pf: str,
                                                            budget: int | None) -> None:
    tr = decode_only(tr)
    cap = max(2, tr.width + extra)  # S3-FIFO needs two slots
    l2_cap = None if l2 is None else cap + 1 + extra
    incl = l2 != "exclusive"
    setup = setup_cache(tr.num_layers, tr.num_experts, policy, cap, warmup_steps=min(1, tr.num_steps))
    sched = build_schedule(tr, setup, l2_capacity=l2_cap, inclusive=incl, prefetcher=pf, prefetch_budget=budget)
    cfg = HierarchyConfig(Level(experts=cap, policy=policy), None if l2_cap is None else Level(experts=l2_cap),
                          inclusive=incl, prefetch_budget=budget)
    sim = simulate_hierarchy(tr, cfg, prefetcher=None if pf == "none" else pf, warmup_steps=min(1, tr.num_steps),
                             record=True)
    assert_same_events(sched, sim)
    # Storage: a kept fetch lands in a policy slot, a slot never holds two keys at once.
    owner: dict[int, int] = {}
    for k, slot, kind in zip(sched.fetch_key, sched.fetch_slot, sched.fetch_kind, strict=True):
        assert 0 <= slot < sched.num_slots
        if kind != 2:  # a bypass streams through a scratch slot
            owner = {s: key for s, key in owner.items() if key != k}
            owner[int(slot)] = int(k)
    assert len(set(owner.values())) == len(owner)


def test_the_schedule_refuses_what_the_executor_cannot_run(trace) -> None:
    setup = setup_cache(L, E, "lru", 4, cold_start_per_request=True)
    with pytest.raises(ConfigError, match="cold_start_per_request"):
        build_schedule(trace, setup)
    with pytest.raises(ConfigError, match="L2 capacity"):
        build_schedule(trace, setup_cache(L, E, "lru", 4), l2_capacity=4)
    with pytest.raises(ConfigError, match="widest row"):
        build_schedule(trace, setup_cache(L, E, "lru", 1))


# ---- the weights -----------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["bf16", "mxfp4", "int4-g64"])
def test_the_checkpoint_holds_each_expert_in_one_aligned_block(checkpoints, fmt: str) -> None:
    path = checkpoints[fmt]
    header, meta, data_start = read_header(path)  # the project's strict reader accepts it
    assert data_start % ALIGN == 0 and meta["format"] == fmt
    model = tiny_model()
    with ExpertFile(path) as f:
        assert f.expert_bytes == model.expert_bytes(fmt) and f.block_bytes % ALIGN == 0
        for key in (0, L * E - 1):
            spans = [v["data_offsets"] for name, v in header.items()
                     if name.startswith(f"layers.{key // E}.experts.{key % E}.")]
            assert min(a for a, _ in spans) == key * f.block_bytes
            assert max(b for _, b in spans) - min(a for a, _ in spans) == f.expert_bytes
    from safetensors import safe_open

    fmt_obj = get_format(fmt)
    want = fmt_obj.encode(expert_matrices(model, 1, 4, seed=5)[2])
    with safe_open(str(path), "np") as st_file:
        for name, arr in want.items():
            if name != "shape":
                got = st_file.get_tensor(f"layers.1.experts.4.down.{name}")
                np.testing.assert_array_equal(got.view(arr.dtype), arr)


@pytest.mark.parametrize("direct", [True, False])
def test_a_block_read_decodes_to_the_formats_own_decoding(checkpoints, direct: bool) -> None:
    with ExpertFile(checkpoints["mxfp4"], direct=direct) as f:
        assert f.mode in ((MODE_DIRECT, MODE_FADVISE) if direct else (MODE_FADVISE,))
        buf = new_buffers(1, f.block_bytes)[0]
        assert f.read(L * E - 1, buf) == f.block_bytes
        out = [np.empty(s, np.float32) for s in f.shapes]
        f.decode(buf, out)
    fmt = get_format("mxfp4")
    for got, m in zip(out, expert_matrices(tiny_model(), L - 1, E - 1, seed=5), strict=True):
        np.testing.assert_array_equal(got, fmt.decode(fmt.encode(m)))


def test_a_checkpoint_is_only_read_as_the_executor_wrote_it(tmp_path: Path) -> None:
    from moesim.traces.io import save
    from moesim.traces.trace import TraceMeta, make_trace

    other = save(make_trace(np.zeros((1, 1, 1), np.int16), TraceMeta("m", 1, 2, 1)), tmp_path / "t.safetensors")
    with pytest.raises(ConfigError, match="not an executor checkpoint"):
        ExpertFile(other)


# ---- the run ---------------------------------------------------------------------------------

def reference_rows(trace, model: ModelProfile, fmt: str, rows_in: np.ndarray) -> np.ndarray:
    """Every row's expert output by plain torch on freshly decoded weights (no slot, no cache)."""
    codec = get_format(fmt)
    weights = {}
    T, Lr, Kr = trace.experts.shape
    experts = np.asarray(trace.experts)
    gates = np.asarray(trace.gate_weights, np.float32)
    out = np.zeros_like(rows_in)
    for t in range(T):
        for layer in range(Lr):
            r = t * Lr + layer
            x = torch.from_numpy(rows_in[r])
            y = None
            for k in range(Kr):
                e = int(experts[t, layer, k])
                if e < 0:
                    continue
                if (layer, e) not in weights:
                    weights[layer, e] = [torch.from_numpy(codec.decode(codec.encode(m)))
                                         for m in expert_matrices(model, layer, e, seed=5)]
                g, u, d = weights[layer, e]
                term = (d @ (torch.nn.functional.silu(g @ x) * (u @ x))) * float(gates[t, layer, k])
                y = term if y is None else y + term
            if y is not None:
                out[r] = y.numpy()
    return out


@pytest.mark.parametrize(("fmt", "policy", "l2", "incl", "pf", "pinned"), [
    ("mxfp4", "lru", 8, True, "affinity", None),
    ("bf16", "opt", 7, False, "oracle", [1]),
    ("int4-g64", "static", None, True, "none", None),
    ("mxfp4", "watermark", 8, True, "oracle", None),
])
def test_expert_outputs_equal_a_plain_torch_ffn(trace, checkpoints, fmt: str, policy: str, l2, incl: bool, pf: str,
                                               pinned) -> None:
    r = run_executor(trace, checkpoints[fmt], l1=4, policy=policy, policy_params=policy_params(policy), l2=l2,
                     inclusive=incl, prefetcher=pf, warmup_steps=WARMUP, pinned=pinned, record=True)
    want = reference_rows(trace, tiny_model(), fmt, r.rows_in)
    assert r.rows_out is not None and np.abs(r.rows_out).sum() > 0
    np.testing.assert_array_equal(r.rows_out, want)


def test_the_executor_moves_the_bytes_the_simulator_counts(trace, checkpoints) -> None:
    r = run_executor(trace, checkpoints["mxfp4"], l1=4, l2=8, prefetcher="oracle", warmup_steps=WARMUP)
    sim = sim_events(trace, "lru", 4, "shared", 8, True, "oracle", None, None)
    eb = tiny_model().expert_bytes("mxfp4")
    links = sim.bytes_per_link(eb)
    assert r.counts == sim.counts and r.counts["ssd_reads"] > 0 and r.counts["prefetch_issued"] > 0
    assert r.bytes_per_link == {"ssd_to_dram": links["ssd_to_dram"], "dram_to_gpu": links["dram_to_gpu"]}


def test_a_tiny_run_reports_its_wall_clock(trace, checkpoints) -> None:
    r = run_executor(trace, checkpoints["bf16"], l1=5, l2=9, prefetcher="affinity", warmup_steps=WARMUP)
    assert r.steps == r.tokens == STEPS - WARMUP and len(r.step_time_s) == STEPS
    assert (r.step_time_s > 0).all()
    assert r.tokens_per_s == pytest.approx(r.steps / r.step_time_s[WARMUP:].sum())
    assert 0 < r.latency_p50_s <= r.latency_p90_s <= r.latency_p99_s <= r.step_time_s[WARMUP:].max()
    assert sum(r.time_s.values()) <= r.step_time_s[WARMUP:].sum()
    assert all(0.0 <= b <= 1.0 for b in r.link_busy.values()) and r.link_busy["dram_to_gpu"] > 0
    assert 0.0 <= r.stall_fraction < 1.0
    assert r.read_mode in (MODE_DIRECT, MODE_FADVISE)
    assert json.dumps(r.config)


def test_the_run_refuses_a_trace_of_another_shape(checkpoints) -> None:
    cfg = SynthConfig(num_layers=L + 1, num_experts=E, top_k=K, num_requests=1, decode_len_min=4, prompt_len_max=0,
                      prompt_len_median=0)
    with pytest.raises(ConfigError, match="holds"):
        run_executor(decode_only(generate(cfg, seed=0)), checkpoints["bf16"], l1=4)


def test_waits_name_the_fetch_that_brought_each_key(trace) -> None:
    sched = schedule_of(trace, "lru", 4, "shared", 8, True, "oracle", None, None)
    for i, (k, f) in enumerate(zip(sched.keys, sched.wait, strict=True)):
        if f != NO_FETCH:
            assert sched.fetch_key[f] == k and sched.fetch_slot[f] == sched.slot[i]
