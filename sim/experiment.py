"""One experiment as a plain function: config mapping in, metrics dict out.

The Hydra app (:mod:`sim.app`), the tests and notebooks all call :func:`run_experiment`; the app
only adds the output directory, ``run_meta.json`` and the failure record around it.

What one run measures (all over the decode steps of the trace, after ``cache.warmup_steps``), from
one engine pass (:func:`sim.offload.simulate_offload`):

* ``l1``: the GPU cache, with the prefetcher and the levels below it as configured: hits / misses
  / evictions overall, per layer, per phase and for the warm-up, from the very run that gave the
  timing;
* ``offload``: tokens/s, latency p50/p90/p99, stall share, the time breakdown, bytes per link,
  link utilisation, the hierarchy's counters, prefetch accuracy and coverage.
* ``quant``: the weight format's bits per weight, bytes per expert and its error on a seeded
  synthetic expert matrix (the weight analysis measures real checkpoints).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from moesim.sim.errors import ConfigError
from moesim.sim.levels import Level
from moesim.sim.offload import auto_l1_experts, simulate_offload
from moesim.sim.pinning import choose_pinned
from moesim.sim.profiles import ModelProfile, load_hardware_profile, load_model_profile
from moesim.traces import io as trace_io
from moesim.traces.synth import SYNTH_VERSION, generate_preset, preset
from moesim.traces.trace import Trace

GIB = 2**30
METRICS_VERSION = "2"


def _plain(cfg: Any) -> dict[str, Any]:
    """A resolved plain dict from a DictConfig or a mapping."""
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover - hydra-core is a dependency
        pass
    return json.loads(json.dumps(cfg))


def cache_root() -> Path:
    return Path(os.environ.get("MOESIM_CACHE") or Path.home() / ".cache" / "moesim")


def _trace_path(tcfg: Mapping[str, Any], base_dir: str | os.PathLike[str] | None) -> Path:
    path = tcfg.get("path")
    if not path:
        raise ConfigError("trace.kind=file needs trace.path")
    p = Path(path)
    if not p.is_absolute() and base_dir is not None:
        p = Path(base_dir) / p
    return p


def _synthetic_key(tcfg: Mapping[str, Any]) -> str:
    """Every setting that changes a synthetic trace's bits: the preset's knob values (a refitted
    preset is a new trace), requests, seed, knob overrides and the generator's version."""
    knobs = dict(tcfg.get("knobs") or {})
    key_src = json.dumps({"preset": tcfg["preset"], "config": dataclasses.asdict(preset(str(tcfg["preset"]))),
                          "requests": int(tcfg["requests"]), "seed": int(tcfg["seed"]), "knobs": knobs,
                          "generator_version": SYNTH_VERSION}, sort_keys=True, default=str)
    return hashlib.sha1(key_src.encode()).hexdigest()[:16]


def trace_identity(tcfg: Mapping[str, Any], *, base_dir: str | os.PathLike[str] | None = None) -> str:
    """What the trace of a ``trace`` config is, without reading it all: for a file its size, change
    time and a hash of its first 64 KiB (the header); for a synthetic trace its generation key."""
    kind = tcfg.get("kind", "synthetic")
    if kind == "file":
        p = _trace_path(tcfg, base_dir)
        try:
            st = p.stat()
            with open(p, "rb") as fh:
                head = hashlib.sha1(fh.read(1 << 16)).hexdigest()[:16]
        except OSError as exc:
            raise ConfigError(f"{p}: field 'trace.path': cannot read the trace file ({exc.strerror or exc})") from None
        return f"file:{p.resolve()}:{st.st_size}:{st.st_mtime_ns}:{head}"
    if kind == "synthetic":
        return f"synthetic:{tcfg['preset']}:{_synthetic_key(tcfg)}"
    raise ConfigError(f"trace.kind must be 'synthetic' or 'file', got {kind!r}")


# Settings that change how a run is shown or launched, not what it measures.
VOLATILE_KEYS = ("progress", "report", "fail_fast", "sweep_name", "exit_code_on_failure")


def fingerprint(cfg: Any, *, base_dir: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """What a job's result depends on: the resolved config, the trace and the code. A finished job
    whose fingerprint differs is re-run on resume."""
    from moesim.kernels.jit import source_hash

    c = _plain(cfg)
    c.pop("hydra", None)
    for key in VOLATILE_KEYS:
        c.pop(key, None)
    config = hashlib.sha1(json.dumps(c, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return {"config": config, "trace": trace_identity(c["trace"], base_dir=base_dir),
            "code": f"{source_hash()}/metrics-{METRICS_VERSION}"}


def load_trace(tcfg: Mapping[str, Any], *, base_dir: str | os.PathLike[str] | None = None) -> Trace:
    """The trace a ``trace`` config names; synthetic traces are generated once and kept on disk,
    keyed by every setting that changes their bits (and the generator's version)."""
    kind = tcfg.get("kind", "synthetic")
    if kind == "file":
        trace = trace_io.load_any(_trace_path(tcfg, base_dir))
    elif kind == "synthetic":
        knobs = dict(tcfg.get("knobs") or {})
        key = _synthetic_key(tcfg)
        folder = Path(tcfg.get("cache_dir") or cache_root() / "traces")
        path = folder / f"{tcfg['preset']}-{key}.safetensors"
        if path.exists():
            trace = trace_io.load(path)
        else:
            trace = generate_preset(str(tcfg["preset"]), seed=int(tcfg["seed"]), num_requests=int(tcfg["requests"]),
                                    **knobs)
            folder.mkdir(parents=True, exist_ok=True)
            trace_io.save(trace, path)  # atomic: concurrent jobs may race, each writes a whole file
            trace = trace_io.load(path)  # the first run and later ones then see the same object
    else:
        raise ConfigError(f"trace.kind must be 'synthetic' or 'file', got {kind!r}")
    max_steps = int(tcfg.get("max_steps") or 0)
    if max_steps < 0:
        raise ConfigError(f"trace.max_steps must be >= 0 (0 keeps every step), got {max_steps}")
    if max_steps > 0 and max_steps < trace.num_steps:
        trace = trace.slice_steps(0, max_steps)
    return trace


def l1_capacity(cache: Mapping[str, Any], model: ModelProfile, hw: Any, fmt: str) -> int:
    """GPU cache size in experts from ``cache.l1_experts``, ``cache.l1_gib`` or the free GPU memory."""
    experts, gib = cache.get("l1_experts"), cache.get("l1_gib")
    if experts is not None and gib is not None:
        raise ConfigError("give cache.l1_experts or cache.l1_gib, not both")
    if experts is not None:
        n = int(experts)
    elif gib is not None:
        n = int(float(gib) * GIB // model.expert_bytes(fmt))
    else:
        n = auto_l1_experts(model, hw, fmt, float(cache.get("gpu_reserve_gib", 1.0)))
    if n < 1:
        raise ConfigError(f"the GPU cache holds {n} experts of {model.expert_bytes(fmt)} bytes in {fmt}; "
                          f"it needs at least 1 (raise cache.l1_gib / cache.l1_experts)")
    if (experts is not None or gib is not None) and n > model.num_expert_keys:
        given = f"cache.l1_experts={experts}" if experts is not None else f"cache.l1_gib={gib} ({n} experts)"
        raise ConfigError(f"{given} exceeds the {model.num_expert_keys} experts of {model.name}; the valid range "
                          f"is [1, {model.num_expert_keys}]")
    return min(n, model.num_expert_keys)


def l2_capacity(cache: Mapping[str, Any], model: ModelProfile, fmt: str) -> int | None:
    experts, gib = cache.get("l2_experts"), cache.get("l2_gib")
    if experts is not None and gib is not None:
        raise ConfigError("give cache.l2_experts or cache.l2_gib, not both")
    if experts is not None:
        return int(experts)
    if gib is not None:
        return int(float(gib) * GIB // model.expert_bytes(fmt))
    return None


def quant_error(fmt: str, model: ModelProfile, rows: int, dof: float, seed: int) -> dict[str, Any]:
    """The format's error on a seeded Student-t matrix of the expert's input width."""
    from moesim.kernels.formats import get_format

    f = get_format(fmt)
    shape = (rows, model.hidden_size)
    out: dict[str, Any] = {"format": fmt, "bits_per_weight": float(f.bits_per_weight(shape)),
                           "expert_bytes": int(model.expert_bytes(fmt)), "source": "synthetic student-t"}
    if rows < 0:
        raise ConfigError(f"quant.error_rows must be >= 0 (0 skips the error), got {rows}")
    if rows == 0:
        return out
    out.update(_synthetic_error(fmt, shape, float(dof), int(seed)))
    return out


@functools.lru_cache(maxsize=32)
def _synthetic_error(fmt: str, shape: tuple[int, int], dof: float, seed: int) -> dict[str, float]:
    """The error part of :func:`quant_error`, kept per process: every job of a sweep with the same
    format asks for the same numbers, and computing them was most of a small job's time (0.5 s of
    0.8 s per job in a warm sweep, measured)."""
    from moesim.kernels.formats import get_format
    from moesim.kernels.metrics import (
        cosine_similarity,
        max_abs_error,
        output_error,
        relative_frobenius,
        sqnr_db,
    )

    f = get_format(fmt)
    rng = np.random.default_rng(seed)
    w = (rng.standard_t(dof, size=shape) * 0.02).astype(np.float32)
    wq = np.asarray(f.decode(f.encode(w)), np.float32)
    return {"rel_frobenius": relative_frobenius(w, wq), "sqnr_db": sqnr_db(w, wq),
            "max_abs_error": max_abs_error(w, wq), "cosine": cosine_similarity(w, wq),
            "output_error": output_error(w.T, wq.T, seed=seed)}


def measured_quant_error(fmt: str, model: ModelProfile, table: str, base_dir: Any) -> dict[str, Any]:
    """The format's error over all layers and projections of a weight-analysis ``summary`` table."""
    from moesim.kernels.analysis import read_table

    path = Path(table)
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    rows = [r for r in read_table(path) if r["format"] == fmt and int(r["layer"]) == -1 and r["proj"] == "all"]
    if not rows:
        raise ConfigError(f"{path}: field 'format' has no all-layers row for {fmt!r} (was it analysed?)")
    r = rows[0]
    return {"format": fmt, "bits_per_weight": float(r["bits_per_weight"]), "expert_bytes": int(model.expert_bytes(fmt)),
            "rel_frobenius": float(r["rel_frobenius_mean"]), "sqnr_db": float(r["sqnr_db_mean"]),
            "max_abs_error": float(r["max_abs_error_max"]), "cosine": float(r["cosine_mean"]),
            "output_error": float(r["output_error_mean"]), "source": str(path)}


def run_experiment(cfg: Any, *, base_dir: str | os.PathLike[str] | None = None,
                   scratch: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Run one experiment; ``cfg`` has the shape of :class:`sim.config.AppConf` (a DictConfig or a
    plain mapping). ``base_dir`` resolves a relative trace path; ``scratch`` is where arrays are
    spilled during the run (default: the temporary folder). Returns the ``metrics.json`` dict."""
    t0 = time.perf_counter()
    c = _plain(cfg)
    model = load_model_profile(c["model"])
    hw = load_hardware_profile(c["hardware"])
    fmt = str(c["quant"]["format"])
    cache, pol, pf = c["cache"], c["policy"], c["prefetch"]
    seed, batch = int(c.get("seed", 0)), int(c.get("batch_size", 1))

    trace = load_trace(c["trace"], base_dir=base_dir)
    if (trace.num_layers, trace.num_experts) != (model.num_moe_layers, model.num_experts):
        raise ConfigError(f"trace ({trace.meta.model}: {trace.num_layers} layers x {trace.num_experts} experts) "
                          f"does not match model profile '{model.name}' ({model.num_moe_layers} x "
                          f"{model.num_experts}); pick trace.preset or model to match")
    l1 = l1_capacity(cache, model, hw, fmt)
    l2 = l2_capacity(cache, model, fmt)
    organisation = str(cache.get("organisation", "shared"))
    params = dict(pol.get("params") or {})
    n_pinned = int(cache.get("pinned", 0))
    if n_pinned < 0:
        raise ConfigError(f"cache.pinned must be >= 0, got {n_pinned}")
    profile = None
    if pol["name"] == "static" and params.get("keys") is None:
        # Pin what a *different* trace of the same kind finds hottest: no leakage from the replayed one.
        profile = _profile_trace(c["trace"], cache, base_dir, trace)
        per = l1 // model.num_moe_layers if organisation == "per_layer" else l1
        params["keys"] = choose_pinned(profile, per, organisation)
    pinned: list[int] = []
    if n_pinned > 0:
        profile = profile or _profile_trace(c["trace"], cache, base_dir, trace)
        pinned = choose_pinned(profile, n_pinned, organisation)
    warmup = int(cache.get("warmup_steps", 0))
    if warmup < 0:
        raise ConfigError(f"cache.warmup_steps must be >= 0, got {warmup}")
    level1 = Level(experts=l1, policy=pol["name"], params=params, organisation=organisation)
    off = simulate_offload(trace, model, hw, fmt, l1=level1, l2=l2, inclusive=bool(cache.get("inclusive", True)),
                           prefetcher=str(pf["name"]), prefetch_params=dict(pf.get("params") or {}),
                           prefetch_budget=pf.get("budget"), batch_size=batch, seed=seed, warmup_steps=warmup,
                           gpu_reserve_gib=float(cache.get("gpu_reserve_gib", 1.0)), pinned=pinned,
                           tie_break=str(cache.get("tie_break", "row")),
                           cold_start_per_request=bool(cache.get("cold_start_per_request", False)),
                           progress=bool(c.get("progress", False)), scratch=scratch)
    q = c.get("quant", {})
    if q.get("error_table"):
        quant = measured_quant_error(fmt, model, q["error_table"], base_dir)
    else:
        quant = quant_error(fmt, model, int(q.get("error_rows", 64)), float(q.get("error_dof", 5.0)), seed)
    off_d = off.to_dict()
    off_d.pop("config", None)
    l1_d = off_d.pop("l1")
    return {
        "status": "ok",
        "metrics_version": METRICS_VERSION,
        "config": c,
        "trace": {"model": trace.meta.model, "source": trace.meta.source, "steps": int(trace.num_steps),
                  "decode_steps": int(off.l1.num_steps), "num_layers": int(trace.num_layers),
                  "num_experts": int(trace.num_experts), "top_k": int(trace.meta.top_k),
                  "file": str(trace.file) if trace.file else None},
        "capacity": {"l1_experts": int(l1), "l2_experts": l2, "expert_bytes": int(model.expert_bytes(fmt)),
                     "l1_gib": l1 * model.expert_bytes(fmt) / GIB, "num_pinned": len(pinned),
                     "total_experts": int(model.num_expert_keys)},
        "l1": l1_d,
        "offload": off_d,
        "quant": quant,
        "elapsed_s": time.perf_counter() - t0,
    }


def _profile_trace(tcfg: Mapping[str, Any], cache: Mapping[str, Any], base_dir: Any, trace: Trace) -> Trace:
    """The trace pinning is chosen on: for synthetic traces, the same settings with another seed;
    for a file, its first half (the replay then should use ``warmup_steps`` over that half)."""
    if tcfg.get("kind", "synthetic") == "synthetic":
        other = dict(tcfg)
        other["seed"] = int(cache.get("pin_profile_seed", 1_000_003))
        if other["seed"] == int(tcfg["seed"]):
            raise ConfigError("cache.pin_profile_seed must differ from trace.seed (pinning would see the replayed trace)")
        return load_trace(other, base_dir=base_dir)
    return trace.slice_steps(0, max(1, trace.num_steps // 2))
