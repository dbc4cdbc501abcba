"""Trace I/O benchmarks (group ``traces``) and the out-of-core replay (group ``scale``).

* Loading a trace (header checks, memory map, chunked validation) against a raw ``np.load`` of the
  same bytes, side by side in the same run (ratio in ``extra_info``).
* A trace far larger than one replay chunk, written to disk in chunks and replayed through the
  memory map in a separate process that reports its peak *anonymous* memory: file-backed pages of
  the map count in RSS while they are cached but the kernel drops them under pressure, so the
  honest figure for "does not load the whole trace" is the anonymous (heap) peak.

Size: ``MOESIM_BENCH_SCALE_MB`` (default 1024) MiB of expert ids when timing; a few MiB when the
benchmark only runs as a test (``--benchmark-disable``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from moesim.traces import io as trace_io
from moesim.traces.record_writer import ChunkedTraceWriter
from moesim.traces.synth import generate_preset
from moesim.traces.trace import Trace

pytestmark = pytest.mark.benchmark(group="traces")


def _tiled_trace(path: Path, target_bytes: int) -> Trace:
    """A gpt-oss-20b-shaped trace of about ``target_bytes`` of expert ids, written chunk by chunk
    (one synthetic block repeated with fresh request ids), never whole in memory."""
    block = generate_preset("gpt-oss-20b", seed=0, num_requests=4)
    step_bytes = block.num_layers * block.width * 2
    repeats = max(1, target_bytes // (block.num_steps * step_bytes))
    rid = np.asarray(block.request_id, np.int64)
    with ChunkedTraceWriter(path, {"experts": (block.num_layers, block.width), "request_id": ()},
                            chunk_steps=1 << 16) as writer:
        for i in range(repeats):
            writer.append({"experts": np.asarray(block.experts), "request_id": rid + i * (int(rid.max()) + 1)})
        return writer.close(block.meta.with_updates(notes="tiled benchmark trace"))


@pytest.fixture(scope="module")
def big_trace(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Trace:
    opt = request.config.getoption
    disabled = bool(opt("benchmark_disable", False)) and not bool(opt("benchmark_enable", False))
    mb = 4 if disabled else float(os.environ.get("MOESIM_BENCH_SCALE_MB", "1024"))
    return _tiled_trace(tmp_path_factory.mktemp("scale") / "big.safetensors", int(mb * 2**20))


def test_load_vs_raw_np_load(benchmark: Any, big_trace: Trace, tmp_path: Path) -> None:
    raw = tmp_path / "experts.npy"
    np.save(raw, np.asarray(big_trace.experts))
    nbytes = int(big_trace.experts.nbytes)

    def ours() -> int:
        t = trace_io.load(big_trace.file)  # memory map + header checks + chunked validation
        return int(t.experts[-1, 0, 0])

    def baseline() -> int:
        return int(np.load(raw)[-1, 0, 0])

    assert ours() == baseline()
    result = benchmark.pedantic(ours, rounds=3, iterations=1, warmup_rounds=1)
    assert result == baseline()
    if not benchmark.disabled:
        import time

        t0 = time.perf_counter()
        for _ in range(3):
            baseline()
        raw_s = (time.perf_counter() - t0) / 3
        ours_s = benchmark.stats.stats.min
        benchmark.extra_info.update(bytes=nbytes, gb_per_s=nbytes / ours_s / 1e9, np_load_gb_per_s=nbytes / raw_s / 1e9,
                                    ratio_vs_np_load=raw_s / ours_s)
    else:
        benchmark.extra_info.update(bytes=nbytes)


REPLAY_CHILD = textwrap.dedent("""
    import json, sys, threading, time
    from moesim.sim.replay import replay
    from moesim.traces import io

    peak = [0]
    stop = False
    def anon_kb():
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
        return 0
    def watch():
        while not stop:
            peak[0] = max(peak[0], anon_kb())
            time.sleep(0.005)
    base = anon_kb()
    t = io.load(sys.argv[1])
    replay(t.slice_steps(0, 64), "lru", int(sys.argv[2]))  # load the compiled code before timing
    w = threading.Thread(target=watch, daemon=True)
    w.start()
    t0 = time.perf_counter()
    res = replay(t, "lru", int(sys.argv[2]), chunk_steps=int(sys.argv[3]))
    dt = time.perf_counter() - t0
    stop = True
    w.join()
    print(json.dumps({"hits": res.hits, "accesses": res.accesses, "seconds": dt, "base_anon_kb": base,
                      "peak_anon_kb": max(peak[0], anon_kb())}))
""")


@pytest.mark.benchmark(group="scale")
def test_out_of_core_replay_keeps_memory_bounded(benchmark: Any, big_trace: Trace) -> None:
    chunk = 1 << 14  # steps per piece: 24 x 4 x 2 bytes x 16 k = 3 MiB of ids per chunk

    def child() -> dict[str, Any]:
        out = subprocess.run([sys.executable, "-c", REPLAY_CHILD, str(big_trace.file), "256", str(chunk)],
                             capture_output=True, text=True, check=True, timeout=1800)
        return json.loads(out.stdout.strip().splitlines()[-1])

    res = benchmark.pedantic(child, rounds=1, iterations=1)
    trace_bytes = int(big_trace.experts.nbytes)
    grew = (res["peak_anon_kb"] - res["base_anon_kb"]) * 1024
    benchmark.extra_info.update(trace_bytes=trace_bytes, accesses=res["accesses"],
                                accesses_per_s=res["accesses"] / res["seconds"],
                                peak_anon_mb=res["peak_anon_kb"] / 1024, anon_growth_mb=grew / 2**20)
    if benchmark.disabled:
        from moesim.sim.replay import replay

        direct = replay(big_trace, "lru", 256)
        assert (res["hits"], res["accesses"]) == (direct.hits, direct.accesses)
    elif trace_bytes >= 256 * 2**20:
        # The heap must not hold the trace: at most a few chunks' worth of working arrays.
        assert grew < trace_bytes / 4, (grew, trace_bytes)


def _run_app_measured(trace: Path, run_dir: Path) -> dict[str, Any]:
    """One ``moesim`` run on a trace file (affinity prefetch, the hierarchy path), in its own process,
    its anonymous memory polled from /proc every 5 ms: (seconds, peak anonymous MiB, metrics)."""
    import threading
    import time

    args = [sys.executable, "-m", "moesim.sim", "trace=file", f"trace.path={trace}", "prefetch=affinity",
            "cache.l1_experts=256", "quant.error_rows=0", f"hydra.run.dir={run_dir}"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def watch() -> None:
        while proc.poll() is None:
            try:
                with open(f"/proc/{proc.pid}/status") as fh:
                    for line in fh:
                        if line.startswith("RssAnon:"):
                            peak[0] = max(peak[0], int(line.split()[1]))
            except OSError:
                return
            time.sleep(0.005)

    w = threading.Thread(target=watch, daemon=True)
    w.start()
    _, err = proc.communicate(timeout=3600)
    seconds = time.perf_counter() - t0
    w.join()
    assert proc.returncode == 0, err[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "ok", metrics.get("error")
    return {"seconds": seconds, "peak_anon_mb": peak[0] / 1024, "metrics": metrics}


@pytest.mark.benchmark(group="scale")
def test_app_on_a_large_trace_file_stays_bounded_and_linear(benchmark: Any, tmp_path: Path,
                                                            request: pytest.FixtureRequest) -> None:
    """The Hydra app with the affinity prefetcher (every prefetch, the hierarchy and the timeline
    streamed piece by piece) on a trace of ``MOESIM_BENCH_APP_MB`` MiB of expert ids (default
    2048) and on one ten times smaller: peak anonymous memory and the time ratio (linear: ~10x)."""
    opt = request.config.getoption
    disabled = bool(opt("benchmark_disable", False)) and not bool(opt("benchmark_enable", False))
    big_mb = 4.0 if disabled else float(os.environ.get("MOESIM_BENCH_APP_MB", "2048"))
    small = _tiled_trace(tmp_path / "small.safetensors", int(big_mb / 10 * 2**20))
    big = _tiled_trace(tmp_path / "big.safetensors", int(big_mb * 2**20))
    _run_app_measured(Path(small.file), tmp_path / "warm")  # compiled code cached before timing
    runs: dict[str, dict[str, Any]] = {}

    def both() -> None:
        runs["small"] = _run_app_measured(Path(small.file), tmp_path / "small")
        runs["big"] = _run_app_measured(Path(big.file), tmp_path / "big")

    benchmark.pedantic(both, rounds=1, iterations=1)
    s, b = runs["small"], runs["big"]
    file_bytes = os.path.getsize(big.file)
    benchmark.extra_info.update(
        big_file_mb=file_bytes / 2**20, small_file_mb=os.path.getsize(small.file) / 2**20,
        big_seconds=b["seconds"], small_seconds=s["seconds"], time_ratio=b["seconds"] / s["seconds"],
        size_ratio=big.num_steps / small.num_steps, big_peak_anon_mb=b["peak_anon_mb"],
        small_peak_anon_mb=s["peak_anon_mb"], accesses=b["metrics"]["l1"]["accesses"],
        accesses_per_s=b["metrics"]["l1"]["accesses"] / b["seconds"])
    for r, tr in ((s, small), (b, big)):
        assert r["metrics"]["l1"]["accesses"] + r["metrics"]["l1"]["warmup"]["accesses"] == \
            int((np.asarray(tr.experts) >= 0).sum())


@pytest.mark.parametrize("name", ["gpt-oss-20b", "olmoe-1b-7b", "deepseek-v3"])
def test_generator_steps_per_second(benchmark: Any, name: str) -> None:
    """The synthetic generator (jitted row sampler, gates and request fields) on a model preset:
    steps/s and rows/s of ``generate_steps``; a few hundred steps when only run as a test."""
    from moesim.traces.synth import generate_steps, preset

    config = preset(name)
    steps = 256 if benchmark.disabled else 16384
    generate_steps(config, 64, seed=1)  # compile (or load) the kernel outside the timing

    def run() -> Trace:
        return generate_steps(config, steps, seed=0)

    trace = benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    assert trace.num_steps == steps
    rows = steps * config.num_layers
    benchmark.extra_info.update(steps=steps, rows=rows, experts=config.num_experts, top_k=config.top_k)
    if not benchmark.disabled:
        best = benchmark.stats.stats.min
        benchmark.extra_info.update(steps_per_s=steps / best, rows_per_s=rows / best)
