"""``moesim-report DIR``: aggregate a sweep folder into a table, plots and ``report.md``.

Writes ``DIR/report/results.csv`` (+ ``results.parquet``), the plots of :mod:`bench.plots` (PNG and
SVG), ``frontier.csv`` and ``report.md`` that embeds the plots, lists the winners and the failed
jobs. Called by the Hydra callback at the end of every multirun; safe to run again at any time.
Exit status: 0 written, 1 the report could not be written, 2 bad usage (no such folder).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from moesim.bench import plots
from moesim.bench.aggregate import collect, swept_columns, to_csv_text, write_table
from moesim.traces.errors import internal_error, one_line
from moesim.traces.io import atomic_write_text


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _md_table(rows: Sequence[Mapping[str, Any]], cols: Sequence[str]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def build_report(sweep_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Aggregate ``sweep_dir``; returns the rows, the plotted data per figure and the paths."""
    root = Path(sweep_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"sweep folder {root} does not exist")
    out = Path(out_dir) if out_dir is not None else root / "report"
    out.mkdir(parents=True, exist_ok=True)
    rows = collect(root)
    ok = [r for r in rows if r.get("status") == "ok"]
    failed = [r for r in rows if r.get("status") not in ("ok", "skipped")]
    tables = write_table(rows, out)
    plotted: dict[str, Any] = {}
    for fn in plots.ALL_PLOTS:
        data = fn(ok, out)
        if data:
            plotted[fn.__name__] = data
    win = plots.frontier(ok)
    atomic_write_text(out / "frontier.csv", to_csv_text(win))
    axes = swept_columns(ok)
    md = [f"# Sweep report: {root.name}", "",
          f"{len(rows)} jobs: {len(ok)} ok, {len(failed)} failed. Swept: {', '.join(axes) or 'nothing'}.",
          f"Table: `{tables[0].name}`" + (f", `{tables[1].name}`" if len(tables) > 1 else "") + ".", ""]
    if ok:
        best = sorted(ok, key=lambda r: -(r.get("tokens_per_s") or 0.0))[:10]
        md += ["## Fastest configurations", "",
               _md_table(best, [*axes, "l1_experts", "l1_gib", "hit_rate", "tokens_per_s", "latency_p99_ms",
                                "stall_fraction", "quant_rel_frobenius"]), ""]
    if len(win) > 1:
        md += ["## Budget frontier (best tokens/s per GPU memory budget)", "",
               _md_table(win, ["budget_gib", "format", "policy", "prefetcher", "tokens_per_s", "latency_p99_ms",
                               "quant_rel_frobenius"]), ""]
    for name in plotted:
        md += [f"## {name.replace('_', ' ')}", "", f"![{name}]({name}.png)", ""]
    if failed:
        md += ["## Failed jobs", "", _md_table(failed, ["job", "status", "error"]), ""]
    atomic_write_text(out / "report.md", "\n".join(md))
    return {"rows": rows, "plotted": plotted, "frontier": win, "out_dir": out, "report": out / "report.md"}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="moesim-report", description=__doc__.splitlines()[0])
    ap.add_argument("sweep_dir", help="a multirun folder (holds one sub-folder per job)")
    ap.add_argument("--out", default=None, help="where to write (default: SWEEP_DIR/report)")
    try:
        args = ap.parse_args(argv)
    except SystemExit as exc:  # --help (0) or bad usage (2): a status, not an exception
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    try:
        res = build_report(args.sweep_dir, args.out)
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
    print(f"{len(res['rows'])} jobs ({n_ok} ok); report: {res['report']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
