"""A trace as libCacheSim's request stream: its ``oracleGeneral`` binary format and a CSV, so any
policy can be cross-checked in libCacheSim (``moesim-trace convert TRACE out.oracleGeneral``).

One request per expert access, in the replay's order (step by step, layer by layer, the row's
experts as recorded; ``-1`` pads left out). Each request is one object of size 1 (libCacheSim then
counts a cache size in experts, as moesim does):

* ``obj_id`` = ``layer * E + expert + 1``: the shared-cache key, plus one (libCacheSim's readers
  treat id 0 as "no object");
* ``time`` = the layer clock of the row, ``step * L + layer`` (the design's layer clock);
* ``next_access_vtime`` = the index of the same object's next request, ``-1`` when there is none.
  Belady in libCacheSim reads it, and is silently wrong without it.

libCacheSim has no rows: it serves a row's experts one after another, so on rows wider than one its
hit counts may differ from moesim's row-at-once admission (identical on top-1 traces).

The binary record is packed little-endian ``<IQIq`` (uint32 time, uint64 obj_id, uint32 size, int64
next_access_vtime), 24 bytes, no header. The CSV has the header
``time,obj_id,obj_size,next_access_vtime``; read it in libCacheSim with time, obj_id and obj_size in
fields 1-3 and ``has_header``. libCacheSim 0.3's CSV reader does not read next-access times, so
cross-check Belady on the binary file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from moesim.kernels.files import atomic_path
from moesim.traces.errors import TraceError
from moesim.traces.trace import Trace

RECORD = np.dtype([("time", "<u4"), ("obj_id", "<u8"), ("size", "<u4"), ("next", "<i8")])
CSV_HEADER = "time,obj_id,obj_size,next_access_vtime"
SUFFIXES = (".oraclegeneral", ".oraclegeneral.bin", ".oracle_general", ".lcs.csv")


def is_oracle_general(path: str | os.PathLike[str]) -> bool:
    """True for the file names :func:`write` serves (``.oracleGeneral[.bin]`` or ``.lcs.csv``)."""
    name = Path(path).name.lower()
    return name.endswith(SUFFIXES)


def next_access(ids: np.ndarray) -> np.ndarray:
    """For each request, the index of the next request of the same id (-1: none)."""
    n = len(ids)
    order = np.argsort(ids, kind="stable")  # stable: within one id, in request order
    nxt = np.full(n, -1, np.int64)
    if n > 1:
        same = ids[order[1:]] == ids[order[:-1]]
        nxt[order[:-1][same]] = order[1:][same]
    return nxt


def records(trace: Trace) -> np.ndarray:
    """The requests of ``trace`` as :data:`RECORD` rows (see the module docstring)."""
    ex = np.asarray(trace.experts)
    T, L, _ = ex.shape
    E = trace.num_experts
    if T * L >= 1 << 32:
        raise TraceError(f"{T * L} layer-clock ticks do not fit oracleGeneral's 32-bit time field",
                         file=trace.file, field="experts")
    valid = ex >= 0
    layer = np.broadcast_to(np.arange(L, dtype=np.int64)[None, :, None], ex.shape)
    clock = np.broadcast_to((np.arange(T, dtype=np.int64)[:, None] * L + np.arange(L))[:, :, None], ex.shape)
    ids = (layer * E + ex.astype(np.int64) + 1)[valid]
    rec = np.empty(len(ids), RECORD)
    rec["time"] = clock[valid]
    rec["obj_id"] = ids
    rec["size"] = 1
    rec["next"] = next_access(ids)
    return rec


def write(trace: Trace, path: str | os.PathLike[str]) -> Path:
    """Write ``trace`` as oracleGeneral binary, or as CSV when ``path`` ends in ``.csv``; atomic."""
    out = Path(path)
    rec = records(trace)
    with atomic_path(out) as tmp:
        if out.name.lower().endswith(".csv"):
            cols = np.column_stack([rec["time"].astype(np.int64), rec["obj_id"].astype(np.int64),
                                    rec["size"].astype(np.int64), rec["next"]])
            np.savetxt(tmp, cols, fmt="%d", delimiter=",", header=CSV_HEADER, comments="")
        else:
            rec.tofile(tmp)
    return out


def read(path: str | os.PathLike[str]) -> np.ndarray:
    """The records of a file :func:`write` wrote (binary or CSV), as :data:`RECORD` rows."""
    p = Path(path)
    if p.name.lower().endswith(".csv"):
        cols = np.loadtxt(p, dtype=np.int64, delimiter=",", skiprows=1, ndmin=2)
        rec = np.empty(len(cols), RECORD)
        for i, name in enumerate(RECORD.names):
            rec[name] = cols[:, i]
        return rec
    if p.stat().st_size % RECORD.itemsize:
        raise TraceError(f"size {p.stat().st_size} is not a multiple of the {RECORD.itemsize}-byte record",
                         file=str(p), field="records")
    return np.fromfile(p, RECORD)
