"""Simulator throughput: LRU on a gpt-oss-20b-shaped trace, every policy against libCacheSim, and the
one-pass LRU and OPT hit curves (every size) against one replay at one size.

Run ``python -m pytest bench/test_bench_sim.py --benchmark-enable -p no:cacheprovider`` for the
numbers (``extra_info`` holds accesses, accesses/s, hit counts and the speed ratio to libCacheSim,
from rounds of ours and theirs timed in alternation so that both see the same load).
With ``--benchmark-disable`` every benchmark runs once, on a small trace, as a test; the hit-count
agreements are asserted either way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from moesim.bench.conftest import Stream, bench_stream, bench_trace, best_rate, oracle_general
from moesim.sim.mrc import lru_hit_curve, opt_hit_curve
from moesim.sim.policies import get_policy, list_policies, needs_next_use, replay_rows, resolve_policy_params
from moesim.sim.replay import replay
from moesim.sim.rows import next_use_times

pytestmark = pytest.mark.benchmark(group="sim")

CAPACITY = 192  # a quarter of the 24 x 32 experts
ROUNDS = 5
SIDE_BY_SIDE_ROUNDS = 7  # rounds of ours and libCacheSim in alternation, for the speed ratio

# Our policy -> libCacheSim class name (libcachesim 0.3.5); policies missing here have no peer.
PEERS = {"lru": "LRU", "fifo": "FIFO", "opt": "Belady", "lfu": "LFU", "lfuda": "LFUDA", "clock": "Clock",
         "sieve": "Sieve", "arc": "ARC", "s3fifo": "S3FIFO", "twoq": "TwoQ", "lirs": "LIRS", "random": "Random"}
# Same definition request by request, so the hit counts must be equal: libCacheSim 0.3's LRU, FIFO,
# LFU, CLOCK, SIEVE, ARC and Belady follow the textbook definitions, as ours do (see the policies'
# docstrings); its S3-FIFO and 2Q give our hit counts too (the peer test checks all of these). LIRS
# differs slightly by design (see lirs.py), LFUDA ages differently, Random draws other numbers.
SAME_HITS = ("lru", "fifo", "opt", "lfu", "clock", "sieve", "arc", "s3fifo", "twoq")
# The policies that count in the layer clock: given the trace's layer context.
LAYER_CLOCK = tuple(n for n in list_policies() if getattr(get_policy(n), "LAYER_CLOCK", False))


def _rounds(benchmark: Any) -> int:
    return 1 if benchmark.disabled else ROUNDS


def _timed(fn: Callable[[], Any], rounds: int) -> tuple[float, Any]:
    """(fastest wall time, last result) of ``rounds`` calls."""
    best, out = float("inf"), None
    for _ in range(rounds):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _record(benchmark: Any, accesses: int, **extra: Any) -> float | None:
    rate = best_rate(benchmark, accesses)
    benchmark.extra_info.update(accesses=accesses, accesses_per_s=rate, **extra)
    return rate


# ---- LRU throughput ---------------------------------------------------------------------------

def test_lru_kernel_throughput(benchmark: Any) -> None:
    """The LRU replay loop alone on the trace's rows (shared cache, no Python between rows)."""
    s = bench_stream(benchmark)
    module = get_policy("lru")
    empty = np.zeros(0, np.int64)
    hits = np.zeros(len(s.keys), np.uint8)

    def setup() -> tuple[tuple, dict]:
        state = module.make_state(CAPACITY, s.num_keys, {}, 0)
        return (state, s.keys, s.row_ptr, s.row_time, empty, s.num_keys, hits), {}

    benchmark.pedantic(module.replay, setup=setup, rounds=_rounds(benchmark), warmup_rounds=1)
    expected, _ = replay_rows("lru", s.keys, s.row_ptr, s.row_time, CAPACITY, s.num_keys)
    assert hits.tolist() == expected.tolist()
    _record(benchmark, len(s.keys), hits=int(hits.sum()), capacity=CAPACITY)


def test_lru_engine_throughput(benchmark: Any) -> None:
    """``replay(trace, "lru", C)`` end to end: rows built from the trace, hits scattered back per layer."""
    trace = bench_trace(benchmark)
    result = benchmark.pedantic(replay, args=(trace, "lru", CAPACITY), rounds=_rounds(benchmark),
                                warmup_rounds=1)
    s = bench_stream(benchmark)
    expected, _ = replay_rows("lru", s.keys, s.row_ptr, s.row_time, CAPACITY, s.num_keys)
    assert result.hits == int(expected.sum()) and result.accesses == len(s.keys)
    _record(benchmark, result.accesses, hits=result.hits, capacity=CAPACITY)


# ---- every policy against libCacheSim -----------------------------------------------------------

def _params(policy: str, s: Stream) -> dict[str, Any] | None:
    if policy == "static":  # the most requested experts (an oracle choice; only the speed matters)
        counts = np.bincount(s.keys, minlength=s.num_keys)
        return {"keys": np.argsort(-counts, kind="stable")[:CAPACITY].tolist()}
    return None


def _ours(benchmark: Any, policy: str, s: Stream) -> tuple[np.ndarray, Callable[[], float]]:
    """Time our policy on the request stream ``s`` (one request per row) under pytest-benchmark:
    (its hit vector, a function that times one more replay from a fresh state in seconds)."""
    module = get_policy(policy)
    context = {"num_layers": s.num_layers, "num_experts": s.num_experts} if policy in LAYER_CLOCK else {}
    params = resolve_policy_params(module, _params(policy, s), **context)
    # An oracle policy runs in libCacheSim's clock (one tick per request): with the layer clock the
    # experts of one row would share a next-use time and tie, which libCacheSim never sees.
    times = np.arange(len(s.keys), dtype=np.int64) if needs_next_use(module) else s.row_time
    next_use = (next_use_times(s.keys, s.row_ptr, times, s.num_keys) if needs_next_use(module)
                else np.zeros(0, np.int64))
    hits = np.zeros(len(s.keys), np.uint8)

    def setup() -> tuple[tuple, dict]:
        state = module.make_state(CAPACITY, s.num_keys, params, 1)  # seed 1: a non-zero seed, as libCacheSim's
        return (state, s.keys, s.row_ptr, times, next_use, s.num_keys, hits), {}

    def once() -> float:
        args, _ = setup()
        t0 = time.perf_counter()
        module.replay(*args)
        return time.perf_counter() - t0

    benchmark.pedantic(module.replay, setup=setup, rounds=_rounds(benchmark), warmup_rounds=1)
    return hits, once


def _theirs(lcs: Any, policy: str, path: str) -> Callable[[], tuple[float, float]]:
    """A function that runs libCacheSim's peer of ``policy`` once over the oracleGeneral file:
    (seconds, object miss ratio)."""
    cls = getattr(lcs, PEERS[policy])

    def once() -> tuple[float, float]:
        t0 = time.perf_counter()
        cache = cls(CAPACITY, hashpower=12)  # 4096 buckets: ample for 768 experts, faster than 2^24
        reader = lcs.TraceReader(path, lcs.TraceType.ORACLE_GENERAL_TRACE)
        miss_ratio = cache.process_trace(reader)[0]  # (object miss ratio, byte miss ratio)
        return time.perf_counter() - t0, miss_ratio

    return once


def _side_by_side(ours: Callable[[], float], theirs: Callable[[], tuple[float, float]],
                  rounds: int) -> tuple[float, float, float]:
    """(our fastest seconds, their fastest seconds, their miss ratio), the two timed in alternation
    so that both see the same load on a shared machine (the ratio is what the benchmark reports).
    Each timed run follows an untimed run of the same tool: a run straight after the other tool's
    finds the caches filled with the other's data (its 36 MB trace file), which measurably slowed
    the cache-sensitive loops (ARC by ~13%) and is not how either tool runs in use."""
    best_ours = best_theirs = float("inf")
    miss_ratio = 0.0
    for _ in range(rounds):
        ours()
        best_ours = min(best_ours, ours())
        theirs()
        seconds, miss_ratio = theirs()
        best_theirs = min(best_theirs, seconds)
    return best_ours, best_theirs, miss_ratio


@pytest.fixture(scope="module")
def oracle_file(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Stream], str]:
    """The stream written once per size as an oracleGeneral trace."""
    written: dict[int, str] = {}

    def path_for(s: Stream) -> str:
        if len(s.keys) not in written:
            path = tmp_path_factory.mktemp("lcs") / "experts.oracleGeneral"
            oracle_general(s.keys, s.num_keys).tofile(path)
            written[len(s.keys)] = str(path)
        return written[len(s.keys)]

    return path_for


@pytest.mark.parametrize("policy", list_policies())
def test_policy_against_libcachesim(benchmark: Any, policy: str, oracle_file: Callable[[Stream], str]) -> None:
    """Our policy and libCacheSim's on one request stream (the trace's rows, one expert at a time)."""
    s = bench_stream(benchmark).flattened()
    hits, ours_once = _ours(benchmark, policy, s)
    ours_rate = _record(benchmark, len(s.keys), hits=int(hits.sum()), capacity=CAPACITY)
    if policy not in PEERS:
        benchmark.extra_info["libcachesim"] = "no peer"
        return
    lcs = pytest.importorskip("libcachesim")
    rounds = 1 if benchmark.disabled else SIDE_BY_SIDE_ROUNDS
    ours_s, theirs_s, miss_ratio = _side_by_side(ours_once, _theirs(lcs, policy, oracle_file(s)), rounds)
    their_hits = round(len(s.keys) * (1.0 - miss_ratio))  # ratios back to counts
    benchmark.extra_info.update(libcachesim_class=PEERS[policy], libcachesim_hits=their_hits,
                                libcachesim_accesses_per_s=len(s.keys) / theirs_s,
                                side_by_side_accesses_per_s=len(s.keys) / ours_s,
                                speed_ratio=None if ours_rate is None else theirs_s / ours_s)
    if policy in SAME_HITS:
        assert int(hits.sum()) == their_hits, (policy, int(hits.sum()), their_hits)


# ---- one-pass hit curves ------------------------------------------------------------------------

def _curve_vs_one_replay(benchmark: Any, trace: Any, curve_of: Any, policy: str) -> tuple[Any, float, float]:
    """``curve_of(trace)`` (every size, one pass) and ``replay(trace, policy, CAPACITY)`` timed in
    alternation, fastest of each kept; the curve's hits at CAPACITY must equal the replay's."""
    rounds = 1 if benchmark.disabled else SIDE_BY_SIDE_ROUNDS
    curve_of(trace)
    replay(trace, policy, CAPACITY)
    best_curve = best_one = float("inf")
    curve = one = None
    for _ in range(rounds):
        t0 = time.perf_counter()
        curve = curve_of(trace)
        best_curve = min(best_curve, time.perf_counter() - t0)
        t0 = time.perf_counter()
        one = replay(trace, policy, CAPACITY)
        best_one = min(best_one, time.perf_counter() - t0)
    assert curve is not None and one is not None
    assert curve.hits[list(curve.sizes).index(CAPACITY)] == one.hits
    benchmark.pedantic(curve_of, args=(trace,), rounds=_rounds(benchmark), warmup_rounds=1)
    return curve, best_curve, best_one


def test_lru_curve_one_pass_vs_one_replay(benchmark: Any) -> None:
    """LRU hits at every size (``lru_hit_curve(trace)``: 1 ... L * E) against ONE ``replay`` at one
    size, alternated round by round (``vs_one_replay``: the curve's time over the replay's; goal <= 2);
    and against one replay per size at 12 sizes (``speedup_vs_separate``)."""
    trace = bench_trace(benchmark)
    curve, best_curve, best_one = _curve_vs_one_replay(benchmark, trace, lru_hit_curve, "lru")
    sizes = list(range(64, 64 * 13, 64))
    separate_s, separate = _timed(lambda: [replay(trace, "lru", c).hits for c in sizes], _rounds(benchmark))
    assert [curve.hits[list(curve.sizes).index(c)] for c in sizes] == separate
    _record(benchmark, trace.num_accesses(), sizes=len(curve.sizes), curve_s=best_curve, one_replay_s=best_one,
            vs_one_replay=best_curve / best_one, separate_runs_12_s=separate_s,
            speedup_vs_separate=separate_s / best_curve)


def test_opt_curve_one_pass_vs_one_replay(benchmark: Any) -> None:
    """OPT hits at every size from one pass (``opt_hit_curve``) against one OPT ``replay`` at one size,
    alternated (``vs_one_replay``)."""
    trace = bench_trace(benchmark)
    curve, best_curve, best_one = _curve_vs_one_replay(benchmark, trace, opt_hit_curve, "opt")
    _record(benchmark, trace.num_accesses(), sizes=len(curve.sizes), curve_s=best_curve, one_replay_s=best_one,
            vs_one_replay=best_curve / best_one)
