"""Model and hardware profiles: every shipped YAML loads, bytes per expert come from the format
registry, and a bad file is refused naming the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from moesim.kernels.formats import get_format
from moesim.sim.profiles import (
    CONF_DIR,
    HardwareProfile,
    ModelProfile,
    ProfileError,
    list_profiles,
    load_hardware_profile,
    load_model_profile,
)

MODELS = list_profiles("model")
HARDWARE = list_profiles("hardware")


def test_the_shipped_profiles_are_all_listed() -> None:
    assert {"gpt-oss-20b", "gpt-oss-120b", "mixtral-8x7b", "olmoe-1b-7b", "qwen3-30b-a3b", "deepseek-v3"} <= set(MODELS)
    assert {"t4", "rtx-4090", "laptop-pcie4x4-nvme"} <= set(HARDWARE)


@pytest.mark.parametrize("name", MODELS)
def test_every_model_profile_loads_and_matches_its_file_name(name: str) -> None:
    m = load_model_profile(name)
    assert m.name == name
    assert m == load_model_profile(CONF_DIR / "model" / f"{name}.yaml")
    assert m == load_model_profile(yaml.safe_load((CONF_DIR / "model" / f"{name}.yaml").read_text()))
    assert m.resident_bytes() > 0 and m.num_expert_keys == m.num_moe_layers * m.num_experts


@pytest.mark.parametrize("name", HARDWARE)
def test_every_hardware_profile_loads_with_every_timing_field(name: str) -> None:
    hw = load_hardware_profile(name)
    assert hw.name == name
    hw.require("gpu_memory_gib", "gpu_bandwidth_gbps", "gpu_tflops", "h2d_bandwidth_gbps", "h2d_latency_us",
               "nvme_bandwidth_gbps", "nvme_latency_us", "dram_gib")
    assert hw.gpu_bandwidth_bps == hw.gpu_bandwidth_gbps * 1e9


@pytest.mark.parametrize(("fmt", "bits"), [("bf16", 16.0), ("mxfp4", 4.25), ("int4-sym-g64", 4.25),
                                           ("int8-g64", 8.5), ("nf4", 4.5)])
@pytest.mark.parametrize("name", MODELS)
def test_bytes_per_expert_is_bits_per_weight_times_params_over_8(name: str, fmt: str, bits: float) -> None:
    m = load_model_profile(name)
    assert get_format(fmt).bits_per_weight((m.expert_intermediate_size, m.hidden_size)) == bits
    assert m.expert_bytes(fmt) == bits * m.expert_params / 8


def test_gpt_oss_20b_expert_sizes_by_hand() -> None:
    # 3 matrices of 2880 x 2880: 24,883,200 weights; MXFP4 4.25 bits -> 13,219,200 bytes; bf16 2 bytes each.
    m = load_model_profile("gpt-oss-20b")
    assert m.expert_params == 24_883_200
    assert m.expert_bytes("mxfp4") == 13_219_200
    assert m.expert_bytes("bf16") == 49_766_400
    # Mixtral: 3 x 14336 x 4096 = 176,160,768 weights -> 352,321,536 bf16 bytes.
    assert load_model_profile("mixtral-8x7b").expert_bytes("bf16") == 352_321_536


def _write(tmp_path: Path, group: str, name: str, **changes: object) -> Path:
    data = yaml.safe_load((CONF_DIR / group / f"{name}.yaml").read_text())
    for k, v in changes.items():
        if v is _DROP:
            del data[k]
        else:
            data[k] = v
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


_DROP = object()


@pytest.mark.parametrize(("changes", "field"), [
    ({"top_k": "two"}, "top_k"), ({"num_experts": 0}, "num_experts"), ({"hidden_size": 1.5}, "hidden_size"),
    ({"matrices_per_expert": 4}, "matrices_per_expert"), ({"top_k": 99}, "top_k"),
    ({"hidden_sise": 7}, "hidden_sise"), ({"num_moe_layers": _DROP}, "num_moe_layers"),
])
def test_a_bad_model_field_is_named_with_the_file(tmp_path: Path, changes: dict, field: str) -> None:
    path = _write(tmp_path, "model", "mixtral-8x7b", **changes)
    with pytest.raises(ProfileError) as info:
        load_model_profile(path)
    assert str(path) in str(info.value) and field in str(info.value)


@pytest.mark.parametrize(("changes", "field"), [
    ({"gpu_bandwidth_gbps": -1}, "gpu_bandwidth_gbps"), ({"h2d_latency_us": "fast"}, "h2d_latency_us"),
    ({"dram_gib": float("inf")}, "dram_gib"), ({"gpu_name": 4090}, "gpu_name"), ({"pcie": 4}, "pcie"),
    ({"gpu_tflops": _DROP}, "gpu_tflops"), ({"layer_overhead_us": -5}, "layer_overhead_us"),
])
def test_a_bad_hardware_field_is_named_with_the_file(tmp_path: Path, changes: dict, field: str) -> None:
    path = _write(tmp_path, "hardware", "rtx-4090", **changes)
    with pytest.raises(ProfileError) as info:
        load_hardware_profile(path)
    assert str(path) in str(info.value) and field in str(info.value)


def test_unreadable_or_missing_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="no such model profile"):
        load_model_profile("mixtral-9x7b")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ProfileError, match="not valid YAML"):
        load_hardware_profile(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ProfileError, match="mapping"):
        load_hardware_profile(bad)


def test_a_null_field_is_refused_only_where_it_is_needed() -> None:
    data = load_hardware_profile("rtx-4090").to_dict() | {"gpu_tflops": None}
    hw = HardwareProfile(**data)  # a measured profile without a GPU may leave it null
    with pytest.raises(ProfileError, match="gpu_tflops"):
        hw.require("gpu_bandwidth_gbps", "gpu_tflops")
    with pytest.raises(ProfileError, match="description"):
        HardwareProfile(**(data | {"description": None}))


def test_profiles_dataclass_round_trip() -> None:
    m = load_model_profile("olmoe-1b-7b")
    assert ModelProfile(**m.to_dict()) == m
