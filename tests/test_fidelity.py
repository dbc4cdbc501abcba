"""The timing model's terms for a host-memory fast tier (decode, hand-off, contention), the shared-time
timeline against its discrete-event twin, the measurements that feed it, and the fidelity grid's
outputs."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from moesim.sim import engine
from moesim.sim.cache_setup import setup_cache
from moesim.sim.fidelity import Cell, Settings, grid, main, median_profile, run_grid, scaled_model
from moesim.sim.fidelity_report import errors, markdown
from moesim.sim.measure import measure, to_yaml
from moesim.sim.profiles import GB, HardwareProfile, ProfileError, load_hardware_profile, load_model_profile
from moesim.sim.timing import Clock, ComputeModel, Links, timeline_events, timeline_shared
from moesim.traces.synth import generate_preset
from shared_timeline_reference import shared_timeline


def host_profile(**changes) -> HardwareProfile:
    base = dict(name="host-box", description="hand-made CPU box", gpu_name="none", gpu_memory_gib=8.0,
                gpu_bandwidth_gbps=5.0, gpu_tflops=0.1, h2d_bandwidth_gbps=None, h2d_latency_us=None,
                nvme_bandwidth_gbps=1.0, nvme_latency_us=80.0, dram_gib=8.0, fast_tier="host",
                decode_gbps={"mxfp4": 0.5, "bf16": 1.0}, handoff_us=200.0, compute_slowdown=1.5,
                fetch_slowdown=1.25)
    base.update(changes)
    return HardwareProfile(**base)


# ---- the profile's new fields ------------------------------------------------------------------

def test_a_host_tier_fetch_is_a_decode_of_the_stored_bytes() -> None:
    hw = host_profile()
    links = Links.from_hardware(hw, need_ssd=True, weight_format="mxfp4")
    h2d, ssd = links.costs(1e6)
    assert h2d == 1e6 / (0.5 * GB)  # no copy, no latency: the decode alone
    assert ssd == pytest.approx(80e-6 + 1e6 / GB)
    assert links.handoff_s == pytest.approx(200e-6) and links.contended
    with pytest.raises(ProfileError, match=r"decode_gbps.*'nvfp4'"):
        Links.from_hardware(hw, need_ssd=False, weight_format="nvfp4")


def test_a_gpu_profile_adds_a_listed_decode_to_its_copy_and_nothing_else() -> None:
    t4 = load_hardware_profile("t4")
    plain = Links.from_hardware(t4, need_ssd=False, weight_format="mxfp4")
    assert not plain.contended and plain.handoff_s == 0.0
    assert plain.costs(1e6)[0] == t4.h2d_latency_us * 1e-6 + 1e6 * (1.0 / (t4.h2d_bandwidth_gbps * GB))
    slow = dataclasses.replace(t4, decode_gbps={"mxfp4": 100.0})
    assert Links.from_hardware(slow, need_ssd=False, weight_format="mxfp4").costs(1e6)[0] == pytest.approx(
        plain.costs(1e6)[0] + 1e6 / (100 * GB))


@pytest.mark.parametrize(("changes", "match"), [
    ({"fast_tier": "tpu"}, "fast_tier"), ({"compute_slowdown": 0.9}, "compute_slowdown"),
    ({"decode_gbps": {"mxfp4": 0}}, "decode_gbps"), ({"decode_gbps": [1.0]}, "decode_gbps"),
    ({"handoff_us": -1.0}, "handoff_us"),
])
def test_bad_new_fields_are_refused_by_name(changes: dict, match: str) -> None:
    with pytest.raises(ProfileError, match=match):
        host_profile(**changes)


def test_a_host_profile_round_trips_through_yaml(tmp_path: Path) -> None:
    hw = host_profile()
    path = tmp_path / "host-box.yaml"
    path.write_text(to_yaml(hw.to_dict()))
    assert yaml.safe_load(path.read_text())["decode_gbps"] == {"mxfp4": 0.5, "bf16": 1.0}
    assert load_hardware_profile(path) == hw


def test_the_median_profile_takes_each_field_apart() -> None:
    a, b, c = host_profile(gpu_bandwidth_gbps=1.0), host_profile(gpu_bandwidth_gbps=9.0, handoff_us=10.0), \
        host_profile(gpu_bandwidth_gbps=4.0, decode_gbps={"mxfp4": 0.1, "bf16": 3.0})
    m = median_profile([a, b, c])
    assert m.gpu_bandwidth_gbps == 4.0 and m.handoff_us == 200.0 and m.decode_gbps == {"mxfp4": 0.5, "bf16": 1.0}


# ---- the shared-time timeline ------------------------------------------------------------------

def hand_case(handoff: float, slow: float):
    # One layer; step 0 prefetches key 5 at its router (no expert of its own), then a head of 4 s runs
    # beside the 2 s transfer; step 1 needs key 5.
    ptr = np.array([0, 0, 1], np.int64)
    keys = np.array([5], np.int32)
    attn = np.array([[1.0], [1.0]])
    expert = np.array([[0.0], [1.0]])
    head = np.array([4.0, 0.0])
    ev = (np.array([0], np.int64), np.array([5], np.int32), np.array([1], np.int8))
    clock = Clock.start(8)
    step, stall = np.zeros(2), np.zeros((2, 1))
    timeline_shared(ptr, keys, 1, attn, expert, head, *ev, 2.0, 0.5, handoff, slow, slow, clock.clock, clock.ready,
                    clock.queue, clock.queue_key, clock.queue_pos, clock.key_seq, step, stall)
    return step, stall, clock


def test_shared_time_by_hand() -> None:
    # Both at half speed from t=1: the transfer (2 s of work) ends at 5 after 2 s of the head's work;
    # the head's last 2 s run alone: step 0 ends at 7; step 1 finds key 5 ready and takes 2 s.
    step, stall, clock = hand_case(0.0, 2.0)
    assert step.tolist() == [7.0, 2.0] and stall.tolist() == [[0.0], [0.0]]
    assert clock.ready[5] == 5.0 and clock.clock[3] == 4.0  # the link was busy 4 s of wall clock
    # A woken worker starts 0.5 s late: the head runs 0.5 s alone, then both until the transfer ends
    # at 5.5 (the head has 1.5 s left), then alone to 7.
    step, _, clock = hand_case(0.5, 2.0)
    assert step.tolist() == [7.0, 2.0] and clock.ready[5] == 5.5
    # Without contention the transfer simply overlaps: it ends at 3, the step at 5.
    step, _, clock = hand_case(0.0, 1.0)
    assert step.tolist() == [5.0, 2.0] and clock.ready[5] == 3.0


@st.composite
def shared_case(draw):
    Lr = draw(st.integers(1, 3))
    Er = draw(st.integers(1, 4))
    T = draw(st.integers(1, 6))
    rows, keys, ptr = [], [], [0]
    for t in range(T):
        rows.append([])
        for layer in range(Lr):
            ids = [layer * Er + e for e in draw(st.lists(st.integers(0, Er - 1), unique=True, max_size=Er))]
            rows[t].append(ids)
            keys += ids
            ptr.append(len(keys))
    pos = st.floats(0.0, 1e-3, allow_nan=False)
    times = [np.array([[draw(pos) for _ in range(Lr)] for _ in range(T)]) for _ in range(2)]
    head = np.array([draw(pos) for _ in range(T)])
    n_ev = draw(st.integers(0, 90))  # more than the queue's first 64 entries: it must grow
    ev_row = np.sort(np.array([draw(st.integers(0, T * Lr - 1)) for _ in range(n_ev)], np.int64))
    ev_key = np.array([draw(st.integers(0, Lr * Er - 1)) for _ in range(n_ev)], np.int32)
    ev_src = np.array([draw(st.sampled_from([1, 2])) for _ in range(n_ev)], np.int8)
    knobs = (draw(st.floats(1e-6, 1e-3)), draw(st.floats(1e-6, 1e-3)), draw(st.sampled_from([0.0, 1e-4])),
             draw(st.floats(1.0, 3.0)), draw(st.floats(1.0, 3.0)))
    return rows, np.array(keys, np.int32), np.array(ptr, np.int64), Lr * Er, (times[0], times[1], head), \
        (ev_row, ev_key, ev_src), knobs


def run_shared(case, piece_steps: int):
    _, keys, ptr, n_keys, (attn, expert, head), (ev_row, ev_key, ev_src), knobs = case
    T, Lr = attn.shape
    clock = Clock.start(n_keys)
    step, stall = np.zeros(T), np.zeros((T, Lr))
    for a in range(0, T, piece_steps):
        b = min(a + piece_steps, T)
        sel = (ev_row >= a * Lr) & (ev_row < b * Lr)
        clock.reserve(int(sel.sum()))
        timeline_shared(ptr[a * Lr:b * Lr + 1] - ptr[a * Lr], keys[ptr[a * Lr]:ptr[b * Lr]], Lr, attn[a:b],
                        expert[a:b], head[a:b], ev_row[sel] - a * Lr, ev_key[sel], ev_src[sel], *knobs, clock.clock,
                        clock.ready, clock.queue, clock.queue_key, clock.queue_pos, clock.key_seq, step[a:b],
                        stall[a:b])
    return step, stall, clock


@settings(max_examples=80, deadline=None)
@given(shared_case(), st.integers(1, 6))
def test_the_shared_timeline_equals_its_discrete_event_twin_piece_by_piece(case, piece_steps: int) -> None:
    rows, _, _, _, (attn, expert, head), (ev_row, ev_key, ev_src), knobs = case
    step, stall, _ = run_shared(case, piece_steps)
    events = list(zip(ev_row.tolist(), ev_key.tolist(), ev_src.tolist(), strict=True))
    want_step, want_stall = shared_timeline(rows, attn, expert, head, events, *knobs)
    np.testing.assert_allclose(step, want_step, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(stall, want_stall, rtol=1e-9, atol=1e-15)
    assert (stall >= 0).all()
    # Contention never makes a run faster than the same run without it.
    rows_, keys, ptr, n_keys, times, ev, (h2d, ssd, handoff, _, _) = case
    plain, _, _ = run_shared((rows_, keys, ptr, n_keys, times, ev, (h2d, ssd, handoff, 1.0, 1.0)), piece_steps)
    assert step.sum() >= plain.sum() * (1 - 1e-12)


@settings(max_examples=40, deadline=None)
@given(shared_case())
def test_without_contention_the_shared_timeline_is_the_event_timeline(case) -> None:
    rows, keys, ptr, n_keys, (attn, expert, head), (ev_row, ev_key, ev_src), (h2d, ssd, handoff, _, _) = case
    T, Lr = attn.shape
    clock = Clock.start(n_keys)
    step, stall = np.zeros(T), np.zeros((T, Lr))
    timeline_events(ptr, keys, Lr, attn, expert, head, ev_row, ev_key, ev_src, h2d, ssd, handoff, clock.clock,
                    clock.ready, step, stall)
    plain, plain_stall, _ = run_shared((rows, keys, ptr, n_keys, (attn, expert, head), (ev_row, ev_key, ev_src),
                                        (h2d, ssd, handoff, 1.0, 1.0)), T)
    np.testing.assert_allclose(plain, step, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(plain_stall, stall, rtol=1e-9, atol=1e-15)


def test_demand_misses_need_no_shared_time_on_either_path() -> None:
    # No prefetch and all of DRAM: transfers never overlap compute, so the fast path's miss timeline
    # and the hierarchy path's shared timeline give the same seconds.
    tr = generate_preset("olmoe-1b-7b", seed=2, num_requests=1)
    mp = load_model_profile("olmoe-1b-7b")
    hw = host_profile(decode_gbps={"bf16": 2.0})
    timing = engine.Timing(ComputeModel.from_profiles(mp, hw, "fp32"),
                           Links.from_hardware(hw, need_ssd=False, weight_format="bf16"), mp.expert_bytes("bf16"))
    runs = [engine.run(tr, setup_cache(tr.num_layers, tr.num_experts, "lru", 300), decode_only=True, timing=timing,
                       record=True, chunk_steps=9, path=path) for path in ("auto", "hierarchy")]
    assert runs[0].records is not None and runs[1].records is not None
    np.testing.assert_allclose(runs[0].records.step_time, runs[1].records.step_time, rtol=1e-12)
    assert runs[0].timing.stall_s > 0


# ---- the measurements ----------------------------------------------------------------------------

def test_moesim_measure_profiles_a_host_fast_tier_at_the_expert_shape(tmp_path: Path) -> None:
    model = scaled_model(layers=1, width=64)
    data = measure("host-box", size_bytes=1 << 20, disk_dir=tmp_path, matmul_n=32, repeats=1, use_gpu=False,
                   model=model, formats=("mxfp4", "bf16"), window_s=0.02)
    out = tmp_path / "host-box.yaml"
    out.write_text(to_yaml(data))
    hw = load_hardware_profile(out)
    assert hw.fast_tier == "host" and set(hw.decode_gbps) == {"mxfp4", "bf16"}
    assert hw.gpu_bandwidth_gbps > 0 and hw.gpu_tflops > 0 and hw.nvme_bandwidth_gbps > 0
    assert hw.handoff_us >= 0 and hw.compute_slowdown >= 1 and hw.fetch_slowdown >= 1
    assert {"decode_gbps", "handoff_us", "compute_slowdown"} <= set(hw.measured.split(","))
    assert Links.from_hardware(hw, need_ssd=True, weight_format="mxfp4").costs(model.expert_bytes("mxfp4"))[0] > 0
    assert not list(tmp_path.glob(".moesim-measure-*"))


def test_moesim_measure_refuses_a_format_the_model_cannot_hold(tmp_path: Path) -> None:
    from moesim.sim.measure import main as measure_main

    assert measure_main(["--model", "no-such-model", "--disk-dir", str(tmp_path)]) == 2
    assert measure_main(["--model", "gpt-oss-20b", "--formats", "int4-g128,bogus", "--disk-dir", str(tmp_path)]) == 2


# ---- the grid ------------------------------------------------------------------------------------

def test_the_scaled_model_keeps_gpt_oss_routing_at_a_cpu_size() -> None:
    m = scaled_model(layers=4, width=1024)
    base = load_model_profile("gpt-oss-20b")
    assert (m.num_experts, m.top_k, m.num_moe_layers) == (base.num_experts, base.top_k, 4)
    assert m.expert_matrix_shapes() == [(1024, 1024)] * 3 and m.dense_format == "fp32"
    assert m.expert_bytes("mxfp4") == 3 * 1024 * 1024 * 4.25 / 8
    with pytest.raises(ValueError, match="width"):
        scaled_model(width=100)


def test_the_grids_have_the_cells_they_promise() -> None:
    quick, full = grid(quick=True), grid(quick=False)
    assert len(quick) >= 9 and len(set(quick)) == len(quick)
    assert len(full) == 3 * 3 * 3 * 2
    assert {c.policy for c in full} == {"lru", "s3fifo", "opt"}
    assert {c.prefetcher for c in full} == {"none", "affinity", "oracle"}
    assert {c.weight_format for c in full} == {"bf16", "mxfp4"} and len({c.l1 for c in full}) == 3


def test_error_summary_by_hand() -> None:
    rows = [{"measured_tokens_per_s": 10.0, "predicted_tokens_per_s": 11.0},
            {"measured_tokens_per_s": 10.0, "predicted_tokens_per_s": 8.0},
            {"measured_tokens_per_s": 4.0, "predicted_tokens_per_s": 4.0}]
    e = errors(rows)
    assert e["median_abs_error"] == pytest.approx(0.1) and e["max_abs_error"] == pytest.approx(0.2)
    assert e["median_ratio"] == 1.0


def test_a_tiny_grid_writes_the_csv_the_table_and_the_plot(tmp_path: Path) -> None:
    cells = [Cell("lru", 8, "none", "mxfp4"), Cell("opt", 8, "oracle", "bf16")]
    s = Settings(layers=2, width=64, steps=6, warmup=1, l2=16, rounds=1)
    rows, hw = run_grid(cells, tmp_path, s, hardware=host_profile())
    from moesim.sim.fidelity_report import write_report

    paths = write_report(rows, hw, s, tmp_path)
    assert {p.name for p in paths} == {"fidelity.csv", "fidelity.md", "fidelity.png", "fidelity.svg", "hardware.yaml"}
    got = list(csv.DictReader((tmp_path / "fidelity.csv").open()))
    assert [(r["policy"], r["prefetcher"], r["weight_format"]) for r in got] == [("lru", "none", "mxfp4"),
                                                                             ("opt", "oracle", "bf16")]
    for r in got:
        assert float(r["measured_tokens_per_s"]) > 0 and float(r["predicted_tokens_per_s"]) > 0
        assert float(r["measured_p99_ms"]) > 0 and float(r["predicted_p99_ms"]) > 0
    assert "median |predicted/measured - 1|" in (tmp_path / "fidelity.md").read_text()
    assert markdown(rows, hw).count("\n| ") == 1 + len(cells)
    assert load_hardware_profile(tmp_path / "hardware.yaml") == hw


def test_the_command_line_refuses_bad_usage(tmp_path: Path) -> None:
    assert main([]) == 2  # --out is required
    assert main(["--out", str(tmp_path), "--warmup", "9", "--steps", "9"]) == 2
    assert main(["--out", str(tmp_path), "--quick", "--l2", "32"]) == 2
    assert main(["--out", str(tmp_path), "--hardware", str(tmp_path / "missing.yaml")]) == 2


@pytest.mark.slow
def test_the_quick_grid_runs_end_to_end(tmp_path: Path) -> None:
    assert main(["--quick", "--out", str(tmp_path), "--rounds", "1", "--steps", "16", "--warmup", "4"]) == 0
    rows = list(csv.DictReader((tmp_path / "fidelity.csv").open()))
    assert len(rows) == 9 and (tmp_path / "fidelity.png").stat().st_size > 0
