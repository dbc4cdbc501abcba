"""The budget frontier of a sweep: the Pareto set over (GPU memory budget, tokens/s, quant error).

A configuration is *realisable* when it can be deployed: its eviction policy and its prefetcher
see only the past. OPT (Belady) and the oracle prefetcher read the future of the trace; they are
*bounds*: listed beside the frontier (the best bound per budget, marked ``bound``) so the reader
sees how far the frontier is from the optimum, and never listed as a winner.

A realisable row is on the frontier when no other realisable row dominates it: uses no more GPU
memory, gives at least the tokens/s and at most the quant error, and is strictly better in one of
the three. A row without a quant error counts as error 0 (every row of the sweep then compares on
budget and speed only); rows with equal budget, speed and error all stay (ties are not dominance).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from moesim.bench import style

Rows = Sequence[Mapping[str, Any]]
FRONTIER_COLUMNS = ("budget_gib", "tokens_per_s", "quant_rel_frobenius", "format", "policy", "prefetcher",
                    "latency_p99_ms", "hit_rate", "bound", "job")


def _num(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def budget(row: Mapping[str, Any]) -> float | None:
    """The GPU memory a row gives to experts: the configured ``cache.l1_gib`` when set (a budget),
    else the GiB its expert capacity occupies (rounded so equal budgets group together)."""
    b = _num(row.get("budget_gib"))
    if b is None:
        g = _num(row.get("l1_gib"))
        b = None if g is None else round(g, 3)
    return b


def is_bound(row: Mapping[str, Any]) -> bool:
    """True for rows that read the future (OPT, the oracle prefetcher): bounds, not choices."""
    return style.is_bound("policy", row.get("policy_name")) or style.is_bound("prefetcher", row.get("prefetcher"))


def _point(row: Mapping[str, Any]) -> tuple[float, float, float] | None:
    b, t = budget(row), _num(row.get("tokens_per_s"))
    if b is None or t is None:
        return None
    return b, t, _num(row.get("quant_rel_frobenius")) or 0.0


def dominates(a: tuple[float, float, float], b: tuple[float, float, float]) -> bool:
    """``a`` is no worse than ``b`` in all three (budget and error lower, tokens/s higher) and
    better in one."""
    no_worse = a[0] <= b[0] and a[1] >= b[1] and a[2] <= b[2]
    return no_worse and (a[0] < b[0] or a[1] > b[1] or a[2] < b[2])


def pareto(rows: Rows) -> list[Mapping[str, Any]]:
    """The realisable rows no other realisable row dominates, by budget then tokens/s."""
    pts = [(r, p) for r in rows if not is_bound(r) and (p := _point(r)) is not None]
    keep = [r for r, p in pts if not any(dominates(q, p) for _, q in pts)]
    return sorted(keep, key=lambda r: (budget(r), -float(r["tokens_per_s"]), str(r.get("job"))))


def best_bounds(rows: Rows) -> list[Mapping[str, Any]]:
    """Per budget, the bound row with the most tokens/s (ties: lower error, then job)."""
    best: dict[float, tuple[tuple[float, float, str], Mapping[str, Any]]] = {}
    for r in rows:
        p = _point(r)
        if not is_bound(r) or p is None:
            continue
        key = (-p[1], p[2], str(r.get("job")))
        if p[0] not in best or key < best[p[0]][0]:
            best[p[0]] = (key, r)
    return [r for _, (_, r) in sorted(best.items())]


def _out(row: Mapping[str, Any], bound: bool) -> dict[str, Any]:
    return {"budget_gib": budget(row), "tokens_per_s": row.get("tokens_per_s"),
            "quant_rel_frobenius": row.get("quant_rel_frobenius"), "format": row.get("format"),
            "policy": row.get("policy_name"), "prefetcher": row.get("prefetcher"),
            "latency_p99_ms": row.get("latency_p99_ms"), "hit_rate": row.get("hit_rate"), "bound": bound,
            "job": row.get("job")}


def frontier(rows: Rows) -> list[dict[str, Any]]:
    """The frontier rows (``bound`` False), then the best bound per budget (``bound`` True): the
    table ``frontier.csv`` holds, in :data:`FRONTIER_COLUMNS`."""
    return [_out(r, False) for r in pareto(rows)] + [_out(r, True) for r in best_bounds(rows)]
