"""``moesim-fidelity``: the timing model held to a real run on this machine.

For every cell of a grid (L1 policy x L1 size x prefetcher x weight format) the same trace runs
twice:

* **measured**: :func:`sim.executor.run_executor` replays it through real expert weights (a seeded
  synthetic checkpoint of the model's exact expert shapes, :mod:`sim.executor_weights`), real reads
  from disk, real decodes and real matmuls, and the wall clock gives tokens/s and per-token
  latency;
* **predicted**: :func:`sim.offload.simulate_offload` models the same configuration from the
  hardware profile that ``moesim-measure --model`` wrote for this machine (microbenchmarks of the
  same calls, never a run of the executor) and the model profile. Nothing is fitted to the grid.

The model is gpt-oss-20b's routing (32 experts, top-4, its synthetic preset) on its first
``layers`` MoE layers, with the hidden and expert widths scaled to ``width`` so that a 2-core CPU
runs it (:func:`scaled_model`). The cache hierarchy is the three tiers of the executor: an L1 of
compute-ready experts, an L2 of stored bytes in host memory (``l2`` experts, LRU, inclusive) and
the checkpoint on disk below.

A shared machine moves single runs by tens of percent, so the grid runs in ``rounds``: each round
measures the machine (``moesim-measure``'s own code, about 20 s) and then runs every cell once, in
a shuffled order, each run preceded by a short sample of the two rates a run depends on most (the
FFN's bandwidth and the decode rates, the same code). The prediction uses the field-by-field
median of the rounds' profiles, with those two rates the median of all samples; the measurement of
a cell is the median of its rounds. Both describe the machine over the same minutes with the same
statistic (means over windows, the median over the session). The load average is recorded.

``moesim-fidelity --out DIR`` writes ``DIR/fidelity.csv`` (one row per cell), ``DIR/fidelity.md``
(the table and the error summary), ``DIR/fidelity.png`` / ``.svg`` (predicted against measured
tokens/s, with the y = x line) and ``DIR/hardware.yaml`` (the profile it used). ``--quick``: 9
cells (LRU, S3-FIFO, OPT x none, affinity, oracle; 32 experts; MXFP4) and 3 rounds, a few minutes
on 2 cores; the full grid is 3 policies x 3 sizes x 3 prefetchers x 2 formats (bf16, MXFP4).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moesim.sim.errors import ConfigError
from moesim.sim.profiles import HardwareProfile, ModelProfile, load_hardware_profile, load_model_profile

BASE_MODEL = "gpt-oss-20b"
POLICIES = ("lru", "s3fifo", "opt")
PREFETCHERS = ("none", "affinity", "oracle")
FORMATS = ("bf16", "mxfp4")


def scaled_model(layers: int = 4, width: int = 1024) -> ModelProfile:
    """gpt-oss-20b's expert layout on its first ``layers`` MoE layers with hidden and expert widths
    ``width``: the dense part per layer scales with the square of the width, the LM head with the
    square of the width and with the share of layers kept (so it weighs in a token's time as in the
    full model); every stand-in is float32, the dtype the CPU computes in."""
    base = load_model_profile(BASE_MODEL)
    if not 1 <= layers <= base.num_moe_layers:
        raise ConfigError(f"layers must lie in [1, {base.num_moe_layers}], got {layers}")
    if width < 32 or width % 32:
        raise ConfigError(f"width must be a positive multiple of 32 (the MX block), got {width}")
    area = (width / base.hidden_size) ** 2
    return dataclasses.replace(
        base, name=f"{BASE_MODEL}-{layers}l-w{width}", hf_id=f"{base.hf_id} (scaled)", hidden_size=width,
        expert_intermediate_size=width, num_moe_layers=layers, dense_format="fp32",
        dense_params_per_layer=round(base.dense_params_per_layer * area),
        other_params=round(base.other_params * area * layers / base.num_moe_layers),
        embedding_params=round(base.embedding_params * area))


def fidelity_trace(model: ModelProfile, steps: int, seed: int = 0) -> Any:
    """The first ``steps`` decode steps of gpt-oss-20b's synthetic preset on the model's layers."""
    from moesim.traces.synth import generate_preset
    from moesim.traces.transforms import decode_only, select_layers

    requests = 1
    while True:
        tr = decode_only(generate_preset(BASE_MODEL, seed=seed, num_requests=requests))
        if tr.num_steps >= steps or requests > 64:
            break
        requests *= 2
    if tr.num_steps < steps:
        raise ConfigError(f"the preset gives only {tr.num_steps} decode steps, fewer than {steps}")
    tr = select_layers(tr.slice_steps(0, steps), list(range(model.num_moe_layers)))
    return tr


@dataclass(frozen=True)
class Cell:
    policy: str
    l1: int
    prefetcher: str
    weight_format: str

    @property
    def label(self) -> str:
        return f"{self.policy}/{self.l1}/{self.prefetcher}/{self.weight_format}"


def grid(quick: bool, sizes: Sequence[int] = (16, 32, 64)) -> list[Cell]:
    """The cells of the quick or the full grid (module docstring)."""
    if quick:
        return [Cell(p, 32, f, "mxfp4") for p in POLICIES for f in PREFETCHERS]
    return [Cell(p, c, f, fmt) for fmt in FORMATS for p in POLICIES for c in sizes for f in PREFETCHERS]


@dataclass(frozen=True)
class Settings:
    """What every cell shares."""

    layers: int = 4
    width: int = 1024
    steps: int = 72
    warmup: int = 8
    l2: int = 96
    rounds: int = 3
    seed: int = 0
    compute_threads: int = 1


def ensure_checkpoint(folder: Path, model: ModelProfile, weight_format: str, seed: int) -> Path:
    """The synthetic checkpoint of ``model`` in ``weight_format`` under ``folder``, written once."""
    from moesim.sim.executor_weights import ExpertFile, write_synthetic_checkpoint

    path = folder / f"{model.name}-{weight_format}-s{seed}.safetensors"
    if path.exists():
        try:
            with ExpertFile(path) as f:
                if f.model == model and f.format == weight_format and f.seed == seed:
                    return path
        except (ValueError, OSError):
            pass
    return write_synthetic_checkpoint(path, model, weight_format, seed=seed)


def measure_profile(model: ModelProfile, formats: Sequence[str], disk_dir: Path, threads: int,
                    window_s: float = 0.5) -> HardwareProfile:
    """This machine's profile from ``moesim-measure``'s own measurements (host fast tier)."""
    from moesim.sim.measure import measure
    from moesim.sim.profiles import profile_from_mapping

    data = measure("this-machine", size_bytes=64 << 20, disk_dir=disk_dir, matmul_n=512, repeats=3, use_gpu=False,
                   model=model, formats=formats, compute_threads=threads, window_s=window_s)
    return profile_from_mapping(HardwareProfile, data, where="measured profile")


def sample_rates(model: ModelProfile, formats: Sequence[str], threads: int, window_s: float = 0.4) -> dict[str, Any]:
    """One short sample of the two rates a run depends on most (``moesim-measure``'s own timings):
    the FFN's bandwidth and each format's decode rate."""
    from moesim.sim.measure_experts import decode_gbps, ffn_seconds
    from moesim.sim.profiles import GB

    ffn = ffn_seconds(model, repeats=1, seconds=window_s, threads=threads)
    return {"gpu_bandwidth_gbps": model.expert_bytes("fp32") / ffn / GB,
            "decode_gbps": decode_gbps(model, formats, repeats=1, seconds=window_s)}


def with_samples(hw: HardwareProfile, samples: Sequence[dict[str, Any]]) -> HardwareProfile:
    """``hw`` with the bandwidth and decode rates replaced by their medians over ``samples``."""
    if not samples:
        return hw
    bw = statistics.median(x["gpu_bandwidth_gbps"] for x in samples)
    dec = {f: statistics.median(x["decode_gbps"][f] for x in samples) for f in samples[0]["decode_gbps"]}
    notes = (f"{hw.notes}; gpu_bandwidth_gbps and decode_gbps: the median of {len(samples)} short samples, one "
             "taken before each run of a cell")
    return dataclasses.replace(hw, gpu_bandwidth_gbps=bw, decode_gbps={**(hw.decode_gbps or {}), **dec}, notes=notes)


def median_profile(profiles: Sequence[HardwareProfile]) -> HardwareProfile:
    """Field by field, the median of profiles measured in turn (numbers; per format for decode)."""
    first = profiles[0]
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(HardwareProfile):
        values = [getattr(p, f.name) for p in profiles]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            changes[f.name] = statistics.median(values)
    if first.decode_gbps:
        changes["decode_gbps"] = {k: statistics.median(p.decode_gbps[k] for p in profiles)  # type: ignore[index]
                                  for k in first.decode_gbps}
    notes = f"{first.notes}; the median of {len(profiles)} such measurements, one before each round of cells"
    return dataclasses.replace(first, **changes, notes=notes)


def predict(trace: Any, model: ModelProfile, hw: HardwareProfile, cell: Cell, s: Settings) -> Any:
    from moesim.sim.levels import Level
    from moesim.sim.offload import simulate_offload

    return simulate_offload(trace, model, hw, cell.weight_format, l1=Level(experts=cell.l1, policy=cell.policy),
                            l2=Level(experts=s.l2), prefetcher=cell.prefetcher, warmup_steps=s.warmup,
                            compute_format="fp32", seed=s.seed)


def execute(trace: Any, checkpoint: Path, cell: Cell, s: Settings) -> Any:
    from moesim.sim.executor import run_executor

    return run_executor(trace, str(checkpoint), l1=cell.l1, policy=cell.policy, l2=s.l2,
                        prefetcher=cell.prefetcher, warmup_steps=s.warmup, seed=s.seed,
                        compute_threads=s.compute_threads)


def run_grid(cells: Sequence[Cell], out: Path, settings: Settings, *, hardware: HardwareProfile | None = None,
             log: Any = None) -> tuple[list[dict[str, Any]], HardwareProfile]:
    """Measure and predict every cell; one row per cell (see :mod:`sim.fidelity_report`).

    Each round measures the machine (unless ``hardware`` is given) and then runs every cell once,
    in a shuffled order, each run preceded by a short sample of the FFN bandwidth and the decode
    rates; the prediction uses the median profile (those two rates the median of every sample),
    the measurement of a cell the median over its rounds, so both describe the machine over the
    same minutes."""
    say = log or (lambda msg: None)
    model = scaled_model(settings.layers, settings.width)
    formats = sorted({c.weight_format for c in cells}, key=FORMATS.index)
    weights = out / "weights"
    weights.mkdir(parents=True, exist_ok=True)
    ckpt = {}
    for f in formats:
        say(f"checkpoint {f}: {model.num_expert_keys} experts of {model.expert_bytes(f) / 2**20:.2f} MiB")
        ckpt[f] = ensure_checkpoint(weights, model, f, settings.seed)
    trace = fidelity_trace(model, settings.steps, settings.seed)
    runs: dict[Cell, list[Any]] = {c: [] for c in cells}
    profiles: list[HardwareProfile] = []
    samples: list[dict[str, Any]] = []
    loads = []
    rng = random.Random(settings.seed)
    for rnd in range(settings.rounds):
        if hardware is None:
            say(f"round {rnd + 1}/{settings.rounds}: measuring this machine (moesim-measure --model, host fast tier)")
            loads.append(os.getloadavg()[0])
            profiles.append(measure_profile(model, formats, weights, settings.compute_threads))
        order = list(cells)
        rng.shuffle(order)
        for i, c in enumerate(order):
            loads.append(os.getloadavg()[0])
            if hardware is None:
                samples.append(sample_rates(model, formats, settings.compute_threads))
            t = time.perf_counter()
            r = execute(trace, ckpt[c.weight_format], c, settings)
            runs[c].append(r)
            say(f"round {rnd + 1}/{settings.rounds} cell {i + 1}/{len(order)} {c.label}: "
                f"{r.tokens_per_s:.2f} tok/s measured ({time.perf_counter() - t:.1f} s)")
    hw = hardware if hardware is not None else with_samples(median_profile(profiles), samples)
    rows = []
    for c in cells:
        p = predict(trace, model, hw, c, settings)
        for r in runs[c]:
            if r.counts != p.counts:  # the same decisions, or the comparison means nothing
                raise ConfigError(f"cell {c.label}: the executor's hierarchy counters differ from the simulator's")
        rows.append(_row(c, runs[c], p, model, settings, loads))
    return rows, hw


def _row(c: Cell, runs: Sequence[Any], p: Any, model: ModelProfile, s: Settings, loads: list[float]) -> dict[str, Any]:
    def med(get: Any) -> float:
        return float(statistics.median(get(r) for r in runs))

    tok = med(lambda r: r.tokens_per_s)
    return {
        "policy": c.policy, "l1_experts": c.l1, "prefetcher": c.prefetcher, "weight_format": c.weight_format,
        "l2_experts": s.l2, "model": model.name, "steps": runs[0].steps, "rounds": len(runs),
        "measured_tokens_per_s": tok, "predicted_tokens_per_s": p.tokens_per_s,
        "ratio": p.tokens_per_s / tok,
        "measured_tokens_per_s_min": min(r.tokens_per_s for r in runs),
        "measured_tokens_per_s_max": max(r.tokens_per_s for r in runs),
        "measured_p50_ms": med(lambda r: r.latency_p50_s) * 1e3, "predicted_p50_ms": p.latency_p50_s * 1e3,
        "measured_p99_ms": med(lambda r: r.latency_p99_s) * 1e3, "predicted_p99_ms": p.latency_p99_s * 1e3,
        "measured_stall_fraction": med(lambda r: r.stall_fraction), "predicted_stall_fraction": p.stall_fraction,
        "l1_hit_rate": runs[0].l1_hit_rate, "predicted_l1_hit_rate": p.l1_hit_rate,
        "measured_fetch_busy": med(lambda r: r.link_busy["dram_to_gpu"]),
        "predicted_fetch_busy": p.link_utilisation["dram_to_gpu"],
        "measured_disk_busy": med(lambda r: r.link_busy["ssd_to_dram"]),
        "predicted_disk_busy": p.link_utilisation["ssd_to_dram"],
        "bytes_per_token_disk": runs[0].bytes_per_link["ssd_to_dram"] / runs[0].tokens,
        "bytes_per_token_fetch": runs[0].bytes_per_link["dram_to_gpu"] / runs[0].tokens,
        "read_mode": runs[0].read_mode, "load_avg_min": min(loads), "load_avg_max": max(loads),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 written, 1 a run or the output failed, 2 bad usage. Errors are one line."""
    from moesim.kernels.messages import internal_error, one_line

    parser = argparse.ArgumentParser(prog="moesim-fidelity", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for fidelity.csv / .md / .png / .svg")
    parser.add_argument("--quick", action="store_true", help="9 cells, 3 rounds (a few minutes on 2 cores)")
    parser.add_argument("--hardware", help="a hardware profile to predict with (default: measure this machine)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds: a measurement of the machine, then every "
                        "cell once (the medians are compared)")
    parser.add_argument("--steps", type=int, default=Settings.steps, help="decode steps per run")
    parser.add_argument("--warmup", type=int, default=Settings.warmup, help="first steps not counted")
    parser.add_argument("--layers", type=int, default=Settings.layers, help="MoE layers of gpt-oss-20b kept")
    parser.add_argument("--width", type=int, default=Settings.width, help="hidden and expert width")
    parser.add_argument("--l2", type=int, default=Settings.l2, help="host-memory experts (L2) above the disk")
    parser.add_argument("--seed", type=int, default=0)
    try:
        args = parser.parse_args(argv)
        rounds = args.rounds
        if rounds < 1 or args.steps < 2 or not 0 <= args.warmup < args.steps:
            parser.error("--rounds must be >= 1, --steps >= 2 and --warmup in [0, steps)")
        settings = Settings(layers=args.layers, width=args.width, steps=args.steps, warmup=args.warmup, l2=args.l2,
                            rounds=rounds, seed=args.seed)
        hardware = load_hardware_profile(args.hardware) if args.hardware else None
        cells = grid(args.quick)
        if settings.l2 <= max(c.l1 for c in cells):
            parser.error(f"--l2 must exceed the largest L1 ({max(c.l1 for c in cells)} experts)")
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    except ValueError as exc:
        print(f"moesim-fidelity: error: {one_line(exc)}", file=sys.stderr)
        return 2
    try:
        from moesim.sim.fidelity_report import write_report

        def log(msg: str) -> None:
            print(msg, file=sys.stderr, flush=True)

        rows, hw = run_grid(cells, args.out, settings, hardware=hardware, log=log)
        paths = write_report(rows, hw, settings, args.out)
        print(f"wrote {', '.join(str(p) for p in paths)}", file=sys.stderr)
    except (OSError, ValueError) as exc:
        print(f"moesim-fidelity: error: {one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("moesim-fidelity: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        print(f"moesim-fidelity: error: {internal_error(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
