"""From cache hits to seconds: the timeline of a decode run, piece by piece.

The timeline (one decode step = one token for each active sequence):

* For each MoE layer (row ``r``), the attention / dense part runs first: ``attn[r]`` seconds.
  When it ends the router has chosen the row's experts: the row's demand misses are issued to the
  links, followed by the prefetches the prefetcher issues at this row.
* Transfers: an expert from DRAM crosses the host-to-device link (PCIe); one from the SSD first
  crosses the SSD -> DRAM link, then the PCIe link. Each link serves one transfer at a time in
  issue order (FIFO) and a transfer takes ``latency + bytes / bandwidth``; the two links run in
  parallel with each other and with compute, so a prefetch issued at an earlier layer overlaps
  that layer's compute.
* The layer's expert computation starts when the attention part has ended and every expert of
  the row is resident (an L1 hit whose prefetch is still in flight waits for it); it takes
  ``expert[r]`` seconds. The wait, if any, is the row's *stall*.
* After the last layer the step spends ``head[t]`` seconds in the LM head; the next step starts.

Compute times come from the profiles (decode is memory-bound at small batch): a part reading
``b`` bytes of weights and doing ``f`` FLOPs takes ``max(b / GPU bandwidth, f / GPU FLOP/s)``.
Per row: ``attn = layer_overhead + max(dense bytes / bw, B * dense FLOPs / F)`` and
``expert = max(n_r * expert bytes / bw, B * top_k * 2 * expert params / F)`` with ``n_r`` the
row's distinct experts (pinned ones included) and ``B`` the step's active sequences (a batch of
``B`` also widens the row to the union of the sequences' experts). KV-cache reads,
dequantisation cost and transfers of demoted experts (GPU -> DRAM, the other PCIe direction) are
not modelled.

Two jitted loops give the same timeline: :func:`timeline_events` reads every transfer (what the
hierarchy produces), :func:`timeline_misses` only the number of demand misses per row, which is all
there is to know when DRAM holds the whole model and nothing is prefetched (each row then waits for
exactly its own misses). Both carry their clocks in a :class:`Clock` from piece to piece; the tests
hold them to each other and to a plain-Python twin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from moesim.kernels.jit import njit
from moesim.sim.hierarchy import SRC_SSD
from moesim.sim.profiles import GB, HardwareProfile, ModelProfile


@dataclass(frozen=True)
class Links:
    """Transfer costs of one expert: seconds per byte and fixed seconds per transfer, per link."""

    h2d_s_per_byte: float
    h2d_latency_s: float
    ssd_s_per_byte: float
    ssd_latency_s: float

    @classmethod
    def from_hardware(cls, hw: HardwareProfile, *, need_ssd: bool) -> Links:
        hw.require("h2d_bandwidth_gbps", "h2d_latency_us")
        if need_ssd:
            hw.require("nvme_bandwidth_gbps", "nvme_latency_us")
        ssd_bw = hw.nvme_bandwidth_gbps or math.inf
        return cls(1.0 / (float(hw.h2d_bandwidth_gbps) * GB), float(hw.h2d_latency_us) * 1e-6,  # type: ignore[arg-type]
                   1.0 / (float(ssd_bw) * GB), float(hw.nvme_latency_us or 0.0) * 1e-6)

    def costs(self, bytes_per_expert: float) -> tuple[float, float]:
        """Seconds one expert spends on (PCIe, SSD)."""
        return (self.h2d_latency_s + bytes_per_expert * self.h2d_s_per_byte,
                self.ssd_latency_s + bytes_per_expert * self.ssd_s_per_byte)


@dataclass(frozen=True)
class ComputeModel:
    """Per-row and per-step compute seconds from the model and hardware profiles (module docstring)."""

    layer_overhead_s: float
    dense_bytes: float
    dense_flops: float
    expert_bytes: float  # the bytes the expert GEMMs read (the compute format's)
    expert_flops: float  # 2 * params * top_k per sequence
    head_bytes: float
    head_flops: float
    bandwidth: float  # GPU memory, bytes/s
    flops: float  # GPU, FLOP/s

    @classmethod
    def from_profiles(cls, model: ModelProfile, hw: HardwareProfile, compute_format: str) -> ComputeModel:
        hw.require("gpu_bandwidth_gbps", "gpu_tflops")
        return cls(hw.layer_overhead_us * 1e-6, float(model.dense_bytes_per_layer()),
                   float(model.dense_flops_per_token_layer()), float(model.expert_bytes(compute_format)),
                   float(model.top_k * 2.0 * model.expert_params), float(model.other_bytes()),
                   float(2.0 * model.other_params), hw.gpu_bandwidth_bps, hw.gpu_flops)

    def times(self, widths: np.ndarray, active: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(attn ``[T, L]``, expert ``[T, L]``, head ``[T]``) seconds for rows of ``widths[t, l]``
        distinct experts and ``active[t]`` sequences."""
        B = np.asarray(active, np.float64)[:, None]
        n = np.asarray(widths, np.float64)
        attn = self.layer_overhead_s + np.maximum(self.dense_bytes / self.bandwidth,
                                                  B * self.dense_flops / self.flops)
        attn = np.broadcast_to(attn, n.shape).copy()
        expert = np.maximum(n * self.expert_bytes / self.bandwidth, B * self.expert_flops / self.flops)
        expert[n == 0] = 0.0
        head = np.maximum(self.head_bytes / self.bandwidth, B[:, 0] * self.head_flops / self.flops)
        return attn, expert, head


# clock[] slots: the time now, when each link is next free, and each link's busy seconds.
K_NOW, K_H2D_FREE, K_SSD_FREE, K_H2D_BUSY, K_SSD_BUSY = range(5)


@dataclass(eq=False)
class Clock:
    """The timeline's state between pieces: the clocks and when each key is (or was) ready on the GPU."""

    clock: np.ndarray  # float64 [5]
    ready: np.ndarray  # float64 [L * E]

    @classmethod
    def start(cls, num_keys: int) -> Clock:
        return cls(np.zeros(5), np.zeros(num_keys))


@njit
def timeline_events(row_ptr, keys, num_layers, attn, expert, head, ev_row, ev_key, ev_src, h2d_cost, ssd_cost,
                    clock, ready, step_time, stall):
    """One piece (rows ``t * L + l``, every row present): fill ``step_time[t]`` and ``stall[t, l]``
    from the transfers ``ev_*`` (rows relative to the piece, in issue order)."""
    now = clock[K_NOW]
    h2d_free = clock[K_H2D_FREE]
    ssd_free = clock[K_SSD_FREE]
    e = 0
    n_ev = ev_row.shape[0]
    T = step_time.shape[0]
    for t in range(T):
        start = now
        for layer in range(num_layers):
            r = t * num_layers + layer
            routed = now + attn[t, layer]
            while e < n_ev and ev_row[e] == r:
                at = routed
                if ev_src[e] == SRC_SSD:
                    at = max(at, ssd_free) + ssd_cost
                    ssd_free = at
                    clock[K_SSD_BUSY] += ssd_cost
                done = max(at, h2d_free) + h2d_cost
                h2d_free = done
                clock[K_H2D_BUSY] += h2d_cost
                ready[ev_key[e]] = done
                e += 1
            go = routed
            for i in range(row_ptr[r], row_ptr[r + 1]):
                if ready[keys[i]] > go:
                    go = ready[keys[i]]
            stall[t, layer] = go - routed
            now = go + expert[t, layer]
        now += head[t]
        step_time[t] = now - start
    clock[K_NOW] = now
    clock[K_H2D_FREE] = h2d_free
    clock[K_SSD_FREE] = ssd_free


@njit
def timeline_misses(misses, attn, expert, head, h2d_cost, clock, step_time, stall):
    """:func:`timeline_events` when every transfer is a demand miss from DRAM: a row waits for its own
    ``misses[t, l]`` transfers, which queue on the PCIe link behind nothing (the previous row waited
    for its own). The same float operations in the same order, so the same times bit for bit."""
    now = clock[K_NOW]
    h2d_free = clock[K_H2D_FREE]
    T, L = misses.shape
    for t in range(T):
        start = now
        for layer in range(L):
            routed = now + attn[t, layer]
            go = routed
            for _ in range(misses[t, layer]):
                done = max(routed, h2d_free) + h2d_cost
                h2d_free = done
                clock[K_H2D_BUSY] += h2d_cost
                if done > go:
                    go = done
            stall[t, layer] = go - routed
            now = go + expert[t, layer]
        now += head[t]
        step_time[t] = now - start
    clock[K_NOW] = now
    clock[K_H2D_FREE] = h2d_free


def timeline_reference(widths_steps: list[list[list[int]]], attn: np.ndarray, expert: np.ndarray,
                       head: np.ndarray, events: list[tuple[int, int, int]], h2d_cost: float,
                       ssd_cost: float) -> tuple[np.ndarray, np.ndarray]:
    """Plain-Python timeline over a whole run: ``widths_steps[t][l]`` are the row's keys (pinned
    excluded), ``events`` (row, key, source) in issue order. Returns (seconds per step, stall per row)."""
    T = len(widths_steps)
    L = len(widths_steps[0]) if T else 0
    ready: dict[int, float] = {}
    free = {"h2d": 0.0, "ssd": 0.0}
    by_row: dict[int, list[tuple[int, int]]] = {}
    for r, k, s in events:
        by_row.setdefault(r, []).append((k, s))
    now = 0.0
    step_time = np.zeros(T)
    stall = np.zeros((T, L))
    for t in range(T):
        start = now
        for layer in range(L):
            r = t * L + layer
            routed = now + float(attn[t, layer])
            for k, s in by_row.get(r, []):
                at = routed
                if s == SRC_SSD:
                    at = max(at, free["ssd"]) + ssd_cost
                    free["ssd"] = at
                free["h2d"] = max(at, free["h2d"]) + h2d_cost
                ready[k] = free["h2d"]
            go = max([routed] + [ready.get(k, 0.0) for k in widths_steps[t][layer]])
            stall[t, layer] = go - routed
            now = go + float(expert[t, layer])
        now += float(head[t])
        step_time[t] = now - start
    return step_time, stall


__all__ = ["Clock", "ComputeModel", "Links", "timeline_events", "timeline_misses", "timeline_reference"]
