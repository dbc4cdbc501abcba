"""The fixed look of every report figure: one colour, marker and line style per policy, format and
prefetcher name, display names for legends, and the title / subtitle header.

A name's style depends on the name alone (a fixed table, then a hash for names the table does not
know), never on which other series share a plot, so LRU is the same blue in every report and the
same figure drawn from two sweeps matches. Bounds (the offline optimum, the oracle prefetcher) are
always dashed: they show what no deployable configuration can beat, and must not read as a rival.

This module draws nothing on its own and reads no files.
"""

from __future__ import annotations

import textwrap
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# 16 colours far apart in hue and lightness (tab10, then six darker tones), so 16 series stay
# apart by colour alone; marker and line style separate them again in grey-scale prints.
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
           "#bcbd22", "#7f7f7f", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#000000")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p", "8", "d", "H", "x")
# Dashed ("--") is kept for bounds; realisable series use these.
LINESTYLES = ("-", "-.", ":", (0, (3, 1, 1, 1, 1, 1)))
BOUND_LINESTYLE = "--"

# The swept config keys that name a policy, a prefetcher or a format, and the table column that
# holds the same name.
DOMAINS = {"policy": "policy", "prefetch": "prefetcher", "quant": "format"}
COLUMN_DOMAIN = {"policy": "policy", "policy_name": "policy", "prefetch": "prefetcher",
                 "prefetcher": "prefetcher", "quant": "format", "format": "format"}

# Fixed palette slots: the bounds take black (15), "no prefetch" the neutral grey (9).
POLICY_SLOTS = {name: i for i, name in enumerate(
    ("lru", "fifo", "lfu", "lfuda", "clock", "sieve", "s3fifo", "arc", "twoq", "lirs", "random", "watermark",
     "layeraware", "static"))} | {"opt": 15}
PREFETCHER_SLOTS = {"none": 9, "affinity": 0, "speculative": 3, "oracle": 15}
FORMAT_SLOTS = {name: i for i, name in enumerate(
    ("bf16", "fp16", "fp32", "fp8-e4m3-channel", "fp8-e4m3-tensor", "fp8-e5m2-channel", "fp8-e5m2-tensor",
     "int8-g64", "int4-g64", "int4-g32", "int4-g128", "nf4", "mxfp4", "mxfp4-rceil", "nvfp4", "mxfp6_e2m3",
     "mxfp6_e3m2", "mxfp8_e4m3", "mxfp8_e5m2", "mxint8"))}
SLOTS = {"policy": POLICY_SLOTS, "prefetcher": PREFETCHER_SLOTS, "format": FORMAT_SLOTS}

# Configurations nobody can deploy: they read the future of the trace.
BOUNDS = {"policy": frozenset({"opt"}), "prefetcher": frozenset({"oracle"})}

DISPLAY = {
    "policy": {"lru": "LRU", "fifo": "FIFO", "lfu": "LFU", "lfuda": "LFU-DA", "clock": "CLOCK", "sieve": "SIEVE",
               "s3fifo": "S3-FIFO", "arc": "ARC", "twoq": "2Q", "lirs": "LIRS", "random": "Random",
               "watermark": "Watermark", "layeraware": "Layer-aware", "static": "Static pinning",
               "opt": "OPT (offline bound)"},
    "prefetcher": {"none": "no prefetch", "affinity": "next-layer affinity", "speculative": "speculative",
                   "oracle": "oracle (lookahead bound)"},
    "format": {},
}
# Readable names of other swept keys and columns, for legends and table headers.
AXIS_NAMES = {"cache.l1_experts": "GPU cache (experts)", "cache.l1_gib": "GPU budget (GiB)",
              "cache.organisation": "organisation", "cache.l2_experts": "DRAM cache (experts)",
              "cache.l2_gib": "DRAM budget (GiB)", "batch_size": "batch", "hardware": "hardware", "model": "model",
              "policy": "policy", "prefetch": "prefetcher", "quant": "format"}

# Swept keys whose values read best with their unit after them: "64 experts", "2 GiB".
UNITS = {"cache.l1_experts": "experts", "cache.l1_gib": "GiB", "cache.l2_experts": "DRAM experts",
         "cache.l2_gib": "GiB DRAM", "l1_experts": "experts", "budget_gib": "GiB"}


@dataclass(frozen=True)
class SeriesStyle:
    color: str
    marker: str
    linestyle: Any
    bound: bool

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``Axes.plot``."""
        return {"color": self.color, "marker": self.marker, "linestyle": self.linestyle,
                "linewidth": 2.0 if self.bound else 1.6, "markersize": 5}


def _hash(text: str) -> int:
    return zlib.crc32(text.encode())  # stable across processes (str hash is salted)


def is_bound(domain: str, name: Any) -> bool:
    return str(name) in BOUNDS.get(domain, frozenset())


def style(domain: str, name: Any) -> SeriesStyle:
    """The style of ``name`` in ``domain`` (``policy``, ``prefetcher`` or ``format``)."""
    name = str(name)
    slots = SLOTS.get(domain, {})
    if name in slots:
        i = slots[name]
    else:  # a name added later: a fixed slot from its hash, never from its neighbours
        i = _hash(f"{domain}:{name}") % len(PALETTE)
    bound = is_bound(domain, name)
    return SeriesStyle(color=PALETTE[i % len(PALETTE)], marker=MARKERS[i % len(MARKERS)],
                       linestyle=BOUND_LINESTYLE if bound else LINESTYLES[(i // len(PALETTE)) % len(LINESTYLES)],
                       bound=bound)


def display(domain: str, name: Any) -> str:
    """The legend name of ``name``: ``"S3-FIFO"``, not ``"policy=s3fifo"``."""
    text = str(name)
    known = DISPLAY.get(domain, {}).get(text)
    if known:
        return known
    if domain == "format":
        return format_display(text)
    return text


def format_display(name: str) -> str:
    """``mxfp4`` -> ``MXFP4``, ``int4-g64`` -> ``INT4 g64``, ``fp8-e4m3-channel`` -> ``FP8 e4m3 channel``."""
    head, *rest = name.replace("_", "-").split("-")
    return " ".join([head.upper(), *rest])


def axis_name(key: str) -> str:
    return AXIS_NAMES.get(key, key.split(".")[-1].replace("_", " "))


def series_label(parts: Sequence[tuple[str, Any]]) -> str:
    """One legend entry from the (swept key, value) pairs that define a series."""
    out = []
    for key, value in parts:
        domain = COLUMN_DOMAIN.get(key)
        if domain:
            out.append(display(domain, value))
        elif key in UNITS:
            out.append(f"{value} {UNITS[key]}")
        else:
            out.append(f"{axis_name(key)} {value}")
    return " · ".join(out) or "all runs"


def series_style(parts: Sequence[tuple[str, Any]], index_of_rest: int = 0) -> SeriesStyle:
    """The style of a series defined by ``parts``: colour, marker and line style of its first named
    part (policy before prefetcher before format); a later part changes the marker and line style
    only, by its position ``index_of_rest`` among the values that part takes in the plot. A series
    with a bound among its parts is dashed."""
    named = sorted(((k, v) for k, v in parts if COLUMN_DOMAIN.get(k)),
                   key=lambda kv: ("policy", "prefetcher", "format").index(COLUMN_DOMAIN[kv[0]]))
    bound = any(is_bound(COLUMN_DOMAIN[k], v) for k, v in named)
    if named:
        base = style(COLUMN_DOMAIN[named[0][0]], named[0][1])
    else:
        label = series_label(parts)
        base = style("other", label)
    if len(parts) > 1 and index_of_rest:
        base = SeriesStyle(base.color, MARKERS[(MARKERS.index(base.marker) + index_of_rest) % len(MARKERS)],
                           LINESTYLES[index_of_rest % len(LINESTYLES)], base.bound)
    if bound and not base.bound:
        base = SeriesStyle(base.color, base.marker, BOUND_LINESTYLE, True)
    return base


def legend_order(labels: Iterable[str], bounds: Mapping[str, bool]) -> list[str]:
    """Realisable series first (alphabetically), bounds last: the reader compares the deployable."""
    return sorted(labels, key=lambda s: (bounds.get(s, False), s.lower()))


# ---- titles --------------------------------------------------------------------------------------

TITLE_PT = 12.0
SUBTITLE_PT = 9.0
_LINE_IN = 1.45 / 72  # one line of text per point size, in inches (font size x line spacing)


def header(fig: Any, title: str, subtitle: str) -> None:
    """Put ``title`` (what the figure shows) and ``subtitle`` (on what: trace, model, hardware,
    format) above the axes, wrapped to the figure's width, and keep the axes below them.

    The figure must use the constrained layout; its top is given to the header, so neither text can
    run into an axes title.
    """
    width_in, height_in = fig.get_size_inches()
    chars = max(20, int(width_in * 72 / (SUBTITLE_PT * 0.55)))
    sub_lines = textwrap.wrap(subtitle, chars) or [""]
    title_lines = textwrap.wrap(title, max(20, int(width_in * 72 / (TITLE_PT * 0.62)))) or [""]
    top_in = 0.08 + len(title_lines) * TITLE_PT * _LINE_IN + len(sub_lines) * SUBTITLE_PT * _LINE_IN + 0.08
    fig.text(0.5, 1 - 0.06 / height_in, "\n".join(title_lines), ha="center", va="top", fontsize=TITLE_PT,
             fontweight="bold")
    fig.text(0.5, 1 - (0.06 + len(title_lines) * TITLE_PT * _LINE_IN + 0.04) / height_in, "\n".join(sub_lines),
             ha="center", va="top", fontsize=SUBTITLE_PT, color="0.3")
    fig.get_layout_engine().set(rect=(0, 0, 1, 1 - top_in / height_in))


def subtitle(context: Mapping[str, Any]) -> str:
    """``trace ... · model ... · hardware ... · format ...`` from a sweep's context (see
    :func:`bench.context.sweep_context`)."""
    parts = []
    for key in ("trace", "model", "hardware", "format", "prefetcher", "policy", "organisation"):
        value = context.get(key)
        if value:
            parts.append(f"{key} {value}")
    return " · ".join(parts)
