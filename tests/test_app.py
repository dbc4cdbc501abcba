"""The Hydra app end to end: config validation, one run's metrics, multirun sweeps with the basic
and joblib launchers (identical numbers), failures recorded without losing the other jobs, resume,
the aggregated table and the plots drawn from it."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from moesim.bench import plots
from moesim.bench.aggregate import collect
from moesim.bench.report import build_report
from moesim.sim.app import CONF_DIR
from moesim.sim.experiment import GIB, run_experiment
from moesim.sim.profiles import load_model_profile
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

REPO = Path(__file__).resolve().parent.parent
SMALL = ["trace.requests=2", "quant.error_rows=8"]


def composed(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


# ---- config ----------------------------------------------------------------------------------

def test_defaults_compose_with_every_group() -> None:
    cfg = composed([])
    assert cfg.policy.name == "lru" and cfg.prefetch.name == "none" and cfg.quant.format == "mxfp4"
    assert cfg.model.name == "gpt-oss-20b" and cfg.hardware.name == "rtx-4090"
    assert cfg.trace.preset == "gpt-oss-20b"  # follows the model


@pytest.mark.parametrize("override", ["cache.l1_experts=many", "cache.l1_expert=3", "policy.nme=lru", "seed=x"])
def test_typos_and_wrong_types_fail_at_compose(override: str) -> None:
    with pytest.raises((ConfigCompositionException, ValidationError, ConfigKeyError)):
        composed([override])


def test_unknown_group_choice_fails_at_compose() -> None:
    with pytest.raises(ConfigCompositionException, match="policy"):
        composed(["policy=not_a_policy"])


# ---- one run ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trace_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("traces"))


def test_one_run_agrees_with_itself_and_is_reproducible(trace_cache: str) -> None:
    cfg = composed([*SMALL, "cache.l1_experts=128", f"trace.cache_dir={trace_cache}"])
    a = run_experiment(cfg)
    b = run_experiment(cfg)
    assert a["status"] == "ok"
    rep, off = a["l1"], a["offload"]
    # One L1 result, from the run that gave the timing: the hierarchy's counters agree with it.
    assert off["counts"]["l1_hits"] == rep["hits"] and off["counts"]["l1_misses"] == rep["misses"]
    assert off["l1_hit_rate"] == rep["hit_rate"]
    assert sum(layer["hits"] for layer in rep["per_layer"]) == rep["hits"]
    assert a["capacity"]["l1_experts"] == 128
    for key in ("l1", "offload", "quant", "capacity", "trace"):
        assert a[key] == b[key], key
    assert 0 < off["tokens_per_s"] and off["latency_p50_s"] <= off["latency_p99_s"]


ENGINE_CASES = [
    ["cache.organisation=per_layer", "cache.l1_experts=119"],
    ["cache=pinned"],
    ["policy=random"],
    ["cache.cold_start_per_request=true"],
    ["policy=opt", "cache.organisation=per_layer", "cache.l1_experts=100"],
    ["policy=watermark"],
    ["policy=static"],
    ["policy=layeraware", "prefetch=affinity"],
    ["policy=opt", "prefetch=oracle"],
    ["cache.l2_experts=600", "prefetch=affinity", "cache.tie_break=expert_id", "cache.warmup_steps=4"],
]


@pytest.mark.parametrize("overrides", ENGINE_CASES, ids=lambda o: " ".join(o))
def test_every_cache_option_runs_with_one_consistent_set_of_counts(overrides: list[str], trace_cache: str) -> None:
    # The cases that once gave two engines' disagreeing answers (or failed): one engine, one answer.
    cfg = composed([*SMALL, "cache.l1_experts=128", f"trace.cache_dir={trace_cache}", *overrides])
    m = run_experiment(cfg)
    assert m["status"] == "ok"
    l1, off = m["l1"], m["offload"]
    assert off["counts"]["l1_hits"] == l1["hits"] and off["counts"]["l1_misses"] == l1["misses"]
    assert off["counts"]["l1_evictions"] == l1["evictions"]
    assert sum(layer["accesses"] for layer in l1["per_layer"]) == l1["accesses"]
    if "cache.organisation=per_layer" in overrides:
        caps = l1["layer_capacity"]
        assert sum(caps) == m["capacity"]["l1_experts"] and max(caps) - min(caps) <= 1
    if "cache=pinned" in overrides:
        assert l1["num_pinned"] > 0 and l1["pinned_hits"] > 0
    if "policy=static" in overrides:
        assert off["counts"]["l1_bypass"] == l1["misses"] and l1["evictions"] == 0


def test_out_of_range_values_are_refused_with_the_valid_range(trace_cache: str) -> None:
    for override, match in [("cache.l1_experts=100000", r"\[1, 768\]"), ("cache.pinned=-1", "cache.pinned"),
                            ("trace.max_steps=-5", "trace.max_steps"), ("quant.error_rows=-3", "quant.error_rows")]:
        cfg = composed([*SMALL, f"trace.cache_dir={trace_cache}", override])
        with pytest.raises(Exception, match=match):
            run_experiment(cfg)


def test_budget_in_gib_becomes_whole_experts(trace_cache: str) -> None:
    cfg = composed([*SMALL, "cache.l1_gib=2.5", "quant=nvfp4", f"trace.cache_dir={trace_cache}"])
    m = run_experiment(cfg)
    eb = load_model_profile("gpt-oss-20b").expert_bytes("nvfp4")
    assert m["capacity"]["expert_bytes"] == eb
    assert m["capacity"]["l1_experts"] == int(2.5 * GIB // eb)
    assert m["quant"]["format"] == "nvfp4" and m["quant"]["bits_per_weight"] == pytest.approx(4.5, abs=0.01)


def test_trace_that_does_not_match_the_model_is_refused(trace_cache: str) -> None:
    cfg = composed([*SMALL, "trace.preset=mixtral-8x7b", f"trace.cache_dir={trace_cache}"])
    with pytest.raises(Exception, match="does not match model profile"):
        run_experiment(cfg)


def test_relative_trace_path_resolves_from_the_launch_folder(tmp_path: Path, trace_cache: str) -> None:
    from moesim.traces import io

    src = composed([*SMALL, f"trace.cache_dir={trace_cache}"])
    from moesim.sim.experiment import load_trace

    tr = load_trace(src.trace)
    io.save(tr, tmp_path / "t.safetensors")
    cfg = composed(["trace=file", "trace.path=t.safetensors", "cache.l1_experts=128", "quant.error_rows=8"])
    m = run_experiment(cfg, base_dir=tmp_path)
    assert m["trace"]["steps"] == tr.num_steps


# ---- sweeps ----------------------------------------------------------------------------------

def moesim(args: list[str], cwd: Path, cache: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, MOESIM_CACHE=cache, HYDRA_FULL_ERROR="1")
    return subprocess.run([sys.executable, "-m", "moesim.sim", *args], cwd=cwd, env=env, text=True, capture_output=True,
                          timeout=600, check=False)


def metrics_by_job(sweep: Path) -> dict[str, dict]:
    out = {}
    for p in sorted(sweep.glob("*/metrics.json")):
        m = json.loads(p.read_text())
        m.pop("elapsed_s", None)
        out[p.parent.name] = m
    return out


def job_dir(sweep: Path, prefix: str) -> Path:
    (found,) = [p for p in sweep.iterdir() if p.name.startswith(prefix)]
    return found


SWEEP = ["-m", "policy=lru,opt", "cache.l1_experts=128,256", *SMALL]


@pytest.fixture(scope="module")
def basic_sweep(tmp_path_factory: pytest.TempPathFactory, trace_cache: str) -> Path:
    cwd = tmp_path_factory.mktemp("basic")
    res = moesim([*SWEEP, "sweep_name=s"], cwd, trace_cache)
    assert res.returncode == 0, res.stderr[-3000:]
    return cwd / "multirun" / "s"


def test_basic_and_joblib_launchers_give_identical_metrics(basic_sweep: Path, tmp_path: Path, trace_cache: str) -> None:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    res = moesim([*SWEEP, "sweep_name=s", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], tmp_path, trace_cache)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = metrics_by_job(basic_sweep), metrics_by_job(tmp_path / "multirun" / "s")
    assert sorted(a) == sorted(b) and len(a) == 4
    for job in a:
        for key in ("l1", "offload", "quant", "capacity"):
            assert a[job][key] == b[job][key], (job, key)


def test_aggregated_table_has_one_row_per_job_with_the_metrics(basic_sweep: Path) -> None:
    report = basic_sweep / "report"
    with open(report / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    jobs = metrics_by_job(basic_sweep)
    for r in rows:
        m = jobs[r["job"]]
        assert r["status"] == "ok" and r["policy"] == m["config"]["policy"]["name"]
        assert int(r["cache.l1_experts"]) == m["capacity"]["l1_experts"] == int(r["l1_experts"])
        assert int(r["hits"]) == m["l1"]["hits"]
        assert float(r["tokens_per_s"]) == pytest.approx(m["offload"]["tokens_per_s"], rel=1e-12)
        assert float(r["latency_p99_ms"]) == pytest.approx(m["offload"]["latency_p99_s"] * 1e3, rel=1e-12)
    pq = pytest.importorskip("pyarrow.parquet")
    table = pq.read_table(report / "results.parquet").to_pylist()
    assert len(table) == 4 and {t["job"] for t in table} == {r["job"] for r in rows}
    # OPT is the optimum at every size.
    by = {(r["policy"], r["cache.l1_experts"]): int(r["hits"]) for r in rows}
    for size in ("128", "256"):
        assert by[("opt", size)] >= by[("lru", size)]


def test_plots_exist_and_show_the_table(basic_sweep: Path) -> None:
    report = basic_sweep / "report"
    for stem in ("miss_ratio_curves", "hit_rate_vs_size", "latency_vs_budget", "latency_breakdown", "budget_frontier"):
        for ext in ("png", "svg"):
            assert (report / f"{stem}.{ext}").stat().st_size > 1000, stem
    assert "hit_rate_vs_size.png" in (report / "report.md").read_text()
    assert 'id="fig-miss_ratio_curves"' in (report / "report.html").read_text()
    rows = [r for r in collect(basic_sweep) if r["status"] == "ok"]
    fig, data = plots.hit_rate_vs_size(rows, {})
    fig.clf()
    assert set(data) == {"LRU", "OPT (offline bound)"}  # names, not override strings
    for label, (xs, ys) in data.items():
        pol = "opt" if label.startswith("OPT") else "lru"
        want = sorted((r["l1_experts"], r["hit_rate"]) for r in rows if r["policy"] == pol)
        assert list(zip(xs, ys, strict=True)) == [(float(x), float(y)) for x, y in want]
    win = plots.frontier(rows)
    # OPT is fastest at each size, but it reads the future: a bound beside the frontier, never on it.
    assert [w["policy"] for w in win if not w["bound"]] == ["lru", "lru"]
    assert [w["policy"] for w in win if w["bound"]] == ["opt", "opt"]
    assert [w["tokens_per_s"] for w in win if w["bound"]] == [
        max(r["tokens_per_s"] for r in rows if r["l1_experts"] == n) for n in (128, 256)]


def test_a_failing_job_is_recorded_and_resume_skips_finished_jobs(tmp_path: Path, trace_cache: str) -> None:
    args = ["-m", "cache.l1_experts=0,128", *SMALL, "sweep_name=f"]
    res = moesim(args, tmp_path, trace_cache)
    # The sweep runs every job, writes the report, then exits 1 naming the failed job in one line.
    assert res.returncode == 1, res.stderr[-3000:]
    assert [line for line in res.stderr.splitlines() if line.startswith("moesim: job ")] == [
        line for line in res.stderr.splitlines() if "cache.l1_experts=0" in line and line.startswith("moesim: job ")]
    sweep = tmp_path / "multirun" / "f"
    bad_path = job_dir(sweep, "cache.l1_experts=0,") / "metrics.json"
    good_path = job_dir(sweep, "cache.l1_experts=128,") / "metrics.json"
    bad = json.loads(bad_path.read_text())
    assert bad["status"] == "failed" and "at least 1" in bad["error"]
    assert json.loads(good_path.read_text())["status"] == "ok"
    rows = {r["job"]: r for r in collect(sweep)}
    assert rows[bad_path.parent.name]["status"] == "failed" and rows[good_path.parent.name]["status"] == "ok"
    assert "Failed jobs" in (sweep / "report" / "report.md").read_text()
    before = good_path.stat().st_mtime_ns, good_path.read_bytes()
    res = moesim([*args, "exit_code_on_failure=0"], tmp_path, trace_cache)  # the old behaviour, on request
    assert res.returncode == 0
    assert (good_path.stat().st_mtime_ns, good_path.read_bytes()) == before  # skipped, not recomputed
    assert json.loads(bad_path.read_text())["status"] == "failed"


def test_report_command_on_a_folder(basic_sweep: Path, tmp_path: Path) -> None:
    from moesim.bench.report import main

    assert main([str(basic_sweep), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "report.md").exists() and (tmp_path / "results.csv").exists()
    assert main([str(tmp_path / "missing")]) == 2
    res = build_report(basic_sweep, tmp_path / "again")
    assert len(res["rows"]) == 4 and np.isfinite([r["tokens_per_s"] for r in res["rows"]]).all()


def plain_moesim(args: list[str], cwd: Path, cache: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    """``moesim`` as a user runs it (no HYDRA_FULL_ERROR)."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | {"MOESIM_CACHE": cache}
    return subprocess.run([sys.executable, "-m", "moesim.sim", *args], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=600, check=False, **kw)


def test_exit_codes_of_single_runs(tmp_path: Path, trace_cache: str) -> None:
    ok = plain_moesim([*SMALL, "cache.l1_experts=128", "hydra.run.dir=ok"], tmp_path, trace_cache)
    assert ok.returncode == 0 and f"wrote {tmp_path / 'ok'}" in ok.stdout
    bad = plain_moesim([*SMALL, "cache.l1_experts=0", "hydra.run.dir=bad"], tmp_path, trace_cache)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    errors = [line for line in bad.stderr.splitlines() if line.startswith("moesim: error:")]
    assert len(errors) == 1 and "at least 1" in errors[0] and "metrics.json" in errors[0]
    missing = plain_moesim([*SMALL, "trace=file", "trace.path=nope.safetensors", "hydra.run.dir=m"], tmp_path,
                           trace_cache)
    assert missing.returncode == 1 and "nope.safetensors" in missing.stderr and "Traceback" not in missing.stderr
    usage = plain_moesim(["policy=not_a_policy"], tmp_path, trace_cache)
    assert usage.returncode == 2 and "Traceback" not in usage.stderr
    typo = plain_moesim(["cache.l1_expert=3"], tmp_path, trace_cache)
    assert typo.returncode == 2


def test_a_changed_trace_file_is_never_answered_with_a_stale_result(tmp_path: Path, trace_cache: str) -> None:
    from moesim.sim.experiment import load_trace
    from moesim.traces import io

    src = composed([*SMALL, f"trace.cache_dir={trace_cache}"])
    one = load_trace(src.trace)
    two = load_trace({**OmegaConf.to_container(src, resolve=True)["trace"], "seed": 5})
    io.save(one, tmp_path / "t.safetensors")
    args = ["-m", "trace=file", "trace.path=t.safetensors", "cache.l1_experts=128,256", "quant.error_rows=8",
            "sweep_name=fp"]
    assert plain_moesim(args, tmp_path, trace_cache).returncode == 0
    first = metrics_by_job(tmp_path / "multirun" / "fp")
    again = plain_moesim(args, tmp_path, trace_cache)
    assert again.stdout.count("done already, skipped") + again.stderr.count("done already, skipped") == 2
    io.save(two, tmp_path / "t.safetensors")  # the same name, other contents
    rerun = plain_moesim(args, tmp_path, trace_cache)
    assert (rerun.stdout + rerun.stderr).count("re-running, its trace changed") == 2
    second = metrics_by_job(tmp_path / "multirun" / "fp")
    for job in first:
        assert first[job]["fingerprint"]["trace"] != second[job]["fingerprint"]["trace"]
        assert first[job]["l1"]["hits"] != second[job]["l1"]["hits"]


def test_job_folders_stay_inside_the_sweep_folder(tmp_path: Path, trace_cache: str) -> None:
    from moesim.sim.app import safe_dirname

    res = plain_moesim(["-m", "trace=file", "trace.path=a/../../../x.safetensors,/etc/passwd", "quant.error_rows=8",
                        "sweep_name=esc"], tmp_path, trace_cache)
    assert res.returncode == 1  # both traces are missing; the jobs fail, inside the sweep
    sweep = tmp_path / "multirun" / "esc"
    jobs = [p.parent for p in sweep.rglob("metrics.json") if "report" not in p.parts]
    assert len(jobs) == 2 and all(j.parent == sweep for j in jobs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["multirun"]  # nothing written beside it
    assert len(collect(sweep)) == 2
    for name in ("a/../../x", "..", ".", "/abs", "k=" + "v" * 500, "x\\y\0z"):
        safe = safe_dirname(name)
        assert "/" not in safe and "\0" not in safe and set(safe) != {"."} and len(safe) <= 200
        assert (Path("/sweep") / safe).parent == Path("/sweep")


# ---- launchers for many machines, in their local modes ----------------------------------------

@pytest.mark.integration
def test_submitit_local_launcher(tmp_path: Path, trace_cache: str) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    res = moesim(["-m", "policy=lru,opt", "cache.l1_experts=128", *SMALL, "sweep_name=sub",
                  "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"], tmp_path, trace_cache)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = collect(tmp_path / "multirun" / "sub")
    assert sorted(r["policy"] for r in rows) == ["lru", "opt"] and all(r["status"] == "ok" for r in rows)


@pytest.mark.integration
def test_ray_launcher_local(tmp_path: Path, trace_cache: str) -> None:
    pytest.importorskip("hydra_plugins.hydra_ray_launcher")
    res = moesim(["-m", "policy=lru,opt", "cache.l1_experts=128", *SMALL, "sweep_name=ray",
                  "hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=2",
                  "+hydra.launcher.ray.init.include_dashboard=false"], tmp_path, trace_cache)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = collect(tmp_path / "multirun" / "ray")
    assert sorted(r["policy"] for r in rows) == ["lru", "opt"] and all(r["status"] == "ok" for r in rows)


# ---- the weight analysis as a Hydra app, feeding the sweep's quant error ------------------------

def test_analysis_sweep_and_measured_error_in_the_experiment(tmp_path: Path, trace_cache: str) -> None:
    import torch
    from moesim.kernels.analysis import read_table
    from safetensors.torch import save_file

    rng = torch.Generator().manual_seed(0)
    tensors = {f"model.layers.0.block_sparse_moe.experts.{e}.{p}.weight": torch.randn(64, 64, generator=rng)
               for e in range(2) for p in ("w1", "w2", "w3")}
    tensors["model.layers.0.unrelated.weight"] = torch.zeros(4)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    env = dict(os.environ, MOESIM_CACHE=trace_cache)
    res = subprocess.run([sys.executable, "-m", "moesim.kernels.analysis_app", "-m", "checkpoint=model.safetensors",
                          "rules=mixtral", "formats=[mxfp4,nvfp4]", "sample_rows=16,32", "sweep_name=a", "plots=false"],
                         cwd=tmp_path, env=env, text=True, capture_output=True, timeout=600, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = sorted((tmp_path / "multirun" / "analysis-a").glob("*/status.json"))
    assert [json.loads(p.read_text())["status"] for p in jobs] == ["ok", "ok"]
    job = jobs[0].parent
    stats = read_table(next(job.glob("matrix_stats.*")))
    assert len(stats) == 6 and {r["sampled_rows"] for r in stats} == {16}
    inventory = read_table(next(job.glob("inventory.*")))
    assert [r["tensor"] for r in inventory if r["status"] == "unmatched"] == ["model.layers.0.unrelated.weight"]
    summary_path = next(job.glob("summary.*"))
    want = next(r for r in read_table(summary_path) if r["format"] == "nvfp4" and r["layer"] == -1 and r["proj"] == "all")
    cfg = composed([*SMALL, "quant=nvfp4", f"quant.error_table='{summary_path}'", "cache.l1_experts=128",
                    f"trace.cache_dir={trace_cache}"])
    m = run_experiment(cfg)
    assert m["quant"]["rel_frobenius"] == want["rel_frobenius_mean"] and m["quant"]["source"] == str(summary_path)
    cfg = composed([*SMALL, "quant=nf4", f"quant.error_table='{summary_path}'", f"trace.cache_dir={trace_cache}"])
    with pytest.raises(Exception, match="nf4"):
        run_experiment(cfg)


# ---- killed sweeps ------------------------------------------------------------------------------

KILL_SWEEP = ["-m", "policy=lru,fifo", "cache.l1_experts=128,256", *SMALL, "sweep_name=k", "report=false"]


def _table(sweep: Path) -> list[tuple]:
    rows = collect(sweep)
    return sorted((r["job"], r["status"], r.get("hits"), r.get("tokens_per_s"), r.get("latency_p99_ms"))
                  for r in rows)


def _sweep_processes(pid: int) -> list[int]:
    """Processes that a sweep started (they carry its pid in MOESIM_SWEEP_PID)."""
    found = []
    for env in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"MOESIM_SWEEP_PID={pid}".encode() in env.read_bytes().split(b"\0"):
                found.append(int(env.parent.name))
        except OSError:
            continue
    return found


def _kill_and_resume(tmp_path: Path, trace_cache: str, launcher: list[str], points: int, seed: int) -> None:
    import random
    import signal
    import time

    rng = random.Random(seed)
    ref_dir, dir_ = tmp_path / "ref", tmp_path / "killed"
    ref_dir.mkdir()
    dir_.mkdir()
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | {"MOESIM_CACHE": trace_cache,
                                                                              "TMPDIR": str(scratch)}
    cmd = [sys.executable, "-m", "moesim.sim", *KILL_SWEEP, *launcher]
    t0 = time.perf_counter()
    assert subprocess.run(cmd, cwd=ref_dir, env=env, capture_output=True, timeout=600).returncode == 0
    full = time.perf_counter() - t0
    for _ in range(points):
        proc = subprocess.Popen(cmd, cwd=dir_, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.05, full))
        proc.send_signal(signal.SIGKILL)  # the sweep's process only: its workers must die with it
        proc.wait()
        deadline = time.time() + 10
        while _sweep_processes(proc.pid) and time.time() < deadline:
            time.sleep(0.1)
        assert not _sweep_processes(proc.pid), "workers outlived the killed sweep"
    done = subprocess.run(cmd, cwd=dir_, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _table(dir_ / "multirun" / "k") == _table(ref_dir / "multirun" / "k")
    leftovers = [p for p in (*scratch.rglob("moesim-*"), *(dir_ / "multirun").rglob("moesim-scratch-*"))]
    assert not leftovers


@pytest.mark.integration
@pytest.mark.parametrize("launcher", [[], ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]],
                         ids=["basic", "joblib"])
def test_a_killed_sweep_resumes_to_the_same_table(launcher: list[str], tmp_path: Path, trace_cache: str) -> None:
    if launcher:
        pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    _kill_and_resume(tmp_path, trace_cache, launcher, points=2, seed=1)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", [[], ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]],
                         ids=["basic", "joblib"])
def test_a_sweep_killed_at_twenty_points_resumes_to_the_same_table(launcher: list[str], tmp_path: Path,
                                                                   trace_cache: str) -> None:
    if launcher:
        pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    _kill_and_resume(tmp_path, trace_cache, launcher, points=20, seed=20)
