"""Reading and writing traces: safetensors (the native form), ``.npz``, and a CSV / JSONL row form.

The safetensors reader memory-maps the file with ``np.memmap`` (the format is an 8-byte header
length, a JSON header, then raw little-endian tensors), so a trace larger than RAM is streamed in
chunks of steps (:meth:`Trace.iter_chunks`) and only the pages touched are read. Every write goes to
a temporary file in the same folder first and is renamed into place, so a crash never leaves half a
trace under the final name.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from moesim.kernels.files import atomic_path
from moesim.traces import strict
from moesim.traces.errors import CorruptTraceFileError, ImportFormatError, ShapeMismatchError, TraceError
from moesim.traces.trace import (
    EXPERT_DTYPE,
    GATE_DTYPE,
    PAD,
    STEP_FIELDS,
    Trace,
    TraceMeta,
    make_trace,
    validate_meta,
)
from safetensors.numpy import save as save_safetensors_bytes

_ST_DTYPES = {"I8": np.int8, "I16": np.int16, "I32": np.int32, "I64": np.int64, "U8": np.uint8,
              "F16": np.float16, "F32": np.float32, "F64": np.float64}
_EXPECTED_DTYPES = {"experts": EXPERT_DTYPE, "gate_weights": GATE_DTYPE, "predicted": EXPERT_DTYPE,
                    **STEP_FIELDS}
_MAX_HEADER = 100 * 1024 * 1024


# ---- atomic writes ----------------------------------------------------------------------------

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


def _corrupt(message: str, name: str, field: str | None = None) -> CorruptTraceFileError:
    return CorruptTraceFileError(message, file=name, field=field)


def read_header(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, str], int]:
    """Parse a safetensors header: (tensor entries, string metadata, byte offset of the data).

    Checked as the safetensors library itself would before any tensor is touched: every entry
    has exactly a known ``dtype``, a ``shape`` of non-negative JSON integers and two integer
    ``data_offsets``; each tensor's bytes equal its shape's (products in Python integers, which
    cannot overflow); and the tensors tile the data section exactly, without gaps or overlaps, so
    no tensor can read header bytes or another tensor's.
    """
    name = str(path)
    size = strict.check_file(name, error=CorruptTraceFileError)
    try:
        with open(name, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise _corrupt(f"file is {size} bytes, too short for a safetensors header", name)
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, _MAX_HEADER):
                raise _corrupt(f"header length {n} exceeds the file ({size} bytes): truncated or not "
                               "safetensors", name)
            raw = fh.read(n)
    except OSError as exc:
        raise _corrupt(f"cannot read ({exc.strerror or exc})", name) from None
    header = strict.loads(raw, file=name, field="header", error=CorruptTraceFileError)
    if type(header) is not dict:
        raise _corrupt("header is not a JSON object", name)
    meta = header.pop("__metadata__", None)
    if meta is None:
        meta = {}
    if type(meta) is not dict or any(type(v) is not str for v in meta.values()):
        raise _corrupt("__metadata__ must be a JSON object of strings", name, "__metadata__")
    data_start = 8 + n
    data_len = size - data_start
    spans = []
    for key, entry in header.items():
        if type(entry) is not dict or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise _corrupt("entry must be an object with exactly dtype, shape and data_offsets", name, key)
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if type(dtype) is not str or dtype not in _ST_DTYPES:
            raise _corrupt(f"dtype {dtype!r:.40} is not one of {sorted(_ST_DTYPES)}", name, key)
        if type(shape) is not list or any(type(d) is not int or d < 0 for d in shape):
            raise _corrupt(f"shape {shape!r:.60} is not a list of non-negative integers", name, key)
        if (type(offsets) is not list or len(offsets) != 2 or any(type(o) is not int for o in offsets)):
            raise _corrupt(f"data_offsets {offsets!r:.60} is not a pair of integers", name, key)
        begin, end = offsets
        if begin < 0 or begin > end:
            raise _corrupt(f"data_offsets [{begin}, {end}] is not an interval of non-negative offsets",
                           name, key)
        if end > data_len:
            raise _corrupt(f"data [{begin}, {end}) lies beyond the file's {data_len} data bytes: the file is "
                           "truncated", name, key)
        nbytes = math.prod(shape) * np.dtype(_ST_DTYPES[dtype]).itemsize
        if end - begin != nbytes:
            raise _corrupt(f"{end - begin} bytes do not hold shape {shape} of {dtype} ({nbytes} bytes)",
                           name, key)
        spans.append((begin, end, key))
    spans.sort()
    for (b0, e0, k0), (b1, e1, k1) in itertools.pairwise(spans):
        if b1 < e0:  # checked before the gaps: an overlap always leaves a gap somewhere else too
            raise _corrupt(f"data [{b1}, {e1}) overlaps tensor '{k0}' at [{b0}, {e0})", name, k1)
    covered = 0
    for begin, end, key in spans:
        if begin > covered:
            raise _corrupt(f"data bytes [{covered}, {begin}) belong to no tensor", name, key)
        covered = end
    if covered != data_len:
        raise _corrupt(f"data bytes [{covered}, {data_len}) belong to no tensor", name)
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
        shape = tuple(entry["shape"])
        want = 1 if key in STEP_FIELDS else 3
        if len(shape) != want:
            raise ShapeMismatchError(f"shape {list(shape)} must have {want} dimension(s)", file=name, field=key)
        if end == begin:
            try:
                arrays[key] = np.zeros(shape, dtype=dtype)
            except ValueError:  # an empty tensor whose other dimensions numpy cannot even describe
                raise ShapeMismatchError(f"shape {list(shape)} is too large", file=name, field=key) from None
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
    """Read a trace written by :func:`save_npz`; every member is bounded by the file before it is read."""
    name = str(path)
    with strict.NpzMembers(name, error=CorruptTraceFileError) as members:
        if "__meta__" not in members.names:
            raise ImportFormatError("member '__meta__' is missing (not written by moesim)", file=name,
                                    field="__meta__")
        unknown = set(members.names) - set(_EXPECTED_DTYPES) - {"__meta__"}
        if unknown:
            raise ShapeMismatchError(f"unknown arrays {sorted(unknown)}", file=name, field=sorted(unknown)[0])
        if "experts" not in members.names:
            raise ShapeMismatchError("array 'experts' is missing", file=name, field="experts")
        text = members.read("__meta__", kinds="U")
        if text.shape != ():
            raise ImportFormatError(f"must be one string, got shape {text.shape}", file=name, field="__meta__")
        meta_strings = strict.loads(str(text), file=name, field="__meta__")
        meta = TraceMeta.from_strings(strict.json_object(meta_strings, file=name, field="__meta__"), file=name)
        arrays = {k: members.read(k) for k in members.names if k != "__meta__"}
    experts = arrays.pop("experts")
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


_HEAD_KEYS = ("meta", "width", "predicted_width", "fields")
_ROW_OPTIONAL = (*_ROW_STEP_FIELDS, "gate_weights", "predicted")
_ROW_BLOCK = 4096  # rows per block of the reader's buffers
# Ids are stored as they are (within int16) and validation then names the bad one by trace position.
_ID_MIN, _ID_MAX = int(np.iinfo(EXPERT_DTYPE).min), int(np.iinfo(EXPERT_DTYPE).max)


@dataclass(frozen=True)
class _Head:
    meta: TraceMeta
    width: int
    predicted_width: int | None
    fields: frozenset[str] | None  # None when the head does not list them


def _parse_head(obj: Any, name: str, field: str) -> _Head:
    """The first line of a row form, every size in it bounded by the metadata before any use."""
    head = strict.json_object(obj, file=name, field=field, index=1)
    unknown = sorted(set(head) - set(_HEAD_KEYS))
    if unknown:
        strict.fail(f"unknown key {unknown[0]!r} (known: {', '.join(_HEAD_KEYS)})", file=name, field=field,
                    index=1)
    if "meta" not in head:
        strict.fail("first line must be {\"meta\": {...}}", file=name, field=field, index=1)
    meta = TraceMeta.from_strings(strict.json_object(head["meta"], file=name, field="meta", index=1), file=name)
    validate_meta(meta, name)
    E = meta.num_experts
    width = head.get("width")
    width = meta.top_k if width is None else strict.json_int(width, file=name, field="width", index=1,
                                                              lo=meta.top_k, hi=E)
    pk = head.get("predicted_width")
    if pk is not None:
        pk = strict.json_int(pk, file=name, field="predicted_width", index=1, lo=0, hi=E)
    fields = head.get("fields")
    if fields is not None:
        listed = strict.json_list(fields, file=name, field="fields", index=1)
        for f in listed:
            if type(f) is not str or f not in _ROW_OPTIONAL:
                strict.fail(f"{f!r:.40} is not one of {', '.join(_ROW_OPTIONAL)}", file=name, field="fields",
                            index=1)
        if len(set(listed)) != len(listed):
            strict.fail("a field is listed twice", file=name, field="fields", index=1)
        fields = frozenset(listed)
        if ("predicted" in fields) != (pk is not None):
            strict.fail("'predicted' is listed without predicted_width, or the other way round", file=name,
                        field="fields", index=1)
    return _Head(meta, width, pk, fields)


class _RowSink:
    """Collects the rows of a row form in file order and checks that they walk the steps and layers
    one by one. Buffers grow a block at a time with the rows the file really holds, each row at most
    ``width <= num_experts`` slots, so a header's claims alone never allocate anything."""

    def __init__(self, name: str, head: _Head, present: frozenset[str]) -> None:
        self.name, self.head, self.present = name, head, present
        self.L, self.K = head.meta.num_layers, head.width
        self.blocks: dict[str, list[np.ndarray]] = {"experts": [], "gate_weights": [], "predicted": []}
        self.steps: dict[str, list[int]] = {n: [] for n in _ROW_STEP_FIELDS if n in present}
        self.rows = 0  # rows stored
        self.t, self.layer = 0, 0  # the (step, layer) the next row must have

    def _slot(self) -> int:
        i = self.rows % _ROW_BLOCK
        if i == 0:
            self.blocks["experts"].append(np.full((_ROW_BLOCK, self.K), PAD, EXPERT_DTYPE))
            if "gate_weights" in self.present:
                self.blocks["gate_weights"].append(np.zeros((_ROW_BLOCK, self.K), GATE_DTYPE))
            if "predicted" in self.present:
                self.blocks["predicted"].append(np.full((_ROW_BLOCK, self.head.predicted_width or 0), PAD,
                                                        EXPERT_DTYPE))
        return i

    def add(self, lineno: int, step: int, layer: int, experts: list[int], gates: list[float] | None,
            predicted: list[int] | None, step_values: dict[str, int]) -> None:
        name = self.name
        if (step, layer) != (self.t, self.layer):
            if layer == 0 and self.layer != 0:
                msg = f"step {self.t} stops at layer {self.layer - 1} of {self.L}"
            elif layer == 0:
                msg = f"step {step} out of order (expected {self.t})"
                strict.fail(msg, file=name, field="step", index=lineno)
            else:
                msg = (f"row (step {step}, layer {layer}) out of order (expected step {self.t}, layer "
                       f"{self.layer})")
            strict.fail(msg, file=name, field="layer", index=lineno)
        for n, v in step_values.items():
            if layer == 0:
                self.steps[n].append(v)
            elif v != self.steps[n][-1]:
                strict.fail(f"{v} differs from {self.steps[n][-1]} on layer 0 of the same step", file=name,
                            field=n, index=lineno)
        i = self._slot()
        self.blocks["experts"][-1][i, :len(experts)] = experts
        if gates is not None:
            self.blocks["gate_weights"][-1][i, :len(gates)] = gates
        if predicted is not None:
            self.blocks["predicted"][-1][i, :len(predicted)] = predicted
        self.rows += 1
        self.layer += 1
        if self.layer == self.L:
            self.t, self.layer = self.t + 1, 0

    def finish(self) -> Trace:
        if self.layer != 0:
            strict.fail(f"the last step stops at layer {self.layer - 1} of {self.L}", file=self.name,
                        field="layer")
        T, L = self.t, self.L
        kw: dict[str, Any] = {n: np.asarray(v, dtype=STEP_FIELDS[n]) for n, v in self.steps.items()}
        for n, width in (("experts", self.K), ("gate_weights", self.K), ("predicted", self.head.predicted_width)):
            if n not in self.present and n != "experts":
                continue
            dtype = GATE_DTYPE if n == "gate_weights" else EXPERT_DTYPE
            parts = self.blocks[n]
            arr = np.concatenate(parts)[:self.rows] if parts else np.zeros((0, width or 0), dtype)
            kw[n] = arr.reshape(T, L, width or 0)
        self.blocks.clear()
        return make_trace(kw.pop("experts"), self.head.meta, file=self.name, **kw)


def _present(head: _Head, found: set[str], name: str, what: str) -> frozenset[str]:
    """The optional fields, from the head's list when it has one (and the rows or columns must agree)."""
    if "predicted" in found and head.predicted_width is None:
        strict.fail(f"the {what} hold 'predicted' but the first line gives no predicted_width", file=name,
                    field="predicted")
    if head.predicted_width is not None:
        found = found | {"predicted"}
    if head.fields is not None and head.fields != found:
        diff = sorted(head.fields ^ found)
        strict.fail(f"the first line lists fields {sorted(head.fields)} but the {what} hold {sorted(found)}",
                    file=name, field=diff[0])
    return frozenset(found)


def _row_values(row: dict[str, Any], head: _Head, name: str, lineno: int) -> tuple[int, int, list[int],
                                                                                     list[float] | None,
                                                                                     list[int] | None,
                                                                                     dict[str, int]]:
    for key in ("step", "layer", "experts"):
        if key not in row:
            strict.fail(f"row has no '{key}'", file=name, field=key, index=lineno)
    step = strict.json_int(row["step"], file=name, field="step", index=lineno, lo=0)
    layer = strict.json_int(row["layer"], file=name, field="layer", index=lineno, lo=0)
    experts = strict.json_int_list(row["experts"], file=name, field="experts", index=lineno, max_len=head.width,
                                   lo=_ID_MIN, hi=_ID_MAX)
    gates = None
    if "gates" in row:
        gates = strict.json_number_list(row["gates"], file=name, field="gates", index=lineno, max_len=head.width)
        if len(gates) != len(experts):
            strict.fail(f"{len(gates)} gates for {len(experts)} experts: one gate per slot", file=name,
                        field="gates", index=lineno)
    predicted = None
    if "predicted" in row:
        predicted = strict.json_int_list(row["predicted"], file=name, field="predicted", index=lineno,
                                         max_len=head.predicted_width or 0, lo=_ID_MIN, hi=_ID_MAX)
    steps = {}
    for n in _ROW_STEP_FIELDS:
        if n in row:
            info = np.iinfo(STEP_FIELDS[n])
            steps[n] = strict.json_int(row[n], file=name, field=n, index=lineno, lo=int(info.min),
                                       hi=int(info.max))
    return step, layer, experts, gates, predicted, steps


def _row_keys(row: dict[str, Any]) -> set[str]:
    return {("gate_weights" if k == "gates" else k) for k in row if k not in ("step", "layer", "experts")}


def load_jsonl(path: str | os.PathLike[str]) -> Trace:
    """Read the JSONL row form: a head line, then one object per (step, layer) in order."""
    name = str(path)
    lines = strict.lines(name)
    first = next(lines, None)
    if first is None or not first[1].strip():
        strict.fail("first line must be {\"meta\": {...}}", file=name, field="meta", index=1)
    head = _parse_head(strict.loads(first[1], file=name, field="meta", index=1), name, "meta")
    sink: _RowSink | None = None
    known = {"step", "layer", "experts", "gates", "predicted", *_ROW_STEP_FIELDS}
    for lineno, line in lines:
        if not line.strip():
            continue
        row = strict.json_object(strict.loads(line, file=name, field="line", index=lineno), file=name,
                                 field="line", index=lineno)
        unknown = sorted(set(row) - known)
        if unknown:
            strict.fail(f"unknown field {unknown[0]!r} (known: {', '.join(sorted(known))})", file=name,
                        field=unknown[0], index=lineno)
        step, layer, experts, gates, predicted, steps = _row_values(row, head, name, lineno)
        if sink is None:  # the first row shows which optional fields the file holds
            sink = _RowSink(name, head, _present(head, _row_keys(row), name, "rows"))
        _check_row_fields(sink, row, layer, name, lineno)
        sink.add(lineno, step, layer, experts, gates, predicted, steps)
    if sink is None:
        sink = _RowSink(name, head, _present(head, set(head.fields or ()), name, "rows"))
    return sink.finish()


def _check_row_fields(sink: _RowSink, row: dict[str, Any], layer: int, name: str, lineno: int) -> None:
    """Every row holds the same optional fields; step fields may be left out on layers after 0."""
    have = _row_keys(row)
    for f in sorted(sink.present ^ have):
        if f in have:
            strict.fail("present on this row but not on the first", file=name, field=f, index=lineno)
        if f in _ROW_STEP_FIELDS and layer > 0:
            continue
        strict.fail("missing on this row", file=name, field="gates" if f == "gate_weights" else f, index=lineno)


def load_csv(path: str | os.PathLike[str]) -> Trace:
    """Read the CSV row form: a ``# moesim.trace {...}`` line, a header row, one row per (step, layer)."""
    name = str(path)
    lines = strict.lines(name)
    first = next(lines, None)
    prefix = "# moesim.trace "
    if first is None or not first[1].startswith(prefix):
        strict.fail(f"first line must start with '{prefix}'", file=name, field="header", index=1)
    head = _parse_head(strict.loads(first[1][len(prefix):], file=name, field="header", index=1), name, "header")
    reader = csv.reader(text for _, text in lines)
    try:
        columns = next(reader, None)
    except csv.Error as exc:
        strict.fail(f"not CSV ({exc})", file=name, field="columns", index=2)
    if columns is None:
        strict.fail("the column names are missing", file=name, field="columns", index=2)
    known = ("step", "layer", "experts", "gates", "predicted", *_ROW_STEP_FIELDS)
    for j, c in enumerate(columns):
        if c not in known:
            strict.fail(f"unknown column {c!r:.40} (known: {', '.join(known)})", file=name, field="columns",
                        index=(2, f"column {j}"))
        if columns.index(c) != j:
            strict.fail(f"column {c!r} appears twice", file=name, field="columns", index=2)
    for c in ("step", "layer", "experts"):
        if c not in columns:
            strict.fail(f"column '{c}' is missing", file=name, field=c, index=2)
    found = {("gate_weights" if c == "gates" else c) for c in columns if c not in ("step", "layer", "experts")}
    sink = _RowSink(name, head, _present(head, found, name, "columns"))
    while True:
        try:
            rec = next(reader, None)
        except csv.Error as exc:
            strict.fail(f"not CSV ({exc})", file=name, field="row", index=reader.line_num + 1)
        if rec is None:
            break
        lineno = reader.line_num + 1  # +1: the head line was consumed before the reader
        if not rec:
            continue
        if len(rec) != len(columns):
            strict.fail(f"{len(rec)} cells for {len(columns)} columns", file=name, field="row", index=lineno)
        cell = dict(zip(columns, rec, strict=True))

        step = strict.int_cell(cell["step"], file=name, field="step", index=lineno, lo=0)
        layer = strict.int_cell(cell["layer"], file=name, field="layer", index=lineno, lo=0)
        experts = strict.int_cells(cell["experts"], file=name, field="experts", index=lineno, max_len=head.width,
                                   lo=_ID_MIN, hi=_ID_MAX)
        gates = None
        if "gates" in cell:
            gates = strict.float_cells(cell["gates"], file=name, field="gates", index=lineno, max_len=head.width)
            if len(gates) != len(experts):
                strict.fail(f"{len(gates)} gates for {len(experts)} experts: one gate per slot", file=name,
                            field="gates", index=lineno)
        predicted = None
        if "predicted" in cell:
            predicted = strict.int_cells(cell["predicted"], file=name, field="predicted", index=lineno,
                                         max_len=head.predicted_width or 0, lo=_ID_MIN, hi=_ID_MAX)
        steps = {}
        for n in _ROW_STEP_FIELDS:
            if n in cell:
                info = np.iinfo(STEP_FIELDS[n])
                steps[n] = strict.int_cell(cell[n], file=name, field=n, index=lineno, lo=int(info.min),
                                           hi=int(info.max))
        sink.add(lineno, step, layer, experts, gates, predicted, steps)
    return sink.finish()


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
