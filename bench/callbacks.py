"""Hydra callbacks of the ``moesim`` app (registered in ``conf/config.yaml``).

* ``on_multirun_start``: compile every jitted function the sweep will use once, in the parent,
  so numba's on-disk cache is complete before parallel workers (joblib, Ray, submitit) start:
  several processes compiling the same cache entry at once can crash.
* ``on_multirun_end``: aggregate the sweep folder into the report (:func:`bench.report.build_report`).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("moesim")
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def sweep_choices(config: DictConfig, group: str) -> list[str]:
    """The values a sweep gives ``group`` (from ``-m group=a,b`` or an experiment's sweeper params),
    plus the composed default."""
    found: list[str] = []
    texts = list(OmegaConf.select(config, "hydra.overrides.task", default=[]) or [])
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    texts += [f"{k}={v}" for k, v in params.items()]
    for text in texts:
        key, _, value = str(text).partition("=")
        if key.lstrip("+") == group and not value.startswith(("glob(", "range(", "choice(", "interval(")):
            found += [v.strip() for v in value.split(",") if v.strip()]
    default = OmegaConf.select(config, f"{group}.name" if group != "quant" else "quant.format", default=None)
    if default is not None and default not in found:
        found.append(str(default))
    return found


def warm_numba(config: DictConfig) -> None:
    """Run a one-request experiment per policy, prefetcher and format of the sweep."""
    from moesim.sim.experiment import run_experiment

    base = OmegaConf.to_container(config, resolve=False)
    assert isinstance(base, dict)
    base.pop("hydra", None)
    base["trace"] = dict(base["trace"], requests=1, max_steps=0)
    jobs: list[tuple[str, str, str]] = []
    for p in sweep_choices(config, "policy"):
        jobs.append(("policy", p, "name"))
    for p in sweep_choices(config, "prefetch"):
        jobs.append(("prefetch", p, "name"))
    for f in sweep_choices(config, "quant"):
        jobs.append(("quant", f, "format"))
    for group, choice, _ in jobs:
        cfg = OmegaConf.create(base)
        path = CONF_DIR / group / f"{choice}.yaml"
        if not path.exists():
            continue  # Hydra reports unknown choices itself, per job
        cfg[group] = OmegaConf.merge(cfg[group], OmegaConf.load(path))
        cfg.cache.l1_experts = None
        cfg.cache.l1_gib = None
        try:
            run_experiment(cfg)
        except Exception as exc:  # warming is best effort; the job itself reports real errors
            log.debug("warm-up of %s=%s failed: %s", group, choice, exc)


def _sweep_dir(config: DictConfig) -> Path:
    sweep_dir = Path(str(config.hydra.sweep.dir))
    if not sweep_dir.is_absolute():
        sweep_dir = Path(config.hydra.runtime.cwd) / sweep_dir
    return sweep_dir


class SweepCallback(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Read by the jobs (sim.app.run_job): local workers die with this process, and no job
        # folder may lie outside the sweep folder.
        os.environ["MOESIM_SWEEP_PID"] = str(os.getpid())
        os.environ["MOESIM_SWEEP_DIR"] = str(_sweep_dir(config))
        warm_numba(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from moesim.bench.aggregate import collect

        sweep_dir = _sweep_dir(config)
        if not sweep_dir.is_dir():
            return
        if config.get("report", True):
            from moesim.bench.report import build_report

            res = build_report(sweep_dir)
            rows = res["rows"]
            n_ok = sum(r.get("status") == "ok" for r in rows)
            print(f"moesim: {len(rows)} jobs ({n_ok} ok); report: {res['report']}", flush=True)
        else:
            rows = collect(sweep_dir)
        bad = [r for r in rows if r.get("status") not in ("ok", "skipped")]
        code = int(config.get("exit_code_on_failure", 1))
        if bad and code:
            for r in bad:
                print(f"moesim: job {r['job']}: {r.get('status')}: {r.get('error')}", file=sys.stderr, flush=True)
            # SystemExit passes through Hydra's error handling: every job has run and the report exists.
            sys.exit(code)
