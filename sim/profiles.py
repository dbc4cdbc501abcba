"""Model and hardware profiles: the numbers the timing model turns into seconds.

A profile is a flat YAML mapping of plain fields (``conf/model/<name>.yaml``,
``conf/hardware/<name>.yaml``), so the same file is a Hydra config-group option and loads here with
:func:`load_model_profile` / :func:`load_hardware_profile` (by name, or by path). Every field is
documented once, in the dataclass docstring below; the YAML files cite where each number comes
from.

Bytes per expert are never computed here: :meth:`ModelProfile.expert_bytes` asks
``kernels.sizes.expert_bytes`` (the format registry) so the simulator and the quantizers cannot
disagree about a format's size.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
FAST_TIERS = ("gpu", "host")
GIB = 1 << 30
GB = 1e9


class ProfileError(ValueError):
    """A profile file or mapping with a missing, unknown or bad field (the message names both)."""


@dataclass(frozen=True)
class ModelProfile:
    """The shape of an MoE model, as far as expert offloading is concerned.

    name: short identifier, also the YAML file name (``conf/model/<name>.yaml``).
    hf_id: the Hugging Face repository the numbers come from.
    hidden_size: model width H (the residual stream).
    expert_intermediate_size: width I of one routed expert's hidden layer.
    num_experts: routed experts per MoE layer (E).
    top_k: routed experts each token uses per MoE layer.
    num_moe_layers: layers with a routed MoE block (L); dense-FFN layers are not counted here.
    matrices_per_expert: 3 for a gated (SwiGLU) expert (gate ``[I, H]``, up ``[I, H]``, down
        ``[H, I]``), 2 for a plain MLP (up, down). Shapes are ``[out, in]``: a block format
        quantizes along the input (last) axis.
    dense_params_per_layer: weights of one MoE layer outside its routed experts (attention
        projections, norms, router, biases) -- read once per layer per decode step, always on GPU.
    dense_format: weight-format name (the ``kernels`` registry) of the dense weights, shared
        experts and ``other_params``.
    num_shared_experts: always-active experts per MoE layer (kept on GPU, never offloaded).
    shared_expert_intermediate_size: width of one shared expert's hidden layer (0 if none).
    other_params: weights outside the MoE layers that are read once per token: the LM head, plus
        the dense-FFN layers of models that have them (DeepSeek-V3's first three layers).
    embedding_params: the input embedding table (resident on GPU, but only one row is read per
        token, so it costs memory and no time).
    """

    name: str
    hf_id: str
    hidden_size: int
    expert_intermediate_size: int
    num_experts: int
    top_k: int
    num_moe_layers: int
    matrices_per_expert: int
    dense_params_per_layer: int
    dense_format: str
    num_shared_experts: int = 0
    shared_expert_intermediate_size: int = 0
    other_params: int = 0
    embedding_params: int = 0

    def __post_init__(self) -> None:
        _check_fields(self, where=f"model profile '{self.name}'")
        if self.matrices_per_expert not in (2, 3):
            raise ProfileError(f"model profile '{self.name}': field 'matrices_per_expert' must be 2 or 3, "
                               f"got {self.matrices_per_expert}")
        if self.top_k > self.num_experts:
            raise ProfileError(f"model profile '{self.name}': field 'top_k' ({self.top_k}) exceeds "
                               f"num_experts ({self.num_experts})")

    # ---- sizes -------------------------------------------------------------------------------
    def expert_matrix_shapes(self) -> list[tuple[int, int]]:
        """``[out, in]`` shapes of one routed expert's matrices."""
        return _mlp_shapes(self.hidden_size, self.expert_intermediate_size, self.matrices_per_expert)

    @property
    def expert_params(self) -> int:
        return sum(r * c for r, c in self.expert_matrix_shapes())

    @property
    def num_expert_keys(self) -> int:
        """Routed experts in the whole model (``L * E``), the key space of a shared cache."""
        return self.num_moe_layers * self.num_experts

    def expert_bytes(self, weight_format: str) -> int:
        """Bytes of one routed expert in ``weight_format``, from the ``kernels`` size model."""
        return _kernel_bytes(weight_format, self.expert_matrix_shapes())

    def dense_bytes_per_layer(self) -> int:
        """Bytes read per MoE layer outside the routed experts: dense weights plus shared experts.

        The dense weights are sized as a ``[ceil(params / H), H]`` matrix in ``dense_format``
        (every attention projection has H as one side; the few biases and norms are rounded up to
        one row).
        """
        rows = math.ceil(self.dense_params_per_layer / self.hidden_size)
        total = _kernel_bytes(self.dense_format, [(rows, self.hidden_size)]) if rows else 0
        if self.num_shared_experts:
            shapes = _mlp_shapes(self.hidden_size, self.shared_expert_intermediate_size,
                                 self.matrices_per_expert)
            total += self.num_shared_experts * _kernel_bytes(self.dense_format, shapes)
        return total

    def dense_flops_per_token_layer(self) -> int:
        """Multiply-add FLOPs (2 per weight) of one token through one layer's dense part."""
        shared = self.num_shared_experts * self.matrices_per_expert * self.hidden_size \
            * self.shared_expert_intermediate_size
        return 2 * (self.dense_params_per_layer + shared)

    def other_bytes(self) -> int:
        """Bytes of ``other_params`` (LM head etc.), read once per token."""
        rows = math.ceil(self.other_params / self.hidden_size)
        return _kernel_bytes(self.dense_format, [(rows, self.hidden_size)]) if rows else 0

    def resident_bytes(self) -> int:
        """GPU bytes that are never offloaded: every layer's dense part, other weights, embedding."""
        rows = math.ceil(self.embedding_params / self.hidden_size)
        emb = _kernel_bytes(self.dense_format, [(rows, self.hidden_size)]) if rows else 0
        return self.num_moe_layers * self.dense_bytes_per_layer() + self.other_bytes() + emb

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class HardwareProfile:
    """One machine: a GPU (L1), host DRAM (L2) and an NVMe SSD (the backing store).

    All rates are *effective* (what a program sees), not marketing peaks; each YAML file says
    whether a number is measured (``sim.measure``) or derated from a datasheet, and from which.

    name: short identifier, also the YAML file name (``conf/hardware/<name>.yaml``).
    description: the machine in words (GPU, link, disk).
    gpu_name: the GPU model ("none" on a machine without one).
    gpu_memory_gib: GPU memory in GiB (2**30 bytes).
    gpu_bandwidth_gbps: effective GPU memory bandwidth in GB/s (1e9 bytes/s); decode GEMVs are
        bound by it.
    gpu_tflops: effective dense 16-bit tensor throughput in TFLOP/s (bf16; fp16 on GPUs without
        bf16, e.g. the T4).
    h2d_bandwidth_gbps: effective pinned host-to-device copy bandwidth in GB/s (the DRAM -> GPU
        link).
    h2d_latency_us: fixed cost of one host-to-device copy in microseconds (launch + DMA setup).
    nvme_bandwidth_gbps: effective sequential read bandwidth of the SSD in GB/s (SSD -> DRAM link).
    nvme_latency_us: fixed cost of one SSD read in microseconds (first byte of a large read).
    dram_gib: host memory in GiB.
    layer_overhead_us: fixed software time per MoE layer and decode step in microseconds (kernel
        launches, synchronisation), added to the attention/dense time.
    host_memcpy_gbps: host memory copy bandwidth in GB/s (recorded by ``sim.measure``; optional).
    fast_tier: where the expert cache (L1) lives: ``"gpu"`` (GPU memory; a fetch crosses the
        host-to-device link) or ``"host"`` (a CPU-only machine: the cache holds compute-ready
        weights in host memory, a fetch is a decode of the stored bytes and nothing is copied;
        the ``gpu_*`` compute fields then describe the CPU that runs the model, and the ``h2d_*``
        fields are not used).
    decode_gbps: per weight format, stored bytes per second that the fast tier decodes into
        compute-ready weights on a fetch (measured at the expert shape by ``sim.measure``). A
        format not listed costs no decode time (kernels that read the stored format directly).
    handoff_us: the per-fetch software latency in microseconds of handing work between threads:
        a worker that serves a link and sleeps while it has nothing to do is woken when a transfer
        reaches it, and the computation, asleep while it waits for a transfer, is woken when it
        ends (0 for a GPU profile: a copy engine does not sleep). Measured by ``sim.measure`` as
        half the extra time of a decode handed to a worker thread over the same decode inline,
        between two busy threads (what the scheduler of a loaded machine charges).
    compute_slowdown / fetch_slowdown: how many times longer compute / a fetch takes while the
        other runs at the same time (>= 1; 1 = no contention, as between a GPU's copy engine and
        its SMs). On a CPU-only machine the fetch worker's decode and the model's matrix products
        share cores and memory bandwidth; ``sim.measure`` runs both at once to measure it.
    measured: which fields were measured on the machine itself (comma separated; empty for a
        datasheet-derived profile).
    notes: free text (how the numbers were obtained, what was not measured).

    A measured profile of a machine without a GPU leaves the GPU and link fields ``null``;
    :meth:`require` refuses such a profile where a timing needs them.
    """

    name: str
    description: str
    gpu_name: str
    gpu_memory_gib: float | None
    gpu_bandwidth_gbps: float | None
    gpu_tflops: float | None
    h2d_bandwidth_gbps: float | None
    h2d_latency_us: float | None
    nvme_bandwidth_gbps: float | None
    nvme_latency_us: float | None
    dram_gib: float | None
    layer_overhead_us: float = 0.0
    host_memcpy_gbps: float | None = None
    fast_tier: str = "gpu"
    decode_gbps: dict[str, float] | None = None
    handoff_us: float = 0.0
    compute_slowdown: float = 1.0
    fetch_slowdown: float = 1.0
    measured: str = ""
    notes: str = ""

    def __post_init__(self) -> None:
        where = f"hardware profile '{self.name}'"
        _check_fields(self, where=where)
        if self.fast_tier not in FAST_TIERS:
            raise ProfileError(f"{where}: field 'fast_tier' must be one of {FAST_TIERS}, got {self.fast_tier!r}")
        for name in ("compute_slowdown", "fetch_slowdown"):
            if getattr(self, name) < 1.0:
                raise ProfileError(f"{where}: field '{name}' must be >= 1 (1 = no contention), got "
                                   f"{getattr(self, name)}")
        if self.decode_gbps is not None:
            if not isinstance(self.decode_gbps, Mapping):
                raise ProfileError(f"{where}: field 'decode_gbps' must map format names to GB/s, got "
                                   f"{self.decode_gbps!r}")
            for fmt, rate in self.decode_gbps.items():
                if (not isinstance(fmt, str) or isinstance(rate, bool) or not isinstance(rate, (int, float))
                        or not math.isfinite(rate) or rate <= 0):
                    raise ProfileError(f"{where}: field 'decode_gbps' entry {fmt!r}: {rate!r} is not a positive "
                                       "number of GB/s")
            object.__setattr__(self, "decode_gbps", {str(k): float(v) for k, v in self.decode_gbps.items()})

    def decode_s_per_byte(self, weight_format: str) -> float:
        """Seconds per stored byte to decode ``weight_format`` on a fetch (0 when not listed)."""
        rate = (self.decode_gbps or {}).get(weight_format)
        return 0.0 if rate is None else 1.0 / (float(rate) * GB)

    def require(self, *fields: str) -> None:
        """Raise :class:`ProfileError` naming every field in ``fields`` that is not set (``null``)."""
        missing = [f for f in fields if getattr(self, f) is None]
        if missing:
            raise ProfileError(f"hardware profile '{self.name}': field(s) {missing} are not measured "
                               f"(null); set them before modelling time on this machine")

    # Convenience in SI units for the timing model.
    @property
    def gpu_bandwidth_bps(self) -> float:
        self.require("gpu_bandwidth_gbps")
        return float(self.gpu_bandwidth_gbps) * GB  # type: ignore[arg-type]

    @property
    def gpu_flops(self) -> float:
        self.require("gpu_tflops")
        return float(self.gpu_tflops) * 1e12  # type: ignore[arg-type]

    @property
    def gpu_memory_bytes(self) -> int:
        self.require("gpu_memory_gib")
        return int(float(self.gpu_memory_gib) * GIB)  # type: ignore[arg-type]

    @property
    def dram_bytes(self) -> int:
        self.require("dram_gib")
        return int(float(self.dram_gib) * GIB)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---- loading --------------------------------------------------------------------------------

def load_model_profile(name_or_path: str | os.PathLike[str] | Mapping[str, Any]) -> ModelProfile:
    """A :class:`ModelProfile` from a name in ``conf/model``, a YAML path, or a mapping (e.g. a
    Hydra ``cfg.model``)."""
    return _load(ModelProfile, "model", name_or_path)


def load_hardware_profile(name_or_path: str | os.PathLike[str] | Mapping[str, Any]) -> HardwareProfile:
    """A :class:`HardwareProfile` from a name in ``conf/hardware``, a YAML path, or a mapping."""
    return _load(HardwareProfile, "hardware", name_or_path)


def list_profiles(group: str) -> list[str]:
    """Names of the profiles in ``conf/<group>`` (``"model"`` or ``"hardware"``)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def profile_from_mapping(cls: type, data: Mapping[str, Any], *, where: str) -> Any:
    """Build ``cls`` from a mapping, refusing unknown and missing fields with ``where`` in the message."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    data = dict(data)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ProfileError(f"{where}: unknown field(s) {unknown} (known: {sorted(fields)})")
    missing = [n for n, f in fields.items() if n not in data and f.default is dataclasses.MISSING]
    if missing:
        raise ProfileError(f"{where}: missing field(s) {missing}")
    try:
        return cls(**data)
    except ProfileError as exc:
        raise ProfileError(f"{where}: {exc}") from None


def _load(cls: type, group: str, src: str | os.PathLike[str] | Mapping[str, Any]) -> Any:
    if isinstance(src, Mapping) or hasattr(src, "items"):
        data = _plain(src)
        return profile_from_mapping(cls, data, where=f"{group} profile mapping")
    path = Path(src)
    if path.suffix not in (".yaml", ".yml") and not path.exists():
        path = CONF_DIR / group / f"{src}.yaml"
    if not path.is_file():
        known = ", ".join(list_profiles(group))
        raise ProfileError(f"{path}: no such {group} profile (known: {known})")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: must be a mapping of fields, got {type(data).__name__}")
    return profile_from_mapping(cls, data, where=str(path))


def _plain(src: Any) -> dict[str, Any]:
    """A plain dict from a mapping or an omegaconf DictConfig (without importing omegaconf eagerly)."""
    if type(src).__name__ == "DictConfig":
        from omegaconf import OmegaConf

        return dict(OmegaConf.to_container(src, resolve=True))  # type: ignore[arg-type]
    return dict(src)


def _check_fields(obj: Any, *, where: str) -> None:
    """Type and range checks driven by the dataclass annotations (ints > 0 unless defaulted to 0)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        ann = str(f.type)
        if ann == "str":
            if not isinstance(value, str):
                raise ProfileError(f"{where}: field '{f.name}' must be a string, got {value!r}")
        elif ann == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ProfileError(f"{where}: field '{f.name}' must be an integer, got {value!r}")
            lo = 0 if f.default == 0 else 1
            if value < lo:
                raise ProfileError(f"{where}: field '{f.name}' must be >= {lo}, got {value}")
        elif ann.startswith("float"):
            if value is None:
                if "None" not in ann:
                    raise ProfileError(f"{where}: field '{f.name}' must be a number, got null")
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ProfileError(f"{where}: field '{f.name}' must be a finite number, got {value!r}")
            if value < 0 or (value == 0 and f.name not in ("layer_overhead_us", "handoff_us")):
                raise ProfileError(f"{where}: field '{f.name}' must be positive, got {value}")


def _mlp_shapes(hidden: int, inter: int, matrices: int) -> list[tuple[int, int]]:
    if matrices == 3:
        return [(inter, hidden), (inter, hidden), (hidden, inter)]
    return [(inter, hidden), (hidden, inter)]


def _kernel_bytes(weight_format: str, shapes: list[tuple[int, int]]) -> int:
    # Imported here so that profiles load (and the hierarchy runs) even before a format is chosen.
    from moesim.kernels.sizes import expert_bytes

    return int(expert_bytes(weight_format, shapes))


__all__ = ["CONF_DIR", "FAST_TIERS", "GB", "GIB", "HardwareProfile", "ModelProfile", "ProfileError", "list_profiles",
           "load_hardware_profile", "load_model_profile", "profile_from_mapping"]
