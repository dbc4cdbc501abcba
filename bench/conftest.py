"""Shared inputs of the simulator benchmarks: traces, their request streams and rates.

Every benchmark also runs as a plain test under ``--benchmark-disable`` (the default in
pyproject): then ``benchmark.disabled`` is true, the function runs once, and the inputs shrink to a
few requests of the same shape so the whole file stays quick.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
from moesim.sim.row_loop import NEVER
from moesim.sim.rows import next_use_times
from moesim.traces.synth import generate_preset
from moesim.traces.trace import Trace

# Requests of the gpt-oss-20b preset (24 layers, top-4 of 32 experts): about 23 k accesses each.
REQUESTS_ENABLED = 64
REQUESTS_DISABLED = 2


@functools.cache
def gpt_oss_trace(num_requests: int) -> Trace:
    return generate_preset("gpt-oss-20b", seed=0, num_requests=num_requests)


def bench_trace(benchmark: Any) -> Trace:
    """The gpt-oss-20b-shaped trace, small when the benchmark only runs as a test."""
    return gpt_oss_trace(REQUESTS_DISABLED if benchmark.disabled else REQUESTS_ENABLED)


@dataclass(frozen=True)
class Stream:
    """A trace as CSR rows of shared-cache keys ``l * E + e`` (row ``t * L + l`` at step ``t * L + l``)."""

    keys: np.ndarray  # int32
    row_ptr: np.ndarray  # int64
    row_time: np.ndarray  # int64: the layer-clock step of each row
    num_layers: int
    num_experts: int

    @property
    def num_keys(self) -> int:
        return self.num_layers * self.num_experts

    def flattened(self) -> Stream:
        """One request per row, in row order, each at its own row's step: the request stream a
        cache simulator without rows (libCacheSim) reads."""
        n = len(self.keys)
        widths = np.diff(self.row_ptr)
        return Stream(self.keys, np.arange(n + 1, dtype=np.int64), np.repeat(self.row_time, widths),
                      self.num_layers, self.num_experts)


@functools.cache
def _stream(num_requests: int) -> Stream:
    trace = gpt_oss_trace(num_requests)
    ex = np.asarray(trace.experts)
    T, L, K = ex.shape
    E = trace.num_experts
    flat = ex.reshape(T * L, K)
    valid = flat >= 0
    layer = np.tile(np.arange(L, dtype=np.int64), T)
    keys = (flat + layer[:, None] * E)[valid].astype(np.int32)
    row_ptr = np.r_[0, np.cumsum(valid.sum(axis=1))].astype(np.int64)
    return Stream(keys, row_ptr, np.arange(T * L, dtype=np.int64), L, E)


def bench_stream(benchmark: Any) -> Stream:
    return _stream(REQUESTS_DISABLED if benchmark.disabled else REQUESTS_ENABLED)


def oracle_general(keys: np.ndarray, num_keys: int) -> np.ndarray:
    """Records of libCacheSim's ``oracleGeneral`` binary format, one request per key, size 1.

    ``next_access_vtime`` is the index of the key's next request (-1: none); Belady reads it and is
    silently wrong without it.
    """
    n = len(keys)
    nxt = next_use_times(keys, np.arange(n + 1, dtype=np.int64), np.arange(n, dtype=np.int64), num_keys)
    rec = np.zeros(n, np.dtype([("time", "<u4"), ("obj_id", "<u8"), ("size", "<u4"), ("next", "<i8")]))
    rec["time"] = np.arange(n)
    rec["obj_id"] = keys.astype(np.uint64) + 1
    rec["size"] = 1
    rec["next"] = np.where(nxt == NEVER, -1, nxt)
    return rec


def best_rate(benchmark: Any, accesses: int) -> float | None:
    """Accesses per second of the fastest measured round (None when benchmarks are disabled)."""
    stats = getattr(benchmark, "stats", None)
    if stats is None:
        return None
    return accesses / stats.stats.min
