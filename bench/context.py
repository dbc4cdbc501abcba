"""What a sweep ran on: the trace, model, hardware, format, prefetcher and policy its jobs share,
and what it swept. Figures put it in their subtitle and the reports in their header.

Reads the aggregated rows only (:func:`bench.aggregate.collect`), never the metrics files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from moesim.bench import style
from moesim.bench.aggregate import swept_columns

# context key -> the table column holding it, and the display domain of its values
FIELDS = (("trace", "trace", None), ("model", "model", None), ("hardware", "hardware", None),
          ("format", "format", "format"), ("prefetcher", "prefetcher", "prefetcher"),
          ("policy", "policy_name", "policy"))


def _values(rows: Sequence[Mapping[str, Any]], column: str) -> list[Any]:
    out: list[Any] = []
    for r in rows:
        v = r.get(column)
        if v is not None and v not in out:
            out.append(v)
    return out


def sweep_context(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``{trace, model, hardware, format, prefetcher, policy}``: the one value all ``rows`` share
    (display names), or ``"N swept"`` when they differ; plus ``swept`` (the sweep's axes) and
    ``jobs``."""
    ctx: dict[str, Any] = {}
    for key, column, domain in FIELDS:
        values = _values(rows, column)
        if len(values) == 1:
            ctx[key] = style.display(domain, values[0]) if domain else str(values[0])
        elif values:
            ctx[key] = f"{len(values)} swept"
    ctx["swept"] = [style.axis_name(a) for a in swept_columns(rows)]
    ctx["jobs"] = len(rows)
    return ctx


def subtitle(ctx: Mapping[str, Any], *, drop: Sequence[str] = ("policy", "prefetcher")) -> str:
    """The figure subtitle: trace, model, hardware and format (the policy and prefetcher are the
    series of most figures, so they are left out unless a figure asks for them)."""
    return style.subtitle({k: v for k, v in ctx.items() if k not in drop})
