"""A whole miss-ratio sweep: 8 policies x 16 cache sizes through the public sweep helper.

``hit_ratio_curves(trace, policies, sizes, processes=2)`` on a gpt-oss-20b trace of 1,000,000 decode
steps (24 layers x 32 experts, top-4: 96 M accesses) from the preset fitted to real traces, for LRU,
FIFO, CLOCK, SIEVE, S3-FIFO, ARC, LFU and OPT at ``L * E / 16 ... L * E`` experts (48 ... 768). The
trace is generated once and kept in moesim's cache folder (``$MOESIM_CACHE/bench``); its generation
is not timed. The same-run baseline is one ``replay(trace, "lru", 192)`` of the same trace
(``extra_info``: ``sweep_s``, ``one_lru_replay_s``, their ratio), so that the load of the moment is
on record beside the sweep's time. Under ``--benchmark-disable`` the sweep runs once, in this
process, on 40 steps.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from moesim.sim.experiment import cache_root
from moesim.sim.mrc import hit_ratio_curves
from moesim.sim.replay import replay
from moesim.traces import io
from moesim.traces.synth import generate_preset
from moesim.traces.trace import Trace

pytestmark = pytest.mark.benchmark(group="sweep")

POLICIES = ("lru", "fifo", "clock", "sieve", "s3fifo", "arc", "lfu", "opt")
STEPS = 1_000_000
REQUESTS = 4_200  # the preset's requests average ~243 decode steps: enough for STEPS


def sweep_trace(steps: int) -> Trace:
    """The first ``steps`` steps of a seeded gpt-oss-20b trace, generated once and kept on disk."""
    path = cache_root() / "bench" / f"gpt-oss-20b-seed0-{REQUESTS}req-{steps}steps.safetensors"
    if not path.exists():
        tr = generate_preset("gpt-oss-20b", seed=0, num_requests=REQUESTS).slice_steps(0, steps)
        path.parent.mkdir(parents=True, exist_ok=True)
        io.save(tr, path)
    return io.load(path)


def test_eight_policies_sixteen_sizes(benchmark: Any) -> None:
    tr = sweep_trace(STEPS) if not benchmark.disabled else generate_preset("gpt-oss-20b", seed=0,
                                                                          num_requests=1).slice_steps(0, 40)
    L, E = tr.num_layers, tr.num_experts
    sizes = [L * E * i // 16 for i in range(1, 17)]
    processes = 1 if benchmark.disabled else 2
    curves = benchmark.pedantic(hit_ratio_curves, args=(tr, POLICIES, sizes), kwargs={"processes": processes},
                                rounds=1, iterations=1)
    # Spot checks against the one-replay-per-size answer (the tests hold every size on small traces).
    quarter = sizes[3]
    for policy in ("fifo", "arc"):
        assert curves[policy].hits[3] == replay(tr, policy, quarter).hits
    hits = np.array([curves[p].hits for p in POLICIES])
    assert (hits <= curves["opt"].hits).all()  # OPT bounds every demand-fetching policy
    if benchmark.disabled:
        return
    t0 = time.perf_counter()
    replay(tr, "lru", 192)
    one = time.perf_counter() - t0
    sweep_s = benchmark.stats.stats.min
    benchmark.extra_info.update(trace="gpt-oss-20b preset, seed 0, 1,000,000 decode steps",
                                accesses=curves["lru"].accesses, policies=list(POLICIES), sizes=sizes,
                                processes=processes, sweep_s=sweep_s, one_lru_replay_s=one,
                                sweep_over_one_lru_replay=sweep_s / one,
                                hit_ratio={p: curves[p].hit_ratio.round(4).tolist() for p in POLICIES})
