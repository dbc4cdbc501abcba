"""End-to-end benchmarks (group ``end_to_end``) and cost growth (group ``growth``).

* The default experiment sweep as a user runs it (``python -m moesim.sim +experiment=default_sweep``, a
  fresh process, so numba's on-disk cache load is included); when only run as a test, two jobs
  of it in-process.
* How LRU replay throughput changes with trace length, cache size and model shape (layers x
  experts x top-k): accesses/s in ``extra_info`` for the table in the docs.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from moesim.sim.replay import replay
from moesim.traces.synth import generate_preset
from moesim.traces.trace import Trace


@pytest.mark.benchmark(group="end_to_end")
def test_default_sweep(benchmark: Any, tmp_path: Path) -> None:
    if benchmark.disabled:
        from hydra import compose, initialize_config_dir
        from moesim.sim.app import CONF_DIR
        from moesim.sim.experiment import run_experiment

        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfgs = [compose(config_name="config", overrides=["trace.requests=1", "quant.error_rows=8",
                                                              f"trace.cache_dir={tmp_path}", f"policy={p}",
                                                              "cache.l1_experts=128"]) for p in ("lru", "opt")]
        results = benchmark(lambda: [run_experiment(c) for c in cfgs])
        assert results[1]["l1"]["hits"] >= results[0]["l1"]["hits"]  # OPT is optimal
        return
    env = dict(os.environ, MOESIM_CACHE=str(tmp_path / "cache"))

    def sweep() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "moesim.sim", "+experiment=default_sweep", "sweep_name=bench",
                               f"hydra.sweep.dir={tmp_path / 'sweep'}", "report=true"], env=env, cwd=tmp_path,
                              capture_output=True, text=True, check=True, timeout=1800)

    sweep()  # generate the trace once; the timed run then measures the sweep itself
    for p in (tmp_path / "sweep").glob("*/metrics.json"):
        p.unlink()  # otherwise resume would skip every job
    benchmark.pedantic(sweep, rounds=1, iterations=1)
    jobs = len(list((tmp_path / "sweep").glob("*/metrics.json")))
    benchmark.extra_info.update(jobs=jobs, seconds_per_job=benchmark.stats.stats.min / jobs)
    assert jobs == 24


@functools.cache
def shaped_trace(preset: str, requests: int) -> Trace:
    return generate_preset(preset, seed=0, num_requests=requests)


GROWTH = [  # (preset, requests, capacity as a fraction of L * E)
    ("gpt-oss-20b", 4, 0.25), ("gpt-oss-20b", 16, 0.25), ("gpt-oss-20b", 64, 0.25),
    ("gpt-oss-20b", 16, 0.125), ("gpt-oss-20b", 16, 0.5),
    ("olmoe-1b-7b", 16, 0.25), ("qwen3-30b-a3b", 16, 0.25), ("deepseek-v3", 16, 0.25),
]


@pytest.mark.benchmark(group="growth")
@pytest.mark.parametrize(("preset", "requests", "fraction"), GROWTH)
def test_lru_cost_growth(benchmark: Any, preset: str, requests: int, fraction: float) -> None:
    if benchmark.disabled and (requests, fraction) != (16, 0.25):
        pytest.skip("the growth grid is timed only with --benchmark-enable")
    tr = shaped_trace(preset, 1 if benchmark.disabled else requests)
    cap = max(tr.width, int(fraction * tr.num_layers * tr.num_experts))
    replay(tr, "lru", cap)  # warm: load the compiled code
    res = benchmark.pedantic(lambda: replay(tr, "lru", cap), rounds=3 if not benchmark.disabled else 1, iterations=1)
    assert res.accesses == int((tr.experts[:] >= 0).sum())
    if not benchmark.disabled:
        benchmark.extra_info.update(steps=tr.num_steps, layers=tr.num_layers, experts=tr.num_experts, top_k=tr.width,
                                    capacity=cap, accesses=res.accesses,
                                    accesses_per_s=res.accesses / benchmark.stats.stats.min)
