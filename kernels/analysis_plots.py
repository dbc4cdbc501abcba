"""PNG figures of a checkpoint weight analysis (matplotlib, Agg backend: files only).

Each function reads the tables returned by :func:`kernels.analysis.analyze_checkpoint` (lists of row
dicts), writes one figure atomically and returns its path. Infinite SQNR (a format that reproduces a
matrix exactly) cannot be drawn: those points are left out and counted in the title.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: files only, never a window

import matplotlib.pyplot as plt
import numpy as np
from moesim.kernels.files import save_png

PLOT_NAMES = ("error_by_format.png", "error_by_layer.png", "sqnr_vs_bits.png")
Rows = Sequence[dict[str, Any]]


def _formats(errors: Rows) -> list[str]:
    return list(dict.fromkeys(e["format"] for e in errors))


def error_by_format(errors: Rows, path: str | os.PathLike[str], *, metric: str = "sqnr_db") -> Path:
    """Box plot per format (and projection) of ``metric`` across every expert matrix."""
    fmts = _formats(errors)
    projs = sorted({e["proj"] for e in errors})
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(fmts) * len(projs)), 4.0))
    data, labels, dropped = [], [], 0
    for f in fmts:
        for p in projs:
            v = np.asarray([e[metric] for e in errors if e["format"] == f and e["proj"] == p], dtype=np.float64)
            dropped += int(np.sum(~np.isfinite(v)))
            v = v[np.isfinite(v)]
            if v.size:
                data.append(v)
                labels.append(f"{f}\n{p}" if len(projs) > 1 else f)
    if data:
        ax.boxplot(data, showfliers=True)
        ax.set_xticks(range(1, len(labels) + 1), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} across expert matrices" + (f" ({dropped} non-finite left out)" if dropped else ""))
    ax.grid(axis="y", alpha=0.3)
    return save_png(fig, path)


def error_by_layer(errors: Rows, path: str | os.PathLike[str], *, metric: str = "sqnr_db") -> Path:
    """Mean ``metric`` per layer (finite values), one line per format, min-max band across experts."""
    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    dropped = 0
    for f in _formats(errors):
        layers = sorted({e["layer"] for e in errors if e["format"] == f})
        mean, lo, hi, xs = [], [], [], []
        for layer in layers:
            v = np.asarray([e[metric] for e in errors if e["format"] == f and e["layer"] == layer], dtype=np.float64)
            dropped += int(np.sum(~np.isfinite(v)))
            v = v[np.isfinite(v)]
            if v.size:
                xs.append(layer)
                mean.append(v.mean())
                lo.append(v.min())
                hi.append(v.max())
        if xs:
            (line,) = ax.plot(xs, mean, marker="o", label=f)
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15)
    ax.set_xlabel("layer")
    ax.set_ylabel(f"{metric} (mean; band: min-max over experts)")
    ax.set_title(f"{metric} by layer" + (f" ({dropped} non-finite left out)" if dropped else ""))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return save_png(fig, path)


def _frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Pareto frontier: fewest bits for the most SQNR (no other point has fewer bits and more SQNR)."""
    out: list[tuple[float, float]] = []
    best = -math.inf
    for bits, sq in sorted(points, key=lambda p: (p[0], -p[1])):
        if sq > best:
            out.append((bits, sq))
            best = sq
    return out


def sqnr_vs_bits(summary: Rows, path: str | os.PathLike[str]) -> Path:
    """Pooled SQNR over all matrices against bits per weight, one point per format, with the frontier."""
    rows = [r for r in summary if r["layer"] == -1 and r["proj"] == "all"]
    pts = [(float(r["bits_per_weight"]), float(r["sqnr_db_pooled"]), r["format"]) for r in rows]
    finite = [(b, s, f) for b, s, f in pts if math.isfinite(s)]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    if finite:
        ax.scatter([p[0] for p in finite], [p[1] for p in finite], zorder=3)
        for b, s, f in finite:
            ax.annotate(f, (b, s), textcoords="offset points", xytext=(4, 4), fontsize=8)
        front = _frontier([(b, s) for b, s, _ in finite])
        ax.plot([p[0] for p in front], [p[1] for p in front], linestyle="--", color="gray", label="frontier")
        ax.legend(fontsize=8)
    lost = [f for _, s, f in pts if not math.isfinite(s)]
    ax.set_xlabel("bits per weight (scales included)")
    ax.set_ylabel("SQNR, pooled over expert matrices (dB)")
    ax.set_title("SQNR vs bits per weight" + (f" (exact, not drawn: {', '.join(lost)})" if lost else ""))
    ax.grid(alpha=0.3)
    return save_png(fig, path)


def plot_all(tables: dict[str, Rows], out_dir: str | os.PathLike[str]) -> list[Path]:
    """The three figures of :data:`PLOT_NAMES` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    errors = tables["quant_error"]
    return [error_by_format(errors, out / PLOT_NAMES[0]), error_by_layer(errors, out / PLOT_NAMES[1]),
            sqnr_vs_bits(tables["summary"], out / PLOT_NAMES[2])]
