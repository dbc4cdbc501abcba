"""End-to-end benchmarks (group ``end_to_end``) and cost growth (group ``growth``).

* The default experiment sweep as a user runs it (``python -m moesim.sim +experiment=default_sweep``, a
  fresh process, so numba's on-disk cache load is included); when only run as a test, two jobs
  of it in-process.
* How LRU replay throughput changes with trace length, cache size and model shape (layers x
  experts x top-k): accesses/s in ``extra_info`` for the table in the docs.
* ``simulate_offload`` (the engine with the executor-free timeline) on the real OLMoE trace against
  ``replay`` of the same cache, alternated (group ``end_to_end``).
* The per-job overhead of a warm Hydra sweep: two sweeps of the same tiny jobs in fresh processes,
  4 and 12 jobs; the difference over 8 jobs is what one more job costs beyond its simulation.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from moesim.sim.offload import simulate_offload
from moesim.sim.profiles import load_hardware_profile, load_model_profile
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


@pytest.mark.benchmark(group="end_to_end")
@pytest.mark.parametrize("policy", ["lru", "fifo", "arc"])
def test_offload_timeline_throughput(benchmark: Any, policy: str) -> None:
    """``simulate_offload(trace, "olmoe-1b-7b", "rtx-4090", "bf16", l1=256, policy=...)`` on the real
    OLMoE trace (6.54 M accesses; DRAM holds the model, no prefetcher: the timeline from each row's
    misses), alternated with ``replay(trace, policy, 256)``: ``accesses_per_s`` (goal >= 50 M/s for
    LRU) and ``vs_replay`` (the timeline's time over the replay's)."""
    from moesim.bench.test_bench_real import olmoe

    tr = olmoe(benchmark)
    model, hw = load_model_profile("olmoe-1b-7b"), load_hardware_profile("rtx-4090")
    rounds = 1 if benchmark.disabled else 5

    def offload() -> Any:
        return simulate_offload(tr, "olmoe-1b-7b", "rtx-4090", "bf16", l1=256, policy=policy)

    offload()
    replay(tr, policy, 256)
    best_off = best_rep = float("inf")
    res = rep = None
    for _ in range(rounds):
        t0 = time.perf_counter()
        res = offload()
        best_off = min(best_off, time.perf_counter() - t0)
        t0 = time.perf_counter()
        rep = replay(tr, policy, 256)
        best_rep = min(best_rep, time.perf_counter() - t0)
    assert res is not None and rep is not None and res.l1.hits == rep.hits
    benchmark.pedantic(lambda: simulate_offload(tr, model, hw, "bf16", l1=256, policy=policy), rounds=rounds,
                       warmup_rounds=1)
    n = rep.accesses
    benchmark.extra_info.update(trace="OLMoE-1B-7B decode (shared data)", accesses=n,
                                accesses_per_s=n / best_off, replay_accesses_per_s=n / best_rep,
                                vs_replay=best_off / best_rep)
    if not benchmark.disabled:  # the same call with the profiles loaded beforehand
        benchmark.extra_info["profiles_given_accesses_per_s"] = n / benchmark.stats.stats.min


@pytest.mark.benchmark(group="end_to_end")
def test_sweep_per_job_overhead(benchmark: Any, tmp_path: Path) -> None:
    """What one more job adds to a warm sweep (compiled code cached, trace on disk): sweeps of 4 and
    12 one-request jobs (``moesim -m policy=... cache.l1_experts=...``), each in a fresh process; the
    difference over 8 jobs. ``per_job_overhead_s`` (goal <= 0.2 s) and ``per_job_simulation_s`` (the
    jobs' own ``elapsed_s``, included in the former)."""
    import json

    env = dict(os.environ, MOESIM_CACHE=str(tmp_path / "cache"))
    common = ["trace.requests=1", "quant.error_rows=8", "report=false"]

    def sweep(name: str, sizes: str) -> float:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "moesim.sim", "-m", "policy=lru,fifo", f"cache.l1_experts={sizes}",
                        f"sweep_name={name}", f"hydra.sweep.dir={tmp_path / name}", *common], env=env, cwd=tmp_path,
                       capture_output=True, text=True, check=True, timeout=900)
        return time.perf_counter() - t0

    if benchmark.disabled:
        sweep("warm", "128")
        assert len(list((tmp_path / "warm").glob("*/metrics.json"))) == 2
        return
    sweep("warm", "128,256")  # the trace generated, the numba cache filled
    small = "128,256"
    large = "64,96,128,160,192,256"
    best_small = best_large = float("inf")
    for r in range(3):
        best_small = min(best_small, sweep(f"s{r}", small))
        best_large = min(best_large, sweep(f"l{r}", large))
    per_job = (best_large - best_small) / 8
    elapsed = [json.loads(p.read_text())["elapsed_s"] for p in (tmp_path / "l0").glob("*/metrics.json")]
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    benchmark.extra_info.update(jobs_small=4, jobs_large=12, sweep_small_s=best_small, sweep_large_s=best_large,
                                per_job_overhead_s=per_job, per_job_simulation_s=float(np.mean(elapsed)))
