"""``moesim-report DIR``: aggregate a sweep folder into a table, figures, ``report.md`` and ``report.html``.

Writes into ``DIR/report/``: ``results.csv`` (+ ``results.parquet``), the figures of
:mod:`bench.plots` (PNG and SVG), ``mrc.csv`` (the hit-rate curves), ``frontier.csv`` (the Pareto
frontier, bound rows marked), ``report.md`` (embeds the PNGs) and ``report.html`` (self-contained:
the SVGs inline, the tables, the sweep's context). Called by the Hydra callback at the end of every
multirun; safe to run again at any time.
Exit status: 0 written, 1 the report could not be written, 2 bad usage (no such folder).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from moesim.bench import html, plots, style
from moesim.bench.aggregate import collect, swept_columns, write_table
from moesim.bench.context import sweep_context
from moesim.bench.frontier import FRONTIER_COLUMNS, frontier, is_bound
from moesim.bench.mrc import CURVE_COLUMNS, curve_rows, measured_points, sweep_curves
from moesim.kernels import tables
from moesim.kernels.files import atomic_write_text
from moesim.kernels.messages import internal_error, one_line

log = logging.getLogger("moesim")

# Result columns of the "fastest" table; the swept axes come first. Columns equal in every row
# are dropped (they are in the context line), and so are those that restate a swept axis.
FASTEST = ("l1_experts", "l1_gib", "hit_rate", "tokens_per_s", "latency_p50_ms", "latency_p99_ms", "stall_fraction",
           "quant_rel_frobenius")
RESTATES = {"cache.l1_experts": "l1_experts", "cache.l1_gib": "budget_gib", "policy": "policy_name",
            "prefetch": "prefetcher", "quant": "format"}
HEADERS = {"l1_experts": "GPU cache (experts)", "l1_gib": "GPU memory (GiB)", "budget_gib": "GPU budget (GiB)",
           "hit_rate": "hit rate", "tokens_per_s": "tokens/s", "latency_p50_ms": "p50 (ms)",
           "latency_p99_ms": "p99 (ms)", "stall_fraction": "stall share", "quant_rel_frobenius": "quant error (rel. Frobenius)",
           "bound": "bound", "job": "job", "status": "status", "error": "error", "policy": "policy",
           "prefetcher": "prefetcher", "format": "format"}
TITLES = {"miss_ratio_curves": "Hit-rate curves (1 - miss ratio)", "hit_rate_vs_size": "Hit rate of each run",
          "latency_vs_budget": "Throughput and p99 latency vs GPU budget",
          "latency_breakdown": "Latency breakdown per token", "prefetch_quality": "Prefetchers",
          "quant_error_vs_bits": "Quantization error vs bits per weight", "budget_frontier": "Budget frontier"}
CAPTIONS = {
    "miss_ratio_curves": "Hit rate of each swept policy at every GPU cache size (LRU in one pass, the others on a "
                         "fine grid of sizes); OPT, the offline optimum, is the dashed bound no policy can pass. "
                         "Black-edged markers are this sweep's own runs without a prefetcher: they lie on "
                         "their curves. The numbers are in `mrc.csv`.",
    "hit_rate_vs_size": "The GPU cache hit rate of every run (with its prefetcher, when it has one).",
    "latency_vs_budget": "Tokens/s and p99 latency per token against the GPU memory the experts get.",
    "latency_breakdown": "Mean time per token split into attention + dense layers, expert GEMMs, the LM head and "
                         "the stall waiting for expert transfers (the stacked bars add up to the mean latency); "
                         "the hatched bar is the PCIe link's busy time, which overlaps the compute. The "
                         "numbers are the `*_ms` columns of `results.csv`.",
    "prefetch_quality": "Per prefetcher: the GPU cache hit rate it reaches, its accuracy (useful prefetches / "
                        "prefetches issued) and its coverage (useful prefetches / (useful prefetches + demand "
                        "misses left)), which lies in [0, 1].",
    "quant_error_vs_bits": "Each format's relative error against its size in bits per weight (scales included).",
    "budget_frontier": "The Pareto frontier over (GPU budget, tokens/s, quant error) among deployable runs; the "
                       "dashed line is the bound (OPT and the oracle prefetcher read the future, so they are "
                       "never winners). The rows are in `frontier.csv` (`bound` marks the bound rows).",
}


def _table_columns(rows: Sequence[Mapping[str, Any]], axes: Sequence[str]) -> list[str]:
    restated = {RESTATES[a] for a in axes if a in RESTATES}
    cols = [*axes, *(c for c in FASTEST if c not in restated)]
    constant = set(tables.constant_columns(rows, cols)) - set(axes)
    return [c for c in cols if c not in constant]


def _headers(axes: Sequence[str]) -> dict[str, str]:
    return {**HEADERS, **{a: style.axis_name(a) for a in axes}}


def _named(rows: Sequence[Mapping[str, Any]], axes: Sequence[str]) -> list[dict[str, Any]]:
    """Rows with policy, prefetcher and format values shown by their display names."""
    out = []
    for r in rows:
        d = dict(r)
        for key in (*axes, "policy", "prefetcher", "format"):
            domain = style.COLUMN_DOMAIN.get(key)
            if domain and d.get(key) is not None:
                d[key] = style.display(domain, d[key])
        out.append(d)
    return out


def build_report(sweep_dir: str | Path, out_dir: str | Path | None = None, *, curves: bool = True) -> dict[str, Any]:
    """Aggregate ``sweep_dir``; returns the rows, the plotted data per figure, the frontier, the
    curves and the paths. ``curves``: compute the hit-rate curves (replays the sweep's trace)."""
    root = Path(sweep_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"sweep folder {root} does not exist")
    out = Path(out_dir) if out_dir is not None else root / "report"
    out.mkdir(parents=True, exist_ok=True)
    rows = collect(root)
    ok = [r for r in rows if r.get("status") == "ok"]
    failed = [r for r in rows if r.get("status") not in ("ok", "skipped")]
    written = write_table(rows, out)
    ctx = sweep_context(ok)
    axes = swept_columns(ok)

    found: dict[str, Any] = {}
    no_curve = "curves not asked for"
    if curves and ok and "policy" in axes:
        try:
            found, no_curve = sweep_curves(root, ok)
        except Exception as exc:  # a trace that cannot be reloaded must not cost the rest of the report
            found, no_curve = {}, f"the curves could not be computed ({internal_error(exc)})"
            log.warning("moesim-report: %s", no_curve)
    elif curves and ok:
        no_curve = "no policy was swept"
    if found:
        tables.write(curve_rows(found), out, "mrc", columns=CURVE_COLUMNS, parquet=False)

    plotted: dict[str, Any] = {}
    for fn in plots.FIGURES:
        extra = {"curves": found, "measured": measured_points(ok)} if fn is plots.miss_ratio_curves else {}
        fig, data = fn(ok, ctx, **extra)
        if fig is not None:
            plots.save(fig, out, fn.__name__)
            plotted[fn.__name__] = data
    win = frontier(ok)
    tables.write(win, out, "frontier", columns=FRONTIER_COLUMNS, parquet=False)

    sections = _sections(root, rows, ok, failed, axes, ctx, win, plotted, written, no_curve if not found else None)
    atomic_write_text(out / "report.md", html.markdown_page(sections))
    html.write_page(out / "report.html", sections, out)
    return {"rows": rows, "plotted": plotted, "frontier": win, "curves": found, "context": ctx, "out_dir": out,
            "report": out / "report.md", "html": out / "report.html", "sections": sections}


def _sections(root: Path, rows: Sequence[Mapping[str, Any]], ok: Sequence[Mapping[str, Any]],
              failed: Sequence[Mapping[str, Any]], axes: Sequence[str], ctx: Mapping[str, Any],
              win: Sequence[Mapping[str, Any]], plotted: Mapping[str, Any], written: Sequence[Path],
              no_curve: str | None) -> list[html.Section]:
    head = [f"{len(rows)} jobs: {len(ok)} ok, {len(failed)} failed. Swept: "
            f"{', '.join(style.axis_name(a) for a in axes) or 'nothing'}.",
            "Tables: " + ", ".join(f"`{p.name}`" for p in written) + ", `frontier.csv`"
            + (", `mrc.csv`" if "miss_ratio_curves" in plotted else "") + "."]
    context_rows = [{"what": k, "value": v} for k, v in ctx.items() if k not in ("swept", "jobs")]
    sections = [html.Section("context", f"Sweep report: {root.name}", head,
                             table=html.Table("context", context_rows, ["what", "value"], {}))]
    headers = _headers(axes)
    if ok:
        real = [r for r in ok if not is_bound(r)] or list(ok)
        best = sorted(real, key=lambda r: -(r.get("tokens_per_s") or 0.0))[:10]
        cols = _table_columns(ok, axes)
        sections.append(html.Section("fastest", "Fastest deployable configurations",
                                     ["The ten runs with the most tokens/s, bounds (OPT, oracle prefetcher) left "
                                      "out; columns equal in every run are in the context above."],
                                     table=html.Table("fastest", _named(best, axes), cols, headers)))
    if win:
        cols = [c for c in FRONTIER_COLUMNS if c not in ("job",)]
        cols = [c for c in cols if c == "bound" or c not in tables.constant_columns(win, cols)
                or c in ("budget_gib", "tokens_per_s")]
        sections.append(html.Section("frontier", "Budget frontier",
                                     [CAPTIONS["budget_frontier"] if "budget_frontier" in plotted else
                                      "Deployable runs that no other deployable run beats on GPU budget, tokens/s "
                                      "and quant error together; rows marked `bound` read the future (OPT, the "
                                      "oracle prefetcher) and show how far the frontier is from the optimum."],
                                     table=html.Table("frontier", _named(win, axes), cols, headers),
                                     figure="budget_frontier" if "budget_frontier" in plotted else None))
    for name in plotted:
        if name == "budget_frontier" and win:
            continue  # drawn in the frontier's own section, above its table
        sections.append(html.Section(name, TITLES.get(name, name), [CAPTIONS.get(name, "")], figure=name))
    if no_curve and ok:
        sections.append(html.Section("no-curves", "Hit-rate curves", [f"Not drawn: {no_curve}."]))
    if failed:
        sections.append(html.Section("failed", "Failed jobs", [],
                                     table=html.Table("failed", list(failed), ["job", "status", "error"], HEADERS)))
    return sections


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="moesim-report", description=__doc__.splitlines()[0])
    ap.add_argument("sweep_dir", help="a multirun folder (holds one sub-folder per job)")
    ap.add_argument("--out", default=None, help="where to write (default: SWEEP_DIR/report)")
    ap.add_argument("--no-curves", action="store_true",
                    help="skip the hit-rate curves (they replay the sweep's trace once per policy and size)")
    try:
        args = ap.parse_args(argv)
    except SystemExit as exc:  # --help (0) or bad usage (2): a status, not an exception
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    try:
        res = build_report(args.sweep_dir, args.out, curves=not args.no_curves)
    except FileNotFoundError as exc:  # the folder argument names no folder: bad usage
        print(f"moesim-report: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:  # a report file that cannot be written
        print(f"moesim-report: error: {args.sweep_dir}: {one_line(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:  # e.g. a plot that fails on odd values: still one line, and a failure status
        print(f"moesim-report: error: {args.sweep_dir}: {internal_error(exc)}", file=sys.stderr)
        return 1
    n_ok = sum(r.get("status") == "ok" for r in res["rows"])
    print(f"{len(res['rows'])} jobs ({n_ok} ok); report: {res['report']} and {res['html']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
