"""The Hydra app: ``moesim`` (or ``python -m moesim.sim``).

    moesim                                   # one run with conf/config.yaml's defaults
    moesim policy=arc cache.l1_experts=64    # one run, two choices changed
    moesim -m policy=lru,lfu,arc,opt cache.l1_experts=16,32,64,128       # a sweep
    moesim +experiment=policy_vs_size        # a preset sweep (no -m needed)
    moesim -m ... hydra/launcher=joblib      # the same sweep on every local core

Each run writes ``metrics.json`` (:func:`sim.experiment.run_experiment`) and ``run_meta.json``
(versions, git commit, seed, host, command line, overrides) atomically into Hydra's output folder.
A run that raises is recorded there as ``metrics.json`` with ``status: failed`` and the error, so a
sweep keeps the other jobs' results; a job whose ``metrics.json`` already says ``ok`` is skipped,
so re-running an interrupted sweep with the same ``sweep_name`` resumes it. At the end of a
multirun, :class:`bench.callbacks.SweepCallback` aggregates the folder and writes the report.

``moesim --help`` lists the config groups and the main knobs (``conf/hydra/help/moesim.yaml``).
A single run prints its output folder at the end. Exit status: 0 done (a sweep whose jobs failed
still ends with 0: they are recorded and listed in its report), 1 a single run failed, 2 bad usage
(Hydra could not compose the configuration: an unknown key or option, a value of the wrong type).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import socket
import subprocess
import sys
import traceback
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from moesim.sim.config import register_configs
from moesim.traces.io import atomic_write_text
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("moesim")
REPO_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = REPO_ROOT / "conf"

register_configs()


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=False)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("numpy", "numba", "torch", "safetensors", "hydra-core", "omegaconf", "moesim"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:  # a missing distribution is recorded as None, never fatal
            out[name] = None
    return out


def run_meta(cfg: DictConfig, overrides: list[str]) -> dict[str, Any]:
    return {"versions": versions(), "git_commit": git_commit(), "seed": int(cfg.seed), "host": socket.gethostname(),
            "platform": platform.platform(), "command": sys.argv, "overrides": overrides, "cwd": os.getcwd(),
            "pid": os.getpid()}


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=False, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def already_done(out_dir: Path) -> bool:
    path = out_dir / "metrics.json"
    try:
        return json.loads(path.read_text()).get("status") == "ok"
    except (OSError, ValueError):
        return False


def run_job(cfg: DictConfig, out_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """Run, record and return one job's metrics (``status`` ok, skipped or failed)."""
    from moesim.sim.experiment import run_experiment

    out_dir.mkdir(parents=True, exist_ok=True)
    if already_done(out_dir):
        log.info("%s: done already, skipped", out_dir)
        return {"status": "skipped"}
    write_json(out_dir / "run_meta.json", run_meta(cfg, overrides))
    try:
        metrics = run_experiment(cfg, base_dir=hydra.utils.get_original_cwd() if HydraConfig.initialized() else None)
    except Exception as exc:
        if cfg.get("fail_fast", False):
            raise
        metrics = {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(),
                   "overrides": overrides, "config": OmegaConf.to_container(cfg, resolve=False)}
        log.error("job failed (%s): %s", " ".join(overrides) or "no overrides", metrics["error"])
    metrics["overrides"] = overrides
    write_json(out_dir / "metrics.json", metrics)
    if metrics["status"] == "ok":
        off = metrics["offload"]
        log.info("%s | hit %.4f | %.2f tok/s | p99 %.2f ms", " ".join(overrides) or "defaults",
                 metrics["l1"]["hit_rate"], off["tokens_per_s"], off["latency_p99_s"] * 1e3)
    return metrics


# What this process saw of its runs (the basic launcher runs them here): whether a job started
# (then a non-zero exit from Hydra is a failed run, not bad usage) and the single runs that failed.
_STARTED: list[str] = []
_FAILED: list[str] = []


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _app(cfg: DictConfig) -> float | None:
    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    _STARTED.append(str(out_dir))
    metrics = run_job(cfg, out_dir, list(hc.overrides.task))
    if hc.mode == RunMode.RUN:
        _report_single(out_dir, metrics)
    if metrics.get("status") == "ok":
        return float(metrics["offload"]["tokens_per_s"])  # what a sweeper would optimise
    return None


def _report_single(out_dir: Path, metrics: dict[str, Any]) -> None:
    """One line saying where a single run's results went (a sweep's report says it for all jobs)."""
    status = metrics.get("status")
    if status == "ok":
        off = metrics["offload"]
        print(f"moesim: wrote {out_dir} (metrics.json, run_meta.json): hit rate {metrics['l1']['hit_rate']:.4f}, "
              f"{off['tokens_per_s']:.2f} tokens/s, p99 {off['latency_p99_s'] * 1e3:.2f} ms", flush=True)
    elif status == "skipped":
        print(f"moesim: {out_dir} holds a finished run already; nothing to do", flush=True)
    else:
        _FAILED.append(str(out_dir))
        error = " | ".join(str(metrics.get("error", "failed")).splitlines())
        print(f"moesim: error: {error} (details: {out_dir / 'metrics.json'})", file=sys.stderr, flush=True)


def main() -> None:
    """``moesim``: the Hydra app with the exit status of the module docstring."""
    _STARTED.clear()
    _FAILED.clear()
    try:
        _app()
    except SystemExit as exc:
        # Hydra exits with 1 when it cannot compose the configuration (no run started: bad usage)
        # and when a run raised with fail_fast=true (a failed run).
        if exc.code not in (0, None):
            sys.exit(1 if _STARTED else 2)
        raise
    if _FAILED:
        sys.exit(1)


if __name__ == "__main__":
    main()
