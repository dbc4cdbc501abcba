"""The timing model: hand-computed timelines checked exactly, and the jitted timeline against its
plain-Python twin."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from moesim.sim import engine
from moesim.sim.cache_setup import setup_cache
from moesim.sim.errors import ConfigError
from moesim.sim.levels import Level
from moesim.sim.offload import simulate_offload
from moesim.sim.prefetch import start
from moesim.sim.profiles import (
    HardwareProfile,
    ModelProfile,
    ProfileError,
    load_hardware_profile,
    load_model_profile,
)
from moesim.sim.timing import (
    Clock,
    ComputeModel,
    Links,
    timeline_events,
    timeline_misses,
)
from moesim.sim.validation import ExplicitBitsModel, markdown_table, run_validation
from moesim.traces.synth import generate_preset
from naive import timeline_reference
from strategies import trace_of

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
    m = model(1, top_k=1)
    hw = hardware(gpu_gbps=1.0, tflops=1e-5)  # 10 MFLOP/s: bytes bound for 1 sequence, FLOPs for 4
    attn, expert, head = ComputeModel.from_profiles(m, hw, "bf16").times(np.array([[0], [1], [3]]),
                                                                          np.array([1, 1, 4]))
    assert expert[0, 0] == 0.0
    assert expert[1, 0] == pytest.approx(max(EXPERT_BYTES / 1e9, 2 * EXPERT_PARAMS / 1e7), rel=REL)
    assert expert[2, 0] == pytest.approx(max(3 * EXPERT_BYTES / 1e9, 4 * 2 * EXPERT_PARAMS / 1e7), rel=REL)
    assert attn[2, 0] == pytest.approx(2e-6 + max(DENSE_BYTES / 1e9, 4 * 2 * H * H / 1e7), rel=REL)
    assert head[2] == pytest.approx(max(HEAD_BYTES / 1e9, 4 * 2 * 10 * H / 1e7), rel=REL)
    # The compute format changes the bytes read, not the stored size.
    fp32 = ComputeModel.from_profiles(m, hardware(tflops=1e3), "fp32")
    assert fp32.times(np.array([[1]]), np.array([1]))[1][0, 0] == pytest.approx(2 * EXPERT_BYTES / 1e9, rel=REL)


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
    r = simulate_offload(tr, "mixtral-8x7b", "t4", "int4-sym-g128", l1=Level(experts=64, organisation="per_layer"))
    assert r.l1_capacity == 64 and r.l1.layer_capacity == (2,) * 32 and r.tokens_per_s > 0
    decode = tr.experts if tr.phase is None else tr.experts[np.asarray(tr.phase) == 1]
    assert r.counts["l1_hits"] + r.counts["l1_misses"] == int((np.asarray(decode) >= 0).sum())


# ---- the jitted timeline against its plain-Python twin -------------------------------------------

@st.composite
def timeline_case(draw):
    L = draw(st.integers(1, 3))
    E = draw(st.integers(1, 4))
    T = draw(st.integers(1, 5))
    R = T * L
    rows, keys, ptr = [], [], [0]
    for t in range(T):
        rows.append([])
        for layer in range(L):
            ids = [layer * E + e for e in draw(st.lists(st.integers(0, E - 1), unique=True, max_size=E))]
            rows[t].append(ids)
            keys += ids
            ptr.append(len(keys))
    pos = st.floats(0.0, 1e-3, allow_nan=False)
    attn = np.array([[draw(pos) for _ in range(L)] for _ in range(T)])
    expert = np.array([[draw(pos) for _ in range(L)] for _ in range(T)])
    head = np.array([draw(pos) for _ in range(T)])
    n_ev = draw(st.integers(0, 12))
    ev_row = np.sort(np.array([draw(st.integers(0, R - 1)) for _ in range(n_ev)], np.int64))
    ev_key = np.array([draw(st.integers(0, L * E - 1)) for _ in range(n_ev)], np.int32)
    ev_src = np.array([draw(st.sampled_from([1, 2])) for _ in range(n_ev)], np.int8)
    costs = (draw(st.floats(1e-9, 1e-3)), draw(st.floats(1e-9, 1e-3)))
    return rows, np.array(keys, np.int32), np.array(ptr, np.int64), L * E, (attn, expert, head), \
        (ev_row, ev_key, ev_src), costs


HANDOFF = st.sampled_from([0.0, 2e-4]) | st.floats(0.0, 1e-3)


@settings(max_examples=60, deadline=None)
@given(timeline_case(), st.integers(1, 5), HANDOFF)
def test_jitted_timeline_equals_the_reference_piece_by_piece(case, piece_steps: int, handoff: float) -> None:
    rows, keys, ptr, n_keys, (attn, expert, head), (ev_row, ev_key, ev_src), (h2d, ssd) = case
    T, L = attn.shape
    want_step, want_stall = timeline_reference(rows, attn, expert, head,
                                               list(zip(ev_row.tolist(), ev_key.tolist(), ev_src.tolist(),
                                                        strict=True)), h2d, ssd, handoff)
    clock = Clock.start(n_keys)
    step, stall = np.zeros(T), np.zeros((T, L))
    for a in range(0, T, piece_steps):  # the clocks carry over from piece to piece
        b = min(a + piece_steps, T)
        sel = (ev_row >= a * L) & (ev_row < b * L)
        timeline_events(ptr[a * L:b * L + 1] - ptr[a * L], keys[ptr[a * L]:ptr[b * L]], L, attn[a:b], expert[a:b],
                        head[a:b], ev_row[sel] - a * L, ev_key[sel], ev_src[sel], h2d, ssd, handoff, clock.clock,
                        clock.ready, step[a:b], stall[a:b])
    np.testing.assert_array_equal(step, want_step)
    np.testing.assert_array_equal(stall, want_stall)
    assert clock.clock[3] == pytest.approx(len(ev_row) * h2d, rel=1e-9)
    assert (stall >= 0).all()


@settings(max_examples=60, deadline=None)
@given(timeline_case(), HANDOFF)
def test_the_miss_count_timeline_equals_the_event_timeline_for_demand_misses(case, handoff: float) -> None:
    # Demand misses from DRAM only: each row's misses are its own keys not seen before (no eviction).
    rows, keys, ptr, n_keys, (attn, expert, head), _, (h2d, ssd) = case
    T, L = attn.shape
    seen: set[int] = set()
    ev, misses = [], np.zeros((T, L), np.int64)
    for t in range(T):
        for layer in range(L):
            for k in rows[t][layer]:
                if k not in seen:
                    seen.add(k)
                    ev.append((t * L + layer, k))
                    misses[t, layer] += 1
    ev_row = np.array([r for r, _ in ev], np.int64)
    ev_key = np.array([k for _, k in ev], np.int32)
    a, b = Clock.start(n_keys), Clock.start(n_keys)
    step_a, stall_a, step_b, stall_b = np.zeros(T), np.zeros((T, L)), np.zeros(T), np.zeros((T, L))
    timeline_events(ptr, keys, L, attn, expert, head, ev_row, ev_key, np.ones(len(ev), np.int8), h2d, ssd, handoff,
                    a.clock, a.ready, step_a, stall_a)
    timeline_misses(misses, attn, expert, head, h2d, handoff, b.clock, step_b, stall_b)
    np.testing.assert_array_equal(step_a, step_b)
    np.testing.assert_array_equal(stall_a, stall_b)
    np.testing.assert_array_equal(a.clock, b.clock)


def test_engine_timeline_matches_the_reference_on_a_synthetic_trace() -> None:
    # Prefetches, an SSD behind a DRAM cache and queueing on both links, through the real pipeline
    # in small pieces.
    tr = generate_preset("olmoe-1b-7b", seed=1, num_requests=2)
    mp, hp = load_model_profile("olmoe-1b-7b"), load_hardware_profile("rtx-4090")
    setup = setup_cache(tr.num_layers, tr.num_experts, "lru", 200)
    bpe = mp.expert_bytes("bf16")
    timing = engine.Timing(ComputeModel.from_profiles(mp, hp, "bf16"), Links.from_hardware(hp, need_ssd=True), bpe)
    run = engine.run(tr, setup, decode_only=True, lower=engine.LowerLevels(l2_capacity=600),
                     prefetcher=start("affinity", tr.num_layers, tr.num_experts, tr.meta.top_k), timing=timing,
                     record=True, chunk_steps=7)
    assert run.records is not None and run.records.step_time is not None
    dec = np.asarray(tr.experts)[np.asarray(tr.phase) == 1]
    E, L = tr.num_experts, tr.num_layers
    rows = [[[layer * E + int(e) for e in dec[t, layer] if e >= 0] for layer in range(L)] for t in range(len(dec))]
    widths = (dec >= 0).sum(axis=2)
    attn, expert, head = timing.compute.times(widths, np.ones(len(dec), np.int64))
    ev = run.records.events
    h2d, ssd = timing.links.costs(bpe)
    want_step, _ = timeline_reference(rows, attn, expert, head,
                                      list(zip(ev["row"].tolist(), ev["key"].tolist(), ev["src"].tolist(), strict=True)),
                                      h2d, ssd)
    np.testing.assert_array_equal(run.records.step_time, want_step)
    assert run.counts["ssd_reads"] > 0 and run.counts["prefetch_issued"] > 0


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
