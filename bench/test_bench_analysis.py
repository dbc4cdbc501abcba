"""Weight analysis memory and speed (group ``kernels``): a checkpoint several times larger than one
tensor is analysed in a child process that reports its peak anonymous memory (the heap; the
memory-mapped file pages are the kernel's to drop), next to the checkpoint's size.

Size: ``MOESIM_BENCH_CKPT_MB`` (default 512) MiB of fp32 expert weights when timing; a couple of
MiB when the benchmark only runs as a test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

pytestmark = pytest.mark.benchmark(group="kernels")

CHILD = textwrap.dedent("""
    import json, sys, threading, time
    from moesim.kernels.analysis import analyze_checkpoint

    peak = [0]
    stop = False
    def anon_kb():
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
        return 0
    def watch():
        while not stop:
            peak[0] = max(peak[0], anon_kb())
            time.sleep(0.005)
    base = anon_kb()
    w = threading.Thread(target=watch, daemon=True)
    w.start()
    t0 = time.perf_counter()
    tables = analyze_checkpoint(sys.argv[1], rules="mixtral", formats=["mxfp4"], out_dir=sys.argv[2], quiet=True)
    dt = time.perf_counter() - t0
    stop = True
    w.join()
    print(json.dumps({"matrices": len(tables["matrix_stats"]), "seconds": dt, "base_anon_kb": base,
                      "peak_anon_kb": max(peak[0], anon_kb())}))
""")


def _checkpoint(folder: Path, total_mb: float, rows: int = 1024, cols: int = 1024) -> tuple[Path, int, int]:
    """Mixtral-layout fp32 experts of ``rows x cols``, one file per layer, about ``total_mb`` in all."""
    per = rows * cols * 4
    n = max(3, int(total_mb * 2**20 // per))
    rng = np.random.default_rng(0)
    written, layer = 0, 0
    while written < n:
        tensors = {}
        for e in range(min(8, (n - written + 2) // 3)):
            for proj in ("w1", "w2", "w3"):
                tensors[f"model.layers.{layer}.block_sparse_moe.experts.{e}.{proj}.weight"] = \
                    rng.standard_normal((rows, cols), dtype=np.float32)
                written += 1
        save_file(tensors, str(folder / f"layer{layer:03d}.safetensors"))
        layer += 1
    return folder, written, written * per


def test_analysis_memory_is_bounded(benchmark: Any, tmp_path: Path) -> None:
    disabled = benchmark.disabled
    mb = 2 if disabled else float(os.environ.get("MOESIM_BENCH_CKPT_MB", "512"))
    rows = 64 if disabled else 1024
    (tmp_path / "ckpt").mkdir()
    ckpt, matrices, nbytes = _checkpoint(tmp_path / "ckpt", mb, rows=rows, cols=rows)

    def child() -> dict[str, Any]:
        out = subprocess.run([sys.executable, "-c", CHILD, str(ckpt), str(tmp_path / "out")], capture_output=True,
                             text=True, check=True, timeout=3600)
        return json.loads(out.stdout.strip().splitlines()[-1])

    res = benchmark.pedantic(child, rounds=1, iterations=1)
    assert res["matrices"] == matrices
    grew = (res["peak_anon_kb"] - res["base_anon_kb"]) * 1024
    benchmark.extra_info.update(checkpoint_bytes=nbytes, matrices=matrices, bytes_per_s=nbytes / res["seconds"],
                                peak_anon_mb=res["peak_anon_kb"] / 1024, anon_growth_mb=grew / 2**20)
    if not disabled and nbytes >= 256 * 2**20:
        assert grew < nbytes / 2, (grew, nbytes)  # one tensor at a time, not the checkpoint
