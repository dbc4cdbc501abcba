"""Comparison plots of a sweep table (rows from :func:`bench.aggregate.collect`).

Every function takes the ok rows, draws one figure into ``out_dir`` as PNG and SVG (atomically),
and returns the data it plotted: ``{series label: (x values, y values)}``, so tests can check that
the figure shows exactly what the table holds. A figure whose axis was not swept is skipped
(returns an empty dict): a hit-rate curve needs several cache sizes.

Series: the sweep's other axes. With ``policy`` and ``cache.l1_experts`` swept, the hit-rate plot
has one line per policy; with ``quant`` swept too, one line per (policy, format).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from moesim.bench.aggregate import swept_columns
from moesim.traces.io import atomic_path

Rows = Sequence[Mapping[str, Any]]
Series = dict[str, tuple[list[float], list[float]]]
# Columns that only restate the cache size (the x axis of size plots), never a series of their own.
SIZE_KEYS = ("cache.l1_experts", "cache.l1_gib")


def save(fig: Figure, out_dir: str | os.PathLike[str], stem: str) -> list[Path]:
    paths = []
    for ext in ("png", "svg"):
        path = Path(out_dir) / f"{stem}.{ext}"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=120, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def _num(value: Any) -> float | None:
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def series(rows: Rows, x: str, y: str, *, exclude: Sequence[str] = ()) -> Series:
    """Group ``rows`` by the swept columns other than ``x`` and ``exclude``; each group's points sorted
    by x. Rows missing x or y are left out."""
    axes = [c for c in swept_columns(rows) if c != x and c not in exclude]
    out: Series = {}
    for r in rows:
        xv, yv = _num(r.get(x)), _num(r.get(y))
        if xv is None or yv is None:
            continue
        label = ", ".join(f"{a}={r.get(a)}" for a in axes) or "all"
        out.setdefault(label, ([], []))
        out[label][0].append(xv)
        out[label][1].append(yv)
    for label, (xs, ys) in out.items():
        order = sorted(range(len(xs)), key=xs.__getitem__)
        out[label] = ([xs[i] for i in order], [ys[i] for i in order])
    return out


def _lines(ax: Any, data: Series, marker: str = "o") -> None:
    for label, (xs, ys) in sorted(data.items()):
        ax.plot(xs, ys, marker=marker, label=label)
    if data:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def _distinct(rows: Rows, column: str) -> int:
    return len({r.get(column) for r in rows if r.get(column) is not None})


def hit_rate_vs_size(rows: Rows, out_dir: str | os.PathLike[str]) -> Series:
    """L1 hit rate (replay, no prefetch) against the GPU cache size in experts."""
    if _distinct(rows, "l1_experts") < 2:
        return {}
    data = series(rows, "l1_experts", "hit_rate", exclude=SIZE_KEYS)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    _lines(ax, data)
    ax.set(xlabel="GPU cache size (experts)", ylabel="hit rate", title="Hit rate vs cache size")
    save(fig, out_dir, "hit_rate_vs_size")
    return data


def latency_vs_budget(rows: Rows, out_dir: str | os.PathLike[str]) -> dict[str, Series]:
    """Tokens/s and p99 latency against the GPU memory given to experts (GiB)."""
    if _distinct(rows, "l1_gib") < 2:
        return {}
    tps = series(rows, "l1_gib", "tokens_per_s", exclude=SIZE_KEYS)
    p99 = series(rows, "l1_gib", "latency_p99_ms", exclude=SIZE_KEYS)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    _lines(a, tps)
    a.set(xlabel="GPU memory for experts (GiB)", ylabel="tokens/s", title="Throughput vs GPU budget")
    _lines(b, p99)
    b.set(xlabel="GPU memory for experts (GiB)", ylabel="p99 latency per token (ms)", title="p99 latency vs GPU budget")
    save(fig, out_dir, "latency_vs_budget")
    return {"tokens_per_s": tps, "latency_p99_ms": p99}


def prefetch_quality(rows: Rows, out_dir: str | os.PathLike[str]) -> dict[str, Series]:
    """Prefetch accuracy and coverage against the cache size, one line per prefetcher setting."""
    have = [r for r in rows if _num(r.get("prefetch_accuracy")) is not None]
    if not have:
        return {}
    x = "l1_experts"
    acc = series(have, x, "prefetch_accuracy", exclude=SIZE_KEYS)
    cov = series(have, x, "prefetch_coverage", exclude=SIZE_KEYS)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    _lines(a, acc)
    a.set(xlabel="GPU cache size (experts)", ylabel="useful / issued", title="Prefetch accuracy")
    _lines(b, cov)
    b.set(xlabel="GPU cache size (experts)", ylabel="misses avoided / misses without prefetch",
          title="Prefetch coverage")
    save(fig, out_dir, "prefetch_quality")
    return {"accuracy": acc, "coverage": cov}


def quant_error_vs_bits(rows: Rows, out_dir: str | os.PathLike[str]) -> Series:
    """Each format's relative error against its bits per weight (one point per format)."""
    points: dict[str, tuple[float, float]] = {}
    for r in rows:
        b, e = _num(r.get("bits_per_weight")), _num(r.get("quant_rel_frobenius"))
        if b is not None and e is not None and r.get("format"):
            points[str(r["format"])] = (b, e)
    if len(points) < 2:
        return {}
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, (b, e) in sorted(points.items()):
        ax.scatter([b], [e])
        ax.annotate(name, (b, e), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(xlabel="bits per weight (with scales)", ylabel="relative Frobenius error", yscale="log",
           title="Quantization error vs size")
    ax.grid(alpha=0.3)
    save(fig, out_dir, "quant_error_vs_bits")
    return {name: ([b], [e]) for name, (b, e) in points.items()}


def budget_key(row: Mapping[str, Any]) -> float | None:
    """The memory budget a row belongs to: the configured ``cache.l1_gib`` when set, else the GiB its
    expert capacity occupies (rounded so equal budgets group together)."""
    b = _num(row.get("budget_gib"))
    if b is None:
        g = _num(row.get("l1_gib"))
        b = None if g is None else round(g, 3)
    return b


def frontier(rows: Rows) -> list[dict[str, Any]]:
    """For each memory budget, the row with the most tokens/s (ties: lower quant error, then job name)."""
    best: dict[float, Mapping[str, Any]] = {}
    for r in rows:
        b, t = budget_key(r), _num(r.get("tokens_per_s"))
        if b is None or t is None:
            continue
        key = (-t, _num(r.get("quant_rel_frobenius")) or 0.0, str(r.get("job")))
        cur = best.get(b)
        if cur is None or key < (-float(cur["tokens_per_s"]), _num(cur.get("quant_rel_frobenius")) or 0.0,
                                 str(cur.get("job"))):
            best[b] = r
    return [{"budget_gib": b, "format": r.get("format"), "policy": r.get("policy_name"),
             "prefetcher": r.get("prefetcher"), "tokens_per_s": r.get("tokens_per_s"),
             "latency_p99_ms": r.get("latency_p99_ms"), "quant_rel_frobenius": r.get("quant_rel_frobenius"),
             "job": r.get("job")} for b, r in sorted(best.items())]


def budget_frontier(rows: Rows, out_dir: str | os.PathLike[str]) -> Series:
    """The best (format, policy, prefetcher) per budget: tokens/s, labelled with its choice and error."""
    win = frontier(rows)
    if len(win) < 2:
        return {}
    xs = [float(w["budget_gib"]) for w in win]
    ys = [float(w["tokens_per_s"]) for w in win]
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    ax.plot(xs, ys, marker="o")
    for w, x, y in zip(win, xs, ys, strict=True):
        err = w["quant_rel_frobenius"]
        label = f"{w['format']}/{w['policy']}/{w['prefetcher']}" + (f"\nerr {err:.3g}" if err is not None else "")
        ax.annotate(label, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set(xlabel="GPU memory for experts (GiB)", ylabel="best tokens/s", title="Budget frontier")
    ax.grid(alpha=0.3)
    save(fig, out_dir, "budget_frontier")
    return {"frontier": (xs, ys)}


ALL_PLOTS = (hit_rate_vs_size, latency_vs_budget, prefetch_quality, quant_error_vs_bits, budget_frontier)
