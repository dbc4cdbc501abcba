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
from moesim.traces.io import atomic_path


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


def plot_history(root: str | Path, out: str | Path) -> Path | None:
    runs = load_runs(root)
    if not runs:
        return None
    hist = history(runs)
    fig, axes = plt.subplots(len(hist), 1, figsize=(8, 2.8 * len(hist)), squeeze=False)
    for ax, (group, benches) in zip(axes[:, 0], sorted(hist.items()), strict=True):
        for name, points in sorted(benches.items()):
            base = points[0][1]
            ax.plot([i for i, _ in points], [t / base for _, t in points], marker="o", label=name)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set(title=group, ylabel="min time / first run")
        ax.legend(fontsize=6)
    axes[-1, 0].set_xlabel("saved run")
    path = Path(out)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=110, bbox_inches="tight")
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
