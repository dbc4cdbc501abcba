"""``moesim-analyze``: the weight analysis (:func:`kernels.analysis.analyze_checkpoint`) as a Hydra app.

    moesim-analyze checkpoint=/models/gpt-oss-20b/original rules=gptoss formats=[mxfp4,nvfp4,int4-g32]
    moesim-analyze -m checkpoint=/models/mixtral rules=mixtral formats=[mxfp4,nf4] sample_rows=256,1024
    moesim-analyze checkpoint=/models/qwen3-30b-a3b formats=[mlx-affine-b4-g64,mlx-mxfp4] quant.backend=mlx

Each job writes the analysis tables, ``run_meta.json`` and the plots into Hydra's output folder; a
job that fails is recorded in ``status.json`` with its error and the other jobs go on. The
``summary`` table a run writes can feed the experiment sweep's quant error
(``quant.error_table=.../summary.parquet``), so the budget frontier shows measured errors.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from moesim.kernels.files import atomic_write_text
from omegaconf import MISSING, DictConfig, OmegaConf

# The package's conf/ (moesim/conf when installed), found here rather than imported from sim/:
# kernels/ is the lowest floor and imports nothing above it.
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

# OmegaConf needs typing.Optional rather than ``X | None`` in dataclass fields.
# ruff: noqa: UP045

log = logging.getLogger("moesim")


@dataclass
class QuantBackendConf:
    """backend: the codec implementation, ``numba`` (default), ``reference`` (numpy) or ``mlx``: MLX
    itself (``mx.quantize``) for the ``mlx-*`` formats when it is installed; without MLX the run goes
    on with their numba codecs (bit for bit MLX's CPU results) and says so in the warnings table."""

    backend: str = "numba"


@dataclass
class AnalysisConf:
    """checkpoint: a safetensors file or folder (relative paths from where the command started).
    rules: name-matching rules (:func:`kernels.checkpoint.resolve_rules`: a preset name such as
    ``gptoss``, ``mixtral``, ``qwen_moe``, ``olmoe``, ``fused``, ``auto``, or a comma list).
    formats: format names (a list); the first is the baseline of ``format_deltas``.
    sample_rows: analyse this many seeded rows per matrix (``null``: whole matrices).
    strict: layout problems raise (``false``: they go to the warnings table and the run goes on).
    rank: numerical rank by SVD (slow). eps: |x| <= eps counts as zero for the sparsity.
    n_activations: random activation rows for the output error. plots: draw the figures.
    csv: also write every table as ``<table>.csv`` (the tables are parquet when pyarrow is
    installed). summary: print the per-format summary (all layers, all projections) at the end.
    quant: how the formats are run (:class:`QuantBackendConf`).
    """

    checkpoint: str = MISSING
    rules: str = "auto"
    formats: list[str] = field(default_factory=lambda: ["mxfp4", "nvfp4"])
    sample_rows: Optional[int] = None
    seed: int = 0
    strict: bool = True
    rank: bool = False
    eps: float = 0.0
    n_activations: int = 64
    plots: bool = True
    csv: bool = False
    summary: bool = True
    quiet: bool = False
    quant: QuantBackendConf = field(default_factory=QuantBackendConf)
    sweep_name: str = "${now:%Y-%m-%d_%H-%M-%S}"


ConfigStore.instance().store(name="analysis_schema", node=AnalysisConf)


def run_analysis(cfg: Any, out_dir: Path, base_dir: Path | None = None) -> dict[str, Any]:
    from moesim.kernels.analysis import analyze_checkpoint

    ckpt = Path(str(cfg.checkpoint))
    if not ckpt.is_absolute() and base_dir is not None:
        ckpt = base_dir / ckpt
    tables = analyze_checkpoint(ckpt, rules=str(cfg.rules), formats=list(cfg.formats), sample_rows=cfg.sample_rows,
                                seed=int(cfg.seed), out_dir=out_dir, strict=bool(cfg.strict), rank=bool(cfg.rank),
                                quiet=bool(cfg.quiet), eps=float(cfg.eps), n_activations=int(cfg.n_activations),
                                backend=str(cfg.quant.backend))
    if cfg.plots and tables["quant_error"]:
        from moesim.kernels.analysis_plots import plot_all

        plot_all(tables, out_dir / "plots")
    if cfg.get("csv", False):
        write_csv(tables, out_dir)
    if cfg.get("summary", True):
        print(summary_text(tables, ckpt), flush=True)
    return {"status": "ok", "matrices": len(tables["matrix_stats"]),
            "unmatched": sum(1 for r in tables["inventory"] if r["status"] == "unmatched"),
            "warnings": len(tables["warnings"])}


SUMMARY_COLUMNS = {"format": "format", "bits_per_weight": "bits/weight", "rel_frobenius_mean": "rel. Frobenius",
                   "sqnr_db_mean": "SQNR (dB)", "cosine_mean": "cosine", "output_error_mean": "output error"}


def summary_text(tables: dict[str, list[dict[str, Any]]], checkpoint: Path) -> str:
    """One line per format: its error over all layers and projections (the summary's ``layer = -1``,
    ``proj = "all"`` rows), as aligned text."""
    rows = [r for r in tables.get("summary", []) if r.get("layer") == -1 and r.get("proj") == "all"]
    if not rows:
        return f"{checkpoint}: no expert matrix analysed"
    from moesim.kernels import tables as table_io  # pandas (0.5 s): not for --help

    n = len(tables.get("matrix_stats", []))
    return f"{checkpoint}: {n} expert matrices\n" + table_io.text(rows, list(SUMMARY_COLUMNS), SUMMARY_COLUMNS)


def write_csv(tables: dict[str, list[dict[str, Any]]], out_dir: Path) -> list[Path]:
    """Every table as ``<name>.csv`` in ``out_dir`` (atomic; an empty table keeps its columns)."""
    from moesim.kernels import tables as table_io
    from moesim.kernels.analysis import COLUMNS, column_kinds

    return [table_io.write_data(rows, out_dir / f"{name}.csv", COLUMNS[name], kinds=column_kinds(COLUMNS[name]),
                                parquet=False) for name, rows in tables.items()]


# Jobs of this invocation that failed; the basic launcher runs jobs in this process. Out-of-process
# launchers (joblib, submitit) cannot append here, so :func:`main` also reads the status.json files
# of the sweep folder that :class:`SweepFolder` notes in this (the parent) process.
_FAILED: list[str] = []
_SWEEPS: list[Path] = []


class SweepFolder(Callback):
    """Notes the multirun's folder in the launching process (registered in ``conf/analysis.yaml``)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _SWEEPS.append(Path(str(config.hydra.sweep.dir)))


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="analysis")
def _app(cfg: DictConfig) -> dict[str, Any]:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        status = run_analysis(cfg, out_dir, Path(hydra.utils.get_original_cwd()))
    except Exception as exc:  # recorded with its traceback in status.json; the log gets one line
        status = {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        log.error("analysis failed: %s (details: %s)", " | ".join(str(exc).splitlines()) or type(exc).__name__,
                  out_dir / "status.json")
        _FAILED.append(str(out_dir))
    status["config"] = OmegaConf.to_container(cfg, resolve=True)
    try:
        atomic_write_text(out_dir / "status.json", json.dumps(status, indent=1) + "\n")
    except OSError as exc:
        log.error("cannot write %s: %s", out_dir / "status.json", exc)
        _FAILED.append(str(out_dir))
    log.info("analysis %s -> %s", status["status"], out_dir)
    return status


def _failed_in_sweeps(started: float) -> list[str]:
    """Failed jobs of the multirun that just ran, from its folder's status.json files."""
    failed = []
    for sweep in _SWEEPS:
        for path in sweep.glob("*/status.json"):
            try:
                if path.stat().st_mtime >= started and json.loads(path.read_text()).get("status") != "ok":
                    failed.append(str(path.parent))
            except (OSError, ValueError):
                failed.append(str(path.parent))
    return failed


def main() -> None:
    """``moesim-analyze``. Exit status: 0 every job succeeded, 1 a job failed (after the others ran),
    2 bad usage (an unknown key, a value of the wrong type: Hydra's message, no job run)."""
    _FAILED.clear()
    _SWEEPS.clear()
    started = time.time() - 1.0  # file systems with coarse timestamps
    try:
        _app()
    except SystemExit as exc:
        # Every job's own failure is caught in _app, so Hydra stops with status 1 only when it could
        # not compose the configuration or start the launcher: bad usage.
        if exc.code not in (0, None):
            sys.exit(2)
        raise
    failed = sorted(set(_FAILED) | set(_failed_in_sweeps(started)))
    for job in failed:  # one line per failed job: its folder and its error
        try:
            error = json.loads((Path(job) / "status.json").read_text()).get("error", "failed")
        except (OSError, ValueError):
            error = "failed (status.json unreadable)"
        print(f"moesim-analyze: error: {job}: {' | '.join(str(error).splitlines())}", file=sys.stderr)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
