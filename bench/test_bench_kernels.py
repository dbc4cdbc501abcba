"""Throughput of the numba MXFP4 kernels against memory bandwidth and torch on the CPU.

Every case works on one float32 weight tensor of ``BENCH_BYTES`` (64 MiB; encode reads it, decode
writes it back as float32, or half of it as bfloat16). Decode is timed as users call it, through the
format's ``decode``:

* into a caller's buffer (``decode(enc, out=buffer)``, the buffer written before, as an engine's
  reused slot is), against ``np.copyto`` of as many bytes as the decode writes into an equally
  pre-written buffer: ``vs_copyto`` is copyto's time over decode's, the fraction of copy bandwidth
  the decode reaches (goal: at least 0.6 on 2 threads).
* allocating its output (``decode(enc)``), against ``np.copy`` of as many bytes (an allocating copy:
  fresh pages, first touch) and the decode into a buffer: ``alloc_vs_copy_plus_decode`` is the
  allocating decode's time over ``np.copy``'s plus the into-buffer decode's (goal: at most 1.10),
  ``vs_np_copy`` is ``np.copy``'s time over the allocating decode's.

The functions compared run in alternation, round after round, and each keeps its fastest round, so
all of them see the same machine load; ``np.copyto`` and ``np.copy`` run on one thread (numpy's),
the decode on ``threads``. The torch decode is the straightforward one (index a value table with
each nibble, as the gpt-oss reader does, then scale); the torch encode is the project's own
(:mod:`kernels.formats._mx_torch`). ``extra_info`` holds the bytes, GB/s and the ratios.

    python -m pytest bench/test_bench_kernels.py --benchmark-enable

With ``--benchmark-disable`` (the project default) each case runs once on ``SMALL_BYTES`` and
still checks that the decode into a buffer, the allocating decode and torch agree bit for bit, so
the suite doubles as a quick test.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from functools import cache

import numba
import numpy as np
import pytest
import torch
from moesim.kernels.formats import _mx_numba as nbk
from moesim.kernels.formats import _mx_torch as tk
from moesim.kernels.formats import get_format
from moesim.kernels.formats._mx_common import ELEMENTS, OCP_SCALES, element_lut
from moesim.kernels.formats.base import f32_to_bf16_bits
from moesim.kernels.formats.mx import encode_mx

BENCH_BYTES = 64 * 2**20
SMALL_BYTES = 256 * 2**10
THREADS = 2
COPY_REPEATS = 15
ALTERNATE_ROUNDS = 15
SETTLE_S = 0.01
FP4 = ELEMENTS["fp4_e2m1"]
MXFP4 = get_format("mxfp4")

pytestmark = pytest.mark.benchmark(group="kernels")


@pytest.fixture(autouse=True)
def _threads() -> Iterator[None]:
    """Pin torch to THREADS threads; restore numba's and torch's thread counts afterwards."""
    nb_before, t_before = numba.get_num_threads(), torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    numba.set_num_threads(nb_before)
    torch.set_num_threads(t_before)


def _numba_threads(threads: int) -> int:
    """Use ``threads`` numba threads (fewer where numba was started with fewer); the count used."""
    used = min(threads, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(used)
    return used


def _size(benchmark) -> int:
    return SMALL_BYTES if benchmark.disabled else BENCH_BYTES


@cache
def _weights(nbytes: int) -> np.ndarray:
    """Weights shaped like an expert's rows: normal values, a per-row magnitude."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal(nbytes // 4, dtype=np.float32).reshape(-1, 4096)
    w *= np.exp2(rng.integers(-8, 4, (w.shape[0], 1))).astype(np.float32)
    return w.reshape(-1)


@cache
def _encoded(nbytes: int) -> tuple[np.ndarray, np.ndarray]:
    blocks, scales = encode_mx(_weights(nbytes), FP4, parallel=True)
    return blocks.reshape(-1, 16), scales.reshape(-1)


@cache
def _copy_buffers(nbytes: int) -> tuple[np.ndarray, np.ndarray]:
    src = np.ones(nbytes // 4, np.float32)
    dst = np.ones_like(src)  # written, so no page is first touched inside a timing
    return src, dst


def _copy_seconds(nbytes: int) -> float:
    """Fastest of COPY_REPEATS ``np.copyto`` of ``nbytes``, measured right after each case so that
    both see the same machine load."""
    src, dst = _copy_buffers(nbytes)
    best = float("inf")
    for _ in range(COPY_REPEATS):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return best


def _record(benchmark, nbytes: int, kind: str, threads: int, torch_seconds: float | None = None) -> None:
    """bytes, GB/s and the ratios to memory copy (and to torch) into ``extra_info``."""
    benchmark.extra_info.update({"bytes": nbytes, "kind": kind, "threads": threads})
    if benchmark.disabled:
        return
    best = benchmark.stats.stats.min
    copy = _copy_seconds(nbytes)
    benchmark.extra_info.update({
        "gbps": nbytes / best / 1e9,
        "copy_gbps": nbytes / copy / 1e9,
        "vs_copy": copy / best,
    })
    if torch_seconds is not None:
        benchmark.extra_info["vs_torch"] = torch_seconds / best


def _best_of(fn: Callable[[], object], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _alternate(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Fastest round of each function, the functions called in turn within every round.

    Each call starts after ``SETTLE_S`` of busy waiting: numba's OpenMP workers spin for a while
    after a parallel loop, and on a 2-core machine they slowed the single-threaded copy timed next
    by up to 40% (``OMP_WAIT_POLICY=passive`` removed it). A sleep instead of the busy wait let the
    core slow down, and the compute-bound bfloat16 decode then took 1.8x as long.
    """
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            settled = time.perf_counter() + SETTLE_S
            while time.perf_counter() < settled:
                pass
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


@cache
def _encoded_dict(nbytes: int) -> dict[str, np.ndarray]:
    blocks, scales = _encoded(nbytes)
    return {"blocks": blocks, "scales": scales}


# ---- the torch implementations compared against ---------------------------------------------------

_TORCH_LUT = torch.from_numpy(element_lut("fp4_e2m1")[:16].copy())
_TORCH_SCALES = torch.from_numpy(OCP_SCALES.copy())


def torch_lut_decode(blocks: torch.Tensor, scales: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The straightforward decode: index a value table with each nibble (low first), multiply by
    the scale looked up per block. ``out`` is float32 ``[nblocks, 32]``."""
    out[:, 0::2] = _TORCH_LUT[(blocks & 0xF).long()]
    out[:, 1::2] = _TORCH_LUT[(blocks >> 4).long()]
    out *= _TORCH_SCALES[scales.long()].unsqueeze(1)
    return out


def torch_encode(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tk.encode(w.reshape(-1, 32), FP4, "floor")
    return enc["blocks"], enc["scales"]


# ---- cases ---------------------------------------------------------------------------------------------

def test_copy_baseline(benchmark) -> None:
    nbytes = _size(benchmark)
    src, dst = _copy_buffers(nbytes)
    dst[:] = 0
    benchmark.pedantic(np.copyto, args=(dst, src), rounds=1 if benchmark.disabled else 20, warmup_rounds=1)
    assert np.array_equal(dst, src)
    _record(benchmark, nbytes, "copy", 1)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("threads", [1, THREADS])
def test_numba_mxfp4_decode_into_buffer(benchmark, threads: int, dtype: str) -> None:
    threads = _numba_threads(threads)
    nbytes = _size(benchmark)
    enc = _encoded_dict(nbytes)
    nblocks = enc["scales"].size
    out = np.ones((nblocks * 32,), np.float32 if dtype == "float32" else np.uint16)

    def decode() -> object:
        return MXFP4.decode(enc, dtype=dtype, out=out)

    decode()  # compile (or load from the cache) outside the timing
    benchmark.pedantic(decode, rounds=1 if benchmark.disabled else 30, warmup_rounds=1)
    want = MXFP4.decode(enc, dtype=dtype)  # the allocating call gives the same bits
    assert np.array_equal(out.view(np.uint8), want.view(np.uint8))
    tb, ts = torch.from_numpy(enc["blocks"]), torch.from_numpy(enc["scales"])
    t_out = torch.zeros(nblocks, 32)
    torch_lut_decode(tb, ts, t_out)
    t_bits = t_out.numpy().reshape(-1)
    assert np.array_equal(out, f32_to_bf16_bits(t_bits)) if dtype == "bfloat16" else \
        np.array_equal(out.view(np.uint32), t_bits.view(np.uint32))
    benchmark.extra_info.update({"bytes": out.nbytes, "kind": f"decode-into-{dtype}", "threads": threads})
    if benchmark.disabled:
        return
    src, dst = _copy_buffers(out.nbytes)
    best = _alternate({"decode": decode, "copyto": lambda: np.copyto(dst, src)}, ALTERNATE_ROUNDS)
    benchmark.extra_info.update({
        "gbps": out.nbytes / best["decode"] / 1e9,
        "copyto_gbps": out.nbytes / best["copyto"] / 1e9,
        "vs_copyto": best["copyto"] / best["decode"],
    })
    if dtype == "float32":
        benchmark.extra_info["vs_torch"] = _best_of(lambda: torch_lut_decode(tb, ts, t_out), 5) / best["decode"]


def test_numba_mxfp4_decode_allocating(benchmark) -> None:
    threads = _numba_threads(THREADS)
    nbytes = _size(benchmark)
    enc = _encoded_dict(nbytes)
    out = np.ones(enc["scales"].size * 32, np.float32)

    def decode() -> np.ndarray:
        return MXFP4.decode(enc)

    decode()
    result = benchmark.pedantic(decode, rounds=1 if benchmark.disabled else 30, warmup_rounds=1)
    assert np.array_equal(result.view(np.uint32), MXFP4.decode(enc, out=out).view(np.uint32))
    benchmark.extra_info.update({"bytes": out.nbytes, "kind": "decode-allocating", "threads": threads})
    if benchmark.disabled:
        return
    src, _ = _copy_buffers(out.nbytes)
    best = _alternate({"decode": decode, "np_copy": lambda: np.copy(src),
                       "decode_into": lambda: MXFP4.decode(enc, out=out)}, ALTERNATE_ROUNDS)
    benchmark.extra_info.update({
        "gbps": out.nbytes / best["decode"] / 1e9,
        "np_copy_gbps": out.nbytes / best["np_copy"] / 1e9,
        "into_gbps": out.nbytes / best["decode_into"] / 1e9,
        "vs_np_copy": best["np_copy"] / best["decode"],
        "alloc_vs_copy_plus_decode": best["decode"] / (best["np_copy"] + best["decode_into"]),
    })


def test_torch_lut_mxfp4_decode(benchmark) -> None:
    nbytes = _size(benchmark)
    blocks, scales = _encoded(nbytes)
    tb, ts = torch.from_numpy(blocks), torch.from_numpy(scales)
    out = torch.zeros(scales.size, 32)
    benchmark.pedantic(torch_lut_decode, args=(tb, ts, out), rounds=1 if benchmark.disabled else 5,
                       warmup_rounds=1)
    # the timed decode gives this package's values, bit for bit
    want = MXFP4.decode(_encoded_dict(nbytes), dtype="float32").reshape(-1)
    assert np.array_equal(out.numpy().reshape(-1).view(np.uint32), want.view(np.uint32))
    _record(benchmark, nbytes, "decode-torch", THREADS)


@pytest.mark.parametrize("threads", [1, THREADS])
def test_numba_mxfp4_encode(benchmark, threads: int) -> None:
    threads = _numba_threads(threads)
    nbytes = _size(benchmark)
    w = _weights(nbytes)
    bits = w.view(np.uint32)
    nb = w.size // 32
    blocks, scales = np.zeros(nb * 16, np.uint8), np.zeros(nb, np.uint8)
    kernel = nbk.pick("encode_fp4", nb, parallel=True)
    args = (bits, blocks, scales, FP4.emax, FP4.max_frac, False)
    kernel(*args)  # compile (or load from the cache) outside the timing
    benchmark.pedantic(kernel, args=args, rounds=1 if benchmark.disabled else 20, warmup_rounds=1)
    tw = torch.from_numpy(w)
    t_blocks, t_scales = torch_encode(tw)
    assert np.array_equal(t_blocks.numpy().reshape(-1), blocks)
    assert np.array_equal(t_scales.numpy().reshape(-1), scales)
    torch_s = None if benchmark.disabled else _best_of(lambda: torch_encode(tw), 3)
    _record(benchmark, nbytes, "encode", threads, torch_s)


def test_torch_mxfp4_encode(benchmark) -> None:
    nbytes = _size(benchmark)
    tw = torch.from_numpy(_weights(nbytes))
    t_blocks, t_scales = benchmark.pedantic(torch_encode, args=(tw,), rounds=1 if benchmark.disabled else 3,
                                            warmup_rounds=1)
    # the timed encode gives this package's blocks and scales, byte for byte
    blocks, scales = _encoded(nbytes)
    assert np.array_equal(t_blocks.numpy().reshape(-1), blocks.reshape(-1))
    assert np.array_equal(t_scales.numpy().reshape(-1), scales)
    _record(benchmark, nbytes, "encode-torch", THREADS)


# ---- the MLX formats against MLX's own CPU kernels ------------------------------------------------------
#
# The same weights (float32 values on the bfloat16 grid, as a bfloat16 checkpoint holds them) are
# quantized by this package's numba codec (``fmt.encode`` / ``fmt.decode``: the public calls,
# allocation included) and by MLX on its CPU stream (``mx.quantize`` / ``mx.dequantize`` then
# ``mx.eval``; MLX gets the bfloat16 array, half the bytes to read). Both decode to float32. Rounds
# alternate: pytest-benchmark times the numba call, and its untimed ``setup`` runs and times MLX
# just before, so both see the same machine load; the fastest MLX round is the baseline and
# ``extra_info["vs_mlx"]`` is MLX's best time over numba's (above 1: numba is faster). MLX picks its
# own thread count; numba runs with 1 and with THREADS. Without MLX the cases are skipped; with
# ``--benchmark-disable`` they run once on SMALL_BYTES and check that both give the same bits.

MLX_CASES = ("mlx-affine-b4-g64", "mlx-mxfp4")


def _mlx_calls(name: str, w32: np.ndarray):
    """(numba encode, numba decode, MLX encode, MLX decode, check) for one format and tensor."""
    mx = pytest.importorskip("mlx.core", reason="MLX is not installed (the optional mlx extra)")
    from moesim.kernels.formats import get_format, mlx_native
    from moesim.kernels.formats import mlx_numerics as mn

    fmt = get_format(name)
    x = mn.round_to(w32, fmt.dt)
    wm = mlx_native.to_mlx(x, fmt.dt)
    enc = fmt.encode(x)
    kw = {"group_size": fmt.block_size, "bits": fmt.bits, "mode": fmt.mode, "stream": mx.cpu}
    q = mx.quantize(wm, **kw)
    mx.eval(*q)

    def mlx_encode() -> None:
        mx.eval(*mx.quantize(wm, **kw))

    def mlx_decode() -> None:
        if fmt.mode == "affine":
            mx.eval(mx.dequantize(*q, **kw).astype(mx.float32, stream=mx.cpu))
        else:
            mx.eval(mx.dequantize(*q, dtype=mx.float32, **kw))

    def check() -> None:
        want = mlx_native.encode(fmt, x)
        for k in want:
            assert np.array_equal(np.asarray(enc[k]).view(np.uint8), np.asarray(want[k]).view(np.uint8)), k
        assert np.array_equal(fmt.decode(enc).view(np.uint32), mlx_native.decode(fmt, want).view(np.uint32))

    return (lambda: fmt.encode(x)), (lambda: fmt.decode(enc)), mlx_encode, mlx_decode, check


@pytest.mark.parametrize("threads", [1, THREADS])
@pytest.mark.parametrize("op", ["encode", "decode"])
@pytest.mark.parametrize("name", MLX_CASES)
def test_numba_mlx_formats_against_mlx_cpu(benchmark, name: str, op: str, threads: int) -> None:
    nbytes = _size(benchmark)
    w = _weights(nbytes).reshape(-1, 4096)
    ours_encode, ours_decode, mlx_encode, mlx_decode, check = _mlx_calls(name, w)
    check()
    used = _numba_threads(threads)
    ours, theirs = (ours_encode, mlx_encode) if op == "encode" else (ours_decode, mlx_decode)
    mlx_times: list[float] = []

    def run_mlx_first() -> None:
        t0 = time.perf_counter()
        theirs()
        mlx_times.append(time.perf_counter() - t0)

    benchmark.pedantic(ours, setup=run_mlx_first, rounds=1 if benchmark.disabled else 10, warmup_rounds=1)
    benchmark.extra_info.update({"format": name, "op": op, "bytes": nbytes, "numba_threads": used,
                                 "baseline": "mlx.core CPU, same tensor, alternating rounds"})
    if not benchmark.disabled:
        best = benchmark.stats.stats.min
        benchmark.extra_info.update({"gbps": nbytes / best / 1e9, "mlx_seconds": min(mlx_times),
                                     "numba_seconds": best, "vs_mlx": min(mlx_times) / best})
