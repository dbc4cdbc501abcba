"""The fidelity grid's outputs: the CSV, the markdown table with its error summary, the scatter plot
of predicted against measured tokens/s, and the hardware profile the predictions used."""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import platform
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from moesim.kernels.files import atomic_path, atomic_write_text
from moesim.sim.profiles import HardwareProfile


def errors(rows: Sequence[Mapping[str, Any]], measured: str = "measured_tokens_per_s",
           predicted: str = "predicted_tokens_per_s") -> dict[str, float]:
    """Median and largest ``|predicted / measured - 1|`` over the rows, and the median signed ratio."""
    rel = [abs(r[predicted] / r[measured] - 1.0) for r in rows]
    ratio = [r[predicted] / r[measured] for r in rows]
    return {"median_abs_error": statistics.median(rel), "max_abs_error": max(rel),
            "median_ratio": statistics.median(ratio)}


def spread(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """How much the measured rounds of one cell differ (median and largest ``max / min - 1``), and how
    many predictions lie within the range of their cell's rounds."""
    sp = [r["measured_tokens_per_s_max"] / r["measured_tokens_per_s_min"] - 1.0 for r in rows]
    inside = sum(r["measured_tokens_per_s_min"] <= r["predicted_tokens_per_s"] <= r["measured_tokens_per_s_max"]
                 for r in rows)
    return {"median_spread": statistics.median(sp), "max_spread": max(sp), "within_range": inside}


def to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def markdown(rows: Sequence[Mapping[str, Any]], hw: HardwareProfile) -> str:
    tok = errors(rows)
    p99 = errors(rows, "measured_p99_ms", "predicted_p99_ms")
    lines = [
        "| policy | L1 | prefetcher | format | hit rate | measured tok/s | predicted tok/s | ratio "
        "| measured p99 ms | predicted p99 ms |",
        "|" + " --- |" * 10,
    ]
    for r in rows:
        lines.append(f"| {r['policy']} | {r['l1_experts']} | {r['prefetcher']} | {r['weight_format']} "
                     f"| {r['l1_hit_rate']:.2f} | {r['measured_tokens_per_s']:.2f} | {r['predicted_tokens_per_s']:.2f} "
                     f"| {r['ratio']:.2f} | {r['measured_p99_ms']:.1f} | {r['predicted_p99_ms']:.1f} |")
    loads = (min(r["load_avg_min"] for r in rows), max(r["load_avg_max"] for r in rows))
    sp = spread(rows)
    lines += [
        "",
        f"tokens/s: median |predicted/measured - 1| = {tok['median_abs_error']:.1%}, "
        f"max = {tok['max_abs_error']:.1%} over {len(rows)} cells (median ratio {tok['median_ratio']:.2f}); "
        f"p99: median {p99['median_abs_error']:.1%}, max {p99['max_abs_error']:.1%}.",
        f"Noise: the {rows[0]['rounds']} measured rounds of a cell differ by a median of {sp['median_spread']:.0%} "
        f"(max {sp['max_spread']:.0%}, max/min - 1); the prediction lies within its cell's measured range in "
        f"{sp['within_range']} of {len(rows)} cells.",
        f"Machine: {hw.description}; {os.cpu_count()} CPUs; load average {loads[0]:.1f}-{loads[1]:.1f} "
        f"during the runs; disk read with {rows[0]['read_mode']}.",
    ]
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[Mapping[str, Any]], hw: HardwareProfile, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    markers = {"none": "o", "affinity": "s", "oracle": "^"}
    colours = {"bf16": "tab:blue", "mxfp4": "tab:orange"}
    seen = set()
    for r in rows:
        key = (r["prefetcher"], r["weight_format"])
        m = r["measured_tokens_per_s"]
        ax.errorbar(m, r["predicted_tokens_per_s"], xerr=[[m - r["measured_tokens_per_s_min"]],
                                                          [r["measured_tokens_per_s_max"] - m]],
                    color=colours.get(r["weight_format"], "tab:gray"), alpha=0.3, lw=0.8)
        ax.scatter(r["measured_tokens_per_s"], r["predicted_tokens_per_s"], marker=markers.get(r["prefetcher"], "x"),
                   color=colours.get(r["weight_format"], "tab:gray"), label=None if key in seen else
                   f"{r['prefetcher']}, {r['weight_format']}")
        seen.add(key)
    vals = [v for r in rows for v in (r["measured_tokens_per_s_min"], r["measured_tokens_per_s_max"],
                                      r["predicted_tokens_per_s"])]
    lo, hi = min(vals) * 0.9, max(vals) * 1.1
    ax.plot([lo, hi], [lo, hi], color="black", lw=1, label="y = x")
    ax.plot([lo, hi], [lo * 1.1, hi * 1.1], color="gray", lw=0.7, ls="--", label="±10%")
    ax.plot([lo, hi], [lo * 0.9, hi * 0.9], color="gray", lw=0.7, ls="--")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("measured tokens/s (executor, wall clock; median of the rounds, bar: their range)")
    ax.set_ylabel("predicted tokens/s (timing model, measured profile)")
    e = errors(rows)
    fig.suptitle("Timing model vs real offloading run: tokens/s per cell", fontsize=11)
    ax.set_title(f"{rows[0]['model']}, {len(rows)} cells (policy x L1 x prefetcher x format), L2 "
                 f"{rows[0]['l2_experts']} experts over disk; {platform.machine()} {os.cpu_count()} CPUs, "
                 f"load {min(r['load_avg_min'] for r in rows):.1f}-{max(r['load_avg_max'] for r in rows):.1f}\n"
                 f"median |error| {e['median_abs_error']:.1%}, max {e['max_abs_error']:.1%}", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    paths = []
    for ext in ("png", "svg"):
        path = out / f"fidelity.{ext}"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=120, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def write_report(rows: Sequence[Mapping[str, Any]], hw: HardwareProfile, settings: Any, out: Path) -> list[Path]:
    """Write ``fidelity.csv``, ``fidelity.md``, the plot and ``hardware.yaml`` into ``out``."""
    from moesim.sim.measure import to_yaml

    out.mkdir(parents=True, exist_ok=True)
    if not rows:
        raise ValueError("no cells to report")
    bad = [r for r in rows if not all(math.isfinite(r[k]) for k in ("measured_tokens_per_s", "predicted_tokens_per_s"))]
    if bad:
        raise ValueError(f"cell {bad[0]['policy']}/{bad[0]['l1_experts']} has no finite tokens/s")
    csv_path, md_path, hw_path = out / "fidelity.csv", out / "fidelity.md", out / "hardware.yaml"
    atomic_write_text(csv_path, to_csv(rows))
    head = (f"Settings: {dataclasses.asdict(settings) if dataclasses.is_dataclass(settings) else settings}; "
            f"hardware profile: {hw_path.name}\n\n")
    atomic_write_text(md_path, head + markdown(rows, hw))
    atomic_write_text(hw_path, to_yaml(hw.to_dict()))
    return [csv_path, md_path, *plot(rows, hw, out), hw_path]


__all__ = ["errors", "markdown", "plot", "spread", "to_csv", "write_report"]
