"""The timing model: hand-computed timelines checked exactly, and the jitted timeline against its
plain-Python twin."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from moesim.sim.errors import ConfigError
from moesim.sim.hierarchy import DemandRows, HierarchyConfig, Level, demand_rows, simulate_hierarchy
from moesim.sim.prefetch import make_plan
from moesim.sim.profiles import (
    HardwareProfile,
    ModelProfile,
    ProfileError,
    load_hardware_profile,
    load_model_profile,
)
from moesim.sim.timing import (
    ComputeTimes,
    Links,
    compute_times,
    run_timeline,
    simulate_offload,
    timeline,
    timeline_reference,
)
from moesim.sim.validation import ExplicitBitsModel, markdown_table, run_validation
from moesim.traces.synth import generate_preset
from moesim.traces.trace import TraceMeta, make_trace
from moesim.traces.transforms import decode_only

REL = 1e-12
H, I_SIZE = 64, 32
EXPERT_PARAMS = 3 * H * I_SIZE  # 6144 weights: gate, up, down
EXPERT_BYTES = 2 * EXPERT_PARAMS  # bf16
DENSE_BYTES = 2 * H * H  # dense_params_per_layer = H * H in bf16
HEAD_BYTES = 2 * 10 * H  # other_params = 10 * H in bf16


def model(num_layers: int, num_experts: int = 4, top_k: int = 1) -> ModelProfile:
    return ModelProfile(name=f"toy-{num_layers}", hf_id="none", hidden_size=H, expert_intermediate_size=I_SIZE,
                        num_experts=num_experts, top_k=top_k, num_moe_layers=num_layers, matrices_per_expert=3,
                        dense_params_per_layer=H * H, dense_format="bf16", other_params=10 * H)


def hardware(*, gpu_gbps: float = 1.0, tflops: float = 1.0, h2d_gbps: float = 0.1, h2d_us: float = 10.0,
             nvme_gbps: float = 0.05, nvme_us: float = 100.0, overhead_us: float = 2.0) -> HardwareProfile:
    return HardwareProfile(name="toy-hw", description="hand-made", gpu_name="toy", gpu_memory_gib=1.0,
                           gpu_bandwidth_gbps=gpu_gbps, gpu_tflops=tflops, h2d_bandwidth_gbps=h2d_gbps,
                           h2d_latency_us=h2d_us, nvme_bandwidth_gbps=nvme_gbps, nvme_latency_us=nvme_us,
                           dram_gib=1.0, layer_overhead_us=overhead_us)


def trace_of(rows: list[list[list[int]]], num_experts: int = 4, top_k: int = 1, **kw):
    L = len(rows[0])
    K = max(len(x) for step in rows for x in step)
    arr = np.full((len(rows), L, K), -1, np.int16)
    for t, step in enumerate(rows):
        for layer, ids in enumerate(step):
            arr[t, layer, :len(ids)] = ids
    return make_trace(arr, TraceMeta(model="toy", num_layers=L, num_experts=num_experts, top_k=top_k), **kw)


# Memory-bound toy numbers (1 GB/s GPU, 1 TFLOP/s): every part costs its bytes / 1e9.
ATTN = 2e-6 + DENSE_BYTES / 1e9
EXPERT = EXPERT_BYTES / 1e9
HEAD = HEAD_BYTES / 1e9
H2D = 10e-6 + EXPERT_BYTES / 0.1e9
SSD = 100e-6 + EXPERT_BYTES / 0.05e9


def test_all_hits_cost_pure_compute() -> None:
    # Step 0 loads both experts; step 1 uses the same ones again: all hits, no transfer.
    tr = trace_of([[[0], [1]], [[0], [1]]])
    r = simulate_offload(tr, model(2), hardware(), "bf16", l1=8, warmup_steps=1)
    assert r.counts["l1_hits"] == 2 and r.counts["l1_misses"] == 0
    assert r.latency_mean_s == pytest.approx(2 * (ATTN + EXPERT) + HEAD, rel=REL)
    assert r.time_breakdown_s["stall"] == 0.0
    assert r.tokens_per_s == pytest.approx(1.0 / (2 * (ATTN + EXPERT) + HEAD), rel=REL)


def test_a_single_dram_miss_adds_latency_plus_bytes_over_bandwidth() -> None:
    r = simulate_offload(trace_of([[[3]]]), model(1), hardware(), "bf16", l1=2)
    assert r.counts["l1_misses"] == 1
    assert r.latency_mean_s == pytest.approx(ATTN + H2D + EXPERT + HEAD, rel=REL)
    assert r.time_breakdown_s["stall"] == pytest.approx(H2D, rel=REL)
    assert r.bytes_per_token == {"ssd_to_dram": 0.0, "dram_to_gpu": float(EXPERT_BYTES), "gpu_to_dram": 0.0}


def test_an_ssd_miss_crosses_both_links_one_after_the_other() -> None:
    # DRAM is a cache of two experts that starts empty: the access reads the SSD, then crosses PCIe.
    r = simulate_offload(trace_of([[[3]]]), model(1), hardware(), "bf16", l1=1, l2=2, l2_prefill=False)
    assert r.counts["demand_from_ssd"] == 1
    assert r.latency_mean_s == pytest.approx(ATTN + SSD + H2D + EXPERT + HEAD, rel=REL)
    assert r.bytes_per_token["ssd_to_dram"] == EXPERT_BYTES
    total = ATTN + SSD + H2D + EXPERT + HEAD
    assert r.link_utilisation["ssd_to_dram"] == pytest.approx(SSD / total, rel=REL)
    assert r.link_utilisation["dram_to_gpu"] == pytest.approx(H2D / total, rel=REL)


def test_misses_of_one_row_queue_on_the_link() -> None:
    # Two misses in the same row: the second transfer waits for the first (FIFO link).
    tr = trace_of([[[0, 2]]], top_k=2)
    r = simulate_offload(tr, model(1, top_k=2), hardware(), "bf16", l1=4)
    expert2 = 2 * EXPERT_BYTES / 1e9  # two distinct experts read in the row
    assert r.latency_mean_s == pytest.approx(ATTN + 2 * H2D + expert2 + HEAD, rel=REL)


def test_oracle_prefetch_with_enough_bandwidth_never_stalls() -> None:
    rng = np.random.default_rng(3)
    rows = [[[int(rng.integers(4))] for _ in range(2)] for _ in range(12)]
    tr = trace_of(rows)
    fast = hardware(h2d_gbps=100.0, h2d_us=1.0)  # a transfer (1.12 us) < one layer's compute (~22 us)
    plain = simulate_offload(tr, model(2), fast, "bf16", l1=3)
    oracle = simulate_offload(tr, model(2), fast, "bf16", l1=3, prefetcher="oracle")
    assert plain.time_breakdown_s["stall"] > 0  # the scenario has misses worth hiding
    assert oracle.counts["l1_misses"] == 1  # only row 0 (nothing issues before it)
    assert oracle.prefetch_accuracy == 1.0
    base_misses = plain.counts["l1_misses"]
    assert oracle.prefetch_coverage == pytest.approx((base_misses - 1) / base_misses, rel=REL)
    # The only stall left is row 0's demand miss.
    total_stall = oracle.time_breakdown_s["stall"] * oracle.steps
    assert total_stall == pytest.approx(1e-6 + EXPERT_BYTES / 100e9, rel=REL)


def test_prefetch_on_a_slow_link_stalls_for_the_rest_of_the_transfer() -> None:
    # Oracle lookahead 1 on one expert per layer; the prefetch for row 1 is issued when row 0 is
    # routed, right after row 0's demand miss, so it queues behind it. Row 1 waits for
    # routed0 + 2 * H2D, and starts computing at routed0 + H2D + EXPERT + ATTN.
    tr = trace_of([[[0], [1]]])
    r = simulate_offload(tr, model(2), hardware(), "bf16", l1=4, prefetcher="oracle")
    stall1 = 2 * H2D - (H2D + EXPERT + ATTN)
    assert stall1 > 0
    assert r.latency_mean_s == pytest.approx(ATTN + H2D + EXPERT + ATTN + stall1 + EXPERT + HEAD, rel=REL)


def test_batch_widens_the_row_and_multiplies_the_flops() -> None:
    # Two requests of two decode steps each; a batch of 2 runs them together: each batched step's
    # row is the union of both sequences' experts, and compute scales with the 2 sequences.
    tr = trace_of([[[0]], [[1]], [[2]], [[2]]], request_id=[0, 0, 1, 1])
    slow = hardware(tflops=1e-6)  # 1 MFLOP/s: compute-bound
    one = simulate_offload(tr, model(1), slow, "bf16", l1=4)
    two = simulate_offload(tr, model(1), slow, "bf16", l1=4, batch_size=2)
    assert (one.steps, one.tokens) == (4, 4)
    assert (two.steps, two.tokens) == (2, 4)
    assert one.counts["l1_misses"] == 3 and two.counts["l1_misses"] == 3  # {0,2} then {1} new
    flops_expert = 2 * EXPERT_PARAMS / 1e6  # one token through one expert
    assert one.time_breakdown_s["experts"] == pytest.approx(flops_expert, rel=REL)
    assert two.time_breakdown_s["experts"] == pytest.approx(2 * flops_expert, rel=REL)
    assert two.time_breakdown_s["attention"] == pytest.approx(2e-6 + 2 * 2 * H * H / 1e6, rel=REL)
    assert two.time_breakdown_s["head"] == pytest.approx(2 * 2 * 10 * H / 1e6, rel=REL)


def test_compute_times_follow_the_formulas() -> None:
    # Rows of 0, 1 and 3 experts, one step each of 1, 1 and 4 sequences (L = 1).
    rows = DemandRows(np.array([0, 1, 2, 3], np.int32), np.array([0, 0, 1, 4], np.int64), 1, 4, 3)
    m = model(1, top_k=1)
    hw = hardware(gpu_gbps=1.0, tflops=1e-5)  # 10 MFLOP/s: bytes bound for 1 sequence, FLOPs for 4
    ct = compute_times(rows, np.array([1, 1, 4]), m, hw, "bf16")
    assert ct.expert[0] == 0.0
    assert ct.expert[1] == pytest.approx(max(EXPERT_BYTES / 1e9, 2 * EXPERT_PARAMS / 1e7), rel=REL)
    assert ct.expert[2] == pytest.approx(max(3 * EXPERT_BYTES / 1e9, 4 * 2 * EXPERT_PARAMS / 1e7), rel=REL)
    assert ct.attn[2] == pytest.approx(2e-6 + max(DENSE_BYTES / 1e9, 4 * 2 * H * H / 1e7), rel=REL)
    # The compute format changes the bytes read, not the stored size.
    ct8 = compute_times(rows, np.array([1, 1, 1]), m, hardware(tflops=1e3), "bf16", compute_format="fp32")
    assert ct8.expert[1] == pytest.approx(2 * EXPERT_BYTES / 1e9, rel=REL)


def test_warmup_and_bad_arguments_are_refused() -> None:
    tr = trace_of([[[0]], [[1]]])
    with pytest.raises(ConfigError, match="warmup_steps"):
        simulate_offload(tr, model(1), hardware(), "bf16", l1=2, warmup_steps=2)
    with pytest.raises(ConfigError, match="batch_size"):
        simulate_offload(tr, model(1), hardware(), "bf16", l1=2, batch_size=0)
    with pytest.raises(ConfigError, match="layers"):
        simulate_offload(tr, model(2), hardware(), "bf16", l1=2)
    no_link = HardwareProfile(**{**hardware().to_dict(), "h2d_bandwidth_gbps": None})
    with pytest.raises(ProfileError, match="h2d_bandwidth_gbps"):
        simulate_offload(tr, model(1), no_link, "bf16", l1=2)


def test_per_layer_level_and_named_profiles_run() -> None:
    tr = generate_preset("mixtral-8x7b", seed=0, num_requests=2)
    r = simulate_offload(tr, "mixtral-8x7b", "t4", "int4-sym-g128", l1=Level(experts=2, organisation="per_layer"))
    assert r.l1_capacity == 2 and r.tokens_per_s > 0
    decode = tr.experts if tr.phase is None else tr.experts[np.asarray(tr.phase) == 1]
    assert r.counts["l1_hits"] + r.counts["l1_misses"] == int((np.asarray(decode) >= 0).sum())


# ---- the jitted timeline against its plain-Python twin -------------------------------------------

@st.composite
def timeline_case(draw):
    L = draw(st.integers(1, 3))
    E = draw(st.integers(1, 4))
    T = draw(st.integers(1, 5))
    R = T * L
    keys, ptr, width = [], [0], 0
    for r in range(R):
        ids = draw(st.lists(st.integers(0, E - 1), unique=True, max_size=E))
        keys += [(r % L) * E + e for e in ids]
        ptr.append(len(keys))
        width = max(width, len(ids))
    rows = DemandRows(np.array(keys, np.int32), np.array(ptr, np.int64), L, E, width)
    pos = st.floats(0.0, 1e-3, allow_nan=False)
    times = ComputeTimes(np.array([draw(pos) for _ in range(R)]), np.array([draw(pos) for _ in range(R)]),
                         np.array([draw(pos) for _ in range(T)]))
    n_ev = draw(st.integers(0, 12))
    ev_row = np.sort(np.array([draw(st.integers(0, R - 1)) for _ in range(n_ev)], np.int64))
    ev_key = np.array([draw(st.integers(0, L * E - 1)) for _ in range(n_ev)], np.int64)
    ev_src = np.array([draw(st.sampled_from([1, 2])) for _ in range(n_ev)], np.int8)
    links = Links(draw(st.floats(1e-12, 1e-8)), draw(pos), draw(st.floats(1e-12, 1e-8)), draw(pos))
    bpe = draw(st.integers(1, 10**6))
    return rows, times, SimpleNamespace(row=ev_row, key=ev_key, src=ev_src), bpe, links


@settings(max_examples=60, deadline=None)
@given(timeline_case())
def test_jitted_timeline_equals_the_reference(case) -> None:
    rows, times, ev, bpe, links = case
    want_step, want_stall = timeline_reference(rows, times, ev, bpe, links)
    T = rows.num_rows // rows.num_layers
    step, stall, busy = np.zeros(T), np.zeros(rows.num_rows), np.zeros(2)
    total = timeline(rows.row_ptr, rows.keys, rows.num_layers, rows.num_keys, times.attn, times.expert, times.head,
                     ev.row, ev.key, ev.src, float(bpe), links.h2d_s_per_byte, links.h2d_latency_s,
                     links.ssd_s_per_byte, links.ssd_latency_s, step, stall, busy)
    np.testing.assert_array_equal(step, want_step)
    np.testing.assert_array_equal(stall, want_stall)
    assert total == pytest.approx(float(want_step.sum()), rel=1e-9)
    h2d_cost = links.h2d_latency_s + bpe * links.h2d_s_per_byte
    assert busy[0] == pytest.approx(len(ev.row) * h2d_cost, rel=1e-9)
    assert (stall >= 0).all()


def test_run_timeline_matches_the_reference_on_a_synthetic_trace() -> None:
    # Prefetches, an SSD behind a DRAM cache and queueing on both links, through the real pipeline.
    tr = generate_preset("olmoe-1b-7b", seed=1, num_requests=2)
    mp, hp = load_model_profile("olmoe-1b-7b"), load_hardware_profile("rtx-4090")
    dec = decode_only(tr)
    rows = demand_rows(dec)
    plan = make_plan("affinity", dec)
    hier = simulate_hierarchy(dec, HierarchyConfig(l1=Level(experts=200), l2=Level(experts=600)), plan=plan,
                              bytes_per_expert=mp.expert_bytes("bf16"), rows=rows)
    times = compute_times(rows, np.ones(dec.num_steps, np.int64), mp, hp, "bf16")
    links = Links.from_hardware(hp, need_ssd=True)
    step, stall, _, _ = run_timeline(rows, times, hier, mp.expert_bytes("bf16"), links)
    want_step, want_stall = timeline_reference(rows, times, hier.events, mp.expert_bytes("bf16"), links)
    np.testing.assert_array_equal(step, want_step)
    np.testing.assert_array_equal(stall, want_stall)


# ---- the validation against published results ------------------------------------------------

def test_explicit_bits_model_sizes_only_its_own_format() -> None:
    base = load_model_profile("mixtral-8x7b")
    m = ExplicitBitsModel(**base.to_dict(), expert_bits=3.25, bits_format="hqq-3")
    assert m.expert_bytes("hqq-3") == 3.25 * 176_160_768 / 8
    assert m.expert_bytes("fp16") == base.expert_bytes("fp16") == 2 * 176_160_768


@pytest.mark.slow
def test_validation_table_reproduces_its_fit_and_orders_the_policies() -> None:
    rows = run_validation(num_requests=2)
    assert len(rows) == 7
    for r in rows:
        assert r.opt.l1_hit_rate >= r.lru.l1_hit_rate  # OPT never misses more than LRU
        assert r.oracle.prefetch_accuracy == 1.0
    # The per-layer time is fitted in closed form: the calibrated 3-bit LRU run hits the paper's figure.
    assert rows[5].lru.tokens_per_s == pytest.approx(1.365, rel=1e-9)
    table = markdown_table(rows)
    assert table.startswith("| setup |") and table.count("\n") == 2 + len(rows)
