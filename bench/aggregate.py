"""Collect every ``metrics.json`` under a sweep folder into one table.

One row per job. Columns: ``job`` (the job's folder, relative), ``status``, ``error``, one column
per override the job was launched with (``policy``, ``cache.l1_experts``, ...: the swept
parameters), then the fixed result columns of :data:`RESULT_COLUMNS`, read from the metrics.
Aggregation reads only these files, so any sweep (basic, joblib, Ray or submitit launcher, or runs
copied from other machines) aggregates the same way.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from moesim.traces.io import atomic_path, atomic_write_text

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
    ("stall_fraction", ("offload", "stall_fraction")),
    ("dram_to_gpu_bytes_per_token", ("offload", "bytes_per_token", "dram_to_gpu")),
    ("ssd_to_dram_bytes_per_token", ("offload", "bytes_per_token", "ssd_to_dram")),
    ("prefetch_accuracy", ("offload", "prefetch_accuracy")),
    ("prefetch_coverage", ("offload", "prefetch_coverage")),
    ("quant_rel_frobenius", ("quant", "rel_frobenius")),
    ("quant_sqnr_db", ("quant", "sqnr_db")),
    ("quant_output_error", ("quant", "output_error")),
    ("elapsed_s", ("elapsed_s",)),
)
MS_COLUMNS = {"latency_p50_ms", "latency_p90_ms", "latency_p99_ms"}


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
    return row


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
    fixed = {"job", "status", "error"} | {c for c, _ in RESULT_COLUMNS}
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
    cols = columns(rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({c: _csv_cell(r.get(c)) for c in cols})
    return buf.getvalue()


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return value


def write_table(rows: Sequence[Mapping[str, Any]], out_dir: str | Path, name: str = "results") -> list[Path]:
    """``<name>.csv`` always, and ``<name>.parquet`` when pyarrow is installed; both atomic."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / f"{name}.csv"]
    atomic_write_text(written[0], to_csv_text(rows))
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return written
    cols = columns(rows)
    data = {c: [r.get(c) for r in rows] for c in cols}
    table = pa.table({c: _column_array(pa, v) for c, v in data.items()})
    with atomic_path(out / f"{name}.parquet") as tmp:
        pq.write_table(table, tmp)
    written.append(out / f"{name}.parquet")
    return written


def _column_array(pa: Any, values: list[Any]) -> Any:
    """A typed column where the values agree on a type; text otherwise (mixed override values)."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if v is None else str(v) for v in values], type=pa.string())
