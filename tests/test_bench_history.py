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
