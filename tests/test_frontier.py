"""The budget frontier is the Pareto set over (GPU budget, tokens/s, quant error) among deployable
runs; OPT and the oracle prefetcher are bounds, listed apart and never on the frontier."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from moesim.bench.frontier import best_bounds, dominates, frontier, is_bound, pareto

row = st.fixed_dictionaries({
    "budget_gib": st.sampled_from([0.5, 1.0, 2.0, 4.0]),
    "tokens_per_s": st.floats(1, 200, allow_nan=False),
    "quant_rel_frobenius": st.one_of(st.none(), st.sampled_from([0.0, 0.01, 0.05, 0.1])),
    "policy_name": st.sampled_from(["lru", "arc", "s3fifo", "opt"]),
    "prefetcher": st.sampled_from(["none", "affinity", "oracle"]),
    "format": st.sampled_from(["mxfp4", "nvfp4", "bf16"]),
})


def _point(r: dict) -> tuple[float, float, float]:
    return r["budget_gib"], r["tokens_per_s"], r["quant_rel_frobenius"] or 0.0


@settings(max_examples=100, deadline=None)
@given(st.lists(row, max_size=30).map(lambda rs: [dict(r, job=f"j{i}") for i, r in enumerate(rs)]))
def test_frontier_is_the_pareto_set_of_deployable_rows(rows: list[dict]) -> None:
    real = [r for r in rows if not is_bound(r)]
    front = pareto(rows)
    listed = {r["job"] for r in front}
    assert all(not is_bound(r) for r in front)
    for r in front:  # nothing deployable dominates a listed row
        assert not any(dominates(_point(q), _point(r)) for q in real)
    for r in real:  # every row left out is dominated by a deployable row
        if r["job"] not in listed:
            assert any(dominates(_point(q), _point(r)) for q in real)
    bounds = best_bounds(rows)
    for b in bounds:
        assert is_bound(b)
        assert b["tokens_per_s"] == max(r["tokens_per_s"] for r in rows if is_bound(r)
                                        and r["budget_gib"] == b["budget_gib"])
    table = frontier(rows)
    assert [t["bound"] for t in table] == [False] * len(front) + [True] * len(bounds)
    assert {t["job"] for t in table if not t["bound"]} == listed


def test_a_faster_oracle_never_wins_and_a_slower_smaller_format_can() -> None:
    rows = [
        {"job": "a", "budget_gib": 1.0, "tokens_per_s": 50.0, "quant_rel_frobenius": 0.1, "policy_name": "lru",
         "prefetcher": "none"},
        {"job": "b", "budget_gib": 1.0, "tokens_per_s": 40.0, "quant_rel_frobenius": 0.01, "policy_name": "lru",
         "prefetcher": "none"},  # slower but more accurate: on the frontier too
        {"job": "c", "budget_gib": 1.0, "tokens_per_s": 30.0, "quant_rel_frobenius": 0.1, "policy_name": "arc",
         "prefetcher": "none"},  # dominated by a
        {"job": "d", "budget_gib": 1.0, "tokens_per_s": 90.0, "quant_rel_frobenius": 0.1, "policy_name": "opt",
         "prefetcher": "none"},
        {"job": "e", "budget_gib": 2.0, "tokens_per_s": 45.0, "quant_rel_frobenius": 0.1, "policy_name": "lru",
         "prefetcher": "oracle"},
        {"job": "f", "budget_gib": 2.0, "tokens_per_s": 49.0, "quant_rel_frobenius": 0.1, "policy_name": "lru",
         "prefetcher": "none"},  # more memory for less speed than a: dominated
    ]
    table = frontier(rows)
    assert [(t["job"], t["bound"]) for t in table] == [("a", False), ("b", False), ("d", True), ("e", True)]
