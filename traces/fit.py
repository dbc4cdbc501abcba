"""Fit the synthetic generator to a recorded trace, and write the model presets.

:func:`fit` estimates a :class:`~traces.synth.SynthConfig` whose routing arrays (the choice model of
:mod:`traces.synth_kernel`) reproduce the trace:

1. *Maximum likelihood*: with the recorded history given, the probability of each recorded row
   (its experts in router order) is a conditional logit, convex in the arrays; L-BFGS
   (:mod:`traces.lbfgs`) finds the optimum under a Gaussian prior per array (:data:`PRIOR`).
2. *Calibration by simulation*: a model fitted on recorded histories drifts when it runs on its own
   output (it reuses more, and its layers agree less, than the recording), so synthetic traces with
   the recording's request structure are generated and the arrays are moved until those traces
   match the recording in what decides cache behaviour: how many chosen experts come back after each
   gap (recency), and after each gap since the use before (bursts), how often each expert repeats on
   the next token (stickiness), how repetitive each domain's requests are and how much requests
   differ in that (locality), each expert's popularity per domain, and how much the experts of one layer tell about the next (the inter-layer
   mutual information). Each step adds ``step * log(recorded count / synthetic count)`` to the
   matching array (iterative proportional fitting, with a damped, decreasing step and the same random
   numbers every step; the affinity is scaled per layer by the ratio of mutual informations).

Request lengths (lognormal median and MAD-based sigma, min / max), domains and gate knobs are read
off the trace directly. :func:`fit_report` compares summary statistics of a recording and a
synthetic trace; :mod:`traces.fiteval` compares what caches and prefetchers do on both.

``python -m moesim.traces.fit`` fits each real trace of the shared data folder on one half of its
requests, prints the comparison on both halves, and writes ``traces/presets/*.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from moesim.kernels.files import atomic_write_text
from moesim.kernels.messages import one_line
from moesim.traces.fit_kernel import nll_and_grad, routing_moments
from moesim.traces.fitstats import request_lengths, trace_stats
from moesim.traces.lbfgs import minimize
from moesim.traces.synth import (
    MODEL_SHAPES,
    PRESET_KNOBS,
    ROUTING_FIELDS,
    SYNTH_VERSION,
    RequestPlan,
    RoutingArrays,
    SynthConfig,
    gate_weights,
    generate_with_plan,
    preset_file,
)
from moesim.traces.synth_kernel import NUM_GAP_BINS, sample_rows
from moesim.traces.trace import Trace

# 3: the choice model fitted by likelihood and calibrated by simulation (2: bisected scalar knobs).
FIT_VERSION = "3"
CALIBRATION_SEED = 12345
# Iterations of L-BFGS on the likelihood (the calibration then moves the arrays further anyway).
MLE_MAX_ITER = 100
CALIBRATION_ITERATIONS = 36
CALIBRATION_STEP = 0.3
CALIBRATION_DECAY = 20.0
# Affinity joins the calibration once recency and popularity have settled.
AFFINITY_FROM = 8
# Nats added to both sides of the mutual-information ratio (a layer pair with almost none).
MI_PRIOR = 0.01
# The per-request spread of the locality starts here and moves by the ratio of the recorded and
# synthetic spreads of distinct experts per request (plus this many experts on both sides).
INITIAL_SPREAD = 0.3
SPREAD_PRIOR = 0.5
# Synthetic traces of the calibration repeat the recorded request plan up to at least this many
# steps, so their counts are not noisier than the recording's.
MIN_CALIBRATION_STEPS = 16384
# Pseudo-count added to both sides of a count ratio.
COUNT_PRIOR = 1.0
# Precision (1 / variance, in nats^-2) of the Gaussian prior on each array's entries: weak on the
# popularity (every expert is seen often), unit on the sparse pair and per-expert arrays.
PRIOR = {"popularity": 0.01, "domain_offset": 1.0, "locality": 1.0, "recency": 0.1, "recency2": 0.1,
         "stickiness": 1.0, "affinity": 1.0}
_GATE_MC_ROWS = 1 << 15


@dataclass(frozen=True)
class RoutingData:
    """A trace's rows in the form the kernels read: contiguous experts, request offsets, and each
    request's domain as 0..D-1."""

    experts: np.ndarray  # int16 [T, L, K]
    offsets: np.ndarray  # int64 [R + 1]
    domains: np.ndarray  # int64 [R]
    num_domains: int
    num_experts: int

    @classmethod
    def of(cls, trace: Trace) -> RoutingData:
        bounds = trace.request_bounds().astype(np.int64)
        if trace.domain is not None and trace.num_steps:
            labels = np.asarray(trace.domain)[bounds[:-1]].astype(np.int64)
            _, dom = np.unique(labels, return_inverse=True)
            num_domains = int(dom.max()) + 1
        else:
            dom, num_domains = np.zeros(len(bounds) - 1, np.int64), 1
        return cls(np.ascontiguousarray(trace.experts, dtype=np.int16), bounds, dom.astype(np.int64),
                   num_domains, trace.num_experts)

    @property
    def plan(self) -> RequestPlan:
        steps = np.diff(self.offsets)
        return RequestPlan(np.zeros(len(steps), np.int64), steps, self.domains)


# ---- step 1: maximum likelihood ----------------------------------------------------------------

# The arrays the likelihood fits (the per-request spread of the locality is a random effect: the
# calibration sets it).
MLE_FIELDS = tuple(n for n in ROUTING_FIELDS if n != "locality_spread")


def _shapes(data: RoutingData) -> dict[str, tuple[int, ...]]:
    L, E, D = data.experts.shape[1], data.num_experts, data.num_domains
    return {"popularity": (L, E), "domain_offset": (D, L, E), "locality": (D, L), "recency": (L, NUM_GAP_BINS),
            "recency2": (L, NUM_GAP_BINS), "stickiness": (L, E), "affinity": (L, E, E)}


def maximum_likelihood(data: RoutingData, *, max_iter: int = MLE_MAX_ITER,
                       start: RoutingArrays | None = None) -> tuple[RoutingArrays, np.ndarray]:
    """The arrays maximising the likelihood of the recorded rows (plus the Gaussian prior), and how
    many candidate experts fell in each recency bin ``[L, B]`` (0 where a bin has no data)."""
    shapes = _shapes(data)
    sizes = {n: int(np.prod(s)) for n, s in shapes.items()}
    rows = max(1, int(np.count_nonzero((data.experts >= 0).any(axis=2))))
    rec_count = np.zeros(shapes["recency"], np.int64)

    def unpack(x: np.ndarray) -> list[np.ndarray]:
        out, i = [], 0
        for n in MLE_FIELDS:
            out.append(x[i:i + sizes[n]].reshape(shapes[n]))
            i += sizes[n]
        return out

    def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
        params = unpack(x)
        grads = [np.zeros(shapes[n]) for n in MLE_FIELDS]
        rec_count[:] = 0
        value = nll_and_grad(data.experts, data.offsets, data.domains, *params, *grads, rec_count)
        for n, p, g in zip(MLE_FIELDS, params, grads, strict=True):
            value += 0.5 * PRIOR[n] * float((p * p).sum())
            g += PRIOR[n] * p
        return value / rows, np.concatenate([g.ravel() for g in grads]) / rows

    x0 = (np.concatenate([getattr(start, n).ravel() for n in MLE_FIELDS]) if start is not None
          else np.zeros(sum(sizes.values())))
    result = minimize(objective, x0, max_iter=max_iter)
    objective(result.x)  # rec_count at the optimum (it does not depend on the arrays)
    arrays = dict(zip(MLE_FIELDS, unpack(result.x), strict=True))
    arrays["affinity"][0] = 0.0  # layer 0 has no previous layer
    arrays["locality_spread"] = (start.locality_spread if start is not None
                                 else np.zeros(data.experts.shape[1]))
    return RoutingArrays(**arrays), rec_count.copy()


# ---- step 2: calibration by simulation ----------------------------------------------------------

def moments(data: RoutingData, experts: np.ndarray | None = None,
            offsets: np.ndarray | None = None, domains: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The counts the calibration matches (see :func:`traces.fit_kernel.routing_moments`)."""
    e = data.experts if experts is None else experts
    L, E, D = e.shape[1], data.num_experts, data.num_domains
    offsets = data.offsets if offsets is None else offsets
    out = {"gap": np.zeros((L, NUM_GAP_BINS + 1)), "gap2": np.zeros((L, NUM_GAP_BINS + 1)),
           "pop": np.zeros((D, L, E)), "stick": np.zeros((L, E)), "pair": np.zeros((L, E, E)),
           "reuse": np.zeros((D, L)), "first": np.zeros((len(offsets) - 1, L))}
    routing_moments(e, offsets, data.domains if domains is None else domains, out["gap"], out["gap2"], out["pop"],
                    out["stick"], out["pair"], out["reuse"], out["first"])
    return out


def _log_ratio(real: np.ndarray, synthetic: np.ndarray, prior: float) -> np.ndarray:
    return np.log((real + prior) / (synthetic + prior))


def pair_mi(pair: np.ndarray, *, corrected: bool = False) -> np.ndarray:
    """Mutual information (nats) of each layer's pair counts ``[l, a, e]`` (``l >= 1``): the same
    quantity as :func:`traces.fitstats.interlayer_mi`, from counts already at hand. ``corrected``
    subtracts the plug-in estimate's bias to first order (Miller-Madow: (cells - rows - columns + 1)
    / 2N with nonzero cells counted), so recordings of different lengths compare: the calibration
    matches a short recording with long synthetic traces."""
    out = np.zeros(pair.shape[0] - 1)
    for i, block in enumerate(pair[1:]):
        total = block.sum()
        if total <= 0:
            continue
        j = block / total
        pa, pb = j.sum(axis=1, keepdims=True), j.sum(axis=0, keepdims=True)
        nz = j > 0
        out[i] = float((j[nz] * np.log(j[nz] / (pa @ pb)[nz])).sum())
        if corrected:
            cells = np.count_nonzero(nz) - np.count_nonzero(pa) - np.count_nonzero(pb) + 1
            out[i] -= cells / (2.0 * total)
    return out


def request_spread(first: np.ndarray, domains: np.ndarray) -> np.ndarray:
    """Per layer, the standard deviation over requests of their distinct experts, each request
    measured from its domain's mean (how much more or less repetitive requests are than their
    domain). Matching the median absolute deviation instead (robust to the few requests that loop)
    was tried on OLMoE: it moved the LRU and OPT curves further from the held-out half."""
    resid = np.array(first, np.float64)
    for d in np.unique(domains):
        rows = domains == d
        resid[rows] -= resid[rows].mean(axis=0)
    return resid.std(axis=0)


def calibrate(arrays: RoutingArrays, data: RoutingData, *, seed: int = CALIBRATION_SEED,
              iterations: int = CALIBRATION_ITERATIONS,
              watch: Callable[[int, dict[str, np.ndarray], dict[str, np.ndarray]], None] | None = None
              ) -> RoutingArrays:
    """Move ``arrays`` until traces sampled from them match ``data``'s counts (module docstring).

    Steps are damped (``CALIBRATION_STEP / (1 + it / CALIBRATION_DECAY)``): recency feeds on itself
    (an expert reused is a candidate for reuse again), so a full step overshoots. The stickiness
    moves only relative to its layer's mean (the gap-1 recency moves the mean). The affinity keeps
    the pattern of its pairs and is scaled per layer until the inter-layer mutual information
    matches: moving every pair on its own drifts (the pairs chase the recency's moves).
    ``watch(iteration, synthetic_counts, recorded_counts)`` sees every step's counts."""
    T = data.experts.shape[0]
    copies = max(1, math.ceil(MIN_CALIBRATION_STEPS / max(T, 1)))
    steps = np.diff(data.offsets)
    offsets = np.r_[0, np.cumsum(np.tile(steps, copies))].astype(np.int64)
    domains = np.tile(data.domains, copies)
    seeds = np.random.default_rng(seed).integers(0, np.iinfo(np.int64).max, size=len(domains),
                                                 dtype=np.int64).astype(np.uint64)
    recorded = moments(data)
    real = {k: v * copies for k, v in recorded.items()}
    real_mi = np.maximum(pair_mi(recorded["pair"], corrected=True), 0.0)
    seen = real["gap"][:, :NUM_GAP_BINS] > 0
    seen2 = real["gap2"][:, :NUM_GAP_BINS] > 0
    real_spread = request_spread(recorded["first"], data.domains)
    pop, dom, loc, spread, rec, rec2, stick, aff = (np.array(getattr(arrays, n)) for n in ROUTING_FIELDS)
    spread = np.where(spread > 0, spread, INITIAL_SPREAD)  # moved by ratios: it must start above 0
    out = np.empty((int(offsets[-1]), *data.experts.shape[1:]), np.int16)
    for it in range(iterations):
        sample_rows(pop, dom, loc, spread, rec, rec2, stick, aff, domains, seeds, offsets, out)
        syn = moments(data, out, offsets, domains)
        if watch is not None:
            watch(it, syn, real)
        step = CALIBRATION_STEP / (1.0 + it / CALIBRATION_DECAY)
        rec += step * np.where(seen, _log_ratio(real["gap"], syn["gap"], COUNT_PRIOR)[:, :NUM_GAP_BINS], 0.0)
        rec2 += step * np.where(seen2, _log_ratio(real["gap2"], syn["gap2"], COUNT_PRIOR)[:, :NUM_GAP_BINS], 0.0)
        total = _log_ratio(real["stick"].sum(axis=1, keepdims=True), syn["stick"].sum(axis=1, keepdims=True),
                           COUNT_PRIOR)
        stick += step * (_log_ratio(real["stick"], syn["stick"], COUNT_PRIOR) - total)
        dom += step * _log_ratio(real["pop"], syn["pop"], COUNT_PRIOR)
        # The per-domain offsets move; their mean over domains belongs to the popularity.
        mean = dom.mean(axis=0)
        pop += mean
        dom -= mean
        # Domains' locality relative to each other (the recency sets the level).
        lr = _log_ratio(real["reuse"], syn["reuse"], COUNT_PRIOR)
        loc += step * (lr - lr.mean(axis=0))
        spread *= np.exp(step * np.log((real_spread + SPREAD_PRIOR)
                                       / (request_spread(syn["first"], domains) + SPREAD_PRIOR)))
        if it >= AFFINITY_FROM:
            ratio = (real_mi + MI_PRIOR) / (np.maximum(pair_mi(syn["pair"], corrected=True), 0.0) + MI_PRIOR)
            aff[1:] *= np.exp(step * np.log(ratio))[:, None, None]
    return RoutingArrays(pop, dom, loc, spread, rec, rec2, stick, aff)


def fill_recency(recency: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Bins without data (``count`` 0: gaps longer than any recorded request) take the value of the
    nearest shorter bin with data, rather than the prior's 0 (which would make an expert used long
    ago as likely as one never used)."""
    out = np.array(recency, np.float64)
    for layer in range(out.shape[0]):
        seen = np.flatnonzero(count[layer] > 0)
        if len(seen):
            out[layer, seen[-1] + 1:] = out[layer, seen[-1]]
    return out


# ---- request structure and gates ----------------------------------------------------------------

def _length_knobs(lengths: np.ndarray, kind: str) -> dict[str, Any]:
    if len(lengths) == 0 or lengths.max() == 0:
        return {f"{kind}_len_median": 0.0, f"{kind}_len_sigma": 0.0, f"{kind}_len_min": 0,
                f"{kind}_len_max": 0}
    positive = lengths[lengths > 0]
    logs = np.log(positive)
    mad = float(np.median(np.abs(logs - np.median(logs))))
    return {f"{kind}_len_median": float(np.median(lengths)), f"{kind}_len_sigma": round(1.4826 * mad, 6),
            f"{kind}_len_min": int(lengths.min()), f"{kind}_len_max": int(lengths.max())}


def fit_gate_scale(top1_share: float, top_k: int) -> float:
    """The ``gate_logit_scale`` whose mean top-1 share (weight / row total) is ``top1_share``."""
    if top_k == 1 or not math.isfinite(top1_share) or top1_share <= 1.0 / top_k:
        return 0.0

    def share(scale: float) -> float:
        g = gate_weights(np.random.default_rng(0), _GATE_MC_ROWS, 1, top_k, scale, 1.0)
        return float(g[:, 0, 0].mean())

    lo, hi = 0.0, 1.0
    while share(hi) < top1_share and hi < 1e3:
        lo, hi = hi, hi * 2
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if share(mid) < top1_share else (lo, mid)
    return round(0.5 * (lo + hi), 6)


def _gate_knobs(trace: Trace) -> dict[str, float]:
    if trace.gate_weights is None:
        return {"gate_logit_scale": 1.0, "gate_topk_mass": 1.0}
    g = np.asarray(trace.gate_weights, np.float64)
    total = g.sum(axis=-1)
    ok = total > 0
    if not ok.any():
        return {"gate_logit_scale": 1.0, "gate_topk_mass": 1.0}
    top1 = float((g.max(axis=-1)[ok] / total[ok]).mean())
    mass = float(np.clip(total[ok].mean(), 1e-6, 1.0))
    return {"gate_logit_scale": fit_gate_scale(top1, trace.meta.top_k), "gate_topk_mass": round(mass, 6)}


def _domain_order(domains: np.ndarray) -> str:
    """"blocks" when every domain's requests are one contiguous run (and in increasing order)."""
    runs = domains[np.r_[True, domains[1:] != domains[:-1]]] if len(domains) else domains
    return "blocks" if len(runs) == len(np.unique(runs)) and np.all(np.diff(runs) > 0) else "random"


def fit(trace: Trace, *, seed: int = CALIBRATION_SEED, max_iter: int = MLE_MAX_ITER,
        calibration_iterations: int = CALIBRATION_ITERATIONS) -> SynthConfig:
    """A :class:`SynthConfig` whose synthetic traces behave like ``trace`` (deterministic for a given
    ``seed``). Requests are whole runs of equal ``request_id``; the recency history restarts at each."""
    meta = trace.meta
    L, E, K = trace.num_layers, trace.num_experts, meta.top_k
    if trace.num_steps < 2:
        raise ValueError(f"{trace.file or '<memory>'}: field 'experts': need at least 2 steps to fit, "
                         f"got {trace.num_steps}")
    if trace.width != K:
        raise ValueError(f"{trace.file or '<memory>'}: field 'experts': width {trace.width} differs from "
                         f"top_k={K}; fit the unbatched trace")
    data = RoutingData.of(trace)
    arrays, _ = maximum_likelihood(data, max_iter=max_iter)
    if calibration_iterations > 0:
        arrays = calibrate(arrays, data, seed=seed, iterations=calibration_iterations)
    chosen = moments(data)
    arrays = RoutingArrays(arrays.popularity, arrays.domain_offset, arrays.locality, arrays.locality_spread,
                           fill_recency(arrays.recency, chosen["gap"][:, :NUM_GAP_BINS]),
                           fill_recency(arrays.recency2, chosen["gap2"][:, :NUM_GAP_BINS]), arrays.stickiness,
                           arrays.affinity)
    prefill, decode = request_lengths(trace)
    decode_knobs = _length_knobs(decode, "decode")
    decode_knobs["decode_len_min"] = max(1, decode_knobs["decode_len_min"])
    decode_knobs["decode_len_max"] = max(decode_knobs["decode_len_min"], decode_knobs["decode_len_max"])
    return SynthConfig(
        model=meta.model, num_layers=L, num_experts=E, top_k=K, routing=arrays, num_domains=data.num_domains,
        num_requests=len(decode), domain_order=_domain_order(data.domains), **_gate_knobs(trace),
        **_length_knobs(prefill, "prompt"), **decode_knobs)


# ---- halves, comparison --------------------------------------------------------------------------

def split_requests(trace: Trace, part: int) -> Trace:
    """The requests of ``trace`` with an even (``part=0``) or odd (``part=1``) index, in order: two
    halves with the same mix of domains when requests of one domain are contiguous."""
    if part not in (0, 1):
        raise ValueError(f"part must be 0 or 1, got {part!r}")
    bounds = trace.request_bounds()
    keep = [np.arange(bounds[r], bounds[r + 1]) for r in range(part, len(bounds) - 1, 2)]
    if not keep:
        raise ValueError(f"{trace.file or '<memory>'}: has no request {part} to split off")
    idx = np.concatenate(keep)
    return trace.with_arrays(experts=trace.experts[idx], **{n: a[idx] for n, a in trace.optional_fields().items()})


REPORT_STATS = ("entropy", "top_share", "reuse", "far_overlap", "cross_overlap", "domain_overlap", "mi",
                "gate_top1", "gate_mass", "decode_len_mean", "prompt_len_mean")


def _rel(real: float, synth: float) -> float:
    if real == 0:
        return 0.0 if synth == 0 else math.inf
    return abs(synth - real) / abs(real)


def _finite_mean(values: np.ndarray) -> float:
    """Mean over the layers where the statistic is defined; NaN (without a warning) where none is."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def fit_report(real: Trace, synthetic: Trace) -> dict[str, dict[str, Any]]:
    """Real vs synthetic statistics: for each, the layer mean of both, their relative error and the
    largest per-layer relative error (``max_layer_rel_error``; equal to ``rel_error`` for scalars)."""
    a, b = trace_stats(real), trace_stats(synthetic)
    out: dict[str, dict[str, Any]] = {}
    for name in REPORT_STATS:
        if a[name] is None or b[name] is None:
            continue
        ra, rb = np.atleast_1d(np.asarray(a[name], float)), np.atleast_1d(np.asarray(b[name], float))
        mean_a, mean_b = _finite_mean(ra), _finite_mean(rb)
        entry: dict[str, Any] = {"real": mean_a, "synthetic": mean_b, "rel_error": _rel(mean_a, mean_b)}
        if ra.shape == rb.shape and ra.size > 1:
            # NaN when no layer has the statistic on both sides (e.g. no step has a predecessor).
            entry["max_layer_rel_error"] = max((_rel(float(x), float(y)) for x, y in zip(ra, rb, strict=True)
                                                if np.isfinite(x) and np.isfinite(y)), default=math.nan)
        else:
            entry["max_layer_rel_error"] = entry["rel_error"]
        out[name] = entry
    return out


def synthetic_like(config: SynthConfig, real: Trace, *, seed: int = 0) -> Trace:
    """A synthetic trace with ``real``'s request structure (lengths, phases, domains) for a fair
    comparison of the routing alone."""
    prefill, decode = request_lengths(real)
    data = RoutingData.of(real)
    return generate_with_plan(config, RequestPlan(prefill, decode, data.domains), seed=seed)


# ---- presets from the shared data ------------------------------------------------------------

REAL_TRACES = {
    "olmoe-1b-7b": ("olmoe-1b-7b/olmoe_decode_all.npz",
                    "OLMoE-1B-7B-0924, 400 requests x up to 128 greedy decode tokens (wikitext-103, MBPP, "
                    "GSM8K, ARC-Challenge), 16 layers, 64 experts, top-8"),
    "mixtral-8x7b": ("mixtral-8x7b/*.jsonl",
                     "Mixtral-8x7B-Instruct, 4 requests (2 HumanEval, 2 GSM8K), 577 decode tokens, "
                     "32 layers, 8 experts, top-2"),
}
# Derived presets shuffle their experts with this seed (see traces.synth.derive_routing).
DERIVE_SEED = 7


def load_real_trace(name: str, data_dir: str | os.PathLike[str]) -> Trace:
    """One of the real traces of the shared data folder (``REAL_TRACES``)."""
    from moesim.traces.importers import import_mixtral_jsonl, import_olmoe_npz

    root = Path(data_dir)
    if name == "olmoe-1b-7b":
        return import_olmoe_npz(root / REAL_TRACES[name][0])
    if name == "mixtral-8x7b":
        files = sorted((root / "mixtral-8x7b").glob("*.jsonl"))
        if not files:
            raise FileNotFoundError(f"{root / 'mixtral-8x7b'}: no *.jsonl files")
        return import_mixtral_jsonl(files)
    raise ValueError(f"unknown real trace {name!r}; choose one of {list(REAL_TRACES)}")


def preset_knobs(config: SynthConfig) -> dict[str, Any]:
    return {k: getattr(config, k) for k in PRESET_KNOBS}


def _rounded(value: Any, digits: int = 4) -> Any:
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v, digits) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(float(value)) else round(float(value), digits)
    if isinstance(value, np.integer):
        return int(value)
    return value


def preset_document(config: SynthConfig, *, name: str, fitted_on: str, note: str,
                    report: dict[str, Any] | None = None) -> dict[str, Any]:
    """A preset file's content: shape, request and gate knobs, the routing arrays and the report."""
    return {
        "preset": name,
        "model": config.model,
        "shape": {"num_layers": config.num_layers, "num_experts": config.num_experts, "top_k": config.top_k},
        "fitted_on": fitted_on,
        "note": note,
        "generator_version": SYNTH_VERSION,
        "fit_version": FIT_VERSION,
        "calibration_seed": CALIBRATION_SEED,
        "knobs": preset_knobs(config),
        "fit_report": _rounded(report or {}),
        "routing": config.routing.to_json() if config.routing is not None else None,
    }


def fit_presets_from_shared_data(out_dir: str | os.PathLike[str] | None = None,
                                 data_dir: str | os.PathLike[str] | None = None, *, write: bool = True,
                                 echo: bool = True) -> dict[str, Any]:
    """Fit each real trace on one half of its requests, compare on both halves, and (``write``) write
    one preset per model shape. Returns ``{"reports": {trace: report}, "written": {model: path}}``."""
    from moesim.traces.fiteval import evaluate_fit, format_report, real_versus_real
    from moesim.traces.importers import shared_data_dir

    data = Path(data_dir) if data_dir is not None else shared_data_dir()
    if data is None or not data.is_dir():
        raise FileNotFoundError(f"the shared data folder {'' if data is None else str(data) + ' '}is absent "
                                "(set MOESIM_SHARED_DATA or pass --data-dir)")
    out = Path(out_dir) if out_dir is not None else Path(__file__).resolve().parent / "presets"
    fitted: dict[str, tuple[SynthConfig, dict[str, Any]]] = {}
    for name in REAL_TRACES:
        real = load_real_trace(name, data)
        halves = (split_requests(real, 0), split_requests(real, 1))
        config = fit(halves[0]).replace(model=name)
        report = evaluate_fit(config, {"fit_half": halves[0], "held_out_half": halves[1]}, profile=name)
        report["real_vs_real"] = real_versus_real(*halves)
        report["statistics"] = fit_report(halves[1], synthetic_like(config, halves[1]))
        if echo:
            print(format_report(name, report))
        fitted[name] = (config, report)
    written: dict[str, Path] = {}
    for model, shape in MODEL_SHAPES.items():
        config, report = fitted[shape.fitted_on]
        description = REAL_TRACES[shape.fitted_on][1]
        if model == shape.fitted_on:
            doc = preset_document(config, name=model, fitted_on=description, report=report,
                                  note=f"fitted on the even-numbered half of the requests; gates: {shape.note}")
        else:
            knobs = preset_knobs(config)
            if shape.gate_topk_mass is not None:
                knobs["gate_topk_mass"] = shape.gate_topk_mass
            doc = {
                "preset": model, "model": model,
                "shape": {"num_layers": shape.num_layers, "num_experts": shape.num_experts, "top_k": shape.top_k},
                "fitted_on": description,
                "note": (f"no recording of this model: routing derived from the {shape.fitted_on} preset "
                         "(traces.synth.derive_routing: the layer at the same relative depth, its experts "
                         "at evenly spaced popularity ranks, affinity scaled by the ratio of top-k); "
                         f"gates: {shape.note}"),
                "derived_from": shape.fitted_on, "derive_seed": DERIVE_SEED,
                "generator_version": SYNTH_VERSION, "fit_version": FIT_VERSION,
                "knobs": knobs,
                "fit_report": {"source": _rounded(report)},
            }
        if write:
            path = out / preset_file(model)
            atomic_write_text(path, json.dumps(doc, separators=(",", ":")) + "\n")
            written[model] = path
    return {"reports": {k: v[1] for k, v in fitted.items()}, "written": written}


def fit_to_file(trace: Trace, out: str | os.PathLike[str], *, seed: int = CALIBRATION_SEED,
                echo: bool = False) -> Path:
    """Fit ``trace`` (all of it) and write a preset file that ``moesim-trace generate --preset``
    reads; its ``fit_report`` compares the recording with synthetic traces of the fit."""
    from moesim.traces.fiteval import evaluate_fit, format_report

    config = fit(trace, seed=seed)
    report = evaluate_fit(config, {"recording": trace})
    report["statistics"] = fit_report(trace, synthetic_like(config, trace))
    if echo:
        print(format_report(trace.meta.model, report))
    doc = preset_document(config, name=trace.meta.model, fitted_on=str(trace.file or trace.meta.model),
                          note="fitted on the whole recording", report=report)
    path = Path(out)
    atomic_write_text(path, json.dumps(doc, separators=(",", ":")) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moesim.traces.fit", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="the shared data folder (default ../shared/data or "
                        "$MOESIM_SHARED_DATA)")
    parser.add_argument("--out-dir", default=None, help="where to write the preset JSONs (default traces/presets)")
    parser.add_argument("--dry-run", action="store_true", help="print the comparison, write nothing")
    parser.add_argument("--write-presets", action="store_true", help="(the default) write the presets")
    args = parser.parse_args(argv)
    try:
        result = fit_presets_from_shared_data(args.out_dir, args.data_dir, write=not args.dry_run)
    except (OSError, ValueError) as exc:  # no data folder, or a real trace that does not read
        print(f"{parser.prog}: error: {one_line(exc)}", file=sys.stderr)
        return 1
    for model, path in result["written"].items():
        print(f"{model}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
