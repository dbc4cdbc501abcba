"""Collect every ``metrics.json`` under a sweep folder into one table.

One row per job. Columns: ``job`` (the job's folder, relative), ``status``, ``error``, one column
per override the job was launched with (``policy``, ``cache.l1_experts``, ...: the swept
parameters), then the fixed result columns of :data:`RESULT_COLUMNS`, read from the metrics, and
``trace`` (a short description of the replayed trace). Aggregation reads only these files, so any
sweep (basic, joblib, Ray or submitit launcher, or runs copied from other machines) aggregates the
same way. Tables are written through :mod:`bench.tables` (pandas).

The latency breakdown columns are milliseconds per decode step, which is per generated token of
each sequence: ``attention_ms + experts_ms + head_ms + stall_ms == latency_mean_ms``.
``transfer_ms`` is the host-to-GPU link's busy time per step (its busy share over the run times the
mean step time, exact without a warm-up); it overlaps the compute, and only its part that the
compute could not hide shows up as ``stall_ms``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from moesim.kernels import tables

# (column, path into metrics.json)
RESULT_COLUMNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("model", ("config", "model", "name")),
    ("hardware", ("config", "hardware", "name")),
    ("policy_name", ("config", "policy", "name")),
    ("prefetcher", ("config", "prefetch", "name")),
    ("format", ("quant", "format")),
    ("organisation", ("config", "cache", "organisation")),
    ("batch_size", ("config", "batch_size")),
    ("trace_steps", ("trace", "steps")),
    ("decode_steps", ("trace", "decode_steps")),
    ("l1_experts", ("capacity", "l1_experts")),
    ("l1_gib", ("capacity", "l1_gib")),
    ("budget_gib", ("config", "cache", "l1_gib")),
    ("expert_bytes", ("capacity", "expert_bytes")),
    ("bits_per_weight", ("quant", "bits_per_weight")),
    ("accesses", ("l1", "accesses")),
    ("hits", ("l1", "hits")),
    ("misses", ("l1", "misses")),
    ("evictions", ("l1", "evictions")),
    ("hit_rate", ("l1", "hit_rate")),
    ("l1_hit_rate", ("offload", "l1_hit_rate")),
    ("l2_hit_rate", ("offload", "l2_hit_rate")),
    ("tokens_per_s", ("offload", "tokens_per_s")),
    ("latency_p50_ms", ("offload", "latency_p50_s")),
    ("latency_p90_ms", ("offload", "latency_p90_s")),
    ("latency_p99_ms", ("offload", "latency_p99_s")),
    ("latency_mean_ms", ("offload", "latency_mean_s")),
    ("attention_ms", ("offload", "time_breakdown_s", "attention")),
    ("experts_ms", ("offload", "time_breakdown_s", "experts")),
    ("head_ms", ("offload", "time_breakdown_s", "head")),
    ("stall_ms", ("offload", "time_breakdown_s", "stall")),
    ("stall_fraction", ("offload", "stall_fraction")),
    ("pcie_utilisation", ("offload", "link_utilisation", "dram_to_gpu")),
    ("ssd_utilisation", ("offload", "link_utilisation", "ssd_to_dram")),
    ("dram_to_gpu_bytes_per_token", ("offload", "bytes_per_token", "dram_to_gpu")),
    ("ssd_to_dram_bytes_per_token", ("offload", "bytes_per_token", "ssd_to_dram")),
    ("prefetch_accuracy", ("offload", "prefetch_accuracy")),
    ("prefetch_coverage", ("offload", "prefetch_coverage")),
    ("prefetch_issued", ("offload", "counts", "prefetch_issued")),
    ("prefetch_useful", ("offload", "counts", "prefetch_useful")),
    ("quant_rel_frobenius", ("quant", "rel_frobenius")),
    ("quant_sqnr_db", ("quant", "sqnr_db")),
    ("quant_output_error", ("quant", "output_error")),
    ("elapsed_s", ("elapsed_s",)),
)
MS_COLUMNS = {"latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "latency_mean_ms", "attention_ms", "experts_ms",
              "head_ms", "stall_ms"}
# Derived after the metrics are read (see the module docstring).
DERIVED_COLUMNS = ("transfer_ms", "trace")
BREAKDOWN = ("attention_ms", "experts_ms", "head_ms", "stall_ms")


def _get(data: Mapping[str, Any], path: Sequence[str]) -> Any:
    cur: Any = data
    for key in path:
        if not isinstance(cur, Mapping) or key not in cur:
            return None
        cur = cur[key]
    return cur


def parse_override(text: str) -> tuple[str, str] | None:
    """``"+cache.l1_experts=64"`` -> ``("cache.l1_experts", "64")``; deletions (``~x``) give None."""
    if text.startswith("~") or "=" not in text:
        return None
    key, value = text.split("=", 1)
    return key.lstrip("+"), value


def _scalar(value: str) -> Any:
    """Override strings as numbers where they are numbers, so columns sort and plot numerically."""
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return {"true": True, "false": False, "null": None}.get(value.lower(), value)


def row_from_metrics(metrics: Mapping[str, Any], job: str) -> dict[str, Any]:
    row: dict[str, Any] = {"job": job, "status": metrics.get("status", "unknown"), "error": metrics.get("error")}
    for text in metrics.get("overrides") or []:
        parsed = parse_override(str(text))
        if parsed and not parsed[0].startswith("hydra"):
            row[parsed[0]] = _scalar(parsed[1])
    for column, path in RESULT_COLUMNS:
        value = _get(metrics, path)
        if column in MS_COLUMNS and value is not None:
            value = float(value) * 1e3
        row[column] = value
    util, mean = row.get("pcie_utilisation"), row.get("latency_mean_ms")
    row["transfer_ms"] = float(util) * float(mean) if util is not None and mean is not None else None
    row["trace"] = describe_trace(metrics)
    return row


def describe_trace(metrics: Mapping[str, Any]) -> str | None:
    """``synthetic gpt-oss-20b preset, 8 requests, seed 0`` or the file's name."""
    tcfg = _get(metrics, ("config", "trace")) or {}
    if not isinstance(tcfg, Mapping):
        return None
    if tcfg.get("kind") == "file":
        path = tcfg.get("path")
        return None if path is None else Path(str(path)).name
    if tcfg.get("preset") is None:
        return None
    text = f"synthetic {tcfg['preset']} preset, {tcfg.get('requests')} requests, seed {tcfg.get('seed')}"
    if tcfg.get("max_steps"):
        text += f", first {tcfg['max_steps']} steps"
    return text


def collect(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Every job's row, sorted by job folder. A ``metrics.json`` that cannot be read becomes a row
    with status ``unreadable`` (a half-written file from a killed job must not stop the report); a
    job that started (``run_meta.json``) and never finished is listed as ``incomplete``."""
    root = Path(sweep_dir)
    rows = []
    folders = {p.parent for p in root.rglob("metrics.json")} | {p.parent for p in root.rglob("run_meta.json")}
    for folder in sorted(folders):
        if "report" in folder.relative_to(root).parts[:1]:
            continue
        job = str(folder.relative_to(root)) or "."
        path = folder / "metrics.json"
        if not path.exists():
            rows.append({"job": job, "status": "incomplete", "error": f"{folder}: started but never finished"})
            continue
        try:
            metrics = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            rows.append({"job": job, "status": "unreadable", "error": f"{path}: {exc}"})
            continue
        rows.append(row_from_metrics(metrics, job))
    return rows


def swept_columns(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """Override columns that take more than one value among the jobs (the sweep's axes)."""
    rows = list(rows)
    fixed = {"job", "status", "error", *DERIVED_COLUMNS} | {c for c, _ in RESULT_COLUMNS}
    keys: list[str] = []
    for r in rows:
        keys.extend(k for k in r if k not in fixed and k not in keys)
    return [k for k in keys if len({repr(r.get(k)) for r in rows}) > 1]


def columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    out = ["job", "status", "error"]
    for r in rows:
        out.extend(k for k in r if k not in out)
    return out


def to_csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    return tables.csv_text(rows, columns(rows))


def write_table(rows: Sequence[Mapping[str, Any]], out_dir: str | Path, name: str = "results") -> list[Path]:
    """``<name>.csv`` always, and ``<name>.parquet`` when pyarrow is installed; both atomic."""
    return tables.write(rows, out_dir, name, columns=columns(rows))
