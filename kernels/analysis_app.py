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
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from moesim.traces.io import atomic_write_text
from omegaconf import MISSING, DictConfig, OmegaConf

# OmegaConf needs typing.Optional rather than ``X | None`` in dataclass fields.
# ruff: noqa: UP045

log = logging.getLogger("moesim")
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


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
    return {"status": "ok", "matrices": len(tables["matrix_stats"]),
            "unmatched": sum(1 for r in tables["inventory"] if r["status"] == "unmatched"),
            "warnings": len(tables["warnings"])}


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="analysis")
def main(cfg: DictConfig) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        status = run_analysis(cfg, out_dir, Path(hydra.utils.get_original_cwd()))
    except Exception as exc:
        status = {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        log.error("analysis failed: %s", status["error"])
    status["config"] = OmegaConf.to_container(cfg, resolve=True)
    atomic_write_text(out_dir / "status.json", json.dumps(status, indent=1) + "\n")
    log.info("analysis %s -> %s", status["status"], out_dir)


if __name__ == "__main__":
    main()
