"""Trace transformations used by the simulator: slicing, layer selection and batched decode."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from moesim.traces.errors import TraceError
from moesim.traces.trace import DECODE, EXPERT_DTYPE, PAD, PREFILL, Trace, make_trace


def slice_requests(trace: Trace, requests: Sequence[int] | slice) -> Trace:
    """Keep the requests with the given ids (a list of ids, or a slice over the requests in order)."""
    if trace.request_id is None:
        raise TraceError("trace has no request ids", file=trace.file, field="request_id")
    rid = np.asarray(trace.request_id)
    if isinstance(requests, slice):
        wanted = rid[trace.request_bounds()[:-1]][requests]
    else:
        wanted = np.asarray(list(requests), dtype=np.int64)
    keep = np.isin(rid, wanted)
    return _take_steps(trace, np.flatnonzero(keep))


def select_layers(trace: Trace, layers: Sequence[int]) -> Trace:
    """Keep only the given MoE layers (in the given order); metadata num_layers follows."""
    layers = [int(x) for x in layers]
    if not layers or min(layers) < 0 or max(layers) >= trace.num_layers:
        raise TraceError(f"layers {layers} outside [0, {trace.num_layers})", file=trace.file,
                         field="layers")
    fields = trace.optional_fields()
    kw = {n: np.asarray(a)[:, layers] if n in ("gate_weights", "predicted") else a for n, a in fields.items()}
    meta = trace.meta.with_updates(num_layers=len(layers),
                                   extra={**trace.meta.extra, "selected_layers": layers})
    return make_trace(np.asarray(trace.experts)[:, layers], meta, **kw)


def _take_steps(trace: Trace, idx: np.ndarray) -> Trace:
    kw = {n: np.asarray(a)[idx] for n, a in trace.optional_fields().items()}
    return make_trace(np.asarray(trace.experts)[idx], trace.meta, **kw)


def decode_only(trace: Trace) -> Trace:
    """Drop prefill steps (a trace without phases is returned unchanged)."""
    if trace.phase is None:
        return trace
    return _take_steps(trace, np.flatnonzero(np.asarray(trace.phase) == DECODE))


def batch_decode(trace: Trace, batch_size: int) -> Trace:
    """Continuous batching of ``batch_size`` concurrent sequences into one decode step.

    Requests are served in trace order by ``batch_size`` slots; when a request runs out of decode
    tokens its slot takes the next waiting request. Each output step holds, per layer, the union of
    the experts the active sequences chose (sorted by id, ``-1`` padded to width
    ``min(batch_size * K, E)``). Prefill steps are dropped (they run as their own large batch).
    ``request_id`` of an output step is the batch step index; ``position`` is the number of
    sequences active in it; gate weights are summed over the sequences sharing an expert.
    """
    if batch_size < 1:
        raise TraceError(f"batch size must be >= 1, got {batch_size}", file=trace.file, field="batch_size")
    dec = decode_only(trace)
    bounds = dec.request_bounds()
    starts, stops = bounds[:-1], bounds[1:]
    E, L, K = trace.num_experts, trace.num_layers, trace.width
    width = min(batch_size * K, E)
    experts = np.asarray(dec.experts)
    gates = None if dec.gate_weights is None else np.asarray(dec.gate_weights)
    # Simulate the slots: cursor[s] = next step of the request in slot s.
    # A trace without request ids and no decode steps is one empty "request": skip empties.
    queue = [(a, b) for a, b in zip(starts.tolist(), stops.tolist(), strict=True) if b > a]
    slots: list[list[int]] = []
    while queue and len(slots) < batch_size:
        slots.append(list(queue.pop(0)))
    out_e: list[np.ndarray] = []
    out_g: list[np.ndarray] = []
    active: list[int] = []
    mask = np.zeros((L, E), dtype=bool)
    gsum = np.zeros((L, E), dtype=np.float32)
    while slots:
        rows = [s[0] for s in slots]
        mask[:] = False
        gsum[:] = 0
        for r in rows:
            for layer in range(L):
                ids = experts[r, layer]
                ids = ids[ids != PAD]
                mask[layer, ids] = True
                if gates is not None:
                    np.add.at(gsum[layer], ids, gates[r, layer][experts[r, layer] != PAD])
        step = np.full((L, width), PAD, EXPERT_DTYPE)
        gstep = np.zeros((L, width), np.float32)
        for layer in range(L):
            ids = np.flatnonzero(mask[layer])
            step[layer, :len(ids)] = ids
            gstep[layer, :len(ids)] = gsum[layer, ids]
        out_e.append(step)
        out_g.append(gstep)
        active.append(len(rows))
        nxt = []
        for s in slots:
            s[0] += 1
            if s[0] < s[1]:
                nxt.append(s)
            elif queue:
                nxt.append(list(queue.pop(0)))
        slots = nxt
    T = len(out_e)
    meta = trace.meta.with_updates(extra={**trace.meta.extra, "batch_size": batch_size,
                                          "batched_from_steps": dec.num_steps})
    return make_trace(np.stack(out_e) if T else np.zeros((0, L, width), EXPERT_DTYPE), meta,
                      gate_weights=None if gates is None else
                      (np.stack(out_g) if T else np.zeros((0, L, width), np.float32)),
                      request_id=np.arange(T), position=np.asarray(active, np.int64),
                      phase=np.full(T, DECODE, np.int8))


__all__ = ["DECODE", "PREFILL", "batch_decode", "decode_only", "select_layers", "slice_requests"]
