"""From a trace to the rows a cache serves: keys, CSR offsets, layer-clock times, next-use times.

One *instance* is one independent cache: a shared cache (keys ``l * E + e``, rows in layer-clock
order ``t * L + l``) or, per layer, ``L`` caches (keys ``e``, rows of layer ``l`` only, times still
``t * L + l``). Pinned experts are dropped from the rows (they always hit and are counted apart),
pads (-1) are dropped, and rows left empty are skipped. The experts of a row are ordered by the
tie-break: ``row`` (as recorded, i.e. the router's order), ``reverse``, or ``expert_id``
(ascending). Whether a row's experts hit never depends on the order (a row's experts never evict
each other), but the order fixes the recency / insertion order they leave behind, so later
evictions (and thus later hits) of LRU, FIFO, CLOCK, SIEVE and the tie rules of LFU can differ.

A trace is processed in *pieces* of consecutive steps (bounded memory for memory-mapped traces);
piece boundaries also fall on request starts (when the cache restarts cold per request) and on the
end of the warm-up, so each piece is wholly counted or wholly warm-up.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
from moesim.kernels.jit import njit
from moesim.sim.errors import ConfigError
from moesim.sim.row_loop import NEVER
from moesim.traces.trace import DECODE, Trace

TIE_ROW, TIE_REVERSE, TIE_EXPERT_ID = 0, 1, 2
TIE_BREAKS = {"row": TIE_ROW, "reverse": TIE_REVERSE, "expert_id": TIE_EXPERT_ID}
ORGANISATIONS = ("shared", "per_layer")
# A piece holds at most about this many (step, layer, slot) entries: ~3 MB of row arrays, so that a
# piece's keys, row bounds, times and hits stay in the processor's caches between the steps that make
# and read them, and freed arrays are reused by the allocator instead of mapped afresh (page faults).
# Measured on the real OLMoE trace, replay() end to end against 4 M entries a piece: 2.5-3.6x for LRU,
# FIFO and CLOCK on the one-key stream, 1.1-1.9x on rows of 8.
PIECE_ENTRIES = 1 << 18


@njit
def _build_rows(experts, step0, num_experts, pinned, per_layer, tie_break, keep_empty):
    T, L, K = experts.shape
    n_max = T * L * K
    keys = np.empty(n_max, np.int32)
    src = np.empty(n_max, np.int32)
    row_ptr = np.empty(T * L + 1, np.int64)
    row_time = np.empty(T * L, np.int64)
    inst_rows = np.zeros((L if per_layer else 1) + 1, np.int64)
    buf_e = np.empty(K, np.int64)
    buf_k = np.empty(K, np.int64)
    n = 0
    R = 0
    row_ptr[0] = 0
    outer = L if per_layer else T
    inner = T if per_layer else L
    for a in range(outer):
        for b in range(inner):
            if per_layer:
                layer = a
                t = b
            else:
                t = a
                layer = b
            m = 0
            for k in range(K):
                e = experts[t, layer, k]
                if e >= 0 and pinned[layer * num_experts + e] == 0:
                    buf_e[m] = e
                    buf_k[m] = k
                    m += 1
            if m == 0 and not keep_empty:
                continue
            if tie_break == TIE_REVERSE:
                for j in range(m // 2):
                    x = buf_e[j]
                    buf_e[j] = buf_e[m - 1 - j]
                    buf_e[m - 1 - j] = x
                    x = buf_k[j]
                    buf_k[j] = buf_k[m - 1 - j]
                    buf_k[m - 1 - j] = x
            elif tie_break == TIE_EXPERT_ID:
                for j in range(1, m):  # insertion sort by expert id (rows are short)
                    e = buf_e[j]
                    kk = buf_k[j]
                    i = j - 1
                    while i >= 0 and buf_e[i] > e:
                        buf_e[i + 1] = buf_e[i]
                        buf_k[i + 1] = buf_k[i]
                        i -= 1
                    buf_e[i + 1] = e
                    buf_k[i + 1] = kk
            base = 0 if per_layer else layer * num_experts
            for j in range(m):
                keys[n] = base + buf_e[j]
                src[n] = (t * L + layer) * K + buf_k[j]
                n += 1
            row_time[R] = (step0 + t) * L + layer
            R += 1
            row_ptr[R] = n
        if per_layer:
            inst_rows[a + 1] = R
    if not per_layer:
        inst_rows[1] = R
    return keys[:n], row_ptr[:R + 1], row_time[:R], src[:n], inst_rows


@njit
def next_use_backward(keys, row_ptr, row_time, nxt, out):
    """Fill ``out[i]`` with the time of the next row requesting ``keys[i]``, walking rows backwards.

    ``nxt[key]`` holds the first request time after these rows (``NEVER`` if none) and is left
    holding the first one at or after them, so consecutive blocks can be processed last to first.
    """
    for r in range(row_ptr.shape[0] - 2, -1, -1):
        t = row_time[r]
        for i in range(row_ptr[r], row_ptr[r + 1]):
            k = keys[i]
            out[i] = nxt[k]
            nxt[k] = t


def next_use_times(keys: np.ndarray, row_ptr: np.ndarray, row_time: np.ndarray, num_keys: int) -> np.ndarray:
    """Next-use time of every access of one block of rows (``NEVER`` after its last use)."""
    out = np.empty(len(keys), np.int64)
    nxt = np.full(num_keys, NEVER, np.int64)
    next_use_backward(np.asarray(keys), np.asarray(row_ptr, np.int64), np.asarray(row_time, np.int64),
                      nxt, out)
    return out


def next_use_reference(keys: np.ndarray, row_ptr: np.ndarray, row_time: np.ndarray) -> np.ndarray:
    """Plain-Python :func:`next_use_times` (a forward scan per access: O(n * rows), tests only)."""
    R = len(row_ptr) - 1
    out = np.full(len(keys), NEVER, np.int64)
    for r in range(R):
        for i in range(int(row_ptr[r]), int(row_ptr[r + 1])):
            for s in range(r + 1, R):
                if int(keys[i]) in {int(k) for k in keys[row_ptr[s]:row_ptr[s + 1]]}:
                    out[i] = int(row_time[s])
                    break
    return out


@njit
def widest_rows(experts, num_experts, pinned, out):
    """``out[l] = max(out[l], widest row of layer l)`` counting only experts that are not pinned."""
    T, L, K = experts.shape
    for t in range(T):
        for layer in range(L):
            m = 0
            for k in range(K):
                e = experts[t, layer, k]
                if e >= 0 and pinned[layer * num_experts + e] == 0:
                    m += 1
            if m > out[layer]:
                out[layer] = m


@njit
def pinned_hits(experts, num_experts, pinned, step_hits, hit_mask, record_mask):
    """Count the accesses to pinned experts into ``step_hits[t, l]`` (and set ``hit_mask``)."""
    T, L, K = experts.shape
    for t in range(T):
        for layer in range(L):
            for k in range(K):
                e = experts[t, layer, k]
                if e >= 0 and pinned[layer * num_experts + e] != 0:
                    step_hits[t, layer] += 1
                    if record_mask:
                        hit_mask[t, layer, k] = True


@njit
def scatter_hits(hits, src, K, step_hits_flat, hit_mask_flat, record_mask):
    """Add each access's hit (``hits[i]``) to its (step, layer) count via ``src`` (flat index)."""
    for i in range(hits.shape[0]):
        h = hits[i]
        s = src[i]
        step_hits_flat[s // K] += h
        if record_mask:
            hit_mask_flat[s] = h != 0


@dataclass(frozen=True)
class Piece:
    """Steps ``[start, stop)`` of the trace; ``reset``: the caches restart before it; ``epoch``:
    resets so far; ``counted``: after the warm-up; ``step0``: the *stream* index of its first kept
    step (with ``decode_only`` the prefill steps are not in the stream); ``kept``: its kept steps."""

    start: int
    stop: int
    reset: bool
    counted: bool
    epoch: int
    step0: int = -1
    kept: int = -1

    def __post_init__(self) -> None:
        if self.step0 < 0:  # a plain piece: every step kept, stream index = trace index
            object.__setattr__(self, "step0", self.start)
            object.__setattr__(self, "kept", self.stop - self.start)


def plan_pieces(num_steps: int, chunk_steps: int, warmup_steps: int = 0,
                request_starts: np.ndarray | None = None) -> list[Piece]:
    """Cut ``[0, num_steps)`` at every ``chunk_steps``, at ``warmup_steps`` and at request starts.

    ``request_starts`` (given only when the cache restarts per request) are the steps where the
    cache is reset.
    """
    if chunk_steps < 1:
        raise ConfigError(f"chunk_steps must be >= 1, got {chunk_steps}")
    cuts = set(range(0, num_steps, chunk_steps)) | {num_steps}
    if 0 < warmup_steps < num_steps:
        cuts.add(int(warmup_steps))
    resets: set[int] = set()
    if request_starts is not None:
        resets = {int(s) for s in request_starts if 0 < s < num_steps}
        cuts |= resets
    bounds = sorted(cuts)
    pieces = []
    epoch = 0
    for a, b in pairwise(bounds):
        if a in resets:
            epoch += 1
        pieces.append(Piece(a, b, a in resets, a >= warmup_steps, epoch))
    return pieces


@dataclass(frozen=True)
class StepStream:
    """The steps of a trace the caches see, cut into pieces: every step, or the decode steps only.

    Built by one chunked pass over the trace's ``phase`` and ``request_id`` (never the experts), so
    a memory-mapped trace is planned in the memory of one chunk. ``num_steps`` counts kept steps;
    the layer clock runs on them (row ``(s, l)`` of stream step ``s`` is at time ``s * L + l``).
    """

    trace: Trace
    pieces: tuple[Piece, ...]
    num_steps: int
    decode_only: bool

    def read(self, piece: Piece) -> np.ndarray:
        """The kept steps' experts of ``piece`` as a contiguous int16 ``[kept, L, K]`` array."""
        chunk = np.asarray(self.trace.experts[piece.start:piece.stop])
        keep = self.kept_mask(piece)
        if keep is not None:
            chunk = chunk[keep]
        return np.ascontiguousarray(chunk, np.int16)

    def read_field(self, name: str, piece: Piece) -> np.ndarray | None:
        """An optional per-step (or per-row) array of the trace over the kept steps of ``piece``."""
        arr = getattr(self.trace, name)
        if arr is None:
            return None
        part = np.asarray(arr[piece.start:piece.stop])
        keep = self.kept_mask(piece)
        return np.ascontiguousarray(part[keep] if keep is not None else part)

    def kept_mask(self, piece: Piece) -> np.ndarray | None:
        if not self.decode_only or self.trace.phase is None:
            return None
        return np.asarray(self.trace.phase[piece.start:piece.stop]) == DECODE


def plan_stream(trace: Trace, chunk_steps: int, *, warmup_steps: int = 0, cold_start: bool = False,
                decode_only: bool = False) -> StepStream:
    """Pieces of at most ``chunk_steps`` trace steps, also cut where a request starts (when the caches
    restart cold per request) and where the warm-up of ``warmup_steps`` *kept* steps ends.

    A reset lands on a request's first step (prefill or not); its rows then start cold.
    """
    if chunk_steps < 1:
        raise ConfigError(f"chunk_steps must be >= 1, got {chunk_steps}")
    if cold_start and trace.request_id is None:
        raise ConfigError("cold_start_per_request needs a trace with request_id")
    T = trace.num_steps
    filtering = decode_only and trace.phase is not None
    cuts = set(range(0, T, chunk_steps)) | {T}
    resets: set[int] = set()
    warm_cut = T if warmup_steps > 0 else 0
    kept_before = 0  # kept steps before the current scan chunk
    prev_rid = None
    for a in range(0, T, chunk_steps):
        b = min(a + chunk_steps, T)
        if filtering:
            kept = np.flatnonzero(np.asarray(trace.phase[a:b]) == DECODE)
        else:
            kept = None
        n = len(kept) if kept is not None else b - a
        if warm_cut == T and warmup_steps > 0 and kept_before + n >= warmup_steps:
            j = warmup_steps - kept_before  # the first counted kept step is the j-th of this chunk
            warm_cut = a + (int(kept[j]) if kept is not None else j) if j < n else b
        if cold_start:
            rid = np.asarray(trace.request_id[a:b])
            if len(rid):
                change = np.flatnonzero(rid[1:] != rid[:-1]) + 1
                resets.update(int(a + c) for c in change)
                if prev_rid is not None and rid[0] != prev_rid:
                    resets.add(a)
                prev_rid = rid[-1]
        kept_before += n
    if 0 < warm_cut < T:
        cuts.add(warm_cut)
    cuts |= resets
    bounds = sorted(cuts)
    pieces = []
    epoch = 0
    step0 = 0
    for a, b in pairwise(bounds):
        if a in resets:
            epoch += 1
        if filtering:
            kept_n = int(np.count_nonzero(np.asarray(trace.phase[a:b]) == DECODE))
        else:
            kept_n = b - a
        pieces.append(Piece(a, b, a in resets, a >= warm_cut, epoch, step0, kept_n))
        step0 += kept_n
    return StepStream(trace, tuple(pieces), step0, decode_only)


@dataclass(frozen=True)
class Layout:
    """How a trace becomes cache instances."""

    organisation: str  # "shared" or "per_layer"
    num_layers: int
    num_experts: int
    pinned: np.ndarray  # uint8 [L * E]: 1 where the key l * E + e is pinned
    tie_break: str = "row"

    def __post_init__(self) -> None:
        if self.organisation not in ORGANISATIONS:
            raise ConfigError(f"organisation must be one of {ORGANISATIONS}, got {self.organisation!r}")
        if self.tie_break not in TIE_BREAKS:
            raise ConfigError(f"tie_break must be one of {tuple(TIE_BREAKS)}, got {self.tie_break!r}")

    @property
    def per_layer(self) -> bool:
        return self.organisation == "per_layer"

    @property
    def num_instances(self) -> int:
        return self.num_layers if self.per_layer else 1

    @property
    def keys_per_instance(self) -> int:
        return self.num_experts if self.per_layer else self.num_layers * self.num_experts

    def time_major(self) -> Layout:
        """The same rows (pinned experts dropped, tie-break applied) in layer-clock order over all
        layers, with shared keys ``l * E + e``: how the hierarchy serves a per-layer L1 too."""
        return dataclasses.replace(self, organisation="shared")

    @classmethod
    def routing(cls, num_layers: int, num_experts: int) -> Layout:
        """Every routed expert in the router's order, nothing pinned: what a prefetcher observes."""
        return cls("shared", num_layers, num_experts, np.zeros(num_layers * num_experts, np.uint8))


@dataclass(frozen=True)
class RowBlock:
    """The rows of one piece for every instance (CSR, instance after instance)."""

    keys: np.ndarray  # int32
    row_ptr: np.ndarray  # int64, absolute into keys
    row_time: np.ndarray  # int64
    src: np.ndarray  # int32: flat index of each access in the piece's [steps, L, K] experts
    inst_rows: np.ndarray  # rows of instance j: inst_rows[j]:inst_rows[j + 1]

    def instance(self, j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(keys, row_ptr from 0, row_time, src) of instance ``j``."""
        a, b = int(self.inst_rows[j]), int(self.inst_rows[j + 1])
        lo, hi = int(self.row_ptr[a]), int(self.row_ptr[b])
        return self.keys[lo:hi], self.row_ptr[a:b + 1] - lo, self.row_time[a:b], self.src[lo:hi]


def build_rows(experts: np.ndarray, step0: int, layout: Layout, *, keep_empty: bool = False) -> RowBlock:
    """The rows of ``experts`` (stream steps ``step0 ...``) for every instance of ``layout``.

    ``keep_empty``: keep rows left empty (every expert pinned or padding), so that a time-major
    block has exactly one row per (step, layer); the hierarchy issues prefetches at every row.
    """
    experts = np.ascontiguousarray(experts, np.int16)
    if experts.size >= 2**31:
        raise ConfigError(f"a piece of {experts.size} entries is too large; lower chunk_steps")
    keys, row_ptr, row_time, src, inst_rows = _build_rows(
        experts, step0, layout.num_experts, layout.pinned, layout.per_layer, TIE_BREAKS[layout.tie_break],
        keep_empty)
    return RowBlock(keys, row_ptr, row_time, src, inst_rows)


def dense_rows(experts: np.ndarray, step0: int, layout: Layout) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The rows of ``experts`` as :func:`build_rows` gives them, when every (step, layer) row is full
    (no padding), the cache is shared, nothing is pinned and the rows keep their recorded order (any
    order for rows of one key): ``(keys, row_ptr, row_time)``; ``None`` when this does not apply.

    Such rows need no gathering: the keys are the experts plus their layer's base ``l * E`` in trace
    order, row ``r`` spans ``[r * K, (r + 1) * K)`` and runs at ``step0 * L + r``. One vectorised
    add instead of :func:`build_rows`' per-row copy, and no ``src`` map back to the trace (a row's
    hits are the ``K`` bytes at its place): measured ~8 ns per access less on the real OLMoE trace
    (6.5 M accesses, rows of 8), a third of ARC's whole ``replay()`` time there.
    """
    if layout.per_layer or (layout.tie_break != "row" and experts.shape[2] > 1) or experts.size == 0:
        return None
    if layout.pinned.any() or int(experts.min()) < 0:
        return None
    T, L, K = experts.shape
    keys = np.add(experts, (np.arange(L, dtype=np.int32) * layout.num_experts)[:, None], dtype=np.int32)
    row_ptr = np.arange(0, T * L * K + 1, K, dtype=np.int64)
    row_time = np.arange(step0 * L, (step0 + T) * L, dtype=np.int64)
    return keys.reshape(-1), row_ptr, row_time


@njit
def dense_row_hits(hits, width, step_hits_flat):
    """``step_hits_flat[r]`` = the hits of row ``r`` of :func:`dense_rows` (``width`` keys each)."""
    for r in range(step_hits_flat.shape[0]):
        h = 0
        for j in range(r * width, (r + 1) * width):
            h += hits[j]
        step_hits_flat[r] = h


def iter_row_blocks(experts: np.ndarray, pieces: list[Piece], layout: Layout,
                    reverse: bool = False) -> Iterator[tuple[Piece, np.ndarray, RowBlock]]:
    """(piece, its experts as an in-memory array, its rows), reading one piece at a time."""
    for piece in (reversed(pieces) if reverse else pieces):
        chunk = np.ascontiguousarray(experts[piece.start:piece.stop])
        yield piece, chunk, build_rows(chunk, piece.start, layout)


def default_chunk_steps(num_layers: int, width: int) -> int:
    return max(1, PIECE_ENTRIES // max(1, num_layers * width))


class NextUse:
    """Next-use times of every access, per (piece, instance), from one backward pass over the pieces.

    8 bytes per (non-pinned) access: kept in RAM for an in-memory trace, spilled to ``scratch`` (one
    ``.npy`` per piece and instance, memory-mapped back) for a memory-mapped one, so a trace larger
    than RAM still replays in bounded memory. Nothing is seen across a cold restart. With
    ``first_use``, it also keeps, for each piece that starts an epoch, every key's first request time
    in that epoch (what a prefetch issued before the key's first access needs to know).
    """

    def __init__(self, stream: StepStream, layout: Layout, scratch: str, *, keep_empty: bool = False,
                 first_use: bool = False) -> None:
        self._arrays: dict[tuple[int, int], np.ndarray] = {}
        self._first: dict[int, np.ndarray] = {}
        spill = isinstance(stream.trace.experts, np.memmap)
        n_inst, n_keys = layout.num_instances, layout.keys_per_instance
        nxt = [np.full(n_keys, NEVER, np.int64) for _ in range(n_inst)]
        for p in range(len(stream.pieces) - 1, -1, -1):
            piece = stream.pieces[p]
            chunk = stream.read(piece)
            dense = None if keep_empty else dense_rows(chunk, piece.step0, layout)
            block = build_rows(chunk, piece.step0, layout, keep_empty=keep_empty) if dense is None else None
            for j in range(n_inst):
                keys, row_ptr, row_time = dense if block is None else block.instance(j)[:3]
                nu = np.empty(len(keys), np.int64)
                next_use_backward(keys, row_ptr, row_time, nxt[j], nu)
                if spill:
                    path = os.path.join(scratch, f"nextuse-{p}-{j}.npy")
                    np.save(path, nu)
                    nu = np.load(path, mmap_mode="r")
                self._arrays[p, j] = nu
            if first_use and (p == 0 or piece.reset):
                self._first[p] = nxt[0].copy()
            if piece.reset:
                for a in nxt:
                    a.fill(NEVER)

    def of(self, piece_index: int, instance: int) -> np.ndarray:
        return np.asarray(self._arrays[piece_index, instance])

    def first_use(self, piece_index: int) -> np.ndarray:
        """Every key's first request time in the epoch that starts at this piece."""
        return self._first[piece_index]
