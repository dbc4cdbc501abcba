"""From cache hits to seconds: the timeline of a decode run, piece by piece.

The timeline (one decode step = one token for each active sequence):

* For each MoE layer (row ``r``), the attention / dense part runs first: ``attn[r]`` seconds.
  When it ends the router has chosen the row's experts: the row's demand misses are issued to the
  links, followed by the prefetches the prefetcher issues at this row.
* Transfers: an expert from DRAM crosses the *fetch link* into the fast tier; one from the SSD
  first crosses the SSD -> DRAM link, then the fetch link. Each link serves one transfer at a time
  in issue order (FIFO); the two links run in parallel with each other and with compute, so a
  prefetch issued at an earlier layer overlaps that layer's compute.
* The layer's expert computation starts when the attention part has ended and every expert of
  the row is resident (an L1 hit whose prefetch is still in flight waits for it); it takes
  ``expert[r]`` seconds. The wait, if any, is the row's *stall*.
* After the last layer the step spends ``head[t]`` seconds in the LM head; the next step starts.

The terms, each from the hardware profile (:class:`sim.profiles.HardwareProfile`; ``moesim-measure``
writes one for the machine it runs on) and the model profile, none fitted to a run:

* **Compute** (decode is memory-bound at small batch): a part reading ``b`` bytes of weights and
  doing ``f`` FLOPs takes ``max(b / bandwidth, f / FLOP/s)`` of the device that runs the model
  (the GPU, or the CPU when the fast tier is host memory). Per row: ``attn = layer_overhead +
  max(dense bytes / bw, B * dense FLOPs / F)`` and ``expert = max(n_r * expert bytes / bw,
  B * top_k * 2 * expert params / F)`` with ``n_r`` the row's distinct experts (pinned ones
  included) and ``B`` the step's active sequences (a batch of ``B`` also widens the row to the
  union of the sequences' experts); the expert bytes are those of the format the GEMMs read
  (``compute_format``: the stored format for fused kernels, float32 for a CPU that decodes first).
* **A transfer on the fetch link** takes ``latency + bytes / bandwidth`` of the host-to-device
  copy (a GPU fast tier; nothing for a host-memory fast tier, where nothing is copied), plus
  ``bytes / decode rate`` when the profile lists a decode rate for the stored format
  (``decode_gbps``: the fast tier turns the stored bytes into compute-ready weights on every
  fetch, e.g. MXFP4 -> float32 on a CPU; a format not listed is read as stored, no decode time).
  On the SSD link it takes ``latency + bytes / bandwidth`` of the disk.
* **Hand-off** (``handoff_us``): a link is served by a worker that sleeps while it has nothing to
  do, and a computation waiting for a transfer sleeps too. A transfer whose input is ready when
  its link has gone idle starts only once the worker is woken, and a row that stalled resumes only
  once the computation is woken: each adds the hand-off latency. On a GPU (a copy engine and a
  stream event) it is 0; between two busy threads of a loaded CPU it is the scheduler's latency,
  milliseconds.
* **Contention** (``compute_slowdown``, ``fetch_slowdown``): when the fetch link and the compute
  share cores and memory bandwidth (a CPU decoding on one thread while it runs the model on
  another), each runs slower while the other runs: a computation takes ``compute_slowdown`` times
  as long while a transfer is in progress on the fetch link, and the transfer ``fetch_slowdown``
  times as long while the computation runs. While the computation waits (a stall), the transfer
  runs at full speed. The timeline then shares time between the two (:func:`timeline_shared`),
  which needs the fetch link's queue; with both factors 1 (every GPU profile) the plain loops run.

Not modelled: KV-cache reads, transfers of demoted experts (GPU -> DRAM, the other PCIe
direction), the page cache, a disk that slows under CPU load.

Three jitted loops give the timeline: :func:`timeline_events` reads every transfer (what the
hierarchy produces), :func:`timeline_misses` only the number of demand misses per row, which is all
there is to know when DRAM holds the whole model and nothing is prefetched (each row then waits for
exactly its own misses, so no transfer ever overlaps compute and contention is moot), and
:func:`timeline_shared` the events with contention. All carry their clocks in a :class:`Clock` from
piece to piece; the tests hold the first two to each other and to a plain-Python twin bit for bit,
and the third to a discrete-event twin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from moesim.kernels.jit import njit
from moesim.sim.hierarchy import SRC_SSD
from moesim.sim.profiles import GB, HardwareProfile, ModelProfile, ProfileError


@dataclass(frozen=True)
class Links:
    """Transfer costs of one expert (seconds per byte and fixed seconds per transfer, per link) and
    the contention between fetches and compute (see the module docstring)."""

    h2d_s_per_byte: float
    h2d_latency_s: float
    ssd_s_per_byte: float
    ssd_latency_s: float
    decode_s_per_byte: float = 0.0
    handoff_s: float = 0.0
    compute_slowdown: float = 1.0
    fetch_slowdown: float = 1.0

    @classmethod
    def from_hardware(cls, hw: HardwareProfile, *, need_ssd: bool, weight_format: str | None = None) -> Links:
        """The links of ``hw`` for experts stored in ``weight_format`` (its decode time on a fetch;
        ``None``: no decode)."""
        decode = hw.decode_s_per_byte(weight_format) if weight_format is not None else 0.0
        if hw.fast_tier == "host":
            # The cache is in host memory: a fetch is a decode of the stored bytes, nothing is copied.
            if weight_format is not None and decode == 0.0:
                raise ProfileError(f"hardware profile '{hw.name}': the fast tier is host memory, so a fetch is a "
                                   f"decode, but 'decode_gbps' has no entry for {weight_format!r} (measure it with "
                                   "moesim-measure --model)")
            h2d_s_per_byte, h2d_latency_s = 0.0, 0.0
        else:
            hw.require("h2d_bandwidth_gbps", "h2d_latency_us")
            h2d_s_per_byte = 1.0 / (float(hw.h2d_bandwidth_gbps) * GB)  # type: ignore[arg-type]
            h2d_latency_s = float(hw.h2d_latency_us) * 1e-6  # type: ignore[arg-type]
        if need_ssd:
            hw.require("nvme_bandwidth_gbps", "nvme_latency_us")
        ssd_bw = hw.nvme_bandwidth_gbps or math.inf
        return cls(h2d_s_per_byte, h2d_latency_s, 1.0 / (float(ssd_bw) * GB), float(hw.nvme_latency_us or 0.0) * 1e-6,
                   decode, hw.handoff_us * 1e-6, float(hw.compute_slowdown), float(hw.fetch_slowdown))

    @property
    def contended(self) -> bool:
        """Whether fetches and compute slow each other down (the timeline then shares time)."""
        return self.compute_slowdown != 1.0 or self.fetch_slowdown != 1.0

    def costs(self, bytes_per_expert: float) -> tuple[float, float]:
        """Seconds one expert spends on (the fetch link, the SSD) when nothing else runs. Without a
        decode (zero) this is ``latency + bytes / bandwidth`` to the last bit."""
        return (self.h2d_latency_s + bytes_per_expert * self.h2d_s_per_byte + bytes_per_expert * self.decode_s_per_byte,
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
    """The timeline's state between pieces: the clocks and when each key is (or was) ready on the GPU.

    For the shared-time timeline (:func:`timeline_shared`) also the fetch link's queue: the
    transfers issued and not yet done, in a ring (``queue[j] = (work left at full speed, earliest
    start)``, ``queue_key[j]``), ``queue_pos = (first, end)`` as running sequence numbers, and each
    key's latest transfer (``key_seq``)."""

    clock: np.ndarray  # float64 [5]
    ready: np.ndarray  # float64 [L * E]
    queue: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    queue_key: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    queue_pos: np.ndarray = field(default_factory=lambda: np.zeros(2, np.int64))
    key_seq: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @classmethod
    def start(cls, num_keys: int) -> Clock:
        return cls(np.zeros(5), np.zeros(num_keys), np.zeros((64, 2)), np.zeros(64, np.int64), np.zeros(2, np.int64),
                   np.full(num_keys, -1, np.int64))

    def reserve(self, more: int) -> None:
        """Room in the queue for ``more`` transfers beyond those pending (the ring grows, in order)."""
        first, end = (int(x) for x in self.queue_pos)
        pending = end - first
        cap = len(self.queue_key)
        if pending + more <= cap:
            return
        new_cap = max(2 * cap, pending + more)
        order = [(first + i) % cap for i in range(pending)]
        queue, keys = np.zeros((new_cap, 2)), np.zeros(new_cap, np.int64)
        # Sequence numbers keep running: slot of sequence q is q % new_cap.
        for i, j in enumerate(order):
            queue[(first + i) % new_cap] = self.queue[j]
            keys[(first + i) % new_cap] = self.queue_key[j]
        self.queue, self.queue_key = queue, keys


@njit(inline="always")
def _start(at, free, handoff):
    """When a transfer whose input is ready at ``at`` starts on a link free since ``free``: at once
    if the link is still busy then (its worker goes on to the next transfer), else once the worker,
    asleep, has been woken (``handoff``). With ``handoff = 0`` this is ``max(at, free)`` exactly."""
    return at + handoff if free <= at else free


@njit
def timeline_events(row_ptr, keys, num_layers, attn, expert, head, ev_row, ev_key, ev_src, h2d_cost, ssd_cost,
                    handoff, clock, ready, step_time, stall):
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
                    at = _start(at, ssd_free, handoff) + ssd_cost
                    ssd_free = at
                    clock[K_SSD_BUSY] += ssd_cost
                done = _start(at, h2d_free, handoff) + h2d_cost
                h2d_free = done
                clock[K_H2D_BUSY] += h2d_cost
                ready[ev_key[e]] = done
                e += 1
            go = routed
            for i in range(row_ptr[r], row_ptr[r + 1]):
                if ready[keys[i]] > go:
                    go = ready[keys[i]]
            if go > routed:  # the computation waited: it resumes once woken
                go += handoff
            stall[t, layer] = go - routed
            now = go + expert[t, layer]
        now += head[t]
        step_time[t] = now - start
    clock[K_NOW] = now
    clock[K_H2D_FREE] = h2d_free
    clock[K_SSD_FREE] = ssd_free


@njit
def timeline_misses(misses, attn, expert, head, h2d_cost, handoff, clock, step_time, stall):
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
                done = _start(routed, h2d_free, handoff) + h2d_cost
                h2d_free = done
                clock[K_H2D_BUSY] += h2d_cost
                if done > go:
                    go = done
            if go > routed:
                go += handoff
            stall[t, layer] = go - routed
            now = go + expert[t, layer]
        now += head[t]
        step_time[t] = now - start
    clock[K_NOW] = now
    clock[K_H2D_FREE] = h2d_free


@njit(inline="always")
def _done(queue, queue_key, ready, first, end, t, handoff, clock):
    """Transfer ``first`` ended at ``t``: its key is ready, and the next one in the queue, if its input
    comes only later, will wait for the worker to be woken. Returns the next transfer."""
    cap = queue.shape[0]
    ready[queue_key[first % cap]] = t
    clock[K_H2D_FREE] = t
    first += 1
    if first < end and queue[first % cap, 1] >= t:
        queue[first % cap, 1] += handoff
    return first


@njit(inline="always")
def _serve_alone(queue, queue_key, ready, first, end, upto, t, handoff, clock):
    """The fetch link alone (the computation waits) serves transfers ``first .. upto - 1`` from ``t``;
    returns (the next transfer, the time the last one ended)."""
    cap = queue.shape[0]
    while first < upto:
        j = first % cap
        start = max(t, queue[j, 1])
        t = start + queue[j, 0]
        clock[K_H2D_BUSY] += queue[j, 0]
        first = _done(queue, queue_key, ready, first, end, t, handoff, clock)
    return first, t


@njit(inline="always")
def _link_alone_until(queue, queue_key, ready, first, end, t, until, handoff, clock):
    """The fetch link alone serves its queue from ``t`` to ``until`` (the computation is waking up);
    a transfer still running at ``until`` keeps the work it has left. Returns the next transfer."""
    cap = queue.shape[0]
    while first < end:
        j = first % cap
        start = max(t, queue[j, 1])
        if start >= until:
            return first
        if start + queue[j, 0] > until:
            queue[j, 0] -= until - start
            clock[K_H2D_BUSY] += until - start
            return first
        t = start + queue[j, 0]
        clock[K_H2D_BUSY] += queue[j, 0]
        first = _done(queue, queue_key, ready, first, end, t, handoff, clock)
    return first


@njit(inline="always")
def _compute_beside(queue, queue_key, ready, first, end, t, work, slow_compute, slow_fetch, handoff, clock):
    """The computation runs ``work`` seconds (its time alone) from ``t`` while the link serves its
    queue; while both run, each takes ``slow_*`` times as long. Returns (the next transfer, the time
    the computation ends)."""
    cap = queue.shape[0]
    while work > 0.0:
        if first == end:
            return first, t + work
        j = first % cap
        if queue[j, 1] > t:  # the link waits for this transfer's input: the computation runs alone
            gap = queue[j, 1] - t
            if work <= gap:
                return first, t + work
            t = queue[j, 1]
            work -= gap
            continue
        tc = work * slow_compute
        tf = queue[j, 0] * slow_fetch
        if tc < tf:
            queue[j, 0] -= tc / slow_fetch
            clock[K_H2D_BUSY] += tc
            return first, t + tc
        t += tf
        work -= tf / slow_compute
        clock[K_H2D_BUSY] += tf
        first = _done(queue, queue_key, ready, first, end, t, handoff, clock)
    return first, t


@njit
def timeline_shared(row_ptr, keys, num_layers, attn, expert, head, ev_row, ev_key, ev_src, h2d_cost, ssd_cost,
                    handoff, slow_compute, slow_fetch, clock, ready, queue, queue_key, queue_pos, key_seq,
                    step_time, stall):
    """:func:`timeline_events` when fetches and compute contend (module docstring): the fetch link's
    transfers wait in a queue (``queue``, carried in the :class:`Clock` from piece to piece; room
    for this piece's events must be reserved first, :meth:`Clock.reserve`) and progress at full
    speed while the computation waits for them, ``slow_fetch`` times slower while it runs (which
    then runs ``slow_compute`` times slower)."""
    now = clock[K_NOW]
    ssd_free = clock[K_SSD_FREE]
    cap = queue.shape[0]
    first = queue_pos[0]
    end = queue_pos[1]
    e = 0
    n_ev = ev_row.shape[0]
    T = step_time.shape[0]
    for t in range(T):
        start = now
        for layer in range(num_layers):
            r = t * num_layers + layer
            first, routed = _compute_beside(queue, queue_key, ready, first, end, now, attn[t, layer], slow_compute,
                                            slow_fetch, handoff, clock)
            while e < n_ev and ev_row[e] == r:
                at = routed
                if ev_src[e] == SRC_SSD:
                    at = _start(at, ssd_free, handoff) + ssd_cost
                    ssd_free = at
                    clock[K_SSD_BUSY] += ssd_cost
                if first == end and clock[K_H2D_FREE] <= at:  # it heads an idle link: the worker is woken
                    at += handoff
                j = end % cap
                queue[j, 0] = h2d_cost
                queue[j, 1] = at
                queue_key[j] = ev_key[e]
                key_seq[ev_key[e]] = end
                end += 1
                e += 1
            need = -1
            for i in range(row_ptr[r], row_ptr[r + 1]):
                q = key_seq[keys[i]]
                if q >= first and q > need:
                    need = q
            if need >= 0:
                first, _ = _serve_alone(queue, queue_key, ready, first, end, need + 1, routed, handoff, clock)
            go = routed
            for i in range(row_ptr[r], row_ptr[r + 1]):
                if ready[keys[i]] > go:
                    go = ready[keys[i]]
            if go > routed:  # the computation resumes once woken; the link goes on meanwhile
                first = _link_alone_until(queue, queue_key, ready, first, end, go, go + handoff, handoff, clock)
                go += handoff
            stall[t, layer] = go - routed
            first, now = _compute_beside(queue, queue_key, ready, first, end, go, expert[t, layer], slow_compute,
                                         slow_fetch, handoff, clock)
        first, now = _compute_beside(queue, queue_key, ready, first, end, now, head[t], slow_compute, slow_fetch,
                                     handoff, clock)
        step_time[t] = now - start
    clock[K_NOW] = now
    clock[K_SSD_FREE] = ssd_free
    queue_pos[0] = first
    queue_pos[1] = end


__all__ = ["Clock", "ComputeModel", "Links", "timeline_events", "timeline_misses", "timeline_shared"]
