"""The Hydra app: ``moesim`` (or ``python -m moesim.sim``).

    moesim                                   # one run with conf/config.yaml's defaults
    moesim policy=arc cache.l1_experts=64    # one run, two choices changed
    moesim -m policy=lru,lfu,arc,opt cache.l1_experts=16,32,64,128       # a sweep
    moesim +experiment=policy_vs_size        # a preset sweep (no -m needed)
    moesim -m ... hydra/launcher=joblib      # the same sweep on every local core

Each run writes ``metrics.json`` (:func:`sim.experiment.run_experiment`) and ``run_meta.json``
(versions, git commit, seed, host, command line, overrides) atomically into Hydra's output folder.
A run that raises is recorded there as ``metrics.json`` with ``status: failed`` and the error, so a
sweep keeps the other jobs' results. Every job records a *fingerprint* of what its result depends
on (the resolved config, the trace's identity, the code); re-running a sweep with the same
``sweep_name`` skips the jobs that finished with the same fingerprint and re-runs, saying so, those
whose fingerprint changed (a replaced trace file, a new version of the code). At the end of a
multirun, :class:`bench.callbacks.SweepCallback` aggregates the folder and writes the report.

Job folders are named after the job's overrides, made safe (:func:`safe_dirname`): no value can
put a job's files outside the sweep folder. Arrays spilled during a run go to a scratch folder
inside the job's folder (removed at the end; a killed job's is removed by the next run there). In a
local parallel sweep (joblib), a worker dies with the sweep's process.

Exit codes: 0 every run ok; 1 a single run failed, or a sweep finished with failed jobs (after
running the others; ``exit_code_on_failure=0`` keeps the old behaviour); 2 a usage error (a
config that does not compose). Errors are printed as one line.

``moesim --help`` lists the config groups and the main knobs (``conf/hydra/help/moesim.yaml``).
A single run prints its output folder at the end.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import logging
import os
import platform
import re
import signal
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
from moesim.kernels.files import atomic_write_text
from moesim.sim.config import register_configs
from moesim.sim.profiles import CONF_DIR
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("moesim")
REPO_ROOT = Path(__file__).resolve().parent.parent

register_configs()

DIRNAME_LIMIT = 200


def safe_dirname(override_dirname: str) -> str:
    """A job folder name from Hydra's override dirname that stays one folder inside the sweep:
    path separators and anything outside ``[A-Za-z0-9._=,+-]`` become ``_``, a name that is only
    dots becomes ``_``, and a name longer than 200 characters keeps its start plus a hash."""
    name = re.sub(r"[^A-Za-z0-9._=,+\-]", "_", override_dirname) or "_"
    if set(name) <= {"."}:
        name = "_" * len(name)
    if len(name) > DIRNAME_LIMIT:
        digest = hashlib.sha1(override_dirname.encode()).hexdigest()[:12]
        name = f"{name[:DIRNAME_LIMIT - 13]}-{digest}"
    return name


if not OmegaConf.has_resolver("moesim_job_dir"):
    OmegaConf.register_new_resolver("moesim_job_dir", safe_dirname)


@functools.cache
def git_commit() -> str | None:
    """The commit of the code this process runs (asked once: a sweep's jobs share it)."""
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=False)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


@functools.cache
def _versions() -> tuple[tuple[str, str | None], ...]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("numpy", "numba", "torch", "safetensors", "hydra-core", "omegaconf", "moesim"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:  # a missing distribution is recorded as None, never fatal
            out[name] = None
    return tuple(out.items())


def versions() -> dict[str, str | None]:
    """The versions this process runs (read once: reading package metadata took ~30 ms a job)."""
    return dict(_versions())


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


def finished_fingerprint(out_dir: Path) -> dict[str, str] | None:
    """The fingerprint of the job that finished ok in ``out_dir`` (``None``: not finished ok)."""
    try:
        metrics = json.loads((out_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(metrics, dict) or metrics.get("status") != "ok":
        return None
    fp = metrics.get("fingerprint")
    return fp if isinstance(fp, dict) else {}


def _die_with_parent() -> None:
    """In a worker of a local parallel sweep, ask the kernel to kill this process when the sweep's
    process (its parent) dies: a SIGKILLed sweep must not leave workers running and writing."""
    if sys.platform != "linux" or os.environ.get("MOESIM_SWEEP_PID") != str(os.getppid()):
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except OSError:
        return
    if os.getppid() == 1:  # the parent died before the call took effect
        os._exit(1)


_GUARD = """
import os, signal, sys, time
sweep = sys.argv[1]

def reap(*_):
    # The sweep's process is gone: end every process it started (they carry its pid in their
    # environment: parallel workers, idle or busy, and their resource trackers).
    me = str(os.getpid())
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or pid == me:
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                if f"MOESIM_SWEEP_PID={sweep}".encode() in fh.read().split(b"\\0"):
                    os.kill(int(pid), signal.SIGKILL)
        except OSError:
            continue
    os._exit(0)

signal.signal(signal.SIGTERM, reap)
while True:
    if os.getppid() != int(sweep):  # missed the signal (the parent died before prctl took effect)
        reap()
    time.sleep(1.0)
"""


def start_sweep_guard() -> subprocess.Popen[bytes] | None:
    """A small process that outlives nothing: when this (the sweep's) process dies, however it dies
    (SIGKILL, the OOM killer), the kernel sends the guard SIGTERM and the guard kills every process
    the sweep started, so no worker keeps running and writing. Linux only; ``None`` elsewhere."""
    if sys.platform != "linux":
        return None

    def set_pdeathsig() -> None:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG

    return subprocess.Popen([sys.executable, "-c", _GUARD, str(os.getpid())], preexec_fn=set_pdeathsig,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _confined(out_dir: Path) -> None:
    sweep = os.environ.get("MOESIM_SWEEP_DIR")
    if sweep and not out_dir.resolve().is_relative_to(Path(sweep).resolve()):
        raise RuntimeError(f"job folder {out_dir} is outside the sweep folder {sweep}")


def run_job(cfg: DictConfig, out_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """Run, record and return one job's metrics (``status`` ok, skipped or failed)."""
    from moesim.sim.experiment import fingerprint, run_experiment

    _die_with_parent()
    _confined(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base_dir = hydra.utils.get_original_cwd() if HydraConfig.initialized() else None
    try:
        fp = fingerprint(cfg, base_dir=base_dir)
    except Exception as exc:
        fp = {"error": f"{type(exc).__name__}: {exc}"}  # the run itself will fail and say why
    done = finished_fingerprint(out_dir)
    if done is not None:
        if done == fp:
            log.info("%s: done already, skipped", out_dir)
            return {"status": "skipped"}
        changed = sorted(k for k in set(fp) | set(done) if fp.get(k) != done.get(k)) or ["fingerprint"]
        log.info("%s: re-running, its %s changed since it finished", out_dir, " and ".join(changed))
    write_json(out_dir / "run_meta.json", run_meta(cfg, overrides))
    try:
        metrics = run_experiment(cfg, base_dir=base_dir, scratch=out_dir)
    except Exception as exc:
        if cfg.get("fail_fast", False):
            raise
        metrics = {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(),
                   "overrides": overrides, "config": OmegaConf.to_container(cfg, resolve=False)}
        log.error("job failed (%s): %s", " ".join(overrides) or "no overrides", metrics["error"])
    metrics["overrides"] = overrides
    metrics["fingerprint"] = fp
    write_json(out_dir / "metrics.json", metrics)
    if metrics["status"] == "ok":
        off = metrics["offload"]
        log.info("%s | hit %.4f | %.2f tok/s | p99 %.2f ms", " ".join(overrides) or "defaults",
                 metrics["l1"]["hit_rate"], off["tokens_per_s"], off["latency_p99_s"] * 1e3)
    return metrics


# What this process saw of its runs (the basic launcher runs them here): whether a job started
# (then a non-zero exit from Hydra is a failed run or a sweep with failed jobs, not bad usage) and
# the single runs that failed.
_STARTED: list[str] = []
_FAILED: list[str] = []


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    _STARTED.append(str(out_dir))
    metrics = run_job(cfg, out_dir, list(hc.overrides.task))
    if hc.mode == RunMode.RUN:
        _report_single(out_dir, metrics, int(cfg.get("exit_code_on_failure", 1)))
    if metrics.get("status") == "ok":
        return float(metrics["offload"]["tokens_per_s"])  # what a sweeper would optimise
    return None


def _report_single(out_dir: Path, metrics: dict[str, Any], exit_code: int) -> None:
    """One line saying where a single run's results went (a sweep's report says it for all jobs)."""
    status = metrics.get("status")
    if status == "ok":
        off = metrics["offload"]
        print(f"moesim: wrote {out_dir} (metrics.json, run_meta.json): hit rate {metrics['l1']['hit_rate']:.4f}, "
              f"{off['tokens_per_s']:.2f} tokens/s, p99 {off['latency_p99_s'] * 1e3:.2f} ms", flush=True)
    elif status == "skipped":
        print(f"moesim: {out_dir} holds a finished run already; nothing to do", flush=True)
    else:
        if exit_code:
            _FAILED.append(str(out_dir))
        error = " | ".join(str(metrics.get("error", "failed")).splitlines())
        print(f"moesim: error: {error} (details: {out_dir / 'metrics.json'})", file=sys.stderr, flush=True)


def main() -> None:
    """``moesim``: the Hydra app with the exit status of the module docstring."""
    _STARTED.clear()
    _FAILED.clear()
    try:
        hydra_main()
    except SystemExit as exc:
        # Hydra exits with 1 when it cannot compose the configuration (no run started: bad usage)
        # and when a run raised with fail_fast=true (a failed run); a sweep with failed jobs exits
        # with exit_code_on_failure (bench.callbacks), and marks itself started for any launcher.
        if exc.code not in (0, None):
            sys.exit(exc.code if _STARTED else 2)
        raise
    if _FAILED:
        sys.exit(1)


if __name__ == "__main__":
    main()
