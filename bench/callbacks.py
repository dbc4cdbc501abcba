"""Hydra callbacks of the ``moesim`` app (registered in ``conf/config.yaml``).

* ``on_multirun_start``: compile every jitted function the sweep will use once, in the parent,
  so numba's on-disk cache is complete before parallel workers (joblib, Ray, submitit) start:
  several processes compiling the same cache entry at once can crash.
  It says so first ("compiling kernels"), since a fresh sweep's first result can take many
  seconds to appear.
* While the jobs run: one line each time a job finishes, ``N/M jobs done`` with the elapsed time
  and an ETA (:class:`Progress`, a thread of the launching process that counts the jobs'
  ``metrics.json`` files, so it works with every launcher, in-process or not).
* ``on_multirun_end``: aggregate the sweep folder into the report (:func:`bench.report.build_report`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from hydra.experimental.callback import Callback
from moesim.sim.profiles import CONF_DIR
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("moesim")


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


def sweep_size(config: DictConfig) -> int | None:
    """How many jobs the basic sweeper will launch: the product of the swept values' counts
    (``-m a=1,2 b=x,y,z`` and an experiment's ``hydra.sweeper.params``); None when it cannot tell
    (another sweeper, an interval or glob sweep)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    texts = [str(t) for t in OmegaConf.select(config, "hydra.overrides.task", default=[]) or []]
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    keys = {t.partition("=")[0].lstrip("+~") for t in texts}
    texts += [f"{k}={v}" for k, v in params.items() if k not in keys]  # the command line wins
    try:
        n = 1
        for override in OverridesParser.create().parse_overrides(texts):
            if override.is_sweep_override():
                n *= len(list(override.sweep_string_iterator()))
        return n
    except Exception:  # any override the parser or iterator cannot count: no total, counts only
        return None


def _job_files(sweep_dir: Path) -> Iterable[Path]:
    for path in sweep_dir.glob("*/metrics.json"):
        if path.parent.name != "report":
            yield path


def _status(path: Path) -> str:
    try:
        return str(json.loads(path.read_text()).get("status", "unknown"))
    except (OSError, ValueError):
        return "unknown"  # being written (atomically renamed, so rarely) or damaged


def _duration(seconds: float) -> str:
    whole = max(0, round(seconds))
    return f"{whole // 60} min {whole % 60:02d} s" if whole >= 60 else f"{whole} s"


class Progress:
    """Prints ``N/M jobs done`` with the elapsed time and an ETA whenever another job of the sweep
    in ``sweep_dir`` finishes. Jobs already finished when the sweep started (a resumed sweep) count
    as done at once; the ETA is the mean time of the jobs finished since, times the jobs left."""

    def __init__(self, sweep_dir: Path, total: int | None, *, stream: TextIO | None = None,
                 interval_s: float = 0.5) -> None:
        self.sweep_dir, self.total, self.interval_s = sweep_dir, total, interval_s
        self.stream = stream if stream is not None else sys.stdout
        self.started = time.time()
        self.resumed = {p.parent.name for p in _job_files(sweep_dir) if _status(p) == "ok"}
        self.seen: dict[str, str] = {}
        self.printed = -1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self) -> str | None:
        """Count the finished jobs; the progress line when the count changed, else None."""
        for path in _job_files(self.sweep_dir):
            name = path.parent.name
            if name in self.seen or name in self.resumed:
                continue
            try:
                fresh = path.stat().st_mtime >= self.started - 1.0  # coarse file-system clocks
            except OSError:
                continue
            if fresh:
                self.seen[name] = _status(path)
        new = len(self.seen)
        done = len(self.resumed) + new
        if self.total is not None:
            done = min(done, self.total)
        if done == self.printed:
            return None
        self.printed = done
        return self.line(done, new)

    def line(self, done: int, new: int) -> str:
        elapsed = time.time() - self.started
        failed = sum(s not in ("ok", "skipped") for s in self.seen.values())
        text = f"moesim: {done}/{self.total if self.total is not None else '?'} jobs done"
        if self.resumed:
            text += f" ({len(self.resumed)} from an earlier run)"
        if failed:
            text += f", {failed} failed"
        text += f", {_duration(elapsed)} elapsed"
        if self.total is not None and new and done < self.total:
            text += f", about {_duration(elapsed / new * (self.total - done))} left"
        return text

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._print(self.poll())

    def _print(self, text: str | None) -> None:
        if text:
            print(text, file=self.stream, flush=True)

    def start(self) -> None:
        self._print(self.poll())
        self._thread = threading.Thread(target=self._run, name="moesim-progress", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._print(self.poll())


def _sweep_dir(config: DictConfig) -> Path:
    sweep_dir = Path(str(config.hydra.sweep.dir))
    if not sweep_dir.is_absolute():
        sweep_dir = Path(config.hydra.runtime.cwd) / sweep_dir
    return sweep_dir


class SweepCallback(Callback):
    def __init__(self) -> None:
        self.progress: Progress | None = None
        self.guard: Any = None

    def __getstate__(self) -> dict[str, Any]:
        # Parallel launchers (joblib) pickle the callbacks with each job; the progress printer (a
        # thread and its lock) belongs to the sweep's own process.
        return {**self.__dict__, "progress": None, "guard": None}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Read by the jobs (sim.app.run_job): local workers die with this process, and no job
        # folder may lie outside the sweep folder.
        os.environ["MOESIM_SWEEP_PID"] = str(os.getpid())
        os.environ["MOESIM_SWEEP_DIR"] = str(_sweep_dir(config))
        from moesim.sim import app

        app._STARTED.append(str(_sweep_dir(config)))  # a failure from here on is not bad usage
        self.guard = app.start_sweep_guard()
        total = sweep_size(config)
        print(f"moesim: sweep of {total if total is not None else 'an unknown number of'} jobs into "
              f"{_sweep_dir(config)}; compiling kernels for its policies, prefetchers and formats "
              "(numba caches them on disk, so this is quick after the first sweep) ...", flush=True)
        t0 = time.perf_counter()
        warm_numba(config)
        print(f"moesim: kernels ready in {time.perf_counter() - t0:.1f} s; running the jobs", flush=True)
        self.progress = Progress(_sweep_dir(config), total)
        self.progress.start()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        if self.guard is not None:  # the sweep ended normally: its workers are shut down already
            self.guard.kill()
            self.guard.wait()
            self.guard = None
        from moesim.bench.aggregate import collect

        sweep_dir = _sweep_dir(config)
        if not sweep_dir.is_dir():
            return
        if config.get("report", True):
            from moesim.bench.report import build_report

            print("moesim: writing the report (tables, hit-rate curves, figures, report.md, report.html) ...",
                  flush=True)
            res = build_report(sweep_dir)
            rows = res["rows"]
            n_ok = sum(r.get("status") == "ok" for r in rows)
            print(f"moesim: {len(rows)} jobs ({n_ok} ok); report: {res['report']} (and {res['html'].name})",
                  flush=True)
        else:
            rows = collect(sweep_dir)
        bad = [r for r in rows if r.get("status") not in ("ok", "skipped")]
        code = int(config.get("exit_code_on_failure", 1))
        if bad and code:
            for r in bad:
                print(f"moesim: job {r['job']}: {r.get('status')}: {r.get('error')}", file=sys.stderr, flush=True)
            # SystemExit passes through Hydra's error handling: every job has run and the report exists.
            sys.exit(code)
