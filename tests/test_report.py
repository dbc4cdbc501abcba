"""The sweep report: the table's latency breakdown, the hit-rate curves against the runs they
pass through, figures that draw exactly what the tables hold, fixed styles per name, no text
drawn over other text, and the markdown and HTML renderings."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from hydra import compose, initialize_config_dir
from moesim.bench import layout, plots, style
from moesim.bench.aggregate import collect, swept_columns
from moesim.bench.context import sweep_context
from moesim.bench.html import manifest
from moesim.bench.report import build_report
from moesim.bench.report import main as report_main
from moesim.sim.app import CONF_DIR, run_job
from sweep_helpers import format_sweep, policy_sweep, prefetch_sweep

POLICIES = ("lru", "s3fifo", "opt")
SIZES = (96, 256)


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def real_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Six real runs (3 policies x 2 sizes, a 2-request trace), written as a sweep would."""
    root = tmp_path_factory.mktemp("sweep")
    cache = str(tmp_path_factory.mktemp("traces"))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for p in POLICIES:
            for n in SIZES:
                overrides = [f"policy={p}", f"cache.l1_experts={n}"]
                cfg = compose(config_name="config", overrides=[*overrides, "trace.requests=2", "quant.error_rows=8",
                                                               f"trace.cache_dir={cache}"])
                assert run_job(cfg, root / ",".join(overrides), overrides)["status"] == "ok"
    return root, build_report(root)


def test_results_carry_the_latency_breakdown(real_sweep: tuple[Path, dict]) -> None:
    root, _ = real_sweep
    rows = _csv(root / "report" / "results.csv")
    assert len(rows) == len(POLICIES) * len(SIZES)
    for r in rows:
        parts = sum(float(r[c]) for c in ("attention_ms", "experts_ms", "head_ms", "stall_ms"))
        assert parts == pytest.approx(float(r["latency_mean_ms"]), rel=1e-9)
        assert float(r["transfer_ms"]) == pytest.approx(float(r["pcie_utilisation"]) * float(r["latency_mean_ms"]))
        assert 0 <= float(r["pcie_utilisation"]) <= 1 and r["trace"].startswith("synthetic gpt-oss-20b")
        assert int(r["cache.l1_experts"]) == int(r["l1_experts"])  # integers stay integers in the CSV


def test_curves_pass_through_the_runs_and_opt_bounds_them(real_sweep: tuple[Path, dict]) -> None:
    root, res = real_sweep
    curves = res["curves"]
    assert set(curves) == set(POLICIES)
    for r in collect(root):
        c = curves[r["policy_name"]]
        (i,) = [k for k, s in enumerate(c.sizes.tolist()) if s == r["l1_experts"]]
        assert c.hits[i] == r["hits"] and c.accesses == r["accesses"], r["job"]
    opt = curves["opt"]
    for name, c in curves.items():
        at = {int(s): int(h) for s, h in zip(c.sizes, c.hits, strict=True)}
        for s, h in zip(opt.sizes, opt.hits, strict=True):
            if int(s) in at:
                assert at[int(s)] <= int(h), (name, int(s))
    # The curve figure draws mrc.csv, and the grid is fine (not the sweep's two sizes).
    table = _csv(root / "report" / "mrc.csv")
    drawn = res["plotted"]["miss_ratio_curves"]
    for name in POLICIES:
        xs, ys = drawn[style.display("policy", name)]
        want = [(float(t["size_experts"]), float(t["hit_ratio"])) for t in table if t["policy"] == name]
        assert list(zip(xs, ys, strict=True)) == want and len(xs) > 40


def test_frontier_lists_no_oracle_and_marks_the_bounds(real_sweep: tuple[Path, dict]) -> None:
    root, res = real_sweep
    table = _csv(root / "report" / "frontier.csv")
    real = [t for t in table if t["bound"] == "False"]
    bounds = [t for t in table if t["bound"] == "True"]
    assert real and all(t["policy"] != "opt" for t in real)
    assert bounds and all(t["policy"] == "opt" for t in bounds)
    xs, ys = res["plotted"]["budget_frontier"]["frontier"]
    assert list(zip(xs, ys, strict=True)) == [(float(t["budget_gib"]), float(t["tokens_per_s"])) for t in real]


def _figures(rows: list[dict], sweep: Path) -> dict:
    ctx = sweep_context(rows)
    out = {}
    for fn in plots.FIGURES:
        if fn is plots.miss_ratio_curves:
            continue
        fig, data = fn(rows, ctx)
        if fig is not None:
            out[fn.__name__] = (fig, data)
    return out


@pytest.mark.parametrize("make", [policy_sweep, format_sweep, prefetch_sweep], ids=["policy", "format", "prefetch"])
def test_figures_draw_the_table_without_overlapping_text(make, tmp_path: Path) -> None:
    rows = [r for r in collect(make(tmp_path)) if r["status"] == "ok"]
    figs = _figures(rows, tmp_path)
    assert figs
    try:
        for name, (fig, data) in figs.items():
            boxes = layout.texts(fig)
            assert not layout.overlaps(fig, boxes=boxes), (name, layout.overlaps(fig, boxes=boxes))
            assert not layout.outside(fig, boxes=boxes), (name, layout.outside(fig, boxes=boxes))
            texts = [t for t, _ in boxes]
            assert any("rtx-4090" in t and "gpt-oss-20b" in t for t in texts), name  # the subtitle
            legend = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
            assert not any("=" in t for t in legend), (name, legend)  # names, not override strings
            if name == "hit_rate_vs_size":
                axes = [a for a in swept_columns(rows) if a not in (*plots.SIZE_KEYS, "l1_experts")]
                assert len(data) == len({plots.config_label(r, axes) for r in rows})
                for label, (xs, ys) in data.items():
                    want = sorted((r["l1_experts"], r["hit_rate"]) for r in rows if plots.config_label(r, axes) == label)
                    assert list(zip(xs, ys, strict=True)) == [(float(x), float(y)) for x, y in want], label
            if name == "latency_breakdown":
                for col in ("attention_ms", "experts_ms", "head_ms", "stall_ms", "transfer_ms"):
                    assert sorted(data[col][1]) == sorted(float(r[col]) for r in rows)
    finally:
        plt.close("all")


def test_prefetch_figure_plots_the_hit_rate_with_prefetch(tmp_path: Path) -> None:
    rows = [r for r in collect(prefetch_sweep(tmp_path)) if r["status"] == "ok"]
    fig, data = plots.prefetch_quality(rows, sweep_context(rows))
    plt.close(fig)
    assert set(data["l1_hit_rate"]) == {style.display("prefetcher", p) for p in ("none", "affinity", "speculative",
                                                                                 "oracle")}
    assert "no prefetch" not in data["accuracy"]  # nothing issued, nothing to plot
    for label, (_, ys) in data["coverage"].items():
        assert all(0 <= y <= 1 for y in ys), label


def _colours(fig) -> dict[str, str]:
    out = {}
    for ax in fig.axes:
        for line in ax.get_lines():
            if not line.get_label().startswith("_"):
                out[line.get_label()] = line.get_color()
    return out


def test_a_name_has_one_colour_in_every_report(tmp_path: Path) -> None:
    a = [r for r in collect(policy_sweep(tmp_path / "a", ("lru", "arc", "opt"))) if r["status"] == "ok"]
    b = [r for r in collect(policy_sweep(tmp_path / "b", ("lfu", "s3fifo", "arc", "lru"), (32, 512)))
         if r["status"] == "ok"]
    fa, _ = plots.hit_rate_vs_size(a, sweep_context(a))
    fb, _ = plots.latency_vs_budget(b, sweep_context(b))
    ca, cb = _colours(fa), _colours(fb)
    plt.close("all")
    for name in ("LRU", "ARC"):
        assert ca[name] == cb[name] == style.style("policy", name.lower()).color
    assert style.style("policy", "opt").linestyle == style.BOUND_LINESTYLE


def test_sixteen_series_stay_apart() -> None:
    from moesim.kernels.formats import list_formats
    from moesim.sim.policies import list_policies

    def look(domain: str, name: str) -> tuple:
        s = style.style(domain, name)
        return s.color, s.marker, str(s.linestyle)

    policies = [look("policy", p) for p in list_policies()]
    assert len(set(policies)) == len(policies) and len({c for c, _, _ in policies}) == len(policies)
    formats = [look("format", f) for f in style.FORMAT_SLOTS]
    assert len(set(formats)) == len(formats) >= 16
    assert all(look("format", f) == look("format", f) for f in list_formats())  # every format has a fixed look


def test_report_pages_hold_every_figure_and_table(tmp_path: Path) -> None:
    res = build_report(format_sweep(tmp_path / "s"), tmp_path / "out", curves=False)
    md = (tmp_path / "out" / "report.md").read_text()
    page = (tmp_path / "out" / "report.html").read_text()
    want = manifest(res["sections"])
    assert {f"fig-{n}" for n in res["plotted"]} == set(want["figures"])
    for fig_id in want["figures"]:
        assert f'id="{fig_id}"' in page and f"{fig_id[4:]}.png" in md
    for table_id in want["tables"]:
        assert f'id="{table_id}"' in page
    assert "<script" not in page and not re.search(r'(src|href)="(?!#|data:)', page)  # self-contained
    assert page.count("<svg") == len(want["figures"])
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids))  # the inlined figures share no id
    # The fastest table holds no column that is constant or restates another.
    fastest = md.split("## Fastest deployable configurations")[1].split("##")[0]
    header = [h.strip() for h in fastest.strip().splitlines()[2].strip("|").split("|")]
    assert "cache.l1_gib" not in header and len(header) == len(set(header))
    assert "hardware" not in header and "model" not in header


def test_report_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = policy_sweep(tmp_path / "s", ("lru", "opt"), (64, 128))
    assert report_main([str(sweep), "--no-curves"]) == 0
    assert "report.html" in capsys.readouterr().out
    assert report_main([str(tmp_path / "missing")]) == 2
    assert report_main(["--help"]) == 0
    assert "--no-curves" in capsys.readouterr().out
    assert all(math.isfinite(r["tokens_per_s"]) for r in collect(sweep))


def test_the_overlap_check_sees_overlapping_text() -> None:
    fig = plots.figure(4, 3)
    ax = fig.add_subplot()
    ax.set_title("a title long enough")
    ax.text(0.5, 1.02, "over the title", transform=ax.transAxes, ha="center")
    ax.set_xticks(range(40), [f"label {i}" for i in range(40)])  # crowded tick labels
    found = layout.overlaps(fig)
    plt.close(fig)
    assert ("a title long enough", "over the title") in found or ("over the title", "a title long enough") in found
    assert any(a.startswith("label") and b.startswith("label") for a, b in found)
