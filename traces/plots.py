"""PNG figures of trace statistics (matplotlib, Agg backend: no display needed).

Each function draws from a :class:`~traces.stats.TraceStats` (nothing is recomputed), writes the
figure atomically to ``path`` and returns the path.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: files only, never a window

import matplotlib.pyplot as plt
import numpy as np
from moesim.kernels.files import save_png
from moesim.traces.stats import TraceStats, compute_stats
from moesim.traces.trace import Trace

PLOT_NAMES = ("popularity.png", "reuse_distance_cdf.png", "layer_affinity.png")


def popularity_heatmap(stats: TraceStats, path: str | os.PathLike[str]) -> Path:
    """Layer x expert rank: each layer's share of accesses per expert, experts sorted by popularity."""
    pop = np.asarray(stats.popularity, np.float64)
    total = pop.sum(axis=1, keepdims=True)
    share = np.sort(np.divide(pop, total, out=np.zeros_like(pop), where=total > 0), axis=1)[:, ::-1]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.08 * stats.num_experts + 3), max(3.0, 0.18 * stats.num_layers + 1.5)))
    im = ax.imshow(share, aspect="auto", interpolation="nearest", cmap="viridis", origin="lower")
    ax.set_xlabel("expert rank within layer (0 = most requested)")
    ax.set_ylabel("MoE layer")
    ax.set_title(f"{stats.model}: expert popularity")
    fig.colorbar(im, ax=ax, label="share of the layer's accesses")
    return save_png(fig, path)


def reuse_distance_cdf(stats: TraceStats, path: str | os.PathLike[str]) -> Path:
    """CDF of the LRU stack distance over all accesses (first accesses never reach 1), log x-axis.

    Thin lines: one per layer; thick line: all layers pooled.
    """
    rd = stats.reuse_distance
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    x = np.arange(1, rd.hist.shape[1] + 1)  # distance + 1, so distance 0 fits a log axis
    cmap = plt.get_cmap("viridis")
    for layer in range(stats.num_layers):
        total = rd.hist[layer].sum() + rd.first[layer]
        if total:
            ax.step(x, np.cumsum(rd.hist[layer]) / total, where="post", lw=0.7, alpha=0.6,
                    color=cmap(layer / max(stats.num_layers - 1, 1)))
    pooled = rd.hist.sum(axis=0)
    total = pooled.sum() + rd.first.sum()
    if total:
        ax.step(x, np.cumsum(pooled) / total, where="post", lw=2.5, color="black", label="all layers")
        ax.legend(loc="lower right")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("LRU stack distance + 1 (distinct expert keys, layer clock)")
    ax.set_ylabel("fraction of accesses with distance <= x - 1")
    ax.set_title(f"{stats.model}: reuse distance (thin: one line per layer)")
    ax.grid(True, which="both", alpha=0.3)
    return save_png(fig, path)


def affinity_matrix(stats: TraceStats, layer: int | None = None) -> np.ndarray:
    """Row-normalised transitions ``P(j at l + 1 | i at l)`` for ``layer`` or the mean over pairs."""
    tr = np.asarray(stats.transitions, np.float64)
    if tr.shape[0] == 0:
        raise ValueError(f"{stats.model}: a single-layer trace has no layer pairs")
    if layer is not None and not 0 <= layer < tr.shape[0]:
        raise ValueError(f"layer pair {layer} outside [0, {tr.shape[0]})")
    rows = tr.sum(axis=2, keepdims=True)
    cond = np.divide(tr, rows, out=np.zeros_like(tr), where=rows > 0)
    return cond[layer] if layer is not None else cond.mean(axis=0)


def affinity_heatmap(stats: TraceStats, path: str | os.PathLike[str], layer: int | None = None) -> Path:
    """Heatmap of :func:`affinity_matrix` (the layer pair ``layer -> layer + 1``, or the mean)."""
    mat = affinity_matrix(stats, layer)
    fig, ax = plt.subplots(figsize=(5.8, 5.0))
    im = ax.imshow(mat, aspect="auto", interpolation="nearest", cmap="magma", origin="lower")
    which = f"layer {layer} -> {layer + 1}" if layer is not None else "mean over layer pairs"
    ax.set_xlabel("expert at the next layer (l + 1)")
    ax.set_ylabel("expert at layer l")
    ax.set_title(f"{stats.model}: inter-layer affinity ({which})")
    fig.colorbar(im, ax=ax, label="P(expert at l + 1 | expert at l)")
    return save_png(fig, path)


def plot_all(trace: Trace, out_dir: str | os.PathLike[str], stats: TraceStats | None = None) -> list[Path]:
    """All figures into ``out_dir`` (statistics computed once unless given); the affinity plot is
    skipped for a single-layer trace."""
    s = stats if stats is not None else compute_stats(trace)
    out = Path(out_dir)
    paths = [popularity_heatmap(s, out / PLOT_NAMES[0]), reuse_distance_cdf(s, out / PLOT_NAMES[1])]
    if s.num_layers > 1:
        paths.append(affinity_heatmap(s, out / PLOT_NAMES[2]))
    return paths
