"""Fit the synthetic generator's knobs to a recorded trace, and compare the two.

:func:`fit` estimates a :class:`~traces.synth.SynthConfig` from a trace:

* shape, request count, domains and length distributions are read off directly (lognormal median =
  the median length, sigma from the median absolute deviation of the log lengths, min/max observed);
* gate weights: ``gate_topk_mass`` is the mean row total, ``gate_logit_scale`` is solved so the mean
  top-1 share matches;
* the routing knobs are *calibrated by simulation*: synthetic traces with the real request structure
  (same lengths and domains, common random numbers) are generated while every knob is bisected
  against the statistic it drives most, all at once: ``skew[l]`` against the layer's popularity
  entropy, ``reuse[l]`` against its step-to-step reuse rate, ``affinity[l]`` against the layer
  mutual information with its neighbouring layers, ``request_shift`` against (far-lag overlap - cross-request overlap)
  and ``domain_shift`` against (same-domain overlap - cross-request overlap). A second, narrower
  pass around the first result absorbs the knobs' cross-effects, and slides its window further
  while a knob's bracket ends on the window's edge.

:func:`fit_report` lists real vs synthetic values of the statistics in :mod:`traces.fitstats` with
their relative error. ``python -m moesim.traces.fit --write-presets`` regenerates ``traces/presets/*.json``
from the real traces in the shared data folder.
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
from moesim.traces.errors import one_line
from moesim.traces.fitstats import request_lengths, trace_stats
from moesim.traces.io import atomic_write_text
from moesim.traces.synth import (
    MODEL_SHAPES,
    PRESET_KNOBS,
    SYNTH_VERSION,
    RequestPlan,
    SynthConfig,
    gate_weights,
    generate_with_plan,
    preset_file,
    resample_layers,
)
from moesim.traces.trace import Trace

# 2: windows of later passes slide when a bracket ends on an inner edge (presets fitted with 1 lack it).
FIT_VERSION = "2"
CALIBRATION_SEED = 12345
# Synthetic calibration traces keep at most about this many steps (requests are subsampled evenly).
CALIBRATION_MAX_STEPS = 16384
PASS_ITERATIONS = (10, 6)
SECOND_PASS_HALF_WIDTH = 0.1  # of each knob's full range
# Extra passes that slide a window whose bracket ended on an inner edge (see _calibrate).
MAX_SLIDES = 6
_GATE_MC_ROWS = 1 << 15


@dataclass(frozen=True)
class _Knob:
    """A knob group bisected against one statistic."""

    name: str
    lo: float
    hi: float
    increasing: bool  # does the statistic grow with the knob?
    stat: Callable[[dict[str, Any]], np.ndarray]


def _diff(a: str, b: str) -> Callable[[dict[str, Any]], np.ndarray]:
    return lambda s: np.atleast_1d(np.nanmean(s[a] - s[b]))


def layer_mi(stats: dict[str, Any]) -> np.ndarray:
    """Per layer, the mean mutual information with its neighbouring layers (``L`` values from the
    ``L - 1`` transitions), the statistic each layer's ``affinity`` is bisected against."""
    mi = np.asarray(stats["mi"], np.float64)
    padded = np.r_[np.nan, mi, np.nan]
    return np.nanmean(np.stack([padded[:-1], padded[1:]]), axis=0)


_KNOBS = {
    "skew": _Knob("skew", 0.0, 4.0, False, lambda s: s["entropy"]),
    "reuse": _Knob("reuse", 0.0, 0.98, True, lambda s: s["reuse"]),
    "affinity": _Knob("affinity", 0.0, 6.0, True, layer_mi),
    "request_shift": _Knob("request_shift", 0.0, 3.0, True, _diff("far_overlap", "cross_overlap")),
    "domain_shift": _Knob("domain_shift", 0.0, 3.0, True, _diff("domain_overlap", "cross_overlap")),
}


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


def _plan_from_trace(trace: Trace, max_steps: int) -> tuple[RequestPlan, int]:
    prefill, decode = request_lengths(trace)
    rid_starts = trace.request_bounds()[:-1]
    if trace.domain is not None and trace.num_steps:
        labels = np.asarray(trace.domain)[rid_starts].astype(np.int64)
        _, dom = np.unique(labels, return_inverse=True)
        num_domains = int(dom.max()) + 1
    else:
        dom, num_domains = np.zeros(len(decode), np.int64), 1
    total = int((prefill + decode).sum())
    keep = np.arange(len(decode))
    if total > max_steps:
        n = max(2, round(len(decode) * max_steps / total))
        keep = np.unique(np.linspace(0, len(decode) - 1, n).round().astype(np.int64))
    return RequestPlan(prefill[keep], decode[keep], dom[keep].astype(np.int64)), num_domains


def _calibrate(config: SynthConfig, plan: RequestPlan, targets: dict[str, np.ndarray], seed: int,
               iterations: tuple[int, ...]) -> SynthConfig:
    """Simultaneous bisection of every knob group against its target (see the module docstring).

    The first pass bisects each knob over its full range; every later pass re-bisects a window of
    ``SECOND_PASS_HALF_WIDTH`` of the range around the previous result. While the knobs move
    together, an early step can be decided by the others' still-wrong values and push a knob's
    bracket away from its answer; such a knob ends on an edge of its window, so the window is slid
    there for up to ``MAX_SLIDES`` more passes until no knob ends on an inner edge."""
    names = list(targets)
    glo = {n: np.full(len(targets[n]), _KNOBS[n].lo) for n in names}
    ghi = {n: np.full(len(targets[n]), _KNOBS[n].hi) for n in names}
    lo = {n: glo[n].copy() for n in names}
    hi = {n: ghi[n].copy() for n in names}
    passes = list(iterations) + [iterations[-1]] * MAX_SLIDES if iterations else []
    stuck: dict[str, bool] = {}
    for pass_no, steps in enumerate(passes):
        if pass_no > 0:
            if pass_no >= len(iterations) and not any(stuck.values()):
                break
            for n in names:
                mid = 0.5 * (lo[n] + hi[n])
                half = SECOND_PASS_HALF_WIDTH * (_KNOBS[n].hi - _KNOBS[n].lo)
                lo[n] = np.maximum(mid - half, glo[n])
                hi[n] = np.minimum(mid + half, ghi[n])
        win_lo = {n: lo[n].copy() for n in names}
        win_hi = {n: hi[n].copy() for n in names}
        for _ in range(steps):
            mids = {n: 0.5 * (lo[n] + hi[n]) for n in names}
            stats = trace_stats(generate_with_plan(_with_knobs(config, mids), plan, seed=seed),
                                with_mi="affinity" in names)
            for n in names:
                knob = _KNOBS[n]
                above = knob.stat(stats) > targets[n]
                raise_knob = ~above if knob.increasing else above
                lo[n] = np.where(raise_knob, mids[n], lo[n])
                hi[n] = np.where(raise_knob, hi[n], mids[n])
        # A bracket that never left an inner edge of its window: the answer may lie beyond it.
        stuck = {n: bool(np.any(((lo[n] == win_lo[n]) & (win_lo[n] > glo[n]))
                                | ((hi[n] == win_hi[n]) & (win_hi[n] < ghi[n])))) for n in names}
    return _with_knobs(config, {n: 0.5 * (lo[n] + hi[n]) for n in names})


def _with_knobs(config: SynthConfig, values: dict[str, np.ndarray]) -> SynthConfig:
    changes: dict[str, Any] = {}
    for n, v in values.items():
        rounded = [round(float(x), 6) for x in v]
        changes[n] = tuple(rounded) if n in ("skew", "reuse", "affinity") else rounded[0]
    return config.replace(**changes)


def fit(trace: Trace, *, seed: int = CALIBRATION_SEED, max_steps: int = CALIBRATION_MAX_STEPS,
        iterations: tuple[int, ...] = PASS_ITERATIONS, num_token_types: int | None = None) -> SynthConfig:
    """Estimate the generator's knobs from a recorded trace (deterministic for a given ``seed``).

    ``num_token_types`` is not estimated (it trades off with ``affinity``); it defaults to the
    generator's default.
    """
    meta = trace.meta
    L, E, K = trace.num_layers, trace.num_experts, meta.top_k
    if trace.num_steps < 2:
        raise ValueError(f"{trace.file or '<memory>'}: field 'experts': need at least 2 steps to fit, "
                         f"got {trace.num_steps}")
    if trace.width != K:
        raise ValueError(f"{trace.file or '<memory>'}: field 'experts': width {trace.width} differs from "
                         f"top_k={K}; fit the unbatched trace")
    real = trace_stats(trace)
    prefill, decode = request_lengths(trace)
    plan, num_domains = _plan_from_trace(trace, max_steps)
    gate_mass = float(np.clip(real["gate_mass"], 1e-6, 1.0)) if real["gate_mass"] is not None else 1.0
    gate_scale = fit_gate_scale(real["gate_top1"], K) if real["gate_top1"] is not None else 1.0
    decode_knobs = _length_knobs(decode, "decode")
    decode_knobs["decode_len_min"] = max(1, decode_knobs["decode_len_min"])
    decode_knobs["decode_len_max"] = max(decode_knobs["decode_len_min"], decode_knobs["decode_len_max"])
    base = SynthConfig(
        model=meta.model, num_layers=L, num_experts=E, top_k=K, num_requests=len(decode),
        num_domains=num_domains, domain_shift=0.0, request_shift=0.0, skew=1.0, reuse=0.0, affinity=0.0,
        num_token_types=num_token_types or SynthConfig.num_token_types, gate_logit_scale=gate_scale, gate_topk_mass=round(gate_mass, 6),
        **_length_knobs(prefill, "prompt"), **decode_knobs)
    targets: dict[str, np.ndarray] = {"skew": real["entropy"]}
    if not np.all(np.isnan(real["reuse"])):
        targets["reuse"] = np.nan_to_num(real["reuse"], nan=float(np.nanmean(real["reuse"])))
    if L > 1:
        targets["affinity"] = layer_mi(real)
    if len(decode) > 1 and not np.all(np.isnan(real["far_overlap"])):
        targets["request_shift"] = _KNOBS["request_shift"].stat(real)
    if real["domain_overlap"] is not None and num_domains > 1:
        targets["domain_shift"] = _KNOBS["domain_shift"].stat(real)
    return _calibrate(base, plan, targets, seed, iterations)


# ---- comparison ------------------------------------------------------------------------------

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
    """A synthetic trace with ``real``'s request structure (lengths, domains) for a fair comparison."""
    plan, _ = _plan_from_trace(real, max_steps=real.num_steps + 1)
    return generate_with_plan(config, plan, seed=seed)


# ---- presets from the shared data ------------------------------------------------------------

REAL_TRACES = {
    "olmoe-1b-7b": ("olmoe-1b-7b/olmoe_decode_all.npz",
                    "OLMoE-1B-7B-0924, 400 requests x up to 128 greedy decode tokens (wikitext-103, MBPP, "
                    "GSM8K, ARC-Challenge), 16 layers, 64 experts, top-8"),
    "mixtral-8x7b": ("mixtral-8x7b/*.jsonl",
                     "Mixtral-8x7B-Instruct, 4 requests (2 HumanEval, 2 GSM8K), about 577 decode tokens, "
                     "32 layers, 8 experts, top-2"),
}


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


def _preset_knobs(fitted: SynthConfig, num_layers: int, gate_topk_mass: float | None) -> dict[str, Any]:
    knobs = {k: getattr(fitted, k) for k in PRESET_KNOBS}
    for name, depth in (("skew", num_layers), ("reuse", num_layers), ("affinity", num_layers)):
        value = knobs[name]
        values = list(value) if isinstance(value, tuple) else [value]
        knobs[name] = [round(v, 6) for v in resample_layers(values, depth)]
    if gate_topk_mass is not None:
        knobs["gate_topk_mass"] = gate_topk_mass
    return knobs


def _summary(report: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    return {k: {kk: round(float(vv), 4) for kk, vv in v.items()} for k, v in report.items()}


def fit_presets_from_shared_data(out_dir: str | os.PathLike[str] | None = None,
                                 data_dir: str | os.PathLike[str] | None = None) -> dict[str, Path]:
    """Fit both real traces and write one JSON of knobs per model preset; returns the files written."""
    from moesim.traces.importers import shared_data_dir

    data = Path(data_dir) if data_dir is not None else shared_data_dir()
    if data is None or not data.is_dir():
        raise FileNotFoundError(f"the shared data folder {'' if data is None else str(data) + ' '}is absent "
                                "(set MOESIM_SHARED_DATA or pass --data-dir)")
    out = Path(out_dir) if out_dir is not None else Path(__file__).resolve().parent / "presets"
    fitted: dict[str, tuple[SynthConfig, dict[str, Any]]] = {}
    for name in REAL_TRACES:
        real = load_real_trace(name, data)
        config = fit(real)
        fitted[name] = (config, _summary(fit_report(real, synthetic_like(config, real))))
    written: dict[str, Path] = {}
    for model, shape in MODEL_SHAPES.items():
        config, report = fitted[shape.fitted_on]
        doc = {
            "preset": model,
            "shape": {"num_layers": shape.num_layers, "num_experts": shape.num_experts, "top_k": shape.top_k},
            "fitted_on": shape.fitted_on,
            "fitted_on_trace": REAL_TRACES[shape.fitted_on][1],
            "fitted_shape": {"num_layers": config.num_layers, "num_experts": config.num_experts,
                             "top_k": config.top_k},
            "note": ("knobs fitted on this model's own trace" if model == shape.fitted_on else
                     f"no real trace of this model: knobs of the closest real trace ({shape.fitted_on}), "
                     "per-layer values resampled over relative depth") + f"; gates: {shape.note}",
            "generator_version": SYNTH_VERSION,
            "fit_version": FIT_VERSION,
            "calibration_seed": CALIBRATION_SEED,
            "knobs": _preset_knobs(config, shape.num_layers, shape.gate_topk_mass),
            "fit_report": report,
        }
        path = out / preset_file(model)
        atomic_write_text(path, json.dumps(doc, indent=1, sort_keys=False) + "\n")
        written[model] = path
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moesim.traces.fit", description=__doc__.splitlines()[0])
    parser.add_argument("--write-presets", action="store_true",
                        help="refit the real traces of the shared data folder and rewrite traces/presets/")
    parser.add_argument("--out-dir", default=None, help="where to write the preset JSONs")
    parser.add_argument("--data-dir", default=None, help="the shared data folder")
    args = parser.parse_args(argv)
    if not args.write_presets:
        parser.print_help()
        return 0
    try:
        written = fit_presets_from_shared_data(args.out_dir, args.data_dir)
    except (OSError, ValueError) as exc:  # no data folder, or a real trace that does not read
        print(f"{parser.prog}: error: {one_line(exc)}", file=sys.stderr)
        return 1
    for model, path in written.items():
        print(f"{model}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
