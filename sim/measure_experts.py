"""Measurements at a model's expert shape, for a machine whose expert cache is host memory.

What :func:`sim.measure.measure` adds to a profile when given a model (``moesim-measure --model``),
each from wall-clock timings of the same calls the executor (:mod:`sim.executor`) makes, on the
same threads it uses, never from a run of the executor itself:

* ``gpu_bandwidth_gbps``: the float32 bytes of one expert over the time of its gated FFN on one
  token (:func:`sim.executor.expert_ffn`), cycling through more experts than the last-level cache
  holds, with the executor's compute threads;
* ``decode_gbps``: per weight format, the stored bytes of one expert over the time of decoding it
  into float32 (the format's ``decode(enc, out=...)``, three matrices), on a worker thread with one
  numba thread, cycling through more output slots than the cache holds;
* ``nvme_bandwidth_gbps`` / ``nvme_latency_us``: ``O_DIRECT`` reads of one expert's stored block
  (:func:`expert_reads`) at random offsets of a scratch file, and of 4 KiB;
* ``handoff_us``: the latency of handing a fetch to the sleeping worker thread and of waking the
  computation that waits for it (:func:`handoff_us`), between two busy threads as in a run;
* ``compute_slowdown`` / ``fetch_slowdown``: the FFN loop and the decode loop run alone and then at
  the same time (:func:`contention`); each slowdown is its time together over its time alone.

Statistic: each timing is the mean time of one call over a window of ``seconds`` of back-to-back
calls, and the value kept is the median over ``repeats`` windows; each slowdown is the median over
rounds of a ratio whose two sides ran one after the other. On a machine shared with other jobs a
run's speed follows the load, so a profile meant to predict a run of several seconds must describe
the machine as a run of several seconds sees it: the fastest of a few short windows catches
moments when the other jobs paused and overstates the speed of a whole run (on the project's
2-core machine at load 5-7, by about 1.8x).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from moesim.sim.profiles import GB, ModelProfile

LLC_BYTES = 64 << 20  # more than the last-level caches of the machines this runs on


def _rotation(nbytes: int, minimum: int = 4) -> int:
    """How many buffers of ``nbytes`` to cycle through so that none is still cached when reused."""
    return max(minimum, -(-LLC_BYTES // max(1, nbytes)) + 1)


def _matrices(model: ModelProfile, seed: int) -> list[np.ndarray]:
    from moesim.sim.executor_weights import expert_matrices

    return expert_matrices(model, 0, 0, seed)


def _window(call: Callable[[int], None], seconds: float) -> float:
    """Mean seconds of ``call(i)`` (i = 0, 1, ...) over about ``seconds`` of back-to-back calls."""
    count, start = 0, time.perf_counter()
    end = start + seconds
    while True:
        call(count)
        count += 1
        now = time.perf_counter()
        if now >= end:
            return (now - start) / count


def ffn_seconds(model: ModelProfile, *, repeats: int = 3, seconds: float = 1.0, threads: int = 1,
                seed: int = 0) -> float:
    """Seconds of one expert's gated FFN on one token (median of window means; module docstring)."""
    import torch
    from moesim.sim.executor import expert_ffn

    mats = [torch.from_numpy(m) for m in _matrices(model, seed)]
    n = _rotation(sum(m.numel() * 4 for m in mats))
    pool = [[m.clone() for m in mats] for _ in range(n)]
    x = torch.randn(model.hidden_size, generator=torch.Generator().manual_seed(seed))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for w in pool:
            expert_ffn(x, *w)
        return statistics.median(_window(lambda i: expert_ffn(x, *pool[i % n]), seconds)
                                 for _ in range(max(1, repeats)))
    finally:
        torch.set_num_threads(before)


def _on_worker(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on a fresh thread with one numba thread, as the executor's fetch worker does."""
    out: list[Any] = []
    err: list[BaseException] = []

    def body() -> None:
        import numba

        numba.set_num_threads(1)
        try:
            out.append(fn())
        except BaseException as exc:  # re-raised in the caller
            err.append(exc)

    t = threading.Thread(target=body)
    t.start()
    t.join()
    if err:
        raise err[0]
    return out[0]


def _decoder(model: ModelProfile, weight_format: str, seed: int) -> tuple[Callable[[int], None], int]:
    """A function decoding one expert into output slot ``i`` (cycling), and the slot count."""
    from moesim.kernels.formats import get_format

    fmt = get_format(weight_format)
    encs = [fmt.encode(m) for m in _matrices(model, seed)]
    shapes = model.expert_matrix_shapes()
    n = _rotation(sum(r * c * 4 for r, c in shapes))
    slots = [[np.empty(s, np.float32) for s in shapes] for _ in range(n)]

    def decode(i: int) -> None:
        for enc, out in zip(encs, slots[i % n], strict=True):
            fmt.decode(enc, out=out)

    return decode, n


def decode_seconds(model: ModelProfile, weight_format: str, *, repeats: int = 3, seconds: float = 1.0,
                   seed: int = 0) -> float:
    """Seconds to decode one expert stored in ``weight_format`` into float32 (median of window means)."""
    decode, n = _decoder(model, weight_format, seed)

    def rounds() -> float:
        for i in range(n):  # compile or load, and touch every slot once
            decode(i)
        return statistics.median(_window(decode, seconds) for _ in range(max(1, repeats)))

    return float(_on_worker(rounds))


def decode_gbps(model: ModelProfile, formats: Sequence[str], *, repeats: int = 3, seconds: float = 1.0,
                seed: int = 0) -> dict[str, float]:
    """Stored GB decoded per second, per format, at ``model``'s expert shape."""
    return {f: model.expert_bytes(f) / decode_seconds(model, f, repeats=repeats, seconds=seconds, seed=seed) / GB
            for f in formats}


def handoff_us(model: ModelProfile, weight_format: str, *, repeats: int = 3, seconds: float = 1.0,
               threads: int = 1, seed: int = 0) -> float:
    """The hand-off latency of a fetch in microseconds: per round, a loop of (one FFN, then one
    expert's decode) timed with the decode inline and with the decode handed to a sleeping worker
    thread and waited for, as the executor does; half the median over rounds of the difference
    (the worker's wake-up and the waiting thread's), floored at 0. Both threads are busy between
    hand-offs, as in a real run: a ping-pong between idle threads would measure microseconds where
    a loaded scheduler charges milliseconds."""
    import numba
    import torch
    from moesim.sim.executor import expert_ffn

    mats = [torch.from_numpy(m) for m in _matrices(model, seed)]
    n = _rotation(sum(m.numel() * 4 for m in mats))
    pool = [[m.clone() for m in mats] for _ in range(n)]
    x = torch.randn(model.hidden_size, generator=torch.Generator().manual_seed(seed))
    decode, n_dec = _decoder(model, weight_format, seed)
    cv = threading.Condition()
    state = {"asked": 0, "done": 0, "stop": False}

    def worker() -> None:
        numba.set_num_threads(1)
        served = 0
        while True:
            with cv:
                while state["asked"] == served and not state["stop"]:
                    cv.wait()
                if state["stop"]:
                    return
            served += 1
            decode(served)
            with cv:
                state["done"] = served
                cv.notify_all()

    def handed(i: int) -> None:
        expert_ffn(x, *pool[i % n])
        with cv:
            state["asked"] += 1
            want = state["asked"]
            cv.notify_all()
            while state["done"] < want:
                cv.wait()

    def inline(i: int) -> None:
        expert_ffn(x, *pool[i % n])
        decode(i)

    before = (torch.get_num_threads(), numba.get_num_threads())
    torch.set_num_threads(threads)
    numba.set_num_threads(1)
    th = threading.Thread(target=worker, daemon=True)
    th.start()
    diffs = []
    try:
        for i in range(n_dec):
            inline(i)
        for _ in range(max(1, repeats)):
            diffs.append(_window(handed, seconds) - _window(inline, seconds))
    finally:
        with cv:
            state["stop"] = True
            cv.notify_all()
        th.join()
        torch.set_num_threads(before[0])
        numba.set_num_threads(before[1])
    return max(0.0, statistics.median(diffs) / 2 * 1e6)


def contention(model: ModelProfile, weight_format: str, *, rounds: int = 3, seconds: float = 1.0,
               threads: int = 1, seed: int = 0) -> tuple[float, float]:
    """(compute slowdown, fetch slowdown): per round, the FFN loop and the decode loop each timed
    alone and then both at once (the decode on a worker thread); the median over rounds of each
    loop's time together over its time alone, floored at 1."""
    import torch
    from moesim.sim.executor import expert_ffn

    mats = [torch.from_numpy(m) for m in _matrices(model, seed)]
    n = _rotation(sum(m.numel() * 4 for m in mats))
    pool = [[m.clone() for m in mats] for _ in range(n)]
    x = torch.randn(model.hidden_size, generator=torch.Generator().manual_seed(seed))
    decode, n_dec = _decoder(model, weight_format, seed)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)

    def ffn_loop(stop: Callable[[], bool]) -> float:
        count, t = 0, time.perf_counter()
        while not stop():
            expert_ffn(x, *pool[count % n])
            count += 1
        return (time.perf_counter() - t) / max(1, count)

    def decode_loop(stop: Callable[[], bool]) -> float:
        count, t = 0, time.perf_counter()
        while not stop():
            decode(count)
            count += 1
        return (time.perf_counter() - t) / max(1, count)

    def timed(sec: float) -> Callable[[], bool]:
        end = time.perf_counter() + sec
        return lambda: time.perf_counter() >= end

    slow_c, slow_f = [], []
    try:
        expert_ffn(x, *pool[0])
        _on_worker(lambda: [decode(i) for i in range(n_dec)])
        for _ in range(max(1, rounds)):
            c_alone = ffn_loop(timed(seconds))
            f_alone = _on_worker(lambda: decode_loop(timed(seconds)))
            done = threading.Event()
            box: list[float] = []
            worker = threading.Thread(target=lambda b=box, d=done: b.append(_worker_loop(decode_loop, d)))
            worker.start()
            c_both = ffn_loop(timed(seconds))
            done.set()
            worker.join()
            slow_c.append(c_both / c_alone)
            slow_f.append(box[0] / f_alone)
    finally:
        torch.set_num_threads(before)
    return max(1.0, statistics.median(slow_c)), max(1.0, statistics.median(slow_f))


def _worker_loop(loop: Callable[[Callable[[], bool]], float], done: threading.Event) -> float:
    import numba

    numba.set_num_threads(1)
    return loop(done.is_set)


def expert_reads(directory: str | os.PathLike[str], block_bytes: int, *, file_bytes: int = 256 << 20,
                 reads: int = 32, repeats: int = 2, seed: int = 0) -> dict[str, Any]:
    """Reads of ``block_bytes`` (one stored expert, 4 KiB aligned) and of 4 KiB at random offsets of
    a scratch file in ``directory``, with ``O_DIRECT`` where allowed: the latency (median 4 KiB read,
    us) and the bandwidth of an expert-sized read once that latency is taken off (GB/s; from the
    mean expert read, the median over ``repeats`` rounds)."""
    from moesim.sim.executor_weights import new_buffers

    block = -(-block_bytes // 4096) * 4096
    file_bytes = max(file_bytes, 8 * block)
    fd, path = tempfile.mkstemp(prefix=".moesim-measure-", dir=directory)
    rng = np.random.default_rng(seed)
    try:
        chunk = rng.integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()
        with os.fdopen(fd, "wb") as fh:
            for _ in range(-(-file_bytes // len(chunk))):
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        size = os.path.getsize(path)
        direct = hasattr(os, "O_DIRECT")
        try:
            rfd = os.open(path, os.O_RDONLY | (os.O_DIRECT if direct else 0))
        except OSError:
            direct = False
            rfd = os.open(path, os.O_RDONLY)
        buf = new_buffers(1, block)[0]
        small = new_buffers(1, 4096)[0]
        try:
            def timed_reads(target: np.ndarray, n: int) -> list[float]:
                out = []
                for _ in range(n):
                    off = int(rng.integers(0, (size - len(target)) // 4096)) * 4096
                    if not direct:
                        os.posix_fadvise(rfd, off, len(target), os.POSIX_FADV_DONTNEED)
                    t = time.perf_counter()
                    os.preadv(rfd, [target], off)
                    out.append(time.perf_counter() - t)
                return out

            lat = float(np.median(timed_reads(small, reads)))
            big = statistics.median(float(np.mean(timed_reads(buf, reads))) for _ in range(max(1, repeats)))
        finally:
            os.close(rfd)
        return {"nvme_latency_us": round(lat * 1e6, 1),
                "nvme_bandwidth_gbps": round(block / max(big - lat, 1e-9) / GB, 3), "o_direct": direct}
    finally:
        if os.path.exists(path):
            os.unlink(path)


def expert_measurements(model: ModelProfile, formats: Sequence[str], disk_dir: str | os.PathLike[str], *,
                        repeats: int = 3, seconds: float = 1.0, threads: int = 1, read_file_bytes: int = 256 << 20,
                        seed: int = 0) -> dict[str, Any]:
    """Every field above for ``model`` and ``formats`` (the contention and the hand-off with the
    first format); ``seconds`` per timing window, reads in a scratch file of ``read_file_bytes``
    (at least 8 experts)."""
    ffn = ffn_seconds(model, repeats=repeats, seconds=seconds, threads=threads, seed=seed)
    rates = decode_gbps(model, formats, repeats=repeats, seconds=seconds, seed=seed)
    out: dict[str, Any] = {
        "gpu_bandwidth_gbps": round(model.expert_bytes("fp32") / ffn / GB, 3),
        "decode_gbps": {f: round(v, 4) for f, v in rates.items()},
        "handoff_us": round(handoff_us(model, formats[0], repeats=repeats, seconds=seconds, threads=threads,
                                       seed=seed), 1),
    }
    slow_c, slow_f = contention(model, formats[0], rounds=repeats, seconds=seconds, threads=threads, seed=seed)
    out["compute_slowdown"], out["fetch_slowdown"] = round(slow_c, 3), round(slow_f, 3)
    block = max(model.expert_bytes(f) for f in formats)
    out.update(expert_reads(disk_dir, int(block), file_bytes=read_file_bytes, repeats=max(1, repeats - 1), seed=seed))
    return out


__all__ = ["contention", "decode_gbps", "decode_seconds", "expert_measurements", "expert_reads", "ffn_seconds",
           "handoff_us"]
