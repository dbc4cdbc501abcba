"""Measure this machine and write a hardware profile (``conf/hardware/<name>.yaml`` format).

What is measured (each best of a few repeats, wall clock via ``time.perf_counter``):

* GPU (when CUDA is available): memory capacity; device-to-device copy bandwidth (read + write
  counted); pinned host-to-device copy bandwidth and the latency of a tiny copy; bf16 matmul
  throughput.
* Without CUDA, the GPU and link fields are written as ``null`` and listed as not measured in
  ``notes``; the host memory copy bandwidth and a float32 CPU matmul are recorded instead.
* Disk: sequential read bandwidth of a temporary file in ``--disk-dir`` and the latency of 4 KiB
  reads at random offsets, with ``O_DIRECT`` when the file system allows it; otherwise buffered
  reads after asking the kernel to drop the file's pages (``posix_fadvise(DONTNEED)``), which the
  notes flag because a page-cache hit would overstate the disk.
* Host memory capacity.
* With ``--model`` (a model profile) and no CUDA device (or ``--cpu-only``): the machine is
  profiled as one whose expert cache is host memory (``fast_tier: host``), at that model's expert
  shape (:mod:`sim.measure_experts`): the gated FFN's bandwidth as the compute bandwidth, the
  decode throughput of every ``--formats`` entry, ``O_DIRECT`` reads of an expert-sized block, the
  per-fetch hand-off and the contention between a decoding worker and the compute. Those are the
  numbers :mod:`sim.timing` needs to predict :mod:`sim.executor` on this machine.

Run ``python -m moesim.sim.measure --name my-box --out conf/hardware/my-box.yaml``; small sizes
(``--size-mib``) give a quick, noisier profile.
"""

from __future__ import annotations

import argparse
import mmap
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from moesim.kernels.files import atomic_write_text
from moesim.kernels.messages import internal_error, one_line
from moesim.sim.profiles import GB, GIB, HardwareProfile, ModelProfile, profile_from_mapping

DISK_BLOCK = 1 << 20  # bytes per sequential read call
LATENCY_BLOCK = 4096


def _best(fn: Callable[[], float], repeats: int) -> float:
    """Smallest of ``repeats`` timings (seconds): the least disturbed run on a shared machine."""
    return min(fn() for _ in range(max(1, repeats)))


def host_memcpy_gbps(size_bytes: int, repeats: int = 3) -> float:
    """Host memory copy bandwidth in GB/s (bytes copied per second, one direction)."""
    src = np.ones(size_bytes, np.uint8)
    dst = np.empty_like(src)

    def once() -> float:
        t = time.perf_counter()
        np.copyto(dst, src)
        return time.perf_counter() - t

    once()  # first touch of dst
    return size_bytes / _best(once, repeats) / GB


def cpu_matmul_tflops(n: int, repeats: int = 3, threads: int | None = None) -> float:
    """float32 matmul throughput of the host CPU in TFLOP/s (2 n^3 per product), on ``threads``
    torch threads (default: torch's)."""
    import torch

    a = torch.randn(n, n)
    b = torch.randn(n, n)
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)

    def once() -> float:
        t = time.perf_counter()
        torch.mm(a, b)
        return time.perf_counter() - t

    try:
        once()
        return 2.0 * n ** 3 / _best(once, repeats) / 1e12
    finally:
        torch.set_num_threads(before)


def gpu_measurements(size_bytes: int, matmul_n: int, repeats: int = 3) -> dict[str, Any]:
    """GPU fields measured with torch on device 0 (only called when CUDA is available)."""
    import torch

    dev = torch.device("cuda", 0)
    props = torch.cuda.get_device_properties(dev)
    out: dict[str, Any] = {"gpu_name": props.name, "gpu_memory_gib": round(props.total_memory / GIB, 2)}

    def cuda_time(fn: Callable[[], None]) -> float:
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        fn()
        torch.cuda.synchronize()
        start.record()
        fn()
        stop.record()
        torch.cuda.synchronize()
        return start.elapsed_time(stop) / 1e3

    host = torch.empty(size_bytes, dtype=torch.uint8).pin_memory()
    dev_buf = torch.empty(size_bytes, dtype=torch.uint8, device=dev)
    dev_buf2 = torch.empty_like(dev_buf)
    out["h2d_bandwidth_gbps"] = round(size_bytes / _best(
        lambda: cuda_time(lambda: dev_buf.copy_(host, non_blocking=True)), repeats) / GB, 2)
    tiny_h, tiny_d = torch.empty(4, dtype=torch.uint8).pin_memory(), torch.empty(4, dtype=torch.uint8, device=dev)

    def tiny() -> float:
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(100):
            tiny_d.copy_(tiny_h, non_blocking=True)
        torch.cuda.synchronize()
        return (time.perf_counter() - t) / 100

    out["h2d_latency_us"] = round(_best(tiny, repeats) * 1e6, 2)
    # A device copy reads and writes every byte.
    out["gpu_bandwidth_gbps"] = round(2 * size_bytes / _best(lambda: cuda_time(lambda: dev_buf2.copy_(dev_buf)),
                                                             repeats) / GB, 1)
    a = torch.randn(matmul_n, matmul_n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(matmul_n, matmul_n, device=dev, dtype=torch.bfloat16)
    out["gpu_tflops"] = round(2.0 * matmul_n ** 3 / _best(lambda: cuda_time(lambda: torch.mm(a, b)), repeats)
                              / 1e12, 1)
    return out


def _open_direct(path: str) -> tuple[int, bool]:
    flag = getattr(os, "O_DIRECT", 0)
    if flag:
        try:
            return os.open(path, os.O_RDONLY | flag), True
        except OSError:
            pass
    return os.open(path, os.O_RDONLY), False


def disk_read(directory: str | os.PathLike[str], size_bytes: int, *, latency_reads: int = 64,
              repeats: int = 2, seed: int = 0) -> dict[str, Any]:
    """Sequential read GB/s and 4 KiB random-read latency (us) of a temporary file in ``directory``."""
    size_bytes = max(DISK_BLOCK, size_bytes // DISK_BLOCK * DISK_BLOCK)
    fd, path = tempfile.mkstemp(prefix=".moesim-measure-", dir=directory)
    try:
        chunk = np.random.default_rng(seed).integers(0, 256, DISK_BLOCK, dtype=np.uint8).tobytes()
        with os.fdopen(fd, "wb") as fh:
            for _ in range(size_bytes // DISK_BLOCK):
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        direct = False

        def drop_cache() -> None:
            if hasattr(os, "posix_fadvise"):
                rfd = os.open(path, os.O_RDONLY)
                try:
                    os.posix_fadvise(rfd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(rfd)

        def sequential() -> float:
            nonlocal direct
            drop_cache()
            rfd, direct = _open_direct(path)
            buf = mmap.mmap(-1, DISK_BLOCK)  # page-aligned, as O_DIRECT requires
            try:
                t = time.perf_counter()
                offset = 0
                while offset < size_bytes:
                    n = os.preadv(rfd, [buf], offset)
                    if n <= 0:
                        break
                    offset += n
                return time.perf_counter() - t
            finally:
                os.close(rfd)
                buf.close()

        seq = _best(sequential, repeats)
        rng = random.Random(seed)
        drop_cache()
        rfd, _ = _open_direct(path)
        buf = mmap.mmap(-1, LATENCY_BLOCK)
        try:
            lat = []
            for _ in range(latency_reads):
                off = rng.randrange(size_bytes // LATENCY_BLOCK) * LATENCY_BLOCK
                t = time.perf_counter()
                os.preadv(rfd, [buf], off)
                lat.append(time.perf_counter() - t)
        finally:
            os.close(rfd)
            buf.close()
        return {"nvme_bandwidth_gbps": round(size_bytes / seq / GB, 3),
                "nvme_latency_us": round(float(np.median(lat)) * 1e6, 1), "o_direct": direct}
    finally:
        if os.path.exists(path):
            os.unlink(path)


def dram_gib() -> float:
    return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB, 1)


def measure(name: str, *, size_bytes: int, disk_dir: str | os.PathLike[str], matmul_n: int = 1024,
            repeats: int = 3, use_gpu: bool | None = None, model: ModelProfile | None = None,
            formats: Sequence[str] = ("bf16", "mxfp4"), compute_threads: int = 1, window_s: float = 1.0,
            ) -> dict[str, Any]:
    """Every field of a :class:`HardwareProfile` for this machine (unmeasured ones ``None``); with
    ``model`` on a machine without CUDA, the host fast tier's fields too (module docstring), each
    timed over windows of ``window_s`` seconds."""
    import torch

    cuda = torch.cuda.is_available() if use_gpu is None else use_gpu
    data: dict[str, Any] = {"name": name, "description": f"measured on {platform.node()} ({platform.machine()})",
                            "gpu_name": "none", "gpu_memory_gib": None, "gpu_bandwidth_gbps": None,
                            "gpu_tflops": None, "h2d_bandwidth_gbps": None, "h2d_latency_us": None,
                            "layer_overhead_us": 0.0}
    measured = ["dram_gib", "nvme_bandwidth_gbps", "nvme_latency_us", "host_memcpy_gbps"]
    notes = []
    if cuda:
        data.update(gpu_measurements(size_bytes, matmul_n, repeats))
        measured += ["gpu_name", "gpu_memory_gib", "gpu_bandwidth_gbps", "gpu_tflops", "h2d_bandwidth_gbps",
                     "h2d_latency_us"]
        notes.append("gpu_bandwidth_gbps from a device-to-device copy (read + write); gpu_tflops from one "
                     f"{matmul_n}^3 bf16 matmul")
    else:
        notes.append("no CUDA device: GPU and host-to-device fields NOT MEASURED (null); "
                     f"cpu float32 matmul {cpu_matmul_tflops(matmul_n, repeats):.3f} TFLOP/s")
    data["host_memcpy_gbps"] = round(host_memcpy_gbps(size_bytes, repeats), 2)
    disk = disk_read(disk_dir, size_bytes, repeats=max(1, repeats - 1))
    data["nvme_bandwidth_gbps"] = disk["nvme_bandwidth_gbps"]
    data["nvme_latency_us"] = disk["nvme_latency_us"]
    notes.append(f"disk read of {size_bytes >> 20} MiB in {disk_dir} "
                 + ("with O_DIRECT" if disk["o_direct"] else
                    "WITHOUT O_DIRECT (unsupported here): buffered reads after posix_fadvise(DONTNEED); "
                    "page-cache hits may overstate the disk"))
    notes.append("layer_overhead_us not measured (0)")
    data["dram_gib"] = dram_gib()
    if model is not None and not cuda:
        measured += _host_tier(data, model, formats, disk_dir, repeats, compute_threads, window_s, size_bytes, notes)
    elif model is not None:
        notes.append("--model given with a CUDA device: the expert-shape fields are measured for host-memory "
                     "caches only (run with --cpu-only for those)")
    data["measured"] = ",".join(measured)
    data["notes"] = "; ".join(notes)
    profile_from_mapping(HardwareProfile, data, where=f"measured profile '{name}'")  # refuse a bad profile early
    return data


def _host_tier(data: dict[str, Any], model: ModelProfile, formats: Sequence[str], disk_dir: str | os.PathLike[str],
               repeats: int, threads: int, window_s: float, file_bytes: int, notes: list[str]) -> list[str]:
    """Fill ``data`` as a host-memory fast tier measured at ``model``'s expert shape; the fields set."""
    from moesim.sim.measure_experts import expert_measurements

    tflops = cpu_matmul_tflops(512, repeats, threads=threads)
    got = expert_measurements(model, formats, disk_dir, repeats=repeats, seconds=window_s, threads=threads,
                              read_file_bytes=file_bytes)
    direct = got.pop("o_direct")
    data.update(got)
    data.update(fast_tier="host", gpu_name="none (CPU: the expert cache is host memory)",
                gpu_memory_gib=data["dram_gib"], gpu_tflops=round(tflops, 4))
    notes.append(f"fast tier = host memory, measured at the expert shape of model '{model.name}' with "
                 f"{threads} compute thread(s) and one decode thread, each timing the median of {repeats} "
                 f"{window_s:g} s windows: gpu_bandwidth_gbps = float32 expert bytes / "
                 "gated-FFN time, gpu_tflops = float32 512^3 matmul, nvme_* from expert-sized reads "
                 + ("with O_DIRECT" if direct else "after posix_fadvise(DONTNEED)")
                 + ", handoff_us = half the extra time of a decode handed to a worker over inline, slowdowns = FFN and decode loops "
                 f"together over alone ({formats[0]})")
    return ["fast_tier", "gpu_memory_gib", "gpu_bandwidth_gbps", "gpu_tflops", "decode_gbps", "handoff_us",
            "compute_slowdown", "fetch_slowdown", "nvme_bandwidth_gbps", "nvme_latency_us"]


def to_yaml(data: dict[str, Any]) -> str:
    """The profile as YAML, one ``field: value`` per line in the dataclass's order, with a header."""
    import dataclasses

    import yaml

    lines = ["# Written by sim.measure on this machine; field meanings: sim.profiles.HardwareProfile.",
             "# null = not measured here."]
    for f in dataclasses.fields(HardwareProfile):
        value = data.get(f.name, f.default)
        lines.append(yaml.safe_dump({f.name: value}, default_flow_style=False, width=1000, sort_keys=False).strip())
    return "\n".join(lines) + "\n"


def _model_arg(name: str, formats: Sequence[str], parser: argparse.ArgumentParser) -> ModelProfile:
    """The ``--model`` profile, with every ``--formats`` entry checked against its expert shape."""
    from moesim.kernels.formats import FormatError
    from moesim.sim.profiles import ProfileError, load_model_profile

    try:
        model = load_model_profile(name)
        if not formats:
            parser.error("--formats is empty")
        for f in formats:
            model.expert_bytes(f)
    except (ProfileError, FormatError) as exc:
        parser.error(f"--model/--formats: {one_line(exc)}")
    return model


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 written, 1 a measurement or the output failed, 2 bad usage. Errors are one line."""
    parser = argparse.ArgumentParser(prog="moesim-measure", description=__doc__.split("\n")[0])
    parser.add_argument("--name", default=platform.node() or "this-machine", help="profile name")
    parser.add_argument("--out", type=Path, help="YAML file to write (default: print to stdout)")
    parser.add_argument("--size-mib", type=int, default=512, help="bytes per copy and disk test file, MiB")
    parser.add_argument("--disk-dir", default=tempfile.gettempdir(), help="folder on the disk to measure")
    parser.add_argument("--matmul-n", type=int, default=2048, help="matrix size of the FLOP/s test")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cpu-only", action="store_true", help="skip the GPU even if CUDA is available")
    parser.add_argument("--model", help="a model profile (name in conf/model or a YAML path): also measure the "
                        "expert cache in host memory at its expert shape (decode per format, FFN, reads, "
                        "hand-off, contention)")
    parser.add_argument("--formats", default="bf16,mxfp4", help="weight formats whose decode to measure with "
                        "--model (comma separated)")
    parser.add_argument("--compute-threads", type=int, default=1, help="torch threads of the compute with --model")
    try:
        args = parser.parse_args(argv)
        if args.size_mib < 1 or args.matmul_n < 1 or args.repeats < 1:
            parser.error("--size-mib, --matmul-n and --repeats must be positive")
        # Two copy buffers and three float32 matrices must fit in half of this machine's memory.
        need = 2 * (args.size_mib << 20) + 3 * 4 * args.matmul_n ** 2
        if need > dram_gib() * GIB / 2:
            parser.error(f"--size-mib {args.size_mib} and --matmul-n {args.matmul_n} need {need / GIB:.1f} GiB, "
                         f"more than half of this machine's {dram_gib()} GiB")
        if not os.path.isdir(args.disk_dir):
            parser.error(f"--disk-dir {args.disk_dir}: not a folder")
        model = None
        formats = [f for f in args.formats.split(",") if f]
        if args.model is not None:
            model = _model_arg(args.model, formats, parser)
        if args.compute_threads < 1:
            parser.error("--compute-threads must be positive")
    except SystemExit as exc:  # --help (0) or bad usage (2): a status, not an exception
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    try:
        data = measure(args.name, size_bytes=args.size_mib << 20, disk_dir=args.disk_dir, matmul_n=args.matmul_n,
                       repeats=args.repeats, use_gpu=False if args.cpu_only else None, model=model, formats=formats,
                       compute_threads=args.compute_threads)
        text = to_yaml(data)
        if args.out is None:
            sys.stdout.write(text)
        else:
            atomic_write_text(args.out, text)
            print(f"wrote {args.out}", file=sys.stderr)
    except (OSError, ValueError) as exc:  # the disk folder, the output file, or a profile out of range
        print(f"moesim-measure: error: {one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("moesim-measure: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # e.g. a CUDA failure: still one line, and a failure status
        print(f"moesim-measure: error: {internal_error(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
