"""Trace statistics on hand-made traces with known answers, the jitted stack-distance kernel against
its plain reference, streaming against in-memory results, the summary table and the plots."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from moesim.kernels import tables
from moesim.traces import io, stats
from moesim.traces.plots import (
    PLOT_NAMES,
    affinity_heatmap,
    affinity_matrix,
    plot_all,
    popularity_heatmap,
    reuse_distance_cdf,
)
from moesim.traces.stats_kernel import reuse_chunk, transitions_chunk
from moesim.traces.trace import PAD, Trace, TraceMeta, make_trace
from naive import reuse_chunk_reference, stack_distances_reference, transitions_chunk_reference


def trace_of(rows: list, E: int, request_id: list[int] | None = None, **kw: object) -> Trace:
    e = np.array(rows, np.int16)
    return make_trace(e, TraceMeta("toy", e.shape[1], E, 1), request_id=request_id, **kw)


def random_trace(seed: int, T: int, L: int, E: int, K: int, pad: float = 0.2, requests: int = 3) -> Trace:
    rng = np.random.default_rng(seed)
    e = np.full((T, L, K), PAD, np.int16)
    for t in range(T):
        for layer in range(L):
            ids = rng.choice(E, K, replace=False)
            e[t, layer] = np.where(rng.random(K) < pad, PAD, ids)
    rid = np.sort(rng.integers(0, requests, T))
    return make_trace(e, TraceMeta("rand", L, E, K), request_id=rid)


# ---- popularity, entropy, hot fraction -------------------------------------------------------------

def test_uniform_round_robin_has_log2_e_entropy() -> None:
    # Token t uses experts 2t, 2t+1 (mod 8) at every layer: over 8 tokens each expert is used twice.
    rows = [[[(2 * t) % 8, (2 * t + 1) % 8]] * 3 for t in range(8)]
    tr = trace_of(rows, 8)
    pop = stats.popularity(tr)
    np.testing.assert_array_equal(pop, np.full((3, 8), 2))
    np.testing.assert_allclose(stats.entropy_bits(pop), 3.0)
    np.testing.assert_allclose(stats.normalised_entropy(pop), 1.0)
    np.testing.assert_allclose(stats.hot_fraction(pop, 1), 1 / 8)
    np.testing.assert_allclose(stats.hot_fraction(pop, 4), 0.5)
    np.testing.assert_allclose(stats.hot_fraction(pop, 0.25), 0.25)  # ceil(0.25 * 8) = 2 experts


def test_popularity_counts_skip_pads_and_entropy_of_a_skewed_layer() -> None:
    rows = [[[0, 1], [2, -1]], [[0, -1], [2, 3]], [[0, 3], [-1, -1]]]
    pop = stats.popularity(trace_of(rows, 4))
    np.testing.assert_array_equal(pop, [[3, 1, 0, 1], [0, 0, 2, 1]])
    # Layer 0: p = (3/5, 1/5, 0, 1/5).
    h0 = -(0.6 * math.log2(0.6) + 2 * 0.2 * math.log2(0.2))
    np.testing.assert_allclose(stats.entropy_bits(pop), [h0, -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))])
    np.testing.assert_allclose(stats.hot_fraction(pop, 1), [0.6, 2 / 3])
    np.testing.assert_allclose(stats.hot_fraction(pop, 10), [1.0, 1.0])  # more than E: all experts


def test_hot_sizes_and_names() -> None:
    assert stats.hot_count(0.25, 64) == 16 and stats.hot_count(0.01, 64) == 1 and stats.hot_count(99, 8) == 8
    assert stats.hot_name(4) == "hot_4" and stats.hot_name(0.25) == "hot_25pct"
    for bad in (0, -1, 1.0, 0.0, 1.5):
        with pytest.raises(ValueError):
            stats.hot_count(bad, 8)


def test_entropy_of_nothing_is_nan() -> None:
    assert np.isnan(stats.entropy_bits(np.zeros((1, 4)))).all()


# ---- reuse rate ------------------------------------------------------------------------------

def test_repeating_every_token_gives_reuse_rate_one() -> None:
    # Within each request every token repeats the previous token's experts; requests differ.
    rows = [[[0, 1], [2, 3]]] * 3 + [[[4, 5], [0, 1]]] * 2
    tr = make_trace(np.array(rows), TraceMeta("r", 2, 6, 2), request_id=[0, 0, 0, 1, 1])
    hits, total = stats.reuse_counts(tr)
    np.testing.assert_array_equal(total, [6, 6])  # 3 steps with a previous token, 2 experts each
    np.testing.assert_array_equal(hits, [6, 6])
    per_layer, overall = stats.reuse_rate(tr)
    np.testing.assert_array_equal(per_layer, [1.0, 1.0])
    assert overall == 1.0


def test_reuse_rate_counts_shared_experts_over_current_row() -> None:
    rows = [[[0, 1, 2]], [[2, 3, -1]], [[3, 2, 1]], [[-1, -1, -1]], [[1, 2, 0]]]
    tr = make_trace(np.array(rows), TraceMeta("r", 1, 4, 3))  # no request ids: one request
    hits, total = stats.reuse_counts(tr)
    # t1: {2} of 2; t2: {2,3} of 3; t3: 0 of 0; t4: nothing before (empty row) of 3.
    assert (int(hits[0]), int(total[0])) == (3, 8)


def test_reuse_rate_is_nan_without_consecutive_tokens() -> None:
    tr = make_trace(np.array([[[0]], [[0]]]), TraceMeta("r", 1, 2, 1), request_id=[0, 1])
    per_layer, overall = stats.reuse_rate(tr)
    assert np.isnan(per_layer).all() and math.isnan(overall)


def reuse_reference(tr: Trace) -> tuple[np.ndarray, np.ndarray]:
    e = np.asarray(tr.experts)
    rid = np.zeros(tr.num_steps) if tr.request_id is None else np.asarray(tr.request_id)
    hits, total = np.zeros(tr.num_layers, int), np.zeros(tr.num_layers, int)
    for t in range(1, tr.num_steps):
        if rid[t] != rid[t - 1]:
            continue
        for layer in range(tr.num_layers):
            cur = {int(x) for x in e[t, layer] if x >= 0}
            prev = {int(x) for x in e[t - 1, layer] if x >= 0}
            hits[layer] += len(cur & prev)
            total[layer] += len(cur)
    return hits, total


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), T=st.integers(0, 40), chunk=st.integers(1, 9))
def test_reuse_counts_match_reference_across_chunks(seed: int, T: int, chunk: int) -> None:
    tr = random_trace(seed, T, 2, 5, 3)
    hits, total = stats.reuse_counts(tr, chunk_steps=chunk)
    ref_hits, ref_total = reuse_reference(tr)
    np.testing.assert_array_equal(hits, ref_hits)
    np.testing.assert_array_equal(total, ref_total)


# ---- reuse distance --------------------------------------------------------------------------

def test_hand_computed_reuse_distances() -> None:
    # L = 2, E = 3, K = 1: keys l * 3 + e. Steps s = 2t + l request keys 0, 3, 1, 3, 0, 5, 0, 3.
    tr = trace_of([[[0], [0]], [[1], [0]], [[0], [2]], [[0], [0]]], 3)
    rd = stats.reuse_distance(tr)
    # s3 key 3: since s1 only key 1 -> 1 (gap 2); s4 key 0: since s0 keys 3, 1 -> 2 (gap 4);
    # s6 key 0: since s4 key 5 -> 1 (gap 2); s7 key 3: since s3 keys 0, 5 -> 2 (gap 4).
    np.testing.assert_array_equal(rd.first, [2, 2])
    expected = np.zeros((2, 6), np.int64)
    expected[0, [1, 2]] = 1
    expected[1, [1, 2]] = 1
    np.testing.assert_array_equal(rd.hist, expected)
    gap = np.zeros((2, stats.GAP_BINS), np.int64)
    gap[:, 1] = 1  # gap 2
    gap[:, 2] = 1  # gap 4
    np.testing.assert_array_equal(rd.gap_hist, gap)
    np.testing.assert_array_equal(rd.gap_sum, [6, 6])


def test_keys_of_the_same_row_do_not_count() -> None:
    # One layer, rows {0, 1}, {0, 2}, {1}: key 0 at s1 saw nothing strictly between (key 1 shares s0),
    # key 1 at s2 saw keys 0 and 2 (both at s1).
    tr = make_trace(np.array([[[0, 1]], [[0, 2]], [[1, -1]]]), TraceMeta("r", 1, 3, 2))
    rd = stats.reuse_distance(tr)
    np.testing.assert_array_equal(rd.hist, [[1, 0, 1]])
    np.testing.assert_array_equal(rd.first, [3])


def test_reuse_distance_crosses_requests_and_skips_empty_rows() -> None:
    e = np.array([[[0]], [[-1]], [[0]]], np.int16)
    tr = make_trace(e, TraceMeta("r", 1, 2, 1), request_id=[0, 1, 2])
    rd = stats.reuse_distance(tr)
    np.testing.assert_array_equal(rd.hist, [[1, 0]])
    np.testing.assert_array_equal(rd.gap_hist[0, 1], 1)  # gap 2 layer-clock steps


def histograms_from_reference(tr: Trace) -> tuple[np.ndarray, ...]:
    L, E = tr.num_layers, tr.num_experts
    hist, first = np.zeros((L, L * E), np.int64), np.zeros(L, np.int64)
    gap_hist, gap_sum = np.zeros((L, stats.GAP_BINS), np.int64), np.zeros(L, np.int64)
    for layer, _key, d, gap in stack_distances_reference(np.asarray(tr.experts), L, E):
        if d is None:
            first[layer] += 1
        else:
            hist[layer, d] += 1
            gap_hist[layer, gap.bit_length() - 1] += 1
            gap_sum[layer] += gap
    return hist, first, gap_hist, gap_sum


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), T=st.integers(0, 60), L=st.integers(1, 3), E=st.integers(1, 6),
       chunk=st.integers(1, 17), tight=st.booleans())
def test_jitted_stack_distances_match_reference(seed: int, T: int, L: int, E: int, chunk: int,
                                                tight: bool) -> None:
    K = min(E, 3)
    tr = random_trace(seed, T, L, E, K, pad=0.3)
    # A tight slot capacity forces the renumbering path many times.
    rd = stats.reuse_distance(tr, chunk_steps=chunk, slot_capacity=L * E + 1 if tight else None)
    hist, first, gap_hist, gap_sum = histograms_from_reference(tr)
    np.testing.assert_array_equal(rd.hist, hist)
    np.testing.assert_array_equal(rd.first, first)
    np.testing.assert_array_equal(rd.gap_hist, gap_hist)
    np.testing.assert_array_equal(rd.gap_sum, gap_sum)


def test_slot_capacity_must_exceed_keys() -> None:
    with pytest.raises(ValueError, match="slot capacity"):
        stats.reuse_distance(random_trace(0, 3, 2, 3, 1), slot_capacity=6)


@settings(max_examples=50, deadline=None)
@given(values=st.lists(st.integers(0, 30), min_size=1, max_size=50), q=st.sampled_from([0.1, 0.5, 0.9, 0.99, 1.0]))
def test_hist_quantile_is_inverted_cdf(values: list[int], q: float) -> None:
    hist = np.bincount(values, minlength=31)
    assert stats.hist_quantile(hist, q) == np.quantile(values, q, method="inverted_cdf")
    assert stats.hist_mean(hist) == pytest.approx(np.mean(values))


# ---- transitions and mutual information ------------------------------------------------------------

def test_deterministic_mapping_has_mi_log2_of_experts_used() -> None:
    # Top-1, 4 of 6 experts used uniformly at layer 0; layer 1 = (e + 2) % 6, layer 2 = 5 - layer 1.
    rows = []
    for t in range(12):
        a = t % 4
        b = (a + 2) % 6
        rows.append([[a], [b], [5 - b]])
    tm = stats.transition_matrix(trace_of(rows, 6))
    assert tm.shape == (2, 6, 6)
    expected0 = np.zeros((6, 6), np.int64)
    for a in range(4):
        expected0[a, (a + 2) % 6] = 3
    np.testing.assert_array_equal(tm[0], expected0)
    np.testing.assert_allclose(stats.mutual_information(tm), [2.0, 2.0])


def test_independent_layers_have_zero_mi() -> None:
    rows = [[[t % 2], [(t // 2) % 2]] for t in range(8)]
    tm = stats.transition_matrix(trace_of(rows, 2))
    np.testing.assert_array_equal(tm[0], [[2, 2], [2, 2]])
    np.testing.assert_allclose(stats.mutual_information(tm), [0.0], atol=1e-12)


def test_transitions_count_every_pair_of_two_rows_and_skip_pads() -> None:
    e = np.array([[[0, 1], [2, 3]], [[1, -1], [3, 0]]], np.int16)
    tm = stats.transition_matrix(make_trace(e, TraceMeta("r", 2, 4, 2)))
    expected = np.zeros((4, 4), np.int64)
    for i, j in [(0, 2), (0, 3), (1, 2), (1, 3), (1, 3), (1, 0)]:
        expected[i, j] += 1
    np.testing.assert_array_equal(tm[0], expected)


def mi_reference(m: np.ndarray) -> float:
    n = m.sum()
    rows, cols = m.sum(axis=1), m.sum(axis=0)
    return sum(m[i, j] / n * math.log2(m[i, j] * n / (rows[i] * cols[j]))
               for i in range(m.shape[0]) for j in range(m.shape[1]) if m[i, j])


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_mutual_information_matches_definition(seed: int) -> None:
    m = np.random.default_rng(seed).integers(0, 5, (5, 5))
    m[0, 0] += 1
    assert stats.mutual_information(m) == pytest.approx(mi_reference(m))
    assert stats.mutual_information(m) >= -1e-12


def test_single_layer_has_no_transitions() -> None:
    assert stats.transition_matrix(trace_of([[[0]]], 2)).shape == (0, 2, 2)


# ---- working set -----------------------------------------------------------------------------

def test_working_set_per_window() -> None:
    # L = 2, E = 4, windows of 2 tokens over 5 tokens: two full windows, the fifth token dropped.
    rows = [[[0], [1]], [[0], [2]], [[1], [1]], [[2], [1]], [[3], [3]]]
    ws = stats.working_set(trace_of(rows, 4), window=2)
    np.testing.assert_array_equal(ws.per_layer, [[1, 2], [2, 1]])
    np.testing.assert_array_equal(ws.overall, [3, 3])
    short = stats.working_set(trace_of(rows, 4), window=10)  # shorter than one window: one window
    np.testing.assert_array_equal(short.per_layer, [[4, 3]])
    np.testing.assert_array_equal(short.overall, [7])


def test_working_set_window_must_be_positive() -> None:
    with pytest.raises(ValueError, match="window"):
        stats.working_set(trace_of([[[0]]], 2), window=0)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), T=st.integers(1, 50), W=st.integers(1, 12), chunk=st.integers(1, 20))
def test_working_set_matches_sets(seed: int, T: int, W: int, chunk: int) -> None:
    tr = random_trace(seed, T, 2, 6, 2)
    ws = stats.working_set(tr, W, chunk_steps=chunk)
    e = np.asarray(tr.experts)
    bounds = [(0, T)] if T < W else [(k * W, (k + 1) * W) for k in range(T // W)]
    exp_layer = [[len({int(x) for x in e[a:b, layer].ravel() if x >= 0}) for layer in range(2)] for a, b in bounds]
    np.testing.assert_array_equal(ws.per_layer, np.array(exp_layer).reshape(-1, 2))
    np.testing.assert_array_equal(ws.overall, [sum(r) for r in exp_layer])  # keys of layers never collide


# ---- streaming and one pass ------------------------------------------------------------------

def assert_stats_equal(a: stats.TraceStats, b: stats.TraceStats) -> None:
    for name in ("popularity", "reuse_hits", "reuse_total", "transitions"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    for name in ("hist", "first", "gap_hist", "gap_sum"):
        np.testing.assert_array_equal(getattr(a.reuse_distance, name), getattr(b.reuse_distance, name))
    np.testing.assert_array_equal(a.working_set.per_layer, b.working_set.per_layer)
    np.testing.assert_array_equal(a.working_set.overall, b.working_set.overall)


def test_streaming_a_memory_mapped_trace_equals_in_memory(tmp_path: Path) -> None:
    tr = random_trace(7, 300, 3, 8, 2, requests=10)
    in_memory = stats.compute_stats(tr, window=8, chunk_steps=1 << 20)
    path = io.save(tr, tmp_path / "s.safetensors")
    mapped = io.load(path)
    assert isinstance(mapped.experts, np.memmap)
    streamed = stats.compute_stats(mapped, window=8, chunk_steps=16)
    assert_stats_equal(in_memory, streamed)
    # The one-pass result equals each statistic computed on its own.
    np.testing.assert_array_equal(in_memory.popularity, stats.popularity(mapped, chunk_steps=5))
    np.testing.assert_array_equal(in_memory.transitions, stats.transition_matrix(mapped, chunk_steps=5))
    hits, total = stats.reuse_counts(mapped, chunk_steps=5)
    np.testing.assert_array_equal(in_memory.reuse_hits, hits)
    np.testing.assert_array_equal(in_memory.reuse_total, total)


def test_small_blocks_give_the_same_working_set(monkeypatch: pytest.MonkeyPatch) -> None:
    tr = random_trace(3, 40, 3, 5, 3)
    whole = stats.working_set(tr, 4)
    monkeypatch.setattr(stats, "_BLOCK_ELEMENTS", 7)  # one window per block
    small = stats.working_set(tr, 4)
    np.testing.assert_array_equal(small.per_layer, whole.per_layer)
    np.testing.assert_array_equal(small.overall, whole.overall)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), T=st.integers(0, 30), L=st.integers(1, 4), E=st.integers(1, 9),
       carry=st.booleans())
def test_jitted_token_kernels_match_numpy_twins(seed: int, T: int, L: int, E: int, carry: bool) -> None:
    K = min(E, 4)
    tr = random_trace(seed, T, L, E, K, pad=0.3)
    e = np.ascontiguousarray(tr.experts)
    rng = np.random.default_rng(seed)
    prev_row = np.asarray(random_trace(seed + 1, 1, L, E, K).experts)[0]
    has_prev = rng.random(T) < 0.7
    if T:
        has_prev[0] = carry
    out = [np.zeros(L, np.int64) for _ in range(4)]
    reuse_chunk(e, prev_row, has_prev, out[0], out[1])
    reuse_chunk_reference(e, prev_row, has_prev, out[2], out[3])
    np.testing.assert_array_equal(out[0], out[2])
    np.testing.assert_array_equal(out[1], out[3])
    got, ref = np.zeros((2, max(L - 1, 0), E, E), np.int64)
    transitions_chunk(e, got)
    transitions_chunk_reference(e, ref)
    np.testing.assert_array_equal(got, ref)


def test_empty_trace_statistics() -> None:
    tr = make_trace(np.zeros((0, 2, 2)), TraceMeta("e", 2, 4, 2))
    rows = stats.summary_table(tr)
    assert [r["layer"] for r in rows] == ["0", "1", "all"]
    assert rows[-1]["accesses"] == 0 and math.isnan(rows[-1]["reuse_rate"]) and math.isnan(rows[-1]["ws_mean"])


# ---- table -----------------------------------------------------------------------------------

def table_trace() -> Trace:
    return random_trace(11, 64, 3, 6, 2, pad=0.1, requests=4)


def test_summary_table_rows_columns_and_values() -> None:
    tr = table_trace()
    rows = stats.summary_table(tr, window=8)
    assert [r["layer"] for r in rows] == ["0", "1", "2", "all"]
    cols = stats.table_columns()
    assert all(list(r) == cols for r in rows)
    assert cols[:5] == ["layer", "accesses", "experts_used", "entropy_bits", "entropy_norm"]
    assert {"hot_1", "hot_4", "hot_8", "hot_25pct", "reuse_rate", "rd_first", "rd_mean", "rd_p50", "rd_p90",
            "gap_mean", "mi_bits", "ws_window", "ws_mean", "ws_max"} <= set(cols)
    e = np.asarray(tr.experts)
    # Recompute a few values independently of traces.stats.
    for layer in range(3):
        counts = Counter(int(x) for x in e[:, layer].ravel() if x >= 0)
        n = sum(counts.values())
        row = rows[layer]
        assert row["accesses"] == n
        assert row["experts_used"] == len(counts)
        assert row["entropy_bits"] == pytest.approx(-sum(c / n * math.log2(c / n) for c in counts.values()))
        assert row["entropy_norm"] == pytest.approx(row["entropy_bits"] / math.log2(6))
        assert row["hot_1"] == pytest.approx(max(counts.values()) / n)
        assert row["hot_25pct"] == pytest.approx(sum(sorted(counts.values())[-2:]) / n)  # ceil(1.5) = 2
        assert row["hot_8"] == 1.0
        hits, total = reuse_reference(tr)
        assert row["reuse_rate"] == pytest.approx(hits[layer] / total[layer])
        assert row["ws_window"] == 8
    assert math.isnan(rows[2]["mi_bits"])
    hist, first, _, gap_sum = histograms_from_reference(tr)
    all_row = rows[-1]
    assert all_row["accesses"] == int((e >= 0).sum())
    assert all_row["rd_first"] == int(first.sum()) == all_row["experts_used"]
    dists = np.repeat(np.arange(hist.shape[1]), hist.sum(axis=0))
    assert all_row["rd_mean"] == pytest.approx(dists.mean())
    assert all_row["rd_p50"] == np.quantile(dists, 0.5, method="inverted_cdf")
    assert all_row["rd_p90"] == np.quantile(dists, 0.9, method="inverted_cdf")
    assert all_row["gap_mean"] == pytest.approx(gap_sum.sum() / len(dists))
    hits, total = reuse_reference(tr)
    assert all_row["reuse_rate"] == pytest.approx(hits.sum() / total.sum())
    acc = np.array([rows[i]["accesses"] for i in range(3)])
    ent = np.array([rows[i]["entropy_bits"] for i in range(3)])
    assert all_row["entropy_bits"] == pytest.approx((ent * acc).sum() / acc.sum())
    tm = stats.transition_matrix(tr)
    w = tm.sum(axis=(1, 2))
    assert all_row["mi_bits"] == pytest.approx((np.array([mi_reference(m) for m in tm]) * w).sum() / w.sum())
    ws = stats.working_set(tr, 8)
    assert all_row["ws_mean"] == pytest.approx(ws.overall.mean()) and all_row["ws_max"] == ws.overall.max()


def test_custom_hot_sizes_change_the_columns() -> None:
    rows = stats.summary_table(table_trace(), hot=(2, 0.5))
    assert list(rows[0]) == stats.table_columns((2, 0.5))
    assert "hot_2" in rows[0] and "hot_50pct" in rows[0] and "hot_1" not in rows[0]


def rows_equal(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert list(x) == list(y)
        for k in x:
            if isinstance(x[k], float) and math.isnan(x[k]):
                assert math.isnan(y[k]), k
            else:
                assert x[k] == y[k] and type(x[k]) is type(y[k]), k


def test_the_statistics_table_round_trips_through_parquet(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    rows = stats.summary_table(table_trace())
    path = tables.write_data(rows, tmp_path / "t.csv")
    assert path == tmp_path / "t.parquet"
    rows_equal(rows, tables.read_data(path))
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]


def test_the_statistics_table_round_trips_through_csv_without_pyarrow(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tables, "have_pyarrow", lambda: False)
    rows = stats.summary_table(table_trace())
    rows[0] = {**rows[0], **{k: math.nan for k, v in rows[0].items() if isinstance(v, float)}}
    path = tables.write_data(rows, tmp_path / "t.parquet")
    assert path == tmp_path / "t.csv"
    assert path.read_text().splitlines()[0] == ",".join(stats.table_columns())
    rows_equal(rows, tables.read_data(path))
    assert [p.name for p in tmp_path.iterdir()] == ["t.csv"]


def test_a_data_table_refuses_ragged_rows_and_an_empty_table_without_columns(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="row 1"):
        tables.write_data([{"a": 1}, {"b": 2}], tmp_path / "t")
    with pytest.raises(ValueError, match="no rows"):
        tables.write_data([], tmp_path / "t")


def test_describe() -> None:
    tr = table_trace()
    d = stats.describe(tr)
    assert (d["steps"], d["layers"], d["experts"], d["width"], d["requests"]) == (64, 3, 6, 2, 4)
    assert d["accesses"] == stats.summary_table(tr)[-1]["accesses"]
    assert d["optional_fields"] == ["request_id"]


# ---- plots -----------------------------------------------------------------------------------

PNG = b"\x89PNG\r\n\x1a\n"


def test_plots_are_written(tmp_path: Path) -> None:
    tr = table_trace()
    s = stats.compute_stats(tr)
    for fn in (popularity_heatmap, reuse_distance_cdf, affinity_heatmap):
        path = fn(s, tmp_path / f"{fn.__name__}.png")
        data = path.read_bytes()
        assert data.startswith(PNG) and len(data) > 2000
    path = affinity_heatmap(s, tmp_path / "pair.png", layer=1)
    assert path.read_bytes().startswith(PNG)
    paths = plot_all(tr, tmp_path / "all", stats=s)
    assert [p.name for p in paths] == list(PLOT_NAMES)
    assert all(p.stat().st_size > 2000 for p in paths)
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == sorted(PLOT_NAMES)  # no temporaries


def test_affinity_matrix_rows_are_conditional_distributions() -> None:
    rows = [[[t % 3], [(t % 3 + 1) % 3]] for t in range(9)]
    s = stats.compute_stats(trace_of(rows, 3))
    np.testing.assert_array_equal(affinity_matrix(s, 0), [[0, 1, 0], [0, 0, 1], [1, 0, 0]])
    np.testing.assert_array_equal(affinity_matrix(s), affinity_matrix(s, 0))
    with pytest.raises(ValueError, match="layer pair"):
        affinity_matrix(s, 1)


def test_single_layer_plots_skip_affinity(tmp_path: Path) -> None:
    paths = plot_all(trace_of([[[0]], [[1]], [[0]]], 2), tmp_path)
    assert [p.name for p in paths] == list(PLOT_NAMES[:2])
