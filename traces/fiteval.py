"""What caches and prefetchers do on a recording and on synthetic traces fitted to it, side by side.

The one module of ``traces`` that runs :mod:`moesim.sim`: a fit is judged by what users read off a
sweep, so :func:`evaluate_fit` replays both through the same engine. For each half of the recording
(the half the model was fitted on, and the held-out half) it reports, at every shared-cache size
from ``L * E / 16`` to ``3 * L * E / 4`` in steps of ``L * E / 16``:

* the hit rates of LRU (one-pass curve), OPT and the layer-aware policy, overall and per layer
  (``replay``: shared cache, warm across requests);
* the affinity prefetcher's coverage and accuracy (``simulate_offload``: bf16 experts, the RTX 4090
  profile, the model's own profile, ``L * E / 4`` GPU slots);
* the inter-layer mutual information, and two-sample Kolmogorov-Smirnov statistics of the decode
  lengths and of two per-request statistics (share of experts a request touches, step-to-step reuse).

The synthetic side averages ``ceil(MIN_SYNTHETIC_STEPS / steps of the half)`` traces of as many
requests as the half (seeds 0, 1, ...), so a short recording is compared with the model's
expectation at its own length rather than with one noisy draw.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from moesim.traces.fitstats import interlayer_mi, request_lengths, row_masks
from moesim.traces.synth import SynthConfig, generate
from moesim.traces.trace import Trace

MIN_SYNTHETIC_STEPS = 8192
SIZE_STEPS = tuple(range(1, 13))  # sizes k * L * E / 16
PREFETCH_HARDWARE = "rtx-4090"
PREFETCH_FORMAT = "bf16"
POLICIES = ("lru", "opt", "layeraware")


def cache_sizes(trace: Trace) -> list[int]:
    n = trace.num_layers * trace.num_experts
    return [max(trace.width, n * k // 16) for k in SIZE_STEPS]


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    a, b = np.sort(np.asarray(a, np.float64)), np.sort(np.asarray(b, np.float64))
    if len(a) == 0 or len(b) == 0:
        return math.nan
    grid = np.concatenate([a, b])
    fa = np.searchsorted(a, grid, side="right") / len(a)
    fb = np.searchsorted(b, grid, side="right") / len(b)
    return float(np.abs(fa - fb).max())


def per_request_stats(trace: Trace) -> dict[str, np.ndarray]:
    """Per request: the share of the ``L * E`` experts it touches, and its step-to-step reuse rate
    (``|S(t) & S(t - 1)| / |S(t)|`` pooled over its steps and layers; NaN for a one-step request)."""
    masks = row_masks(trace.experts, trace.num_experts)
    bounds = trace.request_bounds()
    touched, reuse = [], []
    for s, e in itertools.pairwise(bounds):
        m = masks[s:e]
        union = np.bitwise_or.reduce(m, axis=0)
        touched.append(float(np.bitwise_count(union).sum()) / (trace.num_layers * trace.num_experts))
        if e - s > 1:
            inter = np.bitwise_count(m[1:] & m[:-1]).sum()
            size = np.bitwise_count(m[1:]).sum()
            reuse.append(float(inter) / max(float(size), 1.0))
        else:
            reuse.append(math.nan)
    return {"touched": np.array(touched), "reuse": np.array(reuse)}


def cache_metrics(trace: Trace, profile: str | None) -> dict[str, Any]:
    """Hit rates (overall ``[S]`` and per layer ``[S, L]``), prefetch, MI and lengths of one trace."""
    from moesim.sim.mrc import lru_hit_curve
    from moesim.sim.replay import replay

    sizes = cache_sizes(trace)
    L = trace.num_layers
    out: dict[str, Any] = {"sizes": sizes}
    curve = lru_hit_curve(trace, sizes)
    per_layer_acc = np.array([float(np.count_nonzero(trace.experts[:, layer] >= 0)) for layer in range(L)])
    out["lru"] = curve.hits / max(curve.accesses, 1)
    out["lru_layer"] = curve.layer_hits / np.maximum(per_layer_acc, 1)[None, :]
    for policy in POLICIES[1:]:
        runs = [replay(trace, policy, s) for s in sizes]
        out[policy] = np.array([r.hit_rate for r in runs])
        out[f"{policy}_layer"] = np.array([[c.hit_rate for c in r.per_layer] for r in runs])
    out["mi"] = float(interlayer_mi(trace).mean()) if L > 1 else 0.0
    out["coverage"] = out["accuracy"] = math.nan
    if profile is not None:
        from moesim.sim.offload import simulate_offload

        o = simulate_offload(trace, profile, PREFETCH_HARDWARE, PREFETCH_FORMAT, l1=sizes[3], prefetcher="affinity")
        out["coverage"] = math.nan if o.prefetch_coverage is None else float(o.prefetch_coverage)
        out["accuracy"] = math.nan if o.prefetch_accuracy is None else float(o.prefetch_accuracy)
    out["decode_len"] = request_lengths(trace)[1]
    out.update(per_request_stats(trace))
    return out


def _mean_metrics(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"sizes": runs[0]["sizes"]}
    for key in ("lru", "opt", "layeraware", "lru_layer", "opt_layer", "layeraware_layer", "mi", "coverage",
                "accuracy"):
        out[key] = np.mean([np.asarray(r[key], np.float64) for r in runs], axis=0)
    for key in ("decode_len", "touched", "reuse"):
        out[key] = np.concatenate([r[key] for r in runs])
    return out


def _rel(real: float, synth: float) -> float:
    return (synth - real) / abs(real) if real else (0.0 if synth == real else math.inf)


def compare(real: dict[str, Any], synth: dict[str, Any]) -> dict[str, Any]:
    """The report entries of one half: both sides' numbers and the differences the goal bounds."""
    out: dict[str, Any] = {"sizes": list(real["sizes"])}
    for p in POLICIES:
        out[p] = {"real": real[p].tolist(), "synthetic": synth[p].tolist(),
                  "max_abs_diff": float(np.abs(synth[p] - real[p]).max()),
                  "max_abs_diff_per_layer": float(np.abs(synth[f"{p}_layer"] - real[f"{p}_layer"]).max())}
    for key in ("coverage", "accuracy", "mi"):
        r, s = float(real[key]), float(synth[key])
        out[key] = {"real": r, "synthetic": s, "rel_diff": _rel(r, s)}
    out["ks"] = {"decode_len": ks_statistic(real["decode_len"], synth["decode_len"]),
                 "request_touched": ks_statistic(real["touched"], synth["touched"]),
                 "request_reuse": ks_statistic(real["reuse"][np.isfinite(real["reuse"])],
                                               synth["reuse"][np.isfinite(synth["reuse"])])}
    return out


def evaluate_fit(config: SynthConfig, recordings: Mapping[str, Trace], *, profile: str | None = None,
                 seed: int = 0) -> dict[str, Any]:
    """Compare ``config``'s synthetic traces with each recording (e.g. ``{"fit_half": a,
    "held_out_half": b}``); ``profile``: the model profile for the prefetch model (None: no prefetch
    comparison)."""
    report: dict[str, Any] = {}
    for label, real in recordings.items():
        requests = len(real.request_bounds()) - 1
        count = max(1, math.ceil(MIN_SYNTHETIC_STEPS / max(real.num_steps, 1)))
        synth = [cache_metrics(generate(config.replace(num_requests=requests), seed=seed + i), profile)
                 for i in range(count)]
        entry = compare(cache_metrics(real, profile), _mean_metrics(synth))
        entry.update({"requests": requests, "steps": real.num_steps, "synthetic_traces": count})
        report[label] = entry
    return report


def real_versus_real(a: Trace, b: Trace) -> dict[str, float]:
    """The largest hit-rate differences between two recordings (the two halves of one): how far
    apart two samples of the same routing already are."""
    ma, mb = cache_metrics(a, None), cache_metrics(b, None)
    out = {}
    for p in POLICIES:
        out[p] = float(np.abs(ma[p] - mb[p]).max())
        out[f"{p}_per_layer"] = float(np.abs(ma[f"{p}_layer"] - mb[f"{p}_layer"]).max())
    return out


def format_report(name: str, report: Mapping[str, Any]) -> str:
    """The comparison as plain-text tables, one per recording."""
    lines = []
    for label, e in report.items():
        if not isinstance(e, Mapping) or "sizes" not in e:
            continue
        lines.append(f"== {name}, {label.replace('_', ' ')}: {e['requests']} requests, {e['steps']} steps; "
                     f"synthetic: mean of {e['synthetic_traces']} trace(s) of {e['requests']} requests")
        lines.append(f"{'size':>6} | " + " | ".join(f"{p.upper():>10} real   syn   diff" for p in POLICIES))
        for i, size in enumerate(e["sizes"]):
            cells = []
            for p in POLICIES:
                r, s = e[p]["real"][i], e[p]["synthetic"][i]
                cells.append(f"{'':>10} {r:.3f} {s:.3f} {s - r:+.3f}")
            lines.append(f"{size:>6} | " + " | ".join(cells))
        lines.append("max |diff|, overall / per layer: " + ", ".join(
            f"{p} {e[p]['max_abs_diff']:.3f} / {e[p]['max_abs_diff_per_layer']:.3f}" for p in POLICIES))
        lines.append("affinity prefetch ({} slots): coverage {:.3f} / {:.3f} ({:+.1%}), accuracy {:.3f} / {:.3f} "
                     "({:+.1%}); inter-layer MI {:.3f} / {:.3f} nats ({:+.1%})".format(
                         e["sizes"][3], e["coverage"]["real"], e["coverage"]["synthetic"], e["coverage"]["rel_diff"],
                         e["accuracy"]["real"], e["accuracy"]["synthetic"], e["accuracy"]["rel_diff"],
                         e["mi"]["real"], e["mi"]["synthetic"], e["mi"]["rel_diff"]))
        ks = e["ks"]
        lines.append(f"KS: decode lengths {ks['decode_len']:.3f}, per-request touched experts "
                     f"{ks['request_touched']:.3f}, per-request reuse {ks['request_reuse']:.3f}")
    if "real_vs_real" in report:
        rr = report["real_vs_real"]
        lines.append("the two recorded halves against each other, max |diff| overall / per layer: " + ", ".join(
            f"{p} {rr[p]:.3f} / {rr[p + '_per_layer']:.3f}" for p in POLICIES))
    return "\n".join(lines)
