"""Reading and writing traces: safetensors (the native form), ``.npz``, and a CSV / JSONL row form.

The safetensors reader memory-maps the file with ``np.memmap`` (the format is an 8-byte header
length, a JSON header, then raw little-endian tensors), so a trace larger than RAM is streamed in
chunks of steps (:meth:`Trace.iter_chunks`) and only the pages touched are read. Every write goes to
a temporary file in the same folder first and is renamed into place, so a crash never leaves half a
trace under the final name.
"""

from __future__ import annotations

import csv
import json
import os
import struct
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from moesim.traces.errors import CorruptTraceFileError, ImportFormatError, ShapeMismatchError, TraceError
from moesim.traces.trace import (
    EXPERT_DTYPE,
    GATE_DTYPE,
    PAD,
    STEP_FIELDS,
    Trace,
    TraceMeta,
    make_trace,
)
from safetensors.numpy import save as save_safetensors_bytes

_ST_DTYPES = {"I8": np.int8, "I16": np.int16, "I32": np.int32, "I64": np.int64, "U8": np.uint8,
              "F16": np.float16, "F32": np.float32, "F64": np.float64}
_EXPECTED_DTYPES = {"experts": EXPERT_DTYPE, "gate_weights": GATE_DTYPE, "predicted": EXPERT_DTYPE,
                    **STEP_FIELDS}
_MAX_HEADER = 100 * 1024 * 1024


# ---- atomic writes ----------------------------------------------------------------------------

@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    # mkstemp creates the file 0600; give it the mode a plain open() would (0666 minus the umask).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield Path(tmp)
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


# ---- safetensors ------------------------------------------------------------------------------

def save(trace: Trace, path: str | os.PathLike[str]) -> Path:
    """Write ``trace`` as safetensors (tensors + string metadata), atomically."""
    tensors = {"experts": np.ascontiguousarray(trace.experts)}
    for name, arr in trace.optional_fields().items():
        tensors[name] = np.ascontiguousarray(arr)
    blob = save_safetensors_bytes(tensors, metadata=trace.meta.to_strings())
    with atomic_path(path) as tmp:
        tmp.write_bytes(blob)
    return Path(path)


def read_header(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, str], int]:
    """Parse a safetensors header: (tensor entries, string metadata, byte offset of the data)."""
    name = str(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise CorruptTraceFileError(f"file is {size} bytes, too short for a safetensors header",
                                            file=name)
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, _MAX_HEADER):
                raise CorruptTraceFileError(f"header length {n} exceeds the file ({size} bytes): "
                                            "truncated or not safetensors", file=name)
            raw = fh.read(n)
    except FileNotFoundError:
        raise TraceError("no such file", file=name) from None
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptTraceFileError(f"header is not valid JSON ({exc})", file=name) from None
    if not isinstance(header, dict):
        raise CorruptTraceFileError("header is not a JSON object", file=name)
    meta = header.pop("__metadata__", {}) or {}
    data_start = 8 + n
    data_len = size - data_start
    for key, entry in header.items():
        try:
            begin, end = (int(v) for v in entry["data_offsets"])
            dtype = _ST_DTYPES[entry["dtype"]]
            count = int(np.prod(entry["shape"], dtype=np.int64))
        except (KeyError, TypeError, ValueError):
            raise CorruptTraceFileError(f"malformed header entry {entry!r}", file=name, field=key) from None
        if end > data_len or begin > end:
            raise CorruptTraceFileError(f"data [{begin}, {end}) lies beyond the file's {data_len} data "
                                        "bytes: the file is truncated", file=name, field=key)
        if end - begin != count * np.dtype(dtype).itemsize:
            raise CorruptTraceFileError(f"{end - begin} bytes do not hold shape {entry['shape']} of "
                                        f"{entry['dtype']}", file=name, field=key)
    return header, meta, data_start


def load(path: str | os.PathLike[str], *, mmap: bool = True, validate: bool = True) -> Trace:
    """Read a safetensors trace; arrays are read-only memory maps unless ``mmap=False``."""
    name = str(path)
    header, meta_strings, data_start = read_header(path)
    meta = TraceMeta.from_strings(meta_strings, file=name)
    if "experts" not in header:
        raise ShapeMismatchError("tensor 'experts' is missing", file=name, field="experts")
    unknown = set(header) - set(_EXPECTED_DTYPES)
    if unknown:
        raise ShapeMismatchError(f"unknown tensors {sorted(unknown)}", file=name, field=sorted(unknown)[0])
    arrays: dict[str, np.ndarray] = {}
    for key, entry in header.items():
        dtype = _ST_DTYPES[entry["dtype"]]
        if dtype != _EXPECTED_DTYPES[key]:
            raise ShapeMismatchError(f"dtype {entry['dtype']} but the format stores "
                                     f"{np.dtype(_EXPECTED_DTYPES[key]).name}", file=name, field=key)
        begin, end = entry["data_offsets"]
        shape = tuple(int(s) for s in entry["shape"])
        if end == begin:
            arrays[key] = np.zeros(shape, dtype=dtype)
        elif mmap:
            arrays[key] = np.memmap(name, dtype=dtype, mode="r", offset=data_start + begin, shape=shape)
        else:
            with open(name, "rb") as fh:
                fh.seek(data_start + begin)
                arrays[key] = np.frombuffer(fh.read(end - begin), dtype=dtype).reshape(shape).copy()
    experts = arrays.pop("experts")
    return make_trace(experts, meta, file=name, validate=validate, **arrays)


# ---- npz --------------------------------------------------------------------------------------

def save_npz(trace: Trace, path: str | os.PathLike[str]) -> Path:
    """Arrays as npz members plus ``__meta__`` holding the string metadata as JSON."""
    arrays = {"experts": np.asarray(trace.experts), **{k: np.asarray(v) for k, v in
                                                        trace.optional_fields().items()}}
    arrays["__meta__"] = np.array(json.dumps(trace.meta.to_strings()))
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    return Path(path)


def load_npz(path: str | os.PathLike[str]) -> Trace:
    name = str(path)
    try:
        data = np.load(name, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise CorruptTraceFileError(f"cannot read npz ({exc})", file=name) from None
    with data:
        if "__meta__" not in data.files:
            raise ImportFormatError("member '__meta__' is missing (not written by moesim)", file=name,
                                    field="__meta__")
        meta = TraceMeta.from_strings(json.loads(str(data["__meta__"])), file=name)
        arrays = {k: data[k] for k in data.files if k != "__meta__"}
    if "experts" not in arrays:
        raise ShapeMismatchError("array 'experts' is missing", file=name, field="experts")
    experts = arrays.pop("experts")
    unknown = set(arrays) - set(_EXPECTED_DTYPES)
    if unknown:
        raise ShapeMismatchError(f"unknown arrays {sorted(unknown)}", file=name, field=sorted(unknown)[0])
    return make_trace(experts, meta, file=name, **arrays)


# ---- row form: one row per (step, layer) ------------------------------------------------------

_ROW_STEP_FIELDS = tuple(STEP_FIELDS)


def _rows(trace: Trace) -> Iterator[dict[str, Any]]:
    steps = {n: getattr(trace, n) for n in _ROW_STEP_FIELDS if getattr(trace, n) is not None}
    for chunk_start, chunk in _chunked(trace):
        e = np.asarray(chunk.experts)
        g = None if chunk.gate_weights is None else np.asarray(chunk.gate_weights)
        p = None if chunk.predicted is None else np.asarray(chunk.predicted)
        for i in range(e.shape[0]):
            t = chunk_start + i
            for layer in range(e.shape[1]):
                row: dict[str, Any] = {"step": t, "layer": layer}
                for n, arr in steps.items():
                    row[n] = int(arr[t])
                # Only trailing pads are dropped: a pad inside a row keeps its slot, so the
                # text forms give back exactly the same arrays.
                n = _kept_width(e[i, layer], None if g is None else g[i, layer])
                row["experts"] = e[i, layer][:n].tolist()
                if g is not None:
                    row["gates"] = [float(x) for x in g[i, layer][:n]]
                if p is not None:
                    row["predicted"] = p[i, layer][:_kept_width(p[i, layer], None)].tolist()
                yield row


def _kept_width(ids: np.ndarray, gates: np.ndarray | None) -> int:
    """Slots up to the last one holding an expert or a gate whose bits are not all zero."""
    used = ids != PAD
    if gates is not None:
        used |= gates.view(np.uint32) != 0  # -0.0 and a weight on a pad slot count as data
    nz = np.flatnonzero(used)
    return int(nz[-1]) + 1 if nz.size else 0


def _chunked(trace: Trace) -> Iterator[tuple[int, Trace]]:
    start = 0
    for chunk in trace.iter_chunks():
        yield start, chunk
        start += chunk.num_steps


def _head(trace: Trace) -> dict[str, Any]:
    """The first line of the row forms; ``fields`` lists the optional arrays even when T == 0."""
    return {"meta": trace.meta.to_strings(), "width": trace.width,
            "predicted_width": None if trace.predicted is None else trace.predicted.shape[2],
            "fields": sorted(trace.optional_fields())}


def save_jsonl(trace: Trace, path: str | os.PathLike[str]) -> Path:
    """First line ``{"meta": {...}}``, then one JSON object per (step, layer)."""
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        fh.write(json.dumps(_head(trace)) + "\n")
        for row in _rows(trace):
            fh.write(json.dumps(row) + "\n")
    return Path(path)


def save_csv(trace: Trace, path: str | os.PathLike[str]) -> Path:
    """CSV with a ``# moesim.trace {json}`` first line; expert and gate lists are space-separated."""
    cols = ["step", "layer", *[n for n in _ROW_STEP_FIELDS if getattr(trace, n) is not None], "experts"]
    if trace.gate_weights is not None:
        cols.append("gates")
    if trace.predicted is not None:
        cols.append("predicted")
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        fh.write("# moesim.trace " + json.dumps(_head(trace)) + "\n")
        writer = csv.DictWriter(fh, fieldnames=cols)
        writer.writeheader()
        for row in _rows(trace):
            for key in ("experts", "gates", "predicted"):
                if key in row:
                    row[key] = " ".join(repr(x) if isinstance(x, float) else str(x) for x in row[key])
            writer.writerow(row)
    return Path(path)


def load_jsonl(path: str | os.PathLike[str]) -> Trace:
    name = str(path)
    with open(name) as fh:
        first = fh.readline()
        try:
            head = json.loads(first)
            meta_strings = head["meta"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ImportFormatError("first line must be {\"meta\": {...}}", file=name, field="meta",
                                    index=1) from None

        def rows() -> Iterator[tuple[int, dict[str, Any]]]:
            for lineno, line in enumerate(fh, start=2):
                if not line.strip():
                    continue
                try:
                    yield lineno, json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ImportFormatError(f"not JSON ({exc.msg})", file=name, field="line",
                                            index=lineno) from None

        return _from_rows(rows(), head, meta_strings, name)


def load_csv(path: str | os.PathLike[str]) -> Trace:
    name = str(path)
    with open(name, newline="") as fh:
        first = fh.readline()
        prefix = "# moesim.trace "
        if not first.startswith(prefix):
            raise ImportFormatError(f"first line must start with '{prefix}'", file=name, field="header",
                                    index=1)
        try:
            head = json.loads(first[len(prefix):])
            meta_strings = head["meta"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ImportFormatError(f"first line must be '{prefix}{{\"meta\": {{...}}}}'", file=name,
                                    field="header", index=1) from None
        reader = csv.DictReader(fh)

        def rows() -> Iterator[tuple[int, dict[str, Any]]]:
            for lineno, rec in enumerate(reader, start=3):
                out: dict[str, Any] = {}
                for key, value in rec.items():
                    if value is None or key is None:
                        raise ImportFormatError("wrong number of columns", file=name, field="row",
                                                index=lineno)
                    if key in ("experts", "predicted"):
                        out[key] = [_parse_int(v, name, key, lineno) for v in value.split()]
                    elif key == "gates":
                        out[key] = [_parse_float(v, name, key, lineno) for v in value.split()]
                    else:
                        out[key] = _parse_int(value, name, key, lineno)
                yield lineno, out

        return _from_rows(rows(), head, meta_strings, name)


def _parse_int(value: str, file: str, field: str, lineno: int) -> int:
    try:
        return int(value)
    except ValueError:
        raise ImportFormatError(f"not an integer: {value!r}", file=file, field=field, index=lineno) from None


def _parse_float(value: str, file: str, field: str, lineno: int) -> float:
    try:
        return float(value)
    except ValueError:
        raise ImportFormatError(f"not a number: {value!r}", file=file, field=field, index=lineno) from None


def _fill(dest: np.ndarray, values: Any, file: str, field: str, lineno: int) -> None:
    """Copy a row's list into the first slots of ``dest``; refuse a list too long or not numeric."""
    try:
        n = len(values)
        if n > dest.shape[0]:
            raise ImportFormatError(f"{n} values exceed the width {dest.shape[0]}", file=file, field=field,
                                    index=lineno)
        dest[:n] = values
    except (TypeError, ValueError, OverflowError) as exc:
        if isinstance(exc, ImportFormatError):
            raise
        raise ImportFormatError(f"bad values {values!r} ({exc})", file=file, field=field,
                                index=lineno) from None


def _from_rows(rows: Iterator[tuple[int, dict[str, Any]]], head: dict[str, Any],
               meta_strings: dict[str, str], name: str) -> Trace:
    meta = TraceMeta.from_strings(meta_strings, file=name)
    L, K = meta.num_layers, int(head.get("width") or meta.top_k)
    pk = head.get("predicted_width")
    experts: list[np.ndarray] = []
    gates: list[np.ndarray] = []
    predicted: list[np.ndarray] = []
    steps: dict[str, list[int]] = {n: [] for n in _ROW_STEP_FIELDS}
    present: set[str] = set()
    next_layer = L  # rows come step by step, layers 0..L-1 each; a missing one is an error
    for lineno, row in rows:
        try:
            t, layer = int(row["step"]), int(row["layer"])
        except (KeyError, TypeError, ValueError):
            raise ImportFormatError("row needs integer 'step' and 'layer'", file=name, field="step",
                                    index=lineno) from None
        if layer == 0:
            if next_layer != L:
                raise ImportFormatError(f"step {t - 1} stops at layer {next_layer - 1} of {L}", file=name,
                                        field="layer", index=lineno)
            if t != len(experts):
                raise ImportFormatError(f"step {t} out of order (expected {len(experts)})", file=name,
                                        field="step", index=lineno)
            experts.append(np.full((L, K), PAD, EXPERT_DTYPE))
            gates.append(np.zeros((L, K), GATE_DTYPE))
            if pk:
                predicted.append(np.full((L, int(pk)), PAD, EXPERT_DTYPE))
            for n in _ROW_STEP_FIELDS:
                if n in row:
                    present.add(n)
                    steps[n].append(int(row[n]))
        elif t != len(experts) - 1 or layer != next_layer:
            raise ImportFormatError(f"row (step {t}, layer {layer}) out of order (expected step "
                                    f"{len(experts) - 1}, layer {next_layer})", file=name, field="layer",
                                    index=lineno)
        next_layer = layer + 1
        _fill(experts[-1][layer], row.get("experts", []), name, "experts", lineno)
        if "gates" in row:
            present.add("gate_weights")
            _fill(gates[-1][layer], row["gates"], name, "gates", lineno)
        if pk and "predicted" in row:
            _fill(predicted[-1][layer], row["predicted"], name, "predicted", lineno)
    if next_layer != L:
        raise ImportFormatError(f"the last step stops at layer {next_layer - 1} of {L}", file=name,
                                field="layer")
    T = len(experts)
    if T == 0:  # no rows to show which fields exist: the head lists them
        present.update(f for f in head.get("fields", ()) if f in (*_ROW_STEP_FIELDS, "gate_weights"))
    kw: dict[str, Any] = {n: np.asarray(steps[n]) for n in _ROW_STEP_FIELDS if n in present}
    for n in list(kw):
        if len(kw[n]) != T:
            raise ImportFormatError(f"present on some steps only ({len(kw[n])} of {T})", file=name, field=n)
    if "gate_weights" in present:
        kw["gate_weights"] = np.stack(gates) if T else np.zeros((0, L, K), GATE_DTYPE)
    if pk:
        kw["predicted"] = np.stack(predicted) if T else np.zeros((0, L, int(pk)), EXPERT_DTYPE)
    arr = np.stack(experts) if T else np.zeros((0, L, K), EXPERT_DTYPE)
    return make_trace(arr, meta, file=name, **kw)


# ---- dispatch by extension --------------------------------------------------------------------

_SAVERS: dict[str, Callable[[Trace, Any], Path]] = {
    ".safetensors": save, ".npz": save_npz, ".jsonl": save_jsonl, ".csv": save_csv}
_LOADERS: dict[str, Callable[[Any], Trace]] = {
    ".safetensors": load, ".npz": load_npz, ".jsonl": load_jsonl, ".csv": load_csv}


def save_any(trace: Trace, path: str | os.PathLike[str]) -> Path:
    """Write by extension: .safetensors, .npz, .jsonl or .csv."""
    ext = Path(path).suffix.lower()
    if ext not in _SAVERS:
        raise TraceError(f"unknown trace extension '{ext}' (use one of {sorted(_SAVERS)})", file=str(path))
    return _SAVERS[ext](trace, path)


def load_any(path: str | os.PathLike[str]) -> Trace:
    """Read by extension: .safetensors (memory-mapped), .npz, .jsonl or .csv."""
    ext = Path(path).suffix.lower()
    if ext not in _LOADERS:
        raise TraceError(f"unknown trace extension '{ext}' (use one of {sorted(_LOADERS)})", file=str(path))
    return _LOADERS[ext](path)
