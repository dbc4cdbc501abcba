"""The executor: a trace replayed through real expert weights, real reads and decodes, real matmuls,
with the simulator's own cache decisions, timed by the wall clock.

What runs (one decode token per trace step, batch 1):

* **Decisions** come from :func:`sim.executor_schedule.build_schedule` (the policy's own code, the
  hierarchy's rules, the prefetcher's plan), made before the timed run; so the executor's hits,
  misses, evictions and transfers are the simulator's, one for one.
* **Tiers.** The *fast tier* is a pool of slots holding compute-ready (float32) expert weights:
  host memory on a CPU-only machine, GPU memory on a CUDA one (:class:`CudaTier`). The *host tier*
  holds experts' stored (encoded) bytes in page-aligned buffers. The *disk* is the checkpoint of
  :mod:`sim.executor_weights`, read with ``O_DIRECT`` (or buffered reads dropped from the page cache
  with ``posix_fadvise``; :attr:`ExecutorResult.read_mode` says which).
* **Links**, two worker threads that serve fetches in issue order, as the timing model's links do:
  the disk worker reads an SSD-sourced fetch into its host buffer; the fetch worker decodes each
  fetch from its host buffer into its fast-tier slot with the format's own ``decode(enc, out=...)``
  (on CUDA: a copy of the stored bytes and ``decode_torch`` on a copy stream, then an event). Reads
  and decodes release the GIL, so both overlap the main thread's compute.
* **Per token, per layer** (main thread): the attention stand-in (a dense matrix-vector product over
  the profile's dense weights of the layer); then the row's fetches are released to the links
  (demand misses first, then the prefetches issued at this row); the main thread waits until the
  fetches its row needs are decoded (the *stall*), then runs each expert's gated FFN
  (``down @ (silu(gate @ x) * (up @ x))``) on the token's hidden state, weighted by the gates; after
  the last layer, the LM-head stand-in. The input of each step is a seeded random hidden state.

Measured (after ``warmup_steps``): tokens/s, per-token latency percentiles (``numpy.percentile``, as
the model), the time spent in each part, stall time, bytes per link, and each link's busy share of
the whole run, all from ``time.perf_counter`` (on CUDA after synchronising the device).

Not supported: batches (one token per step), cold restarts per request, real checkpoints other than
the executor's own layout (:mod:`sim.executor_weights`).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from moesim.sim.cache_setup import setup_cache
from moesim.sim.errors import ConfigError
from moesim.sim.executor_schedule import NO_FETCH, Schedule, build_schedule
from moesim.sim.executor_weights import ExpertFile, new_buffers
from moesim.sim.hierarchy import SRC_SSD
from moesim.traces.trace import Trace
from moesim.traces.transforms import decode_only

_TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
EPS = 1e-6


def expert_ffn(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """One gated (SwiGLU) expert on one token: ``down @ (silu(gate @ x) * (up @ x))``."""
    return torch.mv(down, torch.nn.functional.silu(torch.mv(gate, x)) * torch.mv(up, x))


@dataclass
class ExecutorResult:
    """What a run measured (over the steps after the warm-up unless said otherwise).

    tokens_per_s, latency_*_s: tokens per second and seconds per token (each step is one token).
    time_s: seconds per part (attention, experts, head, stall) summed over the counted steps.
    bytes_per_link: stored bytes moved on each link in the counted rows (by the row that issued the
        fetch, as the simulator counts): ``ssd_to_dram`` (disk reads), ``dram_to_gpu`` (decodes into
        the fast tier).
    link_busy: each link's busy share of the whole run (warm-up included, as the model's).
    counts: the schedule's hierarchy counters (equal to the simulator's).
    step_time_s: seconds of every step (warm-up included).
    read_mode: how the disk was read (``O_DIRECT`` or ``posix_fadvise(DONTNEED)``).
    row_routed_s / row_stall_s: ``[T, L]`` seconds from the run's start at which each row's
        fetches were released, and how long the row then waited for them.
    fetch_start_s / fetch_end_s: per fetch, seconds from the run's start at which the fetch worker
        began and ended its decode.
    rows_in / rows_out: with ``record=True``, every row's input hidden state and expert output.
    """

    tokens_per_s: float
    latency_p50_s: float
    latency_p90_s: float
    latency_p99_s: float
    latency_mean_s: float
    stall_fraction: float
    time_s: dict[str, float]
    bytes_per_link: dict[str, float]
    link_busy: dict[str, float]
    l1_hit_rate: float
    counts: dict[str, int]
    steps: int
    tokens: int
    expert_bytes: int
    step_time_s: np.ndarray
    read_mode: str
    device: str
    config: dict[str, Any] = field(default_factory=dict)
    row_routed_s: np.ndarray | None = None
    row_stall_s: np.ndarray | None = None
    fetch_start_s: np.ndarray | None = None
    fetch_end_s: np.ndarray | None = None
    rows_in: np.ndarray | None = None
    rows_out: np.ndarray | None = None


class CpuTier:
    """Fast-tier slots in host memory (float32 tensors); a fetch decodes into a slot in place."""

    device = "cpu"

    def __init__(self, shapes: list[tuple[int, ...]], num_slots: int) -> None:
        self.shapes = shapes
        self.slots = [[torch.empty(s, dtype=torch.float32) for s in shapes] for _ in range(num_slots)]

    def fill(self, file: ExpertFile, buf: np.ndarray, slot: int) -> None:
        file.decode(buf, self.slots[slot])

    def synchronize(self) -> None:
        pass


class CudaTier:
    """Fast-tier slots in GPU memory: a fetch copies the stored bytes from the host buffer to the
    device on a copy stream and decodes them there with the format's ``decode_torch``; the worker
    waits for the copy stream's event, so a fetch is done when its weights are usable. (Needs a
    CUDA device; the test suite runs the CPU tier only.)"""

    def __init__(self, shapes: list[tuple[int, ...]], num_slots: int, device: str = "cuda") -> None:
        self.device = device
        self.shapes = shapes
        self.slots = [[torch.empty(s, dtype=torch.float32, device=device) for s in shapes] for _ in range(num_slots)]
        self.stream = torch.cuda.Stream(device=device)

    def pin(self, host: list[np.ndarray]) -> None:
        """Page-lock the host buffers (one mapping), so that copies from them are asynchronous DMA."""
        if host:
            area = host[0].base if host[0].base is not None else host[0]
            torch.cuda.cudart().cudaHostRegister(area.ctypes.data, area.nbytes, 0)

    def fill(self, file: ExpertFile, buf: np.ndarray, slot: int) -> None:
        from moesim.kernels.formats import get_format

        fmt = get_format(file.format)
        with torch.cuda.stream(self.stream):
            for enc, target in zip(file.encoded(buf), self.slots[slot], strict=True):
                dev = {}
                for name, arr in enc.items():
                    if name == "shape":
                        continue
                    t = torch.from_numpy(arr)
                    if arr.dtype == np.uint16:  # bfloat16 bit patterns
                        t = t.view(torch.bfloat16)
                    dev[name] = t.to(self.device, non_blocking=True)
                fmt.decode_torch(dev, dtype=torch.float32, out=target)
            event = torch.cuda.Event()
            event.record(self.stream)
        event.synchronize()

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)


class _Links:
    """The disk worker and the fetch worker, serving the schedule's fetches in issue order once the
    main thread has released them (:meth:`release`)."""

    def __init__(self, sched: Schedule, file: ExpertFile, tier: Any, host: list[np.ndarray]) -> None:
        self.sched, self.file, self.tier, self.host = sched, file, tier, host
        self.issued = 0
        self.read = 0  # SSD fetches read so far (in order)
        self.decoded = 0  # fetches decoded so far (in order)
        self.issue_cv = threading.Condition()
        self.read_cv = threading.Condition()
        self.decode_cv = threading.Condition()
        self.ssd = np.flatnonzero(sched.fetch_src == SRC_SSD)
        self.ssd_seq = np.full(sched.num_fetches, -1, np.int64)
        self.ssd_seq[self.ssd] = np.arange(len(self.ssd))
        self.busy = {"ssd_to_dram": 0.0, "dram_to_gpu": 0.0}
        self.fetch_times = np.zeros((sched.num_fetches, 2))  # perf_counter at the start and end of each decode
        self.error: BaseException | None = None
        self.stop = False
        self.threads = [threading.Thread(target=self._guarded, args=(self._disk,), name="moesim-disk", daemon=True),
                        threading.Thread(target=self._guarded, args=(self._fetch,), name="moesim-fetch",
                                         daemon=True)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def close(self) -> None:
        self.stop = True
        for cv in (self.issue_cv, self.read_cv, self.decode_cv):
            with cv:
                cv.notify_all()
        for t in self.threads:
            t.join()
        if self.error is not None:
            raise self.error

    def release(self, upto: int) -> None:
        """Fetches ``< upto`` may start."""
        if upto > self.issued:
            with self.issue_cv:
                self.issued = upto
                self.issue_cv.notify_all()

    def wait_decoded(self, f: int) -> None:
        """Block until fetch ``f`` is in its slot."""
        if self.decoded > f:
            return
        with self.decode_cv:
            while self.decoded <= f and self.error is None:
                self.decode_cv.wait()
        if self.error is not None:
            raise RuntimeError("a link worker failed") from self.error

    def _guarded(self, body: Any) -> None:
        try:
            body()
        except BaseException as exc:  # surfaced by the main thread
            self.error = exc
            with self.decode_cv:
                self.decode_cv.notify_all()

    def _wait(self, cv: threading.Condition, ready: Any) -> bool:
        with cv:
            while not ready() and not self.stop:
                cv.wait()
        return not self.stop

    def _disk(self) -> None:
        s = self.sched
        for f in self.ssd:
            if not self._wait(self.issue_cv, lambda f=f: self.issued > f):
                return
            after = int(s.reuse_after[f])  # the buffer's previous content must have been decoded
            if after >= 0 and not self._wait(self.decode_cv, lambda a=after: self.decoded > a):
                return
            t = time.perf_counter()
            self.file.read(int(s.fetch_key[f]), self.host[int(s.fetch_host[f])])
            self.busy["ssd_to_dram"] += time.perf_counter() - t
            with self.read_cv:
                self.read += 1
                self.read_cv.notify_all()

    def _fetch(self) -> None:
        import numba

        numba.set_num_threads(1)  # one core decodes, the other computes
        s = self.sched
        for f in range(s.num_fetches):
            if not self._wait(self.issue_cv, lambda f=f: self.issued > f):
                return
            q = int(self.ssd_seq[f])
            if q >= 0 and not self._wait(self.read_cv, lambda q=q: self.read > q):
                return
            t = time.perf_counter()
            self.tier.fill(self.file, self.host[int(s.fetch_host[f])], int(s.fetch_slot[f]))
            t1 = time.perf_counter()
            self.busy["dram_to_gpu"] += t1 - t
            self.fetch_times[f] = (t, t1)
            with self.decode_cv:
                self.decoded = f + 1
                self.decode_cv.notify_all()


class _Model:
    """The resident stand-ins: per-layer dense weights and the LM head, in the profile's dense format."""

    def __init__(self, file: ExpertFile, device: str, seed: int) -> None:
        m = file.model
        if m.dense_format not in _TORCH_DTYPES:
            raise ConfigError(f"model profile '{m.name}': the executor's dense stand-in runs in "
                              f"{sorted(_TORCH_DTYPES)}, not {m.dense_format!r}")
        self.dtype = _TORCH_DTYPES[m.dense_format]
        H = m.hidden_size
        g = torch.Generator().manual_seed(seed)
        rows = math.ceil(m.dense_params_per_layer / H)
        scale = 1.0 / math.sqrt(H)
        self.dense = [(torch.randn(rows, H, generator=g) * scale).to(self.dtype).to(device)
                      for _ in range(m.num_moe_layers)]
        head_rows = math.ceil(m.other_params / H)
        self.head = (torch.randn(head_rows, H, generator=g) * scale).to(self.dtype).to(device) if head_rows else None
        self.H = H

    def attention(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        a = torch.mv(self.dense[layer], h.to(self.dtype)).float()
        return h + a[:self.H] if a.shape[0] >= self.H else h + a.sum()

    def lm_head(self, h: torch.Tensor) -> torch.Tensor | None:
        return None if self.head is None else torch.mv(self.head, h.to(self.dtype))


def _norm(h: torch.Tensor) -> torch.Tensor:
    return h * torch.rsqrt(h.pow(2).mean() + EPS)


def run_executor(trace: Trace, checkpoint: str | ExpertFile, *, l1: int, policy: str = "lru",
                 policy_params: Mapping[str, Any] | None = None, organisation: str = "shared",
                 l2: int | None = None, inclusive: bool = True, l2_policy: str = "lru",
                 prefetcher: str = "none", prefetch_params: Mapping[str, Any] | None = None,
                 prefetch_budget: int | None = None, seed: int = 0, warmup_steps: int = 0,
                 pinned: Collection[int] | None = None, tie_break: str = "row", compute_threads: int = 1,
                 device: str = "cpu", record: bool = False, schedule: Schedule | None = None) -> ExecutorResult:
    """Replay the decode steps of ``trace`` through the experts of ``checkpoint`` (a file written by
    :func:`sim.executor_weights.write_synthetic_checkpoint`, or an open :class:`ExpertFile`); the
    cache arguments mean what they mean for :func:`sim.offload.simulate_offload` (``l1`` / ``l2`` in
    experts; ``l2=None``: every expert's stored bytes in host memory, read before the run).

    ``compute_threads``: torch threads of the main thread (the fetch worker decodes on one more).
    ``device``: ``"cpu"`` or a CUDA device (the fast tier in GPU memory). ``record``: keep every
    row's input and expert output (for the tests). ``schedule``: decisions made beforehand (else
    made here, untimed).
    """
    file = checkpoint if isinstance(checkpoint, ExpertFile) else ExpertFile(checkpoint)
    model = file.model
    trace = decode_only(trace)
    if (trace.num_layers, trace.num_experts) != (model.num_moe_layers, model.num_experts):
        raise ConfigError(f"trace has {trace.num_layers} layers x {trace.num_experts} experts but checkpoint "
                          f"{file.path} holds {model.num_moe_layers} x {model.num_experts}")
    if not 0 <= warmup_steps < trace.num_steps:
        raise ConfigError(f"warmup_steps={warmup_steps} must lie in [0, {trace.num_steps})")
    if schedule is None:
        setup = setup_cache(trace.num_layers, trace.num_experts, policy, l1, organisation=organisation,
                            pinned=pinned, params=policy_params, seed=seed, warmup_steps=warmup_steps,
                            tie_break=tie_break)
        schedule = build_schedule(trace, setup, l2_capacity=l2, l2_policy=l2_policy, inclusive=inclusive,
                                  prefetch_budget=prefetch_budget, prefetcher=prefetcher,
                                  prefetch_params=prefetch_params, seed=seed)
    use_cuda = device != "cpu"
    tier: Any = CudaTier(file.shapes, schedule.num_slots, device) if use_cuda else CpuTier(file.shapes,
                                                                                           schedule.num_slots)
    host = new_buffers(schedule.num_host, file.block_bytes)
    if use_cuda:
        tier.pin(host)
    # Untimed: what is in host memory and in the fast tier before the run.
    for key, buf in schedule.host_preload:
        file.read(int(key), host[int(buf)])
    if schedule.preload:
        scratch = new_buffers(1, file.block_bytes)[0]
        for key, slot in schedule.preload.items():
            file.read(key, scratch)
            tier.fill(file, scratch, slot)
    if file.mode != "O_DIRECT":
        file.drop_cache()
    stand_in = _Model(file, tier.device, seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(compute_threads)
    try:
        return _timed(trace, schedule, file, tier, host, stand_in, warmup_steps, record, {
            "model": model.name, "weight_format": file.format, "l1": l1, "l2": l2, "policy": policy,
            "organisation": organisation, "inclusive": inclusive, "prefetcher": prefetcher,
            "prefetch_budget": prefetch_budget, "seed": seed, "warmup_steps": warmup_steps,
            "compute_threads": compute_threads, "trace_steps": trace.num_steps})
    finally:
        torch.set_num_threads(threads)


def _timed(trace: Trace, s: Schedule, file: ExpertFile, tier: Any, host: list[np.ndarray], stand_in: _Model,
           warmup_steps: int, record: bool, config: dict[str, Any]) -> ExecutorResult:
    T, L, K = trace.num_steps, trace.num_layers, trace.width
    H = file.model.hidden_size
    dev = tier.device
    gen = torch.Generator().manual_seed(int(config["seed"]) + 1)
    inputs = torch.randn(T, H, generator=gen).to(dev)
    gates = (torch.from_numpy(np.asarray(trace.gate_weights, np.float32).reshape(-1)) if trace.gate_weights is not None
             else torch.full((T * L * K,), 1.0 / max(1, trace.meta.top_k)))
    gate_list = gates.tolist()
    entry_slot = s.entry_slot.tolist()
    entry_wait = s.entry_wait.tolist()
    row_fetch_end = np.searchsorted(s.fetch_row, np.arange(T * L), side="right").tolist()
    rows_in = np.zeros((T * L, H), np.float32) if record else None
    rows_out = np.zeros((T * L, H), np.float32) if record else None
    step_time = np.zeros(T)
    parts = np.zeros((T, 4))  # attention, experts, head, stall
    routed_at = np.zeros((T, L))
    stalls = np.zeros((T, L))
    links = _Links(s, file, tier, host)
    # Compile / warm every kernel once outside the clock (numba's decode, torch's first calls).
    probe = CpuTier(file.shapes, 1) if dev == "cpu" else type(tier)(file.shapes, 1, dev)
    warm = new_buffers(1, file.block_bytes)[0]
    file.read(0, warm)
    probe.fill(file, warm, 0)
    expert_ffn(inputs[0], *probe.slots[0])
    stand_in.attention(inputs[0], 0)
    stand_in.lm_head(inputs[0])
    del probe
    sink = torch.zeros((), device=dev)
    links.start()
    perf = time.perf_counter
    run_start = perf()
    try:
        for t in range(T):
            t0 = perf()
            h = inputs[t]
            for layer in range(L):
                r = t * L + layer
                a0 = perf()
                h = _norm(stand_in.attention(h, layer))
                if dev != "cpu":
                    tier.synchronize()
                a1 = perf()
                links.release(row_fetch_end[r])
                for k in range(K):
                    f = entry_wait[r * K + k]
                    if f != NO_FETCH:
                        links.wait_decoded(f)
                a2 = perf()
                y = None
                for k in range(K):
                    i = r * K + k
                    slot = entry_slot[i]
                    if slot < 0:
                        continue
                    g, u, d = tier.slots[slot]
                    out = expert_ffn(h, g, u, d) * gate_list[i]
                    y = out if y is None else y + out
                if record:
                    rows_in[r] = h.cpu().numpy()
                    rows_out[r] = y.cpu().numpy() if y is not None else 0.0
                if y is not None:
                    h = _norm(h + y)
                if dev != "cpu":
                    tier.synchronize()
                a3 = perf()
                parts[t, 0] += a1 - a0
                parts[t, 3] += a2 - a1
                parts[t, 1] += a3 - a2
                routed_at[t, layer] = a1
                stalls[t, layer] = a2 - a1
            h0 = perf()
            logits = stand_in.lm_head(h)
            if logits is not None:
                sink = sink + logits[0]
            if dev != "cpu":
                tier.synchronize()
            t1 = perf()
            parts[t, 2] = t1 - h0
            step_time[t] = t1 - t0
        run_s = perf() - run_start
    finally:
        links.close()
    del sink
    counted = step_time[warmup_steps:]
    seconds = float(counted.sum())
    first_row = warmup_steps * L
    c = s.counts
    ssd_counted = int(np.count_nonzero((s.fetch_src == SRC_SSD) & (s.fetch_row >= first_row)))
    fills = int(np.count_nonzero(s.fetch_row >= first_row))
    eb = file.expert_bytes
    p50, p90, p99 = (float(np.percentile(counted, q)) for q in (50, 90, 99))
    tot = parts[warmup_steps:].sum(axis=0)
    acc = c["l1_hits"] + c["l1_misses"]
    return ExecutorResult(
        tokens_per_s=len(counted) / seconds if seconds > 0 else math.inf,
        latency_p50_s=p50, latency_p90_s=p90, latency_p99_s=p99, latency_mean_s=seconds / len(counted),
        stall_fraction=float(tot[3]) / seconds if seconds > 0 else 0.0,
        time_s={"attention": float(tot[0]), "experts": float(tot[1]), "head": float(tot[2]), "stall": float(tot[3])},
        bytes_per_link={"ssd_to_dram": float(ssd_counted * eb), "dram_to_gpu": float(fills * eb)},
        link_busy={name: b / run_s for name, b in links.busy.items()},
        l1_hit_rate=c["l1_hits"] / acc if acc else 0.0, counts=dict(c), steps=len(counted), tokens=len(counted),
        expert_bytes=eb, step_time_s=step_time, read_mode=file.mode, device=str(dev), config=config,
        row_routed_s=routed_at - run_start, row_stall_s=stalls, fetch_start_s=links.fetch_times[:, 0] - run_start,
        fetch_end_s=links.fetch_times[:, 1] - run_start, rows_in=rows_in, rows_out=rows_out)


__all__ = ["CpuTier", "CudaTier", "ExecutorResult", "expert_ffn", "run_executor"]
