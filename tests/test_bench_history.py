"""The benchmark history plot reads pytest-benchmark's saved JSON."""

from __future__ import annotations

import json
from pathlib import Path

from moesim.bench.history import history, load_runs, main


def _run(path: Path, times: dict[str, float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"benchmarks": [{"name": n, "group": "sim", "stats": {"min": t}}
                                               for n, t in times.items()]}))


def test_history_orders_runs_and_groups(tmp_path: Path) -> None:
    _run(tmp_path / "Linux" / "0002_b.json", {"a": 2.0})
    _run(tmp_path / "Linux" / "0001_a.json", {"a": 1.0, "b": 3.0})
    (tmp_path / "Linux" / "junk.json").write_text("{not json")
    runs = load_runs(tmp_path)
    assert [Path(r["_file"]).name for r in runs] == ["0001_a.json", "0002_b.json"]
    assert history(runs) == {"sim": {"a": [(0, 1.0), (1, 2.0)], "b": [(0, 3.0)]}}
    out = tmp_path / "h.png"
    assert main([str(tmp_path), "--out", str(out)]) == 0 and out.stat().st_size > 1000
    assert main([str(tmp_path / "none"), "--out", str(out)]) == 1


def test_one_saved_run_draws_a_readable_figure(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt
    from moesim.bench.history import draw_history
    from moesim.bench.layout import outside, overlaps, texts

    _run(tmp_path / "Linux" / "0001_a.json", {f"test_bench_{i}[lru-{i}]": 1.0 + i for i in range(18)})
    fig = draw_history(load_runs(tmp_path))
    ax = fig.axes[0]
    assert ax.get_xlim() == (-0.5, 0.5) and [t.get_text() for t in ax.get_xticklabels()] == ["0001"]
    boxes = texts(fig)
    assert not overlaps(fig, boxes=boxes) and not outside(fig, boxes=boxes)
    assert any(t.startswith("Benchmark history") for t, _ in boxes)
    plt.close(fig)
