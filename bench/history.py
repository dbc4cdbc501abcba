"""Plot benchmark history from pytest-benchmark's saved runs (``make bench`` autosaves them in
``.benchmarks/<machine>/NNNN_*.json``; ``make bench-plot`` draws this).

One panel per benchmark group: each benchmark's minimum time (the least noisy statistic on a shared
machine) over the saved runs, normalised to its first run, so a regression shows as a line rising
above 1 whatever the benchmark's absolute scale.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from moesim.bench.style import header
from moesim.kernels.files import atomic_path


def load_runs(root: str | Path) -> list[dict[str, Any]]:
    """Every saved run under ``root``, oldest first (pytest-benchmark numbers them)."""
    runs = []
    for path in sorted(Path(root).rglob("*.json"), key=lambda p: (p.parent.name, p.name)):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if "benchmarks" in data:
            data["_file"] = str(path)
            runs.append(data)
    return runs


def history(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """``{group: {benchmark: [(run index, min seconds), ...]}}``."""
    out: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for i, run in enumerate(runs):
        for b in run["benchmarks"]:
            out[b.get("group") or "ungrouped"][b["name"]].append((i, float(b["stats"]["min"])))
    return out


def _machine(runs: Sequence[dict[str, Any]]) -> str:
    info = runs[-1].get("machine_info") or {}
    cpu = (info.get("cpu") or {}).get("brand_raw") or info.get("processor") or "unknown CPU"
    return f"{info.get('node', 'unknown machine')} · {cpu} · python {info.get('python_version', '?')}"


def draw_history(runs: Sequence[dict[str, Any]]) -> Any:
    """The figure: one panel per group, runs on the x axis (one tick per saved run, so a single run
    is a single column of points, not a stretched axis), the legend beside each panel."""
    hist = history(runs)
    n_runs = len(runs)
    heights = [max(2.6, 0.17 * len(benches) + 1.0) for benches in hist.values()]
    fig = plt.figure(figsize=(11, sum(heights) + 0.9), layout="constrained")
    axes = fig.subplots(len(hist), 1, squeeze=False, gridspec_kw={"height_ratios": heights})
    labels = [Path(r["_file"]).stem.split("_")[0] for r in runs]
    step = max(1, n_runs // 12)  # at most ~12 tick labels, so they never run into each other
    for ax, (group, benches) in zip(axes[:, 0], sorted(hist.items()), strict=True):
        for name, points in sorted(benches.items()):
            base = points[0][1]
            ax.plot([i for i, _ in points], [t / base for _, t in points], marker="o", markersize=4, label=name)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set(title=group, ylabel="min time / first run", xlim=(-0.5, n_runs - 0.5))
        ax.set_xticks(range(0, n_runs, step), labels[::step], fontsize=8)
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    axes[-1, 0].set_xlabel("saved run (pytest-benchmark's number)")
    header(fig, "Benchmark history: each benchmark's fastest round, relative to its first saved run",
           f"{n_runs} saved run{'s' if n_runs != 1 else ''} · {_machine(runs)}")
    return fig


def plot_history(root: str | Path, out: str | Path) -> Path | None:
    runs = load_runs(root)
    if not runs:
        return None
    fig = draw_history(runs)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=110)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", nargs="?", default=".benchmarks")
    ap.add_argument("--out", default="outputs/bench_history.png")
    args = ap.parse_args(argv)
    path = plot_history(args.root, args.out)
    if path is None:
        print(f"no saved benchmark runs under {args.root} (run `make bench` first)", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
