"""Comparison figures of a sweep table (rows from :func:`bench.aggregate.collect`).

Every figure function takes the ok rows and the sweep's context (:func:`bench.context.sweep_context`)
and returns ``(figure, data)``: ``data`` is exactly what is drawn (``{series label: (x values, y
values)}`` or a dict of those per panel), so tests check that the figure shows what the table holds;
``figure`` is None when the sweep does not have what the figure needs (a curve needs several sizes).
:func:`save` writes a figure as PNG and SVG. The report (:mod:`bench.report`) draws them all.

Series are the sweep's other axes, with the fixed colour, marker and line style of their policy,
prefetcher or format (:mod:`bench.style`) and their display names in the legend; bounds (OPT, the
oracle prefetcher) are dashed and listed last. Every figure has a title (what) and a subtitle (on
which trace, model, hardware and format), laid out with the constrained layout so no text overlaps
another (the tests check the saved figures' text boxes).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from moesim.bench import style
from moesim.bench.aggregate import BREAKDOWN, swept_columns
from moesim.bench.context import subtitle
from moesim.bench.frontier import frontier
from moesim.kernels.files import atomic_path
from moesim.sim.mrc import HitCurve

Rows = Sequence[Mapping[str, Any]]
Series = dict[str, tuple[list[float], list[float]]]
Drawn = tuple[Figure | None, Any]
# Columns that only restate the cache size (the x axis of size plots), never a series of their own.
SIZE_KEYS = ("cache.l1_experts", "cache.l1_gib")
# Swept keys whose value is already in the row under a result column that the legend names.
KEY_COLUMN = {"policy": "policy_name", "prefetch": "prefetcher", "quant": "format"}
LEGEND_PT = 8
BREAKDOWN_COLOURS = {"attention_ms": "#4c72b0", "experts_ms": "#55a868", "head_ms": "#8172b3",
                     "stall_ms": "#c44e52", "transfer_ms": "#dd8452"}
BREAKDOWN_NAMES = {"attention_ms": "attention + dense", "experts_ms": "expert GEMMs", "head_ms": "LM head",
                   "stall_ms": "stall (waiting for transfers)", "transfer_ms": "PCIe busy (overlaps compute)"}


def save(fig: Figure, out_dir: str | os.PathLike[str], stem: str) -> list[Path]:
    paths = []
    for ext in ("png", "svg"):
        path = Path(out_dir) / f"{stem}.{ext}"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=120)
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


def _distinct(rows: Rows, column: str) -> int:
    return len({r.get(column) for r in rows if r.get(column) is not None})


def figure(width: float, height: float) -> Figure:
    return plt.figure(figsize=(width, height), layout="constrained")


# ---- series --------------------------------------------------------------------------------------

@dataclass
class Line:
    label: str
    parts: tuple[tuple[str, Any], ...]
    xs: list[float]
    ys: list[float]
    look: style.SeriesStyle


def lines(rows: Rows, x: str, y: str, *, exclude: Sequence[str] = ()) -> list[Line]:
    """``rows`` grouped by the swept columns other than ``x`` and ``exclude``; each group's points
    sorted by x; rows missing x or y left out. Realisable series first, bounds last."""
    axes = [c for c in swept_columns(rows) if c != x and c not in exclude]
    groups: dict[tuple[tuple[str, Any], ...], tuple[list[float], list[float]]] = {}
    for r in rows:
        xv, yv = _num(r.get(x)), _num(r.get(y))
        if xv is None or yv is None:
            continue
        parts = tuple((KEY_COLUMN.get(a, a), r.get(KEY_COLUMN.get(a, a), r.get(a))) for a in axes)
        xs, ys = groups.setdefault(parts, ([], []))
        xs.append(xv)
        ys.append(yv)
    # A second named part varies the marker by its rank among the values it takes here.
    rest_values = sorted({repr(p[1:]) for p in groups})
    out = []
    for parts, (xs, ys) in groups.items():
        order = sorted(range(len(xs)), key=xs.__getitem__)
        rest = rest_values.index(repr(parts[1:])) if len(parts) > 1 else 0
        out.append(Line(style.series_label(parts), parts, [xs[i] for i in order], [ys[i] for i in order],
                        style.series_style(parts, rest)))
    return sorted(out, key=lambda ln: (ln.look.bound, ln.label.lower()))


def series(rows: Rows, x: str, y: str, *, exclude: Sequence[str] = ()) -> Series:
    """``{legend label: (xs, ys)}`` of :func:`lines`."""
    return {ln.label: (ln.xs, ln.ys) for ln in lines(rows, x, y, exclude=exclude)}


def _draw(ax: Any, found: Sequence[Line], *, markevery: int | None = None) -> None:
    for ln in found:
        ax.plot(ln.xs, ln.ys, label=ln.label, markevery=markevery, **ln.look.kwargs())
    ax.grid(alpha=0.3)


def _legend(fig: Figure, ax: Any, title: str | None = None) -> None:
    """One legend right of the axes (never over the data, never over another legend)."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                  fontsize=LEGEND_PT, title=title, title_fontsize=LEGEND_PT, frameon=False)


# ---- figures -------------------------------------------------------------------------------------

def hit_rate_vs_size(rows: Rows, ctx: Mapping[str, Any]) -> Drawn:
    """The GPU cache hit rate of every run (with its prefetcher, if any) against its size."""
    if _distinct(rows, "l1_experts") < 2:
        return None, {}
    found = lines(rows, "l1_experts", "hit_rate", exclude=SIZE_KEYS)
    fig = figure(8.0, 4.6)
    ax = fig.add_subplot()
    _draw(ax, found)
    ax.set(xlabel="GPU cache size (experts)", ylabel="GPU cache hit rate", ylim=(0, 1))
    _legend(fig, ax)
    style.header(fig, "GPU cache hit rate vs cache size (one point per run)", subtitle(ctx))
    return fig, {ln.label: (ln.xs, ln.ys) for ln in found}


def miss_ratio_curves(rows: Rows, ctx: Mapping[str, Any], curves: Mapping[str, HitCurve] | None = None,
                      measured: Mapping[str, tuple[list[float], list[float]]] | None = None) -> Drawn:
    """Each swept policy's hit rate at every cache size (one pass for LRU, a fine grid for the
    others), OPT dashed as the bound; the sweep's own runs without a prefetcher as black-edged
    markers on their curve."""
    if not curves:
        return None, {}
    fig = figure(8.0, 4.8)
    ax = fig.add_subplot()
    data: Series = {}
    names = sorted(curves, key=lambda p: (style.is_bound("policy", p), style.display("policy", p).lower()))
    for name in names:
        c = curves[name]
        look = style.style("policy", name)
        label = style.display("policy", name)
        xs, ys = [float(s) for s in c.sizes], [float(v) for v in c.hit_ratio]
        ax.plot(xs, ys, label=label, markevery=max(1, len(xs) // 12), **look.kwargs())
        data[label] = (xs, ys)
    for name, (xs, ys) in sorted((measured or {}).items()):
        look = style.style("policy", name)
        ax.plot(xs, ys, linestyle="none", marker=look.marker, color=look.color, markeredgecolor="black",
                markersize=7, zorder=5)
    if measured:
        ax.plot([], [], linestyle="none", marker="o", color="white", markeredgecolor="black",
                label="runs of this sweep (no prefetch)")
    ax.set(xlabel="GPU cache size (experts)", ylabel="hit rate (1 − miss ratio)", ylim=(0, 1))
    ax.grid(alpha=0.3)
    _legend(fig, ax)
    style.header(fig, "Hit rate at every GPU cache size, OPT as the bound",
                 subtitle(ctx))
    return fig, data


def latency_vs_budget(rows: Rows, ctx: Mapping[str, Any]) -> Drawn:
    """Tokens/s and p99 latency against the GPU memory given to experts (GiB)."""
    if _distinct(rows, "l1_gib") < 2:
        return None, {}
    tps = lines(rows, "l1_gib", "tokens_per_s", exclude=SIZE_KEYS)
    p99 = lines(rows, "l1_gib", "latency_p99_ms", exclude=SIZE_KEYS)
    fig = figure(12.0, 4.6)
    a, b = fig.subplots(1, 2)
    _draw(a, tps)
    a.set(xlabel="GPU memory for experts (GiB)", ylabel="tokens/s", title="Throughput (higher is better)")
    _draw(b, p99)
    b.set(xlabel="GPU memory for experts (GiB)", ylabel="p99 latency per token (ms)",
          title="p99 latency (lower is better)")
    _legend(fig, b)
    style.header(fig, "Throughput and tail latency vs GPU memory budget", subtitle(ctx))
    return fig, {"tokens_per_s": {ln.label: (ln.xs, ln.ys) for ln in tps},
                 "latency_p99_ms": {ln.label: (ln.xs, ln.ys) for ln in p99}}


def config_label(row: Mapping[str, Any], axes: Sequence[str]) -> str:
    """A run's name from its swept values: ``ARC · GPU cache (experts) 64``."""
    parts = [(KEY_COLUMN.get(a, a), row.get(KEY_COLUMN.get(a, a), row.get(a))) for a in axes]
    return style.series_label(parts)


def latency_breakdown(rows: Rows, ctx: Mapping[str, Any]) -> Drawn:
    """Per run, the mean time per token split into attention, expert GEMMs, LM head and stall
    (stacked: they add up to the mean latency), and the PCIe busy time beside it (it overlaps)."""
    have = [r for r in rows if all(_num(r.get(c)) is not None for c in BREAKDOWN)]
    if not have:
        return None, {}
    axes = swept_columns(have)
    have = sorted(have, key=lambda r: tuple(str(r.get(KEY_COLUMN.get(a, a), r.get(a))).zfill(12) for a in axes))
    labels = [config_label(r, axes) for r in have]
    n = len(have)
    fig = figure(10.0, 1.6 + 0.3 * n)
    ax = fig.add_subplot()
    ys = list(range(n))
    left = [0.0] * n
    data: dict[str, tuple[list[str], list[float]]] = {}
    for col in BREAKDOWN:
        vals = [float(r[col]) for r in have]
        ax.barh([y - 0.17 for y in ys], vals, height=0.34, left=left, color=BREAKDOWN_COLOURS[col],
                label=BREAKDOWN_NAMES[col])
        left = [a + b for a, b in zip(left, vals, strict=True)]
        data[col] = (labels, vals)
    transfer = [_num(r.get("transfer_ms")) or 0.0 for r in have]
    ax.barh([y + 0.18 for y in ys], transfer, height=0.3, color=BREAKDOWN_COLOURS["transfer_ms"], hatch="//",
            edgecolor="white", label=BREAKDOWN_NAMES["transfer_ms"])
    data["transfer_ms"] = (labels, transfer)
    ax.set_yticks(ys, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel="ms per token (per decode step)")
    ax.grid(axis="x", alpha=0.3)
    _legend(fig, ax)
    style.header(fig, "Where the time per token goes, per run", subtitle(ctx))
    return fig, data


def prefetch_quality(rows: Rows, ctx: Mapping[str, Any]) -> Drawn:
    """Per prefetcher against the cache size: the GPU cache hit rate it reaches (with prefetch),
    its accuracy (useful / issued) and coverage (useful / (useful + demand misses left))."""
    if not any(_num(r.get("prefetch_accuracy")) is not None for r in rows) or _distinct(rows, "l1_experts") < 1:
        return None, {}
    x = "l1_experts"
    hit = lines(rows, x, "l1_hit_rate", exclude=SIZE_KEYS)
    acc = lines(rows, x, "prefetch_accuracy", exclude=SIZE_KEYS)
    cov = lines(rows, x, "prefetch_coverage", exclude=SIZE_KEYS)
    fig = figure(14.0, 4.6)
    a, b, c = fig.subplots(1, 3)
    _draw(a, hit)
    a.set(xlabel="GPU cache size (experts)", ylabel="GPU cache hit rate", title="Hit rate with prefetch")
    _draw(b, acc)
    b.set(xlabel="GPU cache size (experts)", ylabel="useful / issued", title="Accuracy", ylim=(0, 1.02))
    _draw(c, cov)
    c.set(xlabel="GPU cache size (experts)", ylabel="useful / (useful + misses left)", title="Coverage",
          ylim=(0, 1.02))
    _legend(fig, c)
    style.header(fig, "Prefetchers: hit rate reached, accuracy and coverage", subtitle(ctx, drop=("prefetcher",)))
    return fig, {"l1_hit_rate": {ln.label: (ln.xs, ln.ys) for ln in hit},
                 "accuracy": {ln.label: (ln.xs, ln.ys) for ln in acc},
                 "coverage": {ln.label: (ln.xs, ln.ys) for ln in cov}}


def quant_error_vs_bits(rows: Rows, ctx: Mapping[str, Any]) -> Drawn:
    """Each format's relative error against its bits per weight (one point per format)."""
    points: dict[str, tuple[float, float]] = {}
    for r in rows:
        b, e = _num(r.get("bits_per_weight")), _num(r.get("quant_rel_frobenius"))
        if b is not None and e is not None and r.get("format"):
            points[str(r["format"])] = (b, e)
    if len(points) < 2:
        return None, {}
    fig = figure(8.0, 4.6)
    ax = fig.add_subplot()
    data: Series = {}
    for name, (b, e) in sorted(points.items(), key=lambda kv: kv[1]):
        look = style.style("format", name)
        label = style.display("format", name)
        ax.plot([b], [e], linestyle="none", marker=look.marker, color=look.color, markersize=8, label=label)
        data[label] = ([b], [e])
    ax.set(xlabel="bits per weight (with scales)", ylabel="relative Frobenius error", yscale="log")
    ax.grid(alpha=0.3, which="both")
    _legend(fig, ax)
    style.header(fig, "Quantization error vs bits per weight", subtitle(ctx, drop=("format", "policy", "prefetcher")))
    return fig, data


CHOICE = (("format", "format"), ("policy", "policy"), ("prefetcher", "prefetcher"))


def choice_label(row: Mapping[str, Any], among: Sequence[Mapping[str, Any]] = ()) -> str:
    """The run's format, policy and prefetcher; with ``among``, only those that vary there."""
    keep = [(d, c) for d, c in CHOICE if not among or len({str(r.get(c)) for r in among}) > 1] or list(CHOICE[1:2])
    return " · ".join(style.display(d, row.get(c)) for d, c in keep if row.get(c))


def budget_frontier(rows: Rows, ctx: Mapping[str, Any]) -> Drawn:
    """The Pareto frontier over (GPU budget, tokens/s, quant error) among deployable runs, every
    other run in grey, and the best bound per budget (OPT, oracle prefetcher) dashed."""
    table = frontier(rows)
    front = [w for w in table if not w["bound"]]
    bounds = [w for w in table if w["bound"]]
    if len({w["budget_gib"] for w in table}) < 2:
        return None, {}
    fig = figure(9.0, 4.8)
    ax = fig.add_subplot()
    others = [(float(r["l1_gib"]), float(r["tokens_per_s"])) for r in rows
              if _num(r.get("l1_gib")) is not None and _num(r.get("tokens_per_s")) is not None]
    if others:
        ax.scatter(*zip(*others, strict=True), s=14, color="0.8", label="other runs", zorder=1)
    fx = [float(w["budget_gib"]) for w in front]
    fy = [float(w["tokens_per_s"]) for w in front]
    ax.plot(fx, fy, color="0.35", linewidth=1.2, zorder=2)
    seen: set[str] = set()
    for w, xv, yv in zip(front, fx, fy, strict=True):
        look = style.style("policy", w["policy"])
        label = choice_label(w, table)
        ax.plot([xv], [yv], linestyle="none", marker=look.marker, color=look.color, markersize=8, zorder=3,
                label=None if label in seen else label)
        seen.add(label)
    bx = [float(w["budget_gib"]) for w in bounds]
    by = [float(w["tokens_per_s"]) for w in bounds]
    if bounds:
        look = style.style("policy", "opt")
        ax.plot(bx, by, label="bound: " + ", ".join(sorted({choice_label(w, table) for w in bounds})), color=look.color,
                linestyle=style.BOUND_LINESTYLE, marker="x", zorder=2)
    ax.set(xlabel="GPU memory for experts (GiB)", ylabel="tokens/s")
    ax.grid(alpha=0.3)
    _legend(fig, ax, title="frontier (deployable)")
    style.header(fig, "Budget frontier: the deployable runs nothing beats on memory, speed and error",
                 subtitle(ctx))
    return fig, {"frontier": (fx, fy), "bound": (bx, by)}


FIGURES: tuple[Callable[..., Drawn], ...] = (miss_ratio_curves, hit_rate_vs_size, latency_vs_budget,
                                             latency_breakdown, prefetch_quality, quant_error_vs_bits,
                                             budget_frontier)
