"""Pre-gated / speculative prefetch: predict layer ``l + 1``'s experts from layer ``l``.

With a trace that carries ``predicted`` (a speculative router's guesses for layer ``l`` computed
from layer ``l - 1``'s hidden state), row ``r`` (layer ``l`` of step ``t``) prefetches
``predicted[t, l + 1]`` for row ``r + 1``. Without it (or with ``simulate=True``), a predictor of
a given ``accuracy`` is simulated: each expert of row ``r + 1`` is predicted correctly with
probability ``accuracy``, otherwise a uniformly random expert of that layer that the row does not
use (and that was not predicted already) is predicted in its place; the draws come from
``numpy.random.default_rng(seed)``, one ``(keep, pick)`` pair per slot of the trace in step,
layer, slot order, so a seed gives the same plan bit for bit. The last layer predicts nothing.

Knobs: ``accuracy`` (per-expert recall of the simulated predictor, in [0, 1]; default 0.8),
``simulate`` (simulate even when the trace has ``predicted``; default False), ``top_n``
(prefetch at most the first ``top_n`` predictions per row; ``None`` = all).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from moesim.kernels.jit import njit
from moesim.sim.errors import ConfigError
from moesim.sim.prefetch._plan import PieceRouting, PrefetchPlan, plan_from_lists
from moesim.traces.trace import PAD, Trace

NAME = "speculative"
PARAMS: dict[str, Any] = {"accuracy": 0.8, "simulate": False, "top_n": None}
# Steps whose random draws are made at once (bounds memory on long traces; the stream is the same).
_CHUNK_STEPS = 1 << 14


def _knobs(params: Mapping[str, Any]) -> tuple[float, bool, int | None]:
    acc, sim, n = params["accuracy"], params["simulate"], params["top_n"]
    if isinstance(acc, bool) or not isinstance(acc, (int, float, np.floating)) or not 0.0 <= float(acc) <= 1.0:
        raise ConfigError(f"prefetcher 'speculative': knob 'accuracy' must be a number in [0, 1], got {acc!r}")
    if not isinstance(sim, bool):
        raise ConfigError(f"prefetcher 'speculative': knob 'simulate' must be a boolean, got {sim!r}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1):
        raise ConfigError(f"prefetcher 'speculative': knob 'top_n' must be an integer >= 1 or None, got {n!r}")
    return float(acc), sim, None if n is None else int(n)


@njit
def _simulate(experts, u, accuracy, num_experts, out):
    """``out[t, l, i]``: the prediction for slot ``i`` of row (t, l) (``-1`` where the slot is a pad)."""
    T, L, K = experts.shape
    used = np.zeros(num_experts, np.uint8)
    for t in range(T):
        for layer in range(L):
            m = 0
            for i in range(K):
                e = experts[t, layer, i]
                if e >= 0:
                    used[e] = 1
                    m += 1
            for i in range(K):
                e = experts[t, layer, i]
                out[t, layer, i] = PAD
                if e < 0:
                    continue
                if u[t, layer, i, 0] < accuracy:
                    out[t, layer, i] = e
                    continue
                free = 0
                for b in range(num_experts):
                    if used[b] == 0:
                        free += 1
                if free == 0:  # every expert is in the row: a wrong guess is impossible
                    out[t, layer, i] = e
                    continue
                pick = min(int(u[t, layer, i, 1] * free), free - 1)
                for b in range(num_experts):
                    if used[b] == 0:
                        if pick == 0:
                            out[t, layer, i] = b
                            used[b] = 1  # never predicted twice
                            break
                        pick -= 1
            for i in range(K):
                e = experts[t, layer, i]
                if e >= 0:
                    used[e] = 0
                p = out[t, layer, i]
                if p >= 0:
                    used[p] = 0


def predictions(trace: Trace, params: Mapping[str, Any], seed: int) -> np.ndarray:
    """``[T, L, K']`` predicted experts per row: ``trace.predicted`` or a simulated predictor's."""
    _, sim, _ = _knobs(params)
    if trace.predicted is not None and not sim:
        return np.asarray(trace.predicted)
    return Session(trace.num_experts, params, seed).simulate(np.asarray(trace.experts))


def _plan_from_predictions(pred: np.ndarray, num_experts: int, top_n: int | None, row0: int) -> PrefetchPlan:
    T, L, _ = pred.shape
    p = pred[:, 1:, :] if top_n is None else pred[:, 1:, :top_n]
    mask = p >= 0
    issued = np.zeros((T, L), np.int64)
    issued[:, :L - 1] = mask.sum(axis=2)
    row_ptr = np.zeros(T * L + 1, np.int64)
    np.cumsum(issued.reshape(-1), out=row_ptr[1:])
    layer = np.arange(1, L, dtype=np.int64)[None, :, None]
    keys = (p.astype(np.int64) + layer * num_experts)[mask].astype(np.int32)
    target = np.broadcast_to(np.arange(T, dtype=np.int64)[:, None, None] * L + layer, p.shape)[mask] + row0
    return PrefetchPlan(row_ptr, keys, np.ascontiguousarray(target, np.int64))


class Session:
    """The simulated predictor's random stream carries over from piece to piece, so the draws are
    those of one pass over the whole trace whatever the pieces."""

    def __init__(self, num_experts: int, params: Mapping[str, Any], seed: int) -> None:
        self.accuracy, self.simulated, self.top_n = _knobs(params)
        self.E = num_experts
        self.rng = np.random.default_rng(seed)

    def simulate(self, experts: np.ndarray) -> np.ndarray:
        T, L, K = experts.shape
        out = np.empty((T, L, K), np.int16)
        for start in range(0, T, _CHUNK_STEPS):
            stop = min(start + _CHUNK_STEPS, T)
            u = self.rng.random((stop - start, L, K, 2))
            _simulate(np.ascontiguousarray(experts[start:stop]), u, self.accuracy, self.E, out[start:stop])
        return out

    def plan_piece(self, piece: PieceRouting) -> PrefetchPlan:
        if piece.predicted is not None and not self.simulated:
            pred = piece.predicted
        else:
            pred = self.simulate(piece.experts)
        return _plan_from_predictions(pred, self.E, self.top_n, piece.row0)


def start(num_layers: int, num_experts: int, top_k: int, params: Mapping[str, Any], seed: int) -> Session:
    return Session(num_experts, params, seed)


def reference(trace: Trace, params: Mapping[str, Any], seed: int) -> PrefetchPlan:
    acc, sim, top_n = _knobs(params)
    experts = np.asarray(trace.experts)
    T, L, K = experts.shape
    E = trace.num_experts
    if trace.predicted is not None and not sim:
        pred = np.asarray(trace.predicted)
    else:
        rng = np.random.default_rng(seed)
        u = np.concatenate([rng.random((min(start + _CHUNK_STEPS, T) - start, L, K, 2))
                            for start in range(0, T, _CHUNK_STEPS)]) if T else np.zeros((0, L, K, 2))
        pred = np.full((T, L, K), PAD, np.int64)
        for t in range(T):
            for layer in range(L):
                row = [int(e) for e in experts[t, layer]]
                chosen: list[int] = []
                for i, e in enumerate(row):
                    if e < 0:
                        continue
                    free = [b for b in range(E) if b not in row and b not in chosen]
                    if u[t, layer, i, 0] < acc or not free:
                        pred[t, layer, i] = e
                    else:
                        b = free[min(int(u[t, layer, i, 1] * len(free)), len(free) - 1)]
                        pred[t, layer, i] = b
                        chosen.append(b)
    out: list[list[tuple[int, int]]] = []
    for t in range(T):
        for layer in range(L):
            if layer == L - 1:
                out.append([])
                continue
            guesses = [int(e) for e in pred[t, layer + 1] if e >= 0]
            if top_n is not None:
                guesses = [int(e) for e in pred[t, layer + 1][:top_n] if e >= 0]
            out.append([((layer + 1) * E + g, t * L + layer + 1) for g in guesses])
    return plan_from_lists(out)
