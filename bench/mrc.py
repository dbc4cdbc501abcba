"""Miss-ratio (hit-rate) curves as a report output: each policy's hit ratio at many GPU cache
sizes, with OPT as the bound, for a sweep's trace or any trace file (``moesim-trace mrc``).

The curves come from :mod:`sim.mrc`: LRU in one pass at every size, any other policy replayed at
each size of a fine grid. They are demand curves (no prefetcher): a sweep's jobs without a
prefetcher land exactly on them at their own sizes, which the report checks and plots as markers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from moesim.sim.mrc import HitCurve, hit_ratio_curve, lru_hit_curve
from moesim.traces.trace import Trace

GRID_POINTS = 96  # sizes per replayed curve: ~1 s per policy on the default trace once compiled
BOUND_POLICY = "opt"
# Policies whose curve cannot come from a plain replay at each size: static pinning picks its keys
# per size from a profiling trace.
NO_CURVE = frozenset({"static"})
CURVE_COLUMNS = ("policy", "size_experts", "accesses", "hits", "hit_ratio", "miss_ratio", "method")


def size_grid(first: int, last: int, extra: Sequence[int] = (), points: int = GRID_POINTS) -> list[int]:
    """About ``points`` sizes from ``first`` to ``last`` (both included), plus ``extra`` in range."""
    grid = set(np.rint(np.linspace(first, last, max(2, points))).astype(np.int64).tolist())
    grid |= {int(s) for s in extra if first <= int(s) <= last}
    return sorted(grid)


def curves(trace: Trace, policies: Sequence[str], *, sizes: Sequence[int] | None = None, extra_sizes: Sequence[int] = (),
           params: Mapping[str, Mapping[str, Any]] | None = None, points: int = GRID_POINTS,
           **kwargs: Any) -> dict[str, HitCurve]:
    """One curve per policy in ``policies`` (OPT added as the bound when missing), on a common
    grid: every size LRU can serve (one pass) for LRU, ``points`` sizes plus ``extra_sizes`` for
    the others, or exactly ``sizes``. ``params``: per-policy knobs; ``kwargs``: as for
    :func:`sim.mrc.hit_ratio_curve` (organisation, seed, warmup_steps, tie_break, ...)."""
    names = [p for p in dict.fromkeys(policies) if p not in NO_CURVE]
    if BOUND_POLICY not in names:
        names.append(BOUND_POLICY)
    lru_kw = {k: v for k, v in kwargs.items() if k not in ("seed",)}
    full = lru_hit_curve(trace, **lru_kw)  # also gives the smallest size every policy can serve
    if sizes is None:
        grid = size_grid(int(full.sizes[0]), int(full.sizes[-1]), extra_sizes, points)
    else:
        grid = sorted({int(s) for s in sizes})
    out: dict[str, HitCurve] = {}
    for name in names:
        if name == "lru" and sizes is None:
            out[name] = full
            continue
        out[name] = hit_ratio_curve(trace, name, grid, processes=1, params=dict((params or {}).get(name) or {}),
                                    **kwargs)
    return out


def curve_rows(found: Mapping[str, HitCurve]) -> list[dict[str, Any]]:
    """The curves as table rows (:data:`CURVE_COLUMNS`), one per policy and size."""
    rows = []
    for name, c in found.items():
        for size, hits, ratio in zip(c.sizes.tolist(), c.hits.tolist(), c.hit_ratio.tolist(), strict=True):
            rows.append({"policy": name, "size_experts": int(size), "accesses": int(c.accesses), "hits": int(hits),
                         "hit_ratio": float(ratio), "miss_ratio": 1.0 - float(ratio), "method": c.method})
    return rows


# ---- the curves of a sweep's trace ---------------------------------------------------------------

def _metrics(root: Path, job: str) -> dict[str, Any]:
    return json.loads((root / job / "metrics.json").read_text())


def _base_dir(root: Path, job: str) -> str | None:
    try:
        return json.loads((root / job / "run_meta.json").read_text()).get("cwd")
    except (OSError, ValueError):
        return None


def sweep_curves(root: str | Path, rows: Sequence[Mapping[str, Any]]) -> tuple[dict[str, HitCurve], str | None]:
    """The curves of the policies ``rows`` (ok jobs) swept, on their common trace and cache
    settings, and ``None``; or no curves and the reason they cannot be drawn."""
    from moesim.sim.experiment import load_trace
    from moesim.traces.transforms import batch_decode, decode_only

    root = Path(root)
    if not rows:
        return {}, "no finished jobs"
    by_policy: dict[str, str] = {}
    for r in rows:
        by_policy.setdefault(str(r.get("policy_name")), str(r["job"]))
    configs = {p: _metrics(root, job)["config"] for p, job in by_policy.items()}
    shared_keys = ("trace", "model", "batch_size", "seed")
    first = next(iter(configs.values()))
    cache_keys = ("organisation", "pinned", "warmup_steps", "tie_break", "cold_start_per_request")
    for cfg in configs.values():
        if any(cfg.get(k) != first.get(k) for k in shared_keys) or any(
                cfg["cache"].get(k) != first["cache"].get(k) for k in cache_keys):
            return {}, "the jobs differ in trace or cache settings other than the policy and size"
    cache = first["cache"]
    if int(cache.get("pinned") or 0) > 0:
        return {}, "pinned experts are chosen per job (no common curve)"
    trace = load_trace(first["trace"], base_dir=_base_dir(root, by_policy[next(iter(by_policy))]))
    batch = int(first.get("batch_size", 1))
    served = decode_only(trace) if batch == 1 else batch_decode(trace, batch)
    sizes = sorted({int(r["l1_experts"]) for r in rows if r.get("l1_experts") is not None})
    found = curves(served, list(by_policy), extra_sizes=sizes,
                   params={p: (c["policy"].get("params") or {}) for p, c in configs.items()},
                   organisation=str(cache.get("organisation", "shared")), seed=int(first.get("seed", 0)),
                   warmup_steps=int(cache.get("warmup_steps", 0)), tie_break=str(cache.get("tie_break", "row")),
                   cold_start_per_request=bool(cache.get("cold_start_per_request", False)))
    return found, None


def measured_points(rows: Sequence[Mapping[str, Any]]) -> dict[str, tuple[list[float], list[float]]]:
    """The sweep's own demand hit rates (jobs without a prefetcher) per policy: they lie on the curves."""
    out: dict[str, tuple[list[float], list[float]]] = {}
    for r in sorted(rows, key=lambda r: (str(r.get("policy_name")), r.get("l1_experts") or 0)):
        if r.get("prefetcher") not in (None, "none") or r.get("l1_experts") is None or r.get("hit_rate") is None:
            continue
        xs, ys = out.setdefault(str(r.get("policy_name")), ([], []))
        xs.append(float(r["l1_experts"]))
        ys.append(float(r["hit_rate"]))
    return out


# ---- the curves of any trace file (``moesim-trace mrc``) ----------------------------------------

def write_curves(trace: Trace, policies: Sequence[str], out_dir: str | Path, *, sizes: Sequence[int] | None = None,
                 points: int = GRID_POINTS, name: str = "mrc", **kwargs: Any) -> list[Path]:
    """``<name>.csv`` (:data:`CURVE_COLUMNS`), ``<name>.png`` and ``<name>.svg`` of the policies'
    curves on ``trace`` (OPT added as the bound); ``kwargs`` as for :func:`curves`."""
    from moesim.bench import plots
    from moesim.kernels import tables

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    found = curves(trace, policies, sizes=sizes, points=points, **kwargs)
    written = tables.write(curve_rows(found), out, name, columns=CURVE_COLUMNS, parquet=False)
    m = trace.meta
    source = Path(trace.file).name if trace.file else "in-memory trace"
    ctx = {"trace": f"{source} ({trace.num_steps} steps, {trace.num_layers} layers x {trace.num_experts} experts, "
                    f"top-{m.top_k})", "model": m.model,
           "organisation": kwargs.get("organisation", "shared")}
    fig, _ = plots.miss_ratio_curves([], ctx, curves=found)
    assert fig is not None
    written += plots.save(fig, out, name)
    return written
