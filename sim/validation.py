"""Sanity check of the timing model against published offloading results (``sim/VALIDATION.md``).

Two setups, each replayed on a synthetic trace from the matching preset
(:func:`traces.synth.generate_preset`) with the L1 policies LRU and OPT (no prefetch) and with
LRU plus each prefetcher:

* Mixtral-8x7B as in Eliseev & Mazur 2023 ("Fast Inference of Mixture-of-Experts Language Models
  with Offloading", arXiv:2312.17238): a per-layer LRU cache of ``k`` experts per layer on a T4
  over PCIe Gen3 x16, experts in host DRAM, attention in 4-bit HQQ (modelled as ``int4-g64``,
  4.5 bits per weight), experts in HQQ 3-bit (group 64 with quantized scales: about 3.25 bits
  per weight) or 2-bit (2.6 bits per weight, the paper's figure). No registry format has 3 bits,
  so the expert size is given explicitly (:class:`ExplicitBitsModel`); the closest registry
  format (``int4-sym-g128``, 4.125 bits) is run as well. HQQ kernels of that time dequantized an
  expert to fp16 before multiplying, so the expert GEMMs read fp16 bytes (``compute_format``).
* gpt-oss-20b with its released MXFP4 experts on an 8 GB laptop GPU (RTX 4060 Laptop, PCIe 4.0
  x8), experts in DRAM, a shared GPU cache of every expert that fits beside the resident weights
  and 1 GiB of reserve.

``python -m moesim.sim.validation`` prints the table as markdown.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from moesim.sim.levels import Level
from moesim.sim.offload import simulate_offload
from moesim.sim.profiles import HardwareProfile, ModelProfile, load_hardware_profile, load_model_profile
from moesim.sim.result import OffloadResult
from moesim.traces.synth import generate_preset

PAPER = "Eliseev & Mazur 2023, arXiv:2312.17238, Table 2"
# (prefetcher, knobs) tried on top of LRU; the best realisable one is reported, the oracle apart.
PREFETCHERS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("affinity", {}), ("speculative", {"accuracy": 0.8}), ("speculative", {"accuracy": 0.9}))


@dataclass(frozen=True)
class ExplicitBitsModel(ModelProfile):
    """A model profile whose routed experts take ``expert_bits`` bits per weight in any format
    (for quantizers outside the format registry, e.g. HQQ 3-bit); everything else is unchanged."""

    expert_bits: float = 16.0
    bits_format: str = "explicit"  # the format name that means "expert_bits"; others go to the registry

    def expert_bytes(self, weight_format: str) -> int:
        if weight_format != self.bits_format:
            return super().expert_bytes(weight_format)
        return math.ceil(self.expert_bits * self.expert_params / 8)


@dataclass(frozen=True)
class Setup:
    """One row group of the table: a model, hardware, format and cache, and the published figures."""

    label: str
    preset: str
    model: ModelProfile
    hardware: str | HardwareProfile
    weight_format: str
    l1: Level | None
    compute_format: str | None
    published: str
    source: str


@dataclass(frozen=True)
class Row:
    setup: Setup
    lru: OffloadResult
    opt: OffloadResult
    best_name: str
    best: OffloadResult
    oracle: OffloadResult


def mixtral(expert_bits: float | None, k: int, published: str, hardware: str | HardwareProfile = "t4") -> Setup:
    base = dataclasses.replace(load_model_profile("mixtral-8x7b"), dense_format="int4-g64")
    if expert_bits is None:
        model: ModelProfile = base
        fmt, label = "int4-sym-g128", "int4-sym-g128 (4.125 b)"
    else:
        fmt, label = f"hqq-{expert_bits}b", f"HQQ {expert_bits} b"
        model = ExplicitBitsModel(**base.to_dict(), expert_bits=expert_bits, bits_format=fmt)
    where = "T4 Gen3" if isinstance(hardware, str) else f"T4 Gen3 + {hardware.layer_overhead_us / 1e3:.1f} ms/layer"
    return Setup(f"Mixtral-8x7B, {where}, k={k}/layer, experts {label}", "mixtral-8x7b", model, hardware, fmt,
                 Level(experts=k * model.num_moe_layers, organisation="per_layer"), "fp16", published, PAPER)


def default_setups() -> list[Setup]:
    return [
        mixtral(3.25, 4, "LRU 1.365, LRU + speculative 1.603 (3-bit, cloud T4)"),
        mixtral(2.6, 4, "LRU 1.567, LRU + speculative 2.092 (2-bit, Colab T4)"),
        mixtral(3.25, 2, "no T4 figure for k=2 (RTX 3060, k=2, 3-bit: 1.857 / 2.038)"),
        mixtral(None, 4, "(format sensitivity; no published figure)"),
        Setup("gpt-oss-20b MXFP4, RTX 4060 Laptop 8 GB, PCIe 4.0 x8, auto-sized shared cache", "gpt-oss-20b",
              load_model_profile("gpt-oss-20b"), "laptop-pcie4x4-nvme", "mxfp4", None, None,
              "none found for transfer-based offloading", "-"),
    ]


def run_setup(setup: Setup, *, num_requests: int = 8, seed: int = 0) -> Row:
    """LRU, OPT, the best prefetcher on LRU, and the oracle, for one setup."""
    trace = generate_preset(setup.preset, seed=seed, num_requests=num_requests)

    def sim(policy: str = "lru", prefetcher: str = "none", params: dict[str, Any] | None = None) -> OffloadResult:
        l1 = setup.l1 if setup.l1 is None else dataclasses.replace(setup.l1, policy=policy)
        return simulate_offload(trace, setup.model, setup.hardware, setup.weight_format, l1=l1,
                                policy=None if setup.l1 is not None else policy, prefetcher=prefetcher,
                                prefetch_params=params, compute_format=setup.compute_format, seed=seed)

    tried = {f"{name} {params}" if params else name: sim(prefetcher=name, params=params)
             for name, params in PREFETCHERS}
    best = max(tried, key=lambda n: tried[n].tokens_per_s)
    return Row(setup, sim(), sim("opt"), best, tried[best], sim(prefetcher="oracle"))


def run_validation(setups: Sequence[Setup] | None = None, *, num_requests: int = 8, seed: int = 0,
                   calibrate: bool = True) -> list[Row]:
    """The table's rows. With ``calibrate`` (and the default setups), two more rows: the T4 with a
    fixed per-layer software time fitted so that the 3-bit, k=4 LRU run matches the paper's
    1.365 tokens/s, then used unchanged for the 2-bit run (an out-of-sample check)."""
    rows = [run_setup(s, num_requests=num_requests, seed=seed) for s in (setups or default_setups())]
    if calibrate and setups is None:
        extra_us = fitted_layer_overhead_us(rows[0], published_tokens_per_s=1.365)
        t4 = load_hardware_profile("t4")
        slow = dataclasses.replace(t4, layer_overhead_us=t4.layer_overhead_us + extra_us)
        for bits, published in ((3.25, "LRU 1.365 (fitted), LRU + speculative 1.603"),
                                (2.6, "LRU 1.567, LRU + speculative 2.092")):
            rows.append(run_setup(mixtral(bits, 4, published, hardware=slow), num_requests=num_requests, seed=seed))
    return rows


def fitted_layer_overhead_us(row: Row, *, published_tokens_per_s: float) -> float:
    """Extra software time per layer (us) that brings the row's LRU run to the published speed.

    Without prefetching every transfer is awaited, so the time per layer adds to the step time
    exactly once per layer: the fit is closed-form.
    """
    layers = row.setup.model.num_moe_layers
    return (1.0 / published_tokens_per_s - row.lru.latency_mean_s) / layers * 1e6


def markdown_table(rows: Sequence[Row]) -> str:
    head = ("| setup | LRU tok/s (hit) | OPT tok/s (hit) | best prefetcher on LRU: tok/s (accuracy, coverage) "
            "| oracle tok/s | PCIe busy (LRU) | published tok/s | source |")
    lines = [head, "|" + " --- |" * 8]
    for r in rows:
        b = r.best
        lines.append(
            f"| {r.setup.label} | {r.lru.tokens_per_s:.2f} ({r.lru.l1_hit_rate:.2f}) "
            f"| {r.opt.tokens_per_s:.2f} ({r.opt.l1_hit_rate:.2f}) "
            f"| {r.best_name}: {b.tokens_per_s:.2f} ({b.prefetch_accuracy or 0:.2f}, {b.prefetch_coverage or 0:.2f}) "
            f"| {r.oracle.tokens_per_s:.2f} | {r.lru.link_utilisation['dram_to_gpu']:.2f} "
            f"| {r.setup.published} | {r.setup.source} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    num_requests = int(args[0]) if args else 8
    sys.stdout.write(markdown_table(run_validation(num_requests=num_requests)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
