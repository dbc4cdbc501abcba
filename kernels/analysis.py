"""Weight analysis of MoE checkpoints: statistics of every expert matrix and the error of each format.

:func:`analyze_checkpoint` streams the expert matrices of a checkpoint (:mod:`kernels.checkpoint`),
computes their statistics, quantizes each with every requested format (encode, then decode to
float32) and measures the error with :mod:`kernels.metrics`. It writes and returns these tables
(each a list of row dicts; parquet when pyarrow is installed, else CSV; all written atomically):

* ``inventory``: one row per checkpoint tensor, matched or not.
* ``matrix_stats``: one row per expert matrix.
* ``quant_error``: one row per (expert matrix, format).
* ``summary``: per (format, layer, proj); ``layer = -1`` aggregates all layers, ``proj = "all"`` all
  projections.
* ``format_deltas``: each format against the first requested one (the baseline), per the same groups.
* ``warnings``: problems met in lenient mode, and formats that could not take a matrix shape.

plus ``run_meta.json`` (versions, inputs, settings, counts). Conventions:

* Matrices are ``[out, in]`` and quantized along ``in`` (the last axis). ``sample_rows`` analyses a
  seeded random subset of output rows (sorted, without replacement) instead of the whole matrix;
  formats with a per-tensor scale (NVFP4, FP8 per tensor) then see the sample's absmax. In
  ``matrix_stats``, ``rows`` / ``cols`` are the full matrix and ``sampled_rows`` / ``numel`` what was
  analysed.
* A format that cannot take a matrix shape (its block does not divide ``in``) is found from the
  headers before any data is read: an error when ``strict``, else a ``format_shape`` warning.
* ``kurtosis`` is the excess kurtosis ``m4 / m2^2 - 3`` (0 for a Gaussian; NaN for a constant matrix);
  ``sparsity`` the fraction of ``|w| <= eps``; ``rank`` the numerical rank (singular values above
  ``max(shape) * eps_float32 * s_max``), -1 when not computed.
* ``backend`` picks the codec implementation: ``numba`` (default), ``reference`` (numpy) or ``mlx``:
  the MLX formats (``mlx-*``) then run MLX itself (``mx.quantize`` / ``mx.dequantize``); formats MLX
  does not have, and every format when MLX is not installed, run ``numba`` (bit for bit the same
  numbers for the MLX formats) and the missing MLX is recorded as an ``mlx_unavailable`` warning.
  ``run_meta.json`` says which implementation each format used.
* ``output_error`` is ``||x W^T - x W_q^T|| / ||x W^T||`` with ``x`` ``n_activations`` rows of standard
  normal activations from ``np.random.default_rng(seed)``: the same activations for every matrix of
  the same input width and every format (common random numbers make the formats comparable).
* ``sqnr_db_pooled`` in the summary is ``10 log10(sum ||W||^2 / sum ||W - W_q||^2)`` over the group.

Command line: ``python -m moesim.kernels.analysis CHECKPOINT --formats mxfp4,nvfp4 --out DIR``
(``--backend mlx`` to run MLX's own quantizer for the ``mlx-*`` formats).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from moesim.kernels import metrics
from moesim.kernels.checkpoint import Checkpoint, ExpertMatrix, ReadUnit
from moesim.kernels.files import atomic_write_text
from moesim.kernels.formats import get_format
from moesim.kernels.formats.base import FormatError
from moesim.kernels.tables import read_data, write_data

BACKENDS = ("numba", "reference", "mlx")
TABLES = ("inventory", "matrix_stats", "quant_error", "summary", "format_deltas", "warnings")

# Column order of every table; a table is written with these columns even when it has no rows.
COLUMNS: dict[str, tuple[str, ...]] = {
    "inventory": ("tensor", "file", "dtype", "shape", "numel", "status", "rule", "experts"),
    "matrix_stats": ("layer", "expert", "proj", "tensor", "source_dtype", "shape", "rows", "cols",
                     "sampled_rows", "numel", "mean", "std", "absmax", "kurtosis", "sparsity", "sum_sq", "rank"),
    "quant_error": ("layer", "expert", "proj", "format", "bits_per_weight", "mse", "rel_frobenius", "sqnr_db",
                    "max_abs_error", "cosine", "output_error", "noise_sq"),
    "summary": ("format", "layer", "proj", "n_matrices", "n_weights", "bits_per_weight", "mse_mean",
                "rel_frobenius_mean", "rel_frobenius_max", "sqnr_db_mean", "sqnr_db_median", "sqnr_db_min",
                "sqnr_db_pooled", "max_abs_error_max", "cosine_mean", "cosine_min", "output_error_mean",
                "output_error_max"),
    "format_deltas": ("baseline", "format", "layer", "proj", "n_matrices", "delta_bits_per_weight",
                      "delta_sqnr_db_mean", "delta_sqnr_db_median", "mse_ratio_median", "frac_better",
                      "frac_worse"),
    "warnings": ("code", "tensor", "layer", "expert", "proj", "format", "message"),
}

_STRING_COLUMNS = {"tensor", "file", "dtype", "shape", "status", "rule", "proj", "source_dtype", "format",
                   "baseline", "code", "message"}
_INT_COLUMNS = {"numel", "experts", "layer", "expert", "rows", "cols", "sampled_rows", "rank", "n_matrices",
                "n_weights"}


# ---- statistics of one matrix ------------------------------------------------------------------

def matrix_stats(w: np.ndarray, *, eps: float = 0.0, rank: bool = False) -> dict[str, float | int]:
    """mean, std (population), absmax, excess kurtosis, sparsity (``|w| <= eps``), sum of squares and,
    when ``rank``, the numerical rank (else -1); accumulated in float64."""
    a = np.asarray(w, dtype=np.float64)
    if a.size == 0:
        raise ValueError("matrix_stats: empty matrix")
    flat = a.ravel()
    n = flat.size
    mean = float(flat.sum()) / n
    d = flat - mean
    d2 = d * d
    m2 = float(d2.sum()) / n
    m4 = float(np.dot(d2, d2)) / n  # BLAS dot: one pass, no temporary for d^4
    out: dict[str, float | int] = {
        "mean": mean, "std": math.sqrt(m2), "absmax": float(max(flat.max(), -flat.min())),
        "kurtosis": m4 / (m2 * m2) - 3.0 if m2 > 0.0 else math.nan,
        "sparsity": float(np.count_nonzero(np.abs(flat) <= eps)) / n, "sum_sq": float(np.dot(flat, flat)),
        "rank": -1,
    }
    if rank:
        out["rank"] = numerical_rank(a)
    return out


def numerical_rank(w: np.ndarray) -> int:
    """Singular values above ``max(shape) * eps_float32 * s_max`` (the weights are float32 data)."""
    a = np.asarray(w, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"numerical_rank: expected a matrix, got shape {a.shape}")
    s = np.linalg.svd(a, compute_uv=False)
    if s.size == 0 or s[0] == 0.0:
        return 0
    tol = max(a.shape) * float(np.finfo(np.float32).eps) * float(s[0])
    return int(np.sum(s > tol))


def _ratio(num: float, den: float) -> float:
    # kernels.metrics' convention: zero error over a zero reference is 0, nonzero error over it Inf
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / den


def error_metrics(w: np.ndarray, w_q: np.ndarray, *, seed: int = 0, n_activations: int = 64) -> dict[str, float]:
    """The :mod:`kernels.metrics` errors of ``w_q`` against ``w`` (both ``[out, in]``), computed from one
    float64 difference instead of one per metric (same definitions and conventions; the tests hold
    them equal to the metrics functions). ``noise_sq`` is ``||w - w_q||_F^2``."""
    a = np.asarray(w, dtype=np.float64)
    b = np.asarray(w_q, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.size == 0:
        raise ValueError(f"error_metrics: w {a.shape} and w_q {b.shape} must be the same non-empty matrix shape")
    fa, fb = a.ravel(), b.ravel()
    d = fa - fb
    signal, noise, qq = float(np.dot(fa, fa)), float(np.dot(d, d)), float(np.dot(fb, fb))
    if noise == 0.0:
        sqnr = math.inf if not math.isnan(signal) else math.nan
    else:
        sqnr = -math.inf if signal == 0.0 else 10.0 * math.log10(signal / noise)
    cosine = math.nan if signal == 0.0 or qq == 0.0 else float(np.dot(fa, fb)) / math.sqrt(signal * qq)
    return {
        "mse": noise / d.size,
        "rel_frobenius": _ratio(math.sqrt(noise), math.sqrt(signal)),
        "sqnr_db": sqnr,
        "max_abs_error": float(np.max(np.abs(d))),
        "cosine": cosine,
        # metrics.output_error takes [in, out]: x W^T of an nn.Linear weight is x @ W.T
        "output_error": metrics.output_error(a.T, b.T, seed=seed, n=n_activations),
        "noise_sq": noise,
    }


def quant_error(w: np.ndarray, fmt_name: str, *, seed: int = 0, n_activations: int = 64,
                backend: str = "numba") -> dict[str, float]:
    """Encode ``w`` ``[out, in]`` with a format, decode to float32 and measure the error. ``backend``
    is the implementation to run (see :func:`format_backend`; "mlx" only for the MLX formats)."""
    fmt = get_format(fmt_name)
    w32 = np.ascontiguousarray(w, dtype=np.float32)
    wq = fmt.decode(fmt.encode(w32, backend=backend), dtype=np.float32, backend=backend)
    return {"bits_per_weight": float(fmt.bits_per_weight(w32.shape)),
            **error_metrics(w32, wq, seed=seed, n_activations=n_activations)}


def format_backend(fmt_name: str, backend: str) -> str:
    """The implementation a format runs when the analysis asks for ``backend``: "mlx" runs MLX itself
    for the MLX formats when MLX is installed and falls back to "numba" otherwise (and for every
    other format); "numba" and "reference" run as asked."""
    if backend not in BACKENDS:
        raise ValueError(f"analysis: unknown backend {backend!r}; expected one of {BACKENDS}")
    if backend != "mlx":
        return backend
    from moesim.kernels.formats import mlx_native

    has_mlx = "mlx" in getattr(get_format(fmt_name), "backends", ())
    return "mlx" if has_mlx and mlx_native.available() else "numba"


def sample_matrix_rows(w: np.ndarray, sample_rows: int | None, *, seed: int, layer: int, expert: int,
                       proj: str) -> np.ndarray:
    """``sample_rows`` rows of ``w`` (sorted, without replacement), drawn from a generator seeded by
    (seed, layer, expert, proj), so the choice does not depend on the order matrices are read in."""
    if sample_rows is None or sample_rows >= w.shape[0]:
        return w
    if sample_rows <= 0:
        raise ValueError(f"sample_rows must be positive, got {sample_rows}")
    rng = np.random.default_rng([seed, layer, expert, zlib.crc32(proj.encode())])
    rows = np.sort(rng.choice(w.shape[0], size=sample_rows, replace=False))
    return np.ascontiguousarray(w[rows])


# ---- aggregation -------------------------------------------------------------------------------

def _finite(values: Iterable[float]) -> np.ndarray:
    v = np.asarray(list(values), dtype=np.float64)
    return v[np.isfinite(v)]


def _mean(values: Iterable[float]) -> float:
    v = np.asarray(list(values), dtype=np.float64)
    return float(v.mean()) if v.size else math.nan


def _groups(rows: Sequence[dict[str, Any]]) -> list[tuple[int, str, list[dict[str, Any]]]]:
    """(layer, proj, rows) for every layer x proj, each layer over all projections (proj "all"),
    each proj over all layers (layer -1) and everything (-1, "all")."""
    keys: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for r in rows:
        for k in ((r["layer"], r["proj"]), (r["layer"], "all"), (-1, r["proj"]), (-1, "all")):
            keys.setdefault(k, []).append(r)
    return [(layer, proj, keys[(layer, proj)]) for layer, proj in sorted(keys, key=lambda k: (k[0], k[1]))]


def summarize(stats: Sequence[dict[str, Any]], errors: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``summary`` table from ``matrix_stats`` and ``quant_error`` rows."""
    size = {(s["layer"], s["expert"], s["proj"]): s for s in stats}
    out = []
    formats = list(dict.fromkeys(e["format"] for e in errors))
    for fmt in formats:
        rows = [e for e in errors if e["format"] == fmt]
        for layer, proj, grp in _groups(rows):
            n_w = [size[(e["layer"], e["expert"], e["proj"])]["numel"] for e in grp]
            signal = sum(size[(e["layer"], e["expert"], e["proj"])]["sum_sq"] for e in grp)
            noise = sum(e["noise_sq"] for e in grp)
            sq = np.asarray([e["sqnr_db"] for e in grp], dtype=np.float64)
            out.append({
                "format": fmt, "layer": layer, "proj": proj, "n_matrices": len(grp), "n_weights": int(sum(n_w)),
                "bits_per_weight": float(np.average([e["bits_per_weight"] for e in grp], weights=n_w)),
                "mse_mean": _mean(e["mse"] for e in grp),
                "rel_frobenius_mean": _mean(e["rel_frobenius"] for e in grp),
                "rel_frobenius_max": float(max(e["rel_frobenius"] for e in grp)),
                "sqnr_db_mean": _mean(sq), "sqnr_db_median": float(np.median(sq)), "sqnr_db_min": float(sq.min()),
                "sqnr_db_pooled": _pooled_sqnr(signal, noise),
                "max_abs_error_max": float(max(e["max_abs_error"] for e in grp)),
                "cosine_mean": _mean(e["cosine"] for e in grp), "cosine_min": float(min(e["cosine"] for e in grp)),
                "output_error_mean": _mean(e["output_error"] for e in grp),
                "output_error_max": float(max(e["output_error"] for e in grp)),
            })
    return out


def _pooled_sqnr(signal: float, noise: float) -> float:
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def format_deltas(errors: Sequence[dict[str, Any]], baseline: str) -> list[dict[str, Any]]:
    """Each format against ``baseline``, matrix by matrix, per (layer, proj) group. Deltas that are
    not finite (both errors zero: SQNR +Inf on both sides) are left out of the delta means."""
    base = {(e["layer"], e["expert"], e["proj"]): e for e in errors if e["format"] == baseline}
    out = []
    for fmt in dict.fromkeys(e["format"] for e in errors):
        if fmt == baseline:
            continue
        paired = [dict(e, _b=base[k]) for e in errors
                  if e["format"] == fmt and (k := (e["layer"], e["expert"], e["proj"])) in base]
        for layer, proj, grp in _groups(paired):
            dsq = _finite(e["sqnr_db"] - e["_b"]["sqnr_db"] for e in grp
                          if not (math.isinf(e["sqnr_db"]) and math.isinf(e["_b"]["sqnr_db"])))
            ratio = _finite(e["mse"] / e["_b"]["mse"] if e["_b"]["mse"] > 0 else
                            (1.0 if e["mse"] == 0 else math.inf) for e in grp)
            out.append({
                "baseline": baseline, "format": fmt, "layer": layer, "proj": proj, "n_matrices": len(grp),
                "delta_bits_per_weight": _mean(e["bits_per_weight"] - e["_b"]["bits_per_weight"] for e in grp),
                "delta_sqnr_db_mean": float(dsq.mean()) if dsq.size else math.nan,
                "delta_sqnr_db_median": float(np.median(dsq)) if dsq.size else math.nan,
                "mse_ratio_median": float(np.median(ratio)) if ratio.size else math.nan,
                "frac_better": _mean(float(e["mse"] < e["_b"]["mse"]) for e in grp),
                "frac_worse": _mean(float(e["mse"] > e["_b"]["mse"]) for e in grp),
            })
    return out


# ---- writing -----------------------------------------------------------------------------------

def column_kinds(columns: Sequence[str]) -> dict[str, str]:
    """Each column's type in the written tables (so an empty table keeps its schema)."""
    return {c: "str" if c in _STRING_COLUMNS else "int" if c in _INT_COLUMNS else "float" for c in columns}


def read_table(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a table written by :func:`analyze_checkpoint` (parquet or CSV)."""
    p = Path(path)
    kinds = column_kinds(next((cols for name, cols in COLUMNS.items() if p.stem == name), ()))
    return read_data(p, kinds)


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("moesim", "numpy", "numba", "torch", "safetensors", "pyarrow", "matplotlib", "tqdm", "mlx"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = ""
    return out


# ---- the analysis ------------------------------------------------------------------------------

def _check_formats(ckpt: Checkpoint, formats: Sequence[str], sample_rows: int | None,
                   warnings: list[dict[str, Any]]) -> dict[tuple[int, int], set[str]]:
    """Which formats can take each matrix shape, found from the headers before any data is read: a
    shape a format refuses is an error when strict, else a warning and the pair is skipped."""
    shapes: set[tuple[int, int]] = set()
    for u in ckpt.units:
        for _, (rows, cols) in ckpt.matrix_shapes(u):
            shapes.add((rows if sample_rows is None else min(rows, sample_rows), cols))
    ok: dict[tuple[int, int], set[str]] = {}
    for shape in sorted(shapes):
        ok[shape] = set()
        for name in formats:
            try:
                get_format(name).bits_per_weight(shape)
            except FormatError as exc:
                if ckpt.strict:
                    raise FormatError(f"{ckpt.path}: format {name} cannot quantize expert matrices of shape "
                                      f"{list(shape)}: {exc}") from None
                warnings.append({"code": "format_shape", "tensor": "", "layer": -1, "expert": -1, "proj": "",
                                 "format": name, "message": f"{name} skipped for shape {list(shape)}: {exc}"})
                continue
            ok[shape].add(name)
    return ok


def _progress(units: Sequence[ReadUnit], quiet: bool) -> Any:
    from tqdm.auto import tqdm

    disable = quiet or not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())
    return tqdm(units, desc="expert tensors", unit="slice", disable=disable)


def _analyze_matrix(m: ExpertMatrix, formats: Sequence[str], usable: dict[tuple[int, int], set[str]], *,
                    sample_rows: int | None, seed: int, rank: bool, eps: float, n_activations: int,
                    backends: dict[str, str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    w = sample_matrix_rows(m.weight, sample_rows, seed=seed, layer=m.layer, expert=m.expert, proj=m.proj)
    rows, cols = m.weight.shape
    st = {"layer": m.layer, "expert": m.expert, "proj": m.proj, "tensor": m.tensor, "source_dtype": m.source_dtype,
          "shape": f"{rows}x{cols}", "rows": rows, "cols": cols, "sampled_rows": int(w.shape[0]),
          "numel": int(w.size)}
    st.update(matrix_stats(w, eps=eps, rank=rank))
    errs = []
    for name in formats:
        if name not in usable.get(tuple(w.shape), set()):
            continue
        e = quant_error(w, name, seed=seed, n_activations=n_activations, backend=backends[name])
        errs.append({"layer": m.layer, "expert": m.expert, "proj": m.proj, "format": name, **e})
    return st, errs


def analyze_checkpoint(path: str | os.PathLike[str], *, rules: Any = None, formats: Sequence[str] | str = ("mxfp4",),
                       sample_rows: int | None = None, seed: int = 0, out_dir: str | os.PathLike[str] | None,
                       strict: bool = True, rank: bool = False, quiet: bool = False, eps: float = 0.0,
                       n_activations: int = 64, backend: str = "numba") -> dict[str, list[dict[str, Any]]]:
    """Analyse every expert matrix of the checkpoint at ``path``; return the tables by name and, when
    ``out_dir`` is given, write them there with ``run_meta.json``.

    ``rules``: see :func:`kernels.checkpoint.resolve_rules` (``None``: every preset). ``formats``: format
    names (a list or a comma-separated string); the first is the baseline of ``format_deltas``.
    ``strict``: layout problems and formats that cannot take a matrix shape raise; otherwise they are
    recorded in the ``warnings`` table. ``backend``: "numba", "reference" or "mlx" (see the module
    docstring).
    """
    started = time.time()
    fmt_list = [f.strip() for f in formats.split(",")] if isinstance(formats, str) else [str(f) for f in formats]
    fmt_list = [f for f in fmt_list if f]
    if not fmt_list:
        raise ValueError("analyze_checkpoint: no formats given")
    for name in fmt_list:
        get_format(name)  # an unknown name fails here, listing the known ones
    backends = {name: format_backend(name, backend) for name in fmt_list}
    ckpt = Checkpoint(path, rules=rules, strict=strict)
    warnings = list(ckpt.warnings)
    for name in fmt_list:
        if backend == "mlx" and backends[name] != "mlx" and "mlx" in getattr(get_format(name), "backends", ()):
            warnings.append({"code": "mlx_unavailable", "tensor": "", "layer": -1, "expert": -1, "proj": "",
                             "format": name, "message": f"{name}: MLX is not installed; its numba codec (bit for "
                                                        f"bit MLX's CPU results) ran instead"})
    usable = _check_formats(ckpt, fmt_list, sample_rows, warnings)
    stats: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    bar = _progress(ckpt.units, quiet)
    try:
        for mats in ckpt.matrices(bar):
            for m in mats:
                st, errs = _analyze_matrix(m, fmt_list, usable, sample_rows=sample_rows, seed=seed, rank=rank,
                                           eps=eps, n_activations=n_activations, backends=backends)
                stats.append(st)
                errors.extend(errs)
    finally:
        bar.close()
    key = {name: i for i, name in enumerate(fmt_list)}
    errors.sort(key=lambda e: (key[e["format"]], e["layer"], e["expert"], e["proj"]))
    stats.sort(key=lambda s: (s["layer"], s["expert"], s["proj"]))
    tables = {
        "inventory": ckpt.inventory(),
        "matrix_stats": [{c: s[c] for c in COLUMNS["matrix_stats"]} for s in stats],
        "quant_error": [{c: e[c] for c in COLUMNS["quant_error"]} for e in errors],
        "summary": summarize(stats, errors),
        "format_deltas": format_deltas(errors, fmt_list[0]) if len(fmt_list) > 1 else [],
        "warnings": [{c: w[c] for c in COLUMNS["warnings"]} for w in warnings],
    }
    if out_dir is not None:
        settings = {"rules": [dataclasses.asdict(r) for r in ckpt.rules], "formats": fmt_list, "sample_rows": sample_rows,
                    "seed": seed, "strict": strict, "rank": rank, "eps": eps, "n_activations": n_activations,
                    "backend": backend, "backends": backends}
        _write_all(tables, Path(out_dir), ckpt, settings, time.time() - started)
    return tables


def _write_all(tables: dict[str, list[dict[str, Any]]], out: Path, ckpt: Checkpoint, settings: dict[str, Any],
               elapsed: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    written = {name: write_data(rows, out / f"{name}.parquet", COLUMNS[name], kinds=column_kinds(COLUMNS[name])).name
               for name, rows in tables.items()}
    meta = {
        "tool": "moesim.kernels.analysis",
        "versions": _versions(),
        "inputs": {"checkpoint": str(ckpt.path.resolve()),
                   "files": [{"name": f.name, "bytes": f.stat().st_size} for f in ckpt.files],
                   "tensors": len(ckpt.tensors), "unmatched": ckpt.unmatched},
        "settings": settings,
        "counts": {name: len(rows) for name, rows in tables.items()},
        "tables": written,
        "host": platform.node(),
        "command": sys.argv,
        "elapsed_s": round(elapsed, 3),
    }
    atomic_write_text(out / "run_meta.json", json.dumps(meta, indent=2, default=str) + "\n")


# ---- command line ------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m moesim.kernels.analysis",
                                description="Statistics and quantization error of a MoE checkpoint's expert weights.")
    p.add_argument("checkpoint", help="a .safetensors file or a folder of them")
    p.add_argument("--formats", default="mxfp4", help="comma-separated format names (first = baseline)")
    p.add_argument("--out", required=True, help="output folder for the tables, run_meta.json and plots")
    p.add_argument("--rules", default=None, help="comma-separated rule presets (default: auto)")
    p.add_argument("--sample-rows", type=int, default=None, help="analyse this many random rows per matrix")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lenient", action="store_true", help="record layout problems as warnings instead of failing")
    p.add_argument("--rank", action="store_true", help="also compute the numerical rank (SVD; slow)")
    p.add_argument("--eps", type=float, default=0.0, help="sparsity threshold: |w| <= eps counts as zero")
    p.add_argument("--backend", choices=BACKENDS, default="numba",
                   help="codec implementation; mlx runs MLX itself for the mlx-* formats when installed")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 analysed, 1 the checkpoint or an output failed, 2 bad usage. Errors are one line."""
    from moesim.kernels.messages import internal_error, one_line

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or bad usage (2): a status, not an exception
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    try:
        tables = analyze_checkpoint(args.checkpoint, rules=args.rules, formats=args.formats,
                                    sample_rows=args.sample_rows, seed=args.seed, out_dir=args.out,
                                    strict=not args.lenient, rank=args.rank, quiet=args.quiet, eps=args.eps,
                                    backend=args.backend)
        if not args.no_plots and tables["quant_error"]:
            from moesim.kernels.analysis_plots import plot_all

            plot_all(tables, Path(args.out) / "plots")
    except (ValueError, OSError) as exc:  # CheckpointError and FormatError are ValueErrors
        print(f"moesim.kernels.analysis: error: {args.checkpoint}: {one_line(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:  # e.g. a safetensors file the library cannot parse: still one line
        print(f"moesim.kernels.analysis: error: {args.checkpoint}: {internal_error(exc)}", file=sys.stderr)
        return 1
    n_mat = len(tables["matrix_stats"])
    n_unmatched = sum(1 for r in tables["inventory"] if r["status"] == "unmatched")
    print(f"{n_mat} expert matrices, {n_unmatched} unmatched tensors, {len(tables['warnings'])} warnings -> {args.out}")
    for r in tables["summary"]:
        if r["layer"] == -1 and r["proj"] == "all":
            print(f"  {r['format']:<20} {r['bits_per_weight']:6.3f} bits/weight  SQNR {r['sqnr_db_pooled']:7.2f} dB  "
                  f"output error {r['output_error_mean']:.4g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
