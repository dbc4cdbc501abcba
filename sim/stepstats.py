"""Per-step latencies of a run, kept on disk: exact percentiles in bounded memory.

A long trace has millions of decode steps; keeping their latencies in RAM would make memory grow
with the trace. :class:`StepSeries` appends them to a file in the run's scratch folder and answers
percentiles exactly as ``numpy.percentile`` (linear interpolation) does: below ``in_memory``
values it reads them back and calls numpy; above, it finds each order statistic by narrowing a
value range with histograms over the file (each pass reads it once in chunks) until the values
left in the range fit in memory, then selects among those.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np

CHUNK = 1 << 20  # values read per chunk
IN_MEMORY = 1 << 23  # at most this many values (64 MB) are held at once
BINS = 1 << 12


class StepSeries:
    """An append-only float64 series backed by ``path``."""

    def __init__(self, path: str | os.PathLike[str], *, in_memory: int = IN_MEMORY) -> None:
        self.path = os.fspath(path)
        self.count = 0
        self.total = 0.0
        self.in_memory = in_memory
        open(self.path, "wb").close()

    def append(self, values: np.ndarray) -> None:
        values = np.ascontiguousarray(values, np.float64)
        with open(self.path, "ab") as fh:
            values.tofile(fh)
        self.count += len(values)
        self.total += float(values.sum())

    def _chunks(self) -> Iterator[np.ndarray]:
        data = np.memmap(self.path, np.float64, mode="r", shape=(self.count,)) if self.count else np.zeros(0)
        for a in range(0, self.count, CHUNK):
            yield np.asarray(data[a:a + CHUNK])

    def mean(self) -> float:
        return self.total / self.count if self.count else math_nan()

    def percentiles(self, qs: Sequence[float]) -> list[float]:
        """``numpy.percentile(values, q)`` for each ``q``, without holding every value at once."""
        if self.count == 0:
            return [math_nan() for _ in qs]
        if self.count <= self.in_memory:
            values = np.fromfile(self.path, np.float64, count=self.count)
            return [float(np.percentile(values, q)) for q in qs]
        out = []
        for q in qs:
            pos = (self.count - 1) * (float(q) / 100.0)
            k = int(np.floor(pos))
            lo = self.kth(k)
            hi = self.kth(min(k + 1, self.count - 1))
            # numpy's linear interpolation (numpy.lib._function_base_impl._lerp), bit for bit.
            t = pos - k
            d = hi - lo
            out.append(float(lo + d * t) if t < 0.5 else float(hi - d * (1.0 - t)))
        return out

    def kth(self, k: int) -> float:
        """The ``k``-th smallest value (0-based)."""
        lo, hi = -np.inf, np.inf
        below = 0  # values < lo
        while True:
            inside = 0
            vmin, vmax = np.inf, -np.inf
            for c in self._chunks():
                sel = c[(c >= lo) & (c <= hi)]
                inside += len(sel)
                if len(sel):
                    vmin = min(vmin, float(sel.min()))
                    vmax = max(vmax, float(sel.max()))
            if inside <= self.in_memory or vmin == vmax:
                if vmin == vmax:
                    return vmin
                sel = np.concatenate([c[(c >= lo) & (c <= hi)] for c in self._chunks()])
                return float(np.partition(sel, k - below)[k - below])
            edges = np.linspace(vmin, vmax, BINS + 1)
            hist = np.zeros(BINS, np.int64)
            for c in self._chunks():
                sel = c[(c >= vmin) & (c <= vmax)]
                hist += np.histogram(sel, bins=edges)[0]
            cum = np.cumsum(hist)
            b = int(np.searchsorted(cum, k - below, side="right"))
            before = int(cum[b - 1]) if b > 0 else 0
            new_lo, new_hi = float(edges[b]), float(edges[b + 1])
            # np.histogram's last bin is closed; the others are half-open [a, b)
            if b < BINS - 1:
                new_hi = float(np.nextafter(new_hi, -np.inf))
            below += before
            lo, hi = new_lo, new_hi


def math_nan() -> float:
    return float("nan")


__all__ = ["StepSeries"]
