"""Sweep folders for the report tests: hand-made ``metrics.json`` files with the shape
``sim.experiment.run_experiment`` writes (fast, any policy / format / prefetcher mix), and a small
real sweep run in this process."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

GIB = 2**30
EXPERT_BYTES = 13_271_040  # gpt-oss-20b in MXFP4


def fake_metrics(policy: str, experts: int, *, fmt: str = "mxfp4", prefetcher: str = "none", bits: float = 4.25,
                 error: float | None = 0.09, extra_overrides: Sequence[str] = ()) -> dict[str, Any]:
    """A plausible ok ``metrics.json``: more experts and a better policy give more tokens/s."""
    quality = {"opt": 1.4, "s3fifo": 1.1, "arc": 1.05, "lru": 1.0, "lfu": 0.7}.get(policy, 0.9)
    quality *= {"oracle": 1.3, "affinity": 1.1, "speculative": 1.05}.get(prefetcher, 1.0)
    hit = min(0.99, 0.1 + 0.002 * experts * quality)
    stall = 0.05 * (1 - hit)
    compute = {"attention": 0.002, "experts": 0.0015, "head": 0.001}
    mean = sum(compute.values()) + stall
    overrides = [f"policy={policy}", f"cache.l1_experts={experts}", *extra_overrides]
    if prefetcher != "none":
        overrides.append(f"prefetch={prefetcher}")
    if fmt != "mxfp4":
        overrides.append(f"quant={fmt}")
    issued = 0 if prefetcher == "none" else 1000
    useful = int(issued * 0.6)
    return {
        "status": "ok", "metrics_version": "2", "overrides": overrides,
        "config": {"model": {"name": "gpt-oss-20b"}, "hardware": {"name": "rtx-4090"},
                   "policy": {"name": policy, "params": {}}, "prefetch": {"name": prefetcher, "params": {}},
                   "cache": {"organisation": "shared", "l1_experts": experts, "l1_gib": None},
                   "trace": {"kind": "synthetic", "preset": "gpt-oss-20b", "requests": 2, "seed": 0, "max_steps": 0},
                   "batch_size": 1, "seed": 0},
        "trace": {"model": "gpt-oss-20b", "steps": 500, "decode_steps": 250},
        "capacity": {"l1_experts": experts, "l1_gib": experts * EXPERT_BYTES / GIB, "expert_bytes": EXPERT_BYTES},
        "l1": {"accesses": 24000, "hits": int(24000 * hit), "misses": 24000 - int(24000 * hit), "evictions": 10,
               "hit_rate": int(24000 * hit) / 24000},
        "offload": {"l1_hit_rate": int(24000 * hit) / 24000, "l2_hit_rate": None, "tokens_per_s": 1 / mean,
                    "latency_p50_s": mean * 0.9, "latency_p90_s": mean * 1.2, "latency_p99_s": mean * 1.5,
                    "latency_mean_s": mean, "stall_fraction": stall / mean,
                    "time_breakdown_s": {**compute, "stall": stall},
                    "bytes_per_token": {"dram_to_gpu": 1e6 * (1 - hit), "ssd_to_dram": 0.0, "gpu_to_dram": 0.0},
                    "link_utilisation": {"dram_to_gpu": 0.8 * (1 - hit), "ssd_to_dram": 0.0},
                    "prefetch_accuracy": useful / issued if issued else None,
                    "prefetch_coverage": useful / (useful + 500) if issued else None,
                    "counts": {"prefetch_issued": issued, "prefetch_useful": useful}},
        "quant": {"format": fmt, "bits_per_weight": bits, "rel_frobenius": error},
        "elapsed_s": 0.1,
    }


def write_sweep(root: Path, metrics: Sequence[dict[str, Any]]) -> Path:
    """One job folder per metrics dict, named by its overrides (as Hydra names them)."""
    for m in metrics:
        job = root / ",".join(m["overrides"])
        job.mkdir(parents=True, exist_ok=True)
        (job / "metrics.json").write_text(json.dumps(m))
    return root


def policy_sweep(root: Path, policies: Sequence[str] = ("lru", "arc", "s3fifo", "lfu", "opt"),
                 sizes: Sequence[int] = (64, 128, 256, 384)) -> Path:
    return write_sweep(root, [fake_metrics(p, n) for p in policies for n in sizes])


FORMATS = {"bf16": (16.0, 0.0), "fp8-e4m3-channel": (8.0, 0.02), "int4-g64": (4.5, 0.1), "mxfp4": (4.25, 0.12),
           "nvfp4": (4.5, 0.08)}


def format_sweep(root: Path) -> Path:
    """Formats x budgets: a smaller format fits more experts in the same GiB (more tokens/s) at a
    larger error, so the frontier holds several formats at one budget."""
    out = []
    for fmt, (bits, err) in FORMATS.items():
        for gib in (1, 2, 4):
            experts = int(gib * GIB // (EXPERT_BYTES * bits / 4.25))
            m = fake_metrics("lru", experts, fmt=fmt, bits=bits, error=err, extra_overrides=[f"cache.l1_gib={gib}"])
            m["overrides"] = [o for o in m["overrides"] if not o.startswith("cache.l1_experts")] + [f"quant={fmt}"]
            m["overrides"] = list(dict.fromkeys(m["overrides"]))
            m["config"]["cache"]["l1_gib"] = gib
            out.append(m)
    return write_sweep(root, out)


def prefetch_sweep(root: Path) -> Path:
    return write_sweep(root, [fake_metrics("lru", n, prefetcher=p) for p in ("none", "affinity", "speculative",
                                                                               "oracle") for n in (64, 128, 256)])
