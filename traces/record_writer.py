"""Write a trace step by step without holding it in memory.

A recorder produces rows a few at a time; :class:`ChunkedTraceWriter` keeps at most ``chunk_steps``
rows in memory, appends each full chunk to one raw little-endian part file per field in a scratch
folder beside the output, and at :meth:`close` streams the parts into one safetensors file (8-byte
header length, JSON header with the string metadata, then the tensors back to back), atomically.
Memory stays at one chunk however long the recording, and the file reads back with
:func:`traces.io.load` (memory-mapped) like any other trace.

Without a path the writer keeps the chunks in memory and :meth:`close` returns an in-memory trace.
The bytes written do not depend on ``chunk_steps``.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from moesim.kernels.files import atomic_path
from moesim.traces.errors import ShapeMismatchError
from moesim.traces.io import load
from moesim.traces.trace import EXPERT_DTYPE, GATE_DTYPE, STEP_FIELDS, Trace, TraceMeta, make_trace

# Tensor order in the file, and each field's dtype and per-step shape kind.
_FIELD_ORDER = ("experts", "gate_weights", "predicted", "request_id", "position", "phase", "domain")
_DTYPES: dict[str, Any] = {"experts": EXPERT_DTYPE, "gate_weights": GATE_DTYPE, "predicted": EXPERT_DTYPE,
                           **STEP_FIELDS}
_ST_NAMES = {np.dtype(np.int8): "I8", np.dtype(np.int16): "I16", np.dtype(np.int32): "I32",
             np.dtype(np.int64): "I64", np.dtype(np.float32): "F32"}
DEFAULT_CHUNK_STEPS = 4096


class ChunkedTraceWriter:
    """Append rows with :meth:`append`; :meth:`close` writes the file (or builds the trace).

    ``row_shapes`` maps each field to the shape of one step: ``(L, K)`` for ``experts`` /
    ``gate_weights``, ``(L, K')`` for ``predicted`` and ``()`` for per-step fields. ``experts`` is
    required; every append must give exactly the declared fields.
    """

    def __init__(self, path: str | os.PathLike[str] | None, row_shapes: dict[str, tuple[int, ...]], *,
                 chunk_steps: int = DEFAULT_CHUNK_STEPS) -> None:
        if "experts" not in row_shapes:
            raise ShapeMismatchError("the writer needs the 'experts' field", field="experts")
        unknown = set(row_shapes) - set(_FIELD_ORDER)
        if unknown:
            raise ShapeMismatchError(f"unknown fields {sorted(unknown)}", field=sorted(unknown)[0])
        if chunk_steps < 1:
            raise ValueError(f"chunk_steps must be >= 1, got {chunk_steps}")
        self.path = None if path is None else Path(path)
        self.fields = [f for f in _FIELD_ORDER if f in row_shapes]
        self.row_shapes = {f: tuple(int(s) for s in row_shapes[f]) for f in self.fields}
        self.chunk_steps = int(chunk_steps)
        self.num_steps = 0
        self._buffer: dict[str, list[np.ndarray]] = {f: [] for f in self.fields}
        self._buffered = 0
        self._memory: dict[str, list[np.ndarray]] = {f: [] for f in self.fields}
        self._scratch: Path | None = None
        self._closed = False
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._scratch = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.parts.", dir=self.path.parent))

    # ---- appending ---------------------------------------------------------------------------
    def append(self, rows: dict[str, Any]) -> None:
        """Append ``n`` steps: each field an array ``[n, *row_shape]`` (cast to the format's dtype)."""
        if self._closed:
            raise RuntimeError("writer is closed")
        if set(rows) != set(self.fields):
            raise ShapeMismatchError(f"append got fields {sorted(rows)}, the writer holds {self.fields}",
                                     field="fields")
        n = None
        cast = {}
        for f in self.fields:
            arr = np.asarray(rows[f])
            if arr.shape[1:] != self.row_shapes[f] or (n is not None and arr.shape[0] != n):
                raise ShapeMismatchError(f"rows of shape {arr.shape}, expected [{n if n is not None else 'n'}, "
                                         f"{', '.join(map(str, self.row_shapes[f]))}]", field=f,
                                         index=self.num_steps)
            n = arr.shape[0]
            cast[f] = arr.astype(_DTYPES[f], copy=True)
        if not n:
            return
        for f in self.fields:
            self._buffer[f].append(cast[f])
        self._buffered += n
        self.num_steps += n
        if self._buffered >= self.chunk_steps:
            self._flush()

    def _flush(self) -> None:
        if not self._buffered:
            return
        for f in self.fields:
            block = np.concatenate(self._buffer[f])
            if self._scratch is None:
                self._memory[f].append(block)
            else:
                with open(self._scratch / f"{f}.bin", "ab") as fh:
                    fh.write(np.ascontiguousarray(block, dtype=block.dtype.newbyteorder("<")).tobytes())
            self._buffer[f] = []
        self._buffered = 0

    # ---- finishing ---------------------------------------------------------------------------
    def close(self, meta: TraceMeta) -> Trace:
        """Write the file (memory-mapped trace back) or build the in-memory trace; validates either."""
        if self._closed:
            raise RuntimeError("writer is closed")
        self._flush()
        self._closed = True
        shapes = {f: (self.num_steps, *self.row_shapes[f]) for f in self.fields}
        if self.path is None:
            arrays = {f: (np.concatenate(self._memory[f]) if self._memory[f]
                          else np.zeros(shapes[f], _DTYPES[f])) for f in self.fields}
            self._memory = {f: [] for f in self.fields}
            experts = arrays.pop("experts")
            return make_trace(experts, meta, **arrays)
        assert self._scratch is not None
        try:
            self._assemble(meta, shapes)
        finally:
            shutil.rmtree(self._scratch, ignore_errors=True)
        return load(self.path)

    def abort(self) -> None:
        """Drop everything written so far (the output file is never created)."""
        self._closed = True
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)

    def _assemble(self, meta: TraceMeta, shapes: dict[str, tuple[int, ...]]) -> None:
        assert self._scratch is not None and self.path is not None
        header: dict[str, Any] = {"__metadata__": meta.to_strings()}
        offset = 0
        for f in self.fields:
            dtype = np.dtype(_DTYPES[f])
            nbytes = int(np.prod(shapes[f], dtype=np.int64)) * dtype.itemsize
            header[f] = {"dtype": _ST_NAMES[dtype], "shape": list(shapes[f]),
                         "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        # safetensors pads the header with spaces so the data starts 8-byte aligned.
        raw += b" " * (-len(raw) % 8)
        with atomic_path(self.path) as tmp, open(tmp, "wb") as out:
            out.write(struct.pack("<Q", len(raw)))
            out.write(raw)
            for f in self.fields:
                part = self._scratch / f"{f}.bin"
                if part.exists():
                    with open(part, "rb") as src:
                        shutil.copyfileobj(src, out, length=1 << 20)

    def __enter__(self) -> ChunkedTraceWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None and not self._closed:
            self.abort()
