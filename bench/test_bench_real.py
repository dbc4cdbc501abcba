"""``replay()`` end to end on the real OLMoE trace against libCacheSim on the same accesses.

The trace (``../shared/data/olmoe-1b-7b``: 16 layers x 64 experts, top-8, 51,112 decode steps,
6.54 M accesses) is replayed two ways through the public call, ``replay(trace, policy, C)``:

* **stream**: one expert per row (a ``[6.54 M, 1, 1]`` trace over the 1,024 keys ``l * 64 + e``), the
  request stream a simulator without rows reads;
* **rows**: the trace as recorded, rows of 8 experts served together.

libCacheSim 0.3.5 serves the same stream (its ``process_trace`` alone: the reader and the cache are
made before the clock starts, one request per expert, object size 1), at sizes 1/16 to 1/2 of the
key space; the three are timed in alternation, the fastest round of each kept, so that all see the
same load. ``extra_info`` holds, per size, our accesses/s and the ratios to libCacheSim's time
(``stream_vs_libcachesim``, ``rows_vs_libcachesim``). Policies without a peer (watermark,
layer-aware, static) are timed against LRU the same way (``vs_lru``: their speed over LRU's).

Skipped when the shared data folder is absent. Under ``--benchmark-disable`` every test runs once on
the first 32 steps.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from moesim.bench.conftest import oracle_general
from moesim.sim.replay import replay
from moesim.traces.importers import import_olmoe_npz, shared_data_dir
from moesim.traces.trace import Trace, TraceMeta, make_trace

pytestmark = pytest.mark.benchmark(group="real")

FRACTIONS = (16, 8, 4, 2)  # cache sizes: 1/16 ... 1/2 of the 1,024 keys
ROUNDS = 3
# Our policy -> libCacheSim class (0.3.5); the hit counts must be equal on the stream for SAME_HITS.
PEERS = {"lru": "LRU", "fifo": "FIFO", "opt": "Belady", "lfu": "LFU", "lfuda": "LFUDA", "clock": "Clock",
         "sieve": "Sieve", "arc": "ARC", "s3fifo": "S3FIFO", "twoq": "TwoQ", "lirs": "LIRS", "random": "Random"}
SAME_HITS = ("lru", "fifo", "opt", "lfu", "clock", "sieve", "arc", "s3fifo", "twoq")
NO_PEER = ("watermark", "layeraware", "static")


@functools.cache
def _olmoe(steps: int | None) -> Trace | None:
    data = shared_data_dir()
    path = None if data is None else data / "olmoe-1b-7b" / "olmoe_decode_all.npz"
    if path is None or not path.exists():
        return None
    tr = import_olmoe_npz(path)
    return tr if steps is None else tr.slice_steps(0, steps)


def olmoe(benchmark: Any) -> Trace:
    tr = _olmoe(32 if benchmark.disabled else None)
    if tr is None:
        pytest.skip("the shared OLMoE trace is not available")
    return tr


@functools.cache
def _stream(tr: Trace) -> Trace:
    """One expert per row, keys ``l * E + e`` in the trace's order."""
    ex = np.asarray(tr.experts)
    L, E = tr.num_layers, tr.num_experts
    keys = (ex + (np.arange(L) * E)[None, :, None])[ex >= 0].astype(np.int16)
    return make_trace(keys.reshape(-1, 1, 1), TraceMeta(f"{tr.meta.model} as a stream", 1, L * E, 1))


def fastest(fns: dict[str, Callable[[], Any]], rounds: int) -> tuple[dict[str, float], dict[str, Any]]:
    """The fastest of ``rounds`` alternated rounds of each function (one untimed call each first, to
    load compiled code and fault the pages in), and each one's last result."""
    out = {name: fn() for name, fn in fns.items()}
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            out[name] = fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best, out


@pytest.fixture(scope="module")
def oracle_file(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Trace], str]:
    written: dict[int, str] = {}

    def path_for(stream: Trace) -> str:
        if stream.num_steps not in written:
            path = tmp_path_factory.mktemp("lcs") / "olmoe.oracleGeneral"
            keys = np.asarray(stream.experts).reshape(-1).astype(np.int32)
            oracle_general(keys, stream.num_experts).tofile(path)
            written[stream.num_steps] = str(path)
        return written[stream.num_steps]

    return path_for


@pytest.mark.parametrize("policy", sorted(PEERS))
def test_replay_against_libcachesim(benchmark: Any, policy: str, oracle_file: Callable[[Trace], str]) -> None:
    lcs = pytest.importorskip("libcachesim")
    tr = olmoe(benchmark)
    stream = _stream(tr)
    path = oracle_file(stream)
    n = stream.num_steps
    keys = tr.num_layers * tr.num_experts
    rounds = 1 if benchmark.disabled else ROUNDS
    per_size: dict[int, dict[str, Any]] = {}
    for frac in FRACTIONS:
        size = keys // frac
        cls = getattr(lcs, PEERS[policy])
        best = {"stream": float("inf"), "rows": float("inf"), "libcachesim": float("inf")}
        ours_stream = ours_rows = None
        miss_ratio = 0.0
        replay(stream, policy, size, seed=1)
        replay(tr, policy, size, seed=1)
        for _ in range(rounds):
            t0 = time.perf_counter()
            ours_stream = replay(stream, policy, size, seed=1)
            best["stream"] = min(best["stream"], time.perf_counter() - t0)
            t0 = time.perf_counter()
            ours_rows = replay(tr, policy, size, seed=1)
            best["rows"] = min(best["rows"], time.perf_counter() - t0)
            # libCacheSim's simulate call alone: its cache (4,096 hash buckets: ample for 1,024 keys,
            # faster than the default 2^24) and its reader are made before the clock starts.
            cache = cls(size, hashpower=12)
            reader = lcs.TraceReader(path, lcs.TraceType.ORACLE_GENERAL_TRACE)
            t0 = time.perf_counter()
            miss_ratio = cache.process_trace(reader)[0]  # (object miss ratio, byte miss ratio)
            best["libcachesim"] = min(best["libcachesim"], time.perf_counter() - t0)
        assert ours_stream is not None and ours_rows is not None
        their_hits = round(n * (1.0 - miss_ratio))
        if policy in SAME_HITS:
            assert ours_stream.hits == their_hits, (policy, size, ours_stream.hits, their_hits)
        per_size[size] = {
            "stream_accesses_per_s": n / best["stream"], "rows_accesses_per_s": n / best["rows"],
            "libcachesim_accesses_per_s": n / best["libcachesim"],
            "stream_vs_libcachesim": best["libcachesim"] / best["stream"],
            "rows_vs_libcachesim": best["libcachesim"] / best["rows"],
            "hits_stream": ours_stream.hits, "hits_rows": ours_rows.hits, "libcachesim_hits": their_hits}
    mid = keys // 4
    result = benchmark.pedantic(replay, args=(stream, policy, mid), kwargs={"seed": 1}, rounds=rounds,
                                warmup_rounds=1)
    assert result.accesses == n
    benchmark.extra_info.update(
        trace="OLMoE-1B-7B decode (shared data)", accesses=n, libcachesim_class=PEERS[policy],
        sizes={str(k): v for k, v in per_size.items()},
        min_stream_vs_libcachesim=min(v["stream_vs_libcachesim"] for v in per_size.values()),
        min_rows_vs_libcachesim=min(v["rows_vs_libcachesim"] for v in per_size.values()))


def _params(policy: str, tr: Trace, size: int) -> dict[str, Any] | None:
    if policy != "static":
        return None
    ex = np.asarray(tr.experts)
    keys = (ex + (np.arange(tr.num_layers) * tr.num_experts)[None, :, None])[ex >= 0]
    counts = np.bincount(keys, minlength=tr.num_layers * tr.num_experts)
    return {"keys": np.argsort(-counts, kind="stable")[:size].tolist()}  # the hottest (only speed matters)


@pytest.mark.parametrize("policy", NO_PEER)
def test_replay_against_lru(benchmark: Any, policy: str) -> None:
    """Policies without a libCacheSim peer against our LRU, on the trace's own rows."""
    tr = olmoe(benchmark)
    keys = tr.num_layers * tr.num_experts
    n = tr.num_accesses()
    rounds = 1 if benchmark.disabled else ROUNDS
    per_size = {}
    for frac in FRACTIONS:
        size = keys // frac
        params = _params(policy, tr, size)
        best, _ = fastest({"lru": lambda s=size: replay(tr, "lru", s),
                           policy: lambda s=size, p=params: replay(tr, policy, s, params=p)}, rounds)
        per_size[str(size)] = {"accesses_per_s": n / best[policy], "lru_accesses_per_s": n / best["lru"],
                               "vs_lru": best["lru"] / best[policy]}
    mid = keys // 4
    benchmark.pedantic(replay, args=(tr, policy, mid), kwargs={"params": _params(policy, tr, mid)},
                       rounds=rounds, warmup_rounds=1)
    benchmark.extra_info.update(trace="OLMoE-1B-7B decode (shared data)", accesses=n, sizes=per_size,
                                min_vs_lru=min(v["vs_lru"] for v in per_size.values()))
