"""sim.measure with tiny sizes: the profile it writes loads back; GPU parts only where CUDA exists."""

from __future__ import annotations

from pathlib import Path

import pytest
from moesim.sim.measure import disk_read, host_memcpy_gbps, main, measure, to_yaml
from moesim.sim.profiles import HardwareProfile, load_hardware_profile

TINY = 1 << 20


def test_cpu_only_profile_loads_back(tmp_path: Path) -> None:
    data = measure("tiny-box", size_bytes=TINY, disk_dir=tmp_path, matmul_n=32, repeats=1, use_gpu=False)
    out = tmp_path / "tiny-box.yaml"
    out.write_text(to_yaml(data))
    hw = load_hardware_profile(out)
    assert isinstance(hw, HardwareProfile) and hw.name == "tiny-box"
    # Without a GPU the GPU and link fields stay null and say so; the host and disk are measured.
    assert hw.gpu_name == "none" and hw.gpu_bandwidth_gbps is None and hw.h2d_bandwidth_gbps is None
    assert "NOT MEASURED" in hw.notes
    assert hw.nvme_bandwidth_gbps > 0 and hw.nvme_latency_us > 0 and hw.host_memcpy_gbps > 0
    assert hw.dram_gib > 0
    assert set(hw.measured.split(",")) == {"dram_gib", "nvme_bandwidth_gbps", "nvme_latency_us", "host_memcpy_gbps"}
    with pytest.raises(ValueError, match="gpu_bandwidth_gbps"):
        hw.require("gpu_bandwidth_gbps")
    assert not list(tmp_path.glob(".moesim-measure-*"))  # the disk test file is removed


def test_command_line_writes_the_file(tmp_path: Path) -> None:
    out = tmp_path / "cli-box.yaml"
    assert main(["--name", "cli-box", "--out", str(out), "--size-mib", "1", "--matmul-n", "16", "--repeats", "1",
                 "--disk-dir", str(tmp_path), "--cpu-only"]) == 0
    assert load_hardware_profile(out).name == "cli-box"
    assert main(["--size-mib", "0"]) == 2


def test_pieces_report_positive_rates(tmp_path: Path) -> None:
    assert host_memcpy_gbps(TINY, repeats=1) > 0
    disk = disk_read(tmp_path, 10, latency_reads=4, repeats=1)  # rounded up to one 1 MiB block
    assert disk["nvme_bandwidth_gbps"] > 0 and disk["nvme_latency_us"] > 0 and isinstance(disk["o_direct"], bool)


def test_gpu_profile_loads_back(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    data = measure("gpu-box", size_bytes=8 * TINY, disk_dir=tmp_path, matmul_n=256, repeats=1)
    out = tmp_path / "gpu-box.yaml"
    out.write_text(to_yaml(data))
    hw = load_hardware_profile(out)
    hw.require("gpu_memory_gib", "gpu_bandwidth_gbps", "gpu_tflops", "h2d_bandwidth_gbps", "h2d_latency_us")
    assert "gpu_bandwidth_gbps" in hw.measured.split(",")
